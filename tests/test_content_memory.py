"""Identity from memory: a packed tool, whose file shows none of its strings, is recognised by
what it carries once it runs; packers, memfd and deleted executables, and memory that cannot be
read are evidence in their own right; honest programs show nothing new. Real programs, packed
with Debian's real upx-ucl."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time

import pytest

from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe import content
from colab_guard.observe.content import (EXE_DELETED, EXE_MEMFD, MEMORY_UNREADABLE, PACKED_UPX,
                                         TRAITS, ContentScanner, code_regions, parse_maps,
                                         reported, scan_file, scan_memory)
from colab_guard.observe.processes import ProcessSampler
from colab_guard.observe import procfs
from tests.conftest import PYTHON

IN_CI = os.environ.get("CI") == "true"


def _program(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed (benchmarks/scenarios/install.sh --small)")
        pytest.skip(f"{name} is not installed (benchmarks/scenarios/install.sh --small)")
    return os.path.realpath(found)


def _packed(tool: str, tmp_path, name: str) -> str:
    """A UPX-packed copy of a real tool under a neutral name."""
    upx = _program("upx-ucl")
    plain = tmp_path / (name + ".plain")
    shutil.copy(_program(tool), plain)
    packed = tmp_path / name
    subprocess.run([upx, "-q", "-f", str(plain), "-o", str(packed)], check=True,
                   stdout=subprocess.DEVNULL)
    return str(packed)


def _markers(sampler: ProcessSampler, pid: int, want, timeout: float = 20.0) -> list[str]:
    """Sample until ``want(markers)`` holds (or time runs out); the last markers seen."""
    deadline, markers = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        snapshot = sampler.sample({"k": pid})["k"]
        proc = next((p for p in snapshot.processes if p.pid == pid), None)
        markers = proc.exe_markers if proc is not None else []
        if want(markers):
            return markers
        try:
            sampler.content.wait(max(0.0, deadline - time.monotonic()))
        except TimeoutError:  # the libraries it mapped still being scanned: sampled again
            pass
        time.sleep(0.05)  # polling the process's state
    return markers


@pytest.mark.parametrize("tool, marker, argv", [
    ("microsocks", "microsocks", ["-i", "127.0.0.1", "-p", "0"]),
    ("dropbear", "dropbear", ["-F", "-E", "-R", "-p", "127.0.0.1:0", "-P", "/dev/null"]),
])
def test_a_upx_packed_tool_under_a_neutral_name_is_recognised_from_memory(tool, marker, argv,
                                                                          tmp_path):
    packed = _packed(tool, tmp_path, "dbus-helper")
    assert marker not in scan_file(packed, 64 << 20)  # packing hides every string in the file
    proc = subprocess.Popen([packed, *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    sampler = ProcessSampler()
    try:
        started = time.monotonic()
        # (each as its scan ends: the file's trait and the memory's marker)
        markers = _markers(sampler, proc.pid, lambda m: marker in m and PACKED_UPX in m)
        assert marker in markers and PACKED_UPX in markers, markers
        assert time.monotonic() - started < 5.0
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()


def test_a_packed_socks_proxy_is_stopped_within_two_seconds(tmp_path):
    """The whole path: sampler, memory scan, engine: a detection within 2 s of the start."""
    packed = _packed("microsocks", tmp_path, "kworker")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sampler = ProcessSampler()
    engine = Engine(load_signatures(), log=logging.getLogger("test"))
    proc = subprocess.Popen([packed, "-i", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started, found = time.monotonic(), None
    try:
        while found is None and time.monotonic() - started < 10:
            for snapshot in sampler.sample({"k": proc.pid}).values():
                for d in engine.evaluate(snapshot):
                    if d.signature.category == "proxy":
                        found = time.monotonic() - started
            time.sleep(0.1)  # the guard's interval, shortened
        assert found is not None and found < 2.0, found
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()


def test_the_upx_header_is_a_trait_of_the_file(tmp_path):
    packed = _packed("microsocks", tmp_path, "helper")
    scanner = ContentScanner(background=False)
    assert scanner.file_markers(packed, 64 << 20) == [PACKED_UPX, content.PACKED_ENTROPY]
    assert scanner.file_markers(_program("microsocks"), 64 << 20) == ["microsocks"]


MEMFD_RUNNER = """
import os, sys
fd = os.memfd_create("worker")
os.write(fd, open(sys.argv[1], "rb").read())
os.execve(fd, [sys.argv[1], "60"], dict(os.environ))
"""


def test_an_executable_run_from_a_memfd_is_a_trait():
    proc = subprocess.Popen([PYTHON, "-c", MEMFD_RUNNER, shutil.which("sleep")])
    sampler = ProcessSampler()
    try:
        markers = _markers(sampler, proc.pid, lambda m: EXE_MEMFD in m)
        assert EXE_MEMFD in markers and reported(markers) == []
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()


def test_a_deleted_executable_is_a_trait(tmp_path):
    """Seen at its next full read: at once for a process that runs (an idle one at its quiet
    refresh)."""
    copy = tmp_path / "update-notifier"
    shutil.copy(os.path.realpath(PYTHON), copy)
    proc = subprocess.Popen([str(copy), "-c", "import time\nwhile True: time.sleep(0.02)"])
    sampler = ProcessSampler()
    try:
        assert EXE_DELETED not in _markers(sampler, proc.pid, lambda m: False, timeout=0.5)
        copy.unlink()
        assert EXE_DELETED in _markers(sampler, proc.pid, lambda m: EXE_DELETED in m)
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()


# What honest notebooks run: interpreters with their libraries loaded, a compiler, a download,
# a shell. Their memory must show no tool and no trait (not even one that says nothing alone).
HONEST = {
    "python": [PYTHON, "-c", "import time\nprint('up', flush=True)\ntime.sleep(60)"],
    "numpy": [PYTHON, "-c", "import numpy, json, ssl, sqlite3, ctypes, time\n"
              "a = numpy.ones((256, 256)) @ numpy.ones((256, 256))\n"
              "print('up', flush=True)\ntime.sleep(60)"],
    # a detector that lists the Stratum method names, and a script citing hashcat.net: in the
    # interpreter's heap, which is never read (what runs is its script, scanned as a file)
    "detector": [PYTHON, "-c", "import time\nNAMES = ['mining.subscribe', 'mining.authorize',"
                 " 'mining.submit'] * 1000  # see hashcat.net\n"
                 "print('up', flush=True)\ntime.sleep(60)"],
    "bash": ["bash", "-c", "echo up; read x"],
    "sleep": ["bash", "-c", "echo up; exec sleep 60"],
}


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_programs_show_nothing_in_memory(name):
    proc = subprocess.Popen(HONEST[name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout.readline() == b"up\n"
    scanner = ContentScanner(background=False, memory_after=0.0)
    sampler = ProcessSampler(content=scanner)
    try:
        snapshot = sampler.sample({"k": proc.pid})["k"]
        sample = next(p for p in snapshot.processes if p.pid == proc.pid)
        assert scanner.stats["memory_scans"] >= 1 or scanner.stats["vanished"]
        assert [m for m in sample.exe_markers if m != EXE_DELETED] == []
    finally:
        proc.kill()
        proc.wait()


def test_honest_compilers_and_downloads_show_nothing_in_memory(tmp_path):
    """gcc and curl, read while they run (stopped mid-work, so the read is certain)."""
    source = tmp_path / "x.c"
    source.write_text("int main(void) { return 0; }\n")
    (tmp_path / "page").write_bytes(b"MicroSocks SOCKS5 Server mining.subscribe mining.notify")
    server = subprocess.Popen([PYTHON, "-m", "http.server", "-b", "127.0.0.1", "0"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = server.stdout.readline().decode()
    port = int(line.split("port ")[1].split()[0])
    programs = []
    if shutil.which("curl"):
        programs.append(["curl", "-s", "--limit-rate", "1", "-o", "/dev/null",
                         f"http://127.0.0.1:{port}/page"])
    if shutil.which("gcc"):
        programs.append(["gcc", "-o", str(tmp_path / "x"), str(source)])
    if not programs:
        pytest.skip("neither curl nor gcc is installed")
    try:
        for argv in programs:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            os.kill(proc.pid, 19)  # SIGSTOP: read as it is, however quick it is
            try:
                scanner = ContentScanner(background=False, memory_after=0.0)
                sampler = ProcessSampler(content=scanner)
                snapshot = sampler.sample({"k": proc.pid})["k"]
                found = {p.name: p.exe_markers for p in snapshot.processes}
                assert all(m == [] for m in found.values()), (argv, found)
            finally:
                proc.kill()
                proc.wait()
    finally:
        server.kill()
        server.wait()


# ------------------------------------------------------------ an abuser who knows the code

CHANGER = """
import ctypes, mmap, sys, time
print('up', flush=True)
sys.stdin.readline()
# Now decrypt a tool's strings into fresh anonymous memory, made read-only, as a packer would.
region = mmap.mmap(-1, 8192, flags=mmap.MAP_SHARED if sys.argv[1] == "shared" else mmap.MAP_PRIVATE)
region.write(b"MicroSocks SOCKS5 Server".ljust(8192, b"\\0"))
libc = ctypes.CDLL(None)
address = ctypes.addressof(ctypes.c_char.from_buffer(region))
libc.mprotect(ctypes.c_void_p(address), 8192, 1)  # PROT_READ
print('changed', flush=True)
time.sleep(60)
"""


def _found_after_it_unpacks(sharing: str, scanner: ContentScanner, timeout: float) -> bool:
    """Run CHANGER; once its first memory scan found nothing, have it unpack: whether the
    scanner then finds the tool within ``timeout`` s."""
    proc = subprocess.Popen([PYTHON, "-c", CHANGER, sharing], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout.readline() == b"up\n"
    sampler = ProcessSampler(content=scanner)
    try:
        assert _markers(sampler, proc.pid, lambda m: scanner.stats["memory_scans"] >= 1) == []
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"changed\n"
        return "microsocks" in _markers(sampler, proc.pid, lambda m: "microsocks" in m,
                                        timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
        scanner.close()


@pytest.mark.parametrize("sharing", ["private", "shared"])
def test_a_process_that_unpacks_after_its_first_scan_is_scanned_again(sharing):
    assert _found_after_it_unpacks(
        sharing, ContentScanner(memory_after=0.0, memory_recheck=0.2), timeout=20.0)


def test_a_process_that_unpacks_late_is_looked_at_again_soon_not_at_the_recheck_period():
    """A packed tool starved of CPU on a loaded machine has not unpacked itself at its first
    look (CI: found 5.5 s after its start, at the next period): the looks after the first come
    soon, then less often (here the period is a minute; the change is found long before)."""
    assert _found_after_it_unpacks(
        "private", ContentScanner(memory_after=0.2, memory_recheck=60.0), timeout=30.0)


def test_a_process_that_exits_or_whose_pid_is_taken_mid_scan_is_no_error():
    proc = subprocess.Popen(["sleep", "60"])
    start = procfs.read_stat(proc.pid).start
    with pytest.raises(ProcessLookupError):  # the pid names another process now
        scan_memory(proc.pid, start + 1, "/usr/bin/sleep", False, 1 << 20, time.monotonic() + 5)
    proc.kill()
    proc.wait()
    with pytest.raises((ProcessLookupError, FileNotFoundError)):
        scan_memory(proc.pid, start, "/usr/bin/sleep", False, 1 << 20, time.monotonic() + 5)
    scanner = ContentScanner(background=False, memory_after=0.0)
    assert scanner.settled(proc.pid, "/usr/bin/sleep", ["sleep", "60"], (proc.pid, 1.0))
    assert scanner.process_markers(proc.pid, "/usr/bin/sleep", ["sleep"], (proc.pid, 1.0)) == []


NOT_DUMPABLE = """
import ctypes, time
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: its memory closed to its own user
print('up', flush=True)
time.sleep(60)
"""

READER = """
import json, os, sys
sys.path[:0] = [sys.argv[2], sys.argv[4]]
from colab_guard.observe.content import ContentScanner
pid = int(sys.argv[1])
scanner = ContentScanner(background=False, memory_after=0.0)
create = float(sys.argv[3])
scanner.settled(pid, '', [], (pid, create))
print(json.dumps(scanner.process_markers(pid, '', [], (pid, create))))
"""


def test_memory_that_cannot_be_read_is_evidence_not_a_blind_spot():
    """A server running as the user reads its kernels' memory; a process that made itself not
    dumpable cannot be read, and says so (as root everything can be read: the reader and the
    process run here as an unprivileged user)."""
    if os.getuid() != 0:
        pytest.skip("needs root to run both sides as another user")
    import pwd
    nobody = pwd.getpwnam("nobody")

    def demote():
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    # The system's Python (this one may live where nobody cannot reach), with this checkout
    # and its virtual environment's packages.
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system is None:
        pytest.skip("no /usr/bin/python3 to run as another user")
    root = os.path.dirname(os.path.dirname(os.path.abspath(content.__file__)))
    site = os.path.dirname(os.path.dirname(os.path.abspath(__import__("re2").__file__)))
    target = subprocess.Popen([system, "-c", NOT_DUMPABLE], stdout=subprocess.PIPE,
                              preexec_fn=demote)
    try:
        assert target.stdout.readline() == b"up\n"
        import psutil
        created = psutil.Process(target.pid).create_time()
        out = subprocess.run([system, "-c", READER, str(target.pid), root, str(created), site],
                             preexec_fn=demote, capture_output=True, text=True, timeout=60)
        if out.returncode and ("Error" in out.stderr and "import" in out.stderr.lower()):
            pytest.skip(f"the guard cannot be imported as nobody here: {out.stderr[-300:]}")
        assert MEMORY_UNREADABLE in out.stdout, (out.stdout, out.stderr)
    finally:
        target.kill()
        target.wait()


def test_code_regions_leave_out_an_interpreters_heap_and_data():
    maps = """\
55558bad0000-55558baf1000 rw-p 00000000 00:00 0                          [heap]
7f14fd5e1000-7f14fd5e4000 rw-p 00000000 00:00 0
7f14fd7d0000-7f14fd7d1000 r--p 00000000 fe:00 2149668                    /tmp/x
7f14fd80f000-7f14fd811000 r-xp 00000000 00:00 0                          [vdso]
7f14fd811000-7f14fd813000 r--p 00000000 00:00 0
7f14fd813000-7f14fd815000 r-xp 00000000 00:00 0
7f14fd815000-7f14fd817000 r--p 00000000 00:00 0
7f14fd817000-7f14fd818000 rw-p 00000000 00:00 0
7f14fd900000-7f14fd901000 r-xp 00000000 00:01 7                          /memfd:x (deleted)
7fff5167d000-7fff5169e000 rw-p 00000000 00:00 0                          [stack]
"""
    regions = parse_maps(maps)
    program = [hex(r.start) for r in code_regions(regions, "/tmp/x", interpreter=False)]
    assert program == ["0x7f14fd811000", "0x7f14fd813000", "0x7f14fd815000", "0x7f14fd817000",
                       "0x7f14fd900000"]
    python = [hex(r.start) for r in code_regions(regions, "/tmp/x", interpreter=True)]
    assert python == ["0x7f14fd811000", "0x7f14fd813000", "0x7f14fd815000", "0x7f14fd900000"]
    assert set(TRAITS).isdisjoint(reported(list(TRAITS) + ["xmrig"]))


PADDED = r"""
#include <stdio.h>
#include <unistd.h>
static const char pad[80 << 20] = {1};  /* 80 MiB before the strings: past the file scan */
const char *banner = "MicroSocks SOCKS5 Server";
int main(int argc, char **argv) {
    volatile const char *p = pad; (void)p;
    if (argc > 5) puts(banner);
    puts("up"); fflush(stdout);
    pause();
    return 0;
}
"""


def test_a_program_padded_past_the_file_scan_is_recognised_from_its_mapping(tmp_path):
    """The file scan reads 64 MiB; a program whose strings lie past them is read from memory,
    where its file is mapped."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    source = tmp_path / "padded.c"
    source.write_text(PADDED)
    program = tmp_path / "kthreadd"
    subprocess.run([gcc, "-O0", "-o", str(program), str(source)], check=True)
    assert "microsocks" not in scan_file(str(program), 64 << 20)
    proc = subprocess.Popen([str(program)], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"up\n"
    sampler = ProcessSampler()
    try:
        assert "microsocks" in _markers(sampler, proc.pid, lambda m: "microsocks" in m)
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()


DECOYS = """
import ctypes, mmap, sys, time
libc = ctypes.CDLL(None)
def readonly(data):
    region = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE)
    region.write(data.ljust(4096, b"\\0"))
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc.mprotect(ctypes.c_void_p(address), 4096, 1)
    return region
keep = [readonly(b"MicroSocks SOCKS5 Server")]  # first: the highest address, listed last
for i in range(int(sys.argv[1])):  # then decoys, alternately read-only so none merge
    keep.append(mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ if i % 2 else
                          mmap.PROT_READ | mmap.PROT_WRITE))
print('up', flush=True)
time.sleep(60)
"""


def test_a_decoy_layout_of_tens_of_thousands_of_mappings_is_evidence(tmp_path):
    """A process that hides its unpacked code behind tens of thousands of decoy mappings (more
    than the 32 MiB read of a process's memory, or than the 4 MiB read of its maps) is scanned
    as far as that goes, and marked cut: evidence, not a blind spot."""
    count = min(60_000, int(open("/proc/sys/vm/max_map_count").read()) - 2000)
    if count * 4096 // 2 < 2 * (32 << 20):
        pytest.skip("vm.max_map_count is too low to build the decoy layout")
    proc = subprocess.Popen([PYTHON, "-c", DECOYS, str(count)], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"up\n"
    sampler = ProcessSampler()
    try:
        markers = _markers(sampler, proc.pid, lambda m: "microsocks" in m or "scan:cut" in m)
        assert "microsocks" in markers or "scan:cut" in markers, markers
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()


def test_a_packer_with_its_header_wiped_is_still_seen_by_its_entropy_and_memory(tmp_path):
    """Malware wipes UPX's magic so that the file says nothing of UPX: the code segment's
    entropy still says packed, and the memory still says what it is."""
    packed = tmp_path / "dbus-helper"
    data = open(_packed("microsocks", tmp_path, "x"), "rb").read().replace(b"UPX!", b"ELF!")
    packed.write_bytes(data)
    packed.chmod(0o755)
    scanner = ContentScanner(background=False)
    assert scanner.file_markers(str(packed), 64 << 20) == [content.PACKED_ENTROPY]
    proc = subprocess.Popen([str(packed), "-i", "127.0.0.1", "-p", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sampler = ProcessSampler()
    try:
        markers = _markers(sampler, proc.pid, lambda m: "microsocks" in m)
        assert "microsocks" in markers and content.PACKED_ENTROPY in markers
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()


def test_honest_programs_and_libraries_carry_no_trait_in_their_files():
    from tests.test_content import _benign_files
    scanner = ContentScanner(background=False)
    found = {f: [m for m in scanner.file_markers(f, 64 << 20) if m in TRAITS]
             for f in _benign_files()}
    assert {f: m for f, m in found.items() if m} == {}
