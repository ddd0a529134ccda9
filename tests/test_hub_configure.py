"""``configure(c)``: what it sets up in jupyterhub_config.py, what it keeps of the operator's
own settings, the service reading the same file, and the spawn gate when the service is down.
(The whole, with a real JupyterHub: tests/test_hub_service.py.)"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from types import SimpleNamespace

import pytest
from tornado.web import HTTPError
from traitlets.config import Config, PyFileConfigLoader

from colab_guard.hub import configure
from colab_guard.hub.app import ColabGuardHub
from colab_guard.hub.configure import SpawnGate
from tests.harness import free_port


def _roles(c) -> dict[str, dict]:
    return {r["name"]: r for r in c.JupyterHub.load_roles}


def test_configure_sets_up_the_service_scopes_roles_environment_and_gate():
    c = Config()
    configure(c)
    [service] = c.JupyterHub.services
    assert service["name"] == "colab-guard" and service["url"] == "http://127.0.0.1:10101"
    assert service["command"][1:3] == ["-m", "colab_guard.hub"]
    assert len(service["api_token"]) == 64 and service["oauth_no_confirm"]
    assert set(c.JupyterHub.custom_scopes) == {
        "custom:colab-guard:report", "custom:colab-guard:report-any", "custom:colab-guard:review"}
    roles = _roles(c)
    assert set(roles["server"]["scopes"]) == {
        "users:activity!user", "access:servers!server", "custom:colab-guard:report!user"}
    assert roles["colab-guard-service"]["services"] == ["colab-guard"]
    assert {"admin:servers", "read:users", "custom:colab-guard:review"} <= set(
        roles["colab-guard-service"]["scopes"])
    assert roles["colab-guard-reviewer"]["groups"] == ["colab-guard-reviewers"]
    assert "colab-guard-watcher" not in roles  # no watcher token given
    assert c.JupyterHub.extra_user_scopes == {"custom:colab-guard:report!user",
                                              "access:services!service=colab-guard"}
    assert c.Spawner.environment == {
        "COLAB_GUARD_HUB_URL": "http://127.0.0.1:10101/services/colab-guard/"}
    assert isinstance(c.Spawner.pre_spawn_hook, SpawnGate)


def test_configure_keeps_the_operators_settings():
    c = Config()
    c.JupyterHub.services = [{"name": "idle-culler", "command": ["cull"]}]
    c.JupyterHub.load_roles = [{"name": "idle-culler", "scopes": ["servers"],
                                "services": ["idle-culler"]},
                               {"name": "server", "scopes": ["users:activity!user",
                                                             "read:users:name!user"]}]
    c.Spawner.environment = {"TZ": "UTC"}
    called = []
    c.Spawner.pre_spawn_hook = lambda spawner: called.append(spawner)
    configure(c, service_url="http://hub:10101", watcher_api_token="w" * 32)
    assert [s["name"] for s in c.JupyterHub.services] == [
        "idle-culler", "colab-guard", "colab-guard-watcher"]
    roles = _roles(c)
    assert roles["idle-culler"]["scopes"] == ["servers"]
    assert set(roles["server"]["scopes"]) == {"users:activity!user", "read:users:name!user",
                                              "custom:colab-guard:report!user"}
    assert roles["colab-guard-watcher"]["scopes"] == ["custom:colab-guard:report-any"]
    assert c.Spawner.environment == {
        "TZ": "UTC", "COLAB_GUARD_HUB_URL": "http://hub:10101/services/colab-guard/"}
    assert c.Spawner.pre_spawn_hook.previous is not None
    configure(c)  # twice: still one of each
    assert [s["name"] for s in c.JupyterHub.services].count("colab-guard") == 1
    assert [r["name"] for r in c.JupyterHub.load_roles].count("server") == 1


def test_the_service_reads_the_hubs_config_file_whatever_the_order(tmp_path):
    config_file = tmp_path / "jupyterhub_config.py"
    config_file.write_text(textwrap.dedent("""
        from colab_guard.hub import configure
        configure(c)
        c.ColabGuardHub.strike_limit = 5  # after the line: the service still reads it
    """))
    c = PyFileConfigLoader(config_file.name, str(tmp_path)).load_config()
    [service] = c.JupyterHub.services
    assert service["command"][-1] == f"--config={config_file}"
    app = ColabGuardHub()
    app.initialize(service["command"][3:] + ["--ColabGuardHub.strike_window=60"])
    assert (app.strike_limit, app.strike_window) == (5, 60)


def _spawner(config: Config, name: str = "alice"):
    """What the gate reads of a JupyterHub Spawner: its config, user name and log."""
    return SimpleNamespace(config=config, user=SimpleNamespace(name=name),
                           log=logging.getLogger("test-gate"))


@pytest.mark.parametrize("fail_open", [False, True])
def test_the_gate_when_the_service_cannot_be_reached(fail_open):
    config = Config()
    config.ColabGuardHub.service_url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    config.ColabGuardHub.spawn_gate_fail_open = fail_open
    gate = SpawnGate("token")
    if fail_open:
        assert asyncio.run(gate(_spawner(config))) is None
        return
    with pytest.raises(HTTPError) as refused:
        asyncio.run(gate(_spawner(config)))
    assert refused.value.status_code == 424  # not 5xx: see SpawnGate
    assert "cannot be reached" in refused.value.jupyterhub_message


def test_settings_given_in_zero_to_jupyterhubs_extra_config_reach_the_service(
        tmp_path, monkeypatch):
    """z2jh exec()s hub.extraConfig from its own jupyterhub_config.py."""
    config_file = tmp_path / "jupyterhub_config.py"
    config_file.write_text(textwrap.dedent('''
        extra_config = "from colab_guard.hub import configure\\nconfigure(c, strike_limit=4)"
        exec(extra_config)
    '''))
    c = PyFileConfigLoader(config_file.name, str(tmp_path)).load_config()
    [service] = c.JupyterHub.services
    assert service["command"][-1] == f"--config={config_file}"
    monkeypatch.setenv("COLAB_GUARD_HUB_SETTINGS", service["environment"]
                       ["COLAB_GUARD_HUB_SETTINGS"])
    app = ColabGuardHub()
    app.initialize([])  # without the file: the settings from the environment
    assert app.strike_limit == 4


def test_the_command_line_lists_the_services_settings(capsys):
    from colab_guard.cli import main

    assert main(["hub", "--help-all"]) == 0
    said = capsys.readouterr().out
    assert "--ColabGuardHub.strike_limit" in said and "--ColabGuardHub.spawn_gate_fail_open" in said
