"""Capture the recorded snapshots in this folder from real processes on this machine.

    python -m tests.data.record

Each scenario starts real programs (stand-ins talking to loopback services) under a
parent that plays the kernel, samples that tree with the real ProcessSampler for a few
seconds, and writes the snapshots as JSON. The engine tests replay them.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from colab_guard.observe.processes import ProcessSampler
from tests.standins import pool, tracker

HERE = Path(__file__).parent
STANDINS = HERE.parent / "standins"
WALLET = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"


def record(name: str, children: list[list[str]], seconds: float = 4.0, interval: float = 1.0):
    # The "kernel": a shell that starts the programs and waits.
    script = " & ".join(shlex.join(c) for c in children) + " & wait"
    kernel = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True)
    sampler = ProcessSampler()
    snapshots = []
    try:
        time.sleep(0.5)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            snap = sampler.sample({"recorded-kernel": kernel.pid})["recorded-kernel"]
            snapshots.append({"kernel_id": snap.kernel_id, "time": snap.time,
                              "processes": [asdict(p) for p in snap.processes]})
            time.sleep(interval)
    finally:
        os.killpg(kernel.pid, 9)
        kernel.wait()
    (HERE / f"{name}.json").write_text(json.dumps(snapshots, indent=1))
    print(name, len(snapshots), "snapshots")


def main() -> None:
    py = sys.executable
    srv = pool.serve()
    port = srv.getsockname()[1]
    record("miner-renamed", [[py, str(STANDINS / "miner.py"), "-o", f"127.0.0.1:{port}", "-u", WALLET,
                              "-p", "x", "--rename", "kworker/0:1"]])
    trk = tracker.serve()
    link = (f"magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567"
            f"&tr=http://127.0.0.1:{trk.server_address[1]}/announce")
    record("torrent", [[py, str(STANDINS / "torrent.py"), link]])
    record("benign-hashing", [[py, "-c", "import hashlib,time\nd=b'x'\nt=time.time()\n"
                               "while time.time()-t<6: d=hashlib.sha256(d).digest()"]])


if __name__ == "__main__":
    main()
