"""Red team, session 13: the cell check (detect/cells.py) against its "runners kept aside" rule
and the commands it folds, as an abuser who has read the code; then the honest cells the rule
must leave alone.

Each evasion is a cell that starts ``ngrok tcp 22`` (a tool known by name) with the command
spelled out in the cell: it was missed (the cell ran; the sampler then stopped ngrok by its name)
and is refused now. ``test_each_evasion_really_starts_its_program`` runs them in plain Python with
a stand-in ``ngrok`` on the PATH, so that each is known to start the program. What is still
missed, or still refused though honest, is ``xfail(strict=True)`` with the exact reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_redteam_evasions import _cell_signatures

FORBIDDEN = "proxy-known-tool"
_ECHOES = ", ".join(f"'echo {i}'" for i in range(20))  # a table padded past the rows read one by one
_ECHO_TABLE = ", ".join(f"'k{i}': 'echo {i}'" for i in range(20))
_HUNDRED = ", ".join(f"'echo {i}'" for i in range(100))
_ECHOES_600 = ", ".join(f"'echo {i}'" for i in range(600))

#: A runner used as a value, through what the rule did not follow: a call or an item that names
#: one (``getattr(os, "system")``, ``vars(os)["system"]``, kept in a name), attrgetter and
#: methodcaller (kept too), a conditional or boolean callee, an await, a lambda or generator
#: or decorator that gives one, ``with … as f``, ``match … case f``, a base class's
#: member, a property, ``__getattr__``, ``__enter__``, a parameter's default table, a class made
#: by ``type()``, ``vars(obj)[k] = …``, ``operator.call``, ``eval("os.system")``, and a holder
#: handed to map/Thread/submit/partial/methodcaller.
KEPT_ASIDE = [
    ('methodcaller kept', 'import os, operator\n'
                          "m = operator.methodcaller('system', 'ngrok tcp 22')\n" 'm(os)'),
    ('attrgetter', 'import os, operator\n' "operator.attrgetter('system')(os)('ngrok tcp 22')"),
    ('attrgetter kept', 'import os, operator\n' "g = operator.attrgetter('system')\n"
                        "g(os)('ngrok tcp 22')"),
    ('getattr kept', 'import os\n' "f = getattr(os, 'system')\n" "f('ngrok tcp 22')"),
    ('getattr assembled', 'import os\n' "f = getattr(os, 'sys' + 'tem')\n" "f('ngrok tcp 22')"),
    ('vars kept', 'import os\n' "f = vars(os)['system']\n" "f('ngrok tcp 22')"),
    ('os.__dict__ kept', 'import os\n' "f = os.__dict__['system']\n" "f('ngrok tcp 22')"),
    ('zip', 'import os\n' "for f, c in zip([os.system], ['ngrok tcp 22']):\n" '    f(c)'),
    ('items zip call', 'import os\n' "d = {'go': os.system}\n"
                       "[f(c) for f, c in zip(d.values(), ['ngrok tcp 22'])]"),
    ('with', 'import os, contextlib\n' 'with contextlib.nullcontext(os.system) as f:\n'
             "    f('ngrok tcp 22')"),
    ('with enter', 'import os\n' 'class K:\n' '    def __enter__(self):\n'
                   '        return os.system\n' '    def __exit__(self, *a):\n' '        pass\n'
                   'with K() as f:\n' "    f('ngrok tcp 22')"),
    ('match', 'import os\n' 'match os.system:\n' '    case f:\n' "        f('ngrok tcp 22')"),
    ('match capture as', 'import os\n' 'match [os.system]:\n' '    case [f]:\n'
                         "        f('ngrok tcp 22')"),
    ('generator', 'import os\n' 'def gen():\n' '    yield os.system\n' 'for f in gen():\n'
                  "    f('ngrok tcp 22')"),
    ('generator next', 'import os\n' 'def gen():\n' '    yield os.system\n'
                       "next(gen())('ngrok tcp 22')"),
    ('async returns', 'import os\n' 'async def get():\n' '    return os.system\n'
                      "(await get())('ngrok tcp 22')"),
    ('subclass', 'import os\n' 'class A:\n' '    go = os.system\n' 'class B(A):\n' '    pass\n'
                 "B.go('ngrok tcp 22')"),
    ('subclass instance', 'import os\n' 'class A:\n' '    go = staticmethod(os.system)\n'
                          'class B(A):\n' '    pass\n' "B().go('ngrok tcp 22')"),
    ('property', 'import os\n' 'class A:\n' '    @property\n' '    def go(self):\n'
                 '        return os.system\n' "A().go('ngrok tcp 22')"),
    ('__getattr__', 'import os\n' 'class A:\n' '    def __getattr__(self, n):\n'
                    '        return os.system\n' "A().anything('ngrok tcp 22')"),
    ('default kwargs dict', 'import os\n' "def f(c, tools={'sh': os.system}):\n"
                            "    tools['sh'](c)\n" "f('ngrok tcp 22')"),
    ('default kwargs dict 2', 'import os\n' "def f(tools={'sh': os.system}):\n"
                              "    tools['sh']('ngrok tcp 22')\n" 'f()'),
    ('map via holder', 'import os\n' "d = {'a': os.system}\n"
                       "list(map(d['a'], ['ngrok tcp 22']))"),
    ('operator.call', 'import os, operator\n' "operator.call(os.system, 'ngrok tcp 22')"),
    ('ifexp callee', 'import os\n' "(os.system if True else print)('ngrok tcp 22')"),
    ('boolop callee', 'import os\n' "(None or os.system)('ngrok tcp 22')"),
    ('lambda returning', 'import os\n' "(lambda: os.system)()('ngrok tcp 22')"),
    ('lambda returning kept', 'import os\n' 'g = lambda: os.system\n' "g()('ngrok tcp 22')"),
    ('eval name', 'import os\n' "eval('os.system')('ngrok tcp 22')"),
    ('thread holder', 'import os, threading\n' "d = {'a': os.system}\n"
                      "threading.Thread(target=d['a'], args=('ngrok tcp 22',)).start()"),
    ('submit holder', 'import os\n' 'from concurrent.futures import ThreadPoolExecutor\n'
                      'r = [os.system]\n' "ThreadPoolExecutor().submit(r[0], 'ngrok tcp 22')"),
    ('partial holder', 'import os, functools\n' 'r = [os.system]\n'
                       "functools.partial(r[0], 'ngrok tcp 22')()"),
    ('vars instance set', 'import os\n' 'class A: pass\n' 'a = A()\n'
                          "vars(a)['go'] = os.system\n" "a.go('ngrok tcp 22')"),
    ('type() class instance', 'import os\n'
                              "A = type('A', (), {'go': staticmethod(os.system)})\n"
                              "A().go('ngrok tcp 22')"),
    ('decorator returning runner', 'import os\n' 'def deco(f):\n' '    return os.system\n'
                                   '@deco\n' 'def go(c):\n' '    pass\n' "go('ngrok tcp 22')"),
    ('method caller on instance', 'import os, operator\n' 'class A:\n'
                                  '    go = staticmethod(os.system)\n'
                                  "operator.methodcaller('go', 'ngrok tcp 22')(A())"),
    ('dataclass ctor runner', 'import os\n' 'from dataclasses import dataclass\n' '@dataclass\n'
                              'class C:\n' '    run: object = print\n'
                              '    other: object = os.system\n'
                              "C(run=os.system).run('ngrok tcp 22')"),
    ('self.go = self.sh', 'import subprocess\n' 'class A:\n'
                          '    sh = staticmethod(subprocess.getoutput)\n'
                          '    def __init__(self):\n' '        self.go = self.sh\n'
                          "A().go('ngrok tcp 22')"),
    ('__getattribute__', "import os\nf = os.__getattribute__('system')\nf('ngrok tcp 22')"),
    ('object.__getattribute__', "import os\nf = object.__getattribute__(os, 'system')\n"
                                "f('ngrok tcp 22')"),
    ('a runner and a table padded past 16 rows',
     "import os\nd = {'go': os.system}\nfor k, c in {" + _ECHO_TABLE + ", 'z': 'ngrok tcp 22'}.items():\n"
     "    d['go'](c)"),
    ('zip of runners and commands past 16 rows',
     "import os\nfor f, c in zip([os.system] * 30, [" + _ECHOES + ", 'ngrok tcp 22']):\n    f(c)"),
]

#: A constant command line reaching a runner the check names (os.system, subprocess.run, a cell
#: function that runs its argument) through a loop over a table's items, pairs, enumerate or
#: range, a generator, filter, sorted or chain of a table, an item taken by a key or index only
#: known when it runs (``cmds[k]``, ``pop()``, ``random.choice``, ``c = cmds[i]``, ``get``'s
#: default), loops nested three deep, a dict comprehension, a class's or instance's constant
#: (``self.cmd``, ``K().cmd``, a dataclass default, one of several a method may set, a cell base
#: class's), a parameter's default, a keyword argument, either side of ``if … else``/``and``/
#: ``or``, a walrus, ``format()``.
COMMAND_TABLES = [
    ('loop over items', 'import os\n' "for name, cmd in {'t': 'ngrok tcp 22'}.items():\n"
                        '    os.system(cmd)'),
    ('loop over pairs', 'import os\n' "for name, cmd in [('t', 'ngrok tcp 22')]:\n"
                        '    os.system(cmd)'),
    ('loop dict keys index', 'import os\n' "cmds = {'t': 'ngrok tcp 22'}\n" 'for k in cmds:\n'
                             '    os.system(cmds[k])'),
    ('loop dict values', 'import os\n' "cmds = {'t': 'ngrok tcp 22'}\n"
                         'for c in cmds.values():\n' '    os.system(c)'),
    ('loop enumerate cmds', 'import os\n' "for i, c in enumerate(['ngrok tcp 22']):\n"
                            '    os.system(c)'),
    ('while pop', 'import os\n' "cmds = ['ngrok tcp 22']\n" 'while cmds:\n'
                  '    os.system(cmds.pop())'),
    ('range index', 'import os\n' "c = ['ngrok tcp 22']\n" 'for i in range(1):\n'
                    '    os.system(c[i])'),
    ('three nested loops', 'import os\n' 'for a in [1]:\n' '    for b in [2]:\n'
                           "        for c in ['ngrok tcp 22']:\n" '            os.system(c)'),
    ('index var assigned', 'import os\n' "cmds = ['ngrok tcp 22']\n"
                           'for i in range(len(cmds)):\n' '    c = cmds[i]\n' '    os.system(c)'),
    ('list comp index', 'import os\n' "cmds = ['ngrok tcp 22']\n"
                        '[os.system(cmds[i]) for i in range(len(cmds))]'),
    ('dict comp cmds', 'import subprocess\n'
                       "cmds = {k: v for k, v in [('t', 'ngrok tcp 22')]}\n"
                       'for c in cmds.values():\n' '    subprocess.run(c, shell=True)'),
    ('random choice', 'import os, random\n' "os.system(random.choice(['ngrok tcp 22']))"),
    ('class method loop', 'import subprocess\n' 'class T:\n' "    CMDS = ['ngrok tcp 22']\n"
                          '    def go(self):\n' '        for c in self.CMDS:\n'
                          '            subprocess.run(c, shell=True)\n' 'T().go()'),
    ('instance attr cmd', 'import os\n' 'class T:\n' "    CMD = 'ngrok tcp 22'\n"
                          'os.system(T().CMD)'),
    ('self attr cmd', 'import os\n' 'class T:\n' '    def __init__(self):\n'
                      "        self.cmd = 'ngrok tcp 22'\n" '    def go(self):\n'
                      '        os.system(self.cmd)\n' 'T().go()'),
    ('function default cmd', 'import os\n' "def go(cmd='ngrok tcp 22'):\n" '    os.system(cmd)\n'
                             'go()'),
    ('dataclass default cmd', 'import os\n' 'from dataclasses import dataclass\n' '@dataclass\n'
                              'class J:\n' "    cmd: str = 'ngrok tcp 22'\n" 'os.system(J().cmd)'),
    ('keyword call of runner fn', 'import subprocess\n' 'def sh(cmd):\n'
                                  '    subprocess.run(cmd, shell=True)\n'
                                  "sh(cmd='ngrok tcp 22')"),
    ('runner fn 2nd arg kw', 'import subprocess\n' 'def sh(name, cmd):\n'
                             '    subprocess.run(cmd, shell=True)\n'
                             "sh('x', cmd='ngrok tcp 22')"),
    ('get default', 'import os\n' "cmds = {'b': 'echo'}\n"
                    "os.system(cmds.get('a', 'ngrok tcp 22'))"),
    ('chain', 'import os, itertools\n' "for c in itertools.chain(['echo'], ['ngrok tcp 22']):\n"
              '    os.system(c)'),
    ('self attr set twice, arm first', 'import os\n' 'class T:\n' '    def arm(self):\n'
                                       "        self.cmd = 'ngrok tcp 22'\n"
                                       '    def __init__(self):\n'
                                       "        self.cmd = 'echo ready'\n" '    def go(self):\n'
                                       '        os.system(self.cmd)\n' 't = T()\n' 't.arm()\n'
                                       't.go()'),
    ('class attr then instance attr', 'import os\n' 'class T:\n' "    cmd = 'echo ready'\n"
                                      '    def arm(self):\n'
                                      "        self.cmd = 'ngrok tcp 22'\n" '    def go(self):\n'
                                      '        os.system(self.cmd)\n' 't = T()\n' 't.arm()\n'
                                      't.go()'),
    ('a generator over a long table', "import os\nT = [" + _HUNDRED + ", 'ngrok tcp 22']\n"
                                      "for c in (x for x in T if x):\n    os.system(c)"),
    ('filter of a long table', "import os\nT = [" + _HUNDRED + ", 'ngrok tcp 22']\n"
                               "for c in filter(None, T):\n    os.system(c)"),
    ('sorted with a key', "import os\nT = [" + _HUNDRED + ", 'ngrok tcp 22']\n"
                          "for c in sorted(T, key=len):\n    os.system(c)"),
    ('a table padded to 600 items', "import os\nT = [" + _ECHOES_600 + ", 'ngrok tcp 22']\n"
                                    "for c in T:\n    os.system(c)"),
    ('inherited constant', 'import os\n' 'class A:\n' "    CMD = 'ngrok tcp 22'\n"
                           'class B(A):\n' '    def go(self):\n' '        os.system(self.CMD)\n'
                           'B().go()'),
    ('inherited constant on class', 'import os\n' 'class A:\n' "    CMD = 'ngrok tcp 22'\n"
                                    'class B(A):\n' '    pass\n' 'os.system(B.CMD)'),
    ('ifexp command', 'import os, sys\n' "os.system('ngrok tcp 22' if sys.argv else 'echo')"),
    ('boolop command', 'import os, sys\n' "os.system(sys.argv[0] and 'ngrok tcp 22')"),
    ('walrus command', 'import os\n' "os.system(c := 'ngrok tcp 22')"),
    ('format builtin', 'import os\n' "os.system(format('ngrok tcp 22'))"),
    ('ifexp in kept runner', 'import os, sys\n' 'r = [os.system]\n'
                             "r[0]('ngrok tcp 22' if sys.argv else 'echo')"),
    ('a keyword command from a padded loop', "import subprocess\nfor c in [" + _ECHOES +
     ", 'ngrok tcp 22']:\n    subprocess.run(args=c, shell=True)"),
    ('a table padded past 16 rows', "import os\nfor name, cmd in {" + _ECHO_TABLE +
     ", 'z': 'ngrok tcp 22'}.items():\n    os.system(cmd)"),
    ('a list padded past 16 rows', "import os\nfor cmd in [" + _ECHOES + ", 'ngrok tcp 22']:\n"
                                   "    os.system(cmd)"),
    ('pop of a padded list', "import os\ncmds = [" + _ECHOES + ", 'ngrok tcp 22']\nwhile cmds:\n"
                             "    os.system(cmds.pop(0))"),
    ('a loop body past the unrolling budget', "import os\nfor c in ['ngrok tcp 22']:\n"
                                              "    x = [" + ", ".join(["1"] * 5000) + "]\n"
                                              "    os.system(c)"),
    ('an f-string of a padded loop', "import os\nfor t in [" + _ECHOES + ", 'ngrok']:\n"
                                     "    os.system(f'{t} tcp 22')"),
]

#: String methods the folding did not know: str.join unbound, title, casefold, removeprefix,
#: lstrip, swapcase, map(str, …), bytes.decode unbound.
FOLDED = [
    ('str.join', 'import os\n' "os.system(str.join(' ', ['ngrok', 'tcp', '22']))"),
    ('title lower', 'import os\n' "os.system('Ngrok Tcp 22'.title().lower())"),
    ('casefold', 'import os\n' "os.system('NGROK TCP 22'.casefold())"),
    ('removeprefix', 'import os\n' "os.system('xxngrok tcp 22'.removeprefix('xx'))"),
    ('lstrip', 'import os\n' "os.system('   ngrok tcp 22'.lstrip())"),
    ('swapcase', 'import os\n' "os.system('NGROK TCP 22'.swapcase())"),
    ('map str join', 'import os\n' "os.system(''.join(map(str, ['ngrok', ' tcp 22'])))"),
    ('bytes decode', 'import os\n' "os.system(bytes.decode(b'ngrok tcp 22'))"),
]

#: A runner put on an object past the members its class names (``__setattr__``, ``__dict__``,
#: ``vars()``, ``__class__``, a name only known when it runs, a class decorator or metaclass),
#: or kept as an item of a class derived from dict: refused by the rule as it was (any attribute of a holder it did not name
#: might run); kept refused now that a class's unnamed attributes are taken for its bases'.
CLOSED_CLASSES = [
    ('object.__setattr__ on instance', 'import os, subprocess\n' 'class A:\n'
                                       '    sh = subprocess.run\n' 'a = A()\n'
                                       "object.__setattr__(a, 'go', os.system)\n"
                                       "a.go('ngrok tcp 22')"),
    ('__setattr__ method', 'import os, subprocess\n' 'class A:\n' '    sh = subprocess.run\n'
                           'a = A()\n' "a.__setattr__('go', os.system)\n" "a.go('ngrok tcp 22')"),
    ('__dict__.update', 'import os, subprocess\n' 'class A:\n' '    sh = subprocess.run\n'
                        'a = A()\n' 'a.__dict__.update(go=os.system)\n' "a.go('ngrok tcp 22')"),
    ('vars().update', 'import os, subprocess\n' 'class A:\n' '    sh = subprocess.run\n'
                      'a = A()\n' "vars(a).update({'go': os.system})\n" "a.go('ngrok tcp 22')"),
    ('__class__ attr', 'import os, subprocess\n' 'class A:\n' '    sh = subprocess.run\n'
                       'a = A()\n' 'a.__class__.go = os.system\n' "a.go('ngrok tcp 22')"),
    ('dict subclass item', 'import os\n' 'class D(dict):\n' '    run = os.system\n'
                           "D(go=os.system)['go']('ngrok tcp 22')"),
    ('setattr unknown name', 'import os, subprocess, sys\n' 'class A:\n'
                             '    sh = subprocess.run\n' 'a = A()\n' "n = sys.argv[0] and 'go'\n"
                             'setattr(a, n, os.system)\n' "a.go('ngrok tcp 22')"),
    ('type.__setattr__', 'import os, subprocess\n' 'class A:\n' '    sh = subprocess.run\n'
                         "type.__setattr__(A, 'go', os.system)\n" "A.go('ngrok tcp 22')"),
    ('class decorator adds runner', 'import os, subprocess\n' 'def add(c):\n'
                                    '    c.go = os.system\n' '    return c\n' '@add\n'
                                    'class A:\n' '    sh = subprocess.run\n'
                                    "A.go('ngrok tcp 22')"),
    ('metaclass adds runner', 'import os, subprocess\n' 'class M(type):\n'
                              '    def __new__(m, n, b, d):\n' "        d['go'] = os.system\n"
                              '        return super().__new__(m, n, b, d)\n'
                              'class A(metaclass=M):\n' '    sh = subprocess.run\n'
                              "A.go('ngrok tcp 22')"),
    ('type(a).go', 'import os, subprocess\n' 'class A:\n' '    sh = subprocess.run\n' 'a = A()\n'
                   'type(a).go = os.system\n' "a.go('ngrok tcp 22')"),
    ('setattr type(a)', 'import os, subprocess\n' 'class A:\n' '    sh = subprocess.run\n'
                        'a = A()\n' "setattr(type(a), 'go', os.system)\n" "a.go('ngrok tcp 22')"),
]

EVASIONS = KEPT_ASIDE + COMMAND_TABLES + FOLDED + CLOSED_CLASSES


@pytest.mark.parametrize("what, cell", KEPT_ASIDE, ids=[k[0] for k in KEPT_ASIDE])
def test_a_runner_kept_aside_in_more_ways_is_refused(what, cell):
    """Was missed. Caught now by the same rule, followed further (detect/cells.py, "runners
    kept aside"): ``_tainted`` reads a call or item that names a runner, a conditional, an
    await, a lambda's body; a function's yields are what it returns; ``with``/``match`` bind
    what they are given; a class inherits its cell bases' members, and its properties,
    ``__getattr__`` and ``__enter__`` give what they return; parameters hold their defaults;
    loops are read row by row (zip, items, enumerate); a holder handed over runs what it is
    handed with."""
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("what, cell", COMMAND_TABLES, ids=[c[0] for c in COMMAND_TABLES])
def test_a_command_taken_from_a_table_class_or_default_is_refused(what, cell):
    """Was missed: only a loop over a constant list, bound to one name, was read item by item
    (16 items, two loops deep). Caught now: loops over rows (``items()``, pairs, enumerate,
    zip, range) are read row by row; past 16 rows or two loops deep, the variable holds one
    of the table's items (``choices``), as does an item taken by a key only known when it runs,
    and a runner given it is read with each; classes' constants are read as ``self.x`` in their
    methods and ``K().x``; a function's body is read with its parameters' constant defaults;
    a cell function that runs its argument is read when given it by keyword."""
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("what, cell", FOLDED, ids=[f[0] for f in FOLDED])
def test_a_command_assembled_with_more_string_methods_is_refused(what, cell):
    """Was missed: those methods were not folded. Folded now (``_STR_METHODS``: none makes a
    string longer than its base, so no folding is unbounded)."""
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("what, cell", CLOSED_CLASSES, ids=[c[0] for c in CLOSED_CLASSES])
def test_a_runner_set_past_a_classs_named_members_is_still_refused(what, cell):
    """``_set_member``/``_mutated`` read ``a.__dict__``, ``vars(a)``, ``type(a)`` and
    ``a.__class__`` as a, ``__setattr__`` (bound, ``object.``'s, ``type.``'s) as setattr, a name
    not known as any of a's; items of an instance are not its members; a class with a
    metaclass or a decorator other than ``dataclass``/``total_ordering``/``final`` is not
    closed."""
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.fixture(scope="module")
def stand_in_path(tmp_path_factory):
    """A folder with an ``ngrok`` that records each start in ``started`` beside it."""
    folder = tmp_path_factory.mktemp("bin")
    tool = folder / "ngrok"
    tool.write_text(f'#!/bin/sh\necho "$*" >> {folder / "started"}\n')
    tool.chmod(0o755)
    return folder


@pytest.mark.parametrize("what, cell", EVASIONS, ids=[e[0] for e in EVASIONS])
def test_each_evasion_really_starts_its_program(what, cell, stand_in_path, tmp_path):
    """The evasions are Python that starts ngrok when it runs (top-level ``await`` run in a
    coroutine), not spellings the check merely reads as such."""
    started = stand_in_path / "started"
    started.unlink(missing_ok=True)
    source = cell
    if "await " in cell:
        body = "\n".join("    " + line for line in cell.splitlines())
        source = f"import asyncio\nasync def _cell():\n{body}\nasyncio.run(_cell())"
    env = dict(os.environ, PATH=f"{stand_in_path}:{os.environ['PATH']}")
    subprocess.run([sys.executable, "-c", source], env=env, cwd=tmp_path, timeout=60,
                   capture_output=True)
    assert started.exists() and "tcp 22" in started.read_text(), what


#: Honest cells near the rule: runners kept beside printers, loggers, displays and messages
#: that name ngrok; tables of honest commands; classes, defaults, loops, ``with``, ``match``,
#: generators, properties over text (the rule's false positives are in
#: ``test_a_library_classs_own_methods_are_no_runners``).
HONEST = [
    ('run alias pip', 'import subprocess\n' 'run = subprocess.run\n'
                      "run(['pip', 'install', 'x'])"),
    ('for cmd os.system', 'import os\n' "for cmd in ['nvidia-smi', 'ls']:\n" '    os.system(cmd)'),
    ('callbacks table print', 'import subprocess\n'
                              "handlers = {'sh': subprocess.run, 'say': print}\n"
                              'for name, h in handlers.items():\n' '    print(name)\n'
                              "handlers['say']('ngrok tcp 22 is blocked on this server')"),
    ('logger helper', 'import subprocess, logging\n' 'class Helper:\n'
                      '    run = subprocess.run\n' "    log = logging.getLogger('x')\n"
                      "Helper.log.warning('ngrok tcp 22 is blocked')"),
    ('warn through holder', 'import subprocess, warnings\n'
                            'tools = [subprocess.run, warnings.warn]\n'
                            "tools[1]('do not run ngrok tcp 22')"),
    ('argparse dispatch', 'import subprocess, sys\n' 'def cmd_install(a):\n'
                          "    subprocess.run(['pip', 'install', a])\n" 'def cmd_help(a):\n'
                          "    print('usage: ngrok tcp 22 is not allowed', a)\n"
                          "COMMANDS = {'install': cmd_install, 'help': cmd_help}\n"
                          "COMMANDS['help']('ngrok tcp 22')"),
    ('dispatch by var', 'import subprocess\n' "COMMANDS = {'sh': subprocess.run, 'say': print}\n"
                        "for k in ['say']:\n" "    COMMANDS[k]('ngrok tcp 22 is blocked')"),
    ('f-string exception', 'import subprocess\n' 'run = subprocess.run\n' 'try:\n'
                           "    run(['nvidia-smi'], check=True)\n" 'except Exception as e:\n'
                           "    raise RuntimeError(f'ngrok tcp 22 is blocked: {e}')"),
    ('display Markdown holder', 'import subprocess\n'
                                'from IPython.display import display, Markdown\n'
                                "out = {'run': subprocess.run, 'show': display}\n"
                                "out['show'](Markdown('Do not run `ngrok tcp 22`'))"),
    ('help text', 'import subprocess\n' 'class CLI:\n' '    run = subprocess.run\n'
                  "    help = 'ngrok tcp 22 is blocked'\n" 'print(CLI.help)'),
    ('plugin registry', 'import subprocess\n' 'REGISTRY = {}\n' 'def register(name):\n'
                        '    def deco(f):\n' '        REGISTRY[name] = f\n' '        return f\n'
                        '    return deco\n' "@register('sh')\n" 'def sh(c):\n'
                        '    return subprocess.run(c, shell=True)\n' "@register('echo')\n"
                        'def echo(c):\n' '    print(c)\n'
                        "REGISTRY['echo']('ngrok tcp 22 is blocked')"),
    ('typer app', 'import typer, subprocess\n' 'app = typer.Typer()\n' '@app.command()\n'
                  'def hello(name: str):\n' "    subprocess.run(['echo', name])\n"
                  "app(['hello', 'ngrok tcp 22'])"),
    ('click', 'import click, subprocess\n' '@click.command()\n' "@click.argument('x')\n"
              'def main(x):\n' "    subprocess.run(['ls', x])\n"
              "main(['ngrok tcp 22'], standalone_mode=False)"),
    ('runner kept + print loop', 'import os\n' 'runners = [os.system]\n' 'for r in runners:\n'
                                 "    print(r.__name__, 'ngrok tcp 22 is blocked')"),
    ('logging helper with runner', 'import subprocess, logging\n' 'def sh(cmd):\n'
                                   "    logging.info('running %s', cmd)\n"
                                   '    return subprocess.run(cmd, shell=True)\n'
                                   "logging.info('ngrok tcp 22 is blocked')\n" "sh('nvidia-smi')"),
    ('class with run method text', 'import subprocess\n' 'class Shell:\n'
                                   '    def __init__(self):\n'
                                   '        self.runner = subprocess.run\n'
                                   '    def warn(self, msg):\n' '        print(msg)\n'
                                   "Shell().warn('ngrok tcp 22 is blocked')"),
    ('instance call __call__ prints', 'import subprocess\n' 'class Logger:\n'
                                      '    sh = subprocess.run\n' '    def __call__(self, m):\n'
                                      '        print(m)\n' 'log = Logger()\n'
                                      "log('ngrok tcp 22 is blocked')"),
    ('str.format through holder', 'import subprocess\n' "d = {'run': subprocess.run}\n"
                                  "msg = 'ngrok tcp 22 is blocked'.format()\n" 'print(msg)'),
    ('with popen', 'import subprocess\n'
                   "with subprocess.Popen(['nvidia-smi'], stdout=subprocess.PIPE) as p:\n"
                   "    print(p.stdout.read(), 'ngrok tcp 22 is blocked')"),
    ('with open text', "with open('notes.txt', 'w') as f:\n"
                       "    f.write('ngrok tcp 22 is blocked')"),
    ('pool map print', 'from multiprocessing.pool import ThreadPool\n' 'import subprocess\n'
                       "fns = {'run': subprocess.run, 'p': print}\n"
                       "ThreadPool(2).map(fns['p'], ['ngrok tcp 22 is blocked'])"),
    ('subclass printer', 'import subprocess\n' 'class Base:\n' '    run = subprocess.run\n'
                         '    def log(self, m):\n' '        print(m)\n' 'class Child(Base):\n'
                         '    pass\n' "Child().log('ngrok tcp 22 is blocked')"),
    ('property returning name', 'import subprocess\n' 'class T:\n' '    run = subprocess.run\n'
                                '    @property\n' '    def label(self):\n' "        return 'x'\n"
                                "print(T().label, 'ngrok tcp 22 is blocked')"),
    ('generator of commands honest', 'import subprocess\n' 'def steps():\n'
                                     "    yield ['pip', 'install', 'x']\n" 'for s in steps():\n'
                                     '    subprocess.run(s)'),
    ('match on command text', 'import subprocess\n' "cmd = 'help'\n" 'match cmd:\n'
                              "    case 'run':\n" "        subprocess.run(['ls'])\n"
                              '    case other:\n'
                              "        print(other, 'ngrok tcp 22 is blocked')"),
    ('default kwargs runner honest', 'import subprocess\n' 'def sh(cmd, run=subprocess.run):\n'
                                     "    print('would run', cmd)\n" "sh('ngrok tcp 22')"),
    ('tqdm write', 'import subprocess\n' 'from tqdm import tqdm\n'
                   'for step in tqdm([subprocess.run]):\n'
                   "    tqdm.write('ngrok tcp 22 is blocked')"),
    ('getattr printer', 'import builtins\n'
                        "getattr(builtins, 'print')('ngrok tcp 22 is blocked')"),
    ('getattr logger', 'import logging\n' "f = getattr(logging, 'warning')\n"
                       "f('ngrok tcp 22 is blocked')"),
    ('items loop print', 'import os\n'
                         "help = {'ngrok': 'ngrok tcp 22 is blocked', 'xmrig': 'xmrig -o pool:3333 is blocked'}\n"
                         'for name, text in help.items():\n' '    print(name, text)'),
    ('items loop honest run', 'import os\n' "steps = {'gpu': 'nvidia-smi', 'disk': 'df -h'}\n"
                              'for name, cmd in steps.items():\n' '    print(name)\n'
                              '    os.system(cmd)'),
    ('with job instance', 'import subprocess\n' 'class Job:\n' '    run = subprocess.run\n'
                          '    def __enter__(self):\n' '        return self\n'
                          '    def __exit__(self, *a):\n' '        pass\n'
                          '    def log(self, m):\n' '        print(m)\n' 'with Job() as j:\n'
                          "    j.log('ngrok tcp 22 is blocked')"),
    ('class method returning runner, other method', 'import subprocess\n' 'class Tool:\n'
                                                    '    def runner(self):\n'
                                                    '        return subprocess.run\n'
                                                    '    def note(self, m):\n'
                                                    '        print(m)\n'
                                                    "Tool().note('ngrok tcp 22 is blocked')\n"
                                                    't = Tool()\n'
                                                    "t.note('ngrok tcp 22 is blocked')"),
    ('match literal', 'import subprocess\n' "match ['run', 'x']:\n" "    case ['run', arg]:\n"
                      "        print(arg, 'ngrok tcp 22 is blocked')"),
    ('generator yields printers', 'def sinks():\n' '    yield print\n' 'for s in sinks():\n'
                                  "    s('ngrok tcp 22 is blocked')"),
    ('steps then blocked list', 'import subprocess\n'
                                "STEPS = {'gpu': 'nvidia-smi', 'disk': 'df -h'}\n"
                                "BLOCKED = {'ngrok': 'ngrok tcp 22 is blocked'}\n"
                                'for name, cmd in STEPS.items():\n'
                                '    subprocess.run(cmd, shell=True)\n'
                                'for tool, why in BLOCKED.items():\n' '    print(tool, why)'),
    ('sh with a default note', 'import subprocess\n'
                               "def sh(cmd, note='ngrok tcp 22 is not allowed here'):\n"
                               '    print(note)\n' '    return subprocess.run(cmd, shell=True)\n'
                               "sh('nvidia-smi')"),
    ('class help constant', 'import subprocess\n' 'class Tunnel:\n'
                            "    HELP = 'ngrok tcp 22 is blocked on this server'\n"
                            "    def __init__(self, cmd='nvidia-smi'):\n"
                            '        self.cmd = cmd\n' '    def run(self):\n'
                            '        subprocess.run(self.cmd, shell=True)\n'
                            '    def explain(self):\n' '        print(self.HELP)\n'
                            'Tunnel().explain()'),
    ('dispatch loop by name', 'import subprocess\n' 'def cmd_log(msg):\n' '    print(msg)\n'
                              'def cmd_sh(c):\n' '    subprocess.run(c, shell=True)\n'
                              "COMMANDS = {'log': cmd_log, 'sh': cmd_sh}\n"
                              "for name in ['log']:\n"
                              "    COMMANDS[name]('ngrok tcp 22 is blocked')"),
    ('blocklist check with pkill', 'import subprocess\n' 'class Blocklist:\n'
                                   "    TOOLS = ['ngrok', 'xmrig']\n" '    def clean(self):\n'
                                   '        for t in self.TOOLS:\n'
                                   "            subprocess.run(['pkill', '-f', t])\n"
                                   'Blocklist().clean()'),
    ('messages by level', 'import os\n'
                          "MESSAGES = {'info': 'all good', 'warn': 'ngrok tcp 22 is blocked'}\n"
                          'level = input()\n' 'msg = MESSAGES[level]\n' 'print(msg)'),
    ('self.cmd honest in method', 'import subprocess\n' 'class Job:\n'
                                  '    def __init__(self):\n'
                                  "        self.cmd = ['nvidia-smi']\n"
                                  "        self.note = 'ngrok tcp 22 is blocked'\n"
                                  '    def go(self):\n' '        print(self.note)\n'
                                  '        subprocess.run(self.cmd)\n' 'Job().go()'),
    ('runner fn kwargs honest', 'import subprocess\n' "def sh(cmd, desc=''):\n"
                                '    print(desc)\n' '    subprocess.run(cmd, shell=True)\n'
                                "sh('nvidia-smi', desc='ngrok tcp 22 is blocked')"),
    ('getattr logger level', 'import logging\n' 'log = logging.getLogger()\n'
                             "getattr(log, 'warning')('ngrok tcp 22 is blocked')"),
    ('subprocess kept, print via getattr', 'import subprocess, builtins\n'
                                           "tools = {'run': subprocess.run}\n"
                                           "getattr(builtins, 'print')('ngrok tcp 22 is blocked')"),
    ('with runner result', 'import subprocess\n' "with subprocess.Popen(['nvidia-smi']) as p:\n"
                           '    p.wait()\n' "print('ngrok tcp 22 is blocked')"),
    ('match on tool names', 'import subprocess\n' "for tool in ['ngrok', 'nvidia-smi']:\n"
                            '    match tool:\n' "        case 'ngrok':\n"
                            "            print('ngrok tcp 22 is blocked')\n"
                            '        case other:\n' '            subprocess.run([other])'),
    ('thread with printer', 'import threading, subprocess\n'
                            "workers = {'sh': subprocess.run, 'say': print}\n"
                            "threading.Thread(target=workers['say'], args=('ngrok tcp 22 is blocked',)).start()"),
    ('executor map over files', 'import subprocess\n'
                                'from concurrent.futures import ThreadPoolExecutor\n'
                                'run = subprocess.run\n' 'with ThreadPoolExecutor() as ex:\n'
                                "    list(ex.map(print, ['ngrok tcp 22 is blocked']))"),
    ('property message', 'import subprocess\n' 'class T:\n' '    sh = subprocess.run\n'
                         '    @property\n' '    def banner(self):\n'
                         "        return 'ngrok tcp 22 is blocked'\n" 'print(T().banner)'),
    ('generator of messages', 'def lines():\n' "    yield 'ngrok tcp 22 is blocked'\n"
                              'for l in lines():\n' '    print(l)'),
    ('str methods in text', "print('NGROK TCP 22 IS BLOCKED'.casefold())"),
    ('zip names and runners printed', 'import subprocess, os\n'
                                      "for name, f in zip(['run', 'system'], [subprocess.run, os.system]):\n"
                                      "    print(name, f.__name__, 'ngrok tcp 22 is blocked')"),
    ('enumerate logs', 'import logging\n'
                       "for i, msg in enumerate(['ngrok tcp 22 is blocked']):\n"
                       "    logging.warning('%d %s', i, msg)"),
    ('eval of a number', "x = eval('1 + 2')\n" "print(x, 'ngrok tcp 22 is blocked')"),
    ('attrgetter on rows', 'import operator\n' "rows = [{'a': 1}]\n"
                           "get = operator.attrgetter('real')\n"
                           "print(get(1), 'ngrok tcp 22 is blocked')"),
    ('methodcaller upper', 'import operator\n' "up = operator.methodcaller('upper')\n"
                           "print(up('ngrok tcp 22 is blocked'))"),
    # the shapes of public setup notebooks: labelled command tables, install lists, a printing
    # run helper, f-string commands, a class of commands
    ('labelled setup commands', 'import subprocess\n' 'steps = {\n'
                                "    'Upgrade pip': ['python', '-m', 'pip', 'install', '-U', 'pip'],\n"
                                "    'Requirements': ['python', '-m', 'pip', 'install', '-r', 'requirements.txt'],\n"
                                "    'Folders': ['mkdir', '-p', 'input', 'output'],\n" '}\n'
                                'for label, argv in steps.items():\n'
                                "    print('==', label, '==')\n" '    subprocess.run(argv)'),
    ('install list with sudo and a clone', 'import subprocess\n' 'setup = [\n'
                                           "    'sudo apt-get update',\n"
                                           "    'sudo apt-get -y install ffmpeg git',\n"
                                           "    'pip3 install --upgrade torch matplotlib',\n"
                                           "    'git clone https://github.com/pytorch/examples',\n"
                                           ']\n' 'for line in setup:\n'
                                           '    proc = subprocess.Popen(line, stdout=subprocess.PIPE, shell=True)\n'
                                           '    print(proc.communicate()[0].decode())'),
    ('a printing run helper', 'import os\n' 'from subprocess import run\n' 'def r(cmd):\n'
                              "    print(f'$ {cmd}', flush=True)\n"
                              '    return run(cmd, shell=True, check=True)\n'
                              "r('git clone https://github.com/openai/gym')\n"
                              "os.chdir('gym')\n" "r('pip install -e .')\n"
                              "r('mkdir -p data figures')\n"
                              "r('wget https://example.org/data.tgz && tar -xzf data.tgz')"),
    ('f-string commands over a folder', 'import subprocess\n' "base = '/content/project'\n"
                                        "for x in [f'pip install -r {base}/requirements.txt', f'rm -rf {base}/tmp', f'bash {base}/postBuild']:\n"
                                        '    print(x)\n' "    subprocess.call(['bash', '-c', x])"),
    ('a class of commands with a dry run', 'import subprocess\n' 'class Setup:\n'
                                           "    CMDS = ['nvidia-smi', 'df -h', 'free -m']\n"
                                           '    def __init__(self, dry=False):\n'
                                           '        self.dry = dry\n' '    def run(self):\n'
                                           '        for c in self.CMDS:\n'
                                           "            print('$', c)\n"
                                           '            if not self.dry:\n'
                                           '                subprocess.run(c, shell=True)\n'
                                           'Setup(dry=True).run()'),
    ('a table of tool checks', 'import shutil\n'
                               "TOOLS = {'ffmpeg': 'video', 'git': 'code', 'ngrok': 'blocked here'}\n"
                               'for tool, why in TOOLS.items():\n'
                               '    print(tool, why, shutil.which(tool))'),
    # and of a public notebook starting its services in threads from a table of rows
    ('service launcher threads', 'import threading, time, sys, os\n' 'import uvicorn\n'
                                 "REPO_PATH = '/content/repo'\n"
                                 "for service in ['api-gateway', 'gemma-service', 'rag-service']:\n"
                                 "    sys.path.insert(0, os.path.join(REPO_PATH, f'services/{service}'))\n"
                                 'def start_service(name, import_path, port):\n'
                                 "    print(f'Starting {name} on port {port}...')\n" '    try:\n'
                                 "        uvicorn.run(import_path, host='0.0.0.0', port=port, log_level='error')\n"
                                 '    except Exception as e:\n'
                                 "        print(f'{name} error: {e}')\n" 'services = [\n'
                                 "    ('API Gateway', 'services.api-gateway.src.main:app', 8000),\n"
                                 "    ('Gemma', 'services.gemma-service.src.main:app', 8001),\n"
                                 ']\n' 'for name, path, port in services:\n'
                                 '    t = threading.Thread(target=start_service, args=(name, path, port), daemon=True)\n'
                                 '    t.start()\n' '    time.sleep(2)'),
    ('health check loop', 'import requests\n' "ports = {8000: 'API Gateway', 8001: 'Gemma'}\n"
                          'for port, name in ports.items():\n' '    try:\n'
                          "        r = requests.get(f'http://localhost:{port}/health', timeout=2)\n"
                          "        status = 'UP' if r.status_code == 200 else f'Code {r.status_code}'\n"
                          '    except Exception:\n' "        status = 'DOWN'\n"
                          "    print(f'  {name:15} (:{port}): {status}')"),
    ('gpu check', 'import subprocess, sys, platform\n' 'try:\n'
                  "    result = subprocess.run(['nvidia-smi'], capture_output=True, text=True, check=True)\n"
                  '    print(result.stdout)\n' 'except Exception as e:\n'
                  "    print(f'no GPU: {e}')"),
]


@pytest.mark.parametrize("what, cell", HONEST, ids=[h[0] for h in HONEST])
def test_honest_cells_near_the_rule_are_left_alone(what, cell):
    assert _cell_signatures(cell) == set(), what


@pytest.mark.parametrize("cell", [
    "import subprocess, logging\nclass L(logging.Logger):\n    sh = subprocess.run\n"
    "L('x').warning('ngrok tcp 22 is blocked')",
    "import subprocess\nclass T:\n    sh = subprocess.run\n    def say(self, m):\n        print(m)\n"
    "getattr(T(), 'say')('ngrok tcp 22 is blocked')",
], ids=["a library base's method", "getattr of a method"])
def test_a_library_classs_own_methods_are_no_runners(cell):
    """Was refused (a false positive of the rule as it was): any attribute of a class holding a
    runner that the cell does not name may be one, so a library base's method (``warning``),
    and ``getattr(obj, name)`` read as any item of obj. Now a class's members are closed (those
    it does not name are its library bases', no runners, unless its ``__getattr__`` gives one),
    and ``getattr(x, "k")`` is ``x.k``."""
    assert _cell_signatures(cell) == set()


_HANDLERS = "import subprocess\nhandlers = {'sh': subprocess.run, 'log': print}\n"

#: Honest loops over a table whose whole body is ``if key == "…":``: only that row runs.
GUARDED_HONEST = [
    ("handlers guarded by name", _HANDLERS + "for name, fn in handlers.items():\n"
                                             "    if name == 'log':\n"
                                             "        fn('ngrok tcp 22 is blocked')"),
    ("a constant table guarded by name", "import subprocess\n"
                                         "STEPS = {'install': ['pip', 'install', 'x'], "
                                         "'note': 'ngrok tcp 22 is blocked'}\n"
                                         "for name, what in STEPS.items():\n"
                                         "    if name == 'install':\n"
                                         "        subprocess.run(what)"),
    ("sinks guarded by name", "import subprocess, logging\n"
                              "sinks = {'run': subprocess.run, 'log': logging.warning}\n"
                              "for name, sink in sinks.items():\n    if 'log' == name:\n"
                              "        sink('ngrok tcp 22 is blocked')"),
]

#: The same loops where the row the condition picks is the runner's, or where the check cannot
#: tell the condition decides alone: still refused (each really starts ngrok).
GUARDED = [
    ("the runner's row picked", _HANDLERS + "for name, fn in handlers.items():\n"
                                            "    if name == 'sh':\n"
                                            "        fn('ngrok tcp 22', shell=True)"),
    ("the table changed before the loop", _HANDLERS + "handlers['log'] = subprocess.getoutput\n"
                                                      "for name, fn in handlers.items():\n"
                                                      "    if name == 'log':\n"
                                                      "        fn('ngrok tcp 22')"),
    ("a row picked by else", _HANDLERS + "for name, fn in handlers.items():\n"
                                         "    if name == 'log':\n        pass\n    else:\n"
                                         "        fn('ngrok tcp 22', shell=True)"),
    ("a call after the condition", _HANDLERS + "for name, fn in handlers.items():\n"
                                               "    if name == 'log':\n        print(name)\n"
                                               "    fn('ngrok tcp 22', shell=True)"),
    ("a condition that is not equality", _HANDLERS + "for name, fn in handlers.items():\n"
                                                     "    if name != 'log':\n"
                                                     "        fn('ngrok tcp 22', shell=True)"),
    ("a command table guarded by name", "import os\n"
                                        "for name, cmd in {'a': 'echo hi', 'b': 'ngrok tcp 22'}.items():\n"
                                        "    if name == 'b':\n        os.system(cmd)"),
]


@pytest.mark.parametrize("what, cell", GUARDED_HONEST, ids=[g[0] for g in GUARDED_HONEST])
def test_a_loop_over_handlers_guarded_by_name_is_left_alone(what, cell):
    """Was refused (a false positive): every row's call was read, the condition unread, so the
    message read as a command given to subprocess.run. Now (``_picked``) a loop whose whole body
    is one ``if key == "…":`` with no ``else`` reads only the rows with that key (the others run
    nothing at all, so nothing can change the key or the table before the picked row), of a
    constant table, a literal in the loop, or a literal the statement just before the loop
    assigns (nothing runs between them: a table changed elsewhere is read row by row as before)."""
    assert _cell_signatures(cell) == set(), what


@pytest.mark.parametrize("what, cell", GUARDED, ids=[g[0] for g in GUARDED])
def test_a_loop_guarded_by_name_still_reads_the_row_it_runs(what, cell):
    assert FORBIDDEN in _cell_signatures(cell), what


#: Runners found by a search of a module's members that picks a name the cell spells, or by a
#: frame's (or globals()') table of the cell's variables.
SEARCHED = [
    ("a search of vars(os)", "import os\nf = next(v for k, v in vars(os).items() if k == 'system')\n"
                              "f('ngrok tcp 22')"),
    ("inspect.getmembers", "import os, inspect\nf = dict(inspect.getmembers(os))['system']\n"
                           "f('ngrok tcp 22')"),
    ("functools.reduce of getattr", "import os, functools\n"
                                    "f = functools.reduce(getattr, ['system'], os)\nf('ngrok tcp 22')"),
    ("a frame's globals", "import os, sys\nf = sys._getframe().f_globals['os'].system\n"
                          "f('ngrok tcp 22')"),
    ("globals()", "import os\nglobals()['os'].system('ngrok tcp 22')"),
    ("a holder through globals()", "import os\nd = {'go': os.system}\n"
                                   "globals()['d']['go']('ngrok tcp 22')"),
    ("a loop over a module's members", "import os\nfor k, v in vars(os).items():\n"
                                       "    if k == 'system':\n        f = v\nf('ngrok tcp 22')"),
    ("getattr over dir", "import os\nf = [getattr(os, k) for k in dir(os) if k in ('system',)][0]\n"
                         "f('ngrok tcp 22')"),
    ("a dict comprehension of __dict__", "import os\n"
                                         "f = {k: v for k, v in os.__dict__.items() if k == 'system'}['system']\n"
                                         "f('ngrok tcp 22')"),
    ("a search of an aliased module", "import subprocess as sp\n"
                                      "f = next(v for k, v in vars(sp).items() if k == 'getoutput')\n"
                                      "f('ngrok tcp 22')"),
]

#: Honest searches of modules' members, and tables of a frame's or the cell's variables, beside
#: a message that names ngrok.
SEARCHED_HONEST = [
    ("callables listed", "import os\nnames = [k for k, v in vars(os).items() if callable(v)]\n"
                         "print(len(names), 'ngrok tcp 22 is blocked')"),
    ("a math function searched", "import math\nf = next(v for k, v in vars(math).items() if k == 'sqrt')\n"
                                 "print(f(4), 'ngrok tcp 22 is blocked')"),
    ("getmembers of getcwd", "import os, inspect\nf = dict(inspect.getmembers(os))['getcwd']\n"
                             "print(f(), 'ngrok tcp 22 is blocked')"),
    ("reduce to os.path.join", "import os, functools\n"
                               "j = functools.reduce(getattr, ['path', 'join'], os)\n"
                               "print(j('ngrok', 'tcp 22'))"),
    ("a frame's print", "import sys\nsys._getframe().f_globals['print']('ngrok tcp 22 is blocked')"),
    ("getters by prefix", "import os\nfuncs = {k: v for k, v in vars(os).items() if k.startswith('get')}\n"
                          "print(sorted(funcs), 'ngrok tcp 22 is blocked')"),
    ("a loop picking getcwd", "import os\nfor k, v in vars(os).items():\n    if k == 'getcwd':\n"
                              "        print(v(), 'ngrok tcp 22 is blocked')"),
    ("names found", "import os\nfound = [k for k in dir(os) if k == 'system']\n"
                    "print(found, 'ngrok tcp 22 is blocked')"),
    ("the runner's name shown", "import os\nf = next(v for k, v in vars(os).items() if k == 'system')\n"
                                "print(f.__name__, 'ngrok tcp 22 is blocked')"),
    ("globals() listed", "import os\nprint(sorted(globals()), 'ngrok tcp 22 is blocked')"),
    ("a holder's printer through globals()", "import subprocess\n"
                                             "d = {'sh': subprocess.run, 'say': print}\n"
                                             "globals()['d']['say']('ngrok tcp 22 is blocked')"),
]


@pytest.mark.parametrize("what, cell", SEARCHED, ids=[s[0] for s in SEARCHED])
def test_a_runner_found_by_searching_a_module_is_refused(what, cell):
    """Was missed: a module was no holder to the check, only its runners named (os.system,
    getattr(os, 'system'), vars(os)['system']). Caught now, where the name searched for is a
    constant the cell spells (a module passed around as a value still holds nothing):
    ``_searched_runner`` reads a comprehension over ``vars(m).items()``, ``m.__dict__.items()``,
    ``inspect.getmembers(m)`` or ``dir(m)`` whose condition pins the name (``k == "system"``,
    ``k in (…)``) with that member in place; ``_picked`` reads a loop over them whose body is
    ``if k == "system":`` with that row; ``dict(inspect.getmembers(m))["system"]``,
    ``functools.reduce(getattr, ["system"], m)`` and ``globals()``'s or a frame's
    ``f_globals["os"]`` are names (``_call_name``)."""
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("what, cell", SEARCHED_HONEST, ids=[s[0] for s in SEARCHED_HONEST])
def test_an_honest_search_of_a_modules_members_is_left_alone(what, cell):
    assert _cell_signatures(cell) == set(), what


_PADDING = ", ".join(f"'echo {i}'" for i in range(1100))  # past MAX_CHOICES (1024)
_PADDED_TABLE = ", ".join(f"'k{i}': 'echo {i}'" for i in range(1100))
_ECHOES_1000 = ", ".join(f"'echo {i}'" for i in range(1000))  # 17 loops: past MAX_ROWS
#: Tables padded past the items a variable is told apart by (MAX_CHOICES), past the cell's
#: budget of rows (MAX_ROWS, 16384: empty strings, so that the cell still runs as ``python -c``)
#: or with that budget spent on other loops first.
PADDED = [
    ("a loop", "import os\nT = [" + _PADDING + ", 'ngrok tcp 22']\nfor c in T:\n    os.system(c)"),
    ("a loop over a literal", "import os\nfor c in [" + _PADDING + ", 'ngrok tcp 22']:\n"
                              "    os.system(c)"),
    ("a loop past the rows budget", "import os\nT = [" + "'', " * 17000 + "'ngrok tcp 22']\n"
                                    "for c in T:\n    os.system(c)"),
    ("a loop after the rows budget is spent", "import os\nT = [" + _ECHOES_1000 + "]\n"
     + "for c in T:\n    pass\n" * 17 + "for c in ['ngrok tcp 22']:\n    os.system(c)"),
    ("a dict's values", "import os\nD = {" + _PADDED_TABLE + ", 'z': 'ngrok tcp 22'}\n"
                        "for c in D.values():\n    os.system(c)"),
    ("a dict's items", "import os\nD = {" + _PADDED_TABLE + ", 'z': 'ngrok tcp 22'}\n"
                       "for k, c in D.items():\n    os.system(c)"),
    ("an f-string of a padded loop", "import os\nfor t in [" + _PADDING + ", 'ngrok']:\n"
                                     "    os.system(f'{t} tcp 22')"),
    ("random.choice", "import os, random\nT = [" + _PADDING + ", 'ngrok tcp 22']\n"
                      "os.system(random.choice(T))"),
    ("an item kept", "import os, sys\nT = [" + _PADDING + ", 'ngrok tcp 22']\n"
                     "c = T[len(sys.argv) + 1099]\nos.system(c)"),
    ("a runner kept aside", "import os\nr = [os.system]\nfor c in sorted([" + _PADDING +
                            ", 'ngrok tcp 22']):\n    r[0](c)"),
    ("a cell runner", "import subprocess\ndef sh(c):\n    subprocess.run(c, shell=True)\n"
                      "for c in [" + _PADDING + ", 'ngrok tcp 22']:\n    sh(c)"),
]

#: Honest long tables: files converted, messages printed, tool names looked up.
PADDED_HONEST = [
    ("files converted", "import subprocess\nFILES = [" + ", ".join(f"'img{i}.png'" for i in range(1100))
     + "]\nfor f in FILES:\n    subprocess.run(['convert', f, f + '.jpg'])"),
    ("messages printed", "import os\nMSG = [" + _PADDING + ", 'ngrok tcp 22 is blocked']\n"
                         "for m in MSG:\n    print(m)\nos.system('nvidia-smi')"),
    ("tools looked up", "import shutil\nTOOLS = [" + _PADDING + ", 'ngrok']\n"
                        "for t in TOOLS:\n    print(t, shutil.which(t))"),
    ("packages installed", "import os\nPKGS = [" + ", ".join(f"'pkg{i}'" for i in range(1100))
     + ", 'pyngrok']\nfor p in PKGS:\n    os.system('pip install ' + p)"),
]


@pytest.mark.parametrize("what, cell", PADDED, ids=[p[0] for p in PADDED])
def test_a_loop_over_a_table_padded_past_the_choices_is_refused(what, cell):
    """Was missed: past MAX_CHOICES (1024) items (or the cell's MAX_ROWS) a loop's variable was
    not taken for each item, so the command it was given was unknown. Now (``_Listed``) it is
    any of the table's distinct items: a runner given it bare runs each, listed once per table,
    folder and script written however many loops give it (``_run_each``), so no bound is left
    to pad past; an expression of it is folded with each, out of the cell's MAX_CHOICE_FOLDS."""
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("what, cell", PADDED_HONEST, ids=[p[0] for p in PADDED_HONEST])
def test_an_honest_long_table_is_left_alone(what, cell):
    assert _cell_signatures(cell) == set(), what


@pytest.mark.parametrize("what, cell", SEARCHED + GUARDED, ids=[e[0] for e in SEARCHED + GUARDED])
def test_each_search_and_guarded_loop_really_starts_its_program(what, cell, stand_in_path,
                                                                tmp_path):
    """As ``test_each_evasion_really_starts_its_program`` (the padded tables are left out: each
    would start its 1,100 to 17,000 shells of padding first)."""
    test_each_evasion_really_starts_its_program(what, cell, stand_in_path, tmp_path)


BENIGN = Path(__file__).parent / "notebooks" / "benign"


@pytest.mark.parametrize("notebook", sorted(p.name for p in BENIGN.glob("*.ipynb")))
def test_no_cell_of_a_benign_notebook_is_refused(notebook):
    """Every code cell of each benign notebook, run in order in one kernel."""
    cells = json.loads((BENIGN / notebook).read_text())["cells"]
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
               for c in cells if c.get("cell_type") == "code"]
    assert _cell_signatures(*sources) == set()


_ROWS = ", ".join(f"'echo {i}'" for i in range(256))
_ROWS_2000 = ", ".join(f"'echo {i}'" for i in range(2000))
#: Cells of about 250 KB that make the new readings work hardest.
LARGE = {
    "loops over 256-row tables": "import os\nT = [" + _ROWS + "]\n" + "for c in T:\n    os.system(c)\n" * 10000,
    "items rows": "import os\nD = {" + ", ".join(f"'k{i}': 'echo {i}'" for i in range(256)) + "}\n"
                  + "for k, v in D.items():\n    os.system(v)\n" * 8000,
    "items taken by key": "import os\nT = [" + _ROWS + "]\n" + "c = T[i]\nos.system(c)\n" * 20000,
    "classes with constants": "import os\n" + "class K:\n    c = 'x'\n    def go(self):\n"
                              "        os.system(self.c)\n" * 3000,
    "holders handed over": "import os\nr = [os.system]\n" + "list(map(r[0], ['x']))\n" * 10000,
    "a list 90 deep indexed 1000 times": "import os\nr = " + "[" * 90 + "os.system" + "]" * 90 + "\n"
                                         + ("r" + "[0]" * 90 + "('x')\n") * 1000,
    "instances of a class": "class K:\n    c = 'x'\n" + "".join(f"k{i} = K()\n" for i in range(25000)),
    "classes of 256 constants and methods": ("class K(B):\n" + "".join(f"    c{i} = 'x'\n" for i in range(256))
                                             + "".join(f"    def m{i}(self):\n        pass\n"
                                                       for i in range(256))) * 20,
    "loops 90 deep": "import os\n" + "".join("    " * d + f"for a{d} in [1, 2, 3]:\n" for d in range(90))
                     + "    " * 90 + "os.system('x')\n",
    "loops over a 2,000-row table": "import os\nT = [" + _ROWS_2000 + "]\n"
                                    + "for c in T:\n    os.system(c)\n" * 6000,
    "items of a 2,000-row table kept": "import os\nT = [" + _ROWS_2000 + "]\n"
                                       + "c = T[i]\nos.system(c)\n" * 10000,
    "fresh 2,000-row tables in new folders": "import os\nT = [" + _ROWS_2000 + "]\n"
                                             + "os.chdir('d')\nfor c in T + ['x']:\n    os.system(c)\n"
                                             * 1500,
    "f-strings of a 2,000-row table": "import os\nT = [" + _ROWS_2000 + "]\n"
                                      + "for c in T:\n    os.system(f'{c} x')\n" * 6000,
    "guarded loops over a module's members": "import os\n" + "for k, v in vars(os).items():\n"
                                             "    if k == 'getcwd':\n        print(v)\n" * 3000,
    "a search with a long condition and element": "import os\nf = next((v if [" + "1, " * 30000
                                                  + "] else v) for k, v in vars(os).items() if k in ("
                                                  + "'system', " * 20000 + "'popen'))\nf('x')\n",
    "searches of a module": "import os\n"
                            + "f = next(v for k, v in vars(os).items() if k == 'system')\n" * 4000,
}


@pytest.mark.parametrize("what", list(LARGE))
def test_a_large_cell_is_read_in_bounded_time(what):
    """Bounded: rows listed out of a budget per cell (MAX_ROWS), a choice's folds too
    (MAX_CHOICE_FOLDS), class constants bound in methods too (MAX_METHOD_CONSTANTS); an item of an item … past MAX_CHAIN levels is read once, not folded
    at each level (the list 90 deep took 6.4 s, now 2.4 s, most of it IPython's tokeniser); a
    table too long to take item by item is listed once per table and folder (``_run_each``), and
    a constant's lines are emitted once (3,000 loops over a 2,000-row table folded anew took
    15 s, now 4 s: what remains, each fold of ``T + [...]`` walking its items, is linear in the
    table for each loop, as before);
    measured at 0.1 to 3 s on a busy 2-core machine (10 s: a failure means a loop that grows
    with the cell, not a slow machine)."""
    from colab_guard.detect.cells import MAX_SOURCE, analyse_cell

    start = time.thread_time()  # CPU spent here: a busy machine is not the reading's cost
    analyse_cell(LARGE[what][:MAX_SOURCE])
    assert time.thread_time() - start < 10
