"""Executable content: recognise a program by what its file contains, not by its name.

A miner copied to ``kworker`` still carries xmrig's strings; a renamed nmap
still carries ``nmap-service-probes``. Each *marker* names a known tool and
lists byte strings that only that tool (or its family) contains; a file
carries the marker when at least ``need`` of them are found.

Scanning costs time (about 20 ms per MiB on a busy core), so:

- a file is scanned once: results are cached by (device, inode, size,
  mtime), so every process of the same program, and every later tick, reuse it;
- at most ``max_bytes`` of a file are read;
- the sampler scans in a background thread (``background=True``): a new file
  is reported without markers on the tick that first sees it and with them
  from the tick after the scan finishes, so a tick never waits on a scan.

Scripts run by an interpreter (``python3 x.py``, ``node x.js``) are scanned
too, the first script argument only, with the smaller ``max_script_bytes``.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

#: Read files in chunks this large; the last bytes of a chunk are read again at the
#: start of the next so a marker spanning the boundary is still found.
CHUNK = 1 << 20


INTERPRETER_PREFIX = "interpreter:"


def reported(markers: list[str]) -> list[str]:
    """The markers that name tools (not the internal interpreter ones)."""
    return [m for m in markers if not m.startswith(INTERPRETER_PREFIX)]


@dataclass(frozen=True)
class Marker:
    name: str
    needles: tuple[bytes, ...]
    need: int = 1  # how many of the needles must be present


#: Strings checked against the real tools (Debian bookworm builds) wherever they are
#: packaged, and chosen so that interpreters, compilers, shells and ML libraries, which
#: the tests scan, never carry them.
MARKERS: tuple[Marker, ...] = (
    # crypto-mining
    Marker("xmrig", (b"XMRig", b"donate-level", b"xmrig.com"), need=2),
    Marker("stratum-miner", (b"mining.subscribe", b"mining.authorize", b"mining.submit",
                             b"mining.notify"), need=2),
    Marker("getwork-miner", (b"eth_submitWork", b"eth_submitHashrate", b"eth_getWork"), need=2),
    # password-cracking
    Marker("hashcat", (b"hashcat.potfile", b"hashcat.net"), need=1),
    Marker("john", (b"John the Ripper password cracker", b"openwall.com/john"), need=1),
    Marker("hydra", (b"van Hauser", b"HYDRA_PROXY"), need=2),
    Marker("aircrack-ng", (b"aircrack-ng.org", b"Aircrack-ng"), need=2),
    # torrenting
    Marker("bittorrent", (b"BitTorrent protocol",), need=1),
    Marker("ctorrent", (b"ctorrent.sourceforge.net",), need=1),
    Marker("rtorrent", (b"rtorrent.rc",), need=1),
    Marker("qbittorrent", (b"Thank you for using qBittorrent",), need=1),
    # remote-access
    Marker("dropbear", (b"Dropbear", b"dropbear_rsa_host_key"), need=2),
    Marker("openssh-server", (b"sshd_config", b"PermitRootLogin", b"privilege separation"), need=3),
    # proxy and tunnels
    Marker("tor", (b"Tor will try a different fallback", b"torrc"), need=2),
    Marker("microsocks", (b"MicroSocks SOCKS5 Server",), need=1),
    Marker("v2ray", (b"github.com/v2fly/v2ray-core", b"github.com/xtls/xray-core",
                     b"github.com/XTLS/Xray-core"), need=1),
    Marker("shadowsocks", (b"github.com/shadowsocks/", b"shadowsocks-libev"), need=1),
    Marker("tunnel-client", (b"github.com/cloudflare/cloudflared", b"github.com/fatedier/frp",
                             b"golang.ngrok.com/ngrok", b"github.com/inconshreveable/ngrok"), need=1),
    # scanning and denial of service
    Marker("nmap", (b"Nmap.Org", b"nmap-service-probes", b"scanme.nmap.org"), need=2),
    Marker("masscan", (b"Starting masscan", b"robertdavidgraham/masscan"), need=1),
    Marker("hping3", (b"hping3 listen mode",), need=1),
    Marker("slowhttptest", (b"SlowHTTPTest", b"github.com/shekyan/slowhttptest"), need=1),
    # deepfake (mostly scripts: the interpreter's first script argument)
    # (not tool names alone: deepfake-detection research names its datasets after them)
    Marker("face-swap", (b"inswapper_128", b"roop.processors.frame", b"facefusion.processors",
                         b"SAEHDModel"), need=1),
    # Not reported: they tell that a renamed program is an interpreter, whose script is scanned.
    Marker(INTERPRETER_PREFIX + "python", (b"Py_BytesMain",)),
    Marker(INTERPRETER_PREFIX + "node", (b"NODE_OPTIONS", b"node::Start"), need=2),
)

INTERPRETER = re.compile(r"^(python[0-9.]*|pypy[0-9.]*|node(js)?|bun|deno|perl[0-9.]*|ruby[0-9.]*|"
                         r"php[0-9.]*|bash|sh|dash|zsh)$")


class MarkerSearch:
    """Finds which markers a byte string carries, with one regex pass."""

    def __init__(self, markers: tuple[Marker, ...] = MARKERS):
        self.markers = markers
        needles = sorted({n for m in markers for n in m.needles}, key=len, reverse=True)
        self.pattern = re.compile(b"|".join(re.escape(n) for n in needles))
        self.longest = max(len(n) for n in needles)

    def needles_in(self, data: bytes) -> set[bytes]:
        return set(self.pattern.findall(data))

    def markers_for(self, found: set[bytes]) -> list[str]:
        return [m.name for m in self.markers if sum(n in found for n in m.needles) >= m.need]


SEARCH = MarkerSearch()


def scan_file(path: str, max_bytes: int, search: MarkerSearch = SEARCH) -> list[str]:
    """The markers in the first ``max_bytes`` of a file (read in chunks)."""
    found: set[bytes] = set()
    overlap = search.longest - 1
    tail = b""
    left = max_bytes
    with open(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            data = tail + chunk
            found |= search.needles_in(data)
            tail = data[-overlap:]
    return search.markers_for(found)


FileKey = tuple[int, int, int, int]  # device, inode, size, mtime (ns)


class ContentScanner:
    """Markers per file, scanned once per (device, inode, size, mtime)."""

    def __init__(self, max_bytes: int = 64 << 20, max_script_bytes: int = 1 << 20,
                 background: bool = True, cache_size: int = 4096,
                 log: logging.Logger | None = None):
        self.max_bytes = max_bytes
        self.max_script_bytes = max_script_bytes
        self.cache_size = cache_size
        self.log = log or logging.getLogger("colab_guard")
        self.scans = 0  # files actually read (the rest came from the cache)
        self.bytes_read = 0
        self._cache: OrderedDict[FileKey, list[str]] = OrderedDict()
        self._pending: dict[FileKey, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="colab-guard-scan") if background else None

    # ------------------------------------------------------------ public

    def process_markers(self, pid: int, exe: str, cmdline: list[str]) -> list[str]:
        """Markers of a process's executable and of the script it runs, if any.

        The executable is read through ``/proc/PID/exe``, which still works when
        the file was deleted or replaced after the program started.
        """
        found = self.file_markers(f"/proc/{pid}/exe", self.max_bytes)
        markers = reported(found)
        interpreter = len(markers) < len(found)  # even when renamed
        script = script_path(pid, exe, cmdline, interpreter)
        if script is not None:
            markers += [m for m in reported(self.file_markers(script, self.max_script_bytes))
                        if m not in markers]
        return markers

    def settled(self, pid: int, exe: str, cmdline: list[str]) -> bool:
        """Whether the files of a process have all been scanned already, so that
        ``process_markers`` answers from the cache, finally (until the files change)."""
        for path in filter(None, [f"/proc/{pid}/exe", script_path(pid, exe, cmdline, True)]):
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and \
                    (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) not in self._cache:
                return False
        return True

    def file_markers(self, path: str, max_bytes: int) -> list[str]:
        """The file's markers; [] while a background scan is still running or on error."""
        try:
            st = os.stat(path)
        except OSError:
            return []
        if not stat.S_ISREG(st.st_mode):
            return []
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            if key in self._pending:
                return []
            if self._pool is not None:
                self._pending[key] = self._pool.submit(self._scan, key, path, max_bytes)
                return []
        return self._scan(key, path, max_bytes)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the scans under way (tests and the command line use it)."""
        with self._lock:
            pending = list(self._pending.values())
        for future in pending:
            future.result(timeout)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ scanning

    def _scan(self, key: FileKey, path: str, max_bytes: int) -> list[str]:
        try:
            markers = scan_file(path, max_bytes)
        except OSError as err:
            # Unreadable (another user's file, gone): try again when it changes.
            self.log.debug("colab-guard: could not scan %s: %s", path, err)
            markers = []
        with self._lock:
            self.scans += 1
            self.bytes_read += min(key[2], max_bytes)
            self._pending.pop(key, None)
            self._cache[key] = markers
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return markers


#: Interpreter options whose value is the next word (python -W ignore x.py).
_OPTIONS_WITH_VALUE = {"-W", "-X", "--check-hash-based-pycs", "-r", "--require", "--import",
                       "--loader"}


def script_path(pid: int, exe: str, cmdline: list[str], interpreter: bool = False) -> str | None:
    """The script an interpreter runs (its first argument that is not an option), if any.

    ``python -m module`` and ``python -c code`` run no script file. A relative
    path is resolved against the process's working directory.
    """
    program = os.path.basename(exe or (cmdline[0] if cmdline else ""))
    if not (interpreter or INTERPRETER.match(program)) or len(cmdline) < 2:
        return None
    skip_next = False
    for arg in cmdline[1:]:
        if skip_next:
            skip_next = False
            continue
        if arg in ("-m", "-c", "-e", "--eval", "-p", "--print"):
            return None
        if arg in _OPTIONS_WITH_VALUE:
            skip_next = True
            continue
        if arg.startswith("-"):
            continue
        if os.path.isabs(arg):
            return arg
        return os.path.join(f"/proc/{pid}/cwd", arg)
    return None
