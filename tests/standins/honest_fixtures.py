"""What the honest-work tests (tests/test_honest_*.py) share: services run as another machine's
would be, the guard's behaviour fields as it measured them, and the one assertion that matters
(the work ran to its end: no incident, nothing stopped, the kernel never interrupted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from colab_guard.observe.behaviour import WINDOW
from tests.conftest import KernelRunner, incidents_in

ROOT = Path(__file__).resolve().parents[2]
#: Seconds an honest workload runs: the longest window it could trip (mining's 15 s; the scan
#: rules' 10 s) and a margin for late ticks on this busy machine.
HONEST_SECONDS = WINDOW + 8


@pytest.fixture
def guard_config(guard_config):
    """As deployed: cells checked before they run (words in a cell are where most false
    positives of a guard come from)."""
    guard_config.update(cell_checks=True)
    return guard_config


@pytest.fixture
def service():
    """``port = service("params")``: a service of tests/standins/honest_services.py, run by
    the test (no kernel's), stopped at teardown."""
    started: list[subprocess.Popen] = []

    def start(kind: str, *args: str) -> int:
        proc = subprocess.Popen([sys.executable, "-m", "tests.standins.honest_services", kind,
                                 *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        started.append(proc)
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"{kind} did not start"
        return int(line)

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture
def measured(guard):
    """The behaviour fields the guard computed for each kernel's processes, highest seen, and
    the ticks it evaluated them at: ``measured[kernel_id]``."""
    seen: dict[str, dict[str, float]] = {}
    evaluate = guard.monitor.engine.evaluate

    def spy(snapshot):
        best = seen.setdefault(snapshot.kernel_id, {"ticks": 0})
        best["ticks"] += 1
        for p in snapshot.processes:
            for name in ("cpu_demand_percent", "pushed_connections"):
                value = getattr(p, name, 0) or 0
                best[name] = max(best.get(name, 0), value)
        return evaluate(snapshot)

    guard.monitor.engine.evaluate = spy
    yield seen
    guard.monitor.engine.evaluate = evaluate


def incidents_shown(guard_config) -> list:
    return [(i["signature"], i.get("evidence")) for i in incidents_in(guard_config["incident_log"])]


async def run_to_the_end(kernel, guard_config, code: str, done: str = "done",
                         timeout: float = HONEST_SECONDS + 90) -> str:
    """Run a cell that must finish undisturbed: it was not refused nor interrupted, printed
    ``done`` (its processes ran to their end), and no incident was recorded. Its text."""
    try:
        reply, outputs = await kernel.run(code, timeout=timeout)
    except TimeoutError as err:  # say whether the guard had a hand in it
        raise AssertionError(f"the cell did not finish in {timeout:.0f} s; incidents: "
                             f"{incidents_shown(guard_config)}") from err
    text = KernelRunner.text(outputs)
    assert reply["status"] == "ok", (text, incidents_shown(guard_config))
    assert done in text, text
    assert incidents_shown(guard_config) == []
    return text
