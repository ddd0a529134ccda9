"""The hub service with a real JupyterHub: reports checked against the hub's tokens, strikes
hub-wide, servers stopped and spawns refused at the limit, appeals, bans, pages, metrics.

One hub for the module (tests/hub_harness.py): configurable-http-proxy, the service managed
by the hub through ``configure(c)``, two Unix users of the tests' own whose single-user
servers run as them (LocalProcessSpawner), and a hub admin. The reports are sent as the
reporters send them: with the running server's own token (its JUPYTERHUB_API_TOKEN), and
with the node watchers' token. The tests run in order: A reaches the limit only after the
report checks and the package incident.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.hub_harness import (POSTGRES_URL, Hub, add_user, call, can_run_a_hub, empty_postgres,
                               remove_user)

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(can_run_a_hub() is not None, reason=str(can_run_a_hub()))]

ALICE, BOB, ADMIN = "cg-hub-alice", "cg-hub-bob", "cg-hub-admin"
MESSAGE = "The platform's message."


@pytest.fixture(scope="module")
def hub():
    for name in (ALICE, BOB):
        add_user(name)
    settings = {"strike_limit": 3, "warning_message": MESSAGE}
    if POSTGRES_URL:  # CI: the service on PostgreSQL (test_hub_database.py checks both)
        settings["db_url"] = empty_postgres(POSTGRES_URL)
    running = Hub(ADMIN, settings)
    try:
        running.start()
        running.create_users(ALICE, BOB)
        for name in (ALICE, BOB):
            assert running.spawn(name).status in (201, 202)
        for name in (ALICE, BOB):
            running.wait_ready(name)
        yield running
    except BaseException:
        print(running.log()[-6000:])
        raise
    finally:
        running.stop()
        for name in (ALICE, BOB):
            remove_user(name)


@pytest.fixture(scope="module")
def tokens(hub):
    return {"alice-server": hub.server_token(ALICE), "bob-server": hub.server_token(BOB),
            "alice": hub.token_for(ALICE), "bob": hub.token_for(BOB),
            "admin": hub.token_for(ADMIN), "watcher": hub.watcher_token}


def incident(n: int, user: str, strike: bool = True, package=None,
             cmdline: str = "./xmrig -o stratum+tcp://127.0.0.1:3333") -> dict:
    return {"id": f"{user}-{n}", "kernel_id": "k-1", "user": user, "category": "crypto-mining",
            "severity": "high", "signature": "mining-stratum-url", "status": "done",
            "description": "A Stratum pool URL.", "strike": strike, "dry_run": False,
            "time": datetime.now(timezone.utc).isoformat(),
            "summary": "crypto-mining: xmrig (pid 42)",
            "actions": [{"action": "record", "target": "incident log", "outcome": "done"},
                        {"action": "interrupt", "target": "kernel", "outcome": "done"}],
            "evidence": {"processes": [{"pid": 42, "name": "xmrig", "cmdline": cmdline}]},
            "package": package}


def report(*incidents, source: str = "server") -> dict:
    return {"source": source, "node": "node-1", "incidents": list(incidents)}


def ids(hub: Hub, token: str, **query) -> set[str]:
    path = "api/incidents" + ("?" + "&".join(f"{k}={v}" for k, v in query.items())
                              if query else "")
    response = hub.service("GET", path, token)
    assert response.status == 200, response.text
    return {i["id"] for i in response.json["incidents"]}


def test_reports_are_checked_against_the_hubs_tokens(hub, tokens):
    forged = hub.service("POST", "api/reports", tokens["alice-server"],
                         report(incident(90, ALICE), incident(91, BOB)))
    assert forged.status == 403 and BOB in forged.json["message"]
    unscoped = hub.token_for(ALICE, ["read:users:name!user"])
    refused = hub.service("POST", "api/reports", unscoped, report(incident(92, ALICE)))
    assert refused.status == 403 and "custom:colab-guard:report" in refused.json["message"]
    posing = hub.service("POST", "api/reports", tokens["alice-server"],
                         report(incident(94, ALICE), source="watcher"))
    assert posing.status == 403 and "report-any" in posing.json["message"]
    assert hub.service("POST", "api/reports", None, report(incident(93, ALICE))).status == 401
    assert hub.service("POST", "api/reports", "not-a-token",
                       report(incident(93, ALICE))).status == 401
    malformed = hub.service("POST", "api/reports", tokens["alice-server"],
                            {"source": "server", "incidents": [{"id": "x", "user": ALICE}]})
    assert malformed.status == 400 and "incidents[0].category" in malformed.json["message"]
    assert not ids(hub, tokens["admin"]) & {f"{ALICE}-90", f"{BOB}-91", f"{ALICE}-92",
                                            f"{ALICE}-94"}

    # as the server's guard sends it: to COLAB_GUARD_HUB_URL, the service's own address
    reporter_url = hub.server_env(ALICE)["COLAB_GUARD_HUB_URL"]
    assert reporter_url == f"{hub.service_url}/services/colab-guard/"
    taken = call("POST", f"{reporter_url}api/reports", tokens["alice-server"],
                 report(incident(1, ALICE, strike=False)))
    assert taken.status == 200, taken.text
    assert taken.json == {"taken": [f"{ALICE}-1"], "strikes": 0, "strike_limit": 3,
                          "banned": False}
    # the watchers' token may report for anyone
    assert hub.service("POST", "api/reports", tokens["watcher"],
                       report(incident(2, BOB, strike=False), source="watcher")).status == 200


def test_an_incident_from_an_installed_package_counts_no_strike_and_is_grouped(hub, tokens):
    package = {"name": "ultralytics", "version": "8.3.41",
               "path": "/home/cg-hub-alice/env/lib/python3.11/site-packages/ultralytics/x.py"}
    for n in (10, 11, 12, 13):  # more than the limit: none counts
        response = hub.service("POST", "api/reports", tokens["watcher"],
                               report(incident(n, ALICE, package=package), source="watcher"))
        assert response.status == 200, response.text
    standing = hub.service("GET", "api/standing", tokens["alice"]).json
    assert standing == {"user": ALICE, "strikes": 0, "strike_limit": 3, "banned": False,
                        "reason": None}
    assert hub.server(ALICE)["ready"]
    packages = hub.service("GET", "api/packages", tokens["admin"]).json["packages"]
    assert [(p["name"], p["version"], p["incidents"], p["users"]) for p in packages] == \
        [("ultralytics", "8.3.41", 4, 1)]
    page = hub.service("GET", "admin", tokens["admin"])
    assert page.status == 200
    packages_table = page.text.split('id="packages"')[1].split("</table>")[0]
    assert "ultralytics" in packages_table and "8.3.41" in packages_table


def test_the_pages_show_evidence_as_text(hub, tokens):
    script = "<script>alert('pwned')</script>"
    response = hub.service("POST", "api/reports", tokens["bob-server"],
                           report(incident(5, BOB, strike=False, cmdline=f"./miner {script}")))
    assert response.status == 200, response.text
    for token, page in ((tokens["admin"], "admin"), (tokens["bob"], "")):
        shown = hub.service("GET", page, token)
        assert shown.status == 200
        assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in shown.text
        assert "<script>" not in shown.text
    bobs_page = hub.service("GET", "", tokens["bob"]).text
    assert f"{BOB}-5" in bobs_page and f"{ALICE}-" not in bobs_page


def test_review_needs_the_scope_or_a_hub_admin(hub, tokens):
    assert hub.service("GET", "api/packages", tokens["bob"]).status == 403
    assert hub.service("GET", "admin", tokens["bob"]).status == 403
    assert hub.service("GET", f"api/incidents?user={ALICE}", tokens["bob"]).status == 403
    assert hub.service("POST", f"api/users/{ALICE}/clear", tokens["bob"], {}).status == 403
    assert hub.service("GET", f"api/standing?user={ALICE}", tokens["bob"]).status == 403
    # the service's own token (the spawn gate's) reviews through its role's scope
    assert hub.service("GET", "api/packages", tokens["watcher"]).status == 403


def browser(hub: Hub, user: str):
    """A session logged in to the hub as ``user`` (DummyAuthenticator), as a browser's."""
    import requests

    session = requests.Session()
    session.get(f"{hub.url}/hub/login")
    response = session.post(f"{hub.url}/hub/login?next=%2Fhub%2Fhome",
                            data={"username": user, "password": "any",
                                  "_xsrf": session.cookies.get("_xsrf")})
    assert response.status_code == 200, response.text[-2000:]
    return session


def _xsrf(page: str) -> str:
    return re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)


def test_the_pages_log_in_through_the_hub_and_their_forms_need_the_xsrf_token(hub, tokens):
    bob = browser(hub, BOB)
    page = bob.get(hub.base)  # through the hub's OAuth, without a confirmation page
    assert page.status_code == 200 and page.url == hub.base
    assert [r.status_code for r in page.history] == [302, 302, 302]
    assert f"{BOB}-5" in page.text
    assert bob.post(hub.base, data={"incident": f"{BOB}-5", "text": "no token"}
                    ).status_code == 403
    appealed = bob.post(hub.base, data={"_xsrf": _xsrf(page.text), "incident": f"{BOB}-5",
                                        "text": "That was <b>my</b> own test."})
    assert appealed.status_code == 200
    assert "“That was &lt;b&gt;my&lt;/b&gt; own test.” — pending" in appealed.text
    assert bob.get(f"{hub.base}admin").status_code == 403

    admin = browser(hub, ADMIN)
    review = admin.get(f"{hub.base}admin")
    assert review.status_code == 200 and "Incidents of all users" in review.text
    [appeal] = hub.service("GET", f"api/appeals?user={BOB}", tokens["admin"]).json["appeals"]
    resolved = admin.post(f"{hub.base}admin", data={
        "_xsrf": _xsrf(review.text), "do": "rejected", "appeal": appeal["id"],
        "reply": "It ran a miner."})
    assert resolved.status_code == 200
    [appeal] = hub.service("GET", f"api/appeals?user={BOB}", tokens["admin"]).json["appeals"]
    assert (appeal["status"], appeal["resolved_by"], appeal["reply"]) == \
        ("rejected", ADMIN, "It ran a miner.")


def test_at_the_limit_the_users_server_stops_and_spawns_are_refused_until_an_appeal(
        hub, tokens):
    for n in (20, 21, 22):
        response = hub.service("POST", "api/reports", tokens["alice-server"],
                               report(incident(n, ALICE)))
        assert response.status == 200, response.text
    assert (response.json["strikes"], response.json["banned"]) == (3, True)
    hub.wait_stopped(ALICE)

    refused = hub.spawn(ALICE)
    assert refused.status == 403, refused.text
    assert refused.json["message"].startswith(MESSAGE)
    assert "3 strikes (crypto-mining)" in refused.json["message"]
    assert hub.server(ALICE) is None

    assert hub.server(BOB)["ready"]  # B untouched throughout
    assert hub.service("GET", "api/standing", tokens["bob"]).json["strikes"] == 0
    assert {f"{ALICE}-{n}" for n in (1, 10, 20, 21, 22)} <= ids(hub, tokens["admin"], user=ALICE)
    assert not any(i.startswith(ALICE) for i in ids(hub, tokens["bob"]))
    assert ids(hub, tokens["alice"]) >= {f"{ALICE}-20", f"{ALICE}-21", f"{ALICE}-22"}

    appeal = hub.service("POST", f"api/incidents/{ALICE}-21/appeal", tokens["alice"],
                         {"text": "That was my lab's sanctioned benchmark."})
    assert appeal.status == 201, appeal.text
    assert hub.service("POST", f"api/appeals/{appeal.json['id']}", tokens["bob"],
                       {"status": "accepted"}).status == 403
    accepted = hub.service("POST", f"api/appeals/{appeal.json['id']}", tokens["admin"],
                           {"status": "accepted", "reply": "Agreed."})
    assert accepted.status == 200 and accepted.json["status"] == "accepted"
    assert hub.service("GET", "api/standing", tokens["alice"]).json["strikes"] == 2

    assert hub.spawn(ALICE).status in (201, 202)
    hub.wait_ready(ALICE)


def test_an_admin_bans_and_unbans_a_user(hub, tokens):
    banned = hub.service("POST", f"api/users/{BOB}/ban", tokens["admin"],
                         {"reason": "shared the account"})
    assert banned.status == 200 and banned.json["banned"], banned.text
    hub.wait_stopped(BOB)
    refused = hub.spawn(BOB)
    assert refused.status == 403 and "shared the account" in refused.json["message"]
    bans = hub.service("GET", "api/bans", tokens["admin"]).json["bans"]
    assert [b["user"] for b in bans] == [BOB]

    lifted = hub.service("DELETE", f"api/users/{BOB}/ban", tokens["admin"])
    assert lifted.status == 200 and not lifted.json["banned"]
    assert hub.spawn(BOB).status in (201, 202)
    hub.wait_ready(BOB)
    assert hub.server(ALICE)["ready"]


def test_clearing_strikes(hub, tokens):
    for n in (30, 31):
        assert hub.service("POST", "api/reports", tokens["watcher"],
                           report(incident(n, BOB), source="watcher")).status == 200
    assert hub.service("GET", f"api/standing?user={BOB}", tokens["admin"]).json["strikes"] == 2
    cleared = hub.service("POST", f"api/users/{BOB}/clear", tokens["admin"], {"note": "ok"})
    assert cleared.status == 200 and cleared.json["strikes"] == 0


def test_an_admin_marks_a_package_run_on_purpose_to_count(hub, tokens):
    """A forbidden tool from an index (pproxy), run on purpose: no strike until a reviewer
    marks the package, then its incidents count (and again not, once unmarked)."""
    proxy = {"name": "pproxy", "version": "2.7.9", "path": f"/home/{BOB}/env/bin/pproxy"}
    before = hub.service("GET", f"api/standing?user={BOB}", tokens["admin"]).json["strikes"]
    assert hub.service("POST", "api/reports", tokens["bob-server"],
                       report(incident(40, BOB, strike=False, package=proxy))).status == 200
    assert hub.service("GET", "api/standing", tokens["bob"]).json["strikes"] == before
    verdict = {"name": "pproxy", "version": "2.7.9", "counts": True, "note": "a proxy"}
    assert hub.service("POST", "api/packages/verdict", tokens["bob"], verdict).status == 403
    marked = hub.service("POST", "api/packages/verdict", tokens["admin"], verdict)
    assert marked.status == 200 and marked.json["counts"] is True, marked.text
    assert hub.service("GET", "api/standing", tokens["bob"]).json["strikes"] == before + 1
    page = hub.service("GET", "admin", tokens["admin"]).text
    assert f"count (marked by {ADMIN})" in page.split('id="packages"')[1].split("</table>")[0]
    assert hub.service("POST", "api/packages/verdict", tokens["admin"],
                       {**verdict, "counts": "yes"}).status == 400
    hub.service("POST", "api/packages/verdict", tokens["admin"], {**verdict, "counts": False})
    assert hub.service("GET", "api/standing", tokens["bob"]).json["strikes"] == before


def test_the_metrics(hub, tokens):
    text = hub.service("GET", "metrics", None).text
    metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert metrics['colab_guard_hub_incidents_total{action="interrupt",category="crypto-mining"}'] \
        >= 12
    assert metrics['colab_guard_hub_reports_refused_total{reason="user"}'] >= 1
    assert metrics['colab_guard_hub_reports_refused_total{reason="scope"}'] >= 1
    assert metrics['colab_guard_hub_reports_refused_total{reason="malformed"}'] >= 1
    assert metrics['colab_guard_hub_reports_refused_total{reason="token"}'] >= 2
    assert metrics["colab_guard_hub_strikes"] == 2  # Alice's two left after her appeal
    assert metrics["colab_guard_hub_bans"] == 0
    assert metrics["colab_guard_hub_appeals_open"] == 0


def test_while_the_service_restarts_spawns_are_refused_and_nothing_is_lost(hub, tokens):
    """The gate fails closed; the hub restarts its managed service, which finds its data."""
    import psutil

    from tests.harness import wait_until

    assert hub.hub("DELETE", f"users/{BOB}/server").status in (202, 204)
    hub.wait_stopped(BOB)
    [service] = [p for p in psutil.Process(hub.process.pid).children()
                 if "colab_guard.hub" in p.cmdline()]
    service.kill()

    def dead() -> bool:  # the hub reaps it only when it polls it next: a zombie till then
        try:
            return service.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(dead, 30, 0.1, "the service killed")
    refused = hub.spawn(BOB)
    assert refused.status == 424, refused.text
    assert "cannot be reached" in refused.json["message"]

    # JupyterHub polls its managed services (every 30 s) and starts a dead one again
    wait_until(lambda: hub.service("GET", "metrics", None).status == 200, 120, 0.5,
               "colab-guard's service started again")
    assert hub.service("GET", "api/standing", tokens["alice"]).json["strikes"] == 2
    assert f"{ALICE}-22" in ids(hub, tokens["admin"], user=ALICE)


def test_a_real_miner_on_a_users_own_server_is_stopped_reported_and_counted_hub_wide(
        hub, tokens, pool):
    """The whole path, nothing posted by the test: Alice's guarded server (spawned by the hub,
    running as her) stops a real miner started in her kernel and reports it to the service
    with its own token; the hub counts it (her third strike), stops her server and refuses
    her next spawn. (Last in the module: Alice ends banned.)"""
    import json
    import pwd

    from jupyter_client import BlockingKernelClient

    from tests.harness import wait_until
    from tests.hub_harness import ROOT, python_for_users

    assert hub.service("GET", "api/standing", tokens["alice"]).json["strikes"] == 2
    hub.wait_ready(ALICE)
    kernel = call("POST", f"{hub.url}/user/{ALICE}/api/kernels", tokens["alice"],
                  {"name": "python3"})
    assert kernel.status == 201, kernel.text
    home = Path(pwd.getpwnam(ALICE).pw_dir)
    connection = wait_until(
        lambda: next(home.glob(f"**/runtime/kernel-{kernel.json['id']}.json"), None), 60, 0.2,
        "the kernel's connection file")
    # The miner's arguments come from a file, so that the cell check does not refuse the cell
    # first: the process itself is what Alice's guard must stop.
    folder = Path(tempfile.mkdtemp(prefix="cg-hub-argv-"))  # one Alice can read
    folder.chmod(0o755)
    argv = folder / "argv.json"
    argv.write_text(json.dumps([python_for_users(), str(ROOT / "tests" / "standins" / "miner.py"),
                                "-o", f"stratum+tcp://127.0.0.1:{pool}", "-u", "x" * 95]))
    argv.chmod(0o644)
    client = BlockingKernelClient()
    client.load_connection_file(str(connection))
    client.start_channels(hb=False)
    try:
        client.wait_for_ready(timeout=120)
        client.execute(f"import json, subprocess\n"
                       f"p = subprocess.Popen(json.load(open({str(argv)!r})))\n")
        found = wait_until(
            lambda: [i for i in hub.service("GET", f"api/incidents?user={ALICE}",
                                            tokens["admin"]).json["incidents"]
                     if i["category"] == "crypto-mining" and i["kernel_id"] == kernel.json["id"]],
            120, 0.5, "Alice's own server's report of the miner at the hub")
    finally:
        client.stop_channels()
        shutil.rmtree(folder)
    assert found[0]["strike"] is True and not found[0].get("package")
    hub.wait_stopped(ALICE)  # her third strike: the hub stopped her server
    standing = hub.service("GET", "api/standing", tokens["alice"]).json
    assert (standing["strikes"], standing["banned"]) == (3, True)
    refused = hub.spawn(ALICE)
    assert refused.status == 403 and refused.json["message"].startswith(MESSAGE)
