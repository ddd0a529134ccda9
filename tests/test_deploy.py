"""The node watcher's deployment files: the Kubernetes DaemonSet validated against the
Kubernetes schema (kubernetes-validate, strict: no unknown field), and both it and the systemd
unit give the watcher the same capabilities, and no more."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kubernetes" / "colab-guard-watch.yaml"
UNIT = ROOT / "deploy" / "systemd" / "colab-guard-watch.service"
#: what the watcher uses (README, "Node watcher"): /proc of others, their files, signals,
#: the process events connector
CAPABILITIES = {"SYS_PTRACE", "DAC_READ_SEARCH", "KILL", "NET_ADMIN", "PERFMON"}


def documents() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def unit_settings() -> dict[str, str]:
    found, section = {}, None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found[key] = value
    return found


@pytest.mark.parametrize("version", ["1.27.0", "1.30.0"])
def test_the_manifest_is_valid_kubernetes(version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for kind, doc in documents().items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{MANIFEST.name}: {kind}: {err.message} at {list(err.path)}")


def test_the_daemonset_sees_every_process_with_only_the_capabilities_it_needs():
    pod = documents()["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod["hostNetwork"] is True  # process events reach the host's network namespace only
    assert pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": sorted(CAPABILITIES, key=[
        "SYS_PTRACE", "DAC_READ_SEARCH", "KILL", "NET_ADMIN", "PERFMON"].index)}
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True and security["runAsUser"] == 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config = mounts["/etc/colab-guard/watch_config.py"]  # its config: root's, read only, the
    assert config["readOnly"] is True and config["subPath"] == "watch_config.py"  # file alone
    for folder in ("/var/lib/colab-guard", "/var/log/colab-guard", "/run/colab-guard"):
        assert folder in mounts  # its record and heartbeat outlive the pod
    assert "watch_config.py" in documents()["ConfigMap"]["data"]
    assert container["command"] == ["colab-guard", "watch"]


def test_the_systemd_unit_grants_the_same_capabilities_and_is_hardened():
    settings = unit_settings()
    assert {c.removeprefix("CAP_") for c in settings["CapabilityBoundingSet"].split()} == \
        CAPABILITIES
    assert settings["AmbientCapabilities"] == "" and settings["User"] == "root"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "read-only", "ProtectKernelModules": "yes",
                       "ProtectKernelTunables": "yes", "ProtectControlGroups": "yes",
                       "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
                       "RestrictNamespaces": "yes", "UMask": "0027",
                       "IPAddressDeny": "any"}.items():
        assert settings.get(key) == value, key
    assert "ProtectProc" not in settings and "PrivatePIDs" not in settings
