"""hatch-jupyter-builder build function: the JupyterLab extension, built with npm.

`pip install .` and `pip install -e .` call `build()` before the wheel is made:
it installs the npm dependencies exactly as package-lock.json pins them
(`npm ci`, which never rewrites the lock file) and runs the production build
(`@jupyter/builder`, through the `jupyter-builder` command) into
colab_guard/labextension/, which the wheel ships as
share/jupyter/labextensions/colab-guard. Nothing is rebuilt when the output is
newer than every source. HATCH_JUPYTER_BUILDER_SKIP_NPM=1 skips the build
(the output must then already be there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from hatch_jupyter_builder.utils import is_stale

HERE = Path(__file__).resolve().parent
OUTPUT = HERE.parent / "colab_guard" / "labextension"
SOURCES = ["src", "style", "package.json", "package-lock.json", "tsconfig.json"]


def build(target_name: str, version: str, **_: object) -> None:
    if os.environ.get("HATCH_JUPYTER_BUILDER_SKIP_NPM") == "1":
        return
    if not any(is_stale(OUTPUT, HERE / source) for source in SOURCES):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("colab-guard: building the JupyterLab extension needs Node.js and "
                           "npm (https://nodejs.org); or install a prebuilt wheel")
    installed = HERE / "node_modules" / ".package-lock.json"
    lock = HERE / "package-lock.json"
    if not installed.exists() or lock.stat().st_mtime > installed.stat().st_mtime:
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True)
    subprocess.run([npm, "run", "build:prod"], cwd=HERE, check=True)
