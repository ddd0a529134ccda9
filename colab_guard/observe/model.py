"""Plain data that the samplers produce and the detector consumes.

Nothing here touches psutil or /proc: recorded snapshots (tests/data) are
loaded into these classes with ``from_dict`` and fed to the engine as-is.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any


def normalise_ip(address: str) -> str:
    """``::ffff:127.0.0.1`` -> ``127.0.0.1``; other addresses unchanged."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def network_block(host: str) -> str:
    """The network block a sweep goes through address by address: an IPv4 /16 (an IPv4
    address mapped into IPv6 too), an IPv6 /64; anything else is a block of its own."""
    try:
        address = ipaddress.ip_address(normalise_ip(host))
    except ValueError:
        return host
    if address.version == 6:
        return ":".join(address.exploded.split(":")[:4])
    return ".".join(str(address).split(".")[:2])


@dataclass(frozen=True)
class Socket:
    """One inet socket held by a process."""

    protocol: str  # "tcp" or "udp"
    local_ip: str
    local_port: int
    remote_ip: str | None = None
    remote_port: int | None = None
    status: str = ""  # psutil's status: ESTABLISHED, LISTEN, NONE (udp), ...
    stream: bool = False  # held on one of the process's standard streams (fd 0-2)

    @property
    def listening(self) -> bool:
        if self.protocol == "tcp":
            return self.status == "LISTEN"
        return self.remote_ip is None  # an unconnected UDP socket receives from anyone

    @property
    def remote(self) -> tuple[str, int] | None:
        if self.remote_ip is None or self.remote_port is None:
            return None
        return (self.remote_ip, self.remote_port)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Socket:
        return cls(
            protocol=data.get("protocol", "tcp"),
            local_ip=normalise_ip(data.get("local_ip", "127.0.0.1")),
            local_port=int(data.get("local_port", 0)),
            remote_ip=normalise_ip(data["remote_ip"]) if data.get("remote_ip") else None,
            remote_port=int(data["remote_port"]) if data.get("remote_port") is not None else None,
            status=data.get("status", "ESTABLISHED" if data.get("remote_ip") else "LISTEN"),
            stream=bool(data.get("stream", False)),
        )


@dataclass
class Process:
    """What one sample saw of one process."""

    pid: int
    ppid: int = 0
    name: str = ""
    exe: str = ""
    cmdline: list[str] = field(default_factory=list)
    create_time: float = 0.0
    cpu_percent: float = 0.0  # of one core, over the last interval
    rss: int = 0  # bytes
    threads: int = 1
    uid: int | None = None
    is_kernel: bool = False
    sockets: list[Socket] = field(default_factory=list)
    libraries: list[str] = field(default_factory=list)  # paths of mapped shared objects
    exe_markers: list[str] = field(default_factory=list)  # known tools its file's content shows
    open_files: list[str] = field(default_factory=list)  # paths of regular files it has open
    gpu_percent: float = 0.0  # SM utilisation on its GPU(s), from NVML
    gpu_memory_mb: float = 0.0  # GPU memory it holds
    # Its network namespace: "" the guard's own, else "net:[N]", or "unreadable" (behaviour.py)
    netns: str = ""
    # Behaviour over a window (observe/behaviour.py); 0 where it does not apply
    cpu_demand_percent: float = 0.0  # CPU its threads (and its unconnected descendants')
    # ran or waited for, percent of a core
    cpu_demand_steady_percent: float = 0.0  # the lowest of that over any slice of the window
    pushed_connections: int = 0  # long-lived, light outbound connections the peer pushes on
    foreign_peers: int = 0  # a listening process: endpoints it connected to that the user serves not
    kernel_slow_connections: int = 0  # its kernel's slow connections to one endpoint it holds
    kernel_ports_tried: int = 0  # ports of <= 2 hosts its kernel tried within the scan window
    kernel_hosts_unanswered: int = 0  # hosts its kernel tried within that window, none answering
    kernel_relayed_connections: int = 0  # its kernel's inbound connections relayed outward
    kernel_refused_attempts: int = 0  # refused attempts its kernel's socket churn explains
    imports: tuple[str, ...] = ()  # the kernel only: top-level modules the kernel hook saw imported
    # the kernel only: its own ports (those no Python code bound, as the kernel hook reports;
    # without the hook, its connection file's)
    own_ports: tuple[int, ...] = ()
    listening_modules: tuple[str, ...] = ()  # the kernel only: modules that bound its served ports
    # a shell: the name of the process holding a connection that its stdin and stdout reach
    # in a loop of pipes or FIFOs (observe/pipes.py), '' if none
    stream_relay: str = ""

    @cached_property
    def key(self) -> tuple[int, float]:
        """(pid, create_time) names a process uniquely even when pids are reused. Computed
        once (read several times per process and tick; neither field changes)."""
        return (self.pid, self.create_time)

    def but(self, **changes) -> Process:
        """A copy with ``changes`` (fields' new values): what ``dataclasses.replace`` does, in
        a tenth of the time (the sampler makes one per running process and tick). A sample
        handed out is never changed in place."""
        if not changes.keys() <= _FIELD_NAMES:
            raise TypeError(f"not fields of Process: {sorted(changes.keys() - _FIELD_NAMES)}")
        new = object.__new__(Process)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        if "pid" in changes or "create_time" in changes:
            new.__dict__.pop("key", None)  # computed again from the new values
        return new

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Process:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["sockets"] = [Socket.from_dict(s) for s in data.get("sockets", [])]
        cmdline = known.get("cmdline", [])
        if isinstance(cmdline, str):
            known["cmdline"] = cmdline.split()
        known.setdefault("name", _basename(known.get("cmdline", [""])[0]) if known.get("cmdline") else "")
        return cls(**known)


_FIELD_NAMES = frozenset(f.name for f in fields(Process))


@dataclass
class Snapshot:
    """Every process attributed to one kernel, at one instant."""

    kernel_id: str
    time: float
    processes: list[Process] = field(default_factory=list)
    #: The last ``parked`` of ``processes`` are quiet ones the sampler did not visit this tick
    #: (idle.Parked): the very objects it handed out when it last did. Whoever looked at them
    #: then may pass over them quickly.
    parked: int = 0
    #: The keys of ``processes``, the very same object from one tick to the next while they
    #: are the same processes (None where the sampler cannot say): a consumer that keeps
    #: something per process knows by identity that none came or went.
    members: frozenset | None = None

    def visited(self) -> list[Process]:
        """The processes but the parked ones."""
        return self.processes[:len(self.processes) - self.parked] if self.parked \
            else self.processes

    @property
    def kernel_process(self) -> Process | None:
        return next((p for p in self.processes if p.is_kernel), None)


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]
