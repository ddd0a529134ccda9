"""Configuration is validated with messages that name the setting; a guard that cannot start
stops the server rather than leave it unguarded; the API refuses bad and unauthenticated requests."""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import HTTPClientError
from jupyter_server.serverapp import ServerApp
from traitlets import TraitError
from traitlets.config import Config

from colab_guard.vocabulary import DEFAULT_ACTIONS
from colab_guard.app import ColabGuard
from colab_guard.settings import GuardTraits
from tests.harness import GuardedServer, wait_for


@pytest.mark.parametrize("name, value, message", [
    ("sample_interval", -1.0, "'sample_interval' trait of a ColabGuard instance should not be less than 0.1"),
    ("stop_grace", 90.0, "'stop_grace' trait of a ColabGuard instance should not be greater than 30"),
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


#: A bad value for every setting: the server must stop naming it, never run on defaults.
BAD_VALUES = {
    "enabled": "sometimes", "dry_run": "maybe", "sample_interval": 0,
    "signature_paths": [1, 2], "disabled_signatures": {"a": 1},
    "actions": {"crypto-mining": "shutdwon"}, "default_action": "nuke",
    "warning_message": 42, "policy_url": ["x"], "incident_log": 7, "stop_grace": 31,
    "libraries_refresh": -1, "user_name": 3.5, "database_url": [], "strike_limit": -1,
    "strike_window": 0, "cell_refusals_allowed": -2, "gpu_sampling": "on", "kernel_hook": "yes",
    "cell_checks": 2, "cell_check_timeout": 60, "cell_check_limit": 0, "fail_closed": "no", "watcher_socket": 5,
    "hub_url": "ftp://hub/", "hub_api_token": 5, "hub_queue_size": 0,
}


def test_every_setting_has_a_bad_value_under_test():
    assert set(BAD_VALUES) == set(ColabGuard.class_own_traits(config=True)) | \
        set(GuardTraits.class_traits(config=True))


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_a_bad_value_for_any_setting_stops_the_guard_naming_it(name, capfd):
    server = ServerApp(config=Config({"ColabGuard": {name: BAD_VALUES[name]}}))
    with pytest.raises(SystemExit):
        ColabGuard()._link_jupyter_server_extension(server)
    log = capfd.readouterr().err
    assert "colab-guard cannot start: a bad setting" in log and name in log
    assert "stopping the server rather than running it unguarded" in log


def test_an_unknown_setting_is_refused(capfd):
    server = ServerApp(config=Config({"ColabGuard": {"strike_limt": 1}}))
    with pytest.raises(SystemExit):
        ColabGuard()._link_jupyter_server_extension(server)
    assert "ColabGuard.strike_limt is not a setting of colab-guard" in capfd.readouterr().err


@pytest.mark.parametrize("settings, message", [
    ({"actions": {"crypto-mining": "shutdwon"}, "strike_limit": 1},
     "ColabGuard.actions['crypto-mining']: 'shutdwon' is not one of"),
    ({"sample_interval": 0}, "'sample_interval' trait of a ColabGuard instance"),
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
    server = GuardedServer(settings, folder=tmp_path / "server")
    assert server.exits() == 1
    log = server.log()
    assert "colab-guard cannot start: " in log and message in log
    assert "stopping the server rather than running it unguarded" in log


def test_without_fail_closed_a_bad_setting_leaves_the_server_unguarded_and_says_so(tmp_path):
    """fail_closed=False: the server runs, but unguarded, never with half the configuration."""
    with GuardedServer({"fail_closed": False, "sample_interval": 0}, folder=tmp_path) as server:
        status = server.api("GET", "colab-guard/api/status")
        log = server.log()
    assert "THE SERVER RUNS UNGUARDED" in log and "sample_interval" in log
    assert status["guarded"] is False and "sample_interval" in status["unguarded_reason"]


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
