"""The detection engine: signatures evaluated over a stream of snapshots.

Pure code: it sees only Snapshots, so the tests feed it recorded data.
"""

from __future__ import annotations

import logging
import posixpath
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any

from ..observe.model import Process, Snapshot
from .cells import CELL_FIELD, CellMemory
from .commands import (DATA_ONLY, SHELLS, WRAPPING, Command, ScriptBudget, base,
                       network_redirects, reads_script, script_as_programs, show,
                       wrapped_text_tool)
from .conditions import RegexBudget, RegexTimeout, charged_to, fields_read, may_hold
from .fields import FIELDS, KNOWN_BEFORE_START, FieldView, PendingView
from .signatures import Signature, SignatureSet

MAX_KERNEL_MEMORIES = 1024  # kernels whose earlier cells are remembered (least recent dropped)
STARTS_PREFIX = "the cell would start: "
PENDING_UNKNOWN = frozenset(FIELDS) - KNOWN_BEFORE_START
#: distinct programs of one cell tested before it runs (about 1 ms each): the kernel waits
#: `cell_check_timeout` (1 s by default) for the verdict
MAX_PROGRAMS_CHECKED = 500
#: Where the distribution installs its shells and text tools: a shell's file there is the
#: system's, not a copy named sh (not /usr/local/bin, where pip and `make install` put what a
#: kernel running as root adds: a miner installed as /usr/local/bin/sh)
DISTRIBUTION_PROGRAMS = frozenset({"/bin", "/usr/bin", "/sbin", "/usr/sbin"})
#: ... and its libraries (one preloaded from elsewhere runs in the system's program)
SYSTEM_LIBRARIES = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/")


@dataclass
class Detection:
    """One signature matched one process of one kernel."""

    signature: Signature
    kernel_id: str
    process: Process
    reasons: list[str]
    held_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "signature": self.signature.id,
            "category": self.signature.category,
            "severity": self.signature.severity,
            "description": self.signature.description,
            "pid": self.process.pid,
            "reasons": self.reasons,
            "held_seconds": round(self.held_seconds, 1),
        }


@dataclass
class Engine:
    rules: SignatureSet
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("colab_guard"))
    # (signature id, kernel id, pid, create time) -> when the condition first held
    _since: dict[tuple, float] = field(default_factory=dict)
    #: signatures switched off after raising, with the error
    disabled: dict[str, str] = field(default_factory=dict)
    #: signatures whose regex ran past its time limit at least once (said once each)
    slow: set[str] = field(default_factory=set)
    # (signature id, kernel id, pid, create time) too slow to test: skipped while it lives
    # kernel id -> (signature id, pid, create time) whose regex ran out of time on it
    _too_slow: dict[str, set[tuple]] = field(default_factory=dict)
    # (kernel id, pid, create time) -> what is left of the process's fallback-regex budget,
    # spent across ticks (a process whose arguments keep changing is searched again each tick)
    _regex_budget: dict[str, dict[tuple, RegexBudget]] = field(default_factory=dict)
    # ... and of its scripts' readings (a shell whose argument area is rewritten every tick)
    _script_budget: dict[str, dict[tuple, ScriptBudget]] = field(default_factory=dict)
    # kernel id -> process key -> (the sample, what it observed, the signatures it
    # matched with why, each rule's last result with the values of the fields it read)
    _last: dict[str, dict[tuple, tuple]] = field(default_factory=dict)
    _reads: dict[str, tuple] = field(default_factory=dict)  # rule -> (condition, fields it reads)
    # kernel id -> the processes whose last result matched or is still being tested again
    _active: dict[str, set[tuple]] = field(default_factory=dict)
    _complete: set[str] = field(default_factory=set)  # kernels whose last evaluate() ended
    _members: dict[str, frozenset | None] = field(default_factory=dict)  # their Snapshot.members
    # kernel id -> what its earlier cells left (variables, imports, folder, clones, scripts)
    _cells: OrderedDict = field(default_factory=OrderedDict)
    _pending_ok: dict[str, tuple] = field(default_factory=dict)  # rule -> (condition, may hold)
    _union: tuple | None = None  # (the rules' conditions, every field they read)
    _union_tick: float | None = None  # the snapshot time it was last looked at for
    # what evaluate() compares of a process from one tick to the next (see _observer)
    _observer: Callable[[Process], tuple] = field(default_factory=lambda: _observer(None))

    def evaluate(self, snapshot: Snapshot) -> list[Detection]:
        detections: list[Detection] = []
        held_now: set[tuple] = set()
        kernel_id = snapshot.kernel_id
        last = self._last.get(kernel_id, {})
        self._all_reads(snapshot.time)  # once a tick: the rules may have changed since
        observe = self._observer
        visited, now, same_processes = self._to_evaluate(snapshot, last)
        if same_processes and not visited and not self._active.get(kernel_id):
            # All of them parked as they were, none matching anything (most of two hundred
            # idle kernels, most ticks): the last results stand, nothing held to forget.
            return detections
        self._complete.discard(kernel_id)  # until this one ends (an error leaves it out)
        active = set()
        for process in visited:
            if getattr(process, "cell", ""):
                detections.extend(self._check_cell(snapshot, process, held_now))
                continue
            cached = last.get(process.key)
            # Most processes look the same from one tick to the next (a thousand idle
            # children of fifty kernels): the same observation gives the same matches.
            # The sampler hands out the very same object for a process that did not change;
            # a kernel's CPU and memory change at every tick, and are left out of what is
            # compared while no rule reads them.
            if cached is None or cached[0] is not process or cached[3]:
                observed = observe(process)
                if cached is not None and cached[1] == observed:
                    cached = (process, observed, cached[2], None)
                else:
                    # A kernel differs a little at every tick (its CPU, its memory): a rule
                    # is tested again only if a field it reads changed. (Kept only while
                    # the process keeps changing: a thousand idle ones would cost memory.)
                    results = _Results()
                    matches = self._matches(snapshot, process,
                                            cached[3] if cached is not None else None, results)
                    cached = (process, observed, matches, results)
            now[process.key] = cached
            if cached[2] or cached[3]:
                active.add(process.key)
            for sig, reasons in cached[2]:
                if sig.id not in self.disabled:
                    found = self._hold(sig, snapshot, process, reasons, held_now)
                    if found is not None:
                        detections.append(found)
        self._last[kernel_id] = now  # live processes only: bounded
        self._active[kernel_id] = active
        self._members[kernel_id] = snapshot.members
        self._forget(kernel_id, held_now)
        self._complete.add(kernel_id)
        # Per kernel, so a tick costs what its own processes cost, not every kernel's.
        slow, budgets = self._too_slow.get(kernel_id), self._regex_budget.get(kernel_id)
        scripts = self._script_budget.get(kernel_id)
        if (slow or budgets or scripts) and not same_processes:
            live = {p.key for p in snapshot.processes}
            if slow:
                self._too_slow[snapshot.kernel_id] = {k for k in slow if k[1:] in live}
            for kept in (budgets, scripts):
                if kept and len(kept) > len(live) or kept and not kept.keys() <= live:
                    for key in kept.keys() - live:
                        del kept[key]
        return detections

    def _to_evaluate(self, snapshot: Snapshot, last: dict[tuple, tuple]
                     ) -> tuple[list[Process], dict[tuple, tuple], bool]:
        """The processes to look at, the map their results go in, and whether the kernel's
        processes are the last tick's. The quiet ones the sampler parked (Snapshot.parked)
        are the objects it handed out before: their last results stand. Where the others
        are the last tick's processes too (none exited, none came) and none of the parked
        matched anything, the last results are updated in place, the parked ones not even
        looked at (a thousand idle children of fifty kernels, every tick)."""
        if not snapshot.parked:
            return snapshot.processes, {}, False
        visited = snapshot.visited()
        kernel_id = snapshot.kernel_id
        members = snapshot.members
        if members is not None and members is self._members.get(kernel_id) \
                and kernel_id in self._complete and len(members) == len(last):
            active = self._active.get(kernel_id)
            if not active or active <= {p.key for p in visited}:
                return visited, last, True
        now = {}
        for process in snapshot.processes[len(visited):]:
            cached = last.get(process.key)
            if cached is not None and cached[0] is process and not cached[2] \
                    and not cached[3]:
                now[process.key] = cached
            else:
                visited.append(process)
        return visited, now, False

    def forget_kernel(self, kernel_id: str) -> None:
        self._forget(kernel_id, set())
        self._last.pop(kernel_id, None)
        self._active.pop(kernel_id, None)
        self._members.pop(kernel_id, None)
        self._complete.discard(kernel_id)
        self._cells.pop(kernel_id, None)
        self._too_slow.pop(kernel_id, None)
        self._regex_budget.pop(kernel_id, None)
        self._script_budget.pop(kernel_id, None)

    # ------------------------------------------------------------------ cells

    def cell_memory(self, kernel_id: str) -> CellMemory:
        memory = self._cells.get(kernel_id)
        if memory is None:
            memory = self._cells[kernel_id] = CellMemory()
            while len(self._cells) > MAX_KERNEL_MEMORIES:
                self._cells.popitem(last=False)
        else:
            self._cells.move_to_end(kernel_id)
        return memory

    def _check_cell(self, snapshot: Snapshot, process: Process, held_now: set[tuple]
                    ) -> list[Detection]:
        """A cell before it runs: the cell signatures on its source (read with what the
        kernel's earlier cells left), and the process signatures on every program it would
        start, as programs not started yet (name and command line known, the rest not)."""
        analysis = self.cell_memory(snapshot.kernel_id).analyse(process.cell)
        process.normalised, process.unread = analysis.text, analysis.unread
        detections: list[Detection] = []
        view = FieldView(process)
        for sig in list(self.rules.signatures.values()):
            if sig.on_cells and sig.id not in self.disabled:
                reasons = self._test(sig, snapshot, process, view)
                if reasons is not None:
                    found = self._hold(sig, snapshot, process, reasons, held_now)
                    if found is not None:
                        detections.append(found)
        seen = {d.signature.id for d in detections}
        candidates = [sig for sig in list(self.rules.signatures.values())
                      if not sig.on_cells and self._may_hold_before_start(sig)]
        tested: set[tuple] = set()
        for command in analysis.commands:
            if not command.argv or base(command.argv[0]) in DATA_ONLY:
                continue  # echo, grep, pkill…: their arguments are data, not programs
            if tuple(command.argv) in tested:
                continue
            if len(tested) >= MAX_PROGRAMS_CHECKED:
                break  # a cell that starts more: the sampler sees the rest when they run
            tested.add(tuple(command.argv))
            pending = pending_process(command, process.pid)
            if self._allowed_pending(pending):
                continue
            pview = PendingView(pending)
            for sig in candidates:
                if sig.id in self.disabled or sig.id in seen:
                    continue
                reasons = self._test(sig, snapshot, process, pview)
                if reasons is not None:
                    seen.add(sig.id)
                    detections.append(Detection(sig, snapshot.kernel_id, process,
                                                [STARTS_PREFIX + (command.note or
                                                                  show(pending.cmdline))]
                                                + reasons))
        return detections

    def _may_hold_before_start(self, sig: Signature) -> bool:
        """Whether a signature can hold on a program not started yet (one that reads only
        sockets, CPU, content… never can); cached per compiled condition."""
        known = self._pending_ok.get(sig.id)
        if known is None or known[0] is not sig.when:
            known = self._pending_ok[sig.id] = (sig.when, may_hold(sig.when, PENDING_UNKNOWN))
        return known[1]

    def _allowed_pending(self, pending: Process) -> bool:
        """An allow rule that may hold once the program runs (unknown fields count as
        holding): the cell runs, and the sampler decides on the real process."""
        view = PendingView(pending, optimistic=True)
        for rule in self.rules.allow.values():
            try:
                if rule.when.test(view)[0]:
                    return True
            except Exception:
                continue
        return False

    # ------------------------------------------------------------------

    def _matches(self, snapshot: Snapshot, process: Process, before: _Results | None,
                 results: _Results) -> list[tuple[Signature, list[str]]]:
        """The signatures the process matches now, with the reasons (none if allowed).
        ``before``: each rule's result at the last tick, reused where the fields it reads
        have the same values; ``results`` gets this tick's."""
        view = FieldView(as_judged(process, self._scripts_of(snapshot.kernel_id, process)))
        results.bind(view, before)
        reads = self._all_reads(snapshot.time)
        if before is not None and before.matches is not None and reads is not None \
                and not results.changed(reads):
            # None of the fields any rule reads changed (a kernel's CPU and memory did, and
            # no rule reads them): every result stands.
            results.rules, results.matches = before.rules, before.matches
            return before.matches
        results.matches = self._test_all(snapshot, process, view, before, results)
        return results.matches

    def _scripts_of(self, kernel_id: str, process: Process) -> ScriptBudget | None:
        """The process's budget for reading its scripts, if it is a program whose script or
        wrapped command the rules read (as_judged)."""
        if not reads_script(process.exe):
            return None
        scripts = self._script_budget.setdefault(kernel_id, {})
        budget = scripts.get(process.key)
        if budget is None:
            budget = scripts[process.key] = ScriptBudget()
        return budget

    def _test_all(self, snapshot: Snapshot, process: Process, view: FieldView,
                  before: _Results | None, results: _Results
                  ) -> list[tuple[Signature, list[str]]]:
        if self._allowed(view, before, results):
            return []
        found = []
        for sig in list(self.rules.signatures.values()):
            if sig.id in self.disabled or sig.on_cells != bool(getattr(process, "cell", "")):
                continue  # cell signatures see only cell checks, and process ones only processes
            if (sig.id, *process.key) in self._too_slow.get(snapshot.kernel_id, ()):
                continue
            reasons = self._reused(sig.id, sig.when, view, before, results,
                                   lambda: self._test(sig, snapshot, process, view))
            if reasons is not None:
                found.append((sig, reasons))
        return found

    def _test(self, sig: Signature, snapshot: Snapshot, process: Process,
              view: FieldView) -> list[str] | None:
        """The reasons the signature's condition holds, or None."""
        budget = None
        if not getattr(process, "cell", ""):  # a cell is checked once; a process every tick
            budget = self._regex_budget.setdefault(snapshot.kernel_id, {}).setdefault(
                process.key, RegexBudget())
        try:
            with charged_to(budget):
                ok, reasons = sig.when.test(view)
        except RegexTimeout as err:
            # Hostile text against a regex that backtracks: no match, and not retried on
            # this process every tick (a cell is checked once anyway). Not disabled: the
            # user would otherwise switch the rule off for everyone.
            if not getattr(process, "cell", ""):
                self._too_slow.setdefault(snapshot.kernel_id, set()).add((sig.id, *process.key))
            if sig.id not in self.slow:
                self.slow.add(sig.id)
                self.log.warning("colab-guard: signature %r (%s): %s on pid %s of kernel %s; "
                                 "counted as no match (simplify the regex; further occurrences "
                                 "are not logged)", sig.id, sig.source, err, process.pid,
                                 snapshot.kernel_id)
            return None
        except Exception as err:  # a bug in one rule must not silence the others
            self.disabled[sig.id] = f"{type(err).__name__}: {err}"
            self.log.error("colab-guard: signature %r (%s) raised %s and is disabled; the "
                           "other signatures keep working", sig.id, sig.source, self.disabled[sig.id])
            return None
        return reasons if ok else None

    def _hold(self, sig: Signature, snapshot: Snapshot, process: Process, reasons: list[str],
              held_now: set[tuple]) -> Detection | None:
        """A detection once the condition has held for the signature's ``for``."""
        key = (sig.id, snapshot.kernel_id, *process.key)
        held_now.add(key)
        since = self._since.setdefault(key, snapshot.time)
        held = snapshot.time - since
        if held < sig.hold_seconds:
            return None
        if sig.hold_seconds:
            reasons = reasons + [f"held for {held:.0f} s (needs {sig.hold_seconds:g} s)"]
        return Detection(sig, snapshot.kernel_id, process, reasons, held)

    def _reused(self, key: str, condition, view: FieldView, before: _Results | None,
                results: _Results, test):
        """A rule's result: last tick's if none of the fields it reads changed, else
        ``test()``; kept in ``results`` for the next tick."""
        reads = self._reads_of(key, condition)
        if reads is None:
            return test()  # what it reads is not known: never reused
        changed = results.changed(reads)
        if before is not None and not changed and key in before.rules:
            result = before.rules[key]
        else:
            result = test()
        results.rules[key] = result
        return result

    def _all_reads(self, tick: float | None = None) -> tuple[str, ...] | None:
        """Every field some rule reads (None if a rule reads fields not known), for the
        rules as they are now (looked at again at each new ``tick``: a snapshot's time), and
        with it what ``evaluate`` compares of a process (``_observer``)."""
        if tick is not None and tick == self._union_tick and self._union is not None:
            return self._union[1]
        self._union_tick = tick
        rules = [*self.rules.signatures.values(), *self.rules.allow.values()]
        key = tuple(id(rule.when) for rule in rules)
        if self._union is None or self._union[0] != key:
            reads: set[str] | None = set()
            for rule in rules:
                found = fields_read(rule.when)
                if found is None:
                    reads = None
                    break
                reads |= found
            self._union = (key, None if reads is None else tuple(sorted(reads)))
            self._observer = _observer(self._union[1])
        return self._union[1]

    def _reads_of(self, rule_id: str, condition) -> tuple[str, ...] | None:
        """The fields a rule reads (None: not known)."""
        known = self._reads.get(rule_id)
        if known is None or known[0] is not condition:
            reads = fields_read(condition)
            known = self._reads[rule_id] = (condition, None if reads is None else tuple(reads))
        return known[1]

    def _allowed(self, view: FieldView, before: _Results | None, results: _Results
                 ) -> bool:
        for rule in self.rules.allow.values():
            if self._reused("allow " + rule.id, rule.when, view, before, results,
                            lambda: self._allows(rule, view)):
                return True
        return False

    def _allows(self, rule, view: FieldView) -> bool:
        try:
            return rule.when.test(view)[0]
        except Exception as err:
            if rule.id not in self.slow:  # said once, not every tick
                self.slow.add(rule.id)
                self.log.error("colab-guard: allow rule %r raised %s", rule.id, err)
            return False

    def _forget(self, kernel_id: str, keep: set[tuple]) -> None:
        """A condition that stops holding starts its window again."""
        for key in [k for k in self._since if k[1] == kernel_id and k not in keep]:
            del self._since[key]


class _Results:
    """One process's fields as its rules read them at one tick, and each rule's result:
    the next tick tests again only the rules that read a field that changed (a kernel's
    CPU and memory change at every tick; its command line, sockets and markers seldom).
    Each field is read and compared once per tick, however many rules read it."""

    __slots__ = ("values", "rules", "matches", "_view", "_before", "_changed")

    def __init__(self):
        self.values: dict[str, Any] = {}  # field -> its value (lists as tuples)
        self.rules: dict[str, Any] = {}  # rule -> its result
        self.matches: list | None = None  # the signatures matched, with the reasons
        self._changed: dict[str, bool] = {}

    def bind(self, view: FieldView, before: _Results | None) -> None:
        self._view, self._before = view, before.values if before is not None else None

    def changed(self, reads: tuple[str, ...]) -> bool:
        """Whether any of these fields differs from the last tick (every one is read, so
        that the next tick can compare it too)."""
        found = False
        for name in reads:
            differs = self._changed.get(name)
            if differs is None:
                value = self._view[name]
                if isinstance(value, list):
                    value = tuple(value)
                self.values[name] = value
                differs = self._changed[name] = \
                    self._before is None or self._before.get(name, _UNREAD) != value
            found = found or differs
        return found


_UNREAD = object()


#: Fields that read what a process uses (CPU, memory, GPU): it changes at every tick for a
#: running process, and no other field reads these attributes (tests/test_engine.py checks).
USAGE_FIELDS = {"cpu_percent": "cpu_percent", "rss_mb": "rss", "gpu_percent": "gpu_percent",
                "gpu_memory_mb": "gpu_memory_mb"}


def as_judged(process: Process, budget: ScriptBudget | None = None) -> Process:
    """The process as the rules judge it: the system's own text tools and shell read as the
    cell check reads a `!` line, their data left out of the command line (every other field as
    the sampler saw it: a library preloaded, a connection, the CPU still count).
    - A text tool (grep, cat, echo…, DATA_ONLY): on its name only. A `%%bash` cell's grep for
      a miner's options inherits the connection its shell opened on fd 3.
    - A shell given a script: on the programs the script starts, its text tools' arguments
      left out (`sh -c 'python train.py && echo "next: xmrig --donate-level 1 …"'` prints a
      course's notes while it trains); each program is seen as a process of its own too.
    - A wrapper starting a text tool (`xargs grep -l -- --donate-level`, `timeout 60 grep …`,
      `find . -exec grep …`: the wrapper stays while the tool reads): up to the tool's name.
    - A shell whose script opens a network device a variable spells: on its text, with the
      redirections expanded (what the text does not show, the rules could not see).
    ``budget``: the process's, for the scripts read anew (commands.ScriptBudget)."""
    name, argv = base(process.exe), process.cmdline
    if argv and name in SHELLS and not getattr(process, "cell", ""):
        # `d=/dev; exec 3<>$d/tcp/host/4444`: the connection its script opens, as it opens it
        # (read by the shell's file: `exec -a kworker bash -c …` is bash)
        opened = network_redirects([name, *argv[1:]], budget)
        if opened:
            return process.but(cmdline=[*argv, *opened])
    if name not in DATA_ONLY and name not in SHELLS and name not in WRAPPING or not argv \
            or getattr(process, "cell", "") or not _system_file(process):
        return process
    if name in DATA_ONLY:
        return process.but(cmdline=argv[:1]) if base(argv[0]) in DATA_ONLY else process
    if name in WRAPPING:
        judged = wrapped_text_tool(argv, budget) if base(argv[0]) == name else None
        return process if judged is None else process.but(cmdline=judged)
    if len(argv) > 1 and posixpath.dirname(argv[1]) in DISTRIBUTION_PROGRAMS \
            and base(argv[1]) in DATA_ONLY:
        # a text tool that is a script of the system's (Debian's egrep, fgrep, which), run
        # by its shell: `sh /usr/bin/egrep -e '--donate-level 1 …' notes.txt` is egrep
        return process.but(cmdline=argv[1:2])
    programs = script_as_programs(argv, budget)
    if programs is None:
        return process
    return process.but(cmdline=[argv[0], "-c", " ; ".join(map(show, programs))])


def _system_file(process: Process) -> bool:
    """Whether the process runs a file of the distribution's own folders (Colab's kernels run
    as root: a miner copied to /usr/local/bin/sh or /usr/local/bin/x/sh is in a folder only root
    can write to, and no system shell), with no known tool's content and no library loaded
    from outside the system's folders (one preloaded would read the arguments its own way)."""
    return posixpath.dirname(process.exe) in DISTRIBUTION_PROGRAMS and not process.exe_markers \
        and all(lib.startswith(SYSTEM_LIBRARIES) for lib in process.libraries)


def _observer(reads: tuple[str, ...] | None) -> Callable[[Process], tuple]:
    """What the sampler saw of a process, comparable from one tick to the next: every
    attribute, but those of the usage fields no rule reads (``reads``: the fields the rules
    read, None if not known). Lists compare by value; a sample is never changed once handed
    out."""
    unread = {attr for name, attr in USAGE_FIELDS.items() if reads is not None and name not in reads}
    return attrgetter(*[f.name for f in fields(Process) if f.name not in unread])


def check_examples(sig: Signature) -> list[str]:
    """Run a signature's examples; return one line per failure (empty when all pass).

    Each example process is observed twice, ``for`` seconds apart, so a
    signature with a time window is checked as if the behaviour held.
    """
    failures = []
    for expected, examples in ((True, sig.examples.match), (False, sig.examples.no_match)):
        for i, process in enumerate(examples):
            matched = example_matches(sig, process)
            if matched != expected:
                kind = "match" if expected else "no_match"
                verb = "did not match" if expected else "matched"
                cell = getattr(process, "cell", "")
                shown = f"cell {cell[:120]!r}" if cell else ' '.join(process.cmdline) or process.name
                failures.append(f"{sig.id}: examples.{kind}[{i}] {verb}: {shown}")
    return failures


def example_matches(sig: Signature, process: Process) -> bool:
    engine = Engine(SignatureSet({sig.id: sig}))
    t0 = 1_000_000.0
    engine.evaluate(Snapshot("example", t0, [process]))
    return bool(engine.evaluate(Snapshot("example", t0 + sig.hold_seconds + 1, [process])))


def pending_process(command: Command, pid: int = 0) -> Process:
    """A program a cell would start, as the sampler will see it once it runs (as far as its
    command line tells: comm is the first word's file name, cut to 15 characters)."""
    argv = command.argv
    return Process(pid=pid, name=base(argv[0])[:15] if argv else "",
                   exe=argv[0] if argv and argv[0].startswith("/") else "", cmdline=list(argv))


def cell_findings(detections: list[Detection], normalised: str) -> list[str]:
    """The evidence of a cell's detections: the normalised lines that made each cell
    signature match, and the command line of each program a process signature matched."""
    lines = normalised.splitlines()
    found: list[str] = []
    for d in detections:
        if d.signature.on_cells:
            for line in lines:
                if d.signature.when.test({CELL_FIELD: line})[0] and line not in found:
                    found.append(line)
        else:
            starts = next((r for r in d.reasons if r.startswith(STARTS_PREFIX)), None)
            if starts and starts not in found:
                found.append(starts)
    return found[:20]
