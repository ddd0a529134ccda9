"""The hub service: a traitlets Application, run by JupyterHub (managed) or on its own.

``python -m colab_guard.hub`` (or ``colab-guard hub``). As a managed service it gets
everything from the environment JupyterHub gives it (``JUPYTERHUB_API_URL``,
``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_SERVICE_URL``, ``JUPYTERHUB_SERVICE_PREFIX``, the
OAuth client); its settings (``c.ColabGuardHub.<name>``) come from the hub's own
``jupyterhub_config.py``, which ``configure(c)`` passes to it (``--config``), so the hub
and its service read one file.
"""

from __future__ import annotations

import json
import logging
import os
from urllib.parse import urlparse

from tornado import ioloop, web
from traitlets import Bool, Float, Int, Unicode, default
from traitlets.config import Application, Config, catch_config_error

from ..settings import DEFAULT_WARNING

SERVICE_NAME = "colab-guard"
DEFAULT_PORT = 10101
#: The scopes of the reporting contract (contract.md).
REPORT_SCOPE = "custom:colab-guard:report"
REPORT_ANY_SCOPE = "custom:colab-guard:report-any"
REVIEW_SCOPE = "custom:colab-guard:review"


class ColabGuardHub(Application):
    """The colab-guard JupyterHub service: incidents, strikes, bans and appeals hub-wide."""

    name = "colab-guard-hub"
    description = __doc__

    config_file = Unicode("", config=True, help=(
        "A Python config file to load (the hub's jupyterhub_config.py: configure(c) passes "
        "it, so c.ColabGuardHub settings are written once)."))

    ip = Unicode(config=True, help=(
        "Address to listen on. Default: the host of JUPYTERHUB_SERVICE_URL, else 127.0.0.1."))

    port = Int(config=True, help=(
        f"Port to listen on. Default: the port of JUPYTERHUB_SERVICE_URL, else {DEFAULT_PORT}."))

    base_url = Unicode(config=True, help=(
        "URL prefix the service answers under. Default: JUPYTERHUB_SERVICE_PREFIX, else "
        f"/services/{SERVICE_NAME}/ (the proxy forwards the whole path)."))

    db_url = Unicode("sqlite:///colab-guard-hub.sqlite", config=True, help=(
        "SQLAlchemy URL of the service's database (JupyterHub's convention): sqlite:///FILE "
        "(relative to the service's working folder) or "
        "postgresql+psycopg://USER:PASSWORD@HOST/DB. Its schema is migrated at start."))

    strike_limit = Int(3, min=0, max=10_000, config=True, help=(
        "Strikes within strike_window after which the user's servers are stopped and new "
        "ones refused (0: never). A strike is an enforced incident that names no installed "
        "package; the same default as the server extension's ColabGuard.strike_limit."))

    strike_window = Float(7 * 24 * 3600.0, min=1, max=10 * 365 * 86400, config=True, help=(
        "Seconds a strike counts against its user (default 7 days)."))

    warning_message = Unicode(DEFAULT_WARNING, config=True, help=(
        "The platform's message, shown first when a spawn is refused."))

    policy_url = Unicode("", config=True, help=(
        "Link to the platform's acceptable-use policy, shown on the pages."))

    stop_servers = Bool(True, config=True, help=(
        "Stop all of a user's servers (through the hub's REST API) when they reach the "
        "strike limit or are banned."))

    admins_review = Bool(True, config=True, help=(
        "Hub admins may review (see all incidents, resolve appeals, clear strikes, ban) "
        "without being given the custom:colab-guard:review scope."))

    spawn_gate_fail_open = Bool(False, config=True, help=(
        "What the spawn gate (in the hub) does when this service cannot be reached: False "
        "refuses the spawn with a message saying so (fail closed: a user at the limit "
        "cannot slip through while the service restarts); True lets it start and logs a "
        "warning."))

    spawn_gate_timeout = Float(10.0, min=0.5, max=120, config=True, help=(
        "Seconds the spawn gate waits for the service's answer."))

    service_url = Unicode(f"http://127.0.0.1:{DEFAULT_PORT}", config=True, help=(
        "Where the managed service listens (configure(c) gives it to JupyterHub as the "
        "service's url; the proxy routes /services/colab-guard/ there)."))

    spawn_gate_url = Unicode(config=True, help=(
        "Where the spawn gate (in the hub's process) reaches the service. Default: "
        "service_url; on Kubernetes, where the service runs in the hub's pod, "
        "http://127.0.0.1:PORT avoids a round trip through the cluster's Service."))

    @default("spawn_gate_url")
    def _default_spawn_gate_url(self):
        return self.service_url

    reporter_url = Unicode(config=True, help=(
        "The base URL reporters send incidents to (COLAB_GUARD_HUB_URL in the single-user "
        "servers' environment; ends in /). Default: service_url + /services/colab-guard/, "
        "the service's direct address, reachable while the proxy restarts."))

    watcher_api_token = Unicode(config=True, help=(
        "An API token for the node watchers (configure(c) then adds the API-only service "
        "colab-guard-watcher with it and the scope custom:colab-guard:report-any). Give "
        "the same token to the watchers (e.g. from a Kubernetes secret). Default: "
        "$COLAB_GUARD_WATCHER_TOKEN, else none (no watcher service)."))

    @default("watcher_api_token")
    def _default_watcher_api_token(self):
        return os.environ.get("COLAB_GUARD_WATCHER_TOKEN", "")

    @default("log_format")
    def _default_log_format(self):
        return "[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s] %(message)s"

    @default("log_level")
    def _default_log_level(self):
        return logging.INFO

    @default("reporter_url")
    def _default_reporter_url(self):
        return f"{self.service_url.rstrip('/')}/services/{SERVICE_NAME}/"

    @default("ip")
    def _default_ip(self):
        return urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "")).hostname or "127.0.0.1"

    @default("port")
    def _default_port(self):
        return urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "")).port or DEFAULT_PORT

    @default("base_url")
    def _default_base_url(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{SERVICE_NAME}/")

    aliases = {"config": "ColabGuardHub.config_file", "port": "ColabGuardHub.port",
               "ip": "ColabGuardHub.ip", "db-url": "ColabGuardHub.db_url",
               "log-level": "Application.log_level"}

    @catch_config_error
    def initialize(self, argv=None) -> None:
        super().initialize(argv)
        settings = os.environ.get("COLAB_GUARD_HUB_SETTINGS")  # from configure(c)
        if settings:
            self.update_config(Config({"ColabGuardHub": json.loads(settings)}))
        if self.config_file:
            self.load_config_file(self.config_file)
        self.update_config(self.cli_config)  # the command line wins
        logging.getLogger("alembic").setLevel(logging.WARNING)

    def make_app(self) -> web.Application:
        from jupyterhub.services.auth import HubOAuth

        from .database import HubDatabase
        from .handlers import handlers
        from .hubapi import HubAPI
        from .metrics import Metrics

        self.db = HubDatabase(self.db_url, self.strike_limit, self.strike_window)
        hub_auth = HubOAuth.instance(parent=self, cache_max_age=60)
        self.hub_api = HubAPI(hub_auth.api_url, hub_auth.api_token, self.log)
        self.metrics = Metrics(self.db)
        base = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        settings = dict(service=self, db=self.db, hub_auth=hub_auth, hub_api=self.hub_api,
                        metrics=self.metrics, base_url=base, cookie_secret=os.urandom(32),
                        template_path=os.path.join(os.path.dirname(__file__), "templates"),
                        log_function=self._log_request)
        return web.Application(handlers(base), **settings)

    def _log_request(self, handler) -> None:
        status = handler.get_status()
        level = logging.INFO if status < 400 else logging.WARNING
        self.log.log(level, "%s %s %s %.1f ms", status, handler.request.method,
                     handler.request.path, 1000 * handler.request.request_time())

    def start(self) -> None:
        app = self.make_app()
        app.listen(self.port, self.ip, xheaders=True)
        self.log.info("colab-guard hub service on http://%s:%s%s (database %s)", self.ip,
                      self.port, self.base_url, _safe_url(self.db_url))
        ioloop.IOLoop.current().start()


def _safe_url(url: str) -> str:
    """The URL without its password, for the log."""
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def main(argv: list[str] | None = None) -> int:
    ColabGuardHub.launch_instance(argv)
    return 0
