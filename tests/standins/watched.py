"""A process started as a kernel and watched by the real sampler in a thread: the highest
value of each behaviour field it and its descendants were given (for the behaviour tests)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from colab_guard.observe.behaviour import Behaviour
from colab_guard.observe.processes import ProcessSampler, kernel_environment

ROOT = Path(__file__).parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FIELDS = ("kernel_relayed_connections", "kernel_refused_attempts", "kernel_ports_tried",
          "cpu_demand_percent", "cpu_demand_steady_percent", "pushed_connections")


class Watched:
    """A process started as kernel ``kernel_id`` ('k1') and sampled in a thread until
    stopped; the highest value of each behaviour field per process. A kernel id of the test's
    own keeps out the processes another run marked 'k1' (a CI run's miners, beside it)."""

    def __init__(self, argv: list[str], interval: float = 0.3, window: float | None = None,
                 kernel_id: str = "k1", **popen):
        self.interval, self.kernel_id = interval, kernel_id
        self.proc = subprocess.Popen(argv, env=kernel_environment(kernel_id, ENV), cwd=ROOT,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True,
                                     **popen)
        self.seen: dict[tuple, dict[str, int]] = {}
        self.ticks = 0
        self._stop = threading.Event()
        self.sampler = ProcessSampler()
        if window is not None:  # a shorter mining window than the server's
            self.sampler.behaviour = Behaviour(window=window)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            snapshot = self.sampler.sample({self.kernel_id: self.proc.pid})[self.kernel_id]
            for p in snapshot.processes:
                best = self.seen.setdefault(p.key, {})
                for name in FIELDS:
                    best[name] = max(best.get(name, 0), getattr(p, name))
            self.ticks += 1
            self._stop.wait(self.interval)

    def warm(self, ticks: int = 3, timeout: float = 60) -> Watched:
        """Wait until the sampler has made ``ticks`` ticks (its first ones are slow, while
        the content scanner reads the new programs), so that what follows is seen."""
        deadline = time.monotonic() + timeout
        while self.ticks < ticks:
            if time.monotonic() > deadline:
                raise AssertionError(f"the sampler made {self.ticks} ticks in {timeout} s")
            time.sleep(0.05)  # polling the sampler thread's count
        return self

    def highest(self, name: str) -> int:
        return max((fields.get(name, 0) for fields in self.seen.values()), default=0)

    def holders(self, name: str) -> set:
        return {key for key, fields in self.seen.items() if fields.get(name)}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sampler.behaviour.close()
        try:
            os.killpg(self.proc.pid, 9)  # its own session (start_new_session): its children too
        except ProcessLookupError:
            pass
        self.proc.wait()
