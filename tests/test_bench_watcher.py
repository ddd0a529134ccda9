"""The node watcher's benchmark runs, at a tiny size, and reports (so that it does not rot).

No timing is asserted: only that it sets up its users, kernels and watcher, measures every
scenario, that the watcher stops each latency trial's miner (by a signal, not by the trial's
timeout), and that it removes its users again.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/sbin/useradd").exists(),
                                reason="the benchmark creates Unix users: root only")

ROOT = Path(__file__).resolve().parent.parent


def test_the_watcher_benchmark_runs_small_and_reports(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.watcher", "--users", "2", "--kernels", "2",
         "--processes", "3", "--small-users", "1", "--seconds", "1", "--runs", "1",
         "--settle", "0", "--exec-rates", "5", "--busy", "1", "--latency-runs", "1",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-4000:]
    assert "| scenario | watcher CPU" in run.stdout and "exec to stop" in run.stdout, run.stdout
    results = json.loads(out.read_text())
    scenarios = [r["scenario"] for r in results["cpu"]]
    # 1 user: its server, 2 kernels of 3 processes, the latency kernel; then 2 users
    assert scenarios == ["idle, 7 processes", "idle, 14 processes", "5 execs a second",
                         "1 busy processes (half a core each)"], scenarios
    assert all(r["percents"] and r["ticks_per_s"] > 0 for r in results["cpu"]), results["cpu"]
    assert [r["miner"] for r in results["latency"]] == ["name", "args", "url", "content"]
    for trial in results["latency"]:  # stopped by the watcher's SIGTERM (or SIGKILL)
        assert trial["ended"] in (["signal-15"], ["signal-9"]), trial
    assert results["incidents"] >= 4, results
    prefix = results["users_prefix"] + "-"
    assert not [u.pw_name for u in pwd.getpwall() if u.pw_name.startswith(prefix)]
