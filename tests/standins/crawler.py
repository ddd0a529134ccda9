"""A crawler fetching images from many hosts, as img2dataset does over a dataset's URLs: 64
threads, each fetching one URL after another. One URL in ``--dead-every`` names a host that
never answers (a dead link: its connect times out after 3 s). ``--dead-in`` puts those hosts
in one network block (a sweep hiding among answering hosts) instead of scattered.

Run inside a network namespace whose 10.0.0.0/8 is routed into loopback (nothing answers
there) and whose HTTP server (``--port``, bound to 0.0.0.0) answers every 127.x address."""

from __future__ import annotations

import argparse
import random
import socket
import threading
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--dead-every", type=int, default=8)
    parser.add_argument("--dead-in", default="")  # e.g. "10.9": dead hosts in one /16
    args = parser.parse_args()
    rng, lock, counter = random.Random(1), threading.Lock(), [0]

    def next_host() -> str:
        with lock:
            counter[0] += 1
            i = counter[0]
            if i % args.dead_every == 0:
                block = args.dead_in or f"10.{rng.randrange(256)}"
                return f"{block}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        return f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{(i & 255) or 1}"

    def fetch(host: str) -> None:
        try:
            with socket.create_connection((host, args.port), timeout=3) as conn:
                conn.sendall(b"GET /image.jpg HTTP/1.0\r\n\r\n")
                while conn.recv(65536):
                    pass
        except OSError:
            pass

    end = time.monotonic() + args.seconds

    def worker() -> None:
        while time.monotonic() < end:
            fetch(next_host())

    threads = [threading.Thread(target=worker) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("fetched", counter[0], flush=True)


if __name__ == "__main__":
    main()
