"""Reading /proc cheaply: the files the sampler reads for every process, every tick.

The sampler reads a few small files for a thousand processes each second, so this is
done without psutil's layers (its full read of one process costs about 50 µs, these
four reads about 10 µs). What is read means what psutil's methods return (the name,
the command line, the executable, the create time), so that keys and evidence agree
with the rest of the guard, which uses psutil; the tests compare the two.

Errors are the ones the kernel gives: FileNotFoundError or ProcessLookupError when the
process is gone, PermissionError when a read is denied.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import time
from dataclasses import dataclass

from .model import Socket, normalise_ip

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
ENCODING, ENCODING_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def read_small(path: str) -> bytes:
    """A small /proc file in one read (without a file object)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def read_all(path: str, limit: int | None = None) -> bytes:
    """A /proc file of any length (a command line can be megabytes long), or its first
    ``limit`` bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks, size = [], 0
        while limit is None or size < limit:
            chunk = os.read(fd, 65536 if limit is None else min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@dataclass
class Stat:
    """/proc/PID/stat, the fields the guard uses."""

    comm: str
    state: str
    ppid: int
    cpu_ticks: int  # user + system
    threads: int
    start: int  # clock ticks after boot
    vms: int  # bytes
    rss: int  # bytes
    tty: int = 0  # the controlling terminal's device number; 0: none


def read_stat(pid: int) -> Stat:
    return parse_stat(read_small(f"/proc/{pid}/stat"))


def parse_stat(data: bytes) -> Stat:
    """/proc/PID/stat's fields (a ValueError or IndexError if it cannot be parsed)."""
    name_end = data.rindex(b")")  # the name may hold spaces and parentheses
    fields = data[name_end + 2:].split()
    return Stat(comm=data[data.index(b"(") + 1:name_end].decode(ENCODING, ENCODING_ERRORS),
                state=fields[0].decode(), ppid=int(fields[1]),
                cpu_ticks=int(fields[11]) + int(fields[12]), threads=int(fields[17]),
                start=int(fields[19]), vms=int(fields[20]), rss=int(fields[21]) * PAGE_SIZE,
                tty=int(fields[4]))


def create_time(start_ticks: int, boot_time: float) -> float:
    """A process's start in seconds since the epoch, computed as psutil does."""
    return float(start_ticks) / CLOCK_TICKS + boot_time


@functools.cache
def boot_time() -> float:
    """The machine's boot time as this process first read it: start times computed from it
    never move. /proc/stat's btime is the clock now less the time since boot, in whole
    seconds: it moves by a second when the clock is set or slewed. psutil reads it afresh for
    every process handle, so a process's key (pid, create time) could change under the guard:
    one acted on taken for a new offender (a second incident, a second strike), its stop
    refused as "its pid now names another process"."""
    with open("/proc/stat", "rb") as stat:
        btime = next(line for line in stat if line.startswith(b"btime "))
    return float(btime.split()[1])


def start_time(pid: int) -> float:
    """The create time of the process with this pid now, on the fixed boot time (what the
    sampler's keys hold). FileNotFoundError or ProcessLookupError: gone."""
    return create_time(read_stat(pid).start, boot_time())


#: At most this much of a command line is read, and split into at most this many words: a
#: process that makes its argument area megabytes of one-letter words would otherwise cost
#: the sampler a hundred bytes of memory per letter. The signatures read 8 KiB of it.
CMDLINE_MAX_BYTES = 64 << 10
CMDLINE_MAX_WORDS = 2048
#: The last word of a command line that was cut (a word no signature matches).
CMDLINE_CUT = "…[command line cut]"


def read_cmdline(pid: int) -> list[str]:
    """The command line as psutil gives it: words split at NULs, or at spaces for a
    program that rewrote its command line as one string (setproctitle). One longer than
    CMDLINE_MAX_BYTES or CMDLINE_MAX_WORDS is cut, and ends with the word CMDLINE_CUT."""
    raw = read_all(f"/proc/{pid}/cmdline", CMDLINE_MAX_BYTES + 1)
    cut = len(raw) > CMDLINE_MAX_BYTES
    data = raw[:CMDLINE_MAX_BYTES].decode(ENCODING, ENCODING_ERRORS)
    if not data:
        return []  # a zombie, or a kernel thread
    sep = "\x00" if data.endswith("\x00") or (cut and "\x00" in data) else " "
    if data.endswith(sep) and not cut:
        data = data[:-1]
    words = data.split(sep, CMDLINE_MAX_WORDS)
    if sep == "\x00" and len(words) == 1 and " " in data:
        words = data.split(" ", CMDLINE_MAX_WORDS)
    if len(words) > CMDLINE_MAX_WORDS:
        words, cut = words[:CMDLINE_MAX_WORDS], True
    if cut:
        words.append(CMDLINE_CUT)
    return words


def read_exe(pid: int) -> str:
    """The executable's path ('' for kernel threads and zombies)."""
    try:
        path = os.readlink(f"/proc/{pid}/exe")
    except FileNotFoundError:
        if os.path.lexists(f"/proc/{pid}"):
            return ""
        raise
    path = path.split("\x00")[0]
    if path.endswith(" (deleted)") and not os.path.exists(path):
        path = path[:-10]
    return path


def exe_now(pid: int) -> str | None:
    """The executable read again, to tell an exec between reads ('' where denied, as a
    first read would be; None once the process is gone)."""
    try:
        return read_exe(pid)
    except PermissionError:
        return ""
    except OSError:
        return None


def read_real_uid(pid: int) -> int:
    for line in read_small(f"/proc/{pid}/status").splitlines():
        if line.startswith(b"Uid:"):
            return int(line.split()[1])
    raise ProcessLookupError(pid)  # no Uid line: not a process any more


def _fd_counts_shown() -> bool:
    """Whether stat() of /proc/PID/fd gives the number of open fds (Linux 6.2 and later)."""
    try:
        shown = os.stat("/proc/self/fd").st_size
        listed = len(os.listdir("/proc/self/fd"))  # holds one more: the listing's own
    except OSError:
        return False
    return shown > 0 and abs(listed - shown) <= 1


FD_COUNTS_SHOWN = _fd_counts_shown()


def fd_count(pid: int) -> int | None:
    """How many fds the process has open, from one stat() (None where the kernel does not
    say, or the process is gone)."""
    if not FD_COUNTS_SHOWN:
        return None
    try:
        return os.stat(f"/proc/{pid}/fd").st_size
    except OSError:
        return None


def read_netns(pid: int) -> str:
    """The process's network namespace ('net:[4026531840]')."""
    return os.readlink(f"/proc/{pid}/ns/net")


OWN_NETNS = read_netns(os.getpid())
NETNS_UNREADABLE = "unreadable"


def full_name(comm: str, cmdline: list[str]) -> str:
    """psutil's name: the kernel cuts names at 15 characters, so a longer one is taken
    from the command line when that starts the same way."""
    if len(comm) >= 15 and cmdline:
        extended = os.path.basename(cmdline[0])
        if extended.startswith(comm):
            return extended
    return comm


def activity(pid: int, single: bool) -> tuple | None:
    """(thread id, /proc/PID/task/TID/schedstat) for each of the process's threads: the
    run time, wait time and run count there change whenever the thread runs. ``single``:
    the process had one thread at its last read, so only that one is read (a new thread
    is made by a thread that runs). None where there are no such counts (read in full)."""
    found = open_activity(pid, single)
    if found is None:
        return None
    counts, fds = found
    for fd in fds:
        os.close(fd)
    return counts


def open_activity(pid: int, single: bool) -> tuple[tuple, list[int]] | None:
    """``activity``, and the schedstat files it read, left open for ``reread`` (the
    caller closes them)."""
    fds: list[int] = []
    try:
        tids = [pid] if single else sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        counts = []
        for tid in tids:
            path = f"/proc/{pid}/schedstat" if single else f"/proc/{pid}/task/{tid}/schedstat"
            fds.append(os.open(path, os.O_RDONLY))
            counts.append((tid, os.read(fds[-1], 256)))
        return tuple(counts), fds
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        return None  # gone, or no schedstat


def reread(fds: list[int]) -> tuple[bytes, ...] | None:
    """The counts of schedstat files kept open, read again from the start (a process's
    /proc file keeps naming that process: once it has exited, ESRCH, never another's)."""
    try:
        return tuple(os.pread(fd, 256, 0) for fd in fds)
    except OSError:
        return None


#: /proc/net tables and their protocol; TCP states by their hex code there.
INET_TABLES = (("tcp", "/proc/net/tcp"), ("tcp", "/proc/net/tcp6"),
               ("udp", "/proc/net/udp"), ("udp", "/proc/net/udp6"))
TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
              "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING", "0C": "NEW_SYN_RECV"}


class InetTables:
    """The inet sockets of this network namespace, from one read of
    /proc/net/{tcp,udp}{,6}, made when first needed (the TCP tables cost a few
    milliseconds each however few sockets there are: the kernel walks its whole hash);
    a line is parsed only for a socket asked for.

    ``folder``: /proc/PID/net for the namespace of process PID.
    ``earlier``: the last read of the tables, which answers for the sockets looked up in it
    while it is younger than ``max_age`` seconds, so that the states of sockets a process
    has held all along are read again only every ``max_age`` (a socket that was not in the
    tables then, a Unix socket or one not yet bound, is taken to be absent still); a socket
    not looked up then, one that was connecting, or the set of all sockets (``inodes``),
    needs a read of the tables now. A line that did not change since ``earlier`` is not parsed again."""

    def __init__(self, folder: str = "/proc/net", earlier: InetTables | None = None,
                 max_age: float = 0.0):
        self.folder = folder
        self._lines: dict[int, tuple[str, list[str]]] | None = None
        self._inodes: set[int] | None = None
        self._parsed: dict[int, Socket] = {}
        self.read_at = 0.0  # time.monotonic() of the read
        self._earlier = earlier if earlier is not None and earlier._lines is not None \
            and time.monotonic() - earlier.read_at < max_age else None
        self._raw: dict[int, tuple] = {}  # what each parsed socket was parsed from
        # Sockets looked up in this read, found or not (a Unix socket, one not yet bound).
        self._asked: set[int] = set()
        self._parse_cache = (earlier._raw, earlier._parsed) if earlier is not None else ({}, {})

    @property
    def read(self) -> bool:
        """Whether the tables were read for this instance (not answered from ``earlier``)."""
        return self._lines is not None

    @property
    def inodes(self) -> set[int]:
        if self._inodes is None:
            self._inodes = set(self._table())
        return self._inodes

    def uid(self, inode: int) -> int | None:
        """The uid that owns a socket of the tables as read (None: not in them)."""
        line = self._lines.get(inode) if self._lines is not None else None
        try:
            return int(line[1][7]) if line is not None else None
        except (IndexError, ValueError):
            return None

    def of(self, inodes: tuple[int, ...]) -> list[Socket]:
        """The sockets among ``inodes`` (those closed since are left out)."""
        return [sock for _, sock in self.pairs(inodes)]

    def pairs(self, inodes: tuple[int, ...]) -> list[tuple[int, Socket]]:
        """(inode, socket) for the sockets among ``inodes``."""
        if not inodes:
            return []
        source = self
        if self._lines is None and self._earlier is not None \
                and self._earlier._asked.issuperset(inodes) \
                and not self._earlier._connecting(inodes):
            source = self._earlier
        lines = source._table()
        if source is self:
            self._asked.update(inodes)
        found = []
        for inode in inodes:
            sock = source._parsed.get(inode)
            if sock is None and inode in lines:
                sock = source._parsed[inode] = source._parse(inode, *lines[inode])
            if sock is not None:
                found.append((inode, sock))
        return found

    def _connecting(self, inodes: tuple[int, ...]) -> bool:
        """Whether a socket among ``inodes`` was connecting (SYN_SENT) in this read: it is
        answered, refused or given up within seconds, and a sweep's next attempt reuses its
        fd, so its state is read again at once."""
        parsed = self._parsed
        return any(inode in parsed and parsed[inode].status == "SYN_SENT" for inode in inodes)

    def _parse(self, inode: int, protocol: str, fields: list[str]) -> Socket:
        raw = self._raw[inode] = (protocol, fields[1], fields[2], fields[3])
        raws, parsed = self._parse_cache
        if raws.get(inode) == raw:
            return parsed[inode]
        return _parse_socket(protocol, fields)

    def _table(self) -> dict[int, tuple[str, list[str]]]:
        if self._lines is None:
            self._lines = {}
            self._earlier = None
            self.read_at = time.monotonic()
            for protocol, path in INET_TABLES:
                path = path.replace("/proc/net", self.folder, 1)
                try:
                    with open(path, encoding="ascii") as table:
                        lines = table.readlines()[1:]
                except OSError:
                    continue  # no IPv6 here
                for line in lines:
                    fields = line.split()
                    if len(fields) >= 10 and fields[9] != "0":  # 0: a socket being torn down
                        self._lines[int(fields[9])] = (protocol, fields)
        return self._lines


def _parse_socket(protocol: str, fields: list[str]) -> Socket:
    local_ip, local_port = _address(fields[1])
    remote_ip, remote_port = _address(fields[2])
    connected = remote_port != 0 or remote_ip not in ("0.0.0.0", "::")
    status = TCP_STATES.get(fields[3], fields[3]) if protocol == "tcp" else "NONE"
    return Socket(protocol=protocol, local_ip=normalise_ip(local_ip), local_port=local_port,
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
