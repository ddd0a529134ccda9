"""The monitor without a Jupyter server: a fake kernels adapter, recorded snapshots."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import psutil

from colab_guard.act.policy import Policy
from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.monitor import Monitor
from colab_guard.observe.model import Process, Snapshot
from colab_guard.observe.processes import ProcessSampler
from colab_guard.record.database import IncidentDatabase, IncidentStore
from colab_guard.record.recorder import Recorder
from colab_guard.settings import Settings
from tests.harness import wait_until

DATA = Path(__file__).parent / "data"


class FakeKernels:
    """One kernel, whatever the recording calls it; remembers what was asked of it."""

    def __init__(self, kernel_id: str, pid: int):
        self.kernel_id, self.pid = kernel_id, pid
        self.calls: list[tuple[str, str]] = []

    def pids(self) -> dict[str, int]:
        return {self.kernel_id: self.pid}

    def __contains__(self, kernel_id: str) -> bool:
        return kernel_id == self.kernel_id

    async def interrupt(self, kernel_id: str) -> None:
        self.calls.append(("interrupt", kernel_id))

    async def shutdown(self, kernel_id: str) -> None:
        self.calls.append(("shutdown", kernel_id))

    async def notebook_path(self, kernel_id: str) -> str | None:
        return "work/mine.ipynb"


class ReplaySampler(ProcessSampler):
    """Hands out recorded snapshots, one per tick, instead of reading /proc."""

    def __init__(self, name: str):
        super().__init__()
        self.recorded = json.loads((DATA / f"{name}.json").read_text())

    def sample(self, kernels, gpu=None):
        raw = self.recorded.pop(0) if self.recorded else {"kernel_id": "", "time": 0,
                                                          "processes": []}
        self.stats.ticks += 1
        return {raw["kernel_id"]: Snapshot(raw["kernel_id"], raw["time"],
                                           [Process.from_dict(p) for p in raw["processes"]])}


def build(tmp_path, recording: str, **settings):
    settings = Settings(user_name="ada", gpu_sampling=False, **settings)
    sampler = ReplaySampler(recording)
    kernels = FakeKernels(sampler.recorded[0]["kernel_id"], pid=sampler.recorded[0]["processes"][0]["pid"])
    store = IncidentStore(IncidentDatabase(f"sqlite:///{tmp_path / 'i.sqlite'}"))
    events: list[dict] = []
    policy = Policy(settings)
    recorder = Recorder(store, policy, settings, emit=events.append)
    monitor = Monitor(settings, kernels, Engine(load_signatures()), policy, recorder,
                      sampler=sampler)
    return monitor, kernels, store, events


async def tick_through(monitor: Monitor, ticks: int) -> None:
    for _ in range(ticks):
        await monitor.tick()
    if monitor._tasks:
        await asyncio.wait(monitor._tasks)


async def test_a_recorded_miner_interrupts_the_kernel_and_is_recorded(tmp_path):
    monitor, kernels, store, events = build(tmp_path, "miner-renamed", stop_grace=0.1)
    await tick_through(monitor, 4)
    [incident] = store.query()
    assert incident.category == "crypto-mining" and incident.user == "ada"
    assert incident.notebook == "work/mine.ipynb" and incident.strike
    assert kernels.calls == [("interrupt", kernels.kernel_id)]
    # The recorded process is long gone (or its pid names another process): never signalled.
    stop = next(a for a in incident.actions if a.action == "stop")
    assert stop.outcome == "gone"
    assert [e["action"] for e in events] == ["interrupt"] and events[0]["strike"] is True
    await monitor.stop()


async def test_dry_run_touches_nothing(tmp_path):
    monitor, kernels, store, events = build(tmp_path, "miner-renamed", dry_run=True)
    await tick_through(monitor, 4)
    [incident] = store.query()
    assert kernels.calls == [] and incident.dry_run and not incident.strike
    assert {a.outcome for a in incident.actions[1:]} == {"would"}
    await monitor.stop()


async def test_honest_hashing_is_left_alone(tmp_path):
    monitor, kernels, store, events = build(tmp_path, "benign-hashing")
    await tick_through(monitor, 6)
    assert store.query() == [] and kernels.calls == [] and events == []
    await monitor.stop()


async def test_detection_runs_in_the_sampling_thread_not_on_the_event_loop(tmp_path):
    import threading

    monitor, kernels, store, events = build(tmp_path, "miner-renamed", stop_grace=0.1)
    threads = []
    evaluate = monitor.engine.evaluate

    def recording(snapshot):
        threads.append(threading.current_thread().name)
        return evaluate(snapshot)

    monitor.engine.evaluate = recording
    await tick_through(monitor, 2)
    assert threads and all(name.startswith("colab-guard-sample") for name in threads)
    await monitor.stop()


async def test_the_offenders_are_stopped_while_the_kernels_interrupt_is_under_way(tmp_path):
    """The interrupt and the stop go at once: an interrupt that takes its time (the node
    watcher finds a kernel's process group by a pass over /proc) holds no signal back. Here
    the interrupt returns only once the miner is gone: were the stop to wait for it, neither
    would ever end."""
    miner = tmp_path / "xmrig"
    shutil.copy("/bin/sleep", miner)
    kernel = subprocess.Popen(["/bin/sh", "-c", f"{miner} 600 & wait"], start_new_session=True)
    try:
        found = wait_until(lambda: psutil.Process(kernel.pid).children(), timeout=10,
                           what="the miner started")
        offender = found[0]

        class SlowKernels(FakeKernels):
            async def interrupt(self, kernel_id: str) -> None:
                self.calls.append(("interrupt", kernel_id))
                while offender.is_running() and offender.status() != psutil.STATUS_ZOMBIE:
                    await asyncio.sleep(0.05)

        settings = Settings(user_name="ada", gpu_sampling=False, stop_grace=0.5)
        kernels = SlowKernels("k1", kernel.pid)
        store = IncidentStore(IncidentDatabase(f"sqlite:///{tmp_path / 'i.sqlite'}"))
        policy = Policy(settings)
        engine = Engine(load_signatures())
        monitor = Monitor(settings, kernels, engine, policy, Recorder(store, policy, settings),
                          sampler=ProcessSampler())
        snapshot = ProcessSampler().sample({"k1": kernel.pid})["k1"]
        detections = engine.evaluate(snapshot)
        assert any(d.process.pid == offender.pid for d in detections)
        monitor.act_on(snapshot, detections)
        await asyncio.wait_for(asyncio.gather(*monitor._tasks), timeout=20)
        [incident] = store.query()
        steps = {a.action: a.outcome for a in incident.actions}
        assert steps["stop"] == "done" and kernels.calls == [("interrupt", "k1")]
        await monitor.stop()
    finally:
        os.killpg(kernel.pid, 9)
        kernel.wait()
