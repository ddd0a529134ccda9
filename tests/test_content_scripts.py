"""Scripts are recognised by their code, not their words (issue #17, precision): a tool's name
in a comment, a docstring, a data label, a URL or a file path is not the tool; an import, a call,
a request the program builds and sends is. Zip apps, directories and .pyc files are read as
code too; reading is bounded whatever the script (``colab_guard/observe/scripts.py``)."""

from __future__ import annotations

import importlib.util
import os
import py_compile
import shutil
import subprocess
import time
import zipfile

import pytest

from colab_guard.observe import scripts
from colab_guard.observe.content import SCAN_CUT, ContentScanner, script_language
from colab_guard.observe.processes import ProcessSampler
from tests.conftest import PYTHON, STANDINS
from tests.harness import longest_hold


def markers(source: str) -> list[str]:
    return scripts.code_markers(scripts.python_evidence(source.encode()))


# ---------------------------------------------------------------- near-misses: honest scripts

HONEST = {
    "a cryptojacking detector listing the Stratum and getwork method names": '''
"""Flags connections that speak Stratum (see hashcat.net and openwall.com/john)."""
STRATUM_METHODS = [b"mining.subscribe", b"mining.authorize", b"mining.submit", b"mining.notify"]
GETWORK = {"eth_submitWork", "eth_getWork", "eth_submitHashrate"}
def flagged(payload):
    return any(m in payload for m in STRATUM_METHODS) or payload.decode() in GETWORK
''',
    "a detector's own test samples: Stratum requests as JSON, never sent": '''
import json
SAMPLES = [b'{"id": 1, "method": "mining.subscribe", "params": []}',
           b'{"id": 2, "method": "mining.authorize", "params": ["w", "x"]}']
REQUESTS = [{"method": "mining.submit"}, {"method": "mining.notify"}]
print(sum(json.loads(s)["method"].startswith("mining.") for s in SAMPLES))
''',
    "an intrusion-detection label list (CSE-CIC-IDS2018)": '''
import pandas as pd
LABELS = ["Benign", "DoS attacks-SlowHTTPTest", "DoS attacks-Hulk", "FTP-BruteForce",
          "SSH-Bruteforce", "Bot", "Infilteration", "BitTorrent protocol"]
frame = pd.read_csv("flows.csv")
print(frame["Label"].isin(LABELS).mean())
''',
    "a docstring naming tools and showing their code": '''
"""Notes for the lab. Tools we discuss, never run here:

    import pproxy
    from roop.processors.frame import face_swapper
    asyncssh.listen('', 22, server_host_keys=['key'])  # an SSH server
    class SAEHDModel: ...
"""
def summary():
    """Compare roop.processors.frame to facefusion.processors (inswapper_128)."""
    return "pproxy, asyncssh, SAEHDModel"
''',
    "a URL and a tool in comments": '''
# Wordlists: https://hashcat.net/wiki/ ; slow attacks: github.com/shekyan/slowhttptest
# import pproxy  (we used to; the relay is gone)
import socket  # not asyncssh: server_host_keys were for the old lab
s = socket.create_connection(("127.0.0.1", 8080))  # "method": "mining.subscribe"
''',
    "image paths naming a miner and a swap model (f-strings)": '''
from PIL import Image
DATA = "/content/data"
for name in ["t-rex", "inswapper_128_sample"]:
    Image.open(f"{DATA}/{name}.jpg")
Image.open(f"{DATA}/t-rex.jpg").save(f"{DATA}/inswapper_128.png")
''',
    "a deepfake-detection dataset naming the generators": '''
GENERATORS = {"inswapper_128": 0, "SimSwap": 1, "roop": 2, "SAEHD": 3}
MODELS = "roop.processors.frame facefusion.processors SAEHDModel".split()
label = GENERATORS.get("inswapper_128")
''',
    "an asyncssh client": '''
import asyncio, asyncssh
async def main():
    async with asyncssh.connect("127.0.0.1", known_hosts=None) as conn:
        print(await conn.run("uname"))
asyncio.run(main())
''',
    "a packet filter that tests for the BitTorrent handshake": '''
import socket
HANDSHAKE = b"\\x13BitTorrent protocol"
s = socket.create_connection(("127.0.0.1", 9000))
data = s.recv(68)
if data.startswith(HANDSHAKE) or b"BitTorrent protocol" in data:
    print("torrent traffic")
''',
    "pproxy named as a package to look up, not imported": '''
import importlib, subprocess
subprocess.run(["pip", "show", "pproxy"])
name = input()
importlib.import_module(name)
print(importlib.util.find_spec("pproxy"))
''',
}


@pytest.mark.parametrize("source", HONEST.values(), ids=HONEST.keys())
def test_an_honest_script_naming_tools_carries_no_marker(source):
    assert markers(source) == []


# ---------------------------------------------------------------- matches: each marker as code

USED = {
    "stratum-miner: requests built as dicts and sent": ("stratum-miner", '''
import json, socket
sock = socket.create_connection(("127.0.0.1", 3333))
sock.sendall(json.dumps({"id": 1, "method": "mining.subscribe", "params": []}).encode())
sock.sendall(json.dumps({"id": 2, "method": "mining.authorize", "params": ["w", "x"]}).encode())
'''),
    "stratum-miner: method= keywords (nightminer's shape), through a name": ("stratum-miner", '''
import socket
SUBSCRIBE = "mining.subscribe"
class Client:
    def send(self, method, params):
        self.sock.sendall(repr(dict(id=1, method=method, params=params)).encode())
    def run(self):
        self.sock = socket.socket(); self.sock.connect(("127.0.0.1", 3333))
        self.send(method=SUBSCRIBE, params=[])
        self.send(method="mining.authorize", params=["w", "x"])
'''),
    "stratum-miner: JSON text written on a socket": ("stratum-miner", '''
import socket
s = socket.socket(); s.connect(("127.0.0.1", 3333))
s.sendall(b'{"id":1,"method":"mining.subscribe","params":[]}\\n')
s.sendall(b'{"id":2,"method":"mining.submit","params":[]}\\n')
'''),
    "getwork-miner: JSON-RPC over HTTP": ("getwork-miner", '''
import requests
work = requests.post("http://127.0.0.1:8545", json={"jsonrpc": "2.0", "method": "eth_getWork"})
requests.post("http://127.0.0.1:8545", json={"jsonrpc": "2.0", "method": "eth_submitWork",
                                               "params": work.json()["result"]})
'''),
    "bittorrent: a handshake packed and sent": ("bittorrent", '''
import socket, struct
PSTR = b"BitTorrent protocol"
s = socket.create_connection(("127.0.0.1", 6881))
s.sendall(struct.pack(">B19s8x20s20s", 19, PSTR, b"h" * 20, b"p" * 20))
'''),
    "bittorrent: a handshake concatenated": ("bittorrent", '''
import socket
s = socket.create_connection(("127.0.0.1", 6881))
s.sendall(b"\\x13BitTorrent protocol" + bytes(8) + b"h" * 20 + b"p" * 20)
'''),
    "pproxy: import": ("pproxy", "import pproxy\npproxy.Server('socks5://:1080')\n"),
    "pproxy: from-import under an alias": ("pproxy", "from pproxy import Server as S\nS('x')\n"),
    "pproxy: __import__ of a constant": ("pproxy", "p = __import__('pproxy')\n"),
    "pproxy: importlib.import_module of a constant": (
        "pproxy", "import importlib\nNAME = 'pproxy.server'\nimportlib.import_module(NAME)\n"),
    "asyncssh-server: host keys given": ("asyncssh-server", '''
import asyncssh as a
async def serve():
    await a.listen("", 8022, server_host_keys=["ssh_host_key"])
'''),
    "asyncssh-server: a server created, options as a dict": ("asyncssh-server", '''
from asyncssh import create_server
OPTIONS = {"server_host_keys": ["k"]}
async def serve(factory):
    await create_server(factory, "", 8022, **OPTIONS)
'''),
    "stratum-miner: requests built from a table of method names": ("stratum-miner", '''
import json, socket
sock = socket.create_connection(("127.0.0.1", 3333))
for ident, method, params in ((1, "mining.subscribe", ["job/1.0"]),
                              (2, "mining.authorize", ["x", "x"])):
    sock.sendall(json.dumps({"id": ident, "method": method, "params": params}).encode())
'''),
    "face-swap: roop's processor imported": (
        "face-swap", "import roop.processors.frame.face_swapper as swapper\n"),
    "face-swap: FaceFusion's processors imported": (
        "face-swap", "from facefusion.processors.frame import core\n"),
    "face-swap: DeepFaceLab's SAEHD model defined": (
        "face-swap", "class SAEHDModel(ModelBase):\n    pass\nModel = SAEHDModel\n"),
    "face-swap: the inswapper model loaded": ("face-swap", '''
import insightface
MODELS = "/content/models"
swapper = insightface.model_zoo.get_model(f"{MODELS}/inswapper_128.onnx", download=False)
'''),
}


@pytest.mark.parametrize("expected, source", USED.values(), ids=USED.keys())
def test_a_marker_used_as_code_is_recognised(expected, source):
    assert markers(source) == [expected]


def test_a_real_library_whose_docstring_shows_a_server_carries_no_marker(scanner):
    """prompt_toolkit's SSH helper shows ``asyncssh.create_server(..., server_host_keys=...)``
    in a docstring: as bytes, an asyncssh server; as code, a module defining classes. (Read as
    code, the 19,282 Python files of site-packages and the standard library here carry no
    marker; searched as bytes, three did.)"""
    spec = importlib.util.find_spec("prompt_toolkit.contrib.ssh.server")
    if spec is None or spec.origin is None:
        pytest.skip("prompt_toolkit's ssh contrib is not installed")
    assert scanner.script_markers(spec.origin, scripts.OTHER) == ["asyncssh-server"]
    assert scanner.script_markers(spec.origin, scripts.PYTHON) == []


def test_one_stratum_request_or_requests_never_sent_are_not_a_miner():
    one = USED["stratum-miner: requests built as dicts and sent"][1].replace(
        '"mining.authorize"', '"login"')
    assert markers(one) == []
    offline = USED["stratum-miner: requests built as dicts and sent"][1].replace(
        "socket.create_connection", "make_fixture").replace("sock.sendall", "print")
    assert markers(offline) == []


def test_a_stratum_client_with_positional_method_names_is_recognised():
    """Fixed (tests/test_redteam_scripts.py): a parameter its function sends in a structure
    is a request, and the texts given to it are its methods."""
    assert markers("import socket\ns = socket.create_connection(('127.0.0.1', 3333))\n"
                   "def rpc(method, *params):\n    s.sendall(repr((method, params)).encode())\n"
                   "rpc('mining.subscribe')\nrpc('mining.authorize', 'w', 'x')\n") == \
        ["stratum-miner"]


def test_a_detector_with_request_samples_that_also_connects_carries_no_marker():
    """Was a false positive: a request was read where it was built (fixed: the requests of a
    table, a list of dicts assigned to a name, count once the table or an item of it is
    sent)."""
    assert markers("import json, urllib.request\n"
                   "SAMPLES = [{'method': 'mining.subscribe'}, {'method': 'mining.authorize'}]\n"
                   "capture = urllib.request.urlopen('http://127.0.0.1:8000/pcap.json').read()\n"
                   "print([s in json.loads(capture) for s in SAMPLES])\n") == []
    # and one that also sends something else (its alerts) to a local collector
    assert markers("import json, socket\n"
                   "SAMPLES = ({'method': 'mining.subscribe'}, {'method': 'mining.authorize'})\n"
                   "alerts = socket.create_connection(('127.0.0.1', 9000))\n"
                   "for s in SAMPLES:\n    alerts.sendall(b'checked one sample')\n") == []
    # and one that writes its samples to a report file while it fetches a capture
    assert markers("import json, urllib.request\n"
                   "SAMPLES = [{'method': 'mining.subscribe'}, {'method': 'mining.authorize'}]\n"
                   "urllib.request.urlopen('http://127.0.0.1:8000/pcap.json').read()\n"
                   "open('report.json', 'w').write(json.dumps(SAMPLES))\n") == []


TABLE_SENT = {
    "each item sent in a loop": "for r in REQS:\n    s.sendall(json.dumps(r).encode())\n",
    "the table sent joined": "s.sendall('\\n'.join(json.dumps(r) for r in REQS).encode())\n",
    "the table posted": "import requests\nrequests.post('http://127.0.0.1:3333', json=REQS)\n",
}


@pytest.mark.parametrize("send", TABLE_SENT.values(), ids=TABLE_SENT.keys())
def test_a_table_of_requests_that_is_sent_is_a_stratum_client(send):
    """What an abuser does next: the requests in a table, then sent."""
    assert markers("import json, socket\ns = socket.create_connection(('127.0.0.1', 3333))\n"
                   "REQS = [{'id': 1, 'method': 'mining.subscribe', 'params': []},\n"
                   "        {'id': 2, 'method': 'mining.authorize', 'params': ['w', 'x']}]\n"
                   + send) == ["stratum-miner"]


def test_source_that_does_not_parse_is_read_as_tokens_never_as_text():
    broken = "import pproxy\nx = (\n"
    assert markers(broken) == ["pproxy"]
    words_only = '"""import pproxy"""\n# import pproxy\nx = ( "import pproxy"\n'
    assert markers(words_only) == []
    deep = "import pproxy\nx = " + "(" * 500 + ")" * 500 + "\n"  # past the parser's nesting
    assert markers(deep) == ["pproxy"]


# ---------------------------------------------------------------- files: the reader, for real


@pytest.fixture
def scanner():
    found = ContentScanner(background=False)
    yield found
    found.close()


def test_a_detector_file_carries_no_marker_when_read_as_python(scanner, tmp_path):
    script = tmp_path / "detector.py"
    script.write_text(HONEST["a cryptojacking detector listing the Stratum and getwork method "
                             "names"]
                      + HONEST["an intrusion-detection label list (CSE-CIC-IDS2018)"])
    # as bytes (a node script, say) it carries the words; as Python, no code of a tool
    as_bytes = scanner.script_markers(str(script), scripts.OTHER)
    assert {"stratum-miner", "getwork-miner", "hashcat", "slowhttptest"} <= set(as_bytes)
    assert scanner.script_markers(str(script), scripts.PYTHON) == []
    assert scanner.stats["script_scans"] == 1


def test_a_zip_app_is_read_through_its_main_and_the_modules_it_imports(scanner, tmp_path):
    app = tmp_path / "report.zip"
    with zipfile.ZipFile(app, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("__main__.py", "import report\nreport.main()\n")
        z.writestr("report.py", "def main():\n    import pproxy\n")
        z.writestr("notes.py", "import asyncssh\nasyncssh.listen(server_host_keys=[])\n")
    assert scanner.script_markers(str(app), scripts.PYTHON) == ["pproxy"]  # not notes.py
    shebang = tmp_path / "tool.pyz"  # a zip app behind a shebang line (python -m zipapp -p)
    shebang.write_bytes(b"#!/usr/bin/env python3\n" + app.read_bytes())
    assert scanner.script_markers(str(shebang), scripts.PYTHON) == ["pproxy"]
    honest = tmp_path / "honest.zip"
    with zipfile.ZipFile(honest, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("__main__.py", '"""Not import pproxy."""\nprint("hello")\n')
    assert scanner.script_markers(str(honest), scripts.PYTHON) == []


def test_a_script_is_read_with_its_own_modules_beside_it(scanner, tmp_path):
    (tmp_path / "main.py").write_text("import json, helper\nhelper.run()\n")
    (tmp_path / "helper.py").write_text("def run():\n    import pproxy\n")
    (tmp_path / "unused.py").write_text("import pproxy\n")  # not imported: not the program
    package = tmp_path / "lab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ssh.py").write_text("import asyncssh\nasync def f():\n"
                                    "    await asyncssh.listen(server_host_keys=[])\n")
    assert scanner.script_markers(str(tmp_path / "main.py"), scripts.PYTHON) == ["pproxy"]
    (tmp_path / "other.py").write_text("from lab import ssh\n")
    assert scanner.script_markers(str(tmp_path / "other.py"), scripts.PYTHON) == \
        ["asyncssh-server"]
    (tmp_path / "honest.py").write_text("import json\nprint('unused.py is not imported')\n")
    assert scanner.script_markers(str(tmp_path / "honest.py"), scripts.PYTHON) == []


def test_a_script_is_read_with_its_modules_two_levels_deep(scanner, tmp_path):
    (tmp_path / "main.py").write_text("import helper\n")
    (tmp_path / "helper.py").write_text("import inner\n")
    (tmp_path / "inner.py").write_text("import pproxy\n")
    assert scanner.script_markers(str(tmp_path / "main.py"), scripts.PYTHON) == ["pproxy"]


def test_a_compiled_stratum_client_naming_its_methods_through_variables(scanner, tmp_path):
    source = tmp_path / "client.py"
    source.write_text(USED["stratum-miner: requests built as dicts and sent"][1]
                      .replace('"method": "mining.subscribe"', '"method": SUB')
                      .replace('"method": "mining.authorize"', '"method": AUTH')
                      .replace("import json, socket\n", "import json, socket\n"
                               "SUB, AUTH = 'mining.subscribe', 'mining.authorize'\n"))
    compiled = py_compile.compile(str(source), cfile=str(tmp_path / "client.pyc"))
    assert scanner.script_markers(compiled, scripts.PYTHON) == ["stratum-miner"]


def test_a_zip_bomb_is_read_only_to_its_bound(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("__main__.py", "import pproxy\n" + "#" * (32 << 20))  # 32 MiB of comment
    scanner = ContentScanner(background=False, max_script_bytes=1 << 20)
    started = time.monotonic()
    assert scanner.script_markers(str(bomb), scripts.PYTHON) == ["pproxy"]
    assert time.monotonic() - started < 5


def test_a_pyc_is_read_through_its_code_objects(scanner, tmp_path):
    source = tmp_path / "job.py"
    source.write_text("import importlib\n"
                      "def run():\n    importlib.import_module('pproxy')\n")
    compiled = py_compile.compile(str(source), cfile=str(tmp_path / "job.pyc"))
    assert scanner.script_markers(compiled, scripts.PYTHON) == ["pproxy"]
    source.write_text('"""import pproxy; asyncssh server_host_keys"""\n'
                      'NAMES = ["pproxy", "server_host_keys", "mining.subscribe"]\n')
    honest = py_compile.compile(str(source), cfile=str(tmp_path / "honest.pyc"))
    assert scanner.script_markers(honest, scripts.PYTHON) == []
    source.write_text("import asyncssh\nasync def f():\n"
                      "    await asyncssh.listen('', 22, server_host_keys=['k'])\n")
    server = py_compile.compile(str(source), cfile=str(tmp_path / "server.pyc"))
    assert scanner.script_markers(server, scripts.PYTHON) == ["asyncssh-server"]


def test_the_stand_in_miner_compiled_is_still_a_stratum_client(scanner, tmp_path):
    source = tmp_path / "miner.py"
    source.write_text((STANDINS / "miner.py").read_text())
    compiled = py_compile.compile(str(source), cfile=str(tmp_path / "miner.pyc"))
    assert scanner.script_markers(compiled, scripts.PYTHON) == ["stratum-miner"]
    source.write_text(USED["stratum-miner: method= keywords (nightminer's shape), through a "
                           "name"][1].replace("method=SUBSCRIBE", 'method="mining.subscribe"'))
    compiled = py_compile.compile(str(source), cfile=str(tmp_path / "client.pyc"))
    assert scanner.script_markers(compiled, scripts.PYTHON) == ["stratum-miner"]
    source.write_text(HONEST["a detector's own test samples: Stratum requests as JSON, never "
                             "sent"])
    compiled = py_compile.compile(str(source), cfile=str(tmp_path / "samples.pyc"))
    assert scanner.script_markers(compiled, scripts.PYTHON) == []


def test_a_pyc_of_another_python_is_searched_as_bytes(scanner, tmp_path):
    source = tmp_path / "job.py"
    source.write_text("BANNER = 'MicroSocks SOCKS5 Server'\n")
    data = bytearray(open(py_compile.compile(str(source)), "rb").read())
    data[:2] = (3000).to_bytes(2, "little")  # a magic number this Python does not read
    foreign = tmp_path / "foreign.pyc"
    foreign.write_bytes(bytes(data))
    assert scanner.script_markers(str(foreign), scripts.PYTHON) == ["microsocks"]


def test_a_shell_script_is_searched_without_its_comments(scanner, tmp_path):
    script = tmp_path / "fetch.sh"
    script.write_text("#!/bin/bash\n# wordlists: https://hashcat.net/wiki/  (see $# below)\n"
                      "echo \"args: $#\" '#not a comment: x' ${#HOME}  # hashcat.net again\n")
    assert scanner.script_markers(str(script), scripts.SHELL) == []
    script.write_text("#!/bin/bash\nwget -q https://hashcat.net/files/hashcat-6.2.6.7z  # get it\n")
    assert scanner.script_markers(str(script), scripts.SHELL) == ["hashcat"]
    script.write_text("echo '# quoted: hashcat.net'\n")
    assert scanner.script_markers(str(script), scripts.SHELL) == ["hashcat"]


@pytest.mark.parametrize("exe, found, expected", [
    ("/usr/bin/python3.11", [], scripts.PYTHON),
    ("/tmp/kworker", ["interpreter:python"], scripts.PYTHON),
    ("/usr/bin/bash", [], scripts.SHELL),
    ("/bin/sh", [], scripts.SHELL),
    ("/usr/bin/node", ["interpreter:node"], scripts.OTHER),
    ("/usr/bin/perl", [], scripts.OTHER),
])
def test_the_script_is_read_in_the_language_of_its_interpreter(exe, found, expected):
    assert script_language(exe, found) == expected


def _wait_markers(sampler: ProcessSampler, pid: int, want: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        snapshot = sampler.sample({"k": pid})["k"]
        sampler.content.wait(timeout)
        proc = next((p for p in snapshot.processes if p.pid == pid), None)
        seen = proc.exe_markers if proc is not None else seen
        if want in seen:
            return seen
    return seen


def test_a_directory_app_run_by_python_is_read_through_its_main(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "__main__.py").write_text("import time\nimport pproxy\ntime.sleep(60)\n")
    proc = subprocess.Popen([PYTHON, str(app)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    sampler = ProcessSampler()
    try:
        assert "pproxy" in _wait_markers(sampler, proc.pid, "pproxy")
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()


def test_the_stand_in_miner_run_by_a_renamed_interpreter_is_read_as_python(tmp_path, pool):
    kworker = tmp_path / "kworker"
    shutil.copy(os.path.realpath(PYTHON), kworker)
    proc = subprocess.Popen([str(kworker), str(STANDINS / "miner.py"), "-o",
                             f"127.0.0.1:{pool}", "--seconds", "60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sampler = ProcessSampler()
    try:
        assert "stratum-miner" in _wait_markers(sampler, proc.pid, "stratum-miner")
        assert sampler.content.stats["script_scans"] >= 1  # read as code, not as bytes
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()


# ---------------------------------------------------------------- bounded, whatever the script


def test_a_small_source_is_read_here_and_a_zip_or_pyc_in_a_child(scanner, tmp_path, monkeypatch):
    calls = []
    real = scripts.read_isolated
    monkeypatch.setattr(scripts, "read_isolated", lambda *a: calls.append(a) or real(*a))
    small = tmp_path / "small.py"
    small.write_text("import pproxy\n" + "x = 1\n" * 2000)  # 12 KiB
    assert scanner.script_markers(str(small), scripts.PYTHON) == ["pproxy"] and calls == []
    compiled = py_compile.compile(str(small), cfile=str(tmp_path / "small.pyc"))
    assert scanner.script_markers(compiled, scripts.PYTHON) == ["pproxy"] and len(calls) == 1
    app = tmp_path / "app.zip"
    with zipfile.ZipFile(app, "w") as z:
        z.writestr("__main__.py", "import pproxy\n")
    assert scanner.script_markers(str(app), scripts.PYTHON) == ["pproxy"] and len(calls) == 2


@pytest.mark.parametrize("hostile", [
    "-" * 16_000 + "1",
    "x = " + "[" * 5_000 + "]" * 5_000,
    "x = " + "1 + " * 4_000 + "1",
    "f'{" * 2000 + "}'" * 2000,
], ids=["unary chain", "nested lists", "long sum", "nested f-strings"])
def test_a_small_hostile_source_read_here_stays_bounded(tmp_path, hostile):
    script = tmp_path / "hostile.py"
    script.write_text("import pproxy\n" + hostile + "\n")
    assert script.stat().st_size <= scripts.IN_PROCESS_MAX
    scanner = ContentScanner(background=False)
    hold, found = longest_hold(lambda: scanner.script_markers(str(script), scripts.PYTHON))
    assert found == ["pproxy"] and hold < 0.25, (found, hold)


def _big_script(path, size: int, tail: str) -> None:
    body = (STANDINS / "pool.py").read_text()  # real code, tool strings and all
    body = body.replace("mining.", "mining_")  # (its own words are data here)
    with open(path, "w") as f:
        written = 0
        n = 0
        while written < size:
            chunk = body.replace("def ", f"def v{n}_")
            f.write(chunk)
            written += len(chunk)
            n += 1
        f.write(tail)


def test_a_1_mib_script_is_read_in_a_child_without_holding_the_servers_threads(tmp_path):
    script = tmp_path / "big.py"
    _big_script(script, (1 << 20) - 4096, "\nimport pproxy\n")
    assert os.path.getsize(script) < 1 << 20
    scanner = ContentScanner(background=False, max_script_bytes=1 << 20, scan_seconds=60)
    hold, found = longest_hold(lambda: scanner.script_markers(str(script), scripts.PYTHON))
    assert found == ["pproxy"]
    assert hold < 0.25, hold  # parsed in this process, the GIL would be held 0.3 s to seconds


def test_a_64_mib_script_is_parsed_to_its_bound_and_its_import_lines_read_to_the_end(tmp_path):
    script = tmp_path / "huge.py"
    _big_script(script, 63 << 20, "\nimport pproxy\n")
    scanner = ContentScanner(background=False, scan_seconds=60)
    started = time.monotonic()
    hold, found = longest_hold(lambda: scanner.script_markers(str(script), scripts.PYTHON))
    assert found == ["pproxy"] and hold < 0.25, (found, hold)
    assert time.monotonic() - started < 30


def test_a_script_past_its_budget_is_cut_and_keeps_its_import_lines(tmp_path):
    script = tmp_path / "slow.py"
    _big_script(script, 1 << 20, "")
    script.write_text("import pproxy\n" + script.read_text())
    scanner = ContentScanner(background=False, scan_seconds=0.01)  # the child is killed
    assert scanner.script_markers(str(script), scripts.PYTHON) == ["pproxy", SCAN_CUT]
    assert scanner.stats["cut"] == 1


@pytest.mark.parametrize("hostile", [
    "-" * 2_000_000 + "1",  # the parser's C recursion
    "x = " + "[" * 100_000 + "]" * 100_000,  # nesting past the parser's limits
    "f(" * 50_000 + ")" * 50_000,
    "x = " + "1 + " * 300_000 + "1",  # a left-deep tree a recursive visitor could not walk
], ids=["unary chain", "nested lists", "nested calls", "long sum"])
def test_a_hostile_script_stays_bounded_and_its_imports_still_count(tmp_path, hostile):
    script = tmp_path / "hostile.py"
    script.write_text("import pproxy\n" + hostile + "\n")
    scanner = ContentScanner(background=False, scan_seconds=20)
    started = time.monotonic()
    hold, found = longest_hold(lambda: scanner.script_markers(str(script), scripts.PYTHON))
    assert "pproxy" in found and hold < 0.25, (found, hold)
    assert time.monotonic() - started < 25
