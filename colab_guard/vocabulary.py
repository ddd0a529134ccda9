"""The guard's words, defined once: actions, outcomes, categories, severities.

Everything else refers to these names: the policy and its configuration, the
signature loader, the incident database, the event schema
(``record/schemas/incident/v1.yaml``) and the JupyterLab extension's types
(``labextension/src/types.ts``); ``tests/test_vocabulary.py`` checks that the
schema and the TypeScript types agree with this module.
"""

from __future__ import annotations

#: What the guard does about an incident, weakest first. Each includes the ones before it.
#: ``refuse`` is what stop, interrupt and shutdown mean for a cell that has not run yet:
#: it is never configured, only recorded.
ACTIONS = ("record", "warn", "refuse", "stop", "interrupt", "shutdown")
RANK = {action: rank for rank, action in enumerate(ACTIONS)}

#: The actions an operator may choose for a category (``ColabGuard.actions``).
POLICY_ACTIONS = ("record", "warn", "stop", "interrupt", "shutdown")

#: Actions that act on the user's work: an incident with one of them (not in dry run)
#: can count as a strike.
ENFORCING_ACTIONS = ("refuse", "stop", "interrupt", "shutdown")

#: What became of one planned action.
OUTCOMES = (
    "pending",  # planned, not carried out yet
    "done",
    "failed",   # tried; the detail says why
    "gone",     # the process or kernel had already gone
    "would",    # dry run: what would have been done
    "unknown",  # the server stopped before the outcome was recorded
)

SEVERITIES = ("low", "medium", "high", "critical")
SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}

#: The built-in categories of forbidden use, with their default action. An operator's
#: signature file may declare more (``categories:``); ``ColabGuard.actions`` overrides these.
CATEGORIES = {
    "crypto-mining": "interrupt",
    "torrenting": "interrupt",
    "password-cracking": "interrupt",
    "deepfake": "interrupt",
    "remote-access": "interrupt",
    "proxy": "interrupt",
    "denial-of-service": "interrupt",
    "scanning": "interrupt",
    "web-hosting": "record",
    "tampering": "record",
}
DEFAULT_ACTIONS = dict(CATEGORIES)


def at_least(action: str, floor: str) -> bool:
    """Is ``action`` as strong as ``floor``?"""
    return RANK[action] >= RANK[floor]


def strongest(*actions: str) -> str:
    return max(actions, key=RANK.__getitem__)


def weakest(*actions: str) -> str:
    return min(actions, key=RANK.__getitem__)
