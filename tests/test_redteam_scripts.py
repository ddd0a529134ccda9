"""Red team against the script reader (``colab_guard/observe/scripts.py``, issue #17): tools
whose source hides what they are from a reader that has been read, and honest research and
teaching code the reader must not mistake for tools. What the guard catches passes; what it
misses is ``xfail(strict=True)`` asserting what should happen. Unit level with the scanner
(real files, real processes where the attack is the process's own view: its descriptors)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile

import pytest

from colab_guard.observe import scripts
from colab_guard.observe.content import ContentScanner, script_path
from colab_guard.detect.fields import FieldView
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.model import Process
from tests.conftest import PYTHON
from tests.harness import wait_until
from tests.standins.watched import Watched
from tests.test_behaviour_redteam import WINDOW as BEHAVIOUR_WINDOW
from tests.test_behaviour_redteam import _miner_fields, _mines, pool  # noqa: F401 (a fixture)
from tests.test_behaviour_relay import ROOT, _completed, _users, far_end  # noqa: F401

RELAY_SOURCE = (ROOT / "tests" / "standins" / "relay.py").read_text()
RELAY_RULE = load_signatures().signatures["proxy-relay"]
CONNECT = "import socket, json\ns = socket.create_connection(('127.0.0.1', 3333))\n"


def markers(source: str) -> list[str]:
    return scripts.code_markers(scripts.python_evidence(source.encode()))


@pytest.fixture
def scanner():
    found = ContentScanner(background=False)
    yield found
    found.close()


# ---------------------------------------------------------------- names built at run time

HIDDEN = {
    "__import__ of a concatenation": "__import__('ppr' + 'oxy')",
    "import_module of a join": "import importlib\nimportlib.import_module(''.join(['ppr', 'oxy']))",
    "names bound to the pieces": "A = 'ppr'\nB = A + 'ox'\n__import__(B + 'y')",
    "an f-string of constants": "a = 'ppr'\n__import__(f'{a}oxy')",
    "a reversed text": "__import__('yxorpp'[::-1])",
    "hex decoded": "__import__(bytes.fromhex('7070726f7879').decode())",
    "import_module through getattr":
        "import importlib\ngetattr(importlib, 'import_module')('pproxy')",
    "%s formatting": "import importlib\nimportlib.import_module('%sxy' % 'ppro')",
    "one character at a time": "__import__(" + " + ".join(repr(c) for c in "pproxy") + ")",
    "code points": "__import__(chr(112) + bytes([112, 114, 111, 120, 121]).decode())",
}


@pytest.mark.parametrize("source", HIDDEN.values(), ids=HIDDEN.keys())
def test_a_module_name_built_from_constants_is_the_module(source):
    """Was missed: the reader took a constant argument only (fixed: constant expressions are
    folded, never evaluated)."""
    assert markers(source) == ["pproxy"]


STRATUM_HIDDEN = {
    "method names concatenated": CONNECT +
    "for m in ('subscribe', 'authorize'):\n    pass\n"
    "s.sendall(json.dumps({'method': 'mining.' + 'subscribe'}).encode())\n"
    "s.sendall(json.dumps({'method': 'mining.' + 'authorize'}).encode())\n",
    "method names joined": CONNECT +
    "s.sendall(json.dumps({'method': '.'.join(('mining', 'subscribe'))}).encode())\n"
    "s.sendall(json.dumps({'method': '.'.join(('mining', 'authorize'))}).encode())\n",
    "a prefix constant": CONNECT + "P = 'mining.'\n"
    "s.sendall(json.dumps({'method': P + 'subscribe', 'params': []}).encode())\n"
    "s.sendall(json.dumps({'method': f'{P}authorize', 'params': ['w']}).encode())\n",
    "positional to its own sender (a tuple sent)": CONNECT +
    "def rpc(method, *params):\n    s.sendall(repr((method, params)).encode())\n"
    "rpc('mining.subscribe')\nrpc('mining.authorize', 'w', 'x')\n",
    "positional to a method (a list through a local name)": CONNECT +
    "class Client:\n    def call(self, name, params):\n        frame = [1, name, params]\n"
    "        s.sendall(json.dumps(frame).encode())\n"
    "c = Client()\nc.call('mining.subscribe', [])\nc.call('mining.authorize', ['w', 'x'])\n",
    "by keyword to its own sender": CONNECT +
    "def rpc(params, method):\n    s.send(json.dumps({'m': method, 'p': params}).encode())\n"
    "rpc([], method='mining.subscribe')\nrpc(['w'], method='mining.' + 'authorize')\n",
}


@pytest.mark.parametrize("source", STRATUM_HIDDEN.values(), ids=STRATUM_HIDDEN.keys())
def test_a_stratum_client_whose_methods_are_built_or_passed_along_is_recognised(source):
    assert markers(source) == ["stratum-miner"]


def test_a_stratum_method_built_in_a_loop_is_recognised():
    """Was missed: a method built from a loop variable (fixed: a loop over constants gives
    the name each of its values)."""
    assert markers(CONNECT + "for x in ('subscribe', 'authorize'):\n"
                   "    s.sendall(json.dumps({'method': 'mining.%s' % x}).encode())\n") == \
        ["stratum-miner"]
    assert markers(CONNECT + "frames = [json.dumps({'method': f'mining.{x}'}) for x in "
                   "['subscribe', 'authorize']]\ns.sendall('\\n'.join(frames).encode())\n") == \
        ["stratum-miner"]


#: A Stratum miner whose method names are read from a file it is given: no constant in its
#: source names them (the script reader cannot know them; README "what it does not recognise").
MINER_READING_ITS_METHODS = r"""
import hashlib, json, socket, sys, time
port, methods, seconds = int(sys.argv[1]), open(sys.argv[2]).read().split(), float(sys.argv[3])
s = socket.create_connection(('127.0.0.1', port))
def send(i, m, p):
    s.setblocking(True)
    s.sendall(json.dumps({'id': i, 'method': 'mining.' + m, 'params': p}).encode() + b'\n')
    s.setblocking(False)
send(1, methods[0], ['w']); send(2, methods[1], ['wallet', 'x'])
d, end, share = b'x', time.monotonic() + seconds, time.monotonic() + 3
while time.monotonic() < end:
    for _ in range(5000): d = hashlib.sha256(d).digest()
    if time.monotonic() > share: send(3, methods[2], ['wallet', 'job', d.hex()]); share += 3
    try: s.recv(65536)
    except BlockingIOError: pass
"""


def test_a_stratum_method_read_from_a_file_is_recognised(tmp_path, pool):
    """Was a strict xfail asking the script reader: a method read from a file is no
    constant, the reader cannot know it (it finds nothing in the source). The process is
    recognised by what it does: a real process, the real sampler, against the stand-in
    pool, matches mining-busy-pool-connection."""
    (tmp_path / "miner.py").write_text(MINER_READING_ITS_METHODS)
    (tmp_path / "methods.txt").write_text("subscribe authorize submit\n")
    assert markers((tmp_path / "miner.py").read_text()) == []  # the reader's limit
    seen = _miner_fields([PYTHON, str(tmp_path / "miner.py"), str(pool),
                          str(tmp_path / "methods.txt"), "20"], BEHAVIOUR_WINDOW + 6)
    assert seen["cpu_demand_percent"] >= 50 and _mines(seen), seen


# ---------------------------------------------------------------- honest near-misses

HONEST = {
    "a security course parsing Stratum captures": '''
import json, socket, hashlib
METHODS = {"mining." + m for m in ("subscribe", "authorize", "submit", "notify")}
def classify(line):
    message = json.loads(line)
    return message.get("method") in METHODS
def count(method, lines):
    return sum(json.loads(l).get("method") == method for l in lines)
lines = open("capture.jsonl").read().splitlines()
print(count("mining.subscribe", lines), count("mining." + "authorize", lines))
print(hashlib.sha256(open("capture.jsonl", "rb").read()).hexdigest())
''',
    "a detector that alerts a local collector in text": '''
import socket
alerts = socket.create_connection(("127.0.0.1", 9000))
def alert(method):
    alerts.sendall(f"seen {method}\\n".encode())
for method in ("mining.subscribe", "mining.authorize"):
    alert(method)
alert("mining.subscribe")
alert("mining." + "authorize")
''',
    "a detector writing (method, count) rows to a report": '''
import socket, csv
socket.create_connection(("127.0.0.1", 8000)).close()
out = open("report.csv", "w")
def row(method, n):
    out.write(repr((method, n)))
row("mining.subscribe", 3)
row("mining.authorize", 1)
''',
    "a tutorial building JSON-RPC requests for a node": '''
import json, urllib.request
def rpc(method, *params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    return urllib.request.urlopen("http://127.0.0.1:8545", body.encode()).read()
rpc("eth_blockNumber")
rpc("eth_getBalance", "0x0", "latest")
''',
    "a crawler with checksums": '''
import hashlib, socket, urllib.request
from html.parser import HTMLParser
seen = {}
for url in ["http://127.0.0.1:8000/"]:
    page = urllib.request.urlopen(url).read()
    seen[url] = hashlib.sha1(page).hexdigest()
    socket.create_connection(("127.0.0.1", 8000)).sendall(b"HEAD / HTTP/1.0\\r\\n\\r\\n")
''',
    "an async web app": '''
import asyncio
from aiohttp import web
async def handle(request):
    return web.json_response({"method": request.method, "path": request.path})
app = web.Application()
app.add_routes([web.get("/", handle)])
web.run_app(app, host="127.0.0.1", port=8080)
''',
    "a test suite full of Stratum fixtures": '''
import json, pytest
SUBSCRIBE = {"id": 1, "method": "mining." + "subscribe", "params": []}
AUTHORIZE = json.dumps({"id": 2, "method": "mining.authorize", "params": ["w", "x"]})
@pytest.mark.parametrize("message", [SUBSCRIBE, json.loads(AUTHORIZE)])
def test_parser_reads(message):
    assert message["method"].startswith("mining.")
''',
    "a course's table of Stratum messages it parses, built in a loop": '''
import json
SAMPLES = [json.dumps({"id": i, "method": "mining." + m}) for i, m in
           enumerate(("subscribe", "authorize"))]
KNOWN = {m: "mining.%s" % m for m in ("subscribe", "authorize", "submit")}
print([json.loads(s)["method"] in KNOWN.values() for s in SAMPLES])
''',
    "module names built for a plugin loader (not a tool)": '''
import importlib
for name in ("json", "csv"):
    importlib.import_module("my" + "plugins." + name)
importlib.import_module(".".join(["numpy", "linalg"]))
''',
    "a huge repeated text is not folded": "__import__('pproxy' * 0 + 'x' * 10)\n"
                                           "x = 'a' * 10**9 if False else ''\n",
}


@pytest.mark.parametrize("source", HONEST.values(), ids=HONEST.keys())
def test_honest_code_the_reader_might_mistake_carries_no_marker(source):
    assert markers(source) == []


def test_folding_stays_bounded():
    """A fold builds at most scripts.FOLD_MAX characters and follows FOLD_DEPTH names."""
    chain = "a0 = 'x'\n" + "".join(f"a{i + 1} = a{i} + a{i}\n" for i in range(40))
    evidence = scripts.python_evidence((chain + "__import__(a40)\n").encode())
    assert all(len(i) <= scripts.FOLD_MAX for i in evidence.imports)
    assert markers("p = '%999999999s' % 'x'\n__import__(p)\n") == []
    chain = ("x = " + " + ".join("'a'" for _ in range(20_000)) + "\n").encode()
    started = time.monotonic()
    scripts.python_evidence(chain)  # a chain is read once, from its top: linear
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------- a program in several files


def test_a_package_two_levels_deep_with_relative_imports_is_read(scanner, tmp_path):
    (tmp_path / "main.py").write_text("from app.core import run\nrun()\n")
    (tmp_path / "app" / "core").mkdir(parents=True)
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "core" / "__init__.py").write_text("from .engine import run\n")
    (tmp_path / "app" / "core" / "engine.py").write_text("from ..net import relay as run\n")
    (tmp_path / "app" / "net.py").write_text("import asyncio\nfrom pproxy import server\n"
                                             "def relay():\n    pass\n")
    assert scanner.script_markers(str(tmp_path / "main.py"), scripts.PYTHON) == ["pproxy"]


def test_a_program_split_in_files_honestly_stays_unmarked(scanner, tmp_path):
    (tmp_path / "main.py").write_text("import helper\nhelper.train()\n")
    (tmp_path / "helper.py").write_text("from labels import LABELS\ndef train():\n"
                                        "    return len(LABELS)\n")
    (tmp_path / "labels.py").write_text("LABELS = ['Benign', 'DoS attacks-SlowHTTPTest', "
                                        "'import pproxy', 'mining.subscribe']\n")
    assert scanner.script_markers(str(tmp_path / "main.py"), scripts.PYTHON) == []


def test_exec_of_a_files_text_reads_that_file(scanner, tmp_path):
    (tmp_path / "notes.txt").write_text("import pproxy\n")
    for runner in ("exec(open('notes.txt').read())",
                   "import runpy\nrunpy.run_path('notes.txt')",
                   "from pathlib import Path\nexec(compile(Path('notes.txt').read_text(), "
                   "'n', 'exec'))",
                   "text = open('notes.txt').read()\nexec(text)"):
        (tmp_path / "main.py").write_text(runner + "\n")
        assert scanner.script_markers(str(tmp_path / "main.py"), scripts.PYTHON) == \
            ["pproxy"], runner


def test_a_file_opened_as_data_is_not_read_as_code(scanner, tmp_path):
    (tmp_path / "notes.txt").write_text("import pproxy\n")
    (tmp_path / "main.py").write_text("text = open('notes.txt').read()\nprint(len(text))\n")
    assert scanner.script_markers(str(tmp_path / "main.py"), scripts.PYTHON) == []
    (tmp_path / "lint.py").write_text("source = open('notes.txt').read()\n"
                                      "compile(source, 'notes.txt', 'exec')  # a syntax check\n"
                                      "compile(open('notes.txt').read(), 'n', 'exec')\n")
    assert scanner.script_markers(str(tmp_path / "lint.py"), scripts.PYTHON) == []


def test_a_zip_app_with_a_neutral_extension_is_read(scanner, tmp_path):
    app = tmp_path / "weights.dat"
    with zipfile.ZipFile(app, "w") as z:
        z.writestr("__main__.py", "import core\n")
        z.writestr("core.py", "import pproxy\n")
    assert scanner.script_markers(str(app), scripts.PYTHON) == ["pproxy"]


def test_a_zip_app_two_levels_deep_is_read(scanner, tmp_path):
    """Was missed: a zip app's modules were read one level deep (fixed: what they import in
    turn, scripts.ZIP_MEMBERS_MAX at most)."""
    app = tmp_path / "weights.dat"
    with zipfile.ZipFile(app, "w") as z:
        z.writestr("__main__.py", "import core\n")
        z.writestr("core.py", "import inner\n")
        z.writestr("inner.py", "import pproxy\n")
    assert scanner.script_markers(str(app), scripts.PYTHON) == ["pproxy"]
    package = tmp_path / "package.bin"
    with zipfile.ZipFile(package, "w") as z:
        z.writestr("__main__.py", "from app import run\n")
        z.writestr("app/__init__.py", "from .core import run\n")
        z.writestr("app/core.py", "from .net import relay as run\n")
        z.writestr("app/net.py", "from pproxy import server\n")
        z.writestr("net.py", "x = 1\n")  # the same name at the top: not the package's
    assert scanner.script_markers(str(package), scripts.PYTHON) == ["pproxy"]


# ---------------------------------------------------------------- shells


def test_a_shell_script_that_sources_another_is_read_with_it(scanner, tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "env.sh").write_text("# settings\nsource ./lib/run.sh\n")
    (tmp_path / "lib" / "run.sh").write_text("wget -q https://hashcat.net/files/h.7z\n")
    for line in (". ./lib/env.sh", "source lib/env.sh", "true && . \"lib/env.sh\""):
        (tmp_path / "start.sh").write_text(f"#!/bin/bash\nset -e\n{line}\necho done\n")
        assert scanner.script_markers(str(tmp_path / "start.sh"), scripts.SHELL) == \
            ["hashcat"], line


def test_a_sourced_file_named_only_in_a_comment_or_text_is_not_read(scanner, tmp_path):
    (tmp_path / "tool.sh").write_text("wget -q https://hashcat.net/files/h.7z\n")
    (tmp_path / "start.sh").write_text("#!/bin/bash\n# . ./tool.sh (old)\n"
                                       "echo 'source tool.sh'\ncat ./tool.sh | wc -l\n")
    assert scanner.script_markers(str(tmp_path / "start.sh"), scripts.SHELL) == []


def test_sourcing_in_a_loop_stays_bounded(scanner, tmp_path):
    (tmp_path / "a.sh").write_text(". ./b.sh\n")
    (tmp_path / "b.sh").write_text(". ./a.sh\nwget https://hashcat.net/x\n")
    assert scanner.script_markers(str(tmp_path / "a.sh"), scripts.SHELL) == ["hashcat"]


# ---------------------------------------------------------------- the process's own view


def _process_markers(argv: list[str], program: str | None = None, **options) -> list[str]:
    """The markers of a real process (``program``: what it execs into, if not argv[0])."""
    program = program or argv[0]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            **options)
    scanner = ContentScanner(background=False)
    try:
        cmdline = wait_until(lambda: _cmdline(proc.pid)[:1] == [program] and
                             _cmdline(proc.pid), timeout=30,
                             what="the new program's command line")  # (empty during exec)
        return scanner.process_markers(proc.pid, os.readlink(f"/proc/{proc.pid}/exe"), cmdline)
    finally:
        proc.kill()
        proc.wait()
        scanner.close()


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0")[:-1]]


TOOL = "import time\ntime.sleep(60)\nimport pproxy\n"


@pytest.mark.parametrize("argv_tail", [["-"], [], ["-u", "-"]], ids=["python -", "python",
                                                                      "python -u -"])
def test_a_script_on_standard_input_is_read(tmp_path, argv_tail):
    """Was missed: ``python - < tool.py`` ran no script file (fixed: its standard input, when
    a file; a pipe is never opened)."""
    (tmp_path / "tool.py").write_text(TOOL)
    with open(tmp_path / "tool.py") as stdin:
        assert _process_markers([PYTHON, *argv_tail], stdin=stdin) == ["pproxy"]


def test_a_script_on_standard_input_deleted_after_start_is_read(tmp_path):
    (tmp_path / "tool.py").write_text(TOOL)
    with open(tmp_path / "tool.py") as stdin:
        os.unlink(tmp_path / "tool.py")
        assert _process_markers([PYTHON, "-"], stdin=stdin) == ["pproxy"]


@pytest.mark.parametrize("path", ["/proc/self/fd/3", "/dev/fd/3"])
def test_a_script_named_by_the_processs_own_descriptor_is_read(tmp_path, path):
    """Was misread: /proc/self/fd/3 was the guard's own descriptor 3 (fixed: the process's).
    The shell opens descriptor 3 in the child only, then becomes Python."""
    (tmp_path / "tool.py").write_text(TOOL)
    assert _process_markers(["sh", "-c", f'exec "$0" {path} 3< "$1"', PYTHON,
                             str(tmp_path / "tool.py")], program=PYTHON) == ["pproxy"]


def test_own_paths_are_the_processs():
    assert script_path(42, "/usr/bin/python3", ["python3", "/proc/self/fd/7"]) == \
        "/proc/42/fd/7"
    assert script_path(42, "/usr/bin/python3", ["python3", "/dev/stdin"]) == "/proc/42/fd/0"
    assert script_path(42, "/usr/bin/python3", ["python3", "/proc/self/cwd/x.py"]) == \
        "/proc/42/cwd/x.py"
    assert script_path(42, "/usr/bin/python3", ["python3", "/opt/x.py"]) == "/opt/x.py"
    assert script_path(42, "/usr/bin/python3", ["python3", "-c", "pass"]) is None


def test_an_interactive_interpreter_reads_nothing_from_a_pipe(tmp_path):
    """Standard input a pipe (``cat x | python -``): never opened (it would take the
    program's input, or block); the sampler's behaviour rules are the answer."""
    proc = subprocess.Popen(["sh", "-c", f"cat {tmp_path}/none 2>/dev/null; sleep 60"],
                            stdout=subprocess.PIPE)
    try:
        assert _process_markers([PYTHON, "-"], stdin=proc.stdout) == []
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.mark.parametrize("argv_tail", [
    ["-c", "import time; time.sleep(60); exec(open('notes.txt').read())"],
    ["-Ic", "import time; time.sleep(60); import runpy; runpy.run_path('notes.txt')"],
    ["-u", "-c", "import time; time.sleep(60); __import__('ppr' + 'oxy')"],
    ["-c", "import time; time.sleep(60); import helper"],
], ids=["exec(open(f).read())", "-Ic run_path", "-c __import__ of pieces", "-c its module"])
def test_python_c_is_read_as_code_with_the_files_it_runs(tmp_path, argv_tail):
    """Was missed: ``python -c`` code was read by the command-line rules only, never as code,
    nor the file it reads and runs (fixed: read as a script's, from a memfd)."""
    (tmp_path / "notes.txt").write_text(TOOL)
    (tmp_path / "helper.py").write_text(TOOL)
    assert _process_markers([PYTHON, *argv_tail], cwd=tmp_path) == ["pproxy"]


def test_python_c_honest_code_carries_no_marker(tmp_path):
    (tmp_path / "notes.txt").write_text(TOOL)
    assert _process_markers([PYTHON, "-c", "import time, json; print(open('notes.txt').read()"
                             " + json.dumps(['mining.subscribe', 'pproxy'])); time.sleep(60)"],
                            cwd=tmp_path) == []


def test_inline_code_is_taken_from_the_command_line():
    from colab_guard.observe.content import inline_code

    assert inline_code(["python3", "-c", "x"]) == "x"
    assert inline_code(["python3", "-cx=1"]) == "x=1"
    assert inline_code(["python3", "-W", "ignore", "-Ic", "y"]) == "y"
    assert inline_code(["python3", "x.py", "-c", "z"]) is None  # the script's own option
    assert inline_code(["python3", "-m", "mod", "-c", "z"]) is None
    assert inline_code(["python3", "-c"]) is None


def _relayed_through(argv: list[str], far_end: int, after_start=None) -> dict:
    """A relay started as ``argv`` (a copy of tests/standins/relay.py, serving SOCKS),
    watched by the real sampler while users download through it: its fields, highest seen.
    ``after_start``: run once the relay is listening (its script deleted)."""
    watched = Watched(argv + ["socks"])
    try:
        port = int(watched.proc.stdout.readline())
        if after_start:
            after_start()
        watched.warm()
        assert _completed(_users("socks", port, far_end)) >= 3
    finally:
        watched.stop()
    return {"kernel_relayed_connections": watched.highest("kernel_relayed_connections")}


def _relays(fields: dict) -> bool:
    process = Process(pid=1, name="python3", create_time=1.0, uid=1000, **fields)
    return RELAY_RULE.when.test(FieldView(process))[0]


def test_a_script_deleted_after_start_is_recognised(tmp_path, far_end):
    """Was a strict xfail asking the script reader: a script deleted once Python read it is
    gone (Python closed it; nothing maps it, no descriptor holds it), the reader has nothing
    to read (README "what it does not recognise"). The process is recognised by what it
    does: a relay, watched by the real sampler, matches proxy-relay."""
    tool = tmp_path / "tool.py"
    tool.write_text(RELAY_SOURCE)
    fields = _relayed_through([PYTHON, str(tool)], far_end, after_start=tool.unlink)
    assert not tool.exists()
    assert _relays(fields), fields


def test_a_script_from_a_fifo_is_recognised(tmp_path, far_end):
    """Was a strict xfail asking the script reader: a script in a FIFO (or ``bash <(cat
    x)``) is never opened by the reader (it would block, or take Python's data). The process
    is recognised by what it does: a relay matching proxy-relay."""
    fifo = tmp_path / "tool.py"
    os.mkfifo(fifo)
    (tmp_path / "relay.py").write_text(RELAY_SOURCE)
    writer = subprocess.Popen(["sh", "-c", f"cat {tmp_path / 'relay.py'} > {fifo}"])
    try:
        fields = _relayed_through([PYTHON, str(fifo)], far_end)
    finally:
        writer.kill()
        writer.wait()
    assert _relays(fields), fields


@pytest.mark.parametrize("name, folder", [("sitecustomize.py", None), ("usercustomize.py", ".")])
def test_a_tool_in_a_startup_module_on_pythonpath_is_recognised(tmp_path, name, folder):
    """Was missed: sitecustomize.py on PYTHONPATH runs before an honest ``python -c`` (fixed:
    the start-up modules of the process's PYTHONPATH are read as its own)."""
    (tmp_path / name).write_text("import core\n")
    (tmp_path / "core.py").write_text(TOOL)
    env = dict(os.environ, PYTHONPATH=folder or str(tmp_path))
    assert _process_markers([PYTHON, "-c", "import time; time.sleep(60)"], env=env,
                            cwd=tmp_path) == ["pproxy"]


def test_startup_modules_python_does_not_run_are_not_read(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(TOOL)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    assert _process_markers([PYTHON, "-I", "-c", "import time; time.sleep(60)"], env=env) == []
    (tmp_path / "notes.py").write_text("SITE = 'sitecustomize.py: import pproxy'\n")
    assert _process_markers([PYTHON, "-c", "import time; time.sleep(60)"],
                            env=dict(os.environ, PYTHONPATH="/nonexistent")) == []


def test_a_tool_in_a_pth_file_is_recognised(tmp_path):
    """Was missed: a .pth file's import lines run at every start (fixed: the .pth files of
    the site folders a process's Python processes are read, and of those its code adds)."""
    import site

    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "zz-redteam3.pth").write_text("import core\n")
    (site_dir / "core.py").write_text(TOOL)
    # site.addsitedir() is what processes a .pth (a user site or the environment's own)
    code = f"import site, time; site.addsitedir({str(site_dir)!r}); time.sleep(60)"
    assert site.ENABLE_USER_SITE is not None
    assert _process_markers([PYTHON, "-c", code]) == ["pproxy"]


def _user_site(home, version: str = "%d.%d" % sys.version_info[:2]):
    folder = home / ".local" / "lib" / f"python{version}" / "site-packages"
    folder.mkdir(parents=True)
    return folder


BASE_PYTHON = getattr(sys, "_base_executable", PYTHON)
SLEEP = ["-c", "import time; time.sleep(60)"]


def test_a_tool_in_a_pth_file_of_a_virtual_environment_is_recognised(tmp_path):
    """The environment's own site-packages (a virtual environment found by the pyvenv.cfg
    beside the program as started, as Python finds it)."""
    subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", str(tmp_path / "env")],
                   check=True)
    (site_dir,) = (tmp_path / "env" / "lib").glob("python3*/site-packages")
    (site_dir / "zz-tool.pth").write_text("import core\n")
    (site_dir / "core.py").write_text(TOOL)
    python = str(tmp_path / "env" / "bin" / "python")
    assert _process_markers([python, *SLEEP]) == ["pproxy"]
    assert _process_markers([python, "-S", *SLEEP]) == []  # -S: no site folder is processed
    assert _process_markers([BASE_PYTHON, *SLEEP]) == []  # not that environment's process


def test_a_tool_in_a_pth_file_of_the_users_site_folder_is_recognised(tmp_path):
    site_dir = _user_site(tmp_path)
    (site_dir / "zz-tool.pth").write_text("import core\n")
    (site_dir / "core.py").write_text(TOOL)
    env = dict(os.environ, HOME=str(tmp_path))
    env.pop("PYTHONNOUSERSITE", None)
    assert _process_markers([BASE_PYTHON, *SLEEP], env=env) == ["pproxy"]
    # what Python does not process: with -s, -I, PYTHONNOUSERSITE, or in a virtual environment
    assert _process_markers([BASE_PYTHON, "-s", *SLEEP], env=env) == []
    assert _process_markers([BASE_PYTHON, "-I", *SLEEP], env=env) == []
    assert _process_markers([BASE_PYTHON, *SLEEP], env=dict(env, PYTHONNOUSERSITE="1")) == []
    assert _process_markers([PYTHON, *SLEEP], env=env) == []


@pytest.mark.parametrize("files", [
    {"zz-tool.pth": "lib\nimport core\n"},
    {"a-path.pth": "lib\n", "zz-tool.pth": "import core\n"},
], ids=["its own folder line", "a sibling's folder line"])
def test_a_tool_in_a_folder_a_pth_file_adds_is_recognised(tmp_path, files):
    """What an abuser does next: the module not beside the .pth, in a folder a .pth adds."""
    site_dir = _user_site(tmp_path)
    (site_dir / "lib").mkdir()
    (site_dir / "lib" / "core.py").write_text(TOOL)
    for name, text in files.items():
        (site_dir / name).write_text(text)
    env = dict(os.environ, HOME=str(tmp_path))
    env.pop("PYTHONNOUSERSITE", None)
    assert _process_markers([BASE_PYTHON, *SLEEP], env=env) == ["pproxy"]


def test_pth_files_are_read_as_their_import_lines_only(tmp_path):
    """Near-misses: a .pth file's other lines are folders added to the path (a folder named
    after a tool is not the tool), its comments are not run; one that imports an honest module
    of its folder carries nothing."""
    site_dir = _user_site(tmp_path)
    (site_dir / "a-paths.pth").write_text("# import pproxy\n/opt/pproxy\nlib/stratum\n")
    (site_dir / "b-hook.pth").write_text("import honest; honest.install()\n")
    (site_dir / "honest.py").write_text("SEEN = ['pproxy', 'mining.subscribe']\n"
                                        "def install():\n    return SEEN\n")
    (site_dir / "unused.py").write_text(TOOL)  # beside them, imported by none
    env = dict(os.environ, HOME=str(tmp_path))
    env.pop("PYTHONNOUSERSITE", None)
    assert _process_markers([BASE_PYTHON, *SLEEP], env=env) == []


def test_a_tool_in_a_folder_the_code_puts_on_its_path_is_recognised(tmp_path):
    """What an abuser does next: no .pth at all, the folder put on sys.path by the code."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "core.py").write_text(TOOL)
    assert _process_markers([PYTHON, "-c", "import sys, time; sys.path.insert(0, 'lib'); "
                             "import core"], cwd=tmp_path) == ["pproxy"]
    # near-misses: the folder put on the path but its tool module not imported; a module of
    # the same name in the script's own folder comes first (Python's order)
    assert _process_markers([PYTHON, "-c", "import sys, time; sys.path.append('lib'); "
                             "time.sleep(60)"], cwd=tmp_path) == []
    (tmp_path / "core.py").write_text("import time\ntime.sleep(60)\n")
    assert _process_markers([PYTHON, "-c", "import sys; sys.path.append('lib'); import core"],
                            cwd=tmp_path) == []


# ---------------------------------------------------------------- files the reader refuses


def test_a_tool_after_a_mebibyte_of_comments_keeps_its_import_lines(tmp_path):
    script = tmp_path / "big.py"
    script.write_text("#" * 80 + "\n" * 0 + ("# padding\n" * (200 << 10)) + "import pproxy\n")
    scanner = ContentScanner(background=False, max_script_bytes=1 << 20)
    try:
        assert scanner.script_markers(str(script), scripts.PYTHON) == ["pproxy"]
    finally:
        scanner.close()


def test_a_stratum_client_after_a_mebibyte_of_comments_is_recognised(tmp_path):
    """Was missed: past max_script_bytes only top-level import lines were read (fixed: blank
    and comment-only lines are skipped, up to max_bytes, before the source is parsed)."""
    script = tmp_path / "big.py"
    script.write_text("# padding\n" * (120 << 10) + CONNECT +
                      "s.sendall(json.dumps({'method': 'mining.subscribe'}).encode())\n"
                      "s.sendall(json.dumps({'method': 'mining.authorize'}).encode())\n")
    scanner = ContentScanner(background=False, max_script_bytes=1 << 20)
    try:
        assert scanner.script_markers(str(script), scripts.PYTHON) == ["stratum-miner"]
    finally:
        scanner.close()


PADDING = "# padding\n" * (120 << 10)


@pytest.mark.parametrize("source, expected", [
    # a comment line with a quote inside a string ends it: the code after it is code
    ("X = \"\"\"\n" + PADDING + "# \"\"\"\nimport pproxy\n", ["pproxy"]),
    # near-miss: a tool's import line inside a long string padded with comment-like lines
    ("X = \"\"\"\n" + PADDING + "import pproxy\n\"\"\"\nprint(len(X))\n", []),
    # near-miss: a long honest script whose comments name a tool
    ("# import pproxy\n" + PADDING + "import json\nprint(json.dumps(['mining.subscribe']))\n",
     []),
], ids=["code after a quoted comment line", "a string padded", "honest comments"])
def test_comment_lines_skipped_past_the_budget_change_no_code(tmp_path, source, expected):
    script = tmp_path / "big.py"
    script.write_text(source)
    scanner = ContentScanner(background=False, max_script_bytes=1 << 20)
    try:
        assert scanner.script_markers(str(script), scripts.PYTHON) == expected
    finally:
        scanner.close()


def test_a_source_in_another_encoding_is_read(scanner, tmp_path):
    script = tmp_path / "tool.py"
    script.write_bytes("# -*- coding: latin-1 -*-\nLABEL = 'caf\xe9'\nimport pproxy\n"
                       .encode("latin-1"))
    assert scanner.script_markers(str(script), scripts.PYTHON) == ["pproxy"]
