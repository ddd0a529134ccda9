"""GPU use per device and per process, from NVML (nvidia-ml-py).

Without a GPU or a driver the guard runs as before: ``start()`` says why GPU
sampling is off, once, and every later ``sample()`` returns None without
trying again. An error while sampling one device is logged once and counted;
the other devices, and the process sampling, go on.

MIG: with MIG enabled NVML reports processes per MIG instance and does not
give per-process utilisation; such devices report their memory and the
processes' memory only, and say so in the status ("mig": true).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

MIB = 2**20


@dataclass
class GpuDevice:
    index: int
    name: str
    uuid: str
    utilization: float | None = None  # percent of time a kernel ran, last sample period
    memory_used_mb: float = 0.0
    memory_total_mb: float = 0.0
    power_w: float | None = None
    temperature_c: float | None = None
    mig: bool = False


@dataclass
class GpuProcessUse:
    memory_mb: float = 0.0
    percent: float = 0.0  # SM utilisation attributed to the process (max over devices)
    devices: list[int] = field(default_factory=list)


@dataclass
class GpuSample:
    devices: list[GpuDevice] = field(default_factory=list)
    processes: dict[int, GpuProcessUse] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"devices": [asdict(d) for d in self.devices],
                "processes": {str(pid): asdict(use) for pid, use in self.processes.items()}}


class GpuSampler:
    def __init__(self, nvml: Any = None, log: logging.Logger | None = None):
        self.log = log or logging.getLogger("colab_guard")
        self._nvml = nvml
        self.available = False
        self.reason = "not started"
        self.errors = 0
        self._handles: list[Any] = []
        self._mig: list[bool] = []
        self._last_seen: list[int] = []  # NVML timestamps (µs) of the last utilisation sample
        self._logged: set[str] = set()

    def start(self) -> bool:
        """Initialise NVML once; False (with ``reason``) when there is no usable GPU."""
        try:
            nvml = self._nvml or _import_nvml()
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError...
            self.reason = f"{type(err).__name__}: {err}"
            self.log.info("colab-guard: GPU sampling is off (%s)", self.reason)
            return False
        if not self._handles:
            self.reason = "NVML found no GPU"
            self.log.info("colab-guard: GPU sampling is off (%s)", self.reason)
            return False
        self._nvml = nvml
        self._mig = [self._mig_enabled(h) for h in self._handles]
        self._last_seen = [0] * len(self._handles)
        self.available, self.reason = True, ""
        names = ", ".join(_text(nvml.nvmlDeviceGetName(h)) for h in self._handles)
        self.log.info("colab-guard: GPU sampling on %d device(s): %s%s", len(self._handles), names,
                      "; MIG devices report memory only, no per-process utilisation"
                      if any(self._mig) else "")
        return True

    def sample(self) -> GpuSample | None:
        if not self.available:
            return None
        result = GpuSample()
        for index, handle in enumerate(self._handles):
            try:
                result.devices.append(self._device(index, handle))
                self._processes(index, handle, result.processes)
            except Exception as err:
                self.errors += 1
                self._once(f"device{index}", "colab-guard: sampling GPU %d failed (%s); "
                           "further failures are only counted", index, err)
        return result

    def stop(self) -> None:
        if self.available:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self.available = False

    # ------------------------------------------------------------------

    def _device(self, index: int, handle: Any) -> GpuDevice:
        nvml = self._nvml
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        device = GpuDevice(index=index, name=_text(nvml.nvmlDeviceGetName(handle)),
                           uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                           memory_used_mb=round(memory.used / MIB, 1),
                           memory_total_mb=round(memory.total / MIB, 1), mig=self._mig[index])
        device.utilization = self._optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        power = self._optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle))  # milliwatts
        device.power_w = round(power / 1000, 1) if power is not None else None
        device.temperature_c = self._optional(
            lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        return device

    def _processes(self, index: int, handle: Any, found: dict[int, GpuProcessUse]) -> None:
        nvml = self._nvml
        running = list(nvml.nvmlDeviceGetComputeRunningProcesses(handle))
        running += list(self._optional(lambda: nvml.nvmlDeviceGetGraphicsRunningProcesses(handle)) or [])
        for proc in running:
            use = found.setdefault(proc.pid, GpuProcessUse())
            memory = proc.usedGpuMemory  # None when the driver does not report it
            use.memory_mb = round(use.memory_mb + (memory or 0) / MIB, 1)
            if index not in use.devices:
                use.devices.append(index)
        if self._mig[index]:
            return  # NVML has no per-process utilisation under MIG
        for sample in self._utilization_samples(index, handle):
            use = found.setdefault(sample.pid, GpuProcessUse(devices=[index]))
            use.percent = max(use.percent, float(sample.smUtil))

    def _utilization_samples(self, index: int, handle: Any) -> list:
        """Per-process SM utilisation samples since the last call (NVML keeps a short buffer)."""
        nvml = self._nvml
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(handle, self._last_seen[index])
        except nvml.NVMLError:
            return []  # NOT_FOUND: no process used this GPU since the last sample
        if samples:
            self._last_seen[index] = max(s.timeStamp for s in samples)
        return samples

    def _mig_enabled(self, handle: Any) -> bool:
        mode = self._optional(lambda: self._nvml.nvmlDeviceGetMigMode(handle))
        return bool(mode and mode[0])

    def _optional(self, read):
        """A figure some GPUs or drivers do not support: None rather than an error."""
        try:
            return read()
        except Exception:
            return None

    def _once(self, kind: str, message: str, *args) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            self.log.warning(message, *args)


def _import_nvml():
    import pynvml  # from nvidia-ml-py

    return pynvml


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
