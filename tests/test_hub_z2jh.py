"""The Zero to JupyterHub files the README points to: the values parse, their hub.extraConfig
holds the configure line and sets up the service as the README says, and the node watcher's
DaemonSet reports to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from traitlets.config import Config

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "deploy" / "z2jh" / "values.yaml"
DAEMONSET = ROOT / "deploy" / "kubernetes" / "colab-guard-watch.yaml"


def test_the_values_parse_and_their_extra_config_is_the_configure_line(monkeypatch):
    values = yaml.safe_load(VALUES.read_text())
    extra = values["hub"]["extraConfig"]["colab-guard"]
    assert "from colab_guard.hub import configure" in extra and "configure(\n    c," in extra
    assert values["hub"]["service"]["extraPorts"][0]["port"] == 10101
    assert values["singleuser"]["image"]["name"]
    monkeypatch.setenv("COLAB_GUARD_WATCHER_TOKEN", "w" * 64)
    c = Config()
    exec(compile(extra, "hub.extraConfig", "exec"), {"c": c})
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert services["colab-guard"]["url"] == "http://hub:10101"
    assert services["colab-guard-watcher"]["api_token"] == "w" * 64
    assert c.Spawner.environment["COLAB_GUARD_HUB_URL"] == "http://hub:10101/services/colab-guard/"
    assert '"ip": "0.0.0.0"' in services["colab-guard"]["environment"]["COLAB_GUARD_HUB_SETTINGS"]


def test_the_watchers_daemonset_reports_to_the_hub_with_a_root_only_token_file():
    """The one DaemonSet (deploy/kubernetes/, validated in test_deploy.py) reaches the hub
    (its network policy's label) with the watchers' token as a file only root reads."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(DAEMONSET.read_text())}
    pod = docs["DaemonSet"]["spec"]["template"]
    assert pod["metadata"]["labels"]["hub.jupyter.org/network-access-hub"] == "true"
    assert pod["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"  # `hub` resolves, host network
    config = docs["ConfigMap"]["data"]["watch_config.py"]
    assert 'c.Watcher.hub_url = "http://hub:10101/services/colab-guard/"' in config
    assert 'c.Watcher.hub_api_token_file = "/etc/colab-guard/hub-token"' in config
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "hub-token"]
    assert volume["secret"]["secretName"] == "colab-guard" and volume["secret"]["defaultMode"] == 0o400
    [mount] = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "hub-token"]
    assert (mount["mountPath"], mount["subPath"]) == ("/etc/colab-guard/hub-token", "watcher-token")
    assert mount["readOnly"]
    assert not any("TOKEN" in e["name"] for e in pod["spec"]["containers"][0].get("env", []))
