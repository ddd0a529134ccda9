"""GPU sampling: the real NVML path where it can run (without a GPU it must turn itself off
cleanly; with one, a real CUDA workload must be attributed), NVML's answers recorded on a real
H200 played back call by call (tests/data/gpu-h200-nvml.json), and a stand-in built from
nvidia-ml-py's own structures for what no recording has (MIG, a failing device)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pynvml
import pytest

from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.gpu import GpuSampler
from colab_guard.observe.model import Process, Snapshot
from colab_guard.observe.processes import ProcessSampler
from tests.conftest import wait_for

MIB = 2**20
RECORDED = Path(__file__).parent / "data" / "gpu-h200-nvml.json"
CUDA_SPIN = Path(__file__).parent / "standins" / "cuda_spin.py"


def nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except pynvml.NVMLError:
        return False


class StandInNvml:
    """Answers like pynvml for ``devices``: [{name, processes: {pid: (memory bytes, sm %)}}]."""

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, devices: list[dict]):
        self.devices = devices
        self.calls: list[str] = []

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, h):
        return self.devices[h]["name"]

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h:08d}-stand-in"

    def nvmlDeviceGetMigMode(self, h):
        return [int(self.devices[h].get("mig", False)), 0]

    def nvmlDeviceGetMemoryInfo(self, h):
        if self.devices[h].get("broken"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        info = pynvml.c_nvmlMemory_t()
        info.total = 80 * 1024 * MIB
        info.used = sum(m for m, _ in self.devices[h]["processes"].values())
        return info

    def nvmlDeviceGetUtilizationRates(self, h):
        rates = pynvml.c_nvmlUtilization_t()
        rates.gpu = max([u for _, u in self.devices[h]["processes"].values()] or [0])
        return rates

    def nvmlDeviceGetPowerUsage(self, h):
        return 312_500

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 71

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        found = []
        for pid, (memory, _) in self.devices[h]["processes"].items():
            info = pynvml.c_nvmlProcessInfo_v3_t()
            info.pid, info.usedGpuMemory = pid, memory
            info.gpuInstanceId = info.computeInstanceId = 0xFFFFFFFF  # no MIG, as on the H200
            found.append(pynvml.nvmlStructToFriendlyObject(info))  # what pynvml hands out
        return found

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetProcessUtilization(self, h, last_seen):
        samples = []
        for pid, (_, util) in self.devices[h]["processes"].items():
            sample = pynvml.c_nvmlProcessUtilizationSample_t()
            sample.pid, sample.smUtil, sample.timeStamp = pid, util, last_seen + 1_000_000
            samples.append(sample)
        if not samples:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return samples


class RecordedHandle:
    def __init__(self, index: int):
        self.index = index


class RecordedNvml:
    """Plays back NVML's answers recorded on real hardware by tests/data/record_gpu.py, call by
    call: each call must be the one the sampler made there next, with the same arguments (device
    handles by index), and gets the answer NVML gave (rebuilt as nvidia-ml-py's structures and
    friendly objects) or raises the NVMLError it raised. ``pids`` renames recorded pids."""

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, calls: list[dict], pids: dict[int, int] | None = None):
        self.calls = list(calls)
        self.pids = pids or {}

    def __getattr__(self, name):
        if not name.startswith("nvml"):
            raise AttributeError(name)

        def call(*args):
            assert self.calls, f"{name} called after the recording ended"
            expected = self.calls.pop(0)
            made = [{"handle": a.index} if isinstance(a, RecordedHandle) else a for a in args]
            assert (name, made) == (expected["call"], expected["args"])
            if "error" in expected:
                raise pynvml.NVMLError(expected["error"]["code"])
            if name == "nvmlDeviceGetHandleByIndex":
                return RecordedHandle(args[0])
            return self._rebuild(expected["result"])
        return call

    def _rebuild(self, value):
        if isinstance(value, list):
            return [self._rebuild(v) for v in value]
        if not isinstance(value, dict):
            return value
        fields = {k: v for k, v in value.items() if k != "__type__"}
        if "pid" in fields:
            fields["pid"] = self.pids.get(fields["pid"], fields["pid"])
        if value["__type__"] == "nvmlFriendlyObject":
            return pynvml.nvmlFriendlyObject(fields)
        struct = getattr(pynvml, value["__type__"])()
        for key, field_value in fields.items():
            setattr(struct, key, field_value)
        return struct


def recorded() -> dict:
    return json.loads(RECORDED.read_text())


def all_recorded_calls(data: dict) -> list[dict]:
    return (data["start"]["calls"] + [c for s in data["samples"] for c in s["calls"]]
            + data["stop"]["calls"])


def test_recorded_h200_answers_give_the_figures_the_real_run_reported():
    data = recorded()
    nvml = RecordedNvml(all_recorded_calls(data))
    sampler = GpuSampler(nvml=nvml)
    assert sampler.start() is True
    for taken in data["samples"]:
        assert sampler.sample().to_dict() == taken["sample"], taken["label"]
    sampler.stop()
    assert nvml.calls == [] and sampler.errors == 0  # every recorded call made, none more

    spin = data["workload"]["pid"]
    by_label = {}
    for taken in data["samples"]:
        by_label.setdefault(taken["label"], []).append(taken["sample"])
    for sample in by_label["idle"] + by_label["after"]:
        assert sample["processes"] == {}  # NVML's NOT_FOUND for utilisation: nobody used the GPU
        assert sample["devices"][0]["utilization"] == 0
    device = by_label["load"][-1]["devices"][0]
    assert (device["name"], device["mig"], device["memory_total_mb"]) == ("NVIDIA H200", False, 143771.0)
    assert device["utilization"] == 100
    for sample in by_label["load"]:
        assert list(sample["processes"]) == [str(spin)]
        use = sample["processes"][str(spin)]
        # 512 MiB allocated plus the CUDA context and module: NVML says 1030 MiB, as nvidia-smi did
        assert (use["memory_mb"], use["devices"]) == (1030.0, [0])
    assert [s["processes"][str(spin)]["percent"] for s in by_label["load"]][1:] == [99.0] * 8
    assert "1030 MiB" in data["nvidia_smi_load"]["compute_apps"]


def test_recorded_h200_workload_is_attributed_to_the_kernel_whose_process_ran_it(child):
    data = recorded()
    spin = data["workload"]["pid"]
    load = [s for s in data["samples"] if s["label"] == "load"]
    # On the device the real ProcessSampler gave the spinning child (not its parent) the figures.
    assert load[-1]["attributed"][str(spin)]["gpu_percent"] == 99.0
    assert all(v["gpu_memory_mb"] == 0 for pid, v in load[-1]["attributed"].items() if pid != str(spin))

    # Here: the same answers up to the last sample under load (the sampler passes the last
    # utilisation timestamp it saw), the recorded pid renamed to a real child of this process.
    upto = data["samples"].index(load[-1]) + 1
    calls = data["start"]["calls"] + [c for s in data["samples"][:upto] for c in s["calls"]]
    gpu = GpuSampler(nvml=RecordedNvml(calls, pids={spin: child.pid}))
    gpu.start()
    for _ in range(upto - 1):
        gpu.sample()
    snap = ProcessSampler().sample({"k": psutil.Process().pid}, gpu.sample())["k"]
    assert gpu.errors == 0
    (proc,) = [p for p in snap.processes if p.pid == child.pid]
    assert (proc.gpu_percent, proc.gpu_memory_mb) == (99.0, 1030.0)


def test_without_a_gpu_sampling_turns_itself_off_once_with_the_reason(caplog):
    if nvml_works():
        pytest.skip("this machine has a working NVML: the no-GPU path cannot be shown here")
    sampler = GpuSampler(log=logging.getLogger("gpu-test"))
    with caplog.at_level(logging.INFO):
        assert sampler.start() is False
        assert [sampler.sample() for _ in range(3)] == [None, None, None]
    assert "NVMLError" in sampler.reason
    assert caplog.text.count("GPU sampling is off") == 1


def test_device_and_process_figures_are_read():
    nvml = StandInNvml([{"name": "NVIDIA H100 80GB HBM3",
                         "processes": {4242: (1536 * MIB, 97), 4343: (512 * MIB, 3)}}])
    sampler = GpuSampler(nvml=nvml)
    assert sampler.start() is True
    sample = sampler.sample()
    (device,) = sample.devices
    assert (device.name, device.utilization, device.memory_used_mb) == ("NVIDIA H100 80GB HBM3", 97, 2048.0)
    assert (device.power_w, device.temperature_c, device.mig) == (312.5, 71, False)
    assert sample.processes[4242].memory_mb == 1536.0 and sample.processes[4242].percent == 97.0
    assert sample.processes[4343].percent == 3.0
    sampler.stop()
    assert nvml.calls == ["init", "shutdown"]


def test_mig_devices_report_memory_but_no_per_process_utilisation():
    nvml = StandInNvml([{"name": "A100 MIG", "mig": True, "processes": {77: (2048 * MIB, 88)}}])
    sampler = GpuSampler(nvml=nvml)
    sampler.start()
    sample = sampler.sample()
    assert sample.devices[0].mig is True
    assert sample.processes[77].memory_mb == 2048.0 and sample.processes[77].percent == 0.0


def test_a_failing_device_is_logged_once_and_the_others_are_sampled(caplog):
    nvml = StandInNvml([{"name": "lost", "broken": True, "processes": {}},
                        {"name": "fine", "processes": {5: (MIB, 50)}}])
    sampler = GpuSampler(nvml=nvml, log=logging.getLogger("gpu-test"))
    sampler.start()
    with caplog.at_level(logging.WARNING):
        samples = [sampler.sample() for _ in range(3)]
    assert [d.name for d in samples[-1].devices] == ["fine"]
    assert samples[-1].processes[5].percent == 50.0
    assert sampler.errors == 3
    assert caplog.text.count("sampling GPU 0 failed") == 1


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_gpu_use_is_attributed_to_the_kernel_whose_process_holds_it(child):
    kernel_pid = psutil.Process().pid
    nvml = StandInNvml([{"name": "gpu", "processes": {child.pid: (3000 * MIB, 91)}}])
    gpu = GpuSampler(nvml=nvml)
    gpu.start()
    snap = ProcessSampler().sample({"k": kernel_pid}, gpu.sample())["k"]
    (proc,) = [p for p in snap.processes if p.pid == child.pid]
    assert (proc.gpu_percent, proc.gpu_memory_mb) == (91.0, 3000.0)
    assert all(p.gpu_percent == 0 for p in snap.processes if p.pid != child.pid)


def test_gpu_signatures_catch_a_busy_miner_and_leave_busy_training_alone():
    rules = load_signatures()
    engine = Engine(rules)

    miner = Process.from_dict({"pid": 1, "name": "kworker", "gpu_percent": 99, "gpu_memory_mb": 4000,
                               "sockets": [{"remote_ip": "10.0.0.5", "remote_port": 4444}]})
    trainer = Process.from_dict({"pid": 2, "name": "python3", "gpu_percent": 100,
                                 "gpu_memory_mb": 70000, "cmdline": ["python3", "train.py"],
                                 "sockets": [{"remote_ip": "10.0.0.6", "remote_port": 29500}]})
    found = []
    for t in range(0, 40, 5):
        found += engine.evaluate(Snapshot("k", 1000 + t, [miner, trainer]))
    assert {d.signature.id for d in found} == {"gpu-mining-pool-busy"}
    assert {d.process.pid for d in found} == {1}


@pytest.fixture
def gpu_rule(tmp_path, guard_config):
    rules = tmp_path / "gpu-rules.yaml"
    rules.write_text("""
signatures:
  - id: test-gpu-busy-sleeper
    category: crypto-mining
    severity: high
    description: test rule on GPU figures
    action: record
    when:
      all:
        - gpu_percent: {gte: 50}
        - cmdline: {contains: gpu-test-marker}
    examples:
      match: [{cmdline: [python3, gpu-test-marker], gpu_percent: 90}]
      no_match: [{cmdline: [python3, gpu-test-marker], gpu_percent: 10}]
""")
    guard_config["signature_paths"] = [str(rules)]


async def test_status_and_incidents_carry_gpu_figures(gpu_rule, kernel, guard, jp_fetch, guard_config):
    code = ("import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', 'gpu-test-marker'])\n"
            "print('PID', p.pid, flush=True)\n")
    _, outputs = await kernel.run(code)
    pid = int(next(o["text"] for o in outputs if o["type"] == "stream").split()[1])
    nvml = StandInNvml([{"name": "stand-in GPU", "processes": {pid: (2500 * MIB, 93)}}])
    guard.monitor.gpu = GpuSampler(nvml=nvml)
    guard.monitor.gpu.start()

    status = await wait_for_async(lambda: status_with_gpu(jp_fetch, kernel.kernel_id))
    assert status["available"] is True
    assert status["kernels"][kernel.kernel_id] == {"gpu_percent": 93.0, "gpu_memory_mb": 2500.0}
    assert status["devices"][0]["name"] == "stand-in GPU"
    incidents = await wait_for(lambda: [json.loads(line) for line in
                                        open(guard_config["incident_log"]).read().splitlines()])
    evidence = incidents[-1]["evidence"]["processes"][0]
    assert (evidence["pid"], evidence["gpu_percent"], evidence["gpu_memory_mb"]) == (pid, 93.0, 2500.0)
    psutil.Process(pid).kill()


async def status_with_gpu(jp_fetch, kernel_id):
    body = json.loads((await jp_fetch("colab-guard", "api", "status")).body)
    return body["gpu"] if body["gpu"]["kernels"].get(kernel_id, {}).get("gpu_memory_mb") else None


async def wait_for_async(make, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await make()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met")


async def test_status_says_why_gpu_sampling_is_off(guard, jp_fetch):
    if nvml_works():
        pytest.skip("this machine has a working NVML")
    await wait_for(lambda: guard.monitor.gpu.reason != "not started")
    body = json.loads((await jp_fetch("colab-guard", "api", "status")).body)
    assert body["gpu"]["available"] is False
    assert "NVML" in body["gpu"]["reason"]


@pytest.mark.skipif(not nvml_works(), reason="needs an NVIDIA GPU with a working driver (NVML)")
async def test_a_real_cuda_workload_is_attributed_to_its_kernel(kernel, guard):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch here has no CUDA")
    code = ("import torch, time\nx = torch.randn(8192, 8192, device='cuda')\nt = time.time()\n"
            "while time.time() - t < 8:\n    x = (x @ x).tanh()\ntorch.cuda.synchronize(); print('done')\n")
    task = asyncio.ensure_future(kernel.run(code, timeout=120))
    use = await wait_for_async(lambda: _kernel_gpu(guard, kernel.kernel_id), timeout=60)
    await task
    assert use["gpu_memory_mb"] >= 256  # an 8192² float32 matrix and its products
    assert 5 <= use["gpu_percent"] <= 100 * max(1, len(guard.monitor.last_gpu.devices))


async def _kernel_gpu(guard, kernel_id):
    use = guard.monitor.gpu_by_kernel.get(kernel_id)
    return use if use and use["gpu_percent"] > 0 else None


@pytest.mark.skipif(not nvml_works(), reason="needs an NVIDIA GPU with a working driver (NVML)")
def test_real_nvml_attributes_a_cuda_driver_api_workload_to_its_parent():
    """No PyTorch needed: tests/standins/cuda_spin.py holds 512 MiB and spins a PTX kernel."""
    spin = subprocess.Popen([sys.executable, str(CUDA_SPIN), "--mib", "512", "--seconds", "30"],
                            stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(spin.stdout.readline() or "{}")
        if not ready.get("ready"):
            pytest.skip(f"no CUDA driver workload here: {ready.get('error')}")
        gpu = GpuSampler()
        assert gpu.start() is True, gpu.reason
        sampler = ProcessSampler()

        def busy():
            snap = sampler.sample({"k": os.getpid()}, gpu.sample())["k"]
            found = [p for p in snap.processes if p.pid == spin.pid and p.gpu_percent > 0]
            return found[0] if found else None

        deadline, proc = time.monotonic() + 20, None
        while proc is None and time.monotonic() < deadline:
            time.sleep(0.5)
            proc = busy()
        assert proc is not None, "NVML never reported the workload busy"
        assert proc.gpu_memory_mb >= 512  # the allocation, plus the context (1030 MiB on an H200)
        assert 0 < proc.gpu_percent <= 100
        assert gpu.errors == 0
        gpu.stop()
    finally:
        spin.kill()
        spin.wait()
