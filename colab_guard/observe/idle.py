"""The idle fast path: a process that has not run since its last full read has not changed.

A watched process none of whose threads was scheduled since its last full read
(/proc/PID/schedstat) cannot have changed its command line, executable, uid, threads
or libraries: that read stands, refreshed all the same every ``QUIET_REFRESH`` or so.
This only holds where the scheduler counts move at all; ``SchedCounts`` checks that
each tick on the sampling thread's own counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import procfs
from .model import Process

#: Seconds after which a process that has not run is read in full all the same (each
#: process at its own point between half this and this, so they do not come at once).
QUIET_REFRESH = 120.0


@dataclass
class QuietRead:
    """The last full read of a process, and what shows whether it ran since."""

    sample: Process
    activity: tuple  # (thread id, its schedstat) of each thread
    refresh_at: float  # read in full then all the same
    markers_pending: bool  # its files were still being scanned at that read
    # It ran before that read, but its fds were not walked or its maps not read again then
    # (not due yet): done once they are due, even if it does not run again.
    fds_pending: bool
    maps_pending: bool
    vms: int  # its virtual size at that read

    @property
    def single(self) -> bool:
        """One thread: its schedstat alone shows whether the process ran."""
        return len(self.activity) == 1 and self.activity[0][0] == self.sample.pid


def refresh_time(now: float, pid: int) -> float:
    """When a quiet process is read in full all the same: spread by pid, so that the
    refreshes of many processes started together do not all fall on one tick."""
    return now + QUIET_REFRESH * (8 + pid % 8) / 16


class SchedCounts:
    """Whether the scheduler counts move, so that unchanged counts mean "did not run"."""

    def __init__(self):
        self._own: bytes | None = None  # this thread's schedstat at the last tick
        self.move = True

    def check(self) -> bool:
        """This thread ran since the last tick, so its own counts must have changed. If
        they did not (a kernel or sandbox that fakes them), every process is read in full.
        Returns False when they stopped moving at this tick (to be said once)."""
        time.sleep(1e-6)  # leave the CPU: a thread's counts are updated when it does
        try:
            counts = procfs.read_small("/proc/thread-self/schedstat")
        except OSError:
            counts = None
        moved = counts is not None and counts != self._own and counts.split()[2:3] != [b"0"]
        stopped = self._own is not None and self.move and not moved
        self.move = moved or self._own is None
        self._own = counts
        return not stopped
