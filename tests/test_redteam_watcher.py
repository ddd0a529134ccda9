"""A red team against the node watcher (issue #14): a notebook user who has read the code.

Real processes throughout: a real watcher as root (``python -m colab_guard.watch``, confined
as its systemd unit runs it) and "servers" and "kernels" run as Unix users this module
creates (``redteam4<pid>a``/``b``, removed at teardown), where the attack needs them; the
sampler and discovery alone, on real processes, where that suffices. What the watcher stops
is a passing test; what it misses, a strict ``xfail`` asserting what should happen.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from colab_guard.observe import idle
from tests.harness import wait_until
from tests.test_watch import (  # noqa: F401 (the pool fixture)
    MINER, WALLET, RunningWatcher, _alive, made_users, pool, waits, watching)

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/sbin/useradd").exists(),
                                reason="the node watcher's red team creates Unix users: root only")

MALLORY, OTHER = f"redteam4{os.getpid()}a", f"redteam4{os.getpid()}b"

# A user's Jupyter server stand-in: starts one kernel (kernel.py) in a session of its own
# with the kernel's marker, as jupyter_client does; in mode "spawn" it also starts a program
# itself, with neither a marker nor a terminal (as a jupyter_server_config.py the user wrote
# into ~/.jupyter can), in mode "thread" it runs the miner in a thread of its own.
SERVER = textwrap.dedent("""
    import os, subprocess, sys, threading, time
    here, kernel_id, kernel_mode, mode, report, miner, url, wallet = sys.argv[1:9]
    def note(what):
        with open(report, "a") as f:
            f.write(what + "\\n")
    argv = [sys.executable, miner, "-o", url, "-u", wallet, "-p", "x"]
    env = {"PATH": "/usr/bin:/bin", "COLAB_GUARD_KERNEL_ID": kernel_id}
    kernel = subprocess.Popen([sys.executable, os.path.join(here, "kernel.py"), kernel_mode,
                               report, miner, url, wallet], env=env, start_new_session=True)
    note("kernel %d" % kernel.pid)
    while not os.path.exists(report + ".go"):
        time.sleep(0.02)
    if mode == "spawn":
        note("miner %d" % subprocess.Popen(argv, env={"PATH": "/usr/bin:/bin"}).pid)
    elif mode == "thread":  # the miner a kernel's child is caught as (see the parked ones)
        sys.path.insert(0, os.path.dirname(miner))
        import quiet_miner
        host, port = url.split("://")[1].rsplit(":", 1)
        threading.Thread(target=quiet_miner.run, args=(host, int(port), 0.7, 300),
                         daemon=True).start()
        note("miner %d" % os.getpid())
    elif mode == "honest":  # a language server on its stdin, a dashboard left running
        helper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                  stdin=subprocess.PIPE)
        note("helper %d" % helper.pid)
        read, write = os.pipe()
        if os.fork() == 0:
            os.setsid()
            child = os.fork()
            if child == 0:
                os.execve(sys.executable, [sys.executable, "-m", "http.server", "--bind",
                                           "127.0.0.1", "0"], {})
            os.write(write, b"%d" % child)
            os._exit(0)
        os.wait()
        note("daemon " + os.read(read, 32).decode())
    note("server ready")
    while True:
        time.sleep(0.05)
""")

# The kernel stand-in: in mode "clone-parent" it starts the miner with clone(CLONE_PARENT),
# so that the miner's parent is the server, not the kernel (the fork event names the
# server), then setsid and ``env -i``: no marker, no session, no descent from the kernel.
KERNEL = textwrap.dedent("""
    import ctypes, os, sys, time
    mode, report, miner, url, wallet = sys.argv[1:6]
    def note(what):
        with open(report, "a") as f:
            f.write(what + "\\n")
    while not os.path.exists(report + ".go"):
        time.sleep(0.02)
    argv = [sys.executable, miner, "-o", url, "-u", wallet, "-p", "x"]
    if mode in ("clone-parent", "fake-ancestor"):
        libc = ctypes.CDLL(None, use_errno=True)
        CLONE_PARENT, SIGCHLD, SYS_clone = 0x8000, 17, 56  # x86_64
        child = libc.syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0)
        if child == 0:
            os.setsid()
            if mode == "fake-ancestor":  # first a "kernel" of its own, then the miner
                os.execvp("env", ["env", "-i", sys.executable, "-c", FAKE_ANCESTOR,
                                  "\\0".join(argv).encode().hex()])
            os.execvp("env", ["env", "-i", *argv])
        note("miner %d" % child)
    elif mode == "child":  # a plain miner, its start time noted
        import subprocess
        started = time.time()
        note("miner %d %f" % (subprocess.Popen(argv).pid, started))
    elif mode == "exec-self":  # the kernel's own process becomes the miner, deaf to SIGINT
        note("miner %d" % os.getpid())
        note("ready")
        deaf = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
        os.execve(sys.executable, [sys.executable, "-c", deaf, *argv[1:]], {})
    elif mode == "odd":  # odd /proc content, then a miner
        import subprocess
        odd = ("import ctypes, time; ctypes.CDLL(None).prctl(15, b'x) R 1 1\\n2 3', 0, 0, 0); "
               "time.sleep(600)")
        subprocess.Popen([sys.executable, "-c", odd, *(["a\\n)" * 2000] * 30)])
        for _ in range(200):  # zombies: never reaped
            if os.fork() == 0:
                os._exit(0)
        note("miner %d" % subprocess.Popen(argv).pid)
    note("ready")
    while True:
        time.sleep(0.05)
""")

# Started with nothing of the kernel's (env -i): a "kernel" of its own, then the miner.
FAKE_ANCESTOR = """
import os, sys, time
if os.fork() == 0:
    os.execve("/bin/sleep", ["sleep", "600"], {"COLAB_GUARD_KERNEL_ID": "rt4-fake"})
time.sleep(3)  # its "kernel" elected meanwhile: it is now an ancestor of one
argv = bytes.fromhex(sys.argv[1]).decode().split("\\0")  # nothing to see on its command line
os.execv(argv[0], argv)
"""
KERNEL = KERNEL.replace("FAKE_ANCESTOR", repr(FAKE_ANCESTOR))


@pytest.fixture(scope="module")
def users():
    yield from made_users((MALLORY, OTHER))


@pytest.fixture(scope="module")
def world():
    folder = Path(tempfile.mkdtemp(prefix="cg-redteam4-"))
    folder.chmod(0o1777)
    for name, text in (("server.py", SERVER), ("kernel.py", KERNEL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o644)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def watcher(users, tmp_path_factory):
    yield from watching(tmp_path_factory.mktemp("watcher"), [MALLORY, OTHER])


class Server:
    """A user's server stand-in with one kernel (see SERVER and KERNEL)."""

    def __init__(self, world: Path, user, kernel_id: str, kernel_mode: str, mode: str,
                 pool_url: str, watcher: RunningWatcher):
        self.report = world / f"{kernel_id}.report"
        self.report.unlink(missing_ok=True)
        (world / f"{kernel_id}.report.go").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", str(world / "server.py"), str(world), kernel_id, kernel_mode,
             mode, str(self.report), str(MINER), pool_url, WALLET],
            user=user.pw_uid, group=user.pw_gid, extra_groups=[], start_new_session=True,
            cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": user.pw_dir})
        waits(watcher, lambda: watcher.knows_kernel(kernel_id), f"kernel {kernel_id} found")
        (world / f"{kernel_id}.report.go").touch()
        wait_until(lambda: "ready" in self.notes() and "server ready" in self.notes(),
                   timeout=20, what=f"{kernel_id} ready")

    def notes(self) -> list[str]:
        try:
            return self.report.read_text().split("\n")
        except FileNotFoundError:
            return []

    def pid_of(self, what: str) -> int:
        return next(int(n.split()[1]) for n in self.notes() if n.startswith(what + " "))

    def close(self) -> None:
        pids = [self.proc.pid, *(p for p in (self._maybe("kernel"), self._maybe("miner")) if p)]
        for pid in pids:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait()

    def _maybe(self, what: str) -> int | None:
        try:
            return self.pid_of(what)
        except StopIteration:
            return None


@pytest.fixture
def servers():
    started: list[Server] = []
    yield started
    for server in started:
        server.close()


def _incident_with(watcher: RunningWatcher, pid: int):
    return next((i for i in watcher.incidents()
                 if any(p["pid"] == pid for p in i.evidence["processes"])), None)


# ------------------------------------------------------ discovery and attribution


def test_a_miner_cloned_onto_the_server_with_setsid_and_env_i_is_stopped(
        watcher, users, world, pool, servers):
    """clone(CLONE_PARENT) from the kernel: the fork event names the server as the parent,
    so the child is never the kernel's by descent; setsid and ``env -i`` leave no session
    and no marker. It is still the user's, and the user's processes are all watched."""
    server = Server(world, users[MALLORY], "rt4-clone", "clone-parent", "idle", pool, watcher)
    servers.append(server)
    miner = server.pid_of("miner")
    try:  # the server's child, not the kernel's (unless stopped already)
        assert psutil.Process(miner).ppid() == server.proc.pid
    except psutil.NoSuchProcess:
        pass
    incident = waits(watcher, lambda: _incident_with(watcher, miner), "the miner's incident",
                     timeout=20)
    assert incident.user == MALLORY and incident.category == "crypto-mining"
    waits(watcher, lambda: not _alive(miner), "the miner stopped")


def test_a_miner_that_makes_itself_a_kernels_ancestor_is_stopped(
        watcher, users, world, pool, servers):
    """Missed once: the ancestors of kernels (the users' servers) were only checked at their
    exec, so a program outside every kernel's tree that started a process carrying a fresh
    marker made itself one. Every process of a user is watched now, ancestors of kernels
    included, as the user's with the kernel unknown."""
    server = Server(world, users[MALLORY], "rt4-ancestor", "fake-ancestor", "idle", pool,
                    watcher)
    servers.append(server)
    miner = server.pid_of("miner")
    incident = waits(watcher, lambda: _incident_with(watcher, miner), "the miner's incident",
                     timeout=12)
    assert incident.user == MALLORY
    assert incident.kernel_id == f"unknown-kernel:{users[MALLORY].pw_uid}"
    waits(watcher, lambda: not _alive(miner), "the miner stopped")
    assert _alive(server.proc.pid) and _alive(server.pid_of("kernel"))  # only the offender


def test_a_program_the_users_server_starts_itself_is_stopped(
        watcher, users, world, pool, servers):
    """A ``jupyter_server_config.py`` in the user's own ~/.jupyter runs in their server: a
    program it starts is in no kernel's tree, with no marker and no terminal."""
    server = Server(world, users[MALLORY], "rt4-spawn", "idle", "spawn", pool, watcher)
    servers.append(server)
    miner = server.pid_of("miner")
    incident = waits(watcher, lambda: _incident_with(watcher, miner), "the miner's incident",
                     timeout=20)
    assert incident.user == MALLORY
    waits(watcher, lambda: not _alive(miner), "the miner stopped")
    assert _alive(server.proc.pid) and _alive(server.pid_of("kernel"))  # only the offender


def test_a_miner_in_a_thread_of_the_users_server_is_stopped(
        watcher, users, world, pool, servers):
    """Missed once: the user's Jupyter server itself (an ancestor of their kernels) was not
    watched, so a miner in a thread of the server (a server extension or a
    jupyter_server_config.py the user wrote) ran unseen. The server is watched as its
    user's, kernel unknown; it is the offender, and is stopped (README: the node watcher)."""
    server = Server(world, users[MALLORY], "rt4-thread", "idle", "thread", pool, watcher)
    servers.append(server)
    incident = waits(watcher, lambda: _incident_with(watcher, server.proc.pid),
                     "the server's incident", timeout=25)
    assert incident.user == MALLORY and incident.category == "crypto-mining"
    assert incident.kernel_id == f"unknown-kernel:{users[MALLORY].pw_uid}"
    waits(watcher, lambda: not _alive(server.proc.pid), "the server stopped")


def test_a_kernel_that_execs_into_a_miner_deaf_to_sigint_is_ended(
        watcher, users, world, pool, servers):
    """The kernel's own process execs the miner with an empty environment (no marker): it
    is still that kernel, interrupted, then shut down when the interrupt does nothing."""
    server = Server(world, users[MALLORY], "rt4-exec-self", "exec-self", "idle", pool,
                    watcher)
    servers.append(server)
    miner = server.pid_of("miner")
    incident = waits(watcher, lambda: _incident_with(watcher, miner), "the miner's incident")
    assert incident.user == MALLORY and incident.kernel_id == "rt4-exec-self"
    waits(watcher, lambda: not _alive(miner), "the miner ended", timeout=40)


FLOOD = textwrap.dedent("""
    import json, socket, sys, threading
    path = sys.argv[1]
    def hammer():
        while True:
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(path)
                s.sendall(json.dumps({"type": "hello", "since": 0}).encode() + b"\\n")
                s.recv(65536)
                s.close()
            except OSError:
                pass
    for _ in range(32):
        threading.Thread(target=hammer, daemon=True).start()
    threading.Event().wait()
""")


def test_a_user_flooding_the_watchers_socket_does_not_delay_a_stop(
        watcher, users, world, pool, servers):
    """Another user's 32 threads that connect, say hello (a catch-up from the start) and
    leave, without end: the watcher's event loop still stops a miner at its exec."""
    flood = _as(users[OTHER], ["/usr/bin/python3", "-c", FLOOD, str(watcher.socket)], {})
    try:
        server = Server(world, users[MALLORY], "rt4-flood", "child", "idle", pool, watcher)
        servers.append(server)
        note = next(n for n in server.notes() if n.startswith("miner "))
        miner, started = int(note.split()[1]), float(note.split()[2])
        waits(watcher, lambda: not _alive(miner), "the miner stopped")
        stopped = time.time()
        assert flood.poll() is None  # flooding all along
        assert stopped - started < 3.0
    finally:
        flood.kill()
        flood.wait()


def test_odd_proc_content_and_a_zombie_storm_leave_the_watcher_working(
        watcher, users, world, pool, servers):
    """A name with a parenthesis and a newline, a 200 KB command line of newlines, 200
    zombies: the watcher reads on (no traceback: checked at its teardown) and stops the
    miner started next."""
    server = Server(world, users[MALLORY], "rt4-odd", "odd", "idle", pool, watcher)
    servers.append(server)
    miner = server.pid_of("miner")
    incident = waits(watcher, lambda: _incident_with(watcher, miner), "the miner's incident")
    assert incident.user == MALLORY
    waits(watcher, lambda: not _alive(miner), "the miner stopped")


def test_a_users_honest_processes_outside_kernels_are_left_alone(
        watcher, users, world, pool, servers):
    """Watched now, but honest: a helper the server runs (a language server) and a dashboard
    left running detached; and a process a root service started for the user, as OpenSSH
    runs a login's ``sshd: user@pts/0``, is not the user's to answer for."""
    server = Server(world, users[MALLORY], "rt4-honest", "idle", "honest", pool, watcher)
    servers.append(server)
    rename = "import ctypes, time; ctypes.CDLL(None).prctl(15, b'sshd', 0, 0, 0); time.sleep(60)"
    session = _as(users[MALLORY], ["/usr/bin/python3", "-c", rename], {})
    try:
        wait_until(lambda: psutil.Process(session.pid).name() == "sshd", timeout=10,
                   what="the session renamed")
        helper, daemon = server.pid_of("helper"), server.pid_of("daemon")
        _ticks_pass(watcher, 10)
        for pid in (helper, daemon, session.pid, server.proc.pid):
            assert _alive(pid) and _incident_with(watcher, pid) is None
    finally:
        session.kill()
        session.wait()
        for what in ("helper", "daemon"):
            try:
                os.kill(server.pid_of(what), signal.SIGKILL)
            except (ProcessLookupError, StopIteration):
                pass


# An SSH login as OpenSSH runs it: root's listener accepts the client's connection, forks,
# and the child drops to the user without an exec, names itself ``sshd`` and relays the
# client's keystrokes to the login shell, which runs an honest build (1,000 short programs
# four at a time, then a compiler's worth of computation on one core for 8 s); given a miner
# and a pool, the session process also mines in a thread.
SSH_LOGIN = textwrap.dedent("""
    import ctypes, os, socket, subprocess, sys, time
    uid, gid, report, build, mine = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                     sys.argv[4], sys.argv[5:])
    def note(what):
        with open(report, "a") as f:
            f.write(what + "\\n")
    listener = socket.create_server(("127.0.0.1", 0))
    if os.fork() == 0:  # the user's ssh client: a keystroke every 0.3 s, the echo read back
        client = socket.create_connection(listener.getsockname())
        while True:
            client.sendall(b"k")
            client.recv(65536)
            time.sleep(0.3)
    connection, _ = listener.accept()
    session = os.fork()
    if session == 0:  # the session process: the user's, root's program, no exec
        time.sleep(2)  # as root first (PAM opens the session): known as root's till it drops
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        ctypes.CDLL(None).prctl(15, b"sshd", 0, 0, 0)
        shell = subprocess.Popen(["/bin/sh", "-c", build], cwd="/tmp")
        note("shell %d" % shell.pid)
        if mine:  # a session process that mines in a thread of its own (see the next test)
            import threading
            sys.path.insert(0, os.path.dirname(mine[0]))
            import quiet_miner
            host, port = mine[1].split("://")[1].rsplit(":", 1)
            threading.Thread(target=quiet_miner.run, args=(host, int(port), 0.7, 300),
                             daemon=True).start()
        while True:
            connection.sendall(connection.recv(4096) * 40)  # the echo, and the build's output
    note("session %d" % session)
    while True:
        time.sleep(1)
""")
BUILD = ("seq 1 1000 | xargs -P 4 -n 1 sh -c 'echo $0 | sha256sum >/dev/null' && "
         "/usr/bin/python3 -c 'import time; end = time.time() + 8\n"
         "while time.time() < end: sum(range(10000))' && touch {done}")


def test_a_users_ssh_login_running_an_honest_build_is_left_alone(watcher, users, world):
    """A root service's session for the user (an SSH login: OpenSSH's session process, named
    ``sshd``, root's program) and the build its shell runs are watched, and honest: nothing
    recorded, nothing stopped."""
    mallory = users[MALLORY]
    before = {i.id for i in watcher.incidents()}
    sshd, session, done = _ssh_login(world, mallory)
    try:
        waits(watcher, done.exists, "the build finished", timeout=90)
        _ticks_pass(watcher, 5)
        assert _alive(session)
        assert [i.evidence for i in watcher.incidents()
                if i.id not in before and i.user == MALLORY] == []
    finally:
        os.killpg(sshd.pid, signal.SIGKILL)
        sshd.wait()


def test_a_miner_in_a_users_ssh_session_process_is_stopped(watcher, users, world, pool):
    """The session process a root service forked for the user drops to the user's uid with
    no exec (as OpenSSH's does), so discovery, which knew it as root's, reads it again at
    that uid change (a process event); it is watched from then on, and a miner in a thread
    of its own is stopped."""
    mallory = users[MALLORY]
    sshd, session, _ = _ssh_login(world, mallory, str(MINER), pool)
    try:
        incident = waits(watcher, lambda: _incident_with(watcher, session),
                         "the session's incident", timeout=25)
        assert incident.user == MALLORY and incident.category == "crypto-mining"
        assert incident.kernel_id == f"unknown-kernel:{mallory.pw_uid}"
        waits(watcher, lambda: not _alive(session), "the session stopped")
    finally:
        os.killpg(sshd.pid, signal.SIGKILL)
        sshd.wait()


def _ssh_login(world: Path, user, *mine: str) -> tuple[subprocess.Popen, int, Path]:
    """A login as SSH_LOGIN runs it: (root's listener, the session process, the file its
    build touches once done)."""
    report, done = world / "ssh.report", world / "ssh.done"
    for old in (report, done):
        old.unlink(missing_ok=True)
    report.touch(mode=0o666)  # written by root's process and the user's
    report.chmod(0o666)
    (world / "ssh.py").write_text(SSH_LOGIN)
    sshd = subprocess.Popen(["/usr/bin/python3", str(world / "ssh.py"), str(user.pw_uid),
                             str(user.pw_gid), str(report), BUILD.format(done=done), *mine],
                            start_new_session=True)
    try:
        wait_until(lambda: "shell" in report.read_text() and "session" in report.read_text(),
                   timeout=20, what="the login started")
        notes = dict(line.split() for line in report.read_text().split("\n") if line)
        session = psutil.Process(int(notes["session"]))
        assert session.name() == "sshd" and session.uids().real == user.pw_uid
        assert session.ppid() == sshd.pid
    except BaseException:
        os.killpg(sshd.pid, signal.SIGKILL)
        sshd.wait()
        raise
    return sshd, session.pid, done


def test_a_named_miner_a_root_service_runs_for_the_user_is_stopped_at_its_exec(
        watcher, users, pool):
    """What a program of the user's shows at its exec (xmrig's own options) is checked
    wherever it runs, also where the pass holds it to less (a root service's session
    process: see the next test)."""
    miner = _as(users[MALLORY], ["/usr/bin/python3", str(MINER), "-o", pool, "-u", WALLET,
                                 "-p", "x", "--donate-level", "1"], {})
    try:
        incident = waits(watcher, lambda: _incident_with(watcher, miner.pid),
                         "the miner's incident", timeout=20)
        assert incident.user == MALLORY
        assert incident.kernel_id == f"unknown-kernel:{users[MALLORY].pw_uid}"
        waits(watcher, lambda: miner.poll() is not None, "the miner stopped")
    finally:
        miner.kill()
        miner.wait()


def test_a_miner_a_root_service_runs_for_the_user_is_stopped(watcher, users, pool):
    """Missed once: a program a root service starts for the user (an SSH login, a cron or at
    job) was only checked at its exec. It is watched now as the user's, kernel unknown, with
    every signature but those that read only what its exec shows (checked then): OpenSSH's
    session process carries root's program and the name ``sshd`` (the honest test above)."""
    miner = _as(users[MALLORY], ["/usr/bin/python3", str(MINER), "-o", pool, "-u", WALLET,
                                 "-p", "x"], {})
    try:
        incident = waits(watcher, lambda: _incident_with(watcher, miner.pid),
                         "the miner's incident", timeout=10)
        assert incident.user == MALLORY and incident.category == "crypto-mining"
        assert incident.kernel_id == f"unknown-kernel:{users[MALLORY].pw_uid}"
        waits(watcher, lambda: miner.poll() is not None, "the miner stopped")
    finally:
        miner.kill()
        miner.wait()


def _as(user, argv: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(argv, user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                            env={"PATH": "/usr/bin:/bin", **env}, cwd="/",
                            start_new_session=True, **kwargs)


def test_a_marker_that_names_a_stand_in_id_makes_no_kernel(users):
    """The ids the watcher makes up itself are no marker's to claim: ``unknown-kernel:UID``
    of another user (whose offences would then be recorded under the forger's name, or the
    other way round) and ``terminal-PID`` of a shell to come (which would then not be taken
    for a terminal: only the same parent takes an id again)."""
    from colab_guard.watch.kernels import NodeKernels

    mallory, other = users[MALLORY], users[OTHER]
    stand_in, terminal = f"unknown-kernel:{other.pw_uid}", f"terminal-{os.getpid() + 50}"
    forged = [_as(mallory, ["sleep", "60"], {"COLAB_GUARD_KERNEL_ID": marker})
              for marker in (stand_in, terminal)]
    try:
        node = NodeKernels(users=(MALLORY, OTHER))
        wait_until(lambda: all(b"COLAB_GUARD" in Path(f"/proc/{p.pid}/environ").read_bytes()
                               for p in forged), timeout=10, what="the forgers started")
        node.refresh()
        assert stand_in not in node.pids() and terminal not in node.pids()
        assert node.user_of(stand_in) == OTHER
    finally:
        for proc in forged:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ parking


CROWD = int(os.environ.get("RT4_CROWD", 450))  # more than idle.SPREAD_FROM: the watcher parks the quiet ones

# A kernel with CROWD sleeping children and a few agents: Python processes blocked on a
# FIFO (quiet, so parked) until the test writes them a command and a pool URL and wallet
# (never on their command line, which would give them away at their exec).
CROWD_KERNEL = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    here, agents, crowd, report = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the watcher interrupts it at each offence
    # each in a group of its own: the interrupt (SIGINT to the kernel's group) spares them
    sleepers = [subprocess.Popen(["sleep", "900"], process_group=0) for _ in range(crowd)]
    for i in range(agents):
        subprocess.Popen([sys.executable, os.path.join(here, "agent.py"),
                          os.path.join(here, "agent-%d" % i)], process_group=0)
    with open(report, "a") as f:
        f.write("ready\\n")
    while True:
        time.sleep(1)
""")

AGENT = textwrap.dedent("""
    import ctypes, os, runpy, sys, threading, time
    with open(sys.argv[1]) as fifo:  # blocks: no CPU until told
        command, url, wallet = fifo.readline().split()
    miner = os.environ["MINER"]
    argv = [sys.executable, miner, "-o", url, "-u", wallet, "-p", "x"]
    if command == "thread-exec":  # exec from a thread that is not the process's first
        threading.Thread(target=os.execv, args=(sys.executable, argv)).start()
    elif command == "rename":  # prctl(PR_SET_NAME): no exec, no fork
        ctypes.CDLL(None).prctl(15, b"xmrig", 0, 0, 0)
    elif command == "thread-mine":  # a thread of the parked process connects and hashes
        sys.path.insert(0, os.path.dirname(miner))
        import quiet_miner
        host, port = url.split("://")[1].rsplit(":", 1)
        threading.Thread(target=quiet_miner.run, args=(host, int(port), 0.7, 300),
                         daemon=True).start()
    elif command == "vfork-exec":  # posix_spawn: vfork then exec, the child the miner
        os.posix_spawn(sys.executable, argv, {})
    elif command == "storm-exec":  # 1,500 forks as fast as it can, then the exec
        for _ in range(1500):
            if os.fork() == 0:
                os._exit(0)
            os.wait()
        os.execv(sys.executable, argv)
    elif command == "build":  # honest: a parallel build, 1,500 short programs 8 at a time
        import subprocess
        subprocess.run("seq 1 1500 | xargs -P 8 -n 1 sh -c 'echo $0 | sha256sum >/dev/null'",
                       shell=True, check=True)
        open(sys.argv[1] + ".done", "w").close()
    elif command == "dataloader":  # honest: 16 workers that each compute for a while
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(16) as workers:
            workers.map(sum, [range(3_000_000)] * 64)
        open(sys.argv[1] + ".done", "w").close()
    while True:
        time.sleep(1)
""")

ATTACKS = ("thread-exec", "rename", "thread-mine", "vfork-exec", "storm-exec")
AGENTS = (*ATTACKS, "build", "dataloader")


@pytest.fixture(scope="module")
def crowd(users, world, watcher):
    """CROWD sleepers and the agents under one kernel of mallory's, parked by the time the
    tests tell an agent what to do."""
    (world / "crowd.py").write_text(CROWD_KERNEL)
    (world / "agent.py").write_text(AGENT)
    for i in range(len(AGENTS)):
        os.mkfifo(world / f"agent-{i}")
        os.chmod(world / f"agent-{i}", 0o666)
    report = world / "crowd.report"
    mallory = users[MALLORY]
    proc = _as(mallory, ["/usr/bin/python3", str(world / "crowd.py"), str(world),
                         str(len(AGENTS)), str(CROWD), str(report)],
               {"COLAB_GUARD_KERNEL_ID": "rt4-crowd", "MINER": str(MINER)})
    try:
        wait_until(lambda: report.exists() and "ready" in report.read_text(), timeout=60,
                   what="the crowd started")
        waits(watcher, lambda: watcher.knows_kernel("rt4-crowd"), "the crowd's kernel found")
        members = [p for p in psutil.Process(proc.pid).children()]
        assert len(members) > min(CROWD, idle.SPREAD_FROM)
        _ticks_pass(watcher, 10)  # each read once, then parked at its next turn
        yield {i: f"agent-{i}" for i in range(len(AGENTS))}, proc
    finally:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            try:
                child.kill()
            except psutil.Error:
                pass
        proc.kill()
        proc.wait()


def _ticks_pass(watcher: RunningWatcher, count: int) -> None:
    import json

    beat = watcher.folder / "run" / "heartbeat.json"

    def ticks() -> int:
        try:
            return json.loads(beat.read_text())["ticks"]
        except (FileNotFoundError, ValueError, KeyError):
            return 0

    first = ticks()
    waits(watcher, lambda: ticks() >= first + count, f"{count} ticks", timeout=60)


def _argv(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:  # gone, or a zombie (a stopped miner the kernel did not reap)
        return []


def _tell_agent(world: Path, crowd, command: str, pool_url: str) -> int:
    agents, kernel = crowd
    index = AGENTS.index(command)
    [agent] = [p for p in psutil.Process(kernel.pid).children()
               if _argv(p)[-1:] == [str(world / agents[index])]]
    with open(world / agents[index], "w") as fifo:
        fifo.write(f"{command} {pool_url} {WALLET}\n")
    return agent.pid


@pytest.mark.parametrize("command", ATTACKS)
def test_a_parked_process_that_turns_miner_is_stopped(watcher, world, pool, crowd, command):
    """A parked process, told to mine: by an exec from a second thread, a rename with prctl,
    a thread that connects and hashes, a vfork'd child. Each is stopped, and recorded as
    mallory's."""
    agent = _tell_agent(world, crowd, command, pool)
    offender = agent
    if command == "vfork-exec":
        offender = waits(watcher, lambda: next(iter(psutil.Process(agent).children()), None),
                         "the spawned miner").pid
    incident = waits(watcher, lambda: _incident_with(watcher, offender), "the incident",
                     timeout=40)
    assert incident.user == MALLORY and incident.category == "crypto-mining"
    waits(watcher, lambda: not _alive(offender), "the offender stopped")
    _ticks_pass(watcher, 5)  # what is left of it (a zombie its parent does not reap): no more
    found = [i for i in watcher.incidents()
             if any(p["pid"] == offender for p in i.evidence["processes"])]
    assert len(found) == 1, [(i.id, i.evidence) for i in found]


@pytest.mark.parametrize("command", ["build", "dataloader"])
def test_honest_work_among_parked_processes_is_left_alone(watcher, world, pool, crowd, command):
    """A parallel build (1,500 short programs) and a DataLoader's 16 busy workers, among the
    parked: nothing recorded, nothing stopped."""
    _ticks_pass(watcher, 3)
    before = {i.id for i in watcher.incidents()}
    agent = _tell_agent(world, crowd, command, pool)
    done = world / (crowd[0][AGENTS.index(command)] + ".done")
    waits(watcher, done.exists, f"the {command} finished", timeout=50)
    _ticks_pass(watcher, 5)
    assert _alive(agent)
    assert [i.evidence for i in watcher.incidents() if i.id not in before] == []
