"""The notebook corpus (tests/notebooks/) run cell by cell through the cell check.

Every code cell goes through the same path as in a guarded kernel (the kernel hook sends the
cell's source, the server's channel asks the engine: ``Engine.evaluate`` on a ``CellProcess``,
with the kernel's memory of its earlier cells), without a kernel: seconds for the corpus.

    ./dev bench notebooks            # a table: notebook, key cell, first cell acted on
    ./dev bench notebooks --json     # one object per notebook

Exit status 1 when an abuse notebook is not acted on at or before its key cell, or a benign
notebook is acted on at all.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from colab_guard.detect.cells import CellProcess
from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.model import Snapshot
from colab_guard.vocabulary import DEFAULT_ACTIONS, RANK

ROOT = Path(__file__).resolve().parents[1]

CORPUS = ROOT / "tests" / "notebooks"


@dataclass
class CellResult:
    index: int
    action: str  # the strongest action the cell's detections call for ("" when none)
    signatures: list[str]
    reasons: list[str]


@dataclass
class NotebookResult:
    name: str
    kind: str  # abuse or benign
    key_cell: int | None
    refuse: bool = False  # the key cell itself must be refused (not only warned about)
    cells: list[CellResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def first_acted(self) -> CellResult | None:
        return next((c for c in self.cells if c.action), None)

    @property
    def first_refused(self) -> CellResult | None:
        return next((c for c in self.cells if RANK.get(c.action, 0) > RANK["warn"]), None)

    @property
    def ok(self) -> bool:
        first = self.first_acted
        if self.kind == "benign":
            return not any(c.action for c in self.cells)  # not even recorded
        if first is None or self.key_cell is None or first.index > self.key_cell:
            return False
        refused = self.first_refused
        return not self.refuse or (refused is not None and refused.index <= self.key_cell)


def code_cells(path: Path) -> list[tuple[int, str]]:
    notebook = json.loads(path.read_text())
    found = []
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            found.append((index, "".join(source) if isinstance(source, list) else source))
    return found


def manifest() -> dict:
    return yaml.safe_load((CORPUS / "manifest.yaml").read_text())


def run_notebook(path: Path, kind: str, key_cell: int | None, refuse: bool = False,
                 rules=None) -> NotebookResult:
    engine = Engine(rules or load_signatures())
    result = NotebookResult(path.stem, kind, key_cell, refuse)
    started = time.perf_counter()
    kernel = f"nb-{path.stem}"
    for n, (index, source) in enumerate(code_cells(path)):
        cell = CellProcess(pid=4242, is_kernel=True, cell=source)
        detections = engine.evaluate(Snapshot(kernel, 1_000_000.0 + n, [cell]))
        action = ""
        for d in detections:
            chosen = d.signature.action or DEFAULT_ACTIONS.get(d.signature.category, "interrupt")
            if not action or RANK[chosen] > RANK[action]:
                action = chosen
        result.cells.append(CellResult(index, action, sorted({d.signature.id for d in detections}),
                                       [r for d in detections for r in d.reasons[:2]]))
    result.seconds = time.perf_counter() - started
    return result


def run_corpus() -> list[NotebookResult]:
    rules = load_signatures()
    results = []
    for entry in manifest()["notebooks"]:
        results.append(run_notebook(CORPUS / entry["file"], entry["kind"], entry.get("key_cell"),
                                    bool(entry.get("refuse")), rules))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run_corpus()
    for r in results:
        first, refused = r.first_acted, r.first_refused
        row = {"notebook": r.name, "kind": r.kind, "key_cell": r.key_cell,
               "first_acted": first.index if first else None,
               "action": first.action if first else None,
               "first_refused": refused.index if refused else None,
               "signatures": first.signatures if first else [],
               "ok": r.ok, "ms": round(r.seconds * 1000, 1)}
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{'ok  ' if r.ok else 'FAIL'} {r.kind:6} {r.name:30} key {str(r.key_cell):>4}  "
                  f"first acted {str(row['first_acted']):>4} ({row['action'] or '-'}), "
                  f"refused {str(row['first_refused']):>4}  "
                  f"{','.join(row['signatures'])[:70]}  {row['ms']} ms")
    abuse = [r for r in results if r.kind == "abuse"]
    benign = [r for r in results if r.kind == "benign"]
    if not args.json:
        print(f"\nabuse acted on at or before the key cell: {sum(r.ok for r in abuse)}/{len(abuse)}; "
              f"benign touched: {sum(not r.ok for r in benign)}/{len(benign)}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
