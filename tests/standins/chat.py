"""A stand-in chat server on 127.0.0.1 that pushes each client a message every ``every``
seconds, unasked, and reads whatever the client answers (a bot's replies): the honest side of
the mining rule's pushes-and-answers (tests/test_behaviour_redteam.py).

Run: python -m tests.standins.chat EVERY  (prints its port, then serves until killed); or in a
test, ``serve(every)``.
"""

from __future__ import annotations

import json
import socket
import sys
import threading


def _talk(conn: socket.socket, every: float, stop: threading.Event) -> None:
    def read() -> None:
        while conn.recv(65536):
            pass

    threading.Thread(target=read, daemon=True).start()
    n = 0
    with conn:
        while not stop.wait(every):
            n += 1
            message = {"op": 0, "t": "MESSAGE_CREATE",
                       "d": {"id": n, "author": "someone", "content": f"question {n}: why?"}}
            try:
                conn.sendall(json.dumps(message).encode() + b"\n")
            except OSError:
                return


def serve(every: float, port: int = 0) -> socket.socket:
    server = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()

    def accept_forever() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                stop.set()
                return
            threading.Thread(target=_talk, args=(conn, every, stop), daemon=True).start()

    threading.Thread(target=accept_forever, daemon=True).start()
    return server


BOT = r"""
import hashlib, json, socket, sys, time
host, port, burst, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
chat = socket.create_connection((host, port)).makefile("rwb")
end = time.monotonic() + seconds
while time.monotonic() < end:
    message = json.loads(chat.readline())
    busy_until, d = time.monotonic() + burst, b"x"
    while time.monotonic() < busy_until:  # the model answering (a burst of CPU)
        d = hashlib.sha256(d).digest()
    reply = {"op": 0, "d": {"reply_to": message["d"]["id"], "content": "because " + d.hex()}}
    chat.write(json.dumps(reply).encode() + b"\n"); chat.flush()
"""
"""A bot: ``python -c BOT HOST PORT BURST SECONDS`` answers each message after ``BURST`` s of
CPU work (a small model's inference)."""


if __name__ == "__main__":
    srv = serve(float(sys.argv[1]))
    print(srv.getsockname()[1], flush=True)
    threading.Event().wait()
