"""Incidents reach the hub service: a real reporter, a real HTTP stand-in of the service on
loopback (tests/standins/hub_service.py), real sockets; down, slow, refusing, restarted."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from traitlets import TraitError

from colab_guard.app import ColabGuard
from colab_guard.record import metrics
from colab_guard.record.incident import Action, Incident
from colab_guard.record.recorder import Recorder
from colab_guard.record.reporter import HubReporter, ReportQueue
from tests.conftest import PYTHON, STANDINS
from tests.test_guard_integration import gone
from tests.harness import GuardedServer, wait_until
from tests.reporting import make_reporter, service  # noqa: F401

WALLET = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"


def incident(user: str = "alice", status: str = "acting") -> Incident:
    return Incident(kernel_id="k1", category="crypto-mining", severity="high",
                    signature="xmrig-cmdline", description="a miner", user=user, status=status,
                    actions=[Action("stop", "pid 42", "pending")], strike=True)


def counter(name: str, **labels) -> float:
    return metrics.HUB_REPORTS.labels(**labels)._value.get() if name == "reports" else \
        metrics.HUB_REPORT_ERRORS._value.get()


def test_an_incident_arrives_when_detected_and_again_when_done(service, make_reporter):
    reporter = make_reporter()
    reporter.start()
    found = incident()
    reporter.listen(found)
    wait_until(lambda: found.id in service.taken, what="the incident taken")
    found.status, found.actions[0].outcome = "done", "done"
    reporter.listen(found)
    wait_until(lambda: service.taken[found.id]["status"] == "done", what="the done version")

    request = service.requests[-1]
    assert request["headers"]["Authorization"] == "token report-token"
    assert request["body"]["source"] == "server" and request["body"]["node"] == "node-a"
    assert request["body"]["incidents"][0] == json.loads(json.dumps(found.to_dict()))
    assert len(reporter.queue) == 0
    assert reporter.status()["standing"] == {"strikes": 0, "strike_limit": 3, "banned": False}


def test_while_the_service_is_down_incidents_wait_and_arrive_once_it_is_up(service, make_reporter):
    service.down()
    reporter = make_reporter()
    reporter.start()
    errors_before = counter("errors")
    first, second = incident(), incident()
    reporter.listen(first)
    reporter.listen(second)
    wait_until(lambda: reporter.failures >= 2, what="failed attempts")  # retried, backing off
    assert len(reporter.queue) == 2 and not service.taken
    assert counter("errors") >= errors_before + 2
    assert "ConnectionRefused" in reporter.status()["last_error"]

    service.up()
    wait_until(lambda: {first.id, second.id} <= set(service.taken), what="delivery after the outage")
    assert len(service.requests) == 1  # one batch
    wait_until(lambda: len(reporter.queue) == 0 and reporter.failures == 0, what="an empty queue")


def test_a_restart_with_incidents_queued_delivers_them_after_the_restart(service, make_reporter):
    service.down()
    before = make_reporter()
    before.start()
    queued = [incident() for _ in range(3)]
    for found in queued:
        before.listen(found)
    wait_until(lambda: before.failures >= 1, what="a failed attempt")
    before.stop(timeout=10)
    before.queue.close()

    service.up()
    after = make_reporter()  # a new process would open the same file
    assert len(after.queue) == 3
    after.start()
    wait_until(lambda: {i.id for i in queued} <= set(service.taken), what="delivery after restart")


def test_a_full_queue_drops_the_oldest_and_counts_it(service, make_reporter, caplog):
    service.down()
    reporter = make_reporter(limit=3)
    dropped_before = counter("reports", outcome="dropped")
    found = [incident() for _ in range(5)]
    for one in found:
        reporter.listen(one)
    assert [row[1] for row in reporter.queue.oldest(10)] == [i.id for i in found[2:]]
    assert reporter.status()["dropped"] == 2
    assert counter("reports", outcome="dropped") == dropped_before + 2
    assert f"dropped the oldest, incident {found[0].id}" in caplog.text

    service.up()
    reporter.start()
    wait_until(lambda: len(service.taken) == 3, what="the three newest delivered")
    assert set(service.taken) == {i.id for i in found[2:]}


def test_a_refusal_is_not_retried_and_is_counted(service, make_reporter, caplog):
    service.mode = "403"
    reporter = make_reporter()
    refused_before = counter("reports", outcome="refused")
    reporter.start()
    refused = incident()
    reporter.listen(refused)
    wait_until(lambda: reporter.status()["refused"] == 1, what="the refusal")
    assert len(reporter.queue) == 0
    assert counter("reports", outcome="refused") == refused_before + 1
    assert "the hub refused 1 incident(s)" in caplog.text and "HTTP 403" in caplog.text

    service.mode = "ok"
    later = incident()
    reporter.listen(later)
    wait_until(lambda: later.id in service.taken, what="the next incident")
    assert refused.id not in service.taken
    assert len(service.requests) == 2  # the refused batch was never sent again


def test_a_malformed_incident_is_refused_alone_and_the_rest_of_its_batch_taken(
        service, make_reporter):
    service.down()
    reporter = make_reporter()
    good = [incident(), incident()]
    reporter.listen(good[0])
    reporter.queue.put("malformed", '{"id": 5}')  # what a 400 would answer
    reporter.listen(good[1])
    service.up()
    reporter.start()
    wait_until(lambda: {i.id for i in good} <= set(service.taken), what="the good ones taken")
    wait_until(lambda: reporter.status()["refused"] == 1 and len(reporter.queue) == 0,
               what="the malformed one refused")
    assert "malformed" not in service.taken and reporter.status()["sent"] == 2


def test_a_hanging_service_never_holds_up_the_recorder(service, make_reporter, tmp_path):
    from colab_guard.act.policy import Policy
    from colab_guard.record.database import IncidentDatabase, IncidentStore
    from colab_guard.settings import Settings

    service.mode = "hang"
    reporter = make_reporter(timeout=30)
    reporter.start()
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'incidents.sqlite'}")
    recorder = Recorder(IncidentStore(IncidentDatabase(settings.database_url)), Policy(settings),
                        settings)
    recorder.acting_listeners.append(reporter.listen)
    recorder.listeners.append(reporter.listen)
    first = incident()
    recorder.begin(first, "stop")
    wait_until(lambda: service.requests, what="a request that hangs")
    started = time.monotonic()
    for _ in range(20):  # twenty incidents, while the sender waits on the service
        one = incident()
        recorder.begin(one, "stop")
    # A recorder that waited on the hung service would take its timeout (30 s) per incident.
    assert time.monotonic() - started < 10.0
    assert len(reporter.queue) == 21 and len(service.requests) == 1

    service.release()
    service.mode = "ok"
    wait_until(lambda: len(service.taken) == 21, timeout=30, what="everything delivered")


@pytest.mark.parametrize("url, message", [
    ("ftp://hub/x/", "is not an http:// or https:// base URL"),
    ("http:///services/colab-guard/", "is not an http:// or https:// base URL"),
    ("http://user:pw@hub/", "no query, fragment or credentials"),
    ("http://hub:99999/", "Port out of range"),
])
def test_a_bad_hub_url_is_refused_naming_the_setting(url, message):
    with pytest.raises(TraitError) as caught:
        ColabGuard(hub_url=url)
    assert "ColabGuard.hub_url" in str(caught.value) and message in str(caught.value)


def test_the_hub_url_gets_its_final_slash_and_defaults_from_the_environment(monkeypatch):
    assert ColabGuard(hub_url="http://hub:8081/services/colab-guard").hub_url == \
        "http://hub:8081/services/colab-guard/"
    monkeypatch.setenv("COLAB_GUARD_HUB_URL", "http://127.0.0.1:10101/services/colab-guard/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "the-servers-token")
    guard = ColabGuard()
    assert guard.hub_url == "http://127.0.0.1:10101/services/colab-guard/"
    assert guard.hub_api_token == "the-servers-token"
    monkeypatch.setenv("COLAB_GUARD_HUB_URL", "not a url")
    with pytest.raises(TraitError, match=r"\$COLAB_GUARD_HUB_URL"):
        ColabGuard().check_environment()


def guarded_server(folder, service) -> GuardedServer:
    """A guarded server configured as JupyterHub would configure it: by the environment."""
    server = GuardedServer({"sample_interval": 0.5, "stop_grace": 1.0, "cell_checks": False},
                           folder=folder)
    server.env.update(COLAB_GUARD_HUB_URL=service.url, JUPYTERHUB_API_TOKEN=service.token)
    return server


def test_a_server_reports_a_stopped_miner_with_its_own_token_even_after_a_restart(
        service, pool, tmp_path):
    """A real guarded server, a real miner: the miner is stopped while the service hangs (the
    guard waits for nothing); the server is stopped with the incident still queued, and once
    it is back its incident reaches the service with the server's token."""
    service.mode = "hang"
    with guarded_server(tmp_path / "server", service) as server:
        status = server.api("GET", "colab-guard/api/status")
        assert status["reporting"]["enabled"] and status["reporting"]["queued"] == 0
        kernel_id, client = server.start_kernel()
        try:
            argv = [PYTHON, str(STANDINS / "miner.py"), "-o", f"stratum+tcp://127.0.0.1:{pool}",
                    "-u", WALLET]
            client.execute(f"import subprocess\np = subprocess.Popen({argv!r})\n")
            done = wait_until(lambda: [i for i in server.incidents(kernel_id)
                                       if i["status"] == "done"], timeout=60, what="the incident")
            assert done[0]["category"] == "crypto-mining"
            wait_until(lambda: gone(done[0]["evidence"]["processes"][0]["pid"]),
                       what="the miner stopped")
            ticks = server.api("GET", "colab-guard/api/status")["ticks"]
            wait_until(lambda: server.api("GET", "colab-guard/api/status")["ticks"] > ticks + 2,
                       what="ticks going on while the service hangs")
            assert server.api("GET", "colab-guard/api/status")["reporting"]["queued"] == 1
        finally:
            client.stop_channels()
    # The server is gone with its incident queued; the hung request ends in a 503.
    service.mode = "ok"
    service.release()
    assert done[0]["id"] not in service.taken
    sent_before = len(service.requests)

    with guarded_server(tmp_path / "server", service) as server:
        wait_until(lambda: service.taken.get(done[0]["id"], {}).get("status") == "done",
                   timeout=60, what="the done incident at the service after the restart")
        # The user appeals in JupyterLab: the appeal reaches the hub too.
        answer = server.api("POST", f"colab-guard/api/incidents/{done[0]['id']}/appeal",
                            {"text": "A test of my own"})
        assert answer["hub"] == {"forwarded": True}
        assert service.appeals[done[0]["id"]] == "A test of my own"
    assert len(service.requests) > sent_before
    assert all(r["headers"]["Authorization"] == f"token {service.token}"
               for r in service.requests)
    taken = service.taken[done[0]["id"]]
    assert taken["user"] == done[0]["user"] and taken["strike"] is True
    assert {r["body"]["source"] for r in service.requests} == {"server"}
    with sqlite3.connect(tmp_path / "server" / "hub-reports.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 0


def test_an_appeal_goes_to_the_hub_after_its_incident(service, make_reporter):
    """An appeal of an incident still queued (the service was down): the incident is sent
    first, then the appeal; with the service down, the appeal says it was not forwarded."""
    service.down()
    reporter = make_reporter()
    reporter.start()
    first = incident()
    reporter.listen(first)
    down = reporter.appeal(first.id, "It was my own load test.")
    assert down["forwarded"] is False and "cannot be reached" in down["error"]
    service.up()
    assert reporter.appeal(first.id, "It was my own load test.") == {"forwarded": True}
    assert first.id in service.taken
    assert service.appeals[first.id] == "It was my own load test."
    unknown = reporter.appeal("no-such-incident", "?")
    assert unknown["forwarded"] is False and "404" in unknown["error"]


def test_a_hub_url_without_a_token_is_refused(tmp_path):
    from colab_guard.record.reporter import build_reporter
    from colab_guard.settings import Settings

    settings = Settings(hub_url="http://127.0.0.1:1/", hub_api_token="",
                        database_url=f"sqlite:///{tmp_path / 'incidents.sqlite'}")
    with pytest.raises(ValueError, match="no hub_api_token"):
        build_reporter(settings, "server")
    assert build_reporter(settings.replace(hub_url=""), "server") is None


def test_a_wrong_token_is_refused_with_a_hint_and_not_retried(service, tmp_path, caplog):
    queue = ReportQueue(tmp_path / "hub-reports.sqlite", 100)
    reporter = HubReporter(service.url, "not-the-token", queue, "watcher", backoff=0.05)
    reporter.start()
    try:
        reporter.listen(incident())
        wait_until(lambda: reporter.status()["refused"] == 1, what="the refusal")
    finally:
        reporter.stop(timeout=10)
    assert "HTTP 401" in caplog.text and "custom:colab-guard:report-any" in caplog.text
    assert len(service.requests) == 1 and len(queue) == 0
