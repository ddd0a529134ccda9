"""One offence, one incident, on the paths beyond the user's own server: a kernel that goes
on offending past its interrupt is shut down within the interrupt's incident (monitor.py
``_escalate``), and that holds in the hub's record and standing, and end to end through
the node watcher and the user's server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from colab_guard.hub.database import HubDatabase
from tests.conftest import incidents_in
from tests.harness import wait_until
from tests.standins.hub_service import HubStandin
from tests.test_guard_integration import ctypes_util_find
from tests.test_hub_database import DAY
from tests.test_hub_database import clock, db_url  # noqa: F401 (fixtures)
from tests.test_watch import (  # noqa: F401 (fixtures)
    ALICE, BOB, _alive, users, waits, watching, world,
)
from tests.test_watch_tell import covered_server, python, run_cell  # noqa: F401 (fixtures)

# ---------------------------------------------------------------- the hub


@pytest.fixture
def hub_db(db_url, clock):  # noqa: F811 (fixtures imported above)
    database = HubDatabase(db_url, strike_limit=3, strike_window=7 * DAY, clock=clock)
    yield database
    database.close()


def versions(incident_id: str, user: str) -> dict[str, dict]:
    """The versions of one escalated incident a reporter sends (reporter.py queues each: when
    recorded and when done, for the interrupt, then again for the shutdown carried out in
    it), by name."""
    def version(status: str, *actions: tuple[str, str], escalated: bool = False) -> dict:
        evidence = {"processes": [{"pid": 42, "is_kernel": True}]}
        if escalated:
            evidence["escalation"] = "the kernel went on within 60 s of its interrupt"
        return {"id": incident_id, "user": user, "category": "crypto-mining",
                "severity": "high", "signature": "mining-library-loaded", "status": status,
                "strike": True, "dry_run": False, "package": None, "evidence": evidence,
                "actions": [{"action": "record", "target": "incident log", "outcome": "done"},
                            *({"action": a, "target": "kernel", "outcome": o}
                              for a, o in actions)]}

    return {"interrupting": version("acting", ("interrupt", "pending")),
            "interrupted": version("done", ("interrupt", "done")),
            "shutting down": version("acting", ("interrupt", "done"), ("shutdown", "pending"),
                                     escalated=True),
            "shut down": version("done", ("interrupt", "done"), ("shutdown", "done"),
                                 escalated=True)}


ORDERS = list(itertools.permutations(["interrupting", "interrupted", "shutting down",
                                      "shut down"]))


@pytest.mark.parametrize("source", ["watcher", "server"])
def test_an_escalated_incident_is_one_incident_and_one_strike_in_any_order_of_arrival(
        hub_db, clock, source):
    """Reported with the interrupt, then again with the shutdown appended: one incident, its
    strongest action the shutdown, one strike, in any of the 24 orders the four versions can
    arrive in (a retried batch, an appeal sending the queued version from another thread:
    a late older version must not overwrite the newer)."""
    for n, order in enumerate(ORDERS):
        user = f"user{n}"
        sent = versions(f"inc-{n}", user)
        for name in order:
            hub_db.upsert(sent[name], source, "colab-guard-watcher", "node-1")
            clock.now += 0.5
        [stored] = hub_db.incidents(user=user)
        kernel_steps = [(a["action"], a["outcome"]) for a in stored["actions"]
                        if a["target"] == "kernel"]
        assert (stored["id"], stored["action"], stored["status"], kernel_steps,
                "escalation" in stored["evidence"]) == (
            f"inc-{n}", "shutdown", "done", [("interrupt", "done"), ("shutdown", "done")],
            True), order
        assert hub_db.standing(user).strikes == 1, order
    assert hub_db.totals()["strikes"] == len(ORDERS)


def test_a_later_version_of_the_same_progress_still_replaces_the_stored_one(hub_db):
    """What is kept is the furthest version, not the first: a version as far along (a
    coalesced incident listing more offenders while it acts) replaces the stored one."""
    first = versions("inc-c", "carol")["interrupting"]
    more = {**first, "evidence": {"processes": [{"pid": 42}, {"pid": 43}]}}
    hub_db.upsert(first, "watcher", "colab-guard-watcher", "node-1")
    assert hub_db.upsert(more, "watcher", "colab-guard-watcher", "node-1") == "updated"
    assert [p["pid"] for p in hub_db.incident("inc-c")["evidence"]["processes"]] == [42, 43]


def test_two_versions_taken_at_once_are_compared_in_turn_on_postgresql(hub_db, db_url):
    """The service takes reports in worker threads: an older version read while the newer
    is being written waits for it (the row is locked), then is compared with it and not
    kept. (SQLite writes one transaction at a time.)"""
    from sqlalchemy import create_engine, text

    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's row locks")
    sent = versions("inc-race", "dave")
    hub_db.upsert(sent["interrupting"], "watcher", "colab-guard-watcher", "node-1")
    engine = create_engine(db_url)
    try:
        with engine.connect() as writer:  # the newer version's transaction, under way
            writer.execute(text("SELECT id FROM incidents WHERE id = 'inc-race' FOR UPDATE"))
            late = threading.Thread(target=hub_db.upsert, args=(
                sent["interrupted"], "watcher", "colab-guard-watcher", "node-1"))
            late.start()
            wait_until(lambda: writer.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
                "pid <> pg_backend_pid()")).scalar() == 1, timeout=20,
                what="the older version waiting for the row")
            writer.execute(text("UPDATE incidents SET action = 'shutdown', status = 'done', "
                                "data = CAST(:data AS JSON) WHERE id = 'inc-race'"),
                           {"data": json.dumps(sent["shut down"])})
            writer.commit()
            late.join(20)
    finally:
        engine.dispose()
    stored = hub_db.incident("inc-race")
    assert (stored["action"], stored["status"], _kernel_steps(stored["actions"])) == (
        "shutdown", "done", [("interrupt", "done"), ("shutdown", "done")])
    assert hub_db.standing("dave").strikes == 1


# ---------------------------------------------------------------- the node watcher, for real

as_root = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/sbin/useradd").exists(),
                             reason="the node watcher's tests create Unix users: root only")


@pytest.fixture(scope="module")
def hub_standin():
    hub = HubStandin(token="watcher-hub-token").start()
    yield hub
    hub.close()


@pytest.fixture(scope="module")
def enforcing_watcher(users, hub_standin, tmp_path_factory):
    """The watcher as the enforcer of its users' kernels (their servers covered: they act on
    nothing), reading loaded libraries often, reporting to a hub (the stand-in) with a
    root-only token file."""
    folder = tmp_path_factory.mktemp("escalation-watcher")
    token = folder / "hub-token"
    token.write_text(hub_standin.token)
    token.chmod(0o600)
    yield from watching(folder, [ALICE, BOB], libraries_refresh=0.2,
                        hub_url=hub_standin.url, hub_api_token_file=str(token))


class EventBus:
    """What JupyterLab hears of the user's server (its event bus), in a thread of its own."""

    def __init__(self, server):
        self.heard: list[dict] = []
        self._stop, self._ready = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._listen(server),),
                                        daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the server's event bus not subscribed"

    async def _listen(self, server) -> None:
        from tornado.websocket import websocket_connect

        base = server.url.replace("http", "ws", 1)
        bus = await websocket_connect(f"{base}/api/events/subscribe?token={server.token}")
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    message = await asyncio.wait_for(bus.read_message(), 0.5)
                except asyncio.TimeoutError:
                    continue
                if message is None:
                    return
                self.heard.append(json.loads(message))
        finally:
            bus.close()

    def incidents(self, kernel_id: str) -> list[dict]:
        return [e for e in self.heard if e.get("kernel_id") == kernel_id and
                e.get("schema_id", "").endswith("colab_guard/incident/v1")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _kernel_steps(actions: list) -> list[tuple[str, str]]:
    return [(a["action"], a["outcome"]) for a in actions if a["target"] == "kernel"]


def _strongest(actions: list) -> str:
    from colab_guard.vocabulary import strongest

    return strongest("record", *(a["action"] for a in actions))


@as_root
def test_a_kernel_that_goes_on_past_its_watchers_interrupt_is_shut_down_in_one_incident(
        enforcing_watcher, users, world, python, hub_standin, tmp_path):
    """A real kernel of the user's real Jupyter server (covered: the watcher enforces) loads
    a library under RandomX's name: the watcher interrupts it, and shuts it down when the
    library is still loaded past the interrupt. One offence: the watcher records ONE
    incident (its database and its log) listing the interrupt then the shutdown, one strike,
    saying why; the user's server lists that one incident with the shutdown, JupyterLab is
    told it twice under the same id (interrupt, then shutdown); the hub is sent versions of
    that one id only, and the real hub database keeps one incident and one strike whatever
    order they arrive in."""
    watcher = enforcing_watcher
    fake = world / "librandomx.so"  # a real shared object under a mining library's name
    shutil.copy(ctypes_util_find("m"), fake)
    fake.chmod(0o644)
    server = covered_server(watcher, users[ALICE], world / "alice-escalation", python)
    client, bus = None, EventBus(server)
    try:
        kernel_id, client = server.start_kernel()
        waits(watcher, lambda: watcher.knows_kernel(kernel_id), "the kernel found")
        reply, _ = run_cell(client, f"import ctypes, time\nlib = ctypes.CDLL({str(fake)!r})\n"
                                    "time.sleep(60)\n", timeout=90)
        assert (reply["status"], reply.get("ename")) == ("error", "KeyboardInterrupt"), reply

        def shut_down():
            found = [i for i in watcher.store.query() if i.kernel_id == kernel_id]
            return found if found and found[0].status == "done" and \
                found[0].actions[-1].action == "shutdown" else None

        # The library stays loaded: the kernel is shut down, in the interrupt's incident.
        [incident] = waits(watcher, shut_down, "the kernel shut down in its incident", 60)
        record = incident.to_dict()
        assert _kernel_steps(record["actions"]) == [("interrupt", "done"), ("shutdown", "done")]
        assert incident.strike and "escalation" in incident.evidence, record
        assert incident.signature == "mining-library-loaded" and incident.user == ALICE
        [kernel_process] = [p for p in incident.evidence["processes"] if p["is_kernel"]]
        assert not _alive(kernel_process["pid"])
        # Its log too: one incident for the kernel, its last line the shutdown's.
        logged = incidents_in(watcher.folder / "incidents.jsonl")
        assert [(i["id"], _kernel_steps(i["actions"]), i["strike"]) for i in logged
                if i["kernel_id"] == kernel_id] == [
            (incident.id, [("interrupt", "done"), ("shutdown", "done")], True)]

        # The user's server: the watcher's one incident, its strongest action the shutdown,
        # nothing of its own.
        def listed_shut_down():
            listed = server.api("GET", f"colab-guard/api/incidents?kernel_id={kernel_id}")[
                "incidents"]
            return listed if listed and _strongest(listed[0]["actions"]) == "shutdown" else None

        listed = waits(watcher, listed_shut_down, "the server lists the shutdown")
        assert [(i["id"], i["recorded_by"], _kernel_steps(i["actions"]), i["strike"])
                for i in listed] == [(incident.id, "node watcher",
                                      [("interrupt", "done"), ("shutdown", "done")], True)]
        assert server.incidents(kernel_id) == []
        assert server.api("GET", "colab-guard/api/status")["incidents_this_session"] == 1
        # JupyterLab: told under the one id, the interrupt then the shutdown (it updates its
        # notification rather than counting a second incident).
        told = waits(watcher, lambda: (lambda e: len(e) >= 2 and e)(bus.incidents(kernel_id)),
                     "JupyterLab told of the shutdown")
        assert [(e["incident_id"], e["action"]) for e in told] == [
            (incident.id, "interrupt"), (incident.id, "shutdown")]

        # The hub: the versions of one id (the last sent: the shutdown, done), and the real
        # hub database keeps one incident, one strike, in the order sent and reversed.
        sent = waits(watcher, lambda: (lambda v: v and v[-1]["status"] == "done" and
                                       v[-1]["actions"][-1]["action"] == "shutdown" and v)(
            _sent_for(hub_standin, kernel_id)), "the shutdown reported to the hub")
        assert {v["id"] for v in sent} == {incident.id}
        assert [r["body"]["source"] for r in hub_standin.requests] == \
            ["watcher"] * len(hub_standin.requests)
        for n, order in enumerate([sent, sent[::-1]]):
            hub = HubDatabase(f"sqlite:///{tmp_path / f'hub-{n}.sqlite'}")
            try:
                for version in order:
                    hub.upsert(version, "watcher", "colab-guard-watcher", "node-1")
                [stored] = hub.incidents(user=ALICE)
                assert (stored["id"], stored["action"], stored["status"]) == (
                    incident.id, "shutdown", "done")
                assert hub.standing(ALICE).strikes == 1
            finally:
                hub.close()
    finally:
        bus.close()
        if client is not None:
            client.stop_channels()
        server.stop()


def _sent_for(hub: HubStandin, kernel_id: str) -> list[dict]:
    """Every version of the kernel's incidents the hub was sent, in the order sent."""
    return [i for r in list(hub.requests) for i in r["body"]["incidents"]
            if i.get("kernel_id") == kernel_id]


# ---------------------------------------------------------------- the watcher's socket, for real


class _Covered:
    """The watcher's kernels, as its socket asks of them: every uid's kernels watched."""

    @staticmethod
    def watches_uid(uid: int) -> bool:
        return True


async def _until(predicate, what: str, timeout: float = 10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (found := predicate()):
        assert loop.time() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)
    return found


def test_a_server_started_again_after_the_interrupt_is_told_the_shutdown_carried_out_in_it(
        tmp_path):
    """The watcher's socket (watch/tell.py) and the server's link (watcher_link.py), real, on
    a real Unix socket, the incident recorded by the watcher's recorder into a real store.
    The user's server is told the interrupt, then is gone (killed, restarted) while the
    kernel is shut down within that incident: the server started again is told the shutdown
    on its return (it is new to the user), not only listed."""
    import pwd

    from colab_guard.act.policy import Policy
    from colab_guard.record.database import IncidentDatabase, IncidentStore
    from colab_guard.record.incident import Action, Incident
    from colab_guard.record.recorder import Recorder
    from colab_guard.record.store import IncidentLog
    from colab_guard.settings import Settings
    from colab_guard.watch.tell import UserChannel
    from colab_guard.watcher_link import WatcherLink

    if os.geteuid() != 0:
        pytest.skip("the server's link trusts a socket of root's only")
    user = pwd.getpwuid(0).pw_name
    settings = Settings()
    store = IncidentStore(IncidentDatabase(f"sqlite:///{tmp_path / 'watcher.sqlite'}"),
                          IncidentLog(tmp_path / "incidents.jsonl"))
    recorder = Recorder(store, Policy(settings), settings)
    seen_file = tmp_path / "server" / "watcher-told.json"

    async def scenario():
        channel = UserChannel(str(tmp_path / "run" / "watch.sock"), store, _Covered(), settings)
        await channel.start()
        recorder.acting_listeners.append(channel.acting)
        recorder.listeners.append(channel.done)
        told: list[tuple] = []

        async def server() -> WatcherLink:
            link = WatcherLink(str(channel.path), seen_file,
                               lambda *args: told.append((args[0].id, args[1], args[2], args[5])))
            link.start()
            await _until(lambda: link.covered and not link._catching_up, "the link covered")
            return link

        first = await server()
        incident = Incident("k1", "crypto-mining", "high", "mining-library-loaded", "d", user,
                            actions=[Action("interrupt", "kernel", "pending")])
        recorder.begin(incident, "interrupt")
        incident.actions[0].outcome = "done"
        await recorder.finish(incident, "interrupt")
        await _until(lambda: (incident.id, "interrupt", "done", True) in told, "the interrupt")
        await first.stop()  # the server is gone
        # The shutdown, within the interrupt's incident (as monitor.py's _escalate does it).
        incident.actions.append(Action("shutdown", "kernel", "pending"))
        incident.evidence["escalation"] = "the kernel went on within 60 s of its interrupt"
        incident.status = "acting"
        recorder.begin(incident, "shutdown")
        incident.actions[-1].outcome = "done"
        await recorder.finish(incident, "shutdown", again=True)
        del told[:]
        again = await server()  # started again: the catch-up
        try:
            assert told == [(incident.id, "shutdown", "done", True)]
            assert [(i["id"], i["action"]) for i in again.status()["told_on_return"]] == [
                (incident.id, "shutdown")]
            [(listed, action)] = again.incidents.values()
            assert (listed.id, action, [a.action for a in listed.actions]) == (
                incident.id, "shutdown", ["interrupt", "shutdown"])
        finally:
            await again.stop()
            await channel.stop()

    asyncio.run(scenario())
    assert [(i.id, i.strike) for i in store.query()] == [(store.query()[0].id, True)]


def test_an_older_incident_shut_down_after_a_newer_one_was_told_does_not_tell_that_one_again(
        tmp_path):
    """Kernel 1 interrupted, kernel 2's incident told, then kernel 1 shut down within its
    older incident: told (a stronger action), and what was told stays told for the next
    server (what it remembers does not go back to the older incident's time)."""
    from colab_guard.record.incident import Incident
    from colab_guard.watcher_link import WatcherLink

    seen_file = tmp_path / "told.json"
    link = WatcherLink("/nonexistent.sock", seen_file, lambda *args: None)
    first = Incident("k1", "crypto-mining", "high", "s", "d", "alice", time=link._told_until + 1)
    second = Incident("k2", "crypto-mining", "high", "s", "d", "alice", time=link._told_until + 2)

    def tell(receiver: WatcherLink, incident: Incident, action: str) -> None:
        receiver._received({"type": "incident", "phase": "done", "action": action,
                            "incident": incident.to_dict(), "message": "m", "policy_url": ""})

    tell(link, first, "interrupt")
    tell(link, second, "interrupt")
    tell(link, first, "shutdown")
    told = []
    again = WatcherLink("/nonexistent.sock", seen_file, lambda *args: told.append(args))
    again._received({"type": "welcome", "covered": True, "user": "alice", "uid": 60001})
    for incident, action in ((second, "interrupt"), (first, "shutdown")):  # the catch-up
        tell(again, incident, action)
    again._received({"type": "caught_up", "count": 2})
    assert [(a[0].id, a[1], a[5]) for a in told] == [(second.id, "interrupt", False),
                                                     (first.id, "shutdown", False)]
    assert again.status()["told_on_return"] == []
