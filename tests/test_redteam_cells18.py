"""Red team, session 18: the cell check's known misses (strict xfails of sessions 15 and 17)
closed, then the new rules attacked by one who read them.

Closed in detect/cells.py, each a general rule:
- a loop over a generator function of the cell's (``async`` or not) goes through what it
  yields (``_yielded``: its parameters spelled as the call's arguments, a yield in its loops
  once per row, ``yield from``); ``async for`` and async comprehensions are read as loops;
  ``next``/``anext``/``list``/``dict`` of one fold to its items; ``it = g()`` is g's call;
- a loop binding anything but names (``for *r, in``, ``for d["c"] in``, ``for n.c in``) is
  read as binding a name, then assigning the target from it (``_with_named_target``); a
  constant unpacked into starred, nested, item or attribute targets binds each
  (``_unpack_folded``); ``d["c"] = …`` changes a constant table d, or is remembered as that
  item where d is not a constant (``_set_item``, ``_items_set``; a method called on d
  forgets it);
- an item of a comprehension by a known key or index (``{n: getattr(os, n) for n in
  ["system"]}["system"]``, ``[…][0]``, ``next(…)``, ``.get``, ``operator.getitem``,
  ``itemgetter``, ``t[…]`` of ``t = {…}``) is its expression for that row
  (``_comprehension_item``);
- a str class's instance is its text unless the class replaces ``__new__`` (a runner reads
  the text itself; a replaced method can only make the check fold a command the cell
  spells, never hide one it did not hide unfolded) (``_made_from_str``);
- ``map(f, A, B)``/``starmap`` is read as the calls it makes, a lambda's body spelled with
  each row (``_mapped_calls``);
- ``getattr(x, "__dict__", default)``, ``a if c else b``, ``a or b`` is the namespace where
  either may be (``_namespace_attribute``);
- ``m = os`` (or ``m = map``) makes m the module (the builtin); posix's members are os's.
Left (strict xfail, the exact reason): what none of these rules reads; most closed in session
19 (CLOSED_IN_19, tests/test_redteam_cells19.py)."""

from __future__ import annotations

import pytest

from tests.test_redteam_cells13 import FORBIDDEN, stand_in_path  # noqa: F401  (a fixture)
from tests.test_redteam_cells16 import _runs_ngrok
from tests.test_redteam_evasions import _cell_signatures

HEAD = "import os, sys, builtins, operator\n"
G = "def g():\n    yield 'ngrok tcp 22'\n"
ASYNC_G = "import asyncio\nasync def g():\n    yield 'ngrok tcp 22'\n"

#: A loop over what a generator of the cell yields.
GENERATORS = [
    ("a for loop over a generator", G + "for c in g():\n    os.system(c)"),
    ("a comprehension over a generator", G + "[os.system(c) for c in g()]"),
    ("async for over an async generator", ASYNC_G + "async def m():\n    async for c in g():\n"
                                                    "        os.system(c)\nasyncio.run(m())"),
    ("async for over aiter()", ASYNC_G + "async def m():\n    async for c in aiter(g()):\n"
                                         "        os.system(c)\nasyncio.run(m())"),
    ("await anext() of an async generator",
     ASYNC_G + "async def m():\n    os.system(await anext(g()))\nasyncio.run(m())"),
    ("a yield in the generator's loop",
     "def g():\n    for c in ['ls', 'ngrok tcp 22']:\n        yield c\n"
     "for c in g():\n    os.system(c)"),
    ("a yield in two loops of the generator",
     "def g():\n    for a in ['ngrok']:\n        for b in [' tcp 22']:\n            yield a + b\n"
     "for c in g():\n    os.system(c)"),
    ("a generator's parameter yielded",
     "def g(c):\n    yield c\nfor x in g('ngrok tcp 22'):\n    os.system(x)"),
    ("a generator's default yielded",
     "def g(c='ngrok tcp 22'):\n    yield c\nfor x in g():\n    os.system(x)"),
    ("a generator's parameter assigned anew",
     "def g(c):\n    c = 'ngrok tcp 22'\n    yield c\nfor x in g('ls'):\n    os.system(x)"),
    ("an async generator looping over its parameter",
     "import asyncio\nasync def g(t):\n    for c in t:\n        yield c\nasync def m():\n"
     "    async for c in g(['ngrok tcp 22']):\n        os.system(c)\nasyncio.run(m())"),
    ("yield from a list", "def g():\n    yield from ['ls', 'ngrok tcp 22']\nfor c in g():\n"
                          "    os.system(c)"),
    ("yield from another generator", G.replace("g()", "h()") + "def g():\n    yield from h()\n"
                                     "for c in g():\n    os.system(c)"),
    ("a generator defined again after the loop",
     G + "for c in g():\n    os.system(c)\ndef g():\n    yield 'ls'"),
    ("a generator's call kept in a name", G + "it = g()\nfor c in it:\n    os.system(c)"),
    ("a generator under another name", G + "g2 = g\nfor c in g2():\n    os.system(c)"),
    ("next() of a generator", G + "os.system(next(g()))"),
    ("list() of a generator indexed", G + "os.system(list(g())[0])"),
    ("a comprehension of a generator joined",
     "def g():\n    yield 'ngrok'\nos.system(' '.join([c for c in g()] + ['tcp', '22']))"),
    ("map over a generator", G + "list(map(os.system, g()))"),
    ("a generator yielding the runner", "def g():\n    yield os.system\nfor f in g():\n"
                                        "    f('ngrok tcp 22')"),
    ("a yield in try", "def g():\n    try:\n        yield 'ngrok tcp 22'\n    finally:\n"
                       "        pass\nfor c in g():\n    os.system(c)"),
    ("a generator of runner and command pairs",
     "def g():\n    yield os.system, 'ngrok tcp 22'\nfor f, c in g():\n    f(c)"),
    ("a generator's call named by a walrus", G + "for c in (it := g()):\n    os.system(c)"),
    ("a generator chained", "import itertools\n" + G + "for c in itertools.chain(g(), ['ls']):\n"
                            "    os.system(c)"),
    ("a generator enumerated", G + "for i, c in enumerate(g()):\n    os.system(c)"),
    ("a generator zipped", G + "for c, d in zip(g(), ['x']):\n    os.system(c)"),
    ("a generator's keyword argument",
     "def g(c, n=1):\n    yield c\nfor x in g(c='ngrok tcp 22'):\n    os.system(x)"),
    ("a generator yielding a global", "C = 'ngrok tcp 22'\ndef g():\n    yield C\n"
                                      "for x in g():\n    os.system(x)"),
    ("a generator's loop over pairs",
     "def g():\n    for a, b in [('ngrok', 'tcp 22')]:\n        yield a + ' ' + b\n"
     "for x in g():\n    os.system(x)"),
    ("a generator inside a function", "def outer():\n    def g():\n        yield 'ngrok tcp 22'\n"
                                      "    for x in g():\n        os.system(x)\nouter()"),
    ("a generator listed, then looped over", G + "cs = list(g())\nfor c in cs:\n    os.system(c)"),
    ("a starred target over a generator", "def g():\n    yield ('ngrok', 'tcp', '22')\n"
                                          "for *r, in g():\n    os.system(' '.join(r))"),
    ("dict() of a generator's pairs",
     "def g():\n    yield 'c', 'ngrok tcp 22'\nd = dict(g())\nos.system(d['c'])"),
    ("an async comprehension indexed", ASYNC_G + "async def m():\n"
                                       "    cs = [c async for c in g()]\n    os.system(cs[0])\n"
                                       "asyncio.run(m())"),
]

#: A loop (or an assignment) binding a starred, nested, item or attribute target.
TARGETS = [
    ("a starred loop target", "for *r, in [('ngrok', 'tcp', '22')]:\n    os.system(' '.join(r))"),
    ("a starred target in the middle", "for a, *m, b in [('ngrok', 'tcp', '2', '2')]:\n"
                                       "    os.system(a + ' ' + ' '.join(m) + b)"),
    ("a nested starred target in a comprehension",
     "[os.system(' '.join(r)) for (*r,), in [(('ngrok', 'tcp', '22'),)]]"),
    ("nested tuples as the target", "for (a, b), c in [(('ngrok', 'tcp'), '22')]:\n"
                                    "    os.system(a + ' ' + b + ' ' + c)"),
    ("an item as the loop target",
     "d = {}\nfor d['c'] in ['ngrok tcp 22']:\n    os.system(d['c'])"),
    ("an item of a table made by a call", "d = dict()\nfor d['c'] in ['ngrok tcp 22']:\n"
                                          "    os.system(d['c'])"),
    ("an item of an item as the target", "d = {'x': {}}\nfor d['x']['c'] in ['ngrok tcp 22']:\n"
                                         "    os.system(d['x']['c'])"),
    ("a list's item as the target", "d = [0]\nfor d[0] in ['ngrok tcp 22']:\n    os.system(d[0])"),
    ("an attribute as a comprehension's target",
     "class N:\n    pass\nn = N()\n[os.system(n.c) for n.c in ['ngrok tcp 22']]"),
    ("self's attribute as the target", "class K:\n    def go(self):\n"
                                       "        for self.c in ['ngrok tcp 22']:\n"
                                       "            os.system(self.c)\nK().go()"),
    ("the namespace's item as the target", "for globals()['r'] in [os.system]:\n    pass\n"
                                           "r('ngrok tcp 22')"),
    ("a runner and its command as item and name",
     "d = {}\nfor d['f'], c in [(os.system, 'ngrok tcp 22')]:\n    d['f'](c)"),
    ("items of two nested comprehensions",
     "d = {}\n[[os.system(d['a'] + d['b']) for d['b'] in [' tcp 22']] for d['a'] in ['ngrok']]"),
    ("a starred assignment", "*r, = ('ngrok', 'tcp', '22')\nos.system(' '.join(r))"),
    ("an item assigned", "d = {}\nd['c'] = 'ngrok tcp 22'\nos.system(d['c'])"),
    ("a table's item kept when another is set to what is not known",
     "cmds = {'a': 'ngrok tcp 22'}\ncmds['b'] = os.environ.get('B')\nos.system(cmds['a'])"),
    ("a table's item kept when a key not known is set",
     "cmds = {'a': 'ngrok tcp 22'}\ncmds[os.environ.get('K', 'b')] = 1\nos.system(cmds['a'])"),
    ("an item assigned, copied to a name",
     "d = dict()\nd['c'] = 'ngrok tcp 22'\ne = d['c']\nos.system(e)"),
    ("a starred assignment of the runner", "*r, = [os.system]\nr[0]('ngrok tcp 22')"),
]

#: An item of a comprehension taken by its key or index.
COMPREHENSION_ITEMS = [
    ("a dict comprehension's item by .get",
     "r = {n: getattr(os, n) for n in ['system']}.get('system')\nr('ngrok tcp 22')"),
    ("a dict comprehension kept in a name",
     "t = {n: getattr(os, n) for n in ['system']}\nt['system']('ngrok tcp 22')"),
    ("a dict comprehension's item called at once",
     "{n: getattr(os, n) for n in ['system']}['system']('ngrok tcp 22')"),
    ("a dict comprehension of pairs", "r = {k: v for k, v in [('x', os.system)]}['x']\n"
                                      "r('ngrok tcp 22')"),
    ("a dict comprehension with a filter",
     "r = {n: getattr(os, n) for n in ['system', 'getcwd'] if n != 'getcwd'}['system']\n"
     "r('ngrok tcp 22')"),
    ("a dict comprehension's key computed",
     "r = {n.upper(): getattr(os, n) for n in ['system']}['SYSTEM']\nr('ngrok tcp 22')"),
    ("dict() of a dict comprehension",
     "r = dict({n: getattr(os, n) for n in ['system']})['system']\nr('ngrok tcp 22')"),
    ("itemgetter of a dict comprehension",
     "r = operator.itemgetter('system')({n: getattr(os, n) for n in ['system']})\n"
     "r('ngrok tcp 22')"),
    ("operator.getitem of a dict comprehension",
     "operator.getitem({n: getattr(os, n) for n in ['system']}, 'system')('ngrok tcp 22')"),
    ("a list comprehension's last item", "[getattr(os, k) for k in ['getcwd', 'system']][-1]"
                                         "('ngrok tcp 22')"),
    ("getattr of posix through sys.modules",
     "getattr(sys.modules['posix'], 'system')('ngrok tcp 22')"),
    ("a module under a name of a name", "m = os\nn = m\nn.system('ngrok tcp 22')"),
    ("posix imported under a name", "import posix as p\np.system('ngrok tcp 22')"),
]

#: The namespace set through map, getattr's default, a conditional.
NAMESPACE = [
    ("starmap of the namespace's __setitem__",
     "import itertools\nlist(itertools.starmap(globals().__setitem__, [('r', os.system)]))\n"
     "r('ngrok tcp 22')"),
    ("map of setattr on __main__",
     "list(map(setattr, [sys.modules['__main__']], ['r'], [os.system]))\nr('ngrok tcp 22')"),
    ("map of operator.setitem", "list(map(operator.setitem, [globals()], ['r'], [os.system]))\n"
                                "r('ngrok tcp 22')"),
    ("map of dict.__setitem__", "list(map(dict.__setitem__, [globals()], ['r'], [os.system]))\n"
                                "r('ngrok tcp 22')"),
    ("map of a named namespace's __setitem__",
     "g = globals()\nlist(map(g.__setitem__, ['r'], [os.system]))\nr('ngrok tcp 22')"),
    ("map of the namespace's update", "list(map(globals().update, [{'r': os.system}]))\n"
                                      "r('ngrok tcp 22')"),
    ("map of a lambda of two parameters",
     "list(map(lambda k, v: globals().__setitem__(k, v), ['r'], [os.system]))\nr('ngrok tcp 22')"),
    ("map inside map", "list(map(bool, map(globals().__setitem__, ['r'], [os.system])))\n"
                       "r('ngrok tcp 22')"),
    ("map drained by a deque", "import collections\ncollections.deque(map(globals().__setitem__, "
                               "['r'], [os.system]), 0)\nr('ngrok tcp 22')"),
    ("map under another name", "m = map\nlist(m(globals().__setitem__, ['r'], [os.system]))\n"
                               "r('ngrok tcp 22')"),
    ("builtins.map", "list(builtins.map(globals().__setitem__, ['r'], [os.system]))\n"
                     "r('ngrok tcp 22')"),
    ("map over itertools.repeat", "import itertools\nlist(map(globals().__setitem__, ['r'], "
                                  "itertools.repeat(os.system)))\nr('ngrok tcp 22')"),
    ("getattr of __main__ with a default",
     "getattr(sys.modules['__main__'], '__dict__', {})['r'] = os.system\nr('ngrok tcp 22')"),
    ("getattr's default another getattr",
     "getattr(builtins, 'x', getattr(builtins, '__dict__'))['r'] = os.system\nr('ngrok tcp 22')"),
    ("getattr's default vars(builtins)",
     "getattr(builtins, 'nope', vars(builtins))['r'] = os.system\nr('ngrok tcp 22')"),
    ("getattr with a default, updated", "getattr(builtins, '__dict__', {}).update(r=os.system)\n"
                                        "r('ngrok tcp 22')"),
    ("getattr with a default, named", "b = getattr(__builtins__, '__dict__', __builtins__)\n"
                                      "b['r'] = os.system\nr('ngrok tcp 22')"),
    ("a conditional namespace", "(globals() if os else {})['r'] = os.system\nr('ngrok tcp 22')"),
    ("an or of namespaces", "({} or globals())['r'] = os.system\nr('ngrok tcp 22')"),
]

#: An instance of the cell's str class replacing str's methods.
STR_CLASSES = [
    ("a str class replacing __eq__ and __hash__",
     "class S(str):\n    __hash__ = str.__hash__\n    def __eq__(self, o):\n        return True\n"
     "os.system(S('ngrok tcp 22'))"),
    ("a str class replacing __add__",
     "class S(str):\n    def __add__(self, o):\n        return S(str(self) + str(o))\n"
     "os.system(S('ngrok') + ' tcp 22')"),
    ("a class made from a str class",
     "class S(str):\n    def __ne__(self, o):\n        return True\nclass T(S):\n    pass\n"
     "os.system(T('ngrok tcp 22'))"),
    ("a str class's instance in an argv list",
     "import subprocess\nclass S(str):\n    def __ne__(self, o):\n        return True\n"
     "subprocess.run([S('ngrok'), 'tcp', '22'])"),
    ("a str class's instance of an instance",
     "class S(str):\n    def __ne__(self, o):\n        return True\n"
     "os.system(S(S('ngrok tcp 22')))"),
    ("a str class replacing a method not called",
     "class S(str):\n    def upper(self):\n        return self\n"
     "os.system(S('ngrok tcp 22').lower())"),
    ("a str class's __ne__ in a filter",
     "class S(str):\n    def __ne__(self, o):\n        return True\n"
     "[os.system(c) for c in [S('ngrok tcp 22')] if c != 'ngrok tcp 22']"),
]

FIXED = GENERATORS + TARGETS + COMPREHENSION_ITEMS + NAMESPACE + STR_CLASSES


@pytest.mark.parametrize("what, cell", FIXED, ids=[f[0] for f in FIXED])
def test_an_evasion_of_the_new_rules_is_refused(what, cell):
    assert FORBIDDEN in _cell_signatures(HEAD + cell), what


@pytest.mark.parametrize("what, cell", FIXED, ids=[f[0] for f in FIXED])
def test_each_evasion_really_starts_ngrok(what, cell, stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok(HEAD + cell, stand_in_path, tmp_path, what)


#: Left in session 18, closed in session 19 (tests/test_redteam_cells19.py says how): each
#: starts ngrok and is refused; the reason it was left is kept.
CLOSED_IN_19 = [
    ("a dict comprehension of two loops",
     "r = {n: getattr(m, n) for m in [os] for n in ['system']}['system']\nr('ngrok tcp 22')",
     "an item of a comprehension is read for comprehensions of one loop only (the rows of "
     "two, the inner over the outer's variable, are not spelled out)"),
    ("map of arguments spread from zip",
     "list(map(globals().__setitem__, *zip(('r', os.system))))\nr('ngrok tcp 22')",
     "map's iterables spread (*zip(…)) are not spelled out: no row is read"),
    ("functools.partial of the namespace's __setitem__",
     "import functools\nfunctools.partial(globals().__setitem__, 'r')(os.system)\n"
     "r('ngrok tcp 22')",
     "a partial's call is not read as the call of the function it binds"),
    ("a str class replacing __new__",
     "class S(str):\n    def __new__(cls, v):\n        return str.__new__(cls, v)\n"
     "os.system(S('ngrok tcp 22'))",
     "a class replacing __new__ may make any text of its argument: its instance is not folded"),
    ("a str class made by type()",
     "S = type('S', (str,), {'__ne__': lambda s, o: True})\nos.system(S('ngrok tcp 22'))",
     "only a class statement is read as a str class"),
    ("a generator method", "class K:\n    def g(self):\n        yield 'ngrok tcp 22'\n"
                           "for c in K().g():\n    os.system(c)",
     "only the cell's functions called by name are read as generators, not methods"),
    ("a class's __iter__ a generator", "class It:\n    def __iter__(self):\n"
                                       "        yield 'ngrok tcp 22'\nfor c in It():\n"
                                       "    os.system(c)",
     "an instance iterated is not read as its __iter__'s yields"),
    ("a lambda returning a generator expression",
     "g = lambda: (c for c in ['ngrok tcp 22'])\nfor c in g():\n    os.system(c)",
     "a lambda's call is not read as the generator it returns"),
    ("an item set in a comprehension's filter",
     "d = {}\n[os.system(d['c']) for _ in [0] if (d.__setitem__('c', 'ngrok tcp 22') or True)]",
     "d.__setitem__ called is not read as the item assigned (d's items only forgotten)"),
    ("a generator's variable assigned in its loop",
     "def g():\n    for c in ['ngrok tcp 22']:\n        d = c\n        yield d\n"
     "for x in g():\n    os.system(x)",
     "a generator's own variable is read only assigned once in its body, not in a loop"),
    ("map of a namespace setter kept in a table",
     "t = {'s': globals().__setitem__}\nlist(map(t['s'], ['r'], [os.system]))\nr('ngrok tcp 22')",
     "a table's item is not read as the namespace's method it holds"),
    ("an item set through another name for the table",
     "d = dict()\ne = d\ne['c'] = 'ngrok tcp 22'\nos.system(d['c'])",
     "an item is remembered of the name it was set through (two names of one table are not "
     "followed)"),
]

#: Left: each starts ngrok; what the check reads of none of them, and why.
LEFT = [
    ("a str class's keys colliding in a dict",
     "class S(str):\n    def __hash__(self):\n        return hash('a')\n"
     "    def __eq__(self, o):\n        return True\n"
     "os.system({'a': 'ls', S('b'): 'ngrok tcp 22'}['a'])",
     "a table keyed by a class replacing __hash__ is not folded (Python merges its keys as "
     "the class says); unfolded, what it runs is not known"),
]


@pytest.mark.parametrize("what, cell, reason", CLOSED_IN_19, ids=[c[0] for c in CLOSED_IN_19])
def test_an_evasion_left_in_18_is_refused(what, cell, reason):
    assert FORBIDDEN in _cell_signatures(HEAD + cell), what


@pytest.mark.parametrize("what, cell, reason", CLOSED_IN_19, ids=[c[0] for c in CLOSED_IN_19])
def test_each_evasion_left_in_18_really_starts_ngrok(what, cell, reason, stand_in_path,
                                                     tmp_path):
    assert "tcp 22" in _runs_ngrok(HEAD + cell, stand_in_path, tmp_path, what)


@pytest.mark.parametrize("what, cell, reason", LEFT, ids=[c[0] for c in LEFT])
def test_each_left_evasion_really_starts_ngrok(what, cell, reason, stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok(HEAD + cell, stand_in_path, tmp_path, what)


@pytest.mark.parametrize("what, cell", [
    pytest.param(what, cell, marks=pytest.mark.xfail(strict=True, reason=reason))
    for what, cell, reason in LEFT], ids=[c[0] for c in LEFT])
def test_a_left_evasion_is_refused(what, cell):
    assert FORBIDDEN in _cell_signatures(HEAD + cell), what


EARLIER_CELL = (HEAD + G, HEAD + "for c in g():\n    os.system(c)")


def test_a_generator_of_an_earlier_cell_really_starts_ngrok(stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok("".join(EARLIER_CELL), stand_in_path, tmp_path,
                                   "a generator of an earlier cell")


def test_a_generator_of_an_earlier_cell_is_read():
    """Left in session 18 (the cell's functions were read of the cell only); the kernel's
    memory keeps its generator functions since session 19."""
    assert FORBIDDEN in _cell_signatures(*EARLIER_CELL)


#: Honest cells near each rule: async code and generators running ls, str classes of honest
#: code, map over data, getattr with defaults, loops over rows with starred targets, tables
#: of getters.
HONEST = [
    ("an async generator of ls and pwd",
     "import asyncio, subprocess\nasync def g():\n    for c in ['ls -la', 'pwd']:\n"
     "        yield c\n"
     "async def m():\n    async for c in g():\n        subprocess.run(c, shell=True)\n"
     "asyncio.run(m())"),
    ("an async comprehension running ls", "import asyncio, os\nasync def g():\n    yield 'ls'\n"
     "async def m():\n    return [os.system(c) async for c in g()]\nasyncio.run(m())"),
    ("asyncio's subprocess", "import asyncio\nasync def main():\n"
     "    p = await asyncio.create_subprocess_exec('ls', '-la')\n    await p.wait()\n"
     "asyncio.run(main())"),
    ("a generator of messages echoed", "import subprocess\ndef msgs():\n"
     "    yield 'ngrok tcp 22 is blocked here'\nfor m in msgs():\n    subprocess.run(['echo', m])"),
    ("a generator of a folder's files", "import os\ndef files(folder):\n"
     "    for name in os.listdir(folder):\n        yield os.path.join(folder, name)\n"
     "for f in files('.'):\n    print(os.path.getsize(f))"),
    ("a generator of batches", "def batches(xs, n):\n    for i in range(0, len(xs), n):\n"
     "        yield xs[i:i + n]\nfor b in batches(list(range(10)), 3):\n    print(b)"),
    ("a generator of getters", "import os\ndef g():\n    yield os.getcwd\nfor f in g():\n"
                               "    print(f())"),
    ("an Enum(str)", "import enum, subprocess\nclass Tool(str, enum.Enum):\n    LS = 'ls'\n"
                     "    PWD = 'pwd'\nsubprocess.run([Tool.LS.value, '-la'])"),
    ("a path-like str class", "import subprocess\nclass P(str):\n"
     "    def __truediv__(self, other):\n        return P(self + '/' + other)\n"
     "    def __repr__(self):\n        return f'P({str(self)!r})'\n"
     "subprocess.run(['ls', P('data') / 'raw'])"),
    ("a case-insensitive name class", "class Name(str):\n    def __eq__(self, other):\n"
     "        return str.lower(self) == str.lower(other)\n    __hash__ = str.__hash__\n"
     "print(Name('Ngrok') == 'ngrok')"),
    ("a str class's message echoed", "import os\nclass Msg(str):\n    def __ne__(self, o):\n"
     "        return True\nos.system(Msg('echo ngrok tcp 22 is blocked here'))"),
    ("map over a dict's setter", "d = {}\nlist(map(d.__setitem__, ['lr', 'bs'], [0.1, 32]))\n"
                                 "print(d)"),
    ("map of settings into globals", "list(map(globals().__setitem__, ['lr', 'bs'], [0.1, 32]))\n"
                                     "print(lr)"),
    ("map of print", "list(map(print, ['ngrok tcp 22 is blocked', 'ok']))"),
    ("starmap of pow", "import itertools\nprint(list(itertools.starmap(pow, [(2, 3), (3, 2)])))"),
    ("map of a lambda of two", "print(list(map(lambda a, b: a + b, [1, 2], [3, 4])))"),
    ("map under another name", "m = map\nprint(list(m(str.upper, ['a', 'b'])))"),
    ("getattr with a default of a config", "import types\ncfg = types.SimpleNamespace(lr=0.1)\n"
                                           "print(getattr(cfg, 'epochs', 10))"),
    ("getattr of os.environ with a default", "import os\nopts = getattr(os, 'environ', {})\n"
                                             "print(opts.get('HOME'))"),
    ("getattr of an object's __dict__", "class C:\n    pass\nd = getattr(C(), '__dict__', {})\n"
                                        "d['x'] = 1"),
    ("a builtin read from __builtins__",
     "print(getattr(__builtins__, '__dict__', __builtins__)['len']([1, 2]))"),
    ("rows with a starred target", "for first, *rest in [(1, 2, 3), (4, 5, 6)]:\n"
                                   "    print(first, sum(rest))"),
    ("tool names with a starred rest", "for name, *_ in [('ngrok', 1), ('xmrig', 2)]:\n"
                                       "    print(name)"),
    ("an item as a counter", "d = {}\nfor d['x'] in range(3):\n    print(d['x'])"),
    ("a table of sizes by name", "sizes = {n: len(n) for n in ['ngrok', 'frpc']}['ngrok']\n"
                                 "print(sizes)"),
    ("a table of getters", "import os\nr = {n: getattr(os, n) for n in ['getcwd', 'listdir']}"
                           "['getcwd']\nprint(r())"),
    ("a table holding a runner, another item taken",
     "import os\nr = {n: getattr(os, n) for n in ['system', 'getcwd']}['getcwd']\nr()"),
    ("a list of getters indexed", "import os\nf = [getattr(os, k) for k in ['getcwd', 'system']]"
                                  "[0]\nprint(f())"),
    ("numpy under another name", "import numpy as np\nm = np\nprint(m.zeros(3))"),
    ("posix's getcwd", "import posix\nprint(posix.getcwd())"),
    ("an item echoed", "import subprocess\nd = dict()\nd['cmd'] = 'ngrok tcp 22 is blocked here'\n"
                       "subprocess.run(['echo', d['cmd']])"),
    ("an item replaced by update", "import os\nd = dict()\nd['c'] = 'ngrok tcp 22'\n"
                                   "d.update(c='ls')\nos.system(d['c'])"),
]


@pytest.mark.parametrize("what, cell", HONEST, ids=[h[0] for h in HONEST])
def test_an_honest_cell_near_the_new_rules_is_left_alone(what, cell):
    assert _cell_signatures(cell) == set(), what
