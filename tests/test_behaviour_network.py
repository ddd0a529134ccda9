"""Floods and scans recognised by what they do over a window, counted per kernel across its
processes and the kernel itself (observe/behaviour.py), and the honest network work closest
to them: a serving benchmark against the user's own server, many users reaching the kernel's
web app through one proxy, a small API on a port in BitTorrent's range."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from colab_guard.observe.behaviour import SLOW_MS
from tests.conftest import SERVER_USER, KernelRunner, incidents_in, wait_for
from tests.harness import alive as _alive
from tests.standins.holder import Holder

pytestmark = pytest.mark.integration

STANDINS = Path(__file__).parent / "standins"
FLOOD_HOLD = 3.0  # dos-slow-connections' `for`
#: a flood is clear once its connections were silent SLOW_MS and held FLOOD_HOLD; stopped
#: within 2 s of that, plus one second for a late tick on this busy machine
FLOOD_STOPPED_WITHIN = SLOW_MS / 1000 + FLOOD_HOLD + 3.0


@pytest.fixture
def target():
    holder = Holder()
    yield holder.port
    holder.close()


SLOWLORIS = """
import socket, sys, time
def slowloris(port, count, seconds):
    conns = []
    for i in range(count):
        s = socket.create_connection(('127.0.0.1', port))
        s.sendall(b'GET /?%d HTTP/1.1\\r\\nHost: target\\r\\n' % i)
        conns.append(s)
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(2)
        for s in conns:
            s.sendall(b'X-a: b\\r\\n')   # never the blank line that ends the headers
"""


async def _stopped(kernel, guard_config, code: str, category: str, within: float):
    started = time.time()
    reply, outputs = await kernel.run(code, timeout=120)
    elapsed = time.time() - started
    text = KernelRunner.text(outputs)
    assert reply["status"] == "error", text  # interrupted
    assert "done" not in text
    found = await wait_for(lambda: [i for i in incidents_in(guard_config["incident_log"])
                                    if i["status"] == "done"], timeout=20)
    assert len(found) == 1, found
    assert found[0]["category"] == category
    assert (found[0]["user"], found[0]["kernel_id"]) == (SERVER_USER, kernel.kernel_id)
    assert elapsed <= within, elapsed
    return found[0]


async def test_slowloris_from_inside_the_kernel_is_stopped(kernel, guard_config, target):
    code = SLOWLORIS + f"slowloris({target}, 200, 60)\nprint('done')\n"
    incident = await _stopped(kernel, guard_config, code, "denial-of-service",
                              FLOOD_STOPPED_WITHIN + 3)  # + opening 200 connections
    assert incident["signature"] == "dos-slow-connections"
    kernel_proc = incident["evidence"]["processes"][0]
    assert kernel_proc["is_kernel"] and kernel_proc["kernel_slow_connections"] >= 150


async def test_slowloris_split_across_processes_each_bound_to_udp_is_stopped_whole(
        kernel, guard_config, target):
    # The four start together (each told to once all are up): one started a second late on a
    # loaded machine had no connection silent yet when the other three's 150 made the flood.
    script = SLOWLORIS + ("u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                          "u.bind(('127.0.0.1', 0))  # a listening port: no exemption\n"
                          "print('ready', flush=True)\n"
                          "sys.stdin.readline()\n"
                          "slowloris(int(sys.argv[1]), 50, 60)\n")
    code = ("import subprocess, sys\n"
            f"procs = [subprocess.Popen([sys.executable, '-c', {script!r}, '{target}'], "
            "stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(4)]\n"
            "[p.stdout.readline() for p in procs]\n"
            "for p in procs:\n    p.stdin.write('go\\n')\n    p.stdin.flush()\n"
            "print('PIDS', *[p.pid for p in procs], flush=True)\n"
            "[p.wait() for p in procs]\nprint('done')\n")
    incident = await _stopped(kernel, guard_config, code, "denial-of-service",
                              FLOOD_STOPPED_WITHIN + 3)
    # 50 connections each, 200 for the kernel: every one of the four is named and stopped
    stopped = {p["pid"] for p in incident["evidence"]["processes"]}
    assert len(stopped) == 4, incident["evidence"]["processes"]
    assert all(p["kernel_slow_connections"] >= 150 for p in incident["evidence"]["processes"])
    await wait_for(lambda: not any(_alive(pid) for pid in stopped), timeout=10)


async def test_a_connection_flood_that_sends_nothing_is_stopped(kernel, guard_config, target):
    # connections opened and held, never a byte sent: a server's connection slots taken
    code = ("import socket, time\n"
            f"conns = [socket.create_connection(('127.0.0.1', {target})) for _ in range(200)]\n"
            "time.sleep(60)\nprint('done')\n")
    incident = await _stopped(kernel, guard_config, code, "denial-of-service",
                              FLOOD_STOPPED_WITHIN + 3)
    assert incident["signature"] == "dos-slow-connections"


async def test_a_port_sweep_in_the_kernel_is_stopped_from_its_refused_connections(
        kernel, guard_config):
    # Every port refused at once: no sample ever sees one; the kernel hook reports them.
    code = ("import socket\n"
            "for sweep in range(5):\n"
            "    for port in range(1, 65536):\n"
            "        s = socket.socket(); s.settimeout(0.2); s.connect_ex(('127.0.0.1', port)); "
            "s.close()\n"
            "print('done')\n")
    incident = await _stopped(kernel, guard_config, code, "scanning", 6.0)
    assert incident["signature"] == "scan-ports-over-window"


# ---------------------------------------------------------------- near misses


LLM_SERVER = r"""
import asyncio, sys
async def handle(reader, writer):
    async with gate:                      # a model serves eight requests at a time
        await reader.readline()
        for token in range(8):
            writer.write(b'token %d\n' % token); await writer.drain()
            await asyncio.sleep(0.05)
    writer.close()
async def main():
    global gate
    gate = asyncio.Semaphore(8)
    server = await asyncio.start_server(handle, '127.0.0.1', 0, backlog=512)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""

BENCHMARK = r"""
import asyncio, time
async def client(port, end, done):
    while time.time() < end:
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        writer.write(b'prompt\n'); await writer.drain()
        while await reader.readline(): pass
        writer.close(); done.append(1)
async def bench(port, clients, seconds):
    done = []; end = time.time() + seconds
    await asyncio.gather(*[client(port, end, done) for _ in range(clients)])
    return len(done)
"""


async def test_a_200_client_benchmark_of_the_users_own_llm_server_is_left_alone(
        kernel, guard_config, guard):
    # the server is the kernel's own child; the benchmark runs in the kernel's event loop
    code = ("import subprocess, sys\n"
            f"server = subprocess.Popen([sys.executable, '-c', {LLM_SERVER!r}], "
            "stdout=subprocess.PIPE, text=True)\n"
            "port = int(server.stdout.readline())\n"
            + BENCHMARK +
            "n = await bench(port, 200, 16)\n"
            "server.kill(); print('done', n)\n")
    ticks = guard.monitor.ticks
    reply, outputs = await kernel.run(code, timeout=120)
    text = KernelRunner.text(outputs)
    assert reply["status"] == "ok", text
    assert "done" in text and int(text.split()[-1]) > 200  # requests were served, many waited
    assert guard.monitor.ticks - ticks >= 10
    assert incidents_in(guard_config["incident_log"]) == []


WEB_APP = r"""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class App(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        body = b'<h1>dashboard</h1>'
        self.send_response(200); self.send_header('Content-Length', str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
app = ThreadingHTTPServer(('127.0.0.1', 0), App); app.daemon_threads = True
threading.Thread(target=app.serve_forever, daemon=True).start()
print('PORT', app.server_address[1])
"""


def _proxy(upstream: int) -> socket.socket:
    """One proxy outside the kernel (as jupyter-server-proxy runs in the Jupyter server): a
    connection to the app for each user's connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(256)

    def pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def accept():
        while True:
            try:
                user, _ = server.accept()
            except OSError:
                return
            app = socket.create_connection(("127.0.0.1", upstream))
            threading.Thread(target=pipe, args=(user, app), daemon=True).start()
            threading.Thread(target=pipe, args=(app, user), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server


def _users(port: int, count: int, seconds: float) -> list[int]:
    """``count`` browser users, each on a kept-alive connection, reloading every second."""
    served = [0] * count

    def user(i):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        end = time.time() + seconds
        while time.time() < end:
            conn.request("GET", "/")
            conn.getresponse().read()
            served[i] += 1
            time.sleep(1)
        conn.close()

    threads = [threading.Thread(target=user, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return served


def _port_of(text: str) -> int:
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("PORT")))


async def test_120_users_reaching_a_web_app_in_the_kernel_through_one_proxy_are_left_alone(
        kernel, guard_config, guard, jp_asyncio_loop):
    reply, outputs = await kernel.run(WEB_APP)
    assert reply["status"] == "ok", KernelRunner.text(outputs)
    proxy = _proxy(_port_of(KernelRunner.text(outputs)))
    ticks = guard.monitor.ticks
    try:
        served = await jp_asyncio_loop.run_in_executor(
            None, _users, proxy.getsockname()[1], 120, 12)
    finally:
        proxy.close()
    assert min(served) >= 3  # every user was served all along
    assert guard.monitor.ticks - ticks >= 10
    reply, outputs = await kernel.run("print('still here')")
    assert reply["status"] == "ok" and "still here" in KernelRunner.text(outputs)
    assert incidents_in(guard_config["incident_log"]) == []


async def test_a_small_api_on_port_6900_used_by_six_tabs_is_left_alone(
        kernel, guard_config, guard, jp_asyncio_loop):
    port = 6900
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            port = 6901  # taken on this machine: another in BitTorrent's range
    reply, outputs = await kernel.run(WEB_APP.replace("('127.0.0.1', 0)", f"('0.0.0.0', {port})"))
    assert reply["status"] == "ok", KernelRunner.text(outputs)
    ticks = guard.monitor.ticks
    served = await jp_asyncio_loop.run_in_executor(None, _users, port, 6, 13)
    assert min(served) >= 3
    assert guard.monitor.ticks - ticks >= 10  # longer than torrent-swarm's 10 s
    assert incidents_in(guard_config["incident_log"]) == []
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
        assert answer.status == 200  # the kernel's app still serves


class _SlowApi:
    """A language-model API that someone else runs (not the user's kernels): it reads each
    whole request, thinks ``seconds``, then answers, keeping the connection alive."""

    def __init__(self, seconds: float):
        import asyncio
        self.seconds, self.answered = seconds, 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready):
        import asyncio
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _serve(self, reader, writer):
        import asyncio
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                await asyncio.sleep(self.seconds)  # generating the answer
                body = b'{"choices": [{"message": {"content": "positive"}}]}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
                self.answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def close(self):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


#: What `asyncio.gather` over a dataset's prompts does with an API client that opens a
#: connection for each request in flight (OpenAI's Python client allows 1,000): each sends its
#: whole request, hears nothing while the model generates, and sends the next one on the same
#: connection a moment after its answer.
API_BATCH = r"""
import asyncio, json
async def label(port, prompts):
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    for prompt in prompts:
        body = json.dumps({'model': 'm', 'messages': [{'role': 'user', 'content': prompt}]})
        writer.write(b'POST /v1/chat/completions HTTP/1.1\r\nHost: api\r\n'
                     b'Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s'
                     % (len(body), body.encode()))
        await writer.drain()
        head = await reader.readuntil(b'\r\n\r\n')
        await reader.readexactly(int(head.split(b'Content-Length: ')[1].split(b'\r\n')[0]))
        await asyncio.sleep(1.5)  # the notebook's own work between two requests
    writer.close()
    return len(prompts)
async def batch(port, clients):
    done = await asyncio.gather(*[label(port, [f'review {i}', f'review {i}b'])
                                  for i in range(clients)])
    return sum(done)
"""


async def test_200_api_requests_in_flight_to_a_slow_model_server_are_left_alone(
        kernel, guard_config, guard):
    """Each connection is silent far longer than 5 s (the model generates), 200 at once to
    one endpoint none of the user's kernels serves: a request sent whole and waited for is
    no slow-request flood, which trickles its request out while the server says nothing."""
    api = _SlowApi(seconds=9)
    ticks = guard.monitor.ticks
    try:
        reply, outputs = await kernel.run(API_BATCH + f"print('done', await batch({api.port}, "
                                          "200))\n", timeout=120)
    finally:
        api.close()
    text = KernelRunner.text(outputs)
    assert reply["status"] == "ok", text
    assert "done 400" in text and api.answered == 400
    assert guard.monitor.ticks - ticks >= 18  # silent 9 s, twice
    assert incidents_in(guard_config["incident_log"]) == []
