"""The incident log: one JSON object per line, appended and fsynced, for log shippers.

An incident is appended when it is detected (status "acting", actions
"pending") and again when its actions are done (and, after a server stop in
between, once more as "unfinished"): the last line for an id wins. The
incident database (database.py) is what the API and the CLI read.

A write that fails (full or read-only disk) never blocks an action: the
incident is kept in memory, the failure is logged and counted, and the
write is retried at the next tick.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .incident import Incident


class IncidentLogError(RuntimeError):
    """The incident log cannot be used at all (reported at server start)."""


class IncidentLog:
    def __init__(self, path: str | Path, log: logging.Logger | None = None):
        self.path = Path(path)
        self.log = log or logging.getLogger("colab_guard")
        self._unwritten: dict[str, Incident] = {}
        self.write_errors = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8"):
                pass
        except OSError as err:
            raise IncidentLogError(f"incident_log {str(self.path)!r} cannot be written: {err}") from None

    def save(self, incident: Incident) -> bool:
        """Append the incident; False if the write failed (kept, and retried by flush)."""
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
