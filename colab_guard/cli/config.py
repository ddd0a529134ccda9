"""Read the server's configuration, as the server would, for command line tools.

Every configuration error becomes a ``CommandError``: one line naming the file or the
setting, no traceback, exit status 2.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from jupyter_server.serverapp import ServerApp
from traitlets import TraitError
from traitlets.config import Config, JSONFileConfigLoader, PyFileConfigLoader

from ..app import ColabGuard
from ..detect.signatures import SignatureError, SignatureSet, load_signatures


def _error(message: str) -> Exception:
    from . import CommandError  # defined after the command modules are imported

    return CommandError(message)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if not isinstance(err, (TraitError, ValueError)) \
        else text


def read_config_file(file: str) -> Config:
    """One --config file (.py or .json); a missing or broken one is an error naming it."""
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise _error(f"--config {file}: no such file")
    loader_class = JSONFileConfigLoader if path.suffix == ".json" else PyFileConfigLoader
    loader = loader_class(path.name, path=str(path.parent))
    try:
        return loader.load_config()
    except SyntaxError as err:
        raise _error(f"--config {file}, line {err.lineno}: not valid Python: {err.msg}") from None
    except ValueError as err:  # json.JSONDecodeError, among others
        raise _error(f"--config {file}: not valid {'JSON' if path.suffix == '.json' else 'config'}"
                     f": {_one_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - whatever a config file raises, name the file
        raise _error(f"--config {file}: {_one_line(err)}") from None


def load_guard(extra_files: list[str] = ()) -> ColabGuard:
    """A ColabGuard configured from the server's config files (not started)."""
    reader = ServerApp()
    reader.raise_config_file_errors = True
    try:
        reader.load_config_file()  # jupyter_server_config.{py,json} and .d/ on Jupyter's path
    except Exception as err:  # noqa: BLE001
        raise _error("the server's configuration (jupyter_server_config.py/.json in "
                     f"{', '.join(reader.config_file_paths)}) cannot be read: "
                     f"{_one_line(err)}") from None
    sources: list[tuple[str, Config]] = [("the server's configuration", Config(reader.config))]
    config = Config(reader.config)
    for file in extra_files:
        loaded = read_config_file(file)
        sources.append((f"--config {file}", loaded))
        config.merge(loaded)
    names = set(ColabGuard.class_trait_names(config=True))
    for source, loaded in reversed(sources):
        for key in sorted(loaded.get("ColabGuard", {})) if "ColabGuard" in loaded else ():
            if key not in names:
                close = difflib.get_close_matches(key, sorted(names), n=1)
                raise _error(f"unknown setting ColabGuard.{key} in {source}"
                             + (f" (did you mean ColabGuard.{close[0]}?)" if close else ""))
    try:
        return ColabGuard(config=config)
    except TraitError as err:
        raise _error(f"bad setting{_where(err, sources)}: {_one_line(err)}") from None


def _where(err: TraitError, sources: list[tuple[str, Config]]) -> str:
    """' in FILE' for the last config source that sets the setting the error names."""
    names = set(ColabGuard.class_trait_names(config=True))
    found = [n for n in re.findall(r"[A-Za-z_]+", str(err)) if n in names]
    if not found:
        return ""
    for source, config in reversed(sources):
        if "ColabGuard" in config and found[0] in config.ColabGuard:
            return f" in {source}"
    return ""


def load_rules(guard: ColabGuard) -> SignatureSet:
    """The signatures in force, as the server would load them; errors name file and setting."""
    try:
        rules = load_signatures(guard.signature_paths)
    except SignatureError as err:
        head = "ColabGuard.signature_paths: "
        raise _error(head + ("\ncolab-guard: " + head).join(str(err).splitlines())) from None
    try:
        return rules.disabling(guard.disabled_signatures, "ColabGuard.disabled_signatures")
    except ValueError as err:
        raise _error(str(err)) from None
