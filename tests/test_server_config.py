"""Configuration is validated with messages that name the setting; a guard that cannot start
stops the server rather than leave it unguarded; the API refuses bad and unauthenticated requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tornado.httpclient import HTTPClientError
from traitlets import TraitError

from colab_guard.act.policy import DEFAULT_ACTIONS
from colab_guard.app import ColabGuard
from tests.conftest import wait_for


@pytest.mark.parametrize("name, value, message", [
    ("sample_interval", -1.0, "ColabGuard.sample_interval must be between 0.1 and 60, got -1.0"),
    ("stop_grace", 90.0, "ColabGuard.stop_grace must be between 0 and 30, got 90.0"),
    ("actions", {"crypto-mining": "explode"},
     "ColabGuard.actions['crypto-mining']: 'explode' is not one of record, warn, stop, interrupt, shutdown"),
    ("actions", {"Mining!": "stop"}, "ColabGuard.actions: 'Mining!' is not a category name"),
    ("default_action", "nuke", "default_action"),
])
def test_bad_settings_are_refused_with_the_setting_named(name, value, message):
    with pytest.raises(TraitError) as caught:
        ColabGuard(**{name: value})
    assert message in str(caught.value)


def test_actions_are_merged_over_the_defaults():
    guard = ColabGuard(actions={"torrenting": "stop"})
    assert guard.actions == {**DEFAULT_ACTIONS, "torrenting": "stop"}


def start_server(tmp_path, guard_settings: dict) -> subprocess.CompletedProcess:
    """Start a real `jupyter server` with these ColabGuard settings; it must exit on its own."""
    config = tmp_path / "jupyter_server_config.json"
    config.write_text(json.dumps({"ColabGuard": {"incident_log": str(tmp_path / "i.jsonl"),
                                                 **guard_settings}}))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    return subprocess.run(
        [sys.executable, "-m", "jupyter_server", "--ServerApp.port=0", "--ServerApp.ip=127.0.0.1",
         "--ServerApp.open_browser=False", "--ServerApp.jpserver_extensions=colab_guard=True",
         "--allow-root"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)


@pytest.mark.parametrize("settings, message", [
    ({"signature_paths": ["{tmp}/ops-rules.yaml"]},
     "ops-rules.yaml, line 4: signature 'half', field 'severity': 'extreme' is not one of"),
    ({"disabled_signatures": ["no-such-rule"]},
     "ColabGuard.disabled_signatures names unknown id(s): no-such-rule"),
    ({"incident_log": "{tmp}/a-file/incidents.jsonl"}, "cannot be written"),
])
def test_a_guard_that_cannot_start_stops_the_server(tmp_path, settings, message):
    (tmp_path / "ops-rules.yaml").write_text(
        "signatures:\n  - id: half\n    category: crypto-mining\n    severity: extreme\n"
        "    description: a rule with a bad severity\n    when: {name: {equals: x}}\n"
        "    examples: {match: [{name: x}], no_match: [{name: y}]}\n")
    (tmp_path / "a-file").write_text("")
    settings = json.loads(json.dumps(settings).replace("{tmp}", str(tmp_path)))
    result = start_server(tmp_path, settings)
    assert result.returncode == 1
    assert "colab-guard cannot start: " in result.stderr and message in result.stderr
    assert "stopping the server rather than running it unguarded" in result.stderr


async def test_the_api_refuses_unauthenticated_requests(jp_fetch, guard):
    for route in (("incidents",), ("incidents", "abc"), ("status",)):
        with pytest.raises(HTTPClientError) as caught:
            await jp_fetch("colab-guard", "api", *route, headers={"Authorization": ""})
        assert caught.value.code == 403


@pytest.mark.parametrize("params, message", [
    ({"limit": "lots"}, "parameter 'limit' must be an integer"),
    ({"limit": "0"}, "parameter 'limit' must be between 1 and 1000"),
    ({"since": "yesterday"}, "parameter 'since' must be an ISO 8601 time"),
])
async def test_malformed_api_requests_get_a_400_naming_the_parameter(jp_fetch, guard, params, message):
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("colab-guard", "api", "incidents", params=params)
    assert caught.value.code == 400
    assert message in json.loads(caught.value.response.body)["message"]


async def test_an_unknown_incident_is_a_404(jp_fetch, guard):
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("colab-guard", "api", "incidents", "0123abcd")
    assert caught.value.code == 404


async def test_status_reports_the_guard(jp_fetch, guard, kernel):
    body = json.loads((await jp_fetch("colab-guard", "api", "status")).body)
    assert body["enabled"] is True and body["dry_run"] is False
    assert body["kernels_monitored"] == 1
    assert body["signatures"] >= 15
    assert body["policy_url"] == "https://example.org/acceptable-use"


async def test_stopping_the_server_ends_the_sampling_loop(guard):
    await wait_for(lambda: guard.monitor.sampler.stats.ticks > 0)  # the loop is under way
    await guard.stop_extension()
    # The tick in progress finished before its worker threads went away: no task left
    # pending for the event loop to complain about at exit.
    assert guard.monitor._loop_task.done() and not guard.monitor._loop_task.cancelled()
    assert guard.monitor._loop_task.exception() is None
