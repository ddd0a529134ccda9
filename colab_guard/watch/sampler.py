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
from ..record import metrics
from .kernels import NodeKernels
from .switches import SwitchRecords


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
        #: keys of the users' processes a root service started (their parent is root's or a
        #: system user's, not init: OpenSSH's ``sshd: user@pts/0``, a cron job's shell);
        #: replaced, never changed (NodeMonitor reads it)
        self.service_sessions: frozenset = frozenset()
        self._listed_from: dict | None = None  # discovery's view the table was taken from
        #: which processes ran, from the kernel's context-switch records (switches.py), if
        #: they could be opened (Watcher.switch_records)
        self.switches: SwitchRecords | None = None

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
        """Every process of a notebook user in no kernel's tree, session or marker, each its
        user's with the kernel unknown (attribution.unknown_kernel), and what it started as
        another uid (a setuid program) with it: under a user's Jupyter server but no kernel's
        (a child ``clone(CLONE_PARENT)`` put there, a program a ``jupyter_server_config.py``
        in ``~/.jupyter`` starts), orphans (``setsid``, ``env -i``), the ancestors of kernels
        and terminals (the users' servers, which a server extension or a program posing as a
        kernel's ancestor can mine in), and what a root service started for the user (an SSH
        login, a cron job). The kernels' trees are claimed before (first claim wins); these
        claims are not remembered (Tracked.owner): a server's fork is a kernel before it is
        elected, an orphan before it is tied. Those a root service started are noted in
        ``service_sessions`` (see there)."""
        seen = self.node.processes()
        watched: dict[int, bool] = {}
        loose: dict[int, str] = {}
        sessions = set()
        for pid, entry in table.items():
            if pid in owners:
                continue
            info = seen.get(pid, (0, None))[1]
            if info is None:
                continue
            user = watched.get(info.uid)
            if user is None:
                user = watched[info.uid] = self.node.watches_uid(info.uid)
            if user:
                loose[pid] = unknown_kernel(info.uid)
                if entry.ppid > 1 and entry.ppid not in table:
                    sessions.add(entry.key)
        if sessions != self.service_sessions:
            self.service_sessions = frozenset(sessions)
        owners.update(loose)
        if not loose or len(owners) == len(table):
            return  # no other uid's process below them (a setuid program) to give them
        children = children_of(table)
        descend([(child, kid) for pid, kid in loose.items() for child in children.get(pid, ())
                 if child not in owners], children, owners)

    def may_spread(self) -> bool:
        """Quiet processes asked in turn while process events say which exec'd (idle.py)."""
        return self.node.events_live and not self.node.events_lost

    def woken(self) -> set[int] | None:
        """The pids that ran since the last pass, from the context-switch records; None
        without them or when some were lost (counted)."""
        switches = self.switches
        if switches is None:
            return None
        lost = switches.lost
        woken = switches.ran()
        if switches.lost != lost:
            metrics.WATCH_SWITCHES_LOST.inc()
        return woken

    def _scan_table(self) -> dict[int, Entry]:
        """The users' processes, and those that descend from one; a process whose parent
        has exited has its stat read again (whose child is it now?). Discovery's view is
        refreshed on the event loop before each pass and left alone while it runs."""
        before, table = self._table, {}
        self._check_now = self.node.execs_for_pass()
        machine = self.node.processes()
        if machine is self._listed_from:  # replaced whenever a process started or exited
            return self._take_table(before, before, len(before))
        self._listed_from = machine
        boot: float | None = None
        watched: dict[int, bool] = {}  # uid -> a notebook user's
        others = []  # the rest: kept if a parent is kept (a setuid program of a kernel)
        kept = 0
        for pid, (inode, info) in machine.items():
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
