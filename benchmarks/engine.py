"""The detection engine alone on fifty kernels' samples: what a tick costs it.

    ./dev bench engine [--kernels 50] [--children 20] [--ticks 60] [--runs 3]

Each tick hands the engine, for every kernel, a new sample of the kernel process (its CPU
and memory changed, as a live kernel's do at every tick) and the very same samples of its
idle children (as the sampler hands out a process that did not change). It reports the
engine's CPU time per tick (time.thread_time: other load on the machine counts little), the
median and the fastest over the ticks after ten warm-up ticks, for each run. No processes,
no kernels: the samples are made up, the built-in signatures are real.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import replace

from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.model import Process, Snapshot, Socket


def kernel(i: int) -> Process:
    return Process(pid=1000 + i, ppid=1, name="python", exe="/usr/bin/python3.11",
                   cmdline=["/usr/bin/python3", "-m", "ipykernel_launcher", "-f",
                            f"/run/user/1000/jupyter/kernel-{i}.json"],
                   create_time=100.0 + i, cpu_percent=1.0, rss=80 << 20, threads=10, uid=1000,
                   is_kernel=True,
                   sockets=[Socket("tcp", "127.0.0.1", 50000 + 5 * i + j, status="LISTEN")
                            for j in range(5)])


def child(i: int, j: int) -> Process:
    return Process(pid=100000 + 100 * i + j, ppid=1000 + i, name="sleep", exe="/usr/bin/sleep",
                   cmdline=["sleep", "86398"], create_time=200.0, uid=1000)


def run(kernels: int, children: int, ticks: int) -> list[float]:
    engine = Engine(load_signatures())
    kernel_samples = [kernel(i) for i in range(kernels)]
    idle = [[child(i, j) for j in range(children)] for i in range(kernels)]
    costs = []
    for tick in range(ticks + 10):
        cpu = time.thread_time()
        for i in range(kernels):
            kernel_samples[i] = replace(kernel_samples[i], cpu_percent=random.uniform(0, 3),
                                        rss=(80 << 20) + random.randrange(4096) * 4096)
            engine.evaluate(Snapshot(f"k{i}", float(tick), [kernel_samples[i], *idle[i]]))
        if tick >= 10:
            costs.append(time.thread_time() - cpu)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", type=int, default=50)
    parser.add_argument("--children", type=int, default=20)
    parser.add_argument("--ticks", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for n in range(args.runs):
        costs = run(args.kernels, args.children, args.ticks)
        print(f"run {n + 1}: {args.kernels} kernels x {args.children} children, engine per tick: "
              f"median {1000 * statistics.median(costs):.1f} ms, fastest "
              f"{1000 * min(costs):.1f} ms over {len(costs)} ticks")


if __name__ == "__main__":
    main()
