"""Fuzzed API requests against a real guarded `jupyter server`: random query parameters,
path ids and bodies on every route get an answer (4xx with a message naming what is wrong),
never a 500."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from colab_guard.record.database import IncidentDatabase
from tests.guard_users import enforced_incident

pytestmark = pytest.mark.integration

TOKEN = "fuzz"


class Server:
    def __init__(self, workdir: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "JUPYTER_CONFIG_DIR": str(workdir / "config"),
               "JUPYTER_DATA_DIR": str(workdir / "data"), "JUPYTER_RUNTIME_DIR": str(workdir / "rt")}
        self.database_url = f"sqlite:///{workdir / 'incidents.sqlite'}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", f"--ServerApp.port={self.port}",
             "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
             "--ServerApp.open_browser=False", "--allow-root", "--ServerApp.port_retries=0",
             "--ServerApp.jpserver_extensions=colab_guard=True",
             f"--ColabGuard.incident_log={workdir / 'incidents.jsonl'}",
             f"--ColabGuard.database_url={self.database_url}"],
            env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=open(workdir / "log", "w"))
        self.log = workdir / "log"
        deadline = time.monotonic() + 60
        while True:
            try:
                self.request("GET", "/api/status")
                break
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                         data=body, headers={"Authorization": f"token {TOKEN}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("fuzz"))
    # An incident of the server's user, and one appeal on it, for the id routes to reach.
    user = json.loads(server.request("GET", "/colab-guard/api/status")[1])["user"]
    database = IncidentDatabase(server.database_url)
    incident = enforced_incident(user)
    database.save(incident)
    appeal = database.appeal(incident.id, user, "a course exercise")
    database.close()
    server.ids = {"incident": incident.id, "appeal": appeal.id, "user": user}
    yield server
    server.stop()
    assert "Traceback" not in server.log.read_text()


PARAMETERS = ["limit", "since", "user", "category", "kernel_id", "status", "decision", "x"]
TEXT = st.text(max_size=40) | st.sampled_from(
    ["0", "-1", "1001", "1e400", "nan", "inf", "0001-01-01", "9999-12-31T23:59:59+14:00",
     "2026-13-45", "١٢", "9" * 5000, "pending", "accepted", "\x00", "' OR 1=1 --", "%00"])
QUERIES = st.dictionaries(st.sampled_from(PARAMETERS) | st.text(min_size=1, max_size=8), TEXT,
                          max_size=4)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["text", "decision", "reply"])
                                      | st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)
BODIES = (JSON.map(lambda v: json.dumps(v).encode())
          | st.fixed_dictionaries({"text": TEXT}).map(lambda v: json.dumps(v).encode())
          | st.fixed_dictionaries({"decision": st.sampled_from(["accept", "reject", "x"]),
                                   "reply": TEXT | st.integers()}).map(lambda v: json.dumps(v).encode())
          | st.sampled_from([b'{"text": "\\ud800"}', b'{"reply": "\\udfff", "decision": "reject"}',
                             b"\xff\xfe", b"{", b"[]" * 5000])
          | st.binary(max_size=64))
IDS = st.sampled_from(["incident", "appeal", "user"]) | st.text(min_size=1, max_size=30)

GET_ROUTES = ["incidents", "incidents/{id}", "appeals", "strikes", "status"]
POST_ROUTES = ["incidents/{id}/appeal", "appeals/{id}/resolve", "strikes/{id}/clear"]


def check(status: int, body: bytes, what: str) -> None:
    assert status < 500, f"{what}: {status} {body[:300]!r}"
    if status >= 400:
        message = json.loads(body)["message"]
        assert isinstance(message, str) and message, what


def path_for(server, route: str, ident: str, query: dict) -> str:
    ident = server.ids.get(ident, ident)
    path = "/colab-guard/api/" + route.replace("{id}", urllib.parse.quote(ident, safe=""))
    return path + ("?" + urllib.parse.urlencode(query) if query else "")


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(GET_ROUTES), ident=IDS, query=QUERIES)
def test_fuzzed_get_requests_never_fail_the_server(server, route, ident, query):
    path = path_for(server, route, ident, query)
    check(*server.request("GET", path), path)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(POST_ROUTES), ident=IDS, query=QUERIES, body=BODIES)
def test_fuzzed_post_requests_never_fail_the_server(server, route, ident, query, body):
    path = path_for(server, route, ident, query)
    check(*server.request("POST", path, body), f"{path} {body[:100]!r}")


@pytest.mark.parametrize("body, field", [
    (b'{"text": "\\ud800 is a lone surrogate"}', "text"),
    (b'{"decision": "reject", "reply": "\\udfff"}', "reply"),
])
def test_text_that_cannot_be_stored_is_a_400_naming_the_field(server, body, field):
    route = "incidents/{id}/appeal" if field == "text" else "appeals/{id}/resolve"
    ident = "incident" if field == "text" else "appeal"
    status, answer = server.request("POST", path_for(server, route, ident, {}), body)
    assert status == 400
    assert f"field {field!r}" in json.loads(answer)["message"]
