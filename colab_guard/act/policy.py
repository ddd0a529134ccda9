"""The policy: which action a detection gets.

Actions, weakest first: record, warn, stop, interrupt, shutdown. Each includes
the ones before it: ``interrupt`` stops the offending processes, then
interrupts the kernel.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..detect.engine import Detection

ACTIONS = ("record", "warn", "stop", "interrupt", "shutdown")
RANK = {a: i for i, a in enumerate(ACTIONS)}

DEFAULT_ACTIONS = {
    "crypto-mining": "interrupt",
    "password-cracking": "interrupt",
    "torrenting": "interrupt",
    "deepfake": "interrupt",
    "remote-access": "interrupt",
    "proxy": "interrupt",
    "denial-of-service": "interrupt",
    "scanning": "interrupt",
    "web-hosting": "record",
    "tampering": "record",
}


def choose_action(detections: list[Detection], actions: Mapping[str, str], default: str) -> str:
    """The strongest action any of the detections calls for."""
    chosen = "record"
    for d in detections:
        action = d.signature.action or actions.get(d.signature.category, default)
        if RANK[action] > RANK[chosen]:
            chosen = action
    return chosen


def stops_processes(action: str) -> bool:
    return RANK[action] >= RANK["stop"]
