"""Stopping processes: every stop keeps its own SIGKILL deadline, however many are under way."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import psutil
import pytest

from colab_guard.act.enforce import stop_processes_async
from colab_guard.observe import procfs
from colab_guard.observe.model import Process

IGNORES_SIGTERM = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                   "print('up', flush=True)\ntime.sleep(600)")


def started(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    return proc


def offender(proc: subprocess.Popen) -> Process:
    # On the guard's fixed boot time (procfs.boot_time), as the sampler's keys: psutil reads
    # /proc/stat's btime afresh, which moves a second when the clock is slewed (CI).
    return Process(pid=proc.pid, create_time=procfs.start_time(proc.pid))


async def test_decoys_that_ignore_sigterm_do_not_hold_up_other_stops():
    grace = 2.0
    decoys = [started(IGNORES_SIGTERM) for _ in range(24)]
    miner = started("import time\nprint('up', flush=True)\ntime.sleep(600)")
    try:
        began = time.monotonic()
        stops = [asyncio.ensure_future(stop_processes_async([offender(p)], grace, set()))
                 for p in decoys]
        [miner_stop] = await stop_processes_async([offender(miner)], grace, set())
        miner_done = time.monotonic() - began
        results = [r for [r] in await asyncio.gather(*stops)]
        all_done = time.monotonic() - began
        # The miner left at SIGTERM: it waited for no decoy. Each decoy was killed at its own
        # deadline: one grace for all of them, not one grace per queued stop (4 threads
        # waiting out 24 graces took 12 s).
        assert miner_stop.outcome == "done" and miner_done < grace
        assert {r.outcome for r in results} == {"done"}
        assert all_done < 2 * grace + 1
        assert all(p.poll() is not None for p in decoys)
    finally:
        for proc in (*decoys, miner):
            proc.kill()
            proc.wait()


async def test_a_reused_pid_is_never_signalled():
    proc = started("import time\nprint('up', flush=True)\ntime.sleep(600)")
    try:
        [action] = await stop_processes_async([Process(pid=proc.pid, create_time=1.0)], 0.5, set())
        assert action.outcome == "gone" and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


TREE = ("import subprocess, threading, time\n"
        "kids = [subprocess.Popen(['sleep', '600'])]\n"
        "kids.append(subprocess.Popen(['sh', '-c', 'sleep 601 & sleep 602; :']))\n"
        "threading.Thread(target=lambda: kids.append(subprocess.Popen(['sleep', '603'])))"
        ".start()\n"  # a child of a thread other than the main one
        "time.sleep(0.5)\nprint('up', flush=True)\ntime.sleep(600)")


def test_the_subtree_walk_finds_what_psutil_finds():
    from colab_guard.act.enforce import _children_map, _descendants, subtree

    proc = started(TREE)
    try:
        parent = psutil.Process(proc.pid)
        expected = {p.pid for p in parent.children(recursive=True)}
        assert len(expected) == 5  # sleep, sh and its two sleeps, the thread's sleep
        # Many offenders at once: one pass over the processes for all of them.
        assert {p.pid for p in _descendants(parent, _children_map())} == expected
        below = subtree(parent)
        if below is None:
            assert not os.path.exists(f"/proc/{proc.pid}/task/{proc.pid}/children")
            pytest.skip("this kernel has no /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN)")
        assert {p.pid for p in below} == expected
    finally:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()


async def test_a_stop_reaches_the_offenders_children():
    proc = started(TREE)
    family = psutil.Process(proc.pid).children(recursive=True)
    actions = await stop_processes_async([offender(proc)], 2.0, set())
    assert actions[0].outcome == "done" and "with 5 process(es)" in actions[0].detail
    proc.wait(10)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)


#: Forks children that sleep, as fast as it can (a shell starting the tool, many times over).
FORKER = ("import os, sys, time\nprint('up', flush=True)\n"
          "for _ in range(400):\n"
          "    if os.fork() == 0:\n"
          "        time.sleep(600)\n"
          "        os._exit(0)\n"
          "time.sleep(600)")


def _session_alive(sid: int) -> list[int]:
    alive = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except OSError:
            continue
    return alive


async def test_a_child_forked_as_the_stop_begins_is_stopped_too():
    # SIGSTOP takes effect once the fork under way is done: the children are read after
    # that, or the one being forked is missed and runs on.
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", FORKER], stdout=subprocess.PIPE,
                                text=True, start_new_session=True)
        assert proc.stdout.readline().strip() == "up"
        await stop_processes_async([offender(proc)], 1.0, set())
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _session_alive(proc.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = _session_alive(proc.pid)
        for pid in left:
            os.kill(pid, 9)
        assert not left, f"{len(left)} child(ren) ran on after their parent's stop"


async def test_a_stop_is_carried_out_when_the_clock_moved_the_boot_time(monkeypatch):
    # /proc/stat's btime moves by a second when the clock is set or slewed (seen on CI's
    # machines); psutil reads it afresh. The offender's key, taken before, must still name it.
    from psutil import _pslinux

    from colab_guard.observe import procfs
    proc = started("import time\nprint('up', flush=True)\ntime.sleep(600)")
    key = Process(pid=proc.pid, create_time=procfs.start_time(proc.pid))
    real = _pslinux.boot_time
    monkeypatch.setattr(_pslinux, "boot_time", lambda: real() + 1)
    try:
        [action] = await stop_processes_async([key], 1.0, set())
        assert action.outcome == "done", action.detail
        assert proc.wait(10) is not None
    finally:
        proc.kill()
        proc.wait()
