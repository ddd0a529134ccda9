"""A stand-in Stratum mining pool on 127.0.0.1: answers subscribe/authorize and submits,
and pushes a new job every ``JOB_EVERY`` seconds once a miner has logged in (a real pool
pushes one with each new block or template: every 30 s to 2 min; the stand-in is faster so
that tests need not wait).

Run: python -m tests.standins.pool [PORT]  (prints its port, then serves until killed)
"""

import json
import socket
import sys
import threading

JOB_EVERY = 2.0


def handle(conn: socket.socket) -> None:
    try:
        talk(conn)
    except OSError:
        pass  # the miner was stopped mid-conversation


def push_jobs(stream, lock: threading.Lock, stop: threading.Event) -> None:
    """New jobs, unasked, as a pool sends them."""
    job = 1
    while not stop.wait(JOB_EVERY):
        job += 1
        line = json.dumps({"id": None, "method": "mining.notify",
                           "params": [f"job{job}", "00" * 32, "00", True]}).encode() + b"\n"
        try:
            with lock:
                stream.write(line)
                stream.flush()
        except (OSError, ValueError):
            return


def talk(conn: socket.socket) -> None:
    lock, stop = threading.Lock(), threading.Event()
    try:
        _talk(conn, lock, stop)
    finally:
        stop.set()


def _talk(conn: socket.socket, lock: threading.Lock, stop: threading.Event) -> None:
    pushing = False
    with conn, conn.makefile("rwb") as stream:
        for line in stream:
            try:
                request = json.loads(line)
            except ValueError:
                return
            method = request.get("method")
            result = {"mining.subscribe": [[["mining.notify", "ae6812eb"]], "08000002", 4],
                      "mining.authorize": True, "login": {"id": "1", "status": "OK"}}.get(method, True)
            with lock:
                stream.write(json.dumps({"id": request.get("id"), "result": result,
                                         "error": None}).encode() + b"\n")
                if not pushing:
                    stream.write(b'{"id":null,"method":"mining.notify","params":["job1","00","00",true]}\n')
                stream.flush()
            if not pushing and method in ("mining.authorize", "login"):
                pushing = True
                threading.Thread(target=push_jobs, args=(stream, lock, stop), daemon=True).start()


def serve(port: int = 0) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(16)

    def accept_forever():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    srv = serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(srv.getsockname()[1], flush=True)
    threading.Event().wait()
