"""Which kernel a process belongs to.

A process belongs to a kernel if it descends from it, and stays that kernel's after
it leaves the tree (setsid, double fork, ``nohup … &``): once seen under a kernel it
is remembered (the sampler's per-process record). A process first seen already
orphaned is claimed through the marker variable every guarded kernel carries in its
environment, and only if it runs as the same user as that kernel.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Mapping

import psutil

#: Set in every guarded kernel's environment; inherited by everything it starts.
KERNEL_ENV_MARKER = "COLAB_GUARD_KERNEL_ID"

#: Reads of an orphan's environment that found it empty (mid-exec) before giving up.
ENVIRON_TRIES = 3


def kernel_environment(kernel_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a guarded kernel is started with."""
    env = dict(os.environ if base is None else base)
    env[KERNEL_ENV_MARKER] = kernel_id
    return env


def children_of(table: Mapping) -> dict[int, list[int]]:
    """pid -> its children's pids, from the process table (a reused pid is no parent)."""
    children: dict[int, list[int]] = defaultdict(list)
    for pid, entry in table.items():
        parent = table.get(entry.ppid)
        if parent is not None and parent.start <= entry.start:
            children[entry.ppid].append(pid)
    return children


def descend(roots: Iterable[tuple[int, str]], children: Mapping[int, list[int]],
            owners: dict[int, str]) -> None:
    """Give each root's whole tree to the root's kernel (first claim wins)."""
    for root, kid in roots:
        stack = [root]
        while stack:
            pid = stack.pop()
            if pid in owners:
                continue
            owners[pid] = kid
            stack.extend(children.get(pid, ()))


def environment_marker(pid: int, create_time: float) -> tuple[str | None, bool]:
    """(the kernel named in the process's environment, whether the environment was read):
    an empty environment (the process is in the middle of an exec) is not a read."""
    try:
        proc = psutil.Process(pid)
        if not same_process(proc, create_time):
            return None, True
        environment = proc.environ()
    except psutil.Error:  # gone, or another user's process: not one of ours to claim
        return None, True
    return environment.get(KERNEL_ENV_MARKER), bool(environment)


def same_process(proc: psutil.Process, create_time: float) -> bool:
    """Whether a psutil handle is the process that started at ``create_time``."""
    try:
        return abs(proc.create_time() - create_time) < 0.01
    except psutil.Error:
        return False


def same_user(pid: int, kernel_pid: int) -> bool:
    """Whether a process runs as the same (real) user as the kernel."""
    try:
        return psutil.Process(pid).uids().real == psutil.Process(kernel_pid).uids().real
    except psutil.Error:
        return False
