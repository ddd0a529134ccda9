"""The policy on data: detections in, plans out (no server, no processes)."""

from __future__ import annotations

from colab_guard.act.policy import ESCALATION, KERNEL_ESCALATION_WINDOW, KERNEL_GRACE, Policy
from colab_guard.detect.engine import Detection
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.model import Process
from colab_guard.record.incident import Action, Incident
from colab_guard.settings import Settings

RULES = load_signatures().signatures
MINER = RULES["mining-stratum-url"]
WEB = next(s for s in RULES.values() if s.category == "web-hosting")
TORRENT = next(s for s in RULES.values() if s.category == "torrenting" and s.action is None)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def detection(signature, pid=4242, is_kernel=False, kernel="k1", ppid=1) -> Detection:
    return Detection(signature, kernel, Process(pid=pid, ppid=ppid, name="x", create_time=1.0,
                                                is_kernel=is_kernel), reasons=["why"])


def steps(plan) -> list[tuple[str, str, str]]:
    return [(a.action, a.target, a.outcome) for a in plan.steps]


def test_interrupt_interrupts_the_kernel_first_then_stops_the_offenders():
    [plan] = Policy(Settings()).respond("k1", [detection(MINER)])
    assert plan.action == "interrupt"
    assert steps(plan) == [("record", "incident log", "done"), ("warn", "user", "done"),
                           ("interrupt", "kernel", "pending"), ("stop", "pid 4242", "pending")]


def test_shutdown_stops_the_offenders_first_then_the_kernel():
    settings = Settings(actions={"crypto-mining": "shutdown"})
    [plan] = Policy(settings).respond("k1", [detection(MINER)])
    assert [s[0] for s in steps(plan)] == ["record", "warn", "stop", "shutdown"]


def test_record_only_records_and_warn_tells_the_user():
    [recorded] = Policy(Settings()).respond("k1", [detection(WEB)])
    assert recorded.action == "record" and steps(recorded) == [("record", "incident log", "done")]
    settings = Settings(actions={"web-hosting": "warn"})
    [warned] = Policy(settings).respond("k1", [detection(WEB)])
    assert [s[0] for s in steps(warned)] == ["record", "warn"]


def test_dry_run_plans_what_it_would_do():
    [plan] = Policy(Settings(dry_run=True)).respond("k1", [detection(MINER)])
    assert {s[2] for s in steps(plan)[1:]} == {"would"}


def test_the_strongest_action_of_a_category_wins_and_categories_are_separate_plans():
    settings = Settings(actions={"crypto-mining": "stop", "web-hosting": "record"})
    plans = Policy(settings).respond("k1", [detection(WEB, pid=2), detection(MINER, pid=1)])
    assert [p.action for p in plans] == ["stop", "record"]  # the strongest first


def test_a_process_is_acted_on_once_while_it_lives():
    policy = Policy(Settings())
    assert len(policy.respond("k1", [detection(MINER)], live={(4242, 1.0)})) == 1
    assert policy.respond("k1", [detection(MINER)], live={(4242, 1.0)}) == []
    # Gone and forgotten: the same pid (reused) is a new process.
    policy.respond("k1", [], live=set())
    assert len(policy.respond("k1", [detection(MINER)], live={(4242, 1.0)})) == 1


def test_what_a_process_acted_on_started_is_not_a_new_offence():
    # A shell caught before it started the tool; the tool caught while the shell's stop is
    # under way: one act, one incident (the shell's stop takes the tool too).
    policy = Policy(Settings())
    shell, tool = detection(MINER, pid=500, ppid=100), detection(MINER, pid=502, ppid=501)
    live = {(100, 1.0), (500, 1.0), (501, 1.0), (502, 1.0)}
    parents = {500: 100, 501: 500, 502: 501}  # the kernel (100) is not among them
    assert len(policy.respond("k1", [shell], live=live, parents=lambda: parents)) == 1
    assert policy.respond("k1", [tool], live=live, parents=lambda: parents) == []
    # Another process of the kernel, outside the shell's family, is a new offence.
    other = detection(MINER, pid=600, ppid=100)
    assert len(policy.respond("k1", [other], live=live | {(600, 1.0)},
                              parents=lambda: {**parents, 600: 100})) == 1


def test_what_a_process_only_recorded_starts_is_judged_on_its_own():
    # A web server recorded (not stopped) that then starts a miner: the miner is a new
    # offence, stopped; so is one a dry run's offender starts (nothing was stopped).
    for settings in (Settings(), Settings(dry_run=True)):
        policy = Policy(settings)
        live, parents = {(500, 1.0), (501, 1.0)}, {500: 100, 501: 500}
        if not settings.dry_run:
            [recorded] = policy.respond("k1", [detection(WEB, pid=500, ppid=100)], live=live,
                                        parents=lambda: parents)
            assert recorded.action == "record"
        else:
            policy.respond("k1", [detection(MINER, pid=500, ppid=100)], live=live,
                           parents=lambda: parents)
        [miner] = policy.respond("k1", [detection(MINER, pid=501, ppid=500)], live=live,
                                 parents=lambda: parents)
        assert miner.detections[0].process.pid == 501


def test_the_kernel_acted_on_does_not_cover_what_it_starts_next():
    for settings in (Settings(), Settings(dry_run=True)):
        policy = Policy(settings)
        assert len(policy.respond("k1", [detection(MINER, pid=100, is_kernel=True)],
                                  live={(100, 1.0)}, parents=dict)) == 1
        child = detection(MINER, pid=700, ppid=100)
        assert len(policy.respond("k1", [child], live={(100, 1.0), (700, 1.0)},
                                  parents=lambda: {700: 100})) == 1


def test_a_process_signalled_by_a_stop_under_way_is_not_a_new_offence():
    policy = Policy(Settings())
    policy.note_stopping("k1", [(800, 1.0)])  # an orphan of the offender, already reparented
    orphan = detection(MINER, pid=800, ppid=1)
    assert policy.respond("k1", [orphan], live={(800, 1.0)}, parents=lambda: {800: 1}) == []
    policy.respond("k1", [], live=set())  # gone: its pid, reused, is a new process
    assert len(policy.respond("k1", [orphan], live={(800, 1.0)})) == 1


def test_the_kernel_itself_is_interrupted_then_shut_down_if_it_goes_on():
    clock = Clock()
    policy = Policy(Settings(actions={"crypto-mining": "stop"}), clock=clock)
    [first] = policy.respond("k1", [detection(MINER, is_kernel=True)])
    assert first.action == "interrupt"
    assert "stop" not in [s[0] for s in steps(first)]  # the kernel is not a child to stop
    clock.now += KERNEL_GRACE / 2
    assert policy.respond("k1", [detection(MINER, is_kernel=True)]) == []  # the interrupt's time
    clock.now += KERNEL_GRACE
    [second] = policy.respond("k1", [detection(MINER, is_kernel=True)])
    assert second.action == "shutdown"
    assert second.escalates and not first.escalates  # the same offence carried on
    clock.now += KERNEL_ESCALATION_WINDOW * 2
    [later] = policy.respond("k1", [detection(MINER, is_kernel=True)])
    assert later.action == "interrupt" and not later.escalates  # long after: a new offence
    clock.now += KERNEL_GRACE * 2
    torrent = detection(TORRENT, is_kernel=True)
    [other] = policy.respond("k1", [torrent])
    assert other.action == "shutdown" and not other.escalates  # another offence: a strike


def test_a_kernel_restarted_after_its_interrupt_offends_anew_not_as_the_same_offence():
    """A restart keeps the kernel's id but starts another process: its offence is a new one
    (interrupted, an incident and a strike of its own), not the interrupted one carried on
    (which would be folded into the first incident: one strike for two offences)."""
    clock = Clock()
    policy = Policy(Settings(), clock=clock)
    [first] = policy.respond("k1", [detection(MINER, pid=100, is_kernel=True)])
    assert first.action == "interrupt"
    clock.now += KERNEL_GRACE / 2  # restarted at once: the new process is not in its grace
    [again] = policy.respond("k1", [detection(MINER, pid=200, is_kernel=True)])
    assert again.action == "interrupt" and not again.escalates
    clock.now += KERNEL_GRACE
    [going_on] = policy.respond("k1", [detection(MINER, pid=200, is_kernel=True)])
    assert going_on.action == "shutdown" and going_on.escalates


def test_a_kernel_matched_by_two_signatures_at_once_is_interrupted_not_shut_down():
    """Was shut down at its first offence: each of the kernel's detections in one act counted
    as an act of its own, so the second found the first's within the escalation window."""
    policy = Policy(Settings())
    both = [detection(MINER, is_kernel=True),
            detection(next(s for s in RULES.values() if s.category == "crypto-mining"
                           and s.id != MINER.id), is_kernel=True)]
    [plan] = policy.respond("k1", both)
    assert plan.action == "interrupt" and not plan.escalates


def test_a_cell_is_refused_when_its_action_would_stop_anything():
    policy = Policy(Settings())
    plan = policy.cell([detection(MINER, is_kernel=True)])
    assert plan.action == "refuse" and ("refuse", "cell", "done") in steps(plan)
    assert Policy(Settings(actions={"crypto-mining": "warn"})).cell(
        [detection(MINER, is_kernel=True)]).action == "warn"
    assert ("refuse", "cell", "would") in steps(Policy(Settings(dry_run=True)).cell(
        [detection(MINER, is_kernel=True)]))


def test_tampering_is_at_most_a_warning():
    assert Policy(Settings()).tampering() == "record"
    assert Policy(Settings(actions={"tampering": "shutdown"})).tampering() == "warn"


def incident(*actions: str, dry_run: bool = False) -> Incident:
    return Incident(kernel_id="k1", category="crypto-mining", severity="high", signature="s",
                    description="d", user="u", dry_run=dry_run,
                    actions=[Action(a, "x", "done") for a in actions])


def test_strikes_are_enforced_incidents_and_repeated_refusals():
    policy = Policy(Settings(cell_refusals_allowed=1))
    assert policy.is_strike(incident("record", "warn", "interrupt"))
    assert not policy.is_strike(incident("record", "interrupt", dry_run=True))
    assert not policy.is_strike(incident("record", "warn"))
    assert not policy.is_strike(incident("record", "refuse"), earlier_refusals=0)
    assert policy.is_strike(incident("record", "refuse"), earlier_refusals=1)
    assert Policy(Settings(cell_refusals_allowed=0)).is_strike(incident("refuse"))


def test_a_kernel_shut_down_for_going_on_after_its_interrupt_is_no_second_strike():
    """One offence, one strike: the interrupt's incident counts; the escalation's shutdown,
    recorded as an incident of its own (what the user is told), does not."""
    policy = Policy(Settings())
    escalation = incident("record", "warn", "shutdown")
    assert policy.is_strike(escalation)  # a shutdown of its own (the policy's action) counts
    escalation.evidence[ESCALATION] = "the kernel went on after its interrupt"
    assert not policy.is_strike(escalation)
