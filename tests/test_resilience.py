"""Faults the guard survives, on a real server with real kernels and processes.

In each, the guard keeps guarding the other kernels and says what happened in the server log
once, not at every tick. (Covered elsewhere: a process that vanishes mid-read, a zombie, a
denied /proc read in test_sampler.py; a failed or corrupt database in test_store_database.py.)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from jupyter_client import BlockingKernelClient

from colab_guard.act.enforce import stop_processes
from colab_guard.channel import OnDemandThread
from colab_guard.detect.conditions import FieldTest
from colab_guard.observe.processes import ProcessSampler
from colab_guard.record import metrics
from colab_guard.record.database import IncidentDatabase
from tests.conftest import PYTHON, STANDINS, incidents_in, wait_for
from tests.harness import wait_until

pytestmark = pytest.mark.integration

MINER = STANDINS / "miner.py"
NOBODY = 65534


class Lines(logging.Handler):
    """Collects the messages a logger emits (the server's log is not propagated to caplog)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def count(self, text: str) -> int:
        return sum(text in m for m in self.messages)


@pytest.fixture
def server_log(guard):
    lines = Lines()
    guard.log.addHandler(lines)
    yield lines
    guard.log.removeHandler(lines)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def miner_cell(pool: int, ignore_term: bool = False, wait: bool = False) -> str:
    """A cell that starts the stand-in miner and prints its pid; ``ignore_term``: the miner
    ignores SIGTERM, so stopping it takes the whole grace, and leaves the kernel's process
    group, so the kernel's own end does not end it."""
    argv = [str(MINER), "-o", f"stratum+tcp://127.0.0.1:{pool}", "-u", "x", "-p", "x"]
    if ignore_term:
        argv = ["-c", "import signal, runpy, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')",
                *argv]
    return (f"import subprocess\np = subprocess.Popen([{PYTHON!r}, *{argv!r}], "
            f"start_new_session={ignore_term})\n"
            f"print('PID', p.pid, flush=True)\n" + ("p.wait()\n" if wait else ""))


def pid_in(outputs) -> int:
    for out in outputs:
        for line in out.get("text", "").splitlines():
            if line.startswith("PID "):
                return int(line.split()[1])
    raise AssertionError(f"no PID line in {outputs!r}")


# ---------------------------------------------------------------- a process changes its uid

@pytest.mark.skipif(os.geteuid() != 0, reason="only root can change a process's uid")
def test_a_process_that_changes_its_uid_stays_attributed_and_is_said_once(caplog):
    # The "kernel" starts a child that, once told, drops to nobody (as a root kernel's child
    # running a setuid program would change users).
    child = ("import os, sys, time\nprint('ready', flush=True)\nsys.stdin.readline()\n"
             f"os.setuid({NOBODY})\nprint('switched', flush=True)\ntime.sleep(600)\n")
    kernel_code = f"import subprocess, sys\nsys.exit(subprocess.call([sys.executable, '-c', {child!r}]))"
    kernel = subprocess.Popen([PYTHON, "-c", kernel_code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        assert kernel.stdout.readline() == "ready\n"
        sampler = ProcessSampler(logging.getLogger("test"))
        kernels = {"k1": kernel.pid, "k2": other.pid}

        def child_of_k1(snapshots):
            return next(p for p in snapshots["k1"].processes if not p.is_kernel)

        before = child_of_k1(sampler.sample(kernels))
        kernel.stdin.write("go\n")
        kernel.stdin.flush()
        assert kernel.stdout.readline() == "switched\n"
        with caplog.at_level(logging.WARNING):
            ticks = [sampler.sample(kernels) for _ in range(3)]
        after = [child_of_k1(t) for t in ticks]
        assert before.uid == 0 and {p.uid for p in after} == {NOBODY}
        assert {p.pid for p in after} == {before.pid}  # still the kernel's
        assert all(t["k2"].kernel_process is not None for t in ticks)  # the other kernel too
        assert sampler.stats.uid_changes == 1
        assert caplog.text.count(f"process {before.pid} changed its uid from 0 to {NOBODY}") == 1
        # and the guard can still stop it
        [stopped] = stop_processes([after[-1]], grace=1.0, spare_pids={kernel.pid})
        assert stopped.outcome == "done"
    finally:
        for proc in (kernel, other):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ------------------------------------------------- a kernel shut down or restarted mid-incident

@pytest.fixture
def slow_stops(guard_config):
    # The miner ignores SIGTERM, so the stop waits out the grace: time to cull the kernel.
    guard_config.update(actions={"crypto-mining": "shutdown"}, stop_grace=4.0)


def incident_of(guard_config, kernel_id: str, status: str | None = None) -> dict | None:
    for incident in incidents_in(guard_config["incident_log"]):
        if incident["kernel_id"] == kernel_id and status in (None, incident["status"]):
            return incident
    return None


@pytest.fixture
def two_kernels(start_kernel):
    return start_kernel(), start_kernel()


@pytest.mark.parametrize("what", ["shutdown", "restart", "killed"])
async def test_a_kernel_culled_or_restarted_mid_incident_gets_honest_outcomes(
        slow_stops, what, two_kernels, guard, pool, guard_config, jp_fetch, server_log):
    victim, bystander = two_kernels
    _, outputs = await victim.run(miner_cell(pool, ignore_term=True))
    miner = pid_in(outputs)
    try:
        # The incident is on disk, acting: the stop is in its grace period.
        acting = await wait_for(lambda: incident_of(guard_config, victim.kernel_id), timeout=20)
        assert acting["status"] == "acting"
        if what == "shutdown":  # what the idle culler or the user does
            await jp_fetch("api", "kernels", victim.kernel_id, method="DELETE")
        elif what == "killed":  # the kernel dies (out of memory, a crash): it is restarted
            os.kill(guard.monitor.kernel_pids()[victim.kernel_id], signal.SIGKILL)
        else:
            await jp_fetch("api", "kernels", victim.kernel_id, "restart", method="POST", body="{}")
        # Meanwhile, another kernel starts a miner: it is stopped as usual.
        _, outputs = await bystander.run(miner_cell(pool))
        other_miner = pid_in(outputs)

        done = await wait_for(lambda: incident_of(guard_config, victim.kernel_id, "done"), timeout=30)
        outcomes = {a["action"]: (a["outcome"], a["detail"]) for a in done["actions"]}
        assert outcomes["stop"][0] == "done"  # SIGKILL after the grace, or gone with the kernel
        if what == "shutdown":
            assert outcomes["shutdown"] == ("gone", "the kernel had already been shut down")
        else:  # the restarted kernel is the one shut down
            assert outcomes["shutdown"][0] == "done", json.dumps(done["actions"])
        assert gone(miner)
        km = guard.serverapp.kernel_manager
        await wait_for(lambda: victim.kernel_id not in km.list_kernel_ids())

        other = await wait_for(lambda: incident_of(guard_config, bystander.kernel_id, "done"),
                               timeout=30)
        assert other["category"] == "crypto-mining"
        await wait_for(lambda: gone(other_miner))
        assert not [m for m in server_log.messages if "Traceback" in m or "failed;" in m]
    finally:
        kill(miner)


# ---------------------------------------------------------------- the disk fills up

@pytest.fixture
def small_disk(tmp_path, guard_config):
    """A 2 MiB tmpfs holding the incident database and log."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    guard_config.update(incident_log=str(mount / "incidents.jsonl"),
                        database_url=f"sqlite:///{mount / 'incidents.sqlite'}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


async def test_a_full_disk_never_holds_an_action_up_and_the_record_lands_later(
        small_disk, kernel, guard, pool, guard_config, jp_fetch, server_log):
    errors_before = metrics.RECORD_ERRORS._value.get()
    filler = fill(small_disk)
    reply, outputs = await kernel.run(miner_cell(pool, wait=True), timeout=60)
    miner = pid_in(outputs)

    # The action happened although nothing could be written.
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    await wait_for(lambda: gone(miner))
    status = json.loads((await jp_fetch("colab-guard", "api", "status")).body)
    assert status["incidents_unwritten"] >= 1
    assert metrics.RECORD_ERRORS._value.get() > errors_before
    # the API serves it from memory meanwhile
    listed = json.loads((await jp_fetch("colab-guard", "api", "incidents")).body)["incidents"]
    assert [i["category"] for i in listed] == ["crypto-mining"]
    await wait_for(lambda: server_log.count("cannot write the incident database") >= 1)

    filler.unlink()  # space again: the next tick writes it
    await wait_for(lambda: guard.store.unwritten == 0, timeout=20)
    database = IncidentDatabase(guard_config["database_url"])
    [stored] = database.query()
    database.close()
    assert stored.id == listed[0]["id"] and stored.status == "done"
    assert [i["id"] for i in incidents_in(guard_config["incident_log"])] == [stored.id]
    # said once each, though retried at every tick
    assert server_log.count("cannot write the incident database") == 1
    assert server_log.count("cannot write the incident log") == 1


@pytest.fixture
def read_only_log_folder(tmp_path, guard_config):
    """The incident log's folder, which the test can make read-only (a read-only bind mount)."""
    folder = tmp_path / "logs"
    folder.mkdir()
    result = subprocess.run(["mount", "--bind", str(folder), str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {result.stderr.strip()}")
    guard_config.update(incident_log=str(folder / "incidents.jsonl"))
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def remount(folder: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,bind,{mode}", str(folder)], check=True)


async def test_a_read_only_incident_log_never_holds_an_action_up_and_is_written_later(
        read_only_log_folder, kernel, guard, pool, guard_config, jp_fetch, server_log):
    errors_before = metrics.RECORD_ERRORS._value.get()
    remount(read_only_log_folder, "ro")
    try:
        reply, outputs = await kernel.run(miner_cell(pool, wait=True), timeout=60)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        await wait_for(lambda: gone(pid_in(outputs)))
        await wait_for(lambda: [i for i in guard.store.query() if i.status == "done"])
        assert metrics.RECORD_ERRORS._value.get() > errors_before
        status = json.loads((await jp_fetch("colab-guard", "api", "status")).body)
        assert status["incidents_unwritten"] == 1  # in the database, not yet in the log
        assert incidents_in(guard_config["incident_log"]) == []
    finally:
        remount(read_only_log_folder, "rw")
    await wait_for(lambda: guard.store.unwritten == 0, timeout=20)
    [logged] = incidents_in(guard_config["incident_log"])
    assert logged["status"] == "done" and logged["category"] == "crypto-mining"
    assert server_log.count("cannot write the incident log") == 1


# ---------------------------------------------- the server is stopped in the middle of an action

def start_server(workdir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(workdir / "config"),
           "JUPYTER_DATA_DIR": str(workdir / "data"), "JUPYTER_RUNTIME_DIR": str(workdir / "rt")}
    return subprocess.Popen(
        [PYTHON, "-m", "jupyter_server", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
         "--IdentityProvider.token=t", "--ServerApp.open_browser=False", "--allow-root",
         "--ServerApp.port_retries=0", "--ServerApp.jpserver_extensions=colab_guard=True",
         "--ColabGuard.sample_interval=0.5", "--ColabGuard.stop_grace=14",
         "--ColabGuard.cell_checks=False", "--ColabGuard.actions={'crypto-mining': 'stop'}",
         f"--ColabGuard.incident_log={workdir / 'incidents.jsonl'}",
         f"--ColabGuard.database_url=sqlite:///{workdir / 'incidents.sqlite'}"],
        env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=open(workdir / "server.log", "a"))


def api(port: int, path: str, body: dict | None = None) -> dict:
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method="POST" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": "token t"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_up(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            api(port, "/api/status")
            return
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)


def test_sigterm_mid_action_leaves_the_incident_marked_unfinished(tmp_path, pool):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(tmp_path, port)
    miner = None
    try:
        wait_up(port, server)
        kernel_id = api(port, "/api/kernels", {"name": "python3"})["id"]
        client = BlockingKernelClient(connection_file=str(tmp_path / "rt" / f"kernel-{kernel_id}.json"))
        client.load_connection_file()
        client.start_channels(hb=False)  # a late beat on a busy machine is no death
        client.wait_for_ready(timeout=60)
        outputs: list[dict] = []
        client.execute_interactive(miner_cell(pool, ignore_term=True), timeout=60,
                                   output_hook=lambda m: outputs.append(m["content"]))
        client.stop_channels()
        miner = pid_in(outputs)
        # recorded, and the stop is waiting out its 14 s grace: the server is told to stop
        deadline = time.monotonic() + 30
        while not incidents_in(tmp_path / "incidents.jsonl"):
            assert time.monotonic() < deadline, "no incident recorded"
            time.sleep(0.1)
        assert incidents_in(tmp_path / "incidents.jsonl")[0]["status"] == "acting"
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) is not None

        server = start_server(tmp_path, port)
        wait_up(port, server)
        [incident] = api(port, "/colab-guard/api/incidents")["incidents"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        if miner is not None:
            kill(miner)
    assert incident["status"] == "unfinished"
    outcomes = {a["action"]: a["outcome"] for a in incident["actions"]}
    assert outcomes == {"record": "done", "warn": "done", "stop": "unknown"}
    assert [a["detail"] for a in incident["actions"] if a["action"] == "stop"] == [
        "the server stopped before this action was reported done"]
    # said once, at the second start, and the JSON lines log learns of it too
    assert (tmp_path / "server.log").read_text().count("1 incident(s) were interrupted by a "
                                                      "server stop; marked unfinished") == 1
    assert incidents_in(tmp_path / "incidents.jsonl")[0]["status"] == "unfinished"


# ------------------------------------------------------- one signature raises at server level

async def test_a_signature_that_raises_is_disabled_by_name_and_the_others_still_act(
        kernel, guard, pool, guard_config, jp_fetch, server_log):
    class Exploding(FieldTest):
        def test(self, view):
            raise RuntimeError("boom")

    guard.engine.rules.signatures["mining-known-miner"].when = Exploding("name", [])
    reply, outputs = await kernel.run(miner_cell(pool, wait=True), timeout=60)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    incident = (await wait_for(lambda: incident_of(guard_config, kernel.kernel_id, "done")))
    assert "mining-known-miner" not in incident["signatures"]
    assert "mining-stratum-url" in incident["signatures"]
    await wait_for(lambda: gone(pid_in(outputs)))

    status = json.loads((await jp_fetch("colab-guard", "api", "status")).body)
    assert status["signatures_failed"] == {"mining-known-miner": "RuntimeError: boom"}
    assert server_log.count("'mining-known-miner'") == 1  # once, though every tick sees it
    assert "is disabled" in next(m for m in server_log.messages if "mining-known-miner" in m)


@pytest.fixture
def cell_checks_on(guard_config):
    guard_config.update(cell_checks=True)


async def test_a_cell_signature_that_raises_is_disabled_once_for_every_kernel(
        cell_checks_on, two_kernels, guard, jp_fetch, server_log):
    """Each kernel's cells are read by an engine of its own: a cell signature that raises is
    switched off for all of them at once, said once, and listed in the status; the other cell
    signatures still refuse, and honest cells run."""
    class Exploding(FieldTest):
        def test(self, view):
            raise RuntimeError("boom")

    guard.rules.signatures["cell-reverse-shell"].when = Exploding("cell", [])
    for kernel in two_kernels:
        await wait_for(lambda: guard.channel.connected(kernel.kernel_id), timeout=30)
        reply, outputs = await kernel.run("print('it ran')")
        assert reply["status"] == "ok" and "it ran" in kernel.text(outputs)
        reply, outputs = await kernel.run(
            "import subprocess\nsubprocess.Popen(['./' + 'xm' + 'rig', '--donate-level', '1'])\n"
            "print('it ran')")
        assert reply["ename"] == "CellRefused" and "it ran" not in kernel.text(outputs)

    status = json.loads((await jp_fetch("colab-guard", "api", "status")).body)
    assert status["signatures_failed"] == {"cell-reverse-shell": "RuntimeError: boom"}
    assert server_log.count("'cell-reverse-shell'") == 1


def _cell_check_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("colab-guard-cells")]


async def test_no_cell_check_thread_idles_between_a_kernels_cells(
        cell_checks_on, two_kernels, guard):
    """Each kernel's cells are read on a thread of their own, which exists only while there
    are cells to read: two kernels idle between cells hold no thread (one thread a live kernel
    idled for nothing)."""
    for kernel in two_kernels:
        await wait_for(lambda: guard.channel.connected(kernel.kernel_id), timeout=30)
        reply, outputs = await kernel.run("print('checked and run')")
        assert reply["status"] == "ok" and "checked and run" in kernel.text(outputs)
    assert len(guard.channel._cell_checks) == 2  # each kernel's engine kept, with its memory
    await wait_for(lambda: not _cell_check_threads(), timeout=10)


def test_an_on_demand_thread_runs_calls_in_order_then_ends():
    worker, ran, gate = OnDemandThread("colab-guard-test"), [], threading.Event()
    first = worker.submit(gate.wait, 30)
    later = [worker.submit(ran.append, i) for i in range(5)]
    failing = worker.submit(int, "not a number")
    assert [t.name for t in threading.enumerate()].count("colab-guard-test") == 1
    gate.set()
    assert first.result(timeout=30) is True and [f.result(timeout=30) for f in later] == [None] * 5
    assert ran == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        failing.result(timeout=30)
    wait_until(lambda: "colab-guard-test" not in [t.name for t in threading.enumerate()],
               timeout=10, what="the thread ended once idle")
    assert worker.submit(ran.append, 5).result(timeout=30) is None and ran[-1] == 5  # anew


def test_an_on_demand_thread_shut_down_cancels_what_has_not_started():
    worker, gate = OnDemandThread("colab-guard-test"), threading.Event()
    running = worker.submit(gate.wait, 30)
    wait_until(running.running, timeout=10, what="the first call started")
    queued = worker.submit(print, "never")
    worker.shutdown()
    gate.set()
    assert running.result(timeout=30) is True and queued.cancelled()
