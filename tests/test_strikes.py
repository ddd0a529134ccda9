"""Strikes on a real server: an enforced incident in a real kernel blocks the next kernel start."""

from __future__ import annotations

import json

import pytest

from tests.conftest import PYTHON, STANDINS, KernelRunner, wait_for
from tests.guard_users import ADMIN, OTHER, OWNER, api, enforced_incident, users_config

pytestmark = pytest.mark.integration


@pytest.fixture
def jp_server_config(guard_config):
    guard_config["strike_limit"] = 1
    return users_config(guard_config)


async def start_kernel_as(jp_fetch, user: str):
    return await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}),
                          headers={"X-Test-User": user}, raise_error=False)


async def test_strikes_block_kernel_starts_until_an_admin_clears_them(
        jp_fetch, jp_serverapp, guard, pool):
    response = await start_kernel_as(jp_fetch, OWNER)
    assert response.code == 201
    kernel = KernelRunner(jp_serverapp, json.loads(response.body)["id"])
    await kernel.start()
    try:
        code = (f"import subprocess\n"
                f"subprocess.Popen([{PYTHON!r}, {str(STANDINS / 'miner.py')!r}, '-o', "
                f"'stratum+tcp://127.0.0.1:{pool}']).wait()\n")
        reply, _ = await kernel.run(code, timeout=60)
        assert reply["status"] == "error"  # interrupted
    finally:
        kernel.stop()
    incidents = await wait_for(lambda: [i for i in guard.store.query(user=OWNER)
                                        if i.status == "done"], timeout=20)

    code, strikes = await api(jp_fetch, OWNER, "strikes")
    assert code == 200 and [s["incident_id"] for s in strikes["strikes"]] == [incidents[0].id]
    code, theirs = await api(jp_fetch, OTHER, "strikes")
    assert theirs["strikes"] == []

    refused = await start_kernel_as(jp_fetch, OWNER)
    assert refused.code == 403
    message = json.loads(refused.body)["message"]
    assert guard.warning_message in message
    assert "New kernels are refused" in message and "crypto-mining" in message
    code, status = await api(jp_fetch, OWNER, "status")
    assert status["strikes"] == 1 and status["strike_limit"] == 1

    code, _ = await api(jp_fetch, OWNER, "strikes", OWNER, "clear", method="POST", body={})
    assert code == 403  # a user cannot clear their own strikes
    assert (await start_kernel_as(jp_fetch, OWNER)).code == 403

    code, cleared = await api(jp_fetch, ADMIN, "strikes", OWNER, "clear", method="POST", body={})
    assert code == 200 and cleared == {"user": OWNER, "cleared": 1}
    assert (await start_kernel_as(jp_fetch, OWNER)).code == 201


async def test_dry_run_incidents_are_not_strikes(jp_fetch, guard):
    guard.store.save(enforced_incident(OWNER, dry_run=True))
    assert (await start_kernel_as(jp_fetch, OWNER)).code == 201
    guard.store.save(enforced_incident(OWNER))
    assert (await start_kernel_as(jp_fetch, OWNER)).code == 403
