"""Signatures as data: the model, the YAML loader and its validation.

A file holds ``signatures:`` (what is forbidden) and optionally ``allow:``
(processes that must never be acted on). Every error names the file, the line,
the signature id and the field, and a file with any error is refused whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from ..observe.model import Process
from .cells import CellProcess
from .conditions import Condition, ConditionError, compile_condition, fields_read
from ..vocabulary import POLICY_ACTIONS, SEVERITIES

BUILTIN_DIR = Path(str(files("colab_guard.detect") / "signatures"))

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{1,79}$")
_CATEGORY = re.compile(r"^[a-z][a-z0-9-]{1,39}$")

SIGNATURE_KEYS = {"id", "category", "severity", "description", "when", "for", "action",
                  "examples", "references"}
ALLOW_KEYS = {"id", "description", "when", "examples"}


class SignatureError(ValueError):
    """A signature file that cannot be loaded, and exactly where it went wrong."""

    def __init__(self, file: str, message: str, line: int | None = None,
                 signature: str | None = None, field: str | None = None):
        where = file + (f", line {line}" if line else "")
        who = f"signature {signature!r}" if signature else ""
        what = f"field {field!r}" if field else ""
        parts = ", ".join(p for p in (who, what) if p)
        super().__init__(f"{where}: {parts + ': ' if parts else ''}{message}")
        self.file, self.line, self.signature, self.field = file, line, signature, field


@dataclass
class Examples:
    match: list[Process] = field(default_factory=list)
    no_match: list[Process] = field(default_factory=list)


@dataclass
class Signature:
    id: str
    category: str
    severity: str
    description: str
    when: Condition
    hold_seconds: float = 0.0  # the condition must hold this long ("for:")
    action: str | None = None  # overrides the category's action when set
    examples: Examples = field(default_factory=Examples)
    references: list[str] = field(default_factory=list)
    source: str = ""  # file:line it came from
    on_cells: bool = False  # tests a cell's source (the `cell` field), not processes


@dataclass
class AllowRule:
    id: str
    description: str
    when: Condition
    examples: Examples = field(default_factory=Examples)
    source: str = ""
    hold_seconds: float = 0.0  # allow rules apply at once
    on_cells: bool = False  # allow rules are about processes


@dataclass
class SignatureSet:
    signatures: dict[str, Signature] = field(default_factory=dict)
    allow: dict[str, AllowRule] = field(default_factory=dict)
    overridden: list[str] = field(default_factory=list)  # ids replaced by a later file

    def without(self, disabled: Iterable[str]) -> SignatureSet:
        disabled = set(disabled)
        return SignatureSet(
            {k: v for k, v in self.signatures.items() if k not in disabled},
            {k: v for k, v in self.allow.items() if k not in disabled},
            list(self.overridden),
        )


# ---------------------------------------------------------------- YAML with lines

class _LineDict(dict):
    line: int = 0


class _LineLoader(yaml.SafeLoader):
    """A safe loader whose mappings remember the line they start on."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        dupes = {k for k in keys if keys.count(k) > 1}
        if dupes:
            raise yaml.MarkedYAMLError("while reading a mapping", node.start_mark,
                                       f"duplicate key {sorted(map(str, dupes))[0]!r}",
                                       node.start_mark)
        mapping = _LineDict(super().construct_mapping(node, deep=deep))
        mapping.line = node.start_mark.line + 1
        return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                            _LineLoader.construct_mapping)


# ---------------------------------------------------------------- loading

def signature_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders into their *.yaml / *.yml files, sorted; keep files as given."""
    found: list[Path] = []
    for entry in paths:
        path = Path(entry).expanduser()
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        elif path.exists():
            found.append(path)
        else:
            raise SignatureError(str(path), "no such file or folder")
    return found


def load_signatures(extra_paths: Iterable[str | Path] = (), builtin: bool = True) -> SignatureSet:
    """Built-in signatures, then each extra file in order; a later id replaces an earlier one."""
    result = SignatureSet()
    paths = ([BUILTIN_DIR] if builtin else []) + list(extra_paths)
    for path in signature_files(paths):
        loaded = load_file(path)
        for sig_id, sig in loaded.signatures.items():
            if sig_id in result.signatures:
                result.overridden.append(sig_id)
            result.signatures[sig_id] = sig
        result.allow.update(loaded.allow)
    return result


def load_file(path: str | Path) -> SignatureSet:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SignatureError(name, f"cannot read: {err}") from None
    return parse_text(text, name)


def parse_text(text: str, name: str = "<string>") -> SignatureSet:
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        raise SignatureError(name, f"not valid YAML: {err.problem or err.context}",
                             line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as err:
        raise SignatureError(name, f"not valid YAML: {err}") from None
    if doc is None:
        return SignatureSet()
    if not isinstance(doc, dict):
        raise SignatureError(name, "expected a mapping with 'signatures' and/or 'allow'", line=1)
    unknown = set(doc) - {"signatures", "allow"}
    if unknown:
        raise SignatureError(name, f"unknown top-level key {sorted(map(str, unknown))[0]!r}; "
                                   "expected 'signatures' and/or 'allow'", line=doc.line)
    result = SignatureSet()
    for index, entry in enumerate(_list(doc, "signatures", name)):
        sig = _parse_signature(entry, name, index)
        if sig.id in result.signatures:
            raise SignatureError(name, "duplicate id in this file", line=entry.line, signature=sig.id)
        result.signatures[sig.id] = sig
    for index, entry in enumerate(_list(doc, "allow", name)):
        rule = _parse_allow(entry, name, index)
        result.allow[rule.id] = rule
    return result


def _list(doc: dict, key: str, name: str) -> list:
    value = doc.get(key) or []
    if not isinstance(value, list):
        raise SignatureError(name, f"'{key}' must be a list", line=doc.line)
    return value


class _Entry:
    """Reads the fields of one YAML entry, raising errors that say where."""

    def __init__(self, data: Any, file: str, index: int, kind: str, allowed: set[str]):
        if not isinstance(data, dict):
            raise SignatureError(file, f"{kind} #{index + 1} must be a mapping")
        self.data, self.file, self.line = data, file, getattr(data, "line", None)
        self.id = data.get("id") if isinstance(data.get("id"), str) else None
        unknown = sorted(map(str, set(data) - allowed))
        if unknown:
            self.fail(unknown[0], "unknown field; allowed: " + ", ".join(sorted(allowed)))
        if self.id is None or not _ID.match(self.id):
            self.fail("id", "required: lower-case letters, digits, '.', '_' or '-' (2-80 characters)")

    def fail(self, field_name: str, message: str, line: int | None = None):
        raise SignatureError(self.file, message, line=line or self.line, signature=self.id,
                             field=field_name)

    def text(self, key: str, required: bool = True, choices: Iterable[str] | None = None,
             pattern: re.Pattern | None = None) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.fail(key, "required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(key, "must be non-empty text")
        if choices is not None and value not in choices:
            self.fail(key, f"{value!r} is not one of: {', '.join(choices)}")
        if pattern is not None and not pattern.match(value):
            self.fail(key, f"{value!r} must be lower-case letters, digits and '-'")
        return value

    def condition(self) -> Condition:
        if "when" not in self.data:
            self.fail("when", "required: the condition to match")
        try:
            return compile_condition(self.data["when"])
        except ConditionError as err:
            self.fail(err.path, err.message)

    def examples(self) -> Examples:
        spec = self.data.get("examples")
        if not isinstance(spec, dict) or set(spec) - {"match", "no_match"}:
            self.fail("examples", "required: a mapping with 'match' (processes that must match) "
                                  "and 'no_match' (near-misses that must not)")
        result = Examples()
        for key in ("match", "no_match"):
            items = spec.get(key)
            if not isinstance(items, list) or not items:
                self.fail(f"examples.{key}", "must be a non-empty list of processes")
            for i, item in enumerate(items):
                getattr(result, key).append(self._example(item, f"examples.{key}[{i}]"))
        return result

    def _example(self, item: Any, where: str) -> Process:
        if not isinstance(item, dict):
            self.fail(where, "must be a mapping of process fields")
        allowed = set(CellProcess.__dataclass_fields__)
        unknown = sorted(map(str, set(item) - allowed))
        if unknown:
            self.fail(f"{where}.{unknown[0]}", "unknown process field; allowed: "
                      + ", ".join(sorted(allowed)), line=getattr(item, "line", None))
        item.setdefault("pid", 4242)
        try:
            return (CellProcess if "cell" in item else Process).from_dict(item)
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            self.fail(where, f"not a valid process: {err}", line=getattr(item, "line", None))


def _parse_signature(data: Any, file: str, index: int) -> Signature:
    entry = _Entry(data, file, index, "signature", SIGNATURE_KEYS)
    hold = data.get("for", 0)
    if isinstance(hold, bool) or not isinstance(hold, (int, float)) or hold < 0:
        entry.fail("for", "must be a number of seconds, 0 or more")
    references = data.get("references", [])
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        entry.fail("references", "must be a list of text")
    when = entry.condition()
    read = fields_read(when) or set()
    if "cell" in read and len(read) > 1:
        entry.fail("when", "a signature tests either a cell's source (field 'cell') or "
                           f"processes, not both; this one also reads {sorted(read - {'cell'})}")
    return Signature(
        id=entry.id,
        category=entry.text("category", pattern=_CATEGORY),
        severity=entry.text("severity", choices=SEVERITIES),
        description=entry.text("description"),
        when=when,
        on_cells="cell" in read,
        hold_seconds=float(hold),
        action=entry.text("action", required=False, choices=POLICY_ACTIONS),
        examples=entry.examples(),
        references=references,
        source=f"{file}:{entry.line}",
    )


def _parse_allow(data: Any, file: str, index: int) -> AllowRule:
    entry = _Entry(data, file, index, "allow rule", ALLOW_KEYS)
    return AllowRule(
        id=entry.id,
        description=entry.text("description"),
        when=entry.condition(),
        examples=entry.examples(),
        source=f"{file}:{entry.line}",
    )
