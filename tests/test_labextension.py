"""The JupyterLab extension: its unit tests (vitest, run from here so the one test command runs
them), its lock file, and its installation (prebuilt, found and enabled by JupyterLab)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import colab_guard

ROOT = Path(__file__).resolve().parents[1]
LABEXT = ROOT / "labextension"
INSTALLED = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "colab-guard"
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")


def need(condition: bool, reason: str) -> None:
    """Fail in CI, skip elsewhere, when something the test needs is missing."""
    if not condition:
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)


def test_frontend_unit_tests_pass():
    npm = shutil.which("npm")
    need(npm is not None, "npm is not installed")
    need((LABEXT / "node_modules").is_dir(),
         "labextension/node_modules is missing (pip install -e . runs npm ci)")
    result = subprocess.run([npm, "test", "--silent"], cwd=LABEXT, capture_output=True,
                            text=True, timeout=240, env=dict(os.environ, NO_COLOR="1"))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"Tests\s+\d+ passed", result.stdout), result.stdout[-3000:]


def test_lock_file_downloads_only_from_the_npm_registry():
    lock = json.loads((LABEXT / "package-lock.json").read_text())
    package = json.loads((LABEXT / "package.json").read_text())
    assert lock["packages"][""]["devDependencies"] == package["devDependencies"]
    assert lock["packages"][""]["dependencies"] == package["dependencies"]
    elsewhere = {name: entry["resolved"] for name, entry in lock["packages"].items()
                 if "resolved" in entry
                 and not entry["resolved"].startswith("https://registry.npmjs.org/")}
    assert elsewhere == {}


def test_labextension_paths_name_the_built_extension():
    [paths] = colab_guard._jupyter_labextension_paths()
    package = json.loads((LABEXT / "package.json").read_text())
    assert paths["dest"] == package["name"] == "colab-guard"
    assert package["jupyterlab"]["outputDir"] == f"../colab_guard/{paths['src']}"


def test_prebuilt_extension_is_installed_and_enabled():
    need((INSTALLED / "package.json").exists(),
         f"the labextension is not installed in {INSTALLED} (pip install -e .)")
    built = json.loads((INSTALLED / "package.json").read_text())
    assert (INSTALLED / built["jupyterlab"]["_build"]["load"]).is_file()
    jupyter = Path(sys.executable).parent / "jupyter"
    need(jupyter.exists() and shutil.which("jupyter-lab", path=str(jupyter.parent)) is not None,
         "JupyterLab is not installed (pip install -e '.[lab]')")
    result = subprocess.run([str(jupyter), "labextension", "list"], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, NO_COLOR="1"))
    listing = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert re.search(r"colab-guard v\S+ enabled\s+OK", listing), listing
