"""A researcher's and a teacher's everyday work, as real processes under a guarded server (cell
checks on), each run past every behaviour window it could trip: no incident, nothing stopped.
The near-misses of the behaviour rules (README, "Behaviour over a window") and of the words in
cells (a course that prints tools' names)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.harness import free_port, wait_until
from tests.standins.honest_fixtures import (HONEST_SECONDS, guard_config, measured,  # noqa: F401
                                            run_to_the_end, service)

pytestmark = pytest.mark.integration

PYTHON = sys.executable


# ---------------------------------------------------------------- busy CPU and a service


TRAINER = '''
import os, socket, time
os.environ["OPENBLAS_NUM_THREADS"] = "1"
import multiprocessing as mp
import numpy as np

def train(rank, port, seconds):
    server = socket.create_connection(("127.0.0.1", port)).makefile("rwb")
    a = np.random.default_rng(rank).random((160, 160)); end = time.time() + seconds
    steps, last = 0, 0.0
    while time.time() < end:
        a = np.tanh(a @ a.T / 160); steps += 1
        if time.time() - last > 3:  # sync: push the gradient, pull the weights
            server.write(b"PUSH %d\\n" % steps); server.flush(); server.readline()
            server.write(b"PULL\\n"); server.flush(); server.readline()
            last = time.time()
    return steps

with mp.get_context("fork").Pool(2) as pool:
    steps = pool.starmap(train, [(0, PORT, SECONDS), (1, PORT, SECONDS)])
print("done", steps)
'''


async def test_training_on_both_cores_with_a_parameter_server_is_left_alone(
        kernel, guard_config, measured, service):
    """Two busy workers, each with one long-lived, mostly idle connection to a parameter
    server that is no kernel's: the mining rule's near-miss (the server never sends unasked)."""
    port = service("params")
    code = TRAINER.replace("PORT", str(port)).replace("SECONDS", str(HONEST_SECONDS))
    await run_to_the_end(kernel, guard_config, code)
    assert measured[kernel.kernel_id].get("cpu_demand_percent", 0) >= 50  # busy all along


async def test_training_subscribed_to_a_shared_brokers_channel_is_left_alone(
        kernel, guard_config, measured, service):
    """A busy process pushed to unasked on a long-lived connection (the mining rule's nearest
    miss): a subscriber sends nothing back, a miner submits shares."""
    port = service("pubsub", 2)
    code = ("import socket, time, numpy as np\n"
            f"r = socket.create_connection(('127.0.0.1', {port})); r.setblocking(False)\n"
            "r.sendall(b'SUBSCRIBE jobs\\r\\n')\n"
            "a = np.random.rand(200, 200); end = time.time() + %d; jobs = 0\n"
            "while time.time() < end:\n"
            "    a = np.tanh(a @ a.T / 200)\n"
            "    try: jobs += r.recv(4096).count(b'message')\n"
            "    except BlockingIOError: pass\n"
            "print('done', jobs)\n") % HONEST_SECONDS
    await run_to_the_end(kernel, guard_config, code)
    assert measured[kernel.kernel_id].get("cpu_demand_percent", 0) >= 50  # busy all along


# ---------------------------------------------------------------- downloads from local services


def _wheel(folder: Path, name: str = "honest_demo", version: str = "1.0") -> Path:
    """A pure-Python wheel, built by hand (no build backend, no network)."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "ANSWER = 42\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


@pytest.fixture
def course_mirror(tmp_path):
    """``python -m http.server`` on loopback (a course's mirror), serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    proc = subprocess.Popen([PYTHON, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    port = int(re.search(r"port (\d+)", proc.stdout.readline()).group(1))
    yield root, port
    proc.kill()
    proc.wait()


async def test_pip_download_and_install_from_a_local_index_is_left_alone(kernel, guard_config,
                                                                         course_mirror, tmp_path):
    root, port = course_mirror
    package = root / "simple" / "honest-demo"
    package.mkdir(parents=True)
    wheel = _wheel(package)
    (package / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
    index = f"http://127.0.0.1:{port}/simple"
    target = tmp_path / "site"
    await run_to_the_end(
        kernel, guard_config,
        f"%cd {tmp_path}\n"
        f"!{PYTHON} -m pip download -q --no-deps -d wheels -i {index} --trusted-host 127.0.0.1 "
        "honest-demo\n"
        f"!{PYTHON} -m pip install -q --no-index --find-links wheels --target {target} "
        "honest-demo\n"
        f"!{PYTHON} -m pip install -q --index-url {index} --trusted-host 127.0.0.1 --upgrade "
        f"--target {target}-2 honest-demo\n"
        f"import sys; sys.path.insert(0, {str(target)!r}); import honest_demo\n"
        "print('done', honest_demo.ANSWER)")


@pytest.fixture
def git_daemon(tmp_path):
    """``git daemon`` on loopback serving one bare repository, course.git."""
    base = tmp_path / "git"
    work = tmp_path / "course"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "lab1.ipynb").write_text("{}\n")
    subprocess.run(["git", "-C", str(work), "add", "."], check=True)
    subprocess.run(["git", "-C", str(work), "-c", "user.name=T", "-c", "user.email=t@example.org",
                    "commit", "-q", "-m", "lab 1"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(base / "course.git")], check=True)
    port = free_port()
    proc = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1",
                             f"--port={port}", f"--base-path={base}", str(base)],
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_until(lambda: _listening(port), timeout=30, what="git daemon listening")
    yield port
    os.killpg(proc.pid, signal.SIGKILL)  # git runs git-daemon as its child: both
    proc.wait()


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_git_clone_over_git_daemon_is_left_alone(kernel, guard_config, git_daemon, tmp_path):
    await run_to_the_end(
        kernel, guard_config,
        f"%cd {tmp_path}\n"
        f"!git clone -q git://127.0.0.1:{git_daemon}/course.git labs && "
        f"git -C labs fetch -q --depth 1 origin main && git ls-remote git://127.0.0.1:{git_daemon}/course.git && "
        "ls labs && echo done")


async def test_curl_and_wget_with_many_options_are_left_alone(kernel, guard_config, course_mirror,
                                                             tmp_path):
    root, port = course_mirror
    (root / "data").mkdir()
    for name in ("train.csv", "test.csv", "labels.json"):
        (root / "data" / name).write_text("a,b\n1,2\n" * 500)
    url = f"http://127.0.0.1:{port}"
    await run_to_the_end(
        kernel, guard_config,
        f"%cd {tmp_path}\n"
        f"!curl -fsSL --retry 3 --retry-delay 1 --connect-timeout 5 -m 30 -C - -o train.csv "
        f"-u student:s3cret -H 'Accept: text/csv' -A 'course-bot/1.0' --compressed {url}/data/train.csv\n"
        f"!curl -s -o /dev/null -w '%{{http_code}} %{{size_download}}\\n' -I -k -L --max-redirs 3 "
        f"-x '' --noproxy '*' {url}/data/test.csv\n"
        f"!curl -sS -K /dev/null -O -J -R --create-dirs --output-dir got -P - {url}/data/labels.json\n"
        f"!wget -q -c -t 3 -T 30 --waitretry=1 -nH --cut-dirs=1 -np -r -l 2 -A '*.csv' "
        f"-P data --user=student --password=s3cret --header 'X-Course: ml101' -U Mozilla/5.0 "
        f"-e robots=off {url}/data/\n"
        f"!wget -q -O - --post-data 'q=1' --no-check-certificate {url}/data/test.csv | wc -l\n"
        f"!echo '{url}/data/train.csv' | wget -q -N -P cache -i -\n"
        "!ls train.csv got/labels.json data/train.csv data/test.csv cache/train.csv && echo done")


#: A seedbox-style aria2.conf of the kind guides share: BitTorrent options set, for HTTP and FTP.
ARIA2_CONF = """# aria2 settings
continue=true
max-connection-per-server=4
split=4
max-overall-download-limit=400K
enable-dht=true
bt-max-peers=55
bt-enable-lpd=true
seed-time=0
follow-torrent=mem
listen-port=6881-6999
# input-file=/no/such/list.torrent (a comment: not read)
input-file={inputs}
quiet=true
"""


@pytest.mark.skipif(shutil.which("aria2c") is None, reason="aria2c is not installed")
async def test_aria2c_over_http_and_ftp_with_bittorrent_options_in_its_configuration_is_left_alone(
        kernel, guard_config, course_mirror, service, tmp_path):
    """aria2c's option files are read for a torrent (observe/aria2.py): a configuration file
    full of BitTorrent options, by --conf-path and as the default ~/.aria2/aria2.conf of a
    HOME, for plain HTTP and FTP downloads (a few seconds each, rate-limited) is not one."""
    root, port = course_mirror
    (root / "weights.bin").write_bytes(os.urandom(3 << 20))
    (tmp_path / "ftp").mkdir()
    (tmp_path / "ftp" / "corpus.txt").write_text("token " * 200_000)
    ftp = service("ftp", tmp_path / "ftp")
    (tmp_path / "urls.txt").write_text(
        f"http://127.0.0.1:{port}/weights.bin\n  out=w.bin\n"
        f"ftp://127.0.0.1:{ftp}/corpus.txt\n# magnet:?xt=urn:btih:{'0' * 40} (a comment)\n")
    (tmp_path / "seedbox.conf").write_text(ARIA2_CONF.format(inputs=tmp_path / "urls.txt"))
    home = tmp_path / "home"
    (home / ".aria2").mkdir(parents=True)
    (home / ".aria2" / "aria2.conf").write_text(ARIA2_CONF.format(inputs=tmp_path / "urls.txt"))
    await run_to_the_end(
        kernel, guard_config,
        f"%cd {tmp_path}\n"
        f"!aria2c --conf-path={tmp_path / 'seedbox.conf'} -d first\n"
        f"!HOME={home} aria2c -d second\n"
        "!ls first/w.bin first/corpus.txt second/w.bin second/corpus.txt && echo done")


# ---------------------------------------------------------------- servers in the kernel


FLASK_APP = '''
import threading
from flask import Flask, jsonify
from werkzeug.serving import make_server
app = Flask("dashboard")
@app.route("/")
def index():
    return jsonify(loss=[0.9, 0.5, 0.3], epoch=3)
server = make_server("127.0.0.1", 0, app, threaded=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("PORT", server.server_port)
'''


async def test_a_flask_app_in_the_kernel_reached_by_many_local_users_is_left_alone(
        kernel, guard_config, service, jp_asyncio_loop):
    """As jupyter-server-proxy is used: a web app served from the kernel, 40 users on it, past
    the scan window (many clients are not many ports) and the flood rule's silence."""
    text = await run_to_the_end(kernel, guard_config, FLASK_APP, done="PORT")
    port = int(text.split()[-1])
    proc = await jp_asyncio_loop.run_in_executor(None, lambda: subprocess.run(
        [PYTHON, "-m", "tests.standins.honest_services", "clients", str(port), "40", "14"],
        capture_output=True, text=True, timeout=120))
    served = [int(n) for n in proc.stdout.split()]
    assert len(served) == 40 and min(served) >= 5, proc.stdout + proc.stderr
    await run_to_the_end(kernel, guard_config, "server.shutdown(); print('done')")


DASK = '''
import time
from dask.distributed import Client, LocalCluster
def work(seed):
    t, n = time.time(), seed
    while time.time() - t < 0.5:
        n = (n * 1103515245 + 12345) % 2**31
    return n
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \\
        Client(cluster) as client:
    end, done = time.time() + SECONDS, 0
    while time.time() < end:  # a CPU-bound task graph, batch after batch
        done += len(client.gather(client.map(work, range(done, done + 8))))
print("done", done)
'''


async def test_a_local_dask_cluster_is_left_alone(kernel, guard_config, measured):
    """A scheduler in the kernel pushing tasks to two busy worker processes (and their
    nannies) over loopback, past the mining window. (The mining rule never weighs it: the
    workers' connections go to a server of the user's own kernel.)"""
    text = await run_to_the_end(kernel, guard_config,
                                DASK.replace("SECONDS", str(HONEST_SECONDS)),
                                timeout=HONEST_SECONDS + 150)
    assert int(text.split()[-1]) >= 16, text  # half-second tasks, run all along
    assert measured[kernel.kernel_id]["ticks"] >= 2 * HONEST_SECONDS * 0.5  # sampled all along


MANAGER = '''
import time, multiprocessing as mp
from multiprocessing.managers import SyncManager
def work(queue, results, seconds):
    end = time.time() + seconds
    while time.time() < end:
        seed = queue.get()
        n = seed
        for _ in range(200000): n = (n * 48271) % 2147483647
        results.append(n)
manager = SyncManager(address=("127.0.0.1", 0), authkey=b"course")
manager.start()
queue, results = manager.Queue(), manager.list()
for i in range(100000): queue.put(i)
workers = [mp.Process(target=work, args=(queue, results, SECONDS)) for _ in range(4)]
for w in workers: w.start()
for w in workers: w.join()
print("done", len(results), [w.exitcode for w in workers])
manager.shutdown()
'''


async def test_multiprocessing_workers_sharing_a_manager_over_loopback_are_left_alone(
        kernel, guard_config):
    text = await run_to_the_end(kernel, guard_config,
                                MANAGER.replace("SECONDS", str(HONEST_SECONDS)))
    assert "[0, 0, 0, 0]" in text, text  # no worker was stopped


# ---------------------------------------------------------------- checking one's own services


async def test_port_checks_of_ones_own_services_are_left_alone(kernel, guard_config):
    """``socket.connect_ex`` over eight ports, and ``nc -z`` in a loop, every half second,
    past the scan window: two of the ports are the notebook's own services, the rest down."""
    nc = shutil.which("nc")
    usage = subprocess.run([nc, "-h"], capture_output=True, text=True) if nc else None
    if usage is None or not re.search(r"\s-z\s", usage.stdout + usage.stderr):
        message = "OpenBSD's nc (with -z) is not installed (benchmarks/scenarios/install.sh)"
        pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)
    code = ('import socket, subprocess, sys, time\n'
            'up = [subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", '
            '"127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]\n'
            'time.sleep(1)\n'  # the services start (a notebook's own pause)
            'import psutil\n'
            'ports = [c.laddr.port for p in up for c in psutil.Process(p.pid).net_connections() '
            'if c.status == "LISTEN"]\n'
            'ports += [p for p in range(8790, 8800) if p not in ports][:6]\n'
            'end, rounds = time.time() + %d, 0\n'
            'while time.time() < end:\n'
            '    status = {}\n'
            '    for port in ports:\n'
            '        with socket.socket() as s:\n'
            '            s.settimeout(0.5); status[port] = s.connect_ex(("127.0.0.1", port)) == 0\n'
            '    rounds += 1; time.sleep(0.5)\n'
            'print("up:", sum(status.values()), "rounds:", rounds)\n'
            'PORTS = " ".join(map(str, ports))\n') % (HONEST_SECONDS - 5)
    text = await run_to_the_end(kernel, guard_config, code, done="rounds")
    assert "up: 2" in text, text
    await run_to_the_end(
        kernel, guard_config,
        "%%%%bash -s \"$PORTS\"\nend=$((SECONDS + %d))\n"
        "while [ $SECONDS -lt $end ]; do\n"
        "  for p in $1; do nc -z -w 1 127.0.0.1 $p && up=$p; done\n"
        "  sleep 0.5\n"
        "done\necho done $up" % (HONEST_SECONDS - 5))
    await run_to_the_end(kernel, guard_config,
                         "for p in up: p.kill(); p.wait()\nprint('done')")


# ---------------------------------------------------------------- a security course


COURSE_CELLS = [
    # the lecture's notes, printed
    'print("Week 5: what a miner looks like in a process list")\n'
    'print("  xmrig --donate-level 1 -o pool.example.org:3333 -u 44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A")\n'
    'print("  ./t-rex -a kawpow -o stratum+tcp://rvn.example.org:4444 -u wallet.rig1")\n'
    'print("  hashcat -m 1000 -a 3 ntlm.txt ?u?l?l?l?d?d")\n'
    'print("  john --format=raw-md5 --wordlist=rockyou.txt hashes.txt")\n'
    'print("  hydra -l admin -P rockyou.txt ssh://10.0.0.5")\n'
    'print("  nmap -sS -p- --min-rate 5000 10.0.0.0/24; masscan -p1-65535 10.0.0.0/8 --rate 100000")\n'
    'print("  ssh -R 80:localhost:8888 serveo.net; ngrok tcp 22; slowhttptest -c 1000 -H -u http://target")',
    # a table of tools and their tell-tale options
    'TOOLS = {"xmrig": ["--donate-level", "--randomx-1gb-pages", "-o pool:3333"],\n'
    '         "hashcat": ["-m 0", "-a 3", "?a?a?a?a"], "hydra": ["-l", "-P", "ssh://"],\n'
    '         "aircrack-ng": ["-w rockyou.txt"], "nmap": ["-sS", "-p-"], "tor": ["--SocksPort 9050"]}\n'
    'for tool, options in TOOLS.items():\n'
    '    print(f"{tool:12} {\' \'.join(options)}")',
    # the same in the shell, and a cheat sheet written and read back
    '!echo "xmrig --donate-level 1 -o pool.example.org:3333"; printf "%s\\n" "hydra -l root -P pw.txt ftp://10.0.0.5"',
    '%%writefile cheatsheet.md\n# Tools you will see in logs\n- `xmrig --donate-level 1 -o pool:3333 -u WALLET`\n'
    '- `john --format=nt --wordlist=rockyou.txt hashes.txt`\n- `nmap -sV -p 22,80 10.0.0.0/24`\n',
    '!grep -c "xmrig\\|john\\|nmap" cheatsheet.md && wc -l cheatsheet.md',
    '%%markdown\n**Never run** `xmrig --donate-level 1` or `./t-rex -a kawpow` on this service.',
]


async def test_a_security_course_printing_tools_and_their_options_is_left_alone(
        kernel, guard_config, tmp_path):
    await run_to_the_end(kernel, guard_config, f"%cd {tmp_path}", done="")
    for cell in COURSE_CELLS:
        await run_to_the_end(kernel, guard_config, cell, done="")


MALWARE_CSV = """sha256,family,kind,first_seen,command_line
{h0},XMRig,miner,2023-01-04,/tmp/.x/xmrig --donate-level 1 -o pool.minexmr.com:4444 -u 4{w}
{h1},T-Rex,miner,2023-02-11,./t-rex -a kawpow -o stratum+tcp://rvn.2miners.com:6060
{h2},Mirai,botnet,2022-11-30,/bin/busybox MIRAI
{h3},lolMiner,miner,2023-03-02,./lolMiner --algo ETCHASH --pool etc.2miners.com:1010
{h4},Hydra,bruteforce,2023-04-19,hydra -L users.txt -P rockyou.txt ssh://10.0.0.9
{h5},NanoCore,rat,2021-07-07,nanocore.exe
"""


async def test_reading_a_csv_of_malware_names_is_left_alone(kernel, guard_config, tmp_path):
    csv_file = tmp_path / "malware.csv"
    csv_file.write_text(MALWARE_CSV.format(w="A" * 94, **{f"h{i}": hashlib.sha256(b"%d" % i).hexdigest()
                                                           for i in range(6)}))
    cells = [
        f"import csv, collections\nrows = list(csv.DictReader(open({str(csv_file)!r})))\n"
        "by_kind = collections.Counter(r['kind'] for r in rows)\nprint(by_kind)\n"
        "miners = [r['family'] for r in rows if r['kind'] == 'miner']\nprint('miners:', miners)\n"
        "for r in rows:\n    print(r['family'], '->', r['command_line'])",
        f"!grep -i xmrig {csv_file} | cut -d, -f2,5\n!awk -F, '$3 == \"miner\" {{print $2}}' {csv_file}\n"
        f"!sort -t, -k3 {csv_file} | cut -d, -f2,3 | uniq -c",
        "FAMILIES = sorted({r['family'].lower() for r in rows})\n"
        "pattern = '|'.join(FAMILIES)\nprint(pattern)\nprint('done')",
    ]
    for cell in cells:
        await run_to_the_end(kernel, guard_config, cell, done="")


#: The lecture as people also run it, a script: ``!python week5.py``.
LECTURE_SCRIPT = ('"""Week 5: what a miner and a torrent client look like on the wire and in a '
                  'process list."""\n'
                  'NOTES = ["XMRig: xmrig --donate-level 1 -o pool.example.org:3333 -u WALLET",\n'
                  '         "BitTorrent: every peer connection starts with 19 + b\'BitTorrent protocol\'"]\n'
                  'BT_HANDSHAKE = bytes([19]) + b"BitTorrent protocol"\n'
                  'import time\nend = time.time() + 5\nwhile time.time() < end:\n    time.sleep(0.1)\n'
                  'print(*NOTES, sep="\\n")\nprint("done")\n')


async def test_a_security_lecture_run_as_a_script_is_left_alone(kernel, guard_config, tmp_path):
    """Its notes carry xmrig's and BitTorrent's markers (observe/content.py reads a script's
    strings too), but a script that holds no socket is no miner nor client."""
    script = tmp_path / "week5.py"
    script.write_text(LECTURE_SCRIPT)
    await run_to_the_end(kernel, guard_config, f"!python {script}")


async def test_a_security_lecture_script_that_fetches_its_slides_is_left_alone(
        kernel, guard_config, service, tmp_path):
    port = service("params")  # the course's mirror: answers each request
    script = tmp_path / "week5.py"
    script.write_text(LECTURE_SCRIPT.replace(
        "import time\n", f"import socket, time\nmirror = socket.create_connection(('127.0.0.1', {port}))\n"
                         "mirror.sendall(b'PULL slides\\n'); mirror.recv(8192)\n"))
    await run_to_the_end(kernel, guard_config, f"!python {script}")


GOSSIP = '''
import socket, subprocess, sys, time
NODE = """
import socket, sys, threading, time
me, peers, seconds = int(sys.argv[1]), [int(p) for p in sys.argv[2].split(',')], float(sys.argv[3])
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(('127.0.0.1', me)); server.listen(16)
def serve(conn):
    with conn:
        while conn.recv(64): conn.sendall(b'ack')
threading.Thread(target=lambda: [threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start() for _ in iter(int, 1)], daemon=True).start()
time.sleep(1)  # the other nodes start
links = [socket.create_connection(('127.0.0.1', p)) for p in peers if p != me]
end, beats = time.time() + seconds, 0
while time.time() < end:  # a heartbeat to every peer each half second
    for link in links:
        link.sendall(b'beat'); link.recv(64)
    beats += 1; time.sleep(0.5)
print(beats)
"""
def free(port):
    with socket.socket() as s:
        return s.connect_ex(('127.0.0.1', port)) != 0
ports = [p for p in range(6900, 6999) if free(p)][:6]
nodes = [subprocess.Popen([sys.executable, '-c', NODE, str(p), ','.join(map(str, ports)), 'SECONDS'],
                          stdout=subprocess.PIPE, text=True) for p in ports]
beats = [int(n.communicate()[0] or 0) for n in nodes]
print('done', ports, beats, [n.returncode for n in nodes])
'''


async def test_a_distributed_systems_lab_gossiping_on_ports_6900_and_up_is_left_alone(
        kernel, guard_config):
    """Six nodes of a course's gossip protocol, each listening on a port in BitTorrent's old
    range and connected to the five others, past the swarm rule's 10 s: peers that are the
    user's own servers are no swarm."""
    text = await run_to_the_end(kernel, guard_config,
                                GOSSIP.replace("SECONDS", str(HONEST_SECONDS - 5)))
    assert text.rstrip().endswith("[0, 0, 0, 0, 0, 0]"), text  # every node ran to its end


@pytest.fixture
def shared_dask_scheduler():
    """A research group's Dask scheduler, no kernel's (run by the test): its address."""
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                             "--port", str(port), "--no-dashboard"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, timeout=60,
               what="the scheduler listening")
    yield f"tcp://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


GROUP_CLIENT = '''
import sys, time
from dask.distributed import Client
def work(seed):
    t, n = time.time(), seed
    while time.time() - t < 0.5:
        n = (n * 1103515245 + 12345) % 2**31
    return n
with Client(sys.argv[1], timeout=60) as client:
    client.wait_for_workers(1, timeout=60)
    end, done = time.time() + float(sys.argv[2]), 0
    while time.time() < end:
        done += len(client.gather(client.map(work, range(done, done + 4))))
print(done)
'''


async def test_a_worker_lent_to_a_research_groups_dask_scheduler_is_left_alone(
        kernel, guard_config, measured, shared_dask_scheduler, jp_asyncio_loop):
    """A busy worker, started from the kernel, taking tasks from a scheduler that is no kernel
    of the user's, past the mining window: the mining rule weighs it (busy, one long-lived
    connection), and lets it be (the worker talks as much as it listens: heartbeats, results)."""
    await run_to_the_end(
        kernel, guard_config,
        "import subprocess, sys\n"
        "worker = subprocess.Popen([sys.executable, '-m', 'distributed.cli.dask_worker', "
        f"{shared_dask_scheduler!r}, '--nthreads', '1', '--no-nanny', '--no-dashboard'], "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nprint('done')")
    group = await jp_asyncio_loop.run_in_executor(None, lambda: subprocess.run(
        [PYTHON, "-c", GROUP_CLIENT, shared_dask_scheduler, str(HONEST_SECONDS)],
        capture_output=True, text=True, timeout=HONEST_SECONDS + 120))
    assert group.stdout.strip().isdigit() and int(group.stdout) >= 8, group.stdout + group.stderr
    text = await run_to_the_end(kernel, guard_config,
                                "print('done', worker.poll())\nworker.kill(); _ = worker.wait()")
    assert "done None" in text, text  # the worker was running all along
    seen = measured[kernel.kernel_id]
    assert seen.get("cpu_demand_percent", 0) >= 50, seen  # it was a candidate, and busy
