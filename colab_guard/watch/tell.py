"""Telling the users' servers: the watcher's side of watch/protocol.py.

Each incident the watcher records is pushed to every connected Jupyter server of the
incident's user (twice: when recorded, before anything is done, so that the kernel can
explain the interrupt that follows; and when complete). A server that connects gets first
what happened since the last incident it saw (a frozen server resumed, a killed one
started again), from the watcher's own database. A client is identified by its uid alone
(SO_PEERCRED) and only ever gets that uid's user's incidents.

The watcher never waits for a client: a client that does not read (a frozen server) gets
its messages buffered by the socket and by asyncio up to ``MAX_BUFFER``, then is
disconnected; when it connects again, the catch-up covers what it missed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from ..record.database import AppealError
from ..record.incident import Incident
from ..vocabulary import ACTIONS, strongest
from . import protocol
from .kernels import NodeKernels, _login

#: bytes queued for one client before it is dropped (it catches up when it reconnects)
MAX_BUFFER = 4 * 1024 * 1024
#: connections one uid may hold at once (a user's servers; more is refused)
MAX_CLIENTS_PER_UID = 32


class _Client:
    def __init__(self, uid: int, user: str, writer: asyncio.StreamWriter):
        self.uid, self.user, self.writer = uid, user, writer

    def send(self, kind: str, **fields) -> bool:
        """Queue a message; False when the client is gone or too far behind (dropped)."""
        if self.writer.is_closing():
            return False
        if self.writer.transport.get_write_buffer_size() > MAX_BUFFER:
            self.writer.close()
            return False
        self.writer.write(protocol.encode(kind, **fields))
        return True


class UserChannel:
    """The socket the users' servers connect to (``Watcher.user_socket``)."""

    def __init__(self, path: str, store, kernels: NodeKernels, settings,
                 log: logging.Logger | None = None):
        self.path, self.store, self.kernels, self.settings = Path(path), store, kernels, settings
        self.log = log or logging.getLogger("colab_guard.watch")
        self.clients: set[_Client] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        folder = self.path.parent
        if not folder.exists():
            folder.mkdir(parents=True)
            folder.chmod(0o755)
        self.path.unlink(missing_ok=True)  # left by a watcher that did not stop cleanly
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                       limit=protocol.MAX_LINE)
        os.chmod(self.path, 0o666)  # every user's server may connect; each gets its own only
        self.log.info("colab-guard watch: telling users' servers on %s", self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self.clients):
            client.writer.close()
        self.path.unlink(missing_ok=True)

    # ------------------------------------------------------------ the recorder's listeners

    def acting(self, incident: Incident, action: str) -> None:
        self._push(incident, action, "acting")

    def done(self, incident: Incident, action: str) -> None:
        self._push(incident, action, "done")

    def _push(self, incident: Incident, action: str, phase: str) -> None:
        message = None
        for client in list(self.clients):
            if client.user != incident.user:
                continue
            message = message or self._message(incident, action, phase)
            if not client.send("incident", **message):
                self.clients.discard(client)

    def _message(self, incident: Incident, action: str, phase: str) -> dict:
        return {"phase": phase, "action": action, "incident": incident.to_dict(),
                "message": self.settings.warning_message, "policy_url": self.settings.policy_url}

    # ------------------------------------------------------------ connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = None
        try:
            uid = protocol.peer_uid(writer.get_extra_info("socket"))
            hello = protocol.decode(await asyncio.wait_for(reader.readline(),
                                                           protocol.HELLO_TIMEOUT))
            since = hello.get("since") or 0
            if hello["type"] != "hello" or not isinstance(since, (int, float)):
                raise ValueError("the first message must be hello {since: <time>}")
            if sum(1 for c in self.clients if c.uid == uid) >= MAX_CLIENTS_PER_UID:
                raise ValueError(f"uid {uid} already holds {MAX_CLIENTS_PER_UID} connections")
            client = _Client(uid, _login(uid), writer)
            self._welcome(client, float(since))
            while line := await reader.readline():
                request = protocol.decode(line)
                if request["type"] != "appeal":
                    raise ValueError(f"uid {uid} sent {request['type'][:20]!r}")
                self._appeal(client, request)
        except (OSError, ValueError, KeyError, asyncio.TimeoutError,
                asyncio.LimitOverrunError, asyncio.IncompleteReadError) as err:
            self.log.info("colab-guard watch: a user's server connection ended: %s", err)
        finally:
            if client is not None:
                self.clients.discard(client)
            writer.close()

    def _appeal(self, client: _Client, request: dict) -> None:
        """The user appeals one of their own incidents (their server passes it on)."""
        answer = {"request": str(request.get("request", ""))[:64]}
        incident = self.store.get(str(request.get("incident_id", ""))[:64])
        text = request.get("text")
        try:
            if incident is None or incident.user != client.user:
                raise AppealError("no such incident of yours", 404)
            if not isinstance(text, str):
                raise AppealError("field 'text' must be a string")
            answer["appeal"] = self.store.appeal(incident.id, client.user, text).to_dict()
            self.log.info("colab-guard watch: user %s appealed incident %s", client.user,
                          incident.id)
        except AppealError as err:
            answer.update(error=str(err)[:200], status=err.status)
        client.send("appeal", **answer)

    def _welcome(self, client: _Client, since: float) -> None:
        covered = self.kernels.watches_uid(client.uid)
        client.send("welcome", user=client.user, uid=client.uid, covered=covered,
                    watcher_pid=os.getpid(), sample_interval=self.settings.sample_interval,
                    dry_run=self.settings.dry_run)
        caught_up = 0
        if covered:
            # Registered before the catch-up is read: nothing recorded meanwhile is missed
            # (the client drops an incident it gets twice, by id and phase).
            self.clients.add(client)
            missed = [i for i in self.store.query(user=client.user, since=since,
                                                  limit=protocol.CATCH_UP_LIMIT)
                      if i.time > since and i.status != "acting"]
            for incident in reversed(missed):  # oldest first
                client.send("incident", **self._message(incident, plan_action(incident), "done"))
                caught_up += 1
        client.send("caught_up", count=caught_up)


def plan_action(incident: Incident) -> str:
    """The action an incident was answered with, from its recorded steps (for the catch-up,
    which reads incidents back from the database)."""
    steps = [a.action for a in incident.actions if a.action in ACTIONS]
    return strongest("record", *steps)
