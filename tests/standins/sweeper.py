"""A port sweep whose attempts are refused at once: ``sweeper.py HOST [--seconds S]
[--pause P] [--udp]`` tries ports 1-65535 of HOST (127.0.0.1, ::1) over and over, one at a
time, with a pause of P seconds after each (0: none); ``--udp`` sends one datagram to each
port instead (refused by ICMP port unreachable). Prints 'SWEEPING' once started."""

from __future__ import annotations

import socket
import sys
import time


def sweep(host: str, seconds: float, pause: float, udp: bool) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    tried, end = 0, time.monotonic() + seconds
    print("SWEEPING", flush=True)
    while time.monotonic() < end:
        for port in range(1, 65536):
            if udp:
                with socket.socket(family, socket.SOCK_DGRAM) as s:
                    s.sendto(b"?", (host, port))
            else:
                with socket.socket(family) as s:
                    s.connect_ex((host, port))
            tried += 1
            if pause:
                time.sleep(pause)
            if tried % 256 == 0 and time.monotonic() >= end:
                return tried
    return tried


if __name__ == "__main__":
    args = sys.argv[1:]
    option = lambda name, default: float(args[args.index(name) + 1]) if name in args else default  # noqa: E731
    print(sweep(args[0], option("--seconds", 30), option("--pause", 0), "--udp" in args))
