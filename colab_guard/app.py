"""The server extension: configuration, wiring and start/stop."""

from __future__ import annotations

import getpass
import os
import re
import sys
import time
import uuid
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from tornado import web
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, default, validate

from .channel import KernelChannel
from .act.policy import ACTIONS, DEFAULT_ACTIONS
from .detect.engine import Engine
from .detect.signatures import SignatureError, load_signatures
from .monitor import Monitor
from .observe.processes import kernel_environment
from .record import metrics
from .record.events import INCIDENT_SCHEMA
from .record.database import DatabaseError, IncidentDatabase, IncidentStore
from .record.store import IncidentLog, IncidentLogError

DEFAULT_WARNING = ("You may be executing code that is disallowed, and this may restrict your "
                   "ability to use this service in the future.")
_CATEGORY = re.compile(r"^[a-z][a-z0-9-]{1,39}$")


class GuardStartError(RuntimeError):
    """The guard cannot start as configured; the message says which setting or file."""


class ColabGuard(ExtensionApp):
    name = "colab_guard"
    description = "Watch every kernel, stop forbidden use, tell the user, record the incident."
    load_other_extensions = True

    # ------------------------------------------------------------ configuration

    enabled = Bool(True, config=True, help="Watch kernels. False leaves the server unguarded.")

    dry_run = Bool(False, config=True, help=(
        "Record what the guard would have done, and do nothing else: no process is stopped, "
        "no kernel interrupted. Use it to try signatures on a live service first."))

    sample_interval = Float(1.0, config=True, help=(
        "Seconds between two samples of every kernel's processes (0.1 to 60). Detection "
        "latency is about one to two intervals."))

    signature_paths = List(Unicode(), config=True, help=(
        "Extra signature files, or folders of *.yaml files, loaded after the built-in ones. "
        "A signature with the id of an earlier one replaces it."))

    disabled_signatures = List(Unicode(), config=True, help=(
        "Ids of signatures (or allow rules) to switch off, e.g. ['mining-pool-port-busy']."))

    actions = Dict(value_trait=Unicode(), config=True, help=(
        "Action per category, one of record, warn, stop, interrupt, shutdown. Merged over the "
        f"defaults: {DEFAULT_ACTIONS}. E.g. {{'torrenting': 'stop'}}."))

    default_action = Enum(ACTIONS, "interrupt", config=True, help=(
        "Action for a category that `actions` does not name."))

    warning_message = Unicode(DEFAULT_WARNING, config=True, help=(
        "The platform's message, shown to the user when the guard acts."))

    policy_url = Unicode("", config=True, help=(
        "Link to the platform's acceptable-use policy, shown with the warning."))

    incident_log = Unicode(config=True, help=(
        "JSON lines file the incidents are appended to (one object per line, for log "
        "shippers). Default: colab_guard/incidents.jsonl in Jupyter's data directory."))

    stop_grace = Float(2.0, config=True, help=(
        "Seconds a stopped process gets between SIGTERM and SIGKILL (0 to 30)."))

    libraries_refresh = Float(5.0, config=True, help=(
        "Seconds between two reads of a running process's loaded libraries (/proc/PID/maps, "
        "read again only if its virtual size changed) and open files and sockets (its fds; "
        "walked at once when a socket nobody is known to hold appears)."))

    user_name = Unicode(config=True, help=(
        "Whose server this is, as recorded in incidents. Default: $JUPYTERHUB_USER, "
        "else the login name."))

    database_url = Unicode(config=True, help=(
        "The incident database the REST API and the colab-guard command read: incidents, "
        "their actions, appeals and strikes. sqlite:///PATH (relative) or sqlite:////PATH "
        "(absolute). Default: colab_guard/incidents.sqlite in Jupyter's data directory."))

    strike_limit = Int(3, config=True, help=(
        "Enforced incidents (processes stopped, kernel interrupted or shut down; not dry run) "
        "within strike_window after which the user cannot start new kernels, until an admin "
        "clears the strikes or they age out. 0 never refuses."))

    strike_window = Float(7 * 24 * 3600.0, config=True, help=(
        "Seconds a strike counts against its user (default 7 days)."))

    gpu_sampling = Bool(True, config=True, help=(
        "Sample GPU use per device and per process with NVML (nvidia-ml-py), so signatures "
        "can use gpu_percent and gpu_memory_mb. Without a GPU or driver it turns itself off, "
        "saying why once in the log and in the status API."))

    kernel_hook = Bool(True, config=True, help=(
        "Open the channel the kernel hook (loaded in every kernel of this environment) uses "
        "to report at once what the kernel starts, connects to and imports, to have cells "
        "checked before they run, and to show the guard's message in the notebook. False: "
        "kernels are watched by sampling alone."))

    cell_checks = Bool(True, config=True, help=(
        "Check each cell's source against the cell signatures before it runs (needs "
        "kernel_hook). Per category, an action of record or warn lets the cell run; stop, "
        "interrupt or shutdown refuse it."))

    cell_check_timeout = Float(1.0, config=True, help=(
        "Seconds a kernel waits for the server's verdict on a cell before running it anyway "
        "(0.05 to 10). The server still watches what the cell does."))

    @validate("cell_check_timeout")
    def _check_cell_timeout(self, proposal):
        return _in_range("cell_check_timeout", proposal.value, 0.05, 10)

    fail_closed = Bool(True, config=True, help=(
        "When the guard cannot start (a broken signature file, a bad setting, an unwritable "
        "incident log), stop the server rather than let it run unguarded."))

    @default("incident_log")
    def _default_incident_log(self):
        return str(Path(jupyter_data_dir()) / "colab_guard" / "incidents.jsonl")

    @default("database_url")
    def _default_database_url(self):
        return "sqlite:///" + str(Path(jupyter_data_dir()) / "colab_guard" / "incidents.sqlite")

    @validate("strike_limit")
    def _check_strike_limit(self, proposal):
        return int(_in_range("strike_limit", proposal.value, 0, 10_000))

    @validate("strike_window")
    def _check_strike_window(self, proposal):
        return _in_range("strike_window", proposal.value, 1, 10 * 365 * 86400)

    @default("user_name")
    def _default_user_name(self):
        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()

    @validate("sample_interval")
    def _check_interval(self, proposal):
        return _in_range("sample_interval", proposal.value, 0.1, 60)

    @validate("stop_grace")
    def _check_grace(self, proposal):
        return _in_range("stop_grace", proposal.value, 0, 30)

    @validate("libraries_refresh")
    def _check_refresh(self, proposal):
        return _in_range("libraries_refresh", proposal.value, 0, 3600)

    @validate("actions")
    def _check_actions(self, proposal):
        merged = dict(DEFAULT_ACTIONS)
        for category, action in proposal.value.items():
            if not _CATEGORY.match(str(category)):
                raise TraitError(f"ColabGuard.actions: {category!r} is not a category name "
                                 "(lower-case letters, digits and '-')")
            if action not in ACTIONS:
                raise TraitError(f"ColabGuard.actions[{category!r}]: {action!r} is not one of "
                                 f"{', '.join(ACTIONS)}")
            merged[category] = action
        return merged

    @default("actions")
    def _default_actions(self):
        return dict(DEFAULT_ACTIONS)

    # ------------------------------------------------------------ wiring

    monitor: Monitor | None = None
    channel: KernelChannel | None = None
    store: IncidentStore | None = None
    engine: Engine | None = None
    started: float = 0.0  # when the guard started: incidents_this_session counts from here

    def initialize_settings(self):
        try:
            self._build()
        except (GuardStartError, SignatureError, IncidentLogError, DatabaseError) as err:
            self.log.critical("colab-guard cannot start: %s", err)
            if self.fail_closed:
                self.log.critical("colab-guard: stopping the server rather than running it "
                                  "unguarded (set ColabGuard.fail_closed=False to allow that)")
                raise SystemExit(1) from err
            raise

    def _build(self) -> None:
        rules = load_signatures(self.signature_paths)
        unknown = [s for s in self.disabled_signatures
                   if s not in rules.signatures and s not in rules.allow]
        if unknown:
            raise GuardStartError(f"ColabGuard.disabled_signatures names unknown id(s): "
                                  f"{', '.join(unknown)}")
        self.rules = rules.without(self.disabled_signatures)
        self.engine = Engine(self.rules, log=self.log)
        # A short busy timeout: a writer holding the database must not delay an action for long.
        database = IncidentDatabase(self.database_url, log=self.log, recover=True, busy_timeout=2.0)
        self.store = IncidentStore(database,
                                   IncidentLog(self.incident_log, log=self.log))
        self.started = time.time()
        self.monitor = Monitor(self, self.engine, self.store, log=self.log)
        self.channel = KernelChannel(self, self.monitor, log=self.log) \
            if self.kernel_hook and self.enabled else None
        self.serverapp.event_logger.register_event_schema(INCIDENT_SCHEMA)
        self.settings["colab_guard"] = self
        self._guard_kernel_starts()
        self.log.info("colab-guard: %d signatures, %d allow rules, sampling every %gs%s; "
                      "incidents in %s", len(self.rules.signatures), len(self.rules.allow),
                      self.sample_interval, " (DRY RUN: nothing will be stopped)" if self.dry_run
                      else "", self.incident_log)

    def initialize_handlers(self):
        from .handlers import default_handlers

        self.handlers.extend(default_handlers)

    async def _start_jupyter_server_extension(self, serverapp):
        if self.enabled and self.monitor is not None:
            self.monitor.start()
            if self.channel is not None:
                await self.channel.start()
        else:
            self.log.warning("colab-guard is disabled (ColabGuard.enabled = False): kernels are "
                             "not watched")

    async def stop_extension(self):
        if self.channel is not None:
            await self.channel.stop()
        if self.monitor is not None:
            await self.monitor.stop()
        if self.store is not None:
            self.store.flush()

    # ------------------------------------------------------------ kernels

    def _guard_kernel_starts(self) -> None:
        """Mark each kernel's environment so its processes stay attributed to it."""
        km = self.serverapp.kernel_manager
        start_kernel = km.start_kernel

        async def guarded_start_kernel(*args, kernel_id=None, **kwargs):
            if kernel_id is None or kernel_id not in km:
                self._refuse_struck_user()
                kernel_id = kernel_id or str(uuid.uuid4())
                kwargs["env"] = kernel_environment(kernel_id, kwargs.get("env"))
                if self.channel is not None:  # kept across restarts with the launch kwargs
                    kwargs["env"].update(self.channel.environment(kernel_id))
            return await start_kernel(*args, kernel_id=kernel_id, **kwargs)

        km.start_kernel = guarded_start_kernel

    def _refuse_struck_user(self) -> None:
        """Too many strikes: the kernel start fails with the platform message and why."""
        if not self.enabled or self.store is None or not self.strike_limit:
            return
        strikes = self.store.strikes(self.user_name, self.strike_window)
        if len(strikes) < self.strike_limit:
            return
        categories = ", ".join(sorted({s.category for s in strikes}))
        metrics.KERNEL_STARTS_REFUSED.inc()
        raise web.HTTPError(403, (
            f"{self.warning_message} New kernels are refused: {len(strikes)} enforced incidents "
            f"({categories}) within {_duration(self.strike_window)}, the limit is "
            f"{self.strike_limit}. You can appeal an incident; an admin can clear the strikes."))

    def status(self) -> dict:
        monitor = self.monitor
        return {
            "enabled": self.enabled,
            "dry_run": self.dry_run,
            "sample_interval": self.sample_interval,
            "kernels_monitored": len(monitor.kernel_pids()) if monitor else 0,
            "signatures": len(self.rules.signatures) if self.engine else 0,
            "signatures_failed": dict(self.engine.disabled) if self.engine else {},
            "ticks": monitor.ticks if monitor else 0,
            "policy_url": self.policy_url,
            "warning_message": self.warning_message,
            "incidents_unwritten": self.store.unwritten if self.store else 0,
            "strikes": len(self.store.strikes(self.user_name, self.strike_window)) if self.store else 0,
            "strike_limit": self.strike_limit,
            "gpu": self._gpu_status(),
        }

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


def _in_range(name: str, value: float, low: float, high: float) -> float:
    if not low <= value <= high:
        raise TraitError(f"ColabGuard.{name} must be between {low:g} and {high:g}, got {value!r}")
    return value


main = launch_new_instance = ColabGuard.launch_instance

if __name__ == "__main__":
    sys.exit(main())
