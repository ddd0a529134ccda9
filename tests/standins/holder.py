"""A TCP server on 127.0.0.1 that accepts connections and holds them open, answering nothing
(a slowloris or flood target, a peer that keeps connections)."""

from __future__ import annotations

import socket
import threading


class Holder:
    def __init__(self, backlog: int = 1024):
        self.server = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.port = self.server.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.conns:
            conn.close()
