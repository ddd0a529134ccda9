"""The one harness for tests and benchmarks: a guarded Jupyter server in a subprocess,
kernels on it, and waiting for a state (never for a fixed time).

Tests use it through conftest.py's fixtures (or directly, for a server of their own);
benchmarks import it as ``tests.harness`` when run as modules from the repository root
(``./dev bench NAME`` runs ``python -m benchmarks.NAME``).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def longest_hold(work) -> tuple[float, object]:
    """Run ``work``; return the longest another thread (the server's event loop, say) waited
    on it, and its result.

    The wait is counted in this process's CPU time, not wall time: a thread that holds the GIL
    spends CPU all the while the other waits, but a process the kernel leaves off the CPU on a
    busy machine spends none (a wall-clock gap failed CI that way: 0.29 s, for work that takes
    0.02 s alone).
    """
    holds, stop = [0.0], threading.Event()

    def other_thread():
        while not stop.is_set():
            started = time.process_time()
            time.sleep(0.001)
            holds.append(time.process_time() - started)

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        result = work()
    finally:
        stop.set()
        thread.join()
    return max(holds), result


async def wait_for(predicate, timeout: float = 15.0, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; return that, or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.1, what: str = "condition"):
    """``wait_for`` for code without an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (exited, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GuardedServer:
    """``jupyter server`` with colab-guard on, in a temporary folder of its own.

    ``guard``: ColabGuard settings (written to the server's config file, as an operator
    would); ``args``: more command line options. ``start()`` returns once the server
    answers; ``started()`` starts it and expects it to exit by itself (a refused start).
    """

    def __init__(self, guard: dict | None = None, args: list[str] = (), folder: Path | None = None):
        self.dir = Path(folder or tempfile.mkdtemp(prefix="colab-guard-server-"))
        self.own_dir = folder is None
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.incident_log = self.dir / "incidents.jsonl"
        config = self.dir / "config"
        config.mkdir(parents=True, exist_ok=True)
        settings = {"incident_log": str(self.incident_log),
                    "database_url": f"sqlite:///{self.dir / 'incidents.sqlite'}", **(guard or {})}
        (config / "jupyter_server_config.json").write_text(json.dumps({"ColabGuard": settings}))
        self.env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config),
                    "JUPYTER_RUNTIME_DIR": str(self.dir / "runtime"),
                    "JUPYTER_DATA_DIR": str(self.dir / "data"), "JUPYTER_PLATFORM_DIRS": "1"}
        self.argv = [sys.executable, "-m", "jupyter_server", "--no-browser",
                     "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
                     f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.dir}",
                     "--ServerApp.jpserver_extensions=colab_guard=True", *args]
        if os.geteuid() == 0:
            self.argv.append("--allow-root")
        self.process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def launch(self) -> subprocess.Popen:
        log = open(self.log_path, "wb")  # noqa: SIM115 (the server writes it until it stops)
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.dir, stdout=log,
                                        stderr=subprocess.STDOUT)
        return self.process

    def start(self, timeout: float = 90) -> GuardedServer:
        self.launch()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.api("GET", "api/status")
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the guarded server did not start:\n{self.log()[-3000:]}")
                time.sleep(0.2)  # polling for the server to listen

    def exits(self, timeout: float = 90) -> int:
        """Start it and wait for it to exit by itself; its exit status."""
        return self.launch().wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> GuardedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def request(self, method: str, path: str, body: dict | None = None,
                timeout: float = 60) -> bytes:
        request = urllib.request.Request(
            f"{self.url}/{path.lstrip('/')}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 60) -> dict:
        text = self.request(method, path, body, timeout)
        return json.loads(text) if text else {}

    def incidents(self, kernel_id: str | None = None) -> list[dict]:
        """The incident log's incidents (last line per id wins), oldest first."""
        found: dict[str, dict] = {}
        if self.incident_log.exists():
            for line in self.incident_log.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    if kernel_id is None or record.get("kernel_id") == kernel_id:
                        found[record["id"]] = record
        return list(found.values())

    def start_kernel(self):
        """A new kernel and a blocking client connected to it: (kernel id, client)."""
        kernel_id = self.api("POST", "api/kernels", {"name": "python3"})["id"]
        return kernel_id, self.kernel_client(kernel_id)

    def kernel_client(self, kernel_id: str):
        from jupyter_client import BlockingKernelClient

        client = BlockingKernelClient()
        client.load_connection_file(str(self.dir / "runtime" / f"kernel-{kernel_id}.json"))
        # No heartbeat: on a busy machine its first beat can come late, and the client then
        # calls a live kernel dead; kernel_info shows it is ready.
        client.start_channels(hb=False)
        client.wait_for_ready(timeout=60)
        return client
