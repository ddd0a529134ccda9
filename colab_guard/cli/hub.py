"""``colab-guard hub``: the JupyterHub service, in the foreground (see colab_guard/hub/).

JupyterHub starts it itself once ``configure(c)`` is in jupyterhub_config.py; run it by hand
as an external service (with the JUPYTERHUB_* variables of an external service set).
"""

from __future__ import annotations


def register(groups) -> None:
    parser = groups.add_parser(
        "hub", help="run the JupyterHub service (every user's incidents, strikes, bans, "
                    "appeals) in the foreground",
        description="Run colab-guard's JupyterHub service. Settings: --ColabGuardHub.<name>="
                    "VALUE (see --help-all) or --hub-config jupyterhub_config.py.")
    parser.add_argument("--hub-config", metavar="FILE", dest="hub_config",
                        help="the hub's jupyterhub_config.py (its c.ColabGuardHub settings)")
    parser.add_argument("--help-all", action="store_true",
                        help="every ColabGuardHub setting, with its help")
    parser.set_defaults(run=hub, extra_args=True)


def hub(args) -> int:
    from ..hub.app import ColabGuardHub, main

    if args.help_all:
        ColabGuardHub().print_help(classes=True)
        return 0
    argv = list(args.extra)
    if args.hub_config:
        argv.append(f"--config={args.hub_config}")
    return main(argv)
