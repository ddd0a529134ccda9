"""Record NVML's real answers to the GPU sampler, on a machine with an NVIDIA GPU.

    python -m tests.data.record_gpu OUT.json [--seconds 25]

Runs colab_guard's GpuSampler against the real NVML with every NVML call it makes recorded
(arguments, answer or error), first with the GPU idle and then while a real CUDA workload
(tests/standins/cuda_spin.py: device memory held and a spinning kernel) runs as a child of
this process, which plays the kernel: the real ProcessSampler attributes the child's GPU use.
Also times one ``GpuSampler.sample()`` (rounds of 50, idle and under load) and keeps
nvidia-smi's view for comparison. ``tests/test_gpu.py`` plays the recorded calls back.
Without a GPU it writes what it found (the reason) and exits 0.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from colab_guard.observe.gpu import GpuSampler

SPIN = Path(__file__).resolve().parent.parent / "standins" / "cuda_spin.py"


def plain(value):
    """NVML answers (ctypes structures, lists, bytes) as JSON, structures with their type."""
    if isinstance(value, ctypes.Structure):
        return {"__type__": type(value).__name__,
                **{name: plain(getattr(value, name)) for name, *_ in value._fields_}}
    if type(value).__name__ == "nvmlFriendlyObject":  # how pynvml hands out process lists
        return {"__type__": "nvmlFriendlyObject", **{k: plain(v) for k, v in vars(value).items()}}
    if isinstance(value, (list, tuple)) or isinstance(value, ctypes.Array):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)


class RecordingNvml:
    """pynvml, with every ``nvml*`` call and its answer (or error) appended to ``calls``."""

    def __init__(self, nvml):
        self._nvml = nvml
        self.calls: list[dict] = []
        self._handles: dict[int, int] = {}  # id(handle) -> device index

    def __getattr__(self, name):
        target = getattr(self._nvml, name)
        if not (callable(target) and name.startswith("nvml")):
            return target

        def call(*args):
            entry = {"call": name, "args": [self._arg(a) for a in args]}
            self.calls.append(entry)
            try:
                result = target(*args)
            except self._nvml.NVMLError as err:
                entry["error"] = {"code": err.value, "text": str(err)}
                raise
            if name == "nvmlDeviceGetHandleByIndex":
                self._handles[id(result)] = args[0]
                entry["result"] = {"handle": args[0]}
            else:
                entry["result"] = plain(result)
            return result
        return call

    def _arg(self, value):
        if id(value) in self._handles:
            return {"handle": self._handles[id(value)]}
        return plain(value)


def sample_cost(nvml, rounds: int = 5, per_round: int = 50) -> dict:
    """Median wall time of one GpuSampler.sample() against the real NVML, per round, in ms."""
    sampler = GpuSampler(nvml=nvml)
    sampler.start()
    sampler.sample()  # warm up
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(per_round):
            started = time.perf_counter()
            sampler.sample()
            times.append((time.perf_counter() - started) * 1000)
        medians.append(round(statistics.median(times), 3))
    # Not stopped: nvmlShutdown would end the recording sampler's session too (NVML counts inits,
    # but keep it simple: one init per sampler, shut down at the end).
    return {"rounds": rounds, "samples_per_round": per_round, "median_ms_per_round": medians,
            "median_ms": round(statistics.median(medians), 3)}


def call_cost(nvml, handle, repeat: int = 50) -> dict:
    """Median wall time of each NVML call the sampler makes, in ms."""
    calls = {
        "nvmlDeviceGetMemoryInfo": lambda: nvml.nvmlDeviceGetMemoryInfo(handle),
        "nvmlDeviceGetName": lambda: nvml.nvmlDeviceGetName(handle),
        "nvmlDeviceGetUUID": lambda: nvml.nvmlDeviceGetUUID(handle),
        "nvmlDeviceGetUtilizationRates": lambda: nvml.nvmlDeviceGetUtilizationRates(handle),
        "nvmlDeviceGetPowerUsage": lambda: nvml.nvmlDeviceGetPowerUsage(handle),
        "nvmlDeviceGetTemperature": lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
        "nvmlDeviceGetComputeRunningProcesses": lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle),
        "nvmlDeviceGetGraphicsRunningProcesses": lambda: nvml.nvmlDeviceGetGraphicsRunningProcesses(handle),
        "nvmlDeviceGetProcessUtilization": lambda: nvml.nvmlDeviceGetProcessUtilization(handle, 0),
    }
    found = {}
    for name, read in calls.items():
        times, error = [], None
        for _ in range(repeat):
            started = time.perf_counter()
            try:
                read()
            except nvml.NVMLError as err:
                error = str(err)
            times.append((time.perf_counter() - started) * 1000)
        found[name] = {"median_ms": round(statistics.median(times), 4), "error": error}
    return found


def extra_facts(nvml, handle) -> dict:
    facts = {}
    for key, read in {
        "driver_version": lambda: nvml.nvmlSystemGetDriverVersion(),
        "nvml_version": lambda: nvml.nvmlSystemGetNVMLVersion(),
        "cuda_driver_version": lambda: nvml.nvmlSystemGetCudaDriverVersion(),
        "mig_mode": lambda: nvml.nvmlDeviceGetMigMode(handle),
        "compute_mode": lambda: nvml.nvmlDeviceGetComputeMode(handle),
        "persistence_mode": lambda: nvml.nvmlDeviceGetPersistenceMode(handle),
        "power_limit_mw": lambda: nvml.nvmlDeviceGetPowerManagementLimit(handle),
        "pci_bus_id": lambda: nvml.nvmlDeviceGetPciInfo(handle).busId,
    }.items():
        try:
            facts[key] = plain(read())
        except Exception as err:  # noqa: BLE001 - a fact we could not read, say why
            facts[key] = f"{type(err).__name__}: {err}"
    return facts


def command(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return f"{type(err).__name__}: {err}"


def pid_namespace() -> dict:
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError as err:
        ns = str(err)
    nspid = [line for line in Path("/proc/self/status").read_text().splitlines()
             if line.startswith("NSpid")]
    return {"ns": ns, "nspid": nspid[0] if nspid else None}


def record(seconds: float) -> dict:
    import pynvml

    result: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0], "platform": platform.platform(),
        # The installed distribution's version, and the file really imported (PYTHONPATH may
        # put another copy first).
        "nvidia_ml_py": _dist_version("nvidia-ml-py"), "pynvml_file": pynvml.__file__,
        "pid_namespace": pid_namespace(),
        "nvidia_smi": command(["nvidia-smi"]),
    }
    recording = RecordingNvml(pynvml)
    sampler = GpuSampler(nvml=recording)
    if not sampler.start():
        result["available"], result["reason"] = False, sampler.reason
        return result
    result["available"] = True
    result["start"] = {"calls": recording.calls}
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    result["facts"] = extra_facts(pynvml, handle)

    def take(label: str, kernel_pid: int | None = None) -> dict:
        recording.calls = []
        started = time.perf_counter()
        sample = sampler.sample()
        took = (time.perf_counter() - started) * 1000
        entry = {"label": label, "t": round(time.monotonic() - t0, 3), "calls": recording.calls,
                 "sample": sample.to_dict(), "errors": sampler.errors, "ms": round(took, 3)}
        if kernel_pid is not None:
            entry["attributed"] = attribute(kernel_pid, sample)
        return entry

    t0 = time.monotonic()
    samples = [take("idle")]
    time.sleep(0.5)
    samples.append(take("idle"))
    result["cost_idle"] = sample_cost(pynvml)
    result["call_cost_idle"] = call_cost(pynvml, handle)

    spin = subprocess.Popen([sys.executable, str(SPIN), "--mib", "512", "--seconds", str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = json.loads(spin.stdout.readline() or '{"ready": false, "error": "no output"}')
    result["workload"] = {"pid": spin.pid, "mib": 512, "first_line": ready}
    if ready.get("ready"):
        for _ in range(8):
            time.sleep(1.0)
            samples.append(take("load", kernel_pid=os.getpid()))
        result["nvidia_smi_load"] = {
            "compute_apps": command(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory",
                                     "--format=csv"]),
            "pmon": command(["nvidia-smi", "pmon", "-c", "1"])}
        result["cost_load"] = sample_cost(pynvml)
        result["call_cost_load"] = call_cost(pynvml, handle)
        samples.append(take("load", kernel_pid=os.getpid()))
    spin.kill()
    out, err = spin.communicate(timeout=30)
    result["workload"]["rest_of_output"] = out[-2000:]
    result["workload"]["stderr"] = err[-4000:]
    time.sleep(1.0)
    samples.append(take("after"))
    result["samples"] = samples
    recording.calls = []
    sampler.stop()
    result["stop"] = {"calls": recording.calls}
    return result


def attribute(kernel_pid: int, sample) -> dict:
    """The real ProcessSampler's view of this process's tree, with NVML's figures joined."""
    from colab_guard.observe.processes import ProcessSampler

    snap = ProcessSampler().sample({"k": kernel_pid}, sample)["k"]
    return {str(p.pid): {"name": p.name, "gpu_percent": p.gpu_percent, "gpu_memory_mb": p.gpu_memory_mb}
            for p in snap.processes}


def _dist_version(name: str):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001
        return None


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-nvml.json")
    seconds = float(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 25.0
    result = record(seconds)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}: available={result['available']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
