"""Red team of the node watcher's "who ran" path: the kernel's context-switch records
(watch/switches.py) that let a parked quiet process wait QUIET_CHECK_SWITCHES s for its
turn unless it ran (idle.Parked). An abuser who knows it wants a parked process to work
(compute, connect, forward) without being named, or the records to be believed while they
miss something, or the watcher made blind or expensive; an honest workload that switches
a lot must cost the watcher little and change nothing it reports.

Real perf events on every CPU, real processes, threads, namespaces and CPUs (root, as the
watcher runs).
"""

from __future__ import annotations

import logging
import os
import platform
import random
import struct
import subprocess
import sys
import time

import pytest

from colab_guard.observe import idle
from colab_guard.watch import switches
from colab_guard.watch.switches import SwitchRecords
from tests.harness import wait_until
from tests.test_switch_records import SwitchingSampler, woken_child_read
from tests.test_sampler_spread import (CHILDREN, kernel,  # noqa: F401
                                       many, parked_once, tell)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system-wide perf events need root")

LOG = logging.getLogger("test")
PY = sys.executable


@pytest.fixture
def big_records(monkeypatch):
    """Records with 1 MiB a CPU: other jobs on this machine do not overflow them."""
    monkeypatch.setattr(switches, "DOUBT", 0.2)
    opened = SwitchRecords.open(LOG, pages=256)
    assert opened is not None
    yield opened
    opened.close()


@pytest.fixture
def records(monkeypatch):
    monkeypatch.setattr(switches, "DOUBT", 0.2)  # another job's burst: believed soon again
    opened = SwitchRecords.open(LOG)
    assert opened is not None, "perf_event_open refused the context-switch records as root"
    yield opened
    opened.close()


def schedstat(pid: int, tid: int | None = None) -> str:
    return open(f"/proc/{pid}/task/{tid or pid}/schedstat").read()


def all_asleep(pid: int) -> bool:
    """Every thread of ``pid`` asleep (or a leader gone: zombie)."""
    states = [open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(") ", 1)[1][0]
              for tid in os.listdir(f"/proc/{pid}/task")]
    return all(state in "SZ" for state in states)


def named_after(records: SwitchRecords, pid: int, wake, counts, settle: bool = True
                ) -> set[int] | None:
    """Wake ``pid`` (``wake()``), wait until ``counts()`` (its schedstat) says it ran and it
    sleeps again: the records of that stretch. ``settle``: drained until believed first, and
    tried again if they were lost meanwhile (another job on this machine may switch faster
    than the buffers hold)."""
    for _ in range(5 if settle else 1):
        if settle:
            known(records)
        before = counts()
        wake()
        wait_until(lambda: counts() != before, timeout=10, interval=0.02, what="it ran")
        wait_until(lambda: all_asleep(pid), timeout=10, interval=0.02, what="asleep again")
        ran = records.ran()
        if ran is not None:
            return ran
    return None


# --------------------------------------------------------------------- threads, namespaces

# A process whose main thread sleeps for good while a second thread waits for a line, then
# computes (for ``SPIN`` s): a thread of a parked process that starts to work.
THREADED = ("import sys, threading, time\n"
            "SPIN = float(sys.argv[1])\n"
            "def work():\n"
            "    print(threading.get_native_id(), flush=True)\n"
            "    while sys.stdin.readline():\n"
            "        end = time.monotonic() + SPIN\n"
            "        while time.monotonic() < end: pass\n"
            "threading.Thread(target=work, daemon=True).start()\n"
            "threading.Event().wait()\n")


def test_a_thread_of_a_sleeping_process_that_computes_names_its_process(records):
    proc = subprocess.Popen([PY, "-c", THREADED, "0.2"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        worker = int(proc.stdout.readline())
        wait_until(lambda: all_asleep(proc.pid), timeout=10, what="both threads asleep")
        main_before = schedstat(proc.pid)
        ran = named_after(records, proc.pid, lambda: tell(proc, "go"),
                          lambda: schedstat(proc.pid, worker))
        assert ran is not None and proc.pid in ran  # the thread group, as the watcher lists it
        assert worker not in ran  # (a thread id is nobody's process id)
        # The main thread did not run: its schedstat alone would not say the process ran.
        assert schedstat(proc.pid) == main_before
    finally:
        proc.kill()
        proc.wait()


# The main thread ends alone (SYS_exit, not exit_group): a zombie leader, its thread works on.
LEADERLESS = ("import ctypes, sys, threading, time\n"
              "def work():\n"
              "    while sys.stdin.readline():\n"
              "        end = time.monotonic() + 0.2\n"
              "        while time.monotonic() < end: pass\n"
              "threading.Thread(target=work).start()\n"
              "print('started', flush=True)\n"
              "ctypes.CDLL(None).syscall(int(sys.argv[1]), 0)\n")
SYS_EXIT = {"x86_64": 60, "aarch64": 93}


@pytest.mark.skipif(platform.machine() not in SYS_EXIT, reason="exit's number unknown here")
def test_a_process_whose_leader_exited_is_named_when_its_thread_computes(records):
    proc = subprocess.Popen([PY, "-c", LEADERLESS, str(SYS_EXIT[platform.machine()])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        wait_until(lambda: open(f"/proc/{proc.pid}/task/{proc.pid}/stat").read()
                   .rsplit(") ", 1)[1][0] == "Z", timeout=10, what="the leader gone")
        worker = next(int(tid) for tid in os.listdir(f"/proc/{proc.pid}/task")
                      if int(tid) != proc.pid)
        ran = named_after(records, proc.pid, lambda: tell(proc, "go"),
                          lambda: schedstat(proc.pid, worker))
        assert ran is not None and proc.pid in ran
    finally:
        proc.kill()
        proc.wait()


def children_of(pid: int) -> list[int]:
    return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]


def test_a_process_in_its_own_pid_namespace_is_named_by_the_watchers_pid(records):
    outer = subprocess.Popen(
        ["unshare", "--fork", "--pid", PY, "-c",
         "import os, sys, time\nprint(os.getpid(), flush=True)\n"
         "while sys.stdin.readline():\n"
         "    end = time.monotonic() + 0.2\n"
         "    while time.monotonic() < end: pass\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        own = outer.stdout.readline().strip()
        if not own:
            pytest.skip("unshare --pid refused here")
        assert own == "1"  # its own namespace's first process
        inner = wait_until(lambda: children_of(outer.pid), timeout=10, what="the child")[0]
        nspid = next(line for line in open(f"/proc/{inner}/status") if line.startswith("NSpid"))
        assert nspid.split()[1:] == [str(inner), "1"]
        ran = named_after(records, inner, lambda: tell(outer, "go"), lambda: schedstat(inner))
        assert ran is not None and inner in ran  # the pid the watcher's /proc listing has
    finally:
        outer.kill()
        outer.wait()


def test_a_process_computing_without_a_switch_still_moves_its_counts_so_is_never_parked():
    """One that runs on and on (no switch to name it, on a CPU of its own) cannot wait for
    a turn: a parked process is one whose schedstat did not move, and a running one's moves
    at every scheduler tick, switched or not."""
    proc = subprocess.Popen([PY, "-c", "import time\nend = time.monotonic() + 30\n"
                             "while time.monotonic() < end: pass\n"])
    try:
        seen = [schedstat(proc.pid)]
        for _ in range(5):
            time.sleep(0.1)
            seen.append(schedstat(proc.pid))
        assert all(a.split()[0] != b.split()[0] for a, b in zip(seen, seen[1:])), seen
    finally:
        proc.kill()
        proc.wait()


# A kernel stand-in whose CHILDREN children run ``argv[1]`` (with ``argv[2:]``), and pass
# each a line when told "INDEX LINE"; it waits on its stdin alone.
STAND_IN = ("import subprocess, sys\n"
            "children = [subprocess.Popen([sys.executable, '-c', *sys.argv[1:]],\n"
            "                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,\n"
            "                             text=True) for _ in range(%d)]\n"
            "print(' '.join(str(c.pid) for c in children), flush=True)\n"
            "for line in sys.stdin:\n"
            "    index, command = line.split()\n"
            "    children[int(index)].stdin.write(command + '\\n')\n"
            "    children[int(index)].stdin.flush()\n"
            "for child in children:\n"
            "    child.kill()\n" % CHILDREN)


@pytest.fixture
def threaded_kernel():
    """A kernel whose children each have a sleeping main thread and a second thread that
    computes for 30 s when told."""
    proc = subprocess.Popen([PY, "-c", STAND_IN, THREADED, "30"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    children = [int(pid) for pid in proc.stdout.readline().split()]
    yield proc, children
    proc.stdin.close()
    proc.wait(timeout=30)


def test_a_parked_process_whose_second_thread_computes_is_read_at_the_next_pass(
        many, threaded_kernel, records, monkeypatch):
    monkeypatch.setattr(idle, "QUIET_CHECK_SWITCHES", 600.0)  # its turn: 5 to 10 minutes on
    woken_child_read(SwitchingSampler(records), threaded_kernel, "go",
                     "the child's computing thread read")


# --------------------------------------------------------------------- lost records, floods

# Two processes passing a byte back and forth ``argv[1]`` times: thousands of switches a
# second on a CPU, more than a buffer holds between two passes.
PING_PONG = ("import os, sys\n"
             "n = int(sys.argv[1])\n"
             "r1, w1 = os.pipe(); r2, w2 = os.pipe()\n"
             "if os.fork() == 0:\n"
             "    for _ in range(n): os.read(r1, 1); os.write(w2, b'x')\n"
             "    os._exit(0)\n"
             "for _ in range(n): os.write(w1, b'x'); os.read(r2, 1)\n"
             "os.wait()\n")


def used(buffer: switches.CpuBuffer) -> int:
    head, tail = struct.unpack_from("<QQ", buffer.map, switches.HEAD)
    return head - tail


def flood(round_trips: int) -> None:
    subprocess.run([PY, "-c", PING_PONG, str(round_trips)], check=True, timeout=120)


def known(records: SwitchRecords) -> set[int]:
    return wait_until(lambda: (ran := records.ran()) is not None and (ran or {0}),
                      timeout=15, interval=0.05, what="the records believed")


def test_a_user_flooding_switches_in_bursts_tightens_the_turns_once_not_at_every_pass(
        monkeypatch):
    """Each burst loses records; the records are not believed again for DOUBT s, so the
    pass over every quiet turn (_tighten) runs once, not once per burst."""
    small = SwitchRecords.open(LOG, pages=1)
    assert small is not None
    try:
        parked, owners = idle.Parked(), {1: "k", 2: "k"}
        parked.visit(owners, 0.0, set())
        parked.park(1, object(), 1000.0)
        parked.park(2, object(), 1000.0)
        tightened = []
        tighten = parked._tighten
        monkeypatch.setattr(parked, "_tighten",
                            lambda now, spacing: (tightened.append(now), tighten(now, spacing)))
        known(small)
        parked.visit(owners, 1.0, set(), spacing=60.0, woken=set())
        for tick in range(2, 6):
            flood(3000)
            woken = small.ran()
            assert woken is None  # lost in this burst, or still doubted
            parked.visit(owners, float(tick), set(), spacing=10.0, woken=woken)
        assert tightened == [2.0]
        assert all(turn[0] <= 2.0 + 10.0 for turn in parked._turns.values())  # as before
        assert small.lost >= 1
    finally:
        small.close()


def test_a_full_buffer_costs_a_pass_nothing_to_read(records):
    """Flooded past what the buffers hold, a pass reads no records (it gives the space
    back): the flood costs the watcher no more than a quiet machine."""
    records.ran()
    flood(30000)
    full = [b for b in records.buffers if used(b) > b.size - switches.FULL]
    assert full, "the flood did not fill a buffer"
    start = time.thread_time()  # CPU spent: a busy machine's wait is not the pass's cost
    assert records.ran() is None
    took = time.thread_time() - start
    assert took < 0.05, took


def test_records_lost_and_back_a_parked_process_that_computes_is_seen_either_way(
        many, kernel, records, monkeypatch):
    """Known: a parked child waits minutes for its turn. Lost: every turn within the usual
    spacing (2 s here), and a child that computes is read by then. Believed again: a child
    that computes is read at the next pass."""
    monkeypatch.setattr(idle, "QUIET_CHECK_SWITCHES", 600.0)
    monkeypatch.setattr(switches, "DOUBT", 3.0)
    proc, children = kernel
    sampler = SwitchingSampler(records)
    first = parked_once(sampler, proc.pid, {proc.pid, *children})
    quiet = [p.pid for p in first.processes[-first.parked:] if p.pid in children]
    assert min(sampler._parked._turns[pid][0] for pid in quiet) > time.time() + 200
    flood(30000)  # more than a buffer holds

    def sample():
        return sampler.sample({"k": proc.pid})["k"]

    sample()
    assert sampler._woken is None
    now = time.time()
    assert all(turn[0] <= now + idle.QUIET_CHECK_MAX for pid, turn in
               sampler._parked._turns.items() if pid in quiet)
    one, other = quiet[0], quiet[1]
    tell(proc, f"{children.index(one)} spin")
    wait_until(lambda: any(p.pid == one and p.cpu_percent > 20 for p in sample().visited()),
               timeout=10, interval=0.2, what="the computing child read at its turn")
    # Believed again (DOUBT 3 s): the turns a spacing apart again, and a woken one read at once.
    wait_until(lambda: sample() and sampler._woken is not None, timeout=20, interval=0.2,
               what="the records believed again")
    tell(proc, f"{children.index(other)} spin")
    wait_until(lambda: any(p.pid == other and p.cpu_percent > 20 for p in sample().visited()),
               timeout=10, interval=0.2, what="the woken child read at the next pass")


# --------------------------------------------------------------------- the buffer's parse


def switched_out(pid: int) -> int:
    """How many times ``pid`` (one thread) gave up its CPU to sleep. It moves only once the
    process is off its run queue: a line written after that wakes it with a switch in (a
    record naming it), where one written while it is still on its CPU (asleep by its state,
    not yet switched out) lets it run on unnamed."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches in /proc/{pid}/status")


def test_records_that_wrap_round_the_buffers_end_are_read_whole(monkeypatch):
    monkeypatch.setattr(switches, "DOUBT", 0.0)  # a round lost to another job: the next counts
    small = SwitchRecords.open(LOG, pages=1)  # 4 KiB a CPU: wraps every few dozen rounds
    assert small is not None
    proc = subprocess.Popen([PY, "-c", "import sys\nwhile sys.stdin.readline(): pass\n"],
                            stdin=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: all_asleep(proc.pid), timeout=10, what="started and asleep")
        wrapped_and_whole = rounds = 0
        deadline = time.monotonic() + 120  # rounds lost to a busy machine are not counted
        while wrapped_and_whole < 5 and time.monotonic() < deadline:
            before = switched_out(proc.pid)
            tell(proc, "go")
            wait_until(lambda: switched_out(proc.pid) > before, timeout=10, interval=0.001,
                       what="it read the line and slept again")
            wraps = False
            for buffer in small.buffers:
                head, tail = struct.unpack_from("<QQ", buffer.map, switches.HEAD)
                wraps |= tail % buffer.size + (head - tail) > buffer.size
            lost = small.lost
            ran = small.ran()
            if ran is None or small.lost > lost:
                continue  # another job's switches overflowed 4 KiB meanwhile (with DOUBT 0,
                # a lost round reads what was left: partial)
            rounds += 1
            assert proc.pid in ran
            wrapped_and_whole += wraps
        assert wrapped_and_whole >= 5, f"{rounds} rounds read whole, {wrapped_and_whole} wrapped"
    finally:
        proc.kill()
        proc.wait()
        small.close()


def random_records(rng: random.Random) -> tuple[bytes, set[int], bool]:
    """Records as the kernel writes them (each a multiple of 8 bytes): switches, other
    kinds, perhaps a lost one; the pids the switches name and whether one was lost."""
    data, pids, lost = b"", set(), False
    for _ in range(rng.randrange(0, 40)):
        kind = rng.choice([switches.PERF_RECORD_SWITCH_CPU] * 6 + [3, 9, switches.PERF_RECORD_LOST])
        if kind == switches.PERF_RECORD_SWITCH_CPU:
            pid = rng.randrange(1 << 22)
            data += struct.pack("=IHHII", kind, rng.randrange(1 << 16), 16, pid, pid + 1)
            pids.add(pid)
        else:
            body = bytes(rng.randrange(256) for _ in range(8 * rng.randrange(1, 5)))
            if kind == switches.PERF_RECORD_LOST:
                lost = True
            data += struct.pack("=IHH", kind, 0, 8 + len(body)) + body
    return data, pids, lost


def test_any_mix_of_records_is_read_or_said_unreadable_never_misread():
    """The fast path (all switches) and the walk agree on every mix: a lost record anywhere
    says so; otherwise every switch's pid, and no other word, is taken."""
    rng = random.Random(7)
    for _ in range(3000):
        data, pids, lost = random_records(rng)
        found: set[int] = set()
        whole = switches._switched(data, found)
        if lost:
            assert not whole
        else:
            assert whole and found == pids
    for _ in range(3000):  # garbage, 8-byte aligned as the kernel's records are: no exception
        garbage = bytes(rng.randrange(256) for _ in range(8 * rng.randrange(0, 20)))
        assert switches._switched(garbage, set()) in (True, False)


# --------------------------------------------------------------------- honest workloads

# A DataLoader-like pool: 16 workers each answering the main process's messages, RATE
# messages a second in all for SECONDS s; prints the workers' pids, then how many it sent.
POOL = ("import os, sys, time\n"
        "rate, seconds = float(sys.argv[1]), float(sys.argv[2])\n"
        "back_r, back_w = os.pipe()\n"
        "pipes, pids = [], []\n"
        "for _ in range(16):\n"
        "    r, w = os.pipe()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        for other in (w, *pipes):\n"
        "            os.close(other)  # the main process's ends alone: closed, the worker ends\n"
        "        while (message := os.read(r, 8)):\n"
        "            os.write(back_w, message)\n"
        "        os._exit(0)\n"
        "    pipes.append(w)\n"
        "    pids.append(pid)\n"
        "print(' '.join(map(str, pids)), flush=True)\n"
        "start = time.monotonic()\n"
        "sent = 0\n"
        "while time.monotonic() < start + seconds:\n"
        "    for w in pipes:\n"
        "        os.write(w, b'12345678')\n"
        "    for _ in pipes:\n"
        "        os.read(back_r, 8)\n"
        "    sent += len(pipes)\n"
        "    ahead = sent / rate - (time.monotonic() - start)\n"
        "    if ahead > 0:\n"
        "        time.sleep(ahead)\n"
        "for w in pipes:\n"
        "    os.close(w)\n"
        "for _ in pids:\n"
        "    os.wait()\n"
        "print(sent, flush=True)\n")


def start_pool(rate: float, seconds: float) -> tuple[subprocess.Popen, list[int]]:
    pool = subprocess.Popen([PY, "-c", POOL, str(rate), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    return pool, [int(pid) for pid in pool.stdout.readline().split()]


def test_an_honest_pool_switching_thousands_of_times_a_second_costs_a_pass_little(
        big_records, monkeypatch):
    """A 16-worker pool passing messages: every pass's records read whole (none lost), the
    workers named, and the drain and parse a small part of a pass."""
    counted = []
    parse = switches._switched
    monkeypatch.setattr(switches, "_switched",
                        lambda data, pids: (counted.append(len(data) // switches.RECORD),
                                            parse(data, pids))[1])
    records = big_records
    records.ran()
    pool, workers = start_pool(rate=3000, seconds=4)
    took, named = [], set()
    start = time.monotonic()
    try:
        while pool.poll() is None:
            time.sleep(0.25)
            before = time.perf_counter()
            ran = records.ran()
            took.append(time.perf_counter() - before)
            assert ran is not None, "records lost at a few thousand switches a second"
            named |= ran
        elapsed = time.monotonic() - start
        sent = int(pool.stdout.read().split()[-1])
    finally:
        pool.kill()
        pool.wait()
    switches_per_cpu = sum(counted) / 2 / elapsed / len(records.buffers)  # two records a switch
    took.sort()
    print(f"\n{sent / elapsed:.0f} messages/s, {switches_per_cpu:.0f} switches/s per CPU, "
          f"ran() median {1e3 * took[len(took) // 2]:.3f} ms, max {1e3 * took[-1]:.3f} ms "
          f"over {len(took)} passes of 0.25 s")
    assert switches_per_cpu > 1000, switches_per_cpu  # the load this test is about
    assert set(workers) <= named
    assert took[len(took) // 2] < 0.005 and took[-1] < 0.05, took


def test_an_honest_pool_switching_next_to_parked_processes_has_none_of_them_asked(
        many, kernel, big_records, monkeypatch):
    """The records name who ran, not everyone: a busy pool next door leaves the quiet
    children parked, their turns minutes away, and the records believed at every pass."""
    monkeypatch.setattr(idle, "QUIET_CHECK_SWITCHES", 600.0)
    proc, children = kernel
    sampler = SwitchingSampler(big_records)
    first = parked_once(sampler, proc.pid, {proc.pid, *children})
    quiet = {p.pid for p in first.processes[-first.parked:] if p.pid in children}
    pool, _ = start_pool(rate=3000, seconds=3)
    passes = 0
    try:
        while pool.poll() is None:
            time.sleep(0.25)
            sampler.turns = []
            snapshot = sampler.sample({"k": proc.pid})["k"]
            passes += 1
            assert sampler._woken is not None
            asked = set(sampler.turns) | {p.pid for p in snapshot.visited()}
            assert not asked & quiet
            assert sorted(p.pid for p in snapshot.processes) == sorted([proc.pid, *children])
    finally:
        pool.kill()
        pool.wait()
    assert passes >= 5


# --------------------------------------------------------------------- CPUs going and coming

def cpu_online_file(cpu: int) -> str:
    return f"/sys/devices/system/cpu/cpu{cpu}/online"


def set_online(cpu: int, online: bool) -> None:
    with open(cpu_online_file(cpu), "w") as control:
        control.write("1" if online else "0")


def bounce(cpu: int) -> None:
    """The CPU taken offline and brought back at once (back online whatever happens)."""
    try:
        set_online(cpu, False)
    finally:
        set_online(cpu, True)


def back_online(cpu: int) -> None:
    if open(cpu_online_file(cpu)).read().strip() != "1":
        set_online(cpu, True)


def test_a_cpu_taken_offline_and_back_between_two_passes_is_not_left_unwatched(records):
    """The online CPUs read the same at both passes, but the CPU's perf event died with it
    (the kernel takes a CPU's events off when it goes): believed, the records would miss
    whatever runs there from then on."""
    cpu = records.cpus[-1]
    if cpu == 0 or not os.access(cpu_online_file(cpu), os.W_OK):
        pytest.skip("no CPU that can be taken offline here")
    proc = subprocess.Popen([PY, "-c", "import sys, time\nwhile sys.stdin.readline():\n"
                             "    end = time.monotonic() + 0.1\n"
                             "    while time.monotonic() < end: pass\n"],
                            stdin=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: all_asleep(proc.pid), timeout=10, what="asleep")
        known(records)
        bounce(cpu)
        os.sched_setaffinity(proc.pid, {cpu})  # it runs on that CPU alone from now on

        def woken_there(settle: bool) -> set[int] | None:
            return named_after(records, proc.pid, lambda: tell(proc, "go"),
                               lambda: schedstat(proc.pid), settle)

        ran = woken_there(settle=False)  # the pass after the CPU went and came
        assert ran is None or proc.pid in ran, "believed, and blind to the CPU that came back"
        # Covered again: the next time it runs there, it is named.
        ran = woken_there(settle=True)
        assert ran is not None and proc.pid in ran
    finally:
        proc.kill()
        proc.wait()
        back_online(cpu)


def test_a_cpu_that_went_and_came_unannounced_is_found_by_its_silence(records, monkeypatch):
    """The device events seen a moment ago (a user's network namespace, say), the next
    are not looked at for DEVICE_CHECK_EVERY s: a CPU that goes and comes meanwhile is found
    because its buffer stays empty, its event read within SILENT_CHECK_EVERY (0.5 s here)."""
    monkeypatch.setattr(switches, "SILENT_CHECK_EVERY", 0.5)
    monkeypatch.setattr(switches, "DEVICE_CHECK_EVERY", 60.0)
    cpu = records.cpus[-1]
    if cpu == 0 or not os.access(cpu_online_file(cpu), os.W_OK):
        pytest.skip("no CPU that can be taken offline here")
    proc = subprocess.Popen([PY, "-c", "import sys\nwhile sys.stdin.readline(): pass\n"],
                            stdin=subprocess.PIPE, text=True)
    try:
        known(records)
        records.checked_all_at = time.monotonic()  # every CPU read a moment ago
        first = records.buffers[0]
        bounce(cpu)
        wait_until(lambda: records.ran() is None and records.buffers[0] is not first,
                   timeout=5, interval=0.1, what="the CPU's event found off, opened anew")
        os.sched_setaffinity(proc.pid, {cpu})
        ran = named_after(records, proc.pid, lambda: tell(proc, "go"),
                          lambda: schedstat(proc.pid))
        assert ran is not None and proc.pid in ran
    finally:
        proc.kill()
        proc.wait()
        back_online(cpu)


def make_a_network_namespace_as_nobody() -> None:
    """What any user may do where user namespaces are allowed: a device event (its
    loopback) moves the kernel's count of them."""
    subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                    "unshare", "-Urn", "true"], check=True, timeout=30)


def test_a_user_moving_the_device_events_at_every_pass_has_every_cpu_read_seldom(
        records, monkeypatch):
    """Every CPU's event is read (an interrupt to each) when the device events move, as
    they do when a CPU goes or comes; a user who makes a network namespace before every
    pass has that done once per DEVICE_CHECK_EVERY, not at every pass."""
    before = open(switches.DEVICE_EVENTS).read()
    try:
        make_a_network_namespace_as_nobody()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no user namespaces for users here")
    if open(switches.DEVICE_EVENTS).read() == before:
        pytest.skip("a user's network namespace moves no device event here")
    reads = []
    lapsed = switches.CpuBuffer.lapsed
    monkeypatch.setattr(switches.CpuBuffer, "lapsed",
                        lambda buffer: (reads.append(buffer), lapsed(buffer))[1])
    passes = 0
    for _ in range(8):
        make_a_network_namespace_as_nobody()
        assert records.ran() is not None or records.lost
        passes += 1
    everyone = len(records.buffers)
    silent_at_most = len(reads) - everyone  # the first move is checked at once
    assert silent_at_most < everyone * (passes - 1), (len(reads), passes)
