"""Appeals through the REST API: a real server, its real SQLite store, three users."""

from __future__ import annotations

import pytest

from tests.guard_users import ADMIN, OTHER, OWNER, api, enforced_incident, users_config

APPEAL_KEYS = {"id", "incident_id", "user", "text", "time", "status", "reply"}


@pytest.fixture
def jp_server_config(guard_config):
    return users_config(guard_config)


@pytest.fixture
def guard(jp_serverapp):
    return jp_serverapp.web_app.settings["colab_guard"]


@pytest.fixture
def incident(guard):
    incident = enforced_incident(OWNER)
    assert guard.store.save(incident)
    return incident


async def test_appeal_round_trip_accept_removes_the_strike(jp_fetch, guard, incident):
    assert [s.incident_id for s in guard.store.strikes(OWNER, guard.strike_window)] == [incident.id]

    code, body = await api(jp_fetch, OWNER, "incidents", incident.id, "appeal", method="POST",
                           body={"text": "  It was my course's benchmark, not a miner.  "})
    assert code == 201
    appeal = body["appeal"]
    assert set(appeal) == APPEAL_KEYS
    assert appeal["incident_id"] == incident.id and appeal["user"] == OWNER
    assert appeal["text"] == "It was my course's benchmark, not a miner."
    assert appeal["status"] == "pending" and appeal["reply"] is None

    code, shown = await api(jp_fetch, OWNER, "incidents", incident.id)
    assert code == 200 and shown["appeals"] == [appeal]
    code, listed = await api(jp_fetch, OWNER, "incidents")
    assert listed["incidents"][0]["appeals"] == [appeal]

    code, pending = await api(jp_fetch, ADMIN, "appeals", params={"status": "pending"})
    assert code == 200 and pending["appeals"] == [appeal]

    code, resolved = await api(jp_fetch, ADMIN, "appeals", appeal["id"], "resolve", method="POST",
                               body={"decision": "accept", "reply": "Confirmed with your teacher."})
    assert code == 200
    assert resolved["appeal"]["status"] == "accepted"
    assert resolved["appeal"]["reply"] == "Confirmed with your teacher."
    assert guard.store.strikes(OWNER, guard.strike_window) == []

    code, mine = await api(jp_fetch, OWNER, "appeals")
    assert code == 200 and mine["appeals"] == [resolved["appeal"]]


async def test_rejected_appeal_keeps_the_strike_and_allows_a_new_appeal(jp_fetch, guard, incident):
    code, first = await api(jp_fetch, OWNER, "incidents", incident.id, "appeal", method="POST",
                            body={"text": "please"})
    code, resolved = await api(jp_fetch, ADMIN, "appeals", first["appeal"]["id"], "resolve",
                               method="POST", body={"decision": "reject", "reply": "No."})
    assert code == 200 and resolved["appeal"]["status"] == "rejected"
    assert len(guard.store.strikes(OWNER, guard.strike_window)) == 1
    code, _ = await api(jp_fetch, OWNER, "incidents", incident.id, "appeal", method="POST",
                        body={"text": "please look again"})
    assert code == 201


async def test_one_pending_appeal_per_incident(jp_fetch, incident):
    code, _ = await api(jp_fetch, OWNER, "incidents", incident.id, "appeal", method="POST",
                        body={"text": "first"})
    assert code == 201
    code, body = await api(jp_fetch, OWNER, "incidents", incident.id, "appeal", method="POST",
                           body={"text": "second"})
    assert code == 409 and "pending appeal" in body["message"]


@pytest.mark.parametrize("body, field", [
    ({"text": "   "}, "text"),
    ({"text": "x" * 2001}, "text"),
    ({"text": 42}, "text"),
    ({}, "text"),
    (["not", "an", "object"], "JSON object"),
])
async def test_malformed_appeal_is_a_400_naming_the_field(jp_fetch, incident, body, field):
    code, reply = await api(jp_fetch, OWNER, "incidents", incident.id, "appeal", method="POST",
                            body=body)
    assert code == 400 and field in reply["message"]


async def test_appeal_text_of_2000_characters_is_accepted(jp_fetch, incident):
    code, body = await api(jp_fetch, OWNER, "incidents", incident.id, "appeal", method="POST",
                           body={"text": "y" * 2000})
    assert code == 201 and len(body["appeal"]["text"]) == 2000


async def test_malformed_resolution_is_a_400(jp_fetch, incident):
    code, appeal = await api(jp_fetch, OWNER, "incidents", incident.id, "appeal", method="POST",
                             body={"text": "please"})
    path = ("appeals", appeal["appeal"]["id"], "resolve")
    code, body = await api(jp_fetch, ADMIN, *path, method="POST", body={"decision": "maybe"})
    assert code == 400 and "decision" in body["message"]
    code, body = await api(jp_fetch, ADMIN, *path, method="POST",
                           body={"decision": "accept", "reply": ["no"]})
    assert code == 400 and "reply" in body["message"]


async def test_resolving_twice_is_a_409_and_unknown_ids_404(jp_fetch, incident):
    code, appeal = await api(jp_fetch, OWNER, "incidents", incident.id, "appeal", method="POST",
                             body={"text": "please"})
    path = ("appeals", appeal["appeal"]["id"], "resolve")
    assert (await api(jp_fetch, ADMIN, *path, method="POST", body={"decision": "reject"}))[0] == 200
    assert (await api(jp_fetch, ADMIN, *path, method="POST", body={"decision": "accept"}))[0] == 409
    code, _ = await api(jp_fetch, ADMIN, "appeals", "nope", "resolve", method="POST",
                        body={"decision": "accept"})
    assert code == 404
    code, _ = await api(jp_fetch, OWNER, "incidents", "nope", "appeal", method="POST",
                        body={"text": "x"})
    assert code == 404


# ------------------------------------------------------------ refused


async def test_unauthenticated_requests_are_refused(jp_fetch, incident):
    for path, method, body in [
        (("incidents",), "GET", None),
        (("incidents", incident.id), "GET", None),
        (("incidents", incident.id, "appeal"), "POST", {"text": "x"}),
        (("appeals",), "GET", None),
        (("appeals", "any", "resolve"), "POST", {"decision": "accept"}),
        (("strikes",), "GET", None),
        (("strikes", OWNER, "clear"), "POST", {}),
        (("status",), "GET", None),
    ]:
        code, _ = await api(jp_fetch, None, *path, method=method, body=body)
        assert code == 403, path


async def test_another_user_cannot_see_or_appeal_the_incident(jp_fetch, incident):
    code, _ = await api(jp_fetch, OTHER, "incidents", incident.id)
    assert code == 404
    code, listed = await api(jp_fetch, OTHER, "incidents")
    assert code == 200 and listed["incidents"] == []
    code, listed = await api(jp_fetch, OTHER, "incidents", params={"user": OWNER})
    assert listed["incidents"] == []
    code, _ = await api(jp_fetch, OTHER, "incidents", incident.id, "appeal", method="POST",
                        body={"text": "it was me"})
    assert code == 404


async def test_another_user_does_not_see_the_appeal(jp_fetch, incident):
    await api(jp_fetch, OWNER, "incidents", incident.id, "appeal", method="POST",
              body={"text": "please"})
    code, listed = await api(jp_fetch, OTHER, "appeals")
    assert code == 200 and listed["appeals"] == []
    code, listed = await api(jp_fetch, ADMIN, "appeals")
    assert len(listed["appeals"]) == 1


async def test_only_admins_resolve_appeals(jp_fetch, guard, incident):
    code, appeal = await api(jp_fetch, OWNER, "incidents", incident.id, "appeal", method="POST",
                             body={"text": "please"})
    path = ("appeals", appeal["appeal"]["id"], "resolve")
    for user in (OWNER, OTHER):
        code, body = await api(jp_fetch, user, *path, method="POST", body={"decision": "accept"})
        assert code == 403, user
    assert len(guard.store.strikes(OWNER, guard.strike_window)) == 1
    assert guard.store.get_appeal(appeal["appeal"]["id"]).status == "pending"


async def test_an_admin_cannot_appeal_for_the_user(jp_fetch, incident):
    code, body = await api(jp_fetch, ADMIN, "incidents", incident.id, "appeal", method="POST",
                           body={"text": "on their behalf"})
    assert code == 403 and "own user" in body["message"]


async def test_admin_reads_every_incident(jp_fetch, guard, incident):
    other = enforced_incident(OTHER, category="torrenting")
    guard.store.save(other)
    code, listed = await api(jp_fetch, ADMIN, "incidents")
    assert {i["id"] for i in listed["incidents"]} == {incident.id, other.id}
    code, listed = await api(jp_fetch, ADMIN, "incidents", params={"user": OTHER})
    assert [i["id"] for i in listed["incidents"]] == [other.id]
    code, shown = await api(jp_fetch, ADMIN, "incidents", other.id)
    assert code == 200 and shown["user"] == OTHER


async def test_status_names_the_user_and_their_rights(jp_fetch, guard, incident):
    guard.store.save(enforced_incident(OTHER))
    old = enforced_incident(OWNER, time=guard.started - 60)  # before this server started
    guard.store.save(old)
    code, mine = await api(jp_fetch, OWNER, "status")
    assert code == 200
    assert mine["user"] == OWNER and mine["admin"] is False
    assert mine["incidents_this_session"] == 1
    assert "dry_run" in mine and "warning_message" in mine  # the keys it had before stay
    code, admin = await api(jp_fetch, ADMIN, "status")
    assert admin["admin"] is True and admin["incidents_this_session"] == 2


async def test_an_unknown_category_filter_is_a_400_naming_the_parameter(jp_fetch, guard, incident):
    code, body = await api(jp_fetch, OWNER, "incidents", params={"category": "bogus"})
    assert code == 400
    assert "parameter 'category': unknown category 'bogus'" in body["message"]
    assert "crypto-mining" in body["message"]
    code, body = await api(jp_fetch, OWNER, "incidents", params={"category": incident.category})
    assert code == 200 and [i["id"] for i in body["incidents"]] == [incident.id]
    code, body = await api(jp_fetch, OWNER, "incidents", params={"category": "torrenting"})
    assert code == 200 and body["incidents"] == []


async def test_status_names_the_categories_the_filter_takes(jp_fetch, guard):
    from colab_guard.detect.signatures import BUILTIN_CATEGORIES

    code, status = await api(jp_fetch, OWNER, "status")
    assert code == 200 and set(BUILTIN_CATEGORIES) <= set(status["categories"])
    for category in status["categories"]:
        code, _ = await api(jp_fetch, OWNER, "incidents", params={"category": category})
        assert code == 200
