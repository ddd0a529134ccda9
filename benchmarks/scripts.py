"""What reading a script as code costs (README, "Recognised when renamed": scripts as code).

    ./dev bench scripts

For a Python script of 12 KiB (read in the guard's own thread), 1 MiB and 64 MiB (real
code: copies of a stand-in's source, ``import pproxy`` at the very end), and for a hostile
one (a unary chain of 2 million operators, which defeats the parser and goes to the token
fallback): the time to its markers
(the child process that parses it, started and answered), the child's CPU, the longest another
thread of the guard (the server's event loop) waits for the GIL meanwhile, and, beside it,
the byte search the scanner used before (which reads data and code alike). Then, over the
guard's own environment (site-packages and the standard library: honest code), what decoding
the constants of code that runs what it decodes finds: the sources that go to the child for
it, the .pyc files whose markers it changes (none should), and the time.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

from colab_guard.observe import scripts
from colab_guard.observe.content import ContentScanner, scan_file

STANDIN = Path(__file__).resolve().parent.parent / "tests" / "standins" / "pool.py"


def gil_wait_during(fn) -> tuple[float, float, object]:
    """(seconds fn took, longest wait of another thread for the GIL meanwhile, its result)."""
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
        result = fn()
    finally:
        elapsed = time.perf_counter() - started
        stop.set()
        thread.join()
    return elapsed, max(gaps), result


def write_script(path: Path, size: int) -> None:
    body = STANDIN.read_text()
    with open(path, "w") as f:
        written = 0
        while written < size:
            f.write(body)
            written += len(body)
        f.write("\nimport pproxy\n")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(label: str, path: Path, runs: int = 3) -> None:
    results = []
    for _ in range(runs):
        scanner = ContentScanner(background=False, scan_seconds=120)
        before = children_cpu()
        elapsed, gap, found = gil_wait_during(
            lambda: scanner.script_markers(str(path), scripts.PYTHON))
        results.append((elapsed, gap, children_cpu() - before, found))
    elapsed, gap, cpu, found = sorted(results)[len(results) // 2]
    old, old_gap, old_found = gil_wait_during(lambda: scan_file(str(path), 1 << 20))
    print(f"{label:>24}: {elapsed:6.2f} s to markers {found}, child CPU {cpu:5.2f} s, "
          f"longest GIL wait {gap * 1000:5.1f} ms | bytes search of its first MiB "
          f"{old:5.3f} s, {old_found}")


def main() -> None:
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    idle, gap, _ = gil_wait_during(lambda: time.sleep(2))
    print(f"{'no scan (2 s)':>24}: longest GIL wait {gap * 1000:5.1f} ms (the machine's noise)")
    with tempfile.TemporaryDirectory() as folder:
        small = Path(folder) / "small.py"
        write_script(small, 12 << 10)  # read in the guard's own thread (IN_PROCESS_MAX)
        measure("12 KiB script (here)", small)
        one = Path(folder) / "one.py"
        write_script(one, (1 << 20) - 4096)
        measure("1 MiB script", one)
        huge = Path(folder) / "huge.py"
        write_script(huge, (64 << 20) - 4096)  # its last line within the 64 MiB read
        measure("64 MiB script", huge)
        hostile = Path(folder) / "hostile.py"
        hostile.write_text("import pproxy\n" + "-" * 2_000_000 + "1\n")
        measure("hostile (2 M unary ops)", hostile, runs=1)
    honest_environment()


def files_under(roots: list[str], suffix: str):
    for root in roots:
        for folder, _, names in os.walk(root):
            yield from (os.path.join(folder, n) for n in names if n.endswith(suffix))


def honest_environment() -> None:
    import sysconfig

    roots = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"]})
    started, sources, decoded, flagged = time.perf_counter(), 0, 0, []
    for path in files_under(roots, ".py"):
        data = Path(path).read_bytes()[:1 << 20]
        sources += 1
        if scripts.may_run_encoded(data):
            decoded += 1
            flagged += [path] if scripts.code_markers(scripts.source_decoded_evidence(data)) else []
    print(f"{'honest sources':>24}: {sources} read, {decoded} with constants decoded, "
          f"{len(flagged)} with markers from them {flagged[:5]}, "
          f"{time.perf_counter() - started:.1f} s")
    started, pycs, changed = time.perf_counter(), 0, []
    for path in files_under(roots, ".pyc"):
        data = Path(path).read_bytes()[:8 << 20]
        found = scripts.pyc_evidence(data)
        pycs += 1
        if found is None or not scripts.code_markers(found):
            continue
        depth, scripts.STUB_DEPTH = scripts.STUB_DEPTH, 0  # the same, nothing decoded
        try:
            if scripts.code_markers(scripts.pyc_evidence(data)) != scripts.code_markers(found):
                changed.append(path)
        finally:
            scripts.STUB_DEPTH = depth
    print(f"{'honest .pyc files':>24}: {pycs} read, {len(changed)} whose markers decoding "
          f"changes {changed[:5]}, {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
