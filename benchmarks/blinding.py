"""What the blinding attacks of issue 17 cost the guard now (README, "Faults").

    ./dev bench blinding

1. A 64 MiB file of needle prefixes: content scan time, and the longest another thread (the
   server's event loop) waits for the GIL meanwhile; beside it, the search the scanner used
   before (one Python `re` alternation over 1 MiB chunks).
2. A process whose arguments are 450,000 two-letter words: the sampler's memory and time to
   read its command line.
3. 40 processes whose arguments, crafted against the worst built-in regex, change every 0.3 s:
   the guard's ticks (sample and evaluate) and how long a miner known by name takes to be
   detected (see tests/test_regex_budget.py).
"""

from __future__ import annotations

import logging
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe import procfs
from colab_guard.observe.content import CHUNK, SEARCH, scan_file

ROOT = Path(__file__).resolve().parent.parent
from colab_guard.observe.processes import ProcessSampler  # noqa: E402


def gil_wait_during(fn) -> tuple[float, float]:
    """(seconds fn took, longest wait of another thread for the GIL meanwhile)."""
    gaps, stop = [0.0], threading.Event()

    def other():
        while not stop.is_set():
            started = time.perf_counter()
            time.sleep(0.001)
            gaps.append(time.perf_counter() - started - 0.001)

    thread = threading.Thread(target=other)
    thread.start()
    started = time.perf_counter()
    try:
        fn()
    finally:
        took = time.perf_counter() - started
        stop.set()
        thread.join()
    return took, max(gaps)


def python_re_scan(path: str) -> None:
    pattern = re.compile(b"|".join(re.escape(n) for n in SEARCH.needles))
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            pattern.findall(chunk)


def scan_cost(tmp: Path) -> None:
    blob = b"".join(n[:-1] + b"\0" for n in SEARCH.needles)
    huge = tmp / "prefixes"
    with open(huge, "wb") as f:
        for _ in range(64):
            f.write((blob * (CHUNK // len(blob) + 1))[:CHUNK])
    took, wait = gil_wait_during(lambda: scan_file(str(huge), 64 << 20))
    print(f"64 MiB of needle prefixes: scanned in {took:.2f} s, other thread waited at most "
          f"{wait * 1e3:.0f} ms for the GIL")
    took, wait = gil_wait_during(lambda: python_re_scan(str(huge)))
    print(f"  the former search (Python re): {took:.2f} s, other thread waited at most "
          f"{wait * 1e3:.0f} ms")


def cmdline_cost() -> None:
    def big_stack():
        resource.setrlimit(resource.RLIMIT_STACK, (256 << 20, resource.RLIM_INFINITY))

    proc = subprocess.Popen([sys.executable, "-c", "import time\nprint('up', flush=True)\n"
                             "time.sleep(60)", *(["ab"] * 450_000)], stdout=subprocess.PIPE,
                            preexec_fn=big_stack)
    proc.stdout.readline()
    try:
        tracemalloc.start()
        started = time.perf_counter()
        words = procfs.read_cmdline(proc.pid)
        took = time.perf_counter() - started
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"450,000-word command line: {len(words)} words kept, {held / 2**20:.1f} MiB held, "
              f"peak {peak / 2**20:.1f} MiB, {took * 1e3:.1f} ms")
    finally:
        proc.kill()
        proc.wait()


def regex_attack(tmp: Path) -> None:
    from tests.test_regex_budget import _tuned_length
    size = _tuned_length("nc -e")
    flippers = [subprocess.Popen([sys.executable, str(ROOT / "tests/standins/argv_flipper.py"),
                                  "nc -e", str(size), "0.3", "x" * (size + 16)])
                for _ in range(40)]
    sampler = ProcessSampler()
    engine = Engine(load_signatures(), log=logging.getLogger("bench"))
    kernels = {f"k{i}": p.pid for i, p in enumerate(flippers)}
    miner = None
    try:
        time.sleep(1.0)  # let them start and rewrite their arguments
        ticks, next_tick, found = [], time.monotonic(), None

        def tick() -> list[str]:
            nonlocal next_tick
            time.sleep(max(0.0, next_tick - time.monotonic()))
            started, ids = time.monotonic(), []
            for snapshot in sampler.sample(kernels).values():
                ids += [d.signature.id for d in engine.evaluate(snapshot)]
            ticks.append(time.monotonic() - started)
            next_tick = max(next_tick + 1.0, time.monotonic())
            return ids

        for _ in range(5):
            tick()
        xmrig = tmp / "xmrig"
        shutil.copy(shutil.which("sleep"), xmrig)
        miner = subprocess.Popen([str(xmrig), "60"])
        kernels["miner"] = miner.pid
        started = time.monotonic()
        while found is None and time.monotonic() - started < 60:
            if "mining-known-miner" in tick():
                found = time.monotonic() - started
        print(f"40 processes flipping crafted arguments ({size} bytes): ticks "
              f"{', '.join(f'{t:.2f}' for t in ticks[1:])} s (after the first, which reads them "
              f"new: {ticks[0]:.2f} s); named miner detected {found:.2f} s after it started "
              f"(ticks every 1 s)")
    finally:
        for p in flippers + ([miner] if miner else []):
            p.kill()
            p.wait()
        sampler.content.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scan_cost(Path(tmp))
        cmdline_cost()
        regex_attack(Path(tmp))


if __name__ == "__main__":
    main()
