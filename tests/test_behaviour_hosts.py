"""A host sweep told from a crawler with dead links (``kernel_hosts_unanswered``,
observe/behaviour.py ``_scan_fields``): real processes in a network namespace of their own
whose 10.0.0.0/8 is routed into loopback, so that a connect there is never answered (as a
host that is down or filtered), while an HTTP server run by the test (no kernel's) answers
every 127.x address after 0.4 s (a remote site's round trips)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.model import Snapshot
from colab_guard.observe.processes import ProcessSampler, kernel_environment
from tests.test_behaviour_namespaces import private_namespace

ROOT = Path(__file__).parent.parent
STANDINS = Path(__file__).parent / "standins"
SERVER = r"""
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Site(BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(0.4)
        self.send_response(200); self.end_headers(); self.wfile.write(b'x' * 20000)
    def log_message(self, *a): pass
class Sites(ThreadingHTTPServer):
    request_queue_size = 1024  # many sites: none of them drops a SYN for a full queue
    daemon_threads = True
server = Sites(('0.0.0.0', 0), Site)
print(server.server_address[1], flush=True)
server.serve_forever()
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                reason="network namespaces need root and iproute2")


@pytest.fixture
def netns():
    """A namespace of its own whose 10.0.0.0/8 is routed into loopback (never answered)."""
    with private_namespace("hosts", ("10.0.0.0/8 dev lo",)) as name:
        yield name


@pytest.fixture
def site(netns):
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", SERVER],
                            stdout=subprocess.PIPE, text=True)
    yield int(proc.stdout.readline())
    proc.kill()
    proc.wait()


def watch_kernel(command: list[str], seconds: float, netns: str | None = None,
                 each: Callable[[Snapshot], None] = lambda snapshot: None) -> set[str]:
    """Run ``python command`` as kernel k1 (in ``netns`` if given) and evaluate the built-in
    signatures at each tick (once a second) until it ends or ``seconds`` pass, handing each
    snapshot to ``each``: the ids that matched. The workload must not fail."""
    sampler = ProcessSampler()
    engine = Engine(load_signatures())
    prefix = ["ip", "netns", "exec", netns] if netns else []
    kernel = subprocess.Popen([*prefix, sys.executable, *command],
                              env={**kernel_environment("k1"), "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL)
    found: set[str] = set()
    try:
        end = time.monotonic() + seconds
        while kernel.poll() is None and time.monotonic() < end:
            snapshot = sampler.sample({"k1": kernel.pid})["k1"]
            found |= {d.signature.id for d in engine.evaluate(snapshot)}
            each(snapshot)
            time.sleep(1.0)  # the guard's tick
        assert kernel.poll() is None or kernel.returncode == 0, "the workload failed"
    finally:
        kernel.kill()
        kernel.wait()
        sampler.content.close()
    return found


def _watch(netns: str, command: list[str], seconds: float) -> tuple[set[str], set[str]]:
    """watch_kernel in the namespace: what matched, and the hosts of 10/8 its samples showed
    half-open."""
    half_open: set[str] = set()

    def note_half_open(snapshot: Snapshot) -> None:
        half_open.update(s.remote_ip for p in snapshot.processes for s in p.sockets
                         if s.status == "SYN_SENT" and s.remote_ip.startswith("10."))

    return watch_kernel(command, seconds, netns, note_half_open), half_open


def test_a_crawler_whose_dead_links_are_scattered_is_no_host_sweep(netns, site):
    found, half_open = _watch(netns, [str(STANDINS / "crawler.py"), "--port", str(site),
                                      "--seconds", "20"], 30)
    assert len(half_open) >= 100  # the old rule's 50 within 10 s, and more
    assert not found, found


def test_a_sweep_hidden_among_answering_hosts_is_still_a_sweep(netns, site):
    found, _ = _watch(netns, [str(STANDINS / "crawler.py"), "--port", str(site),
                              "--seconds", "20", "--dead-in", "10.9"], 30)
    assert "scan-hosts-over-window" in found


def test_a_sweep_of_a_network_for_ssh_is_a_host_sweep(netns):
    sweep = ("import socket, threading\n"
             "def knock(h):\n"
             "    try: socket.create_connection((h, 22), timeout=3).close()\n"
             "    except OSError: pass\n"
             "for third in range(4):\n"
             "    ts = [threading.Thread(target=knock, args=(f'10.20.{third}.{i}',)) "
             "for i in range(1, 255)]\n"
             "    [t.start() for t in ts]; [t.join() for t in ts]\n")
    found, half_open = _watch(netns, ["-c", sweep], 20)
    assert len(half_open) >= 50
    assert "scan-hosts-over-window" in found
