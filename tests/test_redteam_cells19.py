"""Red team, session 19: the cell check's known misses (strict xfails of sessions 15 and 18)
closed, then the new rules attacked by one who read them.

Closed in detect/cells.py, each a general rule:
- a loop over a generator method of the cell's class (its own or a base's: ``K().g()``,
  ``k.g()``, ``self.g()``, ``K.g(k)``, a staticmethod) or over an instance whose ``__iter__``
  yields or returns what to iterate (``It()``, ``it``) goes through what it yields, self
  spelled as an instance of the class (``_generator_call``, ``_iter_returned``); ``g()`` of
  ``g = lambda: (c for c in T)`` is that expression (``_lambda_returned``); a generator's
  variable assigned once in a block before its yield is that value (``_assigned_before``);
  the kernel's memory keeps the cell's generator functions for later cells;
- ``d.__setitem__(k, v)``, ``dict.__setitem__(d, k, v)``, ``operator.setitem``,
  ``d.update(k=v)``/``d.update({k: v})`` and ``d.setdefault`` (unless d[k] is known) set
  an item as ``d[k] = v`` does (``_set_item_by_call``); ``e = d`` makes e a second name of
  d's table (``_table_root``);
- ``functools.partial(f, a)(b)``, and ``p(b)`` of ``p = partial(…)``, is the call
  ``f(a, b)`` (``_partial_applied``); ``t["s"](…)``/``t.get("s")(…)``/``t[0](…)`` of a
  table the cell spells whole (``{…}``, ``dict(s=…)``, ``[…]``) is the call of that item
  (``_table_item_called``);
- map's (and zip's) iterables spread from what the cell spells (``*zip(…)``,
  ``*[[…], […]]``) are spelled out (``_spread_iterables``);
- an item of a comprehension of up to three loops, and a search of a module's members
  inside outer loops, read row by row (``_comprehension_rows``); ``filter(lambda kv: …,
  vars(os).items())`` (or a function returning the test) is the search it is
  (``_filter_as_search``);
- a while loop's counters are not their first value inside it, and a text variable it
  assigns constants is any of them (``visit_While``);
- a str class whose ``__new__`` only returns ``str.__new__(cls, text)`` (``super()``
  alike) folds to that text; ``type("S", (str,), {…})`` is a str class unless its table
  names ``__new__``.
Left (strict xfail, the exact reason): what none of these rules reads."""

from __future__ import annotations

import pytest

from tests.test_redteam_cells13 import FORBIDDEN, stand_in_path  # noqa: F401  (a fixture)
from tests.test_redteam_cells16 import _runs_ngrok
from tests.test_redteam_evasions import _cell_signatures

HEAD = "import os, sys, builtins, operator, functools, itertools, asyncio\n"
K = "class K:\n    def g(self):\n        yield 'ngrok tcp 22'\n"
IT = "class It:\n    def __iter__(self):\n        yield 'ngrok tcp 22'\n"
RUN = "    os.system(c)"

#: Generators reached through classes, lambdas, and a variable assigned before the yield.
GENERATORS = [
    ("an unbound method called with its instance", K + "for c in K.g(K()):\n" + RUN),
    ("a staticmethod generator", "class K:\n    @staticmethod\n    def g():\n"
                                 "        yield 'ngrok tcp 22'\nfor c in K.g():\n" + RUN),
    ("a generator method of a base class", K + "class L(K):\n    pass\nfor c in L().g():\n" + RUN),
    ("a generator method's parameter", "class K:\n    def g(self, c):\n        yield c\n"
                                       "for c in K().g('ngrok tcp 22'):\n" + RUN),
    ("an async generator method", "class K:\n    async def g(self):\n        yield 'ngrok tcp 22'\n"
                                  "async def m():\n    async for c in K().g():\n"
                                  "        os.system(c)\nasyncio.run(m())"),
    ("a generator method's call kept in a name", K + "k = K()\nit = k.g()\nfor c in it:\n" + RUN),
    ("next() of a generator method", K + "os.system(next(K().g()))"),
    ("self.g() in another method", "class K:\n    def g(self):\n        yield 'ngrok tcp 22'\n"
                                   "    def run(self):\n        for c in self.g():\n"
                                   "            os.system(c)\nK().run()"),
    ("yield from self's other generator",
     "class K:\n    def a(self):\n        yield 'ngrok tcp 22'\n    def g(self):\n"
     "        yield from self.a()\nfor c in K().g():\n" + RUN),
    ("list() of an iterable instance indexed", IT + "os.system(list(It())[0])"),
    ("next(iter()) of an iterable instance", IT + "os.system(next(iter(It())))"),
    ("an __iter__ returning an iterator", "class It:\n    def __iter__(self):\n"
                                          "        return iter(['ngrok tcp 22'])\nfor c in It():\n"
                                          + RUN),
    ("an __iter__ returning self's generator",
     "class It:\n    def a(self):\n        yield 'ngrok tcp 22'\n    def __iter__(self):\n"
     "        return self.a()\nfor c in It():\n" + RUN),
    ("an __iter__ yielding what __init__ set", "class It:\n    def __init__(self):\n"
     "        self.c = 'ngrok tcp 22'\n    def __iter__(self):\n        yield self.c\n"
     "for c in It():\n" + RUN),
    ("a comprehension over an iterable instance", IT + "[os.system(c) for c in It()]"),
    ("an iterable instance of a base class", IT + "class J(It):\n    pass\nfor c in J():\n" + RUN),
    ("an iterable instance kept in a name", IT + "it = It()\nfor c in it:\n" + RUN),
    ("a lambda returning iter()", "g = lambda: iter(['ngrok tcp 22'])\nfor c in g():\n" + RUN),
    ("a lambda calling a lambda", "g = lambda: (c for c in ['ngrok tcp 22'])\nh = lambda: g()\n"
                                  "for c in h():\n" + RUN),
    ("a lambda's parameter iterated", "g = lambda t: (c for c in t)\n"
                                      "for c in g(['ngrok tcp 22']):\n" + RUN),
    ("a lambda called where it is written",
     "for c in (lambda: (c for c in ['ngrok tcp 22']))():\n" + RUN),
    ("a lambda under another name", "g = lambda: (c for c in ['ngrok tcp 22'])\nh = g\n"
                                    "for c in h():\n" + RUN),
    ("next() of a lambda's generator", "g = lambda: (c for c in ['ngrok tcp 22'])\n"
                                       "os.system(next(g()))"),
    ("a generator's variable of an expression", "def g():\n    for c in ['ngrok']:\n"
                                                "        d = c + ' tcp 22'\n        yield d\n"
                                                "for c in g():\n" + RUN),
    ("a generator's variable assigned in an if", "def g():\n    for c in ['ngrok tcp 22']:\n"
                                                 "        if c:\n            d = c\n"
                                                 "            yield d\nfor c in g():\n" + RUN),
    ("a generator's variable yielded in an if", "def g():\n    for c in ['ngrok tcp 22']:\n"
                                                "        d = c\n        if d:\n"
                                                "            yield d\nfor c in g():\n" + RUN),
    ("a generator's variable of a variable", "def g():\n    for c in ['ngrok tcp 22']:\n"
                                             "        d = c\n        e = d\n        yield e\n"
                                             "for c in g():\n" + RUN),
]

#: Items set by a method call, and through another name of the table.
ITEMS = [
    ("dict.__setitem__ of the table", "d = dict()\ndict.__setitem__(d, 'c', 'ngrok tcp 22')\n"
                                      "os.system(d['c'])"),
    ("operator.setitem of the table", "d = dict()\noperator.setitem(d, 'c', 'ngrok tcp 22')\n"
                                      "os.system(d['c'])"),
    ("update through another name", "d = dict()\ne = d\ne.update(c='ngrok tcp 22')\n"
                                    "os.system(d['c'])"),
    ("update of a spelled table", "d = dict()\nd.update({'c': 'ngrok tcp 22'})\nos.system(d['c'])"),
    ("__setitem__ through another name", "d = dict()\ne = d\ne.__setitem__('c', 'ngrok tcp 22')\n"
                                         "os.system(d['c'])"),
    ("an item read through another name", "d = dict()\ne = d\nd['c'] = 'ngrok tcp 22'\n"
                                          "os.system(e['c'])"),
    ("a name of a name of the table", "d = dict()\ne = d\nf = e\nf['c'] = 'ngrok tcp 22'\n"
                                      "os.system(d['c'])"),
    ("a constant table set through another name", "d = {}\ne = d\ne['c'] = 'ngrok tcp 22'\n"
                                                  "os.system(d['c'])"),
    ("setdefault of a table not holding the key", "d = dict()\nd.setdefault('c', 'ngrok tcp 22')\n"
                                                  "os.system(d['c'])"),
    ("setdefault of an empty constant table", "d = {}\nd.setdefault('c', 'ngrok tcp 22')\n"
                                              "os.system(d['c'])"),
    ("__setitem__ of a table's table", "d = {'x': dict()}\nd['x'].__setitem__('c', 'ngrok tcp 22')\n"
                                       "os.system(d['x']['c'])"),
]

#: Partials and tables of functions, called.
CALLS = [
    ("a partial kept under another name",
     "p = functools.partial(globals().__setitem__, 'r')\nq = p\nq(os.system)\nr('ngrok tcp 22')"),
    ("partial imported from functools", "from functools import partial\n"
                                        "partial(globals().__setitem__, 'r')(os.system)\n"
                                        "r('ngrok tcp 22')"),
    ("partial of partial", "from functools import partial as P\n"
                           "P(P(globals().__setitem__), 'r')(os.system)\nr('ngrok tcp 22')"),
    ("a partial of a named partial", "p = functools.partial(globals().__setitem__)\n"
                                     "q = functools.partial(p, 'r')\nq(os.system)\nr('ngrok tcp 22')"),
    ("map of a partial", "list(map(functools.partial(globals().__setitem__, 'r'), [os.system]))\n"
                         "r('ngrok tcp 22')"),
    ("a partial of the runner", "p = functools.partial(os.system, 'ngrok tcp 22')\np()"),
    ("a table made by dict() of the setter", "t = dict(s=globals().__setitem__)\n"
                                             "t['s']('r', os.system)\nr('ngrok tcp 22')"),
    ("a table's setter by .get", "t = {'s': globals().__setitem__}\nt.get('s')('r', os.system)\n"
                                 "r('ngrok tcp 22')"),
    ("a table's setter through another name", "t = {'s': globals().__setitem__}\nu = t\n"
                                              "u['s']('r', os.system)\nr('ngrok tcp 22')"),
    ("a list of the setter indexed", "t = [globals().__setitem__]\nt[0]('r', os.system)\n"
                                     "r('ngrok tcp 22')"),
    ("a table keyed by a variable", "k = 's'\nt = {k: globals().__setitem__}\n"
                                    "t['s']('r', os.system)\nr('ngrok tcp 22')"),
    ("map's iterables spread from a list", "list(map(globals().__setitem__, *[['r'], [os.system]]))\n"
                                           "r('ngrok tcp 22')"),
    ("zip of spread rows spread into map",
     "list(map(globals().__setitem__, *zip(*[('r', os.system)])))\nr('ngrok tcp 22')"),
    ("zip of spread named rows spread into map", "rows = (('r', os.system),)\n"
     "list(map(globals().__setitem__, *zip(*rows)))\nr('ngrok tcp 22')"),
    ("starmap of zip of zip", "list(itertools.starmap(globals().__setitem__, "
                              "zip(*zip(('r', os.system)))))\nr('ngrok tcp 22')"),
    # a table changed after it is spelled is not read as spelled (t["s"] is not print here)
    ("a table changed by |=", "t = {'s': print}\nt |= {'s': os.system}\nt['s']('ngrok tcp 22')"),
]

#: Comprehensions of several loops, module searches, filter.
SEARCHES = [
    ("a dict comprehension of three loops",
     "r = {n: getattr(m, n) for _ in [0] for m in [os] for n in ['system']}['system']\n"
     "r('ngrok tcp 22')"),
    ("a dict comprehension of pairs in an inner loop",
     "r = {n: f for m in [os] for n, f in [('system', m.system)]}['system']\nr('ngrok tcp 22')"),
    ("a two-loop dict comprehension kept in a name",
     "t = {n: getattr(m, n) for m in [os] for n in ['system']}\nt['system']('ngrok tcp 22')"),
    ("a two-loop list comprehension indexed",
     "[getattr(m, n) for m in [os] for n in ['getcwd', 'system']][1]('ngrok tcp 22')"),
    ("a two-loop list comprehension filtered",
     "r = [getattr(m, n) for m in [os] for n in ['getcwd', 'system'] if n != 'getcwd'][0]\n"
     "r('ngrok tcp 22')"),
    ("a search over two modules", "f = next(v for m in [sys, os] for k, v in vars(m).items() "
                                  "if k == 'system')\nf('ngrok tcp 22')"),
    ("a search over sys.modules' os", "f = next(v for m in [sys.modules['os']] "
                                      "for k, v in vars(m).items() if k == 'system')\n"
                                      "f('ngrok tcp 22')"),
    ("a two-loop dict search", "f = {k: v for m in [os] for k, v in vars(m).items() "
                               "if k == 'system'}['system']\nf('ngrok tcp 22')"),
    ("a two-loop search of dir()", "f = [getattr(m, k) for m in [os] for k in dir(m) "
                                   "if k == 'system'][0]\nf('ngrok tcp 22')"),
    ("a two-loop search by prefix", "f = next(v for m in [sys, os] for k, v in vars(m).items() "
                                    "if k.startswith('syst'))\nf('ngrok tcp 22')"),
    ("filter with the name on the right", "f = next(filter(lambda kv: 'system' == kv[0], "
                                          "vars(os).items()))[1]\nf('ngrok tcp 22')"),
    ("filter by membership", "f = next(filter(lambda kv: kv[0] in ('system',), "
                             "vars(os).items()))[1]\nf('ngrok tcp 22')"),
    ("filter by a function of the cell", "def pick(kv):\n    return kv[0] == 'system'\n"
                                         "f = next(filter(pick, vars(os).items()))[1]\n"
                                         "f('ngrok tcp 22')"),
    ("dict() of a filter", "f = dict(filter(lambda kv: kv[0] == 'system', "
                           "vars(os).items()))['system']\nf('ngrok tcp 22')"),
    ("a filter's pair unpacked", "k, f = next(filter(lambda kv: kv[0] == 'system', "
                                 "vars(os).items()))\nf('ngrok tcp 22')"),
    ("list() of a filter indexed", "f = list(filter(lambda kv: kv[0] == 'system', "
                                   "vars(os).items()))[0][1]\nf('ngrok tcp 22')"),
    ("filter by prefix", "f = next(filter(lambda kv: kv[0].startswith('syst'), "
                         "vars(os).items()))[1]\nf('ngrok tcp 22')"),
    ("a filter kept in a name", "it = filter(lambda kv: kv[0] == 'system', vars(os).items())\n"
                                "f = next(it)[1]\nf('ngrok tcp 22')"),
]

#: While loops.
WHILE = [
    ("a while loop's index by i = i + 1", "T = ['echo 1', 'ngrok tcp 22']\ni = 0\nwhile i < 2:\n"
                                          "    os.system(T[i])\n    i = i + 1"),
    ("a while loop counting down", "T = ['ngrok tcp 22', 'echo 1']\ni = 1\nwhile i >= 0:\n"
                                   "    os.system(T[i])\n    i -= 1"),
    ("a while loop's index copied", "T = ['echo 1', 'ngrok tcp 22']\ni = 0\nwhile i < 2:\n"
                                    "    j = i\n    os.system(T[j])\n    i += 1"),
    ("a while True loop with a break", "T = ['echo 1', 'ngrok tcp 22']\ni = 0\nwhile True:\n"
                                       "    if i >= 2:\n        break\n    os.system(T[i])\n"
                                       "    i += 1"),
    ("a command replaced in the loop", "c = 'ls'\nn = 0\nwhile n < 2:\n    os.system(c)\n"
                                       "    c = 'ngrok tcp 22'\n    n += 1"),
    ("a command built up in the loop", "c = 'ngrok'\nn = 0\nwhile n < 1:\n    c = c + ' tcp 22'\n"
                                       "    n += 1\nos.system(c)"),
]

#: Str classes with __new__, and made by type().
STR_CLASSES = [
    ("a __new__ of an expression", "class S(str):\n    def __new__(cls, v):\n"
                                   "        return str.__new__(cls, v.replace('x', ''))\n"
                                   "os.system(S('ngxrok tcp 22'))"),
    ("a __new__ reversing its text", "class S(str):\n    def __new__(cls, v):\n"
                                     "        return super().__new__(cls, v[::-1])\n"
                                     "os.system(S('22 pct korgn'))"),
    ("a subclass of a reversing str class", "class S(str):\n    def __new__(cls, v):\n"
                                            "        return super().__new__(cls, v[::-1])\n"
                                            "class T(S):\n    pass\nos.system(T('22 pct korgn'))"),
    ("super(S, cls).__new__", "class S(str):\n    def __new__(cls, v):\n"
                              "        return super(S, cls).__new__(cls, v)\n"
                              "os.system(S('ngrok tcp 22'))"),
    ("a __new__ with a default", "class S(str):\n    def __new__(cls, v, w=' tcp 22'):\n"
                                 "        return str.__new__(cls, v + w)\nos.system(S('ngrok'))"),
    ("a subclass replacing __ne__", "class S(str):\n    def __new__(cls, v):\n"
                                    "        return str.__new__(cls, v)\nclass T(S):\n"
                                    "    def __ne__(self, o):\n        return True\n"
                                    "os.system(T('ngrok tcp 22'))"),
    ("type() of an empty table", "S = type('S', (str,), {})\nos.system(S('ngrok tcp 22'))"),
    ("type() of dict()", "S = type('S', (str,), dict(__ne__=lambda s, o: True))\n"
                         "os.system(S('ngrok tcp 22'))"),
    ("type() of a type() class", "S = type('S', (str,), {})\nT = type('T', (S,), {})\n"
                                 "os.system(T('ngrok tcp 22'))"),
    ("a class statement of a type() class", "S = type('S', (str,), {})\nclass T(S):\n    pass\n"
                                            "os.system(T('ngrok tcp 22'))"),
]

FIXED = GENERATORS + ITEMS + CALLS + SEARCHES + WHILE + STR_CLASSES


@pytest.mark.parametrize("what, cell", FIXED, ids=[f[0] for f in FIXED])
def test_an_evasion_of_the_new_rules_is_refused(what, cell):
    assert FORBIDDEN in _cell_signatures(HEAD + cell), what


@pytest.mark.parametrize("what, cell", FIXED, ids=[f[0] for f in FIXED])
def test_each_evasion_really_starts_ngrok(what, cell, stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok(HEAD + cell, stand_in_path, tmp_path, what)


#: Left: each starts ngrok; what the check reads of none of them, and why.
LEFT = [
    ("getattr of a generator method", K + "for c in getattr(K(), 'g')():\n" + RUN,
     "a method fetched by getattr is not read as the cell's method (only K().g, k.g, self.g)"),
    ("a generator's variable unpacked", "def g():\n    for c in ['ngrok tcp 22']:\n"
                                        "        d, e = c, 1\n        yield d\nfor c in g():\n" + RUN,
     "a generator's variable is spelled only where a plain d = … assigns it"),
    ("a generator yielding a walrus", "def g():\n    for c in ['ngrok tcp 22']:\n"
                                      "        yield (d := c)\nfor c in g():\n" + RUN,
     "a yield of a walrus is not read as its value"),
    ("a generator's variable added to", "def g():\n    for c in ['ngrok']:\n        d = c\n"
                                        "        d += ' tcp 22'\n        yield d\nfor c in g():\n" + RUN,
     "a generator's variable assigned twice (d = …; d += …) is not spelled"),
    ("a table's name taken from a list", "d = dict()\ne = [d][0]\ne['c'] = 'ngrok tcp 22'\n"
                                         "os.system(d['c'])",
     "only e = d makes e a name of d's table"),
    ("a table's __setitem__ kept in a name", "d = dict()\ns = d.__setitem__\n"
                                             "s('c', 'ngrok tcp 22')\nos.system(d['c'])",
     "a bound __setitem__ called by another name is not read as the item set"),
    ("a partial kept in a list", "ps = [functools.partial(globals().__setitem__, 'r')]\n"
                                 "ps[0](os.system)\nr('ngrok tcp 22')",
     "only a partial called where it is made, or by a name bound to it, is read as its call"),
    ("a table of tables of functions", "t = {'a': {'s': globals().__setitem__}}\n"
                                       "t['a']['s']('r', os.system)\nr('ngrok tcp 22')",
     "a table's item is read as the function it holds one level deep only"),
    ("a list of functions grown by +=", "t = [print]\nt += [globals().__setitem__]\n"
                                        "t[-1]('r', os.system)\nr('ngrok tcp 22')",
     "a table changed (+=, del, a function it is given, a second name) is no longer read as "
     "spelled, and what it holds then is not followed"),
    ("a list of functions after del", "t = [print, globals().__setitem__]\ndel t[0]\n"
                                      "t[0]('r', os.system)\nr('ngrok tcp 22')",
     "a table changed (+=, del, a function it is given, a second name) is no longer read as "
     "spelled, and what it holds then is not followed"),
    ("a table changed by a function", "def put(x):\n    x['s'] = os.system\nt = {'s': print}\n"
                                      "put(t)\nt['s']('ngrok tcp 22')",
     "a table changed (+=, del, a function it is given, a second name) is no longer read as "
     "spelled, and what it holds then is not followed"),
    ("a table changed through a second name", "t = {'s': print}\nu = t\nu['s'] = os.system\n"
                                              "t['s']('ngrok tcp 22')",
     "a table changed (+=, del, a function it is given, a second name) is no longer read as "
     "spelled, and what it holds then is not followed"),
    ("a comprehension filtered by hasattr",
     "r = {n: getattr(m, n) for m in [sys, os] for n in ['system'] if hasattr(m, n)}['system']\n"
     "r('ngrok tcp 22')",
     "a row's filter not folded (hasattr) leaves which row it is unknown: not read"),
    ("filter by __getitem__", "f = next(filter(lambda kv: kv.__getitem__(0) == 'system', "
                              "vars(os).items()))[1]\nf('ngrok tcp 22')",
     "a filtered pair's name is read as kv[0] only"),
    ("a while loop over an iterator's next", "it = iter(['echo 1', 'ngrok tcp 22'])\n"
                                             "while (c := next(it, None)):\n    os.system(c)",
     "next(it, None) of an iterator kept in a name is not one of its items"),
    ("a command replaced by a method of itself", "c = 'ls'\nn = 0\nwhile n < 2:\n"
                                                 "    os.system(c)\n"
                                                 "    c = c.replace('ls', 'ngrok tcp 22')\n"
                                                 "    n += 1",
     "a while loop's text variable assigned from itself keeps its first value inside the loop"),
    ("a __new__ of two statements", "class S(str):\n    def __new__(cls, v):\n"
                                    "        v = v.lower()\n        return str.__new__(cls, v)\n"
                                    "os.system(S('NGROK TCP 22'))",
     "only a __new__ of one return of str.__new__(cls, …) is folded"),
    ("a __new__ assigned a lambda", "class S(str):\n"
                                    "    __new__ = lambda cls, v: str.__new__(cls, v)\n"
                                    "os.system(S('ngrok tcp 22'))",
     "only a def __new__ is read"),
    ("a __new__ of spread arguments", "class S(str):\n    def __new__(cls, *a):\n"
                                      "        return str.__new__(cls, ' '.join(a))\n"
                                      "os.system(S('ngrok', 'tcp', '22'))",
     "a call spreading its arguments (*a) is not spelled"),
    ("type() with a __new__", "S = type('S', (str,), {'__new__': lambda cls, v: "
                              "str.__new__(cls, v)})\nos.system(S('ngrok tcp 22'))",
     "a type() class naming __new__ may make any text: its instance is not folded"),
]


@pytest.mark.parametrize("what, cell, reason", LEFT, ids=[c[0] for c in LEFT])
def test_each_left_evasion_really_starts_ngrok(what, cell, reason, stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok(HEAD + cell, stand_in_path, tmp_path, what)


@pytest.mark.parametrize("what, cell", [
    pytest.param(what, cell, marks=pytest.mark.xfail(strict=True, reason=reason))
    for what, cell, reason in LEFT], ids=[c[0] for c in LEFT])
def test_a_left_evasion_is_refused(what, cell):
    assert FORBIDDEN in _cell_signatures(HEAD + cell), what


#: Earlier cells: what the kernel's memory keeps of the cell's generators.
EARLIER_LEFT = [
    ("a generator method of an earlier cell's class", (HEAD + K, HEAD + "for c in K().g():\n" + RUN),
     "an earlier cell's classes are not remembered (only its generator functions)"),
    ("a lambda of an earlier cell", (HEAD + "g = lambda: (c for c in ['ngrok tcp 22'])\n",
                                     HEAD + "for c in g():\n" + RUN),
     "an earlier cell's lambdas are not remembered (only its generator functions)"),
]


@pytest.mark.parametrize("what, cells, reason", EARLIER_LEFT, ids=[c[0] for c in EARLIER_LEFT])
def test_each_earlier_cell_evasion_really_starts_ngrok(what, cells, reason, stand_in_path,
                                                       tmp_path):
    assert "tcp 22" in _runs_ngrok("".join(cells), stand_in_path, tmp_path, what)


@pytest.mark.parametrize("what, cells", [
    pytest.param(what, cells, marks=pytest.mark.xfail(strict=True, reason=reason))
    for what, cells, reason in EARLIER_LEFT], ids=[c[0] for c in EARLIER_LEFT])
def test_an_earlier_cell_evasion_is_refused(what, cells):
    assert FORBIDDEN in _cell_signatures(*cells), what


@pytest.mark.parametrize("later", [
    "def g():\n    yield 'ls'\n", "def g():\n    return ['ls']\n", "g = lambda: ['ls']\n"])
def test_an_earlier_generator_replaced_is_forgotten(later):
    """A later cell's g (another generator, a function, a lambda) is the g that runs."""
    earlier = HEAD + "def g():\n    yield 'ngrok tcp 22'\n"
    assert _cell_signatures(earlier, HEAD + later, HEAD + "for c in g():\n" + RUN) == set()


#: Honest cells near each rule (several spell ngrok and never run it: the rule must read the
#: one item, row, copy or branch that runs, not any it might).
HONEST = [
    ("a dataset's __iter__ of files", "import subprocess\nclass DS:\n    def __iter__(self):\n"
     "        for f in ['a.txt', 'b.txt']:\n            yield f\nfor f in DS():\n"
     "    subprocess.run(['wc', '-l', f])"),
    ("a method's messages echoed", "import subprocess\nclass Log:\n    def lines(self):\n"
     "        yield 'ngrok tcp 22 is blocked here'\nfor m in Log().lines():\n"
     "    subprocess.run(['echo', m])"),
    ("an __iter__ over self's items", "import os\nclass Files:\n    def __init__(self):\n"
     "        self.items = ['a', 'b']\n    def __iter__(self):\n        return iter(self.items)\n"
     "for f in Files():\n    print(os.path.exists(f))"),
    ("a job's steps run by self", "import os\nclass Job:\n    def steps(self):\n"
     "        yield 'ls -la'\n        yield 'pwd'\n    def run(self):\n"
     "        for c in self.steps():\n            os.system(c)\nJob().run()"),
    ("a staticmethod's steps", "import os\nclass Job:\n    @staticmethod\n    def steps():\n"
     "        yield 'nvidia-smi'\nfor c in Job.steps():\n    os.system(c)"),
    ("a lambda of batches", "bs = lambda xs, n: (xs[i:i + n] for i in range(0, len(xs), n))\n"
     "for b in bs(list(range(10)), 3):\n    print(b)"),
    ("a config updated and echoed", "import subprocess\ncfg = dict()\n"
     "cfg.update(lr=0.1, note='ngrok tcp 22 is blocked here')\nsubprocess.run(['echo', cfg['note']])"),
    ("a copy by dict() changed", "import os\nbase = {'cmd': 'ls'}\nalt = dict(base)\n"
     "alt['cmd'] = 'ngrok tcp 22'\nos.system(base['cmd'])"),
    ("a copy by .copy() changed", "import os\nbase = {'cmd': 'ls'}\nalt = base.copy()\n"
     "alt['cmd'] = 'ngrok tcp 22'\nos.system(base['cmd'])"),
    ("a second name bound anew", "import os\ndefaults = dict(cmd='ls')\nopts = defaults\n"
     "opts = dict()\nopts['cmd'] = 'ngrok tcp 22'\nos.system(defaults['cmd'])"),
    ("setdefault of a key set before", "import os\nd = dict()\nd['c'] = 'ls'\n"
     "d.setdefault('c', 'ngrok tcp 22')\nos.system(d['c'])"),
    ("setdefault of a constant's key", "import os\nd = {'c': 'ls'}\n"
     "d.setdefault('c', 'ngrok tcp 22')\nos.system(d['c'])"),
    ("a partial of print", "import functools\n"
     "functools.partial(print, 'note:')('ngrok tcp 22 is blocked')"),
    ("a partial of subprocess.run", "import functools, subprocess\n"
     "functools.partial(subprocess.run, check=True)(['ls', '-la'])"),
    ("a partial of os.system running ls", "import functools, os\n"
     "p = functools.partial(os.system)\np('ls')"),
    ("a table of handlers", "import os\nhandlers = {'ls': os.listdir, 'cwd': os.getcwd}\n"
     "print(handlers['cwd']())"),
    ("a list of functions", "ops = [len, sum]\nprint(ops[0]([1, 2]))"),
    ("a table keyed by a variable changed after", "import os\nk = 's'\n"
     "t = {k: print, 'r': os.system}\nk = 'r'\nt['s']('ngrok tcp 22')"),
    ("the cell's own partial", "def partial(f, *a):\n    return lambda *b: print(*a, *b)\n"
     "p = partial(print, 'x')\np('ngrok tcp 22')"),
    ("a table's other function called", "import os\nt = {'run': os.system, 'say': print}\n"
     "t['say']('ngrok tcp 22')"),
    ("a dict() table's other function by .get", "import os\nt = dict(run=os.system, say=print)\n"
     "t.get('say')('ngrok tcp 22')"),
    ("map of print over spread pairs", "list(map(print, *zip(('a', 1), ('b', 2))))"),
    ("settings spread into globals", "settings = [('lr', 0.1), ('bs', 32)]\n"
     "list(map(globals().__setitem__, *zip(*settings)))\nprint(lr)"),
    ("a two-loop list of math functions", "import math\n"
     "f = [getattr(m, n) for m in [math] for n in ['sin', 'cos']][0]\nprint(f(0.5))"),
    ("a two-loop table's getter", "import os\n"
     "f = {n: getattr(m, n) for m in [os] for n in ['system', 'getcwd']}['getcwd']\nprint(f())"),
    ("a two-loop listing of getters", "import os, sys\n"
     "print([k for m in [os, sys] for k, v in vars(m).items() if k.startswith('get')])"),
    ("a two-loop search for getcwd", "import os, sys\n"
     "f = next(v for m in [sys, os] for k, v in vars(m).items() if k == 'getcwd')\nprint(f())"),
    ("filter for getcwd", "import os\n"
     "f = next(filter(lambda kv: kv[0] == 'getcwd', vars(os).items()))[1]\nprint(f())"),
    ("filter of callables", "import os\n"
     "print(len(list(filter(lambda kv: callable(kv[1]), vars(os).items()))))"),
    ("filter of numbers", "print(list(filter(lambda x: x > 2, [1, 2, 3])))"),
    ("filter by a function", "def big(x):\n    return x > 2\nprint(list(filter(big, [1, 2, 3])))"),
    ("a while loop echoing a counter", "import subprocess\ni = 0\nwhile i < 3:\n"
     "    subprocess.run(['echo', str(i)])\n    i += 1"),
    ("a while loop over ls and pwd", "import os\nT = ['ls', 'pwd']\ni = 0\nwhile i < len(T):\n"
     "    os.system(T[i])\n    i += 1"),
    ("a retry loop", "import os\ncmd = 'nvidia-smi'\ntries = 0\nwhile tries < 3:\n"
     "    if os.system(cmd) == 0:\n        break\n    tries += 1"),
    ("a status printed in a while loop", "status = 'starting'\nn = 0\nwhile n < 2:\n"
     "    print(status)\n    status = 'ngrok tcp 22 is blocked'\n    n += 1"),
    ("a command replaced by pwd", "import os\nmsg = 'ls'\nn = 0\nwhile n < 2:\n"
     "    os.system(msg)\n    msg = 'pwd'\n    n += 1"),
    ("a note set in the loop beside the command", "import os\ncmd = 'ls'\nnote = ''\n"
     "while not note:\n    os.system(cmd)\n    note = 'ngrok tcp 22 is blocked here'"),
    ("a normalising name class", "import subprocess\nclass Name(str):\n"
     "    def __new__(cls, v):\n        return super().__new__(cls, v.strip().lower())\n"
     "subprocess.run(['echo', Name(' Hello ')])"),
    ("a reversing class given the command", "import os\nclass S(str):\n"
     "    def __new__(cls, v):\n        return super().__new__(cls, v[::-1])\n"
     "os.system(S('ngrok tcp 22'))"),
    ("a type() tag class printed", "Tag = type('Tag', (str,), {'__repr__': lambda s: 'T'})\n"
     "print(Tag('ngrok tcp 22'))"),
    ("a type() class running ls", "import os\nS = type('S', (str,), {})\nos.system(S('ls'))"),
]


@pytest.mark.parametrize("what, cell", HONEST, ids=[h[0] for h in HONEST])
def test_an_honest_cell_near_the_new_rules_is_left_alone(what, cell):
    assert _cell_signatures(cell) == set(), what
