"""Red team, session 15: the cell check's three newest rules (detect/cells.py) -- runners found
by searching a module's members, tables padded past MAX_CHOICES read as any of their items, and
loops whose whole body is ``if key == "…":`` -- as an abuser who has read the code; then honest
cells near them, and cells built to make them slow.

Each evasion starts ``ngrok tcp 22`` (``test_each_evasion_really_starts_ngrok`` runs it in plain
Python with a stand-in ``ngrok`` on the PATH). What is still missed, or refused though honest,
is ``xfail(strict=True)`` with the exact reason."""

from __future__ import annotations

import time

import pytest

from tests import test_redteam_cells13 as cells13
from tests.test_redteam_cells13 import FORBIDDEN, stand_in_path  # noqa: F401  (a fixture)
from tests.test_redteam_evasions import _cell_signatures

_PAD = ", ".join(f"'echo {i}'" for i in range(1100))  # past MAX_CHOICES (1024)
_PAIRS = ", ".join(f"('echo', '{i}')" for i in range(1100))
_DICT = ", ".join(f"'echo {i}': 'x'" for i in range(1100))
_ROWS_20 = ", ".join(f"('echo', '{i}')" for i in range(20))  # past the 16 rows read one by one

#: Missed before this session, refused now.
CAUGHT = [
    # rule 3: the pin read the first of two loop variables of one name; the second is bound
    ("a pin on a name bound twice", "import os\nfor c, c in [('x', 'ngrok tcp 22')]:\n"
                                    "    if c == 'ngrok tcp 22':\n        os.system(c)"),
    ("a pin on a name bound twice, items", "import os\nfor c, c in {'x': 'ngrok tcp 22'}.items():\n"
                                           "    if c == 'ngrok tcp 22':\n        os.system(c)"),
    # rule 1: a search whose condition is not ``k == …`` but picks the runner all the same
    ("a search by prefix", "import os\nf = next(v for k, v in vars(os).items() if k.startswith('syst'))\n"
                           "f('ngrok tcp 22')"),
    ("a search by suffix", "import os\nf = [v for k, v in vars(os).items() if k.endswith('ystem')][0]\n"
                           "f('ngrok tcp 22')"),
    ("a search by a negated inequality", "import os\n"
                                         "f = next(v for k, v in vars(os).items() if not k != 'system')\n"
                                         "f('ngrok tcp 22')"),
    ("a search in a set", "import os\nf = next(v for k, v in vars(os).items() if k in {'system'})\n"
                          "f('ngrok tcp 22')"),
    ("a loop over members by prefix", "import os\nfor k, v in vars(os).items():\n"
                                      "    if k.startswith('syst'):\n        v('ngrok tcp 22')"),
    ("vars(os).get", "import os\nf = vars(os).get('system')\nf('ngrok tcp 22')"),
    ("os.__dict__.get", "import os\nf = os.__dict__.get('system')\nf('ngrok tcp 22')"),
    ("globals().get", "import os\nglobals().get('os').system('ngrok tcp 22')"),
    ("vars of sys.modules", "import os, sys\nf = vars(sys.modules['os'])['system']\nf('ngrok tcp 22')"),
    ("a loop over globals() picking os", "import os\nfor k, v in list(globals().items()):\n"
                                         "    if k == 'os':\n        v.system('ngrok tcp 22')"),
    ("a search of sys.modules' entry", "import os, sys\n"
                                       "f = next(v for k, v in vars(sys.modules['os']).items() if k == 'system')\n"
                                       "f('ngrok tcp 22')"),
    # rule 2: padded tables through what the listing did not follow
    ("a padded table chained", "import os, itertools\nP = [" + _PAD + "]\n"
                               "for c in itertools.chain(P, ['ngrok tcp 22']):\n    os.system(c)"),
    ("a padded table enumerated", "import os\nfor i, c in enumerate([" + _PAD + ", 'ngrok tcp 22']):\n"
                                  "    os.system(c)"),
    ("a padded table zipped", "import os\nfor f, c in zip([os.system] * 1101, [" + _PAD +
                              ", 'ngrok tcp 22']):\n    f(c)"),
    ("a padded table of pairs joined", "import os\nfor a, b in [" + _PAIRS + ", ('ngrok', 'tcp 22')]:\n"
                                       "    os.system(a + ' ' + b)"),
    ("a padded dict's key and value joined", "import os\nfor a, b in {" + _DICT +
                                             ", 'ngrok': 'tcp 22'}.items():\n    os.system(a + ' ' + b)"),
    # and short ones the loop reading did not take row by row
    ("20 pairs joined", "import os\nfor a, b in [" + _ROWS_20 + ", ('ngrok', 'tcp 22')]:\n"
                        "    os.system(a + ' ' + b)"),
    ("a table spread in a literal", "import os\nT = ['echo 1', 'ngrok tcp 22']\nfor c in [*T]:\n"
                                    "    os.system(c)"),
]


#: Missed then (strict xfails), fixed in session 18 (tests/test_redteam_cells18.py): a module
#: kept in a variable is an alias of it, posix's members are os's, and an item of a
#: comprehension by index is its expression for that row.
CAUGHT += [
    ("a search of a module kept in a variable",
     "import os\nm = os\nf = next(v for k, v in vars(m).items() if k == 'system')\n"
     "f('ngrok tcp 22')"),
    ("a search of posix",
     "import os, sys\nf = next(v for k, v in vars(sys.modules['posix']).items() "
     "if k == 'system')\nf('ngrok tcp 22')"),
    ("getattr over a list the cell builds",
     "import os\nks = ['sys' + 'tem']\nf = [getattr(os, k) for k in ks][0]\nf('ngrok tcp 22')"),
]


#: Missed then (strict xfails), fixed in session 19 (tests/test_redteam_cells19.py): a search's
#: outer loops read row by row, filter(lambda …) read as the search it is, a while loop's
#: counter not its first value inside it.
CAUGHT += [
    ("a search with two loops",
     "import os\nf = next(v for m in [os] for k, v in vars(m).items() if k == 'system')\n"
     "f('ngrok tcp 22')"),
    ("filter of a module's pairs",
     "import os\nf = next(filter(lambda kv: kv[0] == 'system', vars(os).items()))[1]\n"
     "f('ngrok tcp 22')"),
    ("a while loop's index",
     "import os\nT = ['echo 1', 'ngrok tcp 22']\ni = 0\nwhile i < len(T):\n"
     "    os.system(T[i])\n    i += 1"),
]


def _missed(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


#: Still missed (each starts ngrok).
MISSED = [
    pytest.param("import os\nfor c in ['echo %d' % i for i in range(1100)] + ['ngrok tcp 22']:\n"
                 "    os.system(c)", id="padding made by a comprehension",
                 marks=_missed("a comprehension is folded over at most MAX_INLINED_ITEMS (64) "
                               "items: the table is not constant, so not listed")),
    pytest.param("import os\nfor c in (" + repr(";".join(f"echo {i}" for i in range(1100)) +
                 ";ngrok tcp 22") + ").split(';'):\n    os.system(c)", id="padding split from one string",
                 marks=_missed("a string longer than MAX_VALUE (4096) is not folded, so its "
                               "split is no constant table")),
]


@pytest.mark.parametrize("what, cell", CAUGHT, ids=[c[0] for c in CAUGHT])
def test_an_evasion_of_the_new_rules_is_refused(what, cell):
    """Missed before: a pin read the first loop variable of a name bound twice (``for c, c``:
    c is the last column's; now ``_pin`` needs distinct names); a search was read only where
    its condition was ``k == …`` or ``k in (tuple)`` (now ``_accepted_runners`` folds the
    condition with k bound to each of the module's runners' names, ``_holds``, and a set
    counts); a loop over ``globals().items()`` pinned to a name was read with no row
    (``_fixed_rows``: the variable so named, a module's alias kept, ``_bind_parameter``);
    ``.get`` of a members table or globals() was no item (``_item_got``); vars() of
    ``sys.modules[…]`` no module's; a padded table through ``enumerate``/``zip``/
    ``itertools.chain``, or of rows of several items, was no listing (``_long_columns``); an
    expression of two loop variables was folded for neither (now row by row, ``_fold_rows``);
    ``[*T]`` was no table (``_spread_items``)."""
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("cell", MISSED)
def test_an_evasion_still_missed(cell):
    assert FORBIDDEN in _cell_signatures(cell)


@pytest.mark.parametrize("what, cell", CAUGHT, ids=[c[0] for c in CAUGHT])
def test_each_evasion_really_starts_ngrok(what, cell, stand_in_path, tmp_path):
    cells13.test_each_evasion_really_starts_its_program(what, cell, stand_in_path, tmp_path)


@pytest.mark.parametrize("cell", [p.values[0] for p in MISSED], ids=[p.id for p in MISSED])
def test_each_missed_evasion_really_starts_ngrok(cell, stand_in_path, tmp_path):
    cells13.test_each_evasion_really_starts_its_program("missed", cell, stand_in_path, tmp_path)


_WORDS = ", ".join(f"'w{i}'" for i in range(5000))
_W1100 = ", ".join(f"'w{i}'" for i in range(1100))
#: Honest cells near the rules: long tables of honest commands, long word lists naming tools as
#: data, module searches, globals() dumps, handler tables picked by name.
HONEST = [
    ("2,000 convert commands", "import os\nCMDS = [" + ", ".join(
        f"'convert img_{i}.png img_{i}.jpg'" for i in range(2000)) + "]\nfor c in CMDS:\n    os.system(c)"),
    ("5,000 words printed", "import os\nWORDS = [" + _WORDS + ", 'ngrok', 'xmrig']\nfor w in WORDS:\n"
                            "    print(w)\nos.system('ls')"),
    ("5,000 words written to a file", "import subprocess\nWORDS = [" + _WORDS +
     ", 'ngrok tcp 22', 'xmrig -o pool:3333']\nwith open('w.txt', 'w') as f:\n    for w in WORDS:\n"
     "        f.write(w + '\\n')\nsubprocess.run(['wc', '-l', 'w.txt'])"),
    ("a long blocklist beside commands run", "import subprocess\nBLOCK = [" + _WORDS +
     ", 'ngrok', 'xmrig']\nfor b in BLOCK:\n    print('blocked', b)\nfor c in ['ls', 'pwd']:\n"
     "    subprocess.run(c, shell=True)"),
    ("commands filtered by a long blocklist", "import subprocess\nBLOCK = {" + _WORDS +
     ", 'ngrok', 'xmrig'}\nfor c in ['ls -l', 'pwd']:\n    if c.split()[0] not in BLOCK:\n"
     "        subprocess.run(c, shell=True)"),
    ("a long table of reasons printed", "import subprocess\nBLOCK = {" + ", ".join(
        f"'w{i}': 'bad'" for i in range(1100)) + ", 'ngrok tcp 22': 'bad'}\n"
     "for cmd, why in BLOCK.items():\n    print(cmd, why)\nsubprocess.run(['ls'])"),
    ("words grepped", "import subprocess\nfor w in [" + _WORDS + ", 'ngrok']:\n"
                      "    subprocess.run(['grep', '-c', w, 'log.txt'])"),
    ("tools looked up", "import shutil, subprocess\nfor w in [" + _WORDS + ", 'ngrok', 'xmrig']:\n"
                        "    if shutil.which(w):\n        subprocess.run(['echo', 'found', w])"),
    ("tools stopped by name", "import os\nfor t in [" + _W1100 + ", 'ngrok', 'xmrig']:\n"
                              "    os.system(f'pkill -x {t}')"),
    ("files chained", "import subprocess, itertools\nA = [" + ", ".join(
        f"'a{i}.png'" for i in range(1100)) + "]\nfor f in itertools.chain(A, ['b.png']):\n"
     "    subprocess.run(['convert', f, f + '.jpg'])"),
    ("messages enumerated", "import os\nfor i, m in enumerate([" + _W1100 +
     ", 'ngrok tcp 22 is blocked']):\n    print(i, m)\nos.system('ls')"),
    ("labels zipped with commands", "import os\nfor n, c in zip([" + _W1100 +
     ", 'ngrok tcp 22 is blocked'], [" + ", ".join(f"'echo {i}'" for i in range(1101)) + "]):\n"
     "    print(n)\n    os.system(c)"),
    ("a label beside each command", "import os\nfor label, cmd in [" + ", ".join(
        f"('ngrok tcp 22 is blocked', 'echo {i}')" for i in range(1100)) + "]:\n"
     "    print(label)\n    os.system(cmd)"),
    ("a program and its file", "import subprocess\nfor prog, arg in [" + ", ".join(
        f"('convert', 'img{i}.png')" for i in range(1100)) + ", ('echo', 'ngrok')]:\n"
     "    subprocess.run([prog, arg])"),
    ("a command chosen by its row's flag", "import os\nfor a, b in {" + _DICT +
     ", 'ngrok tcp 22': 'blocked'}.items():\n    os.system(a if b == 'x' else 'ls')"),
    ("os.path names", "import os\nprint([n for n in dir(os) if n.startswith('path')], "
                      "'ngrok tcp 22 is blocked')"),
    ("a module's members listed", "import inspect, json\nfor k, v in inspect.getmembers(json):\n"
                                  "    print(k, v)\nprint('ngrok tcp 22 is blocked')"),
    ("a module's callables", "import math\nfor k, v in vars(math).items():\n    if callable(v):\n"
                             "        print(k)\nprint('ngrok tcp 22 is blocked')"),
    ("os's members printed", "import os\nfor k, v in vars(os).items():\n    print(k, v)\n"
                             "print('ngrok tcp 22 is blocked')"),
    ("subprocess's getters by prefix", "import subprocess\n"
     "funcs = {k: v for k, v in vars(subprocess).items() if k.startswith('get')}\n"
     "print(sorted(funcs), 'ngrok tcp 22 is blocked')"),
    ("a loop over members by prefix, printed", "import os\nfor k, v in vars(os).items():\n"
                                               "    if k.startswith('s'):\n"
                                               "        print(k, 'ngrok tcp 22 is blocked')"),
    ("getcwd found by prefix", "import os\n"
                               "f = next(v for k, v in vars(os).items() if k.startswith('getcw'))\n"
                               "print(f(), 'ngrok tcp 22 is blocked')"),
    ("vars(os).get of getcwd", "import os\nprint(vars(os).get('getcwd')(), 'ngrok tcp 22 is blocked')"),
    ("a module of sys.modules listed", "import sys\nprint(sorted(vars(sys.modules['json'])), "
                                       "'ngrok tcp 22 is blocked')"),
    ("globals() dumped", "import os, subprocess\nfor k, v in list(globals().items()):\n"
                         "    print(k, type(v))\nprint('ngrok tcp 22 is blocked')"),
    ("globals() copied", "import subprocess\nx = 1\nd = dict(globals())\n"
                         "print(d['x'], 'ngrok tcp 22 is blocked')"),
    ("a handler picked by name", "import subprocess\nH = {'x': print, 'y': subprocess.run}\n"
                                 "for name, h in H.items():\n    if name == 'x':\n"
                                 "        h('ngrok tcp 22 is blocked')"),
    ("a handler picked in a function", "import subprocess\nH = {'x': print, 'y': subprocess.run}\n"
                                       "def emit(which, msg):\n    for name, h in H.items():\n"
                                       "        if name == which:\n            h(msg)\n"
                                       "emit('x', 'ngrok tcp 22 is blocked')"),
    ("a handler got by name", "import subprocess\nH = {'x': print, 'y': subprocess.run}\n"
                              "H.get('x')('ngrok tcp 22 is blocked')"),
    pytest.param("a handler picked after a print", "import subprocess\n"
                 "H = {'x': print, 'y': subprocess.run}\nprint('ready')\nfor name, h in H.items():\n"
                 "    if name == 'x':\n        h('ngrok tcp 22 is blocked')",
                 marks=_missed("_picked reads only a table the statement just before the loop "
                               "assigns (a call between might change it): each row is read, so "
                               "the message reads as subprocess.run's command"),
                 id="a handler picked after a print"),
]


@pytest.mark.parametrize("what, cell", HONEST, ids=[h[0] if isinstance(h, tuple) else h.id
                                                    for h in HONEST])
def test_an_honest_cell_near_the_new_rules_is_left_alone(what, cell):
    assert _cell_signatures(cell) == set(), what


_P2000 = ", ".join(f"('echo', '{i}')" for i in range(2000))
_R2000 = ", ".join(f"'echo {i}'" for i in range(2000))
#: Cells of about 250 KB that make this session's readings work hardest.
LARGE = {
    "pairs of a 2,000-row table joined": "import os\nT = [" + _P2000 + "]\n"
                                         + "for a, b in T:\n    os.system(a + ' ' + b)\n" * 6000,
    "a 2,000-row dict's keys and values joined": "import os\nD = {" + ", ".join(
        f"'k{i}': 'echo {i}'" for i in range(2000)) + "}\n"
        + "for k, v in D.items():\n    os.system(k + v)\n" * 6000,
    "a 2,000-row table enumerated": "import os\nT = [" + _R2000 + "]\n"
                                    + "for i, c in enumerate(T):\n    os.system(c)\n" * 6000,
    "a 2,000-row table zipped": "import os\nT = [" + _R2000 + "]\n"
                                + "for a, b in zip(T, T):\n    os.system(a + b)\n" * 6000,
    "a 2,000-row table chained": "import os, itertools\nT = [" + _R2000 + "]\n"
                                 + "for c in itertools.chain(T, ['x']):\n    os.system(c)\n" * 6000,
    "a 2,000-row table spread": "import os\nT = [" + _R2000 + "]\n"
                                + "for c in [*T, 'x']:\n    os.system(c)\n" * 6000,
    "searches by prefix": "import os\n" + "f = next(v for k, v in vars(os).items() "
                          "if k.startswith('sy') and not k.endswith('x'))\n" * 3000,
    "loops over members by prefix": "import os\n" + "for k, v in vars(os).items():\n"
                                    "    if k.startswith('s'):\n        print(k)\n" * 3000,
    "members got": "import os\n" + "f = vars(os).get('getcwd')\nf()\n" * 8000,
    "items got of items got": "import os\n" + "vars(os).get('x').get('y')\n" * 8000,
    "a frame's variables got": "import sys\n" + "sys._getframe().f_globals.get('os')\n" * 6000,
    "chains of .get 200 long": "d = {}\n" + ("x = d" + ".get(1)" * 200 + "\n") * 2,
}


@pytest.mark.parametrize("what", list(LARGE))
def test_a_large_cell_is_read_in_bounded_time(what):
    """Measured at 0.4 to 3.2 s on a busy 2-core machine (10 s, as session 13's bound: a
    failure means a reading that grows with the cell). ``.get`` of a table of members was first
    read with its table's name resolved anew at each link of a chain: 80 links took 27 s
    (14 links 3.3 s); now only a table shaped as one is (``_may_be_members_table``)."""
    from colab_guard.detect.cells import MAX_SOURCE, analyse_cell

    start = time.thread_time()  # CPU spent here: a busy machine is not the reading's cost
    analyse_cell(LARGE[what][:MAX_SOURCE])
    assert time.thread_time() - start < 10
