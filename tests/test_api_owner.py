"""A plain server (token login, no identities: each browser session is anonymous) has one user,
its owner: requests act as ``ColabGuard.user_name``, so the owner sees and appeals their incidents."""

from __future__ import annotations

import json

from tests.guard_users import enforced_incident


async def test_token_login_acts_as_the_servers_owner(jp_fetch, guard):
    incident = enforced_incident(guard.user_name)
    assert guard.store.save(incident)

    status = json.loads((await jp_fetch("colab-guard", "api", "status")).body)
    assert status["user"] == guard.user_name

    listed = json.loads((await jp_fetch("colab-guard", "api", "incidents")).body)["incidents"]
    assert [i["id"] for i in listed] == [incident.id]

    response = await jp_fetch("colab-guard", "api", "incidents", incident.id, "appeal",
                              method="POST", body=json.dumps({"text": "my course's benchmark"}))
    assert response.code == 201
    assert json.loads(response.body)["appeal"]["user"] == guard.user_name
