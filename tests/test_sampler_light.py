"""The sampler's cheaper reads, and what they must still see at once.

- A process that runs every tick (a kernel's threads wake each second) is read lightly:
  its stat, command line and fd count, the rest kept from its last full read. Anything a
  signature reads changes one of those, and then it is read in full at once: renamed,
  its command line rewritten, a socket opened, a thread started, another program exec'd.
- An idle process's scheduler counts are read through files kept open (within a budget).
- Which kernel each process belongs to is worked out again only when a process started,
  exited or was reparented, or the kernels changed.

Real processes throughout.
"""

from __future__ import annotations

import gc
import os
import resource
import shutil
import socket
import subprocess
import sys
import time

import psutil
import pytest

from colab_guard.observe import processes, procfs
from colab_guard.observe.content import ContentScanner
from colab_guard.observe.idle import HeldCounts
from colab_guard.observe.procfs import InetTables
from colab_guard.observe.processes import ProcessSampler
from tests.harness import wait_until

PY = sys.executable

# Wakes every 20 ms (so it runs at every tick) and does what its stdin says.
RUNNER = """\
import ctypes, os, select, socket, sys, threading, time
keep = []
print('up', flush=True)
while True:
    if not select.select([sys.stdin], [], [], 0.02)[0]:
        continue
    command = sys.stdin.readline().strip()
    if command == 'rename':
        ctypes.CDLL(None).prctl(15, b'renamed', 0, 0, 0)
    elif command == 'listen':
        keep.append(socket.create_server(('127.0.0.1', 0)))
    elif command == 'thread':
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    elif command == 'argv':
        fields = open('/proc/self/stat', 'rb').read().rsplit(b')', 1)[1].split()
        start, end = int(fields[45]), int(fields[46])
        fd = os.open('/proc/self/mem', os.O_RDWR)
        os.pwrite(fd, b'rewritten'.ljust(end - start - 1, b' ') + b'\\0', start)
    elif command == 'spin':
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            pass
    elif command == 'exec':
        print('done', flush=True)
        os.execv('/bin/sleep', ['sleep', '600'])
    print('done', flush=True)
"""


@pytest.fixture
def runner():
    proc = subprocess.Popen([PY, "-c", RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "up\n"
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def young_ok(monkeypatch):
    """The fd count is trusted from a process's start (the tests' processes are young)."""
    monkeypatch.setattr(processes, "FD_COUNT_SETTLED", -1.0)


def sample(sampler: ProcessSampler, pid: int):
    return sampler.sample({"k": pid})["k"].kernel_process


def read_lightly(sampler: ProcessSampler, pid: int):
    """Sample until a tick reads the running process lightly."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        before = sampler.stats.light_reads
        proc = sample(sampler, pid)
        if sampler.stats.light_reads > before:
            return proc
        time.sleep(0.05)
    raise AssertionError("the running process was never read lightly")


def command(proc: subprocess.Popen, what: str) -> None:
    proc.stdin.write(what + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "done\n"


def test_a_running_process_is_read_lightly_with_its_cpu_and_memory_current(runner, young_ok):
    sampler = ProcessSampler()
    first = sample(sampler, runner.pid)
    light = read_lightly(sampler, runner.pid)
    assert light is not first
    assert (light.cmdline, light.exe, light.name, light.threads) == \
        (first.cmdline, first.exe, first.name, first.threads)
    assert abs(light.rss - psutil.Process(runner.pid).memory_info().rss) < 4 << 20
    command(runner, "spin")  # half a second of CPU
    busy = sample(sampler, runner.pid)
    assert sampler.stats.light_reads >= 2 and busy.cpu_percent > 20.0  # seen, lightly


@pytest.mark.parametrize("change, seen", [
    ("rename", lambda p: p.name == "renamed"),
    ("argv", lambda p: p.cmdline[0] == "rewritten"),
    ("listen", lambda p: [s.status for s in p.sockets] == ["LISTEN"]),
    ("thread", lambda p: p.threads == 2),
    ("exec", lambda p: p.name == "sleep" and p.exe == os.path.realpath("/bin/sleep")),
])
def test_what_a_light_read_skips_is_read_in_full_as_soon_as_it_changes(runner, young_ok,
                                                                         change, seen):
    sampler = ProcessSampler()
    sample(sampler, runner.pid)
    before = read_lightly(sampler, runner.pid)
    assert not seen(before)
    full_reads = sampler.stats.full_reads
    command(runner, change)
    if change == "exec":  # until the exec is done
        deadline = time.monotonic() + 10
        while psutil.Process(runner.pid).name() != "sleep" and time.monotonic() < deadline:
            time.sleep(0.02)
    after = sample(sampler, runner.pid)  # the very next tick
    assert seen(after), after
    assert sampler.stats.full_reads == full_reads + 1


#: In a network namespace of its own (its tables read afresh at every tick): two servers and
#: a connection to the first, swapped on a line of stdin for one to the second (which takes
#: the closed socket's fd); wakes every 20 ms, so that it is read lightly.
SWAPPER = """\
import select, socket, sys
servers = [socket.create_server(('127.0.0.1', 0)) for _ in range(2)]
conn = socket.create_connection(servers[0].getsockname())
print(*(s.getsockname()[1] for s in servers), flush=True)
while True:
    if select.select([sys.stdin], [], [], 0.02)[0]:
        sys.stdin.readline()
        conn.close()
        conn = socket.create_connection(servers[1].getsockname())
        print('done', flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
                    reason="a network namespace of its own needs root, unshare and ip")
def test_a_connection_swapped_for_another_at_the_same_fd_count_is_seen_at_the_next_tick(
        young_ok):
    """A sweep keeping 16 attempts in flight keeps its fd count: each closed socket's fd is
    the next one's. Read lightly, its sockets were the last walk's (all closed), and it held
    none until its fds were walked at the libraries' pace: an IPv6 sweep in a namespace of
    its own was missed so. A socket gone from the tables has its fds walked again."""
    proc = subprocess.Popen(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1"',
                             PY, SWAPPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ports = [int(port) for port in proc.stdout.readline().split()]
        sampler = ProcessSampler()
        sample(sampler, proc.pid)
        held = read_lightly(sampler, proc.pid)
        assert sorted(s.remote_port for s in held.sockets if s.remote_port) == [ports[0]]
        command(proc, "swap")
        after = sample(sampler, proc.pid)  # the very next tick
        assert sorted(s.remote_port for s in after.sockets if s.remote_port) == [ports[1]]
    finally:
        proc.kill()
        proc.wait()


def test_a_process_running_on_is_still_read_in_full_every_few_seconds(runner, young_ok):
    sampler = ProcessSampler(libraries_refresh=0.5)  # a full read due within 0.25–0.47 s
    sample(sampler, runner.pid)
    read_lightly(sampler, runner.pid)
    full_reads = sampler.stats.full_reads
    deadline = time.monotonic() + 10
    while sampler.stats.full_reads == full_reads and time.monotonic() < deadline:
        time.sleep(0.05)
        sample(sampler, runner.pid)
    assert sampler.stats.full_reads == full_reads + 1


def _full_every(sampler: ProcessSampler, pid: int) -> float:
    return next(t.full_every for (p, _), t in sampler._tracked.items() if p == pid)


def _tick_until(sampler, pid, condition, what: str):
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
        sample(sampler, pid)


def test_a_kernel_found_unchanged_is_read_in_full_ever_further_apart(runner, young_ok,
                                                                      monkeypatch):
    monkeypatch.setattr(processes, "KERNEL_FULL_READ_MAX", 0.8)
    sampler = ProcessSampler(libraries_refresh=0.1)
    sample(sampler, runner.pid)
    seen = []

    def spaced_out():
        seen.append(_full_every(sampler, runner.pid))
        return seen[-1] == 0.8

    _tick_until(sampler, runner.pid, spaced_out, "the kernel's full reads never spaced out")
    grown = list(dict.fromkeys(seen))
    assert grown[-4:] == [0.1, 0.2, 0.4, 0.8]  # doubled at each full read that found nothing
    # Anything new (a socket) has it read in full at once, and the spacing starts again.
    full_reads = sampler.stats.full_reads
    command(runner, "listen")
    sample(sampler, runner.pid)
    assert sampler.stats.full_reads == full_reads + 1
    assert _full_every(sampler, runner.pid) == 0.1


def test_a_kernel_whose_libraries_are_looked_at_again_keeps_its_spacing(runner, young_ok,
                                                                       monkeypatch):
    """The content scanner looks at what a process has mapped again every ``memory_rescan``
    all the same: while that look is under way the kernel's files are pending, which is no
    change. (It had the spacing start again: two hundred idle kernels read in full every
    40 s instead of 120 s.)"""
    monkeypatch.setattr(processes, "KERNEL_FULL_READ_MAX", 0.8)
    content = ContentScanner(memory_rescan=1.0)
    sampler = ProcessSampler(libraries_refresh=0.1, content=content)
    try:
        sample(sampler, runner.pid)
        _tick_until(sampler, runner.pid, lambda: _full_every(sampler, runner.pid) == 0.8,
                    "the kernel's full reads never spaced out")
        looks, seen = content.stats["library_looks"], []
        deadline = time.monotonic() + 4  # past two periodic looks
        while time.monotonic() < deadline or content.stats["library_looks"] < looks + 2:
            assert time.monotonic() < deadline + 30, "no periodic look at its libraries"
            time.sleep(0.02)
            sample(sampler, runner.pid)
            seen.append(_full_every(sampler, runner.pid))
        assert set(seen) == {0.8}
    finally:
        content.close()


def test_a_connection_the_kernel_hook_reports_has_the_kernel_read_in_full_at_the_next_tick(
        runner, young_ok, monkeypatch):
    monkeypatch.setattr(processes, "KERNEL_FULL_READ_MAX", 60.0)
    sampler = ProcessSampler(libraries_refresh=0.1)
    sample(sampler, runner.pid)
    _tick_until(sampler, runner.pid, lambda: _full_every(sampler, runner.pid) >= 3.2,
                "the kernel's full reads never spaced out")
    read_lightly(sampler, runner.pid)
    full_reads = sampler.stats.full_reads
    sampler.read_kernel_in_full("k")  # what Monitor.note_connects does
    sample(sampler, runner.pid)
    assert sampler.stats.full_reads == full_reads + 1


def test_a_process_that_is_no_kernel_is_read_in_full_at_the_usual_pace(runner, young_ok,
                                                                       monkeypatch):
    """A busy child (a miner whose memory may unpack later) is not spaced out."""
    monkeypatch.setattr(processes, "KERNEL_FULL_READ_MAX", 0.8)
    kernel = subprocess.Popen(["sleep", "600"])
    try:
        sampler = ProcessSampler(libraries_refresh=0.1)
        sampler.claim(runner.pid, "k")  # the runner is the kernel's child here
        full_reads = sampler.stats.full_reads
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            sampler.sample({"k": kernel.pid})
            time.sleep(0.02)
        assert _full_every(sampler, runner.pid) == 0.1
        assert sampler.stats.full_reads - full_reads >= 3 / 0.1 * 0.5  # every 50-94 ms
    finally:
        kernel.kill()
        kernel.wait()


def test_a_kernel_that_keeps_running_holds_no_schedstat_files(runner, young_ok):
    gc.collect()
    held_before = HeldCounts.open_files
    sampler = ProcessSampler()
    sample(sampler, runner.pid)
    assert HeldCounts.open_files > held_before  # its baseline, if it turns out idle
    read_lightly(sampler, runner.pid)
    assert HeldCounts.open_files == held_before  # running: not read until its next full read


def test_the_open_files_limit_is_raised_for_held_files():
    """Most services start with a soft limit of 1,024 (a budget of 256 held files, for a
    thousand idle processes): the sampler raises it towards the hard limit."""
    hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 20)
    code = ("import resource\n"
            f"resource.setrlimit(resource.RLIMIT_NOFILE, (1024, {hard}))\n"
            "from colab_guard.observe.idle import HeldCounts\n"
            "print(HeldCounts._budget(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout
    raised = min(hard, 32768)
    assert out.split() == [str(min(8192, raised // 4)), str(raised)]
    code = code.replace(str(hard), "2048")  # the hard limit is as far as it goes
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["512", "2048"]


def test_an_idle_process_is_watched_through_held_files_which_close_when_it_exits():
    gc.collect()  # earlier tests' samplers: their files closed now, not during this test
    held_before = HeldCounts.open_files
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        sampler = ProcessSampler()
        sample(sampler, sleeper.pid)
        assert HeldCounts.open_files == held_before + 1  # its schedstat, kept open
        reads = sampler.stats.full_reads
        for _ in range(3):
            sample(sampler, sleeper.pid)
        assert sampler.stats.full_reads == reads  # it did not run
        sleeper.kill()
        sleeper.wait()
        sampler.sample({})  # gone from the table: its state and files forgotten
        assert HeldCounts.open_files == held_before
    finally:
        sleeper.kill()
        sleeper.wait()


def test_past_the_budget_of_held_files_idle_processes_are_read_as_before(monkeypatch):
    monkeypatch.setattr(HeldCounts, "budget", HeldCounts.open_files)  # none to spare
    kernel = subprocess.Popen(["/bin/sh", "-c", "sleep 600 & echo up; wait"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert kernel.stdout.readline() == "up\n"
        child = psutil.Process(kernel.pid).children()[0]
        sampler = ProcessSampler()

        def child_sample():
            snap = sampler.sample({"k": kernel.pid})["k"]
            return next(p for p in snap.processes if p.pid == child.pid)

        child_sample()
        held = HeldCounts.open_files
        time.sleep(0.2)
        quiet = child_sample()
        assert child_sample() is quiet and HeldCounts.open_files == held  # read, not held
        ran = open(f"/proc/{child.pid}/schedstat").read()
        child.suspend()
        child.resume()  # it runs (a signal is handled by running), once scheduled
        wait_until(lambda: open(f"/proc/{child.pid}/schedstat").read() != ran, timeout=10,
                   what="the child scheduled")
        assert child_sample() is not quiet
    finally:
        os.killpg(kernel.pid, 9)
        kernel.wait()


def test_attribution_is_made_anew_when_a_process_starts_or_the_kernels_change():
    kernel = subprocess.Popen(["/bin/sh", "-c", "read line; sleep 600 & echo up; wait"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    other = subprocess.Popen(["sleep", "600"])
    try:
        sampler = ProcessSampler()
        for _ in range(3):  # nothing changes: the same attribution each tick
            snap = sampler.sample({"k": kernel.pid})["k"]
        assert [p.pid for p in snap.processes] == [kernel.pid]
        kernel.stdin.write("go\n")
        kernel.stdin.flush()
        assert kernel.stdout.readline() == "up\n"
        snap = sampler.sample({"k": kernel.pid})["k"]
        assert len(snap.processes) == 2  # the new child, at the next tick
        sampler.sample({"k": kernel.pid})  # `other` belongs to no kernel
        sampler.claim(other.pid, "k")  # the kernel hook says it started it
        snap = sampler.sample({"k": kernel.pid})["k"]
        assert other.pid in [p.pid for p in snap.processes]
        third = subprocess.Popen(["sleep", "600"])
        sampler.sample({"k": kernel.pid})
        both = sampler.sample({"k": kernel.pid, "k2": third.pid})
        third.kill()
        third.wait()
        assert [p.pid for p in both["k2"].processes] == [third.pid]  # a kernel more
    finally:
        os.killpg(kernel.pid, 9)
        kernel.wait()
        other.kill()
        other.wait()


def test_the_socket_tables_are_read_again_for_a_new_socket_or_once_too_old():
    held = socket.create_server(("127.0.0.1", 0))
    inode = os.fstat(held.fileno()).st_ino
    first = InetTables()
    assert [s.status for s in first.of((inode,))] == ["LISTEN"] and first.read
    again = InetTables(earlier=first, max_age=60)
    assert [s.status for s in again.of((inode,))] == ["LISTEN"]
    assert not again.read  # a socket the last read knew: answered from it
    new = socket.create_server(("127.0.0.1", 0))
    found = again.of((inode, os.fstat(new.fileno()).st_ino))
    assert again.read and len(found) == 2  # one it did not know: read now
    stale = InetTables(earlier=first, max_age=0)
    stale.of((inode,))
    assert stale.read  # too old to answer
    held.close()
    new.close()


def test_a_connecting_socket_is_read_again_at_once_not_answered_from_the_last_read():
    """A connect in flight (SYN_SENT) is answered, refused or given up within seconds, and a
    sweep's next attempt takes its fd: its state is never answered from an earlier read."""
    server = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = server.getsockname()[1]
    clients = []
    for _ in range(3):  # the backlog full, the later clients' SYNs go unanswered
        client = socket.socket()
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
        clients.append(client)
    inodes = {os.fstat(c.fileno()).st_ino: c for c in clients}

    def read_connecting() -> InetTables | None:
        tables = InetTables()
        return tables if any(s.status == "SYN_SENT" for s in tables.of(tuple(inodes))) else None

    first = wait_until(read_connecting, what="a client connecting")
    connecting = next(inode for inode, s in first.pairs(tuple(inodes)) if s.status == "SYN_SENT")
    established = next(inode for inode, s in first.pairs(tuple(inodes)) if s.status != "SYN_SENT")
    again = InetTables(earlier=first, max_age=60)
    assert again.of((established,)) and not again.read  # held all along: from the last read
    inodes[connecting].close()  # given up
    assert again.of((established, connecting)) == first.of((established,))
    assert again.read
    server.close()
    for client in clients:
        client.close()


def test_a_sample_copied_with_changes_is_a_new_sample_and_the_old_one_unchanged():
    from colab_guard.observe.model import Process
    base = Process(pid=7, name="python", cmdline=["python"], create_time=1.0, cpu_percent=1.0)
    assert base.key == (7, 1.0)
    copy = base.but(cpu_percent=50.0, rss=10)
    assert (copy.cpu_percent, copy.rss, copy.name, copy.key) == (50.0, 10, "python", (7, 1.0))
    assert (base.cpu_percent, base.rss) == (1.0, 0) and copy == base.but(cpu_percent=50.0, rss=10)
    assert base.but(pid=8).key == (8, 1.0)  # its key follows a new pid
    with pytest.raises(TypeError, match="not fields of Process: \\['cpu'\\]"):
        base.but(cpu=1.0)


def test_a_process_read_in_the_middle_of_its_exec_is_read_with_its_arguments():
    """Between the moment an exec sets the new file and the moment it copies the arguments,
    /proc shows the new file with an empty command line (CI once read a miner so, with none of
    its options). Each new process is read as fast as it goes, from its fork to its exit: no
    reading pairs its file with no arguments."""
    sampler = ProcessSampler()
    programs = {}
    for _ in range(200):
        child = subprocess.Popen(["/usr/bin/tac", "-s", "x", "/dev/null"])
        try:
            while True:
                sampler._exec_waits = processes.MAX_EXEC_WAITS  # as at each tick
                _, exe, cmdline = sampler._read_program(child.pid)
                if not exe:
                    break  # exited (a zombie)
                programs.setdefault(os.path.basename(exe), set()).add(tuple(cmdline))
        except FileNotFoundError:
            pass  # reaped meanwhile
        child.wait()
    assert ("/usr/bin/tac", "-s", "x", "/dev/null") in programs["tac"]  # read after its exec
    assert () not in programs["tac"]
    for exe, lines in programs.items():
        assert all(lines), exe


def test_processes_whose_command_line_stays_empty_pause_a_tick_a_bounded_time(monkeypatch):
    """With CAP_SYS_RESOURCE (prctl PR_SET_MM_ARG_END) a process can empty its command line
    for good, and each such process is read again as if caught mid-exec. This machine's root
    lacks the capability, so their reads are stood in for: 40 of them pause one tick
    MAX_EXEC_WAITS times (not 80), and are sampled all the same."""
    parent = subprocess.Popen(["bash", "-c", "for i in $(seq 40); do sleep 60 & done; wait"])
    try:
        children = wait_until(lambda: len(kids := psutil.Process(parent.pid).children()) == 40
                              and all(k.name() == "sleep" for k in kids) and kids)
        blank = {child.pid for child in children}
        read_cmdline, real_sleep, pauses = processes.procfs.read_cmdline, time.sleep, []
        monkeypatch.setattr(processes.procfs, "read_cmdline",
                            lambda pid: [] if pid in blank else read_cmdline(pid))

        def sleep(seconds: float) -> None:
            if seconds == processes.EXEC_SETTLES:
                pauses.append(seconds)
            real_sleep(seconds)

        monkeypatch.setattr(processes.time, "sleep", sleep)
        snapshot = ProcessSampler().sample({"k": parent.pid})["k"]
        assert {p.pid for p in snapshot.processes if p.cmdline == []} == blank
        assert len(pauses) == processes.MAX_EXEC_WAITS
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)])
        parent.kill()
        parent.wait()


def test_a_process_whose_file_changes_under_every_reading_is_read_with_no_arguments(
        monkeypatch):
    """A script exec'ing itself without end (env, then the shell on it again) can change its
    file under all three readings: it is handed out with its file and no arguments, never
    env's file with the shell's arguments (CI read it so). Its file changing is stood in for
    (the test of the real loop: tests/test_sampler.py)."""
    child = subprocess.Popen(["/bin/sleep", "300"])
    try:
        wait_until(lambda: os.path.basename(os.readlink(f"/proc/{child.pid}/exe")) == "sleep",
                   what="sleep exec'd")
        sampler = ProcessSampler()
        exe_now = procfs.exe_now
        monkeypatch.setattr(procfs, "exe_now", lambda pid: "/usr/bin/env" if pid == child.pid
                            else exe_now(pid))
        _, exe, cmdline = sampler._read_program(child.pid)
        assert (os.path.basename(exe), cmdline) == ("sleep", [])
        monkeypatch.setattr(procfs, "exe_now", exe_now)
        assert sampler._read_program(child.pid)[2] == ["/bin/sleep", "300"]
    finally:
        child.kill()
        child.wait()
