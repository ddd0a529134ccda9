"""Framing, end to end: a guarded Jupyter server, two real kernels of one user, a miner
double-forked from kernel B with kernel A's id in its environment.

Kernel A runs a cell throughout that an interrupt would end with KeyboardInterrupt: it must
end by itself. The miner must be stopped, and its incident name kernel B (what can be
proven: its session) or the user's unknown kernel, never kernel A.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from colab_guard.observe.attribution import unknown_kernel
from tests.harness import GuardedServer, wait_until
from tests.standins import pool as standin_pool

STANDINS = Path(__file__).parent / "standins"
MINER = STANDINS / "miner.py"
WALLET = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"

FRAME = """
import os, sys
env = {{"PATH": os.environ["PATH"], "COLAB_GUARD_KERNEL_ID": {victim!r}}}
argv = [sys.executable, {miner!r}, "-o", "stratum+tcp://127.0.0.1:{port}", "-u", {wallet!r}, "-p", "x"]
read, write = os.pipe()
if os.fork() == 0:
    if {setsid}:
        os.setsid()
    child = os.fork()
    if child == 0:
        os.execve(sys.executable, argv, env)
    os.write(write, b"%d" % child)
    os._exit(0)
os.wait()
print("orphan", os.read(read, 32).decode())
"""

BUSY = """
import os, time
deadline = time.time() + 240
while not os.path.exists({flag!r}) and time.time() < deadline:
    time.sleep(0.05)
print("A finished")
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def run(client, code: str, timeout: float = 120) -> tuple[dict, str]:
    """Execute a cell; (its reply's content, what it printed)."""
    msg_id = client.execute(code)
    return reply_of(client, msg_id, timeout)


def reply_of(client, msg_id: str, timeout: float = 120) -> tuple[dict, str]:
    printed = []

    def output(msg):
        if msg["msg_type"] == "stream":
            printed.append(msg["content"]["text"])

    while True:
        msg = client.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        output(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    shell = client.get_shell_msg(timeout=timeout)
    while shell["parent_header"].get("msg_id") != msg_id:
        shell = client.get_shell_msg(timeout=timeout)
    return shell["content"], "".join(printed)


@pytest.fixture
def pool_port():
    server = standin_pool.serve()
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def server(tmp_path):
    guarded = GuardedServer({"sample_interval": 0.5, "stop_grace": 1.0, "cell_checks": False},
                            folder=tmp_path / "server")
    guarded.start()
    yield guarded
    guarded.stop()


def framed_miner(b, victim: str, port: int, setsid: bool) -> int:
    reply, printed = run(b, FRAME.format(victim=victim, miner=str(MINER), port=port,
                                         wallet=WALLET, setsid=setsid))
    assert reply["status"] == "ok", reply
    return int(printed.split("orphan", 1)[1].split()[0])


def incident_of(server: GuardedServer, pid: int) -> dict:
    def found():
        for incident in server.incidents():
            pids = [p["pid"] for p in incident["evidence"]["processes"]]
            if pid in pids and incident["status"] == "done":
                return incident
        return None

    return wait_until(found, timeout=60, what=f"an incident for pid {pid}")


def test_a_miner_framing_kernel_a_from_kernel_b_never_touches_kernel_a(server, pool_port, tmp_path):
    a_id, a = server.start_kernel()
    b_id, b = server.start_kernel()
    flag = tmp_path / "a-may-finish"
    busy = a.execute(BUSY.format(flag=str(flag)))
    try:
        # In a session of its own: nothing proves kernel B either; the user's, kernel unknown.
        detached = framed_miner(b, a_id, pool_port, setsid=True)
        incident = incident_of(server, detached)
        wait_until(lambda: gone(detached), timeout=30, what="the detached miner stopped")
        assert incident["kernel_id"] in (unknown_kernel(os.getuid()), b_id)
        actions = {(x["action"], x["target"]): x["outcome"] for x in incident["actions"]}
        assert actions[("stop", f"pid {detached}")] in ("done", "gone")
        if incident["kernel_id"] != b_id:  # not tied: said so, and no kernel interrupted
            assert "unknown" in incident["evidence"]["kernel"]
            assert not any(x["target"] == "kernel" for x in incident["actions"])
            [tie] = incident["evidence"]["attribution"]
            assert tie["how"] == "unproven" and a_id in tie["detail"]

        # Still in kernel B's session (no setsid): proven B's, whatever its environment says.
        attached = framed_miner(b, a_id, pool_port, setsid=False)
        incident = incident_of(server, attached)
        wait_until(lambda: gone(attached), timeout=30, what="the miner in B's session stopped")
        assert incident["kernel_id"] == b_id

        assert all(i["kernel_id"] != a_id for i in server.incidents())
    finally:
        flag.touch()
    reply, printed = reply_of(a, busy)
    assert reply["status"] == "ok" and "A finished" in printed  # never interrupted
    for client in (a, b):
        client.stop_channels()
