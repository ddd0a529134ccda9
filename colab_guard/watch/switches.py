"""Which processes ran: the kernel's context-switch records (perf_event_open).

The node watcher asks each of thousands of quiet processes in turn whether it ran
(observe/idle.py: one pread of its schedstat at least every QUIET_CHECK_MAX s), a cost that
grows with the processes that sleep. The kernel can say it instead: a perf event on each
CPU with ``context_switch`` set writes a record at every switch, naming the task switched
to (or from), into a ring buffer mapped here (PERF_RECORD_SWITCH_CPU). Drained once a tick,
they give the processes that ran since, at a cost that follows what runs: a switch costs
the kernel one 16-byte record, and reading them 10 ns or so a record.

Nothing to compile or load: one system call per CPU, as ``perf record --switch-events -a``
makes. It needs CAP_PERFMON (or CAP_SYS_ADMIN before Linux 5.8, or perf_event_paranoid at
-1). Where the events cannot be opened, a CPU comes online uncovered, or records were lost
(more switches in a tick than a buffer holds), ``ran`` says None: "unknown", and the quiet
processes are asked in turn as before. A CPU that went offline, even one back online by the
next pass, has its event taken off by the kernel for good: found by the event's time on
(CpuBuffer.lapsed), the records are opened anew and that pass says None.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import platform
import struct
import time
from array import array

#: perf_event_open's system call number, by machine (asm/unistd.h).
SYSCALL = {"x86_64": 298, "aarch64": 241, "ppc64le": 319, "s390x": 331, "riscv64": 241,
           "i686": 336, "armv7l": 364}
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_DUMMY = 9  # counts nothing: only its side-band records
CONTEXT_SWITCH = 1 << 26  # perf_event_attr's context_switch bit
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_FORMAT_TOTAL_TIME_ENABLED = 1  # read(): the count, then the time the event was on (ns)
PERF_RECORD_LOST = 2
PERF_RECORD_SWITCH_CPU = 15
RECORD = 16  # a switch record: header (type, misc, size), next_prev_pid, next_prev_tid
#: Data pages per CPU: 256 KiB, about 8,000 switches a tick on that CPU, and within the
#: locked memory perf allows any user per CPU by default (perf_event_mlock_kb, 516 KiB).
PAGES = 64
HEAD, TAIL = 1024, 1032  # data_head and data_tail in perf_event_mmap_page
#: Seconds after records were lost during which they are not believed, so that a machine
#: (or a user) switching tasks faster than the buffers hold does not toggle the watcher
#: between its two ways every other tick (each way back costs a pass over every quiet turn).
DOUBT = 30.0
#: Free bytes under which a buffer counts as full: records may have been lost (a lost
#: record is written only once there is room again, in the next tick's records).
FULL = 64
#: An event whose time on (read()) fell behind the time that passed by more than this (s,
#: and RATE of it: two clocks) went off meanwhile: its CPU went offline (see CpuBuffer.lapsed).
SLACK = 0.025
RATE = 0.01


class Attr(ctypes.Structure):
    """perf_event_attr as of its first version (64 bytes): all that is set here."""

    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32),
                ("config", ctypes.c_uint64), ("sample_period", ctypes.c_uint64),
                ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
                ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32),
                ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64)]


ONLINE = "/sys/devices/system/cpu/online"
#: The kernel's count of device events (uevents): it moves when a CPU goes offline or online.
DEVICE_EVENTS = "/sys/kernel/uevent_seqnum"
#: ... and when any user makes a network namespace (its loopback): every CPU's event is read
#: when it moved (an interrupt to each CPU) at most this often, s; a CPU that went offline
#: and came back meanwhile is found all the same a pass or two later (no records from it).
DEVICE_CHECK_EVERY = 10.0
#: A CPU with no records in a pass (idle, or its event off) has its event read at most this
#: often, s: on an idle node most CPUs have none, and each read wakes one.
SILENT_CHECK_EVERY = 10.0


def online_cpus(text: bytes) -> tuple[int, ...]:
    """The online CPUs, from the kernel's list of them (b"0-3,6")."""
    cpus = []
    for part in filter(None, text.decode().strip().split(",")):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return tuple(cpus)


class CpuBuffer:
    """One CPU's event and its ring buffer."""

    def __init__(self, fd: int, pages: int):
        self.fd = fd
        self.page = mmap.PAGESIZE
        self.size = pages * self.page
        self.map = mmap.mmap(fd, self.page + self.size, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self.enabled = self._time_on()  # s, at the last look (lapsed)
        self.looked_at = time.monotonic()

    def _time_on(self) -> float:
        return struct.unpack("<QQ", os.read(self.fd, 16))[1] / 1e9

    def lapsed(self) -> bool:
        """Whether the event was off for a while since the last look: its CPU went offline.
        The kernel takes a CPU's events off for good then, even if it comes back online
        before the online CPUs are read again: no record from it after, none said lost.
        A read (an interrupt to that CPU, 16 µs in a VM), so asked only where needed (ran)."""
        before = time.monotonic()
        try:
            enabled = self._time_on()
        except (OSError, struct.error):
            return True
        passed = before - self.looked_at  # at least this between the two reads
        lapsed = enabled - self.enabled < passed * (1 - RATE) - SLACK
        self.enabled, self.looked_at = enabled, time.monotonic()
        return lapsed

    def drain(self) -> bytes | None:
        """The records written since the last drain, and the space they took given back;
        None if the buffer filled up (the kernel says so only with its next record)."""
        head, tail = struct.unpack_from("<QQ", self.map, HEAD)
        if head == tail:
            return b""
        if head - tail > self.size - FULL:
            struct.pack_into("<Q", self.map, TAIL, head)
            return None
        start, end = self.page + tail % self.size, self.page + head % self.size
        if end <= start:  # wrapped round the buffer's end
            data = self.map[start:self.page + self.size] + self.map[self.page:end]
        else:
            data = self.map[start:end]
        struct.pack_into("<Q", self.map, TAIL, head)
        return data

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class SwitchRecords:
    """The context-switch records of every online CPU (see the module)."""

    def __init__(self, buffers: list[CpuBuffer], online: int, cpus: tuple[int, ...],
                 log: logging.Logger, device_events: int = -1):
        self.buffers = buffers
        self.online = online  # the list of online CPUs, held open (read again: 0.5 µs)
        self.device_events = device_events  # DEVICE_EVENTS held open, or -1
        self.seqnum = self._seqnum()  # at the last check of every CPU's event
        self.checked_all_at = float("-inf")  # (monotonic)
        self.cpus = cpus
        self.log = log
        self.lost = 0  # times records were lost (metrics)
        self.doubt_until = 0.0  # monotonic time until which they are not believed (DOUBT)

    @classmethod
    def open(cls, log: logging.Logger, pages: int = PAGES) -> SwitchRecords | None:
        """The records of every online CPU, or None (said in the log) if they cannot be had."""
        number = SYSCALL.get(platform.machine())
        if number is None:
            log.info("colab-guard watch: no context-switch records on %s: quiet processes "
                     "are asked in turn", platform.machine())
            return None
        libc = ctypes.CDLL(None, use_errno=True)
        attr = Attr(type=PERF_TYPE_SOFTWARE, size=ctypes.sizeof(Attr),
                    config=PERF_COUNT_SW_DUMMY, flags=CONTEXT_SWITCH,
                    read_format=PERF_FORMAT_TOTAL_TIME_ENABLED)
        buffers: list[CpuBuffer] = []
        online = -1
        try:
            online = os.open(ONLINE, os.O_RDONLY | os.O_CLOEXEC)
            cpus = online_cpus(os.pread(online, 4096, 0))
            for cpu in cpus:
                fd = libc.syscall(number, ctypes.byref(attr), -1, cpu, -1,
                                  PERF_FLAG_FD_CLOEXEC)
                if fd < 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"perf_event_open on CPU {cpu}: {os.strerror(err)}")
                try:
                    buffers.append(CpuBuffer(fd, pages))
                except OSError:
                    os.close(fd)
                    raise
        except (OSError, ValueError) as err:
            for buffer in buffers:
                buffer.close()
            if online >= 0:
                os.close(online)
            log.info("colab-guard watch: no context-switch records (%s; they need "
                     "CAP_PERFMON): quiet processes are asked in turn", err)
            return None
        try:
            device_events = os.open(DEVICE_EVENTS, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            device_events = -1  # CPUs that went and came are found by their empty buffers
        return cls(buffers, online, cpus, log, device_events)

    def ran(self) -> set[int] | None:
        """The processes (thread group ids) that ran since the last call, or None when that
        cannot be known: records lost, or the online CPUs changed (then opened anew; for
        good if that fails)."""
        if not self.buffers:
            return None
        pids: set[int] = set()
        whole = True
        silent = []  # buffers with no records this pass
        for buffer in self.buffers:
            data = buffer.drain()
            if data is None or data and not _switched(data, pids):
                whole = False
            elif not data:
                silent.append(buffer)
        try:
            cpus = online_cpus(os.pread(self.online, 4096, 0))
        except (OSError, ValueError):
            cpus = ()
        if cpus != self.cpus or self._lapsed(silent):
            self._reopen()
            return None
        now = time.monotonic()
        if not whole:
            self.lost += 1
            self.doubt_until = now + DOUBT
        return pids if now >= self.doubt_until else None

    def _lapsed(self, silent: list[CpuBuffer]) -> bool:
        """Whether a CPU's event went off since the last pass (CpuBuffer.lapsed), a CPU having
        gone offline and perhaps come back: asked of all when the kernel's device events
        moved (they do when a CPU goes or comes; its buffer may still hold what came before),
        else of those with no records this pass (one whose event is off has none), each at
        most every SILENT_CHECK_EVERY s."""
        if self._device_events_moved():
            return any(buffer.lapsed() for buffer in self.buffers)
        due = time.monotonic() - SILENT_CHECK_EVERY
        return any(buffer.lapsed() for buffer in silent if buffer.looked_at <= due)

    def _device_events_moved(self) -> bool:
        """Whether every CPU's event is to be checked: the device events moved since the
        last such check, at most every DEVICE_CHECK_EVERY s (a user can move them)."""
        now = time.monotonic()
        if now < self.checked_all_at + DEVICE_CHECK_EVERY:
            return False
        seqnum = self._seqnum()
        if seqnum == self.seqnum:
            return False
        self.seqnum, self.checked_all_at = seqnum, now
        return True

    def _seqnum(self) -> bytes:
        try:
            return os.pread(self.device_events, 32, 0) if self.device_events >= 0 else b""
        except OSError:
            return b""

    def _reopen(self) -> None:
        self.log.info("colab-guard watch: a CPU went offline or came online: context-switch "
                      "records opened anew")
        again = SwitchRecords.open(self.log, self.buffers[0].size // mmap.PAGESIZE
                                   if self.buffers else PAGES)
        self.close()
        if again is not None:
            self.buffers, self.online, self.cpus = again.buffers, again.online, again.cpus
            self.device_events, self.seqnum = again.device_events, again.seqnum
            self.checked_all_at = again.checked_all_at

    def close(self) -> None:
        for buffer in self.buffers:
            buffer.close()
        if self.online >= 0:
            os.close(self.online)
        if self.device_events >= 0:
            os.close(self.device_events)
        self.buffers, self.online, self.cpus, self.device_events = [], -1, (), -1


def _switched(data: bytes, pids: set[int]) -> bool:
    """Add the pids named in ``data`` (records) to ``pids``; False if any were lost or the
    records cannot be read."""
    if len(data) % 8:
        return False  # records are 8-byte aligned: these were not read whole
    words = array("I", data)  # native order, as the kernel writes them
    if len(data) % RECORD == 0 and words[0::4].count(PERF_RECORD_SWITCH_CPU) == len(words) // 4:
        pids.update(words[2::4])  # every record a switch: at C speed
        return True
    offset = 0
    while offset + 8 <= len(data):  # another record among them: walked one by one
        kind, _, size = struct.unpack_from("=IHH", data, offset)
        if size < 8 or offset + size > len(data) or kind == PERF_RECORD_LOST:
            return False
        if kind == PERF_RECORD_SWITCH_CPU and size >= RECORD:
            pids.add(struct.unpack_from("=I", data, offset + 8)[0])
        offset += size
    return offset == len(data)
