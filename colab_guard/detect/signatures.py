"""Signatures as data: the model, the YAML loader and its validation.

A file holds ``signatures:`` (what is forbidden), optionally ``allow:``
(processes that must never be acted on) and ``categories:`` (the operator's own
categories, beyond the built-in ones). Every error names the file, the line of
the offending field, the signature id and the field; every error of a file is
reported at once, and a file with any error is refused whole.
"""

from __future__ import annotations

import logging
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
from ..vocabulary import CATEGORIES, POLICY_ACTIONS, SEVERITIES

BUILTIN_DIR = Path(str(files("colab_guard.detect") / "signatures"))

#: The categories every signature file may use (vocabulary.CATEGORIES); an operator's file
#: declares others in a top-level ``categories:`` list.
BUILTIN_CATEGORIES = tuple(CATEGORIES)
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{1,79}$")
_CATEGORY = re.compile(r"^[a-z][a-z0-9-]{1,39}$")

SIGNATURE_KEYS = {"id", "category", "severity", "description", "when", "for", "action",
                  "examples", "references"}
ALLOW_KEYS = {"id", "description", "when", "examples"}
TOP_LEVEL_KEYS = ("signatures", "allow", "categories")


#: Built-in signatures replaced by others: an operator's configuration that disables an old id
#: keeps working (the new ones are disabled, and the log says so).
RENAMED = {
    "mining-pool-port-busy": ("mining-busy-pool-connection",),  # a pool on any port, by behaviour
    "dos-connection-flood": ("dos-slow-connections",),  # per kernel, the kernel itself included
}

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
        self.message = message
        self.errors: list[SignatureError] = [self]

    @classmethod
    def several(cls, errors: list[SignatureError]) -> SignatureError:
        """One error standing for all of them: its text is theirs, one per line, in order."""
        errors = sorted(errors, key=lambda e: (e.file, e.line or 0))
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        combined = cls(first.file, first.message, first.line, first.signature, first.field)
        combined.args = ("\n".join(str(e) for e in errors),)
        combined.errors = errors
        return combined


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
    categories: list[str] = field(default_factory=list)  # declared by operators' files

    def disabling(self, disabled: Iterable[str], setting: str,
                  log: logging.Logger | None = None) -> SignatureSet:
        """These rules without the ``disabled`` ids (the operator's ``setting``). An id that
        names nothing is refused (ValueError naming the setting: a typo must not leave a rule
        on); one of a built-in rule that was renamed (RENAMED) is taken for its new ids, said
        in the log."""
        wanted: list[str] = []
        for rule_id in disabled:
            renamed = RENAMED.get(rule_id)
            if renamed and rule_id not in self.signatures and rule_id not in self.allow:
                (log or logging.getLogger("colab_guard")).warning(
                    "colab-guard: %s names %s, a built-in signature since replaced by %s: "
                    "disabling that instead (name it in your configuration)", setting, rule_id,
                    ", ".join(renamed))
                wanted.extend(renamed)
            else:
                wanted.append(rule_id)
        unknown = [s for s in wanted if s not in self.signatures and s not in self.allow]
        if unknown:
            raise ValueError(f"{setting} names unknown id(s): {', '.join(unknown)}")
        return self.without(wanted)

    def without(self, disabled: Iterable[str]) -> SignatureSet:
        disabled = set(disabled)
        return SignatureSet(
            {k: v for k, v in self.signatures.items() if k not in disabled},
            {k: v for k, v in self.allow.items() if k not in disabled},
            list(self.overridden),
            list(self.categories),
        )


# ---------------------------------------------------------------- YAML with lines

class _LineDict(dict):
    line: int = 0
    key_lines: dict  # key -> the line the key is on


class _LineList(list):
    line: int = 0
    item_lines: list  # the line each item starts on


class _LineLoader(yaml.SafeLoader):
    """A safe loader whose mappings and lists remember the lines of their keys and items."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        dupes = {k for k in keys if keys.count(k) > 1}
        if dupes:
            raise yaml.MarkedYAMLError("while reading a mapping", node.start_mark,
                                       f"duplicate key {sorted(map(str, dupes))[0]!r}",
                                       node.start_mark)
        mapping = _LineDict(super().construct_mapping(node, deep=deep))
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {}
        for key, (key_node, _) in zip(keys, node.value):
            try:
                mapping.key_lines[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: refused later as an unknown field
                pass
        return mapping

    def construct_sequence(self, node, deep=False):
        items = _LineList(super().construct_sequence(node, deep=deep))
        items.line = node.start_mark.line + 1
        items.item_lines = [child.start_mark.line + 1 for child in node.value]
        return items


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                            _LineLoader.construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG,
                            _LineLoader.construct_sequence)

_PATH_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def line_of(data: Any, path: str) -> int | None:
    """The line of the field a path such as ``when.all[0].cmdline.regex`` names in a
    loaded entry: as deep as the path can be followed."""
    line = getattr(data, "line", None)
    for match in _PATH_STEP.finditer(path):
        key, index = match.group(1), match.group(2)
        if key is not None and isinstance(data, dict) and key in data:
            line = getattr(data, "key_lines", {}).get(key, line)
            data = data[key]
        elif index is not None and isinstance(data, list) and int(index) < len(data):
            lines = getattr(data, "item_lines", [])
            line = lines[int(index)] if int(index) < len(lines) else line
            data = data[int(index)]
        else:
            break
    return line


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
        loaded = load_file(path, categories=result.categories)
        result.categories.extend(c for c in loaded.categories if c not in result.categories)
        for sig_id, sig in loaded.signatures.items():
            if sig_id in result.signatures:
                result.overridden.append(sig_id)
            result.signatures[sig_id] = sig
        result.allow.update(loaded.allow)
    return result


def load_file(path: str | Path, categories: Iterable[str] = ()) -> SignatureSet:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SignatureError(name, f"cannot read: {err}") from None
    return parse_text(text, name, categories=categories)


def parse_text(text: str, name: str = "<string>", categories: Iterable[str] = ()) -> SignatureSet:
    """Parse one file. ``categories``: those declared by files loaded before it, beside the
    built-in ones and the file's own ``categories:``. Raises one SignatureError carrying
    every error found (``.errors``)."""
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
        raise SignatureError(name, "expected a mapping with 'signatures', 'allow' and/or "
                                   "'categories'", line=1)
    errors: list[SignatureError] = []
    for key in sorted(map(str, set(doc) - set(TOP_LEVEL_KEYS))):
        errors.append(SignatureError(name, f"unknown top-level key {key!r}; expected "
                                           "'signatures', 'allow' and/or 'categories'",
                                     line=doc.key_lines.get(key, doc.line)))
    result = SignatureSet()
    result.categories = _declared_categories(doc, name, errors)
    known = set(BUILTIN_CATEGORIES) | set(categories) | set(result.categories)
    section = _list(doc, "signatures", name, errors)
    for index, entry in enumerate(section):
        try:
            sig = _parse_signature(entry, name, index, known, line=_entry_line(index, section))
        except SignatureError as err:
            errors.extend(err.errors)
            continue
        if sig.id in result.signatures:
            errors.append(SignatureError(name, "duplicate id in this file",
                                         line=line_of(entry, "id"), signature=sig.id))
        result.signatures[sig.id] = sig
    section = _list(doc, "allow", name, errors)
    for index, entry in enumerate(section):
        try:
            rule = _parse_allow(entry, name, index, line=_entry_line(index, section))
        except SignatureError as err:
            errors.extend(err.errors)
            continue
        result.allow[rule.id] = rule
    if errors:
        raise SignatureError.several(errors)
    return result


def _list(doc: dict, key: str, name: str, errors: list[SignatureError]) -> list:
    value = doc.get(key) or []
    if not isinstance(value, list):
        errors.append(SignatureError(name, f"'{key}' must be a list",
                                     line=doc.key_lines.get(key, doc.line)))
        return []
    return value


def _declared_categories(doc: dict, name: str, errors: list[SignatureError]) -> list[str]:
    """The file's ``categories:``: names of the operator's own categories."""
    declared: list[str] = []
    value = doc.get("categories") or []
    if not isinstance(value, list):
        errors.append(SignatureError(name, "'categories' must be a list of category names",
                                     line=doc.key_lines.get("categories", doc.line)))
        return declared
    lines = getattr(value, "item_lines", [])
    for i, item in enumerate(value):
        if not isinstance(item, str) or not _CATEGORY.match(item):
            errors.append(SignatureError(
                name, f"{item!r} is not a category name (lower-case letters, digits and '-', "
                      "2 to 40 characters)", line=lines[i] if i < len(lines) else value.line,
                field=f"categories[{i}]"))
        elif item not in declared:
            declared.append(item)
    return declared


class _FieldFailed(Exception):
    """One field of an entry is wrong (recorded in the entry's errors); go on to the next."""


class _Entry:
    """Reads the fields of one YAML entry, collecting errors that say where: each at the
    line of its field."""

    def __init__(self, data: Any, file: str, index: int, kind: str, allowed: set[str],
                 line: int | None = None):
        if not isinstance(data, dict):
            raise SignatureError(file, f"{kind} #{index + 1} must be a mapping", line=line)
        self.data, self.file, self.line = data, file, getattr(data, "line", None)
        self.errors: list[SignatureError] = []
        self.id = data.get("id") if isinstance(data.get("id"), str) else None
        for name in sorted(map(str, set(data) - allowed)):
            self.field(lambda n=name: self.fail(n, "unknown field; allowed: "
                                                + ", ".join(sorted(allowed))))
        if self.id is None or not _ID.match(self.id):
            self.field(lambda: self.fail(
                "id", "required: lower-case letters, digits, '.', '_' or '-' (2-80 characters)"))

    def fail(self, field_name: str, message: str, line: int | None = None):
        self.errors.append(SignatureError(
            self.file, message, line=line or line_of(self.data, field_name) or self.line,
            signature=self.id, field=field_name))
        raise _FieldFailed(field_name)

    def field(self, read, *args, **kwargs):
        """read(...)'s value, or None when it failed (the error is kept)."""
        try:
            return read(*args, **kwargs)
        except _FieldFailed:
            return None

    def done(self) -> None:
        if self.errors:
            raise SignatureError.several(self.errors)

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
        failed = False
        for key in ("match", "no_match"):
            items = spec.get(key)
            if not isinstance(items, list) or not items:
                failed = self.field(self.fail, f"examples.{key}",
                                    "must be a non-empty list of processes") or True
                continue
            for i, item in enumerate(items):
                example = self.field(self._example, item, f"examples.{key}[{i}]")
                if example is None:
                    failed = True
                else:
                    getattr(result, key).append(example)
        if failed:
            raise _FieldFailed("examples")
        return result

    def _example(self, item: Any, where: str) -> Process:
        if not isinstance(item, dict):
            self.fail(where, "must be a mapping of process fields")
        allowed = set(CellProcess.__dataclass_fields__)
        unknown = sorted(map(str, set(item) - allowed))
        if unknown:
            self.fail(f"{where}.{unknown[0]}", "unknown process field; allowed: "
                      + ", ".join(sorted(allowed)))
        for key in ("name", "exe", "cell"):
            if key in item and not isinstance(item[key], str):
                self.fail(f"{where}.{key}", f"must be text, not {item[key]!r} (quote it)")
        for key in ("cmdline", "libraries", "open_files", "exe_markers"):
            words = item.get(key, [])
            if not isinstance(words, list):
                self.fail(f"{where}.{key}", "must be a list of text")
            for i, word in enumerate(words):
                if not isinstance(word, str):  # `-0` or `1` unquoted is a number in YAML
                    self.fail(f"{where}.{key}[{i}]", f"must be text, not {word!r} (quote it)")
        item.setdefault("pid", 4242)
        try:
            return (CellProcess if "cell" in item else Process).from_dict(item)
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            self.fail(where, f"not a valid process: {err}")


def _entry_line(index: int, section: Any) -> int | None:
    lines = getattr(section, "item_lines", None)
    return lines[index] if lines and index < len(lines) else getattr(section, "line", None)


def _parse_signature(data: Any, file: str, index: int,
                     categories: Iterable[str] = BUILTIN_CATEGORIES,
                     line: int | None = None) -> Signature:
    entry = _Entry(data, file, index, "signature", SIGNATURE_KEYS, line=line)
    hold = data.get("for", 0)
    if isinstance(hold, bool) or not isinstance(hold, (int, float)) or hold < 0:
        entry.field(entry.fail, "for", "must be a number of seconds, 0 or more")
        hold = 0
    references = data.get("references", [])
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        entry.field(entry.fail, "references", "must be a list of text")
    when = entry.field(entry.condition)
    read = (fields_read(when) or set()) if when is not None else set()
    if "cell" in read and len(read) > 1:
        entry.field(entry.fail, "when",
                    "a signature tests either a cell's source (field 'cell') or processes, not "
                    f"both; this one also reads {sorted(read - {'cell'})}")
    category = entry.field(entry.text, "category", pattern=_CATEGORY)
    known = tuple(categories)
    if category is not None and category not in known:
        extra = [c for c in known if c not in BUILTIN_CATEGORIES]
        entry.field(entry.fail, "category",
                    f"unknown category {category!r}; known: {', '.join(BUILTIN_CATEGORIES)}"
                    + (f" and this site's {', '.join(extra)}" if extra else "")
                    + " (declare a category of your own in a top-level 'categories:' list)")
    severity = entry.field(entry.text, "severity", choices=SEVERITIES)
    description = entry.field(entry.text, "description")
    action = entry.field(entry.text, "action", required=False, choices=POLICY_ACTIONS)
    examples = entry.field(entry.examples)
    entry.done()
    return Signature(
        id=entry.id,
        category=category,
        severity=severity,
        description=description,
        when=when,
        on_cells="cell" in read,
        hold_seconds=float(hold),
        action=action,
        examples=examples,
        references=references,
        source=f"{file}:{entry.line}",
    )


def _parse_allow(data: Any, file: str, index: int, line: int | None = None) -> AllowRule:
    entry = _Entry(data, file, index, "allow rule", ALLOW_KEYS, line=line)
    description = entry.field(entry.text, "description")
    when = entry.field(entry.condition)
    examples = entry.field(entry.examples)
    entry.done()
    return AllowRule(
        id=entry.id,
        description=description,
        when=when,
        examples=examples,
        source=f"{file}:{entry.line}",
    )
