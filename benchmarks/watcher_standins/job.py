"""A miner known only by what its file carries: the Stratum protocol's method names. A neutral
name, neutral arguments (its pool is read from a file), a loopback pool.

    python3 job.py SETTINGS_FILE      (SETTINGS_FILE holds "HOST PORT")
"""

import json
import socket
import sys
import time

host, port = open(sys.argv[1]).read().split()
sock = socket.create_connection((host, int(port)))
for ident, method, params in ((1, "mining.subscribe", ["job/1.0"]),
                              (2, "mining.authorize", ["x", "x"])):
    sock.sendall(json.dumps({"id": ident, "method": method, "params": params}).encode() + b"\n")
end, x = time.monotonic() + 600, 1
while time.monotonic() < end:
    until = time.monotonic() + 0.015
    while time.monotonic() < until:
        x = (x * 7919 + 13) % 1000003
    time.sleep(0.035)
