"""A stand-in BitTorrent client: takes a magnet link, listens for peers, announces to the
tracker named in the link (loopback only; no DHT, no LSD, no UPnP, no peer exchange).

    python torrent.py 'magnet:?xt=urn:btih:HASH&tr=http://127.0.0.1:PORT/announce' [--port 6881]
"""

import argparse
import socket
import time
import urllib.parse
import urllib.request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("link")
    parser.add_argument("--port", type=int, default=6881)
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()
    query = urllib.parse.parse_qs(urllib.parse.urlparse(args.link).query)
    tracker = query["tr"][0]
    if urllib.parse.urlparse(tracker).hostname not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit("stand-in refuses a tracker that is not on loopback")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for port in range(args.port, args.port + 100):
        try:
            listener.bind(("127.0.0.1", port))
            break
        except OSError:
            continue
    listener.listen(8)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        url = f"{tracker}?info_hash=x&peer_id=-ST0001-&port={port}&left=1000"
        try:
            urllib.request.urlopen(url, timeout=2).read()
        except OSError:
            pass
        time.sleep(1)


if __name__ == "__main__":
    main()
