"""The IPython extension that runs inside each guarded kernel.

Loaded at kernel start by the startup file the package installs in
``{sys.prefix}/etc/ipython/startup/`` (IPython runs every ``*.py`` there), and
only in kernels the guarded server started: those carry the channel's address
and their token in their environment. Anywhere else it does nothing.

It adds speed and a better message, never authority: the server side detects
and stops everything on its own, with or without this extension.
"""

from __future__ import annotations

import os

from . import protocol

_guard = None  # the KernelGuard of this kernel, while loaded


def load_in_kernel() -> None:
    """Called by the startup file: load the extension if this is a guarded kernel."""
    if not os.environ.get(protocol.ENV_SOCKET):
        return
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return  # a terminal IPython, not a kernel
    shell.extension_manager.load_extension("colab_guard.kernel")


def load_ipython_extension(shell) -> None:
    global _guard
    if _guard is not None:
        return
    from .extension import KernelGuard

    guard = KernelGuard.from_environment(shell)
    if guard is not None:
        guard.start()
        _guard = guard


def unload_ipython_extension(shell) -> None:
    global _guard
    if _guard is not None:
        _guard.stop()
        _guard = None
