"""The monitor: observe -> detect -> act -> record, once per tick, for every kernel.

It runs on the server's event loop; the blocking parts (reading /proc,
waiting for processes to die) run in worker threads. A failure while
checking one kernel is logged and counted, and that kernel is checked again
at the next tick; the other kernels are unaffected.

It knows nothing of Jupyter: kernels come through a ``Kernels`` adapter
(kernels.py), decisions from the ``Policy``, and incidents go to the ``Recorder``.

Offences are coalesced per kernel: past the policy's burst of incidents (``Policy.admit``),
what a kernel does is still acted on at once, but recorded in one incident per kernel and
window (``Coalesced``), written when the window ends, with the offenders listed up to
``MAX_PROCESSES_SHOWN`` and counted beyond; a metric and a log line say what was coalesced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .act.enforce import stop_processes_async
from .act.policy import (ESCALATION, INCIDENT_WINDOW, KERNEL_ESCALATION_WINDOW, Plan, Policy,
                         unique_processes)
from .detect.engine import Detection, Engine
from .kernels import Kernels
from .observe.gpu import GpuSample, GpuSampler
from .observe.attribution import unknown_kernel_uid
from .observe.model import Snapshot
from .observe.processes import ProcessSampler
from .record import metrics
from .observe.packages import package_of
from .record.incident import Action, Incident, clean_text, process_evidence
from .record.recorder import Recorder
from .settings import Settings
from .vocabulary import SEVERITY_RANK, strongest


#: Seconds the fair-strike lookup may hold up an incident (then: no package, the normal rule).
PACKAGE_LOOKUP_TIMEOUT = 5.0
#: An incident lists at most this many offending processes, matches and stops; the rest are
#: counted (``evidence["not_shown"]``), their stops' outcomes summed up in one action.
MAX_PROCESSES_SHOWN = 20
#: After a background scan finds a tool, ticks this often for this long: the program it was
#: found in may not hold its socket yet at the first look, and may live less than an interval
FOUND_BURST_STEP = 0.1
FOUND_BURST_SECONDS = 1.0


@dataclass
class Coalesced:
    """One kernel's offences past its burst of incidents, recorded together (see Policy.admit)."""

    incident: Incident
    action: str  # the strongest action taken so far
    ends: float  # loop time at which it is written and the user told
    keys: set = field(default_factory=set)  # processes listed or counted
    #: the most telling processes: (rank, their detections, their tie or None), best first
    listed: list = field(default_factory=list)
    tasks: set = field(default_factory=set)  # its actions under way
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # begun: on disk


class Monitor:
    def __init__(self, settings: Settings, kernels: Kernels, engine: Engine, policy: Policy,
                 recorder: Recorder, log: logging.Logger | None = None,
                 sampler: ProcessSampler | None = None):
        self.settings, self.kernels, self.engine = settings, kernels, engine
        self.policy, self.recorder = policy, recorder
        self.log = log or logging.getLogger("colab_guard")
        #: the live system by default; tests give one that replays recorded snapshots
        self.sampler = sampler or ProcessSampler(self.log,
                                                 libraries_refresh=settings.libraries_refresh)
        self.gpu = GpuSampler(log=self.log) if settings.gpu_sampling else None
        #: kernel id -> GPU use of its processes at the last tick (for the status API)
        self.gpu_by_kernel: dict[str, dict[str, float]] = {}
        self.last_gpu: GpuSample | None = None
        self.ticks = 0
        self._sampling = ThreadPoolExecutor(1, thread_name_prefix="colab-guard-sample")
        self._acting = ThreadPoolExecutor(4, thread_name_prefix="colab-guard-act")
        # Fair-strike lookups apart: a slow one (the user's files) never holds up a stop.
        self._looking = ThreadPoolExecutor(2, thread_name_prefix="colab-guard-package")
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._found_until = 0.0  # loop time: quick ticks until then (_found_burst)
        self._running = False
        self._reported_stats: dict[str, int] = {}
        self._coalescing: dict[str, Coalesced] = {}  # kernel -> its open coalesced incident
        #: kernel -> the incident of its last interrupt: a shutdown for the same offence going
        #: on past it (``Plan.escalates``) is carried out and recorded in that incident
        self._interrupted: dict[str, Incident] = {}
        #: True while a node watcher checks these kernels' processes (watcher_link.py): the
        #: monitor then neither samples nor acts, so an offence is never recorded twice
        self.deferred: Callable[[], bool] = lambda: False

    # ------------------------------------------------------------ the loop

    def start(self) -> None:
        self._loop_task = asyncio.ensure_future(self.run())

    async def run(self) -> None:
        self._running = True
        interval = self.settings.sample_interval
        loop = asyncio.get_running_loop()
        content = getattr(self.sampler, "content", None)  # a replaying sampler has none
        if content is not None:
            # A tool found by a background scan is judged at once, and for a moment after:
            # a fresh copy that lives less than an interval is still running then.
            content.on_found = lambda: self._found_from_a_scan(loop)
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
            if loop.time() < self._found_until:
                delay = min(delay, FOUND_BURST_STEP)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    def _observe_and_detect(self, kernels: dict[str, int]
                            ) -> list[tuple[Snapshot, list[Detection]]]:
        """One tick's observation and detection, in the sampling thread (never on the event
        loop: a slow rule must not hold up the server); a kernel whose check fails is
        checked again at the next tick, the others are unaffected."""
        found = []
        for kernel_id, snapshot in self._observe(kernels).items():
            try:
                found.append((snapshot, self.engine.evaluate(snapshot)))
            except Exception:
                metrics.SAMPLER_ERRORS.labels("check").inc()
                self.log.exception("colab-guard: checking kernel %s failed; retried at the next "
                                   "tick", kernel_id)
        return found

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

    def _found_from_a_scan(self, loop: asyncio.AbstractEventLoop) -> None:
        """From a scan's thread: have the loop tick at once (``_found_burst``)."""
        try:
            loop.call_soon_threadsafe(self._found_burst, loop)
        except RuntimeError:
            pass  # the loop is closed: the server is stopping

    def _found_burst(self, loop: asyncio.AbstractEventLoop) -> None:
        """A scan found a tool: tick now, and every FOUND_BURST_STEP for a moment."""
        self._found_until = loop.time() + FOUND_BURST_SECONDS
        self._wake.set()

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
        await self._close_coalesced()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if self.gpu is not None:
            self._sampling.submit(self.gpu.stop)
        behaviour = getattr(self.sampler, "behaviour", None)  # a replaying sampler has none
        if behaviour is not None:
            self._sampling.submit(behaviour.close)
        self._sampling.shutdown(wait=False)
        self._acting.shutdown(wait=False)
        self._looking.shutdown(wait=False)
        self.sampler.content.close()

    async def tick(self) -> None:
        started = time.perf_counter()
        self.recorder.flush()  # retry anything a failed write left behind
        await self._close_coalesced(asyncio.get_running_loop().time())
        if self.deferred():
            return
        kernels = self.kernel_pids()
        metrics.KERNELS_MONITORED.set(len(kernels))
        try:
            found = await asyncio.get_running_loop().run_in_executor(
                self._sampling, self._observe_and_detect, kernels)
        except Exception:
            metrics.SAMPLER_ERRORS.labels("tick").inc()
            self.log.exception("colab-guard: sampling failed; retried at the next tick")
            return
        for snapshot, detections in found:
            if not detections and not self.policy.keeps(snapshot.kernel_id):
                continue  # nothing to act on, nothing to forget (most kernels, most ticks)
            try:
                self.act_on(snapshot, detections)
            except Exception:
                metrics.SAMPLER_ERRORS.labels("check").inc()
                self.log.exception("colab-guard: acting on kernel %s failed; retried at the "
                                   "next tick", snapshot.kernel_id)
        # Users' processes tied to no kernel have their own stand-in kernel (attribution.py).
        self._forget_kernels_gone({**kernels, **{s.kernel_id: 0 for s, _ in found}})
        self._export_sampler_stats()
        self.ticks += 1
        metrics.SAMPLE_DURATION.observe(time.perf_counter() - started)

    def kernel_pids(self) -> dict[str, int]:
        return self.kernels.pids()

    # ------------------------------------------------------------ act

    def act_on(self, snapshot: Snapshot, detections: list[Detection],
               partial: bool = False) -> None:
        """Start a response to what is new among one kernel's detections, the strongest
        first; past the kernel's burst of incidents, coalesced into one (``Coalesced``).
        ``partial``: the snapshot holds only some of the kernel's processes (the node
        watcher's check at a program's exec), so those acted on before are not forgotten."""
        # Which processes live is asked only of a kernel with processes acted on (a thousand
        # idle ones, every tick, otherwise).
        plans = self.policy.respond(
            snapshot.kernel_id, detections,
            live=None if partial else lambda: {p.key for p in snapshot.processes},
            parents=None if partial else lambda: {p.pid: p.ppid for p in snapshot.processes
                                                  if not p.is_kernel})
        for plan in plans:
            ties = self._ties(plan)
            acts_on_kernel = any(a.target == "kernel" for a in plan.steps)
            first = self._interrupted.pop(plan.kernel_id, None) if acts_on_kernel else None
            if first is not None and plan.escalates:
                self._spawn(self._escalate(first, plan))
            elif self.policy.admit(plan.kernel_id):
                self._spawn(self.respond(plan, ties))
            else:
                self._spawn(self._respond_coalesced(plan, ties))

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def respond(self, plan: Plan, ties: dict | None = None) -> Incident:
        """Record, carry the plan out, record the outcome, notify."""
        incident = Incident.from_detections(plan.detections, self.user_of(plan.kernel_id),
                                            await self.kernels.notebook_path(plan.kernel_id),
                                            self.settings.dry_run)
        incident.actions = plan.steps
        if plan.escalates:  # its interrupt's incident is gone (coalesced): this one says so
            incident.evidence[ESCALATION] = _escalation_text()
        _note_attribution(incident, ties or {})
        _cap_evidence(incident)
        await self._find_package(incident, plan)
        if any(a.action == "interrupt" and a.target == "kernel" for a in plan.steps):
            self._interrupted[plan.kernel_id] = incident
        self.recorder.begin(incident, plan.action)  # on disk before anything is done
        if not self.settings.dry_run:
            await self._carry_out(incident.kernel_id, plan.steps, plan)
        _fold_stops(incident)
        await self.recorder.finish(incident, plan.action)
        return incident

    async def _escalate(self, incident: Incident, plan: Plan) -> Incident:
        """The kernel went on past its interrupt for the same offence: the shutdown is carried
        out within that offence's incident, told and recorded again (one offence, one
        incident, one strike), not opened as an incident of its own."""
        steps = [a for a in plan.steps if a.action not in ("record", "warn")]
        incident.actions.extend(steps)
        incident.evidence[ESCALATION] = _escalation_text()
        known = set(incident.signatures)
        incident.signatures = sorted(known | {d.signature.id for d in plan.detections})
        incident.status = "acting"
        self.recorder.begin(incident, plan.action)
        await self._carry_out(incident.kernel_id, steps, plan)
        _fold_stops(incident)
        await self.recorder.finish(incident, plan.action, again=True)
        return incident

    # ------------------------------------------------------------ coalescing

    async def _respond_coalesced(self, plan: Plan, ties: dict) -> None:
        """A plan past the kernel's burst: merged into the kernel's open ``Coalesced``
        incident (on disk before it is carried out), carried out at once."""
        kernel_id = plan.kernel_id
        group = self._coalescing.get(kernel_id)
        opening = group is None
        if opening:
            group = self._open_coalesced(plan, ties)
        task = asyncio.current_task()
        group.tasks.add(task)  # the incident is written once every task merged into it is done
        try:
            if opening:
                group.incident.notebook = await self.kernels.notebook_path(kernel_id)
                self.recorder.begin(group.incident, group.action)
                group.ready.set()
            else:
                await group.ready.wait()
                self._merge(group, plan, ties)
                self.recorder.save(group.incident)
            metrics.OFFENCES_COALESCED.labels(plan.detections[0].signature.category).inc()
            steps = [a for a in plan.steps if a.action not in ("record", "warn")]
            self._list_steps(group, steps)
            if not self.settings.dry_run:
                await self._carry_out(kernel_id, steps, plan)
                self._count_hidden_stops(group, steps)
        finally:
            group.tasks.discard(task)

    @staticmethod
    def _list_steps(group: Coalesced, steps: list[Action]) -> None:
        """Each kernel step once, stops up to ``MAX_PROCESSES_SHOWN``: those listed get their
        outcome as they are carried out; the others are counted once done."""
        listed = group.incident.actions
        stops_listed = sum(a.action == "stop" for a in listed)
        kernel_steps = {a.action for a in listed if a.target == "kernel"}
        for step in steps:
            if step.target == "kernel" and step.action not in kernel_steps:
                kernel_steps.add(step.action)
                listed.append(step)
            elif step.action == "stop" and stops_listed < MAX_PROCESSES_SHOWN:
                stops_listed += 1
                listed.append(step)

    @staticmethod
    def _count_hidden_stops(group: Coalesced, steps: list[Action]) -> None:
        shown = {id(a) for a in group.incident.actions}
        hidden = [s for s in steps if s.action == "stop" and id(s) not in shown]
        if hidden:
            outcomes = group.incident.evidence["coalesced"].setdefault("stops_not_shown", {})
            for outcome, count in Counter(s.outcome for s in hidden).items():
                outcomes[outcome] = outcomes.get(outcome, 0) + count

    def _open_coalesced(self, plan: Plan, ties: dict) -> Coalesced:
        incident = Incident.from_detections(plan.detections, self.user_of(plan.kernel_id), None,
                                            self.settings.dry_run)
        incident.actions = [a for a in plan.steps if a.action in ("record", "warn")]
        incident.evidence["coalesced"] = {
            "why": f"more than the kernel's burst of incidents within {INCIDENT_WINDOW:g} s: "
                   "what it did next is recorded here, together",
            "offences": 0, "processes": 0}
        _note_attribution(incident, {})
        group = Coalesced(incident, plan.action,
                          asyncio.get_running_loop().time() + INCIDENT_WINDOW)
        self._merge(group, plan, ties)
        self._coalescing[plan.kernel_id] = group
        return group

    def _merge(self, group: Coalesced, plan: Plan, ties: dict) -> None:
        """An offence into the open incident: its signatures and the strongest action; its
        processes among those listed if they are among the ``MAX_PROCESSES_SHOWN`` most
        telling (most severe, most signatures matched), the others counted."""
        incident, evidence = group.incident, group.incident.evidence
        incident.signatures = sorted(set(incident.signatures) |
                                     {d.signature.id for d in plan.detections})
        group.action = strongest(group.action, plan.action)
        by_process: dict[tuple, list[Detection]] = {}
        for d in plan.detections:
            by_process.setdefault(d.process.key, []).append(d)
        for key, found in by_process.items():
            if key not in group.keys:
                group.keys.add(key)
                group.listed.append((_telling(found), found, ties.get(found[0].process.pid)))
        group.listed.sort(key=lambda item: item[0], reverse=True)
        del group.listed[MAX_PROCESSES_SHOWN:]
        shown = [d for _, found, _ in group.listed for d in found]
        evidence["processes"] = [process_evidence(found[0].process)
                                 for _, found, _ in group.listed]
        evidence["matches"] = [{**d.to_dict(), "reasons": [clean_text(r, 512) for r in d.reasons]}
                               for d in shown]
        evidence["attribution"] = _attribution({found[0].process.pid: tie
                                                for _, found, tie in group.listed if tie})
        if not evidence["attribution"]:
            del evidence["attribution"]
        if len(group.keys) > len(group.listed):
            evidence["not_shown"] = {"processes": len(group.keys) - len(group.listed)}
        evidence["coalesced"]["offences"] += 1
        evidence["coalesced"]["processes"] = len(group.keys)

    async def _close_coalesced(self, due: float | None = None) -> None:
        """Write the coalesced incidents whose window ended (all of them: ``due`` None), once
        what they started is done; a log line and the user told."""
        for kernel_id, group in list(self._coalescing.items()):
            if due is not None and group.ends > due:
                continue
            del self._coalescing[kernel_id]
            self._spawn(self._finish_coalesced(group))

    async def _finish_coalesced(self, group: Coalesced) -> None:
        while group.tasks:  # a task may merge another offence meanwhile: not after this
            await asyncio.wait(set(group.tasks))
        incident, coalesced = group.incident, group.incident.evidence["coalesced"]
        self.log.warning("colab-guard: kernel %s: %s offence(s) of %s process(es) past its "
                         "burst of incidents coalesced into incident %s (%s not listed)",
                         incident.kernel_id, coalesced["offences"], coalesced["processes"],
                         incident.id, incident.evidence.get("not_shown", {}).get("processes", 0))
        await self.recorder.finish(incident, group.action)

    def _ties(self, plan: Plan) -> dict:
        """pid -> how each of the plan's processes was tied to its kernel, where it left the
        kernel's tree before it was seen (attribution.py)."""
        orphans = getattr(self.sampler, "orphans", None)
        if orphans is None:
            return {}
        found = {}
        for d in unique_processes(plan.detections):
            tie = orphans.why(d.process.key)
            if tie is not None:
                found[d.process.pid] = tie
        return found

    async def _find_package(self, incident: Incident, plan: Plan) -> None:
        """Fair strikes: the installed distribution the offending programs come from, if any
        (read from files in a worker thread; any failure: none, the normal rule)."""
        processes = [d.process for d in unique_processes(plan.detections)]
        try:
            package, refused = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                self._looking, package_of, processes), PACKAGE_LOOKUP_TIMEOUT)
        except Exception:
            self.log.exception("colab-guard: could not tell whether incident %s's program comes "
                               "from an installed package; counted by the normal rule", incident.id)
            return
        if package is not None:
            incident.package = {k: clean_text(v, 1024) for k, v in package.to_dict().items()}
        elif refused is not None:
            incident.evidence["package_refused"] = {
                k: clean_text(v, 1024) if isinstance(v, str) else v for k, v in refused.items()}

    def user_of(self, kernel_id: str) -> str:
        """Whose kernel this is: the adapter's answer where it knows (the node watcher sees
        every user's kernels), else the server's own user."""
        user_of = getattr(self.kernels, "user_of", None)
        return (user_of(kernel_id) if user_of is not None else None) or self.settings.user_name

    def claim(self, pid: int, kernel_id: str) -> None:
        """Attribute a process the kernel hook reported (in the sampler's own thread)."""
        self._sampling.submit(self.sampler.claim, pid, kernel_id)

    def note_connects(self, kernel_id: str, endpoints: list[tuple[str, int]]) -> None:
        """Connections the kernel hook saw the kernel open (refused ones too), for the
        behaviour window (in the sampler's own thread)."""
        behaviour = getattr(self.sampler, "behaviour", None)  # a replaying sampler has none
        if behaviour is not None:
            self._sampling.submit(behaviour.note_connects, kernel_id, endpoints, time.time())
            self._sampling.submit(self.sampler.read_kernel_in_full, kernel_id)

    def note_imports(self, kernel_id: str, modules: list[str]) -> None:
        """Modules the kernel hook saw the kernel import (in the sampler's own thread)."""
        behaviour = getattr(self.sampler, "behaviour", None)
        if behaviour is not None:
            self._sampling.submit(behaviour.note_imports, kernel_id, modules)

    def note_binds(self, kernel_id: str, binds: list[tuple[int, list[str]]]) -> None:
        """Ports the kernel hook saw the kernel bind, with whose code bound them."""
        behaviour = getattr(self.sampler, "behaviour", None)
        if behaviour is not None:
            self._sampling.submit(behaviour.note_binds, kernel_id, binds)
            self._sampling.submit(self.sampler.read_kernel_in_full, kernel_id)

    async def _carry_out(self, kernel_id: str, steps: list[Action], plan: Plan) -> None:
        offenders = {f"pid {d.process.pid}": d.process for d in unique_processes(plan.detections)}
        found: dict[str, list[Detection]] = {}
        for d in plan.detections:
            found.setdefault(f"pid {d.process.pid}", []).append(d)
        # The most telling first: signalled first (a miner among a hundred decoys).
        stops = sorted((a for a in steps if a.action == "stop"),
                       key=lambda a: _telling(found[a.target]), reverse=True)
        # The offenders' stop and the kernel's interrupt at once: neither waits on the other
        # (the node watcher finds a kernel's process group by a pass over thousands of
        # processes; an offender that ignores SIGTERM is waited for up to the grace). A
        # shutdown comes once the offenders are stopped.
        stopping = asyncio.ensure_future(
            self._stop([offenders[a.target] for a in stops], stops, kernel_id)) if stops else None
        try:
            for step in steps:
                if step.target != "kernel":
                    continue
                if step.action != "interrupt" and stopping is not None:
                    await stopping
                await self._act_on_kernel(kernel_id, step)
        finally:
            if stopping is not None:
                await stopping

    async def _stop(self, offenders, steps: list[Action], kernel_id: str) -> None:
        kernel_pid = self.kernel_pids().get(kernel_id)
        loop = asyncio.get_running_loop()
        done = await stop_processes_async(
            offenders, self.settings.stop_grace, {kernel_pid} if kernel_pid else set(),
            may_signal=getattr(self.kernels, "may_signal", None),
            run=lambda fn, *args: loop.run_in_executor(self._acting, fn, *args),
            signalled=lambda keys: self.policy.note_stopping(kernel_id, keys))
        for step, result in zip(steps, done):
            step.outcome, step.detail = result.outcome, result.detail

    async def _act_on_kernel(self, kernel_id: str, step: Action) -> None:
        if kernel_id not in self.kernels:  # shut down, or culled, while the incident was under way
            step.outcome, step.detail = "gone", "the kernel had already been shut down"
            return
        try:
            if step.action == "interrupt":
                await self.kernels.interrupt(kernel_id)
            else:
                await self.kernels.shutdown(kernel_id)
            step.outcome = "done"
        except Exception as err:  # the kernel may have died or been culled meanwhile
            step.outcome, step.detail = "failed", f"{type(err).__name__}: {err}"

    # ------------------------------------------------------------ housekeeping

    def _forget_kernels_gone(self, kernels: dict[str, Any]) -> None:
        for kernel_id in self.policy.kernels_known() - set(kernels):
            self.policy.forget_kernel(kernel_id)
            self._interrupted.pop(kernel_id, None)
            self._sampling.submit(self.engine.forget_kernel, kernel_id)  # the engine's thread

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
                ("read in full", metrics.PROCESSES_READ_IN_FULL, stats.full_reads),
                ("read lightly", metrics.PROCESSES_READ_LIGHTLY, stats.light_reads)):
            counter.inc(value - self._reported_stats.get(name, 0))
            self._reported_stats[name] = value
        metrics.SAMPLER_TRACKED.set(self.sampler.tracked())
        for outcome, value in dict(getattr(self.sampler.content, "stats", {})).items():
            name = f"content:{outcome}"
            delta = value - self._reported_stats.get(name, 0)
            if delta > 0:
                metrics.CONTENT_SCANS.labels(outcome).inc(delta)
            self._reported_stats[name] = value
        orphans = getattr(self.sampler, "orphans", None)
        for how, value in dict(orphans.counts if orphans is not None else {}).items():
            name = f"attribution:{how}"
            delta = value - self._reported_stats.get(name, 0)
            if delta > 0:
                metrics.ATTRIBUTIONS.labels(how).inc(delta)
            self._reported_stats[name] = value



def _note_attribution(incident: Incident, ties: dict) -> None:
    """How processes that had left their kernel's tree were tied to it; for a stand-in
    kernel, that no kernel could be named (and none was interrupted)."""
    if ties:
        incident.evidence["attribution"] = _attribution(ties)
    if unknown_kernel_uid(incident.kernel_id) is not None:
        incident.evidence["kernel"] = (
            "unknown: the processes left their kernel's tree and session before they were "
            "seen, and nothing ties them to one kernel of the user; they were stopped, and "
            "no kernel was interrupted")


def _attribution(ties: dict) -> list[dict]:
    return [{"pid": pid, "kernel": clean_text(tie.kernel, 256), "how": tie.how,
             "detail": clean_text(tie.detail, 512)}
            for pid, tie in list(ties.items())[:MAX_PROCESSES_SHOWN]]


def _telling(detections: list[Detection]) -> tuple[int, int]:
    """How telling a process's detections are: the most severe, then the most signatures."""
    return (max(SEVERITY_RANK[d.signature.severity] for d in detections),
            len({d.signature.id for d in detections}))


def _cap_evidence(incident: Incident) -> None:
    """At most ``MAX_PROCESSES_SHOWN`` processes and matches listed, the rest counted."""
    evidence = incident.evidence
    processes = evidence.get("processes", [])
    if len(processes) > MAX_PROCESSES_SHOWN:
        shown = {p["pid"] for p in processes[:MAX_PROCESSES_SHOWN]}
        evidence["not_shown"] = {"processes": len(processes) - MAX_PROCESSES_SHOWN}
        evidence["processes"] = processes[:MAX_PROCESSES_SHOWN]
        evidence["matches"] = [m for m in evidence.get("matches", [])
                               if m.get("pid") in shown][:4 * MAX_PROCESSES_SHOWN]


def _escalation_text() -> str:
    return (f"the kernel went on within {KERNEL_ESCALATION_WINDOW:g} s of its interrupt for this "
            "offence: shut down (one offence, one strike)")


def _fold_stops(incident: Incident) -> None:
    """Stops past ``MAX_PROCESSES_SHOWN`` summed up in one action, by outcome."""
    stops = [a for a in incident.actions if a.action == "stop"]
    if len(stops) <= MAX_PROCESSES_SHOWN:
        return
    hidden = stops[MAX_PROCESSES_SHOWN:]
    incident.actions = [a for a in incident.actions if a not in hidden]
    counts = Counter(a.outcome for a in hidden)
    outcome = "done" if set(counts) <= {"done", "gone"} else "failed"
    incident.actions.append(Action("stop", f"{len(hidden)} more processes", outcome,
                                   ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))))
