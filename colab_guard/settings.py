"""The guard's settings: traitlets for the operator, one frozen ``Settings`` for the code.

``GuardTraits`` holds every setting as a configurable trait with its help text and
bounds (``c.ColabGuard.<name>``). The parts of the guard (monitor, policy, channel,
handlers) never read traits: they get a ``Settings``, built once, when the guard starts,
from traits that have all been validated.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping
from urllib.parse import urlsplit

from jupyter_core.paths import jupyter_data_dir
from traitlets import Bool, Dict, Enum, Float, HasTraits, Int, List, TraitError, Unicode, default, validate

from .vocabulary import DEFAULT_ACTIONS, POLICY_ACTIONS

DEFAULT_WARNING = ("You may be executing code that is disallowed, and this may restrict your "
                   "ability to use this service in the future.")
_CATEGORY = re.compile(r"^[a-z][a-z0-9-]{1,39}$")


class GuardTraits(HasTraits):
    """Every setting of the guard, as configurable traits (mixed into ``ColabGuard``)."""

    enabled = Bool(True, config=True, help="Watch kernels. False leaves the server unguarded.")

    dry_run = Bool(False, config=True, help=(
        "Record what the guard would have done, and do nothing else: no process is stopped, "
        "no kernel interrupted. Use it to try signatures on a live service first."))

    sample_interval = Float(1.0, min=0.1, max=60, config=True, help=(
        "Seconds between two samples of every kernel's processes (0.1 to 60). Detection "
        "latency is about one to two intervals."))

    signature_paths = List(Unicode(), config=True, help=(
        "Extra signature files, or folders of *.yaml files, loaded after the built-in ones. "
        "A signature with the id of an earlier one replaces it."))

    disabled_signatures = List(Unicode(), config=True, help=(
        "Ids of signatures (or allow rules) to switch off, e.g. ['mining-busy-pool-connection']."))

    actions = Dict(value_trait=Unicode(), config=True, help=(
        f"Action per category, one of {', '.join(POLICY_ACTIONS)}. Merged over the "
        f"defaults: {DEFAULT_ACTIONS}. E.g. {{'torrenting': 'stop'}}."))

    default_action = Enum(POLICY_ACTIONS, "interrupt", config=True, help=(
        "Action for a category that `actions` does not name."))

    warning_message = Unicode(DEFAULT_WARNING, config=True, help=(
        "The platform's message, shown to the user when the guard acts."))

    policy_url = Unicode("", config=True, help=(
        "Link to the platform's acceptable-use policy, shown with the warning."))

    incident_log = Unicode(config=True, help=(
        "JSON lines file the incidents are appended to (one object per line, for log "
        "shippers). Default: colab_guard/incidents.jsonl in Jupyter's data directory."))

    stop_grace = Float(2.0, min=0, max=30, config=True, help=(
        "Seconds a stopped process gets between SIGTERM and SIGKILL (0 to 30)."))

    libraries_refresh = Float(5.0, min=0, max=3600, config=True, help=(
        "Seconds between two reads of a running process's loaded libraries (/proc/PID/maps, "
        "read again only if its virtual size changed) and open files and sockets (its fds; "
        "walked at once when a socket nobody is known to hold appears). A running process "
        "that changed nothing but its CPU and memory use is read in full every 1/2 to 15/16 "
        "of it, and the states of sockets held all along are read again at this pace."))

    user_name = Unicode(config=True, help=(
        "Whose server this is, as recorded in incidents. Default: $JUPYTERHUB_USER, "
        "else the login name."))

    database_url = Unicode(config=True, help=(
        "The incident database the REST API and the colab-guard command read: incidents, "
        "their actions, appeals and strikes. sqlite:///PATH (relative) or sqlite:////PATH "
        "(absolute). Default: colab_guard/incidents.sqlite in Jupyter's data directory."))

    strike_limit = Int(3, min=0, max=10_000, config=True, help=(
        "Strikes within strike_window after which the user cannot start new kernels, until "
        "an admin clears the strikes or they age out. A strike is an enforced incident "
        "(processes stopped, kernel interrupted or shut down; not dry run), or a refused "
        "cell beyond cell_refusals_allowed; never one whose program came from an installed "
        "package (fair strikes: the incident names the package). 0 never refuses."))

    strike_window = Float(7 * 24 * 3600.0, min=1, max=10 * 365 * 86400, config=True, help=(
        "Seconds a strike counts against its user (default 7 days)."))

    cell_refusals_allowed = Int(1, min=0, max=10_000, config=True, help=(
        "Refused cells of one category a user may have within strike_window before each "
        "further refused cell of that category counts as a strike. A refused cell ran nothing, "
        "and a first refusal may be a mistake; retrying after being told is not. 0: every "
        "refused cell is a strike."))

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

    cell_check_timeout = Float(1.0, min=0.05, max=10, config=True, help=(
        "Seconds a kernel waits for the server to start checking a cell (0.05 to 10). No "
        "answer (the server is frozen or gone): the cell runs, and what it does is watched "
        "from outside. Once the check has started, the kernel waits for its verdict up to "
        "cell_check_limit."))

    cell_check_limit = Float(15.0, min=1, max=600, config=True, help=(
        "Seconds a kernel waits for the verdict on a cell whose check has started (1 to 600): "
        "a long cell takes longer to check. Past it the cell is refused, with a message "
        "saying to run it again (the server finishes reading it meanwhile) or split it."))

    fail_closed = Bool(True, config=True, help=(
        "When the guard cannot start (a broken signature file, a bad setting, an unwritable "
        "incident log), stop the server rather than let it run unguarded. False: the server "
        "runs unguarded and says so in its log and the status API."))

    hub_url = Unicode(config=True, help=(
        "Base URL of the colab-guard JupyterHub service that incidents are reported to "
        "(POST {hub_url}api/reports), e.g. http://127.0.0.1:8081/services/colab-guard/. "
        "Default: $COLAB_GUARD_HUB_URL (which the hub's configure(c) sets for single-user "
        "servers). Empty: incidents are not reported."))

    hub_api_token = Unicode(config=True, help=(
        "The token the reports carry (Authorization: token ...). Default: "
        "$JUPYTERHUB_API_TOKEN, the single-user server's own token."))

    hub_queue_size = Int(10_000, min=1, max=1_000_000, config=True, help=(
        "Incidents kept on disk while the hub service cannot be reached (beside the incident "
        "database, hub-reports.sqlite). When full, the oldest is dropped, logged and counted."))

    @default("incident_log")
    def _default_incident_log(self):
        return str(Path(jupyter_data_dir()) / "colab_guard" / "incidents.jsonl")

    @default("database_url")
    def _default_database_url(self):
        return "sqlite:///" + str(Path(jupyter_data_dir()) / "colab_guard" / "incidents.sqlite")

    @default("user_name")
    def _default_user_name(self):
        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()

    @default("hub_url")
    def _default_hub_url(self):
        # traitlets does not validate defaults: checked here (check_environment calls this)
        return check_hub_url(os.environ.get("COLAB_GUARD_HUB_URL", ""),
                             f"$COLAB_GUARD_HUB_URL (the default of {type(self).__name__}.hub_url)")

    @default("hub_api_token")
    def _default_hub_api_token(self):
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    @validate("hub_url")
    def _check_hub_url(self, proposal):
        return check_hub_url(proposal.value, f"{type(self).__name__}.hub_url")

    def check_environment(self) -> None:
        """Settings whose defaults come from the environment: a bad one raises TraitError."""
        self.hub_url  # noqa: B018 (reading it computes and checks the default)

    @validate("actions")
    def _check_actions(self, proposal):
        merged = dict(DEFAULT_ACTIONS)
        for category, action in proposal.value.items():
            if not _CATEGORY.match(str(category)):
                raise TraitError(f"ColabGuard.actions: {category!r} is not a category name "
                                 "(lower-case letters, digits and '-')")
            if action not in POLICY_ACTIONS:
                raise TraitError(f"ColabGuard.actions[{category!r}]: {action!r} is not one of "
                                 f"{', '.join(POLICY_ACTIONS)}")
            merged[category] = action
        return merged

    @default("actions")
    def _default_actions(self):
        return dict(DEFAULT_ACTIONS)


def check_hub_url(value: str, name: str) -> str:
    """An http(s) base URL, ending in "/" (added if missing); empty stays empty."""
    value = value.strip()
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or \
            parts.fragment or parts.username:
        raise TraitError(f"{name}: {value!r} is not an http:// or https:// base URL (such as "
                         "http://127.0.0.1:8081/services/colab-guard/; no query, fragment or "
                         "credentials)")
    try:
        parts.port
    except ValueError as err:
        raise TraitError(f"{name}: {value!r}: {err}") from None
    return value if value.endswith("/") else value + "/"


@dataclass(frozen=True)
class Settings:
    """What the running guard needs, read once from validated traits. Immutable."""

    enabled: bool = True
    dry_run: bool = False
    sample_interval: float = 1.0
    actions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType(dict(DEFAULT_ACTIONS)))
    default_action: str = "interrupt"
    warning_message: str = DEFAULT_WARNING
    policy_url: str = ""
    incident_log: str = ""
    database_url: str = ""
    stop_grace: float = 2.0
    libraries_refresh: float = 5.0
    user_name: str = ""
    strike_limit: int = 3
    strike_window: float = 7 * 24 * 3600.0
    cell_refusals_allowed: int = 1
    gpu_sampling: bool = True
    kernel_hook: bool = True
    cell_checks: bool = True
    cell_check_timeout: float = 1.0
    cell_check_limit: float = 15.0
    signature_paths: tuple[str, ...] = ()
    disabled_signatures: tuple[str, ...] = ()
    hub_url: str = ""
    hub_api_token: str = field(default="", repr=False)
    hub_queue_size: int = 10_000

    @classmethod
    def from_traits(cls, traits: HasTraits) -> Settings:
        values = {}
        for f in dataclasses.fields(cls):
            value = getattr(traits, f.name)
            if isinstance(value, dict):
                value = MappingProxyType(dict(value))
            elif isinstance(value, list):
                value = tuple(value)
            values[f.name] = value
        return cls(**values)

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    def action_for(self, category: str) -> str:
        return self.actions.get(category, self.default_action)
