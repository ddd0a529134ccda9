"""A program run by the dynamic loader is judged as that program (observe/loader.py): its
file (read in the process's root), its arguments, its script. Real processes throughout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from colab_guard.observe import loader
from colab_guard.observe.content import ContentScanner
from colab_guard.observe.processes import ProcessSampler
from tests.harness import wait_until

LOADER = "/lib64/ld-linux-x86-64.so.2"
PYTHON3 = os.path.realpath(sys.executable)  # the interpreter's file (no pyenv shim)
BUSYBOX = shutil.which("busybox")

pytestmark = pytest.mark.skipif(not os.path.exists(LOADER), reason="needs the x86-64 loader")


@pytest.fixture
def started():
    """Start processes; all killed at the end."""
    procs = []

    def start(argv, **kwargs):
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                **kwargs)
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _sampled(sampler: ProcessSampler, pid: int, condition, what: str):
    """The process as the sampler reads it, once ``condition`` holds of the sample."""
    return wait_until(lambda: (lambda p: p if p is not None and condition(p) else None)(
        sampler.sample({"k": pid})["k"].kernel_process), timeout=20, what=what)


def _sampler() -> ProcessSampler:
    return ProcessSampler(content=ContentScanner(background=False))


# ---------------------------------------------------------------- what the process runs

def test_a_program_the_loader_runs_is_sampled_as_that_program(started):
    proc = started([LOADER, "/bin/sleep", "300"])
    seen = _sampled(_sampler(), proc.pid, lambda p: p.exe != os.path.realpath(LOADER),
                    "the loaded program")
    assert seen.exe == os.path.realpath("/bin/sleep")
    assert seen.cmdline == ["/bin/sleep", "300"]
    assert seen.name == "sleep"
    assert loader.EXE_LOADED in seen.exe_markers


def test_the_loaders_options_are_no_program_and_its_argv0_is_the_first_word(started,
                                                                          tmp_path):
    """``--preload`` maps a library executable before the program: its value is an option's,
    not the program; ``--argv0`` names the program's first word."""
    library = "/lib/x86_64-linux-gnu/libm.so.6"
    proc = started([LOADER, "--preload", library, "--argv0", "kworker", "/bin/sleep", "300"],
                   cwd=tmp_path)
    seen = _sampled(_sampler(), proc.pid, lambda p: loader.EXE_LOADED in p.exe_markers,
                    "the loaded program")
    assert seen.exe == os.path.realpath("/bin/sleep")
    assert seen.cmdline == ["kworker", "300"]


def test_a_relative_program_is_found_from_the_processs_folder(started, tmp_path):
    shutil.copy("/bin/sleep", tmp_path / "helper")
    proc = started([LOADER, "./helper", "300"], cwd=tmp_path)
    seen = _sampled(_sampler(), proc.pid, lambda p: loader.EXE_LOADED in p.exe_markers,
                    "the loaded program")
    assert seen.exe == str(tmp_path / "helper")
    assert seen.cmdline == ["./helper", "300"]


def test_a_renamed_copy_of_the_loader_runs_the_program_it_names(started, tmp_path):
    """Told by what the process is (started with no interpreter, the file it names mapped
    executable), not by the loader's name."""
    copy = tmp_path / "update-helper"
    shutil.copy(LOADER, copy)
    proc = started([str(copy), "/bin/sleep", "300"])
    seen = _sampled(_sampler(), proc.pid, lambda p: loader.EXE_LOADED in p.exe_markers,
                    "the loaded program")
    assert seen.exe == os.path.realpath("/bin/sleep")


# ---------------------------------------------------------------- near-misses

def test_programs_run_as_themselves_are_sampled_as_before(started, tmp_path):
    """A dynamically linked program whose argument names a file it maps (python3 running
    a library's path as its script would not map it; the loader's own file is mapped by
    every program), and a static program (busybox) whose argument names a program: neither
    is a program run by a loader."""
    sleeper = started(["/bin/sleep", "300"])
    sampler = _sampler()
    seen = _sampled(sampler, sleeper.pid, lambda p: p.exe_markers is not None, "sleep")
    assert (seen.exe, seen.cmdline) == (os.path.realpath("/bin/sleep"), ["/bin/sleep", "300"])
    assert loader.EXE_LOADED not in seen.exe_markers
    assert loader.started_by_interpreter(sleeper.pid) is True
    if BUSYBOX:
        static = started([BUSYBOX, "sh", "-c", f"sleep 300; : {LOADER}"])
        seen = _sampled(sampler, static.pid, lambda p: p.exe_markers is not None, "busybox")
        assert loader.started_by_interpreter(static.pid) is False
        assert seen.exe == os.path.realpath(BUSYBOX)
        assert loader.EXE_LOADED not in seen.exe_markers


def test_a_word_naming_a_file_not_mapped_is_no_program(started):
    """Only a file the process has mapped executable is its program: a data file named
    before it is not, nor is anything in a process whose maps name none of its words."""
    proc = started([LOADER, "/bin/sleep", "300"])
    wait_until(lambda: "/bin/sleep" in open(f"/proc/{proc.pid}/maps").read()
               or "/usr/bin/sleep" in open(f"/proc/{proc.pid}/maps").read(), what="sleep mapped")
    inode = os.stat("/bin/sleep").st_ino
    mapped = [("/usr/bin/sleep", inode)]
    assert loader.loaded_program(proc.pid, [LOADER, "/etc/hostname", "/bin/sleep", "1"],
                                 mapped, None) == ("/usr/bin/sleep", ["/bin/sleep", "1"])
    assert loader.loaded_program(proc.pid, [LOADER, "/etc/hostname", "/bin/sleep"],
                                 [], None) is None
    assert loader.loaded_program(proc.pid, [LOADER, "/bin/sleep"], mapped, inode) is None


# ---------------------------------------------------------------- what it is judged by

def test_a_python_script_the_loader_runs_is_read_as_the_scripts(started, tmp_path):
    """Judged as the loader, the interpreter's script was never read (what it imports: a
    SOCKS proxy's library)."""
    script = tmp_path / "notes.py"
    script.write_text("import time\ntime.sleep(300)\nimport pproxy\n")
    proc = started([LOADER, PYTHON3, str(script)], cwd=tmp_path)
    seen = _sampled(_sampler(), proc.pid, lambda p: loader.EXE_LOADED in p.exe_markers,
                    "the loaded interpreter")
    assert seen.cmdline == [PYTHON3, str(script)]
    assert "pproxy" in seen.exe_markers


def test_a_file_written_in_the_session_over_a_system_program_run_by_the_loader_is_new(
        started, tmp_path):
    """The program's file is read for its traits, not the loader's: a copy in /usr/bin
    written after the session began carries exe:new."""
    path = "/usr/bin/colab-guard-test-loaded"
    shutil.copy("/bin/sleep", path)
    try:
        proc = started([LOADER, path, "300"])
        seen = _sampled(_sampler(), proc.pid, lambda p: loader.EXE_LOADED in p.exe_markers,
                        "the loaded program")
        assert seen.exe == path
        assert "exe:new" in ContentScanner(background=False).process_markers(
            proc.pid, seen.exe, seen.cmdline, session=os.stat(LOADER).st_ctime + 1)
    finally:
        os.unlink(path)


def test_a_loaded_program_that_keeps_running_is_read_lightly(started):
    """Its command line as read (the loader's) is compared at a light read, not the one it is
    judged by: a running one is not read in full at every tick."""
    proc = started([LOADER, PYTHON3, "-c", "while True: pass"])
    sampler = _sampler()
    _sampled(sampler, proc.pid, lambda p: loader.EXE_LOADED in p.exe_markers, "loaded")
    before = sampler.stats.light_reads
    seen = wait_until(lambda: (lambda p: p if sampler.stats.light_reads > before else None)(
        sampler.sample({"k": proc.pid})["k"].kernel_process), timeout=30, what="a light read")
    assert seen.cmdline == [PYTHON3, "-c", "while True: pass"]
    assert loader.EXE_LOADED in seen.exe_markers
