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
