"""The kernel's process events (netlink proc connector): fork, exec and exit, as they happen.

No compiler, no headers, no eBPF: a netlink socket (``NETLINK_CONNECTOR``), joined to the
``CN_IDX_PROC`` group, told ``PROC_CN_MCAST_LISTEN``, and each ``struct proc_event`` read
with ``struct``. Needs CAP_NET_ADMIN (root has it). Each exec of a kernel's process is
checked at once on its name, executable and command line (at_exec.py), and brings a look
(a pass) ``LOOK_AGAIN`` s later and once more after that, instead of at the next
``sample_interval``; each fork of a process attributed to a kernel gives the child to that
kernel at once, so a double fork whose middle process exits at once, or an ``env -i`` exec
that drops the kernel's marker, cannot slip out between two scans. Where the connector is unavailable (no privilege, a container
without it), the watcher says so once and polls /proc every ``sample_interval``. The
connector reports only to sockets in the host's network namespace (a Kubernetes pod needs
``hostNetwork``): elsewhere the socket opens and stays silent, so the watcher first checks
that the events of a program it starts itself arrive (``probe``).

Layout (native byte order, linux/netlink.h, linux/connector.h, linux/cn_proc.h):
``nlmsghdr`` (16 bytes) + ``cn_msg`` (20) + ``proc_event``: what u32, cpu u32,
timestamp u64, then the event's data.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator, Mapping


from ..detect.commands import reads_script
from ..observe import procfs
from ..observe.attribution import unknown_kernel, unknown_kernel_uid
from ..observe.model import Process
from ..record import metrics

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2

PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_UID = 0x00000004
PROC_EVENT_EXIT = 0x80000000

NLMSGHDR = struct.Struct("=IHHII")
CN_MSG = struct.Struct("=IIIIHH")
EVENT_HEAD = struct.Struct("=IIQ")
FORK = struct.Struct("=iiii")  # parent pid, parent tgid, child pid, child tgid
EXEC = struct.Struct("=ii")  # pid, tgid
EXIT = struct.Struct("=iiII")  # pid, tgid, exit code, exit signal
UID = struct.Struct("=iiII")  # pid, tgid, real uid, effective uid
HEAD = NLMSGHDR.size + CN_MSG.size

#: lineage kept for processes forked from a kernel's tree, until their exit
MAX_LINEAGE = 100_000
#: seconds: two looks closer than this after an exec are one
MIN_GAP = 0.05
#: seconds after an exec when the monitor looks (and once more as long again after that):
#: what a program does in its first moments (its pool connection, its file's content once
#: scanned) is checked then, not at the next periodic tick up to ``sample_interval`` later
LOOK_AGAIN = 0.3
#: Seconds of one batch of execs spent checking programs whose script or wrapped command the
#: rules read (a shell's, a wrapper's: up to commands.MAX_WORK of work each, 30 ms), after all
#: the others (a miner's name costs nothing): a storm of shells with hostile scripts cost
#: 300 ms an exec and made a named miner's exec wait behind them (session 21). The rest are
#: left to the passes after the execs (``_look_soon``), as every program is.
SCRIPTS_AT_EXEC_SECONDS = 0.1


def listen_message(op: int = PROC_CN_MCAST_LISTEN) -> bytes:
    payload = struct.pack("=I", op)
    cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0)
    return NLMSGHDR.pack(NLMSGHDR.size + len(cn) + len(payload), NLMSG_DONE, 0, 0,
                         os.getpid()) + cn + payload


def parse(datagram: bytes) -> Iterator[tuple]:
    """('fork', parent tgid, child pid, child tgid) / ('exec', tgid) / ('exit', pid, tgid)
    / ('uid', tgid) for each message in a datagram; other events are skipped."""
    offset = 0
    while offset + HEAD + EVENT_HEAD.size <= len(datagram):
        length = NLMSGHDR.unpack_from(datagram, offset)[0]
        if length < HEAD or offset + length > len(datagram):
            return
        at = offset + HEAD
        what = EVENT_HEAD.unpack_from(datagram, at)[0]
        data = at + EVENT_HEAD.size
        if what == PROC_EVENT_FORK and data + FORK.size <= offset + length:
            _, parent_tgid, child_pid, child_tgid = FORK.unpack_from(datagram, data)
            yield ("fork", parent_tgid, child_pid, child_tgid)
        elif what == PROC_EVENT_EXEC and data + EXEC.size <= offset + length:
            yield ("exec", EXEC.unpack_from(datagram, data)[1])
        elif what == PROC_EVENT_EXIT and data + EXIT.size <= offset + length:
            pid, tgid, _, _ = EXIT.unpack_from(datagram, data)
            yield ("exit", pid, tgid)
        elif what == PROC_EVENT_UID and data + UID.size <= offset + length:
            yield ("uid", UID.unpack_from(datagram, data)[1])
        offset += (length + 3) & ~3  # NLMSG_ALIGN


def open_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    try:
        sock.bind((0, CN_IDX_PROC))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.send(listen_message())
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ProcEvents:
    """Reads process events on the event loop; hands lineage to the sampler's thread."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, monitor,
                 log: logging.Logger):
        self.sock, self.loop, self.monitor, self.log = sock, loop, monitor, log
        self.events = 0
        self.overruns = 0
        self.left_to_pass = 0  # programs not checked at their exec (_check_all_at_exec)
        self._lineage: dict[int, str] = {}  # pid -> kernel, for forks not yet seen by a scan
        self._named: dict[int, float] = {}  # pid -> when it exec'd, for the looks after
        self._look: asyncio.TimerHandle | None = None  # the next look after execs
        self._probing: set[int] | None = None  # pids of the events read while probing
        loop.add_reader(sock.fileno(), self._readable)
        monitor.kernels.events_live = True

    @classmethod
    def start(cls, loop, monitor, log: logging.Logger) -> ProcEvents | None:
        try:
            sock = open_socket()
        except OSError as err:
            log.warning("colab-guard watch: the process events connector is unavailable (%s); "
                        "programs are found by scanning /proc every %gs", err,
                        monitor.settings.sample_interval)
            return None
        log.info("colab-guard watch: listening to process events (netlink proc connector)")
        return cls(sock, loop, monitor, log)

    async def probe(self, timeout: float = 5.0) -> bool:
        """Whether events arrive here: a program started now must be seen exiting."""
        self._probing = set()
        try:
            child = await asyncio.create_subprocess_exec(sys.executable, "-c", "")
            await child.wait()
            deadline = self.loop.time() + timeout
            while child.pid not in self._probing and self.loop.time() < deadline:
                await asyncio.sleep(0.05)
            return child.pid in self._probing
        finally:
            self._probing = None

    def close(self) -> None:
        self.monitor.kernels.events_live = False
        if self._look is not None:
            self._look.cancel()
        self.loop.remove_reader(self.sock.fileno())
        try:
            self.sock.send(listen_message(PROC_CN_MCAST_IGNORE))
        except OSError:
            pass
        self.sock.close()

    def _readable(self) -> None:
        exits, execs, claims = [], [], []
        kernels = self.monitor.kernels
        kernel_pids: dict[int, str] | None = None  # kernel pid -> id, made when first needed
        while True:
            try:
                datagram = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno == errno.ENOBUFS:  # events were lost: a scan finds the rest
                    if not self.overruns:
                        self.log.warning("colab-guard watch: process events overran the socket "
                                         "buffer; /proc scans cover what was missed")
                    self.overruns += 1
                    metrics.WATCH_PROC_EVENTS.labels("overrun").inc()
                    self.monitor.kernels.events_lost = True
                    self.monitor.check_soon()
                    continue
                self.log.exception("colab-guard watch: reading process events failed")
                break
            for event in parse(datagram):
                if self._probing is not None:
                    self._probing.add(event[-1])  # the process (tgid) it is about
                self.events += 1
                metrics.WATCH_PROC_EVENTS.labels(event[0]).inc()
                if event[0] == "exec":
                    execs.append(event[1])
                elif event[0] == "fork" and event[2] == event[3]:  # a process, not a thread
                    if kernel_pids is None:
                        kernel_pids = kernels.by_pid()
                    kernel_id = self._inherit(event[1], event[3], kernel_pids)
                    if kernel_id is not None:
                        claims.append((event[3], kernel_id))
                    kernels.forked(event[3])
                elif event[0] == "uid":
                    kernels.uid_changed(event[1])
                elif event[0] == "exit" and event[1] == event[2]:
                    exits.append(event[2])
                    kernels.exited(event[2])
        if claims:
            self.monitor._sampling.submit(self._follow, claims)
        users = [pid for pid in execs if self._users(pid)]
        started = []
        for pid in users:
            kernels.exec_seen(pid)
            read = self._remember_argv(pid)
            if read is not None:
                started.append((pid, read))
        self._check_all_at_exec(started)
        for pid in exits:
            self.monitor.exec_argv.pop(pid, None)
            self._lineage.pop(pid, None)
        if users:
            self._look_soon(users)

    def _inherit(self, parent: int, child: int, kernel_pids: Mapping[int, str]) -> str | None:
        """The kernel a new process belongs to: its parent's (a fork seen since the last
        pass, the kernel itself, or a process the last pass attributed). None for a child of
        the user's processes tied to no kernel (a server's child may be a kernel to come;
        the pass claims whatever of the user's no kernel does: NodeSampler._claim_the_rest)."""
        kernel_id = self._lineage.get(parent) or kernel_pids.get(parent)
        if kernel_id is None:
            kernel_id = self._attributed(parent)
        if kernel_id is None or unknown_kernel_uid(kernel_id) is not None \
                or len(self._lineage) >= MAX_LINEAGE:
            return None
        self._lineage[child] = kernel_id
        return kernel_id

    def _attributed(self, pid: int, start: int | None = None) -> str | None:
        """The kernel the last pass attributed this very process to."""
        known = self._at_pass(pid, start)
        return known[1] if known is not None else None

    def _at_pass(self, pid: int, start: int | None = None) -> tuple[float, str] | None:
        """(its start time as the pass computed it, its kernel) if the last pass attributed
        this very process (its pid may have been taken again since: its start time says,
        within a second, as attribution.same_process: both rest on /proc/stat's boot time,
        which the kernel moves by whole seconds)."""
        known = self.monitor.attributed_at_pass.get(pid)
        if known is None:
            return None
        if start is None:
            try:
                start = procfs.read_stat(pid).start
            except (OSError, ValueError):
                return None
        same = abs(procfs.create_time(start, self._boot_time()) - known[0]) <= 1
        return known if same else None

    @staticmethod
    def _boot_time() -> float:
        """As the sampler computes start times (procfs.boot_time: fixed, so keys agree)."""
        return procfs.boot_time()

    def _check_all_at_exec(self, started: list[tuple[int, tuple]]) -> None:
        """A batch of programs read at their exec, checked: those whose script the rules read
        last, within SCRIPTS_AT_EXEC_SECONDS (the others are left to the passes)."""
        started.sort(key=lambda item: reads_script(item[1][4]))  # stable: in exec order
        deadline = None
        for pid, read in started:
            if reads_script(read[4]):
                now = time.monotonic()
                deadline = deadline or now + SCRIPTS_AT_EXEC_SECONDS
                if now > deadline:
                    self.left_to_pass += 1
                    continue
            self._check_at_exec(pid, *read)

    def _check_at_exec(self, pid: int, start: int, ppid: int, comm: str, argv: list[str],
                       exe: str) -> None:
        """The program tested at once on what it shows at its exec (at_exec.py), if it is a
        process of a kernel (or of its user's unknown kernel) of the same user."""
        at_pass = self._at_pass(pid, start)
        kernel_id = self._lineage.get(pid) or (at_pass[1] if at_pass is not None else None)
        kernels = self.monitor.kernels
        if kernel_id is not None and kernels.pids().get(kernel_id) == pid:
            return  # the kernel itself: interrupted, not stopped; the pass decides
        try:
            uid = procfs.read_real_uid(pid)
        except (OSError, ValueError):
            return
        if kernel_id is None:
            # No kernel's that is known yet (the pass decides the rest), or none at all (a
            # server, a program a root service started for the user): its user's.
            kernel_id = unknown_kernel(uid)
        if uid != _uid_of(kernels, kernel_id):
            return  # a setuid program, a pid taken again: the pass decides
        if (procfs.exe_now(pid) or "") != exe:
            return  # it exec'd again while read (nice, then grep): that exec is checked
        # The pass's start time where it has seen the process: the Policy knows a process by
        # it, and acts once on it, whichever of the pass and this check comes first.
        created = at_pass[0] if at_pass is not None else \
            procfs.create_time(start, self._boot_time())
        process = Process(pid=pid, ppid=ppid, name=procfs.full_name(comm, argv), exe=exe,
                          cmdline=argv, create_time=created, uid=uid)
        self.monitor.check_at_exec(kernel_id, process)

    def _remember_argv(self, pid: int) -> tuple[int, int, str, list[str], str] | None:
        """The command line a program was started with, read as its exec is announced (before
        a program that rewrites its argument area has run far): the monitor checks that one,
        whatever the program shows later. (start, ppid, comm, argv, exe: read first, so that
        a program that exec'd again meanwhile is told by its executable read after); None if
        it is gone."""
        argv_by_pid = self.monitor.exec_argv
        exe = procfs.exe_now(pid) or ""
        try:
            stat = procfs.read_stat(pid)
            argv = procfs.read_cmdline(pid)
        except (OSError, ValueError):
            argv_by_pid.pop(pid, None)
            return None
        # Exits not seen (events lost) could fill it: past the bound, the scans still read
        # each command line.
        if len(argv_by_pid) < MAX_LINEAGE or pid in argv_by_pid:
            argv_by_pid[pid] = (stat.start, argv)
        return stat.start, stat.ppid, stat.comm, argv, exe

    def _users(self, pid: int) -> bool:
        """Whether a process runs as a notebook user (the system's execs wake nothing)."""
        try:
            return self.monitor.kernels._is_user(procfs.read_real_uid(pid))
        except (OSError, ValueError):
            return False  # gone already: the next scan settles it

    def _look_soon(self, pids: list[int]) -> None:
        """A pass ``LOOK_AGAIN`` s after an exec, and another ``LOOK_AGAIN`` s later: what a
        program does in its first moments (its pool connection, its file's content once
        scanned) is checked then. What it shows at its exec was checked already
        (``_check_at_exec``), so an exec wakes no pass at once; during a burst of execs, one
        pass every ``LOOK_AGAIN`` s covers them all, and none once the programs have exited
        (``/bin/true`` in a loop)."""
        now = self.loop.time()
        for pid in pids:
            if len(self._named) < MAX_LINEAGE:
                self._named[pid] = now
        if self._look is None:
            self._look = self.loop.call_later(LOOK_AGAIN, self._look_now)

    def _look_now(self) -> None:
        self._look = None
        now = self.loop.time()
        named, self._named = self._named, {}
        alive = {pid: when for pid, when in named.items() if _alive(pid)}
        if alive:
            self.monitor.check_soon()
        # each program looked at twice at least LOOK_AGAIN s apart, the first LOOK_AGAIN s
        # after its exec
        self._named = {pid: when for pid, when in alive.items()
                       if now - when < 2 * LOOK_AGAIN - MIN_GAP}
        if self._named:
            self._look = self.loop.call_later(LOOK_AGAIN, self._look_now)

    def _follow(self, claims: list[tuple[int, str]]) -> None:
        """In the sampler's thread: a child of a kernel's process is that kernel's."""
        for child, kernel_id in claims:
            self.monitor.sampler.claim(child, kernel_id)


def _alive(pid: int) -> bool:
    """Whether a process is there and no zombie (a program that has exited needs no look)."""
    try:
        return procfs.read_stat(pid).state not in ("Z", "X")
    except (OSError, ValueError):
        return False


def _uid_of(kernels, kernel_id: str) -> int | None:
    """The uid of a kernel's user (of the user's unknown kernel: its uid)."""
    uid = unknown_kernel_uid(kernel_id)
    if uid is not None:
        return uid
    kernel = kernels.kernel(kernel_id)
    return kernel.uid if kernel is not None else None
