"""A stand-in BitTorrent tracker on 127.0.0.1: answers /announce with an empty peer list."""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Announce(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b"d8:intervali30e5:peers0:e"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve(port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), Announce)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    srv = serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(srv.server_address[1], flush=True)
    threading.Event().wait()
