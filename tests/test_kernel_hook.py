"""The kernel hook on a real guarded server with real kernels: instant reports, the message in
the cell, cell source checks, the authenticated channel, restarts, tampering."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import nbformat
import psutil
import pytest
from nbclient import NotebookClient

from colab_guard.channel import CLOSE_GRACE
from colab_guard.kernel import protocol
from colab_guard.record import metrics
from tests.conftest import PYTHON, STANDINS, incidents_in, wait_for

pytestmark = pytest.mark.integration

MINER = STANDINS / "miner.py"
FILES = Path(__file__).parent / "files"
MESSAGE = "Mining is not allowed here: this kernel was stopped."


@pytest.fixture
def guard_config(guard_config):
    guard_config.update(warning_message=MESSAGE, cell_checks=True)
    return guard_config


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def html_of(outputs) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in outputs)


def done_incidents(guard_config, category=None) -> list[dict]:
    return [i for i in incidents_in(guard_config["incident_log"])
            if i["status"] == "done" and (category is None or i["category"] == category)]


async def hooked(guard, kernel, pool=None):
    """Wait until the kernel's hook is on the channel; put the miner's arguments in its env
    (so that the cells under test do not show them to the cell check)."""
    await wait_for(lambda: guard.channel.connected(kernel.kernel_id), timeout=30)
    if pool is not None:
        await kernel.run(f"import os\nos.environ['MINER'] = {str(MINER)!r}\n"
                         f"os.environ['POOL_URL'] = 'stratum+tcp://127.0.0.1:{pool}'\n")


MINER_CELL = ("import os, subprocess, time\n"
              "t0 = time.monotonic()\n"
              f"p = subprocess.Popen([{PYTHON!r}, os.environ['MINER'], '-o', os.environ['POOL_URL'],"
              " '--seconds', '30'])\n"
              "print('PID', p.pid, flush=True)\n"
              "try:\n"
              "    p.wait()\n"
              "finally:\n"
              "    p.wait()\n"
              "    print('ENDED AFTER', time.monotonic() - t0, flush=True)\n")


def ended_after(outputs) -> float:
    text = "".join(o.get("text", "") for o in outputs)
    return float(text.split("ENDED AFTER")[1].split()[0])


# ---------------------------------------------------------------- instant path and message


@pytest.fixture
def slow_sampling(guard_config):
    # One sample every 20 s: only the hook's report can stop the miner quickly.
    guard_config["sample_interval"] = 20.0


async def test_popen_miner_is_stopped_at_once_and_the_cell_says_why(
        slow_sampling, guard, kernel, pool, guard_config):
    await hooked(guard, kernel, pool)
    await wait_for(lambda: guard.monitor.ticks >= 1)  # past the tick the monitor starts with
    reply, outputs = await kernel.run(MINER_CELL)

    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert ended_after(outputs) < 5.0  # generous here; benchmarks/kernel_overhead.py measures it
    incident = done_incidents(guard_config, "crypto-mining")[0]
    html = html_of(outputs)
    assert MESSAGE in html and incident["id"] in html
    assert "https://example.org/acceptable-use" in html and "crypto-mining" in html
    assert "stopped by the platform's usage guard" in reply["traceback"][0]
    actions = {(a["action"], a["target"]): a["outcome"] for a in incident["actions"]}
    assert actions[("interrupt", "kernel")] == "done"


async def test_detached_offender_is_told_in_the_next_cell(kernel, guard, pool, guard_config):
    await hooked(guard, kernel, pool)
    # The cell ends at once; the miner lives on, detached; its notice waits for a cell.
    reply, _ = await kernel.run(
        "import os, subprocess\n"
        f"subprocess.Popen(['setsid', {PYTHON!r}, os.environ['MINER'], '-o',"
        " os.environ['POOL_URL']], start_new_session=True)\n")
    assert reply["status"] == "ok"
    incident = (await wait_for(lambda: done_incidents(guard_config, "crypto-mining")))[0]
    await wait_for(lambda: gone(incident["evidence"]["processes"][0]["pid"]))
    reply, outputs = await kernel.run("print('later')")
    assert incident["id"] in html_of(outputs) and MESSAGE in html_of(outputs)


# ---------------------------------------------------------------- nbclient


async def run_notebook(serverapp, kernel) -> nbformat.NotebookNode:
    nb = nbformat.read(FILES / "kernel_hook_miner.ipynb", as_version=4)
    km = serverapp.kernel_manager.get_kernel(kernel.kernel_id)
    client = NotebookClient(nb, km=km, timeout=60, allow_errors=True)
    await client.async_execute(reset_kc=True)
    return nb


def cell_html(cell) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)


async def test_notebook_shows_the_message_and_incident(kernel, guard, pool, guard_config,
                                                       jp_serverapp):
    await hooked(guard, kernel, pool)
    nb = await run_notebook(jp_serverapp, kernel)
    cell = nb.cells[1]
    incident = done_incidents(guard_config, "crypto-mining")[0]
    assert MESSAGE in cell_html(cell) and incident["id"] in cell_html(cell)
    assert [o.ename for o in cell.outputs if o.output_type == "error"] == ["KeyboardInterrupt"]
    assert "cell finished" not in json.dumps(cell.outputs)
    assert "next cell ran" in json.dumps(nb.cells[2].outputs)


@pytest.fixture
def dry_run(guard_config):
    guard_config["dry_run"] = True


async def test_notebook_in_dry_run_warns_and_completes(dry_run, kernel, guard, pool,
                                                       guard_config, jp_serverapp):
    await hooked(guard, kernel, pool)
    nb = await run_notebook(jp_serverapp, kernel)
    cell = nb.cells[1]
    assert "Trial mode" in cell_html(cell) and MESSAGE in cell_html(cell)
    assert not [o for o in cell.outputs if o.output_type == "error"]
    assert "cell finished" in json.dumps(cell.outputs)
    assert done_incidents(guard_config, "crypto-mining")[0]["dry_run"] is True


# ---------------------------------------------------------------- cell source checks


async def test_disguised_cells_are_refused_and_benign_ones_run(kernel, guard, guard_config):
    await hooked(guard, kernel)
    concatenated = ("import subprocess\n"
                    "subprocess.Popen(['./' + 'xm' + 'rig', '--donate-level', '1'])\n"
                    "print('it ran')\n")
    reply, outputs = await kernel.run(concatenated)
    assert reply["status"] == "error" and reply["ename"] == "CellRefused"
    assert "it ran" not in json.dumps(outputs)
    first = done_incidents(guard_config, "crypto-mining")
    assert len(first) == 1 and first[0]["id"] in html_of(outputs) and MESSAGE in html_of(outputs)
    assert "the cell would start: ./xmrig --donate-level 1" in [f["text"] for f in first[0]["evidence"]["cell"]["findings"]]
    assert {a["action"]: a["outcome"] for a in first[0]["actions"]}["refuse"] == "done"

    # base64 of a pool URL (stratum+tcp://pool.example.net:3333)
    encoded = ("import base64\n"
               "url = base64.b64decode('c3RyYXR1bSt0Y3A6Ly9wb29sLmV4YW1wbGUubmV0OjMzMzM=').decode()\n"
               "print('it ran')\n")
    reply, outputs = await kernel.run(encoded)
    assert reply["ename"] == "CellRefused" and "it ran" not in json.dumps(outputs)
    assert len(done_incidents(guard_config, "crypto-mining")) == 2

    benign = ("# This course forbids crypto-mining (xmrig, stratum+tcp://pool:3333) on the servers.\n"
              "note = 'Do not run xmrig or connect to stratum+tcp://pool.example.net:3333 here.'\n"
              "print('it ran', len(note))\n")
    reply, outputs = await kernel.run(benign)
    assert reply["status"] == "ok" and "it ran" in json.dumps(outputs)
    assert len(done_incidents(guard_config)) == 2  # nothing new recorded


# ---------------------------------------------------------------- channel


async def test_channel_refuses_forged_and_foreign_reports(kernel, guard, jp_asyncio_loop):
    await hooked(guard, kernel)
    refused = metrics.KERNEL_CHANNEL_REFUSED._value.get()
    good_token = guard.channel.environment(kernel.kernel_id)[protocol.ENV_TOKEN]

    def attempt(token: str) -> bytes:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(guard.channel.path)
            sock.sendall(protocol.encode("hello", kernel_id=kernel.kernel_id, token=token,
                                         role="kernel"))
            return sock.recv(1000)

    loop = asyncio.get_running_loop()
    # a wrong token; then the right token, but from a process that is not the kernel's
    assert await loop.run_in_executor(None, attempt, "0" * 64) == b""
    assert await loop.run_in_executor(None, attempt, good_token) == b""
    assert metrics.KERNEL_CHANNEL_REFUSED._value.get() == refused + 2
    assert guard.channel.connected(kernel.kernel_id)  # the kernel's own connection is intact
    assert oct(Path(guard.channel.path).stat().st_mode & 0o777) == "0o600"


async def test_channel_survives_a_restart(kernel, guard, jp_fetch, guard_config):
    await hooked(guard, kernel)
    old_pid = guard.channel.kernels[kernel.kernel_id].kernel_pid
    await jp_fetch("api", "kernels", kernel.kernel_id, "restart", method="POST", body="{}")
    await wait_for(lambda: guard.channel.connected(kernel.kernel_id) and
                   guard.channel.kernels[kernel.kernel_id].kernel_pid != old_pid, timeout=30)
    await kernel.client.wait_for_ready(timeout=30)
    reply, outputs = await kernel.run("import colab_guard.kernel as k\nprint(k._guard is not None)")
    assert "True" in json.dumps(outputs)
    # Nothing may happen: give the old connection's close grace the time to run out.
    await asyncio.sleep(CLOSE_GRACE + 0.5)
    assert done_incidents(guard_config, "tampering") == []  # a restart is not tampering


async def test_dropped_events_are_counted(kernel, guard):
    await hooked(guard, kernel)
    before = metrics.KERNEL_EVENTS_DROPPED._value.get()
    await kernel.run("import colab_guard.kernel as k, socket\n"
                     "k._guard.reporter.maxlen = 0  # a full queue\n"
                     "for _ in range(5):\n"
                     "    socket.getaddrinfo('127.0.0.1', 80)\n"
                     "k._guard.reporter.maxlen = 4096\n"
                     "socket.getaddrinfo('127.0.0.1', 80)\n")
    assert await wait_for(lambda: metrics.KERNEL_EVENTS_DROPPED._value.get() >= before + 5)


# ---------------------------------------------------------------- tampering


async def test_unloaded_hook_is_recorded_and_the_miner_still_stopped(kernel, guard, pool,
                                                                     guard_config):
    await hooked(guard, kernel, pool)
    await kernel.run("%unload_ext colab_guard.kernel")
    tampering = (await wait_for(lambda: done_incidents(guard_config, "tampering")))[0]
    assert tampering["signature"] == "kernel-hook-unloaded"
    assert [a["action"] for a in tampering["actions"]] == ["record"]

    reply, outputs = await kernel.run(MINER_CELL)
    incident = done_incidents(guard_config, "crypto-mining")[0]
    await wait_for(lambda: gone(incident["evidence"]["processes"][0]["pid"]))
    assert reply["ename"] == "KeyboardInterrupt"
    assert html_of(outputs) == ""  # no hook, no message: the server side did it alone
