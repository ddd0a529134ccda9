"""The kernel's context-switch records say which processes ran (watch/switches.py), so
that the node watcher does not ask thousands of quiet processes in turn (idle.Parked): one
that ran has its turn at the next pass, the others only QUIET_CHECK_SWITCHES s apart, and
when records are lost every quiet process is asked within the usual spacing again.

Real perf events on every CPU (the tests run as root, as the watcher does), real processes.
"""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import time

import pytest

from colab_guard.observe import idle
from colab_guard.watch import switches
from colab_guard.watch.switches import SwitchRecords
from tests.harness import wait_until
from tests.test_sampler_spread import (Asked, SpreadingSampler, kernel,  # noqa: F401
                                       many, parked_once, sleeper, tell)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system-wide perf events need root")

LOG = logging.getLogger("test")


@pytest.fixture
def records():
    opened = SwitchRecords.open(LOG)
    assert opened is not None, "perf_event_open refused the context-switch records as root"
    yield opened
    opened.close()


def asleep(pid: int) -> bool:
    return open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1][0] == "S"


def test_a_process_that_ran_is_named_and_one_that_sleeps_is_not(records):
    sleeping = subprocess.Popen(["sleep", "600"])
    spinner = subprocess.Popen([sys.executable, "-c", "import sys\nsys.stdin.readline()\n"
                                "sum(range(10**6))\n"], stdin=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: asleep(sleeping.pid) and asleep(spinner.pid), timeout=10,
                   what="both asleep")
        records.ran()  # what ran before: drained
        first = records.ran()
        assert first is not None and sleeping.pid not in first and spinner.pid not in first
        spinner.stdin.write("go\n")
        spinner.stdin.flush()
        spinner.wait(timeout=30)
        then = records.ran()
        assert spinner.pid in then  # it woke, computed and exited
        assert os.getpid() in then  # this process ran too
        assert sleeping.pid not in then
    finally:
        sleeping.kill()
        sleeping.wait()


def test_records_lost_make_it_unknown_for_a_while(monkeypatch):
    monkeypatch.setattr(switches, "DOUBT", 1.0)
    small = SwitchRecords.open(LOG, pages=2)  # two pages a CPU: about 250 switches
    assert small is not None
    try:
        small.ran()
        # Two processes passing a byte back and forth: thousands of switches.
        subprocess.run([sys.executable, "-c",
                        "import os\nr1, w1 = os.pipe(); r2, w2 = os.pipe()\n"
                        "if os.fork() == 0:\n"
                        "    for _ in range(5000): os.read(r1, 1); os.write(w2, b'x')\n"
                        "    os._exit(0)\n"
                        "for _ in range(5000): os.write(w1, b'x'); os.read(r2, 1)\n"
                        "os.wait()\n"], check=True, timeout=60)
        assert small.ran() is None
        assert small.lost == 1
        assert small.ran() is None  # not believed again at once (switches.DOUBT)
        # (the kernel's own record of the loss comes with the next records: lost once more)
        wait_until(lambda: small.ran() is not None, timeout=10, interval=0.05,
                   what="the records believed again")
    finally:
        small.close()


def test_online_cpus_that_change_make_it_unknown_and_the_records_are_opened_anew(records):
    records.ran()
    real = records.cpus
    records.cpus = real[:-1] + (real[-1] + 64,)  # as if a CPU came online since
    assert records.ran() is None
    assert records.cpus == real and len(records.buffers) == len(real)
    assert records.ran() is not None


def test_the_online_cpu_list_is_read_as_the_kernel_writes_it():
    assert switches.online_cpus(b"0-3,6,8-9\n") == (0, 1, 2, 3, 6, 8, 9)
    assert switches.online_cpus(b"0\n") == (0,)


def record(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHH", kind, 0, 8 + len(body)) + body


def test_records_other_than_switches_are_walked_and_a_lost_one_says_so():
    switch = record(switches.PERF_RECORD_SWITCH_CPU, struct.pack("=II", 41, 42))
    other = record(3, struct.pack("=II", 7, 7) + b"comm\0\0\0\0")  # 24 bytes
    then = record(switches.PERF_RECORD_SWITCH_CPU, struct.pack("=II", 43, 44))
    pids: set[int] = set()
    assert switches._switched(switch + other + then, pids)
    assert pids == {41, 43}
    lost = record(switches.PERF_RECORD_LOST, struct.pack("=QQ", 1, 12))
    assert not switches._switched(switch + lost, set())
    assert not switches._switched(switch + b"\0" * 8, set())  # a record of no size: garbage
    assert not switches._switched(switch + b"\0" * 4, set())  # not 8-byte aligned


def test_a_woken_quiet_process_has_its_turn_now_and_one_that_barely_runs_keeps_its_own(sleeper):
    proc, held = sleeper
    parked, owners = idle.Parked(), {proc.pid: "k", 1: "k"}
    parked.visit(owners, 0.0, set())
    probe = (held.fds[0], held.counts()[0], float("inf"))
    parked.park(proc.pid, object(), 60.0, probe)
    parked.park(1, object(), 60.0, lambda now: now + 60, barely=True)
    asked = Asked()
    assert parked.visit(owners, 1.0, set(), asked, spacing=60.0, woken=set()) == {}
    parked.turns = []
    # Named as having run, but its schedstat says it did not (it ran before its last read):
    # asked by its probe, parked on a spacing later; the one that barely runs is not asked.
    assert parked.visit(owners, 2.0, set(), asked, spacing=60.0, woken={proc.pid, 1}) == {}
    assert parked.turns == [proc.pid]
    assert parked._turns[proc.pid][0] == 62.0 and parked._turns[1][0] == 60.0
    tell(proc, "spin")
    wait_until(lambda: held.counts()[0] != probe[1], timeout=10, what="the child ran")
    assert parked.visit(owners, 3.0, set(), asked, spacing=60.0, woken={proc.pid}) \
        == {proc.pid: "k"}  # it ran: visited at this pass
    assert asked.calls == [(proc.pid, 2.0)]


def test_records_lost_bring_every_quiet_turn_within_the_usual_spacing(sleeper):
    proc, held = sleeper
    parked, owners = idle.Parked(), {proc.pid: "k", 1: "k"}
    parked.visit(owners, 0.0, set(), woken=set())
    parked.park(proc.pid, object(), 60.0, (held.fds[0], held.counts()[0], float("inf")))
    parked.park(1, object(), 50.0, lambda now: now + 50, barely=True)
    parked.visit(owners, 1.0, set(), spacing=60.0, woken=set())
    parked.visit(owners, 2.0, set(), spacing=4.0, woken=None)  # unknown from now
    assert 2.0 + 2.0 <= parked._turns[proc.pid][0] <= 2.0 + 4.0
    assert parked._turns[1][0] == 50.0  # the barely running one's turn is its own
    parked.turns = []
    parked.visit(owners, 6.0, set(), spacing=4.0)
    assert parked.turns == [proc.pid]  # asked at its new turn, without the records


class SwitchingSampler(SpreadingSampler):
    """The spreading sampler told who ran by the real records, as the node watcher's is."""

    def __init__(self, records: SwitchRecords):
        super().__init__()
        self.records = records

    def woken(self):
        return self.records.ran()


def woken_child_read(sampler: SwitchingSampler, kernel, command: str, what: str
                     ) -> tuple[int, dict[int, float]]:
    """Park the kernel's children (their turns minutes away), tell one to ``command`` (a
    computing one), and wait until a pass reads it computing; that child, and the parked
    children's turns as they were."""
    proc, children = kernel
    parked = parked_once(sampler, proc.pid, {proc.pid, *children})
    quiet = [p.pid for p in parked.processes[-parked.parked:] if p.pid in children]
    turns = {pid: sampler._parked._turns[pid][0] for pid in quiet if pid in sampler._parked._turns}
    assert turns and min(turns.values()) > time.time() + 200
    child = next(iter(turns))
    tell(proc, f"{children.index(child)} {command}")

    def computing():
        snapshot = sampler.sample({"k": proc.pid})["k"]
        return any(p.pid == child and p.cpu_percent > 20 for p in snapshot.visited())

    wait_until(computing, timeout=20, interval=0.2, what=what)
    return child, turns


def test_a_parked_process_that_wakes_is_read_at_the_next_pass_not_at_its_turn(
        many, kernel, records, monkeypatch):
    monkeypatch.setattr(idle, "QUIET_CHECK_SWITCHES", 600.0)  # its turn: 5 to 10 minutes on
    proc = kernel[0]
    sampler = SwitchingSampler(records)
    child, turns = woken_child_read(sampler, kernel, "spin", "the woken child read")
    # The others were not asked: still parked, their turns minutes away.
    sampler.turns = []
    snapshot = sampler.sample({"k": proc.pid})["k"]
    assert not set(sampler.turns) & (set(turns) - {child})
    assert snapshot.parked >= len(turns) - 1
