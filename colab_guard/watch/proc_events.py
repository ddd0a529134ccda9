"""The kernel's process events (netlink proc connector): fork, exec and exit, as they happen.

No compiler, no headers, no eBPF: a netlink socket (``NETLINK_CONNECTOR``), joined to the
``CN_IDX_PROC`` group, told ``PROC_CN_MCAST_LISTEN``, and each ``struct proc_event`` read
with ``struct``. Needs CAP_NET_ADMIN (root has it). Each exec wakes the monitor (a tick at
once, instead of at the next ``sample_interval``); each fork of a process the sampler
attributes to a kernel gives the child to that kernel at once, so a double fork whose
middle process exits at once, or an ``env -i`` exec that drops the kernel's marker, cannot
slip out between two scans. Where the connector is unavailable (no privilege, a container
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
from collections.abc import Iterator

from ..observe import procfs
from ..record import metrics

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2

PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000

NLMSGHDR = struct.Struct("=IHHII")
CN_MSG = struct.Struct("=IIIIHH")
EVENT_HEAD = struct.Struct("=IIQ")
FORK = struct.Struct("=iiii")  # parent pid, parent tgid, child pid, child tgid
EXEC = struct.Struct("=ii")  # pid, tgid
EXIT = struct.Struct("=iiII")  # pid, tgid, exit code, exit signal
HEAD = NLMSGHDR.size + CN_MSG.size

#: lineage kept for processes forked from a kernel's tree, until their exit
MAX_LINEAGE = 100_000
#: seconds between two ticks woken by execs (a fork storm must not tick without pause)
MIN_GAP = 0.05
#: seconds after the last exec when the monitor looks once more: what a program does in its
#: first moments (its pool connection, its file's content once scanned) is checked then, not
#: at the next periodic tick up to ``sample_interval`` later
LOOK_AGAIN = 0.3


def listen_message(op: int = PROC_CN_MCAST_LISTEN) -> bytes:
    payload = struct.pack("=I", op)
    cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0)
    return NLMSGHDR.pack(NLMSGHDR.size + len(cn) + len(payload), NLMSG_DONE, 0, 0,
                         os.getpid()) + cn + payload


def parse(datagram: bytes) -> Iterator[tuple]:
    """('fork', parent tgid, child pid, child tgid) / ('exec', tgid) / ('exit', pid, tgid)
    for each message in a datagram; other events are skipped."""
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
        self._lineage: dict[int, str] = {}  # pid -> kernel, for forks not yet seen by a scan
        self._last_wake = 0.0
        self._pending: asyncio.TimerHandle | None = None
        self._again: asyncio.TimerHandle | None = None  # the look after the last exec
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
        for timer in (self._pending, self._again):
            if timer is not None:
                timer.cancel()
        self.loop.remove_reader(self.sock.fileno())
        try:
            self.sock.send(listen_message(PROC_CN_MCAST_IGNORE))
        except OSError:
            pass
        self.sock.close()

    def _readable(self) -> None:
        forks, exits, execs = [], [], []
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
                    forks.append((event[1], event[3]))
                elif event[0] == "exit" and event[1] == event[2]:
                    exits.append(event[2])
        if forks or exits:
            self.monitor._sampling.submit(self._follow, forks, exits)
        users = [pid for pid in execs if self._users(pid)]
        for pid in users:
            self.monitor.kernels.exec_seen(pid)
            self._remember_argv(pid)
        for pid in exits:
            self.monitor.exec_argv.pop(pid, None)
        if users:
            self._wake()
            self._look_again_later()

    def _remember_argv(self, pid: int) -> None:
        """The command line a program was started with, read as its exec is announced (before
        a program that rewrites its argument area has run far): the monitor checks that one,
        whatever the program shows later."""
        argv_by_pid = self.monitor.exec_argv
        if len(argv_by_pid) >= MAX_LINEAGE and pid not in argv_by_pid:
            return  # exits not seen (events lost): the scans still read each command line
        try:
            argv_by_pid[pid] = (procfs.read_stat(pid).start, procfs.read_cmdline(pid))
        except (OSError, ValueError):
            argv_by_pid.pop(pid, None)

    def _users(self, pid: int) -> bool:
        """Whether a process runs as a notebook user (the system's execs wake nothing)."""
        try:
            return self.monitor.kernels._is_user(procfs.read_real_uid(pid))
        except (OSError, ValueError):
            return False  # gone already: the next scan settles it

    def _wake(self) -> None:
        """A tick now, or at most every ``MIN_GAP`` s while programs keep starting."""
        now = self.loop.time()
        wait = self._last_wake + MIN_GAP - now
        if wait <= 0:
            self._last_wake = now
            self.monitor.check_soon()
        elif self._pending is None:
            self._pending = self.loop.call_later(wait, self._wake_later)

    def _wake_later(self) -> None:
        self._pending = None
        self._wake()

    def _look_again_later(self) -> None:
        """One more tick ``LOOK_AGAIN`` s after the last exec (a burst of execs: once, after
        it; the ticks its execs wake look meanwhile)."""
        if self._again is not None:
            self._again.cancel()
        self._again = self.loop.call_later(LOOK_AGAIN, self._look_again)

    def _look_again(self) -> None:
        self._again = None
        self._wake()

    def _follow(self, forks: list[tuple[int, int]], exits: list[int]) -> None:
        """In the sampler's thread: a child of a kernel's process is that kernel's."""
        sampler = self.monitor.sampler
        kernels = self.monitor.kernels.pids()
        by_pid = {pid: kid for kid, pid in kernels.items()}
        for parent, child in forks:
            kernel_id = self._lineage.get(parent) or by_pid.get(parent) or \
                sampler.owner_of(parent)
            if kernel_id is None or len(self._lineage) >= MAX_LINEAGE:
                continue
            self._lineage[child] = kernel_id
            sampler.claim(child, kernel_id)
        for pid in exits:
            self._lineage.pop(pid, None)
