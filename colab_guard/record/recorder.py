"""The recorder: one path for every incident, whoever found it.

save -> (act) -> save again -> metrics -> log line -> event -> listeners

The monitor (processes found by sampling) and the kernel channel (cells, tampering)
both record through here, so every incident is written before anything is done about
it, counted, logged, emitted on the server's event bus and told to whoever listens
(the kernel channel, which shows it in the notebook).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from . import metrics
from .database import IncidentStore
from .events import incident_event
from .incident import Incident

IncidentListener = Callable[[Incident, str], Awaitable[None] | None]
Emit = Callable[[dict], None]


class Recorder:
    def __init__(self, store: IncidentStore, policy, settings, emit: Emit | None = None,
                 log: logging.Logger | None = None):
        self.store, self.policy, self.settings = store, policy, settings
        self.emit = emit
        self.log = log or logging.getLogger("colab_guard")
        #: told when an incident is recorded, before anything is done (to tell the user fast)
        self.acting_listeners: list[Callable[[Incident, str], None]] = []
        #: told when an incident is complete, with every action's outcome
        self.listeners: list[IncidentListener] = []

    def begin(self, incident: Incident, action: str) -> None:
        """On disk before anything is done; the acting listeners are told."""
        self.save(incident)
        for listener in list(self.acting_listeners):
            try:
                listener(incident, action)
            except Exception:
                self.log.exception("colab-guard: an acting listener failed")

    async def finish(self, incident: Incident, action: str, again: bool = False) -> None:
        """The incident is complete: saved with its outcomes, counted, logged, emitted, told.
        ``again``: complete once more, a stronger action carried out in it (a kernel shut down
        for going on past its interrupt), counted already."""
        incident.status = "done"
        self.save(incident)
        if not again:
            metrics.INCIDENTS.labels(incident.category,
                                     "dry-run" if incident.dry_run else action).inc()
        self._log_line(incident, action)
        self._emit(incident, action)
        for listener in list(self.listeners):
            try:
                result = listener(incident, action)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                self.log.exception("colab-guard: an incident listener failed")

    async def record(self, incident: Incident, action: str) -> Incident:
        """An incident whose actions are already done (a refused cell, tampering)."""
        self.begin(incident, action)
        await self.finish(incident, action)
        return incident

    def save(self, incident: Incident) -> None:
        if not incident.strike:
            incident.strike = self.policy.is_strike(incident, self._earlier_refusals(incident))
        if not self.store.save(incident):
            metrics.RECORD_ERRORS.inc()

    def flush(self) -> None:
        self.store.flush()

    def _earlier_refusals(self, incident: Incident) -> int:
        if not any(a.action == "refuse" for a in incident.actions):
            return 0
        since = time.time() - self.settings.strike_window
        return self.store.refusals(incident.user, incident.category, since, before=incident.id)

    def _log_line(self, incident: Incident, action: str) -> None:
        outcomes = ", ".join(f"{a.action} {a.target}: {a.outcome}" for a in incident.actions)
        self.log.warning("colab-guard: incident %s in kernel %s: %s (%s)%s; action %s: %s%s",
                         incident.id, incident.kernel_id, ascii(incident.summary()),
                         incident.signature, " [dry run]" if incident.dry_run else "",
                         action, outcomes, "; a strike" if incident.strike else "")

    def _emit(self, incident: Incident, action: str) -> None:
        if self.emit is None:
            return
        try:
            self.emit(incident_event(incident, action, self.settings.warning_message,
                                     self.settings.policy_url))
        except Exception:
            metrics.EVENTS_REFUSED.inc()
            self.log.exception("colab-guard: could not emit the incident event")
