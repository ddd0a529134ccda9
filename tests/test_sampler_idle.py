"""What the sampler reads each tick: a process is read in full only when it is new or
has run since its last read; one that did not run is handed out again as it was, its
sockets' states from the socket tables (read again at least every ``libraries_refresh``).
Real processes, except where a kernel that cannot exist here is played (scheduler counts
switched off, a pid taken again)."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time

import psutil
import pytest

from colab_guard.observe import procfs
from colab_guard.observe.processes import Entry, ProcessSampler

PY = sys.executable

WAITER = ("import ctypes, socket, sys\n"
          "print('up', flush=True)\n"
          "port = int(sys.stdin.readline())\n"
          "s = socket.create_connection(('127.0.0.1', port))\n"
          "ctypes.CDLL(None).prctl(15, b'renamed', 0, 0, 0)\n"
          "print('ran', flush=True)\n"
          "sys.stdin.readline()\n")


@pytest.fixture
def started():
    """Processes a test starts; killed after it."""
    procs: list[subprocess.Popen] = []

    def start(argv, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                **kwargs)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def kernel_process(sampler: ProcessSampler, pid: int):
    return sampler.sample({"k": pid})["k"].kernel_process


def settled(sampler: ProcessSampler, pid: int):
    """Sample until the process is quiet (it may still be finishing its print, or entering
    the read it will block in): two ticks in a row hand out the same sample."""
    last = kernel_process(sampler, pid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = kernel_process(sampler, pid)
        if now is last:
            return now
        last = now
    raise AssertionError(f"process {pid} never went quiet")


def test_an_idle_process_is_handed_out_unchanged_until_it_runs(started):
    listener = socket.create_server(("127.0.0.1", 0))
    proc = started([PY, "-c", WAITER])
    assert proc.stdout.readline() == "up\n"
    sampler = ProcessSampler()
    first = settled(sampler, proc.pid)
    reads = sampler.stats.full_reads
    again = [kernel_process(sampler, proc.pid) for _ in range(3)]
    assert all(sample is first for sample in again)  # not read, not copied
    assert sampler.stats.full_reads == reads
    assert again[0].cmdline == first.cmdline and again[0].sockets == []

    proc.stdin.write(f"{listener.getsockname()[1]}\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "ran\n"
    after = kernel_process(sampler, proc.pid)
    assert after is not again[0] and sampler.stats.full_reads == reads + 1
    assert after.name == "renamed"  # it ran: read in full at once
    assert [s.remote for s in after.sockets] == [("127.0.0.1", listener.getsockname()[1])]
    listener.close()


def test_the_socket_of_an_idle_process_is_seen_changing_state(started):
    listener = socket.create_server(("127.0.0.1", 0))
    proc = started([PY, "-c", WAITER])
    assert proc.stdout.readline() == "up\n"
    proc.stdin.write(f"{listener.getsockname()[1]}\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "ran\n"
    accepted, _ = listener.accept()
    sampler = ProcessSampler(libraries_refresh=0.5)  # the socket tables read again within it
    idle = settled(sampler, proc.pid)
    assert [s.status for s in idle.sockets] == ["ESTABLISHED"]
    reads = sampler.stats.full_reads
    accepted.close()  # the peer hangs up; the process, blocked on stdin, does not run
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        closed = kernel_process(sampler, proc.pid)
        if [s.status for s in closed.sockets] == ["CLOSE_WAIT"]:
            break
        time.sleep(0.05)
    assert [s.status for s in closed.sockets] == ["CLOSE_WAIT"]
    assert sampler.stats.full_reads == reads  # from the socket tables, not a full read
    listener.close()


def test_a_kernel_whose_children_sleep_costs_no_full_reads_after_the_first_tick(started):
    kernel = started(["/bin/sh", "-c", "for i in $(seq 20); do sleep 600 & done; echo up; wait"],
                     start_new_session=True)
    assert kernel.stdout.readline() == "up\n"
    sampler = ProcessSampler()
    first = sampler.sample({"k": kernel.pid})["k"]
    assert len(first.processes) == 21 and sampler.stats.full_reads == 21
    # The last children may still be starting, the shell entering `wait`: until a tick
    # reads nothing in full.
    deadline, reads = time.monotonic() + 10, -1
    while reads != sampler.stats.full_reads and time.monotonic() < deadline:
        reads = sampler.stats.full_reads
        time.sleep(0.1)
        sampler.sample({"k": kernel.pid})
    for _ in range(3):
        time.sleep(0.2)
        assert len(sampler.sample({"k": kernel.pid})["k"].processes) == 21
    assert sampler.stats.full_reads == reads  # none of them ran
    for child in psutil.Process(kernel.pid).children():
        child.kill()


def test_when_the_scheduler_counts_do_not_move_every_process_is_read_in_full(
        started, monkeypatch, caplog):
    # A kernel or sandbox whose /proc/PID/schedstat never changes could hide a process
    # that runs; the sampler notices (its own thread ran, yet its counts did not move).
    real_read = procfs.read_small

    def frozen(path: str) -> bytes:
        return b"1000 0 1\n" if path.endswith("schedstat") else real_read(path)

    monkeypatch.setattr(procfs, "read_small", frozen)
    proc = started([PY, "-c", WAITER])
    assert proc.stdout.readline() == "up\n"
    sampler = ProcessSampler(logging.getLogger("test"))
    with caplog.at_level(logging.WARNING, "test"):
        for _ in range(4):
            kernel_process(sampler, proc.pid)
    assert sampler.stats.full_reads == 4
    assert not sampler.counts_move
    assert caplog.text.count("do not move") == 1


def test_keys_are_psutils_create_times(started):
    # The monitor, the kernel hook and the stop action name processes by (pid, create
    # time); the sampler's must be psutil's exactly.
    kernel = started(["/bin/sh", "-c", "sleep 600 & echo up; wait"], start_new_session=True)
    assert kernel.stdout.readline() == "up\n"
    sampler = ProcessSampler()
    snap = sampler.sample({"k": kernel.pid})["k"]
    assert len(snap.processes) == 2
    for sample in snap.processes:
        assert sample.key == (sample.pid, procfs.start_time(sample.pid))
    psutil.Process(kernel.pid).children()[0].kill()


def test_a_process_is_not_taken_for_the_child_of_whoever_took_its_dead_parents_pid():
    # X's parent (pid 700) exited and the pid went to a new process under the kernel; the
    # table still says ppid 700 for X. A parent cannot start after its child.
    sampler = ProcessSampler(read_environ=False)
    table = {500: Entry((500, 1.0), 1, 1, 100),  # the kernel
             700: Entry((700, 3.0), 2, 500, 300),  # its child, with the recycled pid
             900: Entry((900, 2.0), 3, 700, 200)}  # X, started before that child
    assert sampler._attribute_anew({"k": 500}, table) == {500: "k", 700: "k"}
    table[900] = Entry((900, 4.0), 4, 700, 400)  # a real child of 700 this time
    assert sampler._attribute_anew({"k": 500}, table) == {500: "k", 700: "k", 900: "k"}


def test_a_process_whose_proc_inode_changed_keeps_its_identity_and_owner(started):
    # /proc/PID gets a new inode if its dentry was dropped (memory pressure): the stat is
    # read again, the start time shows it is the same process.
    kernel = started(["/bin/sh", "-c", "sleep 600 & echo up; wait"], start_new_session=True)
    assert kernel.stdout.readline() == "up\n"
    sampler = ProcessSampler(read_environ=False)
    sampler.sample({"k": kernel.pid})
    child = psutil.Process(kernel.pid).children()[0]
    entry = sampler._table[child.pid]
    entry.inode = -1
    snap = sampler.sample({"k": kernel.pid})["k"]
    assert sampler._table[child.pid] is entry and entry.inode != -1
    assert child.pid in {p.pid for p in snap.processes}
    child.kill()


def test_an_idle_orphan_shows_its_new_parent(started):
    # Its parent exits: the child, asleep all along, is reparented without running.
    kernel = started(["/bin/sh", "-c", "sleep 600 & echo up; read line"])
    assert kernel.stdout.readline() == "up\n"
    sleeper = psutil.Process(kernel.pid).children()[0]
    sampler = ProcessSampler(read_environ=False)
    snap = sampler.sample({"k": kernel.pid})["k"]
    assert {p.pid: p.ppid for p in snap.processes}[sleeper.pid] == kernel.pid
    kernel.stdin.write("bye\n")
    kernel.stdin.flush()
    kernel.wait()
    snap = sampler.sample({"k": kernel.pid})["k"]
    assert {p.pid: p.ppid for p in snap.processes}[sleeper.pid] == sleeper.ppid() != kernel.pid
    sleeper.kill()


def test_a_socket_handed_over_from_an_unwatched_process_is_seen_at_the_next_walk(started):
    # This test process (not watched) opens a connection, then passes the socket to the
    # watched process over a Unix socket (SCM_RIGHTS): no new socket appears in the
    # tables, so it is found when that process's fds are next walked (libraries_refresh).
    listener = socket.create_server(("127.0.0.1", 0))
    ours, theirs = socket.socketpair(socket.AF_UNIX)
    code = ("import socket, sys\n"
            f"unix = socket.socket(fileno={theirs.fileno()})\n"
            "print('up', flush=True)\n"
            "msg, fds, _, _ = socket.recv_fds(unix, 16, 1)\n"
            "print('got', flush=True)\n"
            "sys.stdin.readline()\n")
    proc = started([PY, "-c", code], pass_fds=(theirs.fileno(),))
    assert proc.stdout.readline() == "up\n"
    sampler = ProcessSampler(libraries_refresh=1.0)
    outbound = socket.create_connection(listener.getsockname())
    sampler.sample({"k": proc.pid})  # the connection is in the tables now: someone else's
    socket.send_fds(ours, [b"x"], [outbound.fileno()])
    assert proc.stdout.readline() == "got\n"
    found, ticks = [], 0
    while not found and ticks < 5:
        time.sleep(0.5)
        ticks += 1
        found = kernel_process(sampler, proc.pid).sockets
    assert [s.remote for s in found] == [listener.getsockname()]
    assert ticks * 0.5 <= 1.0 + 0.5  # within libraries_refresh (and one tick)
    for sock in (listener, ours, theirs, outbound):
        sock.close()


def test_a_library_mapped_just_before_going_quiet_is_seen_once_due(started):
    code = ("import sys\nprint('up', flush=True)\nsys.stdin.readline()\n"
            "import _hashlib\nprint('mapped', flush=True)\nsys.stdin.readline()\n")
    proc = started([PY, "-c", code])
    assert proc.stdout.readline() == "up\n"
    sampler = ProcessSampler(libraries_refresh=1.0)
    assert not any("_hashlib" in lib for lib in kernel_process(sampler, proc.pid).libraries)
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "mapped\n"
    waited, libraries = 0.0, []
    while not any("_hashlib" in lib for lib in libraries) and waited < 3:
        libraries = kernel_process(sampler, proc.pid).libraries  # quiet after the first
        time.sleep(0.25)
        waited += 0.25
    assert any("_hashlib" in lib for lib in libraries)
    assert waited <= 1.5  # libraries_refresh, and a tick


def test_the_schedulers_counts_are_not_said_to_stand_still_after_a_sleep_that_left_nothing(
        monkeypatch):
    """The check's 1 µs sleep can end before it starts (on a busy machine): no context switch,
    so this thread's counts, read back to back, have not changed. That is no sandbox faking
    them: a longer sleep is tried before every process is read in full each tick (CI once)."""
    from colab_guard.observe import idle
    real_sleep = time.sleep
    monkeypatch.setattr(idle.time, "sleep",
                        lambda seconds: None if seconds < 1e-4 else real_sleep(seconds))
    counts = idle.SchedCounts()
    for _ in range(5):
        assert counts.check() and counts.move
