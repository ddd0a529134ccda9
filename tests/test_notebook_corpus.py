"""Real public notebooks (tests/notebooks/) through the cell check, cell by cell, as a guarded
kernel would send them (the engine's cell path, with the kernel's memory of earlier cells; no
kernel, no network). Abuse notebooks are acted on at or before their key cell (refused there when
the manifest says so); benign look-alikes are not acted on at all, not even recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import notebooks as corpus
from colab_guard.detect.signatures import load_signatures

ROOT = Path(__file__).resolve().parents[1]

RULES = load_signatures()
ENTRIES = corpus.manifest()["notebooks"]


def test_the_corpus_covers_the_categories_and_is_listed_with_its_sources():
    abuse = [e for e in ENTRIES if e["kind"] == "abuse"]
    benign = [e for e in ENTRIES if e["kind"] == "benign"]
    assert len(abuse) >= 37 and len(benign) >= 24
    prefixes = {Path(e["file"]).stem.split("-")[0] for e in abuse}
    assert {"mining", "torrent", "cracking", "deepfake", "rdp", "tunnel", "scanning", "proxy",
            "remote"} <= prefixes
    listed = {p.relative_to(corpus.CORPUS).as_posix() for p in corpus.CORPUS.rglob("*.ipynb")}
    assert listed == {e["file"] for e in ENTRIES}
    sources = (corpus.CORPUS / "SOURCES.md").read_text()
    assert [e["file"] for e in ENTRIES if e["file"] not in sources] == []


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e["kind"] == "abuse"],
                         ids=lambda e: Path(e["file"]).stem)
def test_abuse_notebook_is_acted_on_at_or_before_its_key_cell(entry):
    result = corpus.run_notebook(corpus.CORPUS / entry["file"], "abuse", entry["key_cell"],
                                 bool(entry.get("refuse")), RULES)
    first, refused = result.first_acted, result.first_refused
    assert first is not None, "no cell acted on"
    assert first.index <= entry["key_cell"], (first.index, first.signatures)
    if entry.get("refuse"):
        assert refused is not None and refused.index <= entry["key_cell"], \
            [(c.index, c.action, c.signatures) for c in result.cells if c.action]


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e["kind"] == "benign"],
                         ids=lambda e: Path(e["file"]).stem)
def test_benign_notebook_is_not_touched(entry):
    result = corpus.run_notebook(corpus.CORPUS / entry["file"], "benign", None, False, RULES)
    assert [(c.index, c.signatures, c.reasons[:2]) for c in result.cells if c.action] == []
