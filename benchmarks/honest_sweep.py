"""Honest notebooks swept through the cell check: every cell acted on or recorded, and the cost.

Given folders of real notebooks (collections assumed honest), every ``.ipynb`` under them is run
cell by cell as ``benchmarks/notebooks.py`` runs the corpus (``run_notebook``: the engine's cell
path with the kernel's memory of earlier cells). Prints each cell acted on or recorded (the
action, the signatures, the notebook and the cell's first lines) and a summary: notebooks, code
cells, cells acted on, time per cell (median and max) and the slowest cells.

    ./dev bench honest_sweep DIR [DIR...] [--slowest N] [--lines N]

A false positive here interrupts an honest researcher: every line printed needs a verdict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.notebooks import code_cells
from colab_guard.detect.cells import CellProcess
from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.model import Snapshot
from colab_guard.vocabulary import DEFAULT_ACTIONS, RANK


def strongest_action(detections) -> str:
    action = ""
    for d in detections:
        chosen = d.signature.action or DEFAULT_ACTIONS.get(d.signature.category, "interrupt")
        if not action or RANK[chosen] > RANK[action]:
            action = chosen
    return action


def sweep_notebook(path: Path, rules, timings: list, flagged: list) -> int:
    """Run one notebook's code cells in order, in one kernel; returns the code cells seen."""
    try:
        cells = code_cells(path)
    except (ValueError, UnicodeDecodeError):
        return 0  # not a notebook (a Git LFS pointer, a broken file)
    engine = Engine(rules)
    kernel = f"sweep-{path.stem}"
    for n, (index, source) in enumerate(cells):
        started = time.perf_counter()
        detections = engine.evaluate(Snapshot(kernel, 1_000_000.0 + n,
                                              [CellProcess(pid=4242, is_kernel=True, cell=source)]))
        timings.append((time.perf_counter() - started, path, index))
        if detections:
            flagged.append((path, index, strongest_action(detections),
                            sorted({d.signature.id for d in detections}), source))
    return len(cells)


def first_lines(source: str, count: int) -> str:
    lines = [line for line in source.splitlines() if line.strip()][:count]
    return "\n".join("      | " + line[:140] for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--slowest", type=int, default=10, help="the slowest cells listed")
    parser.add_argument("--lines", type=int, default=6, help="a flagged cell's lines printed")
    parser.add_argument("--json", action="store_true", help="the summary as one JSON object")
    args = parser.parse_args(argv)
    rules = load_signatures()
    timings: list = []
    flagged: list = []
    notebooks = cells = 0
    for folder in args.folders:
        for path in sorted(folder.rglob("*.ipynb")):
            seen = sweep_notebook(path, rules, timings, flagged)
            notebooks += bool(seen)
            cells += seen
    for path, index, action, signatures, source in flagged:
        print(f"{action or 'record':9} {','.join(signatures)}  {path} cell {index}")
        print(first_lines(source, args.lines))
    seconds = sorted((t for t, _, _ in timings), reverse=True)
    summary = {"notebooks": notebooks, "code_cells": cells,
               "cells_flagged": len(flagged),
               "cells_acted_on": sum(1 for f in flagged if RANK.get(f[2], 0) > 0),
               "median_ms": round(statistics.median(seconds) * 1000, 3) if seconds else 0,
               "max_ms": round(seconds[0] * 1000, 1) if seconds else 0,
               "over_1s": sum(1 for t in seconds if t > 1.0)}
    print("\nslowest cells:")
    for t, path, index in sorted(timings, key=lambda x: x[0], reverse=True)[:args.slowest]:
        print(f"  {t * 1000:8.1f} ms  {path} cell {index}")
    print(json.dumps(summary) if args.json else
          "\n" + "  ".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
