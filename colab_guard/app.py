"""The server extension: configuration, wiring and start/stop.

The guard's parts know nothing of this class: they get a frozen ``Settings``
(settings.py), the ``JupyterKernels`` adapter (kernels.py), a ``Policy``, a
``Recorder`` and the engine. This class reads the configuration, refuses a bad
one (the server stops, or with ``fail_closed=False`` runs unguarded and says
so), builds the parts, and starts and stops them with the server.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from tornado import web
from traitlets import TraitError, Unicode

from .act.policy import Policy
from .channel import KernelChannel
from .detect.engine import Engine
from .detect.signatures import SignatureError, load_signatures
from .handlers import GuardAPI, default_handlers
from .kernels import JupyterKernels
from .monitor import Monitor
from .observe.processes import kernel_environment
from .record import metrics
from .record.database import DatabaseError, IncidentDatabase, IncidentStore
from .record.events import INCIDENT_SCHEMA, INCIDENT_SCHEMA_ID, incident_event
from .record.recorder import Recorder
from .record.reporter import HubReporter, build_reporter
from .record.store import IncidentLog, IncidentLogError
from .settings import GuardTraits, Settings
from .settings_origin import SettingSource, setting_sources, summary
from .vocabulary import CATEGORIES
from .watch.protocol import DEFAULT_SOCKET
from .watcher_link import WatcherLink


class GuardStartError(RuntimeError):
    """The guard cannot start as configured; the message says which setting or file."""


class ColabGuard(ExtensionApp, GuardTraits):
    name = "colab_guard"
    description = "Watch every kernel, stop forbidden use, tell the user, record the incident."
    load_other_extensions = True

    watcher_socket = Unicode(DEFAULT_SOCKET, config=True, help=(
        "The node watcher's socket (colab-guard watch, as root). When a watcher listening "
        "there as root watches this server's user, it checks and stops the kernels' "
        "processes and records those incidents, and this server tells the user (the cell, "
        "JupyterLab, the REST API) instead of sampling processes itself. Empty: no watcher."))

    # ------------------------------------------------------------ wiring

    settings_: Settings | None = None  # the settings in force, once validated
    unguarded_reason: str = ""  # why the guard is off, when the server runs unguarded
    monitor: Monitor | None = None
    channel: KernelChannel | None = None
    store: IncidentStore | None = None
    engine: Engine | None = None
    policy: Policy | None = None
    recorder: Recorder | None = None
    reporter: HubReporter | None = None  # reports incidents to the hub service (hub_url)
    watcher: WatcherLink | None = None
    #: where each guard setting came from (settings_origin.py)
    sources: list[SettingSource] = []
    started: float = 0.0  # when the guard started: incidents_this_session counts from here

    def _link_jupyter_server_extension(self, serverapp):
        """Read the configuration; a bad value is refused whole, never half applied."""
        try:
            super()._link_jupyter_server_extension(serverapp)
            self._say_where_settings_come_from(serverapp)
            self._refuse_unknown_settings()
            self.check_environment()
        except TraitError as err:
            self._linked = True  # linking itself worked: the error is ours to report
            self._cannot_start(f"a bad setting: {err}", err)

    def _say_where_settings_come_from(self, serverapp) -> None:
        try:
            cli = serverapp.cli_config.copy()
            cli.merge(self.cli_config)
            self.sources = setting_sources(list(serverapp.config_file_paths), cli)
        except Exception:
            self.log.exception("colab-guard: could not tell where its settings come from")
            return
        mine = summary(self.sources)
        if mine:
            self.log.warning("colab-guard: settings this server's user can change: %s. They "
                             "apply to this server only; a node watcher ignores them", mine)

    def _refuse_unknown_settings(self) -> None:
        known = set(self.trait_names(config=True))
        unknown = sorted(set(self.config.get("ColabGuard", {})) - known)
        if unknown:
            raise TraitError(f"ColabGuard.{unknown[0]} is not a setting of colab-guard "
                             f"(unknown: {', '.join(unknown)}); see `jupyter server "
                             "--help-all` or the README's configuration reference")

    def _cannot_start(self, why: str, cause: BaseException | None = None) -> None:
        """Stop the server (fail_closed), or run it unguarded and say so everywhere."""
        # Read as written: the traits may have been rolled back with the bad value.
        configs = (self.config, getattr(getattr(self, "serverapp", None), "config", None))
        fail_closed = next((c["ColabGuard"]["fail_closed"] for c in configs if c is not None
                            and "fail_closed" in c.get("ColabGuard", {})), True)
        self.log.critical("colab-guard cannot start: %s", why)
        if fail_closed is not False:
            self.log.critical("colab-guard: stopping the server rather than running it "
                              "unguarded (set ColabGuard.fail_closed=False to allow that)")
            raise SystemExit(1) from cause
        self.unguarded_reason = why
        self.log.critical("colab-guard: THE SERVER RUNS UNGUARDED (ColabGuard.fail_closed = "
                          "False): %s", why)

    def initialize_settings(self):
        self.settings["colab_guard"] = self
        self.settings["colab_guard_api"] = GuardAPI(
            settings=Settings.from_traits(self), store=None, status=self.status, started=time.time())
        if self.unguarded_reason:
            return
        try:
            self._build()
        except (GuardStartError, SignatureError, IncidentLogError, DatabaseError) as err:
            self._cannot_start(str(err), err)
            self.monitor = self.channel = None

    def _build(self) -> None:
        settings = self.settings_ = Settings.from_traits(self)
        rules = load_signatures(settings.signature_paths)
        try:
            self.rules = rules.disabling(settings.disabled_signatures,
                                         "ColabGuard.disabled_signatures", self.log)
        except ValueError as err:
            raise GuardStartError(str(err)) from None
        self.engine = Engine(self.rules, log=self.log)
        # A short busy timeout: a writer holding the database must not delay an action for long.
        database = IncidentDatabase(settings.database_url, log=self.log, recover=True,
                                    busy_timeout=2.0)
        self.store = IncidentStore(database, IncidentLog(settings.incident_log, log=self.log))
        self.started = time.time()
        server = self.serverapp
        server.event_logger.register_event_schema(INCIDENT_SCHEMA)
        self.kernels = JupyterKernels(server.kernel_manager, server.session_manager)
        self.policy = Policy(settings)
        self.recorder = Recorder(self.store, self.policy, settings, emit=self._emit, log=self.log)
        self._build_reporter(settings, database)
        self.monitor = Monitor(settings, self.kernels, self.engine, self.policy, self.recorder,
                               log=self.log)
        self.channel = KernelChannel(settings, self.rules, self.monitor, self.policy,
                                     self.recorder, log=self.log) \
            if settings.kernel_hook and settings.enabled else None
        self.kernels.on_start(self._kernel_starting)
        if self.watcher_socket:
            self.watcher = WatcherLink(
                self.watcher_socket, Path(jupyter_data_dir()) / "colab_guard" /
                "watcher-told.json", self._watcher_incident, log=self.log)
            self.monitor.deferred = lambda: self.watcher.covered
        self.settings["colab_guard_api"] = GuardAPI(
            settings, self.store, self.status, self.started, self.categories,
            self._watcher_incidents, self.watcher.appeal if self.watcher else None,
            hub_appeal=self.reporter.appeal if self.reporter is not None else None)
        self.log.info("colab-guard: %d signatures, %d allow rules, sampling every %gs%s; "
                      "incidents in %s", len(self.rules.signatures), len(self.rules.allow),
                      settings.sample_interval, " (DRY RUN: nothing will be stopped)"
                      if settings.dry_run else "", settings.incident_log)

    def _build_reporter(self, settings: Settings, database: IncidentDatabase) -> None:
        """Incidents to the hub service, if hub_url is set (sent when detected and when done)."""
        try:
            self.reporter = build_reporter(settings, "server", log=self.log)
        except ValueError as err:
            raise GuardStartError(f"ColabGuard.hub_url: {err}") from None
        if self.reporter is None:
            return
        self.recorder.acting_listeners.append(self.reporter.listen)
        self.recorder.listeners.append(self.reporter.listen)
        for incident_id in database.recovered:  # left unfinished by a stop: the hub learns it
            self.reporter.listen(database.get(incident_id))
        self.log.info("colab-guard: incidents are reported to the hub at %s", settings.hub_url)

    def _emit(self, data: dict) -> None:
        self.serverapp.event_logger.emit(schema_id=INCIDENT_SCHEMA_ID, data=data)

    def initialize_handlers(self):
        self.handlers.extend(default_handlers)

    async def _start_jupyter_server_extension(self, serverapp):
        if self.unguarded_reason:
            return
        if self.reporter is not None:
            self.reporter.start()
        if self.watcher is not None:
            self.watcher.start()
        if self.enabled and self.monitor is not None:
            self.monitor.start()
            if self.channel is not None:
                await self.channel.start()
        else:
            self.log.warning("colab-guard is disabled (ColabGuard.enabled = False): kernels are "
                             "not watched")

    async def stop_extension(self):
        if self.watcher is not None:
            await self.watcher.stop()
        if self.channel is not None:
            await self.channel.stop()
        if self.monitor is not None:
            await self.monitor.stop()
        if self.store is not None:
            self.store.flush()
        if self.reporter is not None:
            self.reporter.stop(timeout=1.0)  # what is still queued is sent after the restart

    # ------------------------------------------------------------ the node watcher

    def _watcher_incident(self, incident, action: str, phase: str, message: str,
                          policy_url: str, new: bool) -> None:
        """The node watcher recorded an incident of this user: tell, never record again.
        The kernel hears of it as soon as it is recorded (before the interrupt that it
        explains); JupyterLab once it is complete."""
        if not new:
            return  # told by an earlier server of this user; listed in the REST API only
        if self.channel is not None:
            self.channel.tell(incident, action, message, policy_url)
        if phase == "done":
            self._emit(incident_event(incident, action, message, policy_url))

    def _watcher_incidents(self) -> list:
        return [i for i, _ in self.watcher.incidents.values()] if self.watcher else []

    # ------------------------------------------------------------ kernels

    def _kernel_starting(self, kernel_id: str, env: dict) -> None:
        """Refuse a struck user; mark the kernel's environment so that its processes stay
        attributed to it, and give it the channel's address and token."""
        self._refuse_struck_user()
        env.update(kernel_environment(kernel_id, env or None))
        if self.channel is not None:  # kept across restarts with the launch kwargs
            env.update(self.channel.environment(kernel_id))

    def _refuse_struck_user(self) -> None:
        """Too many strikes: the kernel start fails with the platform message and why."""
        settings = self.settings_
        if not settings.enabled or self.store is None or not settings.strike_limit:
            return
        strikes = self.store.strikes(settings.user_name, settings.strike_window)
        if len(strikes) < settings.strike_limit:
            return
        categories = ", ".join(sorted({s.category for s in strikes}))
        metrics.KERNEL_STARTS_REFUSED.inc()
        raise web.HTTPError(403, (
            f"{settings.warning_message} New kernels are refused: {len(strikes)} strikes "
            f"({categories}) within {_duration(settings.strike_window)}, the limit is "
            f"{settings.strike_limit}. You can appeal an incident; an admin can clear the "
            "strikes."))

    def categories(self) -> list[str]:
        """Built-in, declared by the signature files, and named in ``actions``."""
        declared = list(getattr(self.rules, "categories", None) or [])
        return list(dict.fromkeys([*CATEGORIES, *declared, *self.settings_.actions]))

    def status(self) -> dict:
        """The guard's state, for the status API and the JupyterLab status bar."""
        if self.settings_ is None or self.unguarded_reason:
            return {"enabled": False, "guarded": False, **self._sources_status(),
                    "unguarded_reason": self.unguarded_reason or "not started",
                    "kernels_monitored": 0, "signatures": 0, "ticks": 0, "strikes": 0,
                    "strike_limit": 0, "gpu": {"available": False, "reason": "unguarded"}}
        settings, monitor = self.settings_, self.monitor
        return {
            "enabled": settings.enabled,
            "guarded": settings.enabled,
            "dry_run": settings.dry_run,
            "sample_interval": settings.sample_interval,
            "kernels_monitored": len(monitor.kernel_pids()) if monitor else 0,
            "signatures": len(self.rules.signatures),
            "signatures_failed": {**self.engine.disabled,
                                  **(self.channel.disabled if self.channel else {})},
            "ticks": monitor.ticks if monitor else 0,
            "policy_url": settings.policy_url,
            "warning_message": settings.warning_message,
            "incidents_unwritten": self.store.unwritten,
            "strikes": len(self.store.strikes(settings.user_name, settings.strike_window)),
            "strike_limit": settings.strike_limit,
            "gpu": self._gpu_status(),
            "reporting": self.reporter.status() if self.reporter is not None else
            {"enabled": False, "queued": 0},
            "watcher": self.watcher.status() if self.watcher else
            {"covered": False, "reason": "ColabGuard.watcher_socket is empty"},
            "processes_checked_by": "node watcher" if self.watcher and self.watcher.covered
            else "this server",
            **self._sources_status(),
        }

    def _sources_status(self) -> dict:
        return {"settings_from": [s.to_dict() for s in self.sources],
                "user_writable_settings": sorted({s.setting for s in self.sources
                                                  if s.user_writable})}

    def _gpu_status(self) -> dict:
        gpu = self.monitor.gpu if self.monitor else None
        if gpu is None:
            return {"available": False, "reason": "switched off (ColabGuard.gpu_sampling = False)"}
        sample = self.monitor.last_gpu
        return {
            "available": gpu.available,
            "reason": gpu.reason,
            "devices": sample.to_dict()["devices"] if sample else [],
            "kernels": dict(self.monitor.gpu_by_kernel),
            "errors": gpu.errors,
        }


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} seconds"


main = launch_new_instance = ColabGuard.launch_instance

if __name__ == "__main__":
    sys.exit(main())
