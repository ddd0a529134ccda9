"""Wrappers that start a text tool, as the sampler and the exec check see them: the wrapper
(xargs, timeout, find -exec, watch, flock) stays up while the tool reads, its command line
holding the tool's data (`find . -name '*.json' | xargs grep -l -- --donate-level`, a course
searching its configurations for a miner's options). Judged as the cell check reads the line:
the wrapper and the tool's name. A wrapper that starts any other program is read whole.
Real processes, the tool held on a FIFO no one writes to (it waits as long as the test
likes)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from colab_guard.detect.commands import wrapped_text_tool
from colab_guard.detect.engine import Engine
from colab_guard.observe.model import Process
from colab_guard.observe.processes import ProcessSampler
from colab_guard.watch.at_exec import ExecCheck
from tests.test_shell_streams import RULES, _stop, _wait_for

SEARCH = "--donate-level 1 -o pool.example.org:3333"


@pytest.fixture
def fifo(tmp_path):
    """A FIFO no one writes to: a tool that opens it waits there."""
    path = tmp_path / "waiting.log"
    os.mkfifo(path)
    yield path
    # A tool still waiting (a wrapper's child, which killing the wrapper leaves) is let go:
    # a writer opened and closed gives it its end of file, and it exits.
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no one waits on it


@pytest.mark.parametrize("wrapper", [
    ["xargs"],
    ["timeout", "60"],
    ["flock", "LOCK"],
    ["nice", "-n", "5", "timeout", "60"],
], ids=["xargs", "timeout", "flock", "nice-timeout"])
def test_a_wrapper_waiting_on_grep_for_a_miners_options_is_left_alone(wrapper, fifo, tmp_path):
    argv = [w.replace("LOCK", str(tmp_path / "lock")) for w in wrapper]
    if argv[0] == "xargs":  # its arguments from its input: the FIFO's name
        command = ["sh", "-c", f'echo {fifo} | xargs grep -l -e "$0"', SEARCH]
    else:
        command = [*argv, "grep", "-l", "-e", SEARCH, str(fifo)]
    started = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        found, detections = _wait_for(
            ProcessSampler(), started.pid,
            # (read in the middle of an exec, its command line may still be empty)
            lambda p: p.cmdline[:1] not in (["grep"], []) and p.cmdline[0] in argv
            and "grep" in p.cmdline
            and p.exe.startswith(("/bin/", "/usr/bin/")), timeout=30)
        assert SEARCH in found.cmdline
        assert detections == []
        grep, detections = _wait_for(ProcessSampler(), started.pid,
                                     lambda p: p.name == "grep", timeout=30)
        assert SEARCH in grep.cmdline and detections == []  # the system's grep: its name
    finally:
        _stop(started)


def test_find_exec_waiting_on_grep_for_a_miners_options_is_left_alone(fifo):
    started = subprocess.Popen(["find", str(fifo.parent), "-name", "*.log", "-exec", "grep",
                                "-l", "-e", SEARCH, "{}", "+"], stdout=subprocess.DEVNULL)
    try:
        found, detections = _wait_for(
            ProcessSampler(), started.pid,
            lambda p: p.pid == started.pid and "-exec" in p.cmdline, timeout=30)
        assert SEARCH in found.cmdline and detections == []
    finally:
        _stop(started)


def test_a_wrapper_starting_a_program_of_the_users_is_read_whole(tmp_path):
    """`timeout 60 ./kworker --donate-level 1 -o …` (a copy of the shell that sleeps): the
    timeout process carries the miner's options, and matches with it."""
    kworker = tmp_path / "kworker"
    shutil.copy(os.path.realpath("/bin/sh"), kworker)
    started = subprocess.Popen(["timeout", "60", str(kworker), "-c", "sleep 30; :",
                                *SEARCH.split()], stdout=subprocess.DEVNULL)
    try:
        found, detections = _wait_for(
            ProcessSampler(), started.pid,
            lambda p: p.pid == started.pid and p.exe == "/usr/bin/timeout", timeout=30)
        assert "mining-miner-command-line" in {d.signature.id for d in detections}
    finally:
        _stop(started)


def _process(argv: list[str], exe: str) -> Process:
    return Process(pid=4242, name=os.path.basename(argv[0])[:15], exe=exe, cmdline=argv,
                   create_time=1e9, uid=1001)


@pytest.mark.parametrize("argv", [
    ["nice", "grep", "-e", SEARCH, "notes.txt"],
    ["env", "LC_ALL=C", "grep", "-e", SEARCH, "notes.txt"],
    ["stdbuf", "-oL", "grep", "-e", SEARCH, "notes.txt"],
    ["nohup", "grep", "-e", SEARCH, "notes.txt"],
    ["ionice", "-c3", "grep", "-e", SEARCH, "notes.txt"],
    ["setsid", "grep", "-e", SEARCH, "notes.txt"],
], ids=lambda a: a[0])
def test_a_wrapper_seen_at_its_exec_before_it_starts_grep_is_left_alone(argv):
    """The node watcher's exec check sees the wrapper at its exec, grep's data on its command
    line, an instant before it execs grep."""
    exe = shutil.which(argv[0])
    assert exe is not None and exe.startswith(("/bin/", "/usr/bin/"))
    check = ExecCheck(Engine(RULES))
    assert check.detections("k1", _process(argv, os.path.realpath(exe))) == []
    # the same words from a file of the user's, or starting a program of the user's
    assert check.detections("k1", _process(argv, "/content/nice")) != []
    own = [*argv[:argv.index("grep")], "./kworker", *argv[argv.index("grep") + 1:]]
    assert check.detections("k1", _process(own, os.path.realpath(exe))) != []


@pytest.mark.parametrize("argv, judged", [
    (["xargs", "-0", "grep", "-l", "--", "--donate-level"], ["xargs", "-0", "grep"]),
    (["timeout", "-s", "KILL", "60", "grep", "x"], ["timeout", "-s", "KILL", "60", "grep"]),
    (["find", ".", "-exec", "grep", "-l", "x", "{}", "+"], ["find", ".", "-exec", "grep"]),
    (["env", "-S", "grep -e x", "f"], None),  # not the tool's own words
    (["xargs", "sh", "-c", "grep x"], None),  # a shell between: read whole
    (["timeout", "60", "./grep.sh", "x"], None),
    (["xargs", "kworker", "--donate-level", "1"], None),
    (["grep", "x"], None),
])
def test_what_a_wrapper_starting_a_text_tool_is_judged_as(argv, judged):
    assert wrapped_text_tool(argv) == judged
