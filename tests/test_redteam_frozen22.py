"""Red team of the PyInstaller reader (session 22), with real PyInstaller builds: a frozen
Stratum miner hidden in a module of its own named as a standard library module (``this``-like
``antigravity``, a copy of ``json`` whose ``json.decoder`` is changed), as PyInstaller's
loader (``pyi_rth_update``), as a marked library (``asyncssh``), imported by a name kept in a
constant, run as an encoded constant (``exec(zlib.decompress(b64decode(...)))``, in a frozen
program, or in a plain script or ``python -c`` code) or as a data
file of its archive, or behind an archive whose ELF section is renamed, its cookie's magic
patched (in the bootloader too) and bytes appended; and honest near-misses: a frozen CLI with
a module of its own named ``secrets`` reporting to a loopback server, genuine standard modules
left unread, an encoded honest tool, an encoded icon never run, a JSON data file of Stratum
samples, ordinary ELF programs; bombs decoded to their bounds."""

from __future__ import annotations

import base64
import json
import marshal
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib

import pytest

from colab_guard.observe import frozen, scripts
from colab_guard.observe.content import PACKED_PYINSTALLER, ContentScanner, reported
from tests.test_frozen_python import (_answer, _archive, _code, _detections, _pyinstaller,
                                      pool)  # noqa: F401  (a fixture)

#: The Stratum client, as a function a module runs when given the pool's port.
MINER = r'''
import json, socket, sys, time
def run(port):
    sock = socket.create_connection(("127.0.0.1", port))
    login = [{"id": 1, "method": "mining.subscribe", "params": ["m/1"]},
             {"id": 2, "method": "mining.authorize", "params": ["w", "x"]}]
    sock.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in login))
    while sock.recv(65536):
        time.sleep(0.2)
if len(sys.argv) > 1 and sys.argv[1].isdigit():
    run(int(sys.argv[1]))
'''

HONEST_SECRETS = '''"""The app's own settings of secrets (an API token from the environment)."""
import os
TOKEN = os.environ.get("APP_TOKEN", "")
'''
HONEST_CLI = '''
import argparse, json, logging, urllib.request
import secrets
def main():
    parser = argparse.ArgumentParser(description="report to a local server")
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    request = urllib.request.Request(f"http://127.0.0.1:{args.port}/report",
                                     data=json.dumps({"token": secrets.TOKEN}).encode())
    with urllib.request.urlopen(request, timeout=5) as answer:
        logging.warning("%s", answer.read())
main()
'''


def _freeze(folder, files: dict[str, str], mode: str = "--onefile", extra=()) -> str:
    """The program ``tool.py`` beside its own ``files`` (relative paths), frozen by the real
    PyInstaller (``extra``: more of its options); its executable's path."""
    folder.mkdir()
    for path, text in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)
    subprocess.run(_pyinstaller() + [mode, "--noconfirm", "--log-level", "WARN",
                                     "--workpath", str(folder / "work"),
                                     "--specpath", str(folder / "spec"),
                                     "--distpath", str(folder / "dist"), *extra, "tool.py"],
                   check=True, cwd=folder, stdout=subprocess.DEVNULL)
    return str(folder / "dist" / "tool" / "tool") if mode == "--onedir" else \
        str(folder / "dist" / "tool")


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, str]:
    top = tmp_path_factory.mktemp("rtf22")
    json_folder = os.path.dirname(json.__file__)  # the library's json, one module changed
    json_copy = {f"json/{n}": open(os.path.join(json_folder, n)).read()
                 for n in os.listdir(json_folder) if n.endswith(".py")}
    json_copy["json/decoder.py"] += MINER
    return {
        "antigravity": _freeze(top / "a", {"tool.py": "import json, socket\nimport antigravity\n",
                                           "antigravity.py": MINER}),
        "json": _freeze(top / "j", {"tool.py": "import json\nprint(json.dumps({}))\n",
                                    **json_copy}),
        "pyi": _freeze(top / "p", {"tool.py": "import pyi_rth_update\n",
                                   "pyi_rth_update.py": MINER}),
        "asyncssh": _freeze(top / "s", {"tool.py": "import asyncssh\n",
                                        "asyncssh/__init__.py": MINER}),
        "honest": _freeze(top / "h", {"tool.py": HONEST_CLI, "secrets.py": HONEST_SECRETS},
                          "--onedir"),
        "stub": _freeze(top / "z", {"tool.py": "import base64, zlib\nexec(zlib.decompress("
                                    f"base64.b64decode({_packed(MINER)!r})))\n"}),
        "payload": _freeze(top / "d", {"tool.py": PAYLOAD_RUNNER, "payload.dat": MINER},
                           extra=["--add-data", f"{top / 'd' / 'payload.dat'}:."]),
        "honest-stub": _freeze(top / "y", {"tool.py": "import base64, zlib\nexec("
                                           "zlib.decompress(base64.b64decode("
                                           f"{_packed(HONEST_CLI)!r})))\n"}),
    }


def _packed(source: str) -> bytes:
    return base64.b64encode(zlib.compress(source.encode()))


#: Runs a data file of its one-file archive (extracted to sys._MEIPASS) as Python.
PAYLOAD_RUNNER = """
import os, sys
with open(os.path.join(sys._MEIPASS, "payload.dat")) as f:
    exec(f.read())
"""


@pytest.fixture
def scanner():
    found = ContentScanner(background=False)
    yield found
    found.close()


def _markers(path) -> list[str]:
    return scripts.code_markers(scripts.Evidence.from_json(_answer(path).get("evidence", {})))


def _frozen_markers(scanner: ContentScanner, path: str) -> list[str]:
    return reported(scanner.script_markers(path, scripts.FROZEN))


# ------------------------------------------------------------ shadowing the standard library


def test_a_miner_in_the_programs_own_module_named_as_a_standard_one_is_read(builds, scanner):
    """``import antigravity``: the program's own antigravity.py, not the library's (its code
    has names and texts the guard's own copy of the module lacks)."""
    assert _frozen_markers(scanner, builds["antigravity"]) == ["stratum-miner"]


def test_a_copy_of_a_standard_package_changed_in_one_module_is_read(builds):
    """``json`` is the library's own code (so not read), ``json.decoder`` is not: every
    module of the PYZ named as a standard one is compared, not only those the program's
    code imports (only ``json`` imports ``json.decoder``)."""
    assert _markers(builds["json"]) == ["stratum-miner"]


def test_a_standard_module_of_the_same_python_is_the_librarys_own(builds):
    """The near-miss: an honest build's standard modules (argparse, json, urllib...) are the
    guard's own copies' code, and are not read; only its own ``secrets`` is."""
    fd = os.open(builds["honest"], os.O_RDONLY)
    flagged: list[str] = []
    try:
        frozen.read_program(fd, os.fstat(fd).st_size, lambda n, d, p: [], 1 << 20,
                            shadowing=lambda n, d, p: scripts.shadowing(n, d, p)
                            and not flagged.append(n))
    finally:
        os.close(fd)
    assert flagged == ["secrets"]


def test_an_honest_cli_with_its_own_secrets_module_is_read_and_left_alone(builds, scanner):
    evidence = scripts.Evidence.from_json(_answer(builds["honest"])["evidence"])
    assert "TOKEN" in evidence.names and evidence.network  # its secrets.py and urlopen: read
    assert _frozen_markers(scanner, builds["honest"]) == []


def test_a_module_named_as_pyinstallers_own_is_the_programs(builds):
    """PyInstaller's loader (pyimod01_archive...) is not in the PYZ, and its runtime hooks
    are entry scripts: a PYZ module named ``pyi_rth_update`` is the program's."""
    assert _markers(builds["pyi"]) == ["stratum-miner"]


def test_a_miner_in_a_package_of_its_own_named_asyncssh_is_read(builds):
    """A marked library's modules are read last, without what its own marker looks for
    (asyncssh's give server host keys): the program's own ``asyncssh`` still shows a
    Stratum client. (The near-miss, a real asyncssh client, is no SSH server:
    tests/test_frozen_python.py.)"""
    assert _markers(builds["asyncssh"]) == ["stratum-miner"]


# ------------------------------------------------------------ code it decodes, a file it runs


def test_an_entry_script_running_an_encoded_miner_is_read_through_it(builds, scanner):
    """``exec(zlib.decompress(base64.b64decode(b"...")))``: the constant is decoded (bounded,
    nothing evaluated) and read as code, because the program runs what it decodes."""
    assert _frozen_markers(scanner, builds["stub"]) == ["stratum-miner"]


def test_an_encoded_honest_tool_is_read_and_left_alone(builds, scanner):
    evidence = scripts.Evidence.from_json(_answer(builds["honest-stub"])["evidence"])
    assert "TOKEN" in evidence.names and evidence.network  # decoded and read: an honest CLI
    assert _frozen_markers(scanner, builds["honest-stub"]) == []


def _stub(kind: str) -> str:
    import codecs
    import lzma

    code = marshal.dumps(compile(MINER, "m", "exec"))
    inner = f"import zlib, base64\nexec(zlib.decompress(base64.b64decode({_packed(MINER)!r})))"
    b85 = base64.b85encode(MINER.encode())
    return {
        "b85": f"import base64\nexec(base64.b85decode({b85!r}))",
        "marshal": f"import marshal, base64\nexec(marshal.loads(base64.b64decode("
                   f"{base64.b64encode(code)!r})))",
        "stub-of-stub": "import base64\nexec(base64.b64decode("
                        f"{base64.b64encode(inner.encode())!r}))",
        "hex-lzma": f"import lzma\nBLOB = {lzma.compress(MINER.encode()).hex()!r}\n"
                    "def go():\n    exec(lzma.decompress(bytes.fromhex(BLOB)))\ngo()",
        "rot13": f"import codecs\nexec(codecs.decode({codecs.encode(MINER, 'rot13')!r}, 'rot13'))",
    }[kind]


@pytest.mark.parametrize("kind", ["b85", "marshal", "stub-of-stub", "hex-lzma", "rot13"])
def test_encodings_of_a_stub_are_peeled(kind):
    evidence = scripts.code_evidence(marshal.dumps(compile(_stub(kind), "s", "exec")))
    assert scripts.code_markers(evidence) == ["stratum-miner"]


def test_an_encoded_constant_the_program_does_not_run_is_not_decoded():
    """The near-miss: an icon, a test vector, kept base64'd, decoded but never run."""
    source = f"import base64\nICON = {_packed(MINER)!r}\nprint(len(base64.b64decode(ICON)))"
    evidence = scripts.code_evidence(marshal.dumps(compile(source, "s", "exec")))
    assert scripts.code_markers(evidence) == [] and "socket" not in evidence.imports


@pytest.mark.parametrize("sample", ["plain", "base64"])
def test_a_detectors_sample_of_a_miner_is_data_beside_json_loads(sample):
    """The near-miss: a cryptojacking detector keeps a miner's source as a sample (as text,
    or base64'd) and parses its feed with ``json.loads``: ``loads`` is no ``marshal.loads``,
    and a sample kept as plain text is data even beside an ``exec`` of something else."""
    kept = repr(MINER) if sample == "plain" else repr(base64.b64encode(MINER.encode()))
    for runner in ("json.loads(line)", "exec('PLUGINS = []')"):
        source = f"import json\nSAMPLE = {kept}\nline = '{{}}'\n{runner}\n"
        evidence = scripts.code_evidence(marshal.dumps(compile(source, "s", "exec")))
        if runner.startswith("json") or sample == "plain":
            assert scripts.code_markers(evidence) == [], (sample, runner)


@pytest.fixture
def decoded(monkeypatch) -> list[int]:
    """The bytes each decoding step gives, as they are decoded."""
    sizes: list[int] = []
    real = scripts._decode_once
    monkeypatch.setattr(scripts, "_decode_once",
                        lambda data, limit: sizes.append(len(real(data, limit) or b""))
                        or real(data, limit))
    return sizes


def test_decompression_bombs_in_a_stub_are_decoded_to_their_bound(decoded):
    """Four constants of 256 MiB each (zlib, base64'd): ``DECODED_ALL`` decoded in all."""
    bomb = base64.b64encode(zlib.compress(b"\0" * (256 << 20), 9))
    source = "\n".join(f"B{i} = {bomb!r}" for i in range(4)) + "\nexec(B0)"
    evidence = scripts.code_evidence(marshal.dumps(compile(source, "s", "exec")))
    assert scripts.code_markers(evidence) == []
    assert sum(decoded) <= scripts.DECODED_ALL + 4 * len(bomb)  # (base64 layers: their size)


def test_a_data_file_of_the_archive_the_program_runs_is_read(builds, scanner):
    """``--add-data payload.dat`` (in the one-file archive), run by ``exec`` from
    ``sys._MEIPASS``: the archive's data file a constant of its code names."""
    assert _frozen_markers(scanner, builds["payload"]) == ["stratum-miner"]


# ------------------------------------------------------------ imports by a constant's name


def _program_importing(script: str) -> bytes:
    module = zlib.compress(marshal.dumps(compile(MINER.replace("sys.argv[1].isdigit()", "1"),
                                                 "pool_client", "exec")))
    table = marshal.dumps([("pool_client", (0, 16, len(module)))])
    pyz = b"PYZ\0" + b"\0" * 4 + struct.pack("!i", 16 + len(module)) + b"\0" * 4 + module + table
    return _archive([("tool", b"s", _code(script)), ("PYZ.pyz", b"z", pyz)])


def test_a_module_imported_by_a_name_kept_in_a_constant_is_read(tmp_path):
    """``importlib.import_module(NAME)``, ``__import__(NAME)`` in a function: NAME holds a
    text constant (PyInstaller bundles it by ``--hidden-import``)."""
    for script in ('import importlib\nNAME = "pool_client"\nimportlib.import_module(NAME)\n',
                   'def load():\n    return __import__(NAME)\nNAME = "pool_client"\nload()\n'):
        path = tmp_path / "tool"
        path.write_bytes(_program_importing(script))
        assert _markers(path) == ["stratum-miner"], script


def test_a_constant_named_but_not_imported_is_not_read(tmp_path):
    path = tmp_path / "tool"
    path.write_bytes(_program_importing('import os\nNAME = "pool_client"\n'
                                        'print(os.environ.get(NAME))\n'))
    assert _markers(path) == []


# ------------------------------------------------------------ the archive


def _disguised(source: str, folder) -> str:
    """The build with its ``pydata`` section renamed, 256 KiB appended, the cookie's magic
    patched in the archive and in the bootloader's copy (it still runs: the bootloader finds
    its archive by that copy)."""
    renamed = str(folder / "renamed")
    subprocess.run(["objcopy", "--rename-section", "pydata=.rodata.x", source, renamed],
                   check=True)
    data = open(renamed, "rb").read()
    for magic in (frozen.COOKIE_MAGIC, b"MEI\0" + frozen.COOKIE_MAGIC[4:]):  # (the copy's
        assert data.count(magic) == 1  # fourth byte is set when the bootloader runs)
        data = data.replace(magic, b"QZX" + magic[3:])
    path = folder / "dbus-update"
    path.write_bytes(data + b"\0" * (256 << 10))
    path.chmod(0o755)
    return str(path)


def test_an_archive_in_a_renamed_section_with_a_patched_magic_is_found(builds, tmp_path,
                                                                       scanner):
    path = _disguised(builds["pyi"], tmp_path)
    assert _runs(path)
    assert PACKED_PYINSTALLER in scanner.file_markers(path, 64 << 20)
    assert _frozen_markers(scanner, path) == ["stratum-miner"]


def test_the_disguised_miner_runs_and_is_an_incident_by_its_content(builds, tmp_path, pool):
    """The real process, sampler and engine against the loopback pool."""
    path = _disguised(builds["pyi"], tmp_path)
    seen = _detections([path, str(pool)], 30,
                       until=lambda s: any(i == "mining-miner-content" for i, _ in s))
    found = [markers for i, markers in seen if i == "mining-miner-content"]
    assert found and "stratum-miner" in found[0], seen


def test_ordinary_programs_have_no_section_ending_in_an_archive():
    """The near-miss of a section found by its cookie's shape, whatever its name and magic."""
    for name in ("python3", "bash", "ls", "objcopy"):
        path = os.path.realpath(shutil.which(name))
        fd = os.open(path, os.O_RDONLY)
        try:
            assert frozen.find_archive(fd, os.fstat(fd).st_size) is None, path
        finally:
            os.close(fd)


def _runs(path) -> bool:
    """The program runs its script to its end (PyInstaller's loader found its archive)."""
    return subprocess.run([str(path)], capture_output=True, timeout=30).returncode == 0


@pytest.mark.xfail(strict=True, reason="an archive appended after an ELF whose section headers "
                   "are gone, its magic patched (in the bootloader's copy too) and bytes "
                   "appended: the bootloader scans the whole file for its copy of the magic; "
                   "the guard reads a few KiB here (the scanner's thread), and without the "
                   "magic, a section or the file's last 64 KiB it has nothing to find it by")
def test_an_archive_appended_without_a_section_and_its_magic_patched_is_found(builds,
                                                                             tmp_path):
    data = bytearray(open(builds["pyi"], "rb").read())
    data[0x28:0x30] = bytes(8)  # no section header table (the program still runs)
    data[0x3C:0x40] = bytes(4)
    for magic in (frozen.COOKIE_MAGIC, b"MEI\0" + frozen.COOKIE_MAGIC[4:]):
        data = data.replace(magic, b"QZX" + magic[3:])
    path = tmp_path / "tool"
    path.write_bytes(bytes(data) + b"\0" * (256 << 10))
    path.chmod(0o755)
    assert _runs(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert frozen.find_archive(fd, os.fstat(fd).st_size) is not None
    finally:
        os.close(fd)


def _read_source(source: str) -> list[str]:
    """A Python source read as the scanner reads a script (``scripts.read``: here if small and
    plain, else in the reader's child): its markers."""
    fd = os.memfd_create("source", os.MFD_CLOEXEC)
    try:
        os.write(fd, source.encode())
        answer = scripts.read(fd, scripts.PYTHON, 1 << 20, 64 << 20, time.monotonic() + 30)
    finally:
        os.close(fd)
    return scripts.code_markers(scripts.Evidence.from_json(answer.get("evidence", {})))


@pytest.mark.parametrize("runner", ["exec", "python -c"])
def test_a_source_script_running_an_encoded_miner_is_read(runner):
    """A script (or ``python -c`` code) that is only a stub: the encoded constant it runs is
    read in the reader's child, as a .pyc's is."""
    source = f"import base64, zlib\nexec(zlib.decompress(base64.b64decode({_packed(MINER)!r})))"
    if runner == "python -c":
        source = source.replace("\n", "; ")
    assert _read_source(source) == ["stratum-miner"]


def test_a_python_c_stub_running_a_miner_is_an_incident_by_its_content(pool):
    """``python -c "exec(zlib.decompress(b64decode(…)))"`` as a real process, the real sampler
    and engine against the loopback pool: the content signature (the stub carries no CPU)."""
    stub = (f"import base64, zlib; exec(zlib.decompress(base64.b64decode("
            f"{_packed(MINER)!r})))")
    seen = _detections([sys.executable, "-c", stub, str(pool)], 30,
                       until=lambda s: any(i == "mining-miner-content" for i, _ in s))
    found = [markers for i, markers in seen if i == "mining-miner-content"]
    assert found and "stratum-miner" in found[0], seen


@pytest.mark.parametrize("kept", ["an icon", "a plain sample"])
def test_a_source_that_runs_code_beside_data_it_keeps_is_left_alone(kept):
    """The near-misses: a script that ``eval``s a config expression and keeps a base64'd icon;
    a detector that ``exec``s its plugins and keeps a miner's source as plain text."""
    data = repr(base64.b64encode(bytes(range(256)) * 4)) if kept == "an icon" else repr(MINER)
    source = f"import base64\nKEPT = {data}\nlimit = eval('2 ** 10')\nexec('PLUGINS = []')\n"
    assert _read_source(source) == []


# ------------------------------------------------------------ honest, as real processes


def test_an_honest_frozen_cli_reporting_to_a_local_server_is_no_incident(builds):
    """argparse, its own ``secrets`` module, urllib to a loopback HTTP server: it reports and
    exits; no incident while it runs."""
    import http.server
    import threading

    class Report(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Report)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        seen = _detections([builds["honest"], str(server.server_address[1])], 6)
    finally:
        server.shutdown()
    assert seen == [], seen


def test_standard_modules_compiled_for_want_of_a_pyc_are_bounded(monkeypatch):
    """A guard's Python installed without its .pyc files: the sources are compiled,
    ``STANDARD_COMPILES_MAX`` at most; past them a module is taken for the library's, and
    one the library lacks is still the program's."""
    import importlib.util

    monkeypatch.setattr(importlib.util, "cache_from_source", lambda path: "/nonexistent.pyc")
    monkeypatch.setattr(scripts, "_STANDARD", {})
    monkeypatch.setattr(scripts, "_COMPILED", [0])
    own = marshal.dumps(compile(MINER, "m", "exec"))
    names = sorted(n for n in sys.stdlib_module_names
                   if os.path.isfile(os.path.join(os.path.dirname(os.__file__), n + ".py")))
    flagged = [n for n in names[:scripts.STANDARD_COMPILES_MAX + 8]
               if scripts.shadowing(n, own, False)]
    assert scripts._COMPILED[0] == scripts.STANDARD_COMPILES_MAX
    assert len(flagged) == scripts.STANDARD_COMPILES_MAX  # (the miner is none of them)
    assert scripts.shadowing("json.miner", own, False)  # (json/miner.py: not the library's)


def test_a_data_file_of_stratum_samples_the_program_loads_as_json_is_not_code(tmp_path):
    """The near-miss: an honest detector's archive carries ``samples.json`` (Stratum
    requests, as data) that it ``json.load``s, and execs a plugin elsewhere: the file is
    named by code that runs files, but a document of literals runs nothing."""
    samples = b'[{"id": 1, "method": "mining.subscribe"}, {"id": 2, "method": "mining.authorize"}]'
    script = ('import json, os, socket, sys\nexec("PLUGINS = []")\n'
              'SAMPLES = json.load(open(os.path.join(sys._MEIPASS, "samples.json")))\n'
              'feed = socket.create_connection(("127.0.0.1", 9))\n')
    path = tmp_path / "tool"
    path.write_bytes(_archive([("tool", b"s", _code(script)),
                               ("samples.json", b"x", zlib.compress(samples))]))
    assert _markers(path) == []
    path.write_bytes(_archive([("tool", b"s", _code(script.replace("json.load(", "exec(")
                                                    .replace('.json")))', '.json")).read())'))),
                               ("samples.json", b"x", zlib.compress(MINER.encode()))]))
    assert _markers(path) == ["stratum-miner"]  # (the same file, a program it runs)


def test_bombs_in_every_entry_script_share_one_decoding_budget(tmp_path, decoded):
    """Eight entry scripts, each a stub of a 256 MiB bomb: ``DECODED_ALL`` for the program."""
    bomb = base64.b64encode(zlib.compress(b"\0" * (256 << 20), 9))
    stub = _code(f"B = {bomb!r}\nexec(B)")
    path = tmp_path / "tool"
    path.write_bytes(_archive([(f"s{i}", b"s", stub) for i in range(8)]))
    fd = os.open(path, os.O_RDONLY)
    try:
        answer = scripts.frozen_answer(fd, 1 << 20)
    finally:
        os.close(fd)
    assert scripts.code_markers(scripts.Evidence.from_json(answer["evidence"])) == []
    assert sum(decoded) <= scripts.DECODED_ALL + 8 * len(bomb)
