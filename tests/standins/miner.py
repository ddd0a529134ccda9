"""A stand-in CPU miner with xmrig's command line: connects to a pool and hashes.

    python miner.py -o stratum+tcp://127.0.0.1:PORT -u WALLET -p x [--donate-level 1]
                    [--rename NAME] [--seconds N]
"""

import argparse
import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import burn, rename  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-o", "--url", required=True)
    parser.add_argument("-u", "--user", default="x")
    parser.add_argument("-p", "--pass", dest="password", default="x")
    parser.add_argument("--donate-level", default="1")
    parser.add_argument("-a", "--algo", default="rx/0")
    parser.add_argument("--rename")
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()
    if args.rename:
        rename(args.rename)
    hostport = args.url.split("://", 1)[-1]
    host, port = hostport.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(json.dumps({"id": 1, "method": "mining.subscribe", "params": ["xmrig/6.21"]}).encode() + b"\n")
    sock.sendall(json.dumps({"id": 2, "method": "mining.authorize", "params": [args.user, args.password]}).encode() + b"\n")
    burn(args.seconds, duty=0.3)


if __name__ == "__main__":
    main()
