"""Evidence is untrusted: a real process with a 1 MB command line, binary garbage, invalid
UTF-8, terminal escapes and HTML in its arguments and its name (prctl PR_SET_NAME) is stored
safely, cut with a marker, and shown escaped in the server log, the API, the CLI and the
notebook. And a user cannot have the guard blame or stop another user's processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time

import psutil
import pytest

from colab_guard.cli import main as cli_main
from colab_guard.observe.processes import ProcessSampler, kernel_environment
from colab_guard.record.database import IncidentDatabase
from colab_guard.record.incident import MAX_EVIDENCE_TEXT
from tests.conftest import PYTHON, incidents_in, wait_for

pytestmark = pytest.mark.integration

HTML = "<img src=x onerror=alert(1)>"
ESCAPES = "\x1b]0;owned\x07\x1b[2J"
COMM = b"\x1b[31m<b>x\xff"  # 15 bytes at most: the kernel cuts the name there

# Renames itself, connects to the pool named in its arguments, then idles.
HOSTILE_PROGRAM = """\
import ctypes, socket, sys, time
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(%r), 0, 0, 0)  # PR_SET_NAME
url = next(a for a in sys.argv if a.startswith('stratum'))
host, port = url.split('://')[1].rsplit(':', 1)
s = socket.create_connection((host, int(port)))
time.sleep(120)
""" % COMM


@pytest.fixture
def guard_config(guard_config):
    guard_config.update(cell_checks=True)  # the hook shows its message in the notebook
    return guard_config


@pytest.fixture
def server_config_file(jp_config_dir, guard_config):
    """The server's settings where the colab-guard command finds them."""
    path = jp_config_dir / "jupyter_server_config.json"
    path.write_text(json.dumps({"ColabGuard": {"database_url": guard_config["database_url"]}}))
    return path


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(self.format(record))


def hostile_argv(tmp_path, pool: int) -> list:
    script = tmp_path / "prog.py"
    script.write_text(HOSTILE_PROGRAM)
    big = ["A" * 100_000] * 10  # 1 MB in all (one argument may hold at most 128 KiB)
    return [PYTHON, str(script), HTML, ESCAPES, b"\xff\xfe garbage \xc3(",
            f"stratum+tcp://127.0.0.1:{pool}", *big]


async def test_hostile_evidence_is_stored_cut_and_escaped_everywhere(
        kernel, guard, pool, guard_config, jp_fetch, tmp_path, server_config_file, capsys):
    lines = Lines()
    guard.log.addHandler(lines)
    await wait_for(lambda: guard.channel.connected(kernel.kernel_id), timeout=30)
    argv = hostile_argv(tmp_path, pool)
    (tmp_path / "argv.py").write_text(f"ARGV = {argv!r}\n")
    # The cell reads its arguments from a file: the cell check sees nothing to refuse.
    code = (f"import subprocess, runpy\nargv = runpy.run_path({str(tmp_path / 'argv.py')!r})['ARGV']\n"
            "p = subprocess.Popen(argv)\nprint('PID', p.pid, flush=True)\np.wait()\n")
    try:
        reply, outputs = await kernel.run(code, timeout=60)
    finally:
        guard.log.removeHandler(lines)
    pid = int(next(o["text"] for o in outputs if o.get("text", "").startswith("PID")).split()[1])
    try:
        assert reply["status"] == "error"
        [incident] = await wait_for(lambda: [i for i in incidents_in(guard_config["incident_log"])
                                             if i["status"] == "done"], timeout=20)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    evidence = incident["evidence"]["processes"][0]

    # Stored safely: valid text, the name as the kernel keeps it, cut with a marker.
    assert evidence["name"] == COMM.decode("utf-8", "replace")
    cmdline = evidence["cmdline"]
    assert len(cmdline) < MAX_EVIDENCE_TEXT + 40
    assert cmdline.endswith(" more characters]") and "…[" in cmdline
    assert HTML in cmdline and ESCAPES in cmdline and "\ufffd" in cmdline
    stored = IncidentDatabase(guard_config["database_url"]).get(incident["id"])
    assert stored.evidence["processes"][0] == evidence

    # The API: JSON, every control character escaped, valid UTF-8.
    raw = (await jp_fetch("colab-guard", "api", "incidents", incident["id"])).body
    assert not any(b < 0x20 for b in raw)
    assert json.loads(raw.decode("utf-8"))["evidence"]["processes"][0]["cmdline"] == cmdline

    # The server log: one line per incident, escapes shown as text.
    logged = [m for m in lines.messages if "colab-guard: incident" in m]
    assert len(logged) == 1 and "\\x1b" in logged[0]
    assert not any(c in m for m in lines.messages for c in ("\x1b", "\x07", "\x00"))

    # The CLI: escapes shown, never passed to the terminal.
    for argv_ in (("incidents", "show", incident["id"]), ("incidents", "list"),
                  ("incidents", "show", incident["id"], "--json")):
        assert cli_main(list(argv_)) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\x07" not in out, argv_
    cli_main(["incidents", "show", incident["id"]])
    assert "\\x1b]0;owned\\x07" in capsys.readouterr().out

    # The notebook: the hook's message shows the command line as text, not markup.
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "colab-guard" in html or "disallowed" in html
    assert HTML not in html and "\x1b" not in html
    assert "\\x1b[31m&lt;b&gt;x" in html and "<b>" not in html
    text = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "\\x1b[31m<b>x" in text and "\x1b" not in text  # jupyter console, nbconvert


# ---------------------------------------------------------------- other users

NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_another_users_process_naming_a_kernel_is_not_attributed_to_it():
    # User code cannot make the guard blame a kernel for (or stop) someone else's process:
    # a process of another uid that carries a kernel's marker is not claimed for it.
    kernel = subprocess.Popen(["sleep", "600"], env=kernel_environment("k1"),
                              start_new_session=True)
    ours = subprocess.Popen(["sleep", "600"], env=kernel_environment("k1"), start_new_session=True)
    foreign = subprocess.Popen(["sleep", "600"], env=kernel_environment("k1"),
                               start_new_session=True, user=NOBODY)
    try:
        time.sleep(0.1)
        sampler = ProcessSampler(logging.getLogger("test"))
        snap = sampler.sample({"k1": kernel.pid})["k1"]
        pids = {p.pid for p in snap.processes}
        assert ours.pid in pids  # an orphan of the kernel's user is claimed by its marker
        assert foreign.pid not in pids and sampler.owner_of(foreign.pid) is None
        assert psutil.Process(foreign.pid).uids().real == NOBODY
    finally:
        for proc in (kernel, ours, foreign):
            proc.kill()
            proc.wait()


@pytest.fixture
def two_kernels(start_kernel):
    return start_kernel(), start_kernel()


async def test_a_kernel_cannot_report_as_another_kernel(two_kernels, guard):
    # User code in one kernel holds its own channel token; it tries to speak for another
    # kernel, as the kernel and as a child about to exec: both refused.
    from colab_guard.record import metrics

    mine, theirs = two_kernels
    await wait_for(lambda: guard.channel.connected(mine.kernel_id)
                   and guard.channel.connected(theirs.kernel_id), timeout=30)
    refused = metrics.KERNEL_CHANNEL_REFUSED._value.get()
    code = ("import os, socket\nfrom colab_guard.kernel import protocol\nanswers = []\n"
            "for role in ('kernel', 'child'):\n"
            "    s = socket.socket(socket.AF_UNIX)\n    s.settimeout(10)\n"
            "    s.connect(os.environ[protocol.ENV_SOCKET])\n"
            f"    s.sendall(protocol.encode('hello', kernel_id={theirs.kernel_id!r}, "
            "token=os.environ[protocol.ENV_TOKEN], role=role))\n"
            "    answers.append(s.recv(1000))\n    s.close()\n"
            "print('ANSWERS', answers)\n")
    reply, outputs = await mine.run(code)
    assert reply["status"] == "ok"
    assert "ANSWERS [b'', b'']" in "".join(o.get("text", "") for o in outputs)
    assert metrics.KERNEL_CHANNEL_REFUSED._value.get() == refused + 2
    assert guard.channel.connected(theirs.kernel_id)  # their own connection is untouched
    assert guard.store.query(kernel_id=theirs.kernel_id) == []
