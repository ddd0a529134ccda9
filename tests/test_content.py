"""Executable content scanning: real tools are recognised by their files' content, renamed or not,
and the programs honest notebooks run (interpreters, compilers, shells, ML libraries) never are."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import time

import pytest

from colab_guard.observe.content import (CHUNK, MARKERS, ContentScanner, MarkerSearch, reported,
                                         scan_file, script_path)
from colab_guard.observe.processes import ProcessSampler
from tests.conftest import PYTHON, STANDINS

IN_CI = os.environ.get("CI") == "true"


def _benign_files() -> list[str]:
    """Interpreters, shells, compilers and the ML and crypto libraries on this machine."""
    candidates = [os.path.realpath(sys.executable)]
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    candidates += glob.glob(os.path.join(libdir, "libpython3*.so*"))
    for program in ("python3", "node", "bash", "sh", "gcc", "cc", "perl", "git", "curl", "pip",
                    "ssh", "tar", "make"):
        found = shutil.which(program)
        if found:
            candidates.append(os.path.realpath(found))
    candidates += glob.glob("/usr/lib/gcc/x86_64-linux-gnu/*/cc1")
    site = sysconfig.get_paths()["purelib"]
    candidates += glob.glob(os.path.join(site, "numpy", "_core", "*.so"))
    candidates += glob.glob(os.path.join(site, "numpy.libs", "*.so*"))
    candidates += glob.glob(os.path.join(site, "zmq", "*.so"))
    candidates += glob.glob(os.path.join(site, "torch", "lib", "libtorch_cpu.so"))
    for lib in ("libcrypto.so.3", "libssl.so.3", "libcurl-gnutls.so.4", "libz.so.1", "libzmq.so.5"):
        candidates += glob.glob(f"/usr/lib/x86_64-linux-gnu/{lib}")
    return sorted({c for c in candidates if os.path.isfile(c)})


def test_interpreters_compilers_shells_and_ml_libraries_carry_no_markers():
    files = _benign_files()
    assert len(files) >= 6, files  # the check means something only if it scanned real programs
    found = {f: reported(scan_file(f, 64 << 20)) for f in files}
    assert {f: m for f, m in found.items() if m} == {}


#: Real tools (Debian bookworm, benchmarks/scenarios/install.sh) and the marker each must carry.
REAL_TOOLS = {
    "nmap": "nmap", "hashcat": "hashcat", "john": "john", "hydra": "hydra", "dropbear": "dropbear",
    "microsocks": "microsocks", "tor": "tor", "hping3": "hping3", "slowhttptest": "slowhttptest",
    "ctorrent": "ctorrent", "rtorrent": "rtorrent", "qbittorrent-nox": "qbittorrent",
    "transmission-cli": "bittorrent", "aria2c": "aria2",
}
#: The small set .ci/run installs; missing in CI is a failure, not a skip.
CI_TOOLS = {"dropbear", "microsocks", "ctorrent"}


def _tool(program: str) -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if found is None:
        if IN_CI and program in CI_TOOLS:
            pytest.fail(f"{program} is not installed (benchmarks/scenarios/install.sh --small)")
        pytest.skip(f"{program} is not installed (benchmarks/scenarios/install.sh)")
    return os.path.realpath(found)


@pytest.mark.parametrize("program", sorted(REAL_TOOLS))
def test_real_tools_carry_their_marker(program):
    assert REAL_TOOLS[program] in scan_file(_tool(program), 64 << 20)


def test_every_marker_needs_at_least_one_needle_it_lists():
    for marker in MARKERS:
        assert 1 <= marker.need <= len(marker.needles), marker.name


def test_a_marker_split_across_two_chunks_is_found(tmp_path):
    needle = b"MicroSocks SOCKS5 Server"
    blob = tmp_path / "blob"
    blob.write_bytes(b"\0" * (CHUNK - 10) + needle + b"\0" * 100)
    assert scan_file(str(blob), 4 * CHUNK) == ["microsocks"]


def test_only_max_bytes_are_read(tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(b"\0" * (2 * CHUNK) + b"hping3 listen mode")
    assert scan_file(str(blob), CHUNK) == []
    assert scan_file(str(blob), 3 * CHUNK) == ["hping3"]


def test_markers_that_need_two_needles_ignore_one(tmp_path):
    one = tmp_path / "one"
    one.write_bytes(b"see Nmap.Org for details")
    two = tmp_path / "two"
    two.write_bytes(b"Nmap.Org ... nmap-service-probes")
    assert scan_file(str(one), CHUNK) == []
    assert scan_file(str(two), CHUNK) == ["nmap"]


def test_search_finds_every_needle_of_every_marker():
    search = MarkerSearch()
    for marker in MARKERS:
        data = b"\0".join(marker.needles)
        assert marker.name in search.markers_for(search.needles_in(data)), marker.name


def test_a_file_is_scanned_once_until_it_changes(tmp_path):
    tool = tmp_path / "tool"
    tool.write_bytes(b"x MicroSocks SOCKS5 Server x")
    scanner = ContentScanner(background=False)
    assert scanner.file_markers(str(tool), CHUNK) == ["microsocks"]
    assert scanner.file_markers(str(tool), CHUNK) == ["microsocks"]
    assert scanner.scans == 1
    copy = tmp_path / "copy"  # a hard link is the same file: no new scan
    os.link(tool, copy)
    assert scanner.file_markers(str(copy), CHUNK) == ["microsocks"]
    assert scanner.scans == 1
    tool.write_bytes(b"x hping3 listen mode x, now longer")
    assert scanner.file_markers(str(tool), CHUNK) == ["hping3"]
    assert scanner.scans == 2


def test_background_scans_report_nothing_until_done_and_never_block(tmp_path):
    tool = tmp_path / "tool"
    tool.write_bytes(b"\0" * (8 * CHUNK) + b"Thank you for using qBittorrent")
    scanner = ContentScanner(background=True)
    try:
        assert scanner.file_markers(str(tool), 16 * CHUNK) == []  # queued, not waited on
        scanner.wait(timeout=30)
        assert scanner.file_markers(str(tool), 16 * CHUNK) == ["qbittorrent"]
        assert scanner.scans == 1
    finally:
        scanner.close()


def test_unreadable_and_special_files_have_no_markers(tmp_path):
    scanner = ContentScanner(background=False)
    assert scanner.file_markers(str(tmp_path / "missing"), CHUNK) == []
    assert scanner.file_markers("/dev/zero", CHUNK) == []
    assert scanner.file_markers(str(tmp_path), CHUNK) == []


@pytest.mark.parametrize("cmdline, expected", [
    (["python3", "miner.py", "-o", "x"], "/proc/7/cwd/miner.py"),
    (["python3", "-u", "/opt/x.py"], "/opt/x.py"),
    (["python3", "-W", "ignore", "run.py"], "/proc/7/cwd/run.py"),
    (["node", "/usr/lib/node_modules/webtorrent-cli/bin/cmd.js"], "/usr/lib/node_modules/webtorrent-cli/bin/cmd.js"),
    (["python3", "-m", "roop"], None),
    (["python3", "-c", "print(1)"], None),
    (["python3"], "/proc/7/fd/0"),  # its standard input (read only if a regular file)
    (["python3", "-u", "-"], "/proc/7/fd/0"),
    (["python3", "-Ic", "print(1)"], None),
    (["gcc", "x.c"], None),
])
def test_script_of_an_interpreter(cmdline, expected):
    assert script_path(7, "/usr/bin/" + cmdline[0], cmdline) == expected


def _wait_markers(sampler: ProcessSampler, pid: int, timeout: float = 30.0,
                  until: str | None = None) -> list[str]:
    """The process's first markers (or the first that hold ``until``: a trait such as
    exe:deleted is known before the scan that finds the tool's own)."""
    deadline = time.monotonic() + timeout
    markers: list[str] = []
    while time.monotonic() < deadline:
        snapshot = sampler.sample({"k": pid})["k"]
        sampler.content.wait(timeout)
        proc = next((p for p in snapshot.processes if p.pid == pid), None)
        markers = proc.exe_markers if proc is not None else []
        if markers and (until is None or until in markers):
            return markers
    return markers


def test_a_renamed_interpreter_is_still_known_as_one():
    assert reported(scan_file(os.path.realpath(PYTHON), 64 << 20)) == []
    assert scan_file(os.path.realpath(PYTHON), 64 << 20) == ["interpreter:python"]


def test_a_miner_script_run_by_a_renamed_interpreter_is_recognised(tmp_path, pool):
    # A copy of the interpreter called kworker runs the stand-in miner from another name.
    kworker = tmp_path / "kworker"
    shutil.copy(os.path.realpath(PYTHON), kworker)
    script = tmp_path / "helper.py"
    script.write_text((STANDINS / "miner.py").read_text().replace(
        "os.path.dirname(os.path.abspath(__file__))", repr(str(STANDINS))))
    proc = subprocess.Popen([str(kworker), "helper.py", "-o", f"127.0.0.1:{pool}", "--seconds", "30"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sampler = ProcessSampler()
    try:
        assert "stratum-miner" in _wait_markers(sampler, proc.pid)
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()


def test_a_real_tool_copied_to_another_name_is_recognised(tmp_path):
    disguised = tmp_path / "dbus-daemon"
    shutil.copy(_tool("microsocks"), disguised)
    proc = subprocess.Popen([str(disguised), "-i", "127.0.0.1", "-p", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sampler = ProcessSampler()
    try:
        assert _wait_markers(sampler, proc.pid) == ["microsocks"]
        disguised.unlink()  # deleted after start: still read through /proc/PID/exe
        sampler.content._cache.clear()
        # (read again, its deletion is a trait beside it, known before the scan is done)
        markers = _wait_markers(sampler, proc.pid, until="microsocks")
        assert markers in (["microsocks"], ["microsocks", "exe:deleted"]), markers
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()


def test_a_system_programs_traits_are_read_once_for_its_life(monkeypatch):
    """exe:new and exe:mounted hold for a process's life (its file and its mounts were fixed
    at its exec): they are looked for once, not at every full read; a process that is gone is forgotten."""
    from colab_guard.observe import content
    reads = []
    real = content.mounted_over
    monkeypatch.setattr(content, "mounted_over",
                        lambda pid, exe: reads.append(pid) or real(pid, exe))
    scanner = ContentScanner(background=False)
    sleeper = subprocess.Popen(["/usr/bin/sleep", "30"])
    try:
        key = (sleeper.pid, 1)
        for _ in range(3):
            found = scanner.process_markers(sleeper.pid, "/usr/bin/sleep", ["sleep", "30"],
                                            key, session=time.time() + 60)
            assert "exe:mounted" not in found and "exe:new" not in found
        assert reads == [sleeper.pid]
        scanner.forget(set())
        scanner.process_markers(sleeper.pid, "/usr/bin/sleep", ["sleep", "30"], key,
                                session=time.time() + 60)
        assert reads == [sleeper.pid, sleeper.pid]
    finally:
        sleeper.kill()
        sleeper.wait()
