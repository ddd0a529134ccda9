"""Honest work over long windows: what the mining rule makes of a busy notebook with one
long-lived connection, run for minutes (tests/test_honest_workloads.py runs a short subset).

    ./dev bench honest [--seconds 60] [--intervals 5,20]

A guarded `jupyter server` (cell checks on), one kernel per run, services run by this script as
another machine's would be (tests/standins/honest_services.py). Runs:

- ``params``: two processes busy on both cores, each pulling from a parameter server every 3 s
  (it only answers): expected no incident however long it runs;
- ``pubsub N``: one busy process subscribed to a broker's channel that pushes a message every
  N seconds, unasked, and sends nothing back: expected no incident (the mining rule needs the
  process to answer pushes, as a miner submits shares); it reports when (if ever) the run was
  taken for a miner.
- ``bot EVERY BURST``: a chat server pushes a message every EVERY seconds; a bot in the kernel
  works BURST seconds of CPU on each (a small model's inference) and answers: pushed to and
  answering, as a miner is, but in bursts (the mining rule's steady demand tells them apart):
  expected no incident.

Prints one line per run: the seconds it ran, and the first incident's signature and seconds
after the start, or "no incident".
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from tests.harness import GuardedServer

ROOT = Path(__file__).resolve().parent.parent

TRAINER = '''
import os, socket, time
import multiprocessing as mp
def train(port, seconds):
    server = socket.create_connection(("127.0.0.1", port)).makefile("rwb")
    end, last, n = time.time() + seconds, 0.0, 1
    while time.time() < end:
        for _ in range(20000): n = (n * 48271) % 2147483647
        if time.time() - last > 3:
            server.write(b"PULL\\n"); server.flush(); server.readline(); last = time.time()
    return n
with mp.get_context("fork").Pool(2) as pool:
    pool.starmap(train, [(PORT, SECONDS)] * 2)
print("done")
'''

SUBSCRIBER = '''
import socket, time
r = socket.create_connection(("127.0.0.1", PORT)); r.setblocking(False)
r.sendall(b"SUBSCRIBE jobs\\r\\n")
end, n, jobs = time.time() + SECONDS, 1, 0
while time.time() < end:
    for _ in range(20000): n = (n * 48271) % 2147483647
    try: jobs += r.recv(4096).count(b"message")
    except BlockingIOError: pass
print("done", jobs)
'''


BOT = '''
import hashlib, json, socket, time
chat = socket.create_connection(("127.0.0.1", PORT)).makefile("rwb")
end, answered = time.monotonic() + SECONDS, 0
while time.monotonic() < end:
    message = json.loads(chat.readline())
    busy_until, d = time.monotonic() + BURST, b"x"
    while time.monotonic() < busy_until:
        d = hashlib.sha256(d).digest()
    chat.write(json.dumps({"reply_to": message["d"]["id"], "content": d.hex()}).encode() + b"\\n")
    chat.flush(); answered += 1
print("done", answered)
'''


def service(*args: str) -> tuple[subprocess.Popen, int]:
    return service_module("tests.standins.honest_services", *args)


def service_module(module: str, *args: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", module, *args],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def one_run(server: GuardedServer, name: str, code: str, seconds: float) -> str:
    kernel_id, client = server.start_kernel()
    try:
        started = time.time()
        client.execute_interactive(code, timeout=seconds + 120, output_hook=lambda msg: None)
        ran = time.time() - started
        found = server.incidents(kernel_id)
        if not found:
            return f"{name}: ran {ran:.0f} s, no incident"
        first = min(found, key=lambda i: i["time"])
        after = datetime.fromisoformat(first["time"]).timestamp() - started
        return f"{name}: ran {ran:.0f} s, {first['signature']} {after:.0f} s after the start"
    finally:
        client.stop_channels()
        server.api("DELETE", f"api/kernels/{kernel_id}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--intervals", default="5,20", help="broker push intervals, seconds")
    parser.add_argument("--bots", default="2:0.4,5:1.0",
                        help="chat bots, each EVERY:BURST seconds ('' for none)")
    args = parser.parse_args()
    settings = {"sample_interval": 0.5, "stop_grace": 1.0, "cell_checks": True,
                "strike_limit": 0}
    services = []
    with GuardedServer(guard=settings) as server:
        try:
            params, port = service("params")
            services.append(params)
            code = TRAINER.replace("PORT", str(port)).replace("SECONDS", str(args.seconds))
            print(one_run(server, "params", code, args.seconds), flush=True)
            for every in filter(None, args.intervals.split(",")):
                broker, port = service("pubsub", every)
                services.append(broker)
                code = SUBSCRIBER.replace("PORT", str(port)).replace("SECONDS", str(args.seconds))
                print(one_run(server, f"pubsub {every}", code, args.seconds), flush=True)
            for bot in filter(None, args.bots.split(",")):
                every, burst = bot.split(":")
                chat, port = service_module("tests.standins.chat", every)
                services.append(chat)
                code = (BOT.replace("PORT", str(port)).replace("SECONDS", str(args.seconds))
                        .replace("BURST", burst))
                print(one_run(server, f"bot {every} {burst}", code, args.seconds), flush=True)
        finally:
            for proc in services:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
