"""Hostile input, on data: signature files, settings and regular expressions.

Every malformed signature file or setting is refused with an error that names the file,
the field or the setting, never another exception and never half a rule set; no
operator regex can hang the sampler on a hostile command line.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from traitlets import TraitError

from colab_guard.app import ColabGuard
from colab_guard.settings import GuardTraits
from colab_guard.detect.engine import Engine
from colab_guard.detect.fields import FIELDS
from colab_guard.detect.signatures import (ALLOW_KEYS, SIGNATURE_KEYS, SignatureError,
                                           SignatureSet, load_signatures, parse_text)
from colab_guard.observe.model import Process, Snapshot

# ---------------------------------------------------------------- signature files

# Words a signature file is made of, so random structures come close to valid ones.
WORDS = sorted(SIGNATURE_KEYS | ALLOW_KEYS | set(FIELDS) | {
    "signatures", "allow", "all", "any", "not", "match", "no_match", "equals", "in", "regex",
    "contains", "gte", "gt", "lte", "lt", "crypto-mining", "high", "interrupt", "x", "cmdline"})
SCALARS = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
           | st.sampled_from(WORDS) | st.text(max_size=20)
           | st.sampled_from(["(", "(a+)+", "[", "\\", "*", "a{2,1}", "\x00", "\ud800"]))
STRUCTURES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(WORDS) | st.text(max_size=8), inner, max_size=5),
    max_leaves=30)


def check_file(text: str) -> None:
    """Loads whole, or a SignatureError naming the file; nothing else."""
    try:
        loaded = parse_text(text, "fuzzed.yaml")
    except SignatureError as err:
        assert str(err).startswith("fuzzed.yaml"), err
        assert err.file == "fuzzed.yaml"
        return
    assert isinstance(loaded, SignatureSet)
    doc = yaml.safe_load(text) or {}
    # Never half a rule set: every entry of the file is in what was loaded.
    assert len(loaded.signatures) == len(doc.get("signatures") or [])
    assert len(loaded.allow) == len({a["id"] for a in doc.get("allow") or []})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(st.sampled_from(["signatures", "allow", "other"]),
                           st.lists(STRUCTURES, max_size=3) | STRUCTURES, max_size=2))
def test_random_signature_structures_load_whole_or_name_the_file(doc):
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return  # not representable as YAML (a lone surrogate): not a file anyone can write
    check_file(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_random_text_loads_whole_or_names_the_file(text):
    check_file(text)


VALID = """\
signatures:
  - id: ops-rule
    category: crypto-mining
    severity: high
    description: d
    when: {name: {equals: xmrig}}
    examples: {match: [{name: xmrig}], no_match: [{name: bash}]}
"""


@settings(max_examples=150, deadline=None)
@given(position=st.integers(0, len(VALID)), junk=st.text(min_size=1, max_size=12))
def test_a_damaged_valid_file_loads_whole_or_names_the_file(position, junk):
    check_file(VALID[:position] + junk + VALID[position:])


def test_a_file_broken_after_a_good_one_loads_nothing(tmp_path):
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "b.yaml").write_text(VALID.replace("ops-rule", "other-rule")
                                     .replace("severity: high", "severity: extreme"))
    with pytest.raises(SignatureError, match=r"b\.yaml, line 4: signature 'other-rule', "
                                             r"field 'severity'"):
        load_signatures([tmp_path])


# ---------------------------------------------------------------- settings

TRAITS = sorted(GuardTraits.class_traits(config=True))
VALUES = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
          | st.lists(st.text(max_size=5) | st.integers(), max_size=3)
          | st.dictionaries(st.text(max_size=10), st.text(max_size=10) | st.integers(), max_size=3))


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(TRAITS), value=VALUES)
def test_random_setting_values_are_accepted_or_refused_naming_the_setting(name, value):
    try:
        guard = ColabGuard(**{name: value})
    except TraitError as err:
        assert name in str(err), err
        return
    getattr(guard, name)  # an accepted value reads back


# ---------------------------------------------------------------- regexes

# (pattern, a command line it matches, whether the hostile one surely exceeds the limit): the
# shapes that backtrack run in linear time under RE2; those RE2 cannot say (a lookahead) fall
# back to `regex`, whose searches stop at the time limit.
SLOW_SHAPES = [(r"^(a|aa)+$", "aa", False), (r"^(\w|\d)+!$", "a1!", False),
               (r"x.*y.*z.*w.*!$", "xyzw!", False), (r"^(a|a?)+$", "aa", False),
               (r"^(?=a)(a|aa)+$", "aa", True), (r"^(?!b)(a|a?)+$", "aa", True)]


def signature_with_regex(pattern: str):
    text = VALID.replace("when: {name: {equals: xmrig}}",
                         "when: {cmdline: {regex: " + json.dumps(pattern) + "}}")
    text = text.replace("match: [{name: xmrig}]", "match: [{cmdline: [aa1xyzw]}]")
    return parse_text(text.replace("no_match: [{name: bash}]", "no_match: [{cmdline: [b]}]"),
                      "ops.yaml")


@pytest.mark.parametrize("pattern, matching, times_out", SLOW_SHAPES)
def test_a_backtracking_regex_cannot_hang_the_engine(pattern, matching, times_out, caplog):
    rules = load_signatures()
    rules.signatures.update(signature_with_regex(pattern).signatures)
    engine = Engine(rules, log=logging.getLogger("test"))
    hostile = Process(pid=7, create_time=1.0, name="sh",
                      cmdline=["a" * 3000 + "1" * 1000 + "xyzw" * 500])
    miner = Process(pid=8, create_time=1.0, name="xmrig",
                    cmdline=["xmrig", "-o", "stratum+tcp://127.0.0.1:3333"])
    miner.sockets = Process.from_dict({"pid": 8, "sockets": [{"remote_ip": "127.0.0.1",
                                                              "remote_port": 3333}]}).sockets
    started = time.process_time()
    with caplog.at_level(logging.WARNING):
        found = [engine.evaluate(Snapshot("k", t, [hostile, miner])) for t in range(5)]
    assert time.process_time() - started < 2.0  # 5 ticks; unbounded, one search takes minutes
    # the rule still works for everyone else, and the others are unaffected
    assert "ops-rule" not in engine.disabled
    assert all("mining-stratum-url" in {d.signature.id for d in ticks} for ticks in found)
    assert ("ops-rule" in engine.slow) >= times_out
    if "ops-rule" in engine.slow:  # it timed out: said once, and not retried every tick
        assert caplog.text.count("'ops-rule'") == 1 and "simplify the regex" in caplog.text
    benign = Process(pid=9, create_time=1.0, name="x", cmdline=[matching])
    assert [d.signature.id for d in engine.evaluate(Snapshot("k", 9, [benign]))] == ["ops-rule"]


def test_a_regex_that_nests_quantifiers_is_refused_at_load():
    with pytest.raises(SignatureError, match=r"ops\.yaml, line 6: signature 'ops-rule', field "
                                             r"'when\.cmdline\.regex': regex '\(a\+\)\+\$' nests"):
        signature_with_regex(r"(a+)+$")
