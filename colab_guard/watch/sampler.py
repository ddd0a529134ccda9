"""The node watcher's sampler: its process table taken from discovery's, not listed again.

The server extension's sampler lists /proc at every tick (observe/processes.py). The node
watcher's discovery (kernels.py) already knows every process of the machine, kept from the
process events between its own listings: the pass takes its table from there, and only the
notebook users' processes (and whatever descends from one of them, a setuid program), so
that what a tick costs follows the users' processes, not the machine's (a shared node runs
thousands of the system's and other services' processes the watcher never acts on).
"""

from __future__ import annotations


from ..observe import procfs
from ..observe.attribution import children_of, descend, unknown_kernel
from ..observe.processes import Entry, ProcessSampler
from .kernels import NodeKernels


class NodeSampler(ProcessSampler):
    """A ``ProcessSampler`` whose table is discovery's users' processes (see the module)."""

    def __init__(self, kernels: NodeKernels, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.node = kernels
        #: pid -> (create time, kernel id) of every process attributed at the last pass,
        #: made again only when the attribution was (replaced, never changed: the event
        #: loop reads it, proc_events.py)
        self.attributed: dict[int, tuple[float, str]] = {}
        self._attributed_from: dict | None = None

    def _attribute(self, kernels, table):
        owners = super()._attribute(kernels, table)
        if owners is not self._attributed_from:
            self._attributed_from = owners
            self.attributed = {pid: (table[pid].key[1], kid) for pid, kid in owners.items()}
        return owners

    def _attribute_anew(self, kernels, table):
        owners = super()._attribute_anew(kernels, table)
        self._claim_the_rest(kernels, table, owners)
        return owners

    def _claim_the_rest(self, kernels, table: dict[int, Entry], owners: dict[int, str]) -> None:
        """The users' processes in no kernel's tree, session or marker that a notebook can
        have started, each its user's with the kernel unknown (attribution.unknown_kernel):
        those under a user's Jupyter server but no kernel's (a child ``clone(CLONE_PARENT)``
        put there, a program a ``jupyter_server_config.py`` in ``~/.jupyter`` starts) and
        orphans (reparented to init: a double fork, ``setsid``, ``env -i``). Left alone: the
        ancestors of kernels and terminals (the users' servers, what started them) and what
        the system started for a user (an SSH login, a cron job: under a process of root's
        other than init)."""
        seen = self.node.processes()

        def uid_of(pid: int) -> int | None:
            info = seen.get(pid, (0, None))[1]
            return info.uid if info is not None and self.node.watches_uid(info.uid) else None

        servers: set[int] = set()  # ancestors of kernels and terminals
        for pid in kernels.values():
            entry = table.get(pid)
            while entry is not None and entry.ppid in table and entry.ppid not in servers:
                servers.add(entry.ppid)
                entry = table[entry.ppid]
        caught: dict[int, bool] = {}
        roots = []
        for pid, entry in table.items():
            if pid in owners or pid in servers:
                continue
            uid = uid_of(pid)
            if uid is not None and self._notebooks(pid, uid, table, servers, uid_of, caught):
                roots.append((pid, unknown_kernel(uid)))
        if roots:  # not remembered as theirs (Tracked.owner): a kernel is one before it is
            descend(roots, children_of(table), owners)  # elected, an orphan before it is tied

    @staticmethod
    def _notebooks(pid: int, uid: int, table: dict[int, Entry], servers: set[int],
                   uid_of, caught: dict[int, bool]) -> bool:
        """Whether a process of a user came from what a notebook can start: up its user's
        own ancestors, a user's server, or init (see _claim_the_rest)."""
        path = []
        while pid not in caught:
            path.append(pid)
            parent = table[pid].ppid
            if parent in servers or parent <= 1:
                verdict = True
                break
            if parent not in table or uid_of(parent) != uid:
                verdict = False  # a session the system started for the user
                break
            pid = parent
        else:
            verdict = caught[pid]
        for pid in path:
            caught[pid] = verdict
        return verdict

    def may_spread(self) -> bool:
        """Quiet processes asked in turn while process events say which exec'd (idle.py)."""
        return self.node.events_live and not self.node.events_lost

    def _scan_table(self) -> dict[int, Entry]:
        """The users' processes, and those that descend from one; a process whose parent
        has exited has its stat read again (whose child is it now?). Discovery's view is
        refreshed on the event loop before each pass and left alone while it runs."""
        before, table = self._table, {}
        self._check_now = self.node.execs_for_pass()
        boot: float | None = None
        watched: dict[int, bool] = {}  # uid -> a notebook user's
        others = []  # the rest: kept if a parent is kept (a setuid program of a kernel)
        kept = 0
        for pid, (inode, info) in self.node.processes().items():
            if info is None:
                continue
            user = watched.get(info.uid)
            if user is None:
                user = watched[info.uid] = self.node.watches_uid(info.uid)
            if not user:
                others.append((pid, inode, info))
                continue
            known = before.get(pid)
            if known is not None and known.start == info.start:
                known.inode = inode
                kept += 1
            else:
                boot = boot or procfs.boot_time()
                known = Entry((pid, procfs.create_time(info.start, boot)), inode, info.ppid,
                              info.start)
            table[pid] = known
        added = True
        while added and others:  # descendants of the users' processes
            added, rest = False, []
            for pid, inode, info in others:
                if info.ppid not in table:
                    rest.append((pid, inode, info))
                    continue
                known = before.get(pid)
                if known is not None and known.start == info.start:
                    kept += 1
                else:
                    boot = boot or procfs.boot_time()
                    known = Entry((pid, procfs.create_time(info.start, boot)), inode,
                                  info.ppid, info.start)
                table[pid], added = known, True
            others = rest
        return self._take_table(before, table, kept)
