"""The SQLite incident database on real files: restarts, upgrades, bad files, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3

import pytest

from colab_guard.record.database import (SCHEMA_VERSION, AppealError, DatabaseError,
                                         IncidentDatabase, IncidentStore)
from colab_guard.record.incident import Action
from colab_guard.record.store import IncidentLog
from tests.guard_users import enforced_incident


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'db' / 'incidents.sqlite'}"


def test_every_incident_survives_a_reopen(url):
    db = IncidentDatabase(url, recover=True)
    saved = [enforced_incident("alice", category=c) for c in ("crypto-mining", "torrenting")]
    saved.append(enforced_incident("bob", dry_run=True))
    for incident in saved:
        assert db.save(incident)
    appeal = db.appeal(saved[0].id, "alice", "a benchmark")
    db.close()

    again = IncidentDatabase(url, recover=True)
    for incident in saved:
        assert again.get(incident.id).to_dict() == incident.to_dict()
    assert {i.id for i in again.query()} == {i.id for i in saved}
    assert again.appeals(user="alice")[0].to_dict() == appeal.to_dict()
    assert len(again.strikes("alice")) == 2
    assert again.strikes("bob") == []  # a dry-run incident is not a strike


def test_an_incident_left_acting_is_marked_unfinished_at_the_next_start(url):
    db = IncidentDatabase(url, recover=True)
    incident = enforced_incident()
    incident.status = "acting"
    incident.actions[1].outcome = "pending"
    db.save(incident)
    db.close()

    reader = IncidentDatabase(url)  # the CLI: must not touch a running server's incidents
    assert reader.get(incident.id).status == "acting"
    restarted = IncidentDatabase(url, recover=True)
    found = restarted.get(incident.id)
    assert found.status == "unfinished"
    assert found.actions[1].outcome == "unknown"


def test_saving_again_updates_the_incident_and_its_actions(url):
    db = IncidentDatabase(url)
    incident = enforced_incident()
    incident.status = "acting"
    db.save(incident)
    incident.status = "done"
    incident.actions.append(Action("stop", "pid 4242", "done", "stopped"))
    db.save(incident)
    found = db.get(incident.id)
    assert found.status == "done"
    assert [a.target for a in found.actions] == ["incident log", "kernel", "pid 4242"]
    assert len(db.query()) == 1 and len(db.strikes()) == 1


def test_query_filters_and_order(url):
    db = IncidentDatabase(url)
    first = enforced_incident("alice", time=1000.0)
    second = enforced_incident("alice", category="torrenting", time=2000.0, kernel_id="k-2")
    third = enforced_incident("bob", time=3000.0)
    for incident in (first, second, third):
        db.save(incident)
    assert [i.id for i in db.query()] == [third.id, second.id, first.id]
    assert [i.id for i in db.query(user="alice")] == [second.id, first.id]
    assert [i.id for i in db.query(category="torrenting")] == [second.id]
    assert [i.id for i in db.query(kernel_id="k-2")] == [second.id]
    assert [i.id for i in db.query(since=1500)] == [third.id, second.id]
    assert [i.id for i in db.query(limit=1)] == [third.id]
    assert db.count(user="alice", since=1500) == 1


# ------------------------------------------------------------ upgrade


V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
CREATE TABLE incidents (id TEXT PRIMARY KEY, time REAL NOT NULL, user TEXT NOT NULL,
    category TEXT NOT NULL, kernel_id TEXT NOT NULL, dry_run INTEGER NOT NULL,
    status TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX incidents_time ON incidents (time);
CREATE TABLE actions (incident_id TEXT NOT NULL REFERENCES incidents (id), seq INTEGER NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL,
    PRIMARY KEY (incident_id, seq));
"""


def write_v1(path, incident) -> None:
    """A database as colab-guard's schema version 1 wrote it: incidents and actions only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    data = {k: v for k, v in incident.to_dict().items()
            if k not in ("id", "time", "user", "category", "kernel_id", "dry_run", "status",
                         "actions", "summary")}
    db.execute("INSERT INTO incidents VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               (incident.id, incident.time, incident.user, incident.category, incident.kernel_id,
                0, incident.status, json.dumps(data)))
    for n, a in enumerate(incident.actions):
        db.execute("INSERT INTO actions VALUES (?, ?, ?, ?, ?, ?)",
                   (incident.id, n, a.action, a.target, a.outcome, a.detail))
    db.commit()
    db.close()


def test_a_version_1_database_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    incident = enforced_incident("alice")
    write_v1(path, incident)

    db = IncidentDatabase(f"sqlite:///{path}", recover=True)
    assert db.schema_version() == SCHEMA_VERSION
    assert db.get(incident.id).to_dict() == incident.to_dict()
    assert [s.incident_id for s in db.strikes("alice")] == [incident.id]  # enforced: a strike
    appeal = db.appeal(incident.id, "alice", "upgraded, and appealable")
    assert db.appeals(incident_id=incident.id) == [appeal]
    db.close()
    assert IncidentDatabase(f"sqlite:///{path}").schema_version() == SCHEMA_VERSION


def test_a_database_newer_than_this_version_is_refused(url):
    IncidentDatabase(url).close()
    path = url[len("sqlite:///"):]
    raw = sqlite3.connect(path)
    raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    raw.commit()
    raw.close()
    with pytest.raises(DatabaseError, match="newer than this colab-guard knows"):
        IncidentDatabase(url)


# ------------------------------------------------------------ bad files


def test_a_corrupt_file_is_a_clear_error_naming_it(tmp_path):
    path = tmp_path / "incidents.sqlite"
    path.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(DatabaseError) as err:
        IncidentDatabase(f"sqlite:///{path}")
    assert "ColabGuard.database_url" in str(err.value) and str(path) in str(err.value)
    assert "not a usable SQLite database" in str(err.value)


def test_another_programs_database_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE songs (title TEXT)")
    raw.commit()
    raw.close()
    with pytest.raises(DatabaseError, match="database of something else"):
        IncidentDatabase(f"sqlite:///{path}")


def test_an_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(DatabaseError, match="cannot create its folder"):
        IncidentDatabase(f"sqlite:///{blocker / 'incidents.sqlite'}")


@pytest.mark.parametrize("bad", ["postgresql://db/incidents", "sqlite:///", "/var/incidents.db"])
def test_a_url_that_is_not_sqlite_is_refused(bad):
    with pytest.raises(DatabaseError, match="expected sqlite:///PATH"):
        IncidentDatabase(bad)


# ------------------------------------------------------------ failures and concurrency


def test_a_failed_write_is_kept_served_and_retried(url):
    db = IncidentDatabase(url, busy_timeout=0.05)
    blocker = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock for too long
    incident = enforced_incident()
    assert db.save(incident) is False
    assert db.unwritten == 1
    assert db.get(incident.id) is incident
    assert [i.id for i in db.query()] == [incident.id]
    blocker.execute("ROLLBACK")
    assert db.flush() is True and db.unwritten == 0
    assert IncidentDatabase(url).get(incident.id).to_dict() == incident.to_dict()


def test_the_store_writes_the_database_and_the_json_lines_log(url, tmp_path):
    store = IncidentStore(IncidentDatabase(url), IncidentLog(tmp_path / "incidents.jsonl"))
    incident = enforced_incident()
    assert store.save(incident)
    lines = (tmp_path / "incidents.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["id"] == incident.id
    assert IncidentDatabase(url).get(incident.id).to_dict() == incident.to_dict()


def _write_many(url: str, user: str, count: int) -> None:
    db = IncidentDatabase(url)
    for _ in range(count):
        assert db.save(enforced_incident(user))


def test_concurrent_writers_lose_nothing(url):
    IncidentDatabase(url).close()
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(url, f"user{n}", 40)) for n in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0, 0, 0, 0]
    db = IncidentDatabase(url)
    assert db.count() == 160
    assert {len(db.strikes(f"user{n}")) for n in range(4)} == {40}


def test_two_connections_cannot_both_open_an_appeal(url):
    first, second = IncidentDatabase(url), IncidentDatabase(url)
    incident = enforced_incident()
    first.save(incident)
    first.appeal(incident.id, "alice", "one")
    with pytest.raises(AppealError) as err:
        second.appeal(incident.id, "alice", "two")
    assert err.value.status == 409


def test_clearing_strikes_and_the_window(url):
    db = IncidentDatabase(url)
    old = enforced_incident("alice", time=1000.0)
    recent = enforced_incident("alice")
    db.save(old)
    db.save(recent)
    assert [s.incident_id for s in db.strikes("alice", window=3600)] == [recent.id]
    assert db.clear_strikes("alice", "root-admin") == 2
    assert db.strikes("alice") == []


def test_the_server_refuses_to_start_on_a_corrupt_database(tmp_path):
    from colab_guard.app import ColabGuard

    path = tmp_path / "incidents.sqlite"
    path.write_bytes(b"\x00garbage" * 1000)
    app = ColabGuard(database_url=f"sqlite:///{path}", incident_log=str(tmp_path / "i.jsonl"))
    with pytest.raises(SystemExit) as stopped:
        app.initialize_settings()
    assert isinstance(stopped.value.__cause__, DatabaseError)
    assert str(path) in str(stopped.value.__cause__)


def test_incidents_a_stop_left_unfinished_reach_the_log_too(url, tmp_path):
    log_path = tmp_path / "incidents.jsonl"
    incident = enforced_incident()
    incident.status = "acting"
    IncidentStore(IncidentDatabase(url), IncidentLog(log_path)).save(incident)

    IncidentStore(IncidentDatabase(url, recover=True), IncidentLog(log_path))  # the next start
    last = json.loads(log_path.read_text().splitlines()[-1])
    assert (last["id"], last["status"]) == (incident.id, "unfinished")
