"""Writes that never hold up an action: what cannot be written is kept, said, counted, retried.

Both incident writers (the SQLite database and the JSON lines log) share this: a failed
write (full or read-only disk, a locked database) keeps the incident in memory, logs the
failure (the first time, then every 100th), and ``flush`` tries again at every tick.
"""

from __future__ import annotations

import logging

from .incident import Incident


class RetriedWrites:
    #: what a subclass writes to, for the error message; and the error its writes raise
    store_name = "incident store"
    write_error: type[Exception] = OSError

    def __init__(self, log: logging.Logger | None = None):
        self.log = log or logging.getLogger("colab_guard")
        self._unwritten: dict[str, Incident] = {}
        self.write_errors = 0

    def save(self, incident: Incident) -> bool:
        """Write the incident; False if the write failed (it is kept and retried)."""
        self._unwritten[incident.id] = incident
        return self.flush()

    def flush(self) -> bool:
        """Write whatever is waiting; called after each save and at every tick."""
        if not self._unwritten:
            return True
        try:
            self._write(list(self._unwritten.values()))
        except self.write_error as err:
            self.write_errors += 1
            if self.write_errors == 1 or self.write_errors % 100 == 0:
                self.log.error("colab-guard: cannot write the %s %s (%s); %d incident(s) kept in "
                               "memory and retried at every tick", self.store_name, self.path,
                               err, len(self._unwritten))
            return False
        self._unwritten.clear()
        return True

    @property
    def unwritten(self) -> int:
        return len(self._unwritten)

    def _write(self, incidents: list[Incident]) -> None:
        raise NotImplementedError
