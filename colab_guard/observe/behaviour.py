"""Behaviour over a window: what a kernel's processes do across seconds, not at one tick.

A sample once a second sees which connections are open, never what passes on them nor how
busy a throttled process would be without contention. This module keeps, for the few
processes that are candidates, what the behaviour rules need, and writes it into their
samples as fields (``observe/model.py``):

- ``cpu_demand_percent``: CPU time the process's threads ran *or waited to run* (their run
  queue wait, from /proc/PID/task/*/schedstat), averaged over the last ``WINDOW`` seconds,
  percent of one core. A miner throttled to 70 % of a core shows 70 here even when other
  load leaves it only 40 % of real CPU. Zero until the process was watched a whole window.
  Measured for the process's family: its threads and those of its descendants that hold no
  outbound connection of their own (``_families``), so a miner whose hashing runs in child
  processes while the parent talks to the pool is measured as one whose threads hash.
  A measured connection handed down (its holder gone or exiting, its socket held on by a
  younger process, no older one nor an ancestor of it holding it: ``_hand_over``) hands its
  holder's demand on with it: a miner forking every second to a new pid that carries the
  pool connection on is measured as one process. Workers inheriting a connection their
  parent keeps are each measured on their own.
- ``cpu_demand_steady_percent``: the lowest of that demand over any slice of the window
  between two ticks (``STEADY_SLICE`` of it or longer): a miner throttled to a fifth of a core
  is as steady as its duty cycle; a bot that works on each message it is pushed is idle for
  whole slices between two.
- ``pushed_connections``: outbound TCP connections open through the whole window that carried
  little (at most ``QUIET_SEGMENTS_PER_S`` data segments a second), on which the peer sent
  small messages (``MAX_PUSH_BYTES``) unprompted (a second or more after the process last
  sent anything) at least ``PUSHES`` times, and the process sent something back after the
  first of them (``MIN_REPLY_BYTES`` or more between two ticks): how a mining pool hands out
  jobs and a miner submits shares. A client of a local service asks and is answered at once
  (prompted); a subscriber to a shared broker's channel (a job announcement, a feed) is
  pushed to but sends nothing back; a parameter server pushes megabytes, not a job's few
  hundred bytes; an idle connection carries nothing. A connection opened within
  ``RECONNECT_GAP`` s of the close of one of the process's connections to the same host
  carries its conversation on (its age, pushes and answers): a miner recycling its pool
  connection more often than the window. Connections open at once are never merged.
- ``foreign_peers`` (processes that listen on a TCP port only): the distinct endpoints of the
  connections the process opened to endpoints none of the user's kernels serves. A swarm's
  peers are other people's; six nodes of a lab connected to each other are the user's own.
- ``kernel_ports_tried`` and ``kernel_hosts_unanswered``: the distinct ports of at most two
  hosts (not those of connections seen open at a tick: a cluster's workers used, not
  probed), and the hosts that never answered (seen only half-open: all of them where they
  outnumber the hosts seen answering within ``ANSWERED_MEMORY``, else those of the one
  ``network_block`` that holds
  the most: a crawler's dead links are a few scattered among many answering sites, a sweep
  goes address by address), that the kernel's processes opened connections to within the
  last ``SCAN_WINDOW`` seconds, from every tick's sockets and from the connections the
  kernel hook reports (``note_connects``: every ``connect()`` made in the kernel, refused
  ones included, which no sample can see). Given to each live process that tried one.
- ``imports`` and ``own_ports`` (the kernel process only): the top-level modules the kernel
  hook saw the kernel import (``note_imports``), and the ports of the kernel's own Jupyter
  sockets (its connection file's), so that a server the kernel runs besides is told from
  the kernel's own listening.
- ``kernel_slow_connections``: outbound TCP connections from all of the kernel's processes
  (the kernel included) to one endpoint that none of the user's kernels serves, which are
  half-open (SYN_SENT), or received nothing for ``SLOW_MS`` and either never sent anything
  or trickled (sent a little again, ``TRICKLE_BYTES`` or less, while the far end had said
  nothing since its last send): a slow-request flood. A client that sent its request whole
  and waits for a slow answer (a language model generating) is no flood. Given to each
  process holding one of them, so each is stopped.

- ``kernel_relayed_connections``: inbound connections of the kernel's processes (accepted on
  a port one of them listens on, the kernel's own Jupyter ports left out) whose bytes, each
  way, an outbound connection of the kernel to an endpoint none of the user's kernels serves
  carried too (``_mirrored``), with the same outbound connection at ``RELAY_SIGHTINGS``
  ticks, within the last ``RELAY_WINDOW`` seconds: a relay, split across processes or not. A
  web app querying a database per request sends its clients other bytes than it reads (a
  response half sent can match another request's reply half read, at one tick); a forward
  to the user's own app is not outbound.
- ``kernel_refused_attempts``: connection attempts refused in the process's network namespace
  (netcounters.py: no sample sees a connect refused in microseconds; the kernel counts it),
  summed over ``SCAN_WINDOW`` for the ticks when the kernel's processes alone were seen
  churning sockets (holding new ones no socket table lists) there, or when the namespace is
  the kernel's alone; 0 unless that happened at ``REFUSED_TICKS`` ticks.

Traffic comes from the kernel's ``tcp_info`` (tcpinfo.py), read once a tick, and only when
a process is a candidate: it holds an outbound connection and used CPU (mining), its
kernel holds ``FLOOD_CANDIDATE`` outbound connections to one endpoint (flood), or its
kernel's processes hold both inbound and outbound connections (relay).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace

from .content import open_regular
from .model import Process, Snapshot, Socket, network_block
from .netcounters import refused_attempts
from .procfs import NETNS_UNREADABLE
from .tcpinfo import Dumper, TcpInfo

#: Seconds over which CPU demand is averaged and a pool connection must stay open: long
#: enough that a burst of honest work (a cell's import, a compile) does not count, short
#: enough that a miner is stopped within about this long of starting.
WINDOW = 15.0
#: Data received this long after the process last sent anything was not asked for.
PUSH_QUIET_MS = 1000
#: Unprompted messages a connection must carry before it counts as a pool's (over its life:
#: a real pool pushes a job every 30 s to 2 min, longer than the window) ...
PUSHES = 2
#: ... each at most this big (a Stratum job is a few hundred bytes, a Bitcoin one with its
#: merkle branches a few KiB; pushed weights or a feed's frames are more) ...
MAX_PUSH_BYTES = 8 * 1024
#: ... and the process must have sent this much back between two ticks since the first push
#: (a share is a JSON request of 100-300 bytes; a keepalive, MQTT's or Redis' PING, is less):
#: a subscriber that only listens is no miner.
MIN_REPLY_BYTES = 64
#: Seconds between one connection to a host and the next within which a process's
#: conversation with the host goes on (a miner recycling its pool connection), and within
#: which a mining candidate that dropped its connection keeps its CPU demand measured.
RECONNECT_GAP = 3.0
#: ... or within this many, while the process holds a socket its sample does not list yet
#: (the sampler reads again the fds of a process whose fd count stays the same only now and
#: then: a connection closed and another opened in its place was seen 8 to 23 s late here).
UNSEEN_GAP = 30.0
#: The lowest CPU demand over any slice of the window (``cpu_demand_steady_percent``) is
#: taken over slices this fraction of the window or longer (between two ticks): a throttled
#: miner's demand is as steady as its duty cycle; a bot answering messages works in bursts.
STEADY_SLICE = 1 / 15
#: Traffic at most this many data segments a second (both ways) counts as "little".
QUIET_SEGMENTS_PER_S = 4.0
#: Process CPU (this tick, percent of a core) that makes a process with an outbound
#: connection a mining candidate; it stays one while it holds such a connection.
CANDIDATE_CPU = 10.0
#: A connection that received nothing for this long is slow (a flood's), if it sent nothing
#: or trickled its request out.
SLOW_MS = 5000
#: A send of at most this many bytes, on a connection whose far end has said nothing since
#: its last send, is a trickle: a slow-request flood holding the server's request open
#: (slowloris: a header line every few seconds; R.U.D.Y.: a body byte at a time). An honest
#: client sends its request whole, then waits.
TRICKLE_BYTES = 1024
#: Two sends this far apart or more are two (not the segments of one request, a tick
#: falling between them).
TRICKLE_GAP = 0.5
#: A connection trickled once it sent a little again twice with nothing heard between, or
#: once this long after its last send: an HTTP client waiting for ``100 Continue`` sends its
#: body once, 1 s (curl) to 3 s (Apache HttpClient) after its headers, never again.
LONE_TRICKLE_GAP = SLOW_MS / 1000
#: Outbound connections of one kernel to one endpoint from which their traffic is read.
FLOOD_CANDIDATE = 50
LOOPBACK = ("127.", "::1")
#: Seconds over which a scan's connection attempts are counted: a scanner need not keep
#: its attempts open at once (a sweep of 65,535 ports, a hundred at a time, still counts).
SCAN_WINDOW = 10.0
#: Seconds a connection must stay half-open (seen so at two ticks) to count as unanswered:
#: an honest crawler's connections are half-open for a round trip, and seldom seen so twice.
UNANSWERED_AFTER = 1.0
#: Endpoints a kernel tried within the window before they are counted per host at all.
SCAN_CANDIDATE = 50
#: Ticks at which a connection must be seen open for its port not to count as tried: a
#: driver holding a connection to each of a cluster's 128 worker ports (Ray's direct task
#: calls) uses them; a scan finds most ports shut or filtered, and closes the open ones at
#: once (seldom seen at a tick).
HELD_TICKS = 1
#: Endpoints remembered per kernel within the scan window (far past any rule's threshold).
MAX_TRIED = 20_000
#: Seconds a host seen answering is remembered, to weigh a kernel's unanswered hosts against:
#: longer than the window, as a host that never answers is seen half-open for seconds (until
#: its connect times out) and one that answers for a moment, so that a crawler that pauses
#: is not left with its dead links alone.
ANSWERED_MEMORY = 3 * SCAN_WINDOW
#: TCP states of a connection a process opened and still holds (CLOSE_WAIT: the far end
#: closed at once, as a port scan's open ports do).
OUTBOUND_STATES = ("ESTABLISHED", "SYN_SENT", "CLOSE_WAIT")

#: Relays: an inbound connection counts as relayed when one outbound connection of its
#: kernel carried the same bytes each way, to within this many bytes plus this fraction
#: (a SOCKS or CONNECT handshake, headers rewritten, data in flight) ...
RELAY_SLACK_BYTES = 1024
RELAY_SLACK = 0.2
#: ... and it carried at least this much one way (two small requests may match by chance).
RELAY_MIN_BYTES = 16 * 1024
#: ... with the same outbound connection at this many ticks: counters compared at one tick
#: match by chance where a kernel serves many clients from many outbound connections (a web
#: app's response half sent, another request's database reply half read).
RELAY_SIGHTINGS = 2
#: Seconds a relayed connection is remembered (counted) after it was last seen so.
RELAY_WINDOW = 30.0
#: Inbound and outbound connections of one kernel whose traffic is read for relaying.
MAX_RELAY_CONNECTIONS = 512
#: Refused attempts in a namespace between two ticks that make its processes checked for
#: socket churn, and the ticks within the scan window at which that must be so.
REFUSED_HOT = 10
REFUSED_TICKS = 3
ROOT = os.geteuid() == 0
#: Processes of one namespace checked for churn at a tick; fds read per process.
MAX_CHURN_CHECKS = 64
MAX_FDS_READ = 4096

Endpoint = tuple[str, int]
Key = tuple[int, float]


@dataclass
class _Demand:
    """CPU demand of one process and its family (the descendants that hold no outbound
    connection of their own), accumulated tick by tick."""

    threads: dict[tuple[int, int], int]  # (pid, thread id) -> run + wait time (ns) at the
    # last read of that process
    total: float = 0.0  # seconds of demand since watched
    samples: deque = field(default_factory=deque)  # (time, total)
    last: float = 0.0  # last a mining candidate
    members: dict[int, float] = field(default_factory=dict)  # pid -> last seen in the family


@dataclass
class _Silence:
    """A flood candidate's connection at the last tick: when it last sent, its byte counts,
    whether that send came after the last data it received, and whether it trickled."""

    sent_at: float
    sent: int
    received: int
    sent_after_received: bool
    trickles: int  # small sends again, with nothing received since the first send
    trickled: bool


@dataclass
class _Traffic:
    """A conversation with one host on one outbound connection, as watched, or on one after
    another (a miner that recycles its pool connection keeps one conversation going)."""

    since: float  # the conversation's first connection first seen
    last: float  # its connection last seen
    key: Key | None = None  # the process holding it
    host: str = ""  # the remote host
    counters: tuple[int, int, int] = (0, 0, 0)  # its connection's bytes received, bytes
    # sent and data segments at the last read
    pushes: int = 0  # small unprompted messages from the host
    replies: int = 0  # sends of MIN_REPLY_BYTES or more after the first push
    total_segments: int = 0  # data segments seen pass since first seen, all connections
    segments: deque = field(default_factory=deque)  # (time, total_segments)


class Behaviour:
    """Behaviour state of the sampler's candidate processes (the sampler's thread only)."""

    def __init__(self, log: logging.Logger | None = None,
                 dumper: Callable[[int | None], Dumper] | None = None, window: float = WINDOW):
        self.log = log or logging.getLogger("colab_guard")
        self.window = window
        self._demand: dict[Key, _Demand] = {}
        self._traffic: dict[int, _Traffic] = {}  # by socket inode
        self._silences: dict[int, _Silence] = {}  # flood candidates' connections, by inode
        # (process, remote host) -> conversations whose connection closed, the latest last
        self._closed: dict[tuple[Key, str], list[_Traffic]] = {}
        # socket inode -> (the conversation on it, the CPU demand measured for its holder)
        # of a measured connection whose holder is gone and which no process holds yet: the
        # next holder of the socket (a child the holder forked before exiting) takes both
        self._handed: dict[int, tuple[_Traffic, _Demand]] = {}
        # mining candidate -> the sockets it held that its sample did not list (Unix
        # sockets, UDP ...) when it became one
        self._unlisted: dict[Key, frozenset] = {}
        #: makes a dumper for the guard's own namespace (None) or process pid's
        self._make_dumper = dumper or (lambda pid: Dumper() if pid is None
                                       else Dumper.for_namespace(pid))
        self._dumpers: dict[str, Dumper] = {}  # by network namespace ('' the guard's own)
        self._said_broken: set[str] = set()
        # kernel id -> endpoint -> [last tried, process key or None, answered (None: not
        # known yet, or reported by the kernel hook), first tried, ticks seen ESTABLISHED]
        self._tried: dict[str, dict[Endpoint, list]] = {}
        self._answered: dict[str, dict[str, float]] = {}  # kernel id -> host -> last seen
        self._reported: dict[str, list[tuple[Endpoint, float]]] = {}  # the kernel hook's connects
        self._imports: dict[str, set[str]] = {}  # kernel id -> top-level modules it imported
        # kernel process -> (the command line its Jupyter ports were read from, the ports)
        self._own_ports: dict[Key, tuple[list[str], tuple[int, ...]]] = {}
        self._annotated: set[Key] = set()  # processes given behaviour values at the last tick
        self._measuring: set[Key] = set()  # those of them given values that move tick by tick
        # process -> (the sample handed out after the last pass, the values it was given):
        # the same sample given the same values again is not compared field by field
        self._settled: dict[Key, tuple[Process, dict]] = {}
        # kernel id -> (its process, its sample after the last pass, its kernel fields then);
        # kernel ids the hook reported imports or binds for since (worked out again)
        self._kernel_values: dict[str, tuple[Key, Process, dict]] = {}  # by kernel id
        self._kernel_ids: set[str] = set()  # the kernels watched at the last pass
        self._kernels: Collection[str] = ()  # the kernels watched at this pass (annotate)
        self._hook_news: set[str] = set()
        # kernel id -> port -> the modules whose code bound it; binds to port 0 wait in
        # _unplaced until a new listening port of the kernel shows which they got
        self._bound: dict[str, dict[int, tuple[str, ...]]] = {}
        self._unplaced: dict[str, list[tuple[str, ...]]] = {}
        self._listening_before: dict[str, set[int]] = {}  # kernel id -> its ports last tick
        # kernel id -> inbound socket inode -> (last seen mirrored, the process keys holding
        # it and its outbound twin)
        self._relayed: dict[str, dict[int, tuple[float, set[Key]]]] = {}
        #: kernel -> inbound inode -> (the outbound inode it mirrored, ticks it did so)
        self._mirroring: dict[str, dict[int, tuple[int, int]]] = {}
        self._sockets_of: Callable[[Process], list[tuple[int, Socket]]] = lambda p: []
        self._refusals: dict[str, int] = {}  # network namespace -> refused attempts so far
        # kernel id -> (time, refused attempts attributed then, the processes churning)
        self._refused: dict[str, deque] = {}
        self._held: dict[Key, frozenset] = {}  # socket inodes at the last churn check

    def note_binds(self, kernel_id: str, binds: list[tuple[int, list[str]]]) -> None:
        """Ports the kernel hook saw the kernel bind, and the modules on the stack then."""
        self._hook_news.add(kernel_id)
        bound = self._bound.setdefault(kernel_id, {})
        unplaced = self._unplaced.setdefault(kernel_id, [])
        for port, modules in binds:
            if port:
                if len(bound) < MAX_IMPORTS:
                    bound[port] = tuple(modules)
            elif len(unplaced) < 64:
                unplaced.append(tuple(modules))

    def note_imports(self, kernel_id: str, modules: list[str]) -> None:
        """Modules the kernel hook saw the kernel import (call in the sampler's thread)."""
        self._hook_news.add(kernel_id)
        known = self._imports.setdefault(kernel_id, set())
        for module in modules:
            if len(known) >= MAX_IMPORTS:
                break
            known.add(module.partition(".")[0][:100])

    @property
    def annotated(self) -> set[Key]:
        """The processes given behaviour values at the last pass."""
        return self._annotated

    @property
    def measuring(self) -> set[Key]:
        """The processes given values at the last pass that are measured tick by tick (not a
        kernel's imports or ports): they are looked at every tick, never parked."""
        return self._measuring

    def note_connects(self, kernel_id: str, endpoints: list[Endpoint], when: float) -> None:
        """Connections the kernel hook saw the kernel open (call in the sampler's thread)."""
        reported = self._reported.setdefault(kernel_id, [])
        if len(reported) < 200_000:  # bounded between two ticks, whatever the kernel sends
            reported.extend((endpoint, when) for endpoint in endpoints)

    def annotate(self, snapshots: dict[str, Snapshot],
                 sockets_of: Callable[[Process], list[tuple[int, Socket]]],
                 now: float, kernels: Collection[str] | None = None) -> dict[Key, Process]:
        """The samples whose behaviour fields changed, as new Process objects (the sampler
        puts them in the snapshots: a sample handed out is never changed). ``kernels``: every
        kernel watched, where ``snapshots`` holds only those with a process to look at (two
        hundred idle kernels have none at most ticks); what is kept for a kernel is dropped
        once it is not watched."""
        self._kernels = snapshots.keys() if kernels is None else kernels
        served = _served(snapshots)
        self._sockets_of = sockets_of
        outbound: dict[Key, list[tuple[int, Socket]]] = {}
        by_key: dict[Key, Process] = {}
        for kid, snapshot in snapshots.items():
            listening = {s.local_port for p in snapshot.processes for s in p.sockets
                         if s.protocol == "tcp" and s.listening}
            # A server of the user's own (a local LLM server, a dask scheduler, a database
            # started from the notebook) is no pool and no flood's target.
            owners = {p.uid for p in snapshot.processes} | {kid}
            for proc in snapshot.processes:
                by_key[proc.key] = proc
                if proc.sockets:
                    mine = [(inode, s) for inode, s in sockets_of(proc)
                            if s.protocol == "tcp" and s.remote is not None
                            and s.status in OUTBOUND_STATES
                            and s.local_port not in listening
                            and not _is_served(s.remote, proc.netns, served, owners)]
                    if mine:
                        outbound[proc.key] = mine
        fields: dict[Key, dict] = self._scan_counts(snapshots, outbound, served, now)
        for key, conns in outbound.items():
            if any(s.protocol == "tcp" and s.listening for s in by_key[key].sockets):
                fields.setdefault(key, {})["foreign_peers"] = len({s.remote for _, s in conns})
        self._hand_over(outbound, by_key)
        families = _families(snapshots, outbound)
        miners = {k for k, conns in outbound.items()
                  if (by_key[k].cpu_percent + sum(p.cpu_percent for p in families.get(k, ()))
                      >= CANDIDATE_CPU or k in self._demand)
                  and any(s.status == "ESTABLISHED" for _, s in conns)}
        floods = self._flood_candidates(snapshots, outbound)
        flooding = {key for conns in floods.values() for key, _, _ in conns}
        relays = self._relay_candidates(snapshots, outbound)
        lookups = [(by_key[k], [c for c in outbound[k] if c[1].status == "ESTABLISHED"])
                   for k in miners]
        lookups += [(by_key[key], [(inode, sock)]) for inbound, out in relays.values()
                    for key, inode, sock in inbound + out]
        info, blind = self._read_traffic(lookups, [by_key[k] for k in flooding])
        trickled = self._trickled(floods, info, time.monotonic())
        # A connection closed since the last tick hands its conversation to a new one.
        self._retire({inode for conns in outbound.values() for inode, _ in conns},
                     by_key.keys())
        for key in miners:
            if key not in self._unlisted:
                self._unlisted[key] = self._unlisted_sockets(by_key[key])
            unknown = by_key[key].netns in blind
            demand, steady = self._cpu_demand(by_key[key], families.get(key, []), now)
            fields.setdefault(key, {}).update(
                cpu_demand_percent=demand, cpu_demand_steady_percent=steady,
                pushed_connections=self._pushed(outbound[key], info, now, unknown, key))
        for key, count in self._slow_counts(floods, info, trickled).items():
            fields.setdefault(key, {})["kernel_slow_connections"] = count
        for key, count in self._relay_counts(relays, info, by_key, now).items():
            fields.setdefault(key, {})["kernel_relayed_connections"] = count
        for key, count in self._refused_counts(snapshots, now).items():
            fields.setdefault(key, {})["kernel_refused_attempts"] = count
        self._kernel_fields(snapshots, fields)
        self._forget(miners, outbound, by_key, {p.netns for p in by_key.values()}, now)
        changed = self._changed(fields, by_key)
        self._annotated = {key for key, values in fields.items() if any(values.values())}
        self._measuring = {key for key in self._annotated
                           if any(fields[key].get(name) for name in BEHAVIOUR_FIELDS)}
        return changed

    def _changed(self, fields: dict[Key, dict], by_key: dict[Key, Process]) -> dict[Key, Process]:
        """The samples whose behaviour values differ from ``fields``, with them. Only the
        processes given values now or last tick can differ from their samples (a thousand
        idle children have none): the others are not looked at; nor is one handed out as it
        was after the last pass and given the same values (fifty idle kernels)."""
        changed, settled = {}, {}
        for key in (fields.keys() | self._annotated) & by_key.keys():
            proc, values = by_key[key], fields.get(key, {})
            last = self._settled.get(key)
            if last is not None and last[0] is proc and last[1] == values:
                settled[key] = last
                continue
            new = {name: values.get(name, 0) for name in BEHAVIOUR_FIELDS}
            new.update({name: values.get(name, ()) for name in KERNEL_FIELDS})
            if any(getattr(proc, name) != value for name, value in new.items()):
                proc = changed[key] = replace(proc, **new)
            settled[key] = (proc, values)
        self._settled = settled
        for kid, (key, _, kernel_values) in self._kernel_values.items():
            if key in settled:
                self._kernel_values[kid] = (key, settled[key][0], kernel_values)
        return changed

    # ------------------------------------------------------------ mining

    def _cpu_demand(self, proc: Process, family: list[Process],
                    now: float) -> tuple[float, float]:
        """The CPU demand of the process and its ``family`` (descendants holding no outbound
        connection of their own) averaged over the window, and the lowest over any slice of
        it between two ticks (``STEADY_SLICE`` s at least): (0, 0) until watched a whole
        window. A miner's hashing in children while the parent talks to the pool is the
        parent's, as one process's threads are."""
        threads = _family_demand(proc, family)
        state = self._demand.get(proc.key)
        if state is None:
            state = self._demand[proc.key] = _Demand(threads, last=now,
                                                     members={p.pid: now for p in family})
            state.samples.append((now, 0.0))
            return 0.0, 0.0
        # A thread started since the last read, or a member started since then (its start
        # known to a second: the boot time is), counts whole; a member older than that that
        # joins the family (seen running again) counts from now on.
        known = {pid for pid, _ in state.threads} | {proc.pid} | {
            p.pid for p in family if p.create_time >= state.last - 1.0}
        added = sum(ns - state.threads.get((pid, tid), 0) for (pid, tid), ns in threads.items()
                    if (pid, tid) in state.threads or pid in known)
        state.last = now
        # A member that did not run this tick is not read, nor in the sample while idle: its
        # last read stays its baseline for a window (a worker's next burst counts whole).
        state.members.update({p.pid: now for p in family})
        state.members = {pid: when for pid, when in state.members.items()
                         if now - when <= self.window}
        read = {pid for pid, _ in threads}
        state.threads = {k: v for k, v in state.threads.items()
                         if k[0] in state.members and k[0] not in read} | threads
        state.total += max(added, 0) / 1e9
        samples = state.samples
        samples.append((now, state.total))
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()
        start, total_then = samples[0]
        if now - start < self.window * 0.95:
            return 0.0, 0.0  # not watched a whole window yet
        average = 100.0 * (state.total - total_then) / (now - start)
        return round(average), round(_lowest_slice(samples, self.window * STEADY_SLICE))

    def _pushed(self, conns: list[tuple[int, Socket]], info: dict[int, TcpInfo],
                now: float, unknown: bool, key: Key | None = None) -> int:
        """Connections of process ``key`` that look like a pool's: open through the window
        (or opened within ``RECONNECT_GAP`` s of the close of one to the same host, which it
        takes over: a miner recycling its pool connection), carrying little, on which the
        host pushed small messages unprompted and the process answered. Connections open at
        once are each a conversation of their own (a broker's subscription beside commands
        to the same server). ``unknown``: the traffic of the process's namespace cannot be
        read; its connections open through the window count."""
        count = 0
        for inode, sock in conns:
            seen = info.get(inode)
            if sock.status != "ESTABLISHED" or (seen is None and not unknown):
                continue
            traffic = self._traffic.get(inode)
            if traffic is None:
                traffic = self._traffic[inode] = self._conversation(key, sock.remote[0], now)
                traffic.counters = ((seen.received, seen.sent, seen.data_segments)
                                    if seen else (0, 0, 0))
            traffic.last = now
            if seen is None:
                count += now - traffic.since >= self.window * 0.95
                continue
            _count_messages(traffic, seen)
            segments = traffic.segments
            segments.append((now, traffic.total_segments))
            while len(segments) > 2 and segments[1][0] <= now - self.window:
                segments.popleft()
            if (now - traffic.since < self.window * 0.95 or traffic.pushes < PUSHES
                    or not traffic.replies):
                continue
            rate = (traffic.total_segments - segments[0][1]) / max(now - segments[0][0], 1.0)
            if rate <= QUIET_SEGMENTS_PER_S:
                count += 1
        return count

    def _hand_over(self, outbound: dict[Key, list], by_key: dict[Key, Process]) -> None:
        """A measured connection (its socket inode) that its measured holder no longer holds
        (gone, exiting, or it closed its copy) and no process older than the holder holds
        either is measured on in the oldest process holding it now: the conversation and the
        CPU demand measured so far, as one process's. A miner forking a child to carry its
        pool connection on and exiting, every second, is one miner. A connection an older
        process keeps (a parent's, inherited by the workers it forks and recycles: a pool of
        them computing while it talks to a broker) was never handed over: each holder is
        measured on its own, their demand never added up. Only the inodes of measured
        connections are looked for, in the sockets the samples list; the fds of the heir's
        sampled ancestors are read only when a demand is about to be handed down."""
        if not self._traffic and not self._handed:
            return
        holders: dict[int, list[Key]] = {}
        for key, conns in outbound.items():
            for inode, _ in conns:
                if inode in self._traffic or inode in self._handed:
                    holders.setdefault(inode, []).append(key)
        for inode, keys in holders.items():
            traffic, demand = self._handed.pop(inode, (self._traffic.get(inode), None))
            self._traffic[inode] = traffic
            earlier, heir = traffic.key, min(keys, key=lambda k: k[1])
            if earlier in keys or earlier is None:
                continue  # still held by the process measured holding it
            demand = demand or self._demand.get(earlier)
            traffic.key = heir  # (the conversation goes on, whoever holds it)
            if (demand is not None and heir not in self._demand and heir[1] >= earlier[1]
                    and earlier not in outbound  # (one measuring other connections keeps it)
                    and not _held_above(by_key[heir], inode, by_key)):
                self._demand[heir] = demand
                self._demand.pop(earlier, None)

    def _conversation(self, key: Key | None, host: str, now: float) -> _Traffic:
        """The conversation a new connection of process ``key`` to ``host`` carries: the
        latest one whose connection closed within ``RECONNECT_GAP`` s (``UNSEEN_GAP`` while
        the process holds a socket its sample does not list: ``_forget`` keeps no other), or
        a new one."""
        closed = self._closed.get((key, host))
        while closed:
            traffic = closed.pop()
            if now - traffic.last <= UNSEEN_GAP:  # kept this long only while unseen (_forget)
                return traffic
        traffic = _Traffic(now, now, key, host)
        traffic.segments.append((now, 0))
        return traffic

    # ------------------------------------------------------------ the kernel itself

    def _kernel_fields(self, snapshots: dict[str, Snapshot], fields: dict[Key, dict]) -> None:
        kernels = self._kernels
        if kernels != self._kernel_ids:  # a kernel came or went
            self._kernel_ids = set(kernels)
            for table in (self._imports, self._bound, self._unplaced, self._listening_before):
                for kid in table.keys() - kernels:
                    del table[kid]
            # A kernel parked (idle.Parked) is not in its snapshot's view: what was worked out
            # for it is kept while its kernel is watched.
            for kid in self._kernel_values.keys() - kernels:
                self._own_ports.pop(self._kernel_values.pop(kid)[0], None)
        news, self._hook_news = self._hook_news, set()
        for kid, snapshot in snapshots.items():
            kernel = snapshot.kernel_process
            if kernel is None:
                continue
            last = self._kernel_values.get(kid)
            if last is not None and last[0] != kernel.key:  # restarted: another process
                self._own_ports.pop(last[0], None)
            # The sample handed out after the last pass, and nothing new from the hook: its
            # sockets and command line are those its fields were worked out from.
            values = last[2] if last is not None and last[1] is kernel and kid not in news \
                else self._kernel_values_of(kid, kernel)
            self._kernel_values[kid] = (kernel.key, kernel, values)
            fields.setdefault(kernel.key, {}).update(values)

    def _kernel_values_of(self, kid: str, kernel: Process) -> dict:
        # Read again when the command line changes: a kernel first seen between its fork and
        # its exec still carries its parent's.
        read = self._own_ports.get(kernel.key)
        if read is None or read[0] != kernel.cmdline:
            read = self._own_ports[kernel.key] = (kernel.cmdline,
                                                  _connection_ports(kernel.pid, kernel.cmdline))
        own = read[1]
        modules, bound = self._listening_modules(kid, kernel)
        if kid in self._imports or kid in self._bound:
            # The hook reports: the kernel's own ports are those no Python code bound
            # (ipykernel's ZMQ sockets, some of them in no connection file).
            own = tuple(sorted({s.local_port for s in kernel.sockets if s.protocol == "tcp"
                                and s.listening} - bound))
        return dict(imports=tuple(sorted(self._imports.get(kid, ()))), own_ports=own,
                    listening_modules=modules)

    def _listening_modules(self, kid: str, kernel: Process) -> tuple[tuple[str, ...], set[int]]:
        """The modules whose code bound a port the kernel listens on now, and those ports
        (the ones its Python code bound, as the kernel hook reported)."""
        bound = self._bound.get(kid, {})
        listening = {s.local_port for s in kernel.sockets if s.protocol == "tcp" and s.listening}
        before = self._listening_before.get(kid, listening)
        self._listening_before[kid] = listening
        unplaced = self._unplaced.get(kid)
        for port in sorted(listening - before):
            if port not in bound and unplaced:
                bound[port] = unplaced.pop(0)  # bound to port 0: a port new since is its
        ports = {port for port in listening if port in bound}
        return tuple(sorted({m for port in ports for m in bound[port]})), ports

    # ------------------------------------------------------------ scans

    def _scan_counts(self, snapshots: dict[str, Snapshot], outbound: dict[Key, list],
                     served: dict, now: float) -> dict[Key, dict]:
        fields: dict[Key, dict] = {}
        reported, self._reported = self._reported, {}
        for kid in self._tried.keys() - self._kernels:
            del self._tried[kid]
        for kid in self._answered.keys() - self._kernels:
            del self._answered[kid]
        # Only the kernels with something to count: connections out now, connects the hook
        # reported, or attempts still in the window (most kernels have none).
        with_outbound = {kid for kid, snapshot in snapshots.items() if snapshot.processes
                         and any(p.key in outbound for p in snapshot.processes)} \
            if outbound else set()
        for kid in (with_outbound | reported.keys() | self._tried.keys()) & self._kernels:
            snapshot = snapshots.get(kid) or Snapshot(kid, now)
            tried = self._tried.setdefault(kid, {})
            for proc in snapshot.processes:
                for _, sock in outbound.get(proc.key, ()):
                    entry = tried.get(sock.remote)
                    if entry is None:
                        entry = tried[sock.remote] = [now, proc.key, None, now, 0]
                    entry[0], entry[1] = now, proc.key
                    if sock.status != "SYN_SENT":
                        entry[2] = True
                    if sock.status == "ESTABLISHED":
                        entry[4] += 1
                    elif entry[2] is None and now - entry[3] >= UNANSWERED_AFTER:
                        entry[2] = False  # still half-open a second later: no answer
            kernel = snapshot.kernel_process
            owners = {p.uid for p in snapshot.processes} | {kid}
            for endpoint, when in reported.get(kid, ()):
                if len(tried) >= MAX_TRIED:
                    break  # a scan by any count: memory stays bounded
                if endpoint not in tried and not _is_served(
                        endpoint, kernel.netns if kernel else "", served, owners):
                    tried[endpoint] = [when, kernel.key if kernel else None, None, when, 0]
            for endpoint in [e for e, entry in tried.items() if now - entry[0] > SCAN_WINDOW]:
                del tried[endpoint]
            if not tried:
                del self._tried[kid]
                continue
            if len(tried) >= SCAN_CANDIDATE:
                self._scan_fields(tried, self._remember_answered(kid, tried, now),
                                  {p.key for p in snapshot.processes}, fields)
        return fields

    def _remember_answered(self, kid: str, tried: dict[Endpoint, list], now: float) -> int:
        """How many hosts the kernel's processes were seen connected to within the last
        ``ANSWERED_MEMORY`` seconds."""
        answered = self._answered.setdefault(kid, {})
        for (host, _), (last, _, yes, *_) in tried.items():
            if yes and len(answered) < MAX_TRIED:
                answered[host] = max(answered.get(host, 0.0), last)
        for host in [h for h, last in answered.items() if now - last > ANSWERED_MEMORY]:
            del answered[host]
        if not answered:
            del self._answered[kid]
        return len(answered)

    @staticmethod
    def _scan_fields(tried: dict[Endpoint, list], answering_hosts: int, live: set[Key],
                     fields: dict) -> None:
        ports: dict[str, set[int]] = {}
        answers: dict[str, set] = {}
        for (host, port), (_, _, answered, _, established) in tried.items():
            if established < HELD_TICKS:  # a port held open is a service used, not probed
                ports.setdefault(host, set()).add(port)
            answers.setdefault(host, set()).add(answered)
        top = sorted(ports, key=lambda h: len(ports[h]), reverse=True)[:2]
        port_count = sum(len(ports[h]) for h in top)
        unanswered = {h for h, seen in answers.items() if False in seen and True not in seen}
        if unanswered and len(unanswered) < answering_hosts:  # a crawler's dead links?
            block = Counter(network_block(h) for h in unanswered).most_common(1)[0][0]
            unanswered = {h for h in unanswered if network_block(h) == block}
        for (host, _), (_, key, _, _, _) in tried.items():
            if key not in live:
                continue
            if host in top:
                values = fields.setdefault(key, {})
                values["kernel_ports_tried"] = port_count
            if host in unanswered:
                fields.setdefault(key, {})["kernel_hosts_unanswered"] = len(unanswered)

    # ------------------------------------------------------------ floods

    @staticmethod
    def _flood_candidates(snapshots, outbound) -> dict[tuple[str, Endpoint], list]:
        """(kernel id, endpoint) -> [(process key, inode, socket)] where a kernel holds
        FLOOD_CANDIDATE outbound connections or more to one endpoint (``outbound`` holds only
        endpoints none of the user's kernels serves)."""
        found: dict[tuple[str, Endpoint], list] = {}
        for kid, snapshot in snapshots.items():
            per_endpoint: dict[Endpoint, list] = {}
            for proc in snapshot.processes:
                for inode, sock in outbound.get(proc.key, ()):
                    if sock.status == "CLOSE_WAIT":
                        continue
                    per_endpoint.setdefault(sock.remote, []).append((proc.key, inode, sock))
            for endpoint, conns in per_endpoint.items():
                if len(conns) < FLOOD_CANDIDATE:
                    continue
                found[(kid, endpoint)] = conns
        return found

    def _trickled(self, floods, info: dict[int, TcpInfo], read_at: float) -> set[int]:
        """The flood candidates' connections (socket inodes) that trickled: sent a little
        again, ``TRICKLE_GAP`` or more after their last send, with nothing received since
        (and their last send came after anything they received), twice, or once
        ``LONE_TRICKLE_GAP`` after it. A keep-alive client's next request follows an answer;
        one request's segments come together; a body sent after waiting for ``100
        Continue`` is sent once."""
        now: dict[int, _Silence] = {}
        for conns in floods.values():
            for _, inode, _ in conns:
                seen = info.get(inode)
                if seen is None:
                    continue
                last, sent_at = self._silences.get(inode), read_at - seen.since_sent_ms / 1000
                quiet = last is not None and seen.received == last.received
                # a second send (the SYN acknowledged counts one byte: nothing sent yet)
                gap = sent_at - last.sent_at if last is not None else 0.0
                trickle = (quiet and last.sent_after_received and 1 < last.sent < seen.sent
                           and seen.sent - last.sent <= TRICKLE_BYTES and gap >= TRICKLE_GAP)
                trickles = (last.trickles if quiet else 0) + trickle
                now[inode] = _Silence(sent_at, seen.sent, seen.received,
                                      seen.since_sent_ms <= seen.since_received_ms, trickles,
                                      quiet and (last.trickled or trickles >= 2
                                                 or (trickle and gap >= LONE_TRICKLE_GAP)))
        self._silences = now
        return {inode for inode, silence in now.items() if silence.trickled}

    @staticmethod
    def _slow_counts(floods, info: dict[int, TcpInfo], trickled: set[int]) -> dict[Key, int]:
        """Each flood's slow connections, given to every process of the kernel connected to
        its endpoint: a process whose connections are not silent long enough yet (started a
        moment after the others) is part of the same flood, and is stopped with it, not left
        to flood on alone under the threshold."""
        counts: dict[Key, int] = {}
        for conns in floods.values():
            slow = sum(1 for _, inode, sock in conns
                       if _slow(sock, info.get(inode), inode in trickled))
            if not slow:
                continue
            for key in {key for key, _, _ in conns}:
                counts[key] = max(counts.get(key, 0), slow)
        return counts

    # ------------------------------------------------------------ relays

    def _relay_candidates(self, snapshots: dict[str, Snapshot], outbound: dict[Key, list]
                          ) -> dict[str, tuple[list, list]]:
        """kernel id -> (inbound, outbound) open connections, each (process key, inode,
        socket), for a kernel whose processes hold both: connections clients opened to one
        of its listening ports (the kernel's own Jupyter ports left out), and connections
        they opened to an endpoint none of the user's kernels serves (``outbound``)."""
        found = {}
        for kid, snapshot in snapshots.items():
            listening = {s.local_port for p in snapshot.processes for s in p.sockets
                         if s.protocol == "tcp" and s.listening}
            inbound, out = [], []
            for proc in snapshot.processes:
                out += [(proc.key, inode, sock) for inode, sock in outbound.get(proc.key, ())
                        if sock.status == "ESTABLISHED"]
                if not proc.sockets:
                    continue
                own = self._own_ports.get(proc.key, ((), ()))[1] if proc.is_kernel else ()
                inbound += [(proc.key, inode, sock) for inode, sock in self._sockets_of(proc)
                            if sock.protocol == "tcp" and sock.status == "ESTABLISHED"
                            and sock.remote is not None and sock.local_port in listening
                            and sock.local_port not in own]
            if inbound and out:
                found[kid] = (inbound[:MAX_RELAY_CONNECTIONS], out[:MAX_RELAY_CONNECTIONS])
        for kid in self._relayed.keys() - self._kernels:
            del self._relayed[kid]
        return found

    def _relay_counts(self, relays: dict[str, tuple[list, list]], info: dict[int, TcpInfo],
                      by_key: dict[Key, Process], now: float) -> dict[Key, int]:
        """Inbound connections of each kernel seen mirrored within the relay window, given to
        the live processes holding either side of one."""
        counts: dict[Key, int] = {}
        mirroring: dict[str, dict[int, tuple[int, int]]] = {}
        for kid, (inbound, out) in relays.items():
            seen = self._relayed.setdefault(kid, {})
            before, now_mirroring = self._mirroring.get(kid, {}), mirroring.setdefault(kid, {})
            unused = [(key, inode, info[inode]) for key, inode, _ in out if inode in info]
            for key, inode, _ in inbound:
                mine = info.get(inode)
                if mine is None:
                    continue
                partner, sightings = before.get(inode, (None, 0))
                match = _partner(mine, unused, partner)
                if match is None:
                    if partner is not None:
                        now_mirroring[inode] = (partner, sightings)  # in flight: kept
                    continue
                their_key, their_inode, _ = unused.pop(match)
                sightings = sightings + 1 if their_inode == partner else 1
                now_mirroring[inode] = (their_inode, sightings)
                if sightings >= RELAY_SIGHTINGS:
                    seen[inode] = (now, {key, their_key})
        self._mirroring = mirroring
        for kid, seen in self._relayed.items():
            for inode in [i for i, (when, _) in seen.items() if now - when > RELAY_WINDOW]:
                del seen[inode]
            holders = {key for _, keys in seen.values() for key in keys} & by_key.keys()
            for key in holders:
                counts[key] = len(seen)
        return counts

    # ------------------------------------------------------------ refused attempts

    def _refused_counts(self, snapshots: dict[str, Snapshot], now: float) -> dict[Key, int]:
        """Refused connection attempts (netcounters.py) counted in a namespace at the ticks
        when exactly one kernel's processes there held sockets that were new and in no
        socket table (a refused connect leaves its socket so until it is closed), summed per
        kernel over the scan window, given to those processes; 0 unless it happened at
        ``REFUSED_TICKS`` ticks or more (a burst is not a scan)."""
        members: dict[str, list[tuple[str, Process]]] = {}
        for kid, snapshot in snapshots.items():
            for proc in snapshot.processes:
                if proc.netns != NETNS_UNREADABLE:
                    members.setdefault(proc.netns, []).append((kid, proc))
        checked: dict[Key, frozenset] = {}
        for netns, procs in members.items():
            if not any(p.cpu_percent > 0 for _, p in procs):
                # No watched process there ran: nothing of theirs was refused. The baseline
                # is dropped, so what others did meanwhile is never counted later.
                self._refusals.pop(netns, None)
                continue
            total = refused_attempts(procs[0][1].pid if netns else None)
            last = self._refusals.get(netns)
            if total is None:
                continue
            self._refusals[netns] = total
            if last is None or total - last < REFUSED_HOT:
                continue
            churning = self._churning(netns, procs, checked)
            kernels = {kid for kid, _ in churning}
            if not kernels and netns:
                churning = _sole_kernel(netns, procs)
                kernels = {kid for kid, _ in churning}
            if len(kernels) == 1:
                self._refused.setdefault(kernels.pop(), deque()).append(
                    (now, total - last, {key for _, key in churning}))
        self._held = checked
        counts: dict[Key, int] = {}
        for kid in list(self._refused):
            ticks = self._refused[kid]
            while ticks and now - ticks[0][0] > SCAN_WINDOW:
                ticks.popleft()
            if kid not in self._kernels or not ticks:
                del self._refused[kid]
                continue
            if len(ticks) < REFUSED_TICKS:
                continue
            total = sum(delta for _, delta, _ in ticks)
            for key in set().union(*(keys for _, _, keys in ticks)):
                counts[key] = total
        return counts

    def _churning(self, netns: str, procs: list[tuple[str, Process]],
                  checked: dict[Key, frozenset]) -> list[tuple[str, Key]]:
        """(kernel id, process key) of the processes in the namespace that ran since the last
        tick and hold a socket they did not hold at their last check, which no socket table
        of the namespace lists (``checked``: each one's sockets now, for the next check)."""
        running = [(kid, p) for kid, p in procs if p.cpu_percent > 0][:MAX_CHURN_CHECKS]
        new: list[tuple[str, Key, frozenset]] = []
        for kid, proc in running:
            held = checked[proc.key] = _socket_inodes(proc.pid)
            before = self._held.get(proc.key)
            if before is not None and held - before:
                new.append((kid, proc.key, held - before))
        if not new:
            return []
        # Which of the new sockets are listed: one dump of the namespace (about 25 ms here,
        # only at such a tick, and only when a watched process holds a new socket).
        dumper = self._dumper(netns, running[0][1].pid)
        listed = dumper.inodes() if dumper is not None else None
        if listed is None:
            return []
        return [(kid, key) for kid, key, inodes in new if inodes - listed]

    # ------------------------------------------------------------ bookkeeping

    def _read_traffic(self, lookups: list[tuple[Process, list]], flooding: list[Process]
                      ) -> tuple[dict[int, TcpInfo], set[str]]:
        """The traffic of the candidates' connections (``lookups``: a process and the
        connections of it to read; socket inodes are unique across namespaces), and the
        namespaces whose traffic cannot be read. A namespace with a flood candidate is
        dumped whole; elsewhere each connection is looked up."""
        info: dict[int, TcpInfo] = {}
        blind: set[str] = set()
        dumped = {p.netns for p in flooding}
        asked: dict[str, list] = {}
        pids = {p.netns: p.pid for p in flooding}
        for proc, conns in lookups:
            pids.setdefault(proc.netns, proc.pid)
            if proc.netns not in dumped:
                asked.setdefault(proc.netns, []).extend(conns)
        for netns, pid in pids.items():
            dumper = self._dumper(netns, pid)
            if dumper is not None:
                info.update(dumper.dump() if netns in dumped
                            else dumper.lookup(asked.get(netns, ())))
            if dumper is None or dumper.broken:
                blind.add(netns)
                if netns not in self._said_broken:
                    self._said_broken.add(netns)
                    self.log.warning(
                        "colab-guard: the traffic of connections in network namespace %s "
                        "cannot be read (%s); the behaviour rules count it as suspect",
                        netns or "(the guard's own)",
                        dumper.broken if dumper is not None else "its namespace is unreadable")
        return info, blind

    def _dumper(self, netns: str, pid: int) -> Dumper | None:
        """The namespace's dumper, made on first use (None: the namespace is unreadable)."""
        dumper = self._dumpers.get(netns)
        if dumper is None and netns != NETNS_UNREADABLE:
            dumper = self._dumpers[netns] = self._make_dumper(pid if netns else None)
        return dumper

    def _retire(self, held: set[int], live: set[Key]) -> None:
        """Conversations whose connection is no longer held wait in ``_closed`` for the
        next connection of their process to their host."""
        for inode in self._traffic.keys() - held:
            traffic = self._traffic.pop(inode)
            if traffic.key in live:
                self._closed.setdefault((traffic.key, traffic.host), []).append(traffic)
            elif traffic.key in self._demand:  # gone: its child may hold the socket on
                self._handed[inode] = (traffic, self._demand[traffic.key])

    def _forget(self, miners: set[Key], outbound: dict[Key, list], live: dict[Key, Process],
                namespaces: set[str], now: float) -> None:
        unseen: dict[Key, bool] = {}

        def kept(key: Key, last: float) -> bool:
            # A candidate that dropped its connection a moment ago (to open another) is one
            # still, and longer while it holds a new socket its sample does not show.
            if now - last <= RECONNECT_GAP:
                return True
            if now - last > UNSEEN_GAP:
                return False
            if key not in unseen:
                unseen[key] = self._holds_unseen_socket(live[key])
            return unseen[key]

        self._retire({inode for key in miners for inode, _ in outbound[key]}, live.keys())
        for key in [k for k, d in self._demand.items()
                    if k not in live or (k not in miners and not kept(k, d.last))]:
            del self._demand[key]
        for inode in [i for i, (t, _) in self._handed.items() if now - t.last > RECONNECT_GAP]:
            del self._handed[inode]
        for conversation in list(self._closed):
            key = conversation[0]
            still = [t for t in self._closed[conversation] if key in live and kept(key, t.last)]
            if still:
                self._closed[conversation] = still[-8:]
            else:
                del self._closed[conversation]
        for key in self._unlisted.keys() - self._demand.keys():
            del self._unlisted[key]
        for netns in self._dumpers.keys() - namespaces - {""}:
            self._dumpers.pop(netns).close()  # a namespace no watched process is in now
        for netns in self._refusals.keys() - namespaces:
            del self._refusals[netns]

    def _holds_unseen_socket(self, proc: Process) -> bool:
        """Whether the process holds a socket its sample does not list, which it did not hold
        (or which was listed) when it became a mining candidate (its fds are read: about
        0.15 ms)."""
        return bool(self._unlisted_sockets(proc) - self._unlisted.get(proc.key, frozenset()))

    def _unlisted_sockets(self, proc: Process) -> frozenset:
        return _socket_inodes(proc.pid) - {inode for inode, _ in self._sockets_of(proc)}

    def close(self) -> None:
        for dumper in self._dumpers.values():
            dumper.close()


#: The kernel process's fields this module sets (empty elsewhere).
KERNEL_FIELDS = ("imports", "own_ports", "listening_modules")
#: Top-level modules remembered per kernel (a kernel importing more is cut there).
MAX_IMPORTS = 4096
#: Keys of a kernel's connection file that name its own ports.
CONNECTION_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")

#: The fields this module sets on a Process (0 where it does not apply).
BEHAVIOUR_FIELDS = ("cpu_demand_percent", "cpu_demand_steady_percent",
                    "pushed_connections", "foreign_peers",
                    "kernel_slow_connections",
                    "kernel_ports_tried", "kernel_hosts_unanswered",
                    "kernel_relayed_connections", "kernel_refused_attempts")


def _count_messages(traffic: _Traffic, seen: TcpInfo) -> None:
    """What passed on a watched connection since the last tick: a small message the peer
    sent unprompted (more data is no job: not counted), and whether the process sent
    something back after one."""
    received, sent, segments = traffic.counters
    traffic.counters = (seen.received, seen.sent, seen.data_segments)
    traffic.total_segments += max(seen.data_segments - segments, 0)
    if seen.sent > sent and traffic.pushes and seen.sent - sent >= MIN_REPLY_BYTES:
        traffic.replies += 1
    if seen.received > received:
        if (seen.since_sent_ms >= seen.since_received_ms + PUSH_QUIET_MS
                and seen.received - received <= MAX_PUSH_BYTES):
            traffic.pushes += 1


def _lowest_slice(samples: deque, shortest: float) -> float:
    """The lowest CPU demand (percent of a core) between two of ``samples`` ((time, seconds
    of demand so far), oldest first), each slice ``shortest`` s or longer (a late tick makes
    one longer)."""
    lowest = None
    start, total = samples[0]
    for when, so_far in samples:
        if when - start >= shortest:
            rate = 100.0 * (so_far - total) / (when - start)
            lowest = rate if lowest is None else min(lowest, rate)
            start, total = when, so_far
    return lowest or 0.0


def _close(a: int, b: int) -> bool:
    return abs(a - b) <= RELAY_SLACK_BYTES + RELAY_SLACK * max(a, b)


def _partner(inbound: TcpInfo, unused: list[tuple[Key, int, TcpInfo]], partner: int | None
             ) -> int | None:
    """Which of the outbound connections (key, inode, counters) ``inbound`` mirrors, the one
    it mirrored before first."""
    if partner is not None:
        for i, (_, inode, theirs) in enumerate(unused):
            if inode == partner:
                if _mirrored(inbound, theirs):
                    return i
                break
    return next((i for i, (_, _, theirs) in enumerate(unused) if _mirrored(inbound, theirs)),
                None)


def _mirrored(inbound: TcpInfo, outbound: TcpInfo) -> bool:
    """Whether what a client sent on ``inbound`` went out on ``outbound`` and what came back
    went to the client: both directions the same to within a protocol's handshake and the
    bytes in flight, and enough of them that a coincidence of two small requests is not it."""
    if max(inbound.received, inbound.sent) < RELAY_MIN_BYTES:
        return False
    return _close(inbound.received, outbound.sent) and _close(inbound.sent, outbound.received)


def _sole_kernel(netns: str, procs: list[tuple[str, Process]]) -> list[tuple[str, Key]]:
    """Where every process in network namespace ``netns`` (not the guard's) is one kernel's
    (or a child of one started since the sample), that kernel's processes there that ran (all of them if none did): whatever was refused in
    the namespace, they tried. Empty if anyone else has a process there (in a pod, the
    user's Jupyter server shares the kernels' namespace) or it holds other kernels' too."""
    kernels = {kid for kid, _ in procs}
    if len(kernels) != 1:
        return []
    mine = {p.pid for _, p in procs}
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if int(pid) in mine:
            continue
        try:
            if os.readlink(f"/proc/{pid}/ns/net") == netns and not _descends(int(pid), mine):
                return []
        except PermissionError:
            if not ROOT:
                return []  # another user's process (to a guard that is not root): it may be there
            # to root, only a process above the guard's own container (its init) is closed
        except OSError:
            continue  # gone meanwhile
    ran = [(kid, p.key) for kid, p in procs if p.cpu_percent > 0]
    return ran or [(kid, p.key) for kid, p in procs]


def _descends(pid: int, ancestors: set[int], depth: int = 8) -> bool:
    """Whether ``pid`` is a descendant of one of ``ancestors`` (a child started since the
    sample, such as a scanner's subshell per attempt), looking ``depth`` parents up."""
    return _nearest_ancestor(pid, ancestors, depth=depth) is not None


def _held_above(proc: Process, inode: int, by_key: dict[Key, Process]) -> bool:
    """Whether an ancestor of ``proc`` that the samples show holds socket ``inode`` (its fds
    are read: a sample's sockets are read again only now and then, so a parent that opened a
    connection after its first sample may not list it yet)."""
    by_pid = {p.pid: p for p in by_key.values()}
    for _ in range(ANCESTOR_DEPTH):
        parent = by_pid.get(proc.ppid)
        if parent is None or parent is proc:
            return False
        if inode in _socket_inodes(parent.pid):
            return True
        proc = parent
    return False


def _socket_inodes(pid: int) -> frozenset:
    """The inodes of the sockets process ``pid`` holds now."""
    found = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return frozenset()
    for fd in fds[:MAX_FDS_READ]:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return frozenset(found)


def _served(snapshots: dict[str, Snapshot]) -> dict[tuple, set]:
    """(network namespace, address, port) the kernels' processes listen on -> the kernel ids
    and uids serving them (a wildcard address is keyed as '*')."""
    served: dict = {}
    for kid, snapshot in snapshots.items():
        for proc in snapshot.processes:
            for s in proc.sockets:
                if s.protocol == "tcp" and s.listening:
                    ip = "*" if s.local_ip in ("0.0.0.0", "::") else s.local_ip
                    served.setdefault((proc.netns, ip, s.local_port), set()).update(
                        {kid, proc.uid})
    return served


def _is_served(endpoint: Endpoint, netns: str, served: dict, owners: set) -> bool:
    """Whether one of ``owners`` (kernel ids and uids) serves ``endpoint``, as reached from
    network namespace ``netns``."""
    ip, port = endpoint
    if owners & served.get((netns, ip, port), set()):
        return True
    return ip.startswith(LOOPBACK) and bool(owners & served.get((netns, "*", port), set()))


def _slow(sock: Socket, info: TcpInfo | None, trickled: bool) -> bool:
    """A flood's connection: half-open, or silent ``SLOW_MS`` having sent nothing (the
    acknowledged SYN counts one byte) or trickled its request out."""
    if sock.status == "SYN_SENT":
        return True
    if info is None:
        return True  # traffic unknown (closed meanwhile, or unreadable): counted
    return info.since_received_ms >= SLOW_MS and (info.sent <= 1 or trickled)


def _connection_ports(pid: int, cmdline: list[str]) -> tuple[int, ...]:
    """The ports of a kernel's own Jupyter sockets, from the connection file its command
    line names (``-f kernel-ID.json``, relative to the kernel's directory); none if it cannot
    be read. The path is the user's to choose: only a regular file is opened (a FIFO there
    would block the sampler for ever)."""
    path = next((cmdline[i + 1] for i, word in enumerate(cmdline[:-1]) if word == "-f"), None)
    if path is None:
        path = next((w[3:] for w in cmdline if w.startswith("-f=")), None)
    if not path:
        return ()
    try:
        fd, _ = open_regular(os.path.join(f"/proc/{pid}/cwd", path))
        with os.fdopen(fd, "rb") as connection:
            info = json.loads(connection.read(65536))
        return tuple(sorted(int(info[k]) for k in CONNECTION_PORTS if k in info))
    except (OSError, TypeError, ValueError, AttributeError, KeyError):
        return ()


#: Descendants of a mining candidate whose demand is read at a tick (the busiest ones).
MAX_FAMILY = 64


def _families(snapshots: dict[str, Snapshot], outbound: dict[Key, list]
              ) -> dict[Key, list[Process]]:
    """Holder of outbound connections -> its descendants (as far as the samples show) that
    hold none of their own, nor descend from one that does: the workers whose CPU is the
    holder's (a miner's hashing children, a pool's worker processes)."""
    found: dict[Key, list[Process]] = {}
    for snapshot in snapshots.values():
        if not any(p.key in outbound for p in snapshot.processes):
            continue  # most kernels hold no connection out
        children: dict[int, list[Process]] = {}
        pids = {p.pid for p in snapshot.processes}
        ppids: dict[int, int] = {}  # read this tick: a chain shared by many workers, once
        for proc in snapshot.processes:
            parent = proc.ppid
            if parent not in pids and proc.cpu_percent > 0 and not proc.is_kernel:
                # its parent is not in the view (an idle shell between a holder and the
                # workers it started): the nearest ancestor that is
                parent = _nearest_ancestor(proc.pid, pids, ppids) or parent
            children.setdefault(parent, []).append(proc)
        for proc in snapshot.processes:
            if proc.key not in outbound or proc.pid not in children:
                continue
            family, todo = [], list(children[proc.pid])
            while todo and len(family) < 4 * MAX_FAMILY:
                child = todo.pop()
                if child.key in outbound:
                    continue  # a holder of its own: its workers are its
                family.append(child)
                todo.extend(children.get(child.pid, ()))
            if family:
                found[proc.key] = family
    return found


#: How far up ``_nearest_ancestor`` looks: past any chain of idle shells a miner would put
#: between its connection's holder and its workers (twelve were: 8 was the limit once).
ANCESTOR_DEPTH = 64


def _nearest_ancestor(pid: int, pids: set[int], ppids: dict[int, int] | None = None,
                      depth: int = ANCESTOR_DEPTH) -> int | None:
    """The nearest ancestor of ``pid`` among ``pids``, looking ``depth`` parents up;
    ``ppids``: parents read before (at this tick), read once each."""
    ppids = {} if ppids is None else ppids
    for _ in range(depth):
        if pid not in ppids:
            try:
                with open(f"/proc/{pid}/stat", "rb") as stat:
                    ppids[pid] = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                return None
        pid = ppids[pid]
        if pid in pids:
            return pid
        if pid <= 1:
            return None
    return None


def _family_demand(proc: Process, family: list[Process]) -> dict[tuple[int, int], int]:
    """(pid, thread id) -> run + run-queue wait time (ns) of the process's threads and those
    of the members of its family that ran since the last tick (the busiest ``MAX_FAMILY``)."""
    running = sorted((p for p in family if p.cpu_percent > 0),
                     key=lambda p: p.cpu_percent, reverse=True)[:MAX_FAMILY]
    found = {}
    for pid in [proc.pid] + [p.pid for p in running]:
        found.update({(pid, tid): ns for tid, ns in _thread_demand(pid).items()})
    return found


def _thread_demand(pid: int) -> dict[int, int]:
    """Thread id -> run + run-queue wait time (ns) from its schedstat."""
    found = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as stat:
                run, wait = stat.read().split()[:2]
            found[int(tid)] = int(run) + int(wait)
        except (OSError, ValueError):
            continue
    return found
