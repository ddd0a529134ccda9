"""Red team, session 11: against what changed last (the policy's "what a process being stopped
starts is not a new offence", relays seen at two ticks, a family's CPU demand, cell checks),
as an abuser who has read the code, on a real guarded server, everything on loopback.

Each attack asserts what SHOULD happen (the forbidden program stopped soon after its start, an
incident naming the right kernel). What is still missed is ``xfail(strict=True)`` with the
exact reason; what was missed and is fixed says so in its docstring."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from colab_guard.act.policy import Policy
from colab_guard.settings import Settings
from tests.harness import wait_until
from tests.test_policy import MINER as MINER_RULE, detection
from tests.standins.common import bencode
from tests.test_redteam_evasions import (  # noqa: F401 (fixtures)
    LIMIT, PYTHON, USER, Kernel, _alive, kernel, pool, server)

STANDINS = Path(__file__).parent / "standins"
MINER = STANDINS / "miner.py"
WALLET = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"


def _miner_argv(pool_port: int) -> list[str]:
    return [PYTHON, str(MINER), "-o", f"stratum+tcp://127.0.0.1:{pool_port}", "-u", WALLET,
            "--seconds", "60"]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _pid_in(path: Path) -> int:
    """The pid a program wrote to ``path`` (waited for)."""
    return int(wait_until(lambda: path.exists() and path.read_text().strip(), timeout=30,
                          what=f"{path.name} written"))


def assert_gone_with_an_incident(kernel: Kernel, pid: int, limit: float) -> None:
    """The process is gone within ``limit`` s and the kernel has an incident naming it
    (killed at the end either way)."""
    try:
        wait_until(lambda: not _alive(pid), timeout=limit, interval=0.05,
                   what=f"pid {pid} stopped")
    finally:
        _kill(pid)
    assert any(i["kernel_id"] == kernel.id and i["user"] == USER for i in kernel.incidents())


# ---------------------------------------------------------------- a decoy whose stop is under way

def test_what_a_stopped_process_left_behind_is_judged_once_it_is_orphaned():
    """Was missed: a process its ancestor's stop covered (started after the stop's family walk,
    so never signalled) stayed handled for life once the ancestor was gone. Fixed: judged again
    once it no longer descends from it (policy.py ``_uncover_orphans``); what the stop signalled
    itself is still covered."""
    policy = Policy(Settings())
    decoy, miner = detection(MINER_RULE, pid=500, ppid=100), detection(MINER_RULE, pid=501, ppid=500)
    live, parents = {(500, 1.0), (501, 1.0)}, {500: 100, 501: 500}
    assert len(policy.respond("k1", [decoy], live=live, parents=lambda: parents)) == 1
    assert policy.respond("k1", [miner], live=live, parents=lambda: parents) == []  # under way
    orphan = detection(MINER_RULE, pid=501, ppid=1)  # the decoy killed: the miner is init's
    [plan] = policy.respond("k1", [orphan], live={(501, 1.0)}, parents=lambda: {501: 1})
    assert plan.action in ("stop", "interrupt") and plan.detections[0].process.pid == 501
    # A member the stop signalled, reparented the same way, is not a new offence.
    policy.note_stopping("k1", [(600, 1.0)])
    assert policy.respond("k1", [detection(MINER_RULE, pid=600, ppid=1)], live={(600, 1.0)},
                          parents=lambda: {600: 1}) == []


#: A decoy with a forbidden name (argv[0] ``xmrig``) that ignores SIGTERM and, once told to
#: stop, forks the real miner: the family walk of its stop ran before the fork.
DECOY_FORKS_ON_SIGTERM = """
import os, signal, sys, time
forked = []
def on_term(*_):
    if forked:
        return
    forked.append(1)
    pid = os.fork()
    if pid == 0:
        {child}
    open(sys.argv[1] + ".tmp", "w").write(str(pid)); os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    {after}
signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the kernel's interrupt reaches its group
import ctypes; ctypes.CDLL(None).prctl(15, b"xmrig", 0, 0, 0)  # the forbidden name, now
while True:
    time.sleep(0.05)
"""

#: the child ignores SIGTERM too, then execs the miner (an ignored signal stays ignored).
EXEC_MINER = "signal.signal(signal.SIGTERM, signal.SIG_IGN); os.execv(sys.argv[2], sys.argv[2:])"
#: the child leaves a session of its own, then a grandchild (the miner) is reparented at once.
SETSID_DOUBLE_FORK = "os.setsid()\n        os.fork() and os._exit(0)\n        " \
    "open(sys.argv[1] + '.miner', 'w').write(str(os.getpid()))\n        " + EXEC_MINER


#: the decoy exits by itself once a tick or two saw its child (no SIGKILL comes: the child is
#: left to init before the grace ends).
EXITS_SOON = "time.sleep(0.7); os._exit(0)"


@pytest.mark.parametrize("child, after", [(EXEC_MINER, "pass"), (SETSID_DOUBLE_FORK, "pass"),
                                          (EXEC_MINER, EXITS_SOON)],
                         ids=["exec'd child", "setsid double fork", "the decoy exits"])
def test_a_miner_forked_by_a_decoy_whose_stop_is_under_way_is_stopped(kernel, pool, tmp_path,
                                                                      child, after):
    """Was missed: the decoy, caught by its name, ignores SIGTERM and forks the miner once told
    to stop (after its stop's family walk); the policy took the miner for part of the stop under
    way, but SIGKILL went to the decoy only, and the miner, left to init, was handled for life.
    Fixed: at SIGKILL the survivor is frozen and its children read again (enforce.py
    ``kill_with_families``: the exec'd child dies with it, within the grace), and what a stop
    covered but never signalled is judged again once orphaned (the double fork's miner, the
    miner of a decoy that exits before its SIGKILL)."""
    written = tmp_path / "child"
    code = DECOY_FORKS_ON_SIGTERM.format(child=child, after=after)
    decoy, _ = kernel.start([PYTHON, "-c", code, str(written), *_miner_argv(pool)])
    try:
        pid = _pid_in(written)
        if child is SETSID_DOUBLE_FORK:
            pid = _pid_in(tmp_path / "child.miner")
        assert_gone_with_an_incident(kernel, pid, LIMIT)
    finally:
        _kill(decoy)


#: A decoy that ignores SIGTERM and, told to stop, forks a child that ignores it too and
#: sleeps (the miner's place); prints the child's pid.
FORKS_WHEN_TOLD = """
import os, signal, sys, time
def on_term(*_):
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(600)
        os._exit(0)
    print(pid, flush=True)
signal.signal(signal.SIGTERM, on_term)
print('up', flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.mark.parametrize("waiting", ["blocking", "on the event loop"])
def test_a_stop_kills_what_its_survivor_started_after_its_sigterm(waiting):
    """enforce.py ``kill_with_families``, both ways of waiting: the child forked after the
    family walk dies with the decoy at the grace (it was left running, reparented)."""
    import asyncio

    from colab_guard.act.enforce import stop_processes, stop_processes_async
    from tests.test_enforce import offender, started

    decoy = started(FORKS_WHEN_TOLD)
    child = None
    try:
        if waiting == "blocking":
            [action] = stop_processes([offender(decoy)], 0.5, set())
        else:
            [action] = asyncio.run(stop_processes_async([offender(decoy)], 0.5, set()))
        child = int(decoy.stdout.readline())
        assert action.outcome == "done"
        wait_until(lambda: not _alive(child), timeout=5, interval=0.05, what="the child killed")
    finally:
        decoy.kill()
        decoy.wait()
        if child:
            _kill(child)


# ---------------------------------------------------------------- a family's CPU demand

#: The hashing worker of the miners below: spins for at most 90 s.
SPIN = ("import hashlib, time\nd = b'x'\nend = time.monotonic() + 90\n"
        "while time.monotonic() < end: d = hashlib.sha256(d).digest()\n")

#: Each worker holds a connection of its own to the pool's host, never used: a holder of its
#: own, its CPU is no longer its parent's, and its idle connection is pushed nothing.
WORKERS_WITH_DUMMY_CONNECTIONS = r"""
import os, socket, subprocess, sys
from tests.standins.quiet_miner import run
spin = "import socket, sys\ns = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n" + %r
workers = [subprocess.Popen([sys.executable, "-c", spin, sys.argv[1]]) for _ in range(2)]
try:
    run("127.0.0.1", int(sys.argv[1]), 0.02, 20)   # the parent only talks to the pool
finally:
    os.killpg(0, 9)
""" % SPIN

#: The workers started by a child that exits at once (a daemon's double fork): reparented to
#: init, they are no descendants of the connection's holder.
ORPHANED_WORKERS = r"""
import os, subprocess, sys
from tests.standins.quiet_miner import run
if os.fork() == 0:
    for _ in range(2):
        subprocess.Popen([sys.executable, "-c", %r])
    os._exit(0)
os.wait()
try:
    run("127.0.0.1", int(sys.argv[1]), 0.02, 20)
finally:
    os.killpg(0, 9)
""" % SPIN

#: The holder and the hashers are siblings, both started by the "kernel" (jobs and shares
#: would pass over a pipe; here the hashers only spin).
SIBLING_HASHERS = r"""
import os, subprocess, sys
talker = subprocess.Popen([sys.executable, "-c", "import sys\nfrom tests.standins.quiet_miner "
                           "import run\nrun('127.0.0.1', int(sys.argv[1]), 0.02, 20)", sys.argv[1]])
hashers = [subprocess.Popen([sys.executable, "-c", %r]) for _ in range(2)]
try:
    talker.wait()
finally:
    os.killpg(0, 9)
""" % SPIN


def _a_process_of_it_mines(code: str, pool: int) -> bool:
    """Run ``code`` (given the pool's port) watched for a window: whether any of its processes
    was measured as mining. The premise (a RuntimeError, not the AssertionError the xfails
    expect): the holder and its workers were all seen. (Checked by hand with behaviour.py's
    ``_families`` traced: the workers busy at 60-90 % of a core, the holder with its
    connection out, and no family found; the same miner without the dodge is
    ``test_a_miner_split_between_a_talking_parent_and_hashing_children_is_measured``.)"""
    from tests.test_behaviour_redteam import MINING_FIELDS, _mines, watched_for_a_window

    watched = watched_for_a_window(code, pool)
    seen = watched.seen.values()
    if len(watched.seen) < 3:
        raise RuntimeError(f"the holder and its workers were not all seen: {watched.seen}")
    return any(_mines({name: fields.get(name, 0) for name in MINING_FIELDS}) for fields in seen)


#: Why the family's demand misses them (each a strict xfail).
NOT_DESCENDANTS = ("the hashing workers are no descendants of the connection's holder "
                   "(behaviour.py _families: the workers whose CPU is a holder's are its "
                   "descendants); a kernel's busy process beside a talking one is honest work "
                   "too (training beside a bot), so no sibling's CPU is a holder's")


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "each hashing worker holds an idle outbound connection of its own, so it is a holder "
    "itself (behaviour.py _families: 'a holder of its own: its workers are its') and its "
    "CPU is not its parent's; its own connection is pushed nothing. Counting a connected "
    "child's CPU as its parent's would take a bot with busy scraping workers for a miner"))
def test_a_miner_whose_workers_each_hold_a_dummy_connection_is_measured(pool):
    assert _a_process_of_it_mines(WORKERS_WITH_DUMMY_CONNECTIONS, pool)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "orphaned by a double fork: " + NOT_DESCENDANTS))
def test_a_miner_whose_workers_are_orphaned_by_a_double_fork_is_measured(pool):
    assert _a_process_of_it_mines(ORPHANED_WORKERS, pool)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="siblings: " + NOT_DESCENDANTS)
def test_a_miner_hashing_in_sibling_processes_is_measured(pool):
    assert _a_process_of_it_mines(SIBLING_HASHERS, pool)


# ---------------------------------------------------------------- cell checks: runners kept aside

#: Spellings of ``os.system("ngrok tcp 22")`` (a tool known by name) that keep the runner in a
#: container, a namespace or a scope the cell check did not model (read now: see
#: ``test_a_runner_kept_aside_is_refused_in_its_cell``). The sampler still stops ngrok when it
#: starts (known by its name); these are about refusing the cell before it runs.
CELL_GAPS = [
    ("a class attribute", "import os\nclass R:\n    go = os.system\nR.go('ngrok tcp 22')"),
    ("a staticmethod", "import os\nclass R:\n    go = staticmethod(os.system)\nR().go('ngrok tcp 22')"),
    ("a class whose __call__ runs", "import os\nclass R:\n    __call__ = staticmethod(os.system)\n"
                                    "R()('ngrok tcp 22')"),
    ("a nested dictionary", "import os\nd = {'a': {'b': os.system}}\nd['a']['b']('ngrok tcp 22')"),
    ("a loop over a list of runners", "import os\nfor f in [os.system]:\n    f('ngrok tcp 22')"),
    ("a loop over a table's values", "import os\nd = {'go': os.system}\nfor f in d.values():\n"
                                     "    f('ngrok tcp 22')"),
    ("a table made by a walrus", "import os\n(t := {'go': os.system})['go']('ngrok tcp 22')"),
    ("an item appended", "import os\nr = [print]\nr.append(os.system)\nr[1]('ngrok tcp 22')"),
    ("list.pop", "import subprocess\nr = [print, subprocess.run]\nr.pop()(['ngrok', 'tcp', '22'])"),
    ("next(iter(...))", "import os\nnext(iter([os.system]))('ngrok tcp 22')"),
    ("a dict comprehension", "import os\n{k: os.system for k in 'a'}['a']('ngrok tcp 22')"),
    ("a function returning the runner", "import os\ndef runner():\n    return os.system\n"
                                        "runner()('ngrok tcp 22')"),
    ("globals()", "import os\nglobals()['r'] = os.system\nr('ngrok tcp 22')"),
    ("a builtin set", "import os, builtins\nsetattr(builtins, 'go', os.system)\ngo('ngrok tcp 22')"),
    ("a namespace's attribute", "import os, types\nns = types.SimpleNamespace(go=os.system)\n"
                                "ns.go('ngrok tcp 22')"),
    ("functools.reduce", "import os, functools\nfunctools.reduce(lambda a, f: f(a), [os.system], "
                         "'ngrok tcp 22')"),
    ("a class decorator", "import subprocess\n@lambda c: subprocess.run(c.cmd, shell=True)\n"
                          "class C:\n    cmd = 'ngrok tcp 22'"),
]


#: Read now (fixed in detect/cells.py: tuple unpacking, an item assigned, a negative index,
#: ``get``/``setdefault``/``pop`` of a table).
CELL_GAPS_READ = [
    ("tuple unpacking", "import os\na, b = print, os.system\nb('ngrok tcp 22')"),
    ("dict.get", "import os\nd = {'go': os.system}\nd.get('go')('ngrok tcp 22')"),
    ("setdefault", "import os\nd = {}\nd.setdefault('go', os.system)('ngrok tcp 22')"),
    ("an item assigned", "import os\nd = {}\nd['go'] = os.system\nd['go']('ngrok tcp 22')"),
    ("an item assigned in an earlier cell", "import os\nd = {}\nd['go'] = os.system",
     "d['go']('ngrok tcp 22')"),
    ("a negative index", "import subprocess\nr = [print, subprocess.run]\n"
                         "r[-1](['ngrok', 'tcp', '22'])"),
]


@pytest.mark.parametrize("what, cells", [(g[0], g[1:]) for g in CELL_GAPS_READ],
                         ids=[g[0] for g in CELL_GAPS_READ])
def test_a_runner_unpacked_assigned_or_fetched_from_a_table_is_refused(what, cells):
    """Was missed (the cell ran; the sampler then stopped ngrok by its name)."""
    from tests.test_redteam_evasions import _cell_signatures

    assert "proxy-known-tool" in _cell_signatures(*cells), what


HONEST_CELLS = [
    ("an item replaced by a printer", "import os\nd = {'go': os.system}\nd['go'] = print\n"
                                      "d['go']('ngrok tcp 22 is blocked here')"),
    ("a pair replaced by printers", "import os\na, b = print, os.system\na, b = print, print\n"
                                    "b('ngrok tcp 22 is blocked here')"),
    ("a table of losses fetched", "import torch\nlosses = {'l1': torch.abs}\n"
                                  "losses.get('l1')(x - y)"),
    ("a runner fetched for an honest command", "import subprocess\nd = {}\n"
                                               "d['sh'] = subprocess.run\nd.get('sh')(['nvidia-smi'])"),
    ("a default printer", "d = {}\nd.setdefault('log', print)('ngrok tcp 22 is blocked')"),
]


@pytest.mark.parametrize("what, cell", HONEST_CELLS, ids=[h[0] for h in HONEST_CELLS])
def test_honest_tables_items_and_pairs_are_left_alone(what, cell):
    from tests.test_redteam_evasions import _cell_signatures

    assert _cell_signatures(cell) == set(), what


class _Reduce:
    """A pickle that runs ``os.system("ngrok tcp 22")`` as it loads."""

    def __reduce__(self):
        return (os.system, ("ngrok tcp 22",))


def _payload() -> bytes:
    import pickle

    return pickle.dumps(_Reduce(), protocol=4)


def _streamed_pickles() -> list[tuple[str, str]]:
    import base64

    data = _payload()
    return [
        ("pickle.load of a BytesIO", "import pickle, io\npickle.load(io.BytesIO(%r))" % data),
        ("an Unpickler over a BytesIO", "import pickle, io\npickle.Unpickler(io.BytesIO(%r)).load()"
         % data),
        ("joblib.load of a BytesIO", "import joblib, io\njoblib.load(io.BytesIO(%r))" % data),
        ("numpy.load with pickles allowed", "import numpy as np, io\n"
                                            "np.load(io.BytesIO(%r), allow_pickle=True)" % data),
        ("torch.load of a BytesIO", "import torch, io\ntorch.load(io.BytesIO(%r), weights_only=False)"
         % data),
        ("pandas.read_pickle", "import pandas as pd, io\npd.read_pickle(io.BytesIO(%r))" % data),
        ("a base85 pickle", "import pickle, base64\npickle.loads(base64.b85decode(%r))"
         % base64.b85encode(data)),
    ]


@pytest.mark.parametrize("what, cell", _streamed_pickles(), ids=[p[0] for p in _streamed_pickles()])
def test_a_pickle_loaded_from_a_stream_or_base85_is_refused(what, cell):
    """Was missed: only ``pickle.loads`` of a constant was read (and base64, 32, 16, not 85).
    Fixed: an unpickler reading ``io.BytesIO(constant)`` (pickle.load, Unpickler, joblib,
    numpy, torch, pandas) reads that constant; base85 and ascii85 fold."""
    from tests.test_redteam_evasions import _cell_signatures

    assert "proxy-known-tool" in _cell_signatures(cell), what


def test_honest_data_loaded_from_a_stream_is_left_alone():
    import pickle

    from tests.test_redteam_evasions import _cell_signatures

    data = pickle.dumps({"labels": ["ngrok tcp 22", "benign"], "weights": [0.5] * 100})
    npy = b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }" \
        + b" " * 57 + b"\n" + bytes(16)
    for cell in ("import pickle, io\nstate = pickle.load(io.BytesIO(%r))" % data,
                 "import numpy as np, io\na = np.load(io.BytesIO(%r))" % npy,
                 "import pandas as pd, io\ndf = pd.read_pickle(io.BytesIO(%r))" % data,
                 "import io\nbuf = io.BytesIO(b'ngrok tcp 22')\nprint(buf.read())"):
        assert _cell_signatures(cell) == set(), cell


@pytest.mark.parametrize("what, cell", CELL_GAPS, ids=[g[0] for g in CELL_GAPS])
def test_a_runner_kept_aside_is_refused_in_its_cell(what, cell):
    """Was missed: the cell check followed a runner through a name, a table assigned whole,
    an item assigned, get/setdefault/pop, a default argument and a decorator, not through
    these containers, scopes and calls, so the cell ran (ngrok then stopped by the sampler).
    Caught now by one rule (detect/cells.py, "runners kept aside"): a runner used as a value
    taints what holds it (the table, class, namespace, list, loop variable, the function that
    returns it, the name ``globals()``/``setattr(builtins, …)`` binds), and a call through a
    holder that does not resolve to a member known to be something else runs the constant
    command line it is given; a function applied (a lambda class decorator,
    ``functools.reduce`` or ``map`` of a lambda, a cell function given a runner) is read with
    its parameters bound to its arguments."""
    from tests.test_redteam_evasions import _cell_signatures

    assert "proxy-known-tool" in _cell_signatures(cell), what


#: More spellings of the same, tried once the rule was written: most read by it as it was; the
#: last four (an instance's attribute set in ``__init__``, ``map`` of a lambda, a list nested
#: past the depth followed member by member, a cell function given the runner) made it look
#: into methods, apply functions and look through deep nesting too. A cell given in parts
#: is run cell after cell in one kernel.
KEPT_ASIDE_MORE = [
    ("a tuple indexed by a variable", ["import os\nt = (print, os.system)\ni = int('1')\n"
                                       "t[i]('ngrok tcp 22')"]),
    ("a list made by list()", ["import os\nfs = list([os.system])\nfs[0]('ngrok tcp 22')"]),
    ("a lambda wrapper in a table", ["import os\nd = {'go': lambda c: os.system(c)}\n"
                                     "d['go']('ngrok tcp 22')"]),
    ("an instance whose __call__ runs", ["import os\nclass R:\n    __call__ = staticmethod(os.system)\n"
                                         "r = R()\nr('ngrok tcp 22')"]),
    ("getattr of a class", ["import os\nclass R:\n    go = os.system\n"
                            "getattr(R, 'go')('ngrok tcp 22')"]),
    ("a nested table in an earlier cell", ["import os\nd = {'a': {'b': os.system}}",
                                           "d['a']['b']('ngrok tcp 22')"]),
    ("a function returning it, an earlier cell", ["import os\ndef mk():\n    return os.system",
                                                  "mk()('ngrok tcp 22')"]),
    ("a lambda called at once", ["import os\n(lambda f, c: f(c))(os.system, 'ngrok tcp 22')"]),
    ("a list grown by +=", ["import os\nr = []\nr += [os.system]\nr[0]('ngrok tcp 22')"]),
    ("setattr on an object", ["import os\nns = type('N', (), {})()\n"
                              "setattr(ns, 'go', os.system)\nns.go('ngrok tcp 22')"]),
    ("dict.update", ["import os\nd = {}\nd.update(go=os.system)\nd['go']('ngrok tcp 22')"]),
    ("a comprehension over runners", ["import os\n[f('ngrok tcp 22') for f in [os.system]]"]),
    ("a printer then a runner in a loop", ["import os\nfor f in [print, os.system]:\n"
                                           "    f('ngrok tcp 22')"]),
    ("dict.fromkeys", ["import os\nd = dict.fromkeys(['go'], os.system)\nd['go']('ngrok tcp 22')"]),
    ("a deque's popleft", ["import os, collections\nq = collections.deque([os.system])\n"
                           "q.popleft()('ngrok tcp 22')"]),
    ("next() of a generator", ["import os\ng = (x for x in [os.system])\nnext(g)('ngrok tcp 22')"]),
    ("an instance attribute set in __init__", ["import os\nclass R:\n    def __init__(self):\n"
                                                "        self.go = os.system\n"
                                                "R().go('ngrok tcp 22')"]),
    ("map of a lambda over runners", ["import os\n"
                                      "list(map(lambda f: f('ngrok tcp 22'), [os.system]))"]),
    ("a list 150 deep", ["import os\nr = " + "[" * 150 + "os.system" + "]" * 150 + "\nr" +
                         "[0]" * 150 + "('ngrok tcp 22')"]),
    ("a cell function given the runner", ["import os\ndef call(f, c):\n    return f(c)\n"
                                          "call(os.system, 'ngrok tcp 22')"]),
]


@pytest.mark.parametrize("what, cells", KEPT_ASIDE_MORE, ids=[k[0] for k in KEPT_ASIDE_MORE])
def test_more_runners_kept_aside_are_refused_by_the_same_rule(what, cells):
    from tests.test_redteam_evasions import _cell_signatures

    assert "proxy-known-tool" in _cell_signatures(*cells), what


#: Honest near-misses of that rule, each given text that names a tool: a holder of a runner
#: whose call resolves to a member known to be something else (refused if any call through a
#: holder counted), holders of printers and loggers only, a lambda applied that runs nothing.
HONEST_KEPT_ASIDE = [
    ("a table of callbacks called with a log message",
     "import logging, subprocess\ncallbacks = {'run': subprocess.run, 'log': logging.info}\n"
     "callbacks['log']('ngrok tcp 22 is blocked here')"),
    ("a loop over printers", "import logging\nfor f in [print, logging.info]:\n"
                             "    f('ngrok tcp 22 is blocked')"),
    ("functools.reduce joining words", "import functools\n"
                                       "functools.reduce(lambda a, b: a + b, ['ngrok', ' tcp'])"),
    ("reduce over text functions", "import functools\nfunctools.reduce(lambda a, f: f(a), "
                                   "[str.upper, print], 'ngrok tcp 22 is blocked')"),
    ("a class attribute holding a string", "class Help:\n    tip = 'ngrok tcp 22 is blocked'\n"
                                           "print(Help.tip)"),
    ("a class's printer beside its runner", "import subprocess\nclass Tools:\n"
                                            "    run = subprocess.run\n    log = print\n"
                                            "Tools.log('ngrok tcp 22 is blocked')"),
    ("a class's methods beside its runner", "import os\nclass Tool:\n    shell = os.system\n"
                                            "    def __call__(self, msg):\n        print(msg)\n"
                                            "    def say(self, msg):\n        print(msg)\n"
                                            "Tool()('ngrok tcp 22 is blocked')\n"
                                            "t = Tool()\nt('ngrok tcp 22 is blocked')\n"
                                            "Tool().say('ngrok tcp 22 is blocked')"),
    ("a class holding a runner made with text", "import subprocess\nclass Job:\n"
                                                "    run = subprocess.run\n"
                                                "    def __init__(self, note):\n"
                                                "        self.note = note\n"
                                                "j = Job('ngrok tcp 22 is blocked')"),
    ("a decorator that only registers a class", "REG = {}\n"
                                                "@lambda c: REG.setdefault(c.__name__, c)\n"
                                                "class Tunnel:\n    cmd = 'ngrok tcp 22'\n"
                                                "print(REG)"),
    ("a list popped down to a printer", "import subprocess\nr = [subprocess.run, print]\n"
                                        "r.pop()('ngrok tcp 22 is blocked')"),
    ("a printer appended after a runner", "import os\nr = [os.system]\nr.append(print)\n"
                                          "r[1]('ngrok tcp 22 is blocked')"),
    ("a namespace's printer", "import os, types\n"
                              "ns = types.SimpleNamespace(sh=os.system, log=print)\n"
                              "ns.log('ngrok tcp 22 is blocked')"),
    ("a table updated with a printer", "import os\nd = {'go': os.system}\nd.update(log=print)\n"
                                       "d['log']('ngrok tcp 22 is blocked')"),
    ("a nested table's printer", "import os\nd = {'a': {'b': os.system}, 'log': print}\n"
                                 "d['log']('ngrok tcp 22 is blocked')"),
    ("a function returning a printer", "def pick():\n    return print\n"
                                       "pick()('ngrok tcp 22 is blocked')"),
    ("globals() given a printer", "globals()['say'] = print\nsay('ngrok tcp 22 is blocked')"),
    ("a table's keys printed", "import os\nd = {'go': os.system}\nfor name in d:\n"
                               "    print(name, 'ngrok tcp 22 is blocked')"),
    ("a loop variable rebound to a printer", "import os\nfor f in [os.system]:\n    pass\n"
                                             "f = print\nf('ngrok tcp 22 is blocked')"),
    ("torch and a logger beside a runner table",
     "import logging, subprocess, torch\nops = {'sh': subprocess.run, 'abs': torch.abs}\n"
     "x = ops['abs'](torch.tensor([-1.0]))\ntorch.save(x, 'ngrok tcp 22.pt')\n"
     "logging.getLogger().warning('ngrok tcp 22 is blocked')"),
    ("an instance's printer beside its runner", "import subprocess\nclass Job:\n"
                                                "    def __init__(self):\n"
                                                "        self.run = subprocess.run\n"
                                                "        self.log = print\n"
                                                "Job().log('ngrok tcp 22 is blocked')"),
    ("a cell function given a runner it only names", "import os\ndef describe(f, text):\n"
                                                     "    print(f.__name__, text)\n"
                                                     "describe(os.system, 'ngrok tcp 22 is blocked')"),
    ("a cell function given a printer", "def call(f, c):\n    return f(c)\n"
                                        "call(print, 'ngrok tcp 22 is blocked')"),
    ("map of a lambda that prints", "import os\nlist(map(lambda f: print(f.__name__, "
                                    "'ngrok tcp 22 is blocked'), [os.system, print]))"),
    ("a list of runners given text", "import os\nlog = [os.system]\n"
                                     "log.append('ngrok tcp 22 is blocked')\n"
                                     "log.index('ngrok tcp 22 is blocked')"),
    ("a table of runners asked for a key", "import os\nd = {'go': os.system}\n"
                                           "d.get('ngrok tcp 22 is blocked')\n"
                                           "d.setdefault('ngrok tcp 22 is blocked', print)"),
    ("a runner's name and its table's keys", "import os\nd = {'go': os.system}\n"
                                             "for name, fn in d.items():\n"
                                             "    print(name.replace('go', 'ngrok tcp 22 blocked'))\n"
                                             "    fn.__doc__.count('ngrok tcp 22 is blocked')"),
    ("what a runner handed to an executor gave", "import asyncio, subprocess\n"
                                                 "from functools import partial\n"
                                                 "async def main():\n"
                                                 "    loop = asyncio.get_running_loop()\n"
                                                 "    done = await loop.run_in_executor(None, "
                                                 "partial(subprocess.run, ['nvidia-smi'], "
                                                 "capture_output=True))\n"
                                                 "    done.stdout.decode().partition("
                                                 "'ngrok tcp 22 is blocked')"),
    ("a long concatenation", "s = " + " + ".join(f"'w{i} '" for i in range(100)) +
                             "\ns.partition('ngrok tcp 22 is blocked')"),
    ("printers 150 deep", "r = " + "[" * 150 + "print" + "]" * 150 + "\nr" + "[0]" * 150 +
                          "('ngrok tcp 22 is blocked')"),
    ("an object keeping its runner on self", "import subprocess\nclass Caller:\n"
                                             "    def __init__(self, runner=None):\n"
                                             "        self.runner = runner or subprocess.run\n"
                                             "    def note(self, text):\n        print(text)\n"
                                             "    def build(self):\n"
                                             "        self.note('ngrok tcp 22 is blocked')\n"
                                             "Caller().build()\n"
                                             "Caller().note('ngrok tcp 22 is blocked')"),
    ("a runner table used for an honest command", "import subprocess\n"
                                                  "tools = {'smi': subprocess.run}\n"
                                                  "for f in tools.values():\n"
                                                  "    f(['nvidia-smi'])"),
]


@pytest.mark.parametrize("what, cell", HONEST_KEPT_ASIDE, ids=[h[0] for h in HONEST_KEPT_ASIDE])
def test_honest_holders_of_printers_and_runners_are_left_alone(what, cell):
    from tests.test_redteam_evasions import _cell_signatures

    assert _cell_signatures(cell) == set(), what


# ---------------------------------------------------------------- a relay rotating its upstream

#: The far end (outside any kernel): for each line, a page of 64 KiB, then it closes (HTTP/1.0).
PAGES = r"""
import socket, threading
server = socket.create_server(("127.0.0.1", 0), backlog=256)
print(server.getsockname()[1], flush=True)
def serve(conn):
    with conn:
        if conn.makefile("rb").readline():
            conn.sendall(b"p" * 65536)
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
"""

#: A forwarder that keeps each client's connection and opens a new upstream one per request:
#: no outbound connection lives beside the inbound one for two ticks.
ROTATING_RELAY = r"""
import socket, sys, threading
far = int(sys.argv[1])
server = socket.create_server(("127.0.0.1", 0), backlog=128)
print(server.getsockname()[1], flush=True)
def client(conn):
    reader = conn.makefile("rb")
    while line := reader.readline():
        with socket.create_connection(("127.0.0.1", far)) as up:
            up.sendall(line)
            while data := up.recv(65536):
                conn.sendall(data)
while True:
    threading.Thread(target=client, args=(server.accept()[0],), daemon=True).start()
"""

#: Users on kept-alive connections, a page every 0.1 s for 12 s: bytes each got.
PAGE_USERS = r"""
import socket, sys, threading, time
port, got = int(sys.argv[1]), [0] * 4
def user(i):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        end = time.monotonic() + 12
        while time.monotonic() < end:
            conn.sendall(b"GET /\n")
            want = got[i] + 65536
            while got[i] < want:
                got[i] += len(conn.recv(65536))
            time.sleep(0.1)
threads = [threading.Thread(target=user, args=(i,)) for i in range(4)]
[t.start() for t in threads]
[t.join(60) for t in threads]
print(*got, flush=True)
"""


# (not strict: on a loaded machine a tick late may see an upstream connection at two ticks)
@pytest.mark.xfail(strict=False, raises=AssertionError, reason=(
    "a forwarder that opens a new upstream connection per request behind each kept-alive "
    "client connection: every outbound connection opens and closes between two ticks "
    "(behaviour.py _relay_counts pairs an inbound connection with one outbound connection "
    "seen at RELAY_SIGHTINGS ticks carrying the same bytes), so no inbound one is relayed; "
    "summing closed connections' bytes would take a web app querying a database per request "
    "for a relay"))
def test_a_relay_rotating_its_upstream_per_request_is_measured():
    import subprocess

    from tests.standins.watched import ENV, Watched

    far = subprocess.Popen([sys.executable, "-c", PAGES], stdout=subprocess.PIPE, text=True)
    try:
        far_port = int(far.stdout.readline())
        watched = Watched([sys.executable, "-c", ROTATING_RELAY, str(far_port)])
        try:
            port = int(watched.proc.stdout.readline())
            watched.warm()
            users = subprocess.run([sys.executable, "-c", PAGE_USERS, str(port)], env=ENV,
                                   capture_output=True, text=True, timeout=120)
        finally:
            watched.stop()
    finally:
        far.kill()
        far.wait()
    got = [int(n) for n in users.stdout.split()]
    if len(got) != 4 or min(got) < 20 * 65536:
        raise RuntimeError(f"the users were not served through the relay: {got} {users.stderr}")
    assert watched.highest("kernel_relayed_connections") >= 3, watched.seen


# ---------------------------------------------------------------- a torrent client's options in files


@pytest.fixture
def counting_tracker():
    """The stand-in tracker, counting the announces it answers."""
    import threading
    from http.server import ThreadingHTTPServer

    from tests.standins.tracker import Announce

    announces = []

    class Counting(Announce):
        def do_GET(self):  # noqa: N802
            announces.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], announces
    server.shutdown()


@pytest.mark.parametrize("conf", ["--conf-path", "~/.aria2/aria2.conf",
                                  "$XDG_CONFIG_HOME/aria2/aria2.conf"])
def test_aria2c_given_its_torrent_and_options_in_files_is_stopped(kernel, counting_tracker,
                                                                 tmp_path, conf):
    """Was missed: aria2c (renamed: libaria2 loaded) given its torrent through an input file
    and its options through a configuration file: torrent-aria2-bittorrent read the command
    line only, and it listened outside BitTorrent's ports with no peer (torrent-swarm had
    nothing to count); so with its default configuration and no argument at all. Caught now:
    a program whose content shows aria2 has the files aria2c reads read as it reads them
    (observe/aria2.py: --conf-path or its default configuration, its input files, a local
    file it takes for a torrent), the marker aria2-bittorrent."""
    import hashlib

    from tests.test_redteam_evasions import _copy, assert_stopped_in_time

    tracker, announces = counting_tracker
    piece = bytes(16384)
    (tmp_path / "data.torrent").write_bytes(bencode({
        "announce": f"http://127.0.0.1:{tracker}/announce",
        "info": {"name": "data.bin", "length": len(piece), "piece length": len(piece),
                 "pieces": hashlib.sha1(piece).digest()}}))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'data.torrent'}\n")
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    files = {"--conf-path": tmp_path / "fetch.conf", "~/.aria2/aria2.conf": home / ".aria2" /
             "aria2.conf", "$XDG_CONFIG_HOME/aria2/aria2.conf": xdg / "aria2" / "aria2.conf"}
    files[conf].parent.mkdir(parents=True, exist_ok=True)
    files[conf].write_text(
        f"input-file={tmp_path / 'list.txt'}\nlisten-port=40100-40110\nenable-dht=false\n"
        f"dir={tmp_path / 'out'}\nquiet=true\n")
    tool = _copy("aria2c", tmp_path, "fetcher")
    argv = [tool, f"--conf-path={files[conf]}"] if conf == "--conf-path" else [tool]  # none
    pid, started = kernel.start(argv, env={"HOME": str(home), "XDG_CONFIG_HOME": str(xdg)})
    wait_until(lambda: announces or not _alive(pid), timeout=30, what="an announce")
    # (stopped before its first announce, by what its files say: as much a catch)
    if not announces and not kernel.incidents("torrenting"):
        raise RuntimeError("the client never announced (no torrent work to catch)")
    assert_stopped_in_time(kernel, pid, started, "torrenting")


# ---------------------------------------------------------------- packed real tools

@pytest.mark.parametrize("wipe", [False, True], ids=["packed", "packed, header wiped"])
def test_a_upx_packed_ssh_server_under_a_neutral_name_is_stopped(kernel, tmp_path, wipe):
    """Issue #17's packed dropbear (the packed tools tested so far were microsocks, nmap and
    john): its markers are found in its unpacked memory."""
    from tests.test_redteam_evasions import _packed, _port, assert_stopped_in_time

    tool = _packed("dropbear", tmp_path, "update-motd", wipe=wipe)
    pid, started = kernel.start([tool, "-F", "-E", "-R", "-p", f"127.0.0.1:{_port()}",
                                 "-P", str(tmp_path / "pid")])
    assert_stopped_in_time(kernel, pid, started, "remote-access")


#: The workers started through a chain of idle shells deeper than the walk up from a busy
#: process whose parent the sample leaves out (behaviour.py ``_nearest_ancestor``).
DEEP_SHELL_CHAIN = r"""
import os, subprocess, sys, tempfile
from tests.standins.quiet_miner import run
spin = (f"{sys.executable} -c 'import hashlib, time; d = bytes(1); end = time.monotonic() + 90; "
        "any((d := hashlib.sha256(d).digest()) is None or time.monotonic() > end "
        "for _ in iter(int, 1))'")
chain = tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False)
# each level a shell that starts the next in the background and waits, idle: twelve deep
chain.write(f'if [ "$1" -gt 0 ]; then sh "$0" $(($1 - 1)) & wait; else {spin} & {spin} & wait; fi\n')
chain.close()
shell = subprocess.Popen(["sh", chain.name, "12"])
try:
    run("127.0.0.1", int(sys.argv[1]), 0.02, 20)
finally:
    os.unlink(chain.name)
    os.killpg(0, 9)
"""


def test_a_miner_whose_workers_sit_below_a_deep_chain_of_idle_shells_is_measured(pool):
    """Was missed: a busy process whose parent the sample leaves out was placed under its
    nearest ancestor the sample shows, looking 8 parents up: twelve idle shells hid the
    workers from their holder. Fixed: 64 up (ANCESTOR_DEPTH), each parent read once a tick."""
    assert _a_process_of_it_mines(DEEP_SHELL_CHAIN, pool)
