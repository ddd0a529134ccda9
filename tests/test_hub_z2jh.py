"""The Zero to JupyterHub files the README points to: the values parse, their hub.extraConfig
holds the configure line and sets up the service as the README says, and the node watcher's
DaemonSet is a valid Kubernetes object."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from traitlets.config import Config

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "deploy" / "z2jh" / "values.yaml"
DAEMONSET = ROOT / "deploy" / "z2jh" / "watcher-daemonset.yaml"


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


def test_the_watchers_daemonset_is_a_valid_kubernetes_object():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    manifest = yaml.safe_load(DAEMONSET.read_text())
    kubernetes_validate.validate(manifest, "1.30.0", strict=True)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    container = pod["containers"][0]
    assert set(container["securityContext"]["capabilities"]["add"]) == {
        "SYS_PTRACE", "DAC_READ_SEARCH", "KILL", "NET_ADMIN"}
    assert manifest["spec"]["template"]["metadata"]["labels"][
        "hub.jupyter.org/network-access-hub"] == "true"
