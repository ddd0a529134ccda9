"""The incident log: one JSON object per line, appended and fsynced.

An incident is written when it is detected (status "acting", actions
"pending") and again when its actions are done, so a crash in between
leaves the incident on disk with what is known of its outcome. The last line
for an id wins. Log shippers read the file as it is; the API reads the index
kept in memory.

A write that fails (full or read-only disk) never blocks an action: the
incident is kept in memory, the failure is logged and counted, and the
write is retried at the next tick.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from .incident import Incident


class IncidentLogError(RuntimeError):
    """The incident log cannot be used at all (reported at server start)."""


class IncidentLog:
    def __init__(self, path: str | Path, log: logging.Logger | None = None):
        self.path = Path(path)
        self.log = log or logging.getLogger("colab_guard")
        self._incidents: dict[str, Incident] = {}
        self._unwritten: dict[str, Incident] = {}
        self.write_errors = 0
        self.bad_lines = 0
        self._open()

    # ------------------------------------------------------------ writing

    def save(self, incident: Incident) -> bool:
        """Index the incident and append it to the file; False if the write failed."""
        self._incidents[incident.id] = incident
        self._unwritten[incident.id] = incident
        return self.flush()

    def flush(self) -> bool:
        """Write whatever is waiting; called after each save and at every tick."""
        if not self._unwritten:
            return True
        lines = "".join(json.dumps(i.to_dict(), ensure_ascii=False) + "\n"
                        for i in self._unwritten.values())
        try:
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(lines)
                out.flush()
                os.fsync(out.fileno())
        except OSError as err:
            self.write_errors += 1
            if self.write_errors == 1 or self.write_errors % 100 == 0:
                self.log.error("colab-guard: cannot write the incident log %s (%s); %d incident(s) "
                               "kept in memory and retried at every tick", self.path, err,
                               len(self._unwritten))
            return False
        self._unwritten.clear()
        return True

    @property
    def unwritten(self) -> int:
        return len(self._unwritten)

    # ------------------------------------------------------------ reading

    def get(self, incident_id: str) -> Incident | None:
        return self._incidents.get(incident_id)

    def query(self, user: str | None = None, category: str | None = None,
              kernel_id: str | None = None, since: float | None = None,
              limit: int | None = None) -> list[Incident]:
        """Newest first."""
        found: Iterable[Incident] = sorted(self._incidents.values(), key=lambda i: -i.time)
        result = []
        for inc in found:
            if user is not None and inc.user != user:
                continue
            if category is not None and inc.category != category:
                continue
            if kernel_id is not None and inc.kernel_id != kernel_id:
                continue
            if since is not None and inc.time < since:
                continue
            result.append(inc)
            if limit is not None and len(result) >= limit:
                break
        return result

    # ------------------------------------------------------------ start-up

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8"):
                pass
        except OSError as err:
            raise IncidentLogError(f"incident_log {str(self.path)!r} cannot be written: {err}") from None
        with open(self.path, encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    incident = Incident.from_dict(json.loads(line))
                except (ValueError, TypeError, KeyError) as err:
                    self.bad_lines += 1
                    self.log.warning("colab-guard: %s line %d is not an incident (%s); skipped",
                                     self.path, number, err)
                    continue
                self._incidents[incident.id] = incident
        self._mark_unfinished()

    def _mark_unfinished(self) -> None:
        """Incidents left "acting" by a server that stopped mid-action."""
        for inc in self._incidents.values():
            if inc.status != "acting":
                continue
            inc.status = "unfinished"
            for action in inc.actions:
                if action.outcome == "pending":
                    action.outcome = "unknown"
                    action.detail = "the server stopped before this action was reported done"
            self._unwritten[inc.id] = inc
        if self._unwritten:
            self.log.warning("colab-guard: %d incident(s) were interrupted by a server stop; "
                             "marked unfinished", len(self._unwritten))
            self.flush()
