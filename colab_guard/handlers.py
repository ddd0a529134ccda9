"""REST API under /colab-guard/api/.

Every route is authenticated and authorized against the ``colab_guard``
resource (so JupyterHub scopes, or any Authorizer, can grant or refuse it).
Malformed requests get a 400 naming the parameter; unknown ids a 404.
"""

from __future__ import annotations

import json
from datetime import datetime

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

AUTH_RESOURCE = "colab_guard"
MAX_LIMIT = 1000


class GuardHandler(ExtensionHandlerMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def guard(self):
        return self.settings["colab_guard"]

    def write_json(self, data) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, ensure_ascii=False))

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

    def time_argument(self, name: str) -> float | None:
        raw = self.get_argument(name, None)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(raw).timestamp()
        except ValueError:
            raise web.HTTPError(400, f"parameter {name!r} must be an ISO 8601 time or seconds "
                                     f"since the epoch, got {raw[:50]!r}")


class IncidentsHandler(GuardHandler):
    @web.authenticated
    @authorized
    def get(self):
        """Incidents, newest first. Filters: category, kernel_id, since; limit (default 100)."""
        incidents = self.guard.store.query(
            category=self.get_argument("category", None),
            kernel_id=self.get_argument("kernel_id", None),
            since=self.time_argument("since"),
            limit=self.int_argument("limit", 100, 1, MAX_LIMIT),
        )
        self.write_json({"incidents": [i.to_dict() for i in incidents]})


class IncidentHandler(GuardHandler):
    @web.authenticated
    @authorized
    def get(self, incident_id: str):
        incident = self.guard.store.get(incident_id)
        if incident is None:
            raise web.HTTPError(404, f"no incident with id {incident_id[:64]!r}")
        self.write_json(incident.to_dict())


class StatusHandler(GuardHandler):
    @web.authenticated
    @authorized
    def get(self):
        self.write_json(self.guard.status())


default_handlers = [
    (r"/colab-guard/api/incidents", IncidentsHandler),
    (r"/colab-guard/api/incidents/([^/]+)", IncidentHandler),
    (r"/colab-guard/api/status", StatusHandler),
]
