"""A relay under a neutral name, and the far end and clients to drive it.

As a program: ``relay.py socks [--split] [--name NAME]`` serves SOCKS5 (CONNECT, no
authentication) on 127.0.0.1, a port of its own, printed on the first line; ``relay.py
forward PORT`` forwards every connection to 127.0.0.1:PORT. ``--split``: each client is
accepted by this process and its outbound connection made by a forked child, the bytes passing
between them over a Unix socket pair (accepting and connecting in different processes);
``--pad``: what goes to the client is padded to twice its length (a tunnel's own framing).

For the tests, each in a process of its own (so that the test's sampler, scanning in the
background, never starves them): ``relay.py stream`` (the far end: a server outside any
kernel that streams data on request) and ``relay.py users KIND PORT TARGET COUNT REQUESTS``
(browser-like users downloading through the relay at once; prints what each got).
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
import time

CHUNK = 16 * 1024


def pipe(a: socket.socket, b: socket.socket, pad: bool = False) -> None:
    """Copy a -> b until a ends; then end both. ``pad``: each piece sent twice as long (junk
    the relay's own client drops), so that the two sides never carry the same bytes."""
    try:
        while data := a.recv(65536):
            b.sendall(data + bytes(len(data)) if pad else data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


PAD = "--pad" in sys.argv


def both_ways(a: socket.socket, b: socket.socket) -> None:
    """Relay between a client ``a`` and its upstream ``b``."""
    threading.Thread(target=pipe, args=(a, b), daemon=True).start()
    pipe(b, a, PAD)


def socks_target(client: socket.socket) -> tuple[str, int]:
    """The SOCKS5 greeting and CONNECT request; answers both."""
    greeting = client.recv(2)
    client.recv(greeting[1])
    client.sendall(b"\x05\x00")
    head = client.recv(4)
    if head[3] == 1:
        host = socket.inet_ntoa(client.recv(4))
    else:
        host = client.recv(client.recv(1)[0]).decode()
    port = struct.unpack("!H", client.recv(2))[0]
    client.sendall(b"\x05\x00\x00\x01" + socket.inet_aton("0.0.0.0") + b"\x00\x00")
    return host, port


def serve(mode: str, forward_port: int, split: bool) -> None:
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    print(server.getsockname()[1], flush=True)
    while True:
        client, _ = server.accept()
        target = socks_target(client) if mode == "socks" else ("127.0.0.1", forward_port)
        if split:
            here, there = socket.socketpair()
            if os.fork() == 0:  # the child connects; the parent keeps the client
                server.close()
                client.close()
                here.close()
                both_ways(there, socket.create_connection(target))
                os._exit(0)
            there.close()
            threading.Thread(target=both_ways, args=(client, here), daemon=True).start()
        else:
            upstream = socket.create_connection(target)
            threading.Thread(target=both_ways, args=(client, upstream), daemon=True).start()


class Streamer:
    """A server on 127.0.0.1 (the far end, outside any kernel): for each line received,
    ``chunks`` chunks of 16 KiB, one every ``pause`` seconds."""

    def __init__(self, chunks: int = 10, pause: float = 0.2):
        self.server = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.server.getsockname()[1]
        self.chunks, self.pause = chunks, pause
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                reader = conn.makefile("rb")
                while reader.readline():
                    for _ in range(self.chunks):
                        conn.sendall(b"d" * CHUNK)
                        time.sleep(self.pause)
            except OSError:
                pass

    def close(self) -> None:
        self.server.close()


def _download(conn: socket.socket, requests: int) -> int:
    got = 0
    with conn:
        for _ in range(requests):
            conn.sendall(b"GET /stream\n")
            want = got + 10 * CHUNK
            while got < want:
                data = conn.recv(65536)
                if not data:
                    return got
                got += len(data)
    return got


def socks_client(relay_port: int, target_port: int, requests: int = 1) -> int:
    """One user through the SOCKS relay: bytes downloaded."""
    conn = socket.create_connection(("127.0.0.1", relay_port), timeout=30)
    conn.sendall(b"\x05\x01\x00")
    conn.recv(2)
    conn.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", target_port))
    conn.recv(10)
    return _download(conn, requests)


def plain_client(port: int, requests: int = 1) -> int:
    """One user of a port forwarder (or of the far end itself)."""
    return _download(socket.create_connection(("127.0.0.1", port), timeout=30), requests)


def users(kind: str, port: int, target: int, count: int, requests: int) -> list[int]:
    """``count`` users downloading at once through ``port`` (kind 'socks', to ``target``;
    'plain': a forwarder's or the far end's own port): bytes each got."""
    got = [0] * count

    def user(i):
        try:
            got[i] = socks_client(port, target, requests) if kind == "socks" \
                else plain_client(port, requests)
        except OSError:
            pass

    threads = [threading.Thread(target=user, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return got


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "stream":  # the far end, in a process of its own
        streamer = Streamer()
        print(streamer.port, flush=True)
        time.sleep(3600)
    if args[0] == "users":  # users KIND PORT TARGET COUNT REQUESTS
        print(*users(args[1], *map(int, args[2:6])), flush=True)
        sys.exit(0)
    if "--name" in args:
        from tests.standins.common import rename

        rename(args[args.index("--name") + 1])
    serve(args[0], int(args[1]) if args[0] == "forward" else 0, "--split" in args)
