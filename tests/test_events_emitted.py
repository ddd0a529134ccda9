"""Every kind of incident reaches a subscriber of the server's event bus (as JupyterLab
subscribes) as a valid event: a program stopped, the kernel interrupted, a cell refused,
tampering with the kernel hook."""

from __future__ import annotations

import jsonschema
import pytest
import yaml

from colab_guard.record.events import INCIDENT_SCHEMA, INCIDENT_SCHEMA_ID
from tests.conftest import wait_for
from tests.test_kernel_hook import MINER_CELL, hooked

pytestmark = pytest.mark.integration

SCHEMA = yaml.safe_load(INCIDENT_SCHEMA.read_text())


@pytest.fixture
def guard_config(guard_config, request):
    guard_config.update(cell_checks=True, **getattr(request, "param", {}))
    return guard_config


@pytest.fixture
def events(jp_serverapp):
    received: list[dict] = []

    async def listener(logger, schema_id, data):
        received.append(data)

    jp_serverapp.event_logger.add_listener(schema_id=INCIDENT_SCHEMA_ID, listener=listener)
    return received


def valid(event: dict) -> dict:
    jsonschema.validate(event, SCHEMA)
    return event


@pytest.mark.parametrize("guard_config, action", [
    ({"actions": {"crypto-mining": "stop"}}, "stop"),
    ({}, "interrupt"),
], indirect=["guard_config"])
async def test_a_program_acted_on_is_an_event(guard_config, action, kernel, guard, pool, events):
    await hooked(guard, kernel, pool)
    await kernel.run(MINER_CELL)
    event = valid((await wait_for(lambda: events, timeout=30))[0])
    assert event["action"] == action and event["category"] == "crypto-mining"
    assert event["kernel_id"] == kernel.kernel_id and event["strike"] is True
    assert {o["action"] for o in event["outcomes"]} >= {"record", "warn", "stop"}


async def test_a_refused_cell_is_an_event(kernel, guard, events):
    await hooked(guard, kernel)
    reply, _ = await kernel.run("!./xmrig --donate-level 1 -o stratum+tcp://127.0.0.1:3333\n")
    assert reply["status"] == "error" and reply["ename"] == "CellRefused"
    event = valid((await wait_for(lambda: events))[0])
    assert event["action"] == "refuse" and event["category"] == "crypto-mining"
    assert ("refuse", "done") in [(o["action"], o["outcome"]) for o in event["outcomes"]]
    assert event["strike"] is False  # a first refusal is a warning (cell_refusals_allowed)


async def test_a_refused_cell_tried_again_is_a_strike(kernel, guard, events):
    await hooked(guard, kernel)
    for _ in range(2):
        reply, _ = await kernel.run("!./xmrig --donate-level 1 -o stratum+tcp://127.0.0.1:3333\n")
        assert reply["ename"] == "CellRefused"
    first, second = [valid(e) for e in await wait_for(lambda: events[1:] and events)]
    assert (first["strike"], second["strike"]) == (False, True)
    strikes = guard.store.strikes(guard.settings_.user_name, guard.settings_.strike_window)
    assert [s.incident_id for s in strikes] == [second["incident_id"]]


async def test_tampering_is_an_event(kernel, guard, events):
    await hooked(guard, kernel)
    await kernel.run("%unload_ext colab_guard.kernel")
    event = valid((await wait_for(lambda: events))[0])
    assert event["category"] == "tampering" and event["action"] == "record"
    assert event["signature"] == "kernel-hook-unloaded"
