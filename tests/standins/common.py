"""Helpers shared by the stand-in programs."""

import ctypes
import hashlib
import time

PR_SET_NAME = 15


def rename(name: str) -> None:
    """Change the process name (comm), as real tools do after they start."""
    libc = ctypes.CDLL(None)
    libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def burn(seconds: float, duty: float = 0.5) -> None:
    """Use about ``duty`` of one core for ``seconds``: hashing, like a miner or a cracker."""
    end = time.monotonic() + seconds
    data = b"x" * 64
    while time.monotonic() < end:
        busy_until = time.monotonic() + 0.05 * duty
        while time.monotonic() < busy_until:
            data = hashlib.sha256(data).digest()
        time.sleep(0.05 * (1 - duty))


def bencode(value) -> bytes:
    """BitTorrent's encoding of ints, strings and dicts (keys sorted): a .torrent's bytes."""
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, (str, bytes)):
        raw = value.encode() if isinstance(value, str) else value
        return b"%d:%s" % (len(raw), raw)
    if isinstance(value, dict):
        return b"d" + b"".join(bencode(k) + bencode(value[k]) for k in sorted(value)) + b"e"
    raise TypeError(type(value))
