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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
from jupyter_client import BlockingKernelClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.standins import pool  # noqa: E402

MINER = ROOT / "tests" / "standins" / "miner.py"
WALLET = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"
TOKEN = "latency-benchmark"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: Path, interval: float, hook: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(workdir / "config"),
           "JUPYTER_DATA_DIR": str(workdir / "data"), "JUPYTER_RUNTIME_DIR": str(workdir / "runtime")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", "--ServerApp.open_browser=False", "--allow-root",
         "--ServerApp.jpserver_extensions=colab_guard=True",
         f"--ColabGuard.sample_interval={interval}", "--ColabGuard.stop_grace=1",
         f"--ColabGuard.kernel_hook={hook}",
         f"--ColabGuard.incident_log={workdir / 'incidents.jsonl'}"],
        env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=open(workdir / "server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            api(url, "/api/status")
            return server, url
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not start; see {workdir / 'server.log'}")


def api(url: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(url + path, method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def kernel_client(url: str, workdir: Path) -> BlockingKernelClient:
    kernel_id = api(url, "/api/kernels", {"name": "python3"})["id"]
    client = BlockingKernelClient(connection_file=str(workdir / "runtime" / f"kernel-{kernel_id}.json"))
    client.load_connection_file()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    return client


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0, help="ColabGuard.sample_interval")
    parser.add_argument("--detached", action="store_true", help="start the miner with setsid/nohup from a ! line")
    parser.add_argument("--no-hook", dest="hook", action="store_false",
                        help="ColabGuard.kernel_hook=False: the server-side sampler alone")
    args = parser.parse_args()
    pool_server = pool.serve()
    with tempfile.TemporaryDirectory(prefix="colab-guard-latency-") as tmp:
        server, url = start_server(Path(tmp), args.interval, args.hook)
        try:
            client = kernel_client(url, Path(tmp))
            latencies = [one_run(client, pool_server.getsockname()[1], args.detached)
                         for _ in range(args.runs)]
            client.stop_channels()
        finally:
            server.terminate()
            server.wait(30)
    how = "detached (setsid/nohup from a ! line)" if args.detached else "from subprocess.Popen"
    print(f"miner started {how}; sample_interval {args.interval:g} s; kernel hook "
          f"{'on' if args.hook else 'off'}; {args.runs} runs")
    print("latencies (s): " + " ".join(f"{x:.2f}" for x in latencies))
    print(f"median {statistics.median(latencies):.2f} s, worst {max(latencies):.2f} s")


if __name__ == "__main__":
    main()
