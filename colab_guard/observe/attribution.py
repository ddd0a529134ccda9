"""Which kernel a process belongs to, by what can be proven.

In order, the first that applies:

1. **Descent.** A process belongs to the kernel it descends from, and stays that kernel's
   after it leaves the tree (setsid, double fork, ``nohup … &``): once seen under a kernel
   it is remembered (the sampler's per-process record). So does a process the kernel's own
   reports tie to it (the kernel hook's forked child, verified to descend from the kernel
   when it reports; the node watcher's fork events).
2. **Session.** A process first seen already orphaned, still in the session of a kernel
   (a kernel started by jupyter_server leads its own session) or of a process proven to be
   a kernel's (a ``!`` line's shell leads the session of its pty), is that kernel's:
   only ``setsid`` leaves a session, nothing joins another, and Linux does not give a
   session's id to a new process while the session has members. Whatever its environment
   says.
3. **The environment marker, a hint.** ``COLAB_GUARD_KERNEL_ID`` in the environment is the
   user's to write: any kernel of a user can name another (framing). An orphan in a session
   of its own that names one of our kernels is that kernel's only when the marker agrees
   with what is known: the same user as the kernel, started after the kernel, and no other
   kernel of that user running when it started. Otherwise it is the user's with the kernel
   unknown (``unknown_kernel(uid)``): stopped if it offends, recorded against the user,
   and no kernel is interrupted for it. A marker naming another user's kernel is never
   taken; the process counts as its own user's, kernel unknown, where that user has
   kernels here.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psutil

from . import procfs

#: Set in every guarded kernel's environment; inherited by everything it starts.
KERNEL_ENV_MARKER = "COLAB_GUARD_KERNEL_ID"
_MARKER_PREFIX = KERNEL_ENV_MARKER.encode() + b"="
#: Bytes of an environment read at most (Linux allows a few MiB): a marker past them is not
#: seen, which gains nothing (a process can drop its marker anyway: it is a hint).
ENVIRON_MAX_BYTES = 1 << 20

#: Reads of an orphan's environment that found it empty (mid-exec) before giving up.
ENVIRON_TRIES = 3

#: The kernel id of a user's processes that cannot be tied to one kernel: ``unknown-kernel:UID``.
UNKNOWN_KERNEL = "unknown-kernel"


def unknown_kernel(uid: int) -> str:
    """The stand-in kernel id for a user's processes tied to no kernel."""
    return f"{UNKNOWN_KERNEL}:{uid}"


def unknown_kernel_uid(kernel_id: str) -> int | None:
    """The uid of an ``unknown_kernel`` id; None for a real kernel's id."""
    prefix, _, uid = kernel_id.partition(":")
    return int(uid) if prefix == UNKNOWN_KERNEL and uid.isdigit() else None


def kernel_environment(kernel_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a guarded kernel is started with."""
    env = dict(os.environ if base is None else base)
    env[KERNEL_ENV_MARKER] = kernel_id
    return env


def children_of(table: Mapping) -> dict[int, list[int]]:
    """pid -> its children's pids, from the process table (a reused pid is no parent)."""
    children: dict[int, list[int]] = defaultdict(list)
    for pid, entry in table.items():
        parent = table.get(entry.ppid)
        if parent is not None and parent.start <= entry.start:
            children[entry.ppid].append(pid)
    return children


def descend(roots: Iterable[tuple[int, str]], children: Mapping[int, list[int]],
            owners: dict[int, str]) -> None:
    """Give each root's whole tree to the root's kernel (first claim wins)."""
    for root, kid in roots:
        stack = [root]
        while stack:
            pid = stack.pop()
            if pid in owners:
                continue
            owners[pid] = kid
            stack.extend(children.get(pid, ()))


def environment_marker(pid: int, start: int) -> tuple[str | None, bool]:
    """(the kernel named in the environment of the process that started at ``start``, clock
    ticks after boot; whether the environment was read): an empty environment (the process
    is in the middle of an exec) is not a read. Read from /proc directly: this is asked of
    every new process of the machine that no kernel's tree holds."""
    try:
        raw = procfs.read_all(f"/proc/{pid}/environ", ENVIRON_MAX_BYTES)
        if procfs.read_stat(pid).start != start:
            return None, True  # gone, and its pid taken again
    except (OSError, ValueError, IndexError):  # gone, or another user's: not ours to claim
        return None, True
    for item in raw.split(b"\0"):
        if item.startswith(_MARKER_PREFIX):
            return item[len(_MARKER_PREFIX):].decode("utf-8", "replace"), True
    return None, bool(raw)


def same_process(proc: psutil.Process, create_time: float) -> bool:
    """Whether a psutil handle is the process that started at ``create_time``. Within a
    second: both start times rest on /proc/stat's boot time, whole seconds the kernel moves
    when the clock is set."""
    try:
        return abs(procfs.start_time(proc.pid) - create_time) <= 1
    except (psutil.Error, OSError):
        return False


def same_user(pid: int, kernel_pid: int) -> bool:
    """Whether a process runs as the same (real) user as the kernel."""
    try:
        return psutil.Process(pid).uids().real == psutil.Process(kernel_pid).uids().real
    except psutil.Error:
        return False


def session_of(pid: int, start: int) -> int | None:
    """The session id of the process that started at ``start`` (clock ticks), or None if
    that process is gone (one read of its stat: the pid cannot be reused in between)."""
    try:
        data = procfs.read_small(f"/proc/{pid}/stat")
        fields = data[data.rindex(b")") + 2:].split()
        return int(fields[3]) if int(fields[19]) == start else None
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Tie:
    """Why an orphan is attributed as it is (shown in incidents)."""

    kernel: str  # a kernel's id, or ``unknown_kernel(uid)``
    how: str  # "session", "environment" (the marker, agreeing with what is known) or "unproven"
    detail: str = ""


@dataclass(frozen=True)
class _KernelFacts:
    uid: int
    start: int  # clock ticks after boot
    leads_session: bool


class OrphanJudge:
    """Ties processes that are in no kernel's tree (the sampler's attribution, steps 2 and 3).

    Not thread-safe: called from the sampler's thread. What it reads of a process (its
    session, environment and uid) is read once and kept until the process exits.
    """

    def __init__(self, read_environ: bool = True, log: logging.Logger | None = None):
        self.read_environ = read_environ
        self.log = log or logging.getLogger("colab_guard")
        self._ties: dict[tuple, Tie | None] = {}  # process key -> its tie (None: no kernel's)
        self._tries: dict[tuple, int] = {}  # process key -> environment reads found empty
        #: sid -> (kernel, the leader's start) of sessions led by a process proven a kernel's:
        #: its members stay that kernel's after the leader exits (a ``!`` line's shell)
        self._sessions: dict[int, tuple[str, int]] = {}
        self._leaders_checked: set[tuple] = set()  # owned processes whose session was read
        self._members: dict[tuple, int] = {}  # process key -> sid, of those tied by session
        self._kernels: dict[tuple[int, int], _KernelFacts | None] = {}  # (pid, start) -> facts
        self._warned: set[str] = set()
        self.counts: dict[str, int] = defaultdict(int)  # ties made, by how
        self._pass_facts: tuple | None = None  # (kernels, table, facts) of the last pass

    def tie(self, entry, kernels: Mapping[str, int], table: Mapping) -> tuple[Tie | None, bool]:
        """(the tie of a process in no kernel's tree, whether that is final: False when its
        environment was read in the middle of an exec, to be read again next time)."""
        if entry.key in self._ties:
            return self._ties[entry.key], True
        tie, final = self._judge(entry, kernels, table)
        if final:
            self._ties[entry.key] = tie
            self._tries.pop(entry.key, None)
            if tie is not None:
                self.counts[tie.how] += 1
        return tie, final

    def why(self, key: tuple) -> Tie | None:
        """How an orphan was tied (None: by descent, or not at all)."""
        return self._ties.get(key)

    def note_owned(self, owners: Mapping[int, str], table: Mapping) -> None:
        """Remember the sessions that processes proven a kernel's lead (one read per process
        in its life), so that their members stay that kernel's once the leader exits."""
        for pid, kid in owners.items():
            entry = table[pid]
            if entry.key in self._leaders_checked or unknown_kernel_uid(kid) is not None:
                continue
            self._leaders_checked.add(entry.key)
            if session_of(pid, entry.start) == pid:
                self._sessions[pid] = (kid, entry.start)

    def forget(self, table: Mapping) -> None:
        """Forget processes that exited, and sessions none of whose members is left."""
        alive = {entry.key for entry in table.values()}
        for cache in (self._ties, self._tries, self._members):
            for key in cache.keys() - alive:
                del cache[key]
        self._leaders_checked &= alive
        live_starts = {(pid, entry.start) for pid, entry in table.items()}
        self._kernels = {k: v for k, v in self._kernels.items() if k in live_starts}
        with_members = set(self._members.values())
        for sid, (_, start) in list(self._sessions.items()):
            leader = table.get(sid)
            if leader is not None and leader.start != start:  # its pid was taken again
                del self._sessions[sid]
            elif leader is None and sid not in with_members:
                del self._sessions[sid]

    # ------------------------------------------------------------------ judging

    def _judge(self, entry, kernels: Mapping[str, int], table: Mapping
               ) -> tuple[Tie | None, bool]:
        if not self.read_environ:
            return None, True
        facts = self._all_facts(kernels, table)
        sid = session_of(entry.pid, entry.start)
        if sid is None:
            return None, True  # gone
        by_session = self._by_session(sid, entry, kernels, facts)
        if by_session is not None:
            self._members[entry.key] = sid
            return Tie(by_session, "session", f"in the kernel's session ({sid})"), True
        marker, read = environment_marker(entry.pid, entry.start)
        if not read:
            tries = self._tries[entry.key] = self._tries.get(entry.key, 0) + 1
            if tries < ENVIRON_TRIES:
                return None, False
        if marker is None or marker not in facts:
            return None, True  # no marker, or one naming no kernel watched here
        try:
            uid = procfs.read_real_uid(entry.pid)
        except (OSError, ValueError):
            return None, True
        return self._by_marker(marker, uid, entry, facts), True

    def _by_session(self, sid: int, entry, kernels: Mapping[str, int],
                    facts: Mapping[str, _KernelFacts]) -> str | None:
        """The kernel whose session the process is in, where that proves it."""
        if sid == entry.pid:
            return None  # it leads a session of its own (setsid): nothing to prove
        for kid, pid in kernels.items():
            fact = facts.get(kid)
            if pid == sid and fact is not None and fact.leads_session \
                    and fact.start <= entry.start:
                return kid
        remembered = self._sessions.get(sid)
        if remembered is not None and remembered[1] <= entry.start:
            return remembered[0]
        return None

    def _by_marker(self, marker: str, uid: int, entry,
                   facts: Mapping[str, _KernelFacts]) -> Tie | None:
        named = facts[marker]
        own = unknown_kernel(uid)
        users_kernels = [kid for kid, f in facts.items() if f.uid == uid]
        if named.uid != uid:
            self._warn_once(f"foreign:{entry.pid}", "colab-guard: process %s names kernel %s in "
                            "its environment but runs as another user than the kernel; never "
                            "attributed to it", entry.pid, marker)
            if not users_kernels:
                return None  # not a user watched here
            return Tie(own, "unproven", f"its environment names kernel {marker}, of another "
                       "user: the process is its own user's, the kernel unknown")
        if named.start > entry.start:
            return Tie(own, "unproven", f"its environment names kernel {marker}, which started "
                       "after it: the kernel unknown")
        running = [kid for kid in users_kernels if facts[kid].start <= entry.start]
        if running == [marker]:
            return Tie(marker, "environment", "its environment names the kernel, the user's "
                       "only kernel running when it started")
        others = len(running) - 1
        return Tie(own, "unproven", f"its environment names kernel {marker}, but it left that "
                   f"kernel's tree and session before it was seen, and {others} other "
                   f"kernel(s) of the user were running: nothing ties it to one kernel")

    def _all_facts(self, kernels: Mapping[str, int], table: Mapping
                   ) -> dict[str, _KernelFacts]:
        """What is known of each kernel, worked out once per attribution pass (the same
        ``kernels`` and ``table``), however many new processes it judges."""
        last = self._pass_facts
        if last is not None and last[0] is kernels and last[1] is table:
            return last[2]
        facts = {kid: self._facts(pid, table) for kid, pid in kernels.items() if pid > 0}
        facts = {kid: f for kid, f in facts.items() if f is not None}
        self._pass_facts = (kernels, table, facts)
        return facts

    def _facts(self, pid: int, table: Mapping) -> _KernelFacts | None:
        entry = table.get(pid)
        if entry is None:
            return None
        key = (pid, entry.start)
        if key not in self._kernels:
            try:
                uid = procfs.read_real_uid(pid)
            except (OSError, ValueError):
                return None  # gone: asked again next time
            self._kernels[key] = _KernelFacts(uid, entry.start,
                                              session_of(pid, entry.start) == pid)
        return self._kernels[key]

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            if len(self._warned) > 1000:
                self._warned.clear()
            self._warned.add(key)
            self.log.warning(message, *args)
