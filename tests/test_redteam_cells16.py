"""Red team, session 16: cells nested too deeply for the cell check's reader.

The reader walks a cell's tree by recursion. A statement nested past the recursion limit (a
sum of a thousand terms, 450 unary minus signs) raised RecursionError, and the reader gave
up on the rest of the cell: any cell prefixed with such a line ran unchecked. A cell deeper
still (a sum of 3,000 terms) did not even parse in the server, and was taken for one that
cannot run, though a kernel that raised its own recursion limit compiles and runs it. Now
expressions are read down to ``MAX_DEPTH`` and cut below (their calls read on their own,
``_cut_deep``), and a cell the server cannot parse for its depth is refused
(``CellAnalysis.unread``). Each evasion really starts ``ngrok`` when run; honest deep cells
(generated formulas) are read without a finding, in bounded time."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from colab_guard.detect.cells import MAX_DEPTH, UNREAD_TOO_DEEP, analyse_cell
from tests.test_redteam_cells13 import FORBIDDEN, stand_in_path  # noqa: F401  (a fixture)
from tests.test_redteam_evasions import _cell_signatures

PAYLOAD = "import os\nos.system('ngrok tcp 22')\n"
SUM_1000 = "x = 1" + " + 1" * 1000  # compiles under Python's default recursion limit
SUM_5000 = "x = 1" + " + 1" * 5000  # compiles once the limit is raised

#: Cells that start ngrok after (or from within) a statement too deep for a recursive reader.
EVASIONS = [
    ("a sum of 1,000 terms first", SUM_1000 + "\n" + PAYLOAD),
    ("450 unary minus signs first", "x = " + "-" * 450 + "1\n" + PAYLOAD),
    ("deep first, in a block", "if True:\n    " + SUM_1000 + "\n    " + PAYLOAD.replace("\n", "\n    ")),
    ("the call at the bottom of the sum", "import os\nx = os.system('ngrok tcp 22')" + " + 1" * 1000),
    ("the call at the top of the sum", "import os\nx = 1" + " + 1" * 1000 + " + os.system('ngrok tcp 22')"),
    ("the call in the middle, inside another call",
     "import os\nx = 1" + " + 1" * 500 + " + len(str(os.system('ngrok tcp 22')))" + " + 1" * 500),
    ("the call in a deep list", "import os\nx = " + "[" * 180 + "os.system('ngrok tcp 22')" + "]" * 180),
    ("a runner named by a walrus deep in a sum",
     "import os\nx = 1" + " + 1" * 1000 + " + len([f := os.system])\nf('ngrok tcp 22')"),
    ("a command named by a walrus deep in a sum",
     "import os\nx = 1" + " + 1" * 1000 + " + len(c := 'ngrok tcp 22')\nos.system(c)"),
]


@pytest.mark.parametrize("what, cell", EVASIONS, ids=[e[0] for e in EVASIONS])
def test_a_cell_behind_or_inside_a_deep_expression_is_refused(what, cell):
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("what, cell", EVASIONS, ids=[e[0] for e in EVASIONS])
def test_each_deep_evasion_really_starts_ngrok(what, cell, stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok(cell, stand_in_path, tmp_path, what)


def test_a_cell_too_deep_to_parse_here_is_refused_not_taken_for_one_that_cannot_run(
        stand_in_path, tmp_path):
    """The server's parser gives up on it under its recursion limit; a kernel that raised its
    own runs it: so the check refuses it, saying why and what to do."""
    cell = SUM_5000 + "\n" + PAYLOAD
    assert analyse_cell(cell).unread == UNREAD_TOO_DEEP
    assert "Split the expression" in UNREAD_TOO_DEEP
    assert "tcp 22" in _runs_ngrok(cell, stand_in_path, tmp_path, "a 5,000-term sum",
                                   recursion_limit=100_000)


def test_a_deep_runner_argument_is_cut_not_read_wrongly():
    """Known and left: a command assembled by a sum deeper than MAX_DEPTH is not folded
    (cut: nothing the check knows), as any argument known only when it runs; the sampler
    stops what it starts. What is read of the call is that it runs something unknown."""
    cell = "import os\nos.system('ngrok' + ''" + " + ''" * (MAX_DEPTH + 10) + " + ' tcp 22')"
    assert FORBIDDEN not in _cell_signatures(cell)


def _runs_ngrok(cell: str, stand_in_path, tmp_path, what: str, recursion_limit: int = 0) -> str:
    """Runs the cell in Python with the stand-in ngrok first on PATH: what ngrok was started
    with (asserted to be `tcp 22`)."""
    started = stand_in_path / "started"
    started.unlink(missing_ok=True)
    script = tmp_path / "cell.py"
    script.write_text(cell)
    raise_limit = f"import sys; sys.setrecursionlimit({recursion_limit})\n" if recursion_limit else ""
    runner = raise_limit + f"exec(compile(open({str(script)!r}).read(), 'cell', 'exec'))"
    env = dict(os.environ, PATH=f"{stand_in_path}:{os.environ['PATH']}")
    subprocess.run([sys.executable, "-c", runner], env=env, cwd=tmp_path, timeout=60,
                   capture_output=True)
    assert started.exists() and "tcp 22" in started.read_text(), what
    return started.read_text()


#: Honest cells as deep: generated formulas, long sums of calls, nested data.
HONEST = [
    ("a generated polynomial of 1,000 terms",
     "import math\nx, y = 0.5, 2.0\n"
     "p = " + " + ".join(f"{i}*x**{i % 7}*y - math.sin({i}*x)" for i in range(1000))
     + "\nprint(p)\n"),
    ("a sum of 1,000 calls", "import numpy as np\ns = " + " + ".join(
        f"np.float64({i})" for i in range(1000)) + "\nprint(s)\n"),
    ("nested lists 120 deep", "x = " + "[" * 120 + "1" + "]" * 120 + "\nprint(len(x))\n"),
    ("a long string concatenation", "s = " + " + ".join(f"'part {i} '" for i in range(2000))
     + "\nprint(len(s))\n"),
]


@pytest.mark.parametrize("what, cell", HONEST, ids=[h[0] for h in HONEST])
def test_an_honest_deep_cell_is_read_without_a_finding_in_bounded_time(what, cell):
    """Measured at 0.05 to 0.3 s here; 10 s (as the other large cells' bound) means a
    reading that grows with the depth."""
    start = time.thread_time()  # CPU spent here: a busy machine is not the reading's cost
    assert _cell_signatures(cell) == set(), what
    assert analyse_cell(cell).unread == ""
    assert time.thread_time() - start < 10


def test_a_statement_the_reader_fails_on_still_has_its_calls_read(monkeypatch):
    """A bug of the reader's on one statement (forced here: reading any assignment fails)
    skipped that statement whole, and a cell could be built to hit one: its calls are read
    on their own."""
    from colab_guard.detect import cells

    def broken(self, node):
        raise ValueError("a reading bug")

    monkeypatch.setattr(cells._Reader, "visit_Assign", broken)
    assert FORBIDDEN in _cell_signatures("import os\nx = os.system('ngrok tcp 22')")
    assert FORBIDDEN in _cell_signatures("import os\nx = [len(str(os.system('ngrok tcp 22')))]")
    assert _cell_signatures("import os\nx = os.getcwd()") == set()


#: Found missed by the red team (shallow, not a matter of depth): a dict comprehension was
#: read as no loop at all, and a comprehension of two loops only with its variables unbound.
#: Now each is read as the loops it runs (``_as_loops``); one that filters (``if``) is read
#: as before.
COMPREHENSIONS = [
    ("a dict comprehension's value", "import os\nd = {c: os.system(c) for c in ['ngrok tcp 22']}"),
    ("a dict comprehension's key", "import os\nd = {os.system(c): 1 for c in ['ngrok tcp 22']}"),
    ("a comprehension of two loops", "import os\nx = [os.system(a + b) for a in ['ngrok ']"
                                     " for b in ['tcp 22']]"),
    ("a generator of two loops over pairs", "import os\nx = list(os.system(a + ' ' + b + ' ' + p)"
                                            " for a, b in [('ngrok', 'tcp')] for p in ['22'])"),
]


@pytest.mark.parametrize("what, cell", COMPREHENSIONS, ids=[c[0] for c in COMPREHENSIONS])
def test_a_program_started_from_a_comprehension_is_refused(what, cell):
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("what, cell", COMPREHENSIONS, ids=[c[0] for c in COMPREHENSIONS])
def test_each_comprehension_really_starts_ngrok(what, cell, stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok(cell, stand_in_path, tmp_path, what)


@pytest.mark.parametrize("cell", [
    "import os\nsizes = {d: os.path.getsize(d) for d in ['a', 'b']}",
    "import subprocess\nout = {c: subprocess.run(['echo', c]) for c in ['ngrok is blocked here']}",
    "grid = [(a, b) for a in ['ngrok', 'frp'] for b in ['tcp 22', 'http']]\nprint(grid)",
], ids=["sizes", "echo of a message", "a grid printed"])
def test_honest_comprehensions_are_left_alone(cell):
    assert _cell_signatures(cell) == set()


#: A malware-family classifier's cells (tests/test_honest_session11.py, NAMED_CELLS): the
#: family names listed plainly in one cell, sliced out of the sample paths in a later one.
#: Sliced, a name is assembled; it hid nothing, since a cell spelled it plainly before.
FAMILIES = ("import os\nDATA = 'families'\nFAMILIES = ['xmrig', 'mirai', 'emotet', 't-rex']\n"
            "paths = [f'{DATA}/{f}/sample.bin' for f in FAMILIES]\n")


@pytest.mark.parametrize("cell", [
    "sizes = {p.split('/')[-2]: os.path.getsize(p) for p in paths}\nprint(sizes)",
    "names = [p.split('/')[-2] for p in paths]\nprint(names)",
    "for p in paths:\n    print(p.split('/')[-2], os.path.getsize(p))",
], ids=["dict comprehension", "list comprehension", "loop"])
def test_names_a_cell_listed_plainly_sliced_out_of_paths_later_are_not_hidden(cell):
    assert _cell_signatures(FAMILIES, cell) == set()


def test_a_name_spelled_in_disguise_with_no_plain_spelling_before_is_hidden():
    disguised = "tool = ''.join(chr(c) for c in [120, 109, 114, 105, 103])"
    assert "cell-hidden-miner-name" in _cell_signatures("import os\nDATA = 'families'", disguised)
    assert "cell-hidden-miner-name" in _cell_signatures(disguised)
    # spelled plainly by an earlier cell, the disguise hides nothing: what the name then
    # runs is what counts (a run: line, or the program the sampler sees)
    assert _cell_signatures(FAMILIES, disguised) == set()
    assert "mining-known-miner" in _cell_signatures(
        FAMILIES, disguised + "\nos.system(tool + ' -o x')")


#: Found missed (session 17): a runner bound to a variable through the cell's namespace by a
#: method of it, or by the ``__main__`` module's attributes, then called by that name.
NAMESPACE_RUNNERS = [
    ("globals().__setitem__", "globals().__setitem__('r', os.system)"),
    ("globals().update(r=…)", "globals().update(r=os.system)"),
    ("globals().update({…})", "globals().update({'r': os.system})"),
    ("globals().update([(…)])", "globals().update([('r', os.system)])"),
    ("globals().setdefault", "globals().setdefault('r', os.system)"),
    ("setattr of sys.modules['__main__']", "setattr(sys.modules['__main__'], 'r', os.system)"),
    ("setattr of sys.modules.get('__main__')",
     "setattr(sys.modules.get('__main__'), 'r', os.system)"),
    ("sys.modules['__main__'].r =", "sys.modules['__main__'].r = os.system"),
    ("__main__.r =", "import __main__\n__main__.r = os.system"),
    ("__main__.__dict__['r'] =", "import __main__\n__main__.__dict__['r'] = os.system"),
    ("a frame's f_globals['r'] =", "sys._getframe().f_globals['r'] = os.system"),
]


@pytest.mark.parametrize("what, binding", NAMESPACE_RUNNERS, ids=[n[0] for n in NAMESPACE_RUNNERS])
def test_a_runner_bound_through_the_namespace_is_refused(what, binding):
    cell = f"import os, sys\n{binding}\nr('ngrok tcp 22')"
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("what, binding", NAMESPACE_RUNNERS[::3],
                         ids=[n[0] for n in NAMESPACE_RUNNERS[::3]])
def test_each_namespace_binding_really_starts_ngrok(what, binding, stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok(f"import os, sys\n{binding}\nr('ngrok tcp 22')",
                                   stand_in_path, tmp_path, what)


@pytest.mark.parametrize("cell", [
    "globals().update(r=print)\nr('ngrok tcp 22 is blocked here')",
    "import sys\nsetattr(sys.modules['__main__'], 'log', print)\nlog('ngrok tcp 22')",
    "import json\nglobals().update(json.loads('{\"lr\": 0.1}'))\nprint(lr)",
    "import os\nd = {}\nd.update(r=os.getcwd)\nprint(d['r']())",
], ids=["print by another name", "a logger", "settings from JSON", "a table of its own"])
def test_honest_namespace_bindings_are_left_alone(cell):
    assert _cell_signatures(cell) == set()
