"""``from colab_guard.hub import configure; configure(c)``: the one line in jupyterhub_config.py.

It sets up, on JupyterHub's own mechanisms:

- the managed service ``colab-guard`` (``python -m colab_guard.hub``, at
  ``ColabGuardHub.service_url``, proxied at ``/services/colab-guard/``), with its API token,
  OAuth for its pages without a confirmation page, and the role ``colab-guard-service``
  (stop users' servers: ``admin:servers``, ``read:users``; review; report for anyone);
- the custom scopes of the reporting contract: ``custom:colab-guard:report`` (given, filtered
  to their own user, to every user and to the ``server`` role, so each single-user server's
  token reports for its own user only), ``custom:colab-guard:report-any`` (node watchers)
  and ``custom:colab-guard:review`` (the role ``colab-guard-reviewer``, held by the group
  ``colab-guard-reviewers``; hub admins review too, ``ColabGuardHub.admins_review``);
- ``access:services!service=colab-guard`` for every user (their own page);
- ``COLAB_GUARD_HUB_URL`` in the single-user servers' environment;
- the spawn gate: a ``Spawner.pre_spawn_hook`` that asks the service for the user's standing
  and refuses the spawn with the platform's message when the user is banned or at the
  strike limit (and, by default, when the service cannot be reached: see
  ``ColabGuardHub.spawn_gate_fail_open``);
- with ``ColabGuardHub.watcher_api_token`` set: an API-only service ``colab-guard-watcher``
  with that token and the scope ``custom:colab-guard:report-any``, for the node watchers.

Every setting is a trait of ``ColabGuardHub`` (``c.ColabGuardHub.strike_limit = 5``): set
them before the ``configure(c)`` line, or pass them to it (``configure(c, strike_limit=5)``).
The service reads the same jupyterhub_config.py (configure passes it ``--config``).
"""

from __future__ import annotations

import inspect
import json
import os
import secrets
import sys
from pathlib import Path

from .app import REPORT_ANY_SCOPE, REPORT_SCOPE, REVIEW_SCOPE, SERVICE_NAME, ColabGuardHub

SERVICE_ROLE = "colab-guard-service"
REVIEWER_ROLE = "colab-guard-reviewer"
REVIEWER_GROUP = "colab-guard-reviewers"
WATCHER_SERVICE = "colab-guard-watcher"
WATCHER_ROLE = "colab-guard-watcher"
ACCESS_SCOPE = f"access:services!service={SERVICE_NAME}"
#: The default ``server`` role of JupyterHub 5 and 6, which configure extends.
SERVER_ROLE_SCOPES = ["users:activity!user", "access:servers!server"]
#: The service's environment variable with configure's settings (JSON).
SETTINGS_ENV = "COLAB_GUARD_HUB_SETTINGS"
#: Environment variable with a fixed token for the service (else one is made per hub start).
TOKEN_ENV = "COLAB_GUARD_HUB_SERVICE_TOKEN"

CUSTOM_SCOPES = {
    REPORT_SCOPE: {"description": "Report colab-guard incidents (for the token's own user, "
                                  "with the !user filter)."},
    REPORT_ANY_SCOPE: {"description": "Report colab-guard incidents of any user (node "
                                      "watchers)."},
    REVIEW_SCOPE: {"description": "Review every user's colab-guard incidents, resolve "
                                  "appeals, clear strikes, ban and unban."},
}


def configure(c, **settings) -> ColabGuardHub:
    """Set up colab-guard's hub service, roles, scopes, servers' environment and spawn gate
    in a jupyterhub_config.py's ``c``; ``settings``: ColabGuardHub traits. Returns the
    settings used."""
    for name, value in settings.items():
        setattr(c.ColabGuardHub, name, value)
    hub = ColabGuardHub(config=c)
    token = os.environ.get(TOKEN_ENV) or secrets.token_hex(32)
    c.JupyterHub.services = _without(_value(c.JupyterHub, "services", []), SERVICE_NAME) + [
        _service(hub, token, _caller_file(), _settings_json(c))]
    _custom_scopes(c)
    _roles(c, hub)
    environment = dict(_value(c.Spawner, "environment", {}))
    environment["COLAB_GUARD_HUB_URL"] = hub.reporter_url
    c.Spawner.environment = environment
    previous = _value(c.Spawner, "pre_spawn_hook", None)
    c.Spawner.pre_spawn_hook = SpawnGate(token, previous)
    return hub


def _service(hub: ColabGuardHub, token: str, config_file: str | None, settings: str) -> dict:
    command = [sys.executable, "-m", "colab_guard.hub"]
    if config_file:
        command.append(f"--config={config_file}")
    return {"name": SERVICE_NAME, "url": hub.service_url, "command": command,
            "environment": {SETTINGS_ENV: settings},
            "api_token": token, "oauth_no_confirm": True,
            "oauth_client_allowed_scopes": [REVIEW_SCOPE], "display": True,
            "info": {"description": "colab-guard: incidents, strikes, bans and appeals"}}


def _custom_scopes(c) -> None:
    scopes = dict(_value(c.JupyterHub, "custom_scopes", {}))
    scopes.update(CUSTOM_SCOPES)
    c.JupyterHub.custom_scopes = scopes


def _roles(c, hub: ColabGuardHub) -> None:
    import jupyterhub

    roles = [dict(r) for r in _value(c.JupyterHub, "load_roles", [])]
    own = {SERVICE_ROLE, REVIEWER_ROLE, WATCHER_ROLE}
    roles = [r for r in roles if r.get("name") not in own]
    server = _role(roles, "server", SERVER_ROLE_SCOPES)
    server["scopes"] = sorted({*server["scopes"], f"{REPORT_SCOPE}!user"})
    user_scopes = {f"{REPORT_SCOPE}!user", ACCESS_SCOPE}
    if jupyterhub.version_info >= (6,):
        c.JupyterHub.extra_user_scopes = set(_value(c.JupyterHub, "extra_user_scopes", set())) \
            | user_scopes
    else:  # JupyterHub 5: the user role, redefined with its default scope
        user = _role(roles, "user", ["self"])
        user["scopes"] = sorted({*user["scopes"], *user_scopes})
    roles.append({"name": SERVICE_ROLE, "description": "colab-guard's service: stops the "
                  "servers of users at the strike limit or banned",
                  "scopes": ["admin:servers", "read:users", REVIEW_SCOPE, REPORT_ANY_SCOPE],
                  "services": [SERVICE_NAME]})
    roles.append({"name": REVIEWER_ROLE, "description": "Review colab-guard's incidents",
                  "scopes": [REVIEW_SCOPE, ACCESS_SCOPE], "groups": [REVIEWER_GROUP]})
    groups = dict(_value(c.JupyterHub, "load_groups", {}))
    groups.setdefault(REVIEWER_GROUP, {"users": []})
    c.JupyterHub.load_groups = groups
    if hub.watcher_api_token:
        services = _without(c.JupyterHub.services, WATCHER_SERVICE)
        c.JupyterHub.services = services + [{"name": WATCHER_SERVICE,
                                             "api_token": hub.watcher_api_token,
                                             "display": False}]
        roles.append({"name": WATCHER_ROLE, "description": "colab-guard's node watchers: "
                      "report any user's incidents", "scopes": [REPORT_ANY_SCOPE],
                      "services": [WATCHER_SERVICE]})
    c.JupyterHub.load_roles = roles


def _role(roles: list[dict], name: str, default_scopes: list[str]) -> dict:
    for role in roles:
        if role.get("name") == name:
            role.setdefault("scopes", list(default_scopes))
            return role
    role = {"name": name, "scopes": list(default_scopes)}
    roles.append(role)
    return role


class SpawnGate:
    """``Spawner.pre_spawn_hook``: refuse the spawn of a user who may not run servers.

    Asks the service's ``api/standing`` with the service's token. The refusal is an HTTP
    403 whose message (the platform's message and why) JupyterHub shows on the spawn page
    and returns from its REST API. When the service cannot be reached it refuses with a
    424 saying so, or lets the spawn go on (``ColabGuardHub.spawn_gate_fail_open``)."""

    def __init__(self, token: str, previous=None):
        self.token = token
        self.previous = previous

    async def __call__(self, spawner) -> None:
        from urllib.parse import quote

        from tornado.httpclient import AsyncHTTPClient

        if self.previous is not None:
            result = self.previous(spawner)
            if inspect.isawaitable(result):
                await result
        hub = ColabGuardHub(config=spawner.config)
        name = spawner.user.name
        url = (f"{hub.spawn_gate_url.rstrip('/')}/services/{SERVICE_NAME}/api/standing"
               f"?user={quote(name, safe='')}")
        try:
            response = await AsyncHTTPClient().fetch(
                url, headers={"Authorization": f"token {self.token}"},
                request_timeout=hub.spawn_gate_timeout)
            standing = json.loads(response.body)
        except Exception as err:
            if hub.spawn_gate_fail_open:
                spawner.log.warning("colab-guard's service did not answer (%s): %s's server "
                                    "starts unchecked (spawn_gate_fail_open)", err, name)
                return
            spawner.log.error("colab-guard's service did not answer (%s): %s's server is "
                              "refused (fail closed)", err, name)
            # 424, not 503: JupyterHub counts 5xx spawn failures towards
            # Spawner.consecutive_failure_limit and exits at the limit (Zero to JupyterHub
            # sets one), which a service restart must not cause.
            raise _refusal(424, "New servers are refused while colab-guard's service cannot "
                                "be reached to check your standing. Try again in a minute, "
                                "or ask an admin.") from None
        if standing.get("banned"):
            spawner.log.warning("colab-guard refuses %s's server: %s", name,
                                standing.get("reason"))
            raise _refusal(403, standing.get("reason") or hub.warning_message)


def _refusal(status: int, message: str):
    from tornado.web import HTTPError

    err = HTTPError(status, "%s", message)
    err.jupyterhub_message = message  # what JupyterHub's API and spawn page show
    return err


def _caller_file() -> str | None:
    """The jupyterhub_config.py that called configure (for the service to read too): the
    nearest calling file that traitlets runs as a config file (get_config in its namespace);
    Zero to JupyterHub exec()s hub.extraConfig from its own jupyterhub_config.py."""
    frame = inspect.currentframe()
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if "get_config" in frame.f_globals and path.suffix == ".py" and path.is_file():
            return str(path.resolve())
        frame = frame.f_back
    return None


def _settings_json(c) -> str:
    """The c.ColabGuardHub settings made so far, as JSON, for the service's environment (so
    they reach it also when the config file cannot be found or read)."""
    settings = {k: v for k, v in dict(c.ColabGuardHub).items() if not hasattr(v, "get_value")}
    try:
        return json.dumps(settings)
    except TypeError as err:
        raise ValueError(f"c.ColabGuardHub settings must be plain values: {err}") from None


def _value(section, name: str, default):
    """A config value set earlier in the file, or ``default`` (never a lazy placeholder)."""
    if name in section:
        value = section[name]
        if hasattr(value, "get_value"):  # LazyConfigValue (e.g. from .append on an unset list)
            return value.get_value(type(default)())
        return value
    return default


def _without(services, name: str) -> list[dict]:
    return [s for s in services if s.get("name") != name]
