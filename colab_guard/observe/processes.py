"""Turn the live process table into one Snapshot per kernel.

One pass over the system's processes per tick serves every kernel: psutil's
``children(recursive=True)`` rescans /proc on every call, so walking each
kernel separately would cost one full scan per kernel.

Attribution survives a process leaving the kernel's tree (setsid, double
fork, ``nohup … &``): a process once seen under a kernel stays that kernel's
until it exits, and a process first seen already orphaned is claimed through
the marker variable that every guarded kernel carries in its environment.

A tick must stay cheap on a busy hub (fifty kernels of twenty processes each), so a
process is read in full only when it is new or has run since its last full read:

- The process table is one listing of /proc. Each entry carries the inode of the
  process's /proc directory, which stays the same while the process lives and is new
  for a new process, even under a reused pid: only new entries have their stat read.
- A watched process none of whose threads was scheduled since its last full read
  (/proc/PID/schedstat) cannot have changed its command line, executable, uid,
  threads or libraries: that read stands, refreshed all the same every minute or so.
- Sockets come from one read of /proc/net/{tcp,udp}{,6} per tick. A process's fds are
  walked at its first read, when a socket nobody is known to hold appears in those
  tables (only a process that ran can have opened it), and every ``libraries_refresh``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import psutil

from . import procfs
from .content import ContentScanner
from .gpu import GpuSample
from .model import Process, Snapshot
from .procfs import CLOCK_TICKS, InetTables

#: Set in every guarded kernel's environment; inherited by everything it starts.
KERNEL_ENV_MARKER = "COLAB_GUARD_KERNEL_ID"

ProcessKey = tuple[int, float]

#: Seconds after which a process that has not run is read in full all the same (each
#: process at its own point between half this and this, so they do not come at once).
QUIET_REFRESH = 120.0


class Entry:
    """A process in the table, as the pass knows it from one tick to the next."""

    __slots__ = ("key", "inode", "ppid", "start")

    def __init__(self, key: ProcessKey, inode: int, ppid: int, start: int):
        self.key = key  # (pid, create time as psutil gives it): the process's identity
        self.inode = inode  # of /proc/PID: unchanged while the same process lives
        self.ppid = ppid
        self.start = start  # clock ticks after boot

    @property
    def pid(self) -> int:
        return self.key[0]


@dataclass
class _Quiet:
    """The last full read of a process, and what shows whether it ran since."""

    sample: Process
    activity: tuple  # (thread id, its schedstat) of each thread
    refresh_at: float  # read in full then all the same
    markers_pending: bool  # its files were still being scanned at that read
    # It ran before that read, but its fds were not walked or its maps not read again then
    # (not due yet): done once they are due, even if it does not run again.
    fds_pending: bool
    maps_pending: bool
    vms: int  # its virtual size at that read

    @property
    def single(self) -> bool:
        """One thread: its schedstat alone shows whether the process ran."""
        return len(self.activity) == 1 and self.activity[0][0] == self.sample.pid


@dataclass
class _Fds:
    """What the last walk of a process's fds found."""

    when: float
    inodes: tuple[int, ...]  # of its sockets
    files: list[str]  # regular files open


@dataclass
class SamplerStats:
    """Counters an operator can watch (exported as metrics)."""

    ticks: int = 0
    processes_sampled: int = 0
    full_reads: int = 0  # processes read in full (new, or ran since their last read)
    vanished: int = 0  # exited between listing and reading
    denied: int = 0  # a /proc read refused
    errors: int = 0  # anything else, logged with its traceback
    claimed_by_environment: int = 0
    uid_changes: int = 0  # a process seen under one uid, then another (setuid)
    last_duration: float = 0.0
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
        self.stats = SamplerStats()
        # Executable content, scanned once per file in a background thread.
        self.content = content if content is not None else ContentScanner(log=self.log)
        self._table: dict[int, Entry] = {}  # the last tick's process table, by pid
        self._owner: dict[ProcessKey, str] = {}  # sticky attribution
        self._environ_checked: dict[ProcessKey, str | None] = {}
        self._environ_tries: dict[ProcessKey, int] = {}  # reads that found it empty
        self._cpu: dict[ProcessKey, tuple[float, float]] = {}  # cpu seconds, wall time
        self._libraries: dict[ProcessKey, tuple[float, int, list[str]]] = {}  # when, vms
        self._fds: dict[ProcessKey, _Fds] = {}
        self._uids: dict[ProcessKey, int] = {}
        self._quiet: dict[ProcessKey, _Quiet] = {}
        self._handed: dict[ProcessKey, Process] = {}  # the sample handed out last tick
        self._foreign_sockets: set[int] = set()  # socket inodes no watched process holds
        self._unaccounted: bool | None = None  # this tick's _sockets_unaccounted
        self._activity_now: dict[int, tuple | None] = {}  # this tick's full activity, by pid
        self._own_counts: bytes | None = None  # this thread's schedstat at the last tick
        self.counts_move = True  # whether schedstat shows who ran (checked every tick)

    # ------------------------------------------------------------------ public

    def sample(self, kernels: Mapping[str, int], gpu: GpuSample | None = None
               ) -> dict[str, Snapshot]:
        """Snapshot every kernel in ``kernels`` (kernel id -> kernel pid), with each
        process's GPU use from ``gpu`` (NVML's view of the same instant) when given."""
        started = time.perf_counter()
        now = time.time()
        self._check_counts_move()
        table = self._scan_table()
        owners = self._attribute(kernels, table)
        sockets = InetTables()  # read when first needed: a full read, or a known socket
        self._unaccounted = None
        kernel_pids = {pid: kid for kid, pid in kernels.items()}
        snapshots = {kid: Snapshot(kernel_id=kid, time=now) for kid in kernels}
        no_gpu = (0.0, 0.0)
        for pid, kid in owners.items():
            entry, is_kernel = table[pid], kernel_pids.get(pid) == kid
            use = gpu.processes.get(pid) if gpu is not None else None
            gpu_use = (use.percent, use.memory_mb) if use is not None else no_gpu
            proc = self._unchanged(entry, now, is_kernel, sockets, gpu_use) or \
                self._read_process(entry, now, is_kernel, sockets, gpu_use)
            if proc is not None:
                snapshots.setdefault(kid, Snapshot(kernel_id=kid, time=now)).processes.append(proc)
        if sockets.read:
            self._remember_foreign_sockets(sockets)
        self._forget_dead(table)
        self.stats.ticks += 1
        self.stats.processes_sampled += len(owners)
        self.stats.last_duration = time.perf_counter() - started
        return snapshots

    def owner_of(self, pid: int) -> str | None:
        """The kernel a live process is attributed to, if any."""
        return next((kid for (p, _), kid in self._owner.items() if p == pid), None)

    def tracked(self) -> int:
        """Processes the sampler keeps state for (each dict is keyed by live processes)."""
        return max(len(self._table), len(self._owner), len(self._environ_checked),
                   len(self._cpu), len(self._libraries), len(self._fds), len(self._uids))

    def claim(self, pid: int, kernel_id: str) -> None:
        """Attribute a process to a kernel (reported by the kernel hook)."""
        stat = _read_stat(pid)
        if stat is None:
            return
        known = self._table.get(pid)
        key = known.key if known is not None and known.start == stat.start \
            else (pid, procfs.create_time(stat.start, psutil.boot_time()))
        self._owner.setdefault(key, kernel_id)

    # ---------------------------------------------------------------- the pass

    def _check_counts_move(self) -> None:
        """Idle processes are told by unchanged scheduler counts, so check that the counts
        move at all: this thread ran since the last tick, so its own must have changed. If
        they do not (a kernel or sandbox that fakes them), every process is read in full."""
        time.sleep(1e-6)  # leave the CPU: a thread's counts are updated when it does
        try:
            counts = procfs.read_small("/proc/thread-self/schedstat")
        except OSError:
            counts = None
        moved = counts is not None and counts != self._own_counts and \
            counts.split()[2:3] != [b"0"]
        if self._own_counts is not None and self.counts_move and not moved:
            self._problem("counts", "the scheduler counts in /proc/PID/schedstat do not move; "
                          "every process is read in full every tick (more CPU)")
        self.counts_move = moved or self._own_counts is None
        self._own_counts = counts

    def _scan_table(self) -> dict[int, Entry]:
        """Every process on the system: one listing of /proc, and a read of the stat of
        each process not seen before (or whose parent has just exited: reparented)."""
        before, table = self._table, {}
        boot: list[float] = []  # read once per tick, and only when needed
        with os.scandir("/proc") as listing:
            for dirent in listing:
                if not dirent.name.isdigit():
                    continue
                pid = int(dirent.name)
                known = before.get(pid)
                if known is None or known.inode != dirent.inode():
                    known = self._identify(pid, dirent.inode(), known, boot)
                    if known is None:
                        continue  # gone already
                table[pid] = known
        for entry in table.values():
            parent = table.get(entry.ppid)
            if entry.ppid in before and (parent is None or parent.start > entry.start):
                stat = _read_stat(entry.pid)  # its parent exited: whose child is it now?
                if stat is not None:
                    entry.ppid = stat.ppid
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
            boot.append(psutil.boot_time())
        return Entry((pid, procfs.create_time(stat.start, boot[0])), inode, stat.ppid, stat.start)

    def _attribute(self, kernels: Mapping[str, int], table: dict[int, Entry]) -> dict[int, str]:
        """pid -> kernel id for every process that belongs to a kernel."""
        children: dict[int, list[int]] = defaultdict(list)
        for pid, entry in table.items():
            parent = table.get(entry.ppid)
            if parent is not None and parent.start <= entry.start:  # not a reused pid
                children[entry.ppid].append(pid)
        owners: dict[int, str] = {}
        roots = [(pid, kid) for kid, pid in kernels.items() if pid in table]
        for pid, entry in table.items():  # seen under a kernel before: still that kernel's
            kid = self._owner.get(entry.key)
            if kid in kernels:
                roots.append((pid, kid))
        _descend(roots, children, owners)
        # Orphans never seen in a tree: claimed by the marker in their environment.
        claimed = []
        for pid, entry in table.items():
            if pid not in owners:
                kid = self._owner_from_environment(entry, kernels)
                if kid is not None:
                    claimed.append((pid, kid))
        _descend(claimed, children, owners)
        for pid, kid in owners.items():
            self._owner.setdefault(table[pid].key, kid)
        return owners

    def _owner_from_environment(self, entry: Entry, kernels: Mapping[str, int]) -> str | None:
        """Claim an orphan by the marker its kernel left in its environment."""
        if not self.read_environ:
            return None
        if entry.key in self._environ_checked:
            return self._environ_checked[entry.key]
        kid, read = None, True
        try:
            proc = psutil.Process(entry.pid)
            if _same_process(proc, entry):
                environment = proc.environ()
                kid = environment.get(KERNEL_ENV_MARKER)
                read = bool(environment)  # empty in the middle of an exec: asked again
        except psutil.AccessDenied:
            pass  # another user's process: not one of ours to claim
        except psutil.Error:
            pass
        if not read:
            tries = self._environ_tries[entry.key] = self._environ_tries.get(entry.key, 0) + 1
            if tries < 3:
                return None
        if kid is not None and kid not in kernels:
            kid = None
        if kid is not None and not _same_user(proc, kernels[kid]):
            # Another user's process naming our kernel: never blamed on it, never acted on.
            self._problem("foreign-marker", "process %s names kernel %s in its environment but "
                          "runs as another user than the kernel; not attributed to it",
                          entry.pid, kid)
            kid = None
        if kid is not None:
            self.stats.claimed_by_environment += 1
        self._environ_checked[entry.key] = kid
        return kid

    def _sockets_unaccounted(self, sockets: InetTables) -> bool:
        """Whether a socket appeared that no watched process is known to hold and that
        is not known to be someone else's: then every process that ran has its fds walked
        (asked once per tick, at the first full read)."""
        if self._unaccounted is None:
            held = {inode for fds in self._fds.values() for inode in fds.inodes}
            self._unaccounted = not sockets.inodes <= held | self._foreign_sockets
        return self._unaccounted

    def _remember_foreign_sockets(self, sockets: InetTables) -> None:
        """After the walks: the sockets still unaccounted for are other processes' (the
        server's own connections, other users'); forgotten once closed."""
        held = {inode for fds in self._fds.values() for inode in fds.inodes}
        present = sockets.inodes
        self._foreign_sockets = (self._foreign_sockets & present) | (present - held)

    def _read_process(self, entry: Entry, now: float, is_kernel: bool, sockets: InetTables,
                      gpu_use: tuple[float, float]) -> Process | None:
        """Read one process in full."""
        pid, key = entry.pid, entry.key
        activity = self._activity_now.get(pid) or procfs.activity(pid, single=False)
        denied_before = self.stats.denied
        sample = Process(pid=pid, ppid=entry.ppid, create_time=key[1], is_kernel=is_kernel)
        try:
            stat = procfs.read_stat(pid)
            if stat.start != entry.start:
                raise ProcessLookupError(pid)  # exited, and its pid was taken again
            sample.cmdline = self._denied_ok(procfs.read_cmdline, [], "cmdline", pid)
            sample.exe = self._denied_ok(procfs.read_exe, "", "exe", pid)
            sample.uid = self._denied_ok(procfs.read_real_uid, None, "status", pid)
        except (FileNotFoundError, ProcessLookupError):
            self.stats.vanished += 1
            return None
        except PermissionError as err:
            self._denied("process", pid, err)
            return self._hand_out(key, sample)
        except (ValueError, IndexError) as err:  # a stat line that cannot be parsed
            self.stats.errors += 1
            self._problem("stat", "could not read /proc/%s/stat: %s", pid, err)
            return None
        self.stats.full_reads += 1
        sample.ppid, sample.threads, sample.rss = stat.ppid, stat.threads, stat.rss
        sample.name = procfs.full_name(stat.comm, sample.cmdline)
        sample.cpu_percent = self._cpu_percent(key, stat.cpu_ticks / CLOCK_TICKS, now)
        sample.gpu_percent, sample.gpu_memory_mb = gpu_use
        self._note_uid(key, sample.uid, pid)
        sample.libraries = self._mapped_libraries(key, pid, now, stat.vms)
        fds = self._walk_fds(key, pid, now, self._sockets_unaccounted(sockets))
        sample.open_files = fds.files
        maps_pending = self._libraries[key][1] != stat.vms if key in self._libraries else False
        sample.sockets = sockets.of(fds.inodes)
        # Asked first: if the files were not all scanned yet, the markers below may miss
        # some (the scan runs in the background), and are looked up again later.
        settled = self.content.settled(pid, sample.exe, sample.cmdline, key)
        sample.exe_markers = self.content.process_markers(pid, sample.exe, sample.cmdline, key)
        if activity is not None and self.stats.denied == denied_before:  # a complete read
            # Spread over the interval by pid, so the refreshes of many processes started
            # together do not all fall on one tick.
            refresh_at = now + QUIET_REFRESH * (8 + pid % 8) / 16
            self._quiet[key] = _Quiet(sample, activity, refresh_at, not settled,
                                      fds_pending=fds.when < now, maps_pending=maps_pending,
                                      vms=stat.vms)
        return self._hand_out(key, sample)

    def _unchanged(self, entry: Entry, now: float, is_kernel: bool, sockets: InetTables,
                   gpu_use: tuple[float, float]) -> Process | None:
        """This tick's sample of a process none of whose threads has been scheduled since its
        last full read, or None if it ran (or is due its refresh). Not having run, it cannot
        have changed its command line, executable, uid, threads or libraries: the object
        handed out last tick is handed out again unless its sockets' states, its markers
        (scanned in the background) or its GPU use differ."""
        quiet = self._quiet.get(entry.key)
        if quiet is None or now >= quiet.refresh_at or not self.counts_move:
            return None
        single = quiet.single
        activity = procfs.activity(entry.pid, single)
        if not single:
            self._activity_now[entry.pid] = activity  # complete: the next read's baseline
        if activity != quiet.activity:
            return None
        key = entry.key
        self._cpu[key] = (self._cpu[key][0], now)  # no CPU used since
        if quiet.markers_pending or quiet.fds_pending or quiet.maps_pending:
            self._catch_up(entry, quiet, now)
        fds = self._fds.get(key)
        found = sockets.of(fds.inodes) if fds is not None and fds.inodes else []
        base, last = quiet.sample, self._handed.get(key)
        if last is not None and last.cpu_percent == 0.0 and last.is_kernel == is_kernel \
                and last.ppid == entry.ppid and last.sockets == found \
                and last.exe_markers is base.exe_markers and last.libraries is base.libraries \
                and last.open_files is base.open_files \
                and (last.gpu_percent, last.gpu_memory_mb) == gpu_use:
            return last
        return self._hand_out(key, replace(
            base, ppid=entry.ppid, cpu_percent=0.0, is_kernel=is_kernel, sockets=found,
            gpu_percent=gpu_use[0], gpu_memory_mb=gpu_use[1]))

    def _catch_up(self, entry: Entry, quiet: _Quiet, now: float) -> None:
        """Finish what the last full read of a now idle process left for later: markers
        whose scan (in the background) had not ended, a renamed server waiting for
        connections recognised all the same; fds and maps once due (a socket it was handed,
        a library it mapped just before it went quiet)."""
        last = quiet.sample
        if quiet.markers_pending and self.content.settled(last.pid, last.exe, last.cmdline,
                                                          entry.key):
            markers = self.content.process_markers(last.pid, last.exe, last.cmdline, entry.key)
            if markers != last.exe_markers:  # the same: the same sample is handed on
                last = replace(last, exe_markers=markers)
            quiet.markers_pending = False
        if quiet.fds_pending and now - self._fds[entry.key].when >= self.libraries_refresh:
            last = replace(last, open_files=self._walk_fds(entry.key, entry.pid, now, True).files)
            quiet.fds_pending = False
        if quiet.maps_pending and now - self._libraries[entry.key][0] >= self.libraries_refresh:
            last = replace(last, libraries=self._mapped_libraries(entry.key, entry.pid, now,
                                                                  quiet.vms))
            quiet.maps_pending = False
        quiet.sample = last

    def _hand_out(self, key: ProcessKey, sample: Process) -> Process:
        self._handed[key] = sample
        return sample

    def _walk_fds(self, key: ProcessKey, pid: int, now: float, walk: bool,
                  limit: int = 256) -> _Fds:
        """The process's sockets and the regular files it has open (a model file, a
        .torrent; at most ``limit``): walked when asked, when never walked, and at the
        libraries' pace; otherwise the last walk's."""
        last = self._fds.get(key)
        if last is not None and not walk and now - last.when < self.libraries_refresh:
            return last
        inodes: list[int] = []
        files: list[str] = []
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue  # closed meanwhile
                if target.startswith("socket:["):
                    inodes.append(int(target[8:-1]))
                elif target.startswith("/") and not target.startswith(("/dev/", "/proc/")) \
                        and len(files) < limit and target not in files:
                    files.append(target)
        except FileNotFoundError:
            pass  # gone, or a zombie: nothing open
        except PermissionError as err:
            self._denied("fd", pid, err)
        except OSError as err:
            self._problem("fd", "could not list /proc/%s/fd: %s", pid, err)
        self._fds[key] = _Fds(now, tuple(inodes), files)
        return self._fds[key]

    def _note_uid(self, key: ProcessKey, uid: int | None, pid: int) -> None:
        """A process that changes its uid (setuid) stays its kernel's; said once."""
        before = self._uids.get(key)
        if uid is not None:
            self._uids[key] = uid
        if before is not None and uid is not None and uid != before:
            self.stats.uid_changes += 1
            self._problem("uid", "process %s changed its uid from %s to %s; it stays attributed "
                          "to its kernel", pid, before, uid)

    def _cpu_percent(self, key: ProcessKey, cpu_seconds: float, now: float) -> float:
        before = self._cpu.get(key)
        self._cpu[key] = (cpu_seconds, now)
        if before is None:
            elapsed = now - key[1]  # first sight: average since the process started
            used = cpu_seconds
        else:
            elapsed = now - before[1]
            used = cpu_seconds - before[0]
        return round(100.0 * used / elapsed, 1) if elapsed > 0 else 0.0

    def _mapped_libraries(self, key: ProcessKey, pid: int, now: float, vms: int) -> list[str]:
        """Shared objects the process has mapped (libtorrent, a RandomX module...).

        /proc/PID/maps can be long: it is read again at most every ``libraries_refresh``
        seconds, and then only if the process's virtual size ``vms`` changed since (mapping
        a library grows it), or at the quiet refresh.
        """
        cached = self._libraries.get(key)
        if cached is not None:
            age = now - cached[0]
            if age < self.libraries_refresh or (vms == cached[1] and age < QUIET_REFRESH / 2):
                return cached[2]
        libraries: list[str] = []
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                seen = set()
                for line in maps:
                    path = line.rstrip("\n").partition("/")[2]
                    if path and ".so" in path and path not in seen:
                        seen.add(path)
                        libraries.append("/" + path)
        except FileNotFoundError:
            return []
        except PermissionError as err:
            self._denied("maps", pid, err)
        except OSError as err:
            self._problem("maps", "could not read /proc/%s/maps: %s", pid, err)
        self._libraries[key] = (now, vms, libraries)
        return libraries

    # ------------------------------------------------------------ bookkeeping

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
        for store in (self._owner, self._environ_checked, self._environ_tries, self._cpu,
                      self._libraries, self._fds, self._uids, self._quiet, self._handed):
            if len(store) > len(alive) or not store.keys() <= alive:
                for key in store.keys() - alive:
                    del store[key]
        self.content.forget(alive)  # what it read of their memory


def _descend(roots, children: dict[int, list[int]], owners: dict[int, str]) -> None:
    for root, kid in roots:
        stack = [root]
        while stack:
            pid = stack.pop()
            if pid in owners:
                continue
            owners[pid] = kid
            stack.extend(children.get(pid, ()))


def _read_stat(pid: int) -> procfs.Stat | None:
    """/proc/PID/stat, or None if the process is gone."""
    try:
        return procfs.read_stat(pid)
    except (OSError, ValueError, IndexError):
        return None


def _same_process(proc: psutil.Process, entry: Entry) -> bool:
    """Whether a psutil handle is the process of this entry (its pid not taken again)."""
    try:
        return abs(proc.create_time() - entry.key[1]) < 0.01
    except psutil.Error:
        return False


def _same_user(proc: psutil.Process, kernel_pid: int) -> bool:
    """Whether a process runs as the same (real) user as the kernel."""
    try:
        return proc.uids().real == psutil.Process(kernel_pid).uids().real
    except psutil.Error:
        return False


def kernel_environment(kernel_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a guarded kernel is started with."""
    env = dict(os.environ if base is None else base)
    env[KERNEL_ENV_MARKER] = kernel_id
    return env
