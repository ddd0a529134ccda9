"""Services an honest notebook talks to, run by the tests as another machine's would be (never by
the kernel): ``python -m tests.standins.honest_services KIND [ARGS]`` prints its port and serves
until killed.

- ``ftp ROOT``: an anonymous, read-only FTP server (pyftpdlib) on ROOT, sending 256 KiB/s.
- ``params``: a parameter server: each request line is answered at once (a pull of the
  weights, 4 KiB; or an acknowledged push); it never sends unasked.
- ``pubsub SECONDS``: a Redis-like broker: a client that sends ``SUBSCRIBE <channel>`` gets a
  message on it every SECONDS, unasked (a shared job queue announcing new work, a
  hyper-parameter channel), as Redis' PUBLISH does.
- ``longpoll SECONDS``: a chat service's bot API (HTTP/1.1, kept alive): ``GET /getUpdates``
  is held SECONDS and answered with one small update (long polling, as Telegram's is);
  ``POST /sendMessage`` is answered at once.
- ``clients PORT N SECONDS``: not a service: N browser-like users keep requesting ``/`` of a
  local web app over kept-alive connections for SECONDS; prints each one's request count.
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import sys
import threading
import time


def _listen() -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    print(server.getsockname()[1], flush=True)
    return server


def _serve(server: socket.socket, handle) -> None:
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_guarded, args=(handle, conn), daemon=True).start()


def _guarded(handle, conn: socket.socket) -> None:
    with conn:
        try:
            handle(conn)
        except OSError:
            pass  # the client went away


def _parameters(conn: socket.socket) -> None:
    weights = base64.b64encode(os.urandom(3072)) + b"\n"
    with conn.makefile("rwb") as stream:
        for line in stream:
            stream.write(weights if line.startswith(b"PULL") else b"+OK\n")
            stream.flush()


def _broker(every: float):
    def handle(conn: socket.socket) -> None:
        channel = conn.recv(1024).split()[-1].decode()
        conn.sendall(b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(channel), channel.encode()))
        n = 0
        while True:
            time.sleep(every)
            n += 1
            body = b'{"job": %d, "lr": 0.001}' % n
            conn.sendall(b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                         % (len(channel), channel.encode(), len(body), body))
    return handle


def _ftp(root: str) -> None:
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler, ThrottledDTPHandler
    from pyftpdlib.servers import FTPServer

    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(root)
    # Sent at a link's pace, as a real mirror's: all at once on loopback, the "226" reply came
    # while a rate-limited aria2c was still reading the data, and one time in eight it then
    # waited its 60 s timeout for a reply it had already read (aria2 1.36, without the guard).
    paced = type("Paced", (ThrottledDTPHandler,), {"write_limit": 256 * 1024})
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer, "passive_ports": None,
                                              "dtp_handler": paced})
    server = FTPServer(("127.0.0.1", 0), handler)
    print(server.socket.getsockname()[1], flush=True)
    server.serve_forever(handle_exit=False)


def _clients(port: int, users: int, seconds: float) -> None:
    counts = [0] * users
    end = time.monotonic() + seconds

    def user(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < end:
            conn.request("GET", "/")
            conn.getresponse().read()
            counts[i] += 1
            time.sleep(0.3)  # a person's page, its assets, a poll
        conn.close()

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(*counts, flush=True)


def _long_poll(seconds: float) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Bot(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        updates = 0

        def do_GET(self):  # noqa: N802 (http.server's name)
            time.sleep(seconds)  # held until a user writes
            Bot.updates += 1
            self._answer(b'[{"update_id": %d, "chat": 7, "text": "/status"}]' % Bot.updates)

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer(b'{"ok": true}')

        def _answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Bot)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "ftp":
        _ftp(argv[1])
    elif kind == "params":
        _serve(_listen(), _parameters)
    elif kind == "pubsub":
        _serve(_listen(), _broker(float(argv[1])))
    elif kind == "longpoll":
        _long_poll(float(argv[1]))
    elif kind == "clients":
        _clients(int(argv[1]), int(argv[2]), float(argv[3]))
    else:
        raise SystemExit(f"unknown service {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
