"""A health check: is each of the given local ports up? Every second for 10 s."""

import socket
import sys
import time

end = time.monotonic() + 10
while time.monotonic() < end:
    for port in sys.argv[1:]:
        try:
            socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
        except OSError:
            pass
    time.sleep(1)
