"""The monitor: observe -> detect -> act -> record, once per tick, for every kernel.

It runs on the server's event loop; the blocking parts (reading /proc,
waiting for processes to die) run in worker threads. A failure while
checking one kernel is logged and counted, and that kernel is checked again
at the next tick; the other kernels are unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .act.enforce import stop_processes
from .act.policy import RANK, choose_action, stops_processes
from .detect.engine import Detection, Engine
from .observe.model import Snapshot
from .observe.gpu import GpuSample, GpuSampler
from .observe.processes import ProcessSampler
from .record import metrics
from .record.events import INCIDENT_SCHEMA_ID, incident_event
from .record.incident import Action, Incident
from .record.database import IncidentStore

if TYPE_CHECKING:
    from .app import ColabGuard

IncidentListener = Callable[[Incident, str], Awaitable[None] | None]

#: After acting on the kernel process itself, give the interrupt this long to work.
KERNEL_GRACE = 3.0
#: The kernel offending again this soon after being interrupted is shut down.
KERNEL_ESCALATION_WINDOW = 60.0


class Monitor:
    def __init__(self, app: ColabGuard, engine: Engine, store: IncidentStore,
                 log: logging.Logger | None = None):
        self.app = app
        self.engine = engine
        self.store = store
        self.log = log or logging.getLogger("colab_guard")
        self.sampler = ProcessSampler(self.log, libraries_refresh=app.libraries_refresh)
        self.gpu = GpuSampler(log=self.log) if app.gpu_sampling else None
        #: kernel id -> GPU use of its processes at the last tick (for the status API)
        self.gpu_by_kernel: dict[str, dict[str, float]] = {}
        self.last_gpu: GpuSample | None = None
        self.listeners: list[IncidentListener] = []
        #: Called (not awaited) once an incident is recorded, before anything is done about it:
        #: the kernel channel tells the cell first, so the interrupt arrives explained.
        self.acting_listeners: list[Callable[[Incident, str], None]] = []
        self.ticks = 0
        self.last_tick: float | None = None
        self._sampling = ThreadPoolExecutor(1, thread_name_prefix="colab-guard-sample")
        self._acting = ThreadPoolExecutor(4, thread_name_prefix="colab-guard-act")
        self._handled: dict[str, set[tuple]] = defaultdict(set)  # kernel -> process keys acted on
        self._kernel_acted: dict[str, float] = {}  # kernel -> when its own process was last acted on
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._running = False
        self._reported_stats: dict[str, int] = {}

    # ------------------------------------------------------------ the loop

    def start(self) -> None:
        self._loop_task = asyncio.ensure_future(self.run())

    async def run(self) -> None:
        self._running = True
        interval = self.app.sample_interval
        loop = asyncio.get_running_loop()
        if self.gpu is not None:
            await loop.run_in_executor(self._sampling, self.gpu.start)
        next_at = loop.time()
        while self._running:
            started = loop.time()
            await self.tick()
            # A tick run early (check_soon) must not push the schedule ahead: the next
            # periodic tick comes at most one interval after this one started.
            next_at = min(next_at + interval, started + interval)
            delay = next_at - loop.time()
            if delay < 0:
                metrics.TICKS_MISSED.inc(int(-delay // interval) + 1)
                next_at, delay = loop.time(), 0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    def _observe(self, kernels: dict[str, int]) -> dict[str, Snapshot]:
        """One tick's observation, in the sampling thread: GPU first, then processes."""
        gpu = self.gpu.sample() if self.gpu is not None else None
        snapshots = self.sampler.sample(kernels, gpu)
        self.last_gpu = gpu
        if gpu is not None:
            self.gpu_by_kernel = {
                kid: {"gpu_percent": sum(p.gpu_percent for p in snap.processes),
                      "gpu_memory_mb": round(sum(p.gpu_memory_mb for p in snap.processes), 1)}
                for kid, snap in snapshots.items()}
        return snapshots

    def check_soon(self) -> None:
        """Run the next tick now (the kernel hook saw something happen)."""
        self._wake.set()

    async def stop(self) -> None:
        self._running = False
        self._wake.set()
        # Let the tick in progress finish before its worker threads go away.
        if self._loop_task is not None:
            done, _ = await asyncio.wait({self._loop_task}, timeout=10)
            if not done:
                self._loop_task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if self.gpu is not None:
            self._sampling.submit(self.gpu.stop)
        self._sampling.shutdown(wait=False)
        self._acting.shutdown(wait=False)
        self.sampler.content.close()

    async def tick(self) -> None:
        started = time.perf_counter()
        self.store.flush()  # retry anything a failed write left behind
        kernels = self.kernel_pids()
        metrics.KERNELS_MONITORED.set(len(kernels))
        try:
            snapshots = await asyncio.get_running_loop().run_in_executor(
                self._sampling, self._observe, kernels)
        except Exception:
            metrics.SAMPLER_ERRORS.labels("tick").inc()
            self.log.exception("colab-guard: sampling failed; retried at the next tick")
            return
        for kernel_id, snapshot in snapshots.items():
            try:
                self.check(snapshot)
            except Exception:
                metrics.SAMPLER_ERRORS.labels("check").inc()
                self.log.exception("colab-guard: checking kernel %s failed; retried at the next "
                                   "tick", kernel_id)
        self._forget_kernels_gone(kernels)
        self._export_sampler_stats()
        self.ticks += 1
        self.last_tick = time.time()
        metrics.SAMPLE_DURATION.observe(time.perf_counter() - started)

    def kernel_pids(self) -> dict[str, int]:
        """Running kernels and their pids (kernels still starting have none yet)."""
        km = self.app.serverapp.kernel_manager
        found = {}
        for kernel_id in list(km.list_kernel_ids()):
            try:
                provisioner = km.get_kernel(kernel_id).provisioner
                pid = getattr(provisioner, "pid", None) if provisioner else None
            except KeyError:
                continue
            if pid:
                found[kernel_id] = pid
        return found

    # ------------------------------------------------------------ detect

    def check(self, snapshot: Snapshot) -> None:
        """Evaluate one kernel's snapshot and start a response to what is new."""
        detections = [d for d in self.engine.evaluate(snapshot) if self._is_new(d)]
        self._handled[snapshot.kernel_id] &= {p.key for p in snapshot.processes}
        by_category: dict[str, list[Detection]] = defaultdict(list)
        for d in detections:
            by_category[d.signature.category].append(d)
        for group in by_category.values():
            escalate = False
            for d in group:
                self._handled[d.kernel_id].add(d.process.key)
                if d.process.is_kernel:
                    now, last = time.monotonic(), self._kernel_acted.get(d.kernel_id)
                    escalate = last is not None and now - last < KERNEL_ESCALATION_WINDOW
                    self._kernel_acted[d.kernel_id] = now
            task = asyncio.ensure_future(self.respond(group, escalate))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _is_new(self, d: Detection) -> bool:
        if d.process.is_kernel and not self.app.dry_run:
            # The kernel cannot be stopped like a child: it is interrupted, then shut
            # down if the behaviour goes on after the interrupt had time to work.
            last = self._kernel_acted.get(d.kernel_id)
            return last is None or time.monotonic() - last >= KERNEL_GRACE
        return d.process.key not in self._handled[d.kernel_id]

    # ------------------------------------------------------------ act

    async def respond(self, detections: list[Detection], escalate: bool = False) -> Incident:
        """Record, act, record the outcome, notify. ``escalate``: the kernel offends again."""
        kernel_id = detections[0].kernel_id
        action = self._choose(detections, escalate)
        incident = Incident.from_detections(detections, self.app.user_name,
                                            await self._notebook_path(kernel_id), self.app.dry_run)
        incident.actions = self._plan(action, detections)
        self._save(incident)  # on disk before anything is done
        for listener in list(self.acting_listeners):
            try:
                listener(incident, action)
            except Exception:
                self.log.exception("colab-guard: an acting listener failed")
        if not self.app.dry_run:
            await self._carry_out(incident, action, detections)
        await self._finish(incident, action)
        return incident

    async def record_incident(self, incident: Incident, action: str) -> Incident:
        """Record an incident the sampler did not find (the kernel hook: tampering, a cell's
        source), through the same record and notify path as ``respond``. The caller has
        already done, and listed in ``incident.actions``, whatever was done."""
        if incident.notebook is None:
            incident.notebook = await self._notebook_path(incident.kernel_id)
        self._save(incident)
        await self._finish(incident, action)
        return incident

    def claim(self, pid: int, kernel_id: str) -> None:
        """Attribute a process the kernel hook reported (in the sampler's own thread)."""
        self._sampling.submit(self.sampler.claim, pid, kernel_id)

    async def _finish(self, incident: Incident, action: str) -> None:
        incident.status = "done"
        self._save(incident)
        metrics.INCIDENTS.labels(incident.category, "dry-run" if incident.dry_run else action).inc()
        self._report(incident, action)
        await self._notify(incident, action)

    def _choose(self, detections: list[Detection], escalate: bool) -> str:
        action = choose_action(detections, self.app.actions, self.app.default_action)
        kernel_offends = any(d.process.is_kernel for d in detections)
        if kernel_offends and stops_processes(action) and not self.app.dry_run:
            # The kernel process cannot be "stopped" like a child process.
            action = "shutdown" if escalate else max(action, "interrupt", key=RANK.get)
        return action

    def _plan(self, action: str, detections: list[Detection]) -> list[Action]:
        """The actions, in the order they are carried out.

        ``interrupt`` interrupts the kernel first, so the running cell stops where
        it is (a cell waiting on the offender would otherwise go on to its next
        line once the offender dies), then stops the offending processes.
        ``shutdown`` stops them first, then shuts the kernel down.
        """
        outcome = "would" if self.app.dry_run else "pending"
        planned = [Action("record", "incident log", "done")]
        if RANK[action] >= RANK["warn"]:
            planned.append(Action("warn", "user", outcome if self.app.dry_run else "done"))
        stops = [Action("stop", f"pid {d.process.pid}", outcome)
                 for d in _unique_processes(detections) if not d.process.is_kernel]
        if action == "interrupt":
            planned += [Action("interrupt", "kernel", outcome), *stops]
        elif action == "shutdown":
            planned += [*stops, Action("shutdown", "kernel", outcome)]
        elif action == "stop":
            planned += stops
        return planned

    async def _carry_out(self, incident: Incident, action: str, detections: list[Detection]) -> None:
        offenders = {f"pid {d.process.pid}": d.process for d in _unique_processes(detections)}
        stops = [a for a in incident.actions if a.action == "stop"]
        for planned in incident.actions:
            if planned.target == "kernel":
                await self._act_on_kernel(incident.kernel_id, planned)
            elif planned is (stops[0] if stops else None):
                await self._stop([offenders[a.target] for a in stops], stops, incident.kernel_id)

    async def _stop(self, offenders, planned: list[Action], kernel_id: str) -> None:
        kernel_pid = self.kernel_pids().get(kernel_id)
        done = await asyncio.get_running_loop().run_in_executor(
            self._acting, stop_processes, offenders, self.app.stop_grace,
            {kernel_pid} if kernel_pid else set())
        for action, result in zip(planned, done):
            action.outcome, action.detail = result.outcome, result.detail

    async def _act_on_kernel(self, kernel_id: str, planned: Action) -> None:
        km = self.app.serverapp.kernel_manager
        if kernel_id not in km:  # shut down, or culled, while the incident was under way
            planned.outcome, planned.detail = "gone", "the kernel had already been shut down"
            return
        try:
            if planned.action == "interrupt":
                await km.interrupt_kernel(kernel_id)
            else:
                await km.shutdown_kernel(kernel_id)
            planned.outcome = "done"
        except Exception as err:  # the kernel may have died or been culled meanwhile
            planned.outcome, planned.detail = "failed", f"{type(err).__name__}: {err}"

    # ------------------------------------------------------------ record / notify

    def _save(self, incident: Incident) -> None:
        if not self.store.save(incident):
            metrics.RECORD_ERRORS.inc()

    def _report(self, incident: Incident, action: str) -> None:
        outcomes = ", ".join(f"{a.action} {a.target}: {a.outcome}" for a in incident.actions)
        self.log.warning("colab-guard: incident %s in kernel %s: %s (%s)%s; action %s: %s",
                         incident.id, incident.kernel_id, ascii(incident.summary()),
                         incident.signature, " [dry run]" if incident.dry_run else "",
                         action, outcomes)

    async def _notify(self, incident: Incident, action: str) -> None:
        data = incident_event(incident, action, self.app.warning_message, self.app.policy_url)
        try:
            self.app.serverapp.event_logger.emit(schema_id=INCIDENT_SCHEMA_ID, data=data)
        except Exception:
            self.log.exception("colab-guard: could not emit the incident event")
        for listener in list(self.listeners):
            try:
                result = listener(incident, action)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                self.log.exception("colab-guard: an incident listener failed")

    async def _notebook_path(self, kernel_id: str) -> str | None:
        try:
            sessions = await self.app.serverapp.session_manager.list_sessions()
        except Exception:
            return None
        for session in sessions:
            if (session.get("kernel") or {}).get("id") == kernel_id:
                return session.get("path")
        return None

    # ------------------------------------------------------------ housekeeping

    def _forget_kernels_gone(self, kernels: dict[str, Any]) -> None:
        for kernel_id in [k for k in self._handled if k not in kernels]:
            del self._handled[kernel_id]
            self._kernel_acted.pop(kernel_id, None)
            self.engine.forget_kernel(kernel_id)

    def _export_sampler_stats(self) -> None:
        stats = self.sampler.stats
        for kind in ("vanished", "denied", "errors"):
            value = getattr(stats, kind)
            delta = value - self._reported_stats.get(kind, 0)
            if delta > 0:
                metrics.SAMPLER_ERRORS.labels(kind).inc(delta)
            self._reported_stats[kind] = value
        for name, counter, value in (
                ("sampled", metrics.PROCESSES_SAMPLED, stats.processes_sampled),
                ("read in full", metrics.PROCESSES_READ_IN_FULL, stats.full_reads)):
            counter.inc(value - self._reported_stats.get(name, 0))
            self._reported_stats[name] = value
        metrics.SAMPLER_TRACKED.set(self.sampler.tracked())


def _unique_processes(detections: list[Detection]) -> list[Detection]:
    seen, unique = set(), []
    for d in detections:
        if d.process.key not in seen:
            seen.add(d.process.key)
            unique.append(d)
    return unique
