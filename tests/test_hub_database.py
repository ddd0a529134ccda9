"""The hub service's database and strike rules, on SQLite and on a real PostgreSQL.

PostgreSQL: ``COLAB_GUARD_TEST_POSTGRES_URL`` (``.ci/run`` starts Debian's server and sets
it); without it these tests are skipped here, and fail in CI (``CI=true``).
"""

from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import create_engine, inspect, text

from colab_guard.hub.database import HubDatabase, Refused
from colab_guard.hub.handlers import BadReport, parse_report
from tests.hub_harness import POSTGRES_URL, empty_postgres

DAY = 86400.0


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.sqlite'}"
    if not POSTGRES_URL:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but COLAB_GUARD_TEST_POSTGRES_URL is unset: .ci/run starts "
                        "PostgreSQL and sets it")
        pytest.skip("COLAB_GUARD_TEST_POSTGRES_URL is unset (CI sets it; see .ci/run)")
    return empty_postgres(POSTGRES_URL)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def db(db_url, clock):
    database = HubDatabase(db_url, strike_limit=3, strike_window=7 * DAY, clock=clock)
    yield database
    database.close()


def incident(n: int, user: str = "alice", strike: bool = True, package=None, **more) -> dict:
    return {"id": f"inc-{user}-{n}", "user": user, "category": "crypto-mining",
            "severity": "high", "signature": "mining-stratum-url", "status": "done",
            "strike": strike, "dry_run": False, "package": package,
            "actions": [{"action": "record", "target": "incident log", "outcome": "done"},
                        {"action": "interrupt", "target": "kernel", "outcome": "done"}],
            "evidence": {"processes": [{"pid": 42, "cmdline": "./xmrig -o stratum+tcp://x"}]},
            **more}


def test_the_schema_is_alembics_and_migrating_twice_changes_nothing(db_url, clock):
    HubDatabase(db_url, clock=clock).close()
    HubDatabase(db_url, clock=clock).close()  # a restart: upgrade again, nothing to do
    engine = create_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    with engine.connect() as connection:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    assert {"incidents", "appeals", "strike_clears", "bans", "package_verdicts",
            "alembic_version"} <= tables
    assert version == "0002"


def test_strikes_count_to_the_limit_and_the_same_incident_counts_once(db):
    db.upsert(incident(1), "server", "alice", "node-1")
    db.upsert(incident(1, status="acting"), "server", "alice", "node-1")  # sent again
    db.upsert(incident(2), "server", "alice", "node-1")
    assert db.standing("alice").strikes == 2 and not db.standing("alice").banned
    db.upsert(incident(3), "server", "alice", "node-1")
    standing = db.standing("alice", "Platform says no.")
    assert (standing.strikes, standing.banned) == (3, True)
    assert standing.reason.startswith("Platform says no. New servers are refused: 3 strikes "
                                      "(crypto-mining) within 7 days, the limit is 3.")
    assert db.standing("bob").strikes == 0 and not db.standing("bob").banned


def test_an_incident_from_an_installed_package_counts_no_strike_and_is_grouped(db):
    package = {"name": "ultralytics", "version": "8.3.41",
               "path": "/opt/env/lib/python3.11/site-packages/ultralytics/__init__.py"}
    for n, user in enumerate(["alice", "bob", "carol"]):
        db.upsert(incident(n, user=user, package=package), "watcher", "watcher", "node-1")
    db.upsert(incident(9, user="alice", package=package), "watcher", "watcher", "node-1")
    assert all(db.standing(u).strikes == 0 for u in ("alice", "bob", "carol"))
    [group] = db.packages()
    assert (group["name"], group["version"], group["incidents"], group["users"]) == \
        ("ultralytics", "8.3.41", 4, 3)
    assert group["categories"] == ["crypto-mining"]
    assert {i["user"] for i in db.incidents(package="ultralytics")} == {"alice", "bob", "carol"}


def test_an_admin_marks_a_package_run_on_purpose_to_count(db):
    """A forbidden tool published on an index (pproxy), installed and run on purpose: its
    incidents count once an admin says so, for its past incidents too; one version or all."""
    pproxy = {"name": "pproxy", "version": "2.7.9", "path": "/env/bin/pproxy"}
    older = {**pproxy, "version": "2.7.8"}
    db.upsert(incident(1, package=pproxy), "server", "alice", "node-1")
    db.upsert(incident(2, package=older), "server", "alice", "node-1")
    db.upsert(incident(3, package=pproxy, dry_run=True), "server", "alice", "node-1")
    assert db.standing("alice").strikes == 0
    assert db.judge_package("pproxy", "2.7.9", True, "admin", "a proxy")["counts"] is True
    assert db.standing("alice").strikes == 1  # that version, not the dry run
    verdicts = {p["version"]: p["verdict"] for p in db.packages()}
    assert verdicts["2.7.9"]["counts"] and verdicts["2.7.8"] is None
    db.judge_package("pproxy", "", True, "admin")  # every version
    assert db.standing("alice").strikes == 2
    db.judge_package("pproxy", "2.7.9", False, "admin", "that one was a bad release")
    assert db.standing("alice").strikes == 1  # a version's verdict before the package's
    with pytest.raises(Refused):
        db.judge_package(" ", "", True, "admin")


def test_strikes_age_out_of_the_window(db, clock):
    for n in range(3):
        db.upsert(incident(n), "server", "alice", "node-1")
    assert db.standing("alice").banned
    clock.now += 7 * DAY + 1
    assert db.standing("alice").strikes == 0 and not db.standing("alice").banned


def test_a_clear_forgives_earlier_strikes_only(db, clock):
    for n in range(3):
        db.upsert(incident(n), "server", "alice", "node-1")
    db.clear_strikes("alice", "admin", "a false alarm")
    assert not db.standing("alice").banned
    clock.now += 1
    db.upsert(incident(7), "server", "alice", "node-1")
    assert db.standing("alice").strikes == 1


def test_an_accepted_appeal_takes_its_strike_back_a_rejected_one_does_not(db, clock):
    for n in range(3):
        db.upsert(incident(n), "server", "alice", "node-1")
    rejected = db.appeal("inc-alice-0", "alice", "I was benchmarking")
    with pytest.raises(Refused, match="already has an open appeal"):
        db.appeal("inc-alice-0", "alice", "again")
    db.resolve(rejected["id"], "rejected", "admin", "no")
    assert db.standing("alice").banned
    accepted = db.appeal("inc-alice-1", "alice", "this was a dependency")
    assert [a["id"] for a in db.appeals("pending")] == [accepted["id"]]
    db.resolve(accepted["id"], "accepted", "admin", "sorry")
    assert db.standing("alice").strikes == 2 and not db.standing("alice").banned
    with pytest.raises(Refused, match="already accepted"):
        db.resolve(accepted["id"], "rejected", "admin")


def test_a_user_may_appeal_only_their_own_incidents(db):
    db.upsert(incident(1, user="alice"), "server", "alice", "node-1")
    with pytest.raises(Refused) as refused:
        db.appeal("inc-alice-1", "bob", "not mine")
    assert refused.value.status == 404
    with pytest.raises(Refused, match="field 'text'"):
        db.appeal("inc-alice-1", "alice", "   ")


def test_a_ban_holds_without_strikes_until_lifted(db):
    db.ban("bob", "admin", "shared his account")
    standing = db.standing("bob")
    assert standing.banned and standing.strikes == 0 and "shared his account" in standing.reason
    db.ban("bob", "admin", "twice")  # already banned: one ban
    assert [b["user"] for b in db.banned_users()] == ["bob"]
    assert db.unban("bob", "admin")
    assert not db.standing("bob").banned and db.banned_users() == []


def test_a_strike_once_counted_is_not_taken_back_by_a_later_report(db):
    """The server reporting runs as the user: re-sending an incident without its strike
    (or with a package) must not erase it."""
    db.upsert(incident(1), "server", "alice", "node-1")
    db.upsert(incident(1, strike=False, package={"name": "x", "version": "1", "path": ""}),
              "server", "alice", "node-1")
    assert db.standing("alice").strikes == 1


def test_a_servers_report_does_not_replace_the_watchers_and_an_id_keeps_its_user(db):
    db.upsert(incident(1), "watcher", "colab-guard-watcher", "node-1")
    assert db.upsert(incident(1, status="forged"), "server", "alice", "node-1") == "kept"
    assert db.incident("inc-alice-1")["status"] == "done"
    with pytest.raises(Refused) as refused:
        db.upsert({**incident(1), "user": "bob"}, "watcher", "colab-guard-watcher", "node-1")
    assert refused.value.status == 403


def test_the_times_of_the_future_are_now(db, clock):
    """A reporter cannot make a strike last longer by dating it in the future."""
    db.upsert(incident(1, time=clock.now + 365 * DAY), "server", "alice", "node-1")
    clock.now += 7 * DAY + 1
    assert db.standing("alice").strikes == 0


def test_filters(db, clock):
    db.upsert(incident(1, user="alice"), "server", "alice", "n")
    clock.now += 100
    db.upsert(incident(2, user="bob", category="torrenting"), "server", "bob", "n")
    assert [i["id"] for i in db.incidents(user="alice")] == ["inc-alice-1"]
    assert [i["id"] for i in db.incidents(category="torrenting")] == ["inc-bob-2"]
    assert [i["id"] for i in db.incidents(since=clock.now - 50)] == ["inc-bob-2"]
    assert [i["id"] for i in db.incidents()] == ["inc-bob-2", "inc-alice-1"]  # newest first


def test_totals_for_the_metrics(db):
    for n in range(3):
        db.upsert(incident(n), "server", "alice", "n")
    db.upsert(incident(1, user="bob"), "server", "bob", "n")
    db.ban("carol", "admin")
    db.appeal("inc-bob-1", "bob", "why")
    assert db.totals() == {"strikes": 4, "bans": 1, "appeals_open": 1, "users_at_limit": 1}


@pytest.mark.parametrize("body, field", [
    (b"not json", "the body is not JSON"),
    (b"[]", "JSON object"),
    (b'{"source": "kernel", "incidents": []}', "field 'source'"),
    (b'{"source": "server", "node": 3, "incidents": []}', "field 'node'"),
    (b'{"source": "server", "incidents": {}}', "field 'incidents'"),
    (b'{"source": "server", "incidents": [' + b",".join([b"{}"] * 101) + b"]}",
     "at most 100"),
    (b'{"source": "server", "incidents": [{"user": "a", "category": "crypto-mining"}]}',
     "field 'incidents[0].id'"),
    (b'{"source": "server", "incidents": [{"id": "x", "user": "a", "category": "Bad Cat"}]}',
     "field 'incidents[0].category'"),
    (b'{"source": "server", "incidents": [{"id": "x", "user": "a", "category": "proxy", '
     b'"strike": "yes"}]}', "field 'incidents[0].strike'"),
    (b'{"source": "server", "incidents": [{"id": "x", "user": "a", "category": "proxy", '
     b'"package": {"version": "1"}}]}', "field 'incidents[0].package.name'"),
    (b'{"source": "server", "incidents": [{"id": "x", "user": "a", "category": "proxy", '
     b'"actions": [{"action": "explode"}]}]}', "field 'incidents[0].actions[0].action'"),
])
def test_a_malformed_report_is_refused_naming_the_field(body, field):
    with pytest.raises(BadReport, match=field.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(")):
        parse_report(body)


def test_a_well_formed_report_parses():
    from colab_guard.record.incident import Action, Incident

    found = Incident(kernel_id="k", category="crypto-mining", severity="high", signature="s",
                     description="d", user="alice", actions=[Action("stop", "pid 1", "done")],
                     time=time.time(), strike=True).to_dict()
    source, node, incidents = parse_report(
        __import__("json").dumps({"source": "server", "node": "n1",
                                  "incidents": [{**found, "package": None}]}).encode())
    assert (source, node, incidents[0]["id"]) == ("server", "n1", found["id"])
