"""A small load test of a local service: N concurrent keep-alive clients for 10 s."""

import http.client
import sys
import threading
import time

port, clients = int(sys.argv[1]), int(sys.argv[2])


def client():
    conn = http.client.HTTPConnection("127.0.0.1", port)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        conn.request("GET", "/")
        conn.getresponse().read()
        time.sleep(0.05)


threads = [threading.Thread(target=client) for _ in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
