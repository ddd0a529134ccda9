"""Shared fixtures: a guarded Jupyter server (pytest-jupyter), real kernels, stand-in services."""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path

import pytest

from tests.harness import wait_for  # noqa: F401 (tests import it from here)
from tests.standins import pool as standin_pool
from tests.standins import tracker as standin_tracker

pytest_plugins = ["pytest_jupyter.jupyter_server"]

STANDINS = Path(__file__).parent / "standins"
PYTHON = sys.executable
#: Whose server the fixtures' guarded server is, as its incidents must name it: user_name's
#: default (the hub's user, else the login name of the Unix user running the tests).
SERVER_USER = os.environ.get("JUPYTERHUB_USER") or getpass.getuser()


@pytest.fixture
def guard_config(tmp_path):
    """ColabGuard settings for a test; a test may update it before the server starts."""
    return {
        "incident_log": str(tmp_path / "incidents.jsonl"),
        "database_url": f"sqlite:///{tmp_path / 'incidents.sqlite'}",
        "sample_interval": 0.5,
        "stop_grace": 1.0,
        "policy_url": "https://example.org/acceptable-use",
        # Off so that tests of the runtime path see their cells run; tests/test_kernel_hook*.py
        # turn it on.
        "cell_checks": False,
    }


@pytest.fixture
def jp_server_config(guard_config):
    return {
        "ServerApp": {"jpserver_extensions": {"colab_guard": True}},
        "ColabGuard": guard_config,
    }


@pytest.fixture
def guard(jp_serverapp, jp_asyncio_loop):
    """The running ColabGuard extension app, its monitor started.

    pytest-jupyter never starts the server's IO loop, which is where extensions'
    start hooks run, so the fixture runs ours.
    """
    app = jp_serverapp.web_app.settings["colab_guard"]
    jp_asyncio_loop.run_until_complete(app._start_jupyter_server_extension(jp_serverapp))
    return app


@pytest.fixture
def pool():
    """A stand-in Stratum pool on 127.0.0.1; yields its port."""
    server = standin_pool.serve()
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def tracker():
    """A stand-in BitTorrent tracker on 127.0.0.1; yields its port."""
    server = standin_tracker.serve()
    yield server.server_address[1]
    server.shutdown()


class KernelRunner:
    """A real kernel started through the server's REST API, and a client to run cells."""

    def __init__(self, serverapp, kernel_id: str):
        self.serverapp = serverapp
        self.kernel_id = kernel_id
        self.client = serverapp.kernel_manager.get_kernel(kernel_id).client()

    async def start(self) -> None:
        self.client.start_channels()
        await self.client.wait_for_ready(timeout=60)

    async def run(self, code: str, timeout: float = 60) -> tuple[dict, list[dict]]:
        """Run a cell; return the execute reply's content and the outputs."""
        outputs: list[dict] = []

        def hook(msg):
            if msg["msg_type"] in ("stream", "error", "display_data", "execute_result"):
                outputs.append({"type": msg["msg_type"], **msg["content"]})

        reply = await self.client.execute_interactive(code, timeout=timeout, output_hook=hook)
        return reply["content"], outputs

    @staticmethod
    def text(outputs: list[dict]) -> str:
        parts = []
        for out in outputs:
            if out["type"] == "stream":
                parts.append(out["text"])
            elif out["type"] == "error":
                parts.append("\n".join(out.get("traceback", [])))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
        return "".join(parts)

    def stop(self) -> None:
        self.client.stop_channels()


@pytest.fixture
def start_kernel(jp_serverapp, jp_fetch, guard, jp_asyncio_loop):
    """Start kernels through the REST API: ``runner = start_kernel()``."""
    runners = []

    async def start() -> KernelRunner:
        body = json.dumps({"name": "python3"})
        response = await jp_fetch("api", "kernels", method="POST", body=body)
        runner = KernelRunner(jp_serverapp, json.loads(response.body)["id"])
        await runner.start()
        return runner

    def starter() -> KernelRunner:
        runner = jp_asyncio_loop.run_until_complete(start())
        runners.append(runner)
        return runner

    yield starter
    for runner in runners:
        runner.stop()


@pytest.fixture
def kernel(start_kernel):
    """A running kernel of the guarded server."""
    return start_kernel()


def incidents_in(path: str | Path) -> list[dict]:
    """Incidents in a JSON lines log, last line per id winning, oldest first."""
    found: dict[str, dict] = {}
    text = Path(path).read_text() if Path(path).exists() else ""
    for line in text.splitlines():
        if line.strip():
            record = json.loads(line)
            found[record["id"]] = record
    return list(found.values())
