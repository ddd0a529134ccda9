"""Libraries are recognised by their content and the names they export, not their file names:
libtorrent's Python module from PyPI (the real wheel) copied to ``fastmath.so`` and loaded with
``importlib`` or ``ctypes``, in a subprocess and in a real kernel, is a torrent client within
2 s; the honest libraries installed here, loaded the same way, carry nothing."""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import shutil
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest

from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe import elf
from colab_guard.observe.content import (ContentScanner, SystemPackages, executable_files,
                                         reported, scan_file, symbol_markers)
from colab_guard.observe.processes import ProcessSampler
from tests.conftest import PYTHON, SERVER_USER, incidents_in, wait_for
from tests.harness import alive as _alive

IN_CI = os.environ.get("CI") == "true"
SITE = sysconfig.get_paths()["purelib"]
ROOT = Path(__file__).resolve().parent.parent


def _libtorrent() -> str:
    spec = importlib.util.find_spec("libtorrent")
    if spec is None or not spec.origin:
        if IN_CI:
            pytest.fail("libtorrent is not installed (the test extra installs it)")
        pytest.skip("libtorrent is not installed (pip install libtorrent)")
    return spec.origin


def _renamed(tmp_path, source: str, name: str = "fastmath.so") -> str:
    copy = tmp_path / name
    shutil.copy(source, copy)
    return str(copy)


def _exported(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return elf.exported_symbols(f.fileno(), f.read(4096), os.fstat(f.fileno()).st_size)


# ---------------------------------------------------------------- the files


def test_the_renamed_wheel_carries_its_markers(tmp_path):
    markers = scan_file(_renamed(tmp_path, _libtorrent()), 64 << 20)
    assert "libtorrent" in markers and "bittorrent" in markers, markers


def test_its_exported_names_alone_still_name_it_without_strings_or_section_headers(tmp_path):
    """Its strings scrambled and its section headers wiped (sstrip): the dynamic segment,
    which the loader needs, still gives the names it exports."""
    data = bytearray(open(_libtorrent(), "rb").read())
    data[:] = data.replace(b"BitTorrent protocol", b"Xxxxxxxxxxxxxxxxxxx")
    data[0x28:0x30] = bytes(8)  # e_shoff
    data[0x3C:0x40] = bytes(4)  # e_shnum, e_shstrndx
    path = tmp_path / "fastmath.so"
    path.write_bytes(bytes(data))
    markers = scan_file(str(path), 64 << 20)
    assert "libtorrent" in markers and "bittorrent" not in markers, markers


def test_exported_names_are_the_defined_dynamic_symbols_nm_lists():
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("binutils' nm is not installed")
    for path in (_libtorrent(), "/usr/lib/x86_64-linux-gnu/libcrypto.so.3"):
        if not os.path.exists(path):
            continue
        listed = subprocess.run([nm, "-D", "--defined-only", path], capture_output=True,
                                check=True).stdout.split(b"\n")
        expected = {line.split()[-1].split(b"@")[0] for line in listed if line.strip()}
        assert set(_exported(path)) == expected, path


def test_a_library_that_only_imports_libtorrents_names_is_not_it():
    names = [b"_ZN10libtorrent7sessionC1Ev"] * 19 + [b"main"]
    assert symbol_markers(names) == []
    assert symbol_markers(names + [b"_ZNK10libtorrent12torrent_info4nameEv"]) == ["libtorrent"]


def _honest_libraries() -> list[str]:
    """Every shared object installed in this environment (numpy and its OpenBLAS, zmq,
    cryptography's Rust core and OpenSSL, psycopg's OpenSSL...) but libtorrent's, the
    interpreter and its library, and the system's OpenSSL, libcurl, zlib, libstdc++."""
    found = glob.glob(os.path.join(SITE, "**", "*.so*"), recursive=True)
    found = [f for f in found if "/libtorrent" not in f]
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    found += glob.glob(os.path.join(libdir, "libpython3*.so*")) + [os.path.realpath(PYTHON)]
    for lib in ("libcrypto.so.3", "libssl.so.3", "libcurl.so.4", "libcurl-gnutls.so.4",
                "libz.so.1", "libstdc++.so.6", "libzmq.so.5"):
        found += glob.glob(f"/usr/lib/x86_64-linux-gnu/{lib}")
    return sorted({os.path.realpath(f) for f in found if os.path.isfile(f)})


def test_honest_libraries_carry_no_marker_in_content_or_exported_names():
    files = _honest_libraries()
    assert len(files) >= 20 and any("numpy" in f for f in files), files
    found = {f: reported(scan_file(f, 64 << 20)) for f in files}
    assert {f: m for f, m in found.items() if m} == {}


def test_no_system_library_exports_a_tools_names():
    """Every shared object of the system's library folders, by its exported names (fast)."""
    files = [f for f in glob.glob("/usr/lib/x86_64-linux-gnu/**/*.so*", recursive=True)
             if os.path.isfile(f) and not os.path.islink(f)]
    assert len(files) >= 50
    found = {f: symbol_markers(_exported(f)) for f in files}
    assert {f: m for f, m in found.items() if m} == {}


def test_the_systems_own_libraries_are_known_clean_and_a_copy_is_not(tmp_path):
    packages = SystemPackages()
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    if not os.path.exists("/var/lib/dpkg/info") or not os.path.exists(libc):
        pytest.skip("not a dpkg system")
    assert packages.installed(libc)
    assert not packages.installed(_renamed(tmp_path, libc, "libc.so.6"))


def test_executable_files_are_read_from_maps_once_each_without_deleted_ones():
    maps = ("7f00-7f10 r--p 00000000 fe:00 11 /tmp/fastmath.so\n"
            "7f10-7f20 r-xp 00010000 fe:00 11 /tmp/fastmath.so\n"
            "7f20-7f30 r-xp 00000000 fe:00 12 /tmp/gone.so (deleted)\n"
            "7f30-7f40 rw-p 00000000 fe:00 13 /tmp/data.bin\n"
            "7f40-7f50 r-xp 00000000 00:00 0 \n"
            "7f50-7f60 r-xp 00000000 fe:00 14 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert [(m.path, m.inode, m.start) for m in executable_files(maps)] == [
        ("/tmp/fastmath.so", 11, 0x7f10), ("/usr/lib/x86_64-linux-gnu/libc.so.6", 14, 0x7f50)]


# ---------------------------------------------------------------- loaded in a process

LOADERS = {
    # the module's init function is PyInit_libtorrent: it is loaded under that module name
    "importlib": ("import importlib.machinery as m, importlib.util as u, sys\n"
                  "loader = m.ExtensionFileLoader(sys.argv[2], sys.argv[1])\n"
                  "u.module_from_spec(u.spec_from_loader(sys.argv[2], loader))\n"),
    "ctypes": "import ctypes, sys\nctypes.CDLL(sys.argv[1])\n",
}
THEN_WAIT = "print('loaded', flush=True)\nsys.stdin.read()\n"


def _warm(sampler: ProcessSampler) -> None:
    """Scan what any Python process maps (the interpreter's library, the stdlib's modules), as
    the guard has long done by the time a kernel loads something."""
    proc = subprocess.Popen([PYTHON, "-c", LOADERS["ctypes"] + THEN_WAIT, "libc.so.6"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            sampler.sample({"warm": proc.pid})
            if sampler.content.settled(proc.pid, PYTHON, [], _key(proc.pid)):
                break
            try:
                sampler.content.wait(5)
            except TimeoutError:
                pass
    finally:
        proc.kill()
        proc.wait()


def _key(pid: int):
    from colab_guard.observe import procfs
    return (pid, procfs.start_time(pid))  # on the guard's fixed boot time, as its keys


@pytest.fixture
def sampler():
    sampler = ProcessSampler()
    _warm(sampler)
    yield sampler
    sampler.content.close()


def _detect(sampler: ProcessSampler, pid: int, engine: Engine, timeout: float):
    """Sample every 0.1 s (the hook's burst) until a detection; (seconds, detections)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        found = [d for s in sampler.sample({"k": pid}).values() for d in engine.evaluate(s)]
        if found:
            return time.monotonic() - started, found
        time.sleep(0.1)
    return None, []


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_renamed_libtorrent_loaded_in_a_subprocess_is_a_torrent_client_within_two_seconds(
        loader, sampler, tmp_path):
    path = _renamed(tmp_path, _libtorrent())
    engine = Engine(load_signatures(), log=logging.getLogger("test"))
    proc = subprocess.Popen([PYTHON, "-c", LOADERS[loader] + THEN_WAIT, path, "libtorrent"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"loaded\n"
        seconds, found = _detect(sampler, proc.pid, engine, timeout=10)
        assert seconds is not None and seconds < 2.0, (seconds, sampler.content.stats)
        assert {d.signature.id for d in found} == {"torrent-library-loaded"}
        assert {d.signature.category for d in found} == {"torrenting"}
    finally:
        proc.kill()
        proc.wait()


def _honest_copies(tmp_path) -> list[tuple[str, str, str]]:
    """(loader, copy, module name) of honest libraries, renamed as the attack renames."""
    copies = []
    math = importlib.util.find_spec("math").origin
    if math and math.endswith(".so"):
        copies.append(("importlib", _renamed(tmp_path, math, "fastmath.so"), "math"))
    # numpy's OpenBLAS with the libraries it needs beside it ($ORIGIN), under another name
    for source in glob.glob(os.path.join(SITE, "numpy.libs", "*")):
        shutil.copy(source, tmp_path)
    for blas in glob.glob(str(tmp_path / "libscipy_openblas*.so")):
        os.rename(blas, tmp_path / "linalg.so")
        copies.append(("ctypes", str(tmp_path / "linalg.so"), ""))
    sources = ["/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "/usr/lib/x86_64-linux-gnu/libcurl.so.4"]
    for i, source in enumerate(s for s in sources if os.path.exists(s)):
        copies.append(("ctypes", _renamed(tmp_path, source, f"helper{i}.so"), ""))
    return copies


def test_honest_libraries_loaded_the_same_way_are_left_alone(sampler, tmp_path):
    engine = Engine(load_signatures(), log=logging.getLogger("test"))
    copies = _honest_copies(tmp_path)
    assert len(copies) >= 3, copies
    procs = [subprocess.Popen([PYTHON, "-c", LOADERS[loader] + THEN_WAIT, path, module],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
             for loader, path, module in copies]
    try:
        for proc in procs:
            assert proc.stdout.readline() == b"loaded\n"
        deadline = time.monotonic() + 60
        while True:  # until every copy was scanned (each process settled)
            snapshots = sampler.sample({str(p.pid): p.pid for p in procs})
            detections = [d for s in snapshots.values() for d in engine.evaluate(s)]
            assert detections == []
            if all(sampler.content.settled(p.pid, PYTHON, [], _key(p.pid)) for p in procs):
                break
            assert time.monotonic() < deadline, sampler.content.stats
            time.sleep(0.1)
        scanned = {path for _, path, _ in copies}
        assert scanned <= {path for libs in sampler.content._libraries.values()
                           for _, path, _ in libs.files}
        for snapshot in sampler.sample({str(p.pid): p.pid for p in procs}).values():
            assert [p.exe_markers for p in snapshot.processes] == [[]]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_library_is_scanned_once_for_every_process_that_loads_it(tmp_path):
    scanner = ContentScanner(background=False, memory_after=0.0)
    path = _renamed(tmp_path, _libtorrent())
    procs = [subprocess.Popen([PYTHON, "-c", LOADERS["ctypes"] + THEN_WAIT, path],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(2)]
    try:
        for proc in procs:
            proc.stdout.readline()
        for proc in procs:
            scanner.settled(proc.pid, PYTHON, [], _key(proc.pid))
            assert "libtorrent" in scanner.process_markers(proc.pid, PYTHON, [], _key(proc.pid))
        scanned = [k for k in scanner._cache if k[1] == os.stat(path).st_ino]
        assert len(scanned) == 1
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- in a real kernel


def _scans_idle(guard) -> bool:
    content = guard.monitor.sampler.content
    return not content._jobs and content._running is None


def _torrent_incidents(guard_config) -> list[dict]:
    return [i for i in incidents_in(guard_config["incident_log"]) if i["category"] == "torrenting"]


def _load_cell(loader: str, path: str, module: str = "libtorrent") -> str:
    return f"import sys\nsys.argv = ['-c', {path!r}, {module!r}]\n" + LOADERS[loader]


async def _ready(guard, kernel) -> None:
    """The hook on its channel and the kernel's own libraries scanned, as on a server that has
    watched the kernel a while."""
    await wait_for(lambda: guard.channel.connected(kernel.kernel_id), timeout=30)
    await wait_for(lambda: guard.monitor.sampler.content.stats["library_looks"] >= 1, timeout=30)
    await wait_for(lambda: _scans_idle(guard), timeout=60)


@pytest.mark.integration
@pytest.mark.parametrize("loader", sorted(LOADERS))
async def test_renamed_libtorrent_loaded_in_a_real_kernel_is_recognised_within_two_seconds(
        loader, guard, kernel, guard_config, tmp_path):
    path = _renamed(tmp_path, _libtorrent())
    await _ready(guard, kernel)
    reply, _ = await kernel.run(_load_cell(loader, path))
    loaded = time.monotonic()
    assert reply["status"] == "ok", reply
    found = await wait_for(lambda: _torrent_incidents(guard_config), timeout=30, interval=0.05)
    assert time.monotonic() - loaded < 2.0
    assert "torrent-library-loaded" in {s for i in found for s in i["signatures"]}, found
    # A library cannot be unloaded: the kernel is interrupted at once, and shut down when it
    # still holds it past the policy's KERNEL_GRACE, in the same incident (one offence, one
    # incident, one strike): nothing else.
    await wait_for(lambda: _kernel_shut_down(guard_config), timeout=30)
    assert [(i["signature"], i["user"], i["kernel_id"], _kernel_actions(i))
            for i in _torrent_incidents(guard_config)] == [
        ("torrent-library-loaded", SERVER_USER, kernel.kernel_id,
         [("interrupt", "done"), ("shutdown", "done")])]
    assert [(i["strike"], "escalation" in i["evidence"]) for i in _torrent_incidents(
        guard_config)] == [(True, True)]
    assert [i for i in incidents_in(guard_config["incident_log"])
            if i["category"] != "torrenting"] == []


def _kernel_actions(incident: dict) -> list[tuple[str, str]]:
    return [(a["action"], a["outcome"]) for a in incident["actions"] if a["target"] == "kernel"]


def _kernel_shut_down(guard_config) -> bool:
    return any(("shutdown", "done") in _kernel_actions(i) for i in _torrent_incidents(guard_config))


@pytest.mark.integration
async def test_renamed_libtorrent_loaded_by_a_kernels_subprocess_is_recognised_within_two_seconds(
        guard, kernel, guard_config, tmp_path):
    path = _renamed(tmp_path, _libtorrent(), "blas_kernels.bin")  # any name loads
    await _ready(guard, kernel)
    code = LOADERS["ctypes"] + THEN_WAIT
    reply, outputs = await kernel.run(
        "import subprocess\n"
        f"p = subprocess.Popen([{PYTHON!r}, '-c', {code!r}, {path!r}], stdin=subprocess.PIPE,"
        " stdout=subprocess.PIPE)\n"
        "print(p.stdout.readline().decode().strip(), p.pid)\n")
    loaded = time.monotonic()
    assert reply["status"] == "ok" and "loaded" in kernel.text(outputs), outputs
    found = await wait_for(lambda: _torrent_incidents(guard_config), timeout=30, interval=0.05)
    assert time.monotonic() - loaded < 2.0
    pid = int(kernel.text(outputs).split()[-1])
    assert "torrent-library-loaded" in {s for i in found for s in i["signatures"]}, found
    assert pid in {p["pid"] for i in found for p in i["evidence"]["processes"]}, found
    # one incident, naming the user and the kernel; the loader stopped
    incident, = found
    assert (incident["user"], incident["kernel_id"]) == (SERVER_USER, kernel.kernel_id)
    await wait_for(lambda: _incident_done(guard_config, incident["id"]), timeout=15)
    await wait_for(lambda: not _alive(pid), timeout=15)
    assert len(_torrent_incidents(guard_config)) == 1, _torrent_incidents(guard_config)


def _incident_done(guard_config, incident_id: str) -> dict | None:
    return next((i for i in incidents_in(guard_config["incident_log"])
                 if i["id"] == incident_id and i["status"] == "done"), None)


@pytest.mark.integration
async def test_honest_libraries_loaded_in_a_real_kernel_are_left_alone(guard, kernel,
                                                                       guard_config, tmp_path):
    copies = _honest_copies(tmp_path)
    await _ready(guard, kernel)
    for loader, path, module in copies:
        reply, _ = await kernel.run(_load_cell(loader, path, module))
        assert reply["status"] == "ok", reply
    content = guard.monitor.sampler.content

    def looked_at() -> set[str]:
        return {path for libs in list(content._libraries.values()) for _, path, _ in libs.files}

    # every copy seen mapped, every scan done, and two ticks after that for the engine
    await wait_for(lambda: {path for _, path, _ in copies} <= looked_at(), timeout=30)
    await wait_for(lambda: _scans_idle(guard), timeout=60)
    ticks = guard.monitor.ticks
    await wait_for(lambda: guard.monitor.ticks >= ticks + 2, timeout=30)
    assert incidents_in(guard_config["incident_log"]) == []


# ---------------------------------------------------------------- when a process is looked at

COMMANDS = ("import ctypes, sys\nkept = []\nprint('ready', flush=True)\n"
            "for line in sys.stdin:\n"
            "    if line.startswith('alloc'):\n"
            "        kept.append(bytearray(256 << 20))\n"
            "    else:\n"
            "        ctypes.CDLL(line.strip())\n"
            "    print('done', flush=True)\n")


def test_a_process_is_looked_at_again_when_it_loads_a_library_not_when_it_allocates(tmp_path):
    """Its executable memory (VmLib) tells: a busy numpy process allocating arrays is not
    read again and again; one that loads a library is, at once."""
    scanner = ContentScanner(background=False, memory_after=0.0, libraries_recheck=0.0)
    path = _renamed(tmp_path, _libtorrent())
    proc = subprocess.Popen([PYTHON, "-c", COMMANDS], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)

    def ask(command: str) -> list[str]:
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "done\n"
        scanner.settled(proc.pid, PYTHON, [], key)
        return scanner.process_markers(proc.pid, PYTHON, [], key)

    try:
        assert proc.stdout.readline() == "ready\n"
        key = _key(proc.pid)
        scanner.settled(proc.pid, PYTHON, [], key)
        looks = scanner.stats["library_looks"]
        assert "libtorrent" not in ask("alloc")
        assert scanner.stats["library_looks"] == looks  # its size changed, its code did not
        assert "libtorrent" in ask(path)
        assert scanner.stats["library_looks"] == looks + 1
    finally:
        proc.kill()
        proc.wait()


def test_the_kernel_hook_reports_a_library_loaded_at_once(tmp_path):
    """ctypes.dlopen, under any name: an urgent event (the sender writes at once and the server
    checks at once), with the path it loaded."""
    code = ("import ctypes, sys\nfrom colab_guard.kernel.hook import install\n"
            "reporter = install()\nctypes.CDLL(sys.argv[1])\n"
            "print(reporter.wake.is_set(), reporter.drain())\n")
    path = _renamed(tmp_path, "/usr/lib/x86_64-linux-gnu/libz.so.1", "weights.bin")
    out = subprocess.run([PYTHON, "-c", code, path], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.startswith("True ") and f"['load', '{path}']" in out, out
