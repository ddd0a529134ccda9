"""A fork storm: RATE short-lived children per second for SECONDS (each lives ~20 ms and is
reaped automatically), then writes how many it forked to OUT.

    python fork_storm.py RATE SECONDS OUT
"""

import os
import signal
import sys
import time


def main() -> None:
    rate, seconds, out = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    forked, start = 0, time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        if forked < elapsed * rate:
            if os.fork() == 0:
                time.sleep(0.02)
                os._exit(0)
            forked += 1
        else:
            time.sleep(0.0005)
    with open(out, "w") as file:
        file.write(str(forked))


if __name__ == "__main__":
    main()
