"""The quiet miner (quiet_miner.py), which drops its pool connection and opens a new one
every RECYCLE seconds, so that no connection lives through a behaviour window.

    python recycling_miner.py HOST PORT RECYCLE [--seconds N]
"""

from __future__ import annotations

import sys
import time

from tests.standins.quiet_miner import run

if __name__ == "__main__":
    host, port, recycle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    seconds = float(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 60
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        run(host, port, 1.0, recycle)
