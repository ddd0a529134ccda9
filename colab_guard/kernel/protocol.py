"""The kernel <-> server channel's wire format, shared by both sides.

A Unix socket the server listens on (mode 0600, in Jupyter's runtime directory);
newline-delimited JSON messages. A connection starts with ``hello``, carrying the
kernel id and the token HMAC(server secret, kernel id) that only the kernel's
environment holds, so a kernel can report only for itself. Kept free of imports
from the rest of colab_guard: the kernel loads it at start.

kernel -> server:  hello {kernel_id, token, role: kernel|child}
                   events {events: [[kind, detail], ...], dropped}
                   cell {id, source}      (answered by a verdict with the same id)
                   unloaded {}            (the hook is being switched off)
server -> kernel:  welcome {}
                   notice {notice}        (the guard acted: show it in the notebook)
                   verdict {id, decision: run|refuse, notice}
"""

from __future__ import annotations

import hashlib
import hmac
import json

ENV_SOCKET = "COLAB_GUARD_CHANNEL"
ENV_TOKEN = "COLAB_GUARD_TOKEN"
ENV_KERNEL = "COLAB_GUARD_KERNEL_ID"  # the same marker observe.processes sets
ENV_CELL_TIMEOUT = "COLAB_GUARD_CELL_TIMEOUT"
MAX_LINE = 2 * 1024 * 1024  # one message, at most
MAX_CELL = 256 * 1024  # characters of a cell sent for checking


def token_for(secret: bytes, kernel_id: str) -> str:
    return hmac.new(secret, kernel_id.encode(), hashlib.sha256).hexdigest()


def encode(kind: str, **fields) -> bytes:
    return json.dumps({"type": kind, **fields}, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict:
    message = json.loads(line)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("not a channel message")
    return message
