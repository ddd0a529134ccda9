"""The guard cannot be blinded, slowed or made to eat memory by what a user puts in its way:
a FIFO, socket or device where a file to scan was; a huge file of needle prefixes; a command
line of millions of tiny words; a process that exits or changes while it is read. Real
processes and real files throughout."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import threading
import time
import tracemalloc

import pytest

from colab_guard.observe import procfs
from colab_guard.observe.content import CHUNK, ContentScanner, scan_file
from colab_guard.observe.processes import ProcessSampler
from tests.conftest import PYTHON
from tests.harness import longest_hold

SLEEPER = "import sys, time\nprint('up', flush=True)\ntime.sleep(120)"


def _started(argv: list[str], **kw) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, **kw)
    assert proc.stdout.readline() == b"up\n"  # running, its argument area in place
    return proc


def _big_stack() -> None:
    # execve allows argument strings up to a quarter of the stack limit (at most 6 MiB).
    resource.setrlimit(resource.RLIMIT_STACK, (256 << 20, resource.RLIM_INFINITY))


# ------------------------------------------------------------ command lines


def test_a_command_line_of_450_000_words_is_cut_before_it_is_split():
    words = ["ab"] * 450_000  # two letters: each word its own str object (one letter is shared)
    proc = _started([PYTHON, "-c", SLEEPER, *words], preexec_fn=_big_stack)
    sampler = ProcessSampler()
    try:
        tracemalloc.start()
        snapshot = sampler.sample({"k": proc.pid})["k"]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        sample = next(p for p in snapshot.processes if p.pid == proc.pid)
        assert len(sample.cmdline) <= procfs.CMDLINE_MAX_WORDS + 1
        assert sample.cmdline[:2] == [PYTHON, "-c"] and sample.cmdline[-1] == procfs.CMDLINE_CUT
        # Split whole, the words alone take ~28 MiB of the sampler's memory; cut, the sample
        # takes ~3 MiB (the raw 1.3 MB area read once, then decoded). The peak counts every
        # thread of the test process, so threads other tests left behind get some headroom.
        assert peak < 8 << 20, peak
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()


def test_a_long_command_line_within_the_limits_is_read_whole():
    words = [f"w{i}" for i in range(1500)]
    proc = _started([PYTHON, "-c", SLEEPER, *words])
    try:
        assert procfs.read_cmdline(proc.pid) == [PYTHON, "-c", SLEEPER, *words]
    finally:
        proc.kill()
        proc.wait()


def test_one_huge_word_is_cut_at_the_byte_limit():
    proc = _started([PYTHON, "-c", SLEEPER, "x" * (120 << 10)])  # one word: at most 128 KiB
    try:
        cmdline = procfs.read_cmdline(proc.pid)
        assert cmdline[-1] == procfs.CMDLINE_CUT
        assert sum(map(len, cmdline[:-1])) < procfs.CMDLINE_MAX_BYTES
    finally:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------ the content scanner


def _in_thread(fn, timeout: float):
    """fn() in a thread; (finished, its result) after at most ``timeout`` seconds."""
    box = []
    thread = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    thread.start()
    thread.join(timeout)
    return (not thread.is_alive()), (box[0] if box else None)


def test_a_fifo_swapped_in_for_a_queued_script_is_never_opened(tmp_path):
    """The scanner checked the script (a regular file) when it queued it; the user swaps a
    FIFO in before the scan starts. Opened for reading, a FIFO without a writer blocks for
    ever, and with it every later scan of every kernel."""
    script = tmp_path / "job.py"
    script.write_text("print('hello')\n")
    st = script.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    script.unlink()
    os.mkfifo(script)
    scanner = ContentScanner(background=False)
    done, markers = _in_thread(lambda: scanner._scan(key, str(script), CHUNK).markers, 5.0)
    assert done and markers == []
    assert scanner.stats["refused"] == 1
    # and the scanner goes on: the next file is scanned
    tool = tmp_path / "tool"
    tool.write_bytes(b"x MicroSocks SOCKS5 Server x")
    assert scanner.file_markers(str(tool), CHUNK) == ["microsocks"]


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "symlink-to-fifo"])
def test_special_files_are_refused_without_being_opened(tmp_path, kind):
    path = tmp_path / "x"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
    elif kind == "device":
        path = "/dev/tty"  # opening it would make the scanner a terminal's reader
    else:
        os.mkfifo(tmp_path / "fifo")
        os.symlink(tmp_path / "fifo", path)
    done, error = _in_thread(lambda: _raises(scan_file, str(path), CHUNK), 5.0)
    assert done and isinstance(error, OSError), error


def _raises(fn, *args):
    try:
        fn(*args)
    except Exception as err:  # returned, to be checked
        return err
    return None


def test_a_process_whose_script_is_a_fifo_is_sampled_without_blocking(tmp_path):
    fifo = tmp_path / "run.py"
    os.mkfifo(fifo)
    # python3 run.py blocks opening its own script (the FIFO): a process the guard must read
    proc = subprocess.Popen([PYTHON, str(fifo)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    sampler = ProcessSampler()
    try:
        done, snapshots = _in_thread(lambda: sampler.sample({"k": proc.pid}), 10.0)
        assert done and any(p.pid == proc.pid for p in snapshots["k"].processes)
        sampler.content.wait(10)  # nothing stuck in the scanner either
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()


def test_a_64_mib_file_of_needle_prefixes_neither_holds_the_gil_nor_takes_seconds(tmp_path):
    from colab_guard.observe.content import SEARCH
    blob = b"".join(n[:-1] + b"\x00" for n in SEARCH.needles)
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        for _ in range(64):
            f.write((blob * ((1 << 20) // len(blob) + 1))[:1 << 20])
    started = time.perf_counter()
    hold, markers = longest_hold(lambda: scan_file(str(huge), 64 << 20))
    elapsed = time.perf_counter() - started
    assert markers == []
    assert hold < 0.25, hold  # re scanned a MiB at a time holding the GIL: ~0.2-1 s
    assert elapsed < 5.0, elapsed  # re: ~25 s on this machine


def test_a_scan_past_its_budget_is_cut_counted_and_said(tmp_path, caplog):
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.write(os.urandom(1 << 20) * 32)
    scanner = ContentScanner(background=False, scan_seconds=0.0)
    import logging
    with caplog.at_level(logging.WARNING):
        assert scanner.file_markers(str(big), 64 << 20) == ["scan:cut"]
    assert scanner.stats["cut"] == 1 and "stopped at its budget" in caplog.text


def test_a_huge_sparse_file_costs_no_more_than_its_bytes_to_read(tmp_path):
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(1 << 40)  # a terabyte of nothing
    scanner = ContentScanner(background=False)
    started = time.perf_counter()
    assert scanner.file_markers(str(sparse), 64 << 20) == []
    assert time.perf_counter() - started < 5.0
    assert scanner.bytes_read == 64 << 20


def test_a_read_that_never_returns_does_not_stop_the_scanner(tmp_path, monkeypatch):
    """A file on a FUSE mount that never answers a read, or memory behind a fault nobody
    serves, blocks a read for ever whatever the budget: the scanner leaves that thread to it,
    counts the file as cut short, and a new thread goes on with the other scans. (The read is
    made to hang here by a stand-in for the blocking call, the one thing not real.)"""
    from colab_guard.observe import content
    release = threading.Event()
    real = content.scan_fd

    def hanging(fd, *args, **kw):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("on-fuse"):
            release.wait(60)
        return real(fd, *args, **kw)

    monkeypatch.setattr(content, "scan_fd", hanging)
    stuck = tmp_path / "on-fuse"
    stuck.write_bytes(b"x" * 100)
    tool = tmp_path / "tool"
    tool.write_bytes(b"x MicroSocks SOCKS5 Server x" + b"\0" * 1000)  # bigger: queued after
    scanner = ContentScanner(scan_seconds=0.2, stuck_after=0.3)
    try:
        assert scanner.file_markers(str(stuck), CHUNK) == []
        assert scanner.file_markers(str(tool), CHUNK) == []
        deadline = time.monotonic() + 10
        while scanner.file_markers(str(tool), CHUNK) != ["microsocks"]:
            assert time.monotonic() < deadline, scanner.stats
            time.sleep(0.05)  # polling the scanner's state
        assert scanner.file_markers(str(stuck), CHUNK) == ["scan:cut"]
        assert scanner.stats["stuck"] == 1 and scanner.stuck_threads == 1
    finally:
        release.set()
        scanner.close()


def test_smaller_scans_go_first_so_big_files_cannot_hold_up_a_program(tmp_path):
    scanner = ContentScanner()
    bigs = []
    for i in range(6):
        big = tmp_path / f"big{i}"
        with open(big, "wb") as f:
            f.write(os.urandom(1 << 20) * 8)
        bigs.append(big)
    tool = tmp_path / "tool"
    tool.write_bytes(b"x MicroSocks SOCKS5 Server x")
    try:
        for big in bigs:
            scanner.file_markers(str(big), 64 << 20)
        scanner.file_markers(str(tool), CHUNK)
        deadline = time.monotonic() + 30
        while scanner.file_markers(str(tool), CHUNK) != ["microsocks"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)  # polling the scanner's state
        # at most the one big scan already under way went before it
        assert scanner.stats["file_scans"] <= 2 + 1, scanner.stats
    finally:
        scanner.close()
