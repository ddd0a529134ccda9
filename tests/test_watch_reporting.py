"""The node watcher reports its incidents to the hub service with its own token, read from a
root-only file; a token file a user could read or write is refused.

Root only, like tests/test_watch.py (whose kernel stand-in and helpers it uses), with a Unix
user of its own (report-wuser; removed at teardown) and a stand-in of the hub service.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from colab_guard.watch.app import WatchError, Watcher
from tests.harness import wait_until
from tests.standins.hub_service import HubStandin
from tests.test_watch import (KERNEL, ROOT, Kernel, RunningWatcher, _remove_user,
                              launch_watcher, watcher_config)

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/sbin/useradd").exists(),
                                reason="creates a Unix user and runs the watcher: root only")

USER = "report-wuser"


@pytest.fixture(scope="module")
def user():
    _remove_user(USER)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True)
    yield pwd.getpwnam(USER)
    _remove_user(USER)


@pytest.fixture(scope="module")
def world():
    folder = Path(tempfile.mkdtemp(prefix="cg-report-"))
    folder.chmod(0o1777)
    (folder / "kernel.py").write_text(KERNEL)
    (folder / "kernel.py").chmod(0o644)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)])


@pytest.fixture(scope="module")
def pool():
    proc = subprocess.Popen([sys.executable, "-m", "tests.standins.pool"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    yield f"stratum+tcp://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def service():
    hub = HubStandin(token="the-watchers-token").start()
    yield hub
    hub.close()


def token_file(folder: Path, token: str, mode: int = 0o600) -> Path:
    path = folder / "hub-token"
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def test_the_watchers_incident_reaches_the_hub_with_its_own_token(
        user, world, pool, service, tmp_path):
    folder = tmp_path / "watcher"  # under /tmp/pytest-of-root: root's alone
    folder.mkdir()
    config = watcher_config(folder, [USER], strike_limit=None, metrics_port=None,
                            heartbeat_file="", user_socket="", hub_url=service.url,
                            hub_api_token_file=str(token_file(folder, service.token)))
    log = folder / "watcher.log"
    proc = launch_watcher(config, log, env={k: v for k, v in os.environ.items()
                                            if k not in ("JUPYTERHUB_API_TOKEN",
                                                         "COLAB_GUARD_HUB_URL")})
    watcher = RunningWatcher(folder, proc, log, folder / "no-socket")
    kernel = None
    try:
        wait_until(lambda: "reported to the hub at" in watcher.log() or proc.poll() is not None,
                   timeout=30, what="the watcher started")
        assert proc.poll() is None, watcher.log()
        kernel = Kernel(world, user, "k-report-1", "miner", pool)
        taken = wait_until(lambda: [i for i in service.taken.values()
                                    if i["kernel_id"] == "k-report-1" and i["status"] == "done"],
                           timeout=60, what="the incident at the hub")
        assert taken[0]["user"] == USER and taken[0]["category"] == "crypto-mining"
        assert {r["body"]["source"] for r in service.requests} == {"watcher"}
        assert all(r["headers"]["Authorization"] == "token the-watchers-token"
                   for r in service.requests)
        assert (folder / "hub-reports.sqlite").stat().st_mode & 0o007 == 0
    finally:
        if kernel is not None:
            kernel.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert "Traceback" not in watcher.log(), watcher.log()


@pytest.mark.parametrize("mode, owner, message", [
    (0o644, "root", "readable by root alone"),
    (0o600, USER, "it must be owned by root"),
])
def test_a_token_file_others_could_read_or_write_is_refused(user, tmp_path, mode, owner, message):
    path = token_file(tmp_path, "secret", mode)
    if owner != "root":
        os.chown(path, user.pw_uid, user.pw_gid)
    with pytest.raises(WatchError, match=message):
        Watcher().configure([f"--Watcher.hub_api_token_file={path}"])


def test_the_token_file_is_read(tmp_path):
    watcher = Watcher()
    watcher.configure([f"--Watcher.hub_api_token_file={token_file(tmp_path, 'secret')}",
                       "--Watcher.hub_url=http://127.0.0.1:1/services/colab-guard"])
    assert watcher.hub_api_token == "secret"
    assert watcher.hub_url == "http://127.0.0.1:1/services/colab-guard/"


@pytest.mark.parametrize("argv, message", [
    (["--Watcher.hub_url=ftp://hub/"], "Watcher.hub_url: 'ftp://hub/' is not an http"),
    (["--Watcher.hub_api_token_file=/nonexistent/token"], "does not exist"),
])
def test_bad_hub_settings_are_refused(argv, message):
    with pytest.raises(WatchError, match=message):
        Watcher().configure(argv)


def test_a_hub_url_without_a_token_stops_the_watcher_naming_both_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    watcher = Watcher()
    watcher.configure(["--Watcher.hub_url=http://127.0.0.1:1/",
                       f"--Watcher.database_url=sqlite:///{tmp_path / 'incidents.sqlite'}",
                       f"--Watcher.incident_log={tmp_path / 'incidents.jsonl'}"])
    with pytest.raises(WatchError, match="no hub_api_token.*hub_api_token_file"):
        watcher.build()
