"""Stopping processes: SIGTERM, then SIGKILL after a short grace.

Blocking (it waits for the processes to exit): the monitor runs it in its
worker thread. A process is signalled only if its pid still names the same
process (same start time), so a reused pid is never hit.
"""

from __future__ import annotations

from collections.abc import Callable

import psutil

from ..observe.model import Process
from ..record.incident import Action


def stop_processes(offenders: list[Process], grace: float, spare_pids: set[int],
                   may_signal: Callable[[psutil.Process], bool] | None = None) -> list[Action]:
    """Stop each offender and everything it started; never a pid in ``spare_pids``, nor a
    process ``may_signal`` refuses (the node watcher: root's, the system's)."""
    actions: list[Action] = []
    targets: dict[int, psutil.Process] = {}
    for offender in offenders:
        action = Action("stop", f"pid {offender.pid}")
        actions.append(action)
        try:
            proc = psutil.Process(offender.pid)
            if offender.create_time and abs(proc.create_time() - offender.create_time) > 0.01:
                action.outcome, action.detail = "gone", "exited (its pid now names another process)"
                continue
            family = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            action.outcome, action.detail = "gone", "had already exited"
            continue
        except psutil.Error as err:
            action.outcome, action.detail = "failed", f"{type(err).__name__}: {err}"
            continue
        if may_signal is not None and not may_signal(proc):
            action.outcome, action.detail = "failed", "spared: not a notebook user's process"
            continue
        for member in family:
            if member.pid not in spare_pids and (may_signal is None or may_signal(member)):
                targets[member.pid] = member
    if not targets:
        return actions
    survivors = _terminate(list(targets.values()), grace)
    for action in actions:
        if action.outcome != "pending":
            continue
        pid = int(action.target.split()[-1])
        if pid in survivors:
            action.outcome, action.detail = "failed", survivors[pid]
        else:
            action.outcome = "done"
            others = len(targets) - len(actions)
            action.detail = "stopped" + (f" with {others} process(es) it started" if others > 0 else "")
    return actions


def _terminate(procs: list[psutil.Process], grace: float) -> dict[int, str]:
    """Returns the pids still alive, with why."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    alive = _wait(procs, grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    alive = _wait(alive, max(grace, 1.0))
    return {p.pid: "still running after SIGKILL (uninterruptible or not ours)" for p in alive}


def _wait(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until they exit; a zombie (exited, not yet reaped by its parent) counts as gone."""
    _, alive = psutil.wait_procs([p for p in procs if not _is_zombie(p)], timeout=0)
    if alive:
        step, waited = 0.05, 0.0
        while alive and waited < timeout:
            _, alive = psutil.wait_procs(alive, timeout=step)
            alive = [p for p in alive if not _is_zombie(p)]
            waited += step
    return alive


def _is_zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True  # gone
