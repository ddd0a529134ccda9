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

SLEEPER = "import sys, time\nprint('up', flush=True)\ntime.sleep(120)"


def _started(argv: list[str], **kw) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, **kw)
    assert proc.stdout.readline() == b"up\n"  # running, its argument area in place
    return proc


def _big_stack() -> None:
    # execve allows argument strings up to a quarter of the stack limit (at most 6 MiB).
    resource.setrlimit(resource.RLIMIT_STACK, (256 << 20, resource.RLIM_INFINITY))


# ------------------------------------------------------------ command lines


def test_a_command_line_of_half_a_million_words_is_cut_before_it_is_split():
    words = ["a"] * 500_000
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
        # Split whole, the words alone would take ~30 MB of the sampler's memory.
        assert peak < 4 << 20, peak
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
