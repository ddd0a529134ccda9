"""The idle fast path: a process that has not run since its last full read has not changed.

A watched process none of whose threads was scheduled since its last full read
(/proc/PID/schedstat) cannot have changed its command line, executable, uid, threads
or libraries: that read stands, refreshed all the same every ``QUIET_REFRESH`` or so.
This only holds where the scheduler counts move at all; ``SchedCounts`` checks that
each tick on the sampling thread's own counts.
"""

from __future__ import annotations

import heapq
import os
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from . import procfs
from .model import Process

#: Seconds after which a process that has not run is read in full all the same (each
#: process at its own point between half this and this, so they do not come at once). A
#: process that does not run cannot exec, map a library, open a file or change its uid;
#: this is a safety net only, and each refresh is a full read: a thousand idle processes
#: refreshed every one to two minutes cost twelve full reads a tick.
QUIET_REFRESH = 600.0
#: ... and past six hundred or so processes, about this many of those refreshes a second in all
#: (5,000 idle processes at QUIET_REFRESH would be eleven full reads a second, 1 % of a core;
#: each process is refreshed between half and all of ``watched / this`` s, so the rate is up to
#: twice this).
QUIET_REFRESHES_PER_SECOND = 1.0

#: Watching more processes than this, with process events to say which exec'd (the node
#: watcher): the quiet ones are not all asked at every tick whether they ran, and a process
#: that keeps running but barely (a kernel's once-a-second wake-up) is not read at every
#: tick. What a tick costs then follows what runs, not how many processes sleep.
SPREAD_FROM = 400

#: Quiet processes asked whether they ran, a second, in all (spread past SPREAD_FROM): each
#: at least every QUIET_CHECK_MAX s. A process that sleeps cannot exec (the process events
#: say at once when one does), connect or compute: one that wakes to do so is read in full
#: at its next check, within QUIET_CHECK_MAX s; a rule that reads CPU or connections over a
#: window waits longer than that anyway.
QUIET_CHECKS_PER_SECOND = 400
QUIET_CHECK_MAX = 10.0
#: ... where the kernel's context-switch records say which processes ran (the node watcher,
#: watch/switches.py): one that ran is asked at the next tick, and the others only every
#: this many seconds, a safety net, so that 5,000 idle processes cost 40 preads a second
#: rather than 500. Records lost, it is QUIET_CHECK_MAX again at once.
QUIET_CHECK_SWITCHES = 120.0

#: A process that ran less than this share of a core since its last light read (spread past
#: SPREAD_FROM) is handed out as it was, up to LIGHT_READ_MAX_AGE s after that read: one
#: pread of its stat (start, threads, virtual size, CPU) instead of three reads. Whatever it
#: could do with so little time (a connect, a bind: reported by the kernel hook, which has it
#: read at once) is read at the latest then. (Its light read also reads the socket tables
#: that find a socket it swapped into an open file's place: ProcessSampler._walk_owners_of;
#: at 20 s, that took 20 s.)
BARELY_RUNNING = 0.02
LIGHT_READ_MAX_AGE = 10.0
#: Once found barely running, it is not asked again for BARELY_RECHECK s (half to all of it,
#: spread by pid): two hundred idle kernels each wake every second. An exec (the process
#: events) or a connect or bind the kernel hook reports has it read at the next tick all the
#: same; one that starts to compute is seen within this, long before a rule that measures
#: CPU over a window could hold (and mining needs a connection: one of its own has the
#: process read at every tick, never parked, from the tick it is seen: _parks_running).
BARELY_RECHECK = 10.0

#: The open-files soft limit the sampler raises its process's to, if the hard limit allows:
#: a quarter of it holds idle processes' schedstat files (HeldCounts).
WANTED_OPEN_FILES = 32768


@dataclass
class QuietRead:
    """The last full read of a process, and what shows whether it ran since."""

    sample: Process
    activity: tuple  # (thread id, its schedstat) of each thread
    refresh_at: float  # read in full then all the same
    markers_pending: bool  # its files or memory were still being scanned at that read
    # It ran before that read, but its fds were not walked or its maps not read again then
    # (not due yet): done once they are due, even if it does not run again.
    fds_pending: bool
    maps_pending: bool
    vms: int  # its virtual size at that read
    held: HeldCounts | None = field(default=None, repr=False)  # its schedstat files, open
    files_pending: bool = False  # its executable or script not scanned yet

    def __post_init__(self):
        self.counts = tuple(counts for _, counts in self.activity)

    def ran(self, pid: int) -> tuple[bool, tuple | None]:
        """Whether a thread of the process ran since this read, and the complete activity
        if it was read whole on the way (the next full read's baseline)."""
        if self.held is not None:
            return self.held.counts() != self.counts, None
        activity = procfs.activity(pid, self.single)
        return activity != self.activity, None if self.single else activity

    def probe(self) -> Probe | None:
        """What Parked asks at its turns (see there): its held schedstat file and what it
        read, if it has one thread and its file is held."""
        held = self.held
        if held is None or len(held.fds) != 1 or len(self.counts) != 1:
            return None
        return held.fds[0], self.counts[0], self.refresh_at

    @property
    def single(self) -> bool:
        """One thread: its schedstat alone shows whether the process ran."""
        return len(self.activity) == 1 and self.activity[0][0] == self.sample.pid


class HeldCounts:
    """The schedstat files of a quiet process's threads, kept open and read again with
    pread: about 1.4 µs a file instead of 6.4 µs to open, read and close it each tick,
    which is most of what a thousand idle processes cost. A file descriptor per thread
    held, within a budget of a quarter of the open-files limit; beyond it, files are
    opened each tick as before."""

    open_files = 0  # held by every sampler of this process
    budget: int | None = None  # set at the first read (see _budget)

    def __init__(self, fds: list[int]):
        self.fds = fds
        HeldCounts.open_files += len(fds)

    @classmethod
    def read(cls, pid: int, single: bool) -> tuple[tuple | None, HeldCounts | None]:
        """The process's activity (procfs.activity), with its files held if the budget
        allows."""
        found = procfs.open_activity(pid, single)
        if found is None:
            return None, None
        counts, fds = found
        if cls.open_files + len(fds) <= cls._budget():
            return counts, cls(fds)
        for fd in fds:
            os.close(fd)
        return counts, None

    @classmethod
    def _budget(cls) -> int:
        """A quarter of the open-files limit, at most 8,192; worked out at the first read, so
        after the server raised its limit (jupyter_server's ``min_open_files_limit``), and
        with the soft limit raised towards the hard one first (as the Go runtime and
        jupyter_server do: the soft limit is 1,024 in most services, the hard one far more)."""
        if cls.budget is None:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            wanted = WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY \
                else min(hard, WANTED_OPEN_FILES)
            if soft != resource.RLIM_INFINITY and soft < wanted:
                try:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                    soft = wanted
                except (ValueError, OSError):
                    pass  # kept as it is: fewer files held
            cls.budget = max(0, min(8192, soft // 4))
        return cls.budget

    def counts(self) -> tuple[bytes, ...] | None:
        if len(self.fds) == 1:  # most processes: said without a generator
            try:
                return (os.pread(self.fds[0], 256, 0),)
            except OSError:
                return None
        return procfs.reread(self.fds)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        HeldCounts.open_files -= len(self.fds)
        self.fds = []

    def __del__(self):  # a forgotten process's state: its files go with it
        self.close()


class HeldStat:
    """A running process's /proc/PID/stat, kept open and read again with pread (4 µs
    instead of 30 to open, read and close it), within HeldCounts' budget."""

    def __init__(self, fd: int):
        self.fd = fd
        HeldCounts.open_files += 1

    @classmethod
    def open(cls, pid: int) -> HeldStat | None:
        if HeldCounts.open_files + 1 > HeldCounts._budget():
            return None
        try:
            return cls(os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            return None

    def read(self) -> procfs.Stat | None:
        try:
            return procfs.parse_stat(os.pread(self.fd, 1024, 0))
        except (OSError, ValueError, IndexError):
            return None  # exited: the full read says so

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            HeldCounts.open_files -= 1
            self.fd = -1

    def __del__(self):
        self.close()


def quiet_check_spacing(watched: int, switches: bool = False) -> float:
    """Seconds between two turns of a quiet process (before the spread by pid), ``watched``
    processes being watched: QUIET_CHECKS_PER_SECOND turns a second in all, each process at
    least every QUIET_CHECK_MAX s; QUIET_CHECK_SWITCHES where the context-switch records
    (``switches``) say which ran."""
    if switches:
        return QUIET_CHECK_SWITCHES
    return min(QUIET_CHECK_MAX, watched / QUIET_CHECKS_PER_SECOND)


def next_check(now: float, pid: int, watched: int, switches: bool = False) -> float:
    """When a quiet process is next asked whether it ran, ``watched`` processes being watched
    (most of them quiet: SPREAD_FROM): at every tick for a few; else spread by pid, at most
    quiet_check_spacing apart."""
    if watched <= SPREAD_FROM:
        return 0.0
    return now + quiet_check_spacing(watched, switches) * (8 + pid % 8) / 16


class Parked:
    """Quiet processes the pass does not visit until their turn (next_check), kept by kernel
    and handed out as they were, so that a tick costs what the others cost. Kept across
    attributions (pid -> kernel id, a new object when a process started or exited) for the
    processes still of the same kernel and as they were.

    A quiet process parked with a *probe* (its one held schedstat file and what it read) is
    asked at its turn here, with one pread and a comparison: the few hundred turns a second
    of five thousand idle processes cost what the reads cost, not a call into the sampler
    each; one that barely runs (a kernel) is asked by its probe (a pread of its held stat),
    not visited. Any other turn, and a probe that says it ran or whose refresh is due, go to
    ``still_quiet``.

    Where the context-switch records say which processes ran (``woken``), a quiet one among
    them has its turn at once, and the others are asked only a long spacing apart; when
    they cannot say (records lost), every quiet turn is brought within the usual spacing."""

    def __init__(self):
        self.owners: Mapping[int, str] | None = None
        self.by_kernel: dict[str, dict[int, Process]] = {}
        self.unparked: dict[int, str] = {}  # owners but the parked
        self._queue: list[tuple[float, int]] = []  # (when due, pid); stale unless in _turns
        # pid -> (its one live turn in the queue, its probe, when the probe last found it had
        # not run): one lookup a turn
        self._turns: dict[int, tuple[float, Probe | None, float | None]] = {}
        self.turns: list[int] | None = None  # (tests) the pids asked at their turn, in order
        self.woken_known = False  # the last visit was told which processes ran
        self._barely: set[int] = set()  # parked ones that barely run (park); some stale

    def visit(self, owners: Mapping[int, str], now: float, asked: set[int],
              still_quiet: StillQuiet | None = None, spacing: float = 0.0,
              probing: bool = True, same: Same | None = None,
              woken: set[int] | None = None) -> Mapping[int, str]:
        """The processes this pass visits: all but the parked (under a new attribution, those
        of the same kernel that ``same(pid, sample)`` says are as they were stay parked),
        those ``asked`` (they exec'd) unparked first, then those due: a probed
        one that did not run is due again ``spacing`` s on (spread by pid); any other is
        unparked unless ``still_quiet(pid, sample, now, quiet_at)`` says when it is due next
        (it did not run: asked there and then, without a visit; ``quiet_at``: when a probe
        last found it had not run, or None). ``probing`` False: the scheduler counts do not
        move (idle.SchedCounts), so no probe is believed. ``woken``: the processes that ran
        since the last visit (watch/switches.py), or None if that is not known."""
        if owners is not self.owners:
            self._carry_over(owners, same)
        for pid in asked:
            self.unpark(pid)
        if woken is not None:
            self._wake(woken, now)
        elif self.woken_known:
            self._tighten(now, spacing)
        self.woken_known = woken is not None
        queue, live, turns = self._queue, self._turns, self.turns
        while queue and queue[0][0] <= now:
            when, pid = queue[0]
            turn = live.get(pid)
            if turn is None or turn[0] != when:
                heapq.heappop(queue)  # unparked since, or parked again with another turn
                continue
            if turns is not None:
                turns.append(pid)
            probe = turn[1]
            if probing and type(probe) is tuple:  # a quiet one's: did it run at all?
                if now < probe[2]:
                    try:
                        same = os.pread(probe[0], 256, 0) == probe[1]
                    except OSError:
                        same = False  # the slow path says why
                    if same:  # its next turn a spacing on (the first was spread by pid)
                        again = max(now, when + spacing)
                        live[pid] = (again, probe, now)
                        heapq.heapreplace(queue, (again, pid))
                        continue
            elif probing and probe is not None:  # one that barely runs: did it compute?
                again = probe(now)
                if again:
                    live[pid] = (again, probe, None)
                    heapq.heapreplace(queue, (again, pid))
                    continue
            heapq.heappop(queue)
            del live[pid]
            sample = self.by_kernel[owners[pid]][pid]
            again = still_quiet(pid, sample, now, turn[2]) if still_quiet is not None else 0.0
            if again:
                live[pid] = (again, probe, None)
                heapq.heappush(queue, (again, pid))
            else:
                self.unpark(pid)
        return self.unparked

    def _wake(self, woken: set[int], now: float) -> None:
        """The quiet among ``woken`` (those that ran) have their turn now: a process that
        barely runs (a kernel, woken every second) keeps its own."""
        live, queue = self._turns, self._queue
        for pid in (woken & live.keys()) - self._barely:  # at C speed (4 µs): few are left
            when, probe, quiet_at = live[pid]
            if when > now:
                live[pid] = (now, probe, quiet_at)
                heapq.heappush(queue, (now, pid))

    def _tighten(self, now: float, spacing: float) -> None:
        """Who ran is no longer known: every quiet process is asked within ``spacing`` again
        (spread by pid), as if it had been parked without the records."""
        live, barely = self._turns, self._barely
        for pid, (when, probe, quiet_at) in live.items():
            soon = now + spacing * (8 + pid % 8) / 16
            if when > soon and pid not in barely:
                live[pid] = (soon, probe, quiet_at)
        self._queue = [(turn[0], pid) for pid, turn in live.items()]
        heapq.heapify(self._queue)

    def _carry_over(self, owners: Mapping[int, str], same: Same | None) -> None:
        """A new attribution (a process started or exited): the parked that are still of the
        same kernel and as they were (``same``: the same process, parent and role) stay
        parked, at their turn; the rest is visited. A program started and gone costs the
        pass what changed, not a visit of every idle process."""
        by_kernel, turns = {}, self._turns
        for kernel_id, parked in self.by_kernel.items() if same is not None else ():
            kept = {}
            for pid, sample in parked.items():
                if owners.get(pid) == kernel_id and same(pid, sample):
                    kept[pid] = sample
                else:
                    turns.pop(pid, None)  # its stale turn in the queue is skipped
            if kept:
                by_kernel[kernel_id] = kept
        if not by_kernel:
            self.reset()
        self._barely.intersection_update(turns)
        self.owners, self.by_kernel = owners, by_kernel
        self.unparked = {pid: kid for pid, kid in owners.items()
                         if pid not in by_kernel.get(kid, ())}

    def park(self, pid: int, sample: Process, due: float, probe: Probe | None = None,
             barely: bool = False) -> None:
        """Parked until ``due``; ``barely``: it runs, but barely (a kernel: not woken by the
        switch records, which name it every second)."""
        kernel_id = self.unparked.pop(pid, None)
        if kernel_id is not None:
            if barely:
                self._barely.add(pid)
            else:
                self._barely.discard(pid)
            self.by_kernel.setdefault(kernel_id, {})[pid] = sample
            self._turns[pid] = (due, probe, None)
            heapq.heappush(self._queue, (due, pid))

    def unpark(self, pid: int) -> None:
        """Visited from the next pass on (it exec'd, or the kernel hook saw it connect)."""
        kernel_id = self.owners.get(pid) if self.owners is not None else None
        parked = self.by_kernel.get(kernel_id) if kernel_id is not None else None
        if parked is not None and parked.pop(pid, None) is not None:
            self.unparked[pid] = kernel_id
            self._turns.pop(pid, None)

    def reset(self) -> None:
        """Nothing parked (spreading off: events lost, or few processes)."""
        self.owners, self.by_kernel, self.unparked, self._queue = None, {}, {}, []
        self._turns, self.woken_known, self._barely = {}, False, set()


#: A parked process's probe. A quiet one's: (the fd of its one thread's schedstat, held open;
#: what it read at the last full read; when it is read in full all the same,
#: QuietRead.refresh_at). One that barely runs: now -> its next turn if it still barely runs
#: and nothing else is due, else 0 (ProcessSampler._barely_probe).
Probe = "tuple[int, bytes, float] | Callable[[float], float]"
#: Parked.visit's question to the sampler: (pid, sample, now, quiet_at) -> when due next, or 0.
StillQuiet = Callable[[int, Process, float, "float | None"], float]
#: ... and under a new attribution: (pid, its parked sample) -> whether that sample still holds.
Same = Callable[[int, Process], bool]


def refresh_time(now: float, pid: int, watched: int = 0) -> float:
    """When a quiet process is read in full all the same: spread by pid, so that the
    refreshes of many processes started together do not all fall on one tick; with
    ``watched`` processes, no more than QUIET_REFRESHES_PER_SECOND of them a second."""
    return now + max(QUIET_REFRESH, watched / QUIET_REFRESHES_PER_SECOND) * (8 + pid % 8) / 16


class SchedCounts:
    """Whether the scheduler counts move, so that unchanged counts mean "did not run"."""

    def __init__(self):
        self._own: bytes | None = None  # this thread's schedstat at the last tick
        self.move = True

    def check(self) -> bool:
        """This thread ran since the last tick, so its own counts must have changed. If
        they did not (a kernel or sandbox that fakes them), every process is read in full.
        Returns False when they stopped moving at this tick (to be said once)."""
        for pause in (1e-6, 1e-3):
            # Leave the CPU: a thread's counts are updated when it does. A sleep whose end
            # has passed when it starts (1 µs, on a busy machine) leaves nothing: once more,
            # longer, before the counts are said not to move.
            time.sleep(pause)
            try:
                counts = procfs.read_small("/proc/thread-self/schedstat")
            except OSError:
                counts = None
            moved = counts is not None and counts != self._own and counts.split()[2:3] != [b"0"]
            if moved or self._own is None:
                break
        stopped = self._own is not None and self.move and not moved
        self.move = moved or self._own is None
        self._own = counts
        return not stopped
