"""Stopping processes: SIGTERM, then SIGKILL after a short grace.

A process is signalled only if its pid still names the same process (same start
time), so a reused pid is never hit. ``stop_processes`` blocks until they are gone
(for tools and tests); the monitor uses ``stop_processes_async``, which waits on the
event loop, not in a thread: every stop keeps its own SIGKILL deadline however many
are under way (processes that ignore SIGTERM, started in a loop, cannot hold up the
stop of the one that matters).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable

import psutil

from ..observe import procfs
from ..observe.model import Process
from ..record.incident import Action


MaySignal = Callable[[psutil.Process], bool]


def stop_processes(offenders: list[Process], grace: float, spare_pids: set[int],
                   may_signal: MaySignal | None = None) -> list[Action]:
    """Stop each offender and everything it started; never a pid in ``spare_pids``, nor a
    process ``may_signal`` refuses (the node watcher: root's, the system's)."""
    actions, targets = signal_offenders(offenders, spare_pids, may_signal)
    survivors = _terminate(list(targets.values()), grace, spare_pids, may_signal) \
        if targets else {}
    return _outcomes(actions, targets, survivors)


async def stop_processes_async(offenders: list[Process], grace: float, spare_pids: set[int],
                               may_signal: MaySignal | None = None,
                               run: Callable[..., Awaitable] | None = None,
                               signalled: Callable[[list[tuple]], None] | None = None
                               ) -> list[Action]:
    """``stop_processes`` waiting on the event loop. ``run(fn, *args)`` runs the walk of
    each offender's children off the loop (a thread pool's run_in_executor).
    ``signalled(keys)``: told the (pid, create_time) of every process sent SIGTERM."""
    if run is None:
        actions, targets = signal_offenders(offenders, spare_pids, may_signal)
    else:
        actions, targets = await run(signal_offenders, offenders, spare_pids, may_signal)
    if signalled is not None:
        signalled([_key(p) for p in targets.values()])
    alive = await _exited(list(targets.values()), grace)
    if alive:
        killed = await (run or _now)(kill_with_families, alive, spare_pids, may_signal)
        if signalled is not None and len(killed) > len(alive):
            signalled([_key(p) for p in killed[len(alive):]])
        alive = killed
    alive = await _exited(alive, max(grace, 1.0))
    return _outcomes(actions, targets, {p.pid: SURVIVED for p in alive})


async def _now(fn, *args):
    return fn(*args)


def kill_with_families(survivors: list[psutil.Process], spare_pids: set[int],
                       may_signal: MaySignal | None = None) -> list[psutil.Process]:
    """SIGKILL to each process that outlived its grace and to what it started meanwhile:
    frozen first, its children read again (one that ignores SIGTERM and forks a miner once
    told to stop: the family walk before its SIGTERM could not see that child). The
    survivors, then the members found now."""
    found: dict[int, psutil.Process] = {}
    for proc in survivors:
        if _signal(proc, signal.SIGSTOP):
            _wait_stopped(proc.pid)
        try:
            below = subtree(proc)
            below = proc.children(recursive=True) if below is None else below
        except psutil.Error:
            below = []
        for member in below:
            if member.pid not in spare_pids and member.pid not in found \
                    and (may_signal is None or may_signal(member)):
                found[member.pid] = member
        _signal(proc, signal.SIGKILL)
    known = {p.pid for p in survivors}
    new = [p for pid, p in found.items() if pid not in known]
    for member in new:
        _signal(member, signal.SIGKILL)
    return [*survivors, *new]


SURVIVED = "still running after SIGKILL (uninterruptible or not ours)"


def signal_offenders(offenders: list[Process], spare_pids: set[int],
                     may_signal: MaySignal | None = None
                     ) -> tuple[list[Action], dict[int, psutil.Process]]:
    """SIGTERM to each offender and its descendants (never ``spare_pids`` nor what
    ``may_signal`` refuses), in the order given (the most telling first). Each offender is
    frozen (SIGSTOP) the moment it is checked, so that it stops running at once while its
    descendants are found (a pass over the processes: seconds on a loaded machine with many
    stops under way), and cannot exit meanwhile and leave them to init; then its family gets
    SIGTERM and it is let go (SIGCONT) to take it. The actions (those already settled: gone,
    failed, spared) and the processes signalled."""
    actions: list[Action] = []
    targets: dict[int, psutil.Process] = {}
    children = None  # ppid -> pids: one pass over the processes for all the offenders
    for offender in offenders:
        action = Action("stop", f"pid {offender.pid}")
        actions.append(action)
        try:
            proc = psutil.Process(offender.pid)
            if offender.create_time and \
                    abs(procfs.start_time(proc.pid) - offender.create_time) > 0.01:
                action.outcome, action.detail = "gone", "exited (its pid now names another process)"
                continue
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            action.outcome, action.detail = "gone", "had already exited"
            continue
        except psutil.Error as err:
            action.outcome, action.detail = "failed", f"{type(err).__name__}: {err}"
            continue
        if may_signal is not None and not may_signal(proc):
            action.outcome, action.detail = "failed", "spared: not a notebook user's process"
            continue
        frozen = proc.pid not in spare_pids and _signal(proc, signal.SIGSTOP)
        if frozen:
            _wait_stopped(proc.pid)
        try:
            below = subtree(proc)
            if below is None and len(offenders) > 1:
                children = children if children is not None else _children_map()
                below = _descendants(proc, children)
            elif below is None:
                below = proc.children(recursive=True)
            family = [proc, *below]
        except psutil.Error:
            family = [proc]  # gone meanwhile: what it started is found if it offends
        for member in family:
            if member.pid not in spare_pids and member.pid not in targets \
                    and (may_signal is None or may_signal(member)):
                targets[member.pid] = member
                _signal(member, signal.SIGTERM)
        if frozen:
            _signal(proc, signal.SIGCONT)
    return actions, targets


#: How long the walk of an offender's children waits for it to be stopped after SIGSTOP (a
#: fork finishes in a millisecond; a process held in the kernel longer, such as a vfork
#: parent, costs each stop no more than this).
STOPPED_WAIT = 0.05


def _wait_stopped(pid: int, timeout: float = STOPPED_WAIT) -> None:
    """Wait until every thread of the process is stopped (or gone). SIGSTOP takes effect
    when a thread leaves the kernel: one in the middle of a fork finishes it first, and a
    child it is forking is not yet among its children. Read before, the child is missed and
    runs on (a shell that starts the tool at that moment: the tool is not stopped)."""
    deadline = time.monotonic() + timeout
    while not _all_stopped(pid) and time.monotonic() < deadline:
        time.sleep(0.0005)


def _all_stopped(pid: int) -> bool:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True  # gone
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as stat:
                state = stat.read().rpartition(b")")[2].split(None, 1)[0]
        except (OSError, IndexError):
            continue  # the thread ended
        if state not in (b"T", b"t", b"Z", b"X"):
            return False
    return True


def _key(proc: psutil.Process) -> tuple:
    try:
        return (proc.pid, procfs.start_time(proc.pid))  # as the sampler's keys
    except OSError:
        return (proc.pid, 0.0)


def _signal(proc: psutil.Process, number: int) -> bool:
    """Send a signal to the process (psutil checks that its pid still names it)."""
    try:
        proc.send_signal(number)
        return True
    except psutil.Error:
        return False


def subtree(proc: psutil.Process) -> list[psutil.Process] | None:
    """Every process below ``proc``, from /proc/PID/task/TID/children: only its own subtree
    is read, where a pass over the processes reads the stat of every process on the machine
    (a node watcher's machine has thousands: tens of milliseconds before the SIGTERM). None
    where the kernel has no such file (built without CONFIG_PROC_CHILDREN)."""
    found: list[psutil.Process] = []
    parents, seen = [proc.pid], {proc.pid}
    while parents:
        pid = parents.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue  # exited meanwhile: its children are reparented, out of this tree
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as listing:
                    children = [int(c) for c in listing.read().split()]
            except FileNotFoundError:
                if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                    continue  # the thread ended
                return None  # no such file on this kernel
            for child in children:
                if child not in seen:
                    seen.add(child)
                    parents.append(child)
                    try:
                        found.append(psutil.Process(child))
                    except psutil.NoSuchProcess:
                        pass
    return found


def _children_map() -> dict[int, list[int]]:
    """ppid -> pids, from one pass over the processes."""
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info["ppid"]
        if ppid is not None:
            children.setdefault(ppid, []).append(proc.pid)
    return children


def _descendants(proc: psutil.Process, children: dict[int, list[int]]) -> list[psutil.Process]:
    """A process's descendants by the map, each checked to be younger than its parent (a
    pid reused since the map was made is no descendant)."""
    found, stack = [], [proc]
    while stack:
        parent = stack.pop()
        for pid in children.get(parent.pid, ()):
            try:
                child = psutil.Process(pid)
                if child.ppid() == parent.pid and \
                        procfs.start_time(child.pid) >= procfs.start_time(parent.pid):
                    found.append(child)
                    stack.append(child)
            except (psutil.Error, OSError):
                continue
    return found


def _outcomes(actions: list[Action], targets: dict[int, psutil.Process],
              survivors: dict[int, str]) -> list[Action]:
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


async def _exited(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait (on the event loop) until they exit; those still alive after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    alive = [p for p in procs if not _is_gone(p)]
    while alive and loop.time() < deadline:
        await asyncio.sleep(0.05)
        alive = [p for p in alive if not _is_gone(p)]
    return alive


def _is_gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _terminate(procs: list[psutil.Process], grace: float, spare_pids: set[int],
               may_signal: MaySignal | None) -> dict[int, str]:
    """SIGKILL to those still alive after ``grace`` (SIGTERM was sent); returns the pids
    still alive after that, with why."""
    alive = kill_with_families(_wait(procs, grace), spare_pids, may_signal)
    alive = _wait(alive, max(grace, 1.0))
    return {p.pid: SURVIVED for p in alive}


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
