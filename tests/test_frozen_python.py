"""Python tools frozen with PyInstaller (``colab_guard/observe/frozen.py``): a real PyInstaller
build (its real bootloader, CArchive and PYZ) carries its Python code compressed, so no marker
shows in the file; the guard reads the code in its archive as a script's. A frozen Stratum
miner under a neutral name is recognised by its code through the real sampler and engine; a
frozen honest detector that lists the protocol's names as data is left alone; hostile archives
(truncated, a cookie pointing out of the file, a decompression bomb, 100,000 entries) give no
evidence within their bounds (counted in bytes and entries, not seconds)."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib

import pytest

from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe import frozen, scripts
from colab_guard.observe.content import (PACKED_PYINSTALLER, ContentScanner, reported,
                                         scan_file)
from colab_guard.observe.processes import ProcessSampler
from tests.standins import pool as standin_pool

IN_CI = os.environ.get("CI") == "true"

#: A Stratum miner stand-in: logs in to the pool, then answers its jobs (no CPU burnt: what
#: recognises it here is its code, not what it does).
MINER = r'''
import hashlib, json, socket, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
login = [{"id": 1, "method": "mining.subscribe", "params": ["m/1"]},
         {"id": 2, "method": "mining.authorize", "params": ["w", "x"]}]
sock.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in login))
while sock.recv(65536):
    time.sleep(0.2)
'''

#: An honest cryptojacking detector: the protocol's names, xmrig and stratum+tcp only as text
#: (its docstring, comments, its label list); it connects to a feed and reports.
HONEST = r'''
"""Cryptojacking detector: flags traffic carrying "mining.subscribe" or "mining.authorize",
the stratum+tcp:// scheme, or xmrig's user agent (XMRig/6.21, --donate-level)."""
import json, socket, sys
# labels of the Stratum protocol: mining.subscribe, mining.authorize, mining.submit
LABELS = ["mining.subscribe", "mining.authorize", "mining.submit", "mining.notify"]
SCHEMES = ("stratum+tcp://", "stratum+ssl://")
AGENTS = {"xmrig": "XMRig", "donate": "donate-level", "site": "xmrig.com"}

def suspicious(line):
    try:
        message = json.loads(line)
    except ValueError:
        return any(s in line for s in SCHEMES)
    return message.get("method") in LABELS

feed = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
feed.sendall(b"report\n")
for line in feed.makefile():
    print("alert" if suspicious(line) else "ok", flush=True)
'''

RELAY = "import pproxy\nprint(pproxy.__name__)\n"

#: An SSH server written with asyncssh, and a client (a near-miss: asyncssh's own modules,
#: bundled in its archive too, give server host keys; they are not the program's code).
SSH_SERVER = """
import asyncio, asyncssh
async def main():
    await asyncssh.listen("127.0.0.1", 2222, server_host_keys=["key"])
    await asyncio.Event().wait()
asyncio.run(main())
"""
SSH_CLIENT = """
import asyncio, asyncssh
async def main():
    async with asyncssh.connect("127.0.0.1", port=2222, known_hosts=None) as conn:
        print(await conn.run("true"))
asyncio.run(main())
"""


def _pyinstaller() -> list[str]:
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        missing = "pyinstaller is not installed (pip install -e .[test])"
    else:
        missing = None if shutil.which("objcopy") else \
            "objcopy is not installed (benchmarks/scenarios/install.sh --small)"
    if missing is not None:
        (pytest.fail if IN_CI else pytest.skip)(missing)
    return [sys.executable, "-m", "PyInstaller"]


def _freeze(folder, name: str, source: str, mode: str) -> str:
    """``source`` frozen by the real PyInstaller (``--onefile`` or ``--onedir``); its
    executable's path."""
    (folder / f"{name}.py").write_text(source)
    subprocess.run(_pyinstaller() + [mode, "--noconfirm", "--log-level", "WARN",
                                     "--workpath", str(folder / "work"),
                                     "--specpath", str(folder / "spec"),
                                     "--distpath", str(folder / "dist"),
                                     str(folder / f"{name}.py")], check=True,
                   stdout=subprocess.DEVNULL)
    dist = folder / "dist"
    return str(dist / name / name) if mode == "--onedir" else str(dist / name)


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, str]:
    """Built once for this module: the miner (one file, renamed to a neutral name), the
    honest detector (one folder), a pproxy relay, an asyncssh server and client (one file)."""
    folder = tmp_path_factory.mktemp("frozen")
    miner = _freeze(folder, "miner", MINER, "--onefile")
    neutral = str(folder / "dbus-update")
    shutil.copy(miner, neutral)
    return {"miner": neutral,
            "honest": _freeze(folder, "detector", HONEST, "--onedir"),
            "relay": _freeze(folder, "relay", RELAY, "--onefile"),
            "ssh-server": _freeze(folder, "sshd", SSH_SERVER, "--onefile"),
            "ssh-client": _freeze(folder, "sshc", SSH_CLIENT, "--onefile")}


@pytest.fixture
def scanner():
    found = ContentScanner(background=False)
    yield found
    found.close()


@pytest.fixture
def pool():
    server = standin_pool.serve()
    yield server.getsockname()[1]
    server.close()


def _frozen_markers(scanner: ContentScanner, path: str) -> list[str]:
    return reported(scanner.script_markers(path, scripts.FROZEN))


# ---------------------------------------------------------------- real builds


def test_a_frozen_programs_code_shows_nothing_in_its_file_but_its_archive(builds, scanner):
    """The gap: the code is compressed, no marker in the file; the archive is a trait."""
    found = scanner.file_markers(builds["miner"], 64 << 20)
    assert "stratum-miner" not in found and PACKED_PYINSTALLER in found, found
    assert PACKED_PYINSTALLER in scanner.file_markers(builds["honest"], 64 << 20)


def test_a_frozen_stratum_miner_is_recognised_by_its_code(builds, scanner):
    assert _frozen_markers(scanner, builds["miner"]) == ["stratum-miner"]


def test_a_frozen_relay_importing_pproxy_is_recognised(builds, scanner):
    assert _frozen_markers(scanner, builds["relay"]) == ["pproxy"]


def test_a_frozen_asyncssh_server_is_recognised_and_a_client_is_not(builds, scanner):
    assert _frozen_markers(scanner, builds["ssh-server"]) == ["asyncssh-server"]
    assert _frozen_markers(scanner, builds["ssh-client"]) == []


def test_a_frozen_honest_detector_naming_the_protocol_as_data_is_left_alone(builds, scanner):
    """Its code is read (a one-folder build keeps its archive in the executable too): the
    names are there as data, no request is built of them."""
    evidence = scripts.Evidence.from_json(_answer(builds["honest"])["evidence"])
    assert {"suspicious", "LABELS"} <= evidence.names and evidence.network
    assert "mining.subscribe" in evidence.mentioned and not evidence.requests
    assert _frozen_markers(scanner, builds["honest"]) == []
    assert scanner.file_markers(builds["honest"], 64 << 20) == [PACKED_PYINSTALLER]


def _detections(argv: list[str], seconds: float, until=None):
    """Run ``argv`` under the real sampler and engine; every (signature id, markers) seen,
    until ``until(seen)`` holds or ``seconds`` pass."""
    sampler = ProcessSampler()
    engine = Engine(load_signatures(), log=logging.getLogger("test"))
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: list[tuple[str, list[str]]] = []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until(seen)):
            for snapshot in sampler.sample({"k": proc.pid}).values():
                seen += [(d.signature.id, d.process.exe_markers)
                         for d in engine.evaluate(snapshot)]
            time.sleep(0.1)  # the guard's interval, shortened
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()
    return seen


def test_a_frozen_miner_under_a_neutral_name_is_an_incident_by_its_content(builds, pool):
    """A real process (the bootloader and the Python it starts), the real sampler and
    engine, against the loopback stand-in pool: the content signature, not behaviour."""
    started = time.monotonic()
    seen = _detections([builds["miner"], str(pool)], 30,
                       until=lambda s: any(i == "mining-miner-content" for i, _ in s))
    found = [markers for i, markers in seen if i == "mining-miner-content"]
    assert found, seen
    assert "stratum-miner" in found[0] and PACKED_PYINSTALLER in found[0], found
    assert time.monotonic() - started < 30


def test_a_frozen_honest_detector_connected_to_a_feed_is_no_incident(builds, pool):
    seen = _detections([builds["honest"], str(pool)], 6)
    assert seen == [], seen


# ---------------------------------------------------------------- hostile archives


def _entry(name: str, kind: bytes, offset: int, data: bytes, raw: int, compressed: bool) -> bytes:
    encoded = name.encode() + b"\0"
    encoded += b"\0" * (-(len(encoded) + 18) % 16)
    return struct.pack("!IIIIBc", 18 + len(encoded), offset, len(data), raw, compressed,
                       kind) + encoded


def _archive(items: list[tuple[str, bytes, bytes]], toc: bytes | None = None,
             length_delta: int = 0, python: int | None = None) -> bytes:
    """A CArchive as PyInstaller writes one: entries (name, kind, zlib data), its table, its
    cookie; behind a stand-in bootloader. ``toc``: a table of one's own."""
    body, table = b"", b""
    for name, kind, data in items:
        table += _entry(name, kind, len(body), data, len(data), True)
        body += data
    table = table if toc is None else toc
    python = python or sys.version_info[0] * 100 + sys.version_info[1]
    cookie = struct.pack("!8sIIII64s", frozen.COOKIE_MAGIC,
                         len(body) + len(table) + 88 + length_delta, len(body), len(table),
                         python, b"libpython3.so")
    return b"\x7fELF-not-a-bootloader" + b"\0" * 4096 + body + table + cookie


def _code(source: str) -> bytes:
    import marshal
    return zlib.compress(marshal.dumps(compile(source, "x", "exec")))


def _read(path, parse_bytes: int = 1 << 20) -> tuple[dict | None, frozen.Budget, list]:
    """frozen.read_program of a file, what each module fed to the reader was, the budget."""
    fed: list[tuple[str, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        budget = frozen.Budget(fd, os.fstat(fd).st_size)
        archive = frozen.read_program(fd, budget.size,
                                      lambda n, d, p: fed.append((n, len(d))) or [],
                                      parse_bytes, budget)
        return archive, budget, fed
    finally:
        os.close(fd)


def _answer(path) -> dict:
    fd = os.open(path, os.O_RDONLY)
    try:
        return scripts.read_isolated(fd, scripts.FROZEN, 1 << 20, 64 << 20,
                                     time.monotonic() + 10)
    finally:
        os.close(fd)


def _no_evidence(answer: dict) -> bool:
    return scripts.code_markers(scripts.Evidence.from_json(answer.get("evidence", {}))) == [] \
        and not answer.get("text")


def test_a_synthetic_archive_of_this_pythons_code_is_read(tmp_path):
    """The reader of the hostile cases below, on a well-formed archive: it does read."""
    path = tmp_path / "tool"
    path.write_bytes(_archive([("tool", b"s", _code(MINER))]))
    answer = _answer(path)
    assert scripts.code_markers(scripts.Evidence.from_json(answer["evidence"])) == \
        ["stratum-miner"]


def test_another_pythons_frozen_code_is_searched_as_bytes(tmp_path):
    path = tmp_path / "tool"
    path.write_bytes(_archive([("tool", b"s", _code(MINER))], python=307))
    answer = _answer(path)
    assert "evidence" not in answer and "mining.subscribe" in answer["text"]
    scanner = ContentScanner(background=False)
    try:
        assert _frozen_markers(scanner, str(path)) == ["stratum-miner"]
    finally:
        scanner.close()


def test_a_truncated_build_gives_no_evidence(builds, tmp_path):
    data = open(builds["miner"], "rb").read()
    for cut in (len(data) - 3000, len(data) // 2, 4096):
        path = tmp_path / f"cut{cut}"
        path.write_bytes(data[:cut])
        archive, budget, fed = _read(path)
        assert archive is None and fed == [] and budget.bytes_read <= 2 * frozen.TAIL_SEARCH
        assert _no_evidence(_answer(path))


def test_an_archive_whose_entries_point_past_its_end_gives_no_evidence(tmp_path):
    table = _entry("tool", b"s", 1 << 30, b"x" * 100, 100, True)
    path = tmp_path / "tool"
    path.write_bytes(_archive([("pad", b"x", b"")], toc=table))
    archive, budget, fed = _read(path)
    assert fed == [] and _no_evidence(_answer(path))


def test_a_cookie_pointing_out_of_the_file_gives_no_evidence(tmp_path):
    path = tmp_path / "tool"
    path.write_bytes(_archive([("tool", b"s", _code(MINER))], length_delta=1 << 30))
    archive, budget, fed = _read(path)
    assert archive is None and fed == [] and budget.bytes_read <= 2 * frozen.TAIL_SEARCH
    assert _no_evidence(_answer(path))


def test_a_decompression_bomb_entry_is_read_to_its_bound(tmp_path):
    bomb = zlib.compress(b"\0" * (256 << 20), 9)  # 256 MiB in about 256 KiB
    path = tmp_path / "tool"
    path.write_bytes(_archive([("tool", b"s", bomb)]))
    archive, budget, fed = _read(path, parse_bytes=1 << 20)
    assert archive is not None and fed == [("tool", 1 << 20)]  # its first MiB, no more
    assert budget.bytes_read < len(bomb) + 2 * frozen.TAIL_SEARCH
    assert _no_evidence(_answer(path))


@pytest.mark.parametrize("count", [100_000, 50_000])
def test_a_hundred_thousand_table_entries_are_bounded(tmp_path, count):
    """100,000 entries (a table past TOC_MAX: not read at all), 50,000 (within its bytes:
    read up to TOC_ENTRIES_MAX entries, then refused)."""
    table = b"".join(struct.pack("!IIIIBc", 20, 0, 0, 0, 0, b"s") + b"a\0"
                     for _ in range(count))
    path = tmp_path / "tool"
    path.write_bytes(_archive([], toc=table))
    archive, budget, fed = _read(path)
    assert fed == [] and budget.entries <= frozen.TOC_ENTRIES_MAX
    assert budget.bytes_read <= frozen.TOC_MAX + 2 * frozen.TAIL_SEARCH
    assert _no_evidence(_answer(path))


def test_a_pyz_of_many_modules_reads_only_those_imported(tmp_path):
    """The PYZ's modules are read as the scripts import them, ``MODULES_MAX`` at most: an
    import chain 100 modules long is cut, the standard library is not read."""
    import marshal

    body, toc = b"", []
    for i in range(100):
        data = zlib.compress(marshal.dumps(compile(f"import mod{i + 1}\nimport json\n", "m",
                                                   "exec")))
        toc.append((f"mod{i}", (0, 16 + len(body), len(data))))
        body += data
    head = b"PYZ\0" + b"\0" * 4 + struct.pack("!i", 16 + len(body))
    pyz = head + b"\0" * (16 - len(head)) + body + marshal.dumps(toc)
    path = tmp_path / "tool"
    path.write_bytes(_archive([("tool", b"s", _code("import mod0\n")), ("PYZ.pyz", b"z", pyz)]))
    fed: list[str] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        frozen.read_program(fd, os.fstat(fd).st_size, lambda n, d, p: fed.append(n) or
                            scripts._followed(scripts.code_evidence(d).imports), 1 << 20)
    finally:
        os.close(fd)
    assert fed == ["tool"] + [f"mod{i}" for i in range(frozen.MODULES_MAX)]


def test_a_miner_in_a_module_of_the_pyz_is_read_through_the_scripts_import(tmp_path):
    """The entry script only imports; the Stratum client is a module of its PYZ."""
    import marshal

    module = zlib.compress(marshal.dumps(compile(MINER, "pool_client", "exec")))
    table = marshal.dumps([("pool_client", (0, 16, len(module)))])
    pyz = b"PYZ\0" + b"\0" * 4 + struct.pack("!i", 16 + len(module)) + b"\0" * 4 + module + table
    path = tmp_path / "tool"
    path.write_bytes(_archive([("tool", b"s", _code("import pool_client\n")),
                               ("PYZ.pyz", b"z", pyz)]))
    answer = _answer(path)
    assert scripts.code_markers(scripts.Evidence.from_json(answer["evidence"])) == \
        ["stratum-miner"]


def test_another_pythons_code_of_a_hundred_thousand_names_is_bounded(tmp_path, monkeypatch):
    """Read as bytes, the modules a script imports are guessed from the names in it: a script
    naming 100,000 modules of its PYZ has ``NAMES_IN_BYTES`` looked up, ``MODULES_MAX`` read."""
    import marshal

    names = [f"m{i}" for i in range(100_000)]
    module = zlib.compress(marshal.dumps(compile("x = 1\n", "m", "exec")))
    table = marshal.dumps([(n, (0, 16, len(module))) for n in names])
    pyz = b"PYZ\0" + b"\0" * 4 + struct.pack("!i", 16 + len(module)) + b"\0" * 4 + module + table
    script = zlib.compress(" ".join(names).encode())
    path = tmp_path / "tool"
    path.write_bytes(_archive([("tool", b"s", script), ("PYZ.pyz", b"z", pyz)], python=307))
    looked, read = [], []
    real_resolve, real_module = frozen._resolve, frozen.pyz_module
    monkeypatch.setattr(frozen, "_resolve", lambda *a: looked.append(a[1]) or real_resolve(*a))
    monkeypatch.setattr(frozen, "pyz_module", lambda *a: read.append(a[1]) or real_module(*a))
    fd = os.open(path, os.O_RDONLY)
    try:
        answer = scripts.frozen_answer(fd, 1 << 20)
    finally:
        os.close(fd)
    assert "m0" in answer["text"]
    assert len(read) == frozen.MODULES_MAX
    assert len(looked) <= (1 + frozen.MODULES_MAX) * scripts.NAMES_IN_BYTES


def test_honest_programs_carry_no_archive():
    for name in ("python3", "bash", "ls"):
        path = os.path.realpath(shutil.which(name))
        assert PACKED_PYINSTALLER not in scan_file(path, 64 << 20)
