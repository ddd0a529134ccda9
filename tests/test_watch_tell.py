"""The node watcher tells the user's own Jupyter server: for real, the watcher as root, a
``jupyter server`` as an unprivileged test user (the fixtures of test_watch.py).

One incident per offence (the watcher's; the server records none), the cell shows why it
was interrupted within 2 s of the incident, the server's REST API lists it, and another
user connecting to the watcher's socket never gets it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import textwrap
import time
import urllib.error
from pathlib import Path

import pytest

from tests.test_watch import (  # noqa: F401 (fixtures)
    ALICE, BOB, MINER, WALLET, UsersServer, _alive, _incident_of, _python_for_users, pool,
    users, waits, watcher, world,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates Unix users: root only")

#: a client of the watcher's socket, run as a test user: what it is told, as JSON lines;
#: with an incident id, it then appeals that incident and prints the answer
CLIENT = textwrap.dedent("""
    import json, socket, sys
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(sys.argv[1])
    sock.sendall(b'{"type": "hello", "since": 0}\\n')
    lines = sock.makefile()
    for line in lines:
        print(line.strip(), flush=True)
        if json.loads(line)["type"] == "caught_up":
            break
    if len(sys.argv) > 2:
        sock.sendall(json.dumps({"type": "appeal", "request": "r1", "incident_id": sys.argv[2],
                                 "text": "not mine"}).encode() + b"\\n")
        for line in lines:
            if json.loads(line)["type"] == "appeal":
                print(line.strip(), flush=True)
                break
""")


@pytest.fixture
def python():
    found = _python_for_users()
    if found is None:
        pytest.skip("no Python interpreter with this environment's packages that a test user "
                    "can run")
    return found


def run_cell(client, code: str, timeout: float = 60) -> tuple[dict, list[tuple[float, dict]]]:
    """Execute a cell; its reply and its iopub messages, each with when it arrived."""
    msg_id = client.execute(code)
    outputs = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = client.get_iopub_msg(timeout=deadline - time.monotonic())
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        outputs.append((time.time(), msg))
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    while True:  # kernel_info replies to wait_for_ready may still be queued
        reply = client.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"], outputs


def load_hook(client) -> None:
    """The kernel hook, as the startup file loads it (the test user's interpreter may be the
    system's, whose prefix lacks the package's startup file)."""
    reply, _ = run_cell(client, "import colab_guard.kernel as k; k.load_in_kernel(); "
                                "assert k._guard is not None, 'no hook'")
    assert reply["status"] == "ok", reply


def job(world, pool: str, name: str = "job.sh", before: str = "", rename: str = "") -> str:
    """A script that runs the stand-in miner (renamed, if asked), written by the test: the
    cell only runs the script, so the cell check (which would refuse a cell that names the
    pool) lets it run, and what stops it is the watcher seeing the program."""
    path = world / name
    path.write_text(f"{before}\nexec /usr/bin/python3 {MINER} -o {pool} -u {WALLET} -p x"
                    + (f" --rename {rename}" if rename else "") + "\n")
    path.chmod(0o755)
    return str(path)


def notices(outputs) -> list[tuple[float, dict]]:
    return [(t, m) for t, m in outputs if m["msg_type"] == "display_data"
            and "colab_guard" in m["content"].get("metadata", {})]


def told_as(user, python: str, socket, appeal: str = "") -> list[dict]:
    done = subprocess.run([python, "-c", CLIENT, str(socket), *([appeal] if appeal else [])],
                          user=user.pw_uid,
                          group=user.pw_gid, extra_groups=[], capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_the_users_server_tells_the_watchers_incident_once_and_the_cell_says_why(
        watcher, users, world, pool, python):
    server = covered_server(watcher, users[ALICE], world / "alice-told", python)
    client = None
    try:
        status = waits(watcher, lambda: (lambda s: s["watcher"]["covered"] and s)(
            server.api("GET", "colab-guard/api/status")), "the server covered by the watcher")
        assert status["processes_checked_by"] == "node watcher"
        kernel_id, client = server.start_kernel()
        waits(watcher, lambda: watcher.knows_kernel(kernel_id), "the kernel found")
        load_hook(client)
        reply, outputs = run_cell(client, "import subprocess, time\n"
                                          f"subprocess.Popen(['/bin/sh', {job(world, pool)!r}])\n"
                                          "while True:\n    time.sleep(0.05)\n")
        # Read from the watcher's database, which its writer may reach a moment after the
        # interrupt (the message the cell shows names the incident already).
        incident = waits(watcher, lambda: _incident_of(watcher, kernel_id),
                         f"the watcher's incident (the cell said {reply}, {outputs})")
        assert incident.user == ALICE
        # The cell says why, within 2 s of the watcher's incident.
        assert reply["status"] == "error", (reply, outputs, incident.actions, incident.time)
        assert "stopped by the platform's usage guard" in reply["traceback"][0]
        [(arrived, notice)] = notices(outputs)
        assert incident.id in json.dumps(notice["content"])
        assert arrived - incident.time < 2.0, arrived - incident.time
        print(f"the cell showed the watcher's notice {arrived - incident.time:.3f} s after "
              "the incident was recorded")
        # One incident per offence: the watcher's; this server recorded none of its own.
        assert [i.id for i in watcher.incidents() if i.kernel_id == kernel_id] == [incident.id]
        assert server.incidents(kernel_id) == []
        # Listed once complete (the watcher's "done", after the stop and the interrupt; the
        # cell was told at the start): waited for.
        listed = waits(watcher, lambda: server.api(
            "GET", f"colab-guard/api/incidents?kernel_id={kernel_id}")["incidents"],
            "the incident listed by the server")
        assert [(i["id"], i["recorded_by"]) for i in listed] == [(incident.id, "node watcher")]
        assert server.api("GET", "colab-guard/api/status")["incidents_this_session"] == 1
        # Each uid is told its own user's incidents only.
        as_alice = told_as(users[ALICE], python, watcher.socket)
        as_bob = told_as(users[BOB], python, watcher.socket, appeal=incident.id)
        assert as_alice[0]["user"] == ALICE and as_alice[0]["covered"] is True
        assert incident.id in {m["incident"]["id"] for m in as_alice if m["type"] == "incident"}
        assert as_bob[0]["user"] == BOB
        assert not [m for m in as_bob if m["type"] == "incident"]
        assert as_bob[-1] == {"type": "appeal", "request": "r1", "status": 404,
                              "error": "no such incident of yours"}
        assert incident.id not in json.dumps(as_bob[:-1])
        # The user appeals it from their server; the watcher records the appeal.
        appeal = server.api("POST", f"colab-guard/api/incidents/{incident.id}/appeal",
                            {"text": "It was my benchmark."})["appeal"]
        assert appeal["incident_id"] == incident.id and appeal["user"] == ALICE
        assert [a.id for a in watcher.store.appeals(user=ALICE)] == [appeal["id"]]
        with pytest.raises(urllib.error.HTTPError) as refused:  # one pending appeal at a time
            server.api("POST", f"colab-guard/api/incidents/{incident.id}/appeal", {"text": "x"})
        assert refused.value.code == 409
    finally:
        if client is not None:
            client.stop_channels()
        server.stop()


def covered_server(watcher, user, folder, python) -> UsersServer:
    server = UsersServer(user, folder, python, guard={"watcher_socket": str(watcher.socket)})
    server.argv.append("--ServerApp.jpserver_extensions=jupyter_server_terminals=True")
    try:
        server.start()
        waits(watcher, lambda: server.api("GET", "colab-guard/api/status")["watcher"]["covered"],
              "the server covered by the watcher")
    except BaseException:
        server.stop()
        raise
    return server


def test_a_frozen_server_that_is_resumed_tells_what_happened_meanwhile(
        watcher, users, world, pool, python):
    server = covered_server(watcher, users[ALICE], world / "alice-frozen", python)
    client = None
    try:
        kernel_id, client = server.start_kernel()
        waits(watcher, lambda: watcher.knows_kernel(kernel_id), "the kernel found")
        load_hook(client)
        os.kill(server.process.pid, signal.SIGSTOP)  # what a cell can do to its own server
        pid_file = world / "frozen-miner.pid"
        script = job(world, pool, "frozen.sh", before=f"echo $$ > {pid_file}", rename="kworker")
        client.execute(f"import subprocess; subprocess.Popen(['/bin/sh', {script!r}])")
        miner = int(waits(watcher, lambda: pid_file.exists() and pid_file.read_text(),
                          "the miner started"))
        incident = waits(watcher, lambda: _incident_of(watcher, kernel_id),
                         "the watcher's incident")
        assert incident.user == ALICE
        assert server.process.poll() is None
        assert open(f"/proc/{server.process.pid}/stat").read().split(") ")[1][0] == "T"
        waits(watcher, lambda: not _alive(miner), "the miner stopped")
        assert {a.action: a.outcome for a in incident.actions}["interrupt"] == "done"
        os.kill(server.process.pid, signal.SIGCONT)
        # Resumed: the server reads what the watcher pushed meanwhile, and tells it.
        listed = waits(watcher, lambda: server.api(
            "GET", f"colab-guard/api/incidents?kernel_id={kernel_id}")["incidents"],
            "the incident listed by the resumed server")
        assert [i["id"] for i in listed] == [incident.id]
        reply, outputs = run_cell(client, "1 + 1")
        assert reply["status"] == "ok"
        assert incident.id in json.dumps([m["content"] for _, m in notices(outputs)])
        assert server.incidents(kernel_id) == []  # the watcher's alone
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        if client is not None:
            client.stop_channels()
        server.stop()


def test_a_killed_server_started_again_tells_what_its_left_behind_miner_did(
        watcher, users, world, pool, python):
    folder = world / "alice-killed"
    server = covered_server(watcher, users[ALICE], folder, python)
    again = None
    try:
        kernel_id, client = server.start_kernel()
        waits(watcher, lambda: watcher.knows_kernel(kernel_id), "the kernel found")
        pid_file = world / "left-miner.pid"
        script = job(world, pool, "left.sh", rename="kworker", before=(
            f"while kill -0 {server.process.pid} 2>/dev/null; do sleep 0.1; done\n"
            f"echo $$ > {pid_file}"))
        reply, _ = run_cell(client, "import subprocess\n"
                                    f"subprocess.Popen(['/bin/sh', {script!r}], "
                                    "start_new_session=True)")
        assert reply["status"] == "ok", reply
        client.stop_channels()
        server.process.kill()  # the server, killed; its detached program lives on
        server.process.wait()
        miner = int(waits(watcher, lambda: pid_file.exists() and pid_file.read_text(),
                          "the left-behind miner started"))
        incident = waits(watcher, lambda: _incident_of(watcher, kernel_id), "its incident")
        assert incident.user == ALICE
        waits(watcher, lambda: not _alive(miner), "the left-behind miner stopped")
        # The user's server, started again, is told what happened while it was gone.
        again = covered_server(watcher, users[ALICE], folder, python)
        status = waits(watcher, lambda: (lambda s: s["watcher"]["told_on_return"] and s)(
            again.api("GET", "colab-guard/api/status")), "the missed incident told")
        assert [i["id"] for i in status["watcher"]["told_on_return"]] == [incident.id]
        listed = again.api("GET", f"colab-guard/api/incidents?kernel_id={kernel_id}")[
            "incidents"]
        assert [(i["id"], i["recorded_by"]) for i in listed] == [(incident.id, "node watcher")]
    finally:
        for running in (server, again):
            if running is not None:
                running.stop()


async def _terminal_runs(server, command: str, events: list, until, timeout: float = 60):
    """Open a JupyterLab terminal on ``server`` (its REST and websocket API, terminado),
    type ``command`` in it, and collect the server's events until ``until(events)``."""
    from tornado.websocket import websocket_connect

    name = server.api("POST", "api/terminals")["name"]
    base = server.url.replace("http", "ws", 1)
    bus = await websocket_connect(f"{base}/api/events/subscribe?token={server.token}")
    term = await websocket_connect(f"{base}/terminals/websocket/{name}?token={server.token}")
    try:
        await term.write_message(json.dumps(["stdin", command + "\r"]))
        deadline = time.monotonic() + timeout
        while not until(events):
            left = deadline - time.monotonic()
            assert left > 0, f"no such event within {timeout} s: {events}"
            try:
                message = await asyncio.wait_for(bus.read_message(), min(left, 1.0))
            except asyncio.TimeoutError:
                continue
            assert message is not None, "the event stream closed"
            events.append(json.loads(message))
    finally:
        term.close()
        bus.close()
    return name


def test_a_miner_run_from_a_jupyterlab_terminal_is_stopped_and_the_user_told(
        watcher, users, world, pool, python):
    server = covered_server(watcher, users[ALICE], world / "alice-terminal", python)
    try:
        pid_file = world / "terminal-miner.pid"
        script = job(world, pool, "terminal.sh", before=f"echo $$ > {pid_file}", rename="kworker")
        events: list = []

        def told(found):
            return [e for e in found if e.get("schema_id", "").endswith("colab_guard/incident/v1")]

        asyncio.run(_terminal_runs(server, f"sh {script}", events, told))
        [event] = told(events)
        miner = int(pid_file.read_text())
        incident = _incident_of(watcher, event["kernel_id"])
        assert incident is not None and incident.id == event["incident_id"]
        assert incident.kernel_id.startswith("terminal-") and incident.notebook == "terminal"
        assert incident.user == ALICE and incident.category == "crypto-mining"
        assert any(p["pid"] == miner for p in incident.evidence["processes"])
        waits(watcher, lambda: not _alive(miner), "the terminal's miner stopped")
        assert server.incidents() == []  # recorded once, by the watcher
    finally:
        server.stop()


#: rewrites its own argument area at once (as a native miner would with its argv), then runs
#: the stand-in miner with the arguments it was started with
HIDE_ARGV = textwrap.dedent("""
    import os, runpy, sys
    fields = open("/proc/self/stat", "rb").read().rsplit(b")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])
    fd = os.open("/proc/self/mem", os.O_RDWR)
    os.pwrite(fd, b"python3\\0notebook_helper.py".ljust(end - start, b"\\0"), start)
    os.close(fd)
    sys.argv = [sys.argv[1], *sys.argv[2:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")

#: what a cell does to the kernel before it starts the miner
TAMPERING = {
    "hook unloaded": "%unload_ext colab_guard.kernel",
    "hook silenced": "import colab_guard.kernel as k; k._guard.reporter.enabled = False",
    "hook's channel closed": "import colab_guard.kernel as k; k._guard.client.close()",
    "non-dumpable kernel": "import ctypes; ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)",  # its
    # /proc entries become root's: its user's server can no longer read them
    "double fork, env -i": None,
    "argv rewritten": None,
}

#: how the cell starts the script, for each way (default: a detached /bin/sh)
START = {
    "double fork, env -i": textwrap.dedent("""
        import os
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvp("env", ["env", "-i", "/bin/sh", {script!r}])
            os._exit(0)
        os.wait()
    """),
}


def test_tampering_in_the_kernel_changes_nothing_for_the_watcher(
        watcher, users, world, pool, python):
    """The kernel hook unloaded, silenced or its channel closed, the kernel non-dumpable, a
    double fork with the environment wiped before the exec, a program that rewrites its argv
    at once: each miner is stopped by the watcher, recorded under the user's name, and the
    user's server lists it."""
    hide = world / "hide.py"
    hide.write_text(HIDE_ARGV)
    hide.chmod(0o644)
    server = covered_server(watcher, users[ALICE], world / "alice-tamper", python)
    try:
        for how, cell in TAMPERING.items():
            kernel_id, client = server.start_kernel()
            try:
                waits(watcher, lambda: watcher.knows_kernel(kernel_id), "the kernel found")
                load_hook(client)
                pid_file = world / f"tamper-{kernel_id}.pid"
                if cell is not None:
                    reply, _ = run_cell(client, cell)
                    assert reply["status"] == "ok", (how, reply)
                script = job(world, pool, f"{kernel_id}.sh", before=f"echo $$ > {pid_file}",
                             rename="kworker")
                if how == "argv rewritten":
                    Path(script).write_text(f"echo $$ > {pid_file}\nexec /usr/bin/python3 "
                                            f"{hide} {MINER} -o {pool} -u {WALLET} -p x\n")
                start = START.get(how, "import subprocess; subprocess.Popen(['/bin/sh', "
                                       "{script!r}], start_new_session=True)")
                reply, _ = run_cell(client, start.format(script=str(script)))
                assert reply["status"] == "ok", (how, reply)
                miner = int(waits(watcher, lambda: pid_file.exists() and pid_file.read_text(),
                                  f"the miner started ({how})"))
                incident = waits(watcher, lambda: _incident_of(watcher, kernel_id),
                                 f"the watcher's incident ({how})")
                assert incident.user == ALICE and incident.category == "crypto-mining", how
                waits(watcher, lambda: not _alive(miner), f"the miner stopped ({how})")
                if how == "argv rewritten":  # checked and shown with the argv it started with
                    [shown] = [p for p in incident.evidence["processes"] if p["pid"] == miner]
                    assert "stratum+tcp://" in shown["cmdline"], shown
                def from_watcher():
                    listed = server.api("GET", "colab-guard/api/incidents?kernel_id="
                                               f"{kernel_id}")["incidents"]
                    return [i["id"] for i in listed if i["recorded_by"] == "node watcher"]

                assert waits(watcher, from_watcher, f"the incident listed ({how})") == [
                    incident.id], how
            finally:
                client.stop_channels()
                server.api("DELETE", f"api/kernels/{kernel_id}")
    finally:
        server.stop()


def test_the_guard_switched_off_in_the_users_own_config_changes_nothing_for_the_watcher(
        watcher, users, world, pool, python):
    """The user's own config folder (theirs to write) switches the guard off, then the server
    extension itself; the server restarted each time. The watcher stops each miner all the
    same, and once the guard is back the user's server tells what happened meanwhile."""
    alice = users[ALICE]
    folder, own = world / "alice-own-config", world / "alice-jupyter"
    own.mkdir()
    os.chown(own, alice.pw_uid, alice.pw_gid)
    user_config = own / "jupyter_server_config.json"

    def server_with(config: dict, guard_on: bool = True) -> UsersServer:
        user_config.write_text(json.dumps(config))
        os.chown(user_config, alice.pw_uid, alice.pw_gid)
        server = UsersServer(alice, folder, python,
                             guard={"watcher_socket": str(watcher.socket)})
        server.env["JUPYTER_CONFIG_PATH"] = str(own)  # read after the operator's folder
        if not guard_on:
            server.argv.remove("--ServerApp.jpserver_extensions=colab_guard=True")
        return server.start()

    def mine(server, name: str):
        kernel_id, client = server.start_kernel()
        try:
            waits(watcher, lambda: watcher.knows_kernel(kernel_id), f"the kernel found ({name})")
            pid_file = world / f"{name}.pid"
            script = job(world, pool, f"{name}.sh", before=f"echo $$ > {pid_file}",
                         rename="kworker")
            reply, _ = run_cell(client, f"import subprocess; subprocess.Popen(['/bin/sh', "
                                        f"{str(script)!r}])")
            assert reply["status"] == "ok", reply
            miner = int(waits(watcher, lambda: pid_file.exists() and pid_file.read_text(),
                              f"the miner started ({name})"))
            incident = waits(watcher, lambda: _incident_of(watcher, kernel_id),
                             f"the watcher's incident ({name})")
            assert incident.user == ALICE, name
            waits(watcher, lambda: not _alive(miner), f"the miner stopped ({name})")
            return incident
        finally:
            client.stop_channels()

    # 1. ColabGuard.enabled = False in the user's own file: applied here, and said so.
    server = server_with({"ColabGuard": {"enabled": False}})
    try:
        status = waits(watcher, lambda: (lambda s: s["watcher"]["covered"] and s)(
            server.api("GET", "colab-guard/api/status")), "covered")
        assert status["enabled"] is False
        assert status["user_writable_settings"] == ["ColabGuard.enabled"]
        sources = {s["setting"]: s for s in status["settings_from"]}
        assert sources["ColabGuard.enabled"] == {"setting": "ColabGuard.enabled",
                                                 "source": str(user_config),
                                                 "user_writable": True}
        assert sources["ColabGuard.watcher_socket"]["user_writable"] is False  # the operator's
        assert "settings this server's user can change: ColabGuard.enabled" in server.log()
        first = mine(server, "guard-disabled")
        waits(watcher, lambda: first.id in json.dumps(server.api(
            "GET", "colab-guard/api/incidents")), "the incident told to the server")
    finally:
        server.stop()
    # 2. The server extension switched off altogether: kernels carry no marker now.
    server = server_with({"ServerApp": {"jpserver_extensions": {"colab_guard": False}}},
                         guard_on=False)
    try:
        second = mine(server, "extension-off")
    finally:
        server.stop()
    # 3. The guard back: what happened while it was off is told.
    server = server_with({})
    try:
        status = waits(watcher, lambda: (lambda s: s["watcher"]["told_on_return"] and s)(
            server.api("GET", "colab-guard/api/status")), "the missed incident told")
        told = [i["id"] for i in status["watcher"]["told_on_return"]]
        assert second.id in told and first.id not in told  # the first was told when it happened
    finally:
        server.stop()
