"""The scenario corpus's fast subset, run against a real guarded server with real kernels.

Real third-party programs (microsocks, dropbear, ctorrent, aria2c) are installed by
``.ci/run`` (``benchmarks/scenarios/install.sh --small``). Where one is missing the test
is skipped here and fails in CI (CI=true). The whole corpus, with latencies, is
``./dev bench detection``.
"""

from __future__ import annotations

import os

import psutil
import pytest

from benchmarks.scenarios.corpus import SCENARIOS, Env, Scenario
from tests.conftest import KernelRunner, incidents_in, wait_for

pytestmark = pytest.mark.integration

FAST = [s for s in SCENARIOS if s.fast]


@pytest.fixture(scope="module")
def env():
    services = Env.start()
    yield services
    services.close()


@pytest.fixture
def guard_config(guard_config):
    # Measure what the server-side sampler recognises: with cell checks on, most abuse cells
    # are refused before their program starts (tests/test_cells* cover that path).
    return {**guard_config, "cell_checks": False}


def _require(scenario: Scenario) -> None:
    missing = scenario.missing()
    if missing:
        message = f"not installed: {', '.join(missing)} (benchmarks/scenarios/install.sh --small)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _pid(outputs) -> int:
    for line in KernelRunner.text(outputs).splitlines():
        if line.startswith("START "):
            return int(line.split()[3])
    raise AssertionError(f"the scenario's program did not start: {outputs!r}")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_fast_subset_has_abuse_with_real_programs_and_honest_look_alikes():
    assert len([s for s in FAST if s.abuse and not s.standin]) >= 4
    assert len([s for s in FAST if not s.abuse]) >= 2


@pytest.mark.parametrize("scenario", [s for s in FAST if s.abuse], ids=lambda s: s.name)
async def test_abuse_scenario_is_stopped_and_recorded(scenario, env, kernel, guard_config):
    _require(scenario)
    reply, outputs = await kernel.run(scenario.code(env), timeout=scenario.seconds + 60)
    pid = _pid(outputs)
    assert reply["status"] == "error"  # the kernel was interrupted
    found = await wait_for(lambda: [i for i in incidents_in(guard_config["incident_log"])
                                    if i["status"] == "done"], timeout=20)
    assert found[0]["category"] == scenario.category
    assert found[0]["kernel_id"] == kernel.kernel_id
    assert any(p["pid"] == pid for p in found[0]["evidence"]["processes"])
    await wait_for(lambda: _gone(pid))


@pytest.mark.parametrize("scenario", [s for s in FAST if not s.abuse], ids=lambda s: s.name)
async def test_honest_look_alike_is_left_alone(scenario, env, kernel, guard_config, guard):
    _require(scenario)
    ticks_before = guard.monitor.ticks
    reply, outputs = await kernel.run(scenario.code(env), timeout=scenario.seconds + 60)
    text = KernelRunner.text(outputs)
    assert reply["status"] == "ok", text
    assert "rc 0" in text  # the program ran to its end
    assert guard.monitor.ticks > ticks_before  # and the guard was watching meanwhile
    assert incidents_in(guard_config["incident_log"]) == []
