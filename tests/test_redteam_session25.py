"""Session 25: a program the dynamic loader runs, judged as that program (observe/loader.py),
attacked by a notebook user who has read the code, then run as an honest user would. Real
processes, real sampler, scanner and engine; the network on loopback only.

Tried and held: dash run by the loader through a symlink, a relative path with `..`, under
`exec -a`; `ld.so X.so PROG` cannot put a library before the program (the first word not an
option is the program; `--library-path=X` is refused); python3 run by the loader with
`-c CODE` or `-m module` is read as python3 run directly is; a `#!`-less script run as
`ld.so /bin/dash script.sh` in the FIFO loop is judged as `dash script.sh` is (no shell).

Held clean (near-misses): python3 run directly with a script argument naming a library it
loads, `ld.so --list /bin/ls` (what ldd runs), a static program (busybox) whose arguments
name programs: no signature fires; the first and last are sampled as before.

Found and fixed:
- The loader's options pushed the program past the first 16 words (ld.so takes any number:
  `ld.so --inhibit-cache x20 /bin/dash -i` was the loader, no shell). Options are now skipped
  without counting; 16 words are still looked up at most.
- `ld.so /proc/self/fd/N -i` or `/dev/fd/N` (N<kworker): the word was looked up by the guard,
  whose /proc/self is its own. Those paths are now the process's.
- A program whose name holds a newline: maps writes it `\\012`, and the file at that name
  was none (never read). The name is now unescaped where that names the mapped file.
- A copy of dash run by the loader carried no exe:shell-copy where its libraries were looked
  at first: every file it maps but the loader is scanned as a library, where a shell's
  identity was not looked for, and that scan was the one its program's reading found. It is
  now looked for in every file (reported() keeps it out of a library's markers).
- A static program that maps another program executable and names it as its first argument
  was judged as that program alone, its own file (xmrig's strings) never read: the process's
  own file's markers are now kept beside the program's (the lead's fix, after the report).

Found (strict xfail, the reasons and suggested fixes on each):
- The program's file deleted, renamed or replaced once the loader mapped it: read at its old
  path (no file, or the honest one put there); seen first after it, judged as the loader (a
  copy of dash deleted as it starts in the FIFO loop is no reverse shell).
- A link of the user's to /proc/self/fd/N (followed by the guard as itself), and a program
  after more options than the 2048 words of a command line read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from colab_guard.detect.engine import Engine
from colab_guard.observe import loader
from colab_guard.observe.content import ContentScanner
from colab_guard.observe.processes import ProcessSampler
from tests.harness import wait_until
from tests.test_loader import _sampled, _sampler, started  # noqa: F401 (a fixture)
from tests.test_redteam_sampled20 import _group
from tests.test_redteam_session23 import _relay_connected
from tests.test_redteam_session24 import _copy, _loop, _reverse_shell_seen, \
    _reverse_shell_seen_in
from tests.test_shell_streams import RULES, listener  # noqa: F401 (a fixture)

LOADER = "/lib64/ld-linux-x86-64.so.2"
DASH = os.path.realpath("/bin/dash")
PYTHON3 = os.path.realpath(sys.executable)
BUSYBOX = shutil.which("busybox")
#: An fd number the test process does not hold (the guard must look in the process's fds)
FD = 57

pytestmark = pytest.mark.skipif(not os.path.exists(LOADER), reason="needs the x86-64 loader")


def _loaded(sampler: ProcessSampler, pid: int, what: str = "the loaded program",
            marker: str = loader.EXE_LOADED):
    """The process once the sampler judges it as the program a loader runs (and, given
    ``marker``, its file has been read for it)."""
    return _sampled(sampler, pid, lambda p: {loader.EXE_LOADED, marker} <= set(p.exe_markers),
                    what)


def _mapping(path: str, pids=None) -> int:
    """The pid of a process (of ``pids``, else any) that has ``path`` mapped, once one has."""
    def find():
        for entry in pids or [e for e in os.listdir("/proc") if e.isdigit()]:
            try:
                with open(f"/proc/{entry}/maps") as f:
                    if path in f.read():
                        return int(entry)
            except OSError:
                continue
        return None
    return wait_until(find, timeout=10, what=f"{path} mapped")


# ---------------------------------------------------------------- spellings that held

def _symlink(d: Path) -> str:
    os.symlink(DASH, d / "helper")
    return f"exec {LOADER} {d}/helper -i"


def _dotdot(d: Path) -> str:
    (d / "sub").mkdir()
    return f"cd {d}/sub && exec {LOADER} ../sub/../kworker -i"


def _odd_name(d: Path) -> str:
    _copy(DASH, d / "kworker \n")
    return f"exec {LOADER} \"{d}/kworker \n\" -i"


@pytest.mark.parametrize("command, program", [
    pytest.param(_symlink, DASH, id="symlink"),
    pytest.param(_dotdot, "{d}/kworker", id="dotdot"),
    pytest.param(_odd_name, "{d}/kworker \n", id="trailing-space-newline"),
    pytest.param(lambda d: f"exec {FD}<{DASH}; exec {LOADER} /proc/self/fd/{FD} -i", DASH,
                 id="proc-self-fd"),
    pytest.param(lambda d: f"exec {FD}<{DASH}; exec {LOADER} /dev/fd/{FD} -i", DASH,
                 id="dev-fd"),
    pytest.param(lambda d: f"exec -a kthreadd {LOADER} /bin/dash -i", DASH, id="exec-a"),
    pytest.param(lambda d: " ".join([LOADER] + ["--inhibit-cache"] * 20 + ["/bin/dash -i"]),
                 DASH, id="twenty-options"),  # was missed: past the first 16 words
])
def test_dash_run_by_the_loader_under_another_spelling_is_sampled_as_dash(
        command, program, started, tmp_path):  # noqa: F811
    _copy(DASH, tmp_path / "kworker")
    proc = started(["bash", "-c", command(tmp_path)])
    copy = "kworker" in program  # (its file read: a shell's copy)
    seen = _loaded(_sampler(), proc.pid, marker="exe:shell-copy" if copy else loader.EXE_LOADED)
    assert seen.exe == program.format(d=tmp_path)
    assert seen.cmdline[1:] == ["-i"]
    assert ("exe:shell-copy" in seen.exe_markers) == copy


@pytest.mark.xfail(strict=True, reason=(
    "only the word is rewritten (/proc/self, /dev/fd): a link of the user's to /proc/self/fd/N "
    "is followed by the guard as the guard, whose fd N is another or none. Fix: follow the "
    "word's links one by one in the process's root, /proc/self read as its own"))
def test_dash_run_by_the_loader_through_a_link_to_its_own_fd_is_sampled_as_dash(
        started, tmp_path):  # noqa: F811
    os.symlink(f"/proc/self/fd/{FD}", tmp_path / "helper")
    proc = started(["bash", "-c", f"exec {FD}<{DASH}; exec {LOADER} {tmp_path}/helper -i"])
    _mapping(DASH, pids=[proc.pid])
    seen = _sampled(_sampler(), proc.pid, lambda p: p.exe_markers is not None, "dash")
    assert seen.exe == DASH


@pytest.mark.xfail(strict=True, reason=(
    "the command line is cut at 2048 words (procfs.CMDLINE_MAX_WORDS): a program after more "
    "of the loader's options is in no word read. Fix: for a process started with no "
    "interpreter whose words read are all options, read its command line on past the cut"))
def test_dash_run_by_the_loader_after_more_options_than_a_command_line_is_read(
        started):  # noqa: F811
    proc = started([LOADER] + ["--inhibit-cache"] * 2100 + ["/bin/dash", "-i"])
    _mapping(DASH, pids=[proc.pid])
    seen = _sampled(_sampler(), proc.pid, lambda p: p.exe_markers is not None, "dash")
    assert seen.exe == DASH


def test_dash_run_by_the_loader_after_twenty_options_in_a_loop_is_a_reverse_shell(
        listener, tmp_path):  # noqa: F811
    """Was missed: the program was looked for in the first 16 words only."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    options = " ".join(["--inhibit-cache"] * 20)
    assert _reverse_shell_seen(_loop(f"{LOADER} {options} /bin/dash -i", fifo, listener.port),
                               listener, tmp_path)


def test_a_shells_copy_run_by_the_loader_in_a_loop_is_a_reverse_shell(
        listener, tmp_path):  # noqa: F811
    """Held (its program's scan ran before its libraries'); see the test below."""
    copy = _copy(DASH, tmp_path / "kworker")
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    assert _reverse_shell_seen(_loop(f"{LOADER} {copy} -i", fifo, listener.port), listener,
                               tmp_path)


def test_a_shells_copy_run_by_the_loader_carries_its_trait_when_scanned_first_as_a_library(
        started, tmp_path):  # noqa: F811
    """Was missed where its libraries were looked at first (the foreground scanner; in the
    guard, as the background's queue fell): the files a process maps but its own (the
    loader's) are scanned as libraries, a shell's identity was not looked for in them, and
    that scan was the one its program's reading found: the copy was no shell."""
    copy = _copy(DASH, tmp_path / "kworker")
    proc = started([LOADER, str(copy), "-i"])
    seen = _loaded(_sampler(), proc.pid, marker="exe:shell-copy")
    assert seen.exe == str(copy)


def test_the_loaders_value_taking_option_spelled_with_an_equals_sign_is_refused():
    """The premise of skipping only the word after a value-taking option: this ld.so takes
    no `--library-path=X` (it would make `=X` part of the option and the next word the
    program)."""
    ran = subprocess.run([LOADER, "--library-path=/tmp", "/bin/true"], capture_output=True,
                         timeout=10)
    assert ran.returncode != 0


# ---------------------------------------------------------------- python and scripts

@pytest.mark.parametrize("args", [
    pytest.param(["-c", "import time; time.sleep(300)\nimport pproxy"], id="inline-code"),
    pytest.param(["-m", "notes"], id="module"),
])
def test_python_run_by_the_loader_is_read_as_python_run_directly(
        args, started, tmp_path):  # noqa: F811
    """Inline code and `-m` are read the same (the module from the process's folder)."""
    (tmp_path / "notes.py").write_text("import time\ntime.sleep(300)\nimport pproxy\n")
    direct = started([PYTHON3, *args], cwd=tmp_path)
    loaded = started([LOADER, PYTHON3, *args], cwd=tmp_path)
    sampler, scanner = _sampler(), ContentScanner(background=False)
    seen = _loaded(sampler, loaded.pid)
    plain = _sampled(sampler, direct.pid, lambda p: p.exe_markers is not None, "python3")
    assert (seen.exe, seen.cmdline) == (plain.exe, plain.cmdline)
    markers = scanner.process_markers(loaded.pid, seen.exe, seen.cmdline)
    assert [m for m in markers if m != loader.EXE_LOADED] == \
        scanner.process_markers(direct.pid, plain.exe, plain.cmdline)


def test_a_script_run_by_the_loaders_dash_in_a_loop_is_judged_as_dash_running_it(
        listener, tmp_path):  # noqa: F811
    """A `#!`-less script (an echo service's loop) is dash's script: neither `dash script.sh`
    nor `ld.so /bin/dash script.sh` in the FIFO loop reads commands from the network."""
    script = tmp_path / "echo.sh"
    script.write_text('while IFS= read -r line; do printf "%s\\n" "$line"; done\n')
    verdicts = []
    for program in (f"/bin/dash {script}", f"{LOADER} /bin/dash {script}"):
        fifo = tmp_path / f"f{len(verdicts)}"
        os.mkfifo(fifo)
        with _group(["bash", "-c", _loop(program, fifo, listener.port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as kernel:
            listener.accept_one()
            _relay_connected(kernel.pid)
            verdicts.append(_reverse_shell_seen_in(kernel.pid, ticks=15))
    assert verdicts == [False, False]


# ---------------------------------------------------------------- the program's file moved

def _loaded_copy_then(act, started, tmp_path):  # noqa: F811
    """A copy of dash named kworker run by the loader (reading commands), found by the
    sampler; then ``act(path)``; the markers of the process as sampled after it."""
    path = _copy(DASH, tmp_path / "kworker")
    proc = started([LOADER, str(path), "-i"])
    sampler = _sampler()
    _loaded(sampler, proc.pid, marker="exe:shell-copy")
    act(path)
    return sampler.sample({"k": proc.pid})["k"].kernel_process


@pytest.mark.xfail(strict=True, reason=(
    "the program's word is looked up by its path: a program deleted, renamed or replaced once "
    "the loader mapped it is no longer found, so a process seen first then is judged as the "
    "loader; one found before is read at its old path (no file, or another). Fix: keep the "
    "mapped inode with the found program and, where the path no longer names it, judge the "
    "mapped file as a deleted exe is judged (its maps path, exe:deleted), reading it through "
    "/proc/PID/map_files where the guard may"))
@pytest.mark.parametrize("act", [
    pytest.param(os.unlink, id="deleted"),
    pytest.param(lambda p: os.rename(p, p.with_name("kworker.old")), id="renamed"),
    pytest.param(lambda p: os.rename(_copy("/bin/cat", p.with_name("cat")), p),
                 id="replaced-by-an-honest-file"),
])
def test_a_loaded_shells_copy_keeps_its_trait_when_its_file_is_moved(act, started,
                                                                      tmp_path):  # noqa: F811
    seen = _loaded_copy_then(act, started, tmp_path)
    assert "exe:shell-copy" in seen.exe_markers or "exe:deleted" in seen.exe_markers


@pytest.mark.xfail(strict=True, reason=(
    "a deleted program is found by no word (see above): the loader's process is judged as the "
    "loader, no shell"))
def test_a_loaded_shells_copy_deleted_as_it_starts_in_a_loop_is_a_reverse_shell(
        listener, tmp_path):  # noqa: F811
    path = _copy(DASH, tmp_path / "kworker")
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with _group(["bash", "-c", _loop(f"{LOADER} {path} -i", fifo, listener.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as kernel:
        listener.accept_one()
        _relay_connected(kernel.pid)
        _mapping(str(path))
        path.unlink()  # (`ld.so ./kworker -i & rm kworker`)
        assert _reverse_shell_seen_in(kernel.pid, ticks=40)


# ---------------------------------------------------------------- the wrong program judged

#: A static program carrying xmrig's strings that maps the file its first argument names
#: executable (as a loader maps its program), then waits.
MAPPER = r"""
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
static const char banner[] = " * ABOUT XMRig/6.21.0 gcc/12 donate-level 1%% https://xmrig.com";
int main(int argc, char **argv) {
    if (argc > 99) puts(banner);
    if (argc > 1) {
        int fd = open(argv[1], O_RDONLY);
        if (fd >= 0 && mmap(0, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0) == MAP_FAILED)
            return 1;
        close(fd);
    }
    pause();
    return 0;
}
"""


@pytest.fixture
def mapper(tmp_path) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc")
    (tmp_path / "m.c").write_text(MAPPER)
    built = subprocess.run([gcc, "-static", "-O1", "-o", str(tmp_path / "kworker"),
                            str(tmp_path / "m.c")], capture_output=True, timeout=120)
    if built.returncode != 0:
        pytest.skip("needs a static libc")
    return tmp_path / "kworker"


def test_a_static_miner_naming_no_mapped_file_is_read_as_itself(mapper, started):  # noqa: F811
    """The premise: run with no argument (mapping nothing), its own strings are read."""
    proc = started([str(mapper)])
    seen = _sampled(_sampler(), proc.pid, lambda p: p.exe_markers is not None, "the miner")
    assert seen.exe == str(mapper)
    assert "xmrig" in seen.exe_markers


def test_a_static_miner_naming_a_program_it_maps_is_still_read_as_itself(
        mapper, started):  # noqa: F811
    """Was a strict xfail: judged as /bin/true alone, its own file never read. The process's
    own file's markers are kept beside the loaded program's (a loader's own carries none)."""
    proc = started([str(mapper), "/bin/true"])
    _mapping("/usr/bin/true", pids=[proc.pid])
    seen = _sampled(_sampler(), proc.pid, lambda p: p.exe_markers is not None, "the miner")
    assert "xmrig" in seen.exe_markers


# ---------------------------------------------------------------- honest, kept clean

def _detections(pid: int, ticks: int = 6) -> set[str]:
    sampler, engine, found = ProcessSampler(content=ContentScanner(background=False)), \
        Engine(RULES), set()
    for _ in range(ticks):
        found |= {d.signature.id for d in engine.evaluate(sampler.sample({"k": pid})["k"])}
        time.sleep(0.1)  # the next tick
    return found


def test_python_with_a_script_argument_naming_a_library_it_loads_is_sampled_as_before(
        started, tmp_path):  # noqa: F811
    """A dynamically linked program (an interpreter) is never one a loader runs, whatever
    its arguments name."""
    library = "/lib/x86_64-linux-gnu/libm.so.6"
    script = tmp_path / "bench.py"
    script.write_text("import ctypes, sys, time\nctypes.CDLL(sys.argv[1])\ntime.sleep(300)\n")
    proc = started([PYTHON3, str(script), library])
    _mapping("libm.so.6", pids=[proc.pid])
    seen = _sampled(_sampler(), proc.pid, lambda p: p.exe_markers is not None, "python3")
    assert (seen.exe, seen.cmdline) == (PYTHON3, [PYTHON3, str(script), library])
    assert loader.EXE_LOADED not in seen.exe_markers
    assert _detections(proc.pid) == set()


def test_the_loader_listing_a_programs_libraries_is_clean(tmp_path):
    """What `ldd /bin/ls` runs (`ld.so --list /bin/ls`), held while it writes to a full
    pipe: sampled as ls, which no signature names."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        while True:
            os.write(write, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(write, True)
    with _group([LOADER, "--list", "/bin/ls"], stdout=write, stdin=subprocess.DEVNULL) as proc:
        seen = _loaded(_sampler(), proc.pid)
        assert seen.exe == os.path.realpath("/bin/ls")
        assert _detections(proc.pid) == set()
    os.close(read)
    os.close(write)


@pytest.mark.skipif(not BUSYBOX, reason="needs busybox")
def test_a_static_program_given_programs_as_arguments_is_sampled_as_before(started):  # noqa: F811
    """busybox maps no file it names: no word is its program."""
    proc = started([BUSYBOX, "sh", "-c", "sleep 300; :", DASH, "/bin/ls", PYTHON3])
    seen = _sampled(_sampler(), proc.pid, lambda p: p.exe_markers is not None, "busybox")
    assert seen.exe == os.path.realpath(BUSYBOX)
    assert loader.EXE_LOADED not in seen.exe_markers
    assert _detections(proc.pid) == set()
