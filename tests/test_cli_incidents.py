"""``colab-guard incidents|strikes|appeals``: reads the server's configuration and database,
prints what the REST API returns, and never passes terminal escapes through."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time

import pytest

from colab_guard.cli import main
from tests.guard_users import ADMIN, OTHER, OWNER, api, enforced_incident, users_config


@pytest.fixture
def jp_server_config(guard_config):
    return users_config(guard_config)


@pytest.fixture
def server_config_file(jp_config_dir, guard_config):
    """The server's settings in the usual config file, where the CLI finds them unaided."""
    path = jp_config_dir / "jupyter_server_config.json"
    path.write_text(json.dumps({"ColabGuard": {"database_url": guard_config["database_url"]}}))
    return path


@pytest.fixture
def guard(jp_serverapp, server_config_file):
    return jp_serverapp.web_app.settings["colab_guard"]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(text: str) -> list:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def recorded(guard):
    """Two users' incidents, one appealed, one from an hour ago."""
    mine = enforced_incident(OWNER)
    old = enforced_incident(OWNER, category="torrenting", time=time.time() - 3600)
    theirs = enforced_incident(OTHER, category="password-cracking")
    for incident in (mine, old, theirs):
        assert guard.store.save(incident)
    guard.store.appeal(mine.id, OWNER, "a course exercise")
    return mine, old, theirs


async def test_the_cli_prints_what_the_api_returns(jp_fetch, capsys, recorded):
    mine = recorded[0]
    code, out, _ = cli(capsys, "incidents", "list", "--json")
    _, listed = await api(jp_fetch, ADMIN, "incidents")
    assert code == 0 and json_lines(out) == listed["incidents"]
    assert len(listed["incidents"]) == 3

    code, out, _ = cli(capsys, "incidents", "show", mine.id[:8], "--json")
    _, shown = await api(jp_fetch, ADMIN, "incidents", mine.id)
    assert code == 0 and json.loads(out) == shown
    assert shown["appeals"][0]["text"] == "a course exercise"

    code, out, _ = cli(capsys, "appeals", "list", "--json")
    _, appeals = await api(jp_fetch, ADMIN, "appeals")
    assert json_lines(out) == appeals["appeals"]

    code, out, _ = cli(capsys, "strikes", "list", "--json")
    _, strikes = await api(jp_fetch, ADMIN, "strikes")
    assert json_lines(out) == strikes["strikes"] and len(strikes["strikes"]) == 3


async def test_filters(capsys, recorded):
    mine, old, theirs = recorded
    ids = lambda out: [i["id"] for i in json_lines(out)]  # noqa: E731
    assert ids(cli(capsys, "incidents", "list", "--json", "--user", OTHER)[1]) == [theirs.id]
    assert ids(cli(capsys, "incidents", "list", "--json", "--category", "torrenting")[1]) == [old.id]
    assert set(ids(cli(capsys, "incidents", "list", "--json", "--since", "30m")[1])) == \
        {mine.id, theirs.id}
    code, out, _ = cli(capsys, "incidents", "list", "--user", OWNER)
    assert code == 0 and mine.id[:12] in out and old.id[:12] in out and theirs.id[:12] not in out


async def test_resolving_an_appeal_from_the_cli_shows_in_the_api(jp_fetch, capsys, guard, recorded):
    mine = recorded[0]
    appeal_id = guard.store.appeals(incident_id=mine.id)[0].id
    code, out, _ = cli(capsys, "appeals", "resolve", appeal_id, "accept", "--reply", "Agreed.")
    assert code == 0 and "accepted" in out
    _, appeals = await api(jp_fetch, OWNER, "appeals")
    assert appeals["appeals"][0]["status"] == "accepted"
    assert appeals["appeals"][0]["reply"] == "Agreed."
    _, strikes = await api(jp_fetch, OWNER, "strikes")
    assert mine.id not in [s["incident_id"] for s in strikes["strikes"]]

    code, _, err = cli(capsys, "appeals", "resolve", appeal_id, "reject")
    assert code == 2 and "already accepted" in err


async def test_clearing_strikes_from_the_cli_shows_in_the_api(jp_fetch, capsys, recorded):
    code, out, _ = cli(capsys, "strikes", "clear", OWNER)
    assert code == 0 and "cleared 2 strike(s)" in out
    _, strikes = await api(jp_fetch, ADMIN, "strikes")
    assert [s["user"] for s in strikes["strikes"]] == [OTHER]


async def test_unknown_ids_are_errors(capsys, recorded):
    code, _, err = cli(capsys, "incidents", "show", "ffffffffffff")
    assert code == 2 and "no incident with id 'ffffffffffff'" in err
    code, _, err = cli(capsys, "incidents", "show", "../etc")
    assert code == 2 and "not an id" in err


async def test_terminal_escapes_in_evidence_are_neutralised(capsys, guard):
    hostile = enforced_incident(OWNER)
    hostile.evidence["processes"][0]["cmdline"] = "xmrig \x1b]0;owned\x07\x1b[2J\u202egnp.exe"
    hostile.evidence["processes"][0]["name"] = "x\x1b[31mred"
    guard.store.save(hostile)
    for argv in (("incidents", "list"), ("incidents", "show", hostile.id),
                 ("incidents", "list", "--json"), ("incidents", "show", hostile.id, "--json")):
        code, out, _ = cli(capsys, *argv)
        assert code == 0
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, argv
    code, out, _ = cli(capsys, "incidents", "show", hostile.id)
    assert "xmrig \\x1b]0;owned\\x07\\x1b[2J\\u202egnp.exe" in out


def test_tail_follows_new_incidents(jp_environ, server_config_file, guard_config):
    from colab_guard.record.database import IncidentDatabase

    db = IncidentDatabase(guard_config["database_url"])
    db.save(enforced_incident(OWNER))  # already there: not printed
    tail = subprocess.Popen([sys.executable, "-c", "import sys; from colab_guard.cli import main; "
                             "sys.exit(main(sys.argv[1:]))", "incidents", "tail", "--interval",
                             "0.1", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ)
    try:
        assert "following new incidents" in tail.stderr.readline()  # it has read where it starts
        fresh = enforced_incident(OTHER, category="torrenting")
        db.save(fresh)
        selector = selectors.DefaultSelector()
        selector.register(tail.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=20), "tail printed nothing"
        line = json.loads(tail.stdout.readline())
        assert line["id"] == fresh.id and line["appeals"] == []
    finally:
        tail.terminate()
        tail.wait(10)


async def test_an_incident_from_an_installed_package_shows_it_and_no_strike(capsys, guard):
    package = {"name": "ultralytics", "version": "8.3.41", "path": "/venv/bin/yolo"}
    from_package = enforced_incident(OWNER, package=package, strike=False)
    own = enforced_incident(OWNER)
    for incident in (from_package, own):
        assert guard.store.save(incident)

    code, out, _ = cli(capsys, "incidents", "list", "--package", "ultralytics", "--json")
    assert code == 0 and [i["id"] for i in json_lines(out)] == [from_package.id]
    assert json_lines(out)[0]["package"] == package
    code, out, _ = cli(capsys, "incidents", "show", from_package.id)
    assert "strike:      no" in out
    assert "package:     ultralytics 8.3.41 (/venv/bin/yolo): no strike" in out
    code, out, _ = cli(capsys, "incidents", "list")
    assert "[package ultralytics 8.3.41]" in out
    assert [s.incident_id for s in guard.store.strikes(OWNER)] == [own.id]
