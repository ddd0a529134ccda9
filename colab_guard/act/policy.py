"""The policy: every decision about acting, on data alone.

Detections in, plans out. A ``Plan`` names the detections it answers, the action
chosen (see ``vocabulary.ACTIONS``) and the steps in the order they are carried
out. Nothing here signals a process or touches a kernel: the monitor and the
kernel channel carry plans out, so every decision is unit-tested on data.

- Which action: the strongest any detection calls for (a signature's own ``action``,
  else its category's, else ``default_action``).
- The kernel process itself cannot be stopped like a child: it is interrupted, and
  shut down if it offends again within ``KERNEL_ESCALATION_WINDOW``.
- A process already acted on is not acted on again while it lives.
- Processes tied to no kernel (``observe/attribution.py``: a user's orphan whose
  environment names a kernel that nothing proves) are stopped at most: no kernel is
  interrupted or shut down for what cannot be tied to it.
- A cell is refused (not run) when its action would stop anything; warned about or
  recorded otherwise.
- Offences coalesced per kernel: a kernel opens at most ``INCIDENT_BURST`` incidents within
  ``INCIDENT_WINDOW`` seconds (``admit``). What it does past that is still acted on at once,
  the strongest first, but recorded in one incident per kernel and window that lists the
  offenders (capped, with a count): a loop of decoys cannot flood the record, the admins'
  view or the user's notebook, nor hold up the stop of the one that matters.
- Tampering with the kernel hook is recorded (at most warned about): the server side
  still enforces everything, so there is nothing to stop.
- A strike: an enforced incident (not dry run), or a refused cell once the user has had
  ``cell_refusals_allowed`` refusals of that category within the strike window; never an
  incident whose program came from an installed package (fair strikes: the incident names
  the package, observe/packages.py).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..detect.engine import Detection
from ..observe.attribution import unknown_kernel_uid
from ..record.incident import Action, Incident
from ..settings import Settings
from ..vocabulary import ENFORCING_ACTIONS, RANK, at_least, strongest, weakest

#: After acting on the kernel process itself, give the interrupt this long to work.
KERNEL_GRACE = 3.0
#: The kernel offending again within this long of being interrupted is shut down.
KERNEL_ESCALATION_WINDOW = 60.0
#: The evidence key of an escalation's incident (a Plan that ``escalates``).
ESCALATION = "escalation"
#: Incidents one kernel may open within ``INCIDENT_WINDOW`` seconds before what it does
#: next is coalesced into one incident for the rest of the window.
INCIDENT_BURST = 3
INCIDENT_WINDOW = 10.0


@dataclass
class Plan:
    """What to do about some detections: the action chosen and its steps, in order."""

    detections: list[Detection]
    action: str
    steps: list[Action] = field(default_factory=list)
    #: A shutdown of a kernel that went on after its interrupt for the same category: the
    #: same offence carried on (its incident says so, and is no second strike: ``is_strike``).
    escalates: bool = False

    @property
    def kernel_id(self) -> str:
        return self.detections[0].kernel_id


def choose_action(detections: list[Detection], settings: Settings) -> str:
    """The strongest action any of the detections calls for."""
    return strongest("record", *(d.signature.action or settings.action_for(d.signature.category)
                                 for d in detections))


class Policy:
    def __init__(self, settings: Settings, clock=time.monotonic):
        self.settings = settings
        self._clock = clock
        self._handled: dict[str, set[tuple]] = defaultdict(set)  # kernel -> process keys acted on
        #: kernel -> keys of the processes being stopped (a plan that stops them, a stop's
        #: family): what they start is theirs. Never those only recorded or warned about,
        #: whose children must be judged on their own (a recorded server starting a miner).
        self._stopping: dict[str, set[tuple]] = defaultdict(set)
        #: kernel -> key of a process its ancestor's stop covers -> that ancestor's key: judged
        #: again once the ancestor is gone and it is not (a decoy that ignores SIGTERM forks
        #: the miner after its stop's family walk; killed, it leaves the miner to init).
        self._covered: dict[str, dict[tuple, tuple]] = defaultdict(dict)
        #: kernel -> when its own process was last acted on, and that process's key: a
        #: kernel restarted since (another process under the same id) offends anew
        self._kernel_acted: dict[str, tuple[float, tuple]] = {}
        self._kernel_offence: dict[str, str] = {}  # kernel -> the category it was acted on for
        self._opened: dict[str, list[float]] = defaultdict(list)  # kernel -> incidents opened, when

    # ------------------------------------------------------------ processes

    def respond(self, kernel_id: str, detections: list[Detection],
                live: set[tuple] | Callable[[], set[tuple]] | None = None,
                parents: Callable[[], dict[int, int]] | None = None) -> list[Plan]:
        """Plans for what is new among one kernel's detections, one per category.

        ``live``: keys of the kernel's processes alive now (or a function that gives them,
        called only if a process of the kernel was acted on); a process acted on that is
        gone is forgotten (its pid may come back as another program). ``parents``: pid ->
        parent pid of the kernel's processes other than the kernel (called likewise): what a
        process acted on started is not a new offence, its stop takes it too (a shell caught
        before it started the tool, the tool caught while the shell's stop is under way)."""
        if live is not None and self._handled.get(kernel_id):
            alive = live() if callable(live) else live
            self._handled[kernel_id] &= alive
            self._stopping[kernel_id] &= alive
        if parents is not None and (self._stopping.get(kernel_id) or self._covered.get(kernel_id)):
            self._handle_descendants(kernel_id, detections, parents())
        by_category: dict[str, list[Detection]] = defaultdict(list)
        for d in detections:
            if self._is_new(d):
                by_category[d.signature.category].append(d)
        plans = []
        for group in by_category.values():
            escalate = same = False
            for d in group:
                self._handled[kernel_id].add(d.process.key)
            kernel = next((d.process for d in group if d.process.is_kernel), None)
            if kernel is not None:  # once per act, however many matched
                now, last = self._clock(), self._kernel_acted.get(kernel_id)
                escalate = last is not None and last[1] == kernel.key and \
                    now - last[0] < KERNEL_ESCALATION_WINDOW
                category = group[0].signature.category
                same = escalate and self._kernel_offence.get(kernel_id) == category
                self._kernel_acted[kernel_id] = (now, kernel.key)
                self._kernel_offence[kernel_id] = category
            action = self._choose(group, escalate)
            if at_least(action, "stop") and not self.settings.dry_run:
                self._stopping[kernel_id].update(d.process.key for d in group
                                                 if not d.process.is_kernel)
            plans.append(Plan(group, action, self._steps(action, group),
                              escalates=same and action == "shutdown"))
        return sorted(plans, key=lambda p: -RANK[p.action])  # the strongest first

    def keeps(self, kernel_id: str) -> bool:
        """Whether the kernel has processes acted on or covered: ``respond`` has something to
        forget or to judge again even without detections."""
        return bool(self._handled.get(kernel_id) or self._stopping.get(kernel_id)
                    or self._covered.get(kernel_id))

    def _handle_descendants(self, kernel_id: str, detections: list[Detection],
                            parents: dict[int, int]) -> None:
        handled, covered = self._handled[kernel_id], self._covered[kernel_id]
        self._uncover_orphans(kernel_id, parents)
        acted_on = {key[0]: key for key in self._stopping[kernel_id] if key[0] in parents}
        if not acted_on:
            return
        for d in detections:
            pid = _ancestor_among(d.process.ppid, acted_on, parents)
            if pid is not None and d.process.key not in handled:
                handled.add(d.process.key)
                covered[d.process.key] = acted_on[pid]

    def _uncover_orphans(self, kernel_id: str, parents: dict[int, int]) -> None:
        """Judge again the processes covered by an ancestor's stop that no longer descend from
        it (it exited, or was killed, and left them to init): its stop did not signal them
        (started after its family walk)."""
        covered = self._covered[kernel_id]
        for key, ancestor in list(covered.items()):
            if key[0] in parents and _ancestor_among(parents[key[0]], {ancestor[0]}, parents):
                continue
            del covered[key]
            if key not in self._stopping[kernel_id]:  # signalled itself: its stop goes on
                self._handled[kernel_id].discard(key)

    def note_stopping(self, kernel_id: str, keys: list[tuple]) -> None:
        """Processes signalled by a stop under way (the offenders' families): not new
        offences while they take the signal (SIGKILL comes after the grace)."""
        self._handled[kernel_id].update(keys)
        self._stopping[kernel_id].update(keys)
        covered = self._covered.get(kernel_id)
        for key in keys if covered else ():
            covered.pop(key, None)  # signalled: taken by a stop of its own

    def admit(self, kernel_id: str) -> bool:
        """Whether the kernel may open an incident of its own now (counted if so); False:
        its plan is coalesced with the others of this window (the monitor's ``Coalesced``)."""
        now = self._clock()
        opened = self._opened[kernel_id]
        opened[:] = [t for t in opened if now - t < INCIDENT_WINDOW]
        if len(opened) >= INCIDENT_BURST:
            return False
        opened.append(now)
        return True

    def forget_kernel(self, kernel_id: str) -> None:
        self._handled.pop(kernel_id, None)
        self._stopping.pop(kernel_id, None)
        self._covered.pop(kernel_id, None)
        self._kernel_acted.pop(kernel_id, None)
        self._kernel_offence.pop(kernel_id, None)
        self._opened.pop(kernel_id, None)

    def kernels_known(self) -> set[str]:
        return (set(self._handled) | set(self._stopping) | set(self._kernel_acted)
                | set(self._opened))

    def _is_new(self, d: Detection) -> bool:
        if d.process.is_kernel and not self.settings.dry_run:
            # The kernel cannot be stopped like a child: it is interrupted, then shut
            # down if the behaviour goes on after the interrupt had time to work.
            last = self._kernel_acted.get(d.kernel_id)
            return last is None or last[1] != d.process.key or \
                self._clock() - last[0] >= KERNEL_GRACE
        return d.process.key not in self._handled[d.kernel_id]

    def _choose(self, detections: list[Detection], escalate: bool) -> str:
        action = choose_action(detections, self.settings)
        if unknown_kernel_uid(detections[0].kernel_id) is not None:
            return weakest(action, "stop")  # no kernel it can be tied to is touched
        kernel_offends = any(d.process.is_kernel for d in detections)
        if kernel_offends and at_least(action, "stop") and not self.settings.dry_run:
            # The kernel process cannot be "stopped" like a child process.
            action = "shutdown" if escalate else strongest(action, "interrupt")
        return action

    def _steps(self, action: str, detections: list[Detection]) -> list[Action]:
        """The steps, in the order they are carried out.

        ``interrupt`` interrupts the kernel first, so the running cell stops where it
        is (a cell waiting on the offender would otherwise go on to its next line once
        the offender dies), then stops the offending processes. ``shutdown`` stops them
        first, then shuts the kernel down.
        """
        dry = self.settings.dry_run
        outcome = "would" if dry else "pending"
        steps = [Action("record", "incident log", "done")]
        if at_least(action, "warn"):
            steps.append(Action("warn", "user", outcome if dry else "done"))
        stops = [Action("stop", f"pid {d.process.pid}", outcome)
                 for d in unique_processes(detections) if not d.process.is_kernel]
        if action == "interrupt":
            steps += [Action("interrupt", "kernel", outcome), *stops]
        elif action == "shutdown":
            steps += [*stops, Action("shutdown", "kernel", outcome)]
        elif action == "stop":
            steps += stops
        return steps

    # ------------------------------------------------------------ cells and tampering

    def cell(self, detections: list[Detection]) -> Plan:
        """A cell about to run: ``refuse`` it when its action would stop anything."""
        chosen = choose_action(detections, self.settings)
        action = "refuse" if at_least(chosen, "stop") else chosen
        steps = [Action("record", "incident log", "done")]
        if at_least(action, "warn"):
            steps.append(Action("warn", "user", "done"))
        if action == "refuse":
            steps.append(Action("refuse", "cell", "would" if self.settings.dry_run else "done"))
        return Plan(detections, action, steps)

    def tampering(self) -> str:
        """The action for tampering with the kernel hook: a record, at most a warning."""
        return weakest(self.settings.action_for("tampering"), "warn")

    # ------------------------------------------------------------ strikes

    def is_strike(self, incident: Incident, earlier_refusals: int = 0) -> bool:
        """Does this incident count against its user? ``earlier_refusals``: refused cells
        of the same user and category within the strike window, before this one."""
        if incident.dry_run or incident.package or ESCALATION in incident.evidence:
            return False  # an escalation: its interrupt's incident was the strike
        done = {a.action for a in incident.actions}
        if done & (set(ENFORCING_ACTIONS) - {"refuse"}):
            return True
        return "refuse" in done and earlier_refusals >= self.settings.cell_refusals_allowed


def _ancestor_among(pid: int | None, pids, parents: dict[int, int]) -> int | None:
    """The first of ``pids`` met going up from ``pid`` (itself included) by ``parents``."""
    steps = 0
    while pid is not None and steps < 64 and pid not in pids:
        pid, steps = parents.get(pid), steps + 1
    return pid if pid in pids else None


def unique_processes(detections: list[Detection]) -> list[Detection]:
    """One detection per process, in order."""
    seen, unique = set(), []
    for d in detections:
        if d.process.key not in seen:
            seen.add(d.process.key)
            unique.append(d)
    return unique

