"""``colab-guard watch``: the node watcher, in the foreground (see colab_guard/watch/)."""

from __future__ import annotations


def register(groups) -> None:
    parser = groups.add_parser(
        "watch", help="run the node watcher (as root, one per machine, in the foreground): "
                      "every notebook user's kernels, stopped and recorded out of their reach",
        description="Run the node watcher. Settings: --Watcher.<name>=VALUE (see --help-all) "
                    "or a root-owned config file.")
    parser.add_argument("--watch-config", metavar="FILE", dest="watch_config",
                        help="the watcher's config file (.py or .json; default "
                             "/etc/colab-guard/watch_config.py), owned and writable by root alone")
    parser.add_argument("--help-all", action="store_true",
                        help="every Watcher setting, with its help")
    parser.set_defaults(run=watch, extra_args=True)


def watch(args) -> int:
    from ..watch.app import Watcher, main

    if args.help_all:
        Watcher().print_help(classes=True)
        return 0
    argv = list(args.extra)
    if args.watch_config:
        argv.append(f"--Watcher.config_file={args.watch_config}")
    return main(argv)
