"""Monitor overhead: the sampler's CPU cost per kernel and per sample as the tree grows.

    ./dev bench monitor [--samples 50]

For trees of 1, 10, 20 and 100 processes under one "kernel", and for 10 kernels of 20
processes each, it compares:
  - bare walk: psutil's children(recursive=True) and a read of name, exe, cmdline, CPU
    times, memory and threads for each process (what a naive monitor does per kernel);
  - colab-guard: ProcessSampler.sample(), which also reads every process's sockets and
    loaded libraries and keeps attribution for processes that leave the tree.
Costs are CPU time of this process (time.process_time), so other load on the machine
does not inflate them. "% of a core at 1 Hz" is the cost of one sample per second.
Where NVML works (an NVIDIA GPU and PyTorch with CUDA), it also measures NVML sampling
with 1 and 8 processes on the GPU.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

import psutil

from colab_guard.observe.gpu import GpuSampler
from colab_guard.observe.processes import ProcessSampler


def start_tree(size: int, busy: bool = False, connect_to: int | None = None) -> subprocess.Popen:
    """A parent shell with ``size - 1`` children: ``size`` processes in all. Idle children
    sleep; busy ones are python processes waking every 50 ms, so each is read in full every
    tick (an idle process's last full read is reused until it runs). ``connect_to``: busy
    children that each hold a connection to that local port and spin (every one a
    candidate of the behaviour rules: CPU demand and connection traffic read each tick)."""
    spin = (f"import socket\ns = socket.create_connection((\"127.0.0.1\", {connect_to}))\n"
            "while True: pass" if connect_to else "import time\nwhile True: time.sleep(0.05)")
    child = (f"{sys.executable} -c '{spin}' & " if busy else "sleep 600 & ")
    script = child * (size - 1) + "wait" if size > 1 else "sleep 600"
    parent = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(psutil.Process(parent.pid).children()) < size - 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    return parent


def stop_tree(parent: subprocess.Popen) -> None:
    os.killpg(parent.pid, signal.SIGKILL)
    parent.wait()


def bare_walk(root_pid: int) -> int:
    root = psutil.Process(root_pid)
    procs = [root, *root.children(recursive=True)]
    for proc in procs:
        try:
            with proc.oneshot():
                proc.name(), proc.exe(), proc.cmdline(), proc.cpu_times()
                proc.memory_info(), proc.num_threads()
        except psutil.Error:
            pass
    return len(procs)


def cpu_cost(call, samples: int, interval: float = 0.1) -> float:
    """Median CPU seconds of one call, calls ``interval`` apart (as ticks are)."""
    call()  # warm caches, as a running monitor has them
    costs = []
    for _ in range(samples):
        time.sleep(interval)
        start = time.process_time()
        call()
        costs.append(time.process_time() - start)
    return statistics.median(costs)


def row(label: str, bare: float, guard: float, kernels: int = 1) -> str:
    per_kernel = guard / kernels
    return (f"| {label} | {bare * 1e3:.2f} ms | {guard * 1e3:.2f} ms | {guard / bare:.2f} | "
            f"{per_kernel * 1e3:.2f} ms | {per_kernel * 100:.2f} % |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    print(f"system processes: {len(psutil.pids())}; samples per figure: {args.samples}\n")
    print("| tree | bare walk per sample | colab-guard per sample | ratio | per kernel | "
          "% of a core per kernel at 1 Hz |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size, busy in ((1, False), (10, False), (20, False), (100, False), (20, True), (100, True)):
        tree = start_tree(size, busy)
        try:
            sampler = ProcessSampler(libraries_refresh=5.0)
            bare = cpu_cost(lambda: bare_walk(tree.pid), args.samples)
            guard = cpu_cost(lambda: sampler.sample({"k": tree.pid}), args.samples)
            print(row(f"1 kernel, {size} {'busy' if busy else 'idle'} processes", bare, guard))
        finally:
            stop_tree(tree)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    tree = start_tree(5, True, connect_to=listener.getsockname()[1])
    try:
        sampler = ProcessSampler(libraries_refresh=5.0)
        bare = cpu_cost(lambda: bare_walk(tree.pid), args.samples)
        guard = cpu_cost(lambda: sampler.sample({"k": tree.pid}), args.samples)
        print(row("1 kernel, 5 spinning processes each holding a connection", bare, guard))
    finally:
        stop_tree(tree)
        listener.close()
    trees = [start_tree(20) for _ in range(10)]
    try:
        sampler = ProcessSampler(libraries_refresh=5.0)
        kernels = {f"k{i}": t.pid for i, t in enumerate(trees)}
        bare = cpu_cost(lambda: [bare_walk(t.pid) for t in trees], args.samples)
        guard = cpu_cost(lambda: sampler.sample(kernels), args.samples)
        print(row("10 kernels, 20 processes each", bare, guard, kernels=10))
    finally:
        for tree in trees:
            stop_tree(tree)
    gpu_cost(args.samples)


GPU_WORKER = ("import torch, time\nx = torch.randn(2048, 2048, device='cuda')\n"
              "t = time.time()\nwhile time.time() - t < 120: x = (x @ x).tanh()\n")


def gpu_cost(samples: int) -> None:
    """NVML sampling cost per sample with 1 and 8 processes on the GPU."""
    gpu = GpuSampler()
    if not gpu.start():
        print(f"\nGPU: not measured here ({gpu.reason})")
        return
    print("\n| processes on the GPU | NVML sampling per sample |\n| --- | --- |")
    for count in (1, 8):
        workers = [subprocess.Popen([sys.executable, "-c", GPU_WORKER]) for _ in range(count)]
        try:
            deadline = time.monotonic() + 60
            while len(gpu.sample().processes) < count and time.monotonic() < deadline:
                time.sleep(0.5)
            print(f"| {count} | {cpu_cost(gpu.sample, samples) * 1e3:.2f} ms |")
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()
    gpu.stop()


if __name__ == "__main__":
    main()
