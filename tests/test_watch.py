"""The node watcher, for real: Unix users of its own, kernels run as them, the watcher as root.

Needs root (CI runs as root): the fixtures create two unprivileged users
(cgw<pid>-alice, cgw<pid>-bob, named after the test run so that runs side by side never
share one; removed at teardown), run "kernels" as them (a small
Python process with the kernel's marker in its environment, in a session of its own as
jupyter_client starts kernels, that records the SIGINTs it gets), the stand-in pool on
127.0.0.1, and ``python -m colab_guard.watch`` as root with a root-only config file and a
database and log in a temporary folder.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from colab_guard.record.database import IncidentDatabase, IncidentStore
from colab_guard.watch.app import Watcher, WatchError
from tests.harness import GuardedServer, free_port, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/sbin/useradd").exists(),
                                reason="the node watcher's tests create Unix users: root only")

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "colab-guard-watch.service"
MINER = ROOT / "tests" / "standins" / "miner.py"
#: per test run: another run on the machine must never see, remove or signal our users
ALICE, BOB = f"cgw{os.getpid()}-alice", f"cgw{os.getpid()}-bob"
WALLET = "4" + "A" * 94

KERNEL = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    mode, report, miner, url, wallet = sys.argv[1:6]
    def note(what):
        with open(report, "a") as f:
            f.write(what + "\\n")
    signal.signal(signal.SIGINT, lambda *_: note("SIGINT"))
    while not os.path.exists(report + ".go"):  # as a cell runs once the kernel has started
        time.sleep(0.02)
    argv = [sys.executable, miner, "-o", url, "-u", wallet, "-p", "x"]
    if mode == "miner":
        note("miner %d" % subprocess.Popen(argv).pid)
    elif mode == "double-fork":  # detached, and its environment wiped before the exec
        read, write = os.pipe()
        if os.fork() == 0:
            os.setsid()
            child = os.fork()
            if child == 0:
                os.execvp("env", ["env", "-i", *argv])
            os.write(write, b"%d" % child)
            os._exit(0)
        os.wait()
        note("miner " + os.read(read, 32).decode())
    elif mode == "non-dumpable":  # hides its exe, maps, fds and environment from its user
        hide = ("import ctypes, runpy, sys; ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); "
                "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
        note("miner %d" % subprocess.Popen([sys.executable, "-c", hide, *argv[1:]]).pid)
    elif mode == "left-behind":  # detached; starts mining once the kernel is gone
        kernel = os.getpid()
        read, write = os.pipe()
        if os.fork() == 0:
            os.setsid()
            child = os.fork()
            if child == 0:
                while True:
                    try:
                        os.kill(kernel, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.05)
                os.execv(sys.executable, argv)
            os.write(write, b"%d" % child)
            os._exit(0)
        os.wait()
        note("miner " + os.read(read, 32).decode())
    note("ready")
    while True:
        time.sleep(0.05)
""")


def _remove_user(name: str) -> None:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    for proc in psutil.process_iter(["uids"]):  # only this test's users' processes
        if proc.info["uids"] and proc.info["uids"].real == uid:
            proc.kill()
    subprocess.run(["userdel", "-r", name], capture_output=True)


def made_users(names) -> Iterator[dict]:
    """Unix users with these names (any left over by an interrupted run replaced), name ->
    passwd entry; removed after."""
    made = {}
    for name in names:
        _remove_user(name)
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
        made[name] = pwd.getpwnam(name)
    yield made
    for name in made:
        _remove_user(name)


@pytest.fixture(scope="module")
def users():
    yield from made_users((ALICE, BOB))


@pytest.fixture(scope="module")
def world():
    """A folder every test user can read (the kernel script) and write (its reports)."""
    folder = Path(tempfile.mkdtemp(prefix="cg-watch-"))
    folder.chmod(0o1777)
    (folder / "kernel.py").write_text(KERNEL)
    (folder / "kernel.py").chmod(0o644)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)])


@pytest.fixture(scope="module")
def pool():
    proc = subprocess.Popen([sys.executable, "-m", "tests.standins.pool"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    yield f"stratum+tcp://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def unit_settings() -> dict[str, str]:
    """The systemd unit's [Service] settings (the last of a repeated key wins)."""
    found, section = {}, None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found[key] = value
    return found


def confined(argv: list[str]) -> list[str]:
    """The watcher as the systemd unit runs it: root with only the unit's capabilities and
    no new privileges (setpriv, where installed), so the tests show that they suffice."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return argv
    caps = [c.lower().removeprefix("cap_")
            for c in unit_settings()["CapabilityBoundingSet"].split()]
    return [setpriv, "--no-new-privs", "--inh-caps=-all",
            "--bounding-set=-all," + ",".join(f"+{c}" for c in caps), "--", *argv]


def watcher_config(folder: Path, users: list[str], **settings) -> Path:
    """A watcher config file for a test (root's, as the watcher requires): ``users`` watched,
    quick ticks, its database, log, heartbeat and socket under ``folder``; ``settings``
    (``c.Watcher.<name>`` values) add to or replace those, None leaving one out."""
    values = {"users": users, "sample_interval": 0.3, "stop_grace": 0.5,
              "database_url": f"sqlite:///{folder / 'incidents.sqlite'}",
              "incident_log": str(folder / "incidents.jsonl"), "strike_limit": 0,
              "heartbeat_file": str(folder / "run" / "heartbeat.json"),
              "metrics_port": free_port(), "user_socket": str(folder / "run" / "watch.sock"),
              **settings}
    config = folder / "watch_config.py"
    config.write_text("".join(f"c.Watcher.{name} = {value!r}\n"
                              for name, value in values.items() if value is not None))
    config.chmod(0o644)
    return config


def launch_watcher(config: Path, log: Path, python: str = sys.executable,
                   env: dict | None = None) -> subprocess.Popen:
    """``python -m colab_guard.watch`` with that config, confined as its systemd unit is,
    writing to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(confined([python, "-m", "colab_guard.watch",
                                          f"--Watcher.config_file={config}",
                                          "--Watcher.gpu_sampling=False"]),
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)


class RunningWatcher:
    def __init__(self, folder: Path, proc: subprocess.Popen, log: Path, socket: Path):
        self.folder, self.proc, self.log_path, self.socket = folder, proc, log, socket
        self._store = None

    @property
    def store(self) -> IncidentStore:  # opened once the watcher has created it
        if self._store is None:
            self._store = IncidentStore(IncidentDatabase(
                f"sqlite:///{self.folder / 'incidents.sqlite'}"))
        return self._store

    def log(self) -> str:
        return self.log_path.read_text()

    def incidents(self, **query):
        return [i for i in self.store.query() if i.status == "done"]

    def knows_kernel(self, kernel_id: str) -> bool:
        return f"kernel {kernel_id} of user" in self.log()


def watching(folder: Path, users: list[str], **settings) -> Iterator[RunningWatcher]:
    """A watcher for ``users`` (its files in ``folder``: root's alone), its users' socket in
    a folder they reach, as /run/colab-guard; stopped after, its log free of tracebacks.
    ``settings``: more ``c.Watcher.<name>`` values (watcher_config)."""
    run = Path(tempfile.mkdtemp(prefix="cg-watch-run-"))
    run.chmod(0o755)
    socket = run / "watch.sock"
    config = watcher_config(folder, users, user_socket=str(socket), **settings)
    log = folder / "watcher.log"
    proc = launch_watcher(config, log)
    running = RunningWatcher(folder, proc, log, socket)
    wait_until(lambda: "sampling every 0.3s" in running.log() or proc.poll() is not None,
               timeout=30, what="the watcher started")
    assert proc.poll() is None, running.log()
    yield running
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)
    shutil.rmtree(run, ignore_errors=True)
    assert "Traceback" not in running.log(), running.log()


@pytest.fixture(scope="module")
def watcher(users, tmp_path_factory):
    yield from watching(tmp_path_factory.mktemp("watcher"), [ALICE, BOB])


class Kernel:
    """A kernel-like process of a test user: the marker in its environment, its own session."""

    def __init__(self, world: Path, user, kernel_id: str, mode: str, pool_url: str,
                 extra_env: dict | None = None, watcher: RunningWatcher | None = None):
        self.kernel_id = kernel_id
        self.report = world / f"{kernel_id}.report"
        self.report.unlink(missing_ok=True)
        go = world / f"{kernel_id}.report.go"
        go.unlink(missing_ok=True)
        env = {"PATH": "/usr/bin:/bin", "HOME": user.pw_dir, "COLAB_GUARD_KERNEL_ID": kernel_id,
               **(extra_env or {})}
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", str(world / "kernel.py"), mode, str(self.report), str(MINER),
             pool_url, WALLET], user=user.pw_uid, group=user.pw_gid, extra_groups=[], env=env,
            start_new_session=True, cwd="/")
        if watcher is not None:  # its first program runs once the watcher knows the kernel
            waits(watcher, lambda: watcher.knows_kernel(kernel_id), f"kernel {kernel_id} found")
        go.touch()
        wait_until(lambda: "ready" in self.notes(), timeout=20, what=f"kernel {kernel_id} ready")

    def notes(self) -> list[str]:
        try:
            return self.report.read_text().split("\n")
        except FileNotFoundError:
            return []

    @property
    def miner_pid(self) -> int:
        return next(int(n.split()[1]) for n in self.notes() if n.startswith("miner "))

    def close(self) -> None:
        for proc in [self.proc]:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


@pytest.fixture
def kernels():
    started: list[Kernel] = []
    yield started
    for kernel in started:
        kernel.close()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _incident_of(watcher: RunningWatcher, kernel_id: str):
    return next((i for i in watcher.incidents() if i.kernel_id == kernel_id), None)


def waits(watcher: RunningWatcher, predicate, what: str, timeout: float = 30):
    """wait_until, failing with the watcher's log (a loaded machine: generous timeouts)."""
    try:
        return wait_until(predicate, timeout=timeout, what=what)
    except AssertionError as err:
        raise AssertionError(f"{err}; the watcher's log:\n{watcher.log()[-4000:]}") from None


# ---------------------------------------------------------------- enforcement


def test_a_users_miner_is_stopped_the_kernel_interrupted_and_the_user_recorded(
        watcher, users, world, pool, kernels):
    kernel = Kernel(world, users[ALICE], "k-alice-1", "miner", pool,
                    watcher=watcher)
    kernels.append(kernel)
    miner = kernel.miner_pid
    incident = waits(watcher, lambda: _incident_of(watcher, "k-alice-1"), "the incident recorded")
    assert incident.user == ALICE and incident.category == "crypto-mining"
    waits(watcher, lambda: not _alive(miner), "the miner stopped")
    waits(watcher, lambda: "SIGINT" in kernel.notes(), "the kernel got SIGINT")
    steps = {a.action: a.outcome for a in incident.actions}
    assert steps.get("interrupt") == "done", incident.actions
    assert _alive(kernel.proc.pid)  # interrupted, not killed
    line = (watcher.folder / "incidents.jsonl").read_text()
    assert ALICE in line and "k-alice-1" in line
    for record in ("incidents.jsonl", "incidents.sqlite"):  # every user's incidents: root's
        assert (watcher.folder / record).stat().st_mode & 0o007 == 0


def test_a_detached_miner_with_a_wiped_environment_is_still_the_kernels(
        watcher, users, world, pool, kernels):
    kernel = Kernel(world, users[ALICE], "k-alice-2", "double-fork", pool,
                    watcher=watcher)
    kernels.append(kernel)
    miner = kernel.miner_pid
    incident = waits(watcher, lambda: _incident_of(watcher, "k-alice-2"),
                     "the detached miner's incident")
    assert incident.user == ALICE
    assert any(p["pid"] == miner for p in incident.evidence["processes"])
    waits(watcher, lambda: not _alive(miner), "the detached miner stopped")


def test_a_miner_left_behind_by_a_killed_kernel_is_still_its_users(
        watcher, users, world, pool, kernels):
    kernel = Kernel(world, users[ALICE], "k-alice-4", "left-behind", pool,
                    watcher=watcher)
    kernels.append(kernel)
    miner = kernel.miner_pid
    waits(watcher, lambda: watcher.knows_kernel("k-alice-4"), "the kernel found")
    kernel.proc.kill()  # the kernel alone; the detached process lives on and starts mining
    kernel.proc.wait()
    incident = waits(watcher, lambda: _incident_of(watcher, "k-alice-4"),
                     "the left-behind miner's incident")
    assert incident.user == ALICE
    assert any(p["pid"] == miner for p in incident.evidence["processes"])
    steps = {a.action: a for a in incident.actions}
    assert steps["interrupt"].outcome == "gone"
    waits(watcher, lambda: not _alive(miner), "the left-behind miner stopped")
    # Its id was not given to the orphan: no kernel of that id has a process now.
    assert f"kernel k-alice-4 of user {ALICE} (uid" in watcher.log()
    assert watcher.log().count("kernel k-alice-4 of user") == 1


def test_a_non_dumpable_miner_is_seen_whole(watcher, users, world, pool, kernels):
    kernel = Kernel(world, users[ALICE], "k-alice-5", "non-dumpable", pool,
                    watcher=watcher)
    kernels.append(kernel)
    miner = kernel.miner_pid
    # Non-dumpable: its /proc entries are root's, so its own user (and that user's server)
    # cannot read its fds, hence its sockets; the watcher, with CAP_SYS_PTRACE, can.
    waits(watcher, lambda: not _alive(miner) or os.stat(f"/proc/{miner}").st_uid == 0,
          "the miner made itself non-dumpable")
    incident = waits(watcher, lambda: _incident_of(watcher, "k-alice-5"),
                     "the non-dumpable miner's incident")
    assert incident.user == ALICE and incident.category == "crypto-mining"
    [evidence] = [p for p in incident.evidence["processes"] if p["pid"] == miner]
    assert evidence.get("sockets"), evidence
    waits(watcher, lambda: not _alive(miner), "the non-dumpable miner stopped")


def test_root_and_other_users_processes_are_never_touched(watcher, users, world, pool, kernels):
    # Both carry alice's kernel id in their environment and run the very same miner.
    env = {"PATH": "/usr/bin:/bin", "COLAB_GUARD_KERNEL_ID": "k-alice-3"}
    argv = ["/usr/bin/python3", str(MINER), "-o", pool, "-u", WALLET, "-p", "x"]
    kernel = Kernel(world, users[ALICE], "k-alice-3", "idle", pool,
                    watcher=watcher)
    kernels.append(kernel)
    as_root = subprocess.Popen(argv, env=env, start_new_session=True)
    bob = users[BOB]
    as_bob = subprocess.Popen(argv, env=env, user=bob.pw_uid, group=bob.pw_gid, extra_groups=[],
                              start_new_session=True, cwd="/")
    bob_kernel = subprocess.Popen(argv, user=bob.pw_uid, group=bob.pw_gid, extra_groups=[],
                                  start_new_session=True, cwd="/",
                                  env={**env, "COLAB_GUARD_KERNEL_ID": "k-bob-own"})
    try:
        # The watcher has seen them all: bob's own "kernel" (a miner) is stopped, by then
        # the others have been in more than one tick.
        incident = waits(watcher, lambda: _incident_of(watcher, "k-bob-own"),
                         "bob's own kernel's incident")
        assert incident.user == BOB
        waits(watcher, lambda: bob_kernel.poll() is not None, "bob's kernel shut")
        assert as_root.poll() is None
        assert _incident_of(watcher, "k-alice-3") is None
        assert f"kernel k-alice-3 of user {ALICE}" in watcher.log()
        for incident in watcher.incidents():
            pids = {p["pid"] for p in incident.evidence["processes"]}
            assert as_root.pid not in pids
            # bob's miner naming alice's kernel is never alice's; judged once bob has a kernel
            # here, it is bob's with the kernel unknown (attribution.py), and stopped as such
            if as_bob.pid in pids:
                assert (incident.user, incident.kernel_id) == (BOB, f"unknown-kernel:{bob.pw_uid}")
        if as_bob.poll() is not None:  # stopped: its incident is written just after
            waits(watcher, lambda: any(as_bob.pid in {p["pid"] for p in i.evidence["processes"]}
                                       for i in watcher.incidents()), "bob's miner's incident")
    finally:
        for proc in (as_root, as_bob, bob_kernel):
            proc.kill()
            proc.wait()


def test_the_watcher_beats_and_serves_its_metrics(watcher):
    import json
    import re
    import urllib.request

    beat_file = watcher.folder / "run" / "heartbeat.json"

    def beat():
        try:
            return json.loads(beat_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    first = waits(watcher, beat, "a heartbeat")
    waits(watcher, lambda: (beat() or {}).get("ticks", 0) > first["ticks"], "a later heartbeat")
    assert first["proc_events"] is True and first["pid"] == watcher.proc.pid
    assert beat_file.stat().st_mode & 0o777 == 0o644
    assert beat_file.parent.stat().st_mode & 0o777 == 0o755
    port = re.search(r"metrics on http://127.0.0.1:(\d+)/", watcher.log()).group(1)
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
    assert "colab_guard_watch_heartbeat_timestamp_seconds" in page
    assert 'colab_guard_watch_proc_events_total{kind="exec"}' in page
    assert "colab_guard_kernels_monitored" in page
    assert "colab_guard_watch_switch_records_lost_total" in page
    if shutil.which("setpriv"):  # it ran with the systemd unit's capabilities alone
        status = Path(f"/proc/{watcher.proc.pid}/status").read_text()
        effective = int(re.search(r"CapEff:\s*([0-9a-f]+)", status).group(1), 16)
        assert effective == (1 << 2) | (1 << 5) | (1 << 12) | (1 << 19) | (1 << 38)
        # dac_read_search, kill, net_admin, sys_ptrace, perfmon: and they suffice
        assert "process events on, context-switch records on" in watcher.log()


@pytest.mark.parametrize("events", [True, False])
def test_a_kernel_is_found_after_the_exec_that_follows_its_fork(users, events):
    """A kernel is first a fork of its server, without the marker: seen then, it must be read
    again once it has exec'd (named by an exec event, or while it is young)."""
    from colab_guard.watch.kernels import NodeKernels

    alice = users[ALICE]
    later = ("import os, sys; sys.stdin.readline(); "  # exec'd once the test says so
             "os.execve(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)'], "
             "{'COLAB_GUARD_KERNEL_ID': 'k-alice-exec'})")
    proc = subprocess.Popen(["/usr/bin/python3", "-c", later], user=alice.pw_uid,
                            group=alice.pw_gid, extra_groups=[], env={"PATH": "/usr/bin"},
                            start_new_session=True, cwd="/", stdin=subprocess.PIPE)
    try:
        node = NodeKernels(users=(ALICE,))
        node.events_live = events
        node.refresh()
        assert "k-alice-exec" not in node.pids()  # not yet exec'd: no marker
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        environ = Path(f"/proc/{proc.pid}/environ")
        wait_until(lambda: b"COLAB_GUARD_KERNEL_ID" in environ.read_bytes(), timeout=10,
                   what="the exec")
        if events:
            node.exec_seen(proc.pid)  # as proc_events.py tells it
        node.refresh()
        assert node.pids().get("k-alice-exec") == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_the_watcher_never_signals_root(watcher, users):
    from colab_guard.watch.kernels import NodeKernels

    node = NodeKernels(users=(ALICE,))
    assert not node.may_signal(psutil.Process(os.getpid()))
    assert not node.may_signal(psutil.Process(1))


def _python_for_users() -> str | None:
    """An interpreter other users can run with this environment's packages: this one's
    (a virtual environment's base may sit in root's home, out of their reach) or the
    system's of the same version, given the packages on PYTHONPATH."""
    base = os.path.realpath(sys.executable)
    if all(os.stat(folder).st_mode & 0o005 == 0o005 for folder in Path(base).parents):
        return sys.executable
    system = "/usr/bin/python3"
    found = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True) if Path(system).exists() else None
    if found is None or found.stdout.strip() != str(tuple(sys.version_info[:2])):
        return None
    return system


class UsersServer(GuardedServer):
    """A guarded ``jupyter server`` run as a test user, in a folder of that user's."""

    def __init__(self, user, folder: Path, python: str, guard: dict | None = None):
        folder.mkdir(mode=0o755, exist_ok=True)
        os.chown(folder, user.pw_uid, user.pw_gid)
        super().__init__(guard=guard, folder=folder)
        # The operator's config, out of the user's reach (the user's own folder would let
        # them replace it); jupyter_core must not try to write its "migrated" mark there.
        operator = Path(tempfile.mkdtemp(prefix="cg-watch-operator-"))
        operator.chmod(0o755)
        shutil.copy(self.dir / "config" / "jupyter_server_config.json", operator)
        (operator / "migrated").touch()
        shutil.rmtree(self.dir / "config")
        self.env["JUPYTER_CONFIG_DIR"] = str(operator)
        self.operator_config = operator

        self.user = user
        self.env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        self.argv = [python if a == sys.executable else a for a in self.argv
                     if a != "--allow-root"]
        if python != sys.executable:
            import site

            self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *site.getsitepackages()])

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.operator_config, ignore_errors=True)

    def launch(self) -> subprocess.Popen:
        log = open(self.log_path, "wb")  # noqa: SIM115 (the server writes it until it stops)
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.dir, stdout=log,
                                        stderr=subprocess.STDOUT, user=self.user.pw_uid,
                                        group=self.user.pw_gid, extra_groups=[])
        return self.process


# ---------------------------------------------------------------- configuration


def _configure(*argv: str) -> Watcher:
    watcher = Watcher()
    watcher.configure(list(argv))
    return watcher


def test_a_root_only_config_file_is_read(tmp_path):
    config = tmp_path / "watch_config.py"
    config.write_text("c.Watcher.sample_interval = 0.7\nc.Watcher.min_uid = 2000\n")
    watcher = _configure(f"--Watcher.config_file={config}", "--Watcher.min_uid=3000")
    assert watcher.sample_interval == 0.7 and watcher.min_uid == 3000  # the command line wins


@pytest.mark.parametrize("how", ["user-owned", "group-writable", "world-writable",
                                 "folder-user-owned"])
def test_a_config_file_a_user_could_write_is_refused(tmp_path, users, how):
    alice = users[ALICE]
    folder = tmp_path / "etc"
    folder.mkdir()
    config = folder / "watch_config.json"
    config.write_text('{"Watcher": {"enabled": false}}')
    config.chmod(0o644)
    if how == "user-owned":
        os.chown(config, alice.pw_uid, alice.pw_gid)
    elif how == "group-writable":
        config.chmod(0o664)
    elif how == "world-writable":
        config.chmod(0o646)
    else:
        os.chown(folder, alice.pw_uid, alice.pw_gid)
    with pytest.raises(WatchError, match="refusing config file"):
        _configure(f"--Watcher.config_file={config}")


def test_the_command_refuses_a_users_config_file_with_one_line(tmp_path, users):
    config = tmp_path / "watch_config.py"
    config.write_text("c.Watcher.enabled = False\n")
    os.chown(config, users[ALICE].pw_uid, -1)
    done = subprocess.run([sys.executable, "-m", "colab_guard.watch",
                           f"--Watcher.config_file={config}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert f"refusing config file {config}: it must be owned by root" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("argv, message", [
    (["--Watcher.strike_limt=1"], "Watcher.strike_limt is not a setting"),
    (["--Watcher.sample_interval=0"], "sample_interval"),
    (["--ColabGuard.enabled=False"], "ColabGuard is not configurable here"),
    (["--Watcher.config_file=/nonexistent/watch.py"], "does not exist"),
])
def test_bad_settings_are_refused(argv, message):
    with pytest.raises(WatchError, match=message):
        _configure(*argv)


# ---------------------------------------------------------------- deployment


def test_the_systemd_unit_is_valid_and_hardened(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    settings = unit_settings()
    assert settings["ExecStart"].endswith("colab-guard watch")
    assert settings["User"] == "root" and settings["NoNewPrivileges"] == "yes"
    assert set(settings["CapabilityBoundingSet"].split()) == {
        "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_KILL", "CAP_NET_ADMIN", "CAP_PERFMON"}
    assert settings["ProtectSystem"] == "strict" and settings["UMask"] == "0027"
    assert "ProtectProc" not in settings and "PrivatePIDs" not in settings  # it sees every process
    # verify needs the program to exist: this environment's colab-guard stands in for it
    program = Path(sys.executable).parent / "colab-guard"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(settings["ExecStart"].split()[0], str(program)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if UNIT.name in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_a_metrics_client_that_hangs_up_leaves_no_traceback(watcher):
    """A port scan or a health check connects to the metrics port and resets the connection
    before its request: the watcher's log stays free of tracebacks (the red-team tests found
    prometheus_client's server printing one), and the metrics are served on."""
    import re
    import socket
    import struct
    import urllib.request

    port = int(re.search(r"metrics on http://127.0.0.1:(\d+)/", watcher.log()).group(1))
    for _ in range(3):
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.send(b"GET / HT")
        client.close()  # an RST, with the request line half sent
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
    assert "colab_guard_watch_heartbeat_timestamp_seconds" in page
    assert "Traceback" not in watcher.log(), watcher.log()[-2000:]
