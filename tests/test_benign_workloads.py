"""Honest work that looks a little like abuse must be left alone: no incident, no interrupt."""

from __future__ import annotations

import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import KernelRunner, incidents_in

pytestmark = pytest.mark.integration


async def test_cpu_heavy_numpy_for_twenty_seconds_is_left_alone(kernel, guard_config, guard):
    code = ("import time, numpy as np\n"
            "a = np.random.rand(300, 300)\n"
            "start = time.time(); n = 0\n"
            "while time.time() - start < 22:\n"
            "    a = np.tanh(a @ a.T / 300); n += 1\n"
            "print('done', n)\n")
    reply, outputs = await kernel.run(code, timeout=120)
    assert reply["status"] == "ok", KernelRunner.text(outputs)
    assert "done" in KernelRunner.text(outputs)
    assert guard.monitor.ticks >= 20  # the guard was sampling all along
    assert incidents_in(guard_config["incident_log"]) == []


async def test_hashing_heavy_multiprocess_job_is_left_alone(kernel, guard_config):
    code = ("import hashlib, multiprocessing as mp, time\n"
            "def work(seed):\n"
            "    d = str(seed).encode(); t = time.time()\n"
            "    while time.time() - t < 8: d = hashlib.sha256(d).digest()\n"
            "    return d.hex()[:8]\n"
            "with mp.get_context('fork').Pool(3) as pool:\n"
            "    print('digests', pool.map(work, range(3)))\n")
    reply, outputs = await kernel.run(code, timeout=120)
    assert reply["status"] == "ok", KernelRunner.text(outputs)
    assert "digests" in KernelRunner.text(outputs)
    assert incidents_in(guard_config["incident_log"]) == []


@pytest.fixture
def file_server(tmp_path):
    for i in range(16):
        (tmp_path / f"part{i}.bin").write_bytes(bytes(range(256)) * 4096)

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


async def test_many_parallel_downloads_from_a_local_server_are_left_alone(kernel, guard_config,
                                                                          file_server):
    code = ("import urllib.request, time\n"
            "from concurrent.futures import ThreadPoolExecutor\n"
            "def get(i):\n"
            f"    return len(urllib.request.urlopen(f'http://127.0.0.1:{file_server}/part{{i % 16}}.bin').read())\n"
            "t = time.time(); total = 0\n"
            "with ThreadPoolExecutor(16) as ex:\n"
            "    while time.time() - t < 8:\n"
            "        total += sum(ex.map(get, range(64)))\n"
            "print('bytes', total)\n")
    reply, outputs = await kernel.run(code, timeout=120)
    assert reply["status"] == "ok", KernelRunner.text(outputs)
    assert "bytes" in KernelRunner.text(outputs)
    assert incidents_in(guard_config["incident_log"]) == []
