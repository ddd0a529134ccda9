"""Many processes watched, with process events to say which exec'd (the node watcher):
quiet processes are asked in turn whether they ran, not at every tick (idle.Parked), and a
process that barely runs (a kernel's once-a-second wake-up) is not read at every tick
(idle.BARELY_RUNNING). What a tick costs then follows what runs; what they do once they
wake is seen all the same: at their turn, at once when they exec, or when they use a core.

Real processes; the thresholds are lowered so that a few processes are "many".
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from colab_guard.observe import idle, processes
from colab_guard.observe.processes import ProcessSampler
from tests.harness import wait_until

PY = sys.executable
CHILDREN = 12

# A kernel stand-in: CHILDREN children that wait for a line, then do what it says; it wakes
# every 0.1 s itself (a kernel's poller) and spins for a second when told to on its stdin.
KERNEL = f"""\
import os, select, subprocess, sys, time
CHILD = ("import os, sys, time\\n"
         "command = sys.stdin.readline().strip()\\n"
         "if command == 'exec':\\n"
         "    os.execv('/bin/sleep', ['sleep', '600'])\\n"
         "end = time.monotonic() + 30\\n"
         "while time.monotonic() < end:\\n"
         "    pass\\n")
children = [subprocess.Popen([sys.executable, '-c', CHILD], stdin=subprocess.PIPE, text=True)
            for _ in range({CHILDREN})]
print(' '.join(str(c.pid) for c in children), flush=True)
while True:
    if not select.select([sys.stdin], [], [], 0.1)[0]:
        continue
    command = sys.stdin.readline().split()
    if not command:
        break
    if command[0] == 'spin':
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            pass
    elif command[0] == 'connect':  # a connection of its own, held
        import socket
        held = socket.create_connection(('127.0.0.1', int(command[1])))
        print('connected', flush=True)
    else:  # a child's index, and what it is to do
        child = children[int(command[0])]
        child.stdin.write(command[1] + '\\n')
        child.stdin.flush()
for child in children:
    child.kill()
"""


class SpreadingSampler(ProcessSampler):
    """The server extension's sampler, spreading as the node watcher's does; ``asked``: the
    pids the process events would name as exec'd before the next tick."""

    def __init__(self):
        super().__init__()
        self.asked: set[int] = set()
        self.events_live = True
        self._parked.turns = []  # the parked processes asked at their turn, in order

    @property
    def turns(self) -> list[int]:
        return self._parked.turns

    @turns.setter
    def turns(self, value: list[int]) -> None:
        self._parked.turns = value

    def may_spread(self) -> bool:
        return self.events_live

    def _scan_table(self):
        table = super()._scan_table()
        self._check_now, self.asked = self.asked, set()
        return table


@pytest.fixture
def many(monkeypatch):
    """A handful of processes counts as many; a quiet one waits at most 2 s for its turn."""
    monkeypatch.setattr(processes, "SPREAD_FROM", 4)
    monkeypatch.setattr(idle, "SPREAD_FROM", 4)
    monkeypatch.setattr(idle, "QUIET_CHECKS_PER_SECOND", 2)
    monkeypatch.setattr(idle, "QUIET_CHECK_MAX", 2.0)
    monkeypatch.setattr(processes, "BARELY_RECHECK", 1.0)  # asked again within 0.5-1 s
    monkeypatch.setattr(processes, "FD_COUNT_SETTLED", -1.0)  # light reads from the start


@pytest.fixture
def kernel():
    proc = subprocess.Popen([PY, "-c", KERNEL], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    children = [int(pid) for pid in proc.stdout.readline().split()]
    yield proc, children
    proc.stdin.close()
    proc.wait(timeout=30)


def tell(proc, line: str) -> None:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def parked_once(sampler: SpreadingSampler, pid: int, expected: set[int]):
    """Sample (every 0.2 s, the whole kernel each time) until most of its children are
    parked; the snapshot."""
    def tick():
        snapshot = sampler.sample({"k": pid})["k"]
        pids = [p.pid for p in snapshot.processes]
        assert sorted(pids) == sorted(expected)  # parked or not, each there once
        return snapshot

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        snapshot = tick()
        if snapshot.parked >= CHILDREN - 2:
            return snapshot
        time.sleep(0.2)
    raise AssertionError(f"the children were never parked: {snapshot.parked}")


def test_quiet_processes_are_parked_handed_out_as_they_were_and_asked_in_turn(many, kernel):
    proc, children = kernel
    sampler = SpreadingSampler()
    first = parked_once(sampler, proc.pid, {proc.pid, *children})
    # (the quiet children: the kernel, parked too while it barely runs, is read again now and then)
    before = {p.pid: p for p in first.processes[-first.parked:] if p.pid in children}
    checks = sampler.stats.ticks
    asked = []  # how many of them were asked at each tick (at their turn, or visited)
    for _ in range(12):
        time.sleep(0.2)
        sampler.turns = []
        snapshot = sampler.sample({"k": proc.pid})["k"]
        assert sorted(p.pid for p in snapshot.processes) == sorted([proc.pid, *children])
        assert snapshot.members is first.members is not None  # the same processes
        visited = {p.pid for p in snapshot.visited()}
        asked.append(len((visited | set(sampler.turns)) & before.keys()))
        for process in snapshot.processes:  # quiet: the same objects, visited or not
            if process.pid in before:
                assert process is before[process.pid]
    assert sampler.stats.ticks == checks + 12
    # Not all at every tick, but each within its 2 s turn: all asked in 12 ticks (2.4 s + reads).
    assert min(asked) < len(before), asked
    assert sum(asked) >= len(before) - 2, asked


def test_a_program_started_and_gone_leaves_the_quiet_processes_parked(many, kernel):
    """A new attribution (the machine's processes changed) visits what changed, not every
    parked process again: at 10 execs a second that was every idle process at every pass."""
    proc, children = kernel
    sampler = SpreadingSampler()
    first = parked_once(sampler, proc.pid, {proc.pid, *children})
    parked = {p.pid for p in first.processes[-first.parked:]} & set(children)
    other = subprocess.Popen(["sleep", "60"])  # started, then gone: the table moves twice
    for step in ("started", "gone"):
        attribution = sampler._owners[1]
        snapshot = sampler.sample({"k": proc.pid})["k"]
        assert sampler._owners[1] is not attribution, step  # made anew
        assert not {p.pid for p in snapshot.visited()} & parked, step
        assert sorted(p.pid for p in snapshot.processes) == sorted([proc.pid, *children])
        other.kill()
        other.wait()


def wake_a_parked_child(sampler: SpreadingSampler, kernel, command: str) -> int:
    """Park the kernel's children, then tell one of the parked ones to ``command``; its pid."""
    proc, children = kernel
    parked = parked_once(sampler, proc.pid, {proc.pid, *children})
    child = next(p.pid for p in parked.processes[-parked.parked:] if p.pid in children)
    tell(proc, f"{children.index(child)} {command}")
    return child


def test_a_parked_process_that_starts_computing_is_seen_at_its_turn(many, kernel):
    sampler = SpreadingSampler()
    busy = wake_a_parked_child(sampler, kernel, "spin")

    def computing():
        snapshot = sampler.sample({"k": kernel[0].pid})["k"]
        return any(p.pid == busy and p.cpu_percent > 20 for p in snapshot.processes)

    # Its turn comes within 2 s (QUIET_CHECK_MAX here); the wait is generous for a busy machine.
    wait_until(computing, timeout=10, interval=0.2, what="the busy child read again")


def test_a_parked_process_that_execs_is_read_at_the_next_tick(many, kernel):
    sampler = SpreadingSampler()
    proc = kernel[0]
    execs = wake_a_parked_child(sampler, kernel, "exec")
    wait_until(lambda: open(f"/proc/{execs}/comm").read().strip() == "sleep", timeout=10,
               what="the child exec'd")
    sampler.asked = {execs}  # the exec event
    snapshot = sampler.sample({"k": proc.pid})["k"]
    assert next(p for p in snapshot.processes if p.pid == execs).name == "sleep"


def test_a_kernel_that_barely_runs_is_handed_out_as_it_was_until_it_computes(many, kernel):
    proc, children = kernel
    sampler = SpreadingSampler()
    parked_once(sampler, proc.pid, {proc.pid, *children})
    light = sampler.stats.light_reads

    def kernel_sample():
        return sampler.sample({"k": proc.pid})["k"].kernel_process

    wait_until(lambda: kernel_sample() is not None and sampler.stats.light_reads > light,
               timeout=30, what="a light read of the kernel")  # after its files' scan
    last = kernel_sample()
    same = 0
    for _ in range(5):  # it wakes ten times a second, using next to nothing
        time.sleep(0.2)
        now = kernel_sample()
        same += now is last
        last = now
    assert same >= 3, same  # not read at every tick (read again LIGHT_READ_MAX_AGE s after)
    tell(proc, "spin")
    wait_until(lambda: kernel_sample().cpu_percent > 20, timeout=5, interval=0.2,
               what="the computing kernel read at its next check (1 s here)")


def test_a_parked_kernel_that_barely_runs_is_asked_by_its_probe_without_a_visit(many, kernel):
    """At its turn, one pread of its held stat says it still barely runs: parked on, not
    visited (two hundred idle kernels' visits were a fifth of an idle watcher's cost)."""
    proc, children = kernel
    sampler = SpreadingSampler()
    parked_once(sampler, proc.pid, {proc.pid, *children})
    asked_not_visited = 0
    deadline = time.monotonic() + 30
    while asked_not_visited < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        sampler.turns = []
        snapshot = sampler.sample({"k": proc.pid})["k"]
        asked = proc.pid in sampler.turns
        visited = proc.pid in {p.pid for p in snapshot.visited()}
        asked_not_visited += asked and not visited
    assert asked_not_visited >= 2


def test_a_kernel_that_barely_runs_is_parked_and_visited_at_once_when_the_hook_reports(
        many, kernel):
    proc, children = kernel
    sampler = SpreadingSampler()
    parked_once(sampler, proc.pid, {proc.pid, *children})

    def kernel_parked():
        snapshot = sampler.sample({"k": proc.pid})["k"]
        return snapshot.kernel_process not in snapshot.visited()

    # Barely running (it wakes ten times a second), it is not visited between its checks ...
    wait_until(kernel_parked, timeout=30, interval=0.1, what="the barely running kernel parked")
    # ... but the kernel hook's report of a connect has it visited, and read, at the next pass.
    reads = sampler.stats.light_reads + sampler.stats.full_reads
    sampler.read_kernel_in_full("k")
    snapshot = sampler.sample({"k": proc.pid})["k"]
    assert snapshot.kernel_process in snapshot.visited()
    assert sampler.stats.light_reads + sampler.stats.full_reads > reads


def test_a_barely_running_process_holding_a_connection_of_its_own_is_never_parked(many, kernel):
    # An idle relay or a reverse shell barely runs too: its connection is read at each tick.
    proc, children = kernel
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        tell(proc, f"connect {listener.getsockname()[1]}")
        assert proc.stdout.readline().strip() == "connected"
        sampler = SpreadingSampler()
        parked_once(sampler, proc.pid, {proc.pid, *children})
        seen = 0
        for _ in range(15):  # past its 0.5-1 s recheck, several times over
            time.sleep(0.2)
            snapshot = sampler.sample({"k": proc.pid})["k"]
            assert snapshot.kernel_process in snapshot.visited()
            seen += any(s.remote for s in snapshot.kernel_process.sockets)
        assert seen  # its connection is there (once its sockets were read)
    finally:
        listener.close()


def test_once_events_are_lost_nothing_stays_parked_and_each_process_is_there_once(many, kernel):
    proc, children = kernel
    sampler = SpreadingSampler()
    parked_once(sampler, proc.pid, {proc.pid, *children})
    sampler.events_live = False  # events lost: every process visited again
    for _ in range(3):
        snapshot = sampler.sample({"k": proc.pid})["k"]
        assert snapshot.parked == 0
        assert sorted(p.pid for p in snapshot.processes) == sorted([proc.pid, *children])


def test_without_process_events_every_quiet_process_is_asked_at_every_tick(many, kernel):
    proc, children = kernel
    sampler = ProcessSampler()  # the server extension's: no events, no spreading
    for _ in range(10):
        snapshot = sampler.sample({"k": proc.pid})["k"]
        assert snapshot.parked == 0
        time.sleep(0.1)


def test_unheld_sockets_have_their_owners_running_processes_read_one_uid_a_tick():
    """A socket no watched process holds has the running processes of its owner (the uid in
    the socket tables) read in full at the next tick (a socket dup2'd over an open file
    leaves the fd count as it was); many users' new connections (their servers' clients) cost
    one uid's processes a tick, the others in turn."""
    from colab_guard.observe.processes import Tracked, _Fds

    class Tables:  # the socket tables as read: inode -> its owner's uid
        def uid(self, inode):
            return {1: 1001, 2: 1002}.get(inode)

    sampler = ProcessSampler()
    states = {}
    for pid, uid in ((101, 1001), (102, 1002), (103, 1001)):
        state = states[pid] = sampler._tracked[(pid, 1.0)] = Tracked(uid=uid, running=True)
        state.fds = _Fds(5.0, (), [], 3)
        state.full_due = 1e12
    idle = sampler._tracked[(104, 1.0)] = Tracked(uid=1001, running=False)
    idle.full_due = 1e12

    def read_at_next_tick():
        return {pid for pid, state in states.items() if state.full_due == 0.0}

    sampler._walk_owners_of({1, 2}, Tables())
    first = read_at_next_tick()
    assert first in ({101, 103}, {102})  # one uid's running processes, fds walked again
    assert all(states[pid].fds.when == float("-inf") for pid in first)
    assert idle.full_due == 1e12  # one that did not run did not dup2 anything
    sampler._walk_owners_of(set(), Tables())  # the next tick: the other uid's turn
    assert read_at_next_tick() == {101, 102, 103}


class Asked:
    """The sampler's side of Parked's questions: what ``still_quiet`` was asked."""

    def __init__(self, answer: float = 0.0):
        self.calls: list[tuple[int, float | None]] = []
        self.answer = answer

    def __call__(self, pid, sample, now, quiet_at):
        self.calls.append((pid, quiet_at))
        return self.answer


@pytest.fixture
def sleeper():
    """A child that sleeps until told (a line on its stdin) to spin for a moment; its pid and
    its held schedstat file (what the sampler holds for a quiet process)."""
    proc = subprocess.Popen([PY, "-c", "import sys, time\nsys.stdin.readline()\n"
                             "end = time.monotonic() + 0.2\nwhile time.monotonic() < end: pass\n"
                             "sys.stdin.readline()\n"], stdin=subprocess.PIPE, text=True)
    wait_until(lambda: open(f"/proc/{proc.pid}/stat").read().split(") ")[1][0] == "S",
               timeout=10, what="the child asleep")
    counts, held = idle.HeldCounts.read(proc.pid, single=True)
    yield proc, held
    held.close()
    proc.kill()
    proc.wait()


def parked_with_probe(proc, held, refresh_at=float("inf")):
    parked, owners = idle.Parked(), {proc.pid: "k"}
    parked.visit(owners, 0.0, set())  # a new attribution: visited once
    probe = (held.fds[0], held.counts()[0], refresh_at)
    parked.park(proc.pid, object(), 1.0, probe)
    return parked, owners


def test_a_probed_quiet_process_is_asked_at_its_turn_without_the_sampler(sleeper):
    proc, held = sleeper
    parked, owners = parked_with_probe(proc, held)
    asked = Asked()
    for now in (0.5, 1.0, 3.5, 6.0):  # due at 1 s, then every 2.5 s (the spacing)
        assert parked.visit(owners, now, set(), asked, spacing=2.5) == {}
    assert asked.calls == []  # the probe said it had not run: still parked, never visited
    assert proc.pid in parked.by_kernel["k"]


def test_a_probed_process_that_ran_is_asked_with_when_it_was_last_found_quiet(sleeper):
    proc, held = sleeper
    parked, owners = parked_with_probe(proc, held)
    asked = Asked()
    parked.visit(owners, 1.0, set(), asked, spacing=2.5)  # quiet at 1 s
    proc.stdin.write("spin\n")
    proc.stdin.flush()
    wait_until(lambda: held.counts()[0] != parked._turns[proc.pid][1][1], timeout=10,
               what="the child ran")
    assert parked.visit(owners, 100.0, set(), asked, spacing=2.5) == {proc.pid: "k"}
    # The sampler takes its CPU baseline from then: it used none before 1 s.
    assert asked.calls == [(proc.pid, 1.0)]


def test_a_probe_is_not_believed_once_the_refresh_is_due_or_the_counts_do_not_move(sleeper):
    proc, held = sleeper
    parked, owners = parked_with_probe(proc, held, refresh_at=2.0)
    asked = Asked()
    assert parked.visit(owners, 2.5, set(), asked, spacing=2.5) == {proc.pid: "k"}
    assert asked.calls == [(proc.pid, None)]  # the refresh: the sampler reads it in full
    parked, owners = parked_with_probe(proc, held)
    asked = Asked(answer=9.0)  # the sampler asks for itself, and finds it quiet
    assert parked.visit(owners, 1.0, set(), asked, spacing=2.5, probing=False) == {}
    assert asked.calls == [(proc.pid, None)]
