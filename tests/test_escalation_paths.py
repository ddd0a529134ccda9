"""One offence, one incident, on the paths beyond the user's own server: a kernel that goes
on offending past its interrupt is shut down within the interrupt's incident (monitor.py
``_escalate``), and that holds in the hub's record and standing, and end to end through
the node watcher and the user's server.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest

from tests.test_hub_database import DAY, Clock  # noqa: F401
from tests.test_hub_database import clock, db_url  # noqa: F401 (fixtures)
from colab_guard.hub.database import HubDatabase

# ---------------------------------------------------------------- the hub


@pytest.fixture
def hub_db(db_url, clock):  # noqa: F811 (fixtures imported above)
    database = HubDatabase(db_url, strike_limit=3, strike_window=7 * DAY, clock=clock)
    yield database
    database.close()


def versions(incident_id: str, user: str) -> dict[str, dict]:
    """The versions of one escalated incident a reporter sends (reporter.py queues each: when
    recorded and when done, for the interrupt, then again for the shutdown carried out in
    it), by name."""
    def version(status: str, *actions: tuple[str, str], escalated: bool = False) -> dict:
        evidence = {"processes": [{"pid": 42, "is_kernel": True}]}
        if escalated:
            evidence["escalation"] = "the kernel went on within 60 s of its interrupt"
        return {"id": incident_id, "user": user, "category": "crypto-mining",
                "severity": "high", "signature": "mining-library-loaded", "status": status,
                "strike": True, "dry_run": False, "package": None, "evidence": evidence,
                "actions": [{"action": "record", "target": "incident log", "outcome": "done"},
                            *({"action": a, "target": "kernel", "outcome": o}
                              for a, o in actions)]}

    return {"interrupting": version("acting", ("interrupt", "pending")),
            "interrupted": version("done", ("interrupt", "done")),
            "shutting down": version("acting", ("interrupt", "done"), ("shutdown", "pending"),
                                     escalated=True),
            "shut down": version("done", ("interrupt", "done"), ("shutdown", "done"),
                                 escalated=True)}


ORDERS = list(itertools.permutations(["interrupting", "interrupted", "shutting down",
                                      "shut down"]))


@pytest.mark.parametrize("source", ["watcher", "server"])
def test_an_escalated_incident_stays_one_incident_and_one_strike_in_whatever_order_its_versions_arrive(
        hub_db, clock, source):
    """Reported with the interrupt, then again with the shutdown appended: one incident, its
    strongest action the shutdown, one strike, in any of the 24 orders the four versions can
    arrive in (a retried batch, an appeal sending the queued version from another thread:
    a late older version must not overwrite the newer)."""
    for n, order in enumerate(ORDERS):
        user = f"user{n}"
        sent = versions(f"inc-{n}", user)
        for name in order:
            hub_db.upsert(sent[name], source, "colab-guard-watcher", "node-1")
            clock.now += 0.5
        [stored] = hub_db.incidents(user=user)
        kernel_steps = [(a["action"], a["outcome"]) for a in stored["actions"]
                        if a["target"] == "kernel"]
        assert (stored["id"], stored["action"], stored["status"], kernel_steps,
                "escalation" in stored["evidence"]) == (
            f"inc-{n}", "shutdown", "done", [("interrupt", "done"), ("shutdown", "done")],
            True), order
        assert hub_db.standing(user).strikes == 1, order
    assert hub_db.totals()["strikes"] == len(ORDERS)


def test_a_later_version_of_the_same_progress_still_replaces_the_stored_one(hub_db):
    """What is kept is the furthest version, not the first: a version as far along (a
    coalesced incident listing more offenders while it acts) replaces the stored one."""
    first = versions("inc-c", "carol")["interrupting"]
    more = {**first, "evidence": {"processes": [{"pid": 42}, {"pid": 43}]}}
    hub_db.upsert(first, "watcher", "colab-guard-watcher", "node-1")
    assert hub_db.upsert(more, "watcher", "colab-guard-watcher", "node-1") == "updated"
    assert [p["pid"] for p in hub_db.incident("inc-c")["evidence"]["processes"]] == [42, 43]
