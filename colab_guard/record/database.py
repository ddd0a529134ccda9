"""The incident database: incidents, their actions, appeals and strikes, in SQLite.

The API and the command line read it; the JSON lines log (store.py) stays
beside it for log shippers. ``IncidentStore`` writes both.

- WAL journal, ``synchronous=FULL``: a committed incident survives a crash,
  readers (the CLI) never block the server, and several writers (the server,
  an admin's CLI, another server sharing the file) wait for each other
  (``busy_timeout``) instead of failing.
- Versioned schema: ``MIGRATIONS[n]`` turns version n-1 into n; a database
  written by an older version is upgraded in place when it is opened.
- A write that fails (disk full, locked too long) never blocks an action:
  the incident stays in memory, is served from there, and is retried at
  every tick.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .incident import Action, Incident, _iso
from .retried import RetriedWrites

SCHEMA_VERSION = 3
BUSY_TIMEOUT = 10.0  # seconds a writer waits for another one
APPEAL_MAX_TEXT = 2000

MIGRATIONS = {
    1: """
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        INSERT INTO schema_version VALUES (0);
        CREATE TABLE incidents (
            id TEXT PRIMARY KEY,
            time REAL NOT NULL,
            user TEXT NOT NULL,
            category TEXT NOT NULL,
            kernel_id TEXT NOT NULL,
            dry_run INTEGER NOT NULL,
            status TEXT NOT NULL,
            data TEXT NOT NULL  -- the rest of the incident, JSON
        );
        CREATE INDEX incidents_time ON incidents (time);
        CREATE TABLE actions (
            incident_id TEXT NOT NULL REFERENCES incidents (id),
            seq INTEGER NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT NOT NULL,
            PRIMARY KEY (incident_id, seq)
        );
    """,
    2: """
        CREATE INDEX incidents_user_time ON incidents (user, time);
        CREATE TABLE appeals (
            id TEXT PRIMARY KEY,
            incident_id TEXT NOT NULL REFERENCES incidents (id),
            user TEXT NOT NULL,
            text TEXT NOT NULL,
            time REAL NOT NULL,
            status TEXT NOT NULL,  -- pending, accepted, rejected
            reply TEXT,
            resolved_by TEXT,
            resolved_time REAL
        );
        CREATE INDEX appeals_incident ON appeals (incident_id);
        CREATE UNIQUE INDEX appeals_one_pending ON appeals (incident_id) WHERE status = 'pending';
        CREATE TABLE strikes (
            incident_id TEXT PRIMARY KEY REFERENCES incidents (id),
            user TEXT NOT NULL,
            time REAL NOT NULL,
            category TEXT NOT NULL,
            cleared_time REAL,
            cleared_by TEXT,
            cleared_reason TEXT
        );
        CREATE INDEX strikes_user_time ON strikes (user, time);
        -- incidents enforced before strikes existed count as strikes
        INSERT INTO strikes (incident_id, user, time, category)
            SELECT id, user, time, category FROM incidents
            WHERE dry_run = 0 AND id IN (SELECT incident_id FROM actions
                                         WHERE action IN ('stop', 'interrupt', 'shutdown'));
    """,
    3: """
        -- fair strikes: the installed distribution an incident's program came from
        ALTER TABLE incidents ADD COLUMN package TEXT;
        CREATE INDEX incidents_package ON incidents (package);
    """,
}


class DatabaseError(RuntimeError):
    """The database cannot be used at all (reported at server start, naming the file)."""


class AppealError(ValueError):
    """An appeal that cannot be made or resolved; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Appeal:
    id: str
    incident_id: str
    user: str
    text: str
    time: float
    status: str = "pending"
    reply: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "incident_id": self.incident_id, "user": self.user,
                "text": self.text, "time": _iso(self.time), "status": self.status,
                "reply": self.reply}


@dataclass
class Strike:
    incident_id: str
    user: str
    time: float
    category: str

    def to_dict(self) -> dict[str, Any]:
        return {"incident_id": self.incident_id, "user": self.user, "time": _iso(self.time),
                "category": self.category}


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative/path`` or ``sqlite:////absolute/path`` (SQLAlchemy's form)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise DatabaseError(f"ColabGuard.database_url {url!r}: expected sqlite:///PATH "
                            "(only SQLite is supported)")
    return Path(url[len(prefix):]).expanduser()


class IncidentDatabase(RetriedWrites):
    """The SQLite store. ``recover=True`` (the server) marks incidents left acting as unfinished."""

    store_name = "incident database"
    write_error = sqlite3.Error

    def __init__(self, url: str, log: logging.Logger | None = None, recover: bool = False,
                 busy_timeout: float = BUSY_TIMEOUT):
        super().__init__(log)
        self.url = url
        self.busy_timeout = busy_timeout
        self.path = sqlite_path(url)
        self._lock = threading.RLock()
        self.recovered: list[str] = []  # ids marked unfinished at this start
        self._db = self._connect()
        self._upgrade()
        if recover:
            self._mark_unfinished()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ opening

    def _connect(self) -> sqlite3.Connection:
        where = f"ColabGuard.database_url: {str(self.path)!r}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DatabaseError(f"{where}: cannot create its folder: {err}") from None
        if not os.access(self.path.parent, os.W_OK) or \
                (self.path.exists() and not os.access(self.path, os.W_OK)):
            raise DatabaseError(f"{where}: not writable (the file or its folder)")
        try:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as err:
            raise DatabaseError(f"{where}: not a usable SQLite database ({err}); move it aside "
                                "to start a new one") from None
        if check != "ok":
            raise DatabaseError(f"{where}: the database is corrupt ({check}); move it aside to "
                                "start a new one")
        return db

    def schema_version(self) -> int:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            if tables:
                raise DatabaseError(f"ColabGuard.database_url: {str(self.path)!r} is a SQLite "
                                    f"database of something else (tables: {', '.join(sorted(tables))})")
            return 0
        return self._db.execute("SELECT version FROM schema_version").fetchone()[0]

    def _upgrade(self) -> None:
        try:
            with self._transaction():
                version = self.schema_version()
                if version > SCHEMA_VERSION:
                    raise DatabaseError(
                        f"ColabGuard.database_url: {str(self.path)!r} has schema version "
                        f"{version}, newer than this colab-guard knows ({SCHEMA_VERSION}); "
                        "upgrade colab-guard")
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _statements(MIGRATIONS[step]):
                        self._db.execute(statement)
                    self._db.execute("UPDATE schema_version SET version = ?", (step,))
                if version < SCHEMA_VERSION and version > 0:
                    self.log.warning("colab-guard: upgraded the incident database %s from schema "
                                     "version %d to %d", self.path, version, SCHEMA_VERSION)
        except sqlite3.Error as err:
            raise DatabaseError(f"ColabGuard.database_url: {str(self.path)!r} cannot be "
                                f"written: {err}") from None

    def _mark_unfinished(self) -> None:
        """Incidents left "acting" by a server that stopped mid-action."""
        with self._transaction():
            self.recovered = [row[0] for row in self._db.execute(
                "SELECT id FROM incidents WHERE status = 'acting'")]
            count = self._db.execute(
                "UPDATE incidents SET status = 'unfinished' WHERE status = 'acting'").rowcount
            self._db.execute(
                "UPDATE actions SET outcome = 'unknown', detail = 'the server stopped before "
                "this action was reported done' WHERE outcome = 'pending' AND incident_id IN "
                "(SELECT id FROM incidents WHERE status = 'unfinished')")
        if count:
            self.log.warning("colab-guard: %d incident(s) were interrupted by a server stop; "
                             "marked unfinished", count)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; the write lock is taken at once, so writers queue."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------ incidents

    def _write(self, incidents: list[Incident]) -> None:
        """Commit the incidents (and their strikes) in one transaction."""
        with self._transaction():
            for incident in incidents:
                self._upsert(incident)

    def _upsert(self, inc: Incident) -> None:
        data = inc.to_dict()
        for key in ("id", "time", "user", "category", "kernel_id", "dry_run", "status",
                    "actions", "summary"):
            data.pop(key, None)
        self._db.execute(
            "INSERT INTO incidents (id, time, user, category, kernel_id, dry_run, status, package, "
            "data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET status = "
            "excluded.status, package = excluded.package, data = excluded.data",
            (inc.id, inc.time, inc.user, inc.category, inc.kernel_id, int(inc.dry_run), inc.status,
             inc.package.get("name") if inc.package else None,
             json.dumps(data, ensure_ascii=False)))
        self._db.execute("DELETE FROM actions WHERE incident_id = ?", (inc.id,))
        self._db.executemany(
            "INSERT INTO actions (incident_id, seq, action, target, outcome, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(inc.id, n, a.action, a.target, a.outcome, a.detail) for n, a in enumerate(inc.actions)])
        if inc.strike and not inc.dry_run:
            self._db.execute("INSERT OR IGNORE INTO strikes (incident_id, user, time, category) "
                             "VALUES (?, ?, ?, ?)", (inc.id, inc.user, inc.time, inc.category))

    def refusals(self, user: str, category: str, since: float, before: str = "") -> int:
        """Refused cells of ``user`` in ``category`` since ``since`` (not dry run), other
        than incident ``before``: the policy counts them to decide whether a refusal is a
        strike."""
        return self._one(
            "SELECT COUNT(*) FROM incidents i WHERE user = ? AND category = ? AND time >= ? "
            "AND dry_run = 0 AND id != ? AND EXISTS (SELECT 1 FROM actions a WHERE "
            "a.incident_id = i.id AND a.action = 'refuse')", (user, category, since, before))

    def get(self, incident_id: str) -> Incident | None:
        if incident_id in self._unwritten:
            return self._unwritten[incident_id]
        found = self._select("WHERE id = ?", (incident_id,))
        return found[0][1] if found else None

    def query(self, user: str | None = None, category: str | None = None,
              kernel_id: str | None = None, since: float | None = None,
              limit: int | None = None, package: str | None = None) -> list[Incident]:
        """Newest first; incidents not yet written are included. ``package``: those whose
        program came from this installed distribution."""
        where, params = _filters(user=user, category=category, kernel_id=kernel_id, since=since,
                                 package=package)
        sql = f"{where} ORDER BY time DESC" + (" LIMIT ?" if limit is not None else "")
        found = [self._unwritten.get(inc.id, inc)
                 for _, inc in self._select(sql, params + ([limit] if limit is not None else []))]
        pending = [i for i in self._unwritten.values() if i.id not in {f.id for f in found}
                   and _matches(i, user, category, kernel_id, since)
                   and (package is None or (i.package or {}).get("name") == package)]
        merged = sorted(found + pending, key=lambda i: -i.time)
        return merged[:limit] if limit is not None else merged

    def count(self, user: str | None = None, since: float | None = None) -> int:
        where, params = _filters(user=user, since=since)
        stored = self._one(f"SELECT COUNT(*) FROM incidents {where}", params)
        return stored + sum(1 for i in self._unwritten.values()
                            if _matches(i, user, None, None, since) and not self._exists(i.id))

    def after(self, rowid: int, limit: int = 100) -> list[tuple[int, Incident]]:
        """Incidents first written after ``rowid`` (as returned here), oldest first: for tail."""
        return self._select("WHERE rowid > ? ORDER BY rowid LIMIT ?", (rowid, limit))

    def last_rowid(self) -> int:
        return self._one("SELECT COALESCE(MAX(rowid), 0) FROM incidents")

    def ids_starting_with(self, table: str, prefix: str, limit: int = 10) -> list[str]:
        """Ids in ``incidents`` or ``appeals`` that start with ``prefix`` (for short ids)."""
        assert table in ("incidents", "appeals")
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._lock:
            rows = self._db.execute(f"SELECT id FROM {table} WHERE id LIKE ? ESCAPE '\\' LIMIT ?",
                                    (pattern, limit)).fetchall()
        return [r[0] for r in rows]

    def _exists(self, incident_id: str) -> bool:
        return self._one("SELECT COUNT(*) FROM incidents WHERE id = ?", (incident_id,)) > 0

    def _one(self, sql: str, params=()):
        with self._lock:
            return self._db.execute(sql, params).fetchone()[0]

    def _select(self, where: str, params) -> list[tuple[int, Incident]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, id, time, user, category, kernel_id, dry_run, status, data "
                f"FROM incidents {where}", params).fetchall()
            result = []
            for rowid, *columns, data in rows:
                record = json.loads(data)
                record.update(zip(("id", "time", "user", "category", "kernel_id", "dry_run",
                                   "status"), columns))
                record["dry_run"] = bool(record["dry_run"])
                record["actions"] = []
                incident = Incident.from_dict(record)
                incident.actions = [Action(*a) for a in self._db.execute(
                    "SELECT action, target, outcome, detail FROM actions WHERE incident_id = ? "
                    "ORDER BY seq", (incident.id,))]
                result.append((rowid, incident))
            return result

    # ------------------------------------------------------------ appeals

    def appeal(self, incident_id: str, user: str, text: str) -> Appeal:
        """A new pending appeal; AppealError 409 if one is already pending."""
        text = text.strip()
        if not 1 <= len(text) <= APPEAL_MAX_TEXT:
            raise AppealError(f"field 'text' must be 1 to {APPEAL_MAX_TEXT} characters")
        self.flush()  # the incident must be in the database
        appeal = Appeal(uuid.uuid4().hex, incident_id, user, text, time.time())
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT INTO appeals (id, incident_id, user, text, time, status) "
                    "VALUES (?, ?, ?, ?, ?, 'pending')",
                    (appeal.id, incident_id, user, text, appeal.time))
        except sqlite3.IntegrityError:
            if not self._exists(incident_id):
                raise AppealError(f"no incident with id {incident_id!r}", 404) from None
            raise AppealError("this incident already has a pending appeal", 409) from None
        return appeal

    def resolve_appeal(self, appeal_id: str, decision: str, reply: str, admin: str) -> Appeal:
        """Accept (the incident's strike is removed) or reject a pending appeal."""
        if decision not in ("accept", "reject"):
            raise AppealError("field 'decision' must be 'accept' or 'reject'")
        status = "accepted" if decision == "accept" else "rejected"
        with self._transaction():
            appeal = self.get_appeal(appeal_id)
            if appeal is None:
                raise AppealError(f"no appeal with id {appeal_id!r}", 404)
            if appeal.status != "pending":
                raise AppealError(f"this appeal was already {appeal.status}", 409)
            now = time.time()
            self._db.execute("UPDATE appeals SET status = ?, reply = ?, resolved_by = ?, "
                             "resolved_time = ? WHERE id = ?",
                             (status, reply, admin, now, appeal_id))
            if status == "accepted":
                self._db.execute("UPDATE strikes SET cleared_time = ?, cleared_by = ?, "
                                 "cleared_reason = 'appeal accepted' WHERE incident_id = ? AND "
                                 "cleared_time IS NULL", (now, admin, appeal.incident_id))
        appeal.status, appeal.reply = status, reply
        return appeal

    def get_appeal(self, appeal_id: str) -> Appeal | None:
        found = self._appeals("WHERE id = ?", (appeal_id,))
        return found[0] if found else None

    def appeals(self, user: str | None = None, incident_id: str | None = None,
                status: str | None = None) -> list[Appeal]:
        """Newest first."""
        where, params = _filters(user=user, incident_id=incident_id, status=status)
        return self._appeals(f"{where} ORDER BY time DESC", params)

    def appeals_by_incident(self, incident_ids: list[str]) -> dict[str, list[Appeal]]:
        """Each incident's appeals, oldest first."""
        result: dict[str, list[Appeal]] = {i: [] for i in incident_ids}
        for start in range(0, len(incident_ids), 500):
            chunk = incident_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for appeal in self._appeals(f"WHERE incident_id IN ({marks}) ORDER BY time", chunk):
                result[appeal.incident_id].append(appeal)
        return result

    def _appeals(self, where: str, params) -> list[Appeal]:
        with self._lock:
            rows = self._db.execute("SELECT id, incident_id, user, text, time, status, reply "
                                    f"FROM appeals {where}", params).fetchall()
        return [Appeal(*row) for row in rows]

    # ------------------------------------------------------------ strikes

    def strikes(self, user: str | None = None, window: float | None = None) -> list[Strike]:
        """Strikes in force (not cleared, within the window), newest first."""
        self.flush()
        where, params = _filters(user=user, since=time.time() - window if window else None)
        where += (" AND" if where else "WHERE") + " cleared_time IS NULL"
        with self._lock:
            rows = self._db.execute("SELECT incident_id, user, time, category FROM strikes "
                                    f"{where} ORDER BY time DESC", params).fetchall()
        return [Strike(*row) for row in rows]

    def clear_strikes(self, user: str, admin: str, reason: str = "cleared by an admin") -> int:
        """Clear every strike in force against ``user``; how many were cleared."""
        with self._transaction():
            return self._db.execute(
                "UPDATE strikes SET cleared_time = ?, cleared_by = ?, cleared_reason = ? "
                "WHERE user = ? AND cleared_time IS NULL", (time.time(), admin, reason, user)).rowcount


class IncidentStore:
    """The database and the JSON lines log, written together; reads come from the database."""

    def __init__(self, database: IncidentDatabase, log_file=None):
        self.database = database
        self.log_file = log_file
        if log_file is not None:  # the log's readers learn of incidents a stop left unfinished
            for incident_id in database.recovered:
                log_file.save(database.get(incident_id))

    def save(self, incident: Incident) -> bool:
        committed = self.database.save(incident)
        logged = self.log_file.save(incident) if self.log_file is not None else True
        return committed and logged

    def flush(self) -> bool:
        committed = self.database.flush()
        logged = self.log_file.flush() if self.log_file is not None else True
        return committed and logged

    @property
    def unwritten(self) -> int:
        return self.database.unwritten + (self.log_file.unwritten if self.log_file else 0)

    def get(self, incident_id: str) -> Incident | None:
        return self.database.get(incident_id)

    def query(self, **filters) -> list[Incident]:
        return self.database.query(**filters)

    def __getattr__(self, name: str):
        # appeals, strikes, count...: the database's
        return getattr(self.database, name)


def incident_view(incident: Incident, appeals: list[Appeal],
                  recorded_by: str = "server") -> dict[str, Any]:
    """An incident as the API and the CLI show it: with its appeals, and who recorded it
    ("server", or "node watcher" for one the watcher told the server of)."""
    return {**incident.to_dict(), "appeals": [a.to_dict() for a in appeals],
            "recorded_by": recorded_by}


def _filters(**values) -> tuple[str, list]:
    clauses, params = [], []
    for name, value in values.items():
        if value is None:
            continue
        clauses.append("time >= ?" if name == "since" else f"{name} = ?")
        params.append(value)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _matches(inc: Incident, user, category, kernel_id, since) -> bool:
    return ((user is None or inc.user == user) and (category is None or inc.category == category)
            and (kernel_id is None or inc.kernel_id == kernel_id)
            and (since is None or inc.time >= since))


def _statements(script: str) -> list[str]:
    """A migration script's statements (none contains ';' inside a literal)."""
    lines = [line.split("--")[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
