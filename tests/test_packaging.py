"""The operator's install path: `python -m build` makes a wheel that works on its own: installed in
a fresh virtual environment (no Node.js needed there), Jupyter lists the server extension and the
JupyterLab extension, and the colab-guard command runs.

Slow (builds the JupyterLab extension, installs JupyterLab): it runs with
COLAB_GUARD_TEST_WHEEL=1 and skips otherwise, saying so.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    os.environ.get("COLAB_GUARD_TEST_WHEEL") != "1",
    reason="slow (builds a wheel, installs it with JupyterLab in a fresh venv): "
           "set COLAB_GUARD_TEST_WHEEL=1 to run it")


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=900,
                            **kwargs)
    assert result.returncode == 0, f"{argv}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    # Jupyter colours its listings whatever NO_COLOR says.
    result.stdout = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    result.stderr = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr)
    return result


def test_a_built_wheel_installs_and_jupyter_finds_both_extensions(tmp_path):
    builder = tmp_path / "build-env"
    venv.create(builder, with_pip=True)
    run(builder / "bin" / "python", "-m", "pip", "install", "--quiet", "build")
    run(builder / "bin" / "python", "-m", "build", "--wheel", "--outdir", tmp_path / "dist", ROOT)
    [wheel] = (tmp_path / "dist").glob("colab_guard-*.whl")

    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=True)
    run(fresh / "bin" / "python", "-m", "pip", "install", "--quiet", wheel, "jupyterlab")
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), NO_COLOR="1",
               JUPYTER_PLATFORM_DIRS="1")
    env.pop("JUPYTER_PATH", None)
    env.pop("PYTHONPATH", None)
    server = run(fresh / "bin" / "jupyter", "server", "extension", "list", env=env, cwd=tmp_path)
    listing = server.stdout + server.stderr
    assert re.search(r"colab_guard\s+enabled", listing), listing
    assert re.search(r"colab_guard \S+ OK", listing), listing
    lab = run(fresh / "bin" / "jupyter", "labextension", "list", env=env, cwd=tmp_path)
    assert re.search(r"colab-guard v\S+ enabled\s+OK", lab.stdout + lab.stderr), lab.stdout
    command = run(fresh / "bin" / "colab-guard", "signatures", "list", env=env, cwd=tmp_path)
    assert "mining-stratum-url" in command.stdout
    assert (fresh / "etc" / "ipython" / "startup" / "50-colab-guard.py").is_file()
    assert sys.prefix != str(fresh)
