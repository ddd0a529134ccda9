"""Red team, session 17: the cell check's newest rules (a runner bound through the cell's
namespace, comprehensions read as loops, words an earlier cell spelled plainly) as an abuser
who read them.

Found missed, each a cell that really starts ``ngrok tcp 22`` (``_runs_ngrok``):
- the namespace reached another way: a name bound to it (``g = globals()``), its methods
  called unbound (``dict.update(globals(), …)``, ``operator.setitem``), ``|=``, the
  ``builtins`` module's (a builtin is what a bare name is when no variable has it), the
  ``__main__`` module's ``__dict__`` by a computed key or ``__import__``;
- a table of runners put in it whole (``update(t)``, ``zip``, ``dict.fromkeys``,
  ``vars(os)``, a dict comprehension), and ``exec("r(…)", {"r": os.system})``;
- a comprehension with a filter: ``[os.system(c) for c in ['ngrok tcp 22'] if c]`` read
  its variables unbound, so adding ``if c`` undid the loop reading;
- the command an instance of the cell's own ``class S(str)``: not folded at all.
Fixed in detect/cells.py (``_is_namespace``/``_names_module``, ``_UNBOUND_DICT_SETTERS``,
``_namespace_table``, ``ANY_NAME``, ``_Filter``, ``_made_from_str``). Left then (xfail):
what no loop reading of the check followed either; fixed in session 18 (FIXED_LATER).

The earlier-words rule (``CellMemory.words``) turns ``hidden:`` into ``text:`` only: a
string spelled plainly is never refused either, so it lets nothing through that a plain
spelling did not; a program started is still a ``run:`` line (tested below)."""

from __future__ import annotations

import pytest

from tests.test_redteam_cells13 import FORBIDDEN, stand_in_path  # noqa: F401  (a fixture)
from tests.test_redteam_cells16 import _runs_ngrok
from tests.test_redteam_evasions import _cell_signatures

HEAD = "import os, sys, builtins, operator\n"
CALL = "\nr('ngrok tcp 22')"

#: A runner bound to ``r`` through the cell's namespace, reached in a way not read before.
NAMESPACE_BINDINGS = [
    ("a name for globals(), subscript", "g = globals()\ng['r'] = os.system"),
    ("a name for globals(), update", "g = globals()\ng.update(r=os.system)"),
    ("a name for vars(), update", "g = vars()\ng.update(r=os.system)"),
    ("g |= {…}", "g = globals()\ng |= {'r': os.system}"),
    ("globals().__ior__", "globals().__ior__({'r': os.system})"),
    ("operator.ior(globals(), …)", "operator.ior(globals(), {'r': os.system})"),
    ("dict.update(globals(), …)", "dict.update(globals(), r=os.system)"),
    ("dict.__setitem__(globals(), …)", "dict.__setitem__(globals(), 'r', os.system)"),
    ("operator.setitem(globals(), …)", "operator.setitem(globals(), 'r', os.system)"),
    ("builtins.__dict__[…]", "builtins.__dict__['r'] = os.system"),
    ("builtins.__dict__.update", "builtins.__dict__.update(r=os.system)"),
    ("vars(builtins).update", "vars(builtins).update(r=os.system)"),
    ("sys.modules[computed key].__dict__",
     "sys.modules['__ma' + 'in__'].__dict__['r'] = os.system"),
    ("sys.modules.get('__main__').__dict__.update",
     "sys.modules.get('__main__').__dict__.update(r=os.system)"),
    ("vars(sys.modules['__main__'])[…]", "vars(sys.modules['__main__'])['r'] = os.system"),
    ("__import__('__main__').r", "__import__('__main__').r = os.system"),
    ("importlib.import_module('__main__').r",
     "import importlib\nimportlib.import_module('__main__').r = os.system"),
    ("update(dict(r=…))", "globals().update(dict(r=os.system))"),
    ("update of a table named before", "t = {'r': os.system}\nglobals().update(t)"),
    ("update(zip(…))", "globals().update(zip(['r'], [os.system]))"),
    ("update(dict.fromkeys(…))", "globals().update(dict.fromkeys(['r'], os.system))"),
    ("update of a dict comprehension", "globals().update({k: os.system for k in ['r']})"),
    ("a key only known when it runs", "k = os.environ.get('K', 'r')\nglobals()[k] = os.system"),
    ("exec with globals of its own", "exec(\"r('ngrok tcp 22')\", {'r': os.system})\nr = print"),
    ("exec with locals of its own",
     "exec(\"r('ngrok tcp 22')\", {}, {'r': os.system})\nr = print"),
    ("eval with globals of its own", "eval(\"r('ngrok tcp 22')\", {'r': os.system})\nr = print"),
    ("a name for the __main__ module", "m = sys.modules['__main__']\nm.r = os.system"),
    ("getattr(__main__, '__dict__')",
     "getattr(sys.modules['__main__'], '__dict__')['r'] = os.system"),
    ("a name for globals() by a walrus", "(g := globals())['r'] = os.system"),
    ("a name for globals() among others", "g, h = globals(), 1\ng['r'] = os.system"),
    ("a function of the cell's replaced", "def r(c):\n    print(c)\n"
                                          "globals().update(zip(['r'], [os.system]))"),
]

#: A module's members put in the namespace by name: its runners then called bare.
MODULE_MEMBERS = [
    ("update(vars(os))", "globals().update(vars(os))"),
    ("update(os.__dict__)", "globals().update(os.__dict__)"),
    ("update({n: getattr(os, n) for n in …})",
     "globals().update({n: getattr(os, n) for n in ['system']})"),
]

#: A comprehension that filters its rows: read as a loop with an ``if`` inside.
FILTERED = [
    ("a filter on the item", "[os.system(c) for c in ['ngrok tcp 22'] if c]"),
    ("a filter that is always true", "[os.system(c) for c in ['ngrok tcp 22'] if 1]"),
    ("a generator with a filter", "any(os.system(c) for c in ['ngrok tcp 22'] if c)"),
    ("a filter on the second loop",
     "[os.system(a + b) for a in ['ngrok'] for b in [' tcp 22'] if b]"),
    ("the run in the filter", "[0 for c in ['ngrok tcp 22'] if os.system(c)]"),
    ("a dict comprehension with a filter",
     "{c: os.system(c) for c in ['ngrok tcp 22', 'x'] if len(c) > 1}"),
]

#: Found missed on the way: an instance of the cell's own str class passed as the command
#: (not folded at all). Folded now, where the class replaces none of str's methods; a filter
#: or an ``if`` it goes through then drops no row (a comparison may be set on the class later).
STR_CLASS = "class S(str):\n    def describe(self):\n        return 'a command'\n"
STR_CLASSES = [
    ("a str class's instance run", STR_CLASS + "os.system(S('ngrok tcp 22'))"),
    ("a str class's instances looped over", STR_CLASS + "for c in [S('ngrok tcp 22')]:\n"
                                                        "    os.system(c)"),
    ("a str class's comparison set later, in a filter",
     STR_CLASS + "S.__ne__ = lambda self, other: True\n"
                 "[os.system(c) for c in [S('ngrok tcp 22')] if c != 'ngrok tcp 22']"),
    ("a str class's comparison set later, in a loop's if",
     STR_CLASS + "S.__eq__ = lambda self, other: True\nfor c in [S('ngrok tcp 22')]:\n"
                 "    if c == 'ls':\n        os.system(c)"),
]

FIXED = [(what, HEAD + binding + CALL) for what, binding in NAMESPACE_BINDINGS] + \
    [(what, HEAD + binding + "\nsystem('ngrok tcp 22')") for what, binding in MODULE_MEMBERS] + \
    [(what, HEAD + cell) for what, cell in FILTERED + STR_CLASSES]


@pytest.mark.parametrize("what, cell", FIXED, ids=[f[0] for f in FIXED])
def test_a_runner_through_the_namespace_or_a_filtered_comprehension_is_refused(what, cell):
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("what, cell", FIXED, ids=[f[0] for f in FIXED])
def test_each_evasion_really_starts_ngrok(what, cell, stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok(cell, stand_in_path, tmp_path, what)


def test_a_namespace_bound_in_one_cell_is_the_namespace_in_the_next():
    assert FORBIDDEN in _cell_signatures("g = globals()", HEAD + "g['r'] = os.system" + CALL)
    assert FORBIDDEN in _cell_signatures(HEAD + "globals().update(zip(['r'], [os.system]))",
                                         "r('ngrok tcp 22')")


#: Left by this session (strict xfails then), fixed in session 18 (tests/test_redteam_cells18.py
#: has their variants and honest near-misses): plain tests now.
FIXED_LATER = [
    ("an async comprehension over an async generator",
     "import asyncio\nasync def m():\n    async def g():\n        yield 'ngrok tcp 22'\n"
     "    return [os.system(c) async for c in g()]\nasyncio.run(m())"),
    ("a comprehension binding a starred target",
     "{os.system(' '.join(r)) for *r, in [('ngrok', 'tcp', '22')]}"),
    ("a comprehension binding an item",
     "d = {}\n[os.system(d['c']) for d['c'] in ['ngrok tcp 22']]"),
    ("a runner taken from a dict comprehension by key",
     "r = {n: getattr(os, n) for n in ['system']}['system']\nr('ngrok tcp 22')"),
    ("a str class replacing a comparison",
     "class S(str):\n    def __ne__(self, other):\n        return True\n"
     "os.system(S('ngrok tcp 22'))"),
    ("the namespace's __setitem__ mapped",
     "list(map(globals().__setitem__, ['r'], [os.system]))\nr('ngrok tcp 22')"),
    ("__builtins__ as a dict or a module",
     "getattr(__builtins__, '__dict__', __builtins__)['r'] = os.system\nr('ngrok tcp 22')"),
]


@pytest.mark.parametrize("what, cell", FIXED_LATER, ids=[c[0] for c in FIXED_LATER])
def test_an_evasion_left_then_fixed_later_is_refused(what, cell):
    assert FORBIDDEN in _cell_signatures(HEAD + cell), what


@pytest.mark.parametrize("what, cell", FIXED_LATER, ids=[c[0] for c in FIXED_LATER])
def test_each_evasion_fixed_later_really_starts_ngrok(what, cell, stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok(HEAD + cell, stand_in_path, tmp_path, what)


@pytest.mark.parametrize("cell", [
    "import yaml\ncfg = yaml.safe_load('lr: 0.1')\nglobals().update(cfg)\nprint(lr)",
    "import argparse\np = argparse.ArgumentParser()\np.add_argument('--tool', default='ngrok')\n"
    "globals().update(vars(p.parse_args([])))\nprint(tool)",
    "import __main__, subprocess\ndef sh(c):\n    return subprocess.run(c, shell=True)\n"
    "__main__.sh = sh\nsh('ls -la')",
    "import __main__, subprocess\n__main__.run = subprocess.run\n"
    "run(['echo', 'ngrok tcp 22 is blocked'])",
    "g = globals()\nprint(sorted(k for k in g if not k.startswith('_')))",
    "exec('print(x)', {'x': 1})",
    "exec('y = 2', globals())\nprint(y)",
    "import os\nglobals().update(zip(['r'], [os.getcwd]))\nprint(r())",
    "import os\nglobals().update(zip(['r'], [os.system]))\ndef show(c):\n    print(c)\n"
    "show('ngrok tcp 22')",
    "import os\nsizes = {d: os.path.getsize(d) for d in ['ngrok', 'xmrig'] if os.path.exists(d)}",
    "import os\nfiles = {d: os.listdir(d) for d in ['ngrok', 'frpc']}",
    "import os\n[os.system(c) for c in ['ngrok tcp 22', 'ls'] if c != 'ngrok tcp 22']",
    "import os\n[os.system(c) for c in ['ngrok tcp 22', 'ls'] if not c.startswith('ngrok')]",
    "import subprocess\nclass Cmd(str):\n    pass\nsubprocess.run(Cmd('ls -la'), shell=True)",
], ids=["a YAML config", "argparse arguments", "a helper in __main__", "a runner in __main__ "
        "echoing", "globals listed", "exec with a table", "exec in globals", "a getter in a "
        "zip", "the cell's own function", "sizes of folders named as tools",
        "listings of folders named as tools", "a filter that drops the row",
        "a filter by a string predicate", "a str class's command"])
def test_honest_namespace_and_comprehension_cells_are_left_alone(cell):
    assert _cell_signatures(cell) == set()


def test_words_an_earlier_cell_spelled_do_not_hide_a_program_started():
    """A name disguised after an earlier cell spelled it is ``text:``, as it spelled plainly
    would be (neither refuses a cell); started, it is still a ``run:`` line."""
    earlier = "print('ngrok tcp is blocked here')"
    disguised = "import os\nt = ''.join(chr(c) for c in [110, 103, 114, 111, 107])\n"
    assert FORBIDDEN in _cell_signatures(earlier, disguised + "os.system(t + ' tcp 22')")
    assert FORBIDDEN in _cell_signatures(
        earlier, disguised + "globals().update(zip(['r'], [os.system]))\nr(t + ' tcp 22')")
