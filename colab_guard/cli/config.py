"""Read the server's configuration, as the server would, for command line tools."""

from __future__ import annotations

from pathlib import Path

from jupyter_server.serverapp import ServerApp
from traitlets.config import Application

from ..app import ColabGuard


def load_guard(extra_files: list[str] = ()) -> ColabGuard:
    """A ColabGuard configured from the server's config files (not started)."""
    reader = ServerApp()
    reader.load_config_file()  # jupyter_server_config.{py,json} and .d/ on Jupyter's config path
    for file in extra_files:
        path = Path(file).resolve()
        Application.load_config_file(reader, path.name, path=str(path.parent))
    return ColabGuard(config=reader.config)
