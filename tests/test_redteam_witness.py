"""Red team against the cell witness and the kernel hook (``cellwitness.py``, ``kernel/``,
issue #17): silencing the cell check or the hook's reports from inside the kernel without a
tampering incident, by someone who has read the code. What the guard catches passes; what it
misses is ``xfail(strict=True)`` asserting what should happen. One real guarded server, a
kernel per test, a stand-in pool on loopback. Honest extensions that transform cells stay
quiet."""

from __future__ import annotations

import pytest

from tests.harness import GuardedServer, wait_until
from tests.standins import pool as standin_pool
from tests.test_kernel_hook_tampering import STRATUM, Kernel

pytestmark = pytest.mark.integration

USER = "redteam3-witness"
TAMPERING_WAIT = 20  # seconds (the witness looks every 0.5 s; the machine is busy)


@pytest.fixture(scope="module")
def server():
    settings = {"sample_interval": 0.5, "stop_grace": 1.0, "cell_checks": True,
                "user_name": USER, "strike_limit": 0}
    with GuardedServer(guard=settings) as guarded:
        yield guarded


@pytest.fixture(scope="module")
def pool():
    listening = standin_pool.serve()
    yield listening.getsockname()[1]
    listening.close()


@pytest.fixture
def kernel(server):
    started = Kernel(server)
    started.run("1")  # the hook is on the channel before the test's cells
    yield started
    started.close()


def _ok(kernel: Kernel, code: str, **kwargs) -> str:
    reply, text = kernel.run(code, **kwargs)
    assert reply["status"] == "ok", f"{code[:80]!r}: {text[-300:]}"
    return text


def _refused(kernel: Kernel, code: str) -> None:
    reply, text = kernel.run(code)
    assert reply["status"] == "error" and reply.get("ename") == "CellRefused", \
        f"the cell ran: {reply['status']} {text[-200:]}"


def _tampering(kernel: Kernel, signature: str | None = None, timeout: float = TAMPERING_WAIT):
    found = wait_until(lambda: [i for i in kernel.incidents("tampering")
                                if signature is None or i["signature"] == signature],
                       timeout=timeout, what=f"a tampering incident ({signature or 'any'})")
    assert (found[0]["user"], found[0]["kernel_id"]) == (USER, kernel.id)
    return found


# ---------------------------------------------------------------- the transformer list


def test_the_check_removed_before_each_cell_and_restored_after_is_tampering(kernel):
    """Cleared in pre_run_cell, put back in post_run_cell: every cell runs unchecked, and the
    list looks whole between cells. The witness sees the cell with no check."""
    _ok(kernel, "ip = get_ipython()\nguard = ip._colab_guard\n"
                "def off(info):\n    ip.ast_transformers.remove(guard._checker)\n"
                "def on(result):\n    if guard._checker not in ip.ast_transformers:\n"
                "        ip.ast_transformers.append(guard._checker)\n"
                "ip.events.register('pre_run_cell', off)\n"
                "ip.events.register('post_run_cell', on)")
    kernel.run("print('unchecked')")
    _tampering(kernel, "kernel-hook-cell-unchecked")


def test_input_transformers_reordered_cannot_rewrite_a_cell_after_its_check(kernel, pool):
    _ok(kernel, "ip = get_ipython()\n"
                "ip.input_transformers_post.insert(0, lambda lines: "
                "[l.replace('@@', 'mining.') for l in lines])\n"
                "ip.input_transformers_post.reverse()\n"
                "ip.input_transformers_cleanup.append(lambda lines: lines)")
    _refused(kernel, STRATUM.format(pool=pool).replace("mining.", "@@"))


def test_a_transformer_added_while_the_transformers_run_is_read_before_the_check(kernel, pool):
    """Was missed: IPython walks the live transformer list, so a transformer that appends
    another puts it after the check, which then read '@@' and ran 'mining.' (fixed: the check
    comes again after it, kernel/extension.py)."""
    _ok(kernel, "import ast\nip = get_ipython()\n"
                "class Late(ast.NodeTransformer):\n"
                "    def visit_Constant(self, node):\n"
                "        if node.value == '@@subscribe':\n"
                "            return ast.copy_location(ast.Constant('mining.subscribe'), node)\n"
                "        return node\n"
                "late = Late()\n"
                "class Early(ast.NodeTransformer):\n"
                "    def visit(self, node):\n"
                "        if late not in ip.ast_transformers:\n"
                "            ip.ast_transformers.append(late)\n"
                "        return node\n"
                "ip.ast_transformers.insert(0, Early())")
    _refused(kernel, STRATUM.format(pool=pool).replace("mining.subscribe", "@@subscribe"))


def test_an_honest_transformer_added_while_they_run_still_transforms_and_is_quiet(kernel):
    _ok(kernel, "import ast\nip = get_ipython()\n"
                "class Double(ast.NodeTransformer):\n"
                "    def visit_Constant(self, node):\n"
                "        if node.value == 21:\n"
                "            return ast.copy_location(ast.Constant(42), node)\n"
                "        return node\n"
                "double = Double()\n"
                "class Lazy(ast.NodeTransformer):\n"
                "    def visit(self, node):\n"
                "        if double not in ip.ast_transformers:\n"
                "            ip.ast_transformers.append(double)\n"
                "        return node\n"
                "ip.ast_transformers.insert(0, Lazy())")
    assert "42" in _ok(kernel, "print(21)")
    assert "42" in _ok(kernel, "print(21)")
    assert get_checkers(kernel) == "1"
    kernel.quiet_for(3)


def get_checkers(kernel: Kernel) -> str:
    """How many times the hook's check is in the list between cells (once)."""
    return _ok(kernel, "ip = get_ipython()\n"
                       "print(ip.ast_transformers.count(ip._colab_guard._checker))").strip()


# ---------------------------------------------------------------- the check fed other code


def test_the_hook_made_to_check_other_code_is_tampering_and_the_cell_is_read(kernel, pool):
    """Was missed: with ``cell_pieces`` replaced, every check read ``x = 1`` under the cell's
    own digest, and the witness matched it (fixed: the server compares what the check read
    with what the cell itself makes, and reads the cell where they differ)."""
    _ok(kernel, "import colab_guard.kernel.extension as e\n"
                "e.cell_pieces = lambda tree, length: ['x = 1']")
    kernel.run(STRATUM.format(pool=pool))
    _tampering(kernel, "kernel-hook-check-forged")


def test_run_cell_replaced_to_check_other_code_is_tampering(kernel, pool):
    """``run_cell`` replaced by one that asks for a check of ``x = 1`` under the cell's own
    digest, then compiles the cell under the file name the check announced (so its run is
    reported): the check, the report and the witness all agree, but the cell is not what was
    checked (fixed with the comparison above)."""
    _ok(kernel, "import ast\nip = get_ipython()\nguard = ip._colab_guard\n"
                "original = ip.run_cell\n"
                "def run_cell(raw_cell, *args, **kwargs):\n"
                "    if 'mining' not in raw_cell:\n"
                "        return original(raw_cell, *args, **kwargs)\n"
                "    guard._raw_cell = raw_cell\n"
                "    guard.check_cell(ast.parse('x = 1'))\n"
                "    exec(compile(raw_cell, guard.reporter.cell_file, 'exec'), ip.user_ns)\n"
                "    return original('pass', *args, **kwargs)\n"
                "ip.run_cell = run_cell")
    kernel.run(STRATUM.format(pool=pool))
    _tampering(kernel, "kernel-hook-check-forged")


def test_an_honest_transformer_that_changes_the_code_is_no_forged_check(kernel):
    _ok(kernel, "import ast\n"
                "class Rename(ast.NodeTransformer):\n"
                "    def visit_Name(self, node):\n"
                "        if node.id == 'colour':\n"
                "            node.id = 'color'\n"
                "        return node\n"
                "get_ipython().ast_transformers.append(Rename())")
    assert "red" in _ok(kernel, "color = 'red'\nprint(colour)")
    _ok(kernel, "import json\nLABELS = ['mining.subscribe', 'DoS attacks-SlowHTTPTest']\n"
                "colour = json.dumps(LABELS)")
    kernel.quiet_for(3)


# ---------------------------------------------------------------- the hook's settings


@pytest.mark.parametrize("change", [
    "get_ipython()._colab_guard.reporter.code_checks = False",
    "import colab_guard.kernel.hook as h\nh.KINDS.pop('socket.connect')\n"
    "h.KINDS.pop('subprocess.Popen')",
    "import threading, colab_guard.kernel.hook as h\n"
    "def quiet():\n    h._installed.quiet_threads.add(threading.get_ident())\n"
    "t = threading.Thread(target=quiet)\nt.start()\nt.join()",
    "get_ipython()._colab_guard.reporter.library_prefixes = ('/',)",
    "import collections\nget_ipython()._colab_guard.reporter.pending = collections.deque()",
    "import colab_guard.kernel.hook as h\nh.Reporter._from_child = lambda self, e, a: None",
], ids=["run-time code checks off", "events dropped from the hook's table",
        "a thread made quiet", "every file the environment's", "the queue replaced",
        "a method replaced"])
def test_the_hooks_settings_changed_from_a_cell_are_tampering(kernel, change):
    """Was missed: each silenced what the hook reports (code exec'd at run time, programs
    started, connections) while cells were still checked and reported run (fixed: the hook
    reports what changed since the guard set it up, kernel/hook.py Reporter.altered)."""
    _ok(kernel, change)
    kernel.run("print('next cell')")
    _tampering(kernel, "kernel-hook-altered")


def test_a_users_own_audit_hook_silences_nothing(kernel, pool):
    _ok(kernel, "import sys\nseen = []\n"
                "sys.addaudithook(lambda event, args: seen.append(event) "
                "if event == 'socket.connect' else None)")
    _refused(kernel, STRATUM.format(pool=pool))
    _ok(kernel, "print('after')")
    assert kernel.incidents("tampering") == []


# ---------------------------------------------------------------- still open


def test_silent_executions_after_the_check_is_removed_are_tampering(kernel):
    """Was missed: a silent execution publishes no execute_input, so the witness never saw
    the silent cells that follow (fixed: the hook's sender asks at every flush, a heartbeat,
    whether the check is still among the AST transformers, Reporter.altered)."""
    kernel.run("get_ipython().ast_transformers.clear()", silent=True)
    kernel.run("x = 'unchecked'", silent=True)
    _tampering(kernel, "kernel-hook-altered", timeout=8)


def test_the_witness_blinded_by_suppressing_execute_input_is_tampering(kernel):
    _ok(kernel, "k = get_ipython().kernel\nk._publish_execute_input = lambda *a, **kw: None\n"
                "get_ipython().ast_transformers.clear()")
    kernel.run("x = 'unchecked'")
    _tampering(kernel, "kernel-hook-altered", timeout=8)


@pytest.mark.parametrize("change", [
    "get_ipython().ast_transformers[:] = []",
    "ip = get_ipython()\nip.events.unregister('pre_run_cell', ip._colab_guard.pre_run_cell)",
], ids=["the transformer list emptied", "the pre_run_cell callback unregistered"])
def test_the_guard_taken_out_of_ipython_is_tampering_at_the_next_heartbeat(kernel, change):
    kernel.run(change, silent=True)
    _tampering(kernel, "kernel-hook-altered", timeout=8)


def test_the_check_taken_out_only_while_silent_cells_run_is_tampering(kernel):
    """What an abuser does next: the check out in pre_execute and back in post_execute, so
    the heartbeat never sees it missing and IOPub shows no silent cell (fixed: the audit hook
    sees a cell's code executed with no check before it, Reporter.unchecked_cells)."""
    _ok(kernel, "ip = get_ipython()\nguard = ip._colab_guard\n"
                "def off():\n"
                "    while guard._checker in ip.ast_transformers:\n"
                "        ip.ast_transformers.remove(guard._checker)\n"
                "def on(*args):\n"
                "    if guard._checker not in ip.ast_transformers:\n"
                "        ip.ast_transformers.append(guard._checker)\n"
                "ip.events.register('pre_execute', off)\n"
                "ip.events.register('post_execute', on)")
    kernel.run("x = 'unchecked'", silent=True)
    _tampering(kernel, "kernel-hook-altered", timeout=8)


def test_nested_and_repeated_cells_are_no_unchecked_cells(kernel):
    """Near-misses of the above: a cell that runs another (run_cell, %%capture), its later
    statements after that, the same cell twice, a cell magic, silent cells."""
    _ok(kernel, "get_ipython().run_cell('y = 2')\nz = 3\nprint(z)")
    _ok(kernel, "%%capture out\nprint('captured')\nw = 1")
    _ok(kernel, "%%time\nv = sum(range(10))")
    _ok(kernel, "print('again')")
    _ok(kernel, "print('again')")
    _ok(kernel, "q = 1", silent=True)
    _ok(kernel, "async def f():\n    return 1\nawait f()")
    kernel.quiet_for(3)


def test_honest_silent_executions_and_transformer_changes_are_quiet(kernel):
    """Near-misses: silent executions (a frontend's variable inspector), other transformers
    added and removed, the check moved within the list by IPython's own order, many cells."""
    _ok(kernel, "import ast\nclass Noop(ast.NodeTransformer):\n    pass\n"
                "noop = Noop()\nip = get_ipython()\nip.ast_transformers.insert(0, noop)")
    for _ in range(3):
        _ok(kernel, "x = sorted(globals())[:3]", silent=True)
        _ok(kernel, "print(len(dir()))")
    _ok(kernel, "ip.ast_transformers.remove(noop)\nip.ast_transformers.append(noop)")
    _ok(kernel, "print('after')")
    kernel.quiet_for(3)


def test_a_thread_rewriting_the_tree_after_its_check_changes_nothing(kernel, pool):
    """Was missed: IPython compiles a cell's statements one at a time, as each runs, and a
    thread holding the tree (kept by an earlier transformer) rewrote a later statement after
    the check read it (fixed: where another transformer saw the tree, the check reads its own
    copy and hands that to IPython: what runs is what was read)."""
    _ok(kernel, "import ast, threading, time\nip = get_ipython()\nheld = []\n"
                "class Keep(ast.NodeTransformer):\n"
                "    def visit(self, node):\n"
                "        held.append(node)\n"
                "        return node\n"
                "ip.ast_transformers.insert(0, Keep())\n"
                "def rewrite():\n"
                "    while True:\n"
                "        time.sleep(0.05)\n"
                "        for tree in list(held):\n"
                "            for n in ast.walk(tree):\n"
                "                if isinstance(n, ast.Constant) and n.value == '@@subscribe' and "
                "ip._colab_guard.reporter.cell_file is None:\n"
                "                    n.value = 'mining.subscribe'\n"
                "threading.Thread(target=rewrite, daemon=True).start()")
    cell = "import time\ntime.sleep(1)\n" + STRATUM.format(pool=pool).replace(
        "mining.subscribe", "@@subscribe") + "print('sent', '@@subscribe')\n"
    reply, text = kernel.run(cell)
    assert reply["status"] == "ok" and "sent @@subscribe" in text, text[-200:]
    # the thread did rewrite the tree it held: the original, which did not run
    assert "mining.subscribe" in _ok(kernel, "print([n.value for t in held for n in ast.walk(t) "
                                             "if getattr(n, 'value', '') == 'mining.subscribe'])")
