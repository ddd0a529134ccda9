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
4. Session 21 (``python -m benchmarks.blinding session21 [ATTACK...]`` for it alone): the cost
   attacks on the code added since session 17, as real processes, each run three times: the
   guard's ticks (sample + evaluate) while they run, its memory growth, and how long a miner
   known by name (a copy of sleep named xmrig) started among them takes to be detected.
   ``control`` and ``control-flip`` run the same shapes with honest scripts (the CPU the
   shells' loops take counts on a 2-core box). Also the exec check's cost per exec.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import shutil
import statistics
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


def named_miner_found(tick, kernels: dict, tmp: Path, started_here: list) -> float | None:
    """Seconds until ``tick()`` finds a miner known by name (a copy of sleep called xmrig)
    started among the attack's processes (None past 60 s); it joins ``started_here``."""
    xmrig = tmp / "xmrig"
    shutil.copy(shutil.which("sleep"), xmrig)
    miner = subprocess.Popen([str(xmrig), "60"])
    started_here.append(miner)
    kernels["miner"] = miner.pid
    started, found = time.monotonic(), None
    while found is None and time.monotonic() - started < 60:
        if "mining-known-miner" in tick():
            found = time.monotonic() - started
    return found


def regex_attack(tmp: Path) -> None:
    from tests.test_regex_budget import _tuned_length
    size = _tuned_length("nc -e")
    flippers = [subprocess.Popen([sys.executable, str(ROOT / "tests/standins/argv_flipper.py"),
                                  "nc -e", str(size), "0.3", "x" * (size + 16)])
                for _ in range(40)]
    sampler = ProcessSampler()
    engine = Engine(load_signatures(), log=logging.getLogger("bench"))
    kernels = {f"k{i}": p.pid for i, p in enumerate(flippers)}
    started_here = list(flippers)
    try:
        time.sleep(1.0)  # let them start and rewrite their arguments
        ticks, next_tick = [], time.monotonic()

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
        found = named_miner_found(tick, kernels, tmp, started_here)
        print(f"40 processes flipping crafted arguments ({size} bytes): ticks "
              f"{', '.join(f'{t:.2f}' for t in ticks[1:])} s (after the first, which reads them "
              f"new: {ticks[0]:.2f} s); named miner detected {found:.2f} s after it started "
              f"(ticks every 1 s)")
    finally:
        for p in started_here:
            p.kill()
            p.wait()
        sampler.content.close()


# ------------------------------------------------------------ session 21

PYTHON = sys.executable

#: A shell script the shell never reaches past its loop, shaped to cost the parse most: an
#: eval whose text is a substitution that evals it again, 500 times (12.5 KiB).
LOOP = "while :; do :; done; "
HOSTILE_SCRIPT = LOOP + "A='$(eval $A)'; eval $A; " * 500
HONEST_SCRIPT = LOOP + "python train.py && echo done"

MAPPER = r"""
import ctypes, mmap, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
folder, count, churn = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "churn"
os.makedirs(folder, exist_ok=True)
first = f"{folder}/lib0.so"
with open(first, "wb") as f:
    f.write(b"\0" * 4096)
for i in range(count):  # a name of its own for each mapping (links of one file)
    path = f"{folder}/lib{i}.so"
    if i:
        os.link(first, path)
    fd = os.open(path, os.O_RDONLY)
    libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
    os.close(fd)
print("up", flush=True)
extra = []
while True:
    if churn:  # its size never settles: the maps are due again at every refresh
        extra.append(mmap.mmap(-1, 4096 * (1 + len(extra) % 7)))
        if len(extra) > 50:
            extra.pop(0).close()
    time.sleep(0.05)
"""


FLIPPER = r"""
import os, sys, time
pids = [int(p) for p in sys.argv[1:]]
ends = []
for pid in pids:
    fields = open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()
    ends.append((os.open(f"/proc/{pid}/mem", os.O_RDWR), int(fields[46])))
print("up", flush=True)
i = 0
while True:  # the last word of each shell's script, a count: a new command line every 0.3 s
    for k, (fd, end) in enumerate(ends):
        os.pwrite(fd, b"%05d%d" % (i % 100000, k % 10), end - 7)
    i += 1
    time.sleep(0.3)
"""


def _rss_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _niced() -> None:
    os.nice(19)


def run_attack(start, ticks_before: int = 8, tmp: Path | None = None) -> dict:
    """start() -> processes (the attack); the guard's ticks while it runs, then a named
    miner's detection delay."""
    procs = start()
    sampler = ProcessSampler()
    engine = Engine(load_signatures(), log=logging.getLogger("bench"))
    kernels = {f"k{i}": p.pid for i, p in enumerate(procs)}
    started_here = list(procs)
    try:
        time.sleep(1.0)
        rss0 = _rss_kib()
        ticks, evals, next_tick = [], [], time.monotonic()

        def tick() -> list[str]:
            nonlocal next_tick
            time.sleep(max(0.0, next_tick - time.monotonic()))
            started, ids = time.monotonic(), []
            snapshots = sampler.sample(kernels)
            sampled = time.monotonic()
            for snapshot in snapshots.values():
                ids += [d.signature.id for d in engine.evaluate(snapshot)]
            ticks.append(time.monotonic() - started)
            evals.append(time.monotonic() - sampled)
            next_tick = max(next_tick + 1.0, time.monotonic())
            return ids

        for _ in range(ticks_before):
            tick()
        found = named_miner_found(tick, kernels, tmp, started_here)
        return {"tick": statistics.median(ticks[1:ticks_before]), "first": ticks[0],
                "late": statistics.median(ticks[ticks_before - 3:ticks_before]),
                "tick_max": max(ticks[1:ticks_before]),
                "eval": statistics.median(evals[1:ticks_before]),
                "rss_growth_mib": (_rss_kib() - rss0) / 1024, "miner": found}
    finally:
        for p in started_here:
            p.kill()
            p.wait()
        sampler.content.close()


def shells(script: str, count: int = 4):
    def start():
        return [subprocess.Popen(["bash", "-c", script], preexec_fn=_niced) for _ in range(count)]
    return start


def flipped_shells(script: str, count: int = 4):
    """Shells that stay up, their script's last word rewritten every 0.3 s (root may write
    any process's memory): a command line never seen before at every tick."""
    def start():
        # (a script of its own each run: the readings kept from the last run do not count)
        procs = shells(f"{script} #{time.time_ns()} #000000", count)()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(  # exec'd: bash's argument area is flipped
                open(f"/proc/{p.pid}/comm").read().strip() != "bash" for p in procs):
            time.sleep(0.01)
        flipper = subprocess.Popen([PYTHON, "-c", FLIPPER, *(str(p.pid) for p in procs)],
                                   stdout=subprocess.PIPE)
        assert flipper.stdout.readline() == b"up\n"
        return procs + [flipper]
    return start


def mappers(tmp: Path, count: int, churn: bool, processes: int = 1):
    def start():
        procs = []
        for i in range(processes):
            folder = tempfile.mkdtemp(dir=tmp)
            p = subprocess.Popen([PYTHON, "-c", MAPPER, folder, str(count),
                                  "churn" if churn else "still"], stdout=subprocess.PIPE)
            assert p.stdout.readline() == b"up\n"
            procs.append(p)
        return procs
    return start


def exec_loops(tmp: Path, count: int = 2):
    """A process that execs in a tight loop (dash running a script that execs itself)."""
    script = tmp / "loop.sh"
    script.write_text(f"exec /bin/sh {script}\n")

    def start():
        return [subprocess.Popen(["/bin/sh", str(script)], preexec_fn=_niced)
                for _ in range(count)]
    return start


def attacks(tmp: Path) -> dict:
    return {
        "control": shells(HONEST_SCRIPT),
        "shell-scripts": shells(HOSTILE_SCRIPT),
        "control-flip": flipped_shells(HONEST_SCRIPT),
        "shell-flip": flipped_shells(HOSTILE_SCRIPT),
        "maps-60000": mappers(tmp, 60_000, churn=False),
        "maps-churn": mappers(tmp, 20_000, churn=True),
        "exec-loop": exec_loops(tmp),
    }


def session21(names: list[str], runs: int = 3) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        tmp = Path(folder)
        chosen = attacks(tmp)
        for name in names or list(chosen):
            results = [run_attack(chosen[name], tmp=tmp) for _ in range(runs)]
            print(f"{name}: first tick ms {[round(r['first'] * 1e3) for r in results]}, "
                  f"tick ms {[round(r['tick'] * 1e3) for r in results]} "
                  f"(the last 3 before the miner: {[round(r['late'] * 1e3) for r in results]}) "
                  f"(max {[round(r['tick_max'] * 1e3) for r in results]}), evaluate ms "
                  f"{[round(r['eval'] * 1e3) for r in results]}, memory growth MiB "
                  f"{[round(r['rss_growth_mib'], 1) for r in results]}, named miner found after s "
                  f"{[round(r['miner'], 2) if r['miner'] is not None else None for r in results]}",
                  flush=True)



def exec_check_cost(runs: int = 3) -> None:
    """The node watcher's check at exec of shells whose hostile script is new each time (an
    exec storm), against a miner known by name's."""
    from colab_guard.detect.engine import Engine as _Engine
    from colab_guard.observe.model import Process
    from colab_guard.watch.at_exec import ExecCheck

    check = ExecCheck(_Engine(load_signatures(), log=logging.getLogger("bench")))
    script = "exit; " + "A='$(eval $A)'; eval $A; " * 500
    per_shell = []
    for run in range(runs):
        started = time.perf_counter()
        for i in range(20):
            check.detections("k", Process(pid=i, create_time=1.0, name="bash", exe="/usr/bin/bash",
                                          cmdline=["bash", "-c", f"{script} #{run}-{i}"]))
        per_shell.append((time.perf_counter() - started) / 20)
    started = time.perf_counter()
    for i in range(200):
        check.detections("k", Process(pid=i, create_time=1.0, name="xmrig", exe="/tmp/xmrig",
                                      cmdline=["/tmp/xmrig", str(i)]))
    print(f"exec check: a hostile shell's exec {[round(t * 1e3, 1) for t in per_shell]} ms, "
          f"a named miner's {(time.perf_counter() - started) / 200 * 1e3:.2f} ms")


def main() -> None:
    if sys.argv[1:2] == ["session21"]:
        session21(sys.argv[2:])
        exec_check_cost()
        return
    with tempfile.TemporaryDirectory() as tmp:
        scan_cost(Path(tmp))
        cmdline_cost()
        regex_attack(Path(tmp))
    session21([])
    exec_check_cost()


if __name__ == "__main__":
    main()
