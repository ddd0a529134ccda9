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
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import psutil

from .content import ContentScanner
from .gpu import GpuSample
from .model import Process, Snapshot, Socket, normalise_ip

#: Set in every guarded kernel's environment; inherited by everything it starts.
KERNEL_ENV_MARKER = "COLAB_GUARD_KERNEL_ID"

ProcessKey = tuple[int, float]


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

    # ------------------------------------------------------------------ public

    def sample(self, kernels: Mapping[str, int], gpu: GpuSample | None = None
               ) -> dict[str, Snapshot]:
        """Snapshot every kernel in ``kernels`` (kernel id -> kernel pid), with each
        process's GPU use from ``gpu`` (NVML's view of the same instant) when given."""
        started = time.perf_counter()
        now = time.time()
        table, children = self._scan_table()
        owners = self._attribute(kernels, table, children)
        sockets = self._sockets_by_pid(owners, table) if owners else {}
        kernel_pids = {pid: kid for kid, pid in kernels.items()}
        snapshots = {kid: Snapshot(kernel_id=kid, time=now) for kid in kernels}
        for pid, kid in owners.items():
            proc = self._read_process(table[pid], now, is_kernel=kernel_pids.get(pid) == kid)
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
        # process_iter keeps its Process objects between calls, so create_time
        # (the identity check) is read once per process, not once per tick.
        for proc in psutil.process_iter():
            try:
                ppid = proc.ppid()
            except psutil.Error:
                continue  # gone already
            table[proc.pid] = proc
            children[ppid].append(proc.pid)
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
        """Inet sockets of the processes we watch.

        psutil reads a process's sockets by listing its fds and, if any is a
        socket, parsing /proc/net/*. The system-wide call lists the fds of every
        process but parses /proc/net once: cheaper when we watch most of the
        system (a busy hub), dearer when we watch a few processes among many.
        """
        if len(owners) * 4 >= len(table):
            return self._sockets_system_wide(owners)
        found: dict[int, list[Socket]] = {}
        for pid in owners:
            try:
                found[pid] = [_socket(c) for c in table[pid].net_connections(kind="inet")]
            except psutil.AccessDenied as err:
                self._denied("sockets", pid, err)
            except psutil.Error:
                pass  # gone, or a zombie: no sockets
        return found

    def _sockets_system_wide(self, owners: dict[int, str]) -> dict[int, list[Socket]]:
        found: dict[int, list[Socket]] = defaultdict(list)
        try:
            connections = psutil.net_connections(kind="inet")
        except psutil.Error as err:
            self._problem("sockets", "could not list sockets: %s", err)
            return found
        for conn in connections:
            if conn.pid in owners:
                found[conn.pid].append(_socket(conn))
        return found

    def _read_process(self, proc: psutil.Process, now: float, is_kernel: bool) -> Process | None:
        """Read one process; names and command lines are read anew every tick."""
        key = _key(proc)
        if key is None:
            return None
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
        sample.exe_markers = self.content.process_markers(proc.pid, sample.exe, sample.cmdline)
        return sample

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
                      self._open_files, self._uids):
            for key in [k for k in store if k not in alive]:
                del store[key]


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


def _socket(conn) -> Socket:
    return Socket(
        protocol="tcp" if conn.type == socket.SOCK_STREAM else "udp",
        local_ip=normalise_ip(conn.laddr.ip) if conn.laddr else "",
        local_port=conn.laddr.port if conn.laddr else 0,
        remote_ip=normalise_ip(conn.raddr.ip) if conn.raddr else None,
        remote_port=conn.raddr.port if conn.raddr else None,
        status=conn.status,
    )


def kernel_environment(kernel_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a guarded kernel is started with."""
    env = dict(os.environ if base is None else base)
    env[KERNEL_ENV_MARKER] = kernel_id
    return env
