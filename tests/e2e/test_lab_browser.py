"""colab-guard's JupyterLab extension in a real browser (Debian's Chromium, driven by Playwright)
against a real `jupyter lab` with the guard on: a notebook cell starts a stand-in miner, the
user sees the warning, reads the details and appeals; the admin finds the incident in the panel,
a hostile command line shown as text.

In CI (CI=true) a missing browser is a failure; elsewhere the tests skip, saying why.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from tests.standins import pool as standin_pool

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MINER = ROOT / "tests" / "standins" / "miner.py"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("COLAB_GUARD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
USER = "alice"
MESSAGE = "Mining is not allowed on this service (test platform message)."
POLICY = "https://example.org/acceptable-use"
HOSTILE = "<img src=x onerror=alert(1)>"
WALLET = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"
APPEAL = "I was running the course's hashing exercise, not mining."
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")


def missing_prerequisites() -> list[str]:
    problems = []
    if not os.access(CHROMIUM, os.X_OK):
        problems.append(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        problems.append("the playwright package is missing (pip install -e '.[test]')")
    if not (Path(sys.prefix) / "share/jupyter/labextensions/colab-guard/package.json").exists():
        problems.append("the colab-guard labextension is not installed (pip install -e .)")
    return problems


@pytest.fixture
def chromium() -> str:
    """The system's Chromium, with Playwright to drive it; fails in CI when missing."""
    problems = missing_prerequisites()
    if problems:
        reason = "browser tests cannot run: " + "; ".join(problems)
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@contextlib.asynccontextmanager
async def browser_page(executable: str):
    """A page of a headless Chromium; a screenshot of it is kept when the test fails."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, headless=True,
                                           args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            yield page
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "failure.png"))
            raise
        finally:
            await browser.close()


@pytest.fixture
def pool():
    server = standin_pool.serve()
    yield server.getsockname()[1]
    server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    """A `jupyter lab` (or Notebook 7: app="notebook") subprocess on 127.0.0.1, the guard on."""

    def __init__(self, tmp: Path, guard: dict, app: str = "jupyterlab"):
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = tmp / "notebooks"
        self.root.mkdir()
        config = tmp / "jupyter_lab_test_config.json"
        config.write_text(json.dumps({
            "ServerApp": {
                "jpserver_extensions": {"colab_guard": True},
                "identity_provider_class": "tests.e2e.identity.FixedUserIdentityProvider",
                "authorizer_class": "colab_guard.auth.GuardAuthorizer",
            },
            "FixedUserIdentityProvider": {"user_name": USER},
            "GuardAuthorizer": {"admin_users": [USER]},
            "ColabGuard": guard,
        }))
        settings = tmp / "settings"
        # No news or update check: nothing reaches outside, no extra notification.
        notification = settings / "@jupyterlab" / "apputils-extension"
        notification.mkdir(parents=True)
        (notification / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env = dict(os.environ, PYTHONPATH=str(ROOT), JUPYTER_CONFIG_DIR=str(tmp / "config"),
                   JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
        command = [sys.executable, "-m", app, "--no-browser", "--ip=127.0.0.1",
                   f"--port={self.port}", "--ServerApp.port_retries=0",
                   f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={self.root}",
                   f"--config={config}", f"--LabApp.user_settings_dir={settings}",
                   f"--LabApp.workspaces_dir={tmp / 'workspaces'}"]
        if os.geteuid() == 0:
            command.append("--allow-root")
        self.log = (tmp / "lab.log").open("w")
        self.process = subprocess.Popen(command, cwd=tmp, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"jupyter lab exited with {self.process.returncode}: "
                                     f"{Path(self.log.name).read_text()[-3000:]}")
            try:
                self.api("api/status")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        raise AssertionError(f"jupyter lab not ready within {timeout} s")

    def api(self, path: str) -> dict:
        request = urllib.request.Request(f"{self.url}/{path}",
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture
def lab(tmp_path, chromium):
    labs = []

    def start(app: str = "jupyterlab", **guard) -> Lab:
        settings = {"sample_interval": 0.5, "stop_grace": 1.0, "user_name": USER,
                    "warning_message": MESSAGE, "policy_url": POLICY,
                    "database_url": f"sqlite:///{tmp_path / 'incidents.sqlite'}",
                    "incident_log": str(tmp_path / "incidents.jsonl"), **guard}
        server = Lab(tmp_path, settings, app)
        labs.append(server)
        server.wait_ready()
        return server

    yield start
    for server in labs:
        server.stop()


def mining_notebook(lab: Lab, pool_port: int, seconds: int = 600) -> str:
    """A notebook whose one cell starts the stand-in miner (a hostile string in its command line).
    The pool's URL is read from a file when the cell runs, so the cell check (which reads the
    cell's source) lets it start and the sampler is the one that acts, as these tests intend."""
    (lab.root / "pool.txt").write_text(f"stratum+tcp://127.0.0.1:{pool_port}")
    code = (f"import subprocess, sys\n"
            f"pool = open('pool.txt').read().strip()\n"
            f"miner = subprocess.Popen([sys.executable, {str(MINER)!r}, '-o', pool, "
            f"'-u', {WALLET!r}, '-p', {HOSTILE!r}, '--seconds', '{seconds}'])\n"
            f"miner.wait()\n")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, lab.root / "mining.ipynb")
    return "mining.ipynb"


async def open_notebook_and_run(page, lab: Lab, name: str) -> None:
    await page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}")
    # The kernel is connected and idle when the status bar says so.
    await page.locator(".jp-StatusBar-Widget", has_text="Python 3 (ipykernel) | Idle").wait_for(
        timeout=90_000)
    await run_first_cell(page)


async def run_first_cell(page) -> None:
    """Shift+Enter in the first cell, again if the page swallowed it (a page that says Idle
    may still be wiring its keyboard shortcuts on a busy machine): until the prompt says
    the cell is queued or running."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    prompt = page.locator(".jp-Cell .jp-InputPrompt").first
    for _ in range(6):
        await page.locator(".jp-Cell .cm-content").first.click()
        await page.keyboard.press("Shift+Enter")
        try:
            await prompt.filter(has_text=re.compile(r"\[(\*|\d+)\]")).wait_for(timeout=10_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError("the notebook never ran its first cell")


async def test_user_is_warned_sees_details_appeals_and_admin_finds_the_incident(lab, chromium, pool):
    from playwright.async_api import expect

    server = lab()
    ARTIFACTS.mkdir(exist_ok=True)
    async with browser_page(chromium) as page:
        alerts: list[str] = []
        page.on("dialog", lambda dialog: alerts.append(dialog.message))
        await open_notebook_and_run(page, server, mining_notebook(server, pool))

        # The warning: the platform's message, until dismissed.
        toast = page.locator(".Toastify__toast", has_text=MESSAGE)
        await toast.wait_for(timeout=60_000)
        shown_at = time.monotonic()
        await page.screenshot(path=str(ARTIFACTS / "notification.png"))
        await expect(page.locator(".jp-ColabGuard-status")).to_have_text(
            re.compile(r"Guard: on · [1-9]"))

        # The details: what, where, what was done, the policy; then the appeal.
        await toast.get_by_role("button", name="Details").click()
        dialog = page.locator(".jp-Dialog")
        await expect(dialog.locator(".jp-ColabGuard-summary")).to_contain_text("crypto-mining")
        await expect(dialog.locator(".jp-ColabGuard-notebook")).to_have_text("mining.ipynb")
        await expect(dialog.locator(".jp-ColabGuard-done")).to_contain_text("interrupt kernel: done")
        await expect(dialog.locator(f"a[href='{POLICY}']")).to_be_visible()
        incident_id = (await dialog.locator(".jp-ColabGuard-incident-id").inner_text()).strip()
        await page.screenshot(path=str(ARTIFACTS / "details.png"))
        await dialog.locator("textarea").fill(APPEAL)
        await dialog.get_by_role("button", name="Appeal").click()
        await page.locator(".Toastify__toast", has_text="Your appeal was sent").wait_for(
            timeout=15_000)

        incident = server.api(f"colab-guard/api/incidents/{incident_id}")
        assert [a["text"] for a in incident["appeals"]] == [APPEAL]
        assert incident["user"] == USER and incident["category"] == "crypto-mining"

        # The status bar item opens the user's own incidents.
        await page.locator(".jp-ColabGuard-status").click()
        mine = page.locator("#colab-guard-mine .jp-ColabGuard-panel")
        await expect(mine.locator(f"tr[data-incident-id='{incident_id}']")).to_be_visible()
        assert await mine.locator(".jp-ColabGuard-filter-user").count() == 0

        # The admin panel, from the command palette.
        await page.keyboard.press("Control+Shift+C")
        await page.locator(".lm-CommandPalette-input").fill("colab-guard Incidents")
        await page.keyboard.press("Enter")
        panel = page.locator("#colab-guard-all .jp-ColabGuard-panel")
        await panel.locator(f"tr[data-incident-id='{incident_id}']").click()
        cmdline = panel.locator(".jp-ColabGuard-detail .jp-ColabGuard-cmdline").first
        await expect(cmdline).to_contain_text(HOSTILE)
        await expect(panel.locator(".jp-ColabGuard-appeals")).to_contain_text(APPEAL)
        await expect(panel.locator(".jp-ColabGuard-actions")).to_contain_text("interrupt")
        assert await panel.locator("img").count() == 0
        await page.screenshot(path=str(ARTIFACTS / "incident-panel.png"))

        # The warning outlived the default 5 s of a notification that closes by itself.
        await page.wait_for_timeout(max(0.0, 6.0 - (time.monotonic() - shown_at)) * 1000)
        await expect(toast).to_be_visible()
        assert alerts == [], f"a hostile string ran as script: {alerts}"


async def test_dry_run_warning_says_nothing_was_stopped(lab, chromium, pool):
    from playwright.async_api import expect

    server = lab(dry_run=True)
    async with browser_page(chromium) as page:
        # In dry-run mode the miner is left running: it stops by itself soon after the test.
        await open_notebook_and_run(page, server, mining_notebook(server, pool, seconds=30))
        try:
            toast = page.locator(".Toastify__toast", has_text=MESSAGE)
            await expect(toast).to_contain_text("Dry run: nothing was stopped.", timeout=60_000)
            await expect(page.locator(".jp-ColabGuard-status")).to_have_text(
                re.compile(r"Guard: dry run · [1-9]"))
            await toast.get_by_role("button", name="Details").click()
            done = page.locator(".jp-Dialog .jp-ColabGuard-done")
            await expect(done).to_contain_text("nothing was stopped")
            await expect(done).to_contain_text("'interrupt'")
        finally:
            for incident in server.api("colab-guard/api/incidents")["incidents"]:
                for process in incident["evidence"]["processes"]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process["pid"], signal.SIGKILL)


async def test_notebook_7_user_is_warned_and_appeals(lab, chromium, pool):
    from playwright.async_api import expect

    if importlib.util.find_spec("notebook") is None:
        reason = "Notebook 7 is not installed (pip install -e '.[test]')"
        pytest.fail(reason) if IN_CI else pytest.skip(reason)
    server = lab(app="notebook")
    async with browser_page(chromium) as page:
        await page.goto(f"{server.url}/notebooks/{mining_notebook(server, pool)}?token={server.token}")
        await page.locator(".jp-Notebook-ExecutionIndicator", has_text="Kernel status: Idle").wait_for(
            timeout=90_000)
        await run_first_cell(page)

        toast = page.locator(".Toastify__toast", has_text=MESSAGE)
        await toast.get_by_role("button", name="Details").click(timeout=60_000)
        dialog = page.locator(".jp-Dialog")
        await expect(dialog.locator(".jp-ColabGuard-notebook")).to_have_text("mining.ipynb")
        incident_id = (await dialog.locator(".jp-ColabGuard-incident-id").inner_text()).strip()
        await dialog.locator("textarea").fill(APPEAL)
        await dialog.get_by_role("button", name="Appeal").click()
        await page.locator(".Toastify__toast", has_text="Your appeal was sent").wait_for(
            timeout=15_000)
        incident = server.api(f"colab-guard/api/incidents/{incident_id}")
        assert [a["text"] for a in incident["appeals"]] == [APPEAL]

        # The notebook page's main area holds the notebook: the panel opens beside it.
        await page.keyboard.press("Control+Shift+C")
        await page.locator(".lm-CommandPalette-input").fill("colab-guard Incidents")
        await page.keyboard.press("Enter")
        row = page.locator(f".jp-ColabGuard-panel tr[data-incident-id='{incident_id}']")
        await row.click()
        await expect(page.locator(".jp-ColabGuard-detail .jp-ColabGuard-cmdline").first).to_contain_text(
            HOSTILE)
        await page.screenshot(path=str(ARTIFACTS / "notebook7-panel.png"))
