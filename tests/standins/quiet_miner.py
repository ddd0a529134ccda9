"""A Python Stratum miner that shows no name: a neutral command line, its protocol's method
names assembled at run time (no string of them in the file or in memory before it runs),
throttled to a duty cycle, its pool on any port.

    python quiet_miner.py HOST PORT [--duty 0.7] [--period 0.05] [--seconds N]

or, in a kernel: ``quiet_miner.run(host, port, duty, seconds)``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import time


def _method(*parts: list[str]) -> str:
    return ".".join("".join(p) for p in parts)


def _send(sock: socket.socket, ident: int, method: str, params: list) -> None:
    sock.setblocking(True)
    sock.sendall(json.dumps({"id": ident, "method": method, "params": params}).encode() + b"\n")
    sock.setblocking(False)


#: Seconds between two shares: a pool sets each miner's share difficulty (vardiff) so that it
#: submits every few seconds to a minute; the stand-in submits its best hash this often.
SHARE_EVERY = 3.0


def run(host: str, port: int, duty: float = 1.0, seconds: float = 600,
        period: float = 0.05) -> int:
    """Mine: hash for ``duty`` of each ``period`` s, take the pool's jobs as they come, submit
    a share every ``SHARE_EVERY`` s. Returns the number of jobs received."""
    sock = socket.create_connection((host, port))
    prefix = ["mi", "ning"]
    _send(sock, 1, _method(prefix, ["sub", "scribe"]), ["w/1.0"])
    _send(sock, 2, _method(prefix, ["auth", "orize"]), ["wallet.rig", "x"])
    end, jobs, ident, job = time.monotonic() + seconds, 0, 3, b"job"
    data = best = b"\xff" * 32
    share_at = time.monotonic() + SHARE_EVERY
    while time.monotonic() < end:
        busy_until = time.monotonic() + period * duty
        while time.monotonic() < busy_until:
            data = hashlib.sha256(job + data).digest()
            best = min(best, data)
        if time.monotonic() >= share_at:  # a share at the pool's difficulty
            _send(sock, ident, _method(prefix, ["sub", "mit"]), ["wallet.rig", "job", best.hex()])
            ident, best, share_at = ident + 1, b"\xff" * 32, time.monotonic() + SHARE_EVERY
        if duty < 1:
            time.sleep(period * (1 - duty))
        try:
            incoming = sock.recv(65536)
        except BlockingIOError:
            continue
        if not incoming:
            break
        jobs += incoming.count(b"notify")
        job = incoming[-32:]
    sock.close()
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--duty", type=float, default=1.0)
    parser.add_argument("--period", type=float, default=0.05)
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()
    print("jobs", run(args.host, args.port, args.duty, args.seconds, args.period), flush=True)


if __name__ == "__main__":
    main()
