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

Scripts run by an interpreter (``python3 x.py``, ``node x.js``) are read too, the first
script argument only, with the smaller ``max_script_bytes``: Python and shell scripts as code
(``scripts.py``: a tool's name in a comment, a docstring or a list of labels is not the tool),
the others as bytes.

So is every file a process maps executable (a library loaded under any name: libtorrent's
Python module copied to ``fastmath.so``), once per file like a program, its strings and the
names it exports (``SYMBOL_MARKERS``, elf.py); looked at again when the process's executable
memory changes. dpkg's own system libraries are known clean and never read. A library larger
than ``max_bytes`` that no installed package owns (dpkg, a Python distribution's RECORD) has
its loadable segments past the bound read too (``LIBRARY_TAIL_BYTES`` at most).
"""

from __future__ import annotations

import glob
import hashlib
import heapq
import logging
import math
import os
import re
import stat
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import re2

from . import aria2, elf, frozen, packages, procfs, scripts
from .loader import EXE_LOADED, program_file
from .pipes import EXE_SHELL_COPY, SHELLS

#: Read files in chunks this large; the last bytes of a chunk are read again at the
#: start of the next so a marker spanning the boundary is still found.
CHUNK = 1 << 20


INTERPRETER_PREFIX = "interpreter:"
#: aria2c that downloads a torrent or a magnet link given in the files it reads (aria2.py).
ARIA2_BITTORRENT = "aria2-bittorrent"

#: Bytes of each file a shell script sources that are read with it (in the script's thread).
SOURCED_BYTES = 256 << 10
#: Threads that read scripts (each mostly waits on its child process).
SCRIPT_THREADS = 2

FileKey = tuple[int, int, int, int]  # device, inode, size, mtime (ns)

#: Bytes of a library's loadable segments read past ``max_bytes`` when no installed package
#: owns it (a Stratum client padded past the bound); packages' are not read past it (torch's
#: and CUDA's are hundreds of MiB in every ML process). 256 MiB more costs under a second on a
#: free core (100 MiB of libLLVM in 0.3 s, README), so it fits the scan's 5 s on a busy one;
#: past it the library is ``scan:cut``.
LIBRARY_TAIL_BYTES = 256 << 20


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
    # aria2c (an honest downloader too): Debian's links libaria2, a static build carries its
    # default configuration's path. Its option files are then read (aria2.py).
    Marker("aria2", (b"libaria2.so", b"/.aria2/aria2.conf"), need=1),
    # remote-access
    Marker("dropbear", (b"Dropbear", b"dropbear_rsa_host_key"), need=2),
    Marker("openssh-server", (b"sshd_config", b"PermitRootLogin", b"privilege separation"), need=3),
    # an SSH server written with asyncssh, frozen into a program (only a server gives host
    # keys); a Python script is read as code instead (scripts.CODE_MARKERS), as for pproxy
    Marker("asyncssh-server", (b"asyncssh", b"server_host_keys"), need=2),
    # proxy and tunnels
    Marker("tor", (b"Tor will try a different fallback", b"torrc"), need=2),
    Marker("microsocks", (b"MicroSocks SOCKS5 Server",), need=1),
    Marker("pproxy", (b"import pproxy", b"from pproxy"), need=1),  # (frozen; see above)
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
    # deepfake (in a Python script: as code, scripts.CODE_MARKERS)
    # (not tool names alone: deepfake-detection research names its datasets after them)
    Marker("face-swap", (b"inswapper_128", b"roop.processors.frame", b"facefusion.processors",
                         b"SAEHDModel"), need=1),
    # Not reported: they tell that a renamed program is an interpreter, whose script is scanned.
    Marker(INTERPRETER_PREFIX + "python", (b"Py_BytesMain",)),
    Marker(INTERPRETER_PREFIX + "node", (b"NODE_OPTIONS", b"node::Start"), need=2),
)



@dataclass(frozen=True)
class SymbolMarker:
    """A tool known by the names an ELF file exports (elf.py), which survive ``strip`` and
    the removal of its strings: ``fragments`` occur at least ``need`` times in those names."""

    name: str
    fragments: tuple[bytes, ...]
    need: int


#: Checked against the real libtorrent wheel from PyPI (246 exported names in its namespace),
#: and absent from everything tests/test_content_libraries.py scans.
SYMBOL_MARKERS: tuple[SymbolMarker, ...] = (
    # libtorrent's C++ namespace, mangled (N10libtorrent...): its Python module, and
    # libtorrent-rasterbar itself
    SymbolMarker("libtorrent", (b"10libtorrent",), need=20),
    SymbolMarker("xmrig", (b"5xmrig",), need=20),  # xmrig's namespace, built as a library
    # RandomX (Monero's proof of work) and hashcat's library API
    SymbolMarker("randomx", (b"randomx_calculate_hash", b"randomx_create_vm",
                             b"randomx_init_cache"), need=2),
    SymbolMarker("hashcat", (b"hashcat_session_execute", b"hashcat_session_init",
                             b"hashcat_init"), need=2),
)


def symbol_markers(names: list[bytes],
                   markers: tuple[SymbolMarker, ...] = SYMBOL_MARKERS) -> list[str]:
    """The tools whose exported names these are (counted in C: libtorrent exports 12,000)."""
    text = b"\0".join(names)
    return [m.name for m in markers if sum(text.count(f) for f in m.fragments) >= m.need]


INTERPRETER = re.compile(r"^(python[0-9.]*|pypy[0-9.]*|node(js)?|bun|deno|perl[0-9.]*|ruby[0-9.]*|"
                         r"php[0-9.]*|bash|sh|dash|zsh)$")


#: Evidence about a program's file or memory rather than a tool (also in ``exe_markers``).
PACKED_UPX = "packed:upx"  # an ELF executable packed with UPX (its header, UPX!, in the file)
PACKED_ENTROPY = "packed:entropy"  # its code segment looks compressed or encrypted
EXE_MEMFD = "exe:memfd"  # runs from a memfd (an executable that never was a file)
EXE_DELETED = "exe:deleted"  # its executable file was deleted after it started
MEMORY_UNREADABLE = "memory:unreadable"  # its memory could not be read (not dumpable)
SCAN_CUT = "scan:cut"  # a scan of its file or memory stopped at its time budget
EXE_NEW = "exe:new"  # its file, in the system's program folders, was written in the session
EXE_MOUNTED = "exe:mounted"  # ... or another file is mounted over it (or over its folder)
#: a PyInstaller program (frozen.py): the Python code in its archive is read as a script's
PACKED_PYINSTALLER = "packed:pyinstaller"
TRAITS = (PACKED_UPX, PACKED_ENTROPY, EXE_MEMFD, EXE_DELETED, MEMORY_UNREADABLE, SCAN_CUT,
          EXE_NEW, EXE_MOUNTED, PACKED_PYINSTALLER, EXE_SHELL_COPY, EXE_LOADED)
#: Not reported: the file is one of the system's shells (SystemShells), whatever its name;
#: a process running it under a name no shell has gets EXE_SHELL_COPY
SHELL_FILE = "identity:shell"
#: Where the distribution installs its programs (what the engine takes for the system's own
#: text tools and shells): a file there written in the session, or mounted over, is a trait
SYSTEM_PROGRAM_FOLDERS = ("/bin/", "/usr/bin/", "/sbin/", "/usr/sbin/")


def written_since(pid: int, session: float, exe: str = "") -> bool:
    """Whether the program's file changed (its inode's ctime, which root cannot set back)
    after ``session`` began. Colab's kernels run as root: a miner copied to /usr/bin/tac, or
    bind-mounted over it (its file read through /proc/PID/exe), is no file of the
    distribution's. ``exe``: the program as the sampler names it (one a loader runs)."""
    try:
        return os.stat(program_file(pid, exe)).st_ctime > session
    except OSError:
        return False


#: Lines of /proc/PID/mountinfo read at most, where mount ids cannot be read (a container has
#: tens; a user may make thousands, so the mount ids are asked first)
MAX_MOUNTS = 4096


def mounted_over(pid: int, exe: str) -> bool:
    """Whether, in the process's mount namespace, a mount sits on its program's path or its
    folder: an old file of the system's (dash, python) bind-mounted over /usr/bin/tac has an
    old ctime, and runs as tac. Told by mount ids (the mount the running file came from, its
    folder's, the folder's parent's), whatever the number of mounts."""
    folder = os.path.dirname(exe)
    try:
        ids = [_mount_id(program_file(pid, exe)), _mount_id(f"/proc/{pid}/root{folder}"),
               _mount_id(f"/proc/{pid}/root{os.path.dirname(folder)}")]
    except OSError:
        ids = [None]
    if None in ids:  # (gone, or a path not of its root: a chroot)
        return _listed_over(pid, exe)
    return len(set(ids)) > 1


def _mount_id(path: str) -> int | None:
    """The id of the mount a path resolves to (its fdinfo's mnt_id; opened O_PATH: nothing of
    the file is read, a FIFO is not opened)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as info:
            for line in info:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    finally:
        os.close(fd)
    return None


def _listed_over(pid: int, exe: str) -> bool:
    """``mounted_over`` by the mount table (its first ``MAX_MOUNTS`` lines)."""
    wanted = {exe, os.path.dirname(exe)}
    try:
        with open(f"/proc/{pid}/mountinfo", "rb") as info:
            for _, line in zip(range(MAX_MOUNTS), info):
                fields = line.split(b" ", 5)
                if len(fields) > 4 and _unescape(fields[4]) in wanted:
                    return True
    except OSError:
        return False
    return False


def _unescape(path: bytes) -> str:
    """A mountinfo path (space, tab, newline and backslash written as octal escapes)."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), path
                  ).decode("utf-8", "surrogateescape")


def reported(markers: list[str]) -> list[str]:
    """The markers that name tools (not the internal interpreter ones, nor the traits)."""
    return [m for m in markers if not m.startswith(INTERPRETER_PREFIX) and m not in TRAITS
            and m != SHELL_FILE]


class MarkerSearch:
    """Finds which needles a byte string carries, in one pass of an RE2 set: linear in the
    length whatever the bytes (a file of needle prefixes cannot make it backtrack), and
    without holding the GIL (a long scan does not stall the server's other threads)."""

    def __init__(self, markers: tuple[Marker, ...] = MARKERS):
        self.markers = markers
        self.needles = sorted({n for m in markers for n in m.needles}, key=len, reverse=True)
        options = re2.Options()
        options.encoding = re2.Options.Encoding.LATIN1  # bytes, whatever they are
        options.log_errors = False
        options.max_mem = 64 << 20
        self._set = re2.Set.SearchSet(options)
        for needle in self.needles:
            self._set.Add(re.escape(needle))
        self._set.Compile()
        self.longest = max(len(n) for n in self.needles)

    def needles_in(self, data: bytes) -> set[bytes]:
        return {self.needles[i] for i in self._set.Match(data) or ()}

    def markers_for(self, found: set[bytes]) -> list[str]:
        return [m.name for m in self.markers if sum(n in found for n in m.needles) >= m.need]


SEARCH = MarkerSearch()


class NotRegularFile(OSError):
    """A FIFO, socket, device or directory where a file to scan was expected."""


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """A read-only descriptor of ``path`` if it is a regular file, else NotRegularFile.

    The path is first opened with O_PATH, which opens nothing (a FIFO does not wait for a
    writer, a device's driver is not called), and its type read from that descriptor; only a
    regular file is then opened for reading, through that very descriptor (so a file swapped
    in between is not the one read), non-blocking all the same.
    """
    handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        st = os.fstat(handle)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{path} is not a regular file (mode {st.st_mode:o})")
        fd = os.open(f"/proc/self/fd/{handle}",
                     os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(handle)
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise NotRegularFile(f"{path} changed while it was opened")
    return fd, opened


@dataclass
class Scan:
    """What one scan found, and whether it read all it meant to."""

    markers: list[str]
    cut: bool = False  # stopped at its time budget before the end
    # a file past max_bytes read to that bound only, as a program (whose memory scan reads the
    # rest): a library's scan of it reads its loaded segments past the bound
    head_only: bool = False


class Scanning:
    """Needles found over a stream of chunks (a marker spanning two chunks is found)."""

    def __init__(self, search: MarkerSearch = SEARCH):
        self.search = search
        self.found: set[bytes] = set()
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        self.found |= self.search.needles_in(data)
        self._tail = data[-(self.search.longest - 1):]

    def restart(self) -> None:
        """The next chunk does not follow the last one (another memory region)."""
        self._tail = b""

    def markers(self) -> list[str]:
        return self.search.markers_for(self.found)


def scan_fd(fd: int, max_bytes: int, deadline: float | None = None,
            search: MarkerSearch = SEARCH, first: list | None = None,
            scanning: Scanning | None = None) -> Scan:
    """The markers in the first ``max_bytes`` of an open file, read in chunks; stopped (cut)
    at ``deadline`` (time.monotonic()). ``first``: gets the first chunk. ``scanning``: fed
    (to go on past the bound)."""
    scanning = scanning or Scanning(search)
    _, cut = feed_range(fd, 0, max_bytes, deadline, scanning, first)
    return Scan(scanning.markers(), cut=cut)


def feed_range(fd: int, start: int, end: int, deadline: float | None, scanning: Scanning,
               first: list | None = None) -> tuple[int, bool]:
    """Feed bytes ``start`` to ``end`` of a file to ``scanning`` (up to the file's end): the
    bytes read, and whether it stopped at ``deadline``."""
    offset = start
    while offset < end:
        if deadline is not None and time.monotonic() > deadline:
            return offset - start, True
        chunk = os.pread(fd, min(CHUNK, end - offset), offset)
        if not chunk:
            break
        if first is not None and offset == 0:
            first.append(chunk)
        offset += len(chunk)
        scanning.feed(chunk)
    return offset - start, False


def scan_loaded_tail(fd: int, head: bytes, size: int, skip: int, budget: int,
                     deadline: float | None, scanning: Scanning) -> tuple[int, bool]:
    """Feed what the loader maps of a library past its first ``skip`` bytes (its loadable
    segments; all of a file that is no ELF64), ``budget`` bytes at most, to ``scanning``
    (which has read the first ``skip``): the bytes read, and whether it was cut (by the
    deadline or the budget)."""
    ranges, read = elf.loaded_ranges(fd, head, size) or [(0, size)], 0
    position = skip  # where the last read ended: a range starting there follows it
    for start, end in sorted((max(s, skip), e) for s, e in ranges if e > skip):
        start = max(start, position)  # (segments that overlap)
        if start >= end:
            continue
        if start != position:
            scanning.restart()  # a gap: nothing spans it
        take = min(end - start, budget - read)
        done, cut = feed_range(fd, start, start + take, deadline, scanning)
        read, position = read + done, start + done
        if cut or take < end - start:
            return read, True
        if done < take:
            break  # the file ends early (truncated since)
    return read, False


def scan_file(path: str, max_bytes: int, search: MarkerSearch = SEARCH,
              seconds: float | None = None) -> list[str]:
    """The markers in the first ``max_bytes`` of a regular file and in the names it exports
    (NotRegularFile if it is not a regular file)."""
    fd, st = open_regular(path)
    try:
        deadline = None if seconds is None else time.monotonic() + seconds
        head: list[bytes] = []
        markers = scan_fd(fd, max_bytes, deadline, search, first=head).markers
        return _with_symbols(markers, fd, head, st.st_size)
    finally:
        os.close(fd)


def _with_symbols(markers: list[str], fd: int, head: list[bytes], size: int) -> list[str]:
    """``markers`` and those of the names the (ELF) file exports."""
    if not head:
        return markers
    found = symbol_markers(elf.exported_symbols(fd, head[0], size))
    return markers + [m for m in found if m not in markers]


def packed(head: bytes) -> list[str]:
    """Packer traits of an executable from its first bytes: UPX writes its header (``UPX!``)
    right after an ELF's program headers."""
    if head.startswith(b"\x7fELF") and b"UPX!" in head[:4096]:
        return [PACKED_UPX]
    return []


#: Bits of entropy per byte above which an executable segment is taken for compressed or
#: encrypted: machine code has 5.5 to 6.8 (python, gcc, bash, curl, libcrypto with its tables:
#: 6.1 to 6.8), a UPX-packed program 7.7.
ENTROPY_PACKED = 7.2


def code_entropy(fd: int, head: bytes, limit: int = 1 << 20) -> float | None:
    """Entropy (bits per byte) of the first ``limit`` bytes of an ELF64 file's first
    executable segment of 4 KiB or more; None if there is none (or it is not ELF64)."""
    if not head.startswith(b"\x7fELF\x02\x01") or len(head) < 64:
        return None
    phoff, = struct.unpack_from("<Q", head, 0x20)
    entsize, count = struct.unpack_from("<HH", head, 0x36)
    for i in range(min(count, 64)):
        at = phoff + i * entsize
        if entsize < 56 or at + 56 > len(head):
            return None
        kind, flags, offset, _, _, size = struct.unpack_from("<IIQQQQ", head, at)
        if kind == 1 and flags & 1 and size >= 4096:  # PT_LOAD, PF_X
            data = os.pread(fd, min(size, limit), offset)
            if len(data) < 4096:
                return None
            n = len(data)
            return -sum(c / n * math.log2(c / n) for c in map(data.count, _BYTES) if c)
    return None


_BYTES = [bytes([i]) for i in range(256)]


# ------------------------------------------------------------------ memory

#: Mappings never read: the kernel's own, and the stack and heap (data a program works on,
#: which may hold any text: a download, a file being searched).
_SPECIAL = ("[heap]", "[stack]", "[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]", "[uprobes]")


#: The writable anonymous memory right after an unpacked image is read as its data up to this
#: size (a runtime's heap next to its JIT code is not).
IMAGE_DATA_MAX = 8 << 20

#: At most this much of a process's /proc/PID/maps is read (about 50,000 mappings; a program
#: has hundreds). One with more is scanned as far as that goes, and counted as cut short.
MAPS_MAX_BYTES = 4 << 20


class Region(NamedTuple):
    """One line of /proc/PID/maps (a tuple: thousands are read per look)."""

    start: int
    end: int
    perms: str
    path: str
    offset: int = 0  # in the file mapped


def parse_maps(text: str) -> list[Region]:
    regions = []
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 5 or "-" not in fields[0]:
            continue
        start, _, end = fields[0].partition("-")
        try:
            regions.append(Region(int(start, 16), int(end, 16), fields[1],
                                  fields[5] if len(fields) > 5 else "", int(fields[2], 16)))
        except ValueError:
            continue
    return regions


def code_regions(regions: list[Region], exe: str, interpreter: bool,
                 file_bytes: int | None = None) -> list[Region]:
    """The mappings where a program's own code and constants live once it runs, whatever
    its file looked like: anonymous memory that is executable or read-only (where a packed
    program unpacks itself, and a JIT writes code), the writable anonymous memory right after
    such (the unpacked program's data), the executable's own writable mappings, and code
    mapped from a memfd or a deleted file, and the part of the executable's mappings past the
    ``file_bytes`` its file scan reads (a program padded past it). Not an interpreter's
    writable memory: a Python process holds whatever text its program reads, and what it runs
    is its script."""
    chosen: list[Region] = []
    for r in regions:
        if not r.perms.startswith("r") or r.path in _SPECIAL:
            continue
        # Anonymous memory, private or shared (shared shows as a deleted /dev/zero), and
        # memory of a file nobody else can open (a memfd, a deleted file).
        hidden = r.path == "" or r.path.startswith(("/dev/zero (deleted)", "/SYSV", "/memfd:")) \
            or r.path.endswith(" (deleted)")
        if hidden:
            if "x" in r.perms or "w" not in r.perms:
                chosen.append(r)
            elif not interpreter and ((chosen and chosen[-1].end == r.start and chosen[-1].path
                                       == r.path and "w" not in chosen[-1].perms
                                       and r.end - r.start <= IMAGE_DATA_MAX)
                                      or r.path.split(" (")[0] == exe.split(" (")[0]):
                chosen.append(r)  # the unpacked image's data, or the memfd program's own
        elif r.path == exe and "w" in r.perms and not interpreter:
            chosen.append(r)
        elif r.path == exe and file_bytes is not None and r.offset + r.end - r.start > file_bytes:
            skip = max(0, file_bytes - r.offset)
            chosen.append(Region(r.start + skip, r.end, r.perms, r.path, r.offset + skip))
    return chosen


def scan_memory(pid: int, start_ticks: int, exe: str, interpreter: bool, max_bytes: int,
                deadline: float, search: MarkerSearch = SEARCH,
                file_bytes: int | None = None) -> tuple[Scan, tuple]:
    """The markers in a running process's code and constants (``code_regions``), at most
    ``max_bytes`` of them, until ``deadline``; and the layout read (to tell when it changed).
    PermissionError: its memory cannot be read (not dumpable, another user's);
    ProcessLookupError: it exited, or its pid is another process's now."""
    raw = procfs.read_all(f"/proc/{pid}/maps", MAPS_MAX_BYTES + 1)
    maps_cut = len(raw) > MAPS_MAX_BYTES  # tens of thousands of mappings: a decoy layout
    regions = code_regions(parse_maps(raw[:MAPS_MAX_BYTES].decode("utf-8", "replace")), exe,
                           interpreter, file_bytes)
    layout = tuple((r.start, r.end, r.perms) for r in regions)
    scanning = Scanning(search)
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if procfs.read_stat(pid).start != start_ticks:
            raise ProcessLookupError(pid)  # the pid was taken again: not the process asked
        left = max_bytes
        for region in regions:
            if left <= 0:  # more than max_bytes of it (decoys, say): what is left is not read
                return Scan(scanning.markers(), cut=True), layout
            scanning.restart()
            address = region.start
            while address < region.end and left > 0:
                if time.monotonic() > deadline:
                    return Scan(scanning.markers(), cut=True), layout
                size = min(CHUNK, region.end - address, left)
                try:
                    chunk = os.pread(fd, size, address)
                except OSError:
                    break  # unmapped meanwhile, or a page that cannot be read: next region
                if not chunk:
                    break
                scanning.feed(chunk)
                address += len(chunk)
                left -= len(chunk)
    finally:
        os.close(fd)
    return Scan(scanning.markers(), cut=maps_cut), layout


#: At most this many files mapped executable are looked up per process (a program maps a few
#: hundred at most); past it, the rest are not scanned and the process carries ``scan:cut``.
MAX_LIBRARIES = 1024


class MappedFile(NamedTuple):
    """A file a process has mapped executable, as /proc/PID/maps names it."""

    path: str
    inode: int
    start: int  # of its first executable mapping (/proc/PID/map_files/START-END)
    end: int


def executable_files(text: str) -> list[MappedFile]:
    """The files mapped executable in a /proc/PID/maps text (its program, the shared
    libraries it loaded, under whatever names), once each. Not a deleted file's mappings:
    ``code_regions`` reads those from memory."""
    found: dict[int, MappedFile] = {}
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or "x" not in fields[1] or not fields[5].startswith("/") \
                or fields[5].endswith(" (deleted)"):
            continue
        start, _, end = fields[0].partition("-")
        try:
            inode = int(fields[4])
            if inode and inode not in found:
                found[inode] = MappedFile(fields[5], inode, int(start, 16), int(end, 16))
        except ValueError:
            continue
    return list(found.values())


#: Folders of the system's own libraries: their root-owned files are scanned after the others,
#: or not at all where the system's package manager installed them (``SystemPackages``).
SYSTEM_LIBRARY_FOLDERS = ("/usr/lib/", "/usr/lib64/", "/lib/", "/lib64/")


class SystemPackages:
    """The shared objects dpkg installed, from its file lists (``/var/lib/dpkg/info/*.list``:
    plain text, no package of ours needed), read again when that folder changes (a package
    installed). Only root can put a file in the system's library folders and list it: a user
    cannot pass a renamed library off as the system's, so these are known clean (those
    elsewhere, CUDA's under /usr/local, are not read past the scan's bound)."""

    def __init__(self, folder: str = "/var/lib/dpkg/info", max_bytes: int = 64 << 20):
        self.folder = folder
        self.max_bytes = max_bytes  # of all lists together: more is not read (none clean)
        self._stamp: int | None = None
        self._paths: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def installed(self, path: str) -> bool:
        """Whether dpkg installed ``path`` (maps says /usr/lib where dpkg may say /lib)."""
        with self._lock:
            self._refresh()
            paths = self._paths
        return path in paths or (path.startswith("/usr/") and path[4:] in paths)

    def _refresh(self) -> None:
        try:
            stamp = os.stat(self.folder).st_mtime_ns
        except OSError:
            self._stamp, self._paths = None, frozenset()
            return
        if stamp == self._stamp:
            return
        paths: set[str] = set()
        left = self.max_bytes
        try:
            names = [n for n in os.listdir(self.folder) if n.endswith(".list")]
        except OSError:
            names = []
        for name in names:
            try:
                fd, st = open_regular(os.path.join(self.folder, name))
            except OSError:
                continue
            try:
                text = os.pread(fd, min(st.st_size, left), 0).decode("utf-8", "replace")
            finally:
                os.close(fd)
            left -= len(text)
            if left <= 0:
                paths = set()
                break
            paths.update(line for line in text.splitlines() if ".so" in line)
        self._stamp, self._paths = stamp, frozenset(paths)


#: The system's state, the same for every scanner.
SYSTEM_PACKAGES = SystemPackages()


def _mapped_file_key(pid: int, mapped: MappedFile, session: float | None = None
                     ) -> tuple[FileKey, str, bool] | None:
    """The key of a mapped file, a path that reads it (its path if that is still the very file
    mapped, the same inode, else the mapping itself: /proc/PID/map_files, which only root may
    open), and whether it is one of the system's own libraries (a root-owned file no one else
    may write, in a system folder, that the guard finds at that path itself, unchanged since
    the kernel's ``session`` began); None if it cannot be read (it moved after it was loaded).
    Colab's kernels run as root: a tool copied over a library dpkg lists, or bind-mounted
    over one in a mount namespace of the kernel's own, is no file of the distribution's."""
    for path in (mapped.path, f"/proc/{pid}/map_files/{mapped.start:x}-{mapped.end:x}"):
        try:
            st = os.stat(path)
        except OSError:
            continue
        # The device is not compared: on overlayfs, maps shows the layer's, stat the overlay's.
        if st.st_ino == mapped.inode and stat.S_ISREG(st.st_mode):
            system = st.st_uid == 0 and not st.st_mode & 0o022 and path == mapped.path \
                and mapped.path.startswith(SYSTEM_LIBRARY_FOLDERS) \
                and (session is None or st.st_ctime <= session)
            return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), path, system
    return None


def _known_clean(mapped: MappedFile, system: bool, packages: SystemPackages) -> bool:
    """A system library that the system's package manager installed (root's file, no one
    else may write it, listed by dpkg): never scanned."""
    return system and packages.installed(mapped.path)


def package_owned(path: str, st: os.stat_result, session: float | None,
                  system_packages: SystemPackages) -> bool:
    """Whether an installed package owns the file at ``path`` as it is (``st``): dpkg listed
    it, root's file no one else may write, unchanged since the kernel's ``session`` began;
    or a Python distribution of its environment lists it in its RECORD (packages.py)."""
    if path.startswith("/proc/"):  # read through map_files: its path is not the one mapped
        return False
    if st.st_uid == 0 and not st.st_mode & 0o022 and \
            (session is None or st.st_ctime <= session) and system_packages.installed(path):
        return True
    return packages.listed_unchanged(path, st, session)


def executable_kib(pid: int) -> int:
    """KiB of a process's executable mappings besides its program (VmLib in
    /proc/PID/status): a library loaded changes it, memory allocated for data does not, so a
    busy numpy process is not looked at again for nothing. ProcessLookupError: gone."""
    for line in procfs.read_small(f"/proc/{pid}/status").splitlines():
        if line.startswith(b"VmLib:"):
            return int(line.split()[1])
        if line.startswith(b"Threads:"):
            break  # past where it would be (a kernel thread has none)
    return 0


@dataclass
class _Libraries:
    """What a process has mapped executable, as last looked at (``ContentScanner``)."""

    start: int  # its start (clock ticks after boot): the pid's identity
    session: float | None = None  # when its kernel's session began (epoch seconds)
    code: int = -1  # its executable memory then (executable_kib)
    looked_at: float = 0.0  # monotonic; 0: never
    # each file's key, a path to read it by, and whether it is a system library
    files: tuple[tuple[FileKey, str, bool], ...] = ()
    cut: bool = False  # more files, or more maps, than are looked up
    queued: bool = False


@dataclass
class _Memory:
    """A process's memory scans."""

    start: int  # its start (clock ticks after boot): the pid's identity
    exe: str
    markers: list[str] = field(default_factory=list)
    traits: list[str] = field(default_factory=list)
    layout: tuple = ()
    scanned_at: float = 0.0  # monotonic; 0: never
    checked_at: float = 0.0
    ran: int = -1  # its run time (ns, schedstat) when last looked at
    maps: bytes = b""  # its /proc/PID/maps when last looked at
    queued: bool = False
    recheck: float = 0.0  # seconds from one look to the next while it runs (grows)


#: The shortest gap between two looks at a running process's memory (the first after the
#: first look; then each twice the last, up to ``memory_recheck``): never every read, even
#: with ``memory_after`` 0.
MEMORY_RECHECK_FIRST = 0.5


class SystemShells:
    """The system's shells (pipes.SHELLS in /bin and /usr/bin), each by what the loader maps
    of its file (its loadable segments: code and data) and their SHA-256, read once: a
    program that maps the same is one of them, whatever it is called, whatever was added
    past its segments (`cp /bin/dash kworker; echo >> kworker`) or changed in its header's
    fields no loader reads (_ELF_IGNORED). A byte changed in its code or data is not told."""

    FOLDERS = ("/bin", "/usr/bin")

    def __init__(self):
        self._digests: dict[int, set[bytes]] | None = None

    def holds(self, fd: int, head: bytes, size: int) -> bool:
        """Whether the open file (``head``: its first bytes) is one of them (its segments
        read only if their length is one of theirs)."""
        if self._digests is None:
            self._digests = self._read()
        ranges = _loaded(fd, head, size)
        digests = self._digests.get(sum(end - start for start, end in ranges))
        return bool(digests) and _sha256(fd, ranges) in digests

    def _read(self) -> dict[int, set[bytes]]:
        digests: dict[int, set[bytes]] = {}
        paths = {os.path.realpath(os.path.join(folder, name))
                 for folder in self.FOLDERS for name in SHELLS}
        for path in sorted(paths):
            try:
                fd, st = open_regular(path)
            except OSError:
                continue  # not installed here
            try:
                ranges = _loaded(fd, os.pread(fd, 4096, 0), st.st_size)
                digests.setdefault(sum(end - start for start, end in ranges),
                                   set()).add(_sha256(fd, ranges))
            finally:
                os.close(fd)
        return digests


def _loaded(fd: int, head: bytes, size: int) -> list[tuple[int, int]]:
    """The file's loadable segments' ranges, in order, overlaps merged (the whole file if it
    is no ELF64)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(elf.loaded_ranges(fd, head, size) or [(0, size)]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


#: Fields of an ELF64 header no loader reads (e_ident's padding, and where the section
#: headers are: sections are the linker's): zeroed before a program's segments are hashed, so
#: that a byte changed there leaves a copy the program it is
_ELF_IGNORED = ((9, 16), (0x28, 0x30), (0x3A, 0x40))


def _sha256(fd: int, ranges: list[tuple[int, int]]) -> bytes:
    digest = hashlib.sha256()
    for start, end in ranges:
        offset = start
        while offset < end:
            chunk = os.pread(fd, min(CHUNK, end - offset), offset)
            if not chunk:
                break
            if offset == 0 and chunk.startswith(b"\x7fELF\x02") and len(chunk) >= 64:
                header = bytearray(chunk[:64])
                for first, last in _ELF_IGNORED:
                    header[first:last] = bytes(last - first)
                chunk = bytes(header) + chunk[64:]
            digest.update(chunk)
            offset += len(chunk)
    return digest.digest()


SYSTEM_SHELLS = SystemShells()


class ContentScanner:
    """Markers per file, scanned once per (device, inode, size, mtime), and per running
    process, from its memory.

    Everything is read in one background thread (``background=True``), smallest job first,
    each within a time budget (``scan_seconds``); the queue holds at most ``max_pending``
    jobs (others are asked again later). What was cut short, refused or dropped is counted
    in ``stats`` and said once in the log.
    """

    def __init__(self, max_bytes: int = 64 << 20, max_script_bytes: int = 1 << 20,
                 background: bool = True, cache_size: int = 4096,
                 log: logging.Logger | None = None, scan_seconds: float = 5.0,
                 memory_bytes: int = 32 << 20, memory_after: float = 0.5,
                 memory_recheck: float = 5.0, memory_rescan: float = 120.0,
                 max_pending: int = 512, stuck_after: float = 10.0,
                 libraries_recheck: float = 0.5):
        self.max_bytes = max_bytes
        self.max_script_bytes = max_script_bytes
        self.cache_size = cache_size
        self.scan_seconds = scan_seconds
        self.memory_bytes = memory_bytes
        self.memory_after = memory_after  # seconds a process runs before its memory is read
        self.memory_recheck = memory_recheck  # its layout looked at again (while it runs)
        self.memory_rescan = memory_rescan  # read again all the same (while it runs)
        # a process whose size changed (a library loaded) has its mapped files looked at
        # again, at most this often
        self.libraries_recheck = libraries_recheck
        self.max_pending = max_pending
        self.log = log or logging.getLogger("colab_guard")
        self.scans = 0  # files actually read (the rest came from the cache)
        self.bytes_read = 0
        self.stats = {"file_scans": 0, "script_scans": 0, "memory_scans": 0, "cut": 0,
                      "refused": 0, "dropped": 0, "memory_denied": 0, "vanished": 0,
                      "library_looks": 0, "library_tails": 0, "library_tail_bytes": 0,
                      "library_tails_owned": 0}
        self._said: set[str] = set()
        self._cache: OrderedDict[FileKey, Scan] = OrderedDict()
        self._pending: dict[FileKey, bool] = {}
        self._memory: dict[tuple, _Memory] = {}
        self._libraries: dict[tuple, _Libraries] = {}
        self._program_traits: dict[tuple, tuple[str, ...]] = {}  # (key, exe) -> its traits
        #: processes whose memory scan found other markers or traits than the last one: read
        #: in full at the next tick (added and pruned under the lock; the sampler's look-ups
        #: and discards are single set operations)
        self.news: set[tuple] = set()
        #: called, from a scan's thread, when a background scan finds a tool: the owner
        #: samples again at once, not an interval later, so that a tool living less than an
        #: interval (a fresh copy each run, never cached) is still seen running and named
        self.on_found: Callable[[], None] | None = None
        self.system_packages = SYSTEM_PACKAGES
        self._lock = threading.Lock()
        self._background = background
        self._jobs: list[tuple] = []  # heap of (bytes to read, sequence, job)
        self._sequence = 0
        self._wake = threading.Condition(self._lock)
        self._running: tuple[float, tuple] | None = None  # (since, job) of the worker
        self.stuck_after = stuck_after
        self.stuck_threads = 0  # threads left blocked in a read (see _check_stuck)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._scripts: ThreadPoolExecutor | None = None  # reads scripts (_queue_script)
        self._scripts_queued = 0

    # ------------------------------------------------------------ public

    def process_markers(self, pid: int, exe: str, cmdline: list[str],
                        key: tuple | None = None, session: float | None = None) -> list[str]:
        """Markers of a process's executable and of the script it runs, if any, and (given
        the process's ``key``) those found in its memory, with the traits of its executable
        (given when its ``session`` began, epoch seconds: whether its file in the system's
        folders was written since).

        The executable is read through ``/proc/PID/exe``, which still works when
        the file was deleted or replaced after the program started.
        """
        program_at = program_file(pid, exe)
        found = self.file_markers(program_at, self.max_bytes)
        markers = reported(found)
        if program_at != f"/proc/{pid}/exe":  # the loader's own file too (a static miner
            own = self.file_markers(f"/proc/{pid}/exe", self.max_bytes)  # naming /bin/true)
            markers += [m for m in reported(own) if m not in markers]
            found = found + [t for t in own if t in TRAITS and t not in found]
        interpreter = any(m.startswith(INTERPRETER_PREFIX) for m in found)  # even when renamed
        script = script_path(pid, exe, cmdline, interpreter)
        if script is not None:
            language = script_language(exe, found)
            markers += [m for m in reported(self.script_markers(script, language))
                        if m not in markers]
        elif script_language(exe, found) == scripts.PYTHON:
            code = inline_code(cmdline)
            if code is not None:
                markers += [m for m in reported(self.inline_markers(pid, code))
                            if m not in markers]
        if PACKED_PYINSTALLER in found:  # its Python code, as a script's
            markers += [m for m in reported(self.script_markers(program_at, scripts.FROZEN))
                        if m not in markers]
        if script_language(exe, found) == scripts.PYTHON:
            for path, language in python_startup(pid, cmdline):  # run before any script
                markers += [m for m in reported(self.script_markers(path, language))
                            if m not in markers]
        extra = [t for t in found if t in TRAITS]
        try:
            link = os.readlink(program_at)
        except OSError:
            link = ""
        if program_at != f"/proc/{pid}/exe":
            extra.append(EXE_LOADED)
        if link.startswith("/memfd:"):
            extra.append(EXE_MEMFD)
        elif link.endswith(" (deleted)"):
            extra.append(EXE_DELETED)
        elif exe.startswith(SYSTEM_PROGRAM_FOLDERS):
            extra += self._system_program_traits(pid, exe, key, session)
        if SHELL_FILE in found and \
                os.path.basename(exe).split(" (")[0].lstrip("-") not in SHELLS:
            extra.append(EXE_SHELL_COPY)
        program = list(found)  # the program's own content (not its script's): aria2c's?
        if key is not None:
            memory = self._memory.get(key)
            if memory is not None:
                markers += [m for m in memory.markers if m not in markers]
                extra += memory.traits
                program += memory.markers  # (a packed aria2c)
            mapped, cut = self._library_markers(key)
            markers += [m for m in mapped if m not in markers]
            if cut:
                extra.append(SCAN_CUT)
            program += mapped
        if "aria2" in program:
            markers += [m for m in self.aria2_markers(pid, cmdline, key) if m not in markers]
        return markers + [t for t in dict.fromkeys(extra) if t not in markers]

    def _system_program_traits(self, pid: int, exe: str, key: tuple | None,
                               session: float | None) -> list[str]:
        """exe:new and exe:mounted of a program in the system's folders. They hold for the
        program's life (its file's inode and its mount namespace were fixed at its exec), so
        a known process's are found once, not at every full read."""
        known = self._program_traits.get((key, exe)) if key is not None else None
        if known is not None:
            return list(known)
        traits = []
        if session is not None and written_since(pid, session, exe):
            traits.append(EXE_NEW)
        if mounted_over(pid, exe):
            traits.append(EXE_MOUNTED)
        if key is not None and session is not None:  # (without its session: asked again)
            self._program_traits[(key, exe)] = tuple(traits)
        return traits

    def settled(self, pid: int, exe: str, cmdline: list[str], key: tuple | None = None,
                session: float | None = None) -> bool:
        """Whether the files of a process have all been scanned already (and, given its key,
        its memory once it has run a little), so that ``process_markers`` answers from the
        cache, finally (until the files change, or the process does). Schedules what is due.
        ``session``: when its kernel's session began (a library written since is read)."""
        done = self.files_settled(pid, exe, cmdline, key)
        if key is not None and not self._memory_settled(pid, exe, key):
            done = False
        if key is not None and not self._libraries_settled(pid, key, session):
            done = False
        return done

    def files_settled(self, pid: int, exe: str, cmdline: list[str],
                      key: tuple | None = None) -> bool:
        """Whether the process's executable and script have been scanned already (and, given
        its key, the files it was last seen to have mapped executable)."""
        if key is not None and self._libraries_pending(key):
            return False
        found = []
        for at, path in enumerate(dict.fromkeys((program_file(pid, exe), f"/proc/{pid}/exe"))):
            try:  # the program's file, and a loader's own (content.process_markers)
                st = os.stat(path)
            except OSError:
                continue
            program = self._cache.get((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
            if program is None:
                return False
            if at == 0:
                found = program.markers
        script = script_path(pid, exe, cmdline, True)
        language = script_language(exe, found)
        if script is None:
            code = inline_code(cmdline) if language == scripts.PYTHON else None
            if code is not None and _inline_key(pid, code) not in self._cache:
                return False
        elif not self._script_read(_script_file(script), language):
            return False
        if PACKED_PYINSTALLER in found and \
                not self._script_read(program_file(pid, exe), scripts.FROZEN):
            return False
        if "aria2" in found or self._pending:  # aria2c's option files (queued if packed)
            options = _aria2_key(pid, cmdline, key)
            if ("aria2" in found and options not in self._cache) or options in self._pending:
                return False
        if language != scripts.PYTHON:
            return True
        unread = [(p, how) for p, how in python_startup(pid, cmdline)
                  if not self._script_read(p, how)]
        for path, how in unread:  # (queued if not yet: it may not have been asked)
            self.script_markers(path, how)
        return all(self._script_read(p, how) for p, how in unread)

    def _script_read(self, path: str, language: str) -> bool:
        """Whether the script at ``path`` was read (or is none: gone, not a regular file)."""
        try:
            st = os.stat(path)
        except OSError:
            return True
        return not stat.S_ISREG(st.st_mode) or _script_key(st, language) in self._cache

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
            known = self._known(key)
            if known is not None:
                return known
            if self._background:
                if self._queue(min(st.st_size, max_bytes), ("file", key, path, max_bytes)):
                    self._pending[key] = True
                return []
        return self._scan(key, path, max_bytes).markers

    def _known(self, key: tuple) -> list[str] | None:
        """With the lock held: a file's markers if it was scanned, [] while its scan is under
        way, None if neither (then it is to be scanned)."""
        self._check_stuck()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key].markers
        return [] if key in self._pending else None

    def script_markers(self, path: str, language: str) -> list[str]:
        """The markers of the script an interpreter runs (a directory: its ``__main__.py``),
        read as code for Python and shell (``scripts.py``), as bytes for the other languages;
        [] while a background read is running or on error."""
        if language == scripts.OTHER:
            return self.file_markers(path, self.max_script_bytes)
        path = _script_file(path)
        try:
            st = os.stat(path)
        except OSError:
            return []
        if not stat.S_ISREG(st.st_mode):
            return []
        key = _script_key(st, language)
        return self._known_or_queued(key, path, lambda: self._scan_script(key, path))

    def inline_markers(self, pid: int, code: str) -> list[str]:
        """The markers of ``python -c CODE``: its code read as a script's (and the files it
        imports or runs from the process's working directory); [] while being read."""
        key = _inline_key(pid, code)
        return self._known_or_queued(key, (pid, code),
                                     lambda: self._scan_inline(key, pid, code))

    def aria2_markers(self, pid: int, cmdline: list[str], process: tuple | None) -> list[str]:
        """``ARIA2_BITTORRENT`` if aria2c's option files (or a local file it is given) hold
        a torrent (aria2.py); [] while they are read. Read once per process: aria2c reads
        them once, at its start."""
        key = _aria2_key(pid, cmdline, process)
        return self._known_or_queued(key, (pid, cmdline),
                                     lambda: self._read_aria2(key, pid, cmdline))

    def _known_or_queued(self, key: tuple, job, read: Callable[[], Scan]) -> list[str]:
        """The markers found for ``key``; else ``job`` queued for the script threads and []
        (in the background), or ``read()`` now."""
        with self._lock:
            known = self._known(key)
            if known is not None:
                return known
            if self._background:
                self._queue_script(key, job)
                return []
        return read().markers

    def _read_aria2(self, key: tuple, pid: int, cmdline: list[str]) -> Scan:
        deadline = time.monotonic() + self.scan_seconds

        def read(path: str, most: int) -> bytes | None:
            if time.monotonic() > deadline:
                return None
            try:
                fd, _ = open_regular(path)
            except OSError:
                return None
            try:
                return os.pread(fd, most, 0) if most else b""
            except OSError:
                return None
            finally:
                os.close(fd)

        environ = _environ(pid)
        reader = aria2.Reader(pid, environ, _home(pid, environ), read)
        result = Scan([ARIA2_BITTORRENT] if aria2.given_a_torrent(cmdline, reader) else [])
        with self._lock:
            self.stats["script_scans"] += 1
            self._pending.pop(key, None)
            self._cache[key] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result

    def _scan_inline(self, key: tuple, pid: int, code: str) -> Scan:
        """``_scan_script`` for code given on the command line: read from a memfd holding it
        (``scripts.read``: here if small, else in a child), its modules from its directory."""
        deadline = time.monotonic() + self.scan_seconds
        data = code.encode("utf-8", "surrogateescape")[:self.max_script_bytes]
        result = Scan([])
        try:
            fd = os.memfd_create("colab-guard-inline", os.MFD_CLOEXEC)
            try:
                os.write(fd, data)
                answer = scripts.read(fd, scripts.PYTHON, self.max_script_bytes,
                                      self.max_bytes, deadline)
            finally:
                os.close(fd)
            evidence = scripts.Evidence.from_json(answer.get("evidence", {}))
            self._with_local_modules(f"/proc/{pid}/cwd/-c", evidence, deadline)
            result = Scan(scripts.code_markers(evidence))
        except scripts.ScriptReadFailed:
            result = Scan(scripts.code_markers(scripts.tail_imports(data)), cut=True)
        except OSError as err:
            self.log.debug("colab-guard: could not read the code of process %d: %s", pid, err)
        with self._lock:
            self.scans += 1
            self.stats["script_scans"] += 1
            self._pending.pop(key, None)
            self._cache[key] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result

    def _queue_script(self, key: tuple, path: str | tuple[int, str]) -> None:
        """With the lock held: read a script in the scripts' own threads. The work is a child
        process's or a few milliseconds here, so it does not wait behind a 64 MiB library
        scan of the scanner's thread: a tool script is known within a tick or two."""
        if self._closed:
            return
        if self._scripts_queued >= self.max_pending:
            self._count("dropped", "the content scanner's queue is full (%d jobs); scans are "
                        "dropped and asked again later", self.max_pending)
            return
        if self._scripts is None:
            self._scripts = ThreadPoolExecutor(SCRIPT_THREADS, "colab-guard-script")
        self._pending[key] = True
        self._scripts_queued += 1
        self._scripts.submit(self._script_job, key, path)

    def _script_job(self, key: tuple, path: str | tuple[int, str]) -> None:
        try:
            if not self._closed and key[0] == "aria2":
                self._read_aria2(key, *path)
            elif not self._closed and isinstance(path, tuple):
                self._scan_inline(key, *path)
            elif not self._closed:
                self._scan_script(key, path)
            with self._lock:
                scan = self._cache.get(key)
            self._tell_found(scan.markers if scan is not None else [])
        except Exception:  # a bug: said, and the next goes on
            self.log.exception("colab-guard: reading a script failed")
            with self._lock:
                self._pending.pop(key, None)
        finally:
            with self._lock:
                self._scripts_queued -= 1
                self._wake.notify_all()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the scans under way (tests and the command line use it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._jobs or self._running is not None or self._scripts_queued:
                self._check_stuck()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("content scans still running")
                self._wake.wait(0.1 if left is None else min(left, 0.1))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._jobs.clear()
            self._wake.notify_all()
            scripts_pool, self._scripts = self._scripts, None
        if scripts_pool is not None:
            scripts_pool.shutdown(wait=False, cancel_futures=True)

    def forget(self, alive: set) -> None:
        """Drop the memory state of processes that are gone (keys not in ``alive``)."""
        with self._lock:
            for key in [k for k in self._memory if k not in alive]:
                del self._memory[key]
            for key in [k for k in self._libraries if k not in alive]:
                del self._libraries[key]
            for known in [k for k in self._program_traits if k[0] not in alive]:
                del self._program_traits[known]
            self.news.intersection_update(alive)

    # ------------------------------------------------------------ the queue

    def _queue(self, cost: int, job: tuple) -> bool:
        """Queue a job (with the lock held); False if the queue is full."""
        if self._closed:
            return False
        self._check_stuck()
        if len(self._jobs) >= self.max_pending:
            self._count("dropped", "the content scanner's queue is full (%d jobs); scans are "
                        "dropped and asked again later", self.max_pending)
            return False
        self._sequence += 1
        heapq.heappush(self._jobs, (cost, self._sequence, job))
        if self._thread is None:
            self._start_worker()
        self._wake.notify_all()
        return True

    def _start_worker(self) -> None:
        thread = threading.Thread(name="colab-guard-scan", daemon=True)
        thread.run = lambda: self._work(thread)  # type: ignore[method-assign]
        self._thread = thread
        thread.start()

    def _check_stuck(self) -> None:
        """With the lock held: a job that has run far past its budget is blocked in a read
        no budget can stop (a file on a FUSE mount that never answers, a process's memory
        behind a fault that is never served). Its thread is left to it, the job counted as
        cut, and a new thread goes on with the queue: the scanner cannot be blinded."""
        if self._running is None or self._closed:
            return
        started, job = self._running
        if time.monotonic() - started < self.scan_seconds + self.stuck_after:
            return
        self._running = None
        self.stuck_threads += 1
        self._count("stuck", "a content scan (%s) was blocked for over %g s; it is left to its "
                    "thread, counted as cut (%s), and a new thread scans the rest", job[2],
                    self.scan_seconds + self.stuck_after, SCAN_CUT)
        if job[0] in ("file", "library"):
            self._pending.pop(job[1], None)
            self._cache[job[1]] = Scan([SCAN_CUT], cut=True)
        elif job[0] == "libraries":
            libraries = self._libraries.get(job[1])
            if libraries is not None:
                libraries.queued, libraries.cut = False, True
        else:
            memory = self._memory.get(job[1])
            if memory is not None:
                memory.traits, memory.queued = [SCAN_CUT], False
                memory.scanned_at = memory.scanned_at or time.monotonic()
        self._start_worker()

    def _work(self, me: threading.Thread) -> None:
        while True:
            with self._lock:
                while not self._jobs and not self._closed and self._thread is me:
                    self._wake.wait()
                if self._closed or self._thread is not me:
                    return  # closed, or left behind while blocked
                _, _, job = heapq.heappop(self._jobs)
                self._running = (time.monotonic(), job)
            try:
                if job[0] == "file":
                    self._scan(*job[1:])
                elif job[0] == "library":
                    self._scan(job[1], job[2], self.max_bytes, library=True, session=job[3])
                elif job[0] == "libraries":
                    self._look_at_libraries(*job[1:])
                else:
                    self._scan_memory(*job[1:])
            except Exception:  # a bug: said, and the thread goes on with the next
                self.log.exception("colab-guard: content scan failed")
            finally:
                with self._lock:
                    if self._thread is me:
                        self._running = None
                    self._wake.notify_all()

    def _count(self, kind: str, message: str, *args) -> None:
        """Count a kind of event; say it once in the log."""
        self.stats[kind] = self.stats.get(kind, 0) + 1
        if kind not in self._said:
            self._said.add(kind)
            self.log.warning("colab-guard: " + message + " (further occurrences are only counted)",
                             *args)

    # ------------------------------------------------------------ scanning

    def _scan(self, key: FileKey, path: str, max_bytes: int, library: bool = False,
              session: float | None = None) -> Scan:
        """Scan a file (``max_bytes`` of it; a ``library`` past that too, ``_library_tail``)."""
        deadline = time.monotonic() + self.scan_seconds
        result, opened, exported, tail = Scan([]), key, [], 0
        try:
            fd, st = open_regular(path)
            try:
                opened = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                # The names it exports first (milliseconds): a tool they show is known at
                # once, while the rest of a large library is still being read.
                exported = symbol_markers(elf.exported_symbols(fd, os.pread(fd, 4096, 0),
                                                               st.st_size))
                if exported:
                    with self._lock:
                        self._cache.setdefault(opened, Scan(list(exported)))
                head: list[bytes] = []
                scanning = Scanning()
                result = scan_fd(fd, max_bytes, deadline, first=head, scanning=scanning)
                if st.st_size > max_bytes and head and not result.cut:
                    if library:
                        tail, result.cut = self._library_tail(fd, st, head[0], path, session,
                                                              deadline, scanning)
                        result.markers = scanning.markers()
                    else:
                        result.head_only = True
                result.markers += [m for m in exported if m not in result.markers]
                if frozen.find_archive(fd, st.st_size) is not None:
                    result.markers.append(PACKED_PYINSTALLER)
                if head:
                    # (a library's too: a program the loader runs is mapped as one, and may
                    # be scanned as one first; reported() keeps it out of a library's markers)
                    if SYSTEM_SHELLS.holds(fd, head[0], st.st_size):
                        result.markers.append(SHELL_FILE)
                    result.markers += packed(head[0])
                    entropy = code_entropy(fd, head[0])
                    if entropy is not None and entropy > ENTROPY_PACKED:
                        result.markers.append(PACKED_ENTROPY)
            finally:
                os.close(fd)
        except OSError as err:
            self._not_read(path, err)
        self._note_cut(path, result)
        with self._lock:
            self.scans += 1
            self.stats["file_scans"] += 1
            self.bytes_read += min(opened[2], max_bytes) + tail
            self._pending.pop(key, None)
            # Cached under what was read: a file swapped in after the stat is not taken for
            # the one that was there (which is scanned when asked again).
            if opened == key or opened not in self._cache or exported:  # (or its interim)
                self._cache[opened] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._tell_found(result.markers)
        return result

    def _library_tail(self, fd: int, st: os.stat_result, head: bytes, path: str,
                      session: float | None, deadline: float,
                      scanning: Scanning) -> tuple[int, bool]:
        """Read a library's loadable segments past ``max_bytes`` (``LIBRARY_TAIL_BYTES`` at
        most, within the scan's deadline) unless an installed package owns it: the bytes read,
        and whether it was cut."""
        if package_owned(path, st, session, self.system_packages):
            with self._lock:
                self.stats["library_tails_owned"] += 1
            return 0, False
        read, cut = scan_loaded_tail(fd, head, st.st_size, self.max_bytes, LIBRARY_TAIL_BYTES,
                                     deadline, scanning)
        with self._lock:
            self.stats["library_tails"] += 1
            self.stats["library_tail_bytes"] += read
        return read, cut

    def _tell_found(self, markers: list[str]) -> None:
        """Call ``on_found`` (without the lock held) if these markers name a tool."""
        if self.on_found is not None and reported(markers):
            try:
                self.on_found()
            except Exception:  # the owner's: never the scan's
                self.log.exception("colab-guard: telling of a tool found failed")

    def _not_read(self, path: str, err: OSError) -> None:
        if isinstance(err, NotRegularFile):
            # Swapped for a FIFO, a socket or a device after it was queued: never opened.
            with self._lock:
                self._count("refused", "not scanned: %s", err)
        else:  # unreadable (another user's file, gone): tried again when it changes
            self.log.debug("colab-guard: could not scan %s: %s", path, err)

    def _note_cut(self, path: str, result: Scan) -> None:
        """A scan that stopped at its budget says so in its markers, and once in the log."""
        if result.cut:
            result.markers.append(SCAN_CUT)
            with self._lock:
                self._count("cut", "a content scan of %s stopped at its budget of %g s", path,
                            self.scan_seconds)

    def _scan_script(self, key: tuple, path: str) -> Scan:
        """Read a Python or shell script as code (``scripts.read``: a small source here, any
        other in a child process within the scan's time budget) and search it: Python's code
        markers, a shell script's text without its comments. A .pyc of another Python is
        searched as bytes."""
        deadline = time.monotonic() + self.scan_seconds
        queued, language = key, key[4]
        result = Scan([])
        try:
            fd, st = open_regular(path)
            try:
                key = _script_key(st, language)  # what was read (a file swapped in: its own)
                answer = scripts.read(fd, language, self.max_script_bytes, self.max_bytes,
                                      deadline)
                if "evidence" in answer:
                    evidence = scripts.Evidence.from_json(answer["evidence"])
                    if language == scripts.PTH:  # the folders its sibling .pth files add
                        evidence.folders.update(_sibling_folders(path))
                    if not answer.get("zip") and not answer.get("frozen"):
                        self._with_local_modules(path, evidence, deadline)
                    result = Scan(scripts.code_markers(evidence))
                elif "code" in answer:
                    code = answer["code"] + self._sourced_code(path, answer["code"], deadline)
                    found = SEARCH.needles_in(code.encode("latin-1"))
                    result = Scan(SEARCH.markers_for(found))
                elif "text" in answer:  # another Python's frozen code: its printable bytes
                    found = SEARCH.needles_in(answer["text"].encode("latin-1"))
                    result = Scan(reported(SEARCH.markers_for(found)))
                else:
                    result = scan_fd(fd, self.max_script_bytes, deadline)
            except scripts.ScriptReadFailed as err:
                # Past its budget, or built to exhaust the parser: its top-level import lines
                # alone (one linear regular expression), and counted as cut.
                result = Scan([], cut=True)
                if language == scripts.PYTHON:
                    result.markers = scripts.code_markers(scripts.tail_imports(
                        os.pread(fd, self.max_script_bytes, 0)))
                self.log.debug("colab-guard: could not read the script %s: %s", path, err)
            finally:
                os.close(fd)
        except OSError as err:
            self._not_read(path, err)
        self._note_cut(path, result)
        with self._lock:
            self.scans += 1
            self.stats["script_scans"] += 1
            self._pending.pop(queued, None)
            self._cache[key] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result

    def _with_local_modules(self, path: str, evidence: scripts.Evidence,
                            deadline: float, nested: bool = False) -> None:
        """Add what the script's own modules show (helper.py beside it that it imports, what
        helper imports in turn, a package's relative imports, those of folders it adds to
        its path: a program split in files is still one program), ``scripts.LOCAL_MODULES_MAX``
        files and ``scripts.LOCAL_MODULES_DEPTH`` levels at most, within the same budget; and
        the .pth files of the site folders it adds (``site.addsitedir``), with theirs."""
        read, level = {path}, [(path, evidence)]
        for _ in range(scripts.LOCAL_MODULES_DEPTH):
            following = []
            for importer, found in level:
                for module in scripts.local_modules(path, found.imports, found.relative,
                                                    importer, found.runs, evidence.folders):
                    if module in read or len(read) > scripts.LOCAL_MODULES_MAX or \
                            time.monotonic() >= deadline:
                        continue
                    read.add(module)
                    answer = self._read_module(module, deadline)
                    if answer is not None:
                        evidence.merge(answer)
                        following.append((module, answer))
            level = following
        folder = os.path.dirname(path)
        sites = [os.path.normpath(os.path.join(folder, d)) for d in sorted(evidence.site_dirs)]
        for pth in [] if nested else pth_files(sites[:scripts.PATH_FOLDERS_MAX]):
            if time.monotonic() >= deadline:
                break
            answer = self._read_module(pth, deadline, scripts.PTH)
            if answer is not None:
                self._with_local_modules(pth, answer, deadline, nested=True)
                evidence.merge(answer)

    def _sourced_code(self, path: str, code: str, deadline: float) -> str:
        """The code of the files a shell script sources (``. ./lib.sh``, ``source x``), found
        from its folder, and of those they source: ``scripts.SOURCED_MAX`` files at most."""
        folder, read, texts, waiting = os.path.dirname(path), {path}, [], [code]
        while waiting and len(read) <= scripts.SOURCED_MAX and time.monotonic() < deadline:
            for name in scripts.sourced(waiting.pop(0)):
                source = os.path.normpath(os.path.join(folder, os.path.expanduser(name)))
                if source in read or len(read) > scripts.SOURCED_MAX:
                    continue
                read.add(source)
                try:
                    fd, _ = open_regular(source)
                except OSError:
                    continue
                try:
                    size = min(self.max_script_bytes, SOURCED_BYTES)
                    text = scripts.shell_code(os.pread(fd, size, 0))
                except OSError:
                    continue
                finally:
                    os.close(fd)
                texts.append(text.decode("latin-1"))
                waiting.append(texts[-1])
        return "\n" + "\n".join(texts) if texts else ""

    def _read_module(self, module: str, deadline: float,
                     language: str = scripts.PYTHON) -> scripts.Evidence | None:
        try:
            fd, _ = open_regular(module)
            try:
                answer = scripts.read(fd, language, self.max_script_bytes,
                                      self.max_bytes, deadline)
            finally:
                os.close(fd)
        except (OSError, scripts.ScriptReadFailed) as err:
            self.log.debug("colab-guard: could not read %s: %s", module, err)
            return None
        return scripts.Evidence.from_json(answer["evidence"]) if "evidence" in answer else None

    # ------------------------------------------------------------ libraries

    def _libraries_settled(self, pid: int, key: tuple, session: float | None = None) -> bool:
        """Whether what the process has mapped executable was looked at and holds: its
        executable memory (``executable_kib``) has not changed since, as loading a library
        changes it (and allocating data does not). Queues a look once it has run
        ``memory_after`` seconds, and again, at most every ``libraries_recheck`` seconds, when
        that changed (every ``memory_rescan`` all the same)."""
        if time.time() - key[1] < self.memory_after:
            return False  # not yet: asked again at the next read
        try:
            code = executable_kib(pid)
            start = procfs.read_stat(pid).start if key not in self._libraries else None
        except (OSError, ValueError, IndexError):
            return True  # gone
        now = time.monotonic()
        with self._lock:
            libraries = self._libraries.get(key)
            if libraries is None:
                if start is None:
                    return True  # forgotten meanwhile: gone
                libraries = self._libraries[key] = _Libraries(start=start, session=session)
            libraries.session = libraries.session or session  # (unknown at its first look)
            if libraries.queued:
                return False
            if libraries.looked_at and (libraries.code == code and
                                        now - libraries.looked_at < self.memory_rescan):
                return not self._libraries_pending(key)
            if libraries.looked_at and now - libraries.looked_at < self.libraries_recheck:
                return False  # it changed: looked at again once due
            libraries.code, libraries.looked_at = code, now
            if self._background:
                libraries.queued = self._queue(4096, ("libraries", key, pid))
                return False
        self._look_at_libraries(key, pid)
        return not self._libraries_pending(key)

    def _libraries_pending(self, key: tuple) -> bool:
        """Whether a look at the process's mapped files, or a scan of one that is not a system
        library, is under way. (The system's own are scanned last and not waited for: what
        they carry is taken at the process's next full read; so is the rest of a library whose
        exported names already showed a tool.)"""
        libraries = self._libraries.get(key)
        return libraries is not None and (libraries.queued or any(
            k in self._pending and (k not in self._cache or self._cache[k].head_only)
            for k, _, system in libraries.files if not system))

    def _library_markers(self, key: tuple) -> tuple[list[str], bool]:
        """The tools the files the process has mapped carry (scans not yet done are queued),
        and whether some were not looked up or read to their end."""
        found: list[str] = []
        with self._lock:
            libraries = self._libraries.get(key)
            if libraries is None:
                return [], False
            cut = libraries.cut
            for file_key, path, system in libraries.files:
                scan = self._cache.get(file_key)
                if scan is None or scan.head_only:
                    self._want(file_key, path, system, libraries.session)
                if scan is None:
                    continue
                self._cache.move_to_end(file_key)
                found += [m for m in reported(scan.markers) if m not in found]
                cut = cut or scan.cut
            return found, cut

    def _want(self, key: FileKey, path: str, system: bool, session: float | None) -> None:
        """With the lock held: a mapped file's scan, unless it is cached (not only its head,
        as a program's) or under way. The system's own libraries go after the others (libc is
        scanned once, for precision's sake; a library the user copied under a neutral name is
        what matters first). ``session``: when the kernel's session began (a package's file
        unchanged since is not read past the bound)."""
        if (key in self._cache and not self._cache[key].head_only) or key in self._pending:
            return
        if self._background:
            cost = min(key[2], self.max_bytes) + (self.max_bytes if system else 0)
            if self._queue(cost, ("library", key, path, session)):
                self._pending[key] = True
        else:
            self._lock.release()  # scanned here and now (tests, the command line)
            try:
                self._scan(key, path, self.max_bytes, library=True, session=session)
            finally:
                self._lock.acquire()

    def _look_at_libraries(self, key: tuple, pid: int) -> None:
        """Read which files the process has mapped executable (its program aside, which is
        scanned as /proc/PID/exe), and ask for the scans of those not known yet."""
        with self._lock:
            libraries = self._libraries.get(key)
        if libraries is None:
            return
        files: list[tuple[FileKey, str, bool]] = []
        cut = False
        try:
            raw = procfs.read_all(f"/proc/{pid}/maps", MAPS_MAX_BYTES + 1)
            if procfs.read_stat(pid).start != libraries.start:
                raise ProcessLookupError(pid)  # the pid was taken again
            cut = len(raw) > MAPS_MAX_BYTES
            mapped = executable_files(raw[:MAPS_MAX_BYTES].decode("utf-8", "replace"))
            if len(mapped) > MAX_LIBRARIES:
                cut, mapped = True, mapped[:MAX_LIBRARIES]
            try:
                program = os.stat(f"/proc/{pid}/exe").st_ino
            except OSError:
                program = None
            for mapped_file in mapped:
                if mapped_file.inode != program:
                    found = _mapped_file_key(pid, mapped_file, libraries.session)
                    if found is not None and not _known_clean(mapped_file, found[2],
                                                              self.system_packages):
                        files.append(found)
        except PermissionError as err:
            with self._lock:
                self._count("memory_denied", "the memory of process %s cannot be read (%s); "
                            "recorded as evidence (%s)", pid, err, MEMORY_UNREADABLE)
        except (ProcessLookupError, FileNotFoundError):
            with self._lock:
                self.stats["vanished"] += 1
        except OSError as err:
            self.log.debug("colab-guard: could not read the maps of %s: %s", pid, err)
        with self._lock:
            libraries.files, libraries.cut, libraries.queued = tuple(files), cut, False
            self.stats["library_looks"] += 1
            for file_key, path, system in files:
                self._want(file_key, path, system, libraries.session)

    # ------------------------------------------------------------ memory

    def _memory_settled(self, pid: int, exe: str, key: tuple) -> bool:
        """Whether the process's memory scan is done and holds: it has not run since it was
        last looked at. Queues the scan once it has run ``memory_after`` seconds, and a look
        again if it ran meanwhile: ``memory_after`` (at least MEMORY_RECHECK_FIRST) after the
        first, each gap twice the last, at most ``memory_recheck``."""
        now = time.monotonic()
        try:
            st = procfs.read_stat(pid)
            ran = int(procfs.read_small(f"/proc/{pid}/schedstat").split()[0])
        except (OSError, ValueError, IndexError):
            return True  # gone (or no schedstat: looked at when due, below)
        if time.time() - key[1] < self.memory_after:
            return False  # not yet: asked again at the next read
        with self._lock:
            memory = self._memory.get(key)
            if memory is None:
                memory = self._memory[key] = _Memory(start=st.start, exe=exe)
            if memory.queued:
                return False
            if memory.scanned_at and memory.ran == ran:
                return True  # it has not run since it was last looked at
            if memory.scanned_at and now - memory.checked_at < memory.recheck:
                return False  # it ran: looked at again once due
            # Soon after the first look, then less often: a packed program starved of CPU
            # (a loaded machine) may not have unpacked itself at the first.
            memory.recheck = min(self.memory_recheck,
                                 max(self.memory_after, 2 * memory.recheck, MEMORY_RECHECK_FIRST))
            memory.checked_at = now
            memory.ran = ran
            if self._background:
                memory.queued = self._queue(min(self.memory_bytes, st.vms),
                                            ("memory", key, pid, exe))
                return False
        self._scan_memory(key, pid, exe)
        return True

    def _scan_memory(self, key: tuple, pid: int, exe: str) -> None:
        with self._lock:
            memory = self._memory.get(key)
        if memory is None:
            return
        # An interpreter's writable memory is never read; not knowing yet counts as one.
        interpreter = INTERPRETER.match(os.path.basename(exe)) is not None
        try:
            st = os.stat(program_file(pid, exe))
            with self._lock:
                scan = self._cache.get((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
            interpreter = interpreter or scan is None or \
                any(m.startswith(INTERPRETER_PREFIX) for m in scan.markers)
        except OSError:
            interpreter = True
        traits: list[str] = []
        found_before = (list(memory.markers), list(memory.traits))
        now = time.monotonic()
        try:
            rescan = now - memory.scanned_at >= self.memory_rescan or not memory.scanned_at
            if not rescan:
                # Looked at again while it runs: read again only if its layout changed.
                raw = procfs.read_all(f"/proc/{pid}/maps", MAPS_MAX_BYTES)
                if raw != memory.maps:
                    rescan = tuple((r.start, r.end, r.perms) for r in code_regions(
                        parse_maps(raw.decode("utf-8", "replace")), exe, interpreter,
                        self.max_bytes)) != memory.layout
                    memory.maps = raw
            if rescan:
                scan, layout = scan_memory(pid, memory.start, exe, interpreter,
                                           self.memory_bytes, now + self.scan_seconds,
                                           file_bytes=self.max_bytes)
                memory.markers = reported(scan.markers)
                memory.layout = layout
                memory.scanned_at = now
                if scan.cut:
                    traits.append(SCAN_CUT)
                    with self._lock:
                        self._count("cut", "a memory scan of process %s stopped at its budget "
                                    "(%g s, %d MiB, 4 MiB of maps)", pid, self.scan_seconds,
                                    self.memory_bytes >> 20)
                with self._lock:
                    self.stats["memory_scans"] += 1
            else:
                traits = [t for t in memory.traits if t == SCAN_CUT]
        except PermissionError as err:
            # Not dumpable, or another user's: that it hides is evidence in its own right.
            traits.append(MEMORY_UNREADABLE)
            memory.scanned_at = memory.scanned_at or now
            with self._lock:
                self._count("memory_denied", "the memory of process %s cannot be read (%s); "
                            "recorded as evidence (%s)", pid, err, MEMORY_UNREADABLE)
        except (ProcessLookupError, FileNotFoundError):
            memory.scanned_at = memory.scanned_at or now
            with self._lock:
                self.stats["vanished"] += 1
        except OSError as err:
            memory.scanned_at = memory.scanned_at or now
            self.log.debug("colab-guard: could not read the memory of %s: %s", pid, err)
        finally:
            if (memory.markers, traits) != found_before:
                with self._lock:
                    self.news.add(key)
            memory.traits = traits
            memory.queued = False
            memory.checked_at = time.monotonic()
        if memory.markers != found_before[0]:
            self._tell_found(memory.markers)


def script_language(exe: str, found: list[str]) -> str:
    """How the script of an interpreter is read (``scripts.py``): Python's (its markers
    say so even when renamed), a shell's, or as bytes (node, perl, ruby, php...)."""
    program = os.path.basename(exe or "").split(" (")[0]
    if INTERPRETER_PREFIX + "python" in found or re.match(r"^(python|pypy)[0-9.]*$", program):
        return scripts.PYTHON
    if re.match(r"^(bash|sh|dash|zsh)$", program):
        return scripts.SHELL
    return scripts.OTHER


#: ``python -c CODE``, ``python -Ic CODE``, ``python -cCODE`` (flags without a value first).
_INLINE = re.compile(r"^-[bBdEiIOPqsSuvx]*c(.*)$", re.DOTALL)
_MODULE = re.compile(r"^-[bBdEiIOPqsSuvx]*m")


def inline_code(cmdline: list[str]) -> str | None:
    """The code a Python command line runs with ``-c`` (None: a script, a module, stdin)."""
    skip_next = False
    for at, arg in enumerate(cmdline[1:], 1):
        if skip_next:
            skip_next = False
            continue
        if arg in _OPTIONS_WITH_VALUE:
            skip_next = True
            continue
        inline = _INLINE.match(arg)
        if inline is not None:
            code = inline.group(1) or (cmdline[at + 1] if at + 1 < len(cmdline) else None)
            return code or None
        if not arg.startswith("-") or arg == "-" or _MODULE.match(arg):
            return None
    return None


#: Python options that keep PYTHONPATH's start-up files from running (-I, -E, -S; joined).
_NO_STARTUP = re.compile(r"^-[bBdEhiIOPqsSuvVx]*[IES]")
STARTUP_NAMES = ("sitecustomize.py", "usercustomize.py")


def startup_files(pid: int, cmdline: list[str]) -> list[str]:
    """The start-up modules Python imports from the process's ``PYTHONPATH`` before its script
    (``sitecustomize.py``, ``usercustomize.py``): code that runs in an honest ``python -c
    pass``. Relative folders are the process's working directory's."""
    for arg in cmdline[1:]:
        if not arg.startswith("-") or arg == "-" or _INLINE.match(arg) or _MODULE.match(arg):
            break
        if _NO_STARTUP.match(arg):
            return []
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read(256 << 10)
    except OSError:
        return []
    value = next((e[len(b"PYTHONPATH="):] for e in environ.split(b"\0")
                  if e.startswith(b"PYTHONPATH=")), b"")
    found = []
    for folder in value.decode("utf-8", "surrogateescape").split(":")[:16] if value else ():
        base = folder if os.path.isabs(folder) else os.path.join(f"/proc/{pid}/cwd", folder)
        found += [os.path.join(base, n) for n in STARTUP_NAMES
                  if os.path.isfile(os.path.join(base, n))]
    return found[:4]


#: Python options that keep the user's site folder out (-s, -I); -S: no site folder at all.
_NO_USER_SITE = re.compile(r"^-[bBdEhiIOPqsSuvVx]*[sI]")
_NO_SITE = re.compile(r"^-[bBdEhiIOPqsSuvVx]*S")
_IGNORE_ENVIRONMENT = re.compile(r"^-[bBdEhiIOPqsSuvVx]*[EI]")
#: .pth files read per site folder, and site folders per process, at most.
PTH_MAX = 32
SITE_FOLDERS_MAX = 8


_STARTUP: OrderedDict[tuple, tuple[list[str], list[str]]] = OrderedDict()


def python_startup(pid: int, cmdline: list[str]) -> list[tuple[str, str]]:
    """What a Python process runs before its script, and how each is read: ``PYTHONPATH``'s
    start-up modules (Python), the .pth files of its site folders (their import lines). Its
    folders are fixed when it starts (its environment, its options): found once per process
    (by pid, command line and executable), the folders' .pth files listed while they hold."""
    try:
        key = (pid, tuple(cmdline), os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return []
    found = _STARTUP.get(key)
    if found is None:
        found = _STARTUP[key] = (startup_files(pid, cmdline), site_folders(pid, cmdline))
        while len(_STARTUP) > 1024:
            _STARTUP.popitem(last=False)
    startup, sites = found
    return [(p, scripts.PYTHON) for p in startup] + \
        [(p, scripts.PTH) for p in pth_files(sites)]


def site_folders(pid: int, cmdline: list[str]) -> list[str]:
    """The site folders whose .pth files ``site`` processes at the start of a Python process:
    its environment's (a virtual environment's, by the ``pyvenv.cfg`` beside the program as
    it was started; the base's where that includes system site packages; else the real
    program's prefix's, Debian's dist-packages too) and its user's
    (``~/.local/lib/pythonX.Y/site-packages``, or under ``PYTHONUSERBASE``; not in a
    virtual environment, nor with -s, -I or ``PYTHONNOUSERSITE``). None with -S."""
    options = _options(cmdline)
    if any(_NO_SITE.match(o) for o in options):
        return []
    environ = _environ(pid)
    try:
        real = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return []
    version = re.match(r"^python(\d+\.\d+)", os.path.basename(real))
    pattern = f"python{version.group(1)}" if version else "python3*"
    prefixes, user = [], not any(_NO_USER_SITE.match(o) for o in options)
    venv = _venv_of(pid, cmdline[0] if cmdline else "", environ)
    if venv is not None:
        prefix, system = venv
        prefixes.append(prefix)
        user = False
        if system:
            prefixes.append(os.path.dirname(os.path.dirname(real)))
    else:
        prefixes.append(os.path.dirname(os.path.dirname(real)))
    if user and (environ.get("PYTHONNOUSERSITE") and
                 not any(_IGNORE_ENVIRONMENT.match(o) for o in options)):
        user = False
    folders = []
    for prefix in prefixes:
        for form in ("lib/{}/site-packages", "lib/{}/dist-packages", "local/lib/{}/dist-packages",
                     "lib/python3/dist-packages"):
            folders += sorted(glob.glob(os.path.join(prefix, form.format(pattern))))
    base = environ.get("PYTHONUSERBASE") or os.path.join(_home(pid, environ), ".local")
    if user and base:
        folders += sorted(glob.glob(os.path.join(base, "lib", pattern, "site-packages")))
    return list(dict.fromkeys(f for f in folders if os.path.isdir(f)))[:SITE_FOLDERS_MAX]


def _options(cmdline: list[str]) -> list[str]:
    """The interpreter's own options (before its script, ``-c`` or ``-m``)."""
    found = []
    for arg in cmdline[1:]:
        if not arg.startswith("-") or arg == "-":
            break
        found.append(arg)
        if _INLINE.match(arg) or _MODULE.match(arg):
            break
    return found


def _environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read(256 << 10)
    except OSError:
        return {}
    pairs = (e.decode("utf-8", "surrogateescape").partition("=") for e in data.split(b"\0"))
    return {k: v for k, _, v in pairs if k}


def _home(pid: int, environ: dict[str, str]) -> str:
    """The home folder ``~`` means to the process: its HOME, else its user's."""
    if environ.get("HOME"):
        return environ["HOME"]
    try:
        import pwd

        return pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_dir
    except (OSError, KeyError):
        return ""


def _venv_of(pid: int, program: str, environ: dict[str, str]) -> tuple[str, bool] | None:
    """The virtual environment of the program as started (``.venv/bin/python``, a link to the
    base's: not resolved, as Python does not), found on its PATH if named alone: its folder,
    and whether it includes system site packages. None: not in one."""
    if "/" not in program:
        folders = environ.get("PATH", "").split(":")[:32]
        program = next((os.path.join(d, program) for d in folders if d and program and
                        os.path.isfile(os.path.join(d, program))), "")
    if not program:
        return None
    if not os.path.isabs(program):
        program = os.path.join(f"/proc/{pid}/cwd", program)
    folder = os.path.dirname(program)
    for candidate in (folder, os.path.dirname(folder)):
        config = os.path.join(candidate, "pyvenv.cfg")
        try:
            with open(config, "rb") as f:
                text = f.read(16 << 10).decode("utf-8", "replace")
        except OSError:
            continue
        system = re.search(r"^\s*include-system-site-packages\s*=\s*true\s*$", text,
                           re.MULTILINE | re.IGNORECASE)
        return os.path.dirname(config), system is not None
    return None


_PTH_LISTED: OrderedDict[tuple, list[str]] = OrderedDict()  # folder's (dev, ino, mtime) -> .pth


def pth_files(folders: list[str]) -> list[str]:
    """The .pth files of site folders (``PTH_MAX`` per folder, in the order site reads them),
    each folder listed once while it is unchanged."""
    found = []
    for folder in folders:
        try:
            st = os.stat(folder)
        except OSError:
            continue
        key = (folder, st.st_dev, st.st_ino, st.st_mtime_ns)
        names = _PTH_LISTED.get(key)
        if names is None:
            try:
                with os.scandir(folder) as entries:
                    # a hidden one too: Python up to 3.12 runs it (3.13 skips it)
                    names = sorted(e.name for e in entries if e.name.endswith(".pth"))[:PTH_MAX]
            except OSError:
                names = []
            _PTH_LISTED[key] = names
            while len(_PTH_LISTED) > 256:
                _PTH_LISTED.popitem(last=False)
        found += [os.path.join(folder, n) for n in names]
    return found


def _sibling_folders(pth: str) -> set[str]:
    """The folders the .pth files of a site folder add to the path (``site`` processes them
    all, in order, before or after this one: an import line may find its module in any)."""
    found: set[str] = set()
    for sibling in pth_files([os.path.dirname(pth)]):
        if sibling == pth:
            continue
        try:
            fd, _ = open_regular(sibling)
        except OSError:
            continue
        try:
            found.update(scripts.pth_folders(os.pread(fd, 64 << 10, 0)))
        except OSError:
            pass
        finally:
            os.close(fd)
    return found


def _inline_key(pid: int, code: str) -> tuple:
    """Inline code's cache key: the code, and the folder its imports and files come from."""
    try:
        st = os.stat(f"/proc/{pid}/cwd")
        folder = (st.st_dev, st.st_ino)
    except OSError:
        folder = None
    return ("inline", hashlib.sha256(code.encode("utf-8", "surrogateescape")).digest(), folder)


def _aria2_key(pid: int, cmdline: list[str], process: tuple | None) -> tuple:
    """The cache key of what one aria2c process reads (its identity, its command line)."""
    return ("aria2", process or (pid,), tuple(cmdline[:256]))


def _script_file(path: str) -> str:
    """What ``python DIR`` runs: DIR/__main__.py."""
    return os.path.join(path, "__main__.py") if os.path.isdir(path) else path


def _script_key(st: os.stat_result, language: str) -> tuple:
    """A script's cache key: its file's, and how it is read."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, language


#: Interpreter options whose value is the next word (python -W ignore x.py).
_OPTIONS_WITH_VALUE = {"-W", "-X", "--check-hash-based-pycs", "-r", "--require", "--import",
                       "--loader"}


def script_path(pid: int, exe: str, cmdline: list[str], interpreter: bool = False) -> str | None:
    """The script an interpreter runs (its first argument that is not an option), if any.

    ``python -m module`` and ``python -c code`` run no script file. A relative
    path is resolved against the process's working directory.
    """
    program = os.path.basename(exe or (cmdline[0] if cmdline else ""))
    if not (interpreter or INTERPRETER.match(program)) or not cmdline:
        return None
    skip_next = False
    for arg in cmdline[1:]:
        if skip_next:
            skip_next = False
            continue
        if arg in ("-m", "-c", "-e", "--eval", "-p", "--print") or _INLINE.match(arg) or \
                _MODULE.match(arg):
            return None  # (-Ic code, -Im module: flags joined)
        if arg in _OPTIONS_WITH_VALUE:
            skip_next = True
            continue
        if arg == "-":
            break  # the program is its standard input
        if arg.startswith("-"):
            continue
        return _own_path(pid, arg)
    # No script (``python - < x.py``, ``python < x.py``, ``bash -s < x.sh``): its standard
    # input, read if it is a file (script_markers reads regular files only, never a pipe).
    return f"/proc/{pid}/fd/0"


#: Paths that mean the process's own descriptors (the guard's own, if read as they are).
_OWN_PATH = re.compile(r"^/(?:proc/self|proc/thread-self|dev)/(fd/\d+|stdin)$|"
                       r"^/proc/self/(fd/\d+|cwd/.*|root/.*)$")


def _own_path(pid: int, arg: str) -> str:
    """The script's path as the process sees it: relative to its working directory, and
    ``/proc/self/fd/3``, ``/dev/fd/3``, ``/dev/stdin`` its own descriptors, not the guard's."""
    if not os.path.isabs(arg):
        return os.path.join(f"/proc/{pid}/cwd", arg)
    own = _OWN_PATH.match(os.path.normpath(arg) if not arg.startswith("/proc/self/cwd/")
                          else arg)
    if own is None:
        return arg
    rest = own.group(1) or own.group(2)
    return f"/proc/{pid}/" + ("fd/0" if rest == "stdin" else rest)
