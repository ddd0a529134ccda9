"""Red team: a notebook user who knows the hub reporter (record/reporter.py) tries to keep
incidents, their own or anyone's, from reaching the hub service's admins, or to take the
tokens the reports carry.

A real reporter, a real stand-in of the service on loopback, real sockets, and a real
unprivileged Unix user (``redteam-...``) for the attacker's own listener.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from colab_guard.record.incident import Action, Incident, process_evidence
from colab_guard.observe.model import Process
from tests.harness import wait_until
from tests.reporting import make_reporter, service  # noqa: F401
from tests.unix_users import throwaway_user

SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable  # the user's


@pytest.fixture(scope="module")
def attacker():
    with throwaway_user("redteam-rp") as user:
        yield user


def incident(user: str = "mallory", processes: int = 1) -> Incident:
    """An incident as the monitor makes it; ``processes``: how many offending programs (each
    with a command line as long as the evidence keeps: 2048 characters)."""
    found = Incident(kernel_id="k1", category="crypto-mining", severity="high",
                     signature="xmrig-cmdline", description="a miner", user=user,
                     actions=[Action("stop", f"pid {1000 + i}", "done") for i in range(processes)],
                     strike=True, status="done")
    found.evidence = {"processes": [process_evidence(Process(
        pid=1000 + i, ppid=1, name="xmrig", exe="/tmp/xmrig",
        cmdline=["xmrig", "-o", "stratum+tcp://pool:3333", "-u", "W" * 5000]))
        for i in range(processes)]}
    return found


def test_an_incident_too_large_for_the_hubs_proxy_does_not_hold_up_the_others(
        service, make_reporter):
    # The hub behind a proxy that takes at most 1 MB a request (nginx's default): the user
    # starts 600 miners at once; their incident (with every command line) is larger than
    # that. A 413 was retried for ever, and every incident queued after it waited behind it.
    service.max_body = 2**20
    reporter = make_reporter(source="watcher", limit=1000)
    huge, later = incident(processes=600), incident(user="alice")
    assert len(json.dumps(huge.to_dict())) > service.max_body
    reporter.listen(huge)
    reporter.listen(later)
    reporter.start()
    wait_until(lambda: later.id in service.taken and huge.id in service.taken, timeout=30,
               what="both incidents taken")
    taken = service.taken[huge.id]
    assert taken["user"] == "mallory" and taken["strike"] is True
    assert taken["evidence"]["processes_total"] == 600  # what was left out is said
    assert len(reporter.queue) == 0


def test_a_batch_of_ordinary_incidents_fits_the_hubs_proxy(service, make_reporter):
    # 100 incidents of 20 kB each: every one fits, their batch did not.
    service.max_body = 2**20
    reporter = make_reporter(source="watcher", limit=1000)
    incidents = [incident(processes=8) for _ in range(100)]
    for found in incidents:
        reporter.listen(found)
    reporter.start()
    wait_until(lambda: all(i.id in service.taken for i in incidents), timeout=30,
               what="every incident taken")
    assert reporter.counts["refused"] == 0


SQUATTER = r"""
import http.server, json, socket, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        print(json.dumps({"authorization": self.headers.get("Authorization")}), flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        taken = [i["id"] for i in json.loads(body)["incidents"]]
        self.wfile.write(json.dumps({"taken": taken, "strikes": 0, "strike_limit": 3,
                                     "banned": False}).encode())
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("listening", flush=True)
server.serve_forever()
"""


def test_a_user_listening_on_the_hubs_port_while_it_restarts_gets_no_token_and_no_incident(
        service, make_reporter, attacker, tmp_path):
    # The hub service restarts; a notebook user binds its loopback port first and answers
    # 200: the watcher's report-any token (or another user's server token) and the
    # incidents went to them, and the incidents were counted as sent.
    service.down()
    squatter = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", SQUATTER, str(service.port)], stdout=subprocess.PIPE, text=True,
        user=attacker.pw_uid, group=attacker.pw_gid, cwd="/")
    try:
        assert squatter.stdout.readline().strip() == "listening"
        reporter = make_reporter(source="watcher", limit=1000)
        found = incident()
        reporter.listen(found)
        reporter.start()
        wait_until(lambda: reporter.failures >= 2 or reporter.counts["sent"], timeout=30,
                   what="an attempt")
        assert reporter.counts["sent"] == 0, "the incident went to the user's listener"
        assert f"uid {attacker.pw_uid}" in reporter.status()["last_error"]
        assert len(reporter.queue) == 1
    finally:
        squatter.kill()
        leaked = squatter.communicate()[0]
    assert "report-token" not in leaked, "the token went to the user's listener"

    service.up()  # the real service is back: the incident arrives
    wait_until(lambda: found.id in service.taken, timeout=30, what="the incident taken")


def test_a_queue_file_the_user_overwrote_is_started_afresh_and_said(service, make_reporter,
                                                                    tmp_path, caplog):
    # The server's queue is in the user's own data folder: they overwrite it with junk. Every
    # later incident was lost ("not reported to the hub") and the status API failed (500).
    reporter = make_reporter(source="server", limit=1000)
    reporter.start()
    first = incident()
    reporter.listen(first)
    wait_until(lambda: first.id in service.taken, what="the first incident taken")
    for path in tmp_path.glob("hub-reports.sqlite*"):
        path.write_bytes(b"not a database " * 4096)
    reporter.status()  # answers (it raised "file is not a database" once the cache was gone)

    later = incident()
    reporter.listen(later)
    wait_until(lambda: later.id in service.taken, what="a later incident taken")
    assert "moved aside" in caplog.text and "not reported" in caplog.text
    assert list(tmp_path.glob("hub-reports.sqlite.unreadable-*"))
