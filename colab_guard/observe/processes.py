"""Turn the live process table into one Snapshot per kernel.

One pass over the system's processes per tick serves every kernel: psutil's
``children(recursive=True)`` rescans /proc on every call, so walking each
kernel separately would cost one full scan per kernel.

Which kernel a process belongs to is attribution.py's; what the sampler keeps
about each live process between ticks is one ``Tracked`` record.

A tick must stay cheap on a busy hub (fifty kernels of twenty processes each), so a
process is read in full only when it is new or has run since its last full read:

- The process table is one listing of /proc. Each entry carries the inode of the
  process's /proc directory, which stays the same while the process lives and is new
  for a new process, even under a reused pid: only new entries have their stat read.
- A watched process none of whose threads was scheduled since its last full read
  cannot have changed: that read stands (idle.py).
- Sockets come from one read of /proc/net/{tcp,udp}{,6} per tick. A process's fds are
  walked at its first read, when a socket nobody is known to hold appears in those
  tables (only a process that ran can have opened it), and every ``libraries_refresh``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace


from . import loader, pipes, procfs
from .behaviour import Behaviour
from .attribution import KERNEL_ENV_MARKER, OrphanJudge, children_of, descend, kernel_environment
from .content import MAPS_MAX_BYTES, MAX_LIBRARIES, ContentScanner, executable_files
from .gpu import GpuSample
from .idle import (BARELY_RECHECK, BARELY_RUNNING, LIGHT_READ_MAX_AGE, QUIET_CHECK_MAX,
                   SPREAD_FROM, HeldCounts, HeldStat, Parked, Probe, QuietRead, SchedCounts,
                   next_check, quiet_check_spacing, refresh_time)
from .model import Process, Snapshot, Socket
from .procfs import CLOCK_TICKS, InetTables
from .sockdiag import UnixPeers

__all__ = ["KERNEL_ENV_MARKER", "ProcessSampler", "kernel_environment"]

ProcessKey = tuple[int, float]

#: Seconds between two readings of a process caught in the middle of an exec (its file
#: changed under the reads, or its arguments not yet in place): an ELF's loading takes
#: microseconds, a busy machine's scheduler a millisecond.
EXEC_SETTLES = 0.001
#: ... at most this many such pauses a tick (a process can empty its command line for good:
#: a thousand of them would otherwise pause every tick for seconds)
MAX_EXEC_WAITS = 16

#: Seconds after its start from which an unchanged fd count tells that a process opened no
#: new socket (see _walk_fds).
FD_COUNT_SETTLED = 10.0

#: Seconds after which a running process's maps are read again even if its virtual size is
#: the same (a library swapped for another of the same size).
MAPS_MAX_AGE = 60.0

#: Seconds at most between two full reads of a kernel that keeps running and whose full reads
#: keep finding it unchanged: its threads wake every second, so it is read lightly at every
#: tick (see _light_read), and the full read that backs that up comes at ``libraries_refresh``,
#: then twice as far apart each time it finds nothing new, up to this. Whatever else it does
#: changes what a light read reads (see there), or is reported by the kernel hook (a connect,
#: a bind: read_kernel_in_full) or found by its memory scan (ContentScanner.news), and has it
#: read in full at the next tick; a socket put in a closed file's place (the same fd count)
#: by a connect the hook does not see, at the next tick too (_walk_owners_of).
KERNEL_FULL_READ_MAX = 40.0
#: ... and for a kernel that barely runs (under idle.BARELY_RUNNING of a core), among many
#: processes with process events (the node watcher, idle.SPREAD_FROM): two hundred idle
#: kernels' full reads are most of what a tick reads. One that computes again (a light read
#: measures it) is due within KERNEL_FULL_READ_MAX again.
KERNEL_FULL_READ_MAX_IDLE = 240.0


class Entry:
    """A process in the table, as the pass knows it from one tick to the next."""

    __slots__ = ("key", "inode", "ppid", "start")

    def __init__(self, key: ProcessKey, inode: int, ppid: int, start: int):
        self.key = key  # (pid, create time on procfs.boot_time()): the process's identity
        self.inode = inode  # of /proc/PID: unchanged while the same process lives
        self.ppid = ppid
        self.start = start  # clock ticks after boot

    @property
    def pid(self) -> int:
        return self.key[0]


@dataclass
class _Fds:
    """What the last walk of a process's fds found."""

    when: float
    inodes: tuple[int, ...]  # of its sockets
    files: list[str]  # regular files open
    count: int | None = None  # fds open at that walk (procfs.fd_count), where the kernel says
    streams: frozenset[int] = frozenset()  # inodes of the sockets on fds 0-2 (its stdin...)
    # the links of fds 0-2 ('' where closed) where stdin and stdout or stderr may be pipes or
    # FIFOs (pipes.may_be_piped), else empty: a shell in a loop of pipes (pipes.py)
    stdio: tuple[str, ...] = ()


def _held(fds: _Fds, pairs: list[tuple[int, Socket]]) -> list[Socket]:
    """A process's sockets, those on its standard streams marked so (the same socket is a
    shell's stdin in one process and a plain descriptor in the one that opened it)."""
    if not fds.streams:
        return [s for _, s in pairs]
    return [replace(s, stream=True) if inode in fds.streams else s for inode, s in pairs]


@dataclass
class Tracked:
    """What the sampler keeps about one live process between ticks (forgotten at its exit)."""

    owner: str | None = None  # the kernel it was attributed to: sticky
    cpu: tuple[float, float] | None = None  # (CPU seconds, wall time) at the last read
    # (when, vms, paths, exe) at the last maps read
    libraries: tuple[float, int, list[str], str] | None = None
    fds: _Fds | None = None  # the last walk of its fds
    uid: int | None = None
    quiet: QuietRead | None = None  # the last full read, for the idle fast path
    handed: Process | None = None  # the sample handed out last tick
    netns: str | None = None  # its network namespace ('' the guard's own), once read
    full_due: float = 0.0  # when it is read in full again if it keeps running (_light_read)
    full_every: float = 0.0  # seconds between those full reads (a kernel's grow: _full_due)
    changed_at: float = 0.0  # when a full read found it had exec'd (another exe or name)
    running: bool = False  # it ran at its last check: read lightly without asking again
    steady: Process | None = None  # idle, no socket, nothing pending: handed out as it was
    check_at: float = 0.0  # a quiet one: when next asked whether it ran (idle.next_check)
    light_at: float = 0.0  # a running one: its last light read (idle.BARELY_RUNNING)
    barely_next: float = 0.0  # one that barely ran: not asked again before (idle.BARELY_RECHECK)
    stat: HeldStat | None = None  # a running one's stat, held open (spread: idle.py)
    pairs: list | None = None  # its sockets at its last light read: (inode, socket)
    inet: frozenset = frozenset()  # the inodes of its inet sockets at its last read
    # (exe, command line, (program, arguments) or None) of a program the loader runs (_as_loaded)
    loaded: tuple[str, tuple[str, ...], tuple[str, list[str]] | None] | None = None

    def forget_quiet(self) -> None:
        if self.quiet is not None and self.quiet.held is not None:
            self.quiet.held.close()
        self.quiet = None
        self.check_at = self.light_at = self.barely_next = 0.0
        if self.stat is not None:
            self.stat.close()
            self.stat = None


@dataclass
class SamplerStats:
    """Counters an operator can watch (exported as metrics)."""

    ticks: int = 0
    processes_sampled: int = 0
    full_reads: int = 0  # processes read in full (new, or ran since their last read)
    light_reads: int = 0  # processes that ran, read lightly (_light_read)
    vanished: int = 0  # exited between listing and reading
    reread: int = 0  # read again: it exec'd while read (_read_program)
    denied: int = 0  # a /proc read refused
    errors: int = 0  # anything else, logged with its traceback
    claimed_by_environment: int = 0
    uid_changes: int = 0  # a process seen under one uid, then another (setuid)
    problems_logged: set[str] = field(default_factory=set)


class ProcessSampler:
    """Samples the process trees of many kernels in one pass.

    Not thread-safe: the monitor calls it from a single worker thread. A Process it
    returns is never changed afterwards; one that did not change since the last tick
    is handed out again as the same object (the engine relies on this to skip it).
    """

    def __init__(
        self,
        log: logging.Logger | None = None,
        libraries_refresh: float = 5.0,
        read_environ: bool = True,
        content: ContentScanner | None = None,
    ):
        self.log = log or logging.getLogger("colab_guard")
        self.libraries_refresh = libraries_refresh
        self.read_environ = read_environ
        # Which kernel an orphan (in no kernel's tree) belongs to, by what can be proven.
        self.orphans = OrphanJudge(read_environ, self.log)
        self.stats = SamplerStats()
        # Executable content, scanned once per file in a background thread.
        self.content = content if content is not None else ContentScanner(log=self.log)
        self._table: dict[int, Entry] = {}  # the last tick's process table, by pid
        self._table_moved = True  # this tick's table differs from the last tick's
        self._tracked: dict[ProcessKey, Tracked] = {}  # live processes the sampler knows
        self._foreign_sockets: set[int] = set()  # socket inodes no watched process holds
        self._unheld_once: set[int] = set()  # held by none at the last tick's end
        self._unaccounted: bool | None = None  # this tick's _sockets_unaccounted
        self._owners_walked: dict[int, float] = {}  # uid -> its last _walk_owners_of
        self._owners_pending: set[int] = set()  # uids whose walk waits its turn
        self._activity_now: dict[int, tuple | None] = {}  # this tick's full activity, by pid
        self._counts = SchedCounts()  # whether schedstat shows who ran (checked every tick)
        # The last attribution (kernels, pid -> kernel id), and whether it must be made anew.
        self._owners: tuple[dict[str, int], dict[int, str]] | None = None
        self._tables: InetTables | None = None  # the last read of the socket tables
        self._table_changed = True
        # Behaviour over a window (behaviour.py): its own state, fed at the end of each tick.
        self.behaviour = Behaviour(self.log)
        self._netns_tables: dict[str, InetTables] = {}  # this tick's, per other namespace
        self._pairs_now: dict[ProcessKey, list] = {}  # this tick's (inode, socket) per process
        self._exec_waits = MAX_EXEC_WAITS  # pauses left this tick for a read mid-exec
        # Many processes watched, with process events: quiet ones asked in turn, barely
        # running ones read lightly less often (idle.SPREAD_FROM); this tick's, and how many
        # were quiet at the last tick (and this one's count so far).
        self._spreading = False
        self._watched = 0  # processes this tick (the quiet ones' turns follow it)
        self._check_now: set[int] = set()  # pids asked this tick all the same (they exec'd)
        self._woken: set[int] | None = None  # this tick's: the pids that ran (woken()), if known
        self._parked = Parked()  # quiet processes waiting their turn (idle.py)
        # this tick's: (pid, sample, due, its probe, whether it barely runs: idle.Parked)
        self._to_park: list[tuple[int, Process, float, Probe | None, bool]] = []
        self._gpu_on = False  # this tick's: GPU use sampled (a parked one's is asked at visits)
        self._owner_set: set[str] | None = None  # owners(), until the attribution changes
        self._sessions: dict[str, float] = {}  # kernel id -> when its session began
        self._session_known: dict[ProcessKey, float] = {}  # kernel's key -> that, found once
        # kernel id -> its processes' keys (Snapshot.members), for one attribution
        self._members: tuple[Mapping[int, str] | None, dict[str, frozenset]] = (None, {})

    # ------------------------------------------------------------------ public

    def sample(self, kernels: Mapping[str, int], gpu: GpuSample | None = None
               ) -> dict[str, Snapshot]:
        """Snapshot every kernel in ``kernels`` (kernel id -> kernel pid), with each
        process's GPU use from ``gpu`` (NVML's view of the same instant) when given."""
        now = time.time()
        self._gpu_on = gpu is not None
        self._check_counts_move()
        self._woken = self.woken()
        table = self._scan_table()
        owners = self._attribute(kernels, table)
        self._sessions = self._session_starts(kernels, table)
        # Read when first needed: a socket not seen before, or the states of known ones
        # once the last tick's read is ``libraries_refresh`` old.
        sockets = InetTables(earlier=self._tables, max_age=self.libraries_refresh)
        self._unaccounted = None
        self._netns_tables, self._pairs_now = {}, {}
        self._exec_waits = MAX_EXEC_WAITS
        kernel_pids = {pid: kid for kid, pid in kernels.items()}
        snapshots = {kid: Snapshot(kernel_id=kid, time=now) for kid in kernels}
        self._spreading = self.may_spread() and len(owners) > SPREAD_FROM
        if not self._spreading:
            self._parked.reset()
        self._watched = len(owners)
        visit = self._parked.visit(owners, now, self._check_now, self._still_quiet,
                                   quiet_check_spacing(len(owners), self._woken is not None),
                                   self.counts_move, self._still_same(table, kernel_pids, owners),
                                   self._woken) \
            if self._spreading else owners
        no_gpu = (0.0, 0.0)
        for pid, kid in list(visit.items()):
            entry, is_kernel = table[pid], kernel_pids.get(pid) == kid
            use = gpu.processes.get(pid) if gpu is not None else None
            gpu_use = (use.percent, use.memory_mb) if use is not None else no_gpu
            proc = self._unchanged(entry, now, is_kernel, sockets, gpu_use) or \
                self._light_read(entry, now, is_kernel, sockets, gpu_use) or \
                self._read_process(entry, now, is_kernel, sockets, gpu_use)
            if proc is not None:
                snapshot = snapshots.get(kid)
                if snapshot is None:  # an orphan's stand-in kernel (attribution.py)
                    snapshot = snapshots[kid] = Snapshot(kernel_id=kid, time=now)
                snapshot.processes.append(proc)
        if sockets.read:
            self._remember_foreign_sockets(sockets)
            self._tables = sockets
        self._annotate_behaviour(snapshots, now)  # --- behaviour hook (behaviour.py)
        self._park_quiet(snapshots, now)
        self._annotate_stream_loops(snapshots)
        if self._spreading:
            self._name_members(snapshots, owners, table)
        if self._table_moved:  # a process started or exited: the state of those gone goes
            self._forget_dead(table)
        self.stats.ticks += 1
        self.stats.processes_sampled += len(owners)
        return snapshots

    def _session_starts(self, kernels: Mapping[str, int], table: dict[int, Entry]
                        ) -> dict[str, float]:
        """Kernel id -> when its session began (_session_start), found once per kernel."""
        known, began = self._session_known, {}
        for kid, pid in kernels.items():
            entry = table.get(pid)
            if entry is not None:
                if entry.key not in known:
                    known[entry.key] = _session_start(entry, table)
                began[kid] = known[entry.key]
        if len(known) > 2 * len(kernels) + 16:  # kernels gone: forgotten
            live = {table[pid].key for pid in kernels.values() if pid in table}
            self._session_known = {k: v for k, v in known.items() if k in live}
        return began

    @staticmethod
    def _still_same(table: dict[int, Entry], kernel_pids: dict[int, str],
                    owners: Mapping[int, str]) -> Callable[[int, Process], bool]:
        """Whether a parked sample holds under this attribution: the same process (its key),
        parent and role (the kernel or not)."""
        def same(pid: int, sample: Process) -> bool:
            entry = table.get(pid)
            return entry is not None and entry.key == sample.key and entry.ppid == sample.ppid \
                and sample.is_kernel == (kernel_pids.get(pid) == owners.get(pid))
        return same

    def _still_quiet(self, pid: int, sample: Process, now: float,
                     quiet_at: float | None = None) -> float:
        """A parked quiet process at its turn: when it is due next if it did not run (one
        pread of its schedstat: it stays parked, not visited), else 0 (visited at this pass,
        as is one due its refresh or parked while running: idle.Parked.visit). ``quiet_at``:
        when Parked's probe last found it had not run (its CPU was the same then)."""
        state = self._tracked.get(sample.key)
        quiet = state.quiet if state is not None else None
        if quiet_at is not None and state is not None and state.cpu is not None:
            state.cpu = (state.cpu[0], quiet_at)
        if quiet is None or state.running or state.steady is not sample \
                or now >= quiet.refresh_at or not self.counts_move or quiet.ran(pid)[0]:
            return 0.0
        state.cpu = (state.cpu[0], now)
        state.check_at = next_check(now, pid, self._watched, self._woken is not None)
        return state.check_at

    def _park_quiet(self, snapshots: dict[str, Snapshot], now: float) -> None:
        """Every process parked before this tick is handed out as it was (the snapshot's
        parked tail); then the quiet ones visited now and not due before their turn are
        parked (they are in the snapshots already)."""
        for kid, parked in self._parked.by_kernel.items():
            if parked:
                snapshot = snapshots.get(kid)
                if snapshot is None:
                    snapshot = snapshots[kid] = Snapshot(kernel_id=kid, time=now)
                snapshot.processes.extend(parked.values())
                snapshot.parked = len(parked)
        measuring = self.behaviour.measuring
        for pid, sample, due, probe, barely in self._to_park:
            if sample.key not in measuring:
                self._parked.park(pid, sample, due, probe, barely)
        self._to_park = []

    def _name_members(self, snapshots: dict[str, Snapshot], owners: Mapping[int, str],
                      table: dict[int, Entry]) -> None:
        """Snapshot.members: the same object per kernel while the attribution is the same
        (no process started or exited), and the kernel's snapshot holds all of them (none
        vanished between the listing and its read)."""
        if self._members[0] is not owners:
            keys: dict[str, set] = {}
            for pid, kid in owners.items():
                keys.setdefault(kid, set()).add(table[pid].key)
            before = self._members[1]  # a kernel whose processes are the same keeps its object
            self._members = (owners, {kid: known if (known := before.get(kid)) == k
                                      else frozenset(k) for kid, k in keys.items()})
        members = self._members[1]
        for kid, snapshot in snapshots.items():
            known = members.get(kid)
            if known is not None and len(known) == len(snapshot.processes):
                snapshot.members = known

    def may_spread(self) -> bool:
        """Whether quiet processes may be asked in turn (idle.SPREAD_FROM): only where process
        events say at once which exec'd (the node watcher's sampler)."""
        return False

    def woken(self) -> set[int] | None:
        """The pids that ran since the last tick, where the kernel says so (the node watcher's
        context-switch records), else None: quiet processes are then asked in turn."""
        return None

    def _annotate_behaviour(self, snapshots: dict[str, Snapshot], now: float) -> None:
        """Behaviour fields over a window, for the few candidate processes; a sample whose
        fields changed is replaced (never changed in place) and handed out as such."""
        # The rules read the processes that hold sockets or ran (a refused connect leaves a
        # socket no table lists), and the kernel itself; a thousand idle children are left
        # out (but for those given values last tick, whose values are taken back), and so
        # are the kernels with none of these (the parked are not in the snapshots yet).
        others = self.behaviour.measuring  # given values last tick, kernels aside
        views = {kid: Snapshot(kid, snapshot.time, view) for kid, snapshot in snapshots.items()
                 if snapshot.processes and (view := [
                     p for p in snapshot.processes
                     if p.is_kernel or p.sockets or p.cpu_percent > 0
                     or (others and p.key in others)])}
        changed = self.behaviour.annotate(
            views, lambda p: self._pairs_now.get(p.key, []), now, snapshots.keys())
        if not changed:
            return
        for kid, view in views.items():
            if not any(p.key in changed for p in view.processes):
                continue
            processes = snapshots[kid].processes
            for i, proc in enumerate(processes):
                new = changed.get(proc.key)
                if new is not None:
                    processes[i] = self._hand_out(proc.key, new)

    def _annotate_stream_loops(self, snapshots: dict[str, Snapshot]) -> None:
        """Each shell whose stdin and stdout (or stderr) are pipes or FIFOs is given the name
        of the process holding a connection that they reach in a loop (pipes.py), '' if none.
        A parked one whose name would change is visited from the next tick (where it is
        given it): a parked sample is the very one handed out."""
        for snapshot in snapshots.values():
            shells = [(i, p, streams) for i, p in enumerate(snapshot.processes)
                      if (streams := self._shell_streams(p)) is not None]
            if not shells and not any(p.stream_relay for p in snapshot.processes):
                continue
            relays = self._stream_relays(snapshot, shells)
            first_parked = len(snapshot.processes) - snapshot.parked
            for i, proc in enumerate(snapshot.processes):
                relay = relays.get(proc.pid, "")
                if relay == proc.stream_relay:
                    continue
                self._parked.unpark(proc.pid)
                if i < first_parked:
                    snapshot.processes[i] = self._hand_out(proc.key, proc.but(stream_relay=relay))

    def _shell_streams(self, proc: Process) -> tuple[frozenset, frozenset] | int | None:
        """What a shell reads on stdin and writes on stdout and stderr, where they are pipes
        or FIFOs (pipes.shell_streams), or the index of the pseudo-terminal they are (whose
        master's holder's streams are then followed); None for any other process."""
        state = self._tracked.get(proc.key)
        fds = state.fds if state is not None else None
        if fds is None or not fds.stdio or not pipes.is_shell(proc):  # most: no stdio kept
            return None
        index = pipes.pty_index(fds.stdio)
        return index if index is not None else pipes.shell_streams(proc.pid, fds.stdio)

    @staticmethod
    def _stream_relays(snapshot: Snapshot, shells: list) -> dict[int, str]:
        """pid -> the relay in its loop (pipes.relay_in_loop), for the shells given; the fds
        of the kernel's other processes are read only where one of them holds a connection
        (at most pipes.MAX_PROCESSES of them, once a tick: those holding a connection first,
        then those whose own streams may be pipes, so that idle children, however many, do
        not push a loop's processes out)."""
        others = [p for p in snapshot.processes if not p.is_kernel]
        if not shells or not any(pipes.connected(p) for p in others):
            return {}
        if len(others) > pipes.MAX_PROCESSES:
            others = sorted(others, key=lambda p: (not pipes.connected(p),
                                                   not pipes.stdio_piped(p.pid)))
            others = others[:pipes.MAX_PROCESSES]
        parents = {p.pid: p.ppid for p in snapshot.processes}
        shell_pids = frozenset(p.pid for p in snapshot.processes if pipes.is_shell(p))
        with UnixPeers() as peers:
            return _relays_of(shells, others, parents, peers, shell_pids)


    def _socket_pairs(self, key: ProcessKey, inodes: tuple[int, ...], netns: str,
                      pid: int, sockets: InetTables) -> list:
        """(inode, socket) of the process's inet sockets, read from its own network
        namespace's tables when that is not the guard's (/proc/PID/net)."""
        if not inodes:
            return []
        tables = sockets
        if netns:
            # An unreadable namespace has no name to share its tables by: read as its own.
            name = netns if netns != procfs.NETNS_UNREADABLE else f"{netns}:{pid}"
            tables = self._netns_tables.get(name)
            if tables is None:
                tables = self._netns_tables[name] = InetTables(f"/proc/{pid}/net")
        pairs = self._pairs_now[key] = tables.pairs(inodes)
        return pairs

    def _netns(self, pid: int) -> str:
        """'' for the guard's own network namespace, else its name, or 'unreadable'
        (another user's process, to a guard that is not root: evidence, not a blind spot)."""
        try:
            netns = procfs.read_netns(pid)
        except PermissionError:
            return procfs.NETNS_UNREADABLE
        except OSError:
            return ""
        return "" if netns == procfs.OWN_NETNS else netns

    def owner_of(self, pid: int) -> str | None:
        """The kernel a live process is attributed to, if any."""
        entry = self._table.get(pid)
        if entry is not None:  # the usual case: in the last tick's table
            state = self._tracked.get(entry.key)
            if state is not None and state.owner:
                return state.owner
        return next((t.owner for (p, _), t in self._tracked.items() if p == pid and t.owner),
                    None)

    def owners(self) -> set[str]:
        """The kernels that live processes are attributed to (call from the sampler's thread;
        worked out again only after an attribution, a claim or an exit)."""
        if self._owner_set is None:
            self._owner_set = {t.owner for t in self._tracked.values() if t.owner}
        return self._owner_set

    @property
    def counts_move(self) -> bool:
        return self._counts.move

    def tracked(self) -> int:
        """Processes the sampler keeps state for (live processes only)."""
        return max(len(self._table), len(self._tracked))

    def _state(self, key: ProcessKey) -> Tracked:
        state = self._tracked.get(key)
        if state is None:
            state = self._tracked[key] = Tracked()
        return state

    def claim(self, pid: int, kernel_id: str) -> None:
        """Attribute a process to a kernel (reported by the kernel hook)."""
        stat = _read_stat(pid)
        if stat is None:
            return
        known = self._table.get(pid)
        key = known.key if known is not None and known.start == stat.start \
            else (pid, procfs.create_time(stat.start, procfs.boot_time()))
        state = self._state(key)
        state.owner = state.owner or kernel_id
        self._table_changed = True
        self._owner_set = None

    # ---------------------------------------------------------------- the pass

    def _check_counts_move(self) -> None:
        if not self._counts.check():
            self._problem("counts", "the scheduler counts in /proc/PID/schedstat do not move; "
                          "every process is read in full every tick (more CPU)")

    def _scan_table(self) -> dict[int, Entry]:
        """Every process on the system: one listing of /proc, and a read of the stat of
        each process not seen before (or whose parent has just exited: reparented)."""
        before, table = self._table, {}
        boot: list[float] = []  # read once per tick, and only when needed
        kept = 0  # entries of the last table still there
        with os.scandir("/proc") as listing:
            for dirent in listing:
                if not dirent.name.isdigit():
                    continue
                pid, inode = int(dirent.name), dirent.inode()
                known = before.get(pid)
                if known is None or known.inode != inode:
                    known = self._identify(pid, inode, known, boot)
                    if known is None:
                        continue  # gone already
                else:
                    kept += 1
                table[pid] = known
        return self._take_table(before, table, kept)

    def _take_table(self, before: dict[int, Entry], table: dict[int, Entry], kept: int
                    ) -> dict[int, Entry]:
        """This tick's table (``kept``: how many of the last one's entries are still there),
        with the parents of processes whose parent exited read again."""
        changed = kept != len(before) or kept != len(table)
        # A process is reparented only when its parent exits: only if one of the last
        # table's processes is gone (every process of a busy machine, looked up otherwise).
        for entry in table.values() if kept != len(before) else ():
            parent = table.get(entry.ppid)
            if entry.ppid in before and (parent is None or parent.start > entry.start):
                stat = _read_stat(entry.pid)  # its parent exited: whose child is it now?
                if stat is not None:
                    entry.ppid = stat.ppid
                changed = True
        self._table_changed = self._table_changed or changed
        self._table_moved = changed  # this tick's: what _forget_dead has to look at
        self._table = table
        self._activity_now = {}
        return table

    @staticmethod
    def _identify(pid: int, inode: int, known: Entry | None, boot: list[float]) -> Entry | None:
        stat = _read_stat(pid)
        if stat is None:
            return None
        if known is not None and known.start == stat.start:  # same process, inode recycled
            known.inode, known.ppid = inode, stat.ppid
            return known
        if not boot:
            boot.append(procfs.boot_time())
        return Entry((pid, procfs.create_time(stat.start, boot[0])), inode, stat.ppid, stat.start)

    def _attribute(self, kernels: Mapping[str, int], table: dict[int, Entry]) -> dict[int, str]:
        """pid -> kernel id for every process that belongs to a kernel: the last tick's,
        when no process started or exited, none was reparented, the kernels are the same
        and no orphan's environment is still to be read."""
        if not self._table_changed and self._owners is not None and kernels == self._owners[0]:
            return self._owners[1]
        self._table_changed = False  # set again below if an environment is still unread
        owners = self._attribute_anew(kernels, table)
        self._owners = (dict(kernels), owners)
        return owners

    def _attribute_anew(self, kernels: Mapping[str, int], table: dict[int, Entry]
                        ) -> dict[int, str]:
        children = children_of(table)
        owners: dict[int, str] = {}
        roots = [(pid, kid) for kid, pid in kernels.items() if pid in table]
        for pid, entry in table.items():  # seen under a kernel before: still that kernel's
            state = self._tracked.get(entry.key)
            if state is not None and state.owner in kernels:
                roots.append((pid, state.owner))
        descend(roots, children, owners)
        # Orphans never seen in a tree: tied by what can be proven (attribution.py).
        self.orphans.note_owned(owners, table)
        claimed = []
        for pid, entry in table.items():
            if pid not in owners:
                tie, final = self.orphans.tie(entry, kernels, table)
                if not final:
                    self._table_changed = True  # its environment is read again next tick
                if tie is not None:
                    claimed.append((pid, tie.kernel))
        descend(claimed, children, owners)
        self.stats.claimed_by_environment = self.orphans.counts["environment"]
        for pid, kid in owners.items():
            state = self._state(table[pid].key)
            state.owner = state.owner or kid
        self._owner_set = None
        return owners

    def _sockets_unaccounted(self, sockets: InetTables) -> bool:
        """Whether a socket appeared that no watched process is known to hold and that
        is not known to be someone else's: then every process that ran has its fds walked
        (asked once per tick, at the first full read)."""
        if self._unaccounted is None:
            self._unaccounted = not sockets.inodes <= self._held_sockets() | self._foreign_sockets
        return self._unaccounted

    def _held_sockets(self) -> set[int]:
        return {inode for t in self._tracked.values() if t.fds is not None
                for inode in t.fds.inodes}

    def _remember_foreign_sockets(self, sockets: InetTables) -> None:
        """After the walks: the sockets still unaccounted for are other processes' (the
        server's own connections, other users'); forgotten once closed."""
        held = self._held_sockets()
        present = sockets.inodes
        # Only once unheld at two tick ends: a socket opened by a process after its fds were
        # walked this tick, and before the tables were read, is found at the next tick's walk
        # (taken as foreign at once, it stayed unseen until the refresh, seconds later).
        unheld = present - held
        fresh = unheld - self._unheld_once - self._foreign_sockets
        self._foreign_sockets = (self._foreign_sockets & present) | (unheld & self._unheld_once)
        self._unheld_once = unheld
        if fresh or self._owners_pending:
            self._walk_owners_of(fresh, sockets)

    def _walk_owners_of(self, inodes: set[int], sockets: InetTables) -> None:
        """A socket no watched process is known to hold may be one a running process put in
        an open file's place (dup2: the same fd count, which light reads and barely-running
        checks go by): the running processes of its owner (its uid in the tables) are read in
        full, fds walked, at the next tick (a user's few; not the idle: they did not run)."""
        now = time.monotonic()
        every = self.libraries_refresh
        self._owners_pending.update(uid for uid in map(sockets.uid, inodes) if uid is not None)
        due = [uid for uid in self._owners_pending
               if now - self._owners_walked.get(uid, -every) >= every]
        if not due:
            return  # once per libraries_refresh a uid (a server's clients come and go)
        # One uid a tick, the longest waiting first: users whose servers' connections come
        # and go (every page a browser loads) cost a few full reads a second in all, not a
        # few for each of them.
        uid = min(due, key=lambda u: self._owners_walked.get(u, -every))
        self._owners_pending.discard(uid)
        self._owners_walked[uid] = now
        if len(self._owners_walked) > 4096:
            self._owners_walked = {u: t for u, t in self._owners_walked.items()
                                   if now - t < self.libraries_refresh}
        for key, state in self._tracked.items():
            if state.running and state.uid == uid and state.fds is not None:
                state.full_due = state.light_at = state.barely_next = 0.0
                state.fds = replace(state.fds, when=float("-inf"))
                self._parked.unpark(key[0])

    def _read_process(self, entry: Entry, now: float, is_kernel: bool, sockets: InetTables,
                      gpu_use: tuple[float, float]) -> Process | None:
        """Read one process in full."""
        pid, key = entry.pid, entry.key
        activity, held = self._activity_now.get(pid), None
        if activity is None:
            activity, held = HeldCounts.read(pid, single=False)
        state = self._state(key)
        before = state.quiet.sample if state.quiet is not None else None
        state.forget_quiet()
        state.running = False
        denied_before = self.stats.denied
        sample = Process(pid=pid, ppid=entry.ppid, create_time=key[1], is_kernel=is_kernel)
        try:
            stat, sample.exe, sample.cmdline = self._read_program(pid)
            if stat.start != entry.start:
                raise ProcessLookupError(pid)  # exited, and its pid was taken again
            loaded = self._as_loaded(state, entry, sample.exe, sample.cmdline, now)
            sample.uid = self._denied_ok(procfs.read_real_uid, None, "status", pid)
        except (FileNotFoundError, ProcessLookupError):
            _closed(held)
            self.stats.vanished += 1
            return None
        except PermissionError as err:
            _closed(held)
            self._denied("process", pid, err)
            return self._hand_out(key, sample)
        except (ValueError, IndexError) as err:  # a stat line that cannot be parsed
            _closed(held)
            self.stats.errors += 1
            self._problem("stat", "could not read /proc/%s/stat: %s", pid, err)
            return None
        self.stats.full_reads += 1
        sample.ppid, sample.threads, sample.rss = stat.ppid, stat.threads, stat.rss
        sample.name = procfs.full_name(stat.comm, sample.cmdline)
        if loaded is not None:  # the name the kernel gives it when it runs it
            sample.exe, sample.cmdline = loaded
            sample.name = procfs.full_name(os.path.basename(sample.exe)[:15], sample.cmdline)
        sample.cpu_percent = self._cpu_percent(key, stat.cpu_ticks / CLOCK_TICKS, now)
        sample.gpu_percent, sample.gpu_memory_mb = gpu_use
        self._note_uid(key, sample.uid, pid)
        sample.libraries = self._mapped_libraries(key, pid, now, stat.vms, sample.exe)
        if state.netns is None:
            state.netns = self._netns(pid)  # read once; again when its sockets are walked
        # A socket of another namespace never shows in the guard's tables: its fds are
        # walked whenever it ran (and its fd count changed).
        fds = self._walk_fds(key, pid, now, lambda: state.netns != "" or
                             self._sockets_unaccounted(sockets))
        if fds.inodes and fds.when == now:
            state.netns = self._netns(pid)  # it may have moved (unshare -n)
        pairs = self._socket_pairs(key, fds.inodes, state.netns, pid, sockets)
        if fds.when != now and _replaced(state, pairs):
            fds = self._walk_fds(key, pid, now, lambda: True, force=True)
            state.netns = self._netns(pid)
            pairs = self._socket_pairs(key, fds.inodes, state.netns, pid, sockets)
        state.inet = frozenset(inode for inode, _ in pairs)
        sample.open_files = fds.files
        libraries = state.libraries
        maps_pending = libraries[1] != stat.vms if libraries is not None else False
        sample.netns = state.netns
        sample.sockets = _held(fds, pairs)
        # Asked first: if the files were not all scanned yet, the markers below may miss
        # some (the scan runs in the background), and are looked up again later.
        self.content.news.discard(key)  # taken now, whatever the memory scan found
        session = self._sessions.get(state.owner)
        settled = self.content.settled(pid, sample.exe, sample.cmdline, key, session)
        sample.exe_markers = self.content.process_markers(pid, sample.exe, sample.cmdline, key,
                                                          session)
        if before is not None and (before.exe, before.name) != (sample.exe, sample.name):
            state.changed_at = now  # it exec'd: read in full for a while, as a new process is
        if activity is not None and self.stats.denied == denied_before:  # a complete read
            files_pending = not settled and not self.content.files_settled(
                pid, sample.exe, sample.cmdline, key)
            state.quiet = QuietRead(
                sample, activity, refresh_time(now, pid, self._watched), not settled,
                fds_pending=fds.when < now, maps_pending=maps_pending, vms=stat.vms, held=held,
                files_pending=files_pending)
            state.full_due = self._full_due(state, now, pid, before, sample,
                                            not files_pending)
        else:
            _closed(held)
        return self._hand_out(key, sample)

    def _full_due(self, state: Tracked, now: float, pid: int, before: Process | None,
                  sample: Process, files_settled: bool) -> float:
        """When a process that keeps running is read in full again: every ``libraries_refresh``
        (spread by pid); a kernel whose full read found nothing new (beyond its CPU and
        memory) and whose files are all scanned, twice as far apart each time, up to
        ``KERNEL_FULL_READ_MAX`` (sooner when the kernel hook reports a connection or a bind,
        read_kernel_in_full, or its memory scan finds something, ContentScanner.news)."""
        unchanged = sample.is_kernel and before is not None and _same_but_usage(before, sample)
        most = KERNEL_FULL_READ_MAX_IDLE if self._spreading and \
            sample.cpu_percent < 100 * BARELY_RUNNING else KERNEL_FULL_READ_MAX
        if not unchanged or not state.full_every:
            state.full_every = self.libraries_refresh
        elif files_settled:
            state.full_every = min(2 * state.full_every, most)
        # else its files are being looked at (again: every memory_rescan all the same): the
        # spacing holds, and it is read in full once they are (_light_read), not from the
        # start of the ramp (which brought two hundred idle kernels' reads back every 40 s).
        return now + state.full_every * (8 + pid % 8) / 16

    def read_kernel_in_full(self, kernel_id: str) -> None:
        """The kernel hook saw the kernel connect or bind: its sockets are read at the next
        tick, not at its spaced-out full read (call from the sampler's thread)."""
        pid = self._owners[0].get(kernel_id) if self._owners is not None else None
        entry = self._table.get(pid) if pid is not None else None
        state = self._tracked.get(entry.key) if entry is not None else None
        if state is not None:
            state.full_due, state.full_every = 0.0, self.libraries_refresh
            state.light_at = state.barely_next = 0.0
            self._parked.unpark(pid)

    def _unchanged(self, entry: Entry, now: float, is_kernel: bool, sockets: InetTables,
                   gpu_use: tuple[float, float]) -> Process | None:
        """This tick's sample of a process none of whose threads has been scheduled since its
        last full read, or None if it ran (or is due its refresh). Not having run, it cannot
        have changed its command line, executable, uid, threads or libraries: the object
        handed out last tick is handed out again unless its sockets' states, its markers
        (scanned in the background) or its GPU use differ."""
        state = self._tracked.get(entry.key)
        quiet = state.quiet if state is not None else None
        if quiet is None or state.running or now >= quiet.refresh_at or not self.counts_move:
            return None
        last = state.handed
        if last is not None and state.steady is last and last.ppid == entry.ppid \
                and last.is_kernel == is_kernel and last.gpu_percent == gpu_use[0] \
                and last.gpu_memory_mb == gpu_use[1]:
            # Most of a thousand idle children: handed out as they were last tick, with no
            # socket and nothing pending; one pread of its schedstat says it did not run
            # (with many, asked in turn: idle.next_check).
            if self._spreading and self._turn_stands(entry.pid, state.check_at, now):
                self._to_park.append((entry.pid, last, state.check_at, quiet.probe(), False))
                return last
            if not quiet.ran(entry.pid)[0]:
                state.cpu = (state.cpu[0], now)
                if self._spreading:
                    state.check_at = next_check(now, entry.pid, self._watched,
                                                self._woken is not None)
                    if state.check_at:
                        self._to_park.append((entry.pid, last, state.check_at, quiet.probe(), False))
                return last
            state.check_at = 0.0
            return None
        ran, activity = quiet.ran(entry.pid)
        if activity is not None:
            self._activity_now[entry.pid] = activity  # complete: the next read's baseline
        if ran:
            return None
        key = entry.key
        state.cpu = (state.cpu[0], now)  # no CPU used since
        if quiet.markers_pending or quiet.fds_pending or quiet.maps_pending:
            self._catch_up(entry, state, now)
        fds = state.fds
        base, last = quiet.sample, state.handed
        found = _held(fds, self._socket_pairs(key, fds.inodes, base.netns, entry.pid,
                                              sockets)) if fds is not None else []
        if last is not None and last.cpu_percent == 0.0 and last.is_kernel == is_kernel \
                and last.ppid == entry.ppid and last.sockets == found \
                and last.exe_markers is base.exe_markers and last.libraries is base.libraries \
                and last.open_files is base.open_files \
                and (last.gpu_percent, last.gpu_memory_mb) == gpu_use:
            if not (found or quiet.markers_pending or quiet.fds_pending or quiet.maps_pending):
                state.steady = last  # the fast path above, from the next tick
            return last
        return self._hand_out(key, base.but(
            ppid=entry.ppid, cpu_percent=0.0, is_kernel=is_kernel, sockets=found,
            gpu_percent=gpu_use[0], gpu_memory_mb=gpu_use[1]))

    def _turn_stands(self, pid: int, check_at: float, now: float) -> bool:
        """Whether a quiet process visited now may wait for its turn at ``check_at`` without
        being asked: not if it exec'd or the switch records say it ran, nor if its turn was
        set while they said who ran and they no longer do."""
        if now >= check_at or pid in self._check_now:
            return False
        woken = self._woken
        if woken is None:
            return check_at <= now + QUIET_CHECK_MAX
        return pid not in woken

    def _catch_up(self, entry: Entry, state: Tracked, now: float) -> None:
        """Finish what the last full read of a now idle process left for later: markers
        whose scan (in the background) had not ended, a renamed server waiting for
        connections recognised all the same; fds and maps once due (a socket it was handed,
        a library it mapped just before it went quiet)."""
        quiet = state.quiet
        last = quiet.sample
        if quiet.markers_pending:
            # Taken as each scan ends (a library's can end long before the memory scan
            # queued behind it); pending until all have.
            session = self._sessions.get(state.owner)
            settled = self.content.settled(last.pid, last.exe, last.cmdline, entry.key, session)
            markers = self.content.process_markers(last.pid, last.exe, last.cmdline, entry.key,
                                                   session)
            if markers != last.exe_markers:  # the same: the same sample is handed on
                last = last.but(exe_markers=markers)
            quiet.markers_pending = not settled
        if quiet.fds_pending and now - state.fds.when >= self.libraries_refresh:
            last = last.but(open_files=self._walk_fds(entry.key, entry.pid, now,
                                                           lambda: True).files)
            quiet.fds_pending = False
        if quiet.maps_pending and now - state.libraries[0] >= self.libraries_refresh:
            last = last.but(libraries=self._mapped_libraries(entry.key, entry.pid, now,
                                                                  quiet.vms, last.exe))
            quiet.maps_pending = False
        quiet.sample = last

    def _light_read(self, entry: Entry, now: float, is_kernel: bool, sockets: InetTables,
                    gpu_use: tuple[float, float]) -> Process | None:
        """This tick's sample of a process that ran since its last full read but, by its
        stat, command line and fd count, changed nothing a signature reads but its CPU and
        memory use; or None when it must be read in full. A kernel's threads wake every
        second: reading only these three files, not its exe, uid, threads' counts, fds
        and markers, is most of what fifty kernels cost. What it does not read cannot
        change without changing what it reads (an exec changes the name, the command line
        and the memory size; a library mapped, the memory size; a socket opened, the fd
        count), and the full read comes back every few seconds all the same."""
        state = self._tracked.get(entry.key)
        quiet = state.quiet if state is not None else None
        # A new process (or one that has just exec'd) is read in full for its first seconds:
        # it opens and closes files, and its executable, script and memory are being
        # scanned (markers that land later are taken at the next full read). What is due at
        # the fds' and maps' pace falls due after ``full_due``.
        if quiet is None or now >= state.full_due or quiet.files_pending or state.fds is None \
                or now - max(entry.key[1], state.changed_at) <= FD_COUNT_SETTLED \
                or entry.key in self.content.news:  # its memory scan found something new
            return None
        pid, base = entry.pid, quiet.sample
        if self._spreading and state.running and self._barely_ran(entry, state, quiet, now,
                                                                  is_kernel, gpu_use):
            return state.handed
        try:
            stat = procfs.read_stat(pid)
            cmdline = procfs.read_cmdline(pid)
        except (OSError, ValueError, IndexError):
            return None  # the full read says what went wrong
        if stat.start != entry.start or stat.threads != base.threads or stat.vms != quiet.vms \
                or not _same_program(state, base, stat, cmdline):
            return None
        fds = state.fds
        if fds.count is None or procfs.fd_count(pid) != fds.count:
            return None
        if not state.running and quiet.held is not None:
            # It keeps running (a kernel): its threads' schedstat files are not read again
            # before its next full read, so they are not held meanwhile (a shared budget).
            quiet.held.close()
            quiet.held = None
        state.running = True
        self.stats.light_reads += 1
        cpu_percent = self._cpu_percent(entry.key, stat.cpu_ticks / CLOCK_TICKS, now)
        if state.full_every > KERNEL_FULL_READ_MAX and cpu_percent >= 100 * BARELY_RUNNING:
            state.full_every = KERNEL_FULL_READ_MAX  # it computes: KERNEL_FULL_READ_MAX_IDLE
            state.full_due = min(state.full_due, now + KERNEL_FULL_READ_MAX * (8 + pid % 8) / 16)
        pairs = self._socket_pairs(entry.key, fds.inodes, base.netns, pid, sockets)
        if _replaced(state, pairs):
            return None  # read in full: its fds walked again (a socket took a closed one's fd)
        state.light_at, state.pairs, state.inet = now, pairs, frozenset(i for i, _ in pairs)
        found = _held(fds, pairs)
        return self._hand_out(entry.key, base.but(
            ppid=stat.ppid, rss=stat.rss, is_kernel=is_kernel,
            cpu_percent=cpu_percent, sockets=found, gpu_percent=gpu_use[0],
            gpu_memory_mb=gpu_use[1]))

    def _barely_ran(self, entry: Entry, state: Tracked, quiet: QuietRead, now: float,
                    is_kernel: bool, gpu_use: tuple[float, float]) -> bool:
        """Whether a process read lightly less than LIGHT_READ_MAX_AGE s ago used less than
        BARELY_RUNNING of a core since, and changed neither its threads nor its size: then
        it is handed out as it was (idle.py), its sockets as they were."""
        last = state.handed
        if now - state.light_at >= LIGHT_READ_MAX_AGE or last is None or state.cpu is None \
                or last.is_kernel != is_kernel or last.ppid != entry.ppid \
                or (last.gpu_percent, last.gpu_memory_mb) != gpu_use \
                or any(s.status == "SYN_SENT" for s in last.sockets):
            return False  # (a connect in flight: a sweep's waits use no CPU)
        if now < state.barely_next and entry.pid not in self._check_now:
            if state.pairs:  # it barely ran a moment ago: not asked again so soon
                self._pairs_now[entry.key] = state.pairs
            return True
        if state.stat is None:
            state.stat = HeldStat.open(entry.pid)
            if state.stat is None:
                return False
        stat = state.stat.read()
        if stat is None or stat.start != entry.start or stat.threads != quiet.sample.threads \
                or stat.vms != quiet.vms:
            return False
        used, since = stat.cpu_ticks / CLOCK_TICKS - state.cpu[0], now - state.cpu[1]
        if since <= 0 or used > BARELY_RUNNING * since:
            return False
        state.barely_next = now + BARELY_RECHECK * (8 + entry.pid % 8) / 16
        if _parks_running(last):
            self._to_park.append((entry.pid, last, state.barely_next,
                                  self._barely_probe(entry, state, quiet), True))
        if state.pairs:
            self._pairs_now[entry.key] = state.pairs
        return True

    def _barely_probe(self, entry: Entry, state: Tracked, quiet: QuietRead
                      ) -> Callable[[float], float] | None:
        """What Parked asks a parked process that barely runs at its turn, without a visit:
        what _barely_ran asks (one pread of its held stat), until its light or full read is
        due or its memory scan found something (then 0: visited). None with GPU sampling on
        (its GPU use is asked at each visit)."""
        if self._gpu_on or state.stat is None or state.cpu is None:
            return None
        held, key, pid = state.stat, entry.key, entry.pid
        start, threads, vms = entry.start, quiet.sample.threads, quiet.vms
        cpu, since = state.cpu
        due = min(state.light_at + LIGHT_READ_MAX_AGE, state.full_due)
        news = self.content.news

        def again(now: float) -> float:
            if now >= due or key in news:
                return 0.0
            stat = held.read()
            if stat is None or stat.start != start or stat.threads != threads \
                    or stat.vms != vms \
                    or stat.cpu_ticks / CLOCK_TICKS - cpu > BARELY_RUNNING * (now - since):
                return 0.0
            state.barely_next = now + BARELY_RECHECK * (8 + pid % 8) / 16
            return state.barely_next
        return again

    def _hand_out(self, key: ProcessKey, sample: Process) -> Process:
        self._state(key).handed = sample
        return sample

    def _walk_fds(self, key: ProcessKey, pid: int, now: float, walk: Callable[[], bool],
                  limit: int = 256, force: bool = False) -> _Fds:
        """The process's sockets and the regular files it has open (a model file, a
        .torrent; at most ``limit``): walked when ``walk()`` says so, when never walked,
        when ``force``d, and at the libraries' pace; otherwise the last walk's."""
        state = self._state(key)
        last = state.fds
        count = procfs.fd_count(pid)  # one stat
        if last is not None and not force and now - last.when < self.libraries_refresh:
            # A young process (or one that has just exec'd) whose fd count moved is walked
            # at once: what it opens in its first seconds (a swap model, a .torrent, named
            # in a config file rather than on its command line) is what it is.
            young = now - max(key[1], state.changed_at) <= FD_COUNT_SETTLED
            counted = last.count is not None and count == last.count
            # Else, a socket nobody is known to hold appeared somewhere: only a process whose
            # fds changed can have opened it. Not for a young process: starting up, it opens
            # and closes files, so a socket can take a closed file's place at the same count
            # (an old one that swaps a file for a socket is found at the refresh). Asked
            # last: it reads the socket tables.
            if not (young and not counted) and ((not young and counted) or not walk()):
                return last
        inodes: list[int] = []
        files: list[str] = []
        streams: set[int] = set()
        stdio = ["", "", ""]
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue  # closed meanwhile
                if fd in ("0", "1", "2"):
                    stdio[int(fd)] = target
                if target.startswith("socket:["):
                    inodes.append(int(target[8:-1]))
                    if fd in ("0", "1", "2"):
                        streams.add(inodes[-1])
                elif target.startswith("/") and not target.startswith(("/dev/", "/proc/")) \
                        and len(files) < limit and target not in files:
                    files.append(target)
        except FileNotFoundError:
            pass  # gone, or a zombie: nothing open
        except PermissionError as err:
            self._denied("fd", pid, err)
        except OSError as err:
            self._problem("fd", "could not list /proc/%s/fd: %s", pid, err)
        kept = pipes.may_be_piped(stdio) or pipes.pty_index(stdio) is not None
        state.fds = _Fds(now, tuple(inodes), files, count, frozenset(streams),
                         tuple(stdio) if kept else ())
        return state.fds

    def _note_uid(self, key: ProcessKey, uid: int | None, pid: int) -> None:
        """A process that changes its uid (setuid) stays its kernel's; said once."""
        state = self._state(key)
        before = state.uid
        if uid is not None:
            state.uid = uid
        if before is not None and uid is not None and uid != before:
            self.stats.uid_changes += 1
            self._problem("uid", "process %s changed its uid from %s to %s; it stays attributed "
                          "to its kernel", pid, before, uid)

    def _cpu_percent(self, key: ProcessKey, cpu_seconds: float, now: float) -> float:
        state = self._state(key)
        before = state.cpu
        state.cpu = (cpu_seconds, now)
        if before is None:
            elapsed = now - key[1]  # first sight: average since the process started
            used = cpu_seconds
        else:
            elapsed = now - before[1]
            used = cpu_seconds - before[0]
        return round(100.0 * used / elapsed, 1) if elapsed > 0 else 0.0

    def _mapped_libraries(self, key: ProcessKey, pid: int, now: float, vms: int,
                          exe: str) -> list[str]:
        """Shared objects the process has mapped (libtorrent, a RandomX module...).

        /proc/PID/maps can be long: it is read again at most every ``libraries_refresh``
        seconds, and then only if the process's virtual size ``vms`` changed since (mapping
        a library grows it), or once ``MAPS_MAX_AGE`` old; at once when it runs another
        program (an exec keeps its pid and start: a kernel's child that became bash kept the
        kernel's libraries, and bash was no longer the system's own shell).
        """
        state = self._state(key)
        cached = state.libraries
        if cached is not None and cached[3] == exe:
            age = now - cached[0]
            if age < self.libraries_refresh or (vms == cached[1] and age < MAPS_MAX_AGE):
                return cached[2]
        libraries: list[str] = []
        try:
            libraries = _libraries_in(procfs.read_all(f"/proc/{pid}/maps", MAPS_MAX_BYTES + 1))
        except FileNotFoundError:
            return []
        except PermissionError as err:
            self._denied("maps", pid, err)
        except OSError as err:
            self._problem("maps", "could not read /proc/%s/maps: %s", pid, err)
        state.libraries = (now, vms, libraries, exe)
        return libraries

    def _as_loaded(self, state: Tracked, entry: Entry, exe: str, cmdline: list[str],
                   now: float) -> tuple[str, list[str]] | None:
        """The program and arguments of a process that runs a program through the dynamic
        loader (loader.py), or None. Looked up once per program it runs and command line, and
        only for a process started with no ELF interpreter (one read of its auxv); one whose
        program was not found is looked at again while it is young (the loader maps it)."""
        known = state.loaded
        if known is not None and known[0] == exe and known[1] == tuple(cmdline):
            return known[2]
        found, dynamic = None, loader.started_by_interpreter(entry.pid)
        if len(cmdline) > 1 and dynamic is False:
            try:
                raw = procfs.read_all(f"/proc/{entry.pid}/maps", MAPS_MAX_BYTES)
                mapped = [(m.path, m.inode) for m in executable_files(
                    raw.decode("utf-8", "replace"))]
                own = os.stat(f"/proc/{entry.pid}/exe").st_ino
                found = loader.loaded_program(entry.pid, cmdline, mapped, own)
            except OSError:
                return None
        # (a dynamically linked program stays one until it execs: asked once)
        if found is not None or dynamic or now - entry.key[1] > loader.SETTLED_AFTER:
            state.loaded = (exe, tuple(cmdline), found)
        return found

    # ------------------------------------------------------------ bookkeeping

    def _read_program(self, pid: int) -> tuple[procfs.Stat, str, list[str]]:
        """The process's stat, executable and command line, all of one program: read again
        when it exec'd meanwhile (its executable changed under the reads). Read across an
        exec, `sh -c 'nmap -V'`'s child was nmap's file with the shell's script, or the
        shell's file with a program's options: either one a false reading of both. Read in
        the middle of an exec (the new file set, its arguments not yet copied), the command
        line is empty: read again too, else the miner's first reading had no options. Its file
        still changing under the rereads (a script exec'ing itself without end), it is handed
        out with its file and no arguments, never another program's (the next tick reads it
        again)."""
        for attempt in range(3):
            if attempt:
                self.stats.reread += 1
                if self._exec_waits > 0:
                    self._exec_waits -= 1
                    time.sleep(EXEC_SETTLES)
            exe = self._denied_ok(procfs.read_exe, "", "exe", pid)
            stat = procfs.read_stat(pid)
            cmdline = self._denied_ok(procfs.read_cmdline, [], "cmdline", pid)
            if procfs.exe_now(pid) == exe and (cmdline or not exe):
                break
        else:
            if procfs.exe_now(pid) != exe:
                return stat, exe, []  # (its file's, and no other program's arguments)
        return stat, exe, cmdline

    def _denied_ok(self, read, default, what: str, pid: int):
        try:
            return read(pid)
        except PermissionError as err:
            self._denied(what, pid, err)
            return default

    def _denied(self, what: str, pid: int, err: Exception) -> None:
        self.stats.denied += 1
        self._problem(f"denied:{what}", "reading %s of process %s was denied (%s); "
                      "sampling what can be read", what, pid, err)

    def _problem(self, kind: str, message: str, *args) -> None:
        """Log a kind of problem once, then only count it."""
        if kind not in self.stats.problems_logged:
            self.stats.problems_logged.add(kind)
            self.log.warning("colab-guard: " + message + " (further occurrences are only counted)",
                             *args)

    def _forget_dead(self, table: dict[int, Entry]) -> None:
        """Drop state of processes that exited, so memory stays bounded."""
        alive = {entry.key for entry in table.values()}
        for key in self._tracked.keys() - alive:
            self._tracked.pop(key).forget_quiet()
        self._owner_set = None
        self.content.forget(alive)  # what it read of their memory
        self.orphans.forget(table)


#: The last of a process's libraries when its maps were not read whole (no library's name)
LIBRARIES_CUT = "…[libraries cut]"
#: The dynamic loader's cache (no library: every dynamically linked program maps it while it
#: loads its libraries; bash read then was not the system's shell, its echo a miner's options)
LOADER_CACHE = "etc/ld.so.cache"


def _libraries_in(raw: bytes) -> list[str]:
    """The shared objects a /proc/PID/maps text names, in its order. At most MAPS_MAX_BYTES of
    it is read (50,000 mappings) and MAX_LIBRARIES names kept, as the content scanner reads it:
    65,000 files mapped cost 100 ms a read and the engine's reading of their names 1.3 s
    (session 21). Past either, those mapped executable (a library loaded) come first, and the
    list ends with LIBRARIES_CUT: decoys mapped only to be read cannot push a library out."""
    cut = len(raw) > MAPS_MAX_BYTES
    if cut:
        raw = raw[:raw.rfind(b"\n", 0, MAPS_MAX_BYTES) + 1]  # not the line cut in two
    found: dict[str, bool] = {}  # path -> mapped executable
    for line in raw.decode("utf-8", "replace").splitlines():
        head, _, path = line.partition("/")
        if path and ".so" in path and path != LOADER_CACHE:
            perms = head.split(None, 2)[1:2]
            found[path] = found.get(path, False) or bool(perms and "x" in perms[0])
    if not cut and len(found) <= MAX_LIBRARIES:
        return ["/" + path for path in found]
    code = [path for path, executable in found.items() if executable][:MAX_LIBRARIES]
    if len(code) < MAX_LIBRARIES:
        kept = set(code)
        code += [p for p in found if p not in kept][:MAX_LIBRARIES - len(code)]
    return ["/" + path for path in code] + [LIBRARIES_CUT]


#: Ancestors of a kernel walked, at most, to find where its session began
MAX_ANCESTORS = 64


def _session_start(entry: Entry, table: dict[int, Entry]) -> float:
    """When a kernel's session began (epoch seconds): the start of its oldest ancestor in its
    own PID namespace (a container's init; the notebook server, which a restarted kernel
    keeps, and which the user's killing it to have it restarted does not move)."""
    namespace = _pid_namespace(entry.pid)
    began, at = entry.key[1], entry
    for _ in range(MAX_ANCESTORS):
        parent = table.get(at.ppid)
        if parent is None or namespace is None or _pid_namespace(parent.pid) != namespace:
            break
        began, at = min(began, parent.key[1]), parent
    return began


def _replaced(state: Tracked, pairs: list) -> bool:
    """Whether an inet socket the process held at its last read is gone from the tables
    while its fds were not walked again: its fd count the same, something took the closed
    socket's place (a sweep's next connection, 16 always in flight: its fds must be walked
    for the new ones to be seen)."""
    return bool(state.inet) and not state.inet <= {inode for inode, _ in pairs}


def _ancestors(pid: int, parents: dict[int, int]) -> set[int]:
    """The pids above ``pid`` in a snapshot (``parents``: pid -> ppid), at most MAX_ANCESTORS."""
    found: set[int] = set()
    for _ in range(MAX_ANCESTORS):
        pid = parents.get(pid, 0)
        if pid not in parents or pid in found:
            break
        found.add(pid)
    return found


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _same_but_usage(before: Process, now: Process) -> bool:
    """Two full reads of a process that differ in nothing a signature reads but its CPU and
    memory use."""
    return (before.exe, before.cmdline, before.name, before.uid, before.threads,
            before.libraries, before.open_files, before.sockets, before.exe_markers,
            before.netns) == (now.exe, now.cmdline, now.name, now.uid, now.threads,
                              now.libraries, now.open_files, now.sockets, now.exe_markers,
                              now.netns)


def _closed(held: HeldCounts | None) -> None:
    """A read that will not be kept: its schedstat files are closed."""
    if held is not None:
        held.close()


def _read_stat(pid: int) -> procfs.Stat | None:
    """/proc/PID/stat, or None if the process is gone."""
    try:
        return procfs.read_stat(pid)
    except (OSError, ValueError, IndexError):
        return None



def _same_program(state: Tracked, base: Process, stat: procfs.Stat,
                  cmdline: list[str]) -> bool:
    """Whether a light read's command line and name are those of the last full read: as
    read, or, for a program a loader runs (judged by its own), the loader's as read then."""
    loaded = state.loaded
    if loaded is not None and loaded[2] is not None:
        return tuple(cmdline) == loaded[1]  # (its name the program's file's, not its comm)
    return cmdline == base.cmdline and procfs.full_name(stat.comm, cmdline) == base.name


def _relays_of(shells: list, others: list[Process], parents: dict[int, int],
               peers: UnixPeers, shell_pids: frozenset[int] = frozenset()) -> dict[int, str]:
    """ProcessSampler._stream_relays, once the processes are chosen (``peers``: the UNIX
    sockets' ends, asked once each; ``shell_pids``: the tree's shells)."""
    ends: dict[int, pipes.Ends] = {}

    def ends_of(proc: Process) -> pipes.Ends:
        if proc.pid not in ends:
            ends[proc.pid] = pipes.read_ends(proc.pid, peers)
        return ends[proc.pid]
    relays = {}
    for _, shell, streams in shells:
        if pipes.forked_from(shell.pid, shell.ppid) or pipes.running_its_script(shell.pid):
            continue  # running its (parent's) script: it reads data, not commands
        terminal = None
        if isinstance(streams, int):  # behind a pty: its master's holder's streams
            terminal, streams = _terminal_streams(streams, shell, others)
            if streams is None:
                continue
        ancestors = _ancestors(shell.pid, parents)
        drivers = ancestors - shell_pids
        beside = [p for p in others if p.pid not in ancestors and p is not terminal
                  and not _copy_of(p, drivers)]
        relays[shell.pid] = pipes.relay_in_loop(shell, streams, beside, ends_of)
    return relays


def _copy_of(process: Process, drivers: set[int]) -> bool:
    """Whether ``process`` is a fork, that exec'd nothing, of a program driving the shell
    (an ancestor no shell: a multiprocessing worker, a Manager's server): the program
    itself, its pipes' ends and connections inherited, as excluded as it is. A pipeline's
    segment forked by an ancestor shell (`| while read l; … >&3`) is no copy of a driver."""
    return process.ppid in drivers and pipes.forked_from(process.pid, process.ppid)


def _terminal_streams(index: int, shell: Process, others: list[Process]
                      ) -> tuple[Process | None, tuple[frozenset, frozenset] | None]:
    """The process holding the master of the shell's pseudo-terminal /dev/pts/``index``
    among ``others``, and its own streams where they are pipes or FIFOs: what the terminal
    types into the shell and what it shows of it (`cat f | script -qc 'sh -i' /dev/null |
    nc HOST PORT > f`), followed as the shell's own. (None, None) if none such."""
    for process in others:
        if process.pid != shell.pid and pipes.stdio_piped(process.pid) \
                and pipes.holds_pty_master(process.pid, index):
            return process, pipes.shell_streams(process.pid, pipes.stdio_links(process.pid))
    return None, None


def _parks_running(sample: Process) -> bool:
    """Whether a process that barely runs may be parked until it is asked again: one holding
    no socket but listening ones and clients' connections to its own Jupyter ports (a
    kernel's); a connection of its own (an idle relay, a reverse shell) is read each tick."""
    own = sample.own_ports
    return all(s.listening or (s.protocol == "tcp" and s.local_port in own and s.remote)
               for s in sample.sockets)
