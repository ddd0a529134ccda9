"""Kernel-side overhead of the kernel hook: the same cells in a kernel with and without it.

    ./dev bench kernel_overhead [--runs 5]

Two real ipykernel kernels: one started with the kernel channel in its environment (the
startup file loads the hook: audit hook, sender thread, cell check before each cell), one
without (the startup file does nothing). The server side is the real KernelChannel, with the
real cell check, but no sampler: this measures what the hook costs the kernel, not the
monitor. Cells, alternated between the kernels, best of --runs:

  workload: import 200 new modules, open 10,000 files, start 100 subprocesses (target <= 1.03)
  compute:  pure Python arithmetic, timed end to end from the client (target <= 1.005)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from jupyter_client import AsyncKernelManager

from colab_guard.act.policy import Policy
from colab_guard.channel import KernelChannel
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.processes import kernel_environment
from colab_guard.record.database import IncidentDatabase, IncidentStore
from colab_guard.record.recorder import Recorder
from colab_guard.settings import Settings

WORKLOAD = """
import importlib, subprocess, sys, time
sys.path.insert(0, {modules!r})
t0 = time.perf_counter()
for i in range(200):
    importlib.import_module(f"bench_{run}_{{i}}")
for i in range(10_000):
    open({file!r}).close()
for i in range(100):
    subprocess.run(["/bin/true"])
print("ELAPSED", time.perf_counter() - t0)
"""
COMPUTE = ("import time\nt0 = time.perf_counter()\ntotal = 0\nfor i in range(12_000_000):\n"
           "    total += i * i % 7\nprint('ELAPSED', time.perf_counter() - t0)\n")


class _Kernels:
    """The benchmark's kernel managers, as the kernels adapter (kernels.py) shows them."""

    def __init__(self):
        self.managers: dict[str, AsyncKernelManager] = {}

    def pids(self):
        return {kid: km.provisioner.pid for kid, km in self.managers.items()
                if km.provisioner is not None}

    async def notebook_path(self, kernel_id):
        return None


class _Monitor:
    """What the channel needs of the monitor, minus sampling (not the kernel's cost)."""

    def __init__(self):
        self.kernels = _Kernels()

    def kernel_pids(self):
        return self.kernels.pids()

    def check_soon(self):
        pass

    def claim(self, pid, kernel_id):
        pass

    def note_connects(self, kernel_id, endpoints):
        pass

    note_imports = note_binds = note_connects


async def start_kernel(env: dict, km=None) -> tuple[AsyncKernelManager, object]:
    km = km or AsyncKernelManager(kernel_name="python3")
    await km.start_kernel(env=env)
    client = km.client()
    client.start_channels()
    await client.wait_for_ready(timeout=60)
    return km, client


async def run_cell(client, code: str) -> tuple[float, str]:
    out: list[str] = []
    started = time.perf_counter()
    reply = await client.execute_interactive(
        code, timeout=300, output_hook=lambda m: out.append(m["content"].get("text", "")))
    elapsed = time.perf_counter() - started
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"cell failed: {reply['content']}")
    return elapsed, "".join(out)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="colab-guard-bench-"))
    settings = Settings(user_name="bench", warning_message="")
    policy = Policy(settings)
    store = IncidentStore(IncidentDatabase(f"sqlite:///{work / 'incidents.sqlite'}"))
    monitor = _Monitor()
    channel = KernelChannel(settings, load_signatures(), monitor, policy,
                            Recorder(store, policy, settings))
    await channel.start()
    kernel_id = "bench-kernel"
    hooked_env = {**kernel_environment(kernel_id), **channel.environment(kernel_id)}
    plain_env = {k: v for k, v in os.environ.items() if not k.startswith("COLAB_GUARD")}
    kms = []
    try:
        monitor.kernels.managers[kernel_id] = AsyncKernelManager(kernel_name="python3")
        km_on, hooked = await start_kernel(hooked_env, monitor.kernels.managers[kernel_id])
        km_off, plain = await start_kernel(plain_env)
        kms = [km_on, km_off]
        for _ in range(50):
            if channel.connected(kernel_id):
                break
            await asyncio.sleep(0.1)
        else:
            raise SystemExit("the hooked kernel never reached the channel (is the startup file "
                             "installed? ./dev setup)")
        _, probe = await run_cell(plain, "import colab_guard.kernel as k; print(k._guard)")
        assert probe.strip() == "None", "the plain kernel has the hook loaded"
        (work / "data.txt").write_text("x")
        results = {f"{cell} {label}": [] for cell in ("workload", "compute", "compute (in cell)")
                   for label in ("on", "off")}
        for run in range(args.runs):
            for label, client in (("on", hooked), ("off", plain)):
                modules = work / f"mods_{label}_{run}"
                modules.mkdir()
                for i in range(200):
                    (modules / f"bench_{run}_{i}.py").write_text(f"VALUE = {i}\n")
                code = WORKLOAD.format(modules=str(modules), run=run, file=str(work / "data.txt"))
                _, text = await run_cell(client, code)
                results[f"workload {label}"].append(float(text.split("ELAPSED")[1].split()[0]))
                elapsed, text = await run_cell(client, COMPUTE)
                results[f"compute {label}"].append(elapsed)
                results[f"compute (in cell) {label}"].append(
                    float(text.split("ELAPSED")[1].split()[0]))
        report(results, args.runs)
    finally:
        for km in kms:
            await km.shutdown_kernel(now=True)
        await channel.stop()


def report(results: dict, runs: int) -> None:
    best = {k: min(v) for k, v in results.items()}
    print(f"kernel hook overhead, best of {runs} runs (ratio = with hook / without)")
    for cell, target in (("workload", 1.03), ("compute", 1.005), ("compute (in cell)", 1.005)):
        on, off = best[f"{cell} on"], best[f"{cell} off"]
        ratio = on / off
        print(f"  {cell:17s} with {on:.3f} s  without {off:.3f} s  ratio {ratio:.4f}  "
              f"(target <= {target}) {'ok' if ratio <= target else 'OVER'}")


if __name__ == "__main__":
    asyncio.run(main())
