"""A stand-in Stratum mining pool on 127.0.0.1: answers subscribe/authorize, sends jobs.

Run: python -m tests.standins.pool  (prints its port, then serves until killed)
"""

import json
import socket
import sys
import threading


def handle(conn: socket.socket) -> None:
    try:
        talk(conn)
    except OSError:
        pass  # the miner was stopped mid-conversation


def talk(conn: socket.socket) -> None:
    with conn, conn.makefile("rwb") as stream:
        for line in stream:
            try:
                request = json.loads(line)
            except ValueError:
                return
            method = request.get("method")
            result = {"mining.subscribe": [[["mining.notify", "ae6812eb"]], "08000002", 4],
                      "mining.authorize": True, "login": {"id": "1", "status": "OK"}}.get(method, True)
            stream.write(json.dumps({"id": request.get("id"), "result": result, "error": None}).encode() + b"\n")
            stream.write(b'{"id":null,"method":"mining.notify","params":["job1","00","00",true]}\n')
            stream.flush()


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
