"""REST API under /colab-guard/api/.

Every route is authenticated and authorized against the ``colab_guard``
resource (so JupyterHub scopes, or any Authorizer, can grant or refuse it).
A user sees only their own incidents and appeals (an incident belongs to
``incident.user``); admin rights (reading everyone's, resolving appeals,
clearing strikes) are the Authorizer's answer for the ``colab_guard:admin``
resource: action "read" to read all, "write" to act.
Malformed requests get a 400 naming the parameter; unknown ids a 404.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

from jupyter_server.auth.decorator import authorized
from jupyter_server.auth.identity import IdentityProvider, LegacyIdentityProvider, PasswordIdentityProvider
from jupyter_server.utils import ensure_async
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from .record.database import AppealError, IncidentStore, incident_view
from .settings import Settings
from .text import parse_time
from .vocabulary import CATEGORIES

ANONYMOUS_LOGINS = (IdentityProvider, PasswordIdentityProvider, LegacyIdentityProvider)
AUTH_RESOURCE = "colab_guard"
ADMIN_RESOURCE = "colab_guard:admin"
MAX_TEXT = 2000
MAX_LIMIT = 1000


@dataclass
class GuardAPI:
    """What the REST API needs of the guard (tornado setting ``colab_guard_api``)."""

    settings: Settings
    store: IncidentStore | None  # None when the server runs unguarded
    status: Callable[[], dict]
    started: float  # incidents_this_session counts from here
    #: the categories incidents can have: built-in, declared by signature files, configured
    categories: Callable[[], list[str]] = lambda: list(CATEGORIES)
    #: the node watcher's incidents of this server's user (watcher_link.py): shown, not stored
    watcher_incidents: Callable[[], list] = lambda: []
    #: appeal one of those: (incident id, text) -> the appeal, or AppealError
    appeal_to_watcher: Callable | None = None
    #: sends an appeal to the hub service (incident id, text -> what came of it), if reporting
    hub_appeal: Callable[[str, str], dict] | None = None


class GuardHandler(ExtensionHandlerMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def guard(self) -> GuardAPI:
        return self.settings["colab_guard_api"]

    @property
    def store(self) -> IncidentStore:
        store = self.guard.store
        if store is None:
            raise web.HTTPError(503, "colab-guard is not running on this server (see its "
                                     "status: /colab-guard/api/status)")
        return store

    def write_json(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, ensure_ascii=False))

    @property
    def username(self) -> str:
        """Who is asking. jupyter_server's own token and password logins have no identities
        (each browser session gets an anonymous name): such a server has one user, its
        owner, whose name its incidents carry. JupyterHub and other identity providers
        name the real user."""
        if type(self.identity_provider) in ANONYMOUS_LOGINS:
            return self.guard.settings.user_name
        return self.current_user.username

    async def is_admin(self, action: str = "read") -> bool:
        """May the current user read ("read") or act on ("write") everyone's incidents?"""
        return bool(await ensure_async(self.authorizer.is_authorized(
            self, self.current_user, action, ADMIN_RESOURCE)))

    async def require_admin(self) -> None:
        if not await self.is_admin("write"):
            raise web.HTTPError(403, f"only admins may do this (resource {ADMIN_RESOURCE!r})")

    def watcher_incidents(self, user: str | None, category: str | None = None,
                          kernel_id: str | None = None, since: float | None = None) -> list:
        """The node watcher's incidents this server was told of, filtered as the store's."""
        return [i for i in self.guard.watcher_incidents()
                if (user is None or i.user == user) and (category is None or i.category == category)
                and (kernel_id is None or i.kernel_id == kernel_id)
                and (since is None or i.time >= since)]

    async def visible_incident(self, incident_id: str):
        """The incident if the current user may see it; 404 otherwise (its existence stays private)."""
        incident = self.store.get(incident_id) or next(
            (i for i in self.guard.watcher_incidents() if i.id == incident_id), None)
        if incident is None or (incident.user != self.username and not await self.is_admin()):
            raise web.HTTPError(404, f"no incident with id {incident_id[:64]!r}")
        return incident

    def views(self, incidents) -> list[dict]:
        appeals = self.store.appeals_by_incident([i.id for i in incidents])
        watcher = {i.id for i in self.guard.watcher_incidents()}
        return [incident_view(i, appeals[i.id], "node watcher" if i.id in watcher else "server")
                for i in incidents]

    def json_body(self) -> dict:
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError as err:
            raise web.HTTPError(400, f"the request body is not JSON: {err}")
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the request body must be a JSON object")
        return body

    def text_field(self, body: dict, name: str, required: bool = True) -> str:
        value = body.get(name)
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            raise web.HTTPError(400, f"field {name!r} must be a string")
        try:
            value.encode("utf-8")  # JSON allows lone surrogates ("\ud800"); storage does not
        except UnicodeEncodeError:
            raise web.HTTPError(400, f"field {name!r} must be valid Unicode text (it holds a "
                                     "lone surrogate)") from None
        value = value.strip()
        if (required and not value) or len(value) > MAX_TEXT:
            raise web.HTTPError(400, f"field {name!r} must be {1 if required else 0} to "
                                     f"{MAX_TEXT} characters")
        return value

    def int_argument(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.get_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise web.HTTPError(400, f"parameter {name!r} must be an integer, got {raw[:50]!r}")
        if not low <= value <= high:
            raise web.HTTPError(400, f"parameter {name!r} must be between {low} and {high}")
        return value

    def known_categories(self) -> list[str]:
        """The built-in categories, those the operator's signature files declare, and those
        the operator's `actions` name."""
        return self.guard.categories()

    def category_argument(self, name: str = "category") -> str | None:
        raw = self.get_argument(name, None)
        if raw is None or raw == "":
            return None
        known = self.known_categories()
        if raw not in known:
            raise web.HTTPError(400, f"parameter {name!r}: unknown category {raw[:50]!r}; "
                                     f"known: {', '.join(known)}")
        return raw

    def time_argument(self, name: str) -> float | None:
        raw = self.get_argument(name, None)
        if raw is None:
            return None
        try:
            return parse_time(raw)
        except ValueError:
            raise web.HTTPError(400, f"parameter {name!r} must be an ISO 8601 time or seconds "
                                     f"since the epoch, got {raw[:50]!r}") from None


class IncidentsHandler(GuardHandler):
    @web.authenticated
    @authorized
    async def get(self):
        """Incidents, newest first. Filters: user (admins), category, kernel_id, since; limit."""
        user = self.get_argument("user", None) if await self.is_admin() else self.username
        filters = dict(user=user, category=self.category_argument(),
                       kernel_id=self.get_argument("kernel_id", None),
                       since=self.time_argument("since"))
        limit = self.int_argument("limit", 100, 1, MAX_LIMIT)
        incidents = self.store.query(**filters, limit=limit)
        known = {i.id for i in incidents}
        incidents += [i for i in self.watcher_incidents(**filters) if i.id not in known]
        incidents = sorted(incidents, key=lambda i: -i.time)[:limit]
        self.write_json({"incidents": self.views(incidents)})


class IncidentHandler(GuardHandler):
    @web.authenticated
    @authorized
    async def get(self, incident_id: str):
        incident = await self.visible_incident(incident_id)
        self.write_json(self.views([incident])[0])


class AppealHandler(GuardHandler):
    @web.authenticated
    @authorized
    async def post(self, incident_id: str):
        """The incident's own user appeals it: {"text": "..."}."""
        incident = await self.visible_incident(incident_id)
        if incident.user != self.username:
            raise web.HTTPError(403, "only the incident's own user can appeal it")
        text = self.text_field(self.json_body(), "text")
        if self.store.get(incident.id) is None:  # the node watcher's: appealed there
            if self.guard.appeal_to_watcher is None:
                raise web.HTTPError(503, "the node watcher that recorded it cannot be reached")
            try:
                appeal = await self.guard.appeal_to_watcher(incident.id, text)
            except AppealError as err:
                raise web.HTTPError(err.status, str(err))
            self.write_json({"appeal": appeal}, status=201)
            return
        try:
            appeal = self.store.appeal(incident.id, self.username, text)
        except AppealError as err:
            raise web.HTTPError(err.status, str(err))
        answer = {"appeal": appeal.to_dict()}
        if self.guard.hub_appeal is not None:  # hub-wide strikes are lifted at the hub
            answer["hub"] = await asyncio.to_thread(self.guard.hub_appeal, incident.id, text)
        self.write_json(answer, status=201)


class AppealsHandler(GuardHandler):
    @web.authenticated
    @authorized
    async def get(self):
        """Appeals, newest first: the user's own, or everyone's for admins. Filter: status."""
        status = self.get_argument("status", None)
        if status not in (None, "pending", "accepted", "rejected"):
            raise web.HTTPError(400, "parameter 'status' must be pending, accepted or rejected")
        user = self.get_argument("user", None) if await self.is_admin() else self.username
        appeals = self.store.appeals(user=user, status=status)
        self.write_json({"appeals": [a.to_dict() for a in appeals]})


class ResolveAppealHandler(GuardHandler):
    @web.authenticated
    @authorized
    async def post(self, appeal_id: str):
        """Admins: {"decision": "accept"|"reject", "reply": "..."}; accept removes the strike."""
        await self.require_admin()
        body = self.json_body()
        decision = body.get("decision")
        if decision not in ("accept", "reject"):
            raise web.HTTPError(400, "field 'decision' must be 'accept' or 'reject'")
        reply = self.text_field(body, "reply", required=False)
        try:
            appeal = self.store.resolve_appeal(appeal_id, decision, reply, self.username)
        except AppealError as err:
            raise web.HTTPError(err.status, str(err)[:200])
        self.write_json({"appeal": appeal.to_dict()})


class StrikesHandler(GuardHandler):
    @web.authenticated
    @authorized
    async def get(self):
        """Strikes in force: the user's own, or everyone's for admins (filter: user)."""
        user = self.get_argument("user", None) if await self.is_admin() else self.username
        settings = self.guard.settings
        strikes = self.store.strikes(user, settings.strike_window)
        self.write_json({"strikes": [s.to_dict() for s in strikes],
                         "strike_limit": settings.strike_limit,
                         "strike_window": settings.strike_window})


class ClearStrikesHandler(GuardHandler):
    @web.authenticated
    @authorized
    async def post(self, user: str):
        """Admins: clear every strike in force against ``user``."""
        await self.require_admin()
        cleared = self.store.clear_strikes(user, self.username)
        self.write_json({"user": user, "cleared": cleared})


class StatusHandler(GuardHandler):
    @web.authenticated
    @authorized
    async def get(self):
        guard, admin = self.guard, await self.is_admin()
        status = guard.status()
        user = None if admin else self.username
        status.update(user=self.username, admin=admin, incidents_this_session=(guard.store.count(
            user=user, since=guard.started) + len(self.watcher_incidents(user, since=guard.started))
            if guard.store else 0), categories=self.known_categories())
        self.write_json(status)


default_handlers = [
    (r"/colab-guard/api/incidents", IncidentsHandler),
    (r"/colab-guard/api/incidents/([^/]+)", IncidentHandler),
    (r"/colab-guard/api/status", StatusHandler),
    (r"/colab-guard/api/incidents/([^/]+)/appeal", AppealHandler),
    (r"/colab-guard/api/appeals", AppealsHandler),
    (r"/colab-guard/api/appeals/([^/]+)/resolve", ResolveAppealHandler),
    (r"/colab-guard/api/strikes", StrikesHandler),
    (r"/colab-guard/api/strikes/([^/]+)/clear", ClearStrikesHandler),
]
