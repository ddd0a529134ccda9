"""The kernel's end of the channel: one connection, a sender and a receiver thread."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Callable

from . import protocol
from .hook import FLUSH_INTERVAL, Reporter

SEND_GAP = 0.02  # seconds between two writes of events; adds at most this to a report


class ChannelClient:
    def __init__(self, path: str, kernel_id: str, token: str,
                 on_notice: Callable[[dict], None]):
        self.path, self.kernel_id, self.token = path, kernel_id, token
        self.on_notice = on_notice
        self.sock: socket.socket | None = None
        self.closed = threading.Event()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, list] = {}  # request id -> [Event, answer]
        self._reported_dropped = 0
        self._reported_altered: list[str] = []  # the hook's settings changed (Reporter.altered)

    # ------------------------------------------------------------ connection

    def connect(self, timeout: float = 5.0) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(self.path)
        sock.sendall(protocol.encode("hello", kernel_id=self.kernel_id, token=self.token,
                                     role="kernel"))
        reader = sock.makefile("rb")
        welcome = protocol.decode(reader.readline(protocol.MAX_LINE))
        if welcome["type"] != "welcome":
            sock.close()
            raise ConnectionRefusedError(str(welcome.get("reason", "refused by the server")))
        sock.settimeout(None)
        self.sock, self._reader = sock, reader

    def start(self, reporter: Reporter) -> None:
        """Start the sender and receiver threads (daemons: they never hold the kernel up)."""
        for target, name in ((self._send_loop, "colab-guard-sender"),
                             (self._receive_loop, "colab-guard-receiver")):
            thread = threading.Thread(target=target, args=(reporter,), name=name, daemon=True)
            thread.start()

    def close(self) -> None:
        self.closed.set()
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

    # ------------------------------------------------------------ sending

    def send(self, kind: str, **fields) -> bool:
        if self.sock is None or self.closed.is_set():
            return False
        try:
            with self._send_lock:
                self.sock.sendall(protocol.encode(kind, **fields))
            return True
        except OSError:
            self.closed.set()
            return False

    def check(self, pieces: list[str], ack_timeout: float, limit: float, kind: str = "cell",
              **fields) -> dict | None:
        """Send a cell's pieces and its check request; wait ``ack_timeout`` for the server to
        say it is checking, then up to ``limit`` for its verdict. None: no acknowledgement
        (the server is away: the cell runs, watched from outside); ``{"decision":
        "timeout"}``: acknowledged, but no verdict within ``limit``."""
        request_id = next(self._ids)
        slot = [threading.Event(), None, threading.Event()]  # answered, answer, acknowledged
        self._waiting[request_id] = slot
        try:
            for piece in pieces:
                if not self.send("cell-part", id=request_id, piece=piece):
                    return None
            if not self.send(kind, id=request_id, pieces=len(pieces), **fields):
                return None
            if not slot[2].wait(ack_timeout) and not slot[0].is_set():
                return None
            if not slot[0].wait(max(limit, ack_timeout)):
                self.send("cell-abandoned", id=request_id, digest=fields.get("digest"))
                return {"decision": "timeout"}
            return slot[1]
        finally:
            self._waiting.pop(request_id, None)

    def _send_loop(self, reporter: Reporter) -> None:
        reporter.quiet(threading.get_ident())
        while not self.closed.is_set():
            reporter.wake.wait(FLUSH_INTERVAL)
            reporter.wake.clear()
            batch = reporter.drain()
            dropped = reporter.dropped
            altered = reporter.altered()
            if batch or dropped != self._reported_dropped or altered != self._reported_altered:
                if not self.send("events", events=batch, dropped=dropped, altered=altered):
                    return
                self._reported_dropped, self._reported_altered = dropped, altered
                # Coalesce bursts (a loop starting 100 programs): one write per SEND_GAP at most.
                time.sleep(SEND_GAP)

    def _receive_loop(self, reporter: Reporter) -> None:
        reporter.quiet(threading.get_ident())
        try:
            for line in iter(lambda: self._reader.readline(protocol.MAX_LINE), b""):
                try:
                    message = protocol.decode(line)
                except ValueError:
                    continue
                self._dispatch(message)
        except (OSError, ValueError):
            pass
        self.closed.set()
        for slot in list(self._waiting.values()):  # the server is gone: no verdict will come
            slot[0].set()

    def _dispatch(self, message: dict) -> None:
        if message["type"] == "checking":
            slot = self._waiting.get(message.get("id"))
            if slot is not None:
                slot[2].set()
        if message["type"] == "verdict":
            slot = self._waiting.get(message.get("id"))
            if slot is not None:
                slot[1] = message
                slot[0].set()
        if isinstance(message.get("notice"), dict) and message["type"] == "notice":
            try:
                self.on_notice(message["notice"])
            except Exception:
                pass  # showing a notice must never kill the channel


def report_from_child(path: str, kernel_id: str, token: str, detail: str) -> None:
    """From a child the kernel forked, just before it execs: report the command, briefly."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(0.2)
    try:
        sock.connect(path)
        sock.sendall(protocol.encode("hello", kernel_id=kernel_id, token=token, role="child",
                                     pid=os.getpid())
                     + protocol.encode("events", events=[["start", detail]], dropped=0))
    finally:
        sock.close()
