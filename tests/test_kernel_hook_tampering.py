"""The kernel hook that cannot be skipped quietly, on a real guarded server: honest use that
must never read as tampering (restarts, %reset, magics, other transformers, syntax errors,
interrupts, slow and long cells), long cells checked in pieces, and code exec'd at run time
checked like a cell. The attacks themselves are in tests/test_redteam_evasions.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.harness import GuardedServer, wait_until
from tests.standins import pool as standin_pool

pytestmark = pytest.mark.integration

USER = "kernelside-user"
STRATUM = ("import socket, json\n"
           "s = socket.create_connection(('127.0.0.1', {pool}))\n"
           "s.sendall(json.dumps({{'id': 1, 'method': 'mining.subscribe', 'params': []}})"
           ".encode() + b'\\n')\n"
           "s.close()\n")


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


class Kernel:
    def __init__(self, server: GuardedServer):
        self.server = server
        self.id, self.client = server.start_kernel()

    def run(self, code: str, timeout: float = 120, silent: bool = False) -> tuple[dict, str]:
        out: list[str] = []

        def hook(msg):
            content = msg["content"]
            if msg["msg_type"] == "stream":
                out.append(content["text"])
            elif msg["msg_type"] == "error":
                out.append(f"{content['ename']}: {content['evalue']}")
            elif msg["msg_type"] in ("display_data", "execute_result"):
                out.append(content["data"].get("text/plain", ""))

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=hook,
                                                silent=silent)
        return reply["content"], "".join(out)

    def incidents(self, category: str | None = None) -> list[dict]:
        return [i for i in self.server.incidents(self.id)
                if category is None or i["category"] == category]

    def quiet_for(self, seconds: float) -> None:
        """No incident for ``seconds`` (the witness looks every 0.5 s, its grace is 1.5 s)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.incidents() == [], [(i["signature"], i["description"])
                                            for i in self.incidents()]
            time.sleep(0.2)  # polling the incident log while the witness looks
        assert self.incidents() == []

    def close(self) -> None:
        self.client.stop_channels()
        try:
            self.server.api("DELETE", f"api/kernels/{self.id}")
        except OSError:
            pass


@pytest.fixture
def kernel(server):
    started = Kernel(server)
    started.run("1")  # the hook is on the channel before the test's cells
    yield started
    started.close()


def _checked(kernel: Kernel, code: str) -> tuple[dict, str]:
    """Run a cell; once more if the server was too busy to check it within the limit (what
    the refusal tells the user to do: the second run is answered from the first reading)."""
    reply, text = kernel.run(code)
    if "could not finish checking it" in text:
        reply, text = kernel.run(code)
    return reply, text


def _ok(kernel: Kernel, code: str, **kwargs) -> str:
    reply, text = kernel.run(code, **kwargs)
    assert reply["status"] == "ok", f"{code[:80]!r}: {text[-300:]}"
    return text


def _ok_after_error(kernel: Kernel, code: str) -> str:
    """``_ok`` right after a cell failed: ipykernel 7 aborts the requests that reach it before
    the marker that ends its abort (queued on its shell thread after the error reply), so a
    client that sends at once may be answered "aborted" (never run, never checked): sent
    again until it runs."""
    def ran():
        reply, text = kernel.run(code)
        return None if reply["status"] == "aborted" else (reply, text)

    reply, text = wait_until(ran, timeout=60, interval=0.2, what="a request not aborted")
    assert reply["status"] == "ok", f"{code[:80]!r}: {text[-300:]}"
    return text


def _fails(kernel: Kernel, code: str, ename: str) -> None:
    reply, text = kernel.run(code)
    assert reply["status"] == "error" and reply["ename"] == ename, text[-300:]


HONEST_CELLS = [
    "# only a comment: nothing runs",
    "%time total = sum(range(1000))",
    "%%capture captured\nprint('hidden')",
    "%reset -f",
    "import asyncio\nawait asyncio.sleep(0.1)",
    "!echo shell",
    "%%bash\necho bash",
    "get_ipython().run_cell('inner = 2')",
    "from collections import namedtuple\nfrom dataclasses import dataclass\n"
    "P = namedtuple('P', 'x y')\n@dataclass\nclass Q:\n    a: int = 1\nprint(P(1, 2), Q())",
    "import time\ntime.sleep(3)  # a slow cell",
]


def test_honest_cells_are_no_tampering(kernel):
    for cell in HONEST_CELLS:
        _ok(kernel, cell)  # ran, answered "ok"
    _fails(kernel, "def f(:\n    pass", "SyntaxError")
    _fails(kernel, "return 5", "SyntaxError")  # parses, is checked, never compiles
    _ok(kernel, "x = 1", silent=True)  # a frontend's silent execution (variable inspectors)
    kernel.quiet_for(4)
    assert kernel.incidents() == []  # no tampering, nothing else


def test_other_extensions_transformers_are_no_tampering_and_are_checked_after(kernel, pool):
    """Another extension's AST transformer (registered after the hook's) and an input
    transformer: the hook stays last, so it reads the cell as those transformers leave it."""
    _ok(kernel, "import ast\nclass Upper(ast.NodeTransformer):\n"
                "    def visit_Constant(self, node):\n"
                "        if node.value == '@@':\n"
                "            return ast.copy_location(ast.Constant('mining.subscribe'), node)\n"
                "        return node\n"
                "get_ipython().ast_transformers.append(Upper())\n"
                "get_ipython().input_transformers_post.append(lambda lines: lines)")
    _ok(kernel, "print('a cell after them')")
    kernel.quiet_for(3)
    reply, _ = kernel.run(STRATUM.format(pool=pool).replace("'mining.subscribe'", "'@@'"))
    assert reply["status"] == "error" and reply["ename"] == "CellRefused"


def test_an_interrupted_cell_is_no_tampering(kernel, server):
    """Interrupted through the server as soon as it waits (for its check's verdict, or in its
    sleep). Not before: an interrupt that lands while ipykernel still tokenizes the cell is
    caught there and no reply is ever sent (ipykernel's, not the guard's; it failed CI so)."""
    pid = int(kernel.run("import os; print(os.getpid())")[1])
    msg_id = kernel.client.execute("import time\ntime.sleep(30)")
    _started(kernel, msg_id)
    wait_until(_asleep_and_idle(pid), timeout=60, interval=0.1, what="the kernel waits")
    server.api("POST", f"api/kernels/{kernel.id}/interrupt")
    reply = kernel.client.get_shell_msg(timeout=60)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    _ok_after_error(kernel, "print('after the interrupt')")
    kernel.quiet_for(3)


def test_a_cell_interrupted_while_it_is_checked_did_not_run_and_is_no_tampering(tmp_path):
    """The interrupt lands in the kernel while it waits for the check's verdict: the cell is
    answered as interrupted, did not run, and the next one runs; no tampering (the check
    the server goes on with is not a cell the kernel owes a report of)."""
    settings = {"sample_interval": 0.5, "cell_checks": True, "cell_check_limit": 120,
                "user_name": USER, "strike_limit": 0}
    with GuardedServer(guard=settings, folder=tmp_path / "server") as guarded:
        kernel = Kernel(guarded)
        try:
            pid = int(kernel.run("import os; print(os.getpid())")[1])
            # quick for the kernel to parse, seconds for the server to read (chained calls)
            cell = "\n".join("x = df" + ".pipe(f)" * 74 for _ in range(120))
            _started(kernel, kernel.client.execute("ran = True\n" + cell))
            # Interrupted once the kernel waits for the verdict: one landing while ipykernel
            # still tokenizes the cell is lost there (ipykernel catches it and sends no reply:
            # not the guard's to mend).
            wait_until(_asleep_and_idle(pid), timeout=60, interval=0.1,
                       what="the kernel waits for the verdict")
            guarded.api("POST", f"api/kernels/{kernel.id}/interrupt")
            reply = kernel.client.get_shell_msg(timeout=60)
            assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
            text = _ok_after_error(kernel, "print('ran' in globals())")
            assert text.strip() == "False"
            kernel.quiet_for(3)
        finally:
            kernel.close()


def test_a_restarted_kernel_is_no_tampering(kernel, server):
    _ok(kernel, "a = 1")
    server.api("POST", f"api/kernels/{kernel.id}/restart")
    # This client's iopub reconnects on its own: output sent before then is lost (the run
    # would wait for it), so wait until kernel_info is answered with iopub connected.
    kernel.client.wait_for_ready(timeout=60)
    wait_until(lambda: kernel.run("print('back')", timeout=60)[0]["status"] == "ok", timeout=90,
               what="the restarted kernel answers")
    # a new process: what the first one held is gone, and the hook checks (and runs) its cells
    assert _ok(kernel, "print('a' in globals())").strip() == "False"
    assert _ok(kernel, "b = 2\nprint(b)").strip() == "2"
    kernel.quiet_for(3)


def test_a_pasted_dataset_and_a_long_generated_cell_run(kernel):
    """A 1.5 MB data literal (shortened before it is checked: data is not code) and 3,000
    generated lines of code (checked in pieces): both run, no incident."""
    rows = ", ".join(f"({i}, {i * 0.5}, 'label{i % 7}')" for i in range(60_000))
    started = time.monotonic()
    text = _ok(kernel, f"DATA = [{rows}]\nprint(len(DATA))")
    assert "60000" in text
    pasted = time.monotonic() - started
    generated = "\n".join(f"def f{i}(x):\n    return x * {i} + len('row {i}')" for i in range(3000))
    _ok(kernel, generated + "\nprint(f2999(1))")
    print(f"pasted 1.5 MB data cell ran in {pasted:.2f} s")
    kernel.quiet_for(2)


def test_a_statement_too_long_to_check_is_refused_with_what_to_do(kernel):
    """Not data (it calls), one statement longer than a piece: refused, saying what to do."""
    call = "print(" + ", ".join(f"len('{i}')" for i in range(30_000)) + ")"  # 409 KB
    reply, text = kernel.run(call)
    assert reply["status"] == "error" and reply["ename"] == "CellRefused", text[-300:]
    assert "Split it" in text
    kernel.quiet_for(1)


def test_cells_nested_too_deeply_for_the_reader_are_checked_or_refused(kernel, tmp_path):
    """A sum of 1,000 terms before the code made the reader give up on the rest of the cell;
    a sum of 5,000 terms, run once the kernel raised its recursion limit, did not even parse
    in the server and ran unchecked (tests/test_redteam_cells16.py)."""
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('ran')\nimport os\nos.system('ngrok tcp 22')\n"
    reply, text = _checked(kernel, "x = 1" + " + 1" * 1000 + "\n" + code)
    assert reply["status"] == "error" and reply["ename"] == "CellRefused", text[-300:]
    refused_by = reply["evalue"]  # the incident's id: refused for its ngrok, read to the end
    assert [i["id"] for i in kernel.incidents()] == [refused_by], text[-300:]
    _ok(kernel, "import sys\nsys.setrecursionlimit(100_000)")
    reply, text = kernel.run("x = 1" + " + 1" * 5000 + "\n" + code)
    assert reply["status"] == "error" and reply["ename"] == "CellRefused", text[-300:]
    assert "nested more deeply than the guard reads" in text and "Split the expression" in text
    assert not marker.exists()
    # an honest formula as deep as the first runs
    _ok(kernel, "x = 1" + " + 1" * 1000 + "\nprint(x)")
    # the first cell's incident (its ngrok), none for the one too deep to read (a refusal
    # that says what to do, as for a cell too long), and no tampering
    deadline = time.monotonic() + 2  # the witness's grace (1.5 s) and a look
    while time.monotonic() < deadline:
        assert [i["signature"] for i in kernel.incidents()] == ["proxy-known-tool"]
        time.sleep(0.2)  # polling the incident log while the witness looks


def test_code_exec_d_from_a_file_is_checked_like_a_cell(kernel, pool, tmp_path):
    """exec(open(f).read()) of a Stratum client: the kernel is interrupted, one incident."""
    script = tmp_path / "notes.txt"
    script.write_text(STRATUM.format(pool=pool) + "import time\ntime.sleep(20)\n")
    started = time.time()
    reply, text = kernel.run(f"exec(open({str(script)!r}).read())")
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", text[-300:]
    found = wait_until(lambda: kernel.incidents("crypto-mining"), timeout=15,
                       what="a mining incident")
    assert (found[0]["user"], found[0]["kernel_id"]) == (USER, kernel.id)
    assert time.time() - started < 20


def test_honest_code_exec_d_at_run_time_runs(kernel, tmp_path):
    """A notebook that execs and imports its own helper files (and the standard library's
    generated code): nothing to find, nothing done."""
    helper = tmp_path / "helpers_kernelside.py"
    helper.write_text("import socket\ndef ping(host, port):\n"
                      "    with socket.create_connection((host, port), timeout=1) as s:\n"
                      "        s.sendall(b'ping')\n")
    text = _ok(kernel, f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport helpers_kernelside\n"
                       f"exec(open({str(helper)!r}).read())\n"
                       "for i in range(200):\n    exec(f'v{i} = {i} * 2')\nprint(v199)")
    assert text.strip() == "398"  # every exec'd piece ran
    kernel.quiet_for(2)


def test_cells_aborted_after_an_error_are_no_tampering(kernel):
    """Run all: a cell fails, the kernel aborts the cells queued behind it (never run)."""
    failing = kernel.client.execute("import time\ntime.sleep(1)\nraise ValueError('bad data')")
    queued = [kernel.client.execute(f"print('queued {i}')") for i in range(3)]
    replies = {}
    while len(replies) < 4:
        reply = kernel.client.get_shell_msg(timeout=60)
        replies[reply["parent_header"]["msg_id"]] = reply["content"]["status"]
    assert replies[failing] == "error" and {replies[q] for q in queued} == {"aborted"}
    _ok_after_error(kernel, "print('after')")
    kernel.quiet_for(3)


def test_a_cell_whose_check_outlasts_the_limit_is_refused_then_runs_when_run_again(tmp_path):
    """cell_check_limit 1 s, a cell that takes longer to read: refused with what to do (never
    run unread), no tampering; run again, it is answered from the first reading and runs."""
    settings = {"sample_interval": 0.5, "cell_checks": True, "cell_check_limit": 1.0,
                "user_name": USER, "strike_limit": 0}
    with GuardedServer(guard=settings, folder=tmp_path / "server") as slow:
        kernel = Kernel(slow)
        try:
            kernel.run("1")
            # ~1.7 MB in 7 pieces, seconds to read on any machine (one piece of 250 KB was
            # read within the second on a fast one, and the cell ran).
            cell = "\n".join(f"x{i} = 'v' + 'w{i}' * 2" for i in range(64_000)) + "\nprint('ran')"
            reply, text = kernel.run(cell)
            assert reply["status"] == "error" and reply["ename"] == "CellRefused", text[-300:]
            assert "Run it again" in text
            text = wait_until(lambda: _ran_again(kernel, cell), timeout=60, interval=0.5,
                              what="the cell ran when run again")
            assert "ran" in text
            kernel.quiet_for(3)
        finally:
            kernel.close()


def test_a_kernels_cells_are_checked_while_another_kernels_long_cell_is_read(tmp_path):
    """Each kernel's cells are read on a thread of its own: a cell that takes seconds to read
    in one kernel (another user's, on a shared server) does not hold up the next kernel's
    checks. Read on one thread for all, the second kernel's cell waited behind the first
    one's reading and was refused once cell_check_limit passed."""
    settings = {"sample_interval": 0.5, "cell_checks": True, "cell_check_limit": 1.0,
                "user_name": USER, "strike_limit": 0}
    with GuardedServer(guard=settings, folder=tmp_path / "server") as shared:
        slow, other = Kernel(shared), Kernel(shared)
        try:
            slow.run("1")
            other.run("1")
            # ~1.7 MB in 7 pieces: about 9 s of reading here, refused after 1 s while the
            # server reads on
            cell = "\n".join(f"x{i} = 'v' + 'w{i}' * 2" for i in range(64_000))
            reply, text = slow.run(cell)
            assert reply["status"] == "error" and "Run it again" in text, text[-300:]
            reply, text = other.run("print('checked and run')")
            assert reply["status"] == "ok" and "checked and run" in text, text[-300:]
        finally:
            slow.close()
            other.close()


def _started(kernel: Kernel, msg_id: str) -> None:
    """Wait until the kernel took up this execution (published its input)."""
    def started() -> bool:
        msg = kernel.client.get_iopub_msg(timeout=30)
        return msg["msg_type"] == "execute_input" and msg["parent_header"]["msg_id"] == msg_id

    wait_until(started, timeout=60, interval=0, what="the cell started")


def _asleep_and_idle(pid: int):
    """A predicate: the process's main thread asleep, with no CPU spent since the last look
    (it waits on a lock or a socket, not on the CPU)."""
    last = [None]

    def check() -> bool:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        state, spent = fields[0], int(fields[11]) + int(fields[12])
        idle, last[0] = spent == last[0], spent
        return state == "S" and idle

    return check


def _ran_again(kernel: Kernel, cell: str) -> str:
    reply, text = kernel.run(cell)
    return text if reply["status"] == "ok" else ""
