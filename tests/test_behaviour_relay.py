"""Relays recognised by what they do (observe/behaviour.py): a kernel's processes accept a
connection and an outbound connection of theirs carries the same bytes each way, for several
clients; whatever the program is called, split across processes or not. And the honest
servers closest to one: a web app querying a database per request, a forward to the user's
own app. Real processes watched by the real sampler; one real guarded kernel at the end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import KernelRunner, incidents_in, wait_for
from tests.standins.watched import ENV, Watched

ROOT = Path(__file__).parent.parent
RELAY = [sys.executable, "-m", "tests.standins.relay"]


@pytest.fixture
def far_end():
    """A server outside any kernel (the outside host a relay reaches)."""
    proc = subprocess.Popen(RELAY + ["stream"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            text=True)
    yield int(proc.stdout.readline())
    proc.kill()
    proc.wait()


def _users(kind: str, port: int, target: int = 0, count: int = 4, requests: int = 2) -> list[int]:
    """Users downloading at once, from a process of their own: what each got."""
    done = subprocess.run(RELAY + ["users", kind, str(port), str(target), str(count),
                                   str(requests)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=180)
    return [int(n) for n in done.stdout.split()]


def _completed(got: list[int], requests: int = 2) -> int:
    """Users who got everything they asked for (on this loaded machine one may time out)."""
    return sum(n >= requests * 10 * 16 * 1024 for n in got)


def _started(argv: list[str]) -> tuple[Watched, int]:
    watched = Watched(argv)
    port = int(watched.proc.stdout.readline())
    return watched.warm(), port


# ------------------------------------------------------------------ relays


@pytest.mark.parametrize("split", [False, True], ids=["one-process", "split"])
def test_a_socks_relay_under_a_neutral_name_is_measured(far_end, split):
    watched, port = _started(RELAY + ["socks", "--name", "kworker"] + (["--split"] if split else []))
    try:
        got = _users("socks", port, far_end)
        assert _completed(got) >= 3, got
    finally:
        watched.stop()
    assert watched.highest("kernel_relayed_connections") >= 3, watched.seen
    if split:  # the accepting parent and the connecting children are each named
        assert len(watched.holders("kernel_relayed_connections")) >= 3, watched.seen


def test_a_port_forwarder_to_an_outside_host_is_measured(far_end):
    watched, port = _started(RELAY + ["forward", str(far_end)])
    try:
        got = _users("plain", port)
        assert _completed(got) >= 3, got
    finally:
        watched.stop()
    assert watched.highest("kernel_relayed_connections") >= 3, watched.seen


# ------------------------------------------------------------------ near misses

WEB_APP_WITH_DB = r"""
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
DB = int(sys.argv[1])
class App(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        with socket.create_connection(('127.0.0.1', DB)) as db:   # a query per request
            db.sendall(b'SELECT * FROM runs\n')
            rows, want = b'', 10 * 16 * 1024
            while len(rows) < want:
                rows += db.recv(65536)
        table = ''.join('<tr><td>%d</td><td>%s</td></tr>' % (i, rows[i:i + 64].decode())
                        for i in range(0, len(rows), 64))
        body = ('<table>%s</table>' % table).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
app = ThreadingHTTPServer(('127.0.0.1', 0), App); app.daemon_threads = True
print(app.server_address[1], flush=True)
app.serve_forever()
"""


BROWSERS = r"""
import http.client, sys, threading
port, count, reloads = map(int, sys.argv[1:])
got = [0] * count
def user(i):   # one user on a kept-alive connection, reloading the page
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
    for _ in range(reloads):
        conn.request('GET', '/')
        got[i] += len(conn.getresponse().read())
    conn.close()
threads = [threading.Thread(target=user, args=(i,)) for i in range(count)]
[t.start() for t in threads]; [t.join() for t in threads]
print(*got)
"""


def _browsers(port: int, count: int, reloads: int) -> list[int]:
    done = subprocess.run([sys.executable, "-c", BROWSERS, str(port), str(count), str(reloads)],
                          capture_output=True, text=True, timeout=180)
    return [int(n) for n in done.stdout.split()]


def test_a_web_app_querying_an_outside_database_per_request_is_not_a_relay(far_end):
    watched, port = _started([sys.executable, "-c", WEB_APP_WITH_DB, str(far_end)])
    try:
        got = _browsers(port, 6, 4)
        assert min(got) > 4 * 10 * 16 * 1024
        assert watched.ticks >= 10
    finally:
        watched.stop()
    assert watched.highest("kernel_relayed_connections") == 0, watched.seen


OWN_APP_BEHIND_A_FORWARDER = r"""
import subprocess, sys
app = subprocess.Popen([sys.executable, '-c',
    'from tests.standins.relay import Streamer; import time; s = Streamer(); '
    'print(s.port, flush=True); time.sleep(600)'], stdout=subprocess.PIPE, text=True)
app_port = app.stdout.readline().strip()
forwarder = subprocess.Popen([sys.executable, '-m', 'tests.standins.relay', 'forward', app_port])
forwarder.wait()
"""


def test_a_forward_to_the_users_own_app_is_not_a_relay():
    """As jupyter-server-proxy forwards to a local app (here both run in the kernel)."""
    watched = Watched([sys.executable, "-c", OWN_APP_BEHIND_A_FORWARDER])
    try:
        forwarder = int(watched.proc.stdout.readline())  # the forwarder prints its port
        watched.warm()
        got = _users("plain", forwarder)
        assert _completed(got) >= 3, got
    finally:
        watched.stop()
    assert watched.highest("kernel_relayed_connections") == 0, watched.seen


# ------------------------------------------------------------------ in a guarded kernel


@pytest.mark.integration
async def test_a_relay_started_from_the_kernel_is_stopped(kernel, guard_config, far_end,
                                                          jp_asyncio_loop):
    code = ("import subprocess, sys\n"
            f"relay = subprocess.Popen({RELAY + ['socks', '--name', 'kworker']!r}, "
            f"cwd={str(ROOT)!r}, stdout=subprocess.PIPE, text=True)\n"
            "print('PORT', relay.stdout.readline().strip(), flush=True)\n")
    reply, outputs = await kernel.run(code, timeout=60)
    text = KernelRunner.text(outputs)
    assert reply["status"] == "ok", text
    port = int(text.split()[1])
    got = await jp_asyncio_loop.run_in_executor(None, lambda: _users("socks", port, far_end,
                                                                      count=6, requests=3))
    found = await wait_for(lambda: [i for i in incidents_in(guard_config["incident_log"])
                                    if i["status"] == "done"], timeout=30)
    assert got and max(got) > 0, got  # users were relayed
    incident = found[0]
    assert incident["signature"] == "proxy-relay", incident
    assert incident["category"] == "proxy"
    assert incident["kernel_id"] == kernel.kernel_id
    relay = incident["evidence"]["processes"][0]
    assert relay["name"] == "kworker" and relay["kernel_relayed_connections"] >= 3, relay
    await wait_for(lambda: not _alive(relay["pid"]), timeout=30)  # stopped


def _alive(pid: int) -> bool:
    """Running still (a stopped child the kernel never waited for stays a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.integration
async def test_a_web_app_in_the_kernel_querying_an_outside_database_is_left_alone(
        kernel, guard_config, guard, far_end, jp_asyncio_loop):
    code = (f"import threading, sys\nsys.argv = ['app', '{far_end}']\n"
            + WEB_APP_WITH_DB.replace("app.serve_forever()",
                                      "threading.Thread(target=app.serve_forever, daemon=True).start()"))
    reply, outputs = await kernel.run(code, timeout=60)
    text = KernelRunner.text(outputs)
    assert reply["status"] == "ok", text
    port = int(text.split()[0])
    ticks = guard.monitor.ticks
    got = await jp_asyncio_loop.run_in_executor(None, lambda: _browsers(port, 6, 4))
    assert len(got) == 6 and min(got) > 4 * 10 * 16 * 1024, got
    assert guard.monitor.ticks - ticks >= 6
    assert incidents_in(guard_config["incident_log"]) == []
