"""The behaviour rules red-teamed (observe/behaviour.py): as an abuser who has read the code
(padding a relay, recycling a miner's connection, throttling below the threshold, splitting a
scan across processes, IPv6 loopback, a slow sweep) and as an honest researcher who might trip
them (a dashboard forwarding an outside feed per viewer). A case the rules cannot tell is a
strict xfail naming why, and is listed in the README's "what it cannot see"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from colab_guard.detect.fields import FieldView
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.model import Process, Socket
from tests.harness import wait_until
from tests.standins import chat as standin_chat
from tests.standins import pool as standin_pool
from tests.standins.watched import ENV, Watched
from tests.test_behaviour_refused import SWEEPER, THRESHOLD, _honest, _measured
from tests.test_behaviour_relay import RELAY, _started, _users, far_end  # noqa: F401

ROOT = Path(__file__).parent.parent
WINDOW = 3.0  # the mining window in these sampler-level tests (the server's is 15 s)


# ------------------------------------------------------------------ the abuser


@pytest.mark.xfail(strict=False, reason="a relay that pads (or compresses) one direction by "
                   "more than 20 % carries other bytes on each side: no pair mirrors (caught "
                   "in some runs, when the other direction alone pairs: not strict)")
def test_a_relay_padding_what_it_sends_its_clients_is_measured(far_end):
    watched, port = _started(RELAY + ["socks", "--pad"])
    try:
        assert min(_users("socks", port, far_end)) > 0
    finally:
        watched.stop()
    assert watched.highest("kernel_relayed_connections") >= 3, watched.seen


def test_a_sweep_of_ipv6_loopback_is_counted():
    assert _measured(Watched(SWEEPER + ["::1"])) >= THRESHOLD


def test_a_sweep_split_across_four_processes_is_counted_and_each_named():
    script = " & ".join([f"{sys.executable} -m tests.standins.sweeper 127.0.0.1 --seconds 30"] * 4)
    watched = Watched(["bash", "-c", script + " & wait"])
    assert _measured(watched) >= THRESHOLD
    assert len(watched.holders("kernel_refused_attempts")) >= 2, watched.seen


@pytest.mark.xfail(strict=True, reason="a sweep paced under 30 refused attempts a second "
                   "(the rule's 300 in 10 s) from a subprocess: the kernel hook sees no "
                   "connect there, the counters stay under the threshold, and the sweeper "
                   "holds its socket a few microseconds of every 50 ms, so no tick ties the "
                   "refusals to it")
def test_a_sweep_paced_at_twenty_ports_a_second_is_counted():
    watched = Watched(SWEEPER + ["127.0.0.1", "--pause", "0.05"])
    assert _measured(watched, 15) >= THRESHOLD


@pytest.fixture
def pool():
    server = standin_pool.serve()
    yield server.getsockname()[1]
    server.close()


MINING_FIELDS = ("cpu_demand_percent", "cpu_demand_steady_percent", "pushed_connections")


def _miner_fields(argv: list[str], seconds: float, window: float = WINDOW,
                  started_only: bool = False) -> dict[str, int]:
    """The highest CPU demand (average, steady) and pushed connections a miner was given
    while it ran (at most ``seconds``); ``started_only``: the process started itself only
    (a near-miss's connection holder, never another test's process marked as the same
    kernel)."""
    watched = Watched(argv, window=window)
    try:
        watched.warm()
        wait_until(lambda: watched.proc.poll() is not None or watched.ticks * 0.3 >= seconds,
                   timeout=seconds * 4, what="the miner ran")
    finally:
        watched.stop()
    if started_only:
        mine = [f for key, f in watched.seen.items() if key[0] == watched.proc.pid]
        return {name: max((f.get(name, 0) for f in mine), default=0) for name in MINING_FIELDS}
    return {name: watched.highest(name) for name in MINING_FIELDS}


#: The mining rule's average CPU demand (the condition itself is read from the signature).
BUSY = 50
QUIET_MINER = [sys.executable, "-m", "tests.standins.quiet_miner"]
RECYCLING_MINER = [sys.executable, "-m", "tests.standins.recycling_miner"]
MINING_RULE = load_signatures().signatures["mining-busy-pool-connection"]


def _mines(seen: dict[str, int]) -> bool:
    """Whether a process given these fields matches mining-busy-pool-connection."""
    process = Process(pid=1, name="python3", create_time=1.0, uid=1000, **seen,
                      sockets=[Socket("tcp", "10.0.0.2", 40000, "10.3.3.3", 443, "ESTABLISHED")])
    return MINING_RULE.when.test(FieldView(process))[0]


def test_the_sampler_level_miner_is_measured_as_such(pool):
    """The baseline for the ones below: the same miner, one connection, a full core."""
    seen = _miner_fields(QUIET_MINER + ["127.0.0.1", str(pool), "--seconds", "20"], WINDOW + 6)
    assert seen["cpu_demand_percent"] >= BUSY and _mines(seen), seen


#: A window longer than the stand-in pool's 2 s between jobs, so that a connection recycled
#: at 60 % of it still hears jobs (the server's 15 s window against a pool's 30 s to 2 min is
#: the case below this one).
RECYCLE_WINDOW = 6.0


def test_a_miner_recycling_its_pool_connection_more_often_than_the_window_is_measured(pool):
    """Each connection lives 3.6 s of the 6 s window: the next one, opened as the last closes,
    carries the conversation on (its pushes, the shares answering them, its age)."""
    seen = _miner_fields(RECYCLING_MINER + ["127.0.0.1", str(pool), str(RECYCLE_WINDOW * 0.6),
                                            "--seconds", "30"],
                         RECYCLE_WINDOW * 2 + 4, window=RECYCLE_WINDOW)
    assert _mines(seen), seen


def test_a_miner_recycling_after_a_pause_is_measured(pool):
    """The abuser's next step: a second without a connection between two (the rule carries a
    conversation over a gap of up to 3 s)."""
    script = ("import time, sys\nfrom tests.standins.quiet_miner import run\n"
              "end = time.monotonic() + 30\n"
              "while time.monotonic() < end:\n"
              f"    run('127.0.0.1', {pool}, 1.0, {RECYCLE_WINDOW * 0.6})\n"
              "    time.sleep(1)\n")
    seen = _miner_fields([sys.executable, "-c", script], RECYCLE_WINDOW * 2 + 6,
                         window=RECYCLE_WINDOW)
    assert _mines(seen), seen


@pytest.mark.xfail(strict=True, reason="a miner that recycles its pool connection before the "
                   "pool pushes a job on it (a real pool pushes every 30 s to 2 min) is only "
                   "ever answered (the job comes with its login): a client asking a service, "
                   "as a training loop posting metrics without keep-alive is")
def test_a_miner_recycling_faster_than_its_pool_pushes_is_measured(pool):
    seen = _miner_fields(RECYCLING_MINER + ["127.0.0.1", str(pool), str(WINDOW * 0.6),
                                            "--seconds", "20"], WINDOW * 3 + 4)
    assert _mines(seen), seen


def test_a_miner_throttled_to_a_fifth_of_a_core_is_measured(pool):
    seen = _miner_fields(QUIET_MINER + ["127.0.0.1", str(pool), "--duty", "0.2",
                                        "--seconds", "20"], WINDOW + 6)
    # (its average demand may pass half a core on a loaded machine: waiting counts)
    assert seen["cpu_demand_steady_percent"] >= 15 and _mines(seen), seen


@pytest.mark.xfail(strict=True, reason="a miner throttled to a quarter of a core in bursts "
                   "longer than a slice of the window (here 0.3 s on, 0.9 s off; 1 s of 15 s "
                   "in the server) is idle for whole slices, as a bot answering messages is")
def test_a_miner_throttled_in_long_bursts_is_measured(pool):
    seen = _miner_fields(QUIET_MINER + ["127.0.0.1", str(pool), "--duty", "0.25",
                                        "--period", "1.2", "--seconds", "20"], WINDOW + 6)
    assert _mines(seen), seen


@pytest.mark.xfail(strict=True, reason="a miner throttled under a sixth of a core (the rule's "
                   "15 % in every slice) mines on, slowly")
def test_a_miner_throttled_to_a_tenth_of_a_core_is_measured(pool):
    seen = _miner_fields(QUIET_MINER + ["127.0.0.1", str(pool), "--duty", "0.1",
                                        "--seconds", "20"], WINDOW + 6)
    assert _mines(seen), seen


SPLIT_MINER = r"""
import subprocess, sys
from tests.standins.quiet_miner import run
spin = "import hashlib\nd = b'x'\nwhile True: d = hashlib.sha256(d).digest()"
workers = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
try:
    run("127.0.0.1", int(sys.argv[1]), 0.02, 20)   # the parent only talks to the pool
finally:
    for w in workers: w.kill()
"""


def test_a_miner_split_between_a_talking_parent_and_hashing_children_is_measured(pool):
    """Missed once (the connection's holder barely ran, the busy workers held none): the CPU
    demand of a connection's holder is now its family's, its own and that of its descendants
    that hold no outbound connection of their own, as one process's threads are."""
    _assert_the_parent_mines(SPLIT_MINER, pool)


def watched_for_a_window(code: str, pool: int, kernel_id: str = "k1") -> Watched:
    """Run ``code`` (given the pool's port) watched for a window and a little more (or
    until it exits) as kernel ``kernel_id``; the Watched, stopped."""
    watched = Watched([sys.executable, "-c", code, str(pool)], window=WINDOW,
                      kernel_id=kernel_id)
    try:
        watched.warm()
        wait_until(lambda: watched.proc.poll() is not None or watched.ticks * 0.3 >= WINDOW + 6,
                   timeout=(WINDOW + 6) * 4, what="the miner ran")
    finally:
        watched.stop()
    return watched


def _assert_the_parent_mines(code: str, pool: int) -> None:
    """Run ``code`` watched for a window: the process started is measured as mining (the
    parent itself: another test's miner marked as the same kernel is not it)."""
    watched = watched_for_a_window(code, pool)
    assert any(_mines({name: fields.get(name, 0) for name in MINING_FIELDS})
               for key, fields in watched.seen.items() if key[0] == watched.proc.pid), watched.seen


SHELL_SPLIT_MINER = r"""
import os, subprocess, sys
from tests.standins.quiet_miner import run
spin = (f"{sys.executable} -c 'import hashlib, time; d = bytes(1); end = time.monotonic() + 90; "
        "any((d := hashlib.sha256(d).digest()) is None or time.monotonic() > end "
        "for _ in iter(int, 1))'")
# In this process's group (Watched's session), so that Watched.stop's killpg ends the shell
# and its workers too (in a session of their own they outlived the test, spinning two cores).
shell = subprocess.Popen(["sh", "-c", f"{spin} & {spin} & wait"])
try:
    run("127.0.0.1", int(sys.argv[1]), 0.02, 20)
finally:
    os.killpg(0, 9)
"""


def test_a_miner_whose_hashing_children_an_idle_shell_started_is_measured(pool):
    """The split miner's next step: its workers started through a shell that then only waits
    (an idle process between the holder and the workers, which the sample leaves out): the
    workers are the holder's, the nearest ancestor of theirs the sample shows."""
    _assert_the_parent_mines(SHELL_SPLIT_MINER, pool)


# ------------------------------------------------------------------ the honest researcher

def test_a_bot_answering_the_messages_it_is_pushed_in_bursts_is_left_alone():
    """A chat server pushes a message every 2 s; the bot works 0.3 s on each (a sixth of a
    core) and answers: pushed to and answering, as a miner is, but idle for whole slices of
    the window between two messages, where a throttled miner is steady."""
    chat = standin_chat.serve(2.0)
    try:
        seen = _miner_fields([sys.executable, "-c", standin_chat.BOT, "127.0.0.1",
                              str(chat.getsockname()[1]), "0.3", "30"], WINDOW * 3 + 4)
    finally:
        chat.close()
    assert seen["pushed_connections"] >= 1 and seen["cpu_demand_percent"] >= 10, seen
    assert not _mines(seen), seen


BOT_WITH_A_WORKER = r"""
import json, socket, subprocess, sys, time
host, port, burst, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
work = ("import hashlib, sys, time\nfor line in sys.stdin:\n"
        "    end = time.monotonic() + float(line); d = b'x'\n"
        "    while time.monotonic() < end: d = hashlib.sha256(d).digest()\n"
        "    print(d.hex(), flush=True)")
worker = subprocess.Popen([sys.executable, "-c", work], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
chat = socket.create_connection((host, port)).makefile("rwb")
end = time.monotonic() + seconds
while time.monotonic() < end:
    message = json.loads(chat.readline())   # each message answered by the worker's burst
    worker.stdin.write(burst + "\n"); worker.stdin.flush()
    reply = {"op": 0, "d": {"reply_to": message["d"]["id"], "content": worker.stdout.readline()}}
    chat.write(json.dumps(reply).encode() + b"\n"); chat.flush()
worker.kill()
"""


def test_a_bot_answering_each_message_through_a_worker_process_is_left_alone():
    """The family near-miss of the one above: the work for each message runs in a worker
    process the bot started (a model served beside it), so the bot holding the chat
    connection is measured with its worker's CPU, which still comes in bursts after each
    push."""
    chat = standin_chat.serve(2.0)
    try:
        seen = _miner_fields([sys.executable, "-c", BOT_WITH_A_WORKER, "127.0.0.1",
                              str(chat.getsockname()[1]), "0.3", "30"], WINDOW * 3 + 4,
                             started_only=True)
    finally:
        chat.close()
    assert seen["pushed_connections"] >= 1 and seen["cpu_demand_percent"] >= 10, seen
    assert not _mines(seen), seen


SUBSCRIBED_WITH_BUSY_WORKERS = r"""
import socket, subprocess, sys, time
spin = "import hashlib\nd = b'x'\nwhile True: d = hashlib.sha256(d).digest()"
workers = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
channel = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
channel.sendall(b"SUBSCRIBE jobs\r\n")
end = time.monotonic() + float(sys.argv[2])
try:
    while time.monotonic() < end:   # the master listens for work; its workers compute
        channel.settimeout(max(end - time.monotonic(), 0.01))
        try: channel.recv(4096)
        except socket.timeout: pass
finally:
    for w in workers: w.kill()
"""


def test_a_master_subscribed_to_a_broker_with_busy_worker_processes_is_left_alone():
    """A job queue's master (celery's prefork shape): its busy children are measured as its
    own demand, but the broker's pushes are never answered on that connection: no pool."""
    broker = subprocess.Popen([sys.executable, "-m", "tests.standins.honest_services",
                               "pubsub", "1.0"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        port = broker.stdout.readline().strip()
        seen = _miner_fields([sys.executable, "-c", SUBSCRIBED_WITH_BUSY_WORKERS, port, "30"],
                             WINDOW * 3 + 4, started_only=True)
    finally:
        broker.kill()
        broker.wait()
    assert seen["cpu_demand_percent"] >= BUSY, seen  # the family's demand, the master idle
    assert seen["pushed_connections"] == 0 and not _mines(seen), seen


SUBSCRIBED_AND_COMMITTING = r"""
import socket, sys, time
broker, database, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
channel = socket.create_connection(("127.0.0.1", broker)); channel.setblocking(False)
channel.sendall(b"SUBSCRIBE jobs\r\n")
end, n, last = time.monotonic() + seconds, 1, 0.0
while time.monotonic() < end:
    for _ in range(20000): n = (n * 48271) % 2147483647
    try: channel.recv(4096)
    except BlockingIOError: pass
    if time.monotonic() - last > 1:   # commit metrics, a new connection each time
        with socket.create_connection(("127.0.0.1", database)) as db:
            db.sendall(b"INSERT metrics %d " % n + b"x" * 100 + b"\n"); db.recv(4096)
        last = time.monotonic()
"""


def test_a_busy_subscriber_committing_to_the_same_host_on_new_connections_is_left_alone():
    """The broker pushes on one connection (never answered), the database is asked on a new
    connection every second, both on one host: a new connection takes over the conversation
    of one that closed, never of one still open, so no pushes meet answers."""
    broker = subprocess.Popen([sys.executable, "-m", "tests.standins.honest_services",
                               "pubsub", "1.5"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    database = subprocess.Popen([sys.executable, "-m", "tests.standins.honest_services",
                                 "params"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        ports = [broker.stdout.readline().strip(), database.stdout.readline().strip()]
        seen = _miner_fields([sys.executable, "-c", SUBSCRIBED_AND_COMMITTING, *ports, "30"],
                             WINDOW * 3 + 4)
    finally:
        for service in (broker, database):
            service.kill()
            service.wait()
    assert seen["cpu_demand_percent"] >= BUSY, seen  # a candidate, busy
    assert seen["pushed_connections"] == 0, seen


FEED_PER_VIEWER = r"""
import socket, sys, threading
FEED = int(sys.argv[1])
def viewer(conn):   # each viewer gets its own subscription to the outside feed, as it comes
    feed = socket.create_connection(('127.0.0.1', FEED))
    def down():
        while data := feed.recv(65536):
            conn.sendall(data)
    threading.Thread(target=down, daemon=True).start()
    while line := conn.recv(65536):
        feed.sendall(line)   # the viewer's "subscribe" request
server = socket.create_server(('127.0.0.1', 0))
print(server.getsockname()[1], flush=True)
while True:
    threading.Thread(target=viewer, args=(server.accept()[0],), daemon=True).start()
"""


@pytest.mark.xfail(strict=True, reason="a dashboard that opens an outside feed per viewer and "
                   "passes its messages on unchanged is, byte for byte, a port forwarder")
def test_a_dashboard_forwarding_an_outside_feed_per_viewer_is_left_alone(far_end):
    watched, port = _started([sys.executable, "-c", FEED_PER_VIEWER, str(far_end)])
    try:
        assert min(_users("plain", port)) > 0
    finally:
        watched.stop()
    assert watched.highest("kernel_relayed_connections") == 0, watched.seen


def test_a_health_check_beside_a_sweep_no_kernel_owns_is_not_named():
    """In the shared namespace, another user's sweep (a process no watched kernel owns) makes
    the counters climb while a kernel's health check retries a down service every second:
    the health check is seldom seen holding a socket, never at 3 ticks of one window."""
    sweep = subprocess.Popen(SWEEPER + ["127.0.0.1", "--seconds", "20"], cwd=ROOT, env=ENV,
                             stdout=subprocess.DEVNULL)
    try:
        watched = _honest(SWEEPER + ["127.0.0.1", "--pause", "1", "--seconds", "8"])
    finally:
        sweep.kill()
        sweep.wait()
    assert watched.highest("kernel_refused_attempts") == 0, watched.seen
