"""The command line tool and a broken configuration: every error is one line naming the file
or the setting (exit status 2, no traceback); nothing falls back to defaults silently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from colab_guard.cli import main

GOOD_RULE = """\
signatures:
  - id: site-rule
    category: crypto-mining
    severity: high
    description: a site rule
    when: {name: {equals: gpuhasher}}
    examples: {match: [{name: gpuhasher}], no_match: [{name: bash}]}
"""


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No Jupyter configuration but what each test writes."""
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "jupyter-config"))
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(tmp_path / "jupyter-config"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_NO_CONFIG", "")
    monkeypatch.chdir(tmp_path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str) -> str:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("colab-guard: ")
    return lines[0]


@pytest.mark.parametrize("setting, value, expected", [
    ("sample_interval", "0", "'sample_interval' trait of a ColabGuard instance should not be less than 0.1"),
    ("actions", '{"crypto-mining": "shutdwon"}', "ColabGuard.actions['crypto-mining']: 'shutdwon'"),
    ("strike_limit", '"three"', "'strike_limit' trait of a ColabGuard instance expected an int"),
    ("stop_grace", "-1", "'stop_grace' trait of a ColabGuard instance should not be less than 0"),
    ("default_action", '"explode"', "'default_action' trait of a ColabGuard instance"),
    ("cell_check_timeout", "100", "'cell_check_timeout' trait of a ColabGuard instance should not be greater than 10"),
])
@pytest.mark.parametrize("kind", ["py", "json"])
def test_a_bad_setting_in_a_config_file_is_one_line_naming_the_setting_and_file(
        tmp_path, capsys, setting, value, expected, kind):
    if kind == "py":
        config = tmp_path / "site_config.py"
        config.write_text(f"c.ColabGuard.{setting} = {value}\n")
    else:
        config = tmp_path / "site_config.json"
        config.write_text(json.dumps({"ColabGuard": {setting: json.loads(value)}}))
    for argv in (["signatures", "list"], ["incidents", "list"], ["strikes", "list"]):
        line = one_error_line(*run(capsys, "--config", str(config), *argv)[::2])
        assert f"bad setting in --config {config}" in line and expected in line, line


def test_a_bad_setting_in_the_servers_own_config_names_the_setting(tmp_path, capsys):
    (tmp_path / "jupyter-config").mkdir()
    (tmp_path / "jupyter-config" / "jupyter_server_config.json").write_text(
        json.dumps({"ColabGuard": {"sample_interval": 0}}))
    line = one_error_line(*run(capsys, "signatures", "list")[::2])
    assert "bad setting in the server's configuration" in line and "sample_interval" in line


def test_a_config_file_that_does_not_exist_is_an_error_naming_it(tmp_path, capsys):
    missing = tmp_path / "nope_config.py"
    line = one_error_line(*run(capsys, "--config", str(missing), "signatures", "list")[::2])
    assert line == f"colab-guard: --config {missing}: no such file"


def test_a_config_file_that_is_not_valid_python_or_json_names_the_file(tmp_path, capsys):
    broken_py = tmp_path / "broken_config.py"
    broken_py.write_text("c.ColabGuard.dry_run = True\nc.ColabGuard.actions = {\n")
    line = one_error_line(*run(capsys, "--config", str(broken_py), "signatures", "list")[::2])
    assert f"--config {broken_py}, line 2: not valid Python" in line
    broken_json = tmp_path / "broken_config.json"
    broken_json.write_text('{"ColabGuard": {')
    line = one_error_line(*run(capsys, "--config", str(broken_json), "signatures", "list")[::2])
    assert f"--config {broken_json}: not valid JSON" in line
    raising = tmp_path / "raising_config.py"
    raising.write_text("import no_such_module_here\n")
    line = one_error_line(*run(capsys, "--config", str(raising), "signatures", "list")[::2])
    assert f"--config {raising}: ModuleNotFoundError" in line


def test_a_json_config_is_read_alone_not_with_a_python_file_of_the_same_name(tmp_path, capsys):
    (tmp_path / "site.py").write_text("c.ColabGuard.sample_interval = 0\n")
    (tmp_path / "site.json").write_text(json.dumps({"ColabGuard": {"dry_run": True}}))
    code, out, err = run(capsys, "--config", str(tmp_path / "site.json"), "signatures", "list",
                         "--json")
    assert code == 0, err
    assert all(json.loads(line)["action"].startswith("would ") for line in out.splitlines())


def test_a_broken_signature_file_named_by_the_config_gives_every_error_without_traceback(
        tmp_path, capsys):
    rules = tmp_path / "site.yaml"
    rules.write_text(GOOD_RULE.replace("severity: high", "severity: extreme")
                     .replace("crypto-mining", "crypto-minning"))
    config = tmp_path / "site_config.py"
    config.write_text(f"c.ColabGuard.signature_paths = [{str(rules)!r}]\n")
    for argv in (["signatures", "list"], ["scan", str(__import__("os").getpid())]):
        code, _, err = run(capsys, "--config", str(config), *argv)
        assert code == 2 and "Traceback" not in err
        assert err.splitlines() == [
            f"colab-guard: ColabGuard.signature_paths: {rules}, line 3: signature 'site-rule', "
            "field 'category': unknown category 'crypto-minning'; " + err.splitlines()[0]
            .split("'crypto-minning'; ")[1],
            f"colab-guard: ColabGuard.signature_paths: {rules}, line 4: signature 'site-rule', "
            "field 'severity': 'extreme' is not one of: low, medium, high, critical"]


def test_a_missing_signature_file_or_an_unknown_disabled_id_names_the_setting(tmp_path, capsys):
    config = tmp_path / "site_config.py"
    config.write_text(f"c.ColabGuard.signature_paths = [{str(tmp_path / 'gone.yaml')!r}]\n")
    line = one_error_line(*run(capsys, "--config", str(config), "signatures", "list")[::2])
    assert line == (f"colab-guard: ColabGuard.signature_paths: {tmp_path / 'gone.yaml'}: "
                    "no such file or folder")
    config.write_text("c.ColabGuard.disabled_signatures = ['mining-known-minerr']\n")
    line = one_error_line(*run(capsys, "--config", str(config), "signatures", "list")[::2])
    assert line == ("colab-guard: ColabGuard.disabled_signatures names unknown id(s): "
                    "mining-known-minerr")


def test_the_installed_command_prints_no_traceback(tmp_path):
    config = tmp_path / "site_config.py"
    config.write_text("c.ColabGuard.sample_interval = 0\n")
    result = subprocess.run([str(Path(sys.executable).parent / "colab-guard"), "--config", str(config),
                             "signatures", "list"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"colab-guard: bad setting in --config {config}: The value of the 'sample_interval' "
        "trait of a ColabGuard instance should not be less than 0.1, but a value of 0.0 was "
        "specified"]


def test_signatures_check_reports_every_error_at_its_fields_line(tmp_path, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text(GOOD_RULE.replace("crypto-mining", "crypto-minning")
                     + GOOD_RULE.replace("signatures:\n", "").replace("site-rule", "other-rule")
                     .replace("{equals: gpuhasher}", "{gte: 3}"))
    code, out, _ = run(capsys, "signatures", "check", str(rules))
    assert code == 1
    assert [line.split(", field ")[0] for line in out.splitlines()] == [
        f"FAIL {rules}, line 3: signature 'site-rule'",
        f"FAIL {rules}, line 12: signature 'other-rule'"]
    assert "unknown category 'crypto-minning'" in out and "when.name.gte" in out

    declared = tmp_path / "categories.yaml"
    declared.write_text("categories: [crypto-minning]\n")
    rules.write_text(GOOD_RULE.replace("crypto-mining", "crypto-minning"))
    code, out, _ = run(capsys, "signatures", "check", str(declared), str(rules))
    assert code == 0, out
    assert out.splitlines()[-1].startswith(f"ok   {rules}: 1 signature(s)")


def test_a_misspelt_setting_is_an_error_naming_it_and_the_likely_one(tmp_path, capsys):
    config = tmp_path / "site_config.py"
    config.write_text("c.ColabGuard.sample_intervall = 3\n")
    line = one_error_line(*run(capsys, "--config", str(config), "incidents", "list")[::2])
    assert line == (f"colab-guard: unknown setting ColabGuard.sample_intervall in --config "
                    f"{config} (did you mean ColabGuard.sample_interval?)")


def test_a_database_that_cannot_be_used_is_one_line_naming_the_setting(tmp_path, capsys):
    config = tmp_path / "site_config.py"
    config.write_text('c.ColabGuard.database_url = "postgres://db/incidents"\n')
    line = one_error_line(*run(capsys, "--config", str(config), "incidents", "list")[::2])
    assert "ColabGuard.database_url 'postgres://db/incidents'" in line
    config.write_text(f'c.ColabGuard.database_url = "sqlite:///{tmp_path}/file/inside/a-file.sqlite"\n')
    (tmp_path / "file").write_text("not a folder")
    line = one_error_line(*run(capsys, "--config", str(config), "strikes", "list")[::2])
    assert "ColabGuard.database_url" in line and "a-file.sqlite" in line
