"""The kernel <-> server channel's wire format, shared by both sides.

A Unix socket the server listens on (mode 0600, in Jupyter's runtime directory);
newline-delimited JSON messages. A connection starts with ``hello``, carrying the
kernel id and the token HMAC(server secret, kernel id) that only the kernel's
environment holds, so a kernel can report only for itself. Kept free of imports
from the rest of colab_guard: the kernel loads it at start.

kernel -> server:  hello {kernel_id, token, role: kernel|child}
                   events {events: [[kind, detail], ...], dropped}
                   cell-part {id, piece}  (a long cell's code, one piece of whole statements)
                   cell {id, digest, source, code, pieces, file}
                                          (code: what runs, after every transformer; pieces:
                                          how many cell-part came first; digest: sha256 of the
                                          raw cell; file: the name its code is compiled under.
                                          Acknowledged at once, then answered by a verdict)
                   cell-abandoned {id, digest}  (no verdict within the limit: not run)
                   unloaded {}            (the hook is being switched off)
                   events carry, beside programs, connections and imports:
                   ["ran", file]          a cell's code was executed (the audit hook's exec)
                   ["code", text]         source compiled at run time (exec, compile, import
                                          of a file outside the environment): checked like a cell
server -> kernel:  welcome {}
                   notice {notice}        (the guard acted: show it in the notebook)
                   checking {id}          (the check has started: wait for its verdict)
                   verdict {id, decision: run|refuse, notice, reason}
"""

from __future__ import annotations

import hashlib
import hmac
import json

ENV_SOCKET = "COLAB_GUARD_CHANNEL"
ENV_TOKEN = "COLAB_GUARD_TOKEN"
ENV_KERNEL = "COLAB_GUARD_KERNEL_ID"  # the same marker observe.processes sets
ENV_CELL_TIMEOUT = "COLAB_GUARD_CELL_TIMEOUT"  # seconds to wait for the check to start
ENV_CELL_LIMIT = "COLAB_GUARD_CELL_LIMIT"  # seconds to wait for a started check's verdict
MAX_LINE = 2 * 1024 * 1024  # one message, at most
MAX_CELL = 256 * 1024  # characters of one piece of a cell's code (whole statements)
#: characters of a cell's code checked in all (big data literals are shortened first): a cell
#: longer than this is refused with a message saying how to run it
MAX_CHECKED = 2 * 1024 * 1024
MAX_SOURCE_SHOWN = 64 * 1024  # characters of the raw cell sent as evidence


def token_for(secret: bytes, kernel_id: str) -> str:
    return hmac.new(secret, kernel_id.encode(), hashlib.sha256).hexdigest()


def encode(kind: str, **fields) -> bytes:
    return json.dumps({"type": kind, **fields}, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict:
    message = json.loads(line)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("not a channel message")
    return message
