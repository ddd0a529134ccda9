"""The detection engine on recorded snapshots (tests/data, captured by tests/data/record.py)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from colab_guard.detect.conditions import FieldTest
from colab_guard.detect.engine import USAGE_FIELDS, Engine
from colab_guard.detect.fields import FIELDS, FieldView
from colab_guard.detect.signatures import load_signatures, parse_text
from colab_guard.observe.model import Process, Snapshot, Socket

DATA = Path(__file__).parent / "data"
RULES = load_signatures()


def replay(name: str, engine: Engine | None = None) -> list:
    engine = engine or Engine(RULES)
    detections = []
    for raw in json.loads((DATA / f"{name}.json").read_text()):
        snap = Snapshot(raw["kernel_id"], raw["time"], [Process.from_dict(p) for p in raw["processes"]])
        detections += engine.evaluate(snap)
    return detections


def test_recorded_renamed_miner_is_detected_by_its_command_line_and_socket():
    detections = replay("miner-renamed")
    assert detections, "the renamed miner was not detected"
    first = detections[0]
    assert first.process.name == "kworker/0:1"
    assert first.signature.category == "crypto-mining"
    assert {d.signature.id for d in detections} == {"mining-wallet-login"}
    assert any("127.0.0.1:" in r for r in first.reasons)
    assert any(r.startswith("sockets >= 1") for r in first.reasons)


def test_recorded_torrent_client_is_detected_by_its_magnet_link():
    detections = replay("torrent")
    assert {d.signature.id for d in detections} == {"torrent-magnet-link"}


def test_recorded_hashing_at_full_cpu_is_left_alone():
    assert replay("benign-hashing") == []


def hold_rules(seconds: float):
    return parse_text(f"""
signatures:
  - id: busy
    category: crypto-mining
    severity: medium
    description: busy for a while
    for: {seconds}
    when: {{cpu_percent: {{gte: 80}}}}
    examples:
      match: [{{cpu_percent: 99}}]
      no_match: [{{cpu_percent: 10}}]
""")


def busy(cpu: float) -> Process:
    return Process(pid=10, create_time=5.0, name="x", cpu_percent=cpu)


def test_a_time_window_must_hold_without_a_break():
    engine = Engine(hold_rules(10))
    seen = [bool(engine.evaluate(Snapshot("k", t, [busy(cpu)])))
            for t, cpu in [(0, 99), (5, 99), (9, 99), (10, 20), (11, 99), (20, 99), (21, 99)]]
    # the dip at t=10 restarts the window: it holds again from t=11, so t=21 is the first hit
    assert seen == [False, False, False, False, False, False, True]


def test_windows_are_per_process_and_per_kernel():
    engine = Engine(hold_rules(5))
    engine.evaluate(Snapshot("k1", 0, [busy(99)]))
    assert engine.evaluate(Snapshot("k2", 6, [busy(99)])) == []  # another kernel: starts afresh
    assert len(engine.evaluate(Snapshot("k1", 6, [busy(99)]))) == 1
    other = Process(pid=11, create_time=5.0, cpu_percent=99)
    assert engine.evaluate(Snapshot("k1", 7, [busy(99), other]))[0].process.pid == 10


def test_a_reused_pid_is_a_new_process():
    engine = Engine(hold_rules(5))
    engine.evaluate(Snapshot("k", 0, [Process(pid=10, create_time=1.0, cpu_percent=99)]))
    later = Process(pid=10, create_time=3.0, cpu_percent=99)
    assert engine.evaluate(Snapshot("k", 6, [later])) == []


def test_allow_rules_win_over_signatures():
    rules = load_signatures()
    rules.allow.update(parse_text("""
allow:
  - id: allow-course-miner-demo
    description: the crypto course's demo, run against its own local pool
    when: {exe: {equals: /opt/course/xmrig}}
    examples:
      match: [{exe: /opt/course/xmrig}]
      no_match: [{exe: /tmp/xmrig}]
""").allow)
    engine = Engine(rules)
    demo = Process(pid=3, name="xmrig", exe="/opt/course/xmrig", cmdline=["xmrig"])
    real = Process(pid=4, name="xmrig", exe="/tmp/xmrig", cmdline=["xmrig"])
    found = engine.evaluate(Snapshot("k", 0, [demo, real]))
    assert [d.process.pid for d in found] == [4]


def test_a_signature_that_raises_is_disabled_and_the_others_keep_working(caplog):
    rules = load_signatures()
    broken = rules.signatures["mining-known-miner"]

    class Exploding(FieldTest):
        def test(self, view):
            raise RuntimeError("boom")

    broken.when = Exploding("name", [])
    engine = Engine(rules, log=logging.getLogger("test"))
    miner = Process(pid=3, name="xmrig", cmdline=["xmrig", "-o", "stratum+tcp://127.0.0.1:3333"],
                    sockets=[])
    miner.sockets = Process.from_dict({"pid": 3, "sockets": [{"remote_ip": "127.0.0.1",
                                                              "remote_port": 3333}]}).sockets
    with caplog.at_level(logging.ERROR):
        found = engine.evaluate(Snapshot("k", 0, [miner]))
    assert engine.disabled == {"mining-known-miner": "RuntimeError: boom"}
    assert "mining-known-miner" in caplog.text and "disabled" in caplog.text
    assert [d.signature.id for d in found] == ["mining-stratum-url"]
    # and it stays disabled without raising again
    assert [d.signature.id for d in engine.evaluate(Snapshot("k", 1, [miner]))] == ["mining-stratum-url"]


@pytest.mark.parametrize("cmdline", [
    ["python3", "-c", "x" * 1_000_000],
    ["python3", "a" * 50_000 + "!"],
])
def test_huge_command_lines_are_matched_on_a_bounded_prefix(cmdline):
    engine = Engine(RULES)
    found = engine.evaluate(Snapshot("k", 0, [Process(pid=1, name="python3", cmdline=cmdline)]))
    assert found == []


def test_ipv4_mapped_addresses_are_normalised():
    p = Process.from_dict({"pid": 1, "sockets": [{"remote_ip": "::ffff:127.0.0.1", "remote_port": 6881}]})
    assert p.sockets[0].remote == ("127.0.0.1", 6881)


def test_a_rule_is_tested_again_only_when_a_field_it_reads_changed(monkeypatch):
    # Fifty kernels each differ a little at every tick (CPU, memory); testing every rule on
    # each again would cost the server a regex search per library per rule.
    rules = parse_text("""
signatures:
  - id: busy-xmrig
    category: crypto-mining
    severity: high
    description: a busy xmrig
    when:
      all:
        - name: {regex: '^xmrig'}
        - cpu_percent: {gte: 50}
    examples:
      match: [{name: xmrig, cpu_percent: 99}]
      no_match: [{name: xmrig, cpu_percent: 1}]
""")
    tested = []
    real_test = FieldTest.test
    monkeypatch.setattr(FieldTest, "test", lambda self, view: tested.append(self.field)
                        or real_test(self, view))
    engine = Engine(rules)

    def sample(cpu: float, rss: int) -> Process:
        return Process(pid=7, name="xmrig", create_time=1.0, cpu_percent=cpu, rss=rss)

    idle = sample(1.0, 100)
    assert engine.evaluate(Snapshot("k", 0.0, [idle])) == [] and tested
    tested.clear()
    assert engine.evaluate(Snapshot("k", 1.0, [idle])) == []  # the very same sample
    assert tested == []
    assert engine.evaluate(Snapshot("k", 2.0, [sample(1.0, 200)])) == []
    assert tested == []  # only its memory changed, which no rule reads
    assert engine.evaluate(Snapshot("k", 2.5, [sample(2.0, 200)])) == []
    assert tested  # its CPU changed, which the rule reads: tested
    tested.clear()
    assert engine.evaluate(Snapshot("k", 3.0, [sample(2.0, 300)])) == []
    assert tested == []  # it changed again, but only rss, which the rule does not read
    busy = sample(90.0, 300)
    [found] = engine.evaluate(Snapshot("k", 4.0, [busy]))
    assert tested and found.process is busy
    # The reasons in the order the rule was written, though the number was tested first.
    assert found.reasons[0].startswith("name matches") and \
        found.reasons[1] == "cpu_percent >= 50: 90.0"
    tested.clear()
    renamed = Process(pid=7, name="xmrig-2", create_time=1.0, cpu_percent=1.0, rss=300)
    assert engine.evaluate(Snapshot("k", 5.0, [renamed])) == []
    assert tested == ["cpu_percent"]  # the cheap part failed: the regex did not run


SHELL_LINE = "cd /tmp/work && ./hashcat -m 0 -a 3 hashes.txt '?a?a?a?a?a'"


def incident_from(processes: list[Process]):
    from colab_guard.record.incident import Incident
    detections = Engine(RULES).evaluate(Snapshot("k-1", 1.0, processes))
    return Incident.from_detections(detections, "alice", None, dry_run=False)


def test_an_incident_names_the_program_before_the_shell_that_started_it():
    # `!./hashcat ...` in a notebook: the shell's own command line carries the options too,
    # and the shell comes first in the process list, but the user should read "hashcat".
    shell = Process(pid=200, ppid=100, name="bash", cmdline=["/bin/bash", "-c", SHELL_LINE])
    tool = Process(pid=201, ppid=200, name="hashcat",
                   cmdline=["./hashcat", "-m", "0", "-a", "3", "hashes.txt", "?a?a?a?a?a"])
    incident = incident_from([shell, tool])
    assert [p["pid"] for p in incident.evidence["processes"]] == [201, 200]
    assert incident.summary() == "password-cracking: hashcat (pid 201)"


def test_a_shell_caught_before_it_started_the_program_is_named_with_its_command():
    # Sampled between the shell's start and its fork: only the shell exists, and stopping
    # it stops the cracker before it runs. The evidence keeps the full command line.
    shell = Process(pid=200, ppid=100, name="bash", cmdline=["/bin/bash", "-c", SHELL_LINE])
    incident = incident_from([shell])
    assert incident.summary() == "password-cracking: bash (pid 200)"
    assert SHELL_LINE in incident.evidence["processes"][0]["cmdline"]


def test_the_usage_fields_are_the_only_fields_that_read_a_processs_usage():
    """The engine leaves a process's CPU, memory and GPU use out of what it compares from one
    tick to the next while no rule reads the fields in USAGE_FIELDS: no other field may
    depend on those attributes."""
    base = Process(pid=7, name="python", cmdline=["python", "x.py"], create_time=1.0,
                   sockets=[Socket("tcp", "127.0.0.1", 5000, "127.0.0.1", 3333, "ESTABLISHED")])
    used = replace(base, cpu_percent=95.0, rss=7 << 30, gpu_percent=99.0, gpu_memory_mb=8000.0)
    for name in FIELDS.keys() - USAGE_FIELDS.keys():
        assert FieldView(base)[name] == FieldView(used)[name], name
    for name, attribute in USAGE_FIELDS.items():
        assert FieldView(base)[name] != FieldView(used)[name], name
        assert attribute in vars(base)


def test_a_rule_reading_the_cpu_sees_every_change_of_it():
    rules = parse_text("""
signatures:
  - id: busy
    category: crypto-mining
    severity: high
    description: busy
    when: {cpu_percent: {gte: 50}}
    examples:
      match: [{cpu_percent: 99}]
      no_match: [{cpu_percent: 1}]
""")
    engine = Engine(rules)
    proc = Process(pid=7, name="x", create_time=1.0, cpu_percent=1.0)
    assert engine.evaluate(Snapshot("k", 0.0, [proc])) == []
    assert engine.evaluate(Snapshot("k", 1.0, [replace(proc, cpu_percent=90.0)]))



def parked(time: float, visited: list[Process], quiet: list[Process],
           members: frozenset | None = None) -> Snapshot:
    """A snapshot as the spreading sampler gives it: the parked quiet ones last, and the keys
    of all as one object while the processes are the same (Snapshot.members)."""
    return Snapshot("k", time, [*visited, *quiet], parked=len(quiet), members=members)


def members_of(*processes: Process) -> frozenset:
    return frozenset(p.key for p in processes)


def test_parked_processes_keep_their_results_and_one_that_matches_is_held_all_the_same():
    engine = Engine(hold_rules(5))
    kernel = Process(pid=1, create_time=1.0, name="python", is_kernel=True)
    quiet = [Process(pid=100 + i, create_time=2.0, name="sleep") for i in range(5)]
    hot = busy(99)  # matches from the start; handed out unchanged (it could be parked)
    members = members_of(kernel, hot, *quiet)
    engine.evaluate(Snapshot("k", 0, [kernel, hot, *quiet], members=members))
    engine.evaluate(parked(1, [kernel], [hot, *quiet], members))
    # Parked, but it matched: still held, and found once its window is over.
    found = engine.evaluate(parked(6, [kernel], [hot, *quiet], members))
    assert [d.process.pid for d in found] == [10]


def test_a_parked_process_the_engine_never_saw_is_checked():
    engine = Engine(hold_rules(5))
    kernel = Process(pid=1, create_time=1.0, name="python", is_kernel=True)
    quiet = [Process(pid=100 + i, create_time=2.0, name="sleep") for i in range(3)]
    members = members_of(kernel, *quiet)
    engine.evaluate(Snapshot("k", 0, [kernel, *quiet], members=members))
    engine.evaluate(parked(1, [kernel], quiet, members))
    # As many processes, but one of the parked is new to the engine and one of the last ones
    # gone (other members): it is tested, and the one gone forgotten.
    newcomer = busy(99)
    now = members_of(kernel, *quiet[:2], newcomer)
    engine.evaluate(parked(2, [kernel], [*quiet[:2], newcomer], now))
    assert set(engine._last["k"]) == now
    # It matched: held while it stays parked, and found once its window is over.
    assert engine.evaluate(parked(4, [kernel], [*quiet[:2], newcomer], now)) == []
    found = engine.evaluate(parked(8, [kernel], [*quiet[:2], newcomer], now))
    assert [d.process.pid for d in found] == [10]


def test_while_the_same_processes_come_back_parked_only_the_visited_are_looked_at(monkeypatch):
    engine = Engine(hold_rules(5))
    kernel = Process(pid=1, create_time=1.0, name="python", is_kernel=True)
    quiet = [Process(pid=100 + i, create_time=2.0, name="sleep") for i in range(50)]
    members = members_of(kernel, *quiet)
    engine.evaluate(Snapshot("k", 0, [kernel, *quiet], members=members))
    engine.evaluate(parked(1, [kernel], quiet, members))
    looked_at = []
    observe = engine._observer
    monkeypatch.setattr(engine, "_observer", lambda p: looked_at.append(p.pid) or observe(p))
    last = engine._last["k"]
    again = Process(pid=1, create_time=1.0, name="python", is_kernel=True, cpu_percent=3.0)
    engine.evaluate(parked(2, [again], quiet, members))
    assert looked_at == [1]  # the kernel's new sample, none of the fifty
    assert engine._last["k"] is last and last[again.key][0] is again  # updated in place
    assert set(last) == members
