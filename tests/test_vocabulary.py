"""One vocabulary: the event schema, the signature loader, the settings and the
JupyterLab extension's types all use colab_guard/vocabulary.py's words."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from colab_guard import vocabulary
from colab_guard.detect.signatures import load_signatures
from colab_guard.record.events import INCIDENT_SCHEMA
from colab_guard.settings import GuardTraits

ROOT = Path(__file__).parent.parent


def test_the_event_schema_uses_the_vocabulary():
    schema = yaml.safe_load(INCIDENT_SCHEMA.read_text())["properties"]
    assert tuple(schema["action"]["enum"]) == vocabulary.ACTIONS
    assert tuple(schema["severity"]["enum"]) == vocabulary.SEVERITIES
    outcome = schema["outcomes"]["items"]["properties"]["outcome"]
    assert tuple(outcome["enum"]) == vocabulary.OUTCOMES


def test_the_typescript_types_use_the_vocabulary():
    types = (ROOT / "labextension" / "src" / "types.ts").read_text()
    declared = re.search(r"export const ACTIONS = \[(.*?)\] as const", types, re.S).group(1)
    assert tuple(re.findall(r"'([a-z-]+)'", declared)) == vocabulary.ACTIONS


def test_operators_choose_among_the_policy_actions_and_refuse_is_not_one():
    assert set(vocabulary.POLICY_ACTIONS) == set(vocabulary.ACTIONS) - {"refuse"}
    assert GuardTraits.class_traits()["default_action"].values == vocabulary.POLICY_ACTIONS
    assert list(vocabulary.POLICY_ACTIONS) == sorted(vocabulary.POLICY_ACTIONS,
                                                     key=vocabulary.RANK.get)


def test_every_built_in_signature_is_of_a_known_category():
    rules = load_signatures()
    used = {s.category for s in rules.signatures.values()}
    assert used <= set(vocabulary.CATEGORIES)
    assert set(vocabulary.DEFAULT_ACTIONS) == set(vocabulary.CATEGORIES)
    assert set(vocabulary.DEFAULT_ACTIONS.values()) <= set(vocabulary.POLICY_ACTIONS)
