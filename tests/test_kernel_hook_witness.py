"""The pure parts of the hook that cannot be skipped quietly: the server's witness of a kernel's
cells (cellwitness.py), and the cell's code as the kernel sends it (kernel/code.py)."""

from __future__ import annotations

import ast

import pytest

from colab_guard import cellwitness
from colab_guard.cellwitness import CellWitness, digest
from colab_guard.channel import _too_long
from colab_guard.kernel import protocol
from colab_guard.kernel.code import cell_pieces


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def _run(witness: CellWitness, clock: Clock, code: str, msg_id: str, check: bool = True,
         report: bool = True, check_first: bool = False, decision: str = "run") -> None:
    """One cell: IOPub's execute_input, the hook's check and run report, IOPub's idle."""
    file = f"/tmp/ipykernel_1/{msg_id}.py"
    if check and check_first:
        witness.checked(digest(code), file, decision, code)
    witness.executing(msg_id, code)
    if check and not check_first:
        witness.checked(digest(code), file, decision, code)
    if report and decision == "run":
        witness.ran(file)
    clock.now += 0.2
    witness.idle(msg_id)


def test_checked_and_reported_cells_owe_nothing_in_any_order(clock):
    witness = CellWitness(clock=clock)
    _run(witness, clock, "a = 1", "m1")
    _run(witness, clock, "b = 2", "m2", check_first=True)  # the check came before IOPub's input
    _run(witness, clock, "a = 1", "m3")  # the same source again
    clock.now += cellwitness.GRACE + 1
    assert witness.due() == []
    assert not witness.open


def test_a_cell_run_without_its_check_is_due_once(clock):
    witness = CellWitness(clock=clock)
    _run(witness, clock, "mine()", "m1", check=False)
    assert witness.due() == []  # the grace after idle: the check may be on its way
    clock.now += cellwitness.GRACE + 0.1
    found = witness.due()
    assert [(e.msg_id, what) for e, what in found] == [("m1", "unchecked")]
    assert witness.due() == []


def test_a_checked_cell_never_reported_run_is_due(clock):
    witness = CellWitness(clock=clock)
    _run(witness, clock, "print('next cell')", "m1", report=False)
    clock.now += cellwitness.GRACE + 0.1
    assert [what for _, what in witness.due()] == ["unreported"]


def test_a_check_of_another_cell_does_not_count(clock):
    witness = CellWitness(clock=clock)
    witness.checked(digest("harmless = 1"), "/tmp/f.py", "run", "harmless = 1")
    _run(witness, clock, "mine()", "m1", check=False)
    clock.now += cellwitness.GRACE + 0.1
    assert [what for _, what in witness.due()] == ["unchecked"]


def test_refused_interrupted_blank_and_unfinished_cells_owe_nothing(clock):
    witness = CellWitness(clock=clock)
    _run(witness, clock, "bad()", "m1", decision="refuse")
    witness.executing("m2", "import time; time.sleep(99)")
    witness.interrupted()  # through the server, before its check
    clock.now += 0.1
    witness.idle("m2")
    witness.executing("m3", "   \n")
    witness.executing("m4", "long_running()")  # checked and reported, still running
    witness.checked(digest("long_running()"), "/tmp/f4.py", "run", "long_running()")
    witness.ran("/tmp/f4.py")
    clock.now += cellwitness.GRACE + 1
    assert witness.due() == []


def test_a_long_running_cell_without_its_check_is_due_by_its_deadline(clock):
    witness = CellWitness(clock=clock)
    witness.executing("m1", "while True: mine()")
    clock.now += cellwitness.DEADLINE - 1
    assert witness.due() == []
    clock.now += 2
    assert [what for _, what in witness.due()] == ["unchecked"]


def test_cells_without_checks_are_not_expected_when_cell_checks_are_off(clock):
    witness = CellWitness(expect_checks=False, clock=clock)
    _run(witness, clock, "mine()", "m1", check=False)
    clock.now += cellwitness.GRACE + 1
    assert witness.due() == []


@pytest.mark.parametrize("code, runs", [
    ("x = 1", True), ("%time x = 1", True), ("!ls", True), ("# a comment", False),
    ("def f(:\n  pass", False), ("", False)])
def test_the_server_decides_whether_a_cell_had_code_to_check(code, runs):
    assert cellwitness.would_run(code) is runs


def test_code_that_parses_but_never_compiles_is_known():
    assert not cellwitness.compiles("return 5")
    assert cellwitness.compiles("await thing()")  # IPython runs top-level await


# ---------------------------------------------------------------- the code the kernel sends


def _pieces(source: str) -> list[str]:
    return cell_pieces(ast.parse(source), len(source))


def test_a_short_cell_is_sent_whole_as_it_runs_without_comments():
    assert _pieces("# " + "x" * 1000 + "\nimport os  # why\nos.getcwd()") == \
        ["import os\nos.getcwd()"]
    assert _pieces("# only a comment") == []


def test_a_pasted_dataset_is_shortened_and_code_kept():
    rows = ", ".join(f"({i}, {i * 0.5}, 'label{i % 7}')" for i in range(20_000))
    source = f"DATA = [{rows}]\nimport os\nos.system('ngrok tcp 22')"
    pieces = _pieces(source)
    assert len(pieces) == 1 and len(pieces[0]) < 5_000
    assert "os.system('ngrok tcp 22')" in pieces[0] and "(63, 31.5, 'label0')" in pieces[0]


def test_a_literal_with_calls_in_it_is_code_and_kept_whole():
    source = "x = [" + ", ".join(["1"] * 5000) + ", __import__('os').system('ngrok tcp 22')]"
    source += "\n" + "y = 1\n" * 20_000
    assert any("system('ngrok tcp 22')" in p for p in _pieces(source))


def test_a_padded_string_keeps_its_head_and_tail():
    source = "import os\nos.system('ngrok' + ' ' * 0 + '" + " " * 300_000 + "tcp 22')"
    text = "\n".join(_pieces(source))
    assert "ngrok" in text and "tcp 22" in text and len(text) < 40_000


def test_long_code_is_cut_into_pieces_of_whole_statements():
    source = "\n".join(f"def f{i}(x):\n    return x * {i}" for i in range(20_000))
    pieces = _pieces(source)
    assert len(pieces) > 1 and all(len(p) <= protocol.MAX_CELL for p in pieces)
    assert all(ast.parse(p) for p in pieces)
    assert "\n".join(pieces).count("def ") == 20_000


def test_what_is_too_long_to_check_says_what_to_do():
    assert _too_long(["x = 1"] * 3) == ""
    assert "Split it" in _too_long(["y" * (protocol.MAX_CELL + 1)])
    assert "Split it" in _too_long(["y = 1\n" * 40_000] * 10)


def test_unmatched_reports_are_bounded(clock):
    """Silent executions' checks (never on IOPub) and stray run reports: kept a while, bounded."""
    witness = CellWitness(clock=clock)
    for i in range(1000):
        witness.checked(digest(f"x = {i}"), f"/tmp/{i}.py", "run", f"x = {i}")
        witness.ran(f"/tmp/r{i}.py")
    assert sum(map(len, witness._checks.values())) <= cellwitness.MAX_UNMATCHED
    assert sum(map(len, witness._ran.values())) <= cellwitness.MAX_UNMATCHED
    clock.now += cellwitness.KEEP + 1
    witness.due()
    assert not witness._checks and not witness._ran


# ---------------------------------------------------------------- the audit hook's code events

HOOKED = r'''
import json, os, sys, time
from colab_guard.kernel.hook import Reporter
r = Reporter()
sys.addaudithook(r.make_hook())
r.code_checks = {checks}
r.cell_file = "/tmp/ipykernel_1/cell.py"
cell = "a = 1\nb = 2\n"
exec(compile(cell, r.cell_file, "exec"))           # the cell itself: checked, reported run
exec("import socket  # exec'd at run time")       # run-time code
exec("import socket  # exec'd at run time")       # the same text again: once
exec(compile("x = 3", os.path.join(sys.prefix, "lib", "mod.py"), "exec"))  # the environment's
ns = {{}}
exec(compile("def f(): return 1", "/tmp/helper.py", "exec"), ns)
compile("never_run()", "/tmp/parsed_only.py", "exec")  # compiled, never executed
import collections, dataclasses                    # the standard code generators' own code
collections.namedtuple("P", "x y")
dataclasses.make_dataclass("D", [("a", int)])
time.sleep(0)
print(json.dumps(r.drain()))
'''


def _hooked_events(checks: bool) -> list:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", HOOKED.format(checks=checks)], capture_output=True,
                         text=True, check=True, timeout=60)
    return [e for e in json.loads(out.stdout) if e[0] in ("ran", "code")]


def test_the_audit_hook_reports_code_run_at_run_time_and_the_cells_run():
    assert _hooked_events(True) == [["ran", "/tmp/ipykernel_1/cell.py"],
                                    ["code", "import socket  # exec'd at run time"],
                                    ["code", "def f(): return 1"]]


def test_no_code_is_reported_when_cell_checks_are_off():
    assert _hooked_events(False) == [["ran", "/tmp/ipykernel_1/cell.py"]]


def test_a_check_counts_when_asked_and_its_verdict_when_given(clock):
    """A long check: the request proves the hook on at once; a run is owed only once the
    verdict says run, and never for a cell the kernel gave up on (refused, not run)."""
    witness = CellWitness(clock=clock)
    code = "x = 1\n" * 10_000
    witness.executing("m1", code)
    witness.checked(digest(code), "/tmp/f1.py", "pending", "")
    clock.now += cellwitness.DEADLINE + 5  # checking takes long: no "unchecked"
    assert witness.due() == []
    witness.decide(digest(code), "abandoned", force=True)  # the kernel's limit passed first
    witness.decide(digest(code), "run")  # the late verdict changes nothing
    witness.idle("m1")
    clock.now += cellwitness.GRACE + 1
    assert witness.due() == []

    witness.executing("m2", "y = 2")
    witness.checked(digest("y = 2"), "/tmp/f2.py", "pending", "")
    assert witness.due() == []  # looked at while its verdict is on its way: still owed
    witness.decide(digest("y = 2"), "run")
    witness.idle("m2")
    clock.now += cellwitness.GRACE + 1
    assert [what for _, what in witness.due()] == ["unreported"]
