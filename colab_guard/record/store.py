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
from .retried import RetriedWrites


class IncidentLogError(RuntimeError):
    """The incident log cannot be used at all (reported at server start)."""


class IncidentLog(RetriedWrites):
    store_name = "incident log"
    write_error = OSError

    def __init__(self, path: str | Path, log: logging.Logger | None = None):
        super().__init__(log)
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8"):
                pass
        except OSError as err:
            raise IncidentLogError(f"incident_log {str(self.path)!r} cannot be written: {err}") from None

    def _write(self, incidents: list[Incident]) -> None:
        lines = "".join(json.dumps(i.to_dict(), ensure_ascii=False) + "\n" for i in incidents)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(lines)
            out.flush()
            os.fsync(out.fileno())
