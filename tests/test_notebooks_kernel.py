"""The notebook corpus in a real guarded kernel (benchmarks/notebooks_kernel.py), for the
smallest abuse notebook and the smallest benign one: a throwaway Unix user, a real guarded
``jupyter server`` run as that user, no network (a namespace of its own). Root only; the whole
corpus is the benchmark's (``./dev bench notebooks_kernel``), not CI's."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.notebooks_kernel import USER_PREFIX

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "unshare", "setpriv",
                                                           "prlimit", "ip")),
    reason="runs notebooks as a throwaway Unix user in a network namespace: root only")


def run_benchmark(*names: str, timeout: float = 240) -> tuple[int, list[dict], str]:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.notebooks_kernel", "--json",
                             "--only", *names], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # it removes its user and kills its processes
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"the benchmark ran past {timeout} s:\n{out}\n{err[-3000:]}")
    return proc.returncode, [json.loads(line) for line in out.splitlines() if line], err


def throwaway_users() -> set[str]:
    return {u.pw_name for u in pwd.getpwall() if u.pw_name.startswith(USER_PREFIX)}


def test_abuse_is_refused_and_benign_untouched_in_a_real_guarded_kernel_with_no_network():
    before = throwaway_users()
    status, rows, err = run_benchmark("tunnel-ngrok-harshyadav", "ssh-client-paramiko")
    assert status == 0 and len(rows) == 2, err[-3000:]
    abuse, benign = rows
    # The tunnel's one cell (pip, wget ngrok, ./ngrok http 8888) is refused in the kernel:
    # the kernel raised CellRefused, the guard's API holds the incident for that kernel.
    assert (abuse["first_acted"], abuse["first_refused"]) == (0, 0)
    assert abuse["cells"][0]["ename"] == "CellRefused"
    assert {"cell": 0, "category": "proxy", "action": "refuse", "signature": "proxy-known-tool",
            "cell_check": True} in abuse["incidents"]
    # The SSH client's cells all ran (pip and the connection fail: no network) and nothing
    # was recorded, not even by watching what the kernel ran.
    assert benign["incidents"] == [] and benign["ok"]
    assert [c["cell"] for c in benign["cells"]] == [2, 4, 6]
    assert all(c["outcome"] in ("ok", "error") for c in benign["cells"])
    # The throwaway user is gone, its home and processes with it.
    assert throwaway_users() == before
    assert not list(Path("/home").glob(USER_PREFIX + "*"))
