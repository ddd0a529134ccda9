"""Turn the live process table into one Snapshot per kernel.

One pass over the system's processes per tick serves every kernel: psutil's
``children(recursive=True)`` rescans /proc on every call, so walking each
kernel separately would cost one full scan per kernel.

Attribution survives a process leaving the kernel's tree (setsid, double
fork, ``nohup … &``): a process once seen under a kernel stays that kernel's
until it exits, and a process first seen already orphaned is claimed through
the marker variable that every guarded kernel carries in its environment.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections import defaultdict, namedtuple
from collections.abc import Mapping
from dataclasses import dataclass, field

import psutil

from .content import ContentScanner
from .gpu import GpuSample
from .model import Process, Snapshot, Socket, normalise_ip

#: Set in every guarded kernel's environment; inherited by everything it starts.
KERNEL_ENV_MARKER = "COLAB_GUARD_KERNEL_ID"

ProcessKey = tuple[int, float]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: What one read of /proc/PID/stat says (ticks: user + system CPU, in clock ticks).
Stat = namedtuple("Stat", "state ppid comm ticks threads start")
#: Seconds after which a process that has not run is read in full all the same.
QUIET_REFRESH = 30.0


@dataclass
class SamplerStats:
    """Counters an operator can watch (exported as metrics)."""

    ticks: int = 0
    processes_sampled: int = 0
    vanished: int = 0  # exited between listing and reading
    denied: int = 0  # a /proc read refused
    errors: int = 0  # anything else, logged with its traceback
    claimed_by_environment: int = 0
    uid_changes: int = 0  # a process seen under one uid, then another (setuid)
    last_duration: float = 0.0
    problems_logged: set[str] = field(default_factory=set)


class ProcessSampler:
    """Samples the process trees of many kernels in one pass.

    Not thread-safe: the monitor calls it from a single worker thread.
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
        self._owner: dict[ProcessKey, str] = {}  # sticky attribution
        self._environ_checked: dict[ProcessKey, str | None] = {}
        self._cpu: dict[ProcessKey, tuple[float, float]] = {}  # cpu seconds, wall time
        self._libraries: dict[ProcessKey, tuple[float, list[str]]] = {}
        self._open_files: dict[ProcessKey, tuple[float, list[str]]] = {}
        self._uids: dict[ProcessKey, int] = {}
        self._stat: dict[int, Stat] = {}  # this tick's /proc/PID/stat, by pid
        self._activity_now: dict[int, tuple | None] = {}  # this tick's _activity, by pid
        self._starts: dict[int, tuple[psutil.Process, int]] = {}  # pid -> object, start ticks
        # The last full read of a process, what showed whether it ran since, and when.
        # last full read, its run counts, when, and whether its file markers may be incomplete
        self._quiet: dict[ProcessKey, tuple[Process, tuple, float, bool]] = {}

    # ------------------------------------------------------------------ public

    def sample(self, kernels: Mapping[str, int], gpu: GpuSample | None = None
               ) -> dict[str, Snapshot]:
        """Snapshot every kernel in ``kernels`` (kernel id -> kernel pid), with each
        process's GPU use from ``gpu`` (NVML's view of the same instant) when given."""
        started = time.perf_counter()
        now = time.time()
        table, children = self._scan_table()
        owners = self._attribute(kernels, table, children)
        idle = {pid: last for pid in owners if (last := self._still_holds(table[pid], now))}
        busy = {pid: kid for pid, kid in owners.items() if pid not in idle}
        sockets = self._sockets_by_pid(busy, table) if busy else {}
        kernel_pids = {pid: kid for kid, pid in kernels.items()}
        snapshots = {kid: Snapshot(kernel_id=kid, time=now) for kid in kernels}
        for pid, kid in owners.items():
            is_kernel = kernel_pids.get(pid) == kid
            if pid in idle:
                proc = self._unchanged(idle[pid], now, is_kernel)
            else:
                proc = self._read_process(table[pid], now, is_kernel=is_kernel)
                if proc is None:
                    continue
                proc.sockets = sockets.get(pid, [])
            if gpu is not None and pid in gpu.processes:
                proc.gpu_percent = gpu.processes[pid].percent
                proc.gpu_memory_mb = gpu.processes[pid].memory_mb
            snapshots.setdefault(kid, Snapshot(kernel_id=kid, time=now)).processes.append(proc)
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
        return max(len(self._owner), len(self._environ_checked), len(self._cpu),
                   len(self._libraries), len(self._open_files), len(self._uids))

    def claim(self, pid: int, kernel_id: str) -> None:
        """Attribute a process to a kernel (reported by the kernel hook)."""
        try:
            key = (pid, psutil.Process(pid).create_time())
        except psutil.Error:
            return
        self._owner.setdefault(key, kernel_id)

    # ---------------------------------------------------------------- the pass

    def _scan_table(self) -> tuple[dict[int, psutil.Process], dict[int, list[int]]]:
        table: dict[int, psutil.Process] = {}
        children: dict[int, list[int]] = defaultdict(list)
        stats: dict[int, Stat] = {}
        starts: dict[int, tuple[psutil.Process, int]] = {}
        # process_iter keeps its Process objects between calls, so create_time (the
        # identity check) is read once per process; the parent comes from one read of
        # /proc/PID/stat (psutil's ppid() reads it twice more to check the pid's identity).
        for proc in psutil.process_iter():
            stat = _read_stat(proc.pid)
            if stat is None:
                continue  # gone already
            known = self._starts.get(proc.pid)
            if known is not None and known[0] is proc and known[1] != stat.start:
                try:  # the pid was reused under psutil's cached object
                    proc = psutil.Process(proc.pid)
                except psutil.Error:
                    continue
            elif known is not None and known[0] is not proc:
                known = None
            starts[proc.pid] = known or (proc, stat.start)
            stats[proc.pid] = stat
            table[proc.pid] = proc
            children[stat.ppid].append(proc.pid)
        self._stat, self._starts = stats, starts
        self._activity_now = {}
        return table, children

    def _attribute(
        self,
        kernels: Mapping[str, int],
        table: dict[int, psutil.Process],
        children: dict[int, list[int]],
    ) -> dict[int, str]:
        """pid -> kernel id for every process that belongs to a kernel."""
        owners: dict[int, str] = {}
        roots = [(pid, kid) for kid, pid in kernels.items() if pid in table]
        for pid, proc in table.items():  # seen under a kernel before: still that kernel's
            kid = self._owner.get(_key(proc) or (pid, -1.0))
            if kid in kernels:
                roots.append((pid, kid))
        self._descend(roots, table, children, owners)
        # Orphans never seen in a tree: claimed by the marker in their environment.
        claimed = []
        for pid, proc in table.items():
            key = _key(proc)
            if pid not in owners and key is not None:
                kid = self._owner_from_environment(key, proc, kernels)
                if kid is not None:
                    claimed.append((pid, kid))
        self._descend(claimed, table, children, owners)
        for pid, kid in owners.items():
            key = _key(table[pid])
            if key is not None:
                self._owner.setdefault(key, kid)
        return owners

    @staticmethod
    def _descend(roots, table, children, owners: dict[int, str]) -> None:
        for root, kid in roots:
            stack = [root]
            while stack:
                pid = stack.pop()
                if pid in owners or pid not in table:
                    continue
                owners[pid] = kid
                stack.extend(children.get(pid, ()))

    def _owner_from_environment(
        self, key: ProcessKey, proc: psutil.Process, kernels: Mapping[str, int]
    ) -> str | None:
        """Claim an orphan by the marker its kernel left in its environment."""
        if not self.read_environ:
            return None
        if key in self._environ_checked:
            return self._environ_checked[key]
        kid = None
        try:
            kid = proc.environ().get(KERNEL_ENV_MARKER)
        except psutil.AccessDenied:
            pass  # another user's process: not one of ours to claim
        except psutil.Error:
            pass
        if kid is not None and kid not in kernels:
            kid = None
        if kid is not None and not _same_user(proc, kernels[kid]):
            # Another user's process naming our kernel: never blamed on it, never acted on.
            self._problem("foreign-marker", "process %s names kernel %s in its environment but "
                          "runs as another user than the kernel; not attributed to it",
                          proc.pid, kid)
            kid = None
        if kid is not None:
            self.stats.claimed_by_environment += 1
        self._environ_checked[key] = kid
        return kid

    def _sockets_by_pid(self, owners: dict[int, str], table: dict[int, psutil.Process]
                        ) -> dict[int, list[Socket]]:
        """Inet sockets of the processes we watch: the socket inodes among each one's
        fds, then one read of /proc/net/{tcp,udp}{,6} for all of them. (psutil's
        per-process call reads every /proc/net table once per process, its
        system-wide one lists the fds of every process on the system.)"""
        inodes: dict[int, int] = {}  # socket inode -> pid
        for pid in owners:
            try:
                for inode in _socket_inodes(pid):
                    inodes[inode] = pid
            except PermissionError as err:
                self._denied("sockets", pid, err)
            except OSError:
                pass  # gone, or a zombie: no sockets
        found: dict[int, list[Socket]] = {pid: [] for pid in owners}
        if inodes:
            for inode, sock in _inet_sockets(set(inodes)):
                found[inodes[inode]].append(sock)
        return found

    def _read_process(self, proc: psutil.Process, now: float, is_kernel: bool) -> Process | None:
        """Read one process; names and command lines are read anew every tick."""
        key = _key(proc)
        if key is None:
            return None
        activity = self._activity_now[proc.pid] if proc.pid in self._activity_now \
            else _activity(proc.pid, self._stat.get(proc.pid))
        denied_before = self.stats.denied
        sample = Process(pid=proc.pid, create_time=key[1], is_kernel=is_kernel)
        try:
            with proc.oneshot():
                sample.ppid = proc.ppid()
                sample.name = proc.name()
                sample.cmdline = self._denied_ok(proc.cmdline, [], "cmdline", proc.pid)
                sample.exe = self._denied_ok(proc.exe, "", "exe", proc.pid)
                times = proc.cpu_times()
                sample.rss = proc.memory_info().rss
                sample.threads = proc.num_threads()
                sample.uid = proc.uids().real
        except psutil.ZombieProcess:
            return sample  # exited, not yet reaped: nothing more to read
        except psutil.NoSuchProcess:
            self.stats.vanished += 1
            return None
        except psutil.AccessDenied as err:
            self._denied("process", proc.pid, err)
            return sample
        sample.cpu_percent = self._cpu_percent(key, times.user + times.system, now)
        self._note_uid(key, sample.uid, proc.pid)
        sample.libraries = self._mapped_libraries(key, proc.pid, now)
        sample.open_files = self._files_open(key, proc.pid, now)
        # Asked first: if the files were not all scanned yet, the markers below may miss
        # some (the scan runs in the background), and are looked up again later.
        settled = self.content.settled(proc.pid, sample.exe, sample.cmdline)
        sample.exe_markers = self.content.process_markers(proc.pid, sample.exe, sample.cmdline)
        if activity is not None and self.stats.denied == denied_before:  # a complete read
            self._quiet[key] = (sample, activity, now, not settled)
        return sample

    def _still_holds(self, proc: psutil.Process, now: float) -> Process | None:
        """The last full read of a process none of whose threads has run since (same
        name, CPU time, threads, and times each thread was scheduled): it cannot have
        changed its command line, executable, uid, libraries or sockets. Read in full
        at once when it runs, and every QUIET_REFRESH seconds all the same."""
        key = _key(proc)
        quiet = self._quiet.get(key) if key is not None else None
        # Spread over the interval by pid, so the refreshes of many processes started
        # together do not all fall on one tick.
        if quiet is None or now - quiet[2] >= QUIET_REFRESH * (8 + proc.pid % 8) / 16:
            return None
        activity = self._activity_now[proc.pid] = _activity(proc.pid, self._stat.get(proc.pid))
        return quiet[0] if activity is not None and activity == quiet[1] else None

    def _unchanged(self, last: Process, now: float, is_kernel: bool) -> Process:
        """This tick's sample of a process whose last full read still holds."""
        stat = self._stat[last.pid]
        sample = Process(pid=last.pid, ppid=stat.ppid, name=last.name, exe=last.exe,
                         cmdline=last.cmdline, create_time=last.create_time, uid=last.uid,
                         rss=last.rss, threads=stat.threads,
                         is_kernel=is_kernel, libraries=last.libraries, sockets=last.sockets,
                         open_files=last.open_files)
        sample.exe_markers = self._settled_markers(last)
        sample.cpu_percent = self._cpu_percent(last.key, stat.ticks / CLOCK_TICKS, now)
        return sample

    def _settled_markers(self, last: Process) -> list[str]:
        """Markers of an idle process. If its file was still being scanned at its last full
        read (scans run in the background), look again (a cache lookup) until the scan is
        done: a renamed server waiting for connections is recognised all the same."""
        entry = self._quiet[last.key]
        if not entry[3]:
            return last.exe_markers
        if self.content.settled(last.pid, last.exe, last.cmdline):
            last.exe_markers = self.content.process_markers(last.pid, last.exe, last.cmdline)
            self._quiet[last.key] = (*entry[:3], False)
        return last.exe_markers

    def _files_open(self, key: ProcessKey, pid: int, now: float, limit: int = 256) -> list[str]:
        """Regular files the process has open (a model file, a .torrent), read at the
        libraries' pace; at most ``limit`` of them."""
        cached = self._open_files.get(key)
        if cached is not None and now - cached[0] < self.libraries_refresh:
            return cached[1]
        found: list[str] = []
        try:
            for fd in os.listdir(f"/proc/{pid}/fd")[:4 * limit]:
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue  # closed meanwhile
                if target.startswith("/") and not target.startswith(("/dev/", "/proc/")) \
                        and target not in found:
                    found.append(target)
                    if len(found) >= limit:
                        break
        except FileNotFoundError:
            return []
        except PermissionError as err:
            self._denied("fd", pid, err)
        except OSError as err:
            self._problem("fd", "could not list /proc/%s/fd: %s", pid, err)
        self._open_files[key] = (now, found)
        return found

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

    def _mapped_libraries(self, key: ProcessKey, pid: int, now: float) -> list[str]:
        """Shared objects the process has mapped (libtorrent, a RandomX module...).

        /proc/PID/maps is read at most every ``libraries_refresh`` seconds per
        process: libraries appear rarely, and the file can be long.
        """
        cached = self._libraries.get(key)
        if cached is not None and now - cached[0] < self.libraries_refresh:
            return cached[1]
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
        self._libraries[key] = (now, libraries)
        return libraries

    # ------------------------------------------------------------ bookkeeping

    def _denied_ok(self, read, default, what: str, pid: int):
        try:
            return read()
        except psutil.AccessDenied as err:
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

    def _forget_dead(self, table: dict[int, psutil.Process]) -> None:
        """Drop state of processes that exited, so memory stays bounded."""
        alive = set()
        for proc in table.values():
            key = _key(proc)
            if key is not None:
                alive.add(key)
        for store in (self._owner, self._environ_checked, self._cpu, self._libraries,
                      self._open_files, self._uids, self._quiet):
            for key in [k for k in store if k not in alive]:
                del store[key]


def _read_small(path: str) -> bytes:
    """A small /proc file in one read (without a file object: read for every process,
    every tick)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _read_stat(pid: int) -> Stat | None:
    """/proc/PID/stat, or None if the process is gone."""
    try:
        data = _read_small(f"/proc/{pid}/stat")
        name_end = data.rindex(b")")
        fields = data[name_end + 2:].split()
        comm = data[data.index(b"(") + 1:name_end]
        return Stat(fields[0], int(fields[1]), comm, int(fields[11]) + int(fields[12]),
                    int(fields[17]), int(fields[19]))
    except (OSError, ValueError, IndexError):
        return None


def _activity(pid: int, stat: Stat | None) -> tuple | None:
    """What changes whenever the process runs: its name, CPU time, threads, and how many
    times each of its threads was scheduled. None where /proc/PID/schedstat is missing."""
    if stat is None or stat.state == b"Z":
        return None
    try:
        tasks = [str(pid)] if stat.threads == 1 else os.listdir(f"/proc/{pid}/task")
        scheduled = 0
        for task in tasks:
            scheduled += int(_read_small(f"/proc/{pid}/task/{task}/schedstat").split()[2])
    except (OSError, ValueError, IndexError):
        return None  # gone, or no schedstat: read in full
    return (stat.comm, stat.ticks, stat.threads, scheduled)


def _same_user(proc: psutil.Process, kernel_pid: int) -> bool:
    """Whether a process runs as the same (real) user as the kernel."""
    try:
        return proc.uids().real == psutil.Process(kernel_pid).uids().real
    except psutil.Error:
        return False


def _key(proc: psutil.Process) -> ProcessKey | None:
    try:
        return (proc.pid, proc.create_time())
    except psutil.Error:
        return None


#: /proc/net tables and their protocol; TCP states by their hex code there.
_INET_TABLES = (("tcp", "/proc/net/tcp"), ("tcp", "/proc/net/tcp6"),
                ("udp", "/proc/net/udp"), ("udp", "/proc/net/udp6"))
_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
               "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
               "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING", "0C": "NEW_SYN_RECV"}


def _socket_inodes(pid: int) -> list[int]:
    """Inodes of the sockets among a process's open fds."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            found.append(int(target[8:-1]))
    return found


def _inet_sockets(wanted: set[int]):
    """(inode, Socket) for each inet socket in ``wanted``, from one read of each table."""
    for protocol, path in _INET_TABLES:
        try:
            with open(path, encoding="ascii") as table:
                lines = table.readlines()[1:]
        except OSError:
            continue  # no IPv6 here
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or int(fields[9]) not in wanted:
                continue
            local_ip, local_port = _address(fields[1])
            remote_ip, remote_port = _address(fields[2])
            connected = remote_port != 0 or remote_ip not in ("0.0.0.0", "::")
            status = _TCP_STATES.get(fields[3], fields[3]) if protocol == "tcp" else "NONE"
            yield int(fields[9]), Socket(
                protocol=protocol, local_ip=normalise_ip(local_ip), local_port=local_port,
                remote_ip=normalise_ip(remote_ip) if connected else None,
                remote_port=remote_port if connected else None, status=status)


def _address(text: str) -> tuple[str, int]:
    """'0100007F:1F90' -> ('127.0.0.1', 8080): hex, in 32-bit words of host byte order."""
    ip, port = text.split(":")
    raw = bytes.fromhex(ip)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


def kernel_environment(kernel_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a guarded kernel is started with."""
    env = dict(os.environ if base is None else base)
    env[KERNEL_ENV_MARKER] = kernel_id
    return env
