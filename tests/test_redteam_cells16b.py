"""Red team, session 16 (b): the cut of deep expressions, read by one who has read it.

``_cut_deep`` cuts what is nested past ``MAX_DEPTH`` in a statement and reads the calls (and
walrus bindings) found there as statements of their own, their arguments cut at
``MAX_CUT_CALL_DEPTH``. Two ways around it, both fixed: those statements shared their nodes,
so cutting the arguments of an outer call cut those of a call twenty levels down in it
(``os.system('ngrok tcp 22')`` read as ``os.system(CUT)``, ``f := os.system`` as
``f = CUT.system``); and every argument was cut at 24 levels, so a command assembled from
thirty pieces was unknown there though read anywhere else. Code run from a string (exec,
``python -c``) was neither cut nor read statement by statement: a deep statement first hid
the rest (now cut, and refused when too deep to parse here, or to read: blocks of exec of
blocks). Left (xfail): a runner chosen past MAX_DEPTH (by conditionals: brackets nest 200
levels at most, within the depth read) is cut with the rest of the value. And the reading's cost: a method chain was named anew from each of its links, a sum
of calls folded anew at each level (cells of them read for minutes)."""

from __future__ import annotations

import time

import pytest

from colab_guard.detect.cells import MAX_DEPTH, UNREAD_TOO_DEEP, analyse_cell
from tests.test_redteam_cells13 import FORBIDDEN, stand_in_path  # noqa: F401  (a fixture)
from tests.test_redteam_cells16 import _runs_ngrok
from tests.test_redteam_evasions import _cell_signatures

PAST_THE_CUT = " + 1" * (MAX_DEPTH + 50)  # what precedes it is nested past MAX_DEPTH


def _in_calls(count: int, inner: str) -> str:
    return "str(" * count + inner + ")" * count


#: Cells whose program is started from inside what the cut takes away.
EVASIONS = [
    ("a runner call twenty calls down in a cut sum",
     "import os\nx = len(" + _in_calls(20, "os.system('ngrok tcp 22')") + ")" + PAST_THE_CUT),
    ("a runner call twenty-one calls down in a cut sum",
     "import os\nx = len(" + _in_calls(21, "os.system('ngrok tcp 22')") + ")" + PAST_THE_CUT),
    ("a walrus naming the runner twenty calls down in a cut sum",
     "import os\nx = len(" + _in_calls(20, "(f := os.system)") + ")" + PAST_THE_CUT
     + "\nf('ngrok tcp 22')"),
    ("a command of thirty pieces in a call in a cut sum",
     "import os\nx = os.system('ngrok'" + " + ''" * 30 + " + ' tcp 22')" + PAST_THE_CUT),
]


#: Code run from a string (exec, ``python -c``) with a statement too deep for a recursive
#: reader first: it was read whole, neither cut nor statement by statement, and the reading
#: gave up at the deep statement (RecursionError), the programs after it unseen.
_DEEP_CODE = "x = 1" + " + 1" * 1000 + "\nimport os\nos.system('ngrok tcp 22')"
_BLOCKS = 60


def _in_blocks(code: str, blocks: int = _BLOCKS) -> str:
    return "".join("    " * i + "if True:\n" for i in range(blocks)) + "".join(
        "    " * blocks + line + "\n" for line in code.split("\n"))


def _exec_in_blocks(levels: int) -> str:
    """Blocks holding exec of blocks … (each level's blocks read on the same stack), the last
    with calls nested 149 deep, then a runner named and called."""
    code = _in_blocks("x = " + "abs(" * 149 + "1" + ")" * 149
                      + "\nimport os\nr = os.system\nr('ngrok tcp 22')")
    for _ in range(levels):
        code = _in_blocks(f"exec({code!r})")
    return code


EVASIONS += [
    ("exec of code with a 1,000-term sum first", f"exec({_DEEP_CODE!r})"),
    ("exec in a function, of code with a 1,000-term sum first",
     f"def g():\n    exec({_DEEP_CODE!r})\ng()"),
    ("python -c of code with a 1,000-term sum first",
     f"import subprocess\nsubprocess.run(['python3', '-c', {_DEEP_CODE!r}])"),
]


@pytest.mark.parametrize("what, cell", EVASIONS, ids=[e[0] for e in EVASIONS])
def test_a_program_started_inside_a_cut_expression_is_refused(what, cell):
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("what, cell", EVASIONS, ids=[e[0] for e in EVASIONS])
def test_each_cut_evasion_really_starts_ngrok(what, cell, stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok(cell, stand_in_path, tmp_path, what)


def test_code_run_from_a_string_too_deep_to_parse_here_is_refused(stand_in_path, tmp_path):
    """As a cell too deep to parse (test_redteam_cells16): the cell raised the limit first."""
    code = "x = 1" + " + 1" * 5000 + "\nimport os\nos.system('ngrok tcp 22')"
    cell = f"import sys\nsys.setrecursionlimit(100_000)\nexec({code!r})"
    assert analyse_cell(cell).unread == UNREAD_TOO_DEEP
    assert "tcp 22" in _runs_ngrok(cell, stand_in_path, tmp_path, "exec of a 5,000-term sum")


def test_blocks_of_exec_of_blocks_past_what_the_reader_holds_are_refused(stand_in_path, tmp_path):
    """Each level's blocks are read on the same stack: past the recursion limit the reading
    gave up on the statement, the assignment of ``r`` in it unseen (then, read piece by
    piece, each piece failed anew: seconds a statement). Refused, as a cell too deep to
    parse; with one level of exec it is read and found."""
    assert analyse_cell(_exec_in_blocks(3)).unread == UNREAD_TOO_DEEP
    assert "tcp 22" in _runs_ngrok(_exec_in_blocks(3), stand_in_path, tmp_path,
                                   "exec of exec of exec in blocks")
    assert analyse_cell(_exec_in_blocks(1)).unread == ""
    assert FORBIDDEN in _cell_signatures(_exec_in_blocks(1))


def test_the_same_cells_within_the_depth_read_were_found_already():
    """What the cut lost, not what the reader never read: each shape, nested less deeply."""
    for _, cell in EVASIONS:
        shallower = cell.replace(PAST_THE_CUT, "").replace(" + 1" * 1000, " + 1" * 100)
        assert FORBIDDEN in _cell_signatures(shallower), cell[:60]


def _conditional(levels: int, leaf: str) -> str:
    """``leaf`` chosen by ``levels`` conditionals: no brackets, so nested past the 200 levels
    Python allows brackets."""
    return "print if 0 else " * levels + leaf


def _cut_runners(levels: int) -> list[tuple[str, str]]:
    return [(f"a runner chosen by conditionals {levels} deep",
             "import os\nr = " + _conditional(levels, "os.system") + "\nr('ngrok tcp 22')")]


def _held_in_lists(levels: int) -> tuple[str, str]:
    return (f"a runner held in lists {levels} deep",
            "import os\nr = " + "[" * levels + "os.system" + "]" * levels + "\nr" + "[0]" * levels
            + "('ngrok tcp 22')")


CUT_RUNNERS = _cut_runners(MAX_DEPTH + 100)
#: within the depth read: conditionals half of MAX_DEPTH, lists 180 deep (brackets nest 200
#: levels at most, the statement and the call one more each)
WITHIN = [*_cut_runners(MAX_DEPTH // 2), _held_in_lists(180)]


@pytest.mark.xfail(strict=True, reason=(
    "a value nested past MAX_DEPTH is cut to a name the check does not know (CUT): only the "
    "calls and walrus bindings down there are read on their own, so a runner merely chosen "
    "or held there (no call, no walrus) is lost with it, and the name it is assigned to "
    "calls nothing known; reading it would need the whole value, the recursion the cut "
    "avoids. Within MAX_DEPTH the same shapes are found (test below)"))
@pytest.mark.parametrize("what, cell", CUT_RUNNERS, ids=[c[0] for c in CUT_RUNNERS])
def test_a_runner_chosen_or_held_past_the_cut_is_refused(what, cell):
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("what, cell", CUT_RUNNERS, ids=[c[0] for c in CUT_RUNNERS])
def test_each_cut_runner_really_starts_ngrok(what, cell, stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok(cell, stand_in_path, tmp_path, what)


@pytest.mark.parametrize("what, cell", WITHIN, ids=[c[0] for c in WITHIN])
def test_a_runner_chosen_or_held_within_the_depth_read_is_refused(what, cell):
    assert FORBIDDEN in _cell_signatures(cell), what


#: Honest cells as deep: generated formulas, nested data, long pipelines.
HONEST = [
    ("a generated formula of nested calls 180 deep",
     "import math\nx = 0.5\ny = " + "math.sin(" * 90 + "math.cos(" * 90 + "x" + ")" * 180
     + "\nprint(y)\n"),
    ("nested JSON-like data 180 deep", "d = " + "{'a': [" * 90 + "1" + "]}" * 90 + "\n"),
    ("a pandas pipeline of 200 links",
     "import pandas as pd\ndf = pd.DataFrame({'a': [1]})\nout = df" + ".pipe(lambda d: d)" * 200
     + ".reset_index()\n"),
    ("a concatenation of 300 calls", "s = " + " + ".join(f"str({i})" for i in range(300)) + "\n"),
]


@pytest.mark.parametrize("what, cell", HONEST, ids=[h[0] for h in HONEST])
def test_an_honest_deep_cell_is_read_without_a_finding(what, cell):
    assert _cell_signatures(cell) == set(), what
    assert analyse_cell(cell).unread == ""


def test_a_cell_of_method_chains_is_read_in_bounded_time():
    """Each link of ``df.pipe(f).pipe(f)…`` was named anew down the whole chain (0.5 s a line
    of 74 links here, minutes for a 256 KiB cell of them); the name is looked for through
    MAX_NAMED_CHAIN calls only. Measured at 3 s here (26 s before); 10 s as the other bounds."""
    cell = "\n".join("x = df" + ".pipe(f)" * 74 for _ in range(60))
    start = time.thread_time()  # CPU spent here: a busy machine is not the reading's cost
    assert analyse_cell(cell).commands == []
    assert time.thread_time() - start < 10


def test_a_cell_of_sums_of_calls_is_read_in_bounded_time():
    """Each level of ``f(1) + f(1) + …`` was folded, and each fold folded the calls of the
    fifty levels below it though the sum below had not folded (0.065 s a line of 160 terms,
    25 s for a 256 KiB cell of them). Measured at 4 s here (15 s before)."""
    cell = "\n".join("x = " + "+".join(["f(1)"] * 160) for _ in range(200))
    start = time.thread_time()  # CPU spent here: a busy machine is not the reading's cost
    assert analyse_cell(cell).commands == []
    assert time.thread_time() - start < 10


def test_a_module_member_named_through_a_few_calls_is_still_found():
    """The bound on chained calls keeps what a chain names a runner through."""
    assert FORBIDDEN in _cell_signatures(
        "__import__('ctypes').CDLL(None).system(b'ngrok tcp 22')")
    assert FORBIDDEN in _cell_signatures(
        "import importlib\nimportlib.import_module('os').system('ngrok tcp 22')")
