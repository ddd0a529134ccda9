"""Several users on one test server: a header names the user, GuardAuthorizer names the admin.

Configure with ``users_config(guard_config)`` in a test module's ``jp_server_config``;
call the API with ``api(jp_fetch, "alice", ...)``. A request without the header is
unauthenticated.
"""

from __future__ import annotations

import json

from jupyter_server.auth.identity import IdentityProvider, User

OWNER, OTHER, ADMIN = "alice", "bob", "root-admin"


class HeaderIdentityProvider(IdentityProvider):
    """The user named by the X-Test-User header (tests only)."""

    def get_user(self, handler):
        name = handler.request.headers.get("X-Test-User")
        if not name:
            return None
        handler._token_authenticated = True  # no XSRF cookie dance for API calls
        return User(username=name)


def users_config(guard_config: dict) -> dict:
    guard_config["user_name"] = OWNER  # the server's user owns its incidents
    return {
        "ServerApp": {
            "jpserver_extensions": {"colab_guard": True},
            "identity_provider_class": HeaderIdentityProvider,
            "authorizer_class": "colab_guard.auth.GuardAuthorizer",
        },
        "GuardAuthorizer": {"admin_users": [ADMIN]},
        "ColabGuard": guard_config,
    }


async def api(jp_fetch, user: str | None, *path: str, method: str = "GET", body=None,
              params=None) -> tuple[int, dict]:
    """Call /colab-guard/api/... as ``user`` (None: unauthenticated); (status, JSON body)."""
    headers = {"X-Test-User": user} if user else {"Authorization": ""}
    response = await jp_fetch("colab-guard", "api", *path, method=method, headers=headers,
                              params=params, raise_error=False,
                              body=json.dumps(body) if body is not None else None)
    return response.code, json.loads(response.body or b"null")


def enforced_incident(user: str = OWNER, category: str = "crypto-mining", dry_run: bool = False,
                      **fields):
    """An incident as the monitor records one after interrupting the kernel."""
    from colab_guard.record.incident import Action, Incident

    outcome = "would" if dry_run else "done"
    return Incident(kernel_id=fields.pop("kernel_id", "k-1"), category=category, severity="high",
                    signature="mining-stratum-url", description="A Stratum pool URL.", user=user,
                    evidence={"processes": [{"pid": 4242, "name": "xmrig", "cmdline":
                                             "./xmrig -o stratum+tcp://127.0.0.1:3333"}]},
                    actions=[Action("record", "incident log", "done"),
                             Action("interrupt", "kernel", outcome)],
                    dry_run=dry_run, strike=fields.pop("strike", not dry_run), status="done", **fields)
