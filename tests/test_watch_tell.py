"""The node watcher tells the user's own Jupyter server: for real, the watcher as root, a
``jupyter server`` as an unprivileged test user (the fixtures of test_watch.py).

One incident per offence (the watcher's; the server records none), the cell shows why it
was interrupted within 2 s of the incident, the server's REST API lists it, and another
user connecting to the watcher's socket never gets it.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time

import pytest

from tests.test_watch import (  # noqa: F401 (fixtures)
    ALICE, BOB, MINER, WALLET, UsersServer, _incident_of, _python_for_users, pool, users,
    waits, watcher, world,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates Unix users: root only")

#: a client of the watcher's socket, run as a test user: what it is told, as JSON lines
CLIENT = textwrap.dedent("""
    import json, socket, sys
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(sys.argv[1])
    sock.sendall(b'{"type": "hello", "since": 0}\\n')
    for line in sock.makefile():
        print(line.strip(), flush=True)
        if json.loads(line)["type"] == "caught_up":
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
    return client.get_shell_msg(timeout=timeout)["content"], outputs


def load_hook(client) -> None:
    """The kernel hook, as the startup file loads it (the test user's interpreter may be the
    system's, whose prefix lacks the package's startup file)."""
    reply, _ = run_cell(client, "import colab_guard.kernel as k; k.load_in_kernel(); "
                                "assert k._guard is not None, 'no hook'")
    assert reply["status"] == "ok", reply


def job(world, pool: str, name: str = "job.sh") -> str:
    """A script that runs the stand-in miner, written by the test: the cell only runs the
    script, so the cell check (which would refuse a cell that names the pool) lets it run,
    and what stops it is the watcher seeing the program."""
    path = world / name
    path.write_text(f"exec /usr/bin/python3 {MINER} -o {pool} "
                    f"-u {WALLET} -p x\n")
    path.chmod(0o755)
    return str(path)


def notices(outputs) -> list[tuple[float, dict]]:
    return [(t, m) for t, m in outputs if m["msg_type"] == "display_data"
            and "colab_guard" in m["content"].get("metadata", {})]


def told_as(user, python: str, socket) -> list[dict]:
    done = subprocess.run([python, "-c", CLIENT, str(socket)], user=user.pw_uid,
                          group=user.pw_gid, extra_groups=[], capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_the_users_server_tells_the_watchers_incident_once_and_the_cell_says_why(
        watcher, users, world, pool, python):
    server = UsersServer(users[ALICE], world / "alice-told", python,
                         guard={"watcher_socket": str(watcher.socket)}).start()
    client = None
    try:
        status = waits(watcher, lambda: (lambda s: s["watcher"]["covered"] and s)(
            server.api("GET", "colab-guard/api/status")), "the server covered by the watcher")
        assert status["processes_checked_by"] == "node watcher"
        kernel_id, client = server.start_kernel()
        waits(watcher, lambda: watcher.knows_kernel(kernel_id), "the kernel found")
        load_hook(client)
        reply, outputs = run_cell(client, "import subprocess\n"
                                          f"subprocess.Popen(['/bin/sh', {job(world, pool)!r}]).wait()")
        assert _incident_of(watcher, kernel_id) is not None, (reply, outputs)
        incident = _incident_of(watcher, kernel_id)
        assert incident.user == ALICE
        # The cell says why, within 2 s of the watcher's incident.
        assert reply["status"] == "error"
        assert "stopped by the platform's usage guard" in reply["traceback"][0]
        [(arrived, notice)] = notices(outputs)
        assert incident.id in json.dumps(notice["content"])
        assert arrived - incident.time < 2.0, arrived - incident.time
        # One incident per offence: the watcher's; this server recorded none of its own.
        assert [i.id for i in watcher.incidents() if i.kernel_id == kernel_id] == [incident.id]
        assert server.incidents(kernel_id) == []
        listed = server.api("GET", "colab-guard/api/incidents")["incidents"]
        assert [(i["id"], i["recorded_by"]) for i in listed] == [(incident.id, "node watcher")]
        assert server.api("GET", "colab-guard/api/status")["incidents_this_session"] == 1
        # Each uid is told its own user's incidents only.
        as_alice = told_as(users[ALICE], python, watcher.socket)
        as_bob = told_as(users[BOB], python, watcher.socket)
        assert as_alice[0]["user"] == ALICE and as_alice[0]["covered"] is True
        assert incident.id in {m["incident"]["id"] for m in as_alice if m["type"] == "incident"}
        assert as_bob[0]["user"] == BOB
        assert not [m for m in as_bob if m["type"] == "incident"]
        assert incident.id not in json.dumps(as_bob)
    finally:
        if client is not None:
            client.stop_channels()
        server.stop()
