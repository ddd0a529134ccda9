"""A stand-in for the hub service's report API (the contract in README "Reporting to the hub"),
on 127.0.0.1, in a thread of its own: it records what it takes and can misbehave on demand.

    service = HubStandin(token="secret").start()
    service.url            # http://127.0.0.1:PORT/services/colab-guard/
    service.mode = "503"   # or "403", "hang" (until release(), then 503); "ok" takes again
    service.down()         # connections refused (the port stays reserved for up())
    service.up()
    service.taken          # incident id -> the last version taken
    service.appeals        # incident id -> the text of its appeal
    service.requests       # every request: headers and JSON body
    service.max_body = N   # a larger body is answered 413, as nginx's client_max_body_size
"""

from __future__ import annotations

import asyncio
import json
import threading

from tornado import httpserver, web

from tests.harness import free_port


class ReportsHandler(web.RequestHandler):
    def initialize(self, service: HubStandin):
        self.service = service

    async def post(self):
        service = self.service
        if service.max_body is not None and len(self.request.body) > service.max_body:
            service.too_large += 1
            raise web.HTTPError(413, "request entity too large")
        body = json.loads(self.request.body)
        service.requests.append({"headers": dict(self.request.headers), "body": body})
        if service.mode == "hang":  # until released; then a 503, as a service restarting
            await service.released.wait()
            raise web.HTTPError(503, "the stand-in hung")
        if service.mode in ("503", "403"):
            raise web.HTTPError(int(service.mode), "the stand-in says no")
        if self.request.headers.get("Authorization") != f"token {service.token}":
            raise web.HTTPError(401, "no valid token")
        incidents = body.get("incidents")
        if body.get("source") not in ("server", "watcher") or not isinstance(incidents, list) \
                or len(incidents) > 100:
            raise web.HTTPError(400, "field 'incidents' or 'source' is malformed")
        for incident in incidents:
            if not isinstance(incident, dict) or not isinstance(incident.get("id"), str):
                raise web.HTTPError(400, "field 'incidents[].id' must be a string")
        for incident in incidents:
            service.taken[incident["id"]] = incident
        self.finish({"taken": [i["id"] for i in incidents], "strikes": 0, "strike_limit": 3,
                     "banned": False})


class AppealHandler(web.RequestHandler):
    """The service's appeal route: 404 for an incident it was never sent."""

    def initialize(self, service: HubStandin):
        self.service = service

    def post(self, incident_id: str):
        if self.request.headers.get("Authorization") != f"token {self.service.token}":
            raise web.HTTPError(401, "no valid token")
        if incident_id not in self.service.taken:
            self.set_status(404)
            self.finish({"status": 404, "message": f"no incident {incident_id}"})
            return
        self.service.appeals[incident_id] = json.loads(self.request.body)["text"]
        self.set_status(201)
        self.finish({"incident_id": incident_id, "status": "pending"})


class HubStandin:
    def __init__(self, token: str = "hub-standin-token", port: int | None = None):
        self.token = token
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/services/colab-guard/"
        self.mode = "ok"
        self.max_body: int | None = None
        self.too_large = 0
        self.taken: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.appeals: dict[str, str] = {}  # incident id -> the appeal's text
        self.loop = asyncio.new_event_loop()
        self.released: asyncio.Event | None = None
        self._server: httpserver.HTTPServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> HubStandin:
        self._thread.start()
        self.up()
        return self

    def _call(self, fn):
        """Run ``fn`` on the service's loop and wait for it."""
        async def run():
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def up(self) -> None:
        def listen():
            self.released = self.released or asyncio.Event()
            app = web.Application([
                (r"/services/colab-guard/api/reports", ReportsHandler, {"service": self}),
                (r"/services/colab-guard/api/incidents/([^/]+)/appeal", AppealHandler,
                 {"service": self})])
            self._server = httpserver.HTTPServer(app)
            self._server.listen(self.port, "127.0.0.1")
        self._call(listen)

    def down(self) -> None:
        self._call(lambda: self._server.stop())

    def release(self) -> None:
        """Let hanging requests finish."""
        self._call(lambda: self.released.set())

    def close(self) -> None:
        self.release()
        self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
