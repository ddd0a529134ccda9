"""Session 22: the guard's process side attacked by a notebook user who runs as root (Colab's
kernels do) and has read the code, with real processes sampled by the real sampler and engine.
Everything on loopback.

Found and fixed:
- A tool put where the system keeps its libraries was never read: a library in /usr/lib that
  root owns, no one else may write and dpkg's lists name is "known clean", and neither its file
  nor its memory (file-backed code) is scanned. Root can copy microsocks over a listed library
  (`cp microsocks /usr/lib/x86_64-linux-gnu/libpopt.so.0.0.2`), or bind-mount it over one in a
  mount namespace of the kernel's own (`unshare -m`), then run it through the dynamic loader or
  load it into Python: nothing was found. A library is now the system's own only where the
  guard finds that very file at its path itself (not through /proc/PID/map_files) and it has
  not changed (its inode's ctime, which root cannot set back) since the kernel's session began,
  as `exe:new` already holds programs in /usr/bin to (content._mapped_file_key).
- A tool run again and again as a fresh copy (a new inode each time: never cached), each run
  gone within 0.6 s, before the next tick of the default 1 s interval: each copy was seen at
  one tick with its file's scan pending and was gone at the next, for good (a SOCKS proxy up
  most of the time, never named). A background scan that finds a tool now has the monitor
  tick at once and every 0.1 s for a second (ContentScanner.on_found, Monitor._found_burst):
  the copy is still running, and named with its kernel. Honest fresh programs (a build's)
  carry no marker and bring no early tick.
- The node watcher took a kernel's child that dropped the marker from its environment (`env
  -u COLAB_GUARD_KERNEL_ID`) and named a connection file on its command line (`-f
  kernel-X.json`) for a kernel of its own (as one started without the extension is): its
  offences named kernel X, which no server knows, never the kernel that started it. A process
  under a kernel is now that kernel's whatever its command line names (kernels._under_a_kernel);
  a kernel started without the extension by a process that is no kernel's is one, as before.
- A Stratum client library whose text lies past 70 MiB of constants (the file scan's bound;
  a library's mappings are not read from memory) carried no marker, not even scan:cut. A
  library no installed package owns (dpkg, a distribution's RECORD) now has its loadable
  segments past the bound read from its file, 256 MiB more at most (content._library_tail).
- A miner that forks every 0.8 s and exits, its child carrying on with the same pool
  connection, was measured per process: no pid held the connection or ran for a window. A
  measured connection whose holder is gone, held on by a younger process and by no older one
  (nor by an ancestor of it, its fds read), now hands its conversation and CPU demand on
  (behaviour._hand_over). Honest near-misses kept clean: a sweep in a pool of recycled
  workers (maxtasksperchild=1) inheriting a chat bot's pushed-and-answered connection, as a
  script and as a notebook cell (the workers inherit the kernel's ZMQ sockets too), and a
  pre-forking server whose recycled workers inherit its registry connection; each was taken
  for a miner by a hand-over that ignored the parent still holding the connection.

Not measured as one (left): a hopping miner whose idle parent keeps a copy of the pool
connection (the near-misses' shape).

Checked and stopped already (kept as tests where cheap): a relay in the kernel's own threads
whose listening socket is bound through libc (no audit event, no bind reported); a library
injected into a running Python process with gdb (`call dlopen(...)`: torrent-library-loaded
about a second later); honest: a C extension built with `-j 4` (four times), 450 curl
downloads against the user's own http.server, a dask LocalCluster computing for 30 s.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe import content
from colab_guard.observe.content import SystemPackages
from colab_guard.observe.processes import ProcessSampler
from tests.conftest import PYTHON
from tests.harness import wait_until
from tests.standins import chat as standin_chat
from tests.standins.watched import Watched
from tests.test_behaviour_redteam import WINDOW as SAMPLER_WINDOW  # the mining window there
from tests.test_behaviour_redteam import MINING_FIELDS, _mines, watched_for_a_window
from tests.test_behaviour_relay import far_end  # noqa: F401 (a fixture)
from tests.test_redteam_sampled20 import _group
from tests.test_watch import pool  # noqa: F401 (a fixture)

RULES = load_signatures()
MICROSOCKS = shutil.which("microsocks")
LOADER = "/lib64/ld-linux-x86-64.so.2"
ROOT = os.geteuid() == 0
#: A library dpkg lists that no program here loads (a bind mount over it is harmless)
LISTED = "/usr/lib/x86_64-linux-gnu/libpopt.so.0.0.2"

needs_microsocks = pytest.mark.skipif(MICROSOCKS is None or not os.path.exists(LOADER),
                                      reason="needs microsocks and the x86-64 dynamic loader")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _detections_until(sampler: ProcessSampler, root: int, want, timeout: float = 60.0):
    """Sample the tree of ``root`` until ``want(snapshot, ids)`` holds; the snapshot and the
    signature ids of that tick's detections. AssertionError at the deadline, with the last."""
    engine, deadline, last = Engine(RULES), time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        snapshot = sampler.sample({"k": root})["k"]
        ids = {d.signature.id for d in engine.evaluate(snapshot)}
        last = (snapshot, ids)
        if want(snapshot, ids):
            return last
        time.sleep(0.2)  # the next tick
    raise AssertionError(f"not reached: {last and [(p.name, p.exe_markers) for p in last[0].processes]}"
                         f" {last and last[1]}")


def _listening(snapshot) -> bool:
    return any(s.status == "LISTEN" for p in snapshot.processes for s in p.sockets)


# ------------------------------------------------------------ a tool posing as a system library

class _AlsoListed(SystemPackages):
    """dpkg's lists of this machine, and the paths a test lists (as root can append them)."""

    def __init__(self):
        super().__init__()
        self.ours: set[str] = set()

    def installed(self, path: str) -> bool:
        return path in self.ours or super().installed(path)


@pytest.fixture
def system_folder(tmp_path, monkeypatch):
    """A folder taken for one of the system's library folders, with a dpkg list of its own:
    what root sees in /usr/lib, without writing to this machine's."""
    folder = tmp_path / "usr-lib"
    folder.mkdir()
    monkeypatch.setattr(content, "SYSTEM_LIBRARY_FOLDERS",
                        content.SYSTEM_LIBRARY_FOLDERS + (f"{folder}/",))
    sampler = ProcessSampler()
    sampler.content.system_packages = packages = _AlsoListed()

    def listed(name: str, source: str) -> Path:
        path = folder / name
        shutil.copy(source, path)
        os.chmod(path, 0o644)
        packages.ours.add(str(path))
        return path

    yield sampler, listed
    sampler.content.close()


@needs_microsocks
@pytest.mark.skipif(not ROOT, reason="the attacker is root: writes a system folder")
def test_a_tool_copied_over_a_library_dpkg_lists_is_recognised(system_folder):
    sampler, listed = system_folder
    library = listed("libpopt.so.0.0.2", MICROSOCKS)
    assert sampler.content.system_packages.installed(str(library))
    with _group([LOADER, str(library), "-i", "127.0.0.1", "-p", str(_free_port())]) as tool:
        _, ids = _detections_until(sampler, tool.pid,
                                   lambda snap, ids: _listening(snap) and "proxy-content" in ids)
        assert "proxy-content" in ids


@needs_microsocks
@pytest.mark.skipif(not ROOT or shutil.which("unshare") is None or not os.path.exists(LISTED),
                    reason="needs root, unshare and a library dpkg lists")
def test_a_tool_bind_mounted_over_a_system_library_in_a_namespace_of_its_own_is_recognised():
    """The guard's view of the path is the real libpopt; the process maps microsocks there."""
    port = _free_port()
    script = (f"mount --bind {MICROSOCKS} {LISTED} && "
              f"exec {LOADER} {LISTED} -i 127.0.0.1 -p {port}")
    sampler = ProcessSampler()
    try:
        with _group(["unshare", "-m", "--propagation", "private", "sh", "-c", script]) as tool:
            snapshot, ids = _detections_until(
                sampler, tool.pid, lambda snap, ids: _listening(snap) and "proxy-content" in ids)
            assert any("microsocks" in p.exe_markers for p in snapshot.processes)
    finally:
        sampler.content.close()


@pytest.mark.skipif(not ROOT, reason="the near-miss of a root attacker's folder")
def test_an_honest_library_installed_in_the_session_is_read_and_left_alone(system_folder):
    """`apt-get install` of a library in the session: read (no longer taken as known clean),
    carries no marker, nothing found; the libraries dpkg installed before are still not read."""
    sampler, listed = system_folder
    library = listed("libpopt.so.0.0.2", LISTED if os.path.exists(LISTED) else
                     "/usr/lib/x86_64-linux-gnu/libz.so.1")
    code = ("import ctypes, sys\nctypes.CDLL(sys.argv[1])\nprint('loaded', flush=True)\n"
            "sys.stdin.read()\n")
    with _group([PYTHON, "-c", code, str(library)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE) as honest:
        honest.stdout.readline()

        def read(snapshot, ids):
            for key, info in list(sampler.content._libraries.items()):
                if str(library) in [path for _, path, _ in info.files]:
                    return not sampler.content._libraries_pending(key)
            return False

        snapshot, ids = _detections_until(sampler, honest.pid, read)
        files = [path for info in sampler.content._libraries.values() for _, path, _ in info.files]
        libc = next(line.split()[-1] for line in open(f"/proc/{honest.pid}/maps")
                    if "/libc.so" in line)
        if os.stat(libc).st_ctime < psutil.Process(1).create_time():  # (not upgraded since)
            assert libc not in files  # the system's own: still not read
        assert not ids
        assert not [m for p in snapshot.processes for m in p.exe_markers
                    if not m.startswith(("interpreter:", "exe:"))]


# ------------------------------------------------------------ a tool living less than a tick

@pytest.fixture(scope="module")
def server():
    """A guarded server sampling at the default interval (1 s): the attack lives less."""
    from tests.harness import GuardedServer
    from tests.test_redteam_evasions import USER
    settings = {"sample_interval": 1.0, "stop_grace": 1.0, "cell_checks": True,
                "user_name": USER, "strike_limit": 0}
    with GuardedServer(guard=settings) as guarded:
        yield guarded


@pytest.fixture
def guarded_kernel(server):
    from tests.test_redteam_evasions import Kernel
    started = Kernel(server)
    yield started
    started.close()


#: Each run a fresh copy (never cached: its scan starts when a tick first sees it), gone
#: 0.6 s later: before the next tick of a 1 s interval. It waits out the quick checks the
#: kernel hook's report of its start brings (channel.BURST_SECONDS) first.
FRESH_COPIES = ("sleep {quiet}; i=0; while true; do i=$((i+1)); cp {tool} {folder}/healthd$i; "
                "timeout 0.6 {folder}/healthd$i {args}; rm -f {folder}/healthd$i; done")


@needs_microsocks
def test_a_tool_run_as_fresh_copies_each_gone_before_the_next_tick_is_named(guarded_kernel,
                                                                           tmp_path):
    """Was missed for good: each copy was seen at one tick with its scan pending, and gone
    at the next. A background scan that finds a tool now has the monitor sample at once."""
    from tests.harness import wait_until
    from tests.test_redteam_evasions import USER
    from colab_guard.channel import BURST_SECONDS
    loop = FRESH_COPIES.format(tool=MICROSOCKS, folder=tmp_path, quiet=BURST_SECONDS + 1.5,
                               args=f"-i 127.0.0.1 -p {_free_port()}")
    kernel = guarded_kernel
    pid, _ = kernel.start(["setsid", "bash", "-c", loop])  # its group: stopped at the end
    try:
        found = wait_until(lambda: kernel.incidents("proxy"), timeout=30,
                           what="a proxy incident")
        assert {(i["user"], i["kernel_id"]) for i in found} == {(USER, kernel.id)}
        named = [p for i in found for p in i["evidence"]["processes"]]
        assert named and all(os.path.basename(p["exe"]).startswith("healthd")
                             for p in named), named
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_only_a_scan_that_finds_a_tool_has_the_sampler_look_again_at_once(tmp_path):
    """The near-miss: a build's fresh programs (a compiler's copies, each run once) are scanned
    as before and ask for no early tick; the tool's copy does."""
    from colab_guard.observe.content import ContentScanner
    scanner, told = ContentScanner(), []
    scanner.on_found = lambda: told.append(True)
    try:
        for i in range(20):
            honest = tmp_path / f"cc1-{i}"
            shutil.copy("/bin/true", honest)
            scanner.file_markers(str(honest), scanner.max_bytes)
        scanner.wait(30)
        assert all(scanner.file_markers(str(tmp_path / f"cc1-{i}"), scanner.max_bytes) == []
                   for i in range(20))
        assert not told
        if MICROSOCKS is not None:
            tool = tmp_path / "healthd"
            shutil.copy(MICROSOCKS, tool)
            scanner.file_markers(str(tool), scanner.max_bytes)
            scanner.wait(30)
            assert scanner.file_markers(str(tool), scanner.max_bytes) == ["microsocks"]
            assert told == [True]
    finally:
        scanner.close()


# ------------------------------------------------------------ a relay in the kernel, bound in C

#: A forwarder run in the kernel's own threads: clients accepted on a port, each relayed to the
#: far end. {bind} binds the listening socket.
KERNEL_RELAY = """
import socket, threading, ctypes, struct
def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
def serve(server, target):
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection(("127.0.0.1", target))
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
server = socket.socket()
{bind}
server.listen(64)
threading.Thread(target=serve, args=(server, {target}), daemon=True).start()
print("PORT", server.getsockname()[1], flush=True)
"""
PYTHON_BIND = 'server.bind(("127.0.0.1", 0))'
#: libc's bind(): no audit event, so the kernel hook reports no bind
C_BIND = ("address = struct.pack('<HH4s8x', socket.AF_INET, 0, socket.inet_aton('127.0.0.1'))\n"
          "assert ctypes.CDLL(None, use_errno=True).bind(server.fileno(), address, 16) == 0")


async def _relay_in_kernel(kernel, guard_config, far_end, jp_asyncio_loop, bind: str) -> list:
    """Runs the relay in the kernel and relays users through it: the proxy-relay incidents."""
    from tests.conftest import KernelRunner, incidents_in, wait_for
    from tests.test_behaviour_relay import _users
    reply, outputs = await kernel.run(KERNEL_RELAY.format(bind=bind, target=far_end),
                                      timeout=60)
    text = KernelRunner.text(outputs)
    assert reply["status"] == "ok", text
    port = int(text.split()[1])
    got = await jp_asyncio_loop.run_in_executor(
        None, lambda: _users("plain", port, count=6, requests=3))
    assert got and max(got) > 0, got  # users were relayed
    return await wait_for(lambda: [i for i in incidents_in(guard_config["incident_log"])
                                   if i["signature"] == "proxy-relay"], timeout=30)


@pytest.mark.integration
async def test_a_relay_in_the_kernel_bound_through_libc_is_stopped(kernel, guard_config, far_end,
                                                                   jp_asyncio_loop):
    """Checked, stopped already: the hook reports no bind, yet the port is not taken for one
    of the kernel's own Jupyter ports (a Python bind, PYTHON_BIND, is stopped the same way)."""
    found = await _relay_in_kernel(kernel, guard_config, far_end, jp_asyncio_loop, C_BIND)
    assert found and found[0]["kernel_id"] == kernel.kernel_id


# ------------------------------------------------------------ a kernel's child posing as a kernel

@pytest.fixture(scope="module")
def watch_users():
    """The node watcher red team's Unix users (created for the module, removed after)."""
    if os.geteuid() != 0 or not Path("/usr/sbin/useradd").exists():
        pytest.skip("creates Unix users: root only")
    from tests.test_watch import made_users
    from tests.test_redteam_watcher import MALLORY, OTHER
    yield from made_users((MALLORY, OTHER))

def test_a_kernels_child_naming_a_connection_file_is_the_kernels_not_a_kernel_of_its_own(
        watch_users):
    """`env -i` and `-f kernel-ID.json` on its command line: the node watcher took the child
    for a kernel of its own (a kernel started without the extension), so that its offences
    named a kernel that does not exist, never the one it was started from. A process under a
    kernel is that kernel's, whatever its command line names."""
    from colab_guard.watch.kernels import NodeKernels
    from tests.test_redteam_watcher import MALLORY, _as

    child = "env -u COLAB_GUARD_KERNEL_ID sh -c 'sleep 60; :' -f /tmp/kernel-posing22.json"
    kernel = _as(watch_users[MALLORY], ["sh", "-c", f"{child} & sleep 60; :"],
                 {"COLAB_GUARD_KERNEL_ID": "k22"})
    try:
        node = NodeKernels(users=(MALLORY,))
        wait_until(lambda: any("kernel-posing22" in " ".join(p.cmdline())
                               for p in psutil.Process(kernel.pid).children()),
                   timeout=20, what="the child started")
        node.refresh()
        assert "k22" in node.pids()
        assert "posing22" not in node.pids()
    finally:
        for proc in psutil.Process(kernel.pid).children(recursive=True):
            proc.kill()
        kernel.kill()
        kernel.wait()


def test_a_kernel_started_without_the_extension_is_still_known_by_its_connection_file(
        watch_users):
    """The near-miss: a kernel whose server runs without the extension (no marker), started
    by a process that is no kernel's, is a kernel by its connection file, as before."""
    from colab_guard.watch.kernels import NodeKernels
    from tests.test_redteam_watcher import MALLORY, _as

    argv = ["sh", "-c", "sleep 60; :", "-f", "/tmp/kernel-plain22.json"]
    kernel = _as(watch_users[MALLORY], argv, {})
    try:
        node = NodeKernels(users=(MALLORY,))
        wait_until(lambda: "kernel-plain22" in " ".join(psutil.Process(kernel.pid).cmdline()),
                   timeout=20, what="the kernel started")
        node.refresh()
        assert node.pids().get("plain22") == kernel.pid
    finally:
        kernel.kill()
        kernel.wait()


# ------------------------------------------------------------ a library padded past the scan

#: A Stratum client as a shared library: its constructor connects to the pool and sends two
#: requests, its text kept in writable data (.data comes after .rodata, where PAD is).
PADDED_MINER_C = r"""
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
__attribute__((used)) static const char pad[PAD] = {1};
static char subscribe[] = "{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"x/1\"]}\n";
static char authorize[] = "{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"w\",\"x\"]}\n";
static char submit[] = "{\"id\":3,\"method\":\"mining.submit\",\"params\":[]}\n";
__attribute__((constructor)) static void start(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(getenv("POOL_PORT")));
    a.sin_addr.s_addr = htonl(0x7f000001);
    if (connect(s, (void *)&a, sizeof a) == 0) {
        write(s, subscribe, strlen(subscribe));
        write(s, authorize, strlen(authorize));
    }
}
"""
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def _miner_library(folder: Path, pad: int) -> Path:
    source, library = folder / "fastmath.c", folder / f"libfastmath{pad}.so"
    source.write_text(PADDED_MINER_C)
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", f"-DPAD={pad}", "-o", str(library),
                    str(source)], check=True)
    return library


def _library_miner_ids(library: Path, pool_url: str) -> set[str]:
    """Loads the library into a Python process and samples it until a content signature
    names it (AssertionError at the deadline): that tick's signature ids."""
    code = ("import ctypes, sys\nctypes.CDLL(sys.argv[1])\nprint('loaded', flush=True)\n"
            "sys.stdin.read()\n")
    env = {**os.environ, "POOL_PORT": pool_url.rsplit(":", 1)[1]}
    sampler = ProcessSampler()
    try:
        with _group([PYTHON, "-c", code, str(library)], env=env, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE) as miner:
            miner.stdout.readline()
            return _detections_until(sampler, miner.pid,
                                     lambda snap, ids: "mining-miner-content" in ids,
                                     timeout=30)[1]
    finally:
        sampler.content.close()


@needs_gcc
def test_a_stratum_client_library_is_named(tmp_path, pool):
    """The baseline: the library's file is scanned, its requests are a Stratum client's."""
    assert "mining-miner-content" in _library_miner_ids(_miner_library(tmp_path, 16), pool)


@needs_gcc
def test_a_stratum_client_library_padded_past_the_scan_is_named(tmp_path, pool):
    """Its requests lie past the 64 MiB its file scan reads: no package owns it, so its
    loadable segments past the bound are read too."""
    assert "mining-miner-content" in _library_miner_ids(_miner_library(tmp_path, 70 << 20),
                                                        pool)


# ------------------------------------------------------------ a miner hopping from pid to pid

#: The stand-in Stratum miner (no name, no marker) in a child of the "kernel" that forks every
#: 0.8 s, its parent exiting: each pid lives less than two ticks, the pool connection (the
#: same socket) and the hashing carry on in the next.
HOPPING_MINER = r"""
import os, sys, time
from tests.standins import quiet_miner
if os.fork() == 0:
    real, hop_at = time.monotonic, [time.monotonic() + 0.8]
    def hopping():
        now = real()
        if now >= hop_at[0]:
            hop_at[0] = now + 0.8
            if os.fork() != 0:
                os._exit(0)
        return now
    quiet_miner.time.monotonic = hopping
    quiet_miner.run("127.0.0.1", int(sys.argv[1]), 1.0, 22)
    os._exit(0)
try:
    time.sleep(24)
finally:
    os.killpg(0, 9)
"""


def test_a_miner_hopping_to_a_new_pid_every_0_8_s_is_measured(pool):
    watched = watched_for_a_window(HOPPING_MINER, int(pool.rsplit(":", 1)[1]), "hopping")
    assert len(watched.seen) >= 4, watched.seen  # hops were seen
    assert _any_mines(watched), watched.seen


# The honest near-misses: a connection held on by the process that opened it while the
# workers it forks (and recycles) inherit it and compute is never handed over.

#: A sweep run in a pool that starts a fresh worker per trial (maxtasksperchild=1: no leaks
#: between trials), each inheriting the connection of a chat bot that reports progress: the
#: chat server pushes a message every 2.5 s unasked and the bot answers it with the best of
#: the next two trials (more than a share's bytes), while worker after worker keeps a core
#: busy. Run as ``python -c`` or as a notebook cell (``CHAT_PORT`` set, ``SECONDS`` of it).
SWEEP_WITH_A_CHAT_BOT = r"""
import hashlib, json, multiprocessing, socket, sys, threading, time
def trial(seconds=0.5):
    d, end = b"x", time.monotonic() + seconds
    while time.monotonic() < end:
        d = hashlib.sha256(d).digest()
    return d.hex()
chat = socket.create_connection(("127.0.0.1", CHAT_PORT)).makefile("rwb")
trial(1.5)  # the sweep's data prepared (measured from here on: it holds a connection)
workers = multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1)
done, finished = [], threading.Event()
def collect():
    for result in workers.imap_unordered(trial, [0.5] * 10_000):
        done.append(result)
        finished.set()
threading.Thread(target=collect, daemon=True).start()
end = time.monotonic() + SECONDS
while time.monotonic() < end:
    message = json.loads(chat.readline())
    for _ in range(2):  # answered with the best of the next two trials
        finished.clear()
        finished.wait()
    reply = {"reply_to": message["d"]["id"], "content": f"{len(done)} trials, best "
             + min(done)}
    chat.write(json.dumps(reply).encode() + b"\n"); chat.flush()
workers.terminate()
print("trials", len(done), flush=True)
"""


@pytest.fixture
def chat():
    server = standin_chat.serve(2.5)
    yield server.getsockname()[1]
    server.close()


def _near_miss_seen(watched) -> bool:
    """What makes these near misses was there: the workers recycled (several processes) and
    the connection pushed to and answered (the sweep kept a core busy)."""
    return len(watched.seen) >= 6 and watched.highest("pushed_connections") >= 1


def _any_mines(watched) -> bool:
    return any(_mines({name: fields.get(name, 0) for name in MINING_FIELDS})
               for fields in watched.seen.values())


def test_a_sweep_in_recycled_workers_inheriting_a_chat_bots_connection_is_left_alone(chat):
    code = SWEEP_WITH_A_CHAT_BOT.replace("CHAT_PORT", "int(sys.argv[1])").replace(
        "SECONDS", "60")
    watched = watched_for_a_window(code, chat, "sweep")
    assert _near_miss_seen(watched), watched.seen
    assert not _any_mines(watched), watched.seen


#: A pre-forking server (gunicorn's shape): the master opens its connection to a service
#: registry (which pushes a change every 2.5 s unasked; the master acknowledges at its next
#: round, once a second, with its workers' state), binds the listening socket, and forks two
#: workers that inherit both, serve five requests of 0.2 s of CPU each and exit
#: (max_requests), each replaced by a fresh one.
PREFORK_SERVER = r"""
import hashlib, json, os, select, socket, sys, time
registry = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
def serve():
    for _ in range(5):
        conn, _ = listener.accept()
        with conn:
            d, end = conn.recv(1024), time.monotonic() + 0.2
            while time.monotonic() < end:
                d = hashlib.sha256(d).digest()
            conn.sendall(d.hex().encode())
    os._exit(0)
workers, served = set(), 0
while True:
    while len(workers) < 2:
        pid = os.fork()
        if pid == 0:
            serve()
        workers.add(pid)
    time.sleep(1.0)
    for pid in list(workers):
        if os.waitpid(pid, os.WNOHANG)[0]:
            workers.discard(pid)
            served += 5
    while select.select([registry], [], [], 0)[0]:
        change = registry.recv(4096)
        state = {"ack": len(change), "workers": sorted(workers), "served": served}
        registry.sendall(json.dumps(state).ljust(80).encode() + b"\n")
"""


def test_a_preforking_server_recycling_its_workers_is_left_alone(chat):
    watched = Watched([sys.executable, "-c", PREFORK_SERVER, str(chat)],
                      window=SAMPLER_WINDOW, kernel_id="prefork")
    stop, answers = threading.Event(), []

    def client(port: int) -> None:
        try:
            while not stop.is_set():
                with socket.create_connection(("127.0.0.1", port)) as request:
                    request.sendall(b"GET /predict")
                    answers.append(request.recv(128))
        except OSError:
            return  # the server was stopped

    try:
        port = int(watched.proc.stdout.readline())
        threading.Thread(target=client, args=(port,), daemon=True).start()
        watched.warm()
        seconds = SAMPLER_WINDOW + 6
        wait_until(lambda: watched.ticks * 0.3 >= seconds, timeout=seconds * 4,
                   what="the server served")
    finally:
        stop.set()
        watched.stop()
    assert len(answers) >= 20, len(answers)
    assert _near_miss_seen(watched), watched.seen
    assert not _any_mines(watched), watched.seen


def test_the_sweep_in_a_notebook_its_workers_inheriting_the_kernels_sockets_is_left_alone(
        tmp_path, chat):
    """The same sweep as a cell of a real kernel: its workers inherit the kernel's ZMQ
    sockets (connections the Jupyter client opened to it) besides the bot's connection."""
    from jupyter_client import BlockingKernelClient
    from jupyter_client.connect import write_connection_file

    connection, _ = write_connection_file(str(tmp_path / "kernel.json"), ip="127.0.0.1")
    watched = Watched([sys.executable, "-m", "ipykernel_launcher", "-f", connection],
                      window=SAMPLER_WINDOW, kernel_id="notebook")
    client, outputs = BlockingKernelClient(connection_file=connection), []
    try:
        client.load_connection_file()
        client.start_channels(hb=False)  # a late beat on a busy machine is no death
        client.wait_for_ready(timeout=60)
        watched.warm()
        code = SWEEP_WITH_A_CHAT_BOT.replace("CHAT_PORT", str(chat)).replace(
            "SECONDS", str(SAMPLER_WINDOW + 8))
        reply = client.execute_interactive(
            code, timeout=SAMPLER_WINDOW + 60,
            output_hook=lambda message: outputs.append(message["content"].get("text", "")))
    finally:
        client.stop_channels()
        watched.stop()
    assert reply["content"]["status"] == "ok" and "trials" in "".join(outputs), outputs
    assert _near_miss_seen(watched), watched.seen
    assert not _any_mines(watched), watched.seen
