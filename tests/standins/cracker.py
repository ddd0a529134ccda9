"""A stand-in for hashcat: brute-forces MD5 over a mask, with hashcat's command line.

    cracker.py -m 0 -a 3 HASHFILE ?a?a?a?a  (installed under the name 'hashcat' by the tests)
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from common import burn  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-m", type=int, default=0)
    parser.add_argument("-a", type=int, default=3)
    parser.add_argument("hashfile")
    parser.add_argument("mask", nargs="?")
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()
    burn(args.seconds, duty=0.3)


if __name__ == "__main__":
    main()
