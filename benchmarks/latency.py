"""Detection latency: time from a forbidden process's start to its end, on a real guarded server.

    ./dev bench latency [--runs 10] [--interval 1.0] [--detached] [--no-hook]

Starts `jupyter server` with the guard on (temporary config and data folders), a kernel
through the REST API, and a stand-in pool on 127.0.0.1. Each run, a cell starts the stand-in
miner (from Python, or detached with setsid/nohup from a `!` line with --detached); this
script polls the miner's pid every 5 ms and reports start-to-end time (the process's own
start time as the kernel recorded it, to the moment it is gone or a zombie).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import psutil
from jupyter_client import BlockingKernelClient

from tests.harness import GuardedServer
from tests.standins import pool

MINER = Path(__file__).parent.parent / "tests" / "standins" / "miner.py"
WALLET = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"


def ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def one_run(client: BlockingKernelClient, port: int, detached: bool) -> float:
    # The miner's command line comes from a file, so the cell's source holds nothing a
    # cell check would refuse: this measures the process path (sampler and audit hook).
    marker = f"/tmp/colab-guard-latency-{os.getpid()}.pid"
    argv_file = f"/tmp/colab-guard-latency-{os.getpid()}.argv"
    argv = [sys.executable, str(MINER), "-o", f"stratum+tcp://127.0.0.1:{port}", "-u", WALLET]
    Path(argv_file).write_text(json.dumps(argv) if not detached else " ".join(argv))
    if detached:
        code = (f"!(nohup setsid $(cat {argv_file}) > /dev/null 2>&1 & echo $! > {marker}); sleep 3\n")
    else:
        code = (f"import json, subprocess\np = subprocess.Popen(json.load(open({argv_file!r})))\n"
                f"open({marker!r}, 'w').write(str(p.pid))\np.wait()\n")
    if os.path.exists(marker):
        os.unlink(marker)
    settle(client)
    client.execute(code)
    deadline = time.monotonic() + 30
    while not os.path.exists(marker) or not Path(marker).read_text().strip():
        if time.monotonic() > deadline:
            raise SystemExit("the cell never started the miner")
        time.sleep(0.002)
    pid = int(Path(marker).read_text())
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        raise SystemExit("the miner ended before it could be measured") from None
    while not ended(pid):
        if time.monotonic() > deadline:
            raise SystemExit(f"miner {pid} was not stopped within 30 s")
        time.sleep(0.005)
    latency = time.time() - started
    client.get_shell_msg(timeout=30)  # the cell's reply: ready for the next run
    os.unlink(marker)
    return latency


def settle(client: BlockingKernelClient) -> None:
    """After an interrupt, ipykernel aborts the requests that come right after the error
    (stop_on_error): wait until a cell runs again."""
    for _ in range(20):
        if client.execute_interactive("pass", timeout=30)["content"]["status"] == "ok":
            return
    raise SystemExit("the kernel keeps aborting cells after the interrupt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0, help="ColabGuard.sample_interval")
    parser.add_argument("--detached", action="store_true", help="start the miner with setsid/nohup from a ! line")
    parser.add_argument("--no-hook", dest="hook", action="store_false",
                        help="ColabGuard.kernel_hook=False: the server-side sampler alone")
    args = parser.parse_args()
    pool_server = pool.serve()
    settings = {"sample_interval": args.interval, "stop_grace": 1, "kernel_hook": args.hook,
                "strike_limit": 0}
    with GuardedServer(settings) as server:
        _, client = server.start_kernel()
        latencies = [one_run(client, pool_server.getsockname()[1], args.detached)
                     for _ in range(args.runs)]
        client.stop_channels()
    how = "detached (setsid/nohup from a ! line)" if args.detached else "from subprocess.Popen"
    print(f"miner started {how}; sample_interval {args.interval:g} s; kernel hook "
          f"{'on' if args.hook else 'off'}; {args.runs} runs")
    print("latencies (s): " + " ".join(f"{x:.2f}" for x in latencies))
    print(f"median {statistics.median(latencies):.2f} s, worst {max(latencies):.2f} s")


if __name__ == "__main__":
    main()
