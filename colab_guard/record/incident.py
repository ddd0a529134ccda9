"""The incident: what was detected, the evidence, and what was done about it.

Evidence is untrusted text (command lines and names come from the user's
programs): it is made valid UTF-8 and cut to a bounded length here, once,
and escaped wherever it is shown.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..detect.engine import Detection
from ..observe.model import Process
from ..vocabulary import SEVERITY_RANK

MAX_EVIDENCE_TEXT = 2048
MAX_SOCKETS_SHOWN = 32


def clean_text(text: str, limit: int = MAX_EVIDENCE_TEXT) -> str:
    """Valid UTF-8 (bad bytes become U+FFFD), at most ``limit`` characters, marked when cut."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if len(text) > limit:
        text = text[:limit] + f"…[{len(text) - limit} more characters]"
    return text


def process_evidence(p: Process) -> dict[str, Any]:
    sockets = []
    for s in p.sockets[:MAX_SOCKETS_SHOWN]:
        local = f"{s.local_ip}:{s.local_port}"
        sockets.append(f"{s.protocol} {local} -> {s.remote_ip}:{s.remote_port} {s.status}"
                       if s.remote else f"{s.protocol} {local} {s.status or 'bound'}")
    return {
        "pid": p.pid,
        "ppid": p.ppid,
        "name": clean_text(p.name, 256),
        "exe": clean_text(p.exe, 1024),
        "cmdline": clean_text(" ".join(p.cmdline)),
        "started": _iso(p.create_time) if p.create_time else None,
        "cpu_percent": p.cpu_percent,
        "rss_mb": round(p.rss / 2**20, 1),
        "threads": p.threads,
        "gpu_percent": p.gpu_percent,
        "gpu_memory_mb": p.gpu_memory_mb,
        "is_kernel": p.is_kernel,
        "sockets": sockets,
        "sockets_total": len(p.sockets),
        **_behaviour_evidence(p),
    }


def _behaviour_evidence(p: Process) -> dict[str, Any]:
    """What was measured over a window (observe/behaviour.py), where it applies."""
    found: dict[str, Any] = {name: getattr(p, name) for name in
                             ("cpu_demand_percent", "cpu_demand_steady_percent",
                              "pushed_connections", "foreign_peers",
                              "kernel_slow_connections",
                              "kernel_ports_tried", "kernel_hosts_unanswered",
                              "kernel_relayed_connections", "kernel_refused_attempts")
                             if getattr(p, name, 0)}
    if getattr(p, "netns", ""):
        found["network_namespace"] = clean_text(p.netns, 64)
    return found


@dataclass
class Action:
    action: str  # one of vocabulary.ACTIONS
    target: str  # "kernel", "cell", "user", "incident log" or "pid 1234"
    outcome: str = "pending"  # one of vocabulary.OUTCOMES
    detail: str = ""


@dataclass
class Incident:
    kernel_id: str
    category: str
    severity: str
    signature: str  # the most severe signature that matched
    description: str
    user: str
    notebook: str | None = None
    signatures: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    dry_run: bool = False
    strike: bool = False  # counts against its user (the policy decides; see act/policy.py)
    #: the installed distribution the offending program comes from ({"name", "version",
    #: "path"}; observe/packages.py): then the incident is no strike
    package: dict[str, str] | None = None
    status: str = "acting"  # acting -> done; "unfinished" if the server stopped meanwhile
    time: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def from_detections(cls, detections: list[Detection], user: str,
                        notebook: str | None, dry_run: bool) -> Incident:
        detections = _most_telling_first(detections)
        primary = detections[0]
        processes: dict[int, Process] = {d.process.pid: d.process for d in detections}
        return cls(
            kernel_id=primary.kernel_id,
            category=primary.signature.category,
            severity=primary.signature.severity,
            signature=primary.signature.id,
            description=primary.signature.description,
            user=user,
            notebook=notebook,
            signatures=sorted({d.signature.id for d in detections}),
            evidence={
                "processes": [process_evidence(p) for p in processes.values()],
                "matches": [{**d.to_dict(), "reasons": [clean_text(r, 512) for r in d.reasons]}
                            for d in detections],
            },
            dry_run=dry_run,
        )

    def summary(self) -> str:
        """One line in plain words: what was seen, for the user and the log."""
        procs = self.evidence.get("processes", [])
        what = ""
        if procs:
            first = procs[0]
            what = "the kernel itself" if first.get("is_kernel") else \
                f"{first['name']} (pid {first['pid']})"
        return f"{self.category}: {what}" if what else self.category

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["time"] = _iso(self.time)
        data["summary"] = self.summary()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Incident:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["actions"] = [Action(**a) for a in data.get("actions", [])]
        if isinstance(known.get("time"), str):
            known["time"] = datetime.fromisoformat(known["time"]).timestamp()
        return cls(**known)


def _most_telling_first(detections: list[Detection]) -> list[Detection]:
    """Most severe first; among equals, the program itself before the shell that started it
    (``bash -c './hashcat …'`` matches too, but the user should read "hashcat")."""
    parents = {d.process.ppid for d in detections}
    return sorted(detections, key=lambda d: (-SEVERITY_RANK[d.signature.severity],
                                             d.process.pid in parents))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")
