"""The incident event on the Jupyter server's event bus (jupyter_events)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .incident import Incident

INCIDENT_SCHEMA_ID = "https://schema.jupyter.org/colab_guard/incident/v1"
INCIDENT_SCHEMA = Path(str(files("colab_guard.record") / "schemas" / "incident" / "v1.yaml"))


def incident_event(incident: Incident, action: str, message: str, policy_url: str) -> dict:
    return {
        "incident_id": incident.id,
        "kernel_id": incident.kernel_id,
        "notebook": incident.notebook,
        "user": incident.user,
        "category": incident.category,
        "severity": incident.severity,
        "signature": incident.signature,
        "summary": incident.summary(),
        "action": action,
        "outcomes": [{"action": a.action, "target": a.target, "outcome": a.outcome}
                     for a in incident.actions],
        "dry_run": incident.dry_run,
        "strike": incident.strike,
        "package": incident.package,
        "message": message,
        "policy_url": policy_url,
    }
