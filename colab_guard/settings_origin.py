"""Where each guard setting in force came from, and whether the server's user could have
written it.

A single-user server runs as its user, who can write their own Jupyter config folder (and
start their server with other options): settings from there are the user's, not the
operator's. The server extension still applies them (it cannot do better: it runs as that
user), but says which they are, in its log, status API and the JupyterLab status bar; the
node watcher reads only root's config and ignores them all.

The files are the ones a Jupyter server reads: ``jupyter_server_config.{json,py}``, the
extension's own ``jupyter_colab_guard_config.*``, and the ``*.d/*.json`` folders beside
them, in every folder of the server's config path. A ``.py`` file is read as text
(``c.ColabGuard.<name>``), never run a second time.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

SECTION = "ColabGuard"
_NAMES = ("jupyter_server_config", "jupyter_colab_guard_config")
#: in a .py config file, read as text (running it again could do anything it does)
_PY_SETTING = re.compile(r"\bc\.ColabGuard\.([A-Za-z_]\w*)")
_PY_EXTENSION = re.compile(r"jpserver_extensions\b[^\n]*['\"]colab_guard['\"]")


@dataclass
class SettingSource:
    setting: str  # "ColabGuard.enabled", or "ServerApp.jpserver_extensions.colab_guard"
    source: str  # a file's path, or "command line"
    user_writable: bool  # the server's user could have written it

    def to_dict(self) -> dict:
        return asdict(self)


def setting_sources(config_paths: list[str], cli_config, uid: int | None = None,
                    groups: list[int] | None = None) -> list[SettingSource]:
    """Every guard setting set in a config file on ``config_paths`` or on the command line,
    the file with the highest priority (the first folder) first."""
    uid = os.getuid() if uid is None else uid
    groups = os.getgroups() if groups is None else groups
    found = []
    for folder in config_paths:
        for path in _config_files(Path(folder)):
            settings = _guard_settings(_read(path))
            if settings:
                writable = user_can_write(path, uid, groups)
                found += [SettingSource(name, str(path), writable) for name in settings]
    # The command line is whoever started the server's: the spawner's on a hub.
    found += [SettingSource(name, "command line", False)
              for name in _guard_settings(_as_dict(cli_config))]
    return found


def user_can_write(path: Path, uid: int, groups: list[int]) -> bool:
    """Could ``uid`` have changed this file: it, or a folder above it (which lets it replace
    the file), is the uid's or writable by it. Root is the operator: never "a user"."""
    if uid == 0:
        return False
    try:
        real = Path(os.path.realpath(path))
        for i, item in enumerate([real, *real.parents]):
            info = os.stat(item)
            if info.st_uid == uid:
                return True
            sticky = i > 0 and info.st_mode & stat.S_ISVTX
            if not sticky and (info.st_mode & 0o002 or (
                    info.st_mode & 0o020 and info.st_gid in groups)):
                return True
    except OSError:
        return False
    return False


def _config_files(folder: Path) -> list[Path]:
    files = []
    for name in _NAMES:
        files += [folder / f"{name}.{suffix}" for suffix in ("json", "py")]
        conf_d = folder / f"{name}.d"
        if conf_d.is_dir():
            files += sorted(conf_d.glob("*.json"))
    return [f for f in files if f.is_file()]


def _read(path: Path) -> dict:
    try:
        text = path.read_text()
        if path.suffix == ".json":
            return json.loads(text)
    except (OSError, ValueError):  # the server itself reports a config file it cannot read
        return {}
    found: dict = {SECTION: dict.fromkeys(_PY_SETTING.findall(text))}
    if _PY_EXTENSION.search(text):
        found["ServerApp"] = {"jpserver_extensions": {"colab_guard": None}}
    return found


def _as_dict(config) -> dict:
    return {k: (_as_dict(v) if hasattr(v, "items") else v) for k, v in config.items()}


def _guard_settings(config: dict) -> list[str]:
    if not isinstance(config, dict):
        return []
    names = [f"{SECTION}.{name}" for name in config.get(SECTION, {}) or {}]
    extensions = (config.get("ServerApp") or {}).get("jpserver_extensions") or {}
    if isinstance(extensions, dict) and "colab_guard" in extensions:
        names.append("ServerApp.jpserver_extensions.colab_guard")
    return names


def summary(sources: list[SettingSource]) -> str:
    """One line for the log: the settings from files the user can write."""
    return "; ".join(f"{s.setting} (in {s.source})" for s in sources if s.user_writable)
