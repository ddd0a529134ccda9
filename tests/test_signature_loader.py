"""Signature files: every built-in example behaves, and each kind of broken file is refused
with a message naming the file, the line, the signature and the field."""

from __future__ import annotations

import textwrap

import pytest

from colab_guard.detect.engine import check_examples
from colab_guard.detect.signatures import (
    BUILTIN_DIR,
    SignatureError,
    load_file,
    load_signatures,
    parse_text,
)

BUILTIN = load_signatures()


@pytest.mark.parametrize("sig_id", sorted(BUILTIN.signatures))
def test_builtin_signature_examples_match_and_near_misses_do_not(sig_id):
    sig = BUILTIN.signatures[sig_id]
    assert sig.examples.match and sig.examples.no_match
    assert check_examples(sig) == []


def test_builtin_files_cover_the_first_three_categories():
    categories = {s.category for s in BUILTIN.signatures.values()}
    assert {"crypto-mining", "password-cracking", "torrenting"} <= categories


GOOD = """\
signatures:
  - id: my-rule
    category: crypto-mining
    severity: high
    description: test rule
    when:
      all:
        - cmdline: {regex: 'evil'}
    examples:
      match: [{name: x, cmdline: [x, evil]}]
      no_match: [{name: x, cmdline: [x, good]}]
"""


def broken(replace: str, by: str) -> str:
    assert replace in GOOD
    return GOOD.replace(replace, by)


def test_a_good_file_loads():
    loaded = parse_text(GOOD, "rules.yaml")
    assert list(loaded.signatures) == ["my-rule"]
    assert loaded.signatures["my-rule"].source == "rules.yaml:2"


@pytest.mark.parametrize(
    "text, expected",
    [
        (broken("severity: high", "severity: [high"),
         "rules.yaml, line 5: not valid YAML"),
        (broken("severity: high", "severity: high\n    colour: red"),
         "rules.yaml, line 5: signature 'my-rule', field 'colour': unknown field"),
        (broken("regex: 'evil'", "regex: 'ev(il'"),
         "rules.yaml, line 8: signature 'my-rule', field 'when.all[0].cmdline.regex': bad regex 'ev(il'"),
        (broken("regex: 'evil'", "regex: '(a+)+$'"),
         "field 'when.all[0].cmdline.regex': regex '(a+)+$' nests quantifiers"),
        (broken("{regex: 'evil'}", "{gte: 'evil'}"),
         "field 'when.all[0].cmdline.gte': operator not allowed on a text field"),
        (broken("cmdline: {regex: 'evil'}", "cpu_percent: {gte: 'lots'}"),
         "field 'when.all[0].cpu_percent.gte': expected an integer or a number, got str"),
        (broken("cmdline: {regex: 'evil'}", "colour: {equals: red}"),
         "field 'when.all[0].colour': unknown field; known fields: name"),
        (broken("severity: high", "severity: extreme"),
         "field 'severity': 'extreme' is not one of: low, medium, high, critical"),
        (broken("category: crypto-mining", "category: Crypto Mining"),
         "field 'category': 'Crypto Mining' must be lower-case"),
        (broken("    description: test rule\n", ""),
         "signature 'my-rule', field 'description': required"),
        (broken("      no_match: [{name: x, cmdline: [x, good]}]\n", ""),
         "field 'examples.no_match': must be a non-empty list of processes"),
        (broken("match: [{name: x, cmdline: [x, evil]}]", "match: [{name: x, colour: red}]"),
         "field 'examples.match[0].colour': unknown process field"),
        (broken("match: [{name: x, cmdline: [x, evil]}]", "match: [{name: x, cmdline: [x, -0, evil]}]"),
         "field 'examples.match[0].cmdline[1]': must be text, not 0 (quote it)"),
        (broken("match: [{name: x, cmdline: [x, evil]}]", "match: [{name: 7, cmdline: [x, evil]}]"),
         "field 'examples.match[0].name': must be text, not 7 (quote it)"),
        (broken("id: my-rule", "id: My Rule"),
         "field 'id': required: lower-case letters"),
        (GOOD + GOOD.replace("signatures:\n", ""),
         "rules.yaml, line 12: signature 'my-rule': duplicate id in this file"),
        ("signatures:\n  - id: a\n    id: b\n", "rules.yaml, line 2: not valid YAML: duplicate key 'id'"),
        ("rules:\n  - id: a\n", "rules.yaml, line 1: unknown top-level key 'rules'"),
        ("- just\n- a list\n", "rules.yaml, line 1: expected a mapping"),
        (broken("    when:\n", "    for: -5\n    when:\n"),
         "field 'for': must be a number of seconds, 0 or more"),
    ],
)
def test_broken_files_are_refused_with_a_message_that_says_where(text, expected):
    with pytest.raises(SignatureError) as caught:
        parse_text(text, "rules.yaml")
    assert expected in str(caught.value)


def test_an_example_that_fails_is_reported_by_check_examples():
    text = broken("no_match: [{name: x, cmdline: [x, good]}]",
                  "no_match: [{name: x, cmdline: [x, evil, too]}]")
    sig = parse_text(text, "rules.yaml").signatures["my-rule"]
    assert check_examples(sig) == ["my-rule: examples.no_match[0] matched: x evil too"]


def test_operator_files_override_builtin_ids_and_a_broken_one_loads_nothing(tmp_path):
    override = tmp_path / "ops.yaml"
    override.write_text(GOOD.replace("id: my-rule", "id: mining-known-miner"))
    rules = load_signatures([tmp_path])
    assert rules.signatures["mining-known-miner"].description == "test rule"
    assert rules.overridden == ["mining-known-miner"]
    assert len(rules.signatures) == len(BUILTIN.signatures)

    (tmp_path / "zz-broken.yaml").write_text(broken("severity: high", "severity: huge"))
    with pytest.raises(SignatureError, match="zz-broken.yaml"):
        load_signatures([tmp_path])


def test_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(SignatureError, match="nope.yaml: no such file or folder"):
        load_signatures([tmp_path / "nope.yaml"])
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"signatures: []\n# caf\xe9\n")
    with pytest.raises(SignatureError, match="latin1.yaml: cannot read"):
        load_file(bad)


def test_allow_rules_load_and_are_checked():
    text = GOOD + textwrap.dedent("""\
        allow:
          - id: allow-course-tool
            description: the course's own tool
            when: {exe: {equals: /opt/course/bin/tool}}
            examples:
              match: [{exe: /opt/course/bin/tool}]
              no_match: [{exe: /tmp/tool}]
        """)
    loaded = parse_text(text, "rules.yaml")
    assert check_examples(loaded.allow["allow-course-tool"]) == []


def test_builtin_dir_is_shipped_inside_the_package():
    assert (BUILTIN_DIR / "crypto-mining.yaml").is_file()


# ---------------------------------------------------------------- every error, at its field

MANY_ERRORS = """\
signatures:
  - id: first-rule
    category: crypto-minning
    severity: extreme
    description: a rule with three mistakes
    when:
      all:
        - cmdline: {regex: 'ev(il'}
    examples:
      match: [{name: x, cmdline: [x, evil]}]
      no_match: [{name: x, cmdline: [x, good]}]
  - id: second-rule
    category: crypto-mining
    severity: high
    description: a rule with one mistake, far down
    when: {name: {equals: y}}
    examples:
      match: [{name: y}]
      no_match:
        - {name: z}
        - {name: z, colour: red}
allow:
  - id: allow-something
    description: an allow rule with a bad field
    when: {exe: {gte: 3}}
    examples: {match: [{exe: /a}], no_match: [{exe: /b}]}
"""


def test_every_error_of_a_file_is_reported_at_once_each_at_its_fields_line():
    with pytest.raises(SignatureError) as caught:
        parse_text(MANY_ERRORS, "rules.yaml")
    lines = str(caught.value).splitlines()
    assert lines == [
        "rules.yaml, line 3: signature 'first-rule', field 'category': unknown category "
        "'crypto-minning'; known: crypto-mining, torrenting, password-cracking, deepfake, "
        "remote-access, proxy, denial-of-service, scanning, web-hosting, tampering (declare a "
        "category of your own in a top-level 'categories:' list)",
        "rules.yaml, line 4: signature 'first-rule', field 'severity': 'extreme' is not one of: "
        "low, medium, high, critical",
        "rules.yaml, line 8: signature 'first-rule', field 'when.all[0].cmdline.regex': bad regex "
        "'ev(il': missing ), unterminated subpattern at position 2",
        "rules.yaml, line 21: signature 'second-rule', field 'examples.no_match[1].colour': "
        "unknown process field; allowed: " + lines[3].split("allowed: ")[1],
        "rules.yaml, line 25: signature 'allow-something', field 'when.exe.gte': operator not "
        "allowed on a text field; " + lines[4].split("field; ")[1],
    ]
    assert [(e.line, e.field) for e in caught.value.errors] == [
        (3, "category"), (4, "severity"), (8, "when.all[0].cmdline.regex"),
        (21, "examples.no_match[1].colour"), (25, "when.exe.gte")]


def test_an_unknown_category_is_refused_unless_the_file_declares_it():
    typo = GOOD.replace("category: crypto-mining", "category: crypto-minning")
    with pytest.raises(SignatureError, match=r"line 3: signature 'my-rule', field 'category': "
                                             r"unknown category 'crypto-minning'"):
        parse_text(typo, "rules.yaml")
    declared = "categories: [crypto-minning]\n" + typo
    assert parse_text(declared, "rules.yaml").signatures["my-rule"].category == "crypto-minning"
    site = "categories:\n  - course-cheating\n" + GOOD.replace("crypto-mining", "course-cheating")
    loaded = parse_text(site, "rules.yaml")
    assert loaded.categories == ["course-cheating"]
    with pytest.raises(SignatureError, match=r"line 3: field 'categories\[1\]': 'Bad Name' is "
                                             r"not a category name"):
        parse_text("categories:\n  - ok-one\n  - Bad Name\n", "rules.yaml")


def test_a_category_declared_in_an_earlier_operator_file_serves_the_later_ones(tmp_path):
    (tmp_path / "a-categories.yaml").write_text("categories: [course-cheating]\n")
    (tmp_path / "b-rules.yaml").write_text(GOOD.replace("crypto-mining", "course-cheating"))
    rules = load_signatures([tmp_path])
    assert rules.signatures["my-rule"].category == "course-cheating"
    assert rules.categories == ["course-cheating"]
    with pytest.raises(SignatureError, match="unknown category 'course-cheating'"):
        load_signatures([tmp_path / "b-rules.yaml"])


def test_no_builtin_signature_uses_a_category_outside_the_builtin_list():
    from colab_guard.detect.signatures import BUILTIN_CATEGORIES

    assert {s.category for s in BUILTIN.signatures.values()} <= set(BUILTIN_CATEGORIES)
    assert BUILTIN.categories == []


def test_a_renamed_built_in_id_in_the_disabled_list_disables_its_successor(caplog):
    from colab_guard.detect.signatures import RENAMED, load_signatures

    rules = load_signatures()
    for old, new in RENAMED.items():
        assert old not in rules.signatures and all(n in rules.signatures for n in new)
    with caplog.at_level("WARNING", "colab_guard"):
        left = rules.disabling(["mining-pool-port-busy"], "ColabGuard.disabled_signatures")
    assert "mining-busy-pool-connection" not in left.signatures
    assert "replaced by mining-busy-pool-connection" in caplog.text
    with pytest.raises(ValueError, match="ColabGuard.disabled_signatures names unknown id"):
        rules.disabling(["mining-pool-port-busyy"], "ColabGuard.disabled_signatures")
