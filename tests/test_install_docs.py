"""What a newcomer meets first: ./dev says what it does and where the colab-guard command is,
./dev test says why tests were skipped, and the README says how to install from a checkout or a
wheel, where the command is, and how Prometheus authenticates to /metrics."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
VENV = ROOT / ".venv"


def test_dev_test_shows_why_tests_were_skipped_and_names_failures_last():
    script = (ROOT / "dev").read_text()
    assert 'exec "$PY" -m pytest -rsfE "$@"' in script


def test_dev_lab_says_what_it_does_and_where_colab_guard_is():
    stamp = VENV / ".colab-guard-installed"
    if not stamp.exists() or (ROOT / "pyproject.toml").stat().st_mtime > stamp.stat().st_mtime:
        pytest.skip("the environment is not set up (./dev setup first)")
    result = subprocess.run([str(ROOT / "dev"), "lab", "--version"], capture_output=True,
                            text=True, timeout=600, env=dict(os.environ, NO_COLOR="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    said = result.stderr
    assert "dev: starting JupyterLab, guarded by colab-guard" in said
    assert ".venv/bin/colab-guard" in said
    assert (VENV / "bin" / "colab-guard").exists()


def test_the_install_steps_print_progress_and_the_command_path():
    script = (ROOT / "dev").read_text()
    assert "say \"creating the virtual environment" in script
    assert "say \"installing colab-guard (editable)" in script
    assert "The command line tool is $VENV/bin/colab-guard" in script


@pytest.mark.parametrize("text", [
    ".venv/bin/colab-guard",                                  # where the command is after ./dev lab
    "pip install /path/to/colab-guard",                       # from a checkout
    "python -m build --wheel",                                # or a wheel
    "jupyter server extension list",
    "jupyter labextension list",
    "authenticate_prometheus",                                # /metrics and Prometheus
    "authorization: {type: Bearer",
    "categories: [course-cheating]",                          # declaring a category
    "parameter 'category': unknown category 'bogus'",         # the API's 400
    "colab-guard: --config site_config.py: no such file",     # the CLI's configuration errors
    "sockets: not visible (it is in another",                 # scan across namespaces
    "**Clear\nstrikes…**",                                    # the admin panel acts
    "**Appeal** button in \"My incidents\"",
])
def test_the_readme_says_it(text):
    assert text in README
    assert "pip install colab-guard`" not in README  # not on a registry
