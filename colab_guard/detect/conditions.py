"""Conditions: a small, validated tree of tests over named process fields.

YAML form::

    all:                      # also: any, not
      - args: {regex: '^stratum\\d?\\+(tcp|ssl|tls)://'}
      - established: {gte: 1}

Compiling checks every field name, operator and operand, and says where the
error is (``when.all[0].args.regex``).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import re2
import regex

from .fields import FIELDS, OPERATORS, FieldView


class ConditionError(ValueError):
    """A condition that cannot be compiled; ``path`` names the field."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# A quantified group that itself contains a quantifier, e.g. (a+)+ or (\w*x)*:
# the classic shape of catastrophic backtracking. Refused at load time.
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)(?:[+*]|\{\d*,)")


#: Seconds one search of a fallback regex may take (see ``compile_regex``). Shapes the check
#: above misses ((a|aa)+$, .*a.*b.*c) can still backtrack for minutes on a hostile 8 KiB
#: command line: such a search stops here and raises RegexTimeout (the engine counts it as no
#: match, and says so once).
REGEX_TIMEOUT = 0.05

#: Seconds of fallback-regex searching one process may cost across all its ticks, whatever
#: each search took: a process whose arguments keep changing (so that its rules are tested
#: again every tick) and stay just under REGEX_TIMEOUT is not searched again past this.
REGEX_BUDGET = 0.2


class RegexTimeout(TimeoutError):
    """A regex search ran past REGEX_TIMEOUT, or past the process's REGEX_BUDGET."""


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a pattern RE2 refuses falls back quietly (below)
_RE2_OPTIONS.never_capture = True  # only whether it matches is asked
# The wrapper's own search builds a Match object with str offsets; only whether it matches is
# asked, so the compiled RE2 object is called directly where this version of the wrapper has it.
_UNANCHORED = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)
_NO_MATCH = (-1, -1)

#: Python's classes for text, spelled for RE2, whose \d, \w and \s are ASCII only: a
#: signature written as Python reads it must not be evaded with a Unicode digit or letter.
_CLASSES = {"d": r"\p{Nd}", "w": r"\p{L}\p{N}_",
            "s": r"\t\n\v\f\r \x1c-\x1f\x85\p{Z}"}


def _for_re2(pattern: str) -> str | None:
    """The pattern with Python's meaning in RE2's syntax, or None where that cannot be said
    (the caller then falls back to ``regex``). Python's ``$`` also matches before a final
    newline; its \\d \\w \\s are Unicode."""
    if re.search(r"\(\?([a-zA-Z]+(-[a-zA-Z]*)?|-[a-zA-Z]+):", pattern):
        return None  # flags over a part only ((?m:...)): left to regex
    out, i, in_class, multiline = [], 0, False, re.match(r"\(\?[a-zA-Z]*m", pattern) is not None
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            e = pattern[i + 1]
            if e.lower() in _CLASSES:
                body = _CLASSES[e.lower()]
                if e.islower():
                    out.append(body if in_class else f"[{body}]")
                elif in_class:
                    return None  # a negated class inside a class: not in RE2's syntax
                else:
                    out.append(f"[^{body}]")
            elif e == "Z":
                out.append(r"\z")
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
            out.append(c)
        elif c == "[":
            in_class = True
            if pattern.startswith("[^", i):
                out.append("[^")
                i += 2
                if pattern.startswith("]", i):
                    out.append(r"\]")
                    i += 1
                continue
            out.append("[")
            if pattern.startswith("]", i + 1):
                out.append(r"\]")
                i += 1
        elif c == "$" and not multiline:
            out.append(r"(?:\n?\z)")
        elif pattern.startswith("{,", i):
            out.append("{0")  # Python's {,n}; RE2 would read it as text
        else:
            out.append(c)
        i += 1
    return "".join(out)


class Regex:
    """A compiled signature regex: RE2 (linear time, whatever the text) where it can say the
    pattern, else ``regex`` with a time limit per search and a budget per process."""

    __slots__ = ("pattern", "_re2", "_raw", "_regex")

    def __init__(self, pattern: str):
        self.pattern = pattern
        self._re2 = self._raw = self._regex = None
        translated = _for_re2(pattern)
        if translated is not None:
            try:
                self._re2 = re2.compile(translated, _RE2_OPTIONS)
            except re2.error:
                pass  # lookarounds, backreferences: not RE2's
        if self._re2 is None:
            self._regex = regex.compile(pattern)
        elif _UNANCHORED is not None:
            self._raw = getattr(self._re2, "_regexp", None)

    @property
    def linear(self) -> bool:
        """Whether searches run in linear time (RE2)."""
        return self._re2 is not None

    def search(self, text: str) -> bool:
        if self._re2 is not None:
            # Encoded here: the wrapper's own search raises on the lone surrogates that stand
            # for invalid UTF-8 in a command line (a rule that raises would be switched off),
            # and its Match objects cost twice the search.
            data = text.encode("utf-8", "replace")
            if self._raw is not None:
                return self._raw.Match(_UNANCHORED, data, 0, len(data))[0] != _NO_MATCH
            return self._re2.search(data.decode("utf-8")) is not None
        budget = getattr(_budget, "current", None)
        limit = REGEX_TIMEOUT if budget is None else min(REGEX_TIMEOUT, budget.left)
        if limit <= 0:
            raise RegexTimeout(f"regex {self.pattern!r}: the process's budget of "
                               f"{REGEX_BUDGET:g} s of searching is spent")
        started = time.perf_counter()
        try:
            return self._regex.search(text, timeout=limit) is not None
        except TimeoutError:
            raise RegexTimeout(f"regex {self.pattern!r} took over {limit:g} s") from None
        finally:
            if budget is not None:
                budget.left -= time.perf_counter() - started

    def __eq__(self, other):
        return isinstance(other, Regex) and other.pattern == self.pattern

    def __hash__(self):
        return hash(self.pattern)

    def __repr__(self):
        return f"Regex({self.pattern!r})"


class RegexBudget:
    """Seconds of fallback-regex searching left to one process (across ticks)."""

    __slots__ = ("left",)

    def __init__(self, seconds: float = REGEX_BUDGET):
        self.left = seconds


_budget = threading.local()


class charged_to:
    """``with charged_to(budget):`` fallback-regex searches in this thread spend ``budget``."""

    def __init__(self, budget: RegexBudget | None):
        self.budget = budget

    def __enter__(self):
        self.before = getattr(_budget, "current", None)
        _budget.current = self.budget
        return self.budget

    def __exit__(self, *exc):
        _budget.current = self.before


def compile_regex(pattern: str, path: str) -> Regex:
    if _NESTED_QUANTIFIER.search(pattern):
        raise ConditionError(path, f"regex {pattern!r} nests quantifiers (like (a+)+), "
                                   "which can backtrack for minutes on hostile input")
    try:
        re.compile(pattern)  # Python's syntax, and its error messages
        return Regex(pattern)
    except (re.error, regex.error) as err:
        raise ConditionError(path, f"bad regex {pattern!r}: {err}") from None


class Condition:
    def test(self, view: FieldView) -> tuple[bool, list[str]]:
        """Whether it holds, and the reasons when it does."""
        raise NotImplementedError


@dataclass
class All(Condition):
    parts: list[Condition]

    def __post_init__(self):
        # Cheap parts first (a number or a flag compared): on a kernel whose CPU changed, a
        # rule like "busy and named like a miner" fails on the number without its regex
        # running. The reasons keep the order the rule was written in.
        self._order = sorted(range(len(self.parts)), key=lambda i: _cost(self.parts[i]))

    def test(self, view):
        found: list[list[str] | None] = [None] * len(self.parts)
        for i in self._order:
            ok, why = self.parts[i].test(view)
            if not ok:
                return False, []
            found[i] = why
        return True, [reason for why in found for reason in why]


@dataclass
class Any_(Condition):
    parts: list[Condition]

    def test(self, view):
        for part in self.parts:
            ok, why = part.test(view)
            if ok:
                return True, why
        return False, []


@dataclass
class Not(Condition):
    part: Condition

    def test(self, view):
        unknown = getattr(view, "unknown", None)
        if unknown:  # "not" over a field not known yet (a program not started) is unknown
            reads = fields_read(self.part)
            if reads is None or reads & unknown:
                return view.optimistic, []
        ok, _ = self.part.test(view)
        return (not ok), []


_COMPARE = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}


@dataclass
class FieldTest(Condition):
    """Every (operator, operand) pair must hold; on a list field, for one same element."""

    field: str
    tests: list[tuple[str, Any]]

    def test(self, view):
        if self.field in getattr(view, "unknown", ()):
            # a program not started yet: its sockets, CPU, content are unknown. A signature
            # does not hold on what is unknown; an allow rule may (``optimistic``)
            return view.optimistic, []
        try:
            value = view[self.field]
        except KeyError:  # a mapping of some fields only (a cell's lines): not this one
            return False, []
        for item in value if isinstance(value, list) else [value]:
            if all(_holds(op, operand, item) for op, operand in self.tests):
                return True, [f"{self.field} {self._describe()}: {_show(item)}"]
        return False, []

    def _describe(self) -> str:
        parts = []
        for op, operand in self.tests:
            if op == "regex":
                parts.append(f"matches {operand.pattern!r}")
            elif op in _COMPARE:
                parts.append(f"{_COMPARE[op]} {operand}")
            elif op == "in":
                parts.append("in the list")
            else:
                parts.append(f"{op} {operand!r}")
        return " and ".join(parts)


def _cost(condition: Condition) -> int:
    """0 for a field compared by value (no regex, no substring), 1 for any other."""
    if isinstance(condition, FieldTest) and all(op not in ("regex", "contains")
                                                for op, _ in condition.tests):
        return 0
    return 1


def _holds(op: str, operand: Any, item: Any) -> bool:
    if op == "equals":
        return item == operand
    if op == "in":
        return item in operand
    if op == "regex":
        return operand.search(item)
    if op == "contains":
        return operand in item
    if op == "gte":
        return item >= operand
    if op == "gt":
        return item > operand
    if op == "lte":
        return item <= operand
    if op == "lt":
        return item < operand
    raise AssertionError(op)


def _show(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def fields_read(condition: Condition) -> set[str] | None:
    """The field names a compiled condition tests; None if it holds a condition of another
    kind (whose reads are not known)."""
    if isinstance(condition, FieldTest):
        return {condition.field}
    if isinstance(condition, Not):
        return fields_read(condition.part)
    if isinstance(condition, (All, Any_)):
        parts = [fields_read(p) for p in condition.parts]
        return None if None in parts else set().union(*parts)
    return None


def may_hold(condition: Condition, unknown: frozenset[str] | set[str]) -> bool:
    """Whether a condition can hold when the fields in ``unknown`` are not known (a test on
    them, or a ``not`` over one, does not hold). False lets a caller skip the condition."""
    if isinstance(condition, FieldTest):
        return condition.field not in unknown
    if isinstance(condition, Not):
        reads = fields_read(condition.part)
        return reads is not None and not (reads & unknown)
    if isinstance(condition, All):
        return all(may_hold(p, unknown) for p in condition.parts)
    if isinstance(condition, Any_):
        return any(may_hold(p, unknown) for p in condition.parts)
    return True


def compile_condition(spec: Any, path: str = "when") -> Condition:
    """Turn the YAML form into a Condition, or raise ConditionError naming the path."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConditionError(path, "expected a mapping with exactly one key: all, any, not, "
                                   "or a field name (" + ", ".join(FIELDS) + ")")
    (key, value), = spec.items()
    if key in ("all", "any"):
        if not isinstance(value, list) or not value:
            raise ConditionError(f"{path}.{key}", "expected a non-empty list of conditions")
        parts = [compile_condition(v, f"{path}.{key}[{i}]") for i, v in enumerate(value)]
        return All(parts) if key == "all" else Any_(parts)
    if key == "not":
        return Not(compile_condition(value, f"{path}.not"))
    if key not in FIELDS:
        raise ConditionError(f"{path}.{key}", "unknown field; known fields: " + ", ".join(FIELDS))
    return _compile_field_test(key, value, f"{path}.{key}")


def _compile_field_test(field: str, ops: Any, path: str) -> Condition:
    kind = FIELDS[field].kind
    allowed = OPERATORS[kind]
    if not isinstance(ops, dict) or not ops:
        raise ConditionError(path, f"expected a mapping of operators ({', '.join(allowed)})")
    tests: list[tuple[str, Any]] = []
    for op, operand in ops.items():
        where = f"{path}.{op}"
        if op not in allowed:
            raise ConditionError(where, f"operator not allowed on a {kind} field; "
                                        f"use one of: {', '.join(allowed)}")
        expected = allowed[op]
        if isinstance(operand, bool) and expected is not bool and bool not in _as_tuple(expected):
            raise ConditionError(where, f"expected {_type_name(expected)}, got a boolean")
        if not isinstance(operand, expected):
            raise ConditionError(where, f"expected {_type_name(expected)}, "
                                        f"got {type(operand).__name__}")
        if op == "regex":
            operand = compile_regex(operand, where)
        if op == "in":
            element = (int, float) if kind.startswith("number") else str
            bad = [x for x in operand if not isinstance(x, element) or isinstance(x, bool)]
            if bad or not operand:
                raise ConditionError(where, f"expected a non-empty list of {_type_name(element)}")
            operand = frozenset(operand)
        tests.append((op, operand))
    return FieldTest(field, tests)


def _as_tuple(t) -> tuple:
    return t if isinstance(t, tuple) else (t,)


def _type_name(t) -> str:
    names = {str: "text", int: "an integer", float: "a number", bool: "true or false",
             list: "a list"}
    return " or ".join(dict.fromkeys(names.get(x, x.__name__) for x in _as_tuple(t)))
