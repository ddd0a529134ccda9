"""``colab-guard scan PID``: a one-shot scan of a real process tree, what matches and why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import psutil
import pytest

from colab_guard.cli import main

IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(autouse=True)
def isolated_config(tmp_path, monkeypatch):
    """No jupyter_server_config from this machine: the built-in signatures only."""
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(tmp_path / "config"))


def _start(argv: list[str], runs: list[str] | None = None) -> subprocess.Popen:
    """Start a program and wait until it has exec'd ``runs`` (by default ``argv``: a
    launcher such as unshare execs the program it is given)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _until(lambda: psutil.Process(proc.pid).cmdline() == (runs or argv), timeout=60)
    return proc


def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except psutil.Error:
            pass
        time.sleep(0.05)
    raise AssertionError("condition not met")


def _microsocks() -> str:
    found = shutil.which("microsocks")
    if found is None:
        if IN_CI:
            pytest.fail("microsocks is not installed (benchmarks/scenarios/install.sh --small)")
        pytest.skip("microsocks is not installed")
    return found


def test_a_renamed_proxy_in_a_process_tree_is_reported_with_its_reasons(tmp_path, capsys):
    disguised = tmp_path / "kworker"
    shutil.copy(_microsocks(), disguised)
    # a parent shell with the disguised proxy below it: the whole tree is scanned
    parent = _start(["bash", "-c", f"{disguised} -i 127.0.0.1 -p 0 & wait"])
    try:
        # until the proxy runs below the shell and listens
        _until(lambda: any(c.net_connections(kind="inet") for c in psutil.Process(parent.pid).children()))
        status = main(["scan", str(parent.pid)])
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()
    out = capsys.readouterr().out
    assert status == 1
    assert "(kworker)" in out and "content markers: microsocks" in out
    assert "MATCH proxy-content [proxy] -> interrupt" in out
    assert "because exe_markers in the list: 'microsocks'" in out


def test_an_ordinary_process_matches_nothing_and_exits_zero(capsys):
    proc = _start(["sleep", "30"])
    try:
        status = main(["scan", str(proc.pid), "--json"])
    finally:
        proc.kill()
        proc.wait()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0
    assert [(r["pid"], r["matches"], r["exe_markers"]) for r in rows] == [(proc.pid, [], [])]


def test_untrusted_command_lines_are_printed_with_control_characters_escaped(capsys):
    proc = _start([sys.executable, "-c", "import time; time.sleep(30)", "\x1b[31mred\x07"])
    try:
        main(["scan", str(proc.pid)])
    finally:
        proc.kill()
        proc.wait()
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31mred\\x07" in out


def test_a_pid_that_does_not_exist_is_a_clear_error(capsys):
    pid = 2 ** 22 + 17
    while psutil.pid_exists(pid):
        pid += 1
    assert main(["scan", str(pid)]) == 2
    assert f"no process with pid {pid}" in capsys.readouterr().err


def _in_another_network_namespace(argv: list[str]) -> subprocess.Popen:
    """argv in a new network namespace (unshare -n as root, else -rn in a user namespace)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    for flags in (["-n"], ["-rn"]):
        probe = subprocess.run([unshare, *flags, "true"], capture_output=True)
        if probe.returncode == 0:
            return _start([unshare, *flags, *argv], runs=argv)
    pytest.skip("cannot create a network namespace here (unshare -n and -rn refused)")


def test_a_process_in_another_network_namespace_is_said_to_hide_its_sockets(capsys):
    proc = _in_another_network_namespace([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def in_its_namespace():
            child = psutil.Process(proc.pid)
            return os.readlink(f"/proc/{child.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        _until(in_its_namespace)
        status = main(["scan", str(proc.pid)])
        out = capsys.readouterr().out
        assert status == 0
        assert "sockets: not visible (it is in another network namespace (net:[" in out
        assert f"nsenter --net=/proc/{proc.pid}/ns/net" in out
        assert "no signature matches (the rules on sockets could not be tested)" in out
        main(["scan", str(proc.pid), "--json"])
        [result] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert "another network namespace" in result["sockets_hidden"]
    finally:
        proc.kill()
        proc.wait()


def test_a_process_in_our_own_network_namespace_hides_nothing(capsys):
    from colab_guard.cli.scan import sockets_hidden

    assert sockets_hidden(os.getpid()) == ""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as proc:
        try:
            main(["scan", str(proc.pid)])
            out = capsys.readouterr().out
            assert "sockets: 0" in out and "not visible" not in out
        finally:
            proc.kill()
