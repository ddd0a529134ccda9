"""The hub service's database: every user's incidents, appeals, strike clears and bans.

SQLAlchemy 2 models; SQLite by default, PostgreSQL (or any SQLAlchemy URL) as JupyterHub's
own ``db_url``. The schema is alembic's (``alembic/``): ``HubDatabase`` upgrades it to the
newest revision when it opens, as JupyterHub does with its own database.

The strike rules live here, on data: an incident counts as a strike when its reporter says
it is one (``strike``, decided by the guard's policy, ``colab_guard/act/policy.py``) and it
names no installed ``package`` (a compromised release running in many users' notebooks is
the package's fault, not theirs); it counts within ``strike_window`` seconds, after the
user's last strike clear, unless an appeal of it was accepted. Once counted, an incident
stays counted: a later report of the same id (the reporter runs as the user) cannot take
its strike back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text,
                        and_, create_engine, event, func, or_, select)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ..vocabulary import ENFORCING_ACTIONS, RANK

HERE = Path(__file__).resolve().parent
APPEAL_MAX_TEXT = 2000
NOTE_MAX_TEXT = 2000
APPEAL_STATUSES = ("pending", "accepted", "rejected")
#: an incident's statuses once its actions are over (record/incident.py: acting -> done)
COMPLETE = ("done", "unfinished")


class Base(DeclarativeBase):
    pass


class Incident(Base):
    """One incident, the last version reported (an upsert by id)."""

    __tablename__ = "incidents"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(255))
    category: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))  # the strongest action taken (vocabulary)
    severity: Mapped[str] = mapped_column(String(16), default="")
    signature: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(32), default="")
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    strike: Mapped[bool] = mapped_column(Boolean, default=False)  # as reported (sticky)
    counted: Mapped[bool] = mapped_column(Boolean, default=False)  # strike and no package
    package_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    package_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    source: Mapped[str] = mapped_column(String(16))  # "server" or "watcher"
    reported_by: Mapped[str] = mapped_column(String(255))  # the token's owner
    node: Mapped[str] = mapped_column(String(255), default="")
    time: Mapped[float] = mapped_column(Float)  # when it happened (never after received)
    received: Mapped[float] = mapped_column(Float)  # first report
    updated: Mapped[float] = mapped_column(Float)  # last report
    data: Mapped[dict] = mapped_column(JSON)  # the incident as reported: evidence, actions...

    __table_args__ = (Index("ix_incidents_user_time", "user", "time"),
                      Index("ix_incidents_package", "package_name"),
                      Index("ix_incidents_time", "time"))

    def to_dict(self) -> dict[str, Any]:
        return {**self.data, "id": self.id, "user": self.user, "category": self.category,
                "strike": self.strike, "counted": self.counted, "source": self.source,
                "reported_by": self.reported_by, "node": self.node, "received": self.received,
                "updated": self.updated, "action": self.action,
                "package": self.data.get("package")}


class Appeal(Base):
    __tablename__ = "appeals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    time: Mapped[float] = mapped_column(Float)
    reply: Mapped[str | None] = mapped_column(Text, nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    resolved_time: Mapped[float | None] = mapped_column(Float, nullable=True)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "incident_id": self.incident_id, "user": self.user,
                "text": self.text, "status": self.status, "time": self.time,
                "reply": self.reply, "resolved_by": self.resolved_by,
                "resolved_time": self.resolved_time}


class StrikeClear(Base):
    """An admin cleared a user's strikes: incidents before ``time`` count no more."""

    __tablename__ = "strike_clears"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    time: Mapped[float] = mapped_column(Float)
    by: Mapped[str] = mapped_column(String(255))
    note: Mapped[str] = mapped_column(Text, default="")


class Ban(Base):
    """An admin's ban; active while ``lifted`` is null."""

    __tablename__ = "bans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    time: Mapped[float] = mapped_column(Float)
    by: Mapped[str] = mapped_column(String(255))
    lifted: Mapped[float | None] = mapped_column(Float, nullable=True)
    lifted_by: Mapped[str | None] = mapped_column(String(255), nullable=True)


class PackageVerdict(Base):
    """An admin's word on an installed package's incidents. By default they count as no strike
    (a compromised release: the package's fault, not its users'); a package a user installs
    to run on purpose (a proxy, a miner published on an index) is marked to count, for one
    version or every version (``version`` empty)."""

    __tablename__ = "package_verdicts"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    version: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    counts: Mapped[bool] = mapped_column(Boolean)
    by: Mapped[str] = mapped_column(String(255))
    time: Mapped[float] = mapped_column(Float)
    note: Mapped[str] = mapped_column(Text, default="")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "counts": self.counts,
                "by": self.by, "time": self.time, "note": self.note}


@dataclass
class Standing:
    user: str
    strikes: int
    strike_limit: int
    banned: bool  # may not run servers: banned by an admin, or at the strike limit
    reason: str | None
    ban: str | None = None  # the admin's ban reason, when banned outright

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "strikes": self.strikes, "strike_limit": self.strike_limit,
                "banned": self.banned, "reason": self.reason}


class Refused(ValueError):
    """A request the database refuses (unknown incident, appeal twice...): ``status`` for HTTP."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def alembic_config(url: str):
    from alembic.config import Config

    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE / "alembic"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    """Bring the schema at ``url`` to alembic's newest revision."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


class HubDatabase:
    """Incidents, appeals, clears and bans, with the strike rules."""

    def __init__(self, url: str, strike_limit: int = 3, strike_window: float = 7 * 24 * 3600.0,
                 clock=time.time, migrate: bool = True):
        self.url = url
        self.strike_limit = strike_limit
        self.strike_window = strike_window
        self.clock = clock
        if migrate:
            upgrade(url)
        self.engine = create_engine(url, future=True, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------ reports

    def upsert(self, incident: dict[str, Any], source: str, reported_by: str,
               node: str) -> str:
        """Store one reported incident (already validated): "new", "updated", or "kept"
        (an incident of the watcher's is not replaced by a server's report, nor a version
        by one less far along from the same source: ``_progress``)."""
        now = self.clock()
        package = incident.get("package") or None
        with self.session.begin() as db:
            # locked (PostgreSQL): two versions of one id taken at once are compared in turn
            row = db.get(Incident, incident["id"], with_for_update=True)
            if row is not None and row.user != incident["user"]:
                raise Refused(f"incident {incident['id']} belongs to another user", 403)
            if row is not None and row.source == "watcher" and source != "watcher":
                return "kept"
            if row is not None and row.source == source and \
                    _progress(incident) < (RANK.get(row.action, 0), row.status in COMPLETE):
                return "kept"  # an older version come late (reports can cross: a retry)
            happened = min(_epoch(incident.get("time"), now), now)
            strike = bool(incident.get("strike")) or (row is not None and row.strike)
            values = dict(
                user=incident["user"], category=incident["category"],
                action=strongest_action(incident), severity=incident.get("severity") or "",
                signature=incident.get("signature") or "", status=incident.get("status") or "",
                dry_run=bool(incident.get("dry_run")), strike=strike,
                package_name=package["name"] if package else None,
                package_version=package.get("version") if package else None,
                source=source, reported_by=reported_by, node=node, updated=now, data=incident)
            values["counted"] = (strike and package is None) or (row is not None and row.counted)
            if row is None:
                db.add(Incident(id=incident["id"], time=happened, received=now, **values))
                return "new"
            for key, value in values.items():
                setattr(row, key, value)
            return "updated"

    def owners(self, ids: list[str]) -> dict[str, str]:
        """The users of the incidents already stored among ``ids``."""
        if not ids:
            return {}
        with self.session() as db:
            return dict(db.execute(select(Incident.id, Incident.user)
                                   .where(Incident.id.in_(ids))).all())

    # ------------------------------------------------------------ standing

    def strikes(self, db: Session, user: str) -> list[Incident]:
        """The user's incidents that count against them now."""
        since = self.clock() - self.strike_window
        cleared = db.scalar(select(func.max(StrikeClear.time)).where(StrikeClear.user == user))
        if cleared is not None:
            since = max(since, cleared)
        forgiven = select(Appeal.incident_id).where(Appeal.status == "accepted")
        query = (select(Incident).where(Incident.user == user, _counts(),
                                        Incident.time > since, Incident.id.not_in(forgiven))
                 .order_by(Incident.time))
        return list(db.scalars(query))

    def standing(self, user: str, message: str = "") -> Standing:
        with self.session() as db:
            strikes = self.strikes(db, user)
            ban = db.scalars(select(Ban).where(Ban.user == user, Ban.lifted.is_(None))
                             .order_by(Ban.time.desc())).first()
        limit = self.strike_limit
        reason = None
        if ban is not None:
            reason = f"{message} Your account is banned by an admin: {ban.reason}".strip()
        elif limit and len(strikes) >= limit:
            categories = ", ".join(sorted({s.category for s in strikes}))
            reason = (f"{message} New servers are refused: {len(strikes)} strikes "
                      f"({categories}) within {_duration(self.strike_window)}, the limit is "
                      f"{limit}. You can appeal an incident; an admin can clear the strikes."
                      ).strip()
        return Standing(user, len(strikes), limit, reason is not None, reason,
                        ban.reason if ban is not None else None)

    # ------------------------------------------------------------ review

    def incidents(self, user: str | None = None, category: str | None = None,
                  package: str | None = None, since: float | None = None,
                  limit: int = 500) -> list[dict[str, Any]]:
        query = select(Incident).order_by(Incident.time.desc()).limit(limit)
        if user:
            query = query.where(Incident.user == user)
        if category:
            query = query.where(Incident.category == category)
        if package:
            query = query.where(Incident.package_name == package)
        if since is not None:
            query = query.where(Incident.time >= since)
        with self.session() as db:
            rows = list(db.scalars(query))
            appeals = self._appeals_of(db, [r.id for r in rows])
            counting = {}
            for name in {r.user for r in rows}:
                counting.update((s.id, True) for s in self.strikes(db, name))
        return [{**r.to_dict(), "counts": counting.get(r.id, False),
                 "appeals": appeals.get(r.id, [])} for r in rows]

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        with self.session() as db:
            row = db.get(Incident, incident_id)
            return row.to_dict() if row is not None else None

    def packages(self) -> list[dict[str, Any]]:
        """Incidents that came from installed packages, one row per (name, version)."""
        query = (select(Incident.package_name, Incident.package_version,
                        func.count(Incident.id), func.count(func.distinct(Incident.user)),
                        func.min(Incident.time), func.max(Incident.time))
                 .where(Incident.package_name.is_not(None))
                 .group_by(Incident.package_name, Incident.package_version)
                 .order_by(func.count(Incident.id).desc()))
        with self.session() as db:
            rows = db.execute(query).all()
            categories: dict[tuple, set] = {}
            for name, version, category in db.execute(
                    select(Incident.package_name, Incident.package_version, Incident.category)
                    .where(Incident.package_name.is_not(None)).distinct()):
                categories.setdefault((name, version), set()).add(category)
            verdicts = {(v.name, v.version): v.to_dict() for v in db.scalars(select(PackageVerdict))}
        return [{"name": name, "version": version, "incidents": count, "users": users,
                 "first": first, "last": last,
                 "categories": sorted(categories.get((name, version), ())),
                 "verdict": verdicts.get((name, version or "")) or verdicts.get((name, ""))}
                for name, version, count, users, first, last in rows]

    def judge_package(self, name: str, version: str, counts: bool, by: str,
                      note: str = "") -> dict[str, Any]:
        """Mark a package's incidents (one version, or every version: ``version`` empty) as
        counting as strikes or not, from now on and for the incidents already recorded."""
        if not name.strip():
            raise Refused("field 'name': a package's name")
        with self.session.begin() as db:
            verdict = db.get(PackageVerdict, (name, version))
            if verdict is None:
                verdict = PackageVerdict(name=name, version=version)
                db.add(verdict)
            verdict.counts, verdict.by, verdict.time = counts, by, self.clock()
            verdict.note = note[:NOTE_MAX_TEXT]
            return verdict.to_dict()

    def clear_strikes(self, user: str, by: str, note: str = "") -> None:
        with self.session.begin() as db:
            db.add(StrikeClear(user=user, time=self.clock(), by=by, note=note[:NOTE_MAX_TEXT]))

    def ban(self, user: str, by: str, reason: str = "") -> None:
        with self.session.begin() as db:
            if db.scalars(select(Ban).where(Ban.user == user, Ban.lifted.is_(None))).first():
                return
            db.add(Ban(user=user, reason=reason[:NOTE_MAX_TEXT], time=self.clock(), by=by))

    def unban(self, user: str, by: str) -> bool:
        with self.session.begin() as db:
            bans = list(db.scalars(select(Ban).where(Ban.user == user, Ban.lifted.is_(None))))
            for ban in bans:
                ban.lifted, ban.lifted_by = self.clock(), by
        return bool(bans)

    def banned_users(self) -> list[dict[str, Any]]:
        with self.session() as db:
            return [{"user": b.user, "reason": b.reason, "time": b.time, "by": b.by}
                    for b in db.scalars(select(Ban).where(Ban.lifted.is_(None))
                                        .order_by(Ban.time.desc()))]

    # ------------------------------------------------------------ appeals

    def appeal(self, incident_id: str, user: str, text: str) -> dict[str, Any]:
        text = text.strip()
        if not text:
            raise Refused("field 'text': say why the incident is wrong")
        if len(text) > APPEAL_MAX_TEXT:
            raise Refused(f"field 'text': at most {APPEAL_MAX_TEXT} characters")
        with self.session.begin() as db:
            row = db.get(Incident, incident_id)
            if row is None or row.user != user:
                raise Refused(f"no incident {incident_id} of yours", 404)
            open_ = db.scalars(select(Appeal).where(Appeal.incident_id == incident_id,
                                                    Appeal.status == "pending")).first()
            if open_ is not None:
                raise Refused("this incident already has an open appeal", 409)
            appeal = Appeal(incident_id=incident_id, user=user, text=text, time=self.clock())
            db.add(appeal)
            db.flush()
            return appeal.to_dict()

    def resolve(self, appeal_id: int, status: str, by: str, reply: str = "") -> dict[str, Any]:
        if status not in ("accepted", "rejected"):
            raise Refused("field 'status': accepted or rejected")
        with self.session.begin() as db:
            appeal = db.get(Appeal, appeal_id)
            if appeal is None:
                raise Refused(f"no appeal {appeal_id}", 404)
            if appeal.status != "pending":
                raise Refused(f"appeal {appeal_id} is already {appeal.status}", 409)
            appeal.status, appeal.reply = status, reply[:NOTE_MAX_TEXT]
            appeal.resolved_by, appeal.resolved_time = by, self.clock()
            return appeal.to_dict()

    def appeals(self, status: str | None = None, user: str | None = None) -> list[dict]:
        query = select(Appeal).order_by(Appeal.time.desc())
        if status:
            query = query.where(Appeal.status == status)
        if user:
            query = query.where(Appeal.user == user)
        with self.session() as db:
            return [a.to_dict() for a in db.scalars(query)]

    def _appeals_of(self, db: Session, ids: list[str]) -> dict[str, list[dict]]:
        found: dict[str, list[dict]] = {}
        if ids:
            for appeal in db.scalars(select(Appeal).where(Appeal.incident_id.in_(ids))
                                     .order_by(Appeal.time)):
                found.setdefault(appeal.incident_id, []).append(appeal.to_dict())
        return found

    # ------------------------------------------------------------ metrics

    def totals(self) -> dict[str, Any]:
        with self.session() as db:
            users = db.scalars(select(Incident.user).where(
                _counts(), Incident.time > self.clock() - self.strike_window).distinct()).all()
            strikes = sum(len(self.strikes(db, u)) for u in users)
            bans = db.scalar(select(func.count(func.distinct(Ban.user)))
                             .where(Ban.lifted.is_(None)))
            appeals_open = db.scalar(select(func.count(Appeal.id))
                                     .where(Appeal.status == "pending"))
            at_limit = sum(1 for u in users if self.strike_limit
                           and len(self.strikes(db, u)) >= self.strike_limit)
        return {"strikes": strikes, "bans": bans, "appeals_open": appeals_open,
                "users_at_limit": at_limit}


def _counts():
    """The condition of an incident that counts against its user (within the window): a
    strike that names no package, or an enforced incident of a package an admin marked to
    count (that version's verdict first, else the verdict for every version)."""
    def verdict(version):
        return (select(PackageVerdict.counts)
                .where(PackageVerdict.name == Incident.package_name,
                       PackageVerdict.version == version).scalar_subquery())
    marked = func.coalesce(verdict(Incident.package_version), verdict(""), False)
    return or_(Incident.counted.is_(True),
               and_(Incident.package_name.is_not(None), Incident.dry_run.is_(False),
                    Incident.action.in_(ENFORCING_ACTIONS), marked.is_(True)))


def strongest_action(incident: dict[str, Any]) -> str:
    """The strongest action carried out (or, in dry run, that would have been)."""
    taken = [a.get("action") for a in incident.get("actions") or []
             if isinstance(a, dict) and a.get("action") in RANK]
    return max(taken, key=RANK.__getitem__) if taken else "record"


def _progress(incident: dict[str, Any]) -> tuple[int, bool]:
    """How far along a reported version of an incident is: its strongest action, then
    whether it is complete. Versions of one id only go forward (acting -> done; a kernel shut
    down for going on past its interrupt, within the interrupt's incident: interrupt ->
    shutdown), so one less far along arrived late and is not kept over the stored one."""
    return RANK[strongest_action(incident)], incident.get("status") in COMPLETE


def _epoch(value: Any, default: float) -> float:
    from datetime import datetime

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass
    return default


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            amount = seconds / size
            return f"{amount:g} {unit}" if amount != int(amount) else f"{int(amount)} {unit}"
    return f"{seconds:g} seconds"


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
