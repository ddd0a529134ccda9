"""The server extension's link to the node watcher (watch/protocol.py): being told.

When a node watcher (root) covers this server's user, it is the authority for processes:
it finds, stops and records process offences in its own database, which the user cannot
reach. This server then does not sample processes itself (``covered``), so that an
offence is never recorded twice; it keeps what only it can do (cell checks, the kernel
hook's tampering), and tells the user what the watcher did: the notice in the kernel's
cell, the event for JupyterLab, and the watcher's incidents in its REST API (kept in
memory here, never recorded a second time).

The link checks that the socket's listener is root's (SO_PEERCRED): a socket any user
set up is ignored, and this server then guards its processes itself. It connects again
after the watcher restarts, and asks for what happened since the last incident it saw,
so a server that was frozen or killed meanwhile still tells the user.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from .record.database import AppealError
from .record.incident import Incident
from .vocabulary import RANK
from .watch import protocol

#: seconds between two tries to reach the watcher (its socket missing, or it restarted)
RETRY = 2.0
#: the watcher's incidents of this user kept for the REST API, newest last
KEPT = 500
#: how far back a server that starts asks for its user's incidents (for "My incidents")
HISTORY = 7 * 86400
#: seconds an appeal waits for the watcher's answer
APPEAL_TIMEOUT = 10.0
#: incidents whose action told is remembered across the user's servers (the seen file): a
#: stronger action carried out in one later (a kernel shut down past its interrupt, within
#: KERNEL_ESCALATION_WINDOW) is told by the next server, even one started after
TOLD_ACTIONS_KEPT = 100

#: (incident, action, phase, message, policy_url, new): new is False for an incident
#: already told by an earlier server (listed, not notified again)
IncidentHandler = Callable[[Incident, str, str, str, str, bool], None]


class WatcherLink:
    def __init__(self, path: str, seen_file: Path, on_incident: IncidentHandler,
                 log: logging.Logger | None = None):
        self.path, self.seen_file, self.on_incident = path, seen_file, on_incident
        self.log = log or logging.getLogger("colab_guard")
        self.covered = False
        self.welcome: dict = {}
        self.reason = f"no node watcher socket at {path}"
        self.connected_since: float | None = None
        #: incident id -> (incident, action): the watcher's incidents of this user
        self.incidents: OrderedDict[str, tuple[Incident, str]] = OrderedDict()
        #: incident id -> the (action, phase) pairs told of it: an incident is told again
        #: when a stronger action is carried out in it (a kernel shut down past its interrupt)
        self._phases: dict[str, set[tuple[str, str]]] = {}
        #: new incidents of the catch-up: what happened while no server of the user listened
        #: (JupyterLab shows them when it loads: no browser was connected to be told then)
        self.told_on_return: list[dict] = []
        self._catching_up = False
        self._said: set[str] = set()
        #: incident id -> the action told of it complete, by this server or an earlier one
        self._told_actions: dict[str, str] = {}
        self._told_until = self._load_seen()
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._requests: dict[str, asyncio.Future] = {}  # appeals waiting for their answer

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)

    def status(self) -> dict:
        """For the status API and the status bar."""
        found = {"covered": self.covered, "socket": self.path, "reason": self.reason,
                 "incidents": len(self.incidents), "told_on_return": self.told_on_return}
        if self.covered:
            found.update(connected_since=self.connected_since,
                         watcher_pid=self.welcome.get("watcher_pid"),
                         sample_interval=self.welcome.get("sample_interval"),
                         dry_run=self.welcome.get("dry_run"))
        return found

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._session()
            except (OSError, ValueError, KeyError, asyncio.LimitOverrunError,
                    asyncio.IncompleteReadError) as err:
                self.reason = f"node watcher at {self.path}: {type(err).__name__}: {err}"
            if self.covered:
                self.log.warning("colab-guard: the node watcher went away (%s); this server "
                                 "checks its kernels' processes itself until it is back",
                                 self.reason)
            self.covered = False
            self.connected_since = None
            try:
                await asyncio.wait_for(self._stop.wait(), RETRY)
            except asyncio.TimeoutError:
                pass

    async def _session(self) -> None:
        if not os.path.exists(self.path):
            self.reason = f"no node watcher socket at {self.path}"
            return
        reader, writer = await asyncio.open_unix_connection(self.path, limit=protocol.MAX_LINE)
        try:
            uid = protocol.peer_uid(writer.get_extra_info("socket"))
            if uid != 0:
                self.reason = (f"the socket {self.path} is not root's (its listener runs as "
                               f"uid {uid}): ignored")
                self._say_once(self.reason)
                return
            writer.write(protocol.encode("hello", since=time.time() - HISTORY))
            self._writer = writer
            while True:
                line = await reader.readline()
                if not line:
                    self.reason = "the node watcher closed the connection"
                    return
                self._received(protocol.decode(line))
        finally:
            self._writer = None
            writer.close()

    async def appeal(self, incident_id: str, text: str) -> dict:
        """Appeal one of the watcher's incidents of this user; the appeal, or AppealError."""
        if self._writer is None or self._writer.is_closing():
            raise AppealError("the node watcher that recorded it cannot be reached now", 503)
        request = uuid.uuid4().hex
        answer = self._requests[request] = asyncio.get_running_loop().create_future()
        self._writer.write(protocol.encode("appeal", request=request, incident_id=incident_id,
                                           text=text))
        try:
            found = await asyncio.wait_for(answer, APPEAL_TIMEOUT)
        except asyncio.TimeoutError:
            raise AppealError("the node watcher did not answer", 504) from None
        finally:
            self._requests.pop(request, None)
        if "appeal" not in found:
            raise AppealError(str(found.get("error", "refused")), int(found.get("status", 400)))
        return found["appeal"]

    def _received(self, message: dict) -> None:
        kind = message["type"]
        if kind == "caught_up":
            self._catching_up = False
        elif kind == "welcome":
            self._catching_up = True
            self.welcome = message
            self.covered = bool(message.get("covered"))
            if self.covered:
                self.connected_since = time.time()
                self.reason = (f"covered by the node watcher (pid {message.get('watcher_pid')}) "
                               f"for user {message.get('user')}")
            else:
                self.reason = (f"the node watcher does not watch uid {message.get('uid')}'s "
                               "kernels (a system user, or not in Watcher.users)")
            self.log.info("colab-guard: %s", self.reason)
        elif kind == "incident":
            self._incident(message)
        elif kind == "appeal":
            waiting = self._requests.get(str(message.get("request")))
            if waiting is not None and not waiting.done():
                waiting.set_result(message)

    def _incident(self, message: dict) -> None:
        incident = Incident.from_dict(message["incident"])
        action, phase = str(message.get("action", "record")), str(message.get("phase"))
        told = self._phases.setdefault(incident.id, set())
        if (action, phase) in told or (action, "done") in told:
            return
        earlier = {RANK.get(told_action, 0) for told_action, _ in told if told_action != action}
        if earlier and max(earlier) > RANK.get(action, 0):
            return  # a weaker action's phase come late: the incident was told stronger
        stronger = bool(earlier) or self._stronger_than_told(incident.id, action)
        told.add((action, phase))
        if phase == "done":
            self.incidents[incident.id] = (incident, action)
            self.incidents.move_to_end(incident.id)
            while len(self.incidents) > KEPT:
                old, _ = self.incidents.popitem(last=False)
                self._phases.pop(old, None)
        while len(self._phases) > 2 * KEPT:  # some told only as acting (the watcher stopped)
            self._phases.pop(next(iter(self._phases)))
        new = incident.time > self._told_until or stronger
        try:
            self.on_incident(incident, action, phase, str(message.get("message", "")),
                             str(message.get("policy_url", "")), new)
        except Exception:
            self.log.exception("colab-guard: telling the node watcher's incident %s failed",
                               incident.id)
        if new and phase == "done":
            if self._catching_up:
                others = [i for i in self.told_on_return if i["id"] != incident.id]
                self.told_on_return = [*others[-19:], {
                    "id": incident.id, "time": incident.to_dict()["time"],
                    "category": incident.category, "summary": incident.summary(),
                    "action": action, "kernel_id": incident.kernel_id,
                    "dry_run": incident.dry_run}]
            self._told_until = max(self._told_until, incident.time)
            self._remember_told(incident.id, action)
            self._save_seen()

    def _stronger_than_told(self, incident_id: str, action: str) -> bool:
        """Whether a server of this user told the incident complete with a weaker action."""
        told = self._told_actions.get(incident_id)
        return told is not None and RANK.get(action, 0) > RANK.get(told, 0)

    def _remember_told(self, incident_id: str, action: str) -> None:
        self._told_actions.pop(incident_id, None)  # newest last
        self._told_actions[incident_id] = action
        while len(self._told_actions) > TOLD_ACTIONS_KEPT:
            self._told_actions.pop(next(iter(self._told_actions)))

    # ------------------------------------------------------------ what was told already

    def _load_seen(self) -> float:
        """The time of the last incident told by this user's servers; a server that starts
        for the first time tells what happens from now on."""
        try:
            seen = json.loads(self.seen_file.read_text())
            told = seen.get("told_actions") or {}
            self._told_actions = {str(i): str(a) for i, a in told.items()} \
                if isinstance(told, dict) else {}
            return float(seen["told_until"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            now = time.time()
            self._save_seen(now)
            return now

    def _save_seen(self, until: float | None = None) -> None:
        try:
            self.seen_file.parent.mkdir(parents=True, exist_ok=True)
            self.seen_file.write_text(json.dumps({"told_until": until or self._told_until,
                                                  "told_actions": self._told_actions}))
        except OSError as err:
            self._say_once(f"cannot write {self.seen_file}: {err}")

    def _say_once(self, what: str) -> None:
        if what not in self._said:
            self._said.add(what)
            self.log.warning("colab-guard: %s", what)
