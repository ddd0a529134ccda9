"""A watched process in another network namespace: its sockets are read from its own
/proc/PID/net, its connections' traffic from inside that namespace (root), and where the
traffic cannot be read it counts as suspect, never as a blind spot. Real namespaces
(``ip netns``, as root)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from colab_guard.observe import behaviour
from colab_guard.observe.behaviour import Behaviour
from colab_guard.observe.processes import ProcessSampler, kernel_environment
from colab_guard.observe.tcpinfo import Dumper
from tests.conftest import SERVER_USER, KernelRunner, incidents_in, wait_for
from tests.harness import wait_until

STANDINS = Path(__file__).parent / "standins"
ROOT = Path(__file__).parent.parent
WINDOW = 3.0  # the sampler-level tests' behaviour window (the server's is 15 s)
WINDOW_SERVER = behaviour.WINDOW

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                reason="network namespaces need root and iproute2")


@contextmanager
def private_namespace(prefix: str, routes: tuple[str, ...] = ()):
    """A network namespace of its own, loopback up, ``routes`` (``ip route`` arguments) added;
    yields its name."""
    name = f"{prefix}-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        for route in routes:
            subprocess.run(["ip", "-n", name, "route", "add", *route.split()], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns():
    with private_namespace("behaviour") as name:
        yield name


@pytest.fixture
def pool_in(netns):
    """The stand-in pool inside the namespace, started by the test (not by any kernel)."""
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m",
                             "tests.standins.pool"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    port = int(proc.stdout.readline())
    yield port
    proc.kill()
    proc.wait()


def _miner_command(netns: str, port: int, duty: float = 1.0) -> list[str]:
    return ["ip", "netns", "exec", netns, sys.executable, str(STANDINS / "quiet_miner.py"),
            "127.0.0.1", str(port), "--duty", str(duty), "--seconds", "60"]


def _watch(sampler: ProcessSampler, kernel_pid: int, seconds: float):
    """Sample until the miner (python) has been watched a whole window and counts a pushed
    connection, or for ``seconds`` at most (a busy machine's slow first ticks: its files and
    libraries are being scanned); the miner's last sample."""
    end, last = time.monotonic() + seconds, None
    while time.monotonic() < end:
        snapshot = sampler.sample({"k1": kernel_pid})["k1"]
        last = next((p for p in snapshot.processes if "quiet_miner.py" in " ".join(p.cmdline)
                     and p.name.startswith("python")), last)
        if last is not None and last.pushed_connections and last.cpu_demand_percent >= 50:
            return last
        time.sleep(0.3)  # the sampler's pace, not a wait for a state
    return last


def test_a_miner_in_a_private_namespace_has_its_sockets_and_traffic_read(netns, pool_in):
    sampler = ProcessSampler()
    sampler.behaviour = Behaviour(window=WINDOW)
    kernel = subprocess.Popen(_miner_command(netns, pool_in), env=kernel_environment("k1"))
    try:
        miner = _watch(sampler, kernel.pid, 45)
    finally:
        kernel.kill()
        kernel.wait()
        sampler.behaviour.close()
    assert miner is not None
    assert miner.netns.startswith("net:[")
    # invisible in the host's /proc/net; read from its own
    assert any(s.remote == ("127.0.0.1", pool_in) and s.status == "ESTABLISHED"
               for s in miner.sockets)
    assert miner.cpu_demand_percent >= 50
    assert miner.pushed_connections == 1  # the pool's pushes, read inside the namespace


def test_where_a_namespace_cannot_be_entered_its_connections_count_as_suspect(netns, pool_in):
    """A guard without the privilege to enter (not root): the traffic is unknown, which is
    no excuse; a long-lived outbound connection of a busy process there counts."""
    def no_entry(pid):
        if pid is None:
            return Dumper()
        dumper = Dumper()
        dumper.broken = "cannot enter the network namespace (test: no privilege)"
        return dumper

    sampler = ProcessSampler()
    sampler.behaviour = Behaviour(window=WINDOW, dumper=no_entry)
    kernel = subprocess.Popen(_miner_command(netns, pool_in), env=kernel_environment("k1"))
    try:
        miner = _watch(sampler, kernel.pid, 45)
    finally:
        kernel.kill()
        kernel.wait()
    assert miner.pushed_connections == 1
    assert miner.cpu_demand_percent >= 50


def test_a_busy_process_in_a_namespace_without_connections_is_not_suspect(netns):
    sampler = ProcessSampler()
    sampler.behaviour = Behaviour(window=WINDOW)
    kernel = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c",
                               "import time, hashlib\nend = time.time() + 30\nd = b''\n"
                               "while time.time() < end: d = hashlib.sha256(d).digest()\n"],
                              env=kernel_environment("k1"))
    try:
        end, procs = time.monotonic() + WINDOW + 2, []
        while time.monotonic() < end:
            procs = sampler.sample({"k1": kernel.pid})["k1"].processes
            time.sleep(0.3)
    finally:
        kernel.kill()
        kernel.wait()
    assert procs and all(p.pushed_connections == 0 for p in procs)


@pytest.mark.integration
async def test_a_miner_in_a_private_namespace_is_stopped_by_the_server(
        kernel, guard_config, netns, pool_in):
    code = ("import subprocess, time\n"
            "print('MINING', time.time(), flush=True)\n"
            f"p = subprocess.Popen({_miner_command(netns, pool_in)!r})\n"
            "p.wait()\n")
    started = time.time()
    reply, outputs = await kernel.run(code, timeout=120)
    elapsed = time.time() - started
    assert reply["status"] == "error", KernelRunner.text(outputs)
    found = await wait_for(lambda: [i for i in incidents_in(guard_config["incident_log"])
                                    if i["status"] == "done"], timeout=20)
    assert len(found) == 1 and found[0]["signature"] == "mining-busy-pool-connection", found
    assert (found[0]["user"], found[0]["kernel_id"]) == (SERVER_USER, kernel.kernel_id)
    miner = found[0]["evidence"]["processes"][0]
    assert miner["network_namespace"].startswith("net:["), miner
    assert any(f"127.0.0.1:{pool_in} ESTABLISHED" in s for s in miner["sockets"]), miner
    # the window, the rule's 2 s, a late tick on this busy machine
    assert elapsed <= WINDOW_SERVER + 3, elapsed
    wait_until(lambda: not _alive(miner["pid"]), timeout=10, what="the miner stopped")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
