"""Offences coalesced per kernel, on real processes: a kernel that starts SIGTERM-ignoring
decoys named like a miner in a loop gets a few incidents, not hundreds; the real miner
started among them is still stopped at once and listed in the evidence; what was
coalesced is counted (metric, log line) and nothing is lost (the count of offenders).

The monitor runs as the server extension runs it (real sampler, signatures, policy and
incident database); the kernel adapter stands for jupyter_server's (it records the
interrupts it is asked for).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from colab_guard import monitor as monitor_module
from colab_guard.act import policy as policy_module
from colab_guard.act.policy import INCIDENT_BURST, Policy
from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.monitor import MAX_PROCESSES_SHOWN, Monitor
from colab_guard.record import metrics
from colab_guard.record.database import IncidentDatabase, IncidentStore
from colab_guard.record.recorder import Recorder
from colab_guard.settings import Settings
from tests.harness import wait_for
from tests.standins import pool as standin_pool

MINER = Path(__file__).parent / "standins" / "miner.py"
WALLET = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"
DECOYS = 100

#: The "kernel": keeps DECOYS decoys alive (a new one for each one stopped) until told to
#: stop, and starts the real miner when told to.
KERNEL = textwrap.dedent("""
    import subprocess, sys, threading, time
    DECOY = ["bash", "-c", "trap '' TERM; exec -a xmrig sleep 600"]  # cheap, named xmrig
    decoys, running, started = [], [True], [0]
    def keep(n):
        while running[0]:
            decoys[:] = [d for d in decoys if d.poll() is None]
            while len(decoys) < n:
                decoys.append(subprocess.Popen(DECOY))
                started[0] += 1
            time.sleep(0.05)
    for line in sys.stdin:
        order = line.split()
        if order[0] == "decoys":
            threading.Thread(target=keep, args=(int(order[1]),), daemon=True).start()
        elif order[0] == "miner":
            miner = subprocess.Popen([sys.executable, *order[1:]])
            print(miner.pid, flush=True)
        elif order[0] == "stop":
            running[0] = False
            time.sleep(0.2)
            print(started[0], flush=True)
""")


class OneKernel:
    """The kernels adapter: one kernel, a real process; interrupts are recorded, not sent
    (the kernel here is the decoys' spawner, not an IPython kernel)."""

    def __init__(self, pid: int):
        self.pid, self.calls = pid, []

    def pids(self) -> dict[str, int]:
        return {"k-decoys": self.pid}

    def __contains__(self, kernel_id: str) -> bool:
        return kernel_id == "k-decoys"

    async def interrupt(self, kernel_id: str) -> None:
        self.calls.append(("interrupt", kernel_id))

    async def shutdown(self, kernel_id: str) -> None:
        self.calls.append(("shutdown", kernel_id))

    async def notebook_path(self, kernel_id: str) -> str | None:
        return None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def kernel():
    proc = subprocess.Popen([sys.executable, "-c", KERNEL], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    yield proc
    for child in psutil.Process(proc.pid).children(recursive=True):
        child.kill()
    proc.kill()
    proc.wait()


def halted(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.Error:
        return True


def connections(pid: int) -> int:
    try:
        return len(psutil.Process(pid).net_connections())
    except psutil.Error:
        return 0


def order(kernel: subprocess.Popen, line: str) -> str | None:
    kernel.stdin.write(line + "\n")
    kernel.stdin.flush()
    return kernel.stdout.readline().strip() if line.split()[0] in ("miner", "stop") else None


async def test_decoys_in_a_loop_become_few_incidents_and_the_miner_is_still_stopped_at_once(
        kernel, tmp_path, monkeypatch, caplog):
    window, burst = 4.0, 2
    monkeypatch.setattr(policy_module, "INCIDENT_BURST", burst)
    monkeypatch.setattr(policy_module, "INCIDENT_WINDOW", window)
    monkeypatch.setattr(monitor_module, "INCIDENT_WINDOW", window)
    settings = Settings(user_name="ada", gpu_sampling=False, sample_interval=0.5, stop_grace=1.0)
    store = IncidentStore(IncidentDatabase(f"sqlite:///{tmp_path / 'i.sqlite'}"))
    policy = Policy(settings)
    adapter = OneKernel(kernel.pid)
    monitor = Monitor(settings, adapter, Engine(load_signatures()), policy,
                      Recorder(store, policy, settings))
    def coalesced_count() -> float:
        return metrics.OFFENCES_COALESCED.labels("crypto-mining")._value.get()

    coalesced_before = coalesced_count()
    pool = standin_pool.serve()
    caplog.set_level(logging.WARNING, logger="colab_guard")
    monitor.start()
    began = time.monotonic()
    try:
        order(kernel, f"decoys {DECOYS}")
        # The burst of incidents spent, the rest coalesced: decoys keep coming.
        await wait_for(lambda: coalesced_count() > coalesced_before, timeout=120)
        launched = time.monotonic()  # the miner's start: the kernel starts it on this order
        miner = int(order(kernel, f"miner {MINER} -o stratum+tcp://127.0.0.1:"
                                  f"{pool.getsockname()[1]} -u {WALLET} -p x"))
        # Measured from when it holds its pool connection (it can be recognised from then
        # on; under load the interpreter takes a while to get there) to when it is gone.
        connected = await wait_for(lambda: gone(miner) or connections(miner) and (
            time.monotonic(), monitor.ticks), timeout=120, interval=0.02)
        # Frozen (SIGSTOP) the moment its stop begins, then SIGTERM once its family is known.
        await wait_for(lambda: gone(miner) or halted(miner), timeout=60, interval=0.01)
        halted_after_start = time.monotonic() - launched
        stopped_after, ticks_after = (time.monotonic() - connected[0],
                                      monitor.ticks - connected[1])
        await wait_for(lambda: gone(miner), timeout=60, interval=0.02)
        gone_after = time.monotonic() - connected[0]
        spawned = int(order(kernel, "stop"))
        await asyncio.sleep(0)  # the last decoys are stopped at the next ticks
        await wait_for(lambda: not [c for c in psutil.Process(kernel.pid).children()
                                    if c.status() != psutil.STATUS_ZOMBIE], timeout=60)
    finally:
        await monitor.stop()
        pool.close()
    incidents = store.query(limit=10_000)
    # One tick after it started (0.5 s) and its stop: on a quiet machine well under 1 s; a
    # loaded CI machine gets slack, but nowhere near the 54-59 s once measured.
    print(f"miner halted {halted_after_start:.2f} s after its start; "
          f"{stopped_after:.2f} s and {ticks_after} tick(s) after it connected, "
          f"gone after {gone_after:.2f} s; "
          f"{spawned} decoys started; {len(incidents)} incidents")
    # The bound, in wall-clock time: its work halted within 1 s of its start,
    # however many decoys are queued for their stops.
    assert halted_after_start <= 1.0, halted_after_start
    # Recognised at the first tick that sees its connection, stopped at once: however
    # loaded the machine (ticks then come late), no later than the next tick.
    assert ticks_after <= 2 and stopped_after < 60
    # A burst, then one coalesced incident per window at most.
    assert len(incidents) <= (burst + 1) * (1 + int(time.monotonic() - began) // int(window))
    assert len(incidents) < spawned / 10
    coalesced = [i for i in incidents if "coalesced" in i.evidence]
    assert coalesced
    # Nothing silently lost: every offender is listed or counted, in some incident.
    counted = sum(len(i.evidence["processes"]) + i.evidence.get("not_shown", {}).get(
        "processes", 0) for i in incidents)
    assert counted >= spawned * 0.9  # a last few may have been stopped by their parent's end
    for incident in incidents:
        assert len(incident.evidence["processes"]) <= MAX_PROCESSES_SHOWN
        assert sum(a.action == "stop" and a.target.startswith("pid ")
                   for a in incident.actions) <= MAX_PROCESSES_SHOWN
    # The miner, more telling than any decoy, is listed where it was recorded.
    assert any(p["pid"] == miner for i in incidents for p in i.evidence["processes"])
    assert "coalesced into incident" in caplog.text


def test_a_kernel_opens_its_burst_of_incidents_then_coalesces_until_the_window_passes():
    from tests.test_policy import Clock

    clock = Clock()
    policy = Policy(Settings(), clock=clock)
    assert [policy.admit("k1") for _ in range(INCIDENT_BURST)] == [True] * INCIDENT_BURST
    assert not policy.admit("k1")
    assert policy.admit("k2")  # per kernel
    clock.now += policy_module.INCIDENT_WINDOW
    assert policy.admit("k1")
