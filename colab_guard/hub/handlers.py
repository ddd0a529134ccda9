"""The service's REST API (the reporting contract, review and appeals) and its pages.

Every request is identified by the hub (``HubOAuth``): an API token in the
``Authorization`` header, or the cookie of the OAuth login for the pages. Scopes are
checked here, per request, so the answers say what was missing:

- ``custom:colab-guard:report`` (the single-user servers' ``server`` role): reports for
  the token's own user only; ``custom:colab-guard:report-any`` (node watchers): any user.
- ``custom:colab-guard:review`` (or a hub admin, ``ColabGuardHub.admins_review``): every
  user's incidents, appeals, strike clears and bans.
- any identified user: their own standing, incidents and appeals.
"""

from __future__ import annotations

import asyncio
import json
import functools
import re
from typing import Any

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated, check_scopes
from tornado import web

from ..vocabulary import RANK
from .app import REPORT_ANY_SCOPE, REPORT_SCOPE, REVIEW_SCOPE
from .database import Refused

MAX_INCIDENTS = 100
MAX_INCIDENT_BYTES = 256 * 1024
SOURCES = ("server", "watcher")
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_CATEGORY = re.compile(r"^[a-z][a-z0-9-]{1,39}$")


class BadReport(ValueError):
    """A malformed report: the message names the field."""


# ---------------------------------------------------------------- validation


def parse_report(body: bytes) -> tuple[str, str, list[dict[str, Any]]]:
    """(source, node, incidents) of a report body, or BadReport naming the field."""
    try:
        report = json.loads(body or b"")
    except ValueError as err:
        raise BadReport(f"the body is not JSON: {err}") from None
    if not isinstance(report, dict):
        raise BadReport("the body must be a JSON object")
    source = report.get("source")
    if source not in SOURCES:
        raise BadReport(f"field 'source': one of {', '.join(SOURCES)}, not {source!r:.80}")
    node = report.get("node", "")
    if not isinstance(node, str) or len(node) > 255:
        raise BadReport("field 'node': a host name (a string of at most 255 characters)")
    incidents = report.get("incidents")
    if not isinstance(incidents, list):
        raise BadReport("field 'incidents': a list of incidents")
    if len(incidents) > MAX_INCIDENTS:
        raise BadReport(f"field 'incidents': at most {MAX_INCIDENTS} per request, "
                        f"not {len(incidents)}")
    for n, incident in enumerate(incidents):
        check_incident(incident, f"incidents[{n}]")
    return source, node, incidents


def check_incident(incident: Any, where: str) -> None:
    if not isinstance(incident, dict):
        raise BadReport(f"field '{where}': an incident object")

    def text(name: str, pattern: re.Pattern | None = None, limit: int = 255) -> None:
        value = incident.get(name)
        if not isinstance(value, str) or not value or len(value) > limit or (
                pattern is not None and not pattern.match(value)):
            raise BadReport(f"field '{where}.{name}': a non-empty string"
                            + (f" matching {pattern.pattern}" if pattern else "")
                            + f" of at most {limit} characters")

    text("id", _ID, 64)
    text("user")
    text("category", _CATEGORY, 40)
    for name, kind in (("strike", bool), ("dry_run", bool), ("actions", list),
                       ("evidence", dict), ("severity", str), ("signature", str),
                       ("status", str), ("kernel_id", str)):
        if incident.get(name) is not None and not isinstance(incident[name], kind):
            raise BadReport(f"field '{where}.{name}': {kind.__name__}")
    for n, action in enumerate(incident.get("actions") or []):
        if not isinstance(action, dict) or action.get("action") not in RANK:
            raise BadReport(f"field '{where}.actions[{n}].action': one of {', '.join(RANK)}")
    time_ = incident.get("time")
    if time_ is not None and not isinstance(time_, (str, int, float)):
        raise BadReport(f"field '{where}.time': an ISO 8601 time")
    package = incident.get("package")
    if package is not None:
        if not isinstance(package, dict):
            raise BadReport(f"field '{where}.package': null or an object with name and version")
        for name in ("name", "version", "path"):
            value = package.get(name)
            if not isinstance(value, str) or len(value) > 1024 or (name == "name" and not value):
                raise BadReport(f"field '{where}.package.{name}': a string"
                                + (" (not empty)" if name == "name" else ""))
    if len(json.dumps(incident)) > MAX_INCIDENT_BYTES:
        raise BadReport(f"field '{where}': larger than {MAX_INCIDENT_BYTES} bytes")


# ---------------------------------------------------------------- base


class InThreads:
    """The database's methods, awaited in a worker thread: a slow database (PostgreSQL
    across the network) never holds up the service's other requests."""

    def __init__(self, db):
        self._db = db

    def __getattr__(self, name: str):
        method = getattr(self._db, name)

        async def in_a_thread(*args, **kwargs):
            return await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(method, *args, **kwargs))

        return in_a_thread


def authenticated(method):
    """401 (not a redirect to the login page) without a valid token."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        if not self.current_user:
            raise web.HTTPError(401, "no valid token: send 'Authorization: token <TOKEN>'")
        return await method(self, *args, **kwargs)

    return wrapper


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    """Identifies the caller through the hub once per request, without blocking the loop."""

    @property
    def service(self):
        return self.settings["service"]

    @property
    def db(self) -> InThreads:
        return InThreads(self.settings["db"])

    @property
    def hub_auth(self):
        return self.settings["hub_auth"]

    @property
    def hub_scopes(self):
        return None  # any identified user or service; the handlers check scopes themselves

    async def prepare(self) -> None:
        model = await self.hub_auth.get_user(self, sync=False)
        self._hub_auth_user_cache = self.check_hub_user(model) if model else None

    @property
    def scopes(self) -> set[str]:
        return set(self.current_user["scopes"]) if self.current_user else set()

    def has(self, scope: str) -> bool:
        """Holds ``scope`` (with its filter, if it names one; unfiltered if not)."""
        return bool(check_scopes(scope, self.scopes))

    def holds_any(self, scope: str) -> bool:
        """Holds ``scope`` with any filter (``custom:x!user=alice`` holds ``custom:x``)."""
        return any(held.partition("!")[0] == scope for held in self.scopes)

    async def is_reviewer(self) -> bool:
        user = self.current_user
        if user is None:
            return False
        if self.has(REVIEW_SCOPE):
            return True
        return (self.service.admins_review and user.get("kind", "user") == "user"
                and await self.settings["hub_api"].is_admin(user["name"]))

    async def reviewer(self) -> str:
        """The reviewer's name, or 403."""
        if not await self.is_reviewer():
            raise web.HTTPError(403, f"this needs the scope {REVIEW_SCOPE} (or a hub admin)")
        return self.current_user["name"]

    async def gone_too_far(self, user: str) -> None:
        """Stop the user's servers if they may not run any (at the limit, or banned)."""
        if not self.service.stop_servers or not (await self.db.standing(user)).banned:
            return
        try:
            await self.settings["hub_api"].stop_servers(user)
        except Exception as err:  # the hub restarting: the next report tries again
            self.service.log.warning("cannot stop %r's servers: %s", user, err)

    def stop_in_background(self, user: str) -> None:
        task = asyncio.ensure_future(self.gone_too_far(user))
        self.settings.setdefault("_tasks", set()).add(task)
        task.add_done_callback(self.settings["_tasks"].discard)


class APIHandler(BaseHandler):
    """JSON in and out. A browser's cookie-authenticated POST must carry the XSRF token
    (HubOAuth checks it before it accepts the cookie); token-authenticated calls need none."""

    def get_login_url(self):
        raise web.HTTPError(401, "no valid token: send 'Authorization: token <TOKEN>'")

    def write_error(self, status_code: int, **kwargs) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))

    def json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError as err:
            raise web.HTTPError(400, "the body is not JSON: %s", err) from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        return data

    def text_field(self, data: dict, name: str, required: bool = False) -> str:
        value = data.get(name, "")
        if not isinstance(value, str) or (required and not value.strip()):
            raise web.HTTPError(400, "field '%s': %s", name,
                                "a non-empty string" if required else "a string")
        return value

    def refused(self, err: Refused):
        raise web.HTTPError(err.status, "%s", str(err))


def _since(handler: web.RequestHandler) -> float | None:
    value = handler.get_argument("since", None)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        from datetime import datetime

        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            raise web.HTTPError(400, "parameter 'since': epoch seconds or an ISO 8601 time")


# ---------------------------------------------------------------- the reporting contract


class ReportsHandler(APIHandler):
    async def post(self) -> None:
        metrics = self.settings["metrics"]
        if not self.current_user:
            metrics.refused("token")
            raise web.HTTPError(401, "no valid token: send 'Authorization: token <TOKEN>'")
        if not (self.holds_any(REPORT_SCOPE) or self.has(REPORT_ANY_SCOPE)):
            metrics.refused("scope")
            raise web.HTTPError(403, "this token lacks the scope %s", REPORT_SCOPE)
        try:
            source, node, incidents = parse_report(self.request.body)
        except BadReport as err:
            metrics.refused("malformed")
            raise web.HTTPError(400, "%s", str(err)) from None
        if source == "watcher" and not self.has(REPORT_ANY_SCOPE):
            # a watcher's report outranks a server's (database.upsert): only a watcher's token
            metrics.refused("scope")
            raise web.HTTPError(403, "source 'watcher' needs the scope %s", REPORT_ANY_SCOPE)
        for incident in incidents:
            user = incident["user"]
            if not self.has(REPORT_ANY_SCOPE) and not self.has(f"{REPORT_SCOPE}!user={user}"):
                metrics.refused("user")
                raise web.HTTPError(403, "this token may report only its own user's incidents, "
                                    "not %r's (the whole report is refused)", user)
        owners = await self.db.owners([i["id"] for i in incidents])
        for incident in incidents:
            if owners.get(incident["id"], incident["user"]) != incident["user"]:
                metrics.refused("user")
                raise web.HTTPError(403, "incident %s belongs to another user (the whole "
                                    "report is refused)", incident["id"])
        taken, users = [], set()
        reporter = self.current_user["name"]
        for incident in incidents:
            try:
                outcome = await self.db.upsert(incident, source, reporter, node)
            except Refused as err:
                metrics.refused("user")
                self.refused(err)
            taken.append(incident["id"])
            users.add(incident["user"])
            if outcome == "new":
                metrics.taken(incident)
        metrics.report_taken()
        for user in users:
            self.stop_in_background(user)
        own = self.current_user["name"] if self.current_user.get("kind") == "user" else None
        standing = await self.db.standing(own or (incidents[0]["user"] if incidents else ""))
        self.json({"taken": taken, "strikes": standing.strikes,
                   "strike_limit": standing.strike_limit, "banned": standing.banned})


class StandingHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        user = self.get_argument("user", None) or self.current_user["name"]
        if user != self.current_user["name"] or self.current_user.get("kind") == "service":
            await self.reviewer()
        self.json((await self.db.standing(user, self.service.warning_message)).to_dict())


# ---------------------------------------------------------------- incidents and appeals


class IncidentsHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        user = self.get_argument("user", None)
        if not await self.is_reviewer():
            if user not in (None, self.current_user["name"]):
                raise web.HTTPError(403, "you may see only your own incidents")
            user = self.current_user["name"]
        self.json({"incidents": await self.db.incidents(
            user=user, category=self.get_argument("category", None),
            package=self.get_argument("package", None), since=_since(self))})


class AppealHandler(APIHandler):
    @authenticated
    async def post(self, incident_id: str) -> None:
        text = self.text_field(self.body(), "text", required=True)
        try:
            appeal = await self.db.appeal(incident_id, self.current_user["name"], text)
        except Refused as err:
            self.refused(err)
        self.json(appeal, 201)


class AppealsHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        status = self.get_argument("status", None)
        if await self.is_reviewer():
            user = self.get_argument("user", None)
            self.json({"appeals": await self.db.appeals(status, user)})
        else:
            self.json({"appeals": await self.db.appeals(status, self.current_user["name"])})


class ResolveAppealHandler(APIHandler):
    @authenticated
    async def post(self, appeal_id: str) -> None:
        by = await self.reviewer()
        data = self.body()
        try:
            appeal = await self.db.resolve(int(appeal_id), self.text_field(data, "status", True),
                                     by, self.text_field(data, "reply"))
        except Refused as err:
            self.refused(err)
        self.json(appeal)


class PackagesHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        await self.reviewer()
        self.json({"packages": await self.db.packages()})


class PackageVerdictHandler(APIHandler):
    """{"name", "version" (empty: every version), "counts": bool, "note"}: whether the
    package's incidents count as strikes (by default they do not: a compromised release)."""

    @authenticated
    async def post(self) -> None:
        by = await self.reviewer()
        data = self.body()
        if not isinstance(data.get("counts"), bool):
            raise web.HTTPError(400, "field 'counts': true or false")
        try:
            verdict = await self.db.judge_package(
                self.text_field(data, "name", required=True), self.text_field(data, "version"),
                data["counts"], by, self.text_field(data, "note"))
        except Refused as err:
            self.refused(err)
        if verdict["counts"]:  # its users may be at the limit now
            for user in {i["user"] for i in await self.db.incidents(package=verdict["name"])}:
                self.stop_in_background(user)
        self.json(verdict)


class ClearHandler(APIHandler):
    @authenticated
    async def post(self, user: str) -> None:
        by = await self.reviewer()
        await self.db.clear_strikes(user, by, self.text_field(self.body(), "note"))
        self.json((await self.db.standing(user)).to_dict())


class BanHandler(APIHandler):
    @authenticated
    async def post(self, user: str) -> None:
        by = await self.reviewer()
        await self.db.ban(user, by, self.text_field(self.body(), "reason"))
        await self.gone_too_far(user)
        self.json((await self.db.standing(user)).to_dict())

    @authenticated
    async def delete(self, user: str) -> None:
        by = await self.reviewer()
        await self.db.unban(user, by)
        self.json((await self.db.standing(user)).to_dict())


class BansHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        await self.reviewer()
        self.json({"bans": await self.db.banned_users()})


class MetricsHandler(web.RequestHandler):
    async def get(self) -> None:
        body, content_type = await asyncio.get_running_loop().run_in_executor(
            None, self.settings["metrics"].render)
        self.set_header("Content-Type", content_type)
        self.finish(body)


def handlers(base: str) -> list[tuple]:
    from .pages import AdminPage, UserPage

    api = base + "api/"
    return [
        (api + "reports", ReportsHandler),
        (api + "standing", StandingHandler),
        (api + "incidents", IncidentsHandler),
        (api + r"incidents/([^/]+)/appeal", AppealHandler),
        (api + "appeals", AppealsHandler),
        (api + r"appeals/(\d+)", ResolveAppealHandler),
        (api + "packages", PackagesHandler),
        (api + "packages/verdict", PackageVerdictHandler),
        (api + "bans", BansHandler),
        (api + r"users/([^/]+)/clear", ClearHandler),
        (api + r"users/([^/]+)/ban", BanHandler),
        (base + "metrics", MetricsHandler),
        (base + "oauth_callback", HubOAuthCallbackHandler),
        (base + "admin", AdminPage),
        (base.rstrip("/") + "/?", UserPage),
    ]
