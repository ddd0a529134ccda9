"""A library larger than the file scan's bound (``max_bytes``) has its loadable segments past
the bound read from its file, unless an installed package owns it (torch's and CUDA's are
hundreds of MiB in every ML process): real libraries built with gcc and loaded with ctypes in
a real Python process, a scanner whose bound is 1 MiB (the guard's is 64 MiB)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from colab_guard.observe import content, elf, procfs
from colab_guard.observe.content import SCAN_CUT, ContentScanner, SystemPackages
from tests.conftest import PYTHON

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

BOUND = 1 << 20
#: Stratum requests in writable data, which the linker puts after the read-only padding.
MINER_TEXT = ('{"id":1,"method":"mining.subscribe","params":[]}\\n'
              '{"id":2,"method":"mining.authorize","params":["w","x"]}\\n')
#: An honest JSON-RPC client's requests (a language server's), no tool's.
HONEST_TEXT = ('{"jsonrpc":"2.0","id":1,"method":"textDocument/completion"}\\n'
               '{"jsonrpc":"2.0","id":2,"method":"workspace/symbol"}\\n')
LIBRARY_C = """
__attribute__((used)) static const char pad[PAD] = {1};
__attribute__((used)) static char requests[] = "TEXT";
int fast_sum(int a, int b) { return a + b + requests[0]; }
"""
LOAD = ("import ctypes, sys\nctypes.CDLL(sys.argv[1])\nprint('loaded', flush=True)\n"
        "sys.stdin.read()\n")


def _library(path: Path, text: str, pad: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    source = path.with_suffix(".c")
    source.write_text(LIBRARY_C.replace("TEXT", text.replace('"', '\\"')))
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", f"-DPAD={pad}", "-o", str(path),
                    str(source)], check=True)
    return path


def _key(pid: int) -> tuple:
    return pid, procfs.start_time(pid)


def _loaded(scanner: ContentScanner, library: Path) -> tuple[list[str], dict[str, int]]:
    """The markers of a Python process that loaded ``library``, and what its scans cost (the
    change in the scanner's counters, ``bytes_read`` among them)."""
    proc = subprocess.Popen([PYTHON, "-c", LOAD, str(library)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"loaded\n"
        before = {**scanner.stats, "bytes_read": scanner.bytes_read}
        scanner.settled(proc.pid, PYTHON, [], _key(proc.pid))
        markers = scanner.process_markers(proc.pid, PYTHON, [], _key(proc.pid))
        after = {**scanner.stats, "bytes_read": scanner.bytes_read}
        return markers, {k: v - before.get(k, 0) for k, v in after.items()}
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def scanner(tmp_path):
    """A scanner that has read what any Python process loading a library maps (the
    interpreter's own libraries), as the guard has long done by the time a kernel loads one."""
    scanner = ContentScanner(background=False, memory_after=0.0, max_bytes=BOUND)
    _loaded(scanner, _library(tmp_path / "warm" / "libwarm.so", HONEST_TEXT, 16))
    yield scanner
    scanner.close()


def _installed(site: Path, library: Path) -> None:
    """``library`` as a distribution installs it: listed with its hash and size in the RECORD
    of a dist-info folder of a virtual environment's site folder, written after it."""
    data = library.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    dist_info = site / "fastpkg-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fastpkg\nVersion: 1.0\n")
    (dist_info / "RECORD").write_text(
        f"{library.relative_to(site)},sha256={digest},{len(data)}\n"
        "fastpkg-1.0.dist-info/RECORD,,\n")


def _environment(tmp_path: Path) -> Path:
    """The site folder of a virtual environment (its pyvenv.cfg)."""
    site = tmp_path / "env" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (tmp_path / "env" / "pyvenv.cfg").write_text("include-system-site-packages = false\n")
    return site


# ---------------------------------------------------------------- what is mapped of it


def test_the_loaded_ranges_are_the_segments_the_loader_maps(tmp_path):
    """The requests (in .data, past the padding) lie in a loaded range; the section headers,
    which no loader maps, in none."""
    library = _library(tmp_path / "libfast.so", MINER_TEXT, 2 * BOUND)
    data = library.read_bytes()
    with open(library, "rb") as f:
        ranges = elf.loaded_ranges(f.fileno(), data[:4096], len(data))
        assert elf.loaded_ranges(f.fileno(), b"#!/bin/sh\n" + data[10:4096], len(data)) is None
    requests = data.index(b"mining.subscribe")
    section_headers = int.from_bytes(data[0x28:0x30], "little")
    assert requests > 2 * BOUND
    assert any(start <= requests < end for start, end in ranges), ranges
    assert not any(start <= section_headers < end for start, end in ranges), ranges


# ---------------------------------------------------------------- read past the bound


def test_an_unowned_librarys_segments_past_the_bound_are_read_once(scanner, tmp_path):
    library = _library(tmp_path / "libfast.so", MINER_TEXT, 2 * BOUND)
    markers, cost = _loaded(scanner, library)
    assert "stratum-miner" in markers and SCAN_CUT not in markers, markers
    assert cost["library_tails"] == 1 and cost["library_tail_bytes"] > BOUND, cost
    markers, cost = _loaded(scanner, library)  # another process: from the cache
    assert "stratum-miner" in markers
    assert cost["library_tails"] == 0 and cost["bytes_read"] == 0, cost


def test_a_library_first_read_as_a_program_is_read_past_the_bound_once_loaded(scanner,
                                                                              tmp_path):
    """Run once as a program (its memory scan reads the rest), its file's scan stops at the
    bound; that scan, cached, does not stand for the library's."""
    library = _library(tmp_path / "libfast.so", MINER_TEXT, 2 * BOUND)
    assert scanner.file_markers(str(library), BOUND) == []
    markers, cost = _loaded(scanner, library)
    assert "stratum-miner" in markers, markers
    assert cost["library_tails"] == 1, cost


def test_a_library_past_the_tail_budget_is_cut(scanner, tmp_path, monkeypatch):
    """More loaded bytes past the bound than ``LIBRARY_TAIL_BYTES`` (1 MiB here, 256 MiB in
    the guard): the requests after them are not read, and the process carries scan:cut."""
    monkeypatch.setattr(content, "LIBRARY_TAIL_BYTES", BOUND)
    markers, cost = _loaded(scanner, _library(tmp_path / "libfast.so", MINER_TEXT, 3 * BOUND))
    assert SCAN_CUT in markers and "stratum-miner" not in markers, markers
    assert cost["library_tail_bytes"] == BOUND, cost


# ---------------------------------------------------------------- near-misses


def test_a_big_honest_unowned_library_is_read_past_the_bound_and_carries_nothing(scanner,
                                                                                tmp_path):
    markers, cost = _loaded(scanner, _library(tmp_path / "libfast.so", HONEST_TEXT, 2 * BOUND))
    assert markers == []
    assert cost["library_tails"] == 1 and cost["library_tail_bytes"] > BOUND, cost


def test_a_packages_big_library_is_not_read_past_the_bound(scanner, tmp_path):
    """Listed in its distribution's RECORD (as torch's and the nvidia-* wheels' are): the
    bound's worth of it is read, no more."""
    site = _environment(tmp_path)
    library = _library(site / "fastpkg" / "libfast.so", HONEST_TEXT, 2 * BOUND)
    _installed(site, library)
    markers, cost = _loaded(scanner, library)
    assert markers == []
    assert cost["library_tails_owned"] == 1 and cost["library_tail_bytes"] == 0, cost
    assert cost["bytes_read"] == BOUND, cost


def test_a_packages_library_changed_after_its_install_is_read_past_the_bound(scanner,
                                                                             tmp_path):
    """A miner written over a package's library (the same size, so RECORD's size matches):
    changed after the RECORD was written, no package's file any more."""
    site = _environment(tmp_path)
    library = _library(site / "fastpkg" / "libfast.so", HONEST_TEXT, 2 * BOUND)
    _installed(site, library)
    miner = _library(tmp_path / "miner" / "libfast.so", MINER_TEXT, 2 * BOUND)
    assert miner.stat().st_size <= library.stat().st_size
    data = miner.read_bytes().ljust(library.stat().st_size, b"\0")
    record = site / "fastpkg-1.0.dist-info" / "RECORD"
    while library.stat().st_ctime <= record.stat().st_ctime:  # (a coarse clock's same tick)
        library.write_bytes(data)
    markers, cost = _loaded(scanner, library)
    assert "stratum-miner" in markers, markers
    assert cost["library_tails_owned"] == 0 and cost["library_tails"] == 1, cost


def test_dpkgs_libraries_are_owned_outside_the_system_folders_too_while_unchanged(tmp_path):
    """CUDA's debs install under /usr/local; coreutils' libstdbuf.so, under /usr/libexec, stands
    in for them here. Changed since the session began, or a copy, it is no package's."""
    library = "/usr/libexec/coreutils/libstdbuf.so"
    if not os.path.exists(library) or not os.path.isdir("/var/lib/dpkg/info"):
        pytest.skip("not a dpkg system with coreutils' libstdbuf.so")
    packages, st = SystemPackages(), os.stat(library)
    assert content.package_owned(library, st, None, packages)
    assert content.package_owned(library, st, st.st_ctime + 1, packages)
    assert not content.package_owned(library, st, st.st_ctime - 1, packages)
    copy = shutil.copy(library, tmp_path / "libstdbuf.so")
    assert not content.package_owned(str(copy), os.stat(copy), None, packages)


def _conda_installed(prefix: Path, library: Path) -> Path:
    """``library`` as conda installs it: listed with its size in its package's record in the
    environment's conda-meta folder, written after it (as conda links a package's files
    first, then writes its record)."""
    meta = prefix / "conda-meta"
    meta.mkdir(exist_ok=True)
    record = meta / "fastlib-1.0-0.json"
    record.write_text(json.dumps({"name": "fastlib", "version": "1.0", "paths_data": {
        "paths_version": 1, "paths": [{"_path": str(library.relative_to(prefix)),
                                       "path_type": "hardlink",
                                       "size_in_bytes": library.stat().st_size}]}}))
    return record


def test_a_conda_environments_big_library_is_not_read_past_the_bound(scanner, tmp_path):
    """A conda environment's libraries (lib/, torch's and CUDA's) are in no RECORD: its
    conda-meta record lists them. The bound's worth is read, no more."""
    prefix = tmp_path / "conda-env"
    library = _library(prefix / "lib" / "libfast.so", HONEST_TEXT, 2 * BOUND)
    _conda_installed(prefix, library)
    markers, cost = _loaded(scanner, library)
    assert markers == []
    assert cost["library_tails_owned"] == 1 and cost["library_tail_bytes"] == 0, cost


def test_a_library_beside_a_conda_record_that_does_not_list_it_is_read(scanner, tmp_path):
    """A miner dropped into a conda environment's lib/ (no record lists it), and one written
    over a listed library after its record: both read past the bound, both named."""
    prefix = tmp_path / "conda-env"
    listed = _library(prefix / "lib" / "libfast.so", HONEST_TEXT, 2 * BOUND)
    record = _conda_installed(prefix, listed)
    dropped = _library(prefix / "lib" / "libextra.so", MINER_TEXT, 2 * BOUND)
    markers, cost = _loaded(scanner, dropped)
    assert "stratum-miner" in markers, markers
    assert cost["library_tails_owned"] == 0, cost
    data = _library(tmp_path / "miner" / "libfast.so", MINER_TEXT, 2 * BOUND).read_bytes()
    assert len(data) <= listed.stat().st_size
    while listed.stat().st_ctime <= record.stat().st_ctime:  # (a coarse clock's same tick)
        listed.write_bytes(data.ljust(listed.stat().st_size, b"\0"))
    markers, cost = _loaded(scanner, listed)
    assert "stratum-miner" in markers, markers
    assert cost["library_tails_owned"] == 0 and cost["library_tails"] == 1, cost
