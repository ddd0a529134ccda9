"""The ``colab-guard`` command line tool.

Each command group lives in its own module and registers its sub-commands
with ``register(subparsers)``. Commands read the same configuration as the
server (jupyter_server_config.py / .json on Jupyter's config path), so they
find the same signatures and incident store without flags.
"""

from __future__ import annotations

import argparse
import sys

from . import hub, incidents, scan, signatures, watch

GROUPS = [signatures, incidents, scan, watch, hub]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colab-guard",
        description="Review colab-guard's incidents and manage its signatures.")
    parser.add_argument("--config", metavar="FILE", action="append", default=[],
                        help="extra Jupyter config file(s) to read (after the usual ones)")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Only `watch` takes more options (--Watcher.<name>=VALUE, read by traitlets).
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "extra_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:
        return 0
    except CommandError as err:
        print(f"colab-guard: {err}", file=sys.stderr)
        return 2


class CommandError(Exception):
    """A user error, printed without a traceback."""


if __name__ == "__main__":
    sys.exit(main())
