"""The sampler's own /proc readers agree with psutil (whose keys and evidence the rest of
the guard uses) on real processes, the awkward ones included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import psutil
import pytest

from colab_guard.observe import procfs

PY = sys.executable


@pytest.fixture
def started():
    procs: list[subprocess.Popen] = []

    def start(argv, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, **kwargs)
        procs.append(proc)
        assert proc.stdout.readline() == b"up\n"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def exec_done(proc: subprocess.Popen) -> int:
    """The pid of a bash that said "up" and then execs: once the new program has loaded and
    waits for input (while its loader still maps libraries, its memory moves between reads)."""
    deadline = time.monotonic() + 10
    ps = psutil.Process(proc.pid)
    while time.monotonic() < deadline and (ps.name() == "bash"
                                           or ps.status() != psutil.STATUS_SLEEPING):
        time.sleep(0.01)
    return proc.pid


def assert_agrees(pid: int) -> None:
    ps = psutil.Process(pid)
    before = ps.memory_info()  # memory can move between reads: ours must lie between two
    stat = procfs.read_stat(pid)
    cmdline = procfs.read_cmdline(pid)
    assert cmdline == ps.cmdline()
    assert procfs.full_name(stat.comm, cmdline) == ps.name()
    assert procfs.read_exe(pid) == ps.exe()
    assert procfs.read_real_uid(pid) == ps.uids().real
    # Both add /proc/stat's btime, whole seconds that the kernel may move by one when the
    # clock is adjusted between two reads.
    assert abs(procfs.create_time(stat.start, psutil.boot_time()) - ps.create_time()) <= 1
    assert stat.ppid == ps.ppid() and stat.threads == ps.num_threads()
    after = ps.memory_info()
    assert stat.vms in (before.vms, after.vms)
    # stat and statm (psutil's) count resident pages through per-CPU counters (file, anon,
    # shmem), one exact and one read as is: each may be off by the counter's batch (32 pages,
    # or twice the CPUs) on every CPU.
    cpus = os.cpu_count() or 1
    slack = 3 * max(32, 2 * cpus) * cpus * os.sysconf("SC_PAGE_SIZE")
    assert min(before.rss, after.rss) - slack <= stat.rss <= max(before.rss, after.rss) + slack


def test_an_ordinary_process_with_threads(started):
    code = "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\nprint('up', flush=True)\ntime.sleep(60)"
    assert_agrees(started([PY, "-c", code]).pid)


def test_a_name_longer_than_the_kernel_keeps(started, tmp_path):
    program = tmp_path / "a-rather-long-program-name"
    program.symlink_to(shutil.which("cat"))
    proc = started(["bash", "-c", 'echo up; exec "$0"', str(program)], stdin=subprocess.PIPE)
    exec_done(proc)
    assert procfs.read_stat(proc.pid).comm == "a-rather-long-p"  # cut at 15
    assert procfs.full_name("a-rather-long-p", procfs.read_cmdline(proc.pid)) == program.name
    assert_agrees(proc.pid)


def test_a_command_line_rewritten_as_one_string(started):
    # One word holding spaces, as setproctitle leaves a command line: split at the spaces.
    proc = started(["bash", "-c", 'echo up; exec -a "worker --pool x" cat'], stdin=subprocess.PIPE)
    exec_done(proc)
    assert procfs.read_cmdline(proc.pid) == ["worker", "--pool", "x"]
    assert_agrees(proc.pid)


def test_a_command_line_that_is_not_utf8(started):
    bad = os.fsdecode(b"\xff\xfe-bad")  # kept with surrogate escapes, as psutil does
    proc = started([PY, "-c", "import time\nprint('up', flush=True)\ntime.sleep(60)", bad])
    assert procfs.read_cmdline(proc.pid)[-1] == bad
    assert_agrees(proc.pid)


def test_a_deleted_executable(started, tmp_path):
    copy = tmp_path / "sleeper"
    shutil.copy(shutil.which("sleep"), copy)
    proc = subprocess.Popen([str(copy), "60"])
    try:
        while psutil.Process(proc.pid).status() != psutil.STATUS_SLEEPING:  # started
            time.sleep(0.01)
        copy.unlink()
        assert procfs.read_exe(proc.pid) == str(copy)  # " (deleted)" taken off, as psutil does
        assert_agrees(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_a_zombie():
    proc = subprocess.Popen(["true"])
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
        pass
    try:
        stat = procfs.read_stat(proc.pid)
        assert stat.state == "Z"
        assert procfs.read_cmdline(proc.pid) == [] and procfs.read_exe(proc.pid) == ""
        assert procfs.full_name(stat.comm, []) == psutil.Process(proc.pid).name() == "true"
    finally:
        proc.wait()


def test_a_process_that_is_gone():
    proc = subprocess.Popen(["true"])
    proc.wait()
    for read in (procfs.read_stat, procfs.read_cmdline, procfs.read_exe, procfs.read_real_uid):
        with pytest.raises((FileNotFoundError, ProcessLookupError)):
            read(proc.pid)
    assert procfs.activity(proc.pid, single=True) is None


def test_the_fd_count_agrees_with_the_fd_listing_where_the_kernel_gives_it():
    if not procfs.FD_COUNTS_SHOWN:
        pytest.skip("this kernel does not give fd counts in stat() of /proc/PID/fd (Linux < 6.2)")
    child = subprocess.Popen([PY, "-c", "import sys, time\nfiles = [open('/etc/hostname') for _ in range(7)]\n"
                              "print('up', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"
        assert procfs.fd_count(child.pid) == len(os.listdir(f"/proc/{child.pid}/fd"))
    finally:
        child.kill()
        child.wait()
    assert procfs.fd_count(child.pid) is None  # gone
