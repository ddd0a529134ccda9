"""What the service asks of the hub's REST API, with its own token: a user's servers (to stop
them at the strike limit) and whether a user is a hub admin."""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

ADMIN_CACHE_SECONDS = 30.0


class HubAPI:
    def __init__(self, api_url: str, token: str, log: logging.Logger):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.log = log
        self._admins: dict[str, tuple[float, bool]] = {}

    async def _call(self, method: str, path: str, body: dict | None = None) -> dict | None:
        request = HTTPRequest(f"{self.api_url}/{path}", method=method,
                              headers={"Authorization": f"token {self.token}"},
                              body=json.dumps(body) if body is not None else
                              (b"" if method in ("POST", "DELETE") else None),
                              allow_nonstandard_methods=True, request_timeout=30)
        response = await AsyncHTTPClient().fetch(request)
        return json.loads(response.body) if response.body else None

    async def user(self, name: str) -> dict | None:
        try:
            return await self._call("GET", f"users/{quote(name, safe='')}")
        except HTTPClientError as err:
            if err.code == 404:
                return None
            raise

    async def is_admin(self, name: str) -> bool:
        cached = self._admins.get(name)
        if cached and time.monotonic() - cached[0] < ADMIN_CACHE_SECONDS:
            return cached[1]
        try:
            model = await self.user(name)
        except Exception as err:  # the hub restarting: no admin rights meanwhile
            self.log.warning("cannot ask the hub whether %r is an admin: %s", name, err)
            return False
        admin = bool(model and model.get("admin"))
        self._admins[name] = (time.monotonic(), admin)
        return admin

    async def stop_servers(self, name: str) -> list[str]:
        """Stop every running server of the user; the names of those stopped ('' the default)."""
        model = await self.user(name)
        if not model:
            return []
        stopped = []
        user = quote(name, safe="")
        for server_name, server in (model.get("servers") or {}).items():
            if server.get("pending") == "stop":
                continue
            path = (f"users/{user}/servers/{quote(server_name, safe='')}" if server_name
                    else f"users/{user}/server")
            try:
                await self._call("DELETE", path)
                stopped.append(server_name)
            except HTTPClientError as err:
                self.log.warning("cannot stop %r's server %r: %s", name, server_name, err)
        if stopped:
            self.log.info("stopped %r's servers %s: at the strike limit or banned", name,
                          stopped)
        return stopped
