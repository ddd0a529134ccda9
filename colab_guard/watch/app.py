"""The node watcher: the guard as a root service, one per machine, out of the users' reach.

``colab-guard watch`` runs the same monitor as the server extension (observe -> detect ->
act -> record) over every notebook kernel of the machine (``NodeKernels``), in the
foreground, until SIGTERM or SIGINT. Configured with traitlets (``c.Watcher.<name>``) from
one config file that must be root's (owned by uid 0, not writable by group or others, in
folders only root can change) and ``--Watcher.<name>=...`` options; a bad or unknown
setting, or a config file a user could have written, is refused with one line.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import stat
import sys
import time
from pathlib import Path

from traitlets import Bool, Int, List, TraitError, Unicode, default
from traitlets.config import Application, Config
from traitlets.config.loader import ConfigFileNotFound, JSONFileConfigLoader, PyFileConfigLoader

from ..act.policy import Policy
from ..detect.engine import Engine
from ..detect.signatures import SignatureError, load_signatures
from ..monitor import Monitor
from ..observe import procfs
from ..observe.model import Process, Snapshot
from ..record import metrics
from ..record.database import DatabaseError, IncidentDatabase, IncidentStore
from ..record.recorder import Recorder
from ..record.reporter import build_reporter
from ..record.store import IncidentLog, IncidentLogError
from ..settings import GuardTraits, Settings
from .at_exec import ExecCheck, exec_only
from .kernels import NodeKernels
from .protocol import DEFAULT_SOCKET
from .sampler import NodeSampler
from .tell import UserChannel

DEFAULT_CONFIG = "/etc/colab-guard/watch_config.py"
STATE_DIR = Path("/var/lib/colab-guard")
LOG_DIR = Path("/var/log/colab-guard")


class WatchError(RuntimeError):
    """The watcher cannot start as configured; the message says which setting or file."""


#: seconds a process acted on at its exec is remembered (a pass sampled before its stop
#: may act after it: passes take a second at most, many on a loaded machine)
ACTED_AT_EXEC_KEPT = 120.0
#: seconds between two heartbeats while what they say (beyond the time) stays the same: a
#: liveness probe allows a minute; writing a file at every tick cost a fifth of the idle
#: watcher's event loop
HEARTBEAT_EVERY = 5.0
#: The collector's thresholds in the watcher's process (Python's: 700, 10, 10): each
#: collection of the youngest objects walks the pass's tables of the machine's processes
#: (about 1 ms at five thousand), so they are collected less often.
GC_THRESHOLDS = (10_000, 10, 10)


def _acted(acted: dict[int, tuple[float, float]], process: Process) -> bool:
    """Whether this very process was acted on at its exec (start times within a second, as
    ``attribution.same_process``: both are computed on procfs.boot_time, so they agree)."""
    seen = acted.get(process.pid)
    return seen is not None and abs(seen[0] - process.create_time) <= 1


class NodeMonitor(Monitor):
    """The monitor, with the machine's kernels discovered afresh at each tick."""

    heartbeat_file: Path | None = None
    proc_events: bool = False
    _beaten: tuple[float, tuple] = (0.0, ())  # the last heartbeat: (its time, what it said)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: pid -> (start ticks, argv) as read when its exec was announced (proc_events.py)
        self.exec_argv: dict[int, tuple[int, list[str]]] = {}
        #: pid -> (create time, kernel id) of every process the last pass attributed: what
        #: the process events tie a fork or an exec to between passes (replaced, never changed)
        self.attributed_at_pass: dict[int, tuple[float, str]] = {}
        self.at_exec = ExecCheck(self.engine, self.log)
        #: pid -> (create time, when) of the processes acted on at their exec: a pass that
        #: sees one later (even after its exit: it was sampled alive) leaves it to that
        #: response, as the Policy does a process it has handled
        self.acted_at_exec: dict[int, tuple[float, float]] = {}
        #: (the rules it was worked out for, the ids of their exec-only signatures)
        self._exec_only: tuple[tuple | None, frozenset[str]] = (None, frozenset())

    def check_at_exec(self, kernel_id: str, process: Process) -> None:
        """On the event loop: a kernel's program acted on at its exec if what it shows then
        (name, executable, command line) is enough (at_exec.py)."""
        if not self._running:
            return
        try:
            detections = self.at_exec.detections(kernel_id, process)
            if detections:
                self._forget_acted_at_exec()
                self.acted_at_exec[process.pid] = (process.create_time, time.monotonic())
                self.act_on(Snapshot(kernel_id, time.time(), [process]), detections,
                            partial=True)
        except Exception:
            metrics.SAMPLER_ERRORS.labels("check").inc()
            self.log.exception("colab-guard watch: checking pid %s at its exec failed; the "
                               "next pass checks it", process.pid)

    def _forget_acted_at_exec(self) -> None:
        """Those acted on more than ``ACTED_AT_EXEC_KEPT`` s ago: every pass since has seen
        them gone (they were stopped), or left them to that response."""
        if len(self.acted_at_exec) >= 64:
            oldest = time.monotonic() - ACTED_AT_EXEC_KEPT
            self.acted_at_exec = {pid: seen for pid, seen in self.acted_at_exec.items()
                                  if seen[1] > oldest}

    def act_on(self, snapshot, detections, partial: bool = False) -> None:
        if self.acted_at_exec and not partial:
            # A process acted on at its exec: what the Policy does for a process it has
            # handled (the exec check answers outside the Policy's record of the pass).
            detections = [d for d in detections if not _acted(self.acted_at_exec, d.process)]
        super().act_on(snapshot, detections, partial)

    async def tick(self) -> None:
        try:
            self.kernels.refresh()
        except Exception:
            self.log.exception("colab-guard watch: discovering kernels failed; the last known "
                               "kernels are watched")
        await super().tick()
        now = time.time()
        metrics.WATCH_HEARTBEAT.set(now)
        if self.heartbeat_file is not None:
            self._beat(now)

    def _beat(self, now: float) -> None:
        """The heartbeat: a small JSON file replaced every HEARTBEAT_EVERY s, and at the
        tick where what it says changes (readable by all: whether a watcher covers this
        machine, nothing about anyone's kernels)."""
        said = (len(self.kernel_pids()), self.proc_events, self.settings.sample_interval)
        if said == self._beaten[1] and now - self._beaten[0] < HEARTBEAT_EVERY:
            return
        self._beaten = (now, said)
        beat = {"time": now, "pid": os.getpid(), "ticks": self.ticks, "kernels": said[0],
                "proc_events": said[1], "sample_interval": said[2]}
        path = self.heartbeat_file
        try:
            temporary = path.with_name(f".{path.name}.{os.getpid()}")
            temporary.write_text(json.dumps(beat))
            temporary.chmod(0o644)
            temporary.replace(path)
        except OSError as err:
            if not getattr(self, "_beat_failed", False):
                self._beat_failed = True
                self.log.warning("colab-guard watch: cannot write the heartbeat %s: %s", path, err)

    def _observe_and_detect(self, kernels):
        """A process a root service started for the user (``NodeSampler.service_sessions``)
        is not held to what only its exec shows (name, executable, command line): OpenSSH's
        session process runs as the user under root's program and the name ``sshd``; the
        user's own exec there was checked as it happened (check_at_exec). All the rest
        holds (its sockets, CPU, content, behaviour), and everything below it is checked
        in full."""
        found = super()._observe_and_detect(kernels)
        sessions = getattr(self.sampler, "service_sessions", None)
        if not sessions:
            return found
        skip = self._exec_only_ids()
        return [(snapshot, [d for d in detections if d.signature.id not in skip
                            or d.process.key not in sessions])
                for snapshot, detections in found]

    def _exec_only_ids(self) -> frozenset[str]:
        """The ids of the signatures that read only what a program shows at its exec (in
        the sampler's thread: at_exec's own cache is the event loop's)."""
        signatures = self.engine.rules.signatures
        key = tuple(id(s.when) for s in signatures.values())
        if self._exec_only[0] != key:
            self._exec_only = (key, frozenset(s.id for s in signatures.values() if exec_only(s)))
        return self._exec_only[1]

    def _observe(self, kernels):
        snapshots = super()._observe(kernels)
        # In the sampler's thread: which kernels, exited or not, still have processes.
        self.kernels.attributed = self.sampler.owners()
        self.attributed_at_pass = getattr(self.sampler, "attributed", {})
        self._exec_command_lines(snapshots)
        return snapshots

    def _exec_command_lines(self, snapshots) -> None:
        """A program that rewrote its argument area since its exec is checked (and shown)
        with the command line it was started with, the one that says what it is."""
        boot = None
        for snapshot in snapshots.values():
            for process in snapshot.visited():  # a parked one was corrected when visited
                started = self.exec_argv.get(process.pid)
                if started is None or not started[1] or started[1] == process.cmdline:
                    continue
                boot = boot or procfs.boot_time()
                if abs(procfs.create_time(started[0], boot) - process.create_time) < 0.01:
                    process.cmdline = started[1]


class Watcher(Application, GuardTraits):
    name = "colab-guard-watch"
    description = ("Watch every notebook kernel of this machine as root: stop forbidden use, "
                   "interrupt the kernel, record the incident where users cannot write.")

    config_file = Unicode(DEFAULT_CONFIG, config=True, help=(
        "The watcher's config file (.py or .json). Read only if it is owned by root, not "
        "writable by group or others, and in folders only root can change; a missing default "
        "file is no error."))

    min_uid = Int(1000, min=1, config=True, help=(
        "Processes of uids below this (system users) and of root are never a kernel and never "
        "signalled."))

    users = List(Unicode(), config=True, help=(
        "Watch only these users' kernels (login names). Empty: every notebook user."))

    proc_events = Bool(True, config=True, help=(
        "Listen to the kernel's process events (netlink proc connector) and check at once "
        "when a program starts; the /proc scan every sample_interval stays as the fallback."))

    switch_records = Bool(True, config=True, help=(
        "Read the kernel's context-switch records (perf_event_open, as `perf record "
        "--switch-events -a`; needs CAP_PERFMON) to know which processes ran since the last "
        "pass, so that thousands of idle processes are not each asked in turn. Off, or where "
        "they cannot be opened or some are lost: each quiet process is asked at least every "
        "10 s. Used only with proc_events."))

    metrics_port = Int(0, min=0, max=65535, config=True, help=(
        "Serve the watcher's Prometheus metrics on this port (http://metrics_address:PORT/). "
        "0: not served."))

    metrics_address = Unicode("127.0.0.1", config=True, help=(
        "Address the metrics are served on."))

    hub_api_token_file = Unicode("", config=True, help=(
        "A file holding the watcher's token for the hub service (a token with the scope "
        "custom:colab-guard:report-any), read at start instead of hub_api_token. It must be "
        "root's: owned by root, readable by root alone (mode 0600 or 0400), in folders only "
        "root can change."))

    user_socket = Unicode(DEFAULT_SOCKET, config=True, help=(
        "Unix socket the users' Jupyter servers connect to, to be told of their own "
        "incidents (each server gets only its uid's: SO_PEERCRED); its folder is created "
        "root-owned, mode 0755. Empty: users' servers are not told."))

    heartbeat_file = Unicode("/run/colab-guard/heartbeat.json", config=True, help=(
        "JSON file replaced every 5 s and when the number of kernels watched changes (time, "
        "ticks, kernels watched), readable by all, so that anyone can tell whether a watcher "
        "covers this machine. Empty: none."))

    @default("incident_log")
    def _default_incident_log(self):
        return str(LOG_DIR / "incidents.jsonl")

    @default("database_url")
    def _default_database_url(self):
        return "sqlite:///" + str(STATE_DIR / "incidents.sqlite")

    @default("user_name")
    def _default_user_name(self):
        return "unknown"  # each incident names its kernel's user; this only if that is gone

    @default("log_level")
    def _watch_log_level_default(self):
        return logging.INFO

    # ------------------------------------------------------------ configuration

    def configure(self, argv: list[str] | None = None) -> None:
        """Command line, then the config file (the command line wins); refused whole."""
        try:
            # Undecorated: a bad value raises here (traitlets' wrapper would exit the process).
            Application.parse_command_line.__wrapped__(self, argv)
            self._load_root_config()
            self._refuse_unknown_settings()
            self.check_environment()
            if self.hub_api_token_file:
                self.hub_api_token = read_token_file(Path(self.hub_api_token_file))
        except TraitError as err:
            raise WatchError(f"a bad setting: {err}") from None

    def _load_root_config(self) -> None:
        path = Path(self.config_file)
        if not path.exists():
            if self.config_file != DEFAULT_CONFIG:
                raise WatchError(f"config file {path} does not exist")
            return
        refuse_unless_root_only(path)
        loader_class = JSONFileConfigLoader if path.suffix == ".json" else PyFileConfigLoader
        try:
            config = loader_class(path.name, str(path.parent), log=self.log).load_config()
        except ConfigFileNotFound:
            raise WatchError(f"config file {path} could not be read") from None
        except Exception as err:
            raise WatchError(f"config file {path}: {type(err).__name__}: {err}") from None
        config.merge(self.cli_config)  # the command line wins
        self.update_config(config)
        self.log.info("colab-guard watch: configuration from %s", path)

    def _refuse_unknown_settings(self) -> None:
        known = set(self.trait_names(config=True))
        for section, values in self.config.items():
            if section != "Watcher":
                raise WatchError(f"{section} is not configurable here: the watcher's settings "
                                 "are Watcher.<name>")
            unknown = sorted(set(values) - known)
            if unknown:
                raise WatchError(f"Watcher.{unknown[0]} is not a setting of the watcher "
                                 f"(unknown: {', '.join(unknown)}); see `colab-guard watch "
                                 "--help-all`")

    # ------------------------------------------------------------ wiring

    def build(self) -> NodeMonitor:
        settings = self.settings = Settings.from_traits(self)
        rules = load_signatures(settings.signature_paths)
        try:
            self.rules = rules.disabling(settings.disabled_signatures,
                                         "Watcher.disabled_signatures", self.log)
        except ValueError as err:
            raise WatchError(str(err)) from None
        for target in (_sqlite_path(settings.database_url), Path(settings.incident_log)):
            if target is not None:
                _private_folder(target.parent)
        database = IncidentDatabase(settings.database_url, log=self.log, recover=True,
                                    busy_timeout=2.0)
        self.store = IncidentStore(database, IncidentLog(settings.incident_log, log=self.log))
        self.kernels = NodeKernels(min_uid=self.min_uid, users=tuple(self.users),
                                   grace=settings.stop_grace, log=self.log)
        self.policy = Policy(settings)
        self.recorder = Recorder(self.store, self.policy, settings, log=self.log)
        self.reporter = self._build_reporter(settings, database)
        sampler = NodeSampler(self.kernels, self.log,
                              libraries_refresh=settings.libraries_refresh)
        self.monitor = NodeMonitor(settings, self.kernels, Engine(self.rules, log=self.log),
                                   self.policy, self.recorder, log=self.log, sampler=sampler)
        return self.monitor

    def _build_reporter(self, settings: Settings, database: IncidentDatabase):
        """Every incident to the hub service too, if hub_url is set (README: Reporting to the hub)."""
        try:
            reporter = build_reporter(settings, "watcher", log=self.log,
                                      first_user_uid=self.min_uid)
        except ValueError as err:
            raise WatchError(f"Watcher.hub_url: {err} (Watcher.hub_api_token_file)") from None
        if reporter is not None:
            self.recorder.acting_listeners.append(reporter.listen)
            self.recorder.listeners.append(reporter.listen)
            for incident_id in database.recovered:
                reporter.listen(database.get(incident_id))
        return reporter

    def _metrics_client_error(self, request, address) -> None:
        """A metrics client that went wrong (one that connects and hangs up at once: a port
        scan, a health check) is its own affair: a debug line, not a traceback in the log."""
        self.log.debug("colab-guard watch: a metrics client %s went away: %s", address,
                       sys.exc_info()[1])

    async def run(self) -> None:
        os.umask(0o027)  # its database and log hold every user's incidents: not for other users
        gc.set_threshold(*GC_THRESHOLDS)
        monitor = self.build()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        events = None
        if self.proc_events:
            from .proc_events import ProcEvents

            events = ProcEvents.start(loop, monitor, log=self.log)
            if events is not None and not await events.probe():
                self.log.warning("colab-guard watch: no process events arrive (the connector "
                                 "reports only to the host's network namespace: in Kubernetes, "
                                 "hostNetwork: true); programs are found by scanning /proc "
                                 "every %gs", self.settings.sample_interval)
                events.close()
                events = None
        monitor.proc_events = events is not None
        switches = None
        if events is not None and self.switch_records:
            from .switches import SwitchRecords

            switches = monitor.sampler.switches = SwitchRecords.open(self.log)
        if self.heartbeat_file:
            monitor.heartbeat_file = Path(self.heartbeat_file)
            if not monitor.heartbeat_file.parent.exists():
                monitor.heartbeat_file.parent.mkdir(parents=True)
                monitor.heartbeat_file.parent.chmod(0o755)
        if self.metrics_port:
            from prometheus_client import start_http_server

            try:
                served = start_http_server(self.metrics_port, addr=self.metrics_address)
            except OSError as err:
                raise WatchError(f"Watcher.metrics_port: cannot serve metrics on "
                                 f"{self.metrics_address}:{self.metrics_port}: {err}") from None
            if served is not None:  # (server, thread) from prometheus_client 0.19 on
                served[0].handle_error = self._metrics_client_error
            self.log.info("colab-guard watch: metrics on http://%s:%d/", self.metrics_address,
                          self.metrics_port)
        self.log.info("colab-guard watch: %d signatures, %d allow rules, sampling every %gs%s, "
                      "process events %s, context-switch records %s; users uid >= %d%s; "
                      "incidents in %s and %s",
                      len(self.rules.signatures), len(self.rules.allow),
                      self.settings.sample_interval,
                      " (DRY RUN: nothing will be stopped)" if self.settings.dry_run else "",
                      "on" if events is not None else "off",
                      "on" if switches is not None else "off", self.min_uid,
                      f" ({', '.join(self.users)} only)" if self.users else "",
                      self.settings.database_url, self.settings.incident_log)
        self.log.info("colab-guard watch: %d signatures are checked at a program's exec (they "
                      "read only its name, executable and command line)%s",
                      len(monitor.at_exec.signatures()),
                      "" if events is not None else ", not used: no process events")
        users_told = await self._tell_users()
        if not self.settings.enabled:
            self.log.warning("colab-guard watch: Watcher.enabled = False: nothing is watched")
        else:
            if self.reporter is not None:
                self.reporter.start()
                self.log.info("colab-guard watch: incidents are reported to the hub at %s",
                              self.settings.hub_url)
            monitor.start()
        await stopping.wait()
        self.log.info("colab-guard watch: stopping")
        if users_told is not None:
            await users_told.stop()
        if events is not None:
            events.close()
        await monitor.stop()
        if switches is not None:
            switches.close()
        self.store.flush()
        if self.reporter is not None:
            self.reporter.stop(timeout=2.0)  # what is still queued is sent after the restart

    async def _tell_users(self) -> UserChannel | None:
        """Push each incident to its user's own Jupyter servers (watch/tell.py)."""
        if not self.user_socket:
            return None
        channel = UserChannel(self.user_socket, self.store, self.kernels, self.settings,
                              log=self.log)
        try:
            await channel.start()
        except OSError as err:
            raise WatchError(f"Watcher.user_socket: cannot listen on {self.user_socket}: "
                             f"{err}") from None
        self.recorder.acting_listeners.append(channel.acting)
        self.recorder.listeners.append(channel.done)
        return channel


def refuse_unless_root_only(path: Path) -> None:
    """A config file root alone can have written: the file and every folder above it owned
    by root and not writable by group or others (a sticky folder such as /tmp excepted)."""
    real = Path(os.path.realpath(path))
    info = os.stat(real)
    if not stat.S_ISREG(info.st_mode):
        raise WatchError(f"config file {path} is not a regular file")
    if info.st_uid != 0 or info.st_mode & 0o022:
        raise WatchError(f"refusing config file {path}: it must be owned by root and writable "
                         f"by root alone (it is owned by uid {info.st_uid}, mode "
                         f"{stat.S_IMODE(info.st_mode):o})")
    for folder in real.parents:
        info = os.stat(folder)
        if info.st_uid != 0 or (info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX):
            raise WatchError(f"refusing config file {path}: folder {folder} can be changed by "
                             f"someone other than root (owned by uid {info.st_uid}, mode "
                             f"{stat.S_IMODE(info.st_mode):o})")


def read_token_file(path: Path) -> str:
    """The hub token from a file root alone can write and read."""
    if not path.exists():
        raise WatchError(f"Watcher.hub_api_token_file {path} does not exist")
    refuse_unless_root_only(path)
    mode = stat.S_IMODE(os.stat(os.path.realpath(path)).st_mode)
    if mode & 0o077:
        raise WatchError(f"refusing Watcher.hub_api_token_file {path}: a token must be readable "
                         f"by root alone (mode {mode:o}; chmod 600 it)")
    token = path.read_text().strip()
    if not token:
        raise WatchError(f"Watcher.hub_api_token_file {path} is empty")
    return token


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) and url != prefix else None


def _private_folder(folder: Path) -> None:
    """Create the record's folder root-only (an existing one is left as it is)."""
    if not folder.exists():
        folder.mkdir(parents=True, mode=0o750)


#: Seconds a thread holds the GIL before another waiting for it is let in (Python's: 0.005).
GIL_SWITCH_INTERVAL = 0.0005


def main(argv: list[str] | None = None) -> int:
    watcher = Watcher()
    try:
        watcher.configure(argv)
        if os.geteuid() != 0:
            watcher.log.warning("colab-guard watch: not running as root: other users' "
                                "processes cannot be read or stopped")
        # The event loop (process events, stops) and the stopping threads wait for the GIL
        # while the sampler's thread computes; each syscall of a stop gives it up and waits
        # again: at the default 5 ms a turn, a stop's dozen reads and signals took 100 ms
        # and more on a machine of 5,000 processes.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        asyncio.run(watcher.run())
    except (WatchError, SignatureError, IncidentLogError, DatabaseError) as err:
        print(f"colab-guard watch cannot start: {err}", file=sys.stderr)
        return 2
    return 0


__all__ = ["Watcher", "WatchError", "main", "refuse_unless_root_only", "Config"]
