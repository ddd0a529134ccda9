"""The sampler and engine alone at hub scale: real kernels, each with idle children.

    ./dev bench sampler [--kernels 50] [--children 20] [--ticks 40] [--warmup 3] [--profile]
                        [--compare module.CONSTANT=VALUE [--rounds 2]]

Starts ``--kernels`` real ipykernel kernels (IPC transport, as benchmarks/load.py does),
each with ``--children`` sleeping children, then runs what the server's sampling thread
runs each tick (ProcessSampler.sample and Engine.evaluate for every kernel) once a second
for ``--ticks`` ticks. It reports the CPU time of those ticks (time.thread_time: other load
on the machine does not count, only what the tick itself spent, kernel time included), as
the mean and spread per tick and as % of one core at 1 Hz, and how many processes were read
in full, lightly or not at all. ``--profile`` prints the top of a cProfile of the ticks.
``--compare`` measures a change of one constant on the same kernels: blocks of ``--ticks``
ticks (each with a new sampler, its first ``--warmup`` ticks not counted) alternate between
the code as it is and the constant set to VALUE, ``--rounds`` times each, so that the
machine's own drift falls on both alike.

This is the part of benchmarks/load.py's figure that the guard controls; load.py measures
the whole server, guard on minus off.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib
import pstats
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.processes import ProcessSampler, SamplerStats

CHILDREN = "import subprocess\n_kids = [subprocess.Popen(['sleep', '86398']) for _ in range({n})]\n"


async def start_kernels(count: int, children: int, folder: Path) -> list[AsyncKernelManager]:
    managers = []
    for i in range(count):
        km = AsyncKernelManager(transport="ipc", ip=str(folder / f"k{i}"))
        await km.start_kernel()
        managers.append(km)
    for km in managers:
        client = km.client()
        client.start_channels()
        await client.wait_for_ready(timeout=120)
        await client.execute_interactive(CHILDREN.format(n=children), timeout=120)
        client.stop_channels()
    return managers


def tick_costs(managers, ticks: int, profile: cProfile.Profile | None,
               warmup: int = 3) -> tuple[list[float], ProcessSampler]:
    sampler = ProcessSampler()
    engine = Engine(load_signatures())
    kernels = {f"k{i}": km.provisioner.pid for i, km in enumerate(managers)}
    costs = []
    for n in range(ticks + warmup):  # warm-up ticks: first reads, content scans
        if n == warmup:
            sampler.stats = SamplerStats()
        started = time.monotonic()
        cpu = time.thread_time()
        if profile is not None and n >= warmup:
            profile.enable()
        for snapshot in sampler.sample(kernels).values():
            engine.evaluate(snapshot)
        if profile is not None and n >= warmup:
            profile.disable()
        if n >= warmup:
            costs.append(time.thread_time() - cpu)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    sampler.content.close()  # its scanner's thread: not left to compete with the next block
    return costs, sampler


def compare(managers, args) -> None:
    """Blocks with the constant as it is and as ``--compare`` sets it, in turn."""
    name, _, value = args.compare.partition("=")
    module_name, _, constant = name.rpartition(".")
    module = importlib.import_module(module_name)
    original, changed = getattr(module, constant), type(getattr(module, constant))(value)
    results: dict[str, list[float]] = {"as is": [], f"{constant}={value}": []}
    for _ in range(args.rounds):
        for label, setting in zip(results, (original, changed)):
            setattr(module, constant, setting)
            costs, sampler = tick_costs(managers, args.ticks, None, args.warmup)
            full = sampler.stats.full_reads / max(sampler.stats.ticks, 1)
            print(f"  {label}: mean {1000 * statistics.mean(costs):.1f} ms, median "
                  f"{1000 * statistics.median(costs):.1f} ms, {full:.1f} full reads a tick",
                  flush=True)
            results[label].append(statistics.mean(costs))
            del sampler  # its held files closed before the next block (a shared budget)
            gc.collect()
    setattr(module, constant, original)
    for label, means in results.items():
        print(f"{label}: block means {', '.join(f'{1000 * m:.1f}' for m in means)} ms a tick")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", type=int, default=50)
    parser.add_argument("--children", type=int, default=20)
    parser.add_argument("--ticks", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3, help="ticks not counted, first")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compare", metavar="module.CONSTANT=VALUE",
                        help="e.g. colab_guard.observe.processes.KERNEL_FULL_READ_MAX=5")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="cg-sampler-bench-"))
    loop = asyncio.new_event_loop()
    print(f"starting {args.kernels} kernels with {args.children} children each ...", flush=True)
    managers = loop.run_until_complete(start_kernels(args.kernels, args.children, folder))
    try:
        if args.compare:
            compare(managers, args)
            return
        profile = cProfile.Profile() if args.profile else None
        costs, sampler = tick_costs(managers, args.ticks, profile, args.warmup)
    finally:
        for km in managers:
            loop.run_until_complete(km.shutdown_kernel(now=True))
        subprocess.run(["pkill", "-f", "^sleep 86398$"], check=False)
    stats = sampler.stats
    per_tick = stats.processes_sampled / max(stats.ticks, 1)
    print(f"{args.kernels} kernels x {args.children} children: {per_tick:.0f} processes per tick")
    print(f"tick CPU: mean {1000 * statistics.mean(costs):.1f} ms, median "
          f"{1000 * statistics.median(costs):.1f} ms, min {1000 * min(costs):.1f}, "
          f"max {1000 * max(costs):.1f} over {len(costs)} ticks "
          f"= {100 * statistics.mean(costs):.1f} % of a core at 1 Hz")
    print(f"full reads per tick: {stats.full_reads / max(stats.ticks, 1):.1f}, "
          f"light reads per tick: {stats.light_reads / max(stats.ticks, 1):.1f}")
    if profile is not None:
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumtime").print_callees("_read_process|_light_read|_unchanged")


if __name__ == "__main__":
    main()
