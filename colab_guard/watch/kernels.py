"""Every notebook kernel on the machine, as root sees them: the node watcher's kernels adapter.

A guarded kernel carries ``COLAB_GUARD_KERNEL_ID`` in its environment (the server
extension puts it there; everything the kernel starts inherits it). The kernel itself is
the oldest live process carrying a given id whose parent does not carry it; later
carriers (orphans of a double fork, ``setsid``) are its processes, which the sampler
attributes to it. A kernel started without the server extension (the user switched it
off in their own config) has no marker: it is known by its connection file instead
(``-f .../kernel-<id>.json`` on its command line, as every Jupyter server starts kernels).

A JupyterLab terminal is watched as a kernel of its own, ``terminal-<pid>``: a process
with a controlling terminal and ``TERM`` in its environment, no kernel's, whose parent is
the same user's Jupyter server (the parent of one of its kernels, or a process whose
command line is a Jupyter server's). Its shell stands for the kernel; what runs in it is
attributed to it as a kernel's processes are.

Root reads every process's environment, so the watcher needs nothing from the user's
server: it keeps working while that server is frozen or gone.

A kernel that exits is retired, not forgotten: while processes it started live on (a
detached miner left behind by a killed kernel), it stays listed, with pid 0 (no process),
so that the sampler keeps them attributed to it; its id is never given to one of those
orphans, only to a restart of the kernel by the same parent (jupyter_server restarts a
kernel under the same id).

Never a kernel: a process of uid 0 or of a system user (uid below ``min_uid``), a
process outside ``users`` when that is set, the watcher itself. Discovery is cached per
process (its /proc directory's inode, as the sampler does): each tick lists /proc and
reads only the processes not seen before.

The same rule decides what may be signalled at all (``may_signal``): the monitor stops
a process only if it runs as a notebook user, so a setuid program started from a kernel,
or anything of the system's, is never touched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass

import psutil

from ..observe import procfs
from ..observe.attribution import KERNEL_ENV_MARKER, UNKNOWN_KERNEL, unknown_kernel_uid

_MARKER = KERNEL_ENV_MARKER.encode() + b"="
#: seconds after its start during which a process that is no kernel's is read again each scan
YOUNG = 5.0
#: seconds between two listings of /proc while process events keep discovery up to date
#: (events can be lost unnoticed only if the connector drops them silently; ENOBUFS, the
#: way it says so, brings a listing at the next refresh)
RECONCILE = 30.0
#: process events kept between two refreshes; past it, the next refresh lists /proc
MAX_PENDING = 50_000
_HUB_USER = b"JUPYTERHUB_USER="
_SESSION = b"JPY_SESSION_NAME="  # the notebook a kernel serves (jupyter_server sets it)
_TERM = b"TERM="
#: a kernel's connection file, as jupyter_client names it: the kernel id without a marker
_CONNECTION_FILE = re.compile(r"(?:^|/)kernel-([A-Za-z0-9._-]{1,128})\.json$")
#: command lines of a Jupyter server (jupyter lab/server/notebook, the hub's single-user one)
_SERVER = re.compile(r"(?:^|[/ ])(?:jupyter[-_ ](?:lab|server|notebook)|jupyterhub-singleuser"
                     r"|jupyter_server|jupyterlab|notebook\.app)\b")
TERMINAL_PREFIX = "terminal-"
#: ancestors of a process walked, at most, to find a kernel above it (_under_a_kernel)
MAX_ANCESTORS = 64


@dataclass
class Seen:
    """What discovery knows of one live process (cached until it exits)."""

    pid: int
    start: int  # clock ticks after boot: with the pid, the process's identity
    ppid: int
    uid: int
    marker: str | None = None  # the kernel id in its environment, if any
    hub_user: str | None = None
    session: str | None = None
    tty: int = 0
    term: bool = False  # TERM in its environment
    server: bool = False  # its command line is a Jupyter server's
    by_file: bool = False  # its marker is the connection file its command line names


@dataclass
class NodeKernel:
    kernel_id: str
    pid: int
    start: int
    uid: int
    ppid: int
    user: str  # the login name of the kernel's uid (what root can prove)
    notebook: str | None = None


class NodeKernels:
    """The ``Kernels`` adapter of the node watcher (see colab_guard/kernels.py)."""

    def __init__(self, min_uid: int = 1000, users: tuple[str, ...] = (), grace: float = 2.0,
                 log: logging.Logger | None = None):
        self.min_uid, self.users, self.grace = min_uid, set(users), grace
        self.log = log or logging.getLogger("colab_guard.watch")
        self.own_pid = os.getpid()
        self._seen: dict[int, tuple[int, Seen | None]] = {}  # pid -> (/proc inode, what it is)
        self._kernels: dict[str, NodeKernel] = {}
        #: kernels that exited; listed (pid 0) while ``attributed`` names them
        self._retired: dict[str, NodeKernel] = {}
        # ((_kernels, attributed) they were made for, (pids(), by_pid()))
        self._pids: tuple = ((None, None), ({}, {}))
        #: kernels that live processes are attributed to (the monitor sets it every tick)
        self.attributed: set[str] = set()
        self._warned: set[str] = set()
        # pids that exec'd, started, exited since the last refresh (process events), and
        # those whose environment was read mid-exec
        self._execs: set[int] = set()
        self._forks: set[int] = set()
        self._exits: set[int] = set()
        self._unsettled: set[int] = set()
        #: pids that exec'd since the sampler last took them (execs_for_pass): asked at its
        #: next pass whether they ran, however many quiet processes wait their turn
        self._execs_for_pass: set[int] = set()
        self._listed_at: float | None = None  # when /proc was last listed (time.monotonic)
        self._elected_for: set[str] = set()  # ``attributed`` at the last election
        #: exec events arrive (proc_events.py); else young processes are read again each scan
        self.events_live = False
        #: some events were lost: read young processes again at the next scan
        self.events_lost = False

    def exec_seen(self, pid: int) -> None:
        """A process exec'd (a process event): read it again at the next refresh."""
        self._note(self._execs, pid)

    def forked(self, pid: int) -> None:
        """A process started (a process event): read at the next refresh."""
        self._note(self._forks, pid)

    def uid_changed(self, pid: int) -> None:
        """A process's uid changed without an exec (a process event: root's fork that drops
        to a user, as OpenSSH's session process does): read again at the next refresh."""
        self._note(self._forks, pid)

    def exited(self, pid: int) -> None:
        """A process exited (a process event): forgotten at the next refresh."""
        self._note(self._exits, pid)

    def _note(self, pids: set[int], pid: int) -> None:
        if len(pids) < MAX_PENDING:
            pids.add(pid)
        else:  # a storm between two refreshes: the next one lists /proc instead
            self.events_lost = True

    def _keep_for_pass(self, execs: set[int]) -> None:
        if len(self._execs_for_pass) < MAX_PENDING:
            self._execs_for_pass |= execs
        else:
            self.events_lost = True  # the next scan reads them all

    def execs_for_pass(self) -> set[int]:
        """The pids that exec'd since the last call (from the pass's thread; refresh, on the
        event loop, runs before each pass, never during one)."""
        taken, self._execs_for_pass = self._execs_for_pass, set()
        return taken

    # ------------------------------------------------------------ discovery

    def refresh(self) -> dict[str, NodeKernel]:
        """The machine's processes as discovery knows them, then the kernels elected.

        With process events live: what the events named since the last refresh (started,
        exec'd, exited), and no listing of /proc, but every ``RECONCILE`` s and after events
        were lost. Otherwise one listing of /proc that reads only processes not seen before,
        and again those that may have exec'd since: a kernel is first a fork of its server
        (no marker yet, or still root's under a spawner that drops privileges before the
        exec): young processes (started within ``YOUNG`` s) that were not a kernel's."""
        now = time.monotonic()
        changes = self._forks or self._exits or self._execs or self._unsettled
        if self.events_live and not self.events_lost and self._listed_at is not None \
                and now - self._listed_at < RECONCILE:
            # The election reads only users' processes: the system's churn changes nothing.
            users_changed = self._follow_events() if changes else False
            if users_changed or self.attributed != self._elected_for:
                self._elect()
            return self._kernels
        seen, changed = self._list()
        if changed:  # else the same object: the pass's table stands (sampler.py)
            self._seen = seen
        self._listed_at = now
        if changed or self.attributed != self._elected_for:
            self._elect()
        return self._kernels

    def _follow_events(self) -> bool:
        """The last refresh's processes, those that exited left out, those that started or
        exec'd (or were read mid-exec) read; whether a notebook user's was among them."""
        # A copy, replaced whole: the pass reads the last one in its own thread (sampler.py).
        seen, users = dict(self._seen), False
        for pid in self._exits:
            known = seen.pop(pid, None)
            if known is not None and known[1] is not None and _lives(pid, known[1].start):
                seen[pid] = known  # its main thread exited, its other threads run on
            elif known is not None:
                users = users or known[1] is None or self._is_user(known[1].uid)
        changed = self._forks | self._execs | self._unsettled
        self._keep_for_pass(self._execs)
        self._forks, self._exits, self._execs, self._unsettled = set(), set(), set(), set()
        for pid in changed:
            try:
                inode = os.stat(f"/proc/{pid}").st_ino
            except OSError:
                known = seen.pop(pid, None)  # gone already
                users = users or (known is not None and (
                    known[1] is None or self._is_user(known[1].uid)))
                continue
            info, final = self._read(pid)
            self._remember(seen, pid, inode, info, final)
            users = users or info is None or self._is_user(info.uid)
        self._seen = seen
        return users

    def _list(self) -> tuple[dict[int, tuple[int, Seen | None]], bool]:
        """One listing of /proc (see refresh), and whether a process was read (new, exec'd,
        unsettled) or gone since the last refresh."""
        before, seen, read = self._seen, {}, False
        execs = self._execs
        self._keep_for_pass(execs)
        self._forks, self._exits, self._execs, self._unsettled = set(), set(), set(), set()
        young, self.events_lost = not self.events_live or self.events_lost, False
        young_since = _uptime_ticks() - YOUNG * procfs.CLOCK_TICKS if young else float("inf")
        with os.scandir("/proc") as listing:
            for dirent in listing:
                if not dirent.name.isdigit():
                    continue
                pid = int(dirent.name)
                try:
                    inode = dirent.inode()
                except OSError:
                    continue
                known = before.get(pid)
                if known is not None and known[0] == inode and pid not in execs and not (
                        known[1] is not None and known[1].marker is None
                        and known[1].start >= young_since):
                    seen[pid] = known
                    continue
                read = True
                self._remember(seen, pid, inode, *self._read(pid))
        return seen, read or len(seen) != len(before)

    def _remember(self, seen: dict, pid: int, inode: int, info: Seen | None, final: bool
                  ) -> None:
        if final:
            seen[pid] = (inode, info)
        else:  # an environment read mid-exec is read again next time
            self._unsettled.add(pid)
            if info is not None:
                seen[pid] = (0, info)
            else:
                seen.pop(pid, None)

    def _read(self, pid: int) -> tuple[Seen | None, bool]:
        """(what the process is, whether that is final); None: not a notebook user's."""
        if pid == self.own_pid:
            return None, True
        try:
            stat = procfs.read_stat(pid)
            uid = procfs.read_real_uid(pid)
        except (OSError, ValueError):
            return None, False
        info = Seen(pid, stat.start, stat.ppid, uid, tty=stat.tty)
        if not self._is_user(uid):
            return info, True
        try:
            environ = procfs.read_all(f"/proc/{pid}/environ")
        except OSError:
            return info, False
        if not environ:  # a zombie, a kernel thread, or in the middle of an exec
            return info, stat.state == "Z"
        for item in environ.split(b"\0"):
            if item.startswith(_MARKER):
                info.marker = _kernel_id(_text(item[len(_MARKER):]))
            elif item.startswith(_HUB_USER):
                info.hub_user = _text(item[len(_HUB_USER):])
            elif item.startswith(_SESSION):
                info.session = _text(item[len(_SESSION):])
            elif item.startswith(_TERM):
                info.term = True
        if info.marker is None:
            self._read_command_line(pid, info)
        return info, True

    @staticmethod
    def _read_command_line(pid: int, info: Seen) -> None:
        """A kernel without the marker (its connection file names it), or a Jupyter server."""
        try:
            argv = procfs.read_cmdline(pid)
        except OSError:
            return
        for before, word in zip(["", *argv], argv):
            value = word[4:] if word.startswith("--f=") else word if before == "-f" else None
            found = _CONNECTION_FILE.search(value) if value else None
            if found:
                info.marker, info.by_file = found.group(1), True
                return
        info.server = bool(_SERVER.search(" ".join(argv[:4])))

    def _elect(self) -> None:
        """The kernel of each id: the oldest live carrier under a parent that does not carry
        it, of a notebook user; kept while it lives."""
        carriers: dict[str, list[Seen]] = {}
        for _, info in self._seen.values():
            if info is not None and info.marker and self._is_user(info.uid):
                parent = self._seen.get(info.ppid, (0, None))[1]
                if (parent is None or parent.marker != info.marker) and not (
                        info.by_file and self._under_a_kernel(info)):
                    carriers.setdefault(info.marker, []).append(info)
        for info in self._terminals(carriers):
            carriers[f"{TERMINAL_PREFIX}{info.pid}"] = [info]
        kernels = {}
        for kernel_id, found in carriers.items():
            known = self._kernels.get(kernel_id)
            if known is not None and any(f.pid == known.pid and f.start == known.start
                                         for f in found):
                kernels[kernel_id] = known
                continue
            before = known or self._retired.get(kernel_id)
            if before is not None:  # only a restart by the same parent takes the id again
                found = [f for f in found if f.ppid == before.ppid and f.start >= before.start
                         and f.ppid in self._seen]
                if not found:
                    continue
            first = min(found, key=lambda f: f.start)
            if len({f.uid for f in found}) > 1:
                self._warn_once(f"uids:{kernel_id}", "colab-guard watch: kernel id %s is carried "
                                "by processes of several users; only user %s's (the oldest) is "
                                "that kernel", kernel_id, first.uid)
            # The user is the uid's: JUPYTERHUB_USER is in the user's own environment, where
            # anyone can write another user's name to have their strikes counted against them.
            user = _login(first.uid)
            if first.hub_user and first.hub_user != user:
                self._warn_once(f"hub-user:{kernel_id}", "colab-guard watch: kernel %s of uid "
                                "%s (%s) says JUPYTERHUB_USER=%r; recorded as %s", kernel_id,
                                first.uid, user, first.hub_user, user)
            notebook = "terminal" if kernel_id.startswith(TERMINAL_PREFIX) else first.session
            kernels[kernel_id] = NodeKernel(kernel_id, first.pid, first.start, first.uid,
                                            first.ppid, user, notebook)
            self._retired.pop(kernel_id, None)
            self.log.info("colab-guard watch: kernel %s of user %s (uid %s), pid %s",
                          kernel_id, kernels[kernel_id].user, first.uid, first.pid)
        for gone in set(self._kernels) - set(kernels):
            self._retired[gone] = self._kernels[gone]
            self.log.info("colab-guard watch: kernel %s has exited", gone)
        for kernel_id in [k for k in self._retired if k not in self.attributed
                          and k not in carriers and k not in kernels]:
            del self._retired[kernel_id]
        self._kernels = kernels
        self._elected_for = set(self.attributed)

    def _under_a_kernel(self, info: Seen) -> bool:
        """Whether a process descends from one that carries a kernel's marker (a user's): a
        kernel's child that drops the marker from its environment and names a connection
        file on its command line is that kernel's, not a kernel of its own (whose offences
        would name a kernel no server knows, and never the one that started it)."""
        for _ in range(MAX_ANCESTORS):
            parent = self._seen.get(info.ppid, (0, None))[1]
            if parent is None or parent.pid == info.pid:
                return False
            if parent.marker and self._is_user(parent.uid):
                return True
            info = parent
        return False

    def _terminals(self, carriers: dict[str, list[Seen]]) -> list[Seen]:
        """Terminal shells of the users' Jupyter servers: a controlling terminal, TERM, no
        kernel's, the child of a server of the same uid."""
        servers = {info.ppid for found in carriers.values() for info in found}
        servers.update(pid for pid, (_, info) in self._seen.items()
                       if info is not None and info.server)
        found = []
        for pid, (_, info) in self._seen.items():
            if info is None or info.marker or not info.tty or not info.term \
                    or info.ppid not in servers or not self._is_user(info.uid):
                continue
            parent = self._seen.get(info.ppid, (0, None))[1]
            if parent is not None and parent.uid == info.uid:
                found.append(info)
        return found

    def processes(self) -> dict[int, tuple[int, Seen | None]]:
        """Every process of the machine as the last refresh knew it: pid -> (the inode of
        its /proc folder, or 0 if it is to be read again; what it is, None if unknown)."""
        return self._seen

    def watches_uid(self, uid: int) -> bool:
        """Whether this uid's kernels are watched (a notebook user's, within ``users``)."""
        return self._is_user(uid)

    def _is_user(self, uid: int) -> bool:
        if uid == 0 or uid < self.min_uid:
            return False
        return not self.users or _login(uid) in self.users

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log.warning(message, *args)

    # ------------------------------------------------------------ the Kernels protocol

    def pids(self) -> dict[str, int]:
        """Live kernels, and exited ones whose processes live on (pid 0: no process)."""
        # Asked at every pass and at each batch of fork events: made again only when the
        # election (a new _kernels) or the pass's attribution (a new set) was.
        return dict(self._made_pids()[0])

    def by_pid(self) -> Mapping[int, str]:
        """Live kernels' pid -> id (read only: the same object until pids() changes)."""
        return self._made_pids()[1]

    def _made_pids(self) -> tuple[dict[str, int], dict[int, str]]:
        made_for = self._pids[0]
        if made_for[0] is not self._kernels or made_for[1] is not self.attributed:
            found = {kid: 0 for kid in self._retired if kid in self.attributed}
            found.update((kid, k.pid) for kid, k in self._kernels.items())
            self._pids = ((self._kernels, self.attributed),
                          (found, {pid: kid for kid, pid in found.items() if pid}))
        return self._pids[1]

    def __contains__(self, kernel_id: str) -> bool:
        kernel = self._kernels.get(kernel_id)
        return kernel is not None and self._alive(kernel)

    def kernel(self, kernel_id: str) -> NodeKernel | None:
        """A live or retired kernel."""
        return self._kernels.get(kernel_id) or self._retired.get(kernel_id)

    def user_of(self, kernel_id: str) -> str | None:
        """The kernel's user; for a user's processes tied to no kernel (attribution.py's
        stand-in id), the login of their uid."""
        kernel = self.kernel(kernel_id)
        if kernel is not None:
            return kernel.user
        uid = unknown_kernel_uid(kernel_id)
        return _login(uid) if uid is not None else None

    async def notebook_path(self, kernel_id: str) -> str | None:
        kernel = self.kernel(kernel_id)
        return kernel.notebook if kernel is not None else None

    async def interrupt(self, kernel_id: str) -> None:
        """SIGINT to the kernel's process group, as jupyter_server does; only to the kernel
        itself when it does not lead its group (its group is then someone else's). A group
        holding a process the watcher may not signal (root's, a setuid program started from
        the kernel) gets the signal member by member, that process left out."""
        kernel = self._checked(kernel_id)
        if os.getpgid(kernel.pid) != kernel.pid:
            os.kill(kernel.pid, signal.SIGINT)
            return
        # One pass over /proc: tens of milliseconds on a busy machine, off the event loop.
        members = await asyncio.get_running_loop().run_in_executor(None, group_members,
                                                                   kernel.pid)
        if all(self._is_user(uid) for uid in members.values()):
            os.killpg(kernel.pid, signal.SIGINT)
            return
        for pid, uid in members.items():
            if self._is_user(uid) and pid != self.own_pid:
                try:
                    os.kill(pid, signal.SIGINT)
                except ProcessLookupError:
                    pass

    async def shutdown(self, kernel_id: str) -> None:
        """SIGTERM, then SIGKILL after the grace."""
        kernel = self._checked(kernel_id)
        os.kill(kernel.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and self._alive(kernel):
            await asyncio.sleep(0.05)
        if self._alive(kernel):
            os.kill(kernel.pid, signal.SIGKILL)

    def may_signal(self, proc: psutil.Process) -> bool:
        """Whether the watcher may signal this process: a notebook user's, not its own."""
        try:
            return proc.pid != self.own_pid and self._is_user(proc.uids().real)
        except psutil.Error:
            return False

    def _checked(self, kernel_id: str) -> NodeKernel:
        kernel = self._kernels.get(kernel_id)
        if kernel is None or not self._alive(kernel):
            raise ProcessLookupError(f"kernel {kernel_id} has exited")
        if not self._is_user(procfs.read_real_uid(kernel.pid)):
            raise PermissionError(f"kernel {kernel_id}'s process no longer runs as a notebook user")
        return kernel

    @staticmethod
    def _alive(kernel: NodeKernel) -> bool:
        try:
            stat = procfs.read_stat(kernel.pid)
        except (OSError, ValueError):
            return False
        return stat.start == kernel.start and stat.state != "Z"


def _lives(pid: int, start: int) -> bool:
    """Whether this very process is still there, and no zombie."""
    try:
        stat = procfs.read_stat(pid)
    except (OSError, ValueError):
        return False
    return stat.start == start and stat.state not in ("Z", "X")


def _uptime_ticks() -> float:
    with open("/proc/uptime", "rb") as f:
        return float(f.read().split()[0]) * procfs.CLOCK_TICKS


def group_members(pgid: int) -> dict[int, int]:
    """pid -> real uid of every process in a process group (one pass over /proc)."""
    members = {}
    with os.scandir("/proc") as listing:
        for dirent in listing:
            if not dirent.name.isdigit():
                continue
            pid = int(dirent.name)
            try:
                data = procfs.read_small(f"/proc/{pid}/stat")
                if int(data[data.rindex(b")") + 2:].split()[2]) == pgid:
                    members[pid] = procfs.read_real_uid(pid)
            except (OSError, ValueError):
                continue
    return members


def _kernel_id(marker: str) -> str | None:
    """A marker's kernel id; None for an id the watcher makes up itself (a terminal's, a
    user's unknown kernel): no process names those, but one that would be elected a kernel
    of that id, to record another user's offences under its own name or keep a terminal to
    come from being one."""
    if marker.startswith((TERMINAL_PREFIX, UNKNOWN_KERNEL + ":")):
        return None
    return marker


def _text(raw: bytes) -> str:
    return raw.decode(procfs.ENCODING, procfs.ENCODING_ERRORS)


#: uid -> (login name, when looked up): accounts change (a uid reused), so not for ever
_logins: dict[int, tuple[str, float]] = {}
LOGIN_TTL = 60.0


def _login(uid: int) -> str:
    now = time.monotonic()
    cached = _logins.get(uid)
    if cached is not None and now - cached[1] < LOGIN_TTL:
        return cached[0]
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # no such account (a container's uid): named by its number
        name = f"uid-{uid}"
    _logins[uid] = (name, now)
    return name
