"""Python servers recognised by what serves, not by a name: an SSH server written with
asyncssh and a SOCKS proxy served with pproxy, in the kernel (the kernel hook reports whose
code bound each port) or in a script; and their near-miss, an asyncssh client beside a
dashboard the kernel serves.

A server started in the kernel's event loop outlives the cell that started it: interrupting
the kernel does not stop it, so the guard shuts the kernel down when it goes on serving."""

from __future__ import annotations

import socket
from datetime import datetime

import psutil
import pytest

from tests.conftest import SERVER_USER, KernelRunner, incidents_in, wait_for
from tests.harness import free_port

pytestmark = pytest.mark.integration

#: the module names assembled at run time: no cell or file text names them
SSH_SERVER = ("import importlib, asyncio, time\n"
              "ssh = importlib.import_module('async' + 'ssh')\n"
              "key = ssh.generate_private_key('ssh-ed25519')\n"
              "print('SERVING', time.time(), flush=True)\n"
              "server = await getattr(ssh, 'lis' + 'ten')('127.0.0.1', PORT, server_host_keys=[key])\n")

SOCKS_SERVER = ("import importlib, asyncio, time\n"
                "px = importlib.import_module('ppro' + 'xy')\n"
                "server = px.Server('socks5://127.0.0.1:PORT')\n"
                "print('SERVING', time.time(), flush=True)\n"
                "handler = await server.start_server({'rserver': [px.Connection('direct://')]})\n")


async def _stopped(kernel, guard_config, code: str, signature: str) -> dict:
    port = free_port()
    reply, outputs = await kernel.run(code.replace("PORT", str(port)), timeout=120)
    text = KernelRunner.text(outputs)
    serving = float(next(line.split()[1] for line in text.splitlines()
                         if line.startswith("SERVING")))
    found = await wait_for(lambda: [i for i in incidents_in(guard_config["incident_log"])
                                    if i["status"] == "done"], timeout=20)
    first = found[0]
    assert first["signature"] == signature, first
    assert (first["user"], first["kernel_id"]) == (SERVER_USER, kernel.kernel_id)
    assert _recorded_after(first, serving) <= STOP_WITHIN, first["time"]
    assert [a["action"] for a in first["actions"] if a["target"] == "kernel"][0] == "interrupt"
    # the server lives on in the kernel's event loop: the kernel is shut down
    shut = await wait_for(lambda: [i for i in incidents_in(guard_config["incident_log"])
                                   if any(a["action"] == "shutdown" and a["outcome"] == "done"
                                          for a in i["actions"])], timeout=30)
    assert shut[0]["signature"] == signature
    await wait_for(lambda: _refused(port), timeout=20)
    # One offence, one incident, one strike: the shutdown (the policy shuts a kernel that
    # offends again past KERNEL_GRACE down) is carried out and recorded in the interrupt's
    # incident, which says so, naming the user and the kernel: nothing else.
    recorded = incidents_in(guard_config["incident_log"])
    assert [(i["id"], i["signature"], i["user"], i["kernel_id"],
             [a["action"] for a in i["actions"] if a["target"] == "kernel"]) for i in recorded] \
        == [(first["id"], signature, SERVER_USER, kernel.kernel_id, ["interrupt", "shutdown"])], \
        recorded
    assert [(i["strike"], "escalation" in i["evidence"]) for i in recorded] == [(True, True)]
    return first


#: recorded soon after serving, by the rule and not some later pass (its 2 s goal is a
#: benchmark's, `./dev bench detection`: a loaded CI machine may run ticks late)
STOP_WITHIN = 10.0


def _recorded_after(incident: dict, started: float) -> float:
    return datetime.fromisoformat(incident["time"]).timestamp() - started


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


async def test_an_ssh_server_written_with_asyncssh_in_the_kernel_is_stopped(kernel, guard_config):
    incident = await _stopped(kernel, guard_config, SSH_SERVER, "remote-python-ssh-server")
    assert incident["category"] == "remote-access"


async def test_a_socks_proxy_served_with_pproxy_in_the_kernel_is_stopped(kernel, guard_config):
    incident = await _stopped(kernel, guard_config, SOCKS_SERVER, "proxy-python-server")
    assert incident["category"] == "proxy"


async def test_a_pproxy_script_in_a_subprocess_is_stopped(kernel, guard_config, tmp_path):
    script = tmp_path / "relay.py"
    script.write_text("import asyncio\nimport pproxy\n"
                      "async def main():\n"
                      "    server = pproxy.Server('socks5://127.0.0.1:0')\n"
                      "    await server.start_server({'rserver': [pproxy.Connection('direct://')]})\n"
                      "    await asyncio.sleep(60)\n"
                      "asyncio.run(main())\n")
    code = ("import subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, {str(script)!r}])\n"
            "print('SERVING', time.time(), flush=True)\n"
            "p.wait()\n")
    reply, outputs = await kernel.run(code, timeout=120)
    text = KernelRunner.text(outputs)
    assert reply["status"] == "error", text  # the kernel was interrupted
    serving = float(next(line.split()[1] for line in text.splitlines()
                         if line.startswith("SERVING")))
    found = await wait_for(lambda: [i for i in incidents_in(guard_config["incident_log"])
                                    if i["status"] == "done"], timeout=20)
    assert len(found) == 1, found
    incident = found[0]
    assert incident["signature"] == "proxy-python-server"
    assert (incident["user"], incident["kernel_id"]) == (SERVER_USER, kernel.kernel_id)
    # from the script's start (printed just after Popen): the rule's 2 s and a late tick
    assert _recorded_after(incident, serving) <= STOP_WITHIN, incident["time"]
    relay = incident["evidence"]["processes"][0]
    assert "relay.py" in relay["cmdline"]
    # stopped; or gone first: the kernel's interrupt is SIGINT to its process group
    # (jupyter_client), which a Python script in it takes as KeyboardInterrupt
    stops = {a["outcome"] for a in incident["actions"] if a["action"] == "stop"
             and a["target"] == f"pid {relay['pid']}"}
    assert len(stops) == 1 and stops <= {"done", "gone"}, incident["actions"]
    assert not psutil.pid_exists(relay["pid"]) \
        or psutil.Process(relay["pid"]).status() == psutil.STATUS_ZOMBIE


async def test_an_asyncssh_client_beside_a_dashboard_in_the_kernel_is_left_alone(
        kernel, guard_config, guard):
    code = ("import asyncssh, asyncio, threading\n"
            "from http.server import ThreadingHTTPServer, SimpleHTTPRequestHandler\n"
            "app = ThreadingHTTPServer(('127.0.0.1', 0), SimpleHTTPRequestHandler)\n"
            "threading.Thread(target=app.serve_forever, daemon=True).start()\n"
            "for _ in range(3):  # an SSH client: nobody answers here, it tries again\n"
            "    try:\n"
            "        await asyncio.wait_for(asyncssh.connect('127.0.0.1', 1, known_hosts=None), 2)\n"
            "    except (OSError, asyncio.TimeoutError):\n"
            "        pass\n"
            "    await asyncio.sleep(1)\n"
            "print('done', app.server_address[1])\n")
    ticks = guard.monitor.ticks
    reply, outputs = await kernel.run(code, timeout=120)
    assert reply["status"] == "ok", KernelRunner.text(outputs)
    assert guard.monitor.ticks - ticks >= 4
    assert incidents_in(guard_config["incident_log"]) == []
