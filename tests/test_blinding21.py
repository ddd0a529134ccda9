"""Session 21: the cost of what was added since session 17, attacked. A shell whose script is
shaped to make the engine's reading of it expensive (an eval that reads its own substitution
again, thousands of brace groups), judged at every tick its command line changes and at every
exec; a process with tens of thousands of mappings; caches fed command lines of 64 KiB.
Every bound here counts work or memory, never a time (benchmarks/blinding21.py has those)."""

from __future__ import annotations

import collections
import logging
import os
import shutil
import subprocess
import time
import tracemalloc

import pytest

from colab_guard.detect import commands
from colab_guard.detect.engine import Engine, as_judged
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.model import Process
from colab_guard.observe.processes import ProcessSampler
from colab_guard.watch.at_exec import ExecCheck
from tests.conftest import PYTHON

LOOP = "while :; do :; done; "  # the shell never reaches the rest
HOSTILE = {
    # an eval whose text is a substitution that evals it again: 500 of them
    "eval-substitution": LOOP + "A='$(eval $A)'; eval $A; " * 500,
    # 3,000 brace groups in one word: 64 words a group, each one longer than the last
    "braces": "echo " + "{a,b}" * 3000,
    # evals of evals of 4,000 assignments
    "eval-of-eval": "C='{}'; B='{}'; A='{}'; eval $A".format(
        "y=1;" * 1000, "eval $C;" * 400, "eval $B;" * 400),
    "nested-substitutions": "echo " + "$(echo " * 1000 + "x" + ")" * 1000,
    "semicolons": "y=1;" * 100_000,
}


def _shell(script: str, pid: int = 5) -> Process:
    return Process(pid=pid, create_time=1.0, name="bash", exe="/usr/bin/bash",
                   cmdline=["bash", "-c", script])


@pytest.fixture
def work(monkeypatch):
    """Characters the shell reader lexes, expands, substitutes and brace-expands (its work)."""
    done = collections.Counter()

    def counting(owner, name, measure):
        original = getattr(owner, name)

        def counted(*args):
            result = original(*args)
            done[name] += measure(args, result)
            return result
        monkeypatch.setattr(owner, name, counted)

    counting(commands._Shell, "_simple_commands", lambda args, _: len(args[1]))
    counting(commands._Shell, "expand", lambda _, out: len(out))
    counting(commands, "_output_of", lambda args, _: len(args[0]))
    counting(commands, "_brace_expand", lambda _, out: sum(map(len, out)))
    _forget_parses()
    yield done
    _forget_parses()


def _forget_parses() -> None:
    if hasattr(commands, "_parses"):  # (the code before session 21 kept none)
        commands._parses.clear()
        commands._parses_chars[0] = 0


#: A parse's work, at most: what its MAX_WORK characters of text cost (lexed, expanded…)
WORK_BOUND = 4 * 2 * commands.MAX_TEXT


@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_a_hostile_script_is_read_within_a_work_budget(work, shape):
    """Each text was cut at 16 KiB already; but each eval, substitution and brace group read
    and built text again: up to 500,000 characters of work a parse (170 ms), at every tick a
    flipped command line was judged. Now a parse reads at most MAX_WORK characters of text."""
    as_judged(_shell(HOSTILE[shape]))
    assert sum(work.values()) <= WORK_BOUND, dict(work)


def test_a_script_read_in_part_is_judged_on_its_text(work):
    """A parse cut at its budget does not say which programs the script starts: the rules read
    the shell's command line as it is (as for a script of more than MAX_COMMANDS programs)."""
    shell = _shell(HOSTILE["eval-substitution"])
    assert as_judged(shell) is shell
    honest = _shell("python train.py && echo 'next: xmrig --donate-level 1'")
    assert as_judged(honest).cmdline == ["bash", "-c", "python train.py"]


def test_a_command_line_is_read_once_however_often_it_is_judged(work, monkeypatch):
    """A shell that keeps running is judged again whenever its CPU changes: its script was
    read again each time (twice: its programs, then its redirections)."""
    reads = []
    original = commands._Shell.program

    def program(self, argv, depth):
        if depth == 0:
            reads.append(argv[0])
        return original(self, argv, depth)
    monkeypatch.setattr(commands._Shell, "program", program)
    script = "python train.py && echo done; d=/dev; cat < $d/null"
    for tick in range(5):
        as_judged(_shell(script, pid=10 + tick).but(cpu_percent=float(tick)))
    assert len(reads) == 1, reads


def test_a_shell_whose_script_changes_at_every_tick_spends_its_budget_then_little(work):
    """A root user rewrites a shell's argument area at every tick: each new command line was
    read in full (430,000 characters of work, 170 ms). Each process has PROCESS_WORK for its
    readings; past it, a new command line is read only as far as SPENT_WORK, and a redirection
    to a network device that far still shows."""
    from colab_guard.observe.model import Snapshot

    engine = Engine(load_signatures(), log=logging.getLogger("test"))
    per_tick = []
    for tick in range(40):
        work.clear()
        shell = _shell(HOSTILE["eval-substitution"] + f" #{tick}")
        engine.evaluate(Snapshot("k", float(tick), [shell]))
        per_tick.append(sum(work.values()))
    assert sum(per_tick[:20]) > 0 and max(per_tick[-10:]) <= WORK_BOUND // 16, per_tick
    opened = "d=/dev; exec 3<>$d/tcp/10.0.0.9/4444; " + HOSTILE["eval-substitution"]
    judged = as_judged(_shell(opened + " #x"), engine._scripts_of("k", shell))
    assert "<> /dev/tcp/10.0.0.9/4444" in judged.cmdline, judged.cmdline[-2:]


def test_the_parses_kept_hold_digests_not_command_lines(work):
    """Keyed by the command line, the 1,024 parses kept held every one of them: 1,100 command
    lines of 60 KiB (a storm of execs, or a flipped argument area) kept 64 MiB alive."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1100):
            as_judged(_shell("true", pid=i).but(
                cmdline=["bash", "-c", "true", "name", f"{i:06d}" + "x" * (60 << 10)]))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 24 << 20, held


def test_exec_verdicts_hold_digests_not_command_lines():
    """The exec check's 4,096 verdicts were keyed by the command line: 256 MiB of an exec storm's
    64 KiB command lines kept alive."""
    check = ExecCheck(Engine(load_signatures(), log=logging.getLogger("test")))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(300):
            check.detections("k", Process(pid=i, create_time=1.0, name="tool", exe="/opt/tool",
                                          cmdline=["/opt/tool", f"{i:06d}" + "x" * (60 << 10)]))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert check.checked == 300
    assert held < 6 << 20, held  # 300 command lines of 60 KiB: 18 MiB


# ---------------------------------------------------------------- real processes


FLIPPER = """
import os, sys, time
ends = []
for pid in map(int, sys.argv[1:]):
    fields = open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()
    ends.append((os.open(f"/proc/{pid}/mem", os.O_RDWR), int(fields[46])))
print("up", flush=True)
i = 0
while True:
    for k, (fd, end) in enumerate(ends):  # a count: a command line never seen before
        os.pwrite(fd, b"%05d%d" % (i % 100000, k % 10), end - 7)
    i += 1
    time.sleep(0.3)
"""


def _wait_exec(procs: list[subprocess.Popen], name: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            open(f"/proc/{p.pid}/comm").read().strip() != name for p in procs):
        time.sleep(0.01)  # polling for their exec


def test_shells_whose_hostile_scripts_change_every_tick_cost_a_bounded_read(work, tmp_path):
    """Four shells that stay up, their hostile script's last word rewritten every 0.3 s by a
    root process: a command line never seen before at every tick. Each tick reads each of them
    within its budget, and a miner known by name started among them is found within ~1 s."""
    shells = [subprocess.Popen(["bash", "-c", HOSTILE["eval-substitution"] + " #000000"],
                               preexec_fn=lambda: os.nice(19)) for _ in range(4)]
    flipper = miner = None
    sampler = ProcessSampler()
    engine = Engine(load_signatures(), log=logging.getLogger("test"))
    try:
        _wait_exec(shells, "bash")  # (the flipper writes into bash's argument area)
        flipper = subprocess.Popen([PYTHON, "-c", FLIPPER, *(str(s.pid) for s in shells)],
                                   stdout=subprocess.PIPE)
        assert flipper.stdout.readline() == b"up\n"
        kernels = {f"k{i}": s.pid for i, s in enumerate(shells)}
        next_tick, per_tick = time.monotonic(), []

        def tick() -> list[str]:
            nonlocal next_tick
            time.sleep(max(0.0, next_tick - time.monotonic()))  # the 1 s schedule
            work.clear()
            found = [d.signature.id for snapshot in sampler.sample(kernels).values()
                     for d in engine.evaluate(snapshot)]
            per_tick.append(sum(work.values()))
            next_tick = max(next_tick + 1.0, time.monotonic())
            return found

        for _ in range(3):
            tick()
        # each shell read at most once a tick, each read within its budget (it was 430,000
        # characters of work a shell, twice)
        assert max(per_tick) <= len(shells) * WORK_BOUND, per_tick
        assert min(per_tick) >= len(shells) * 10_000, per_tick  # (read anew at every tick)
        xmrig = tmp_path / "xmrig"
        shutil.copy(shutil.which("sleep"), xmrig)
        miner = subprocess.Popen([str(xmrig), "60"])
        kernels["miner"] = miner.pid
        # found at the first tick that samples it (ticks counted, not seconds: each tick
        # above was read within its budget, so it keeps its 1 s schedule)
        found = next((n for n in range(1, 4) if "mining-known-miner" in tick()), None)
        assert found == 1, (found, per_tick)
    finally:
        for p in [*shells, flipper, miner]:
            if p is not None:
                p.kill()
                p.wait()
        sampler.content.close()


MAPPER = """
import ctypes, mmap, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
folder, count = sys.argv[1], int(sys.argv[2])
first = os.path.join(folder, "lib0.so")
with open(first, "wb") as f:
    f.write(b"\\0" * 4096)
for i in range(count):  # a name of its own for each mapping (links of one file)
    path = os.path.join(folder, f"lib{i}.so")
    if i:
        os.link(first, path)
    fd = os.open(path, os.O_RDONLY)
    libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
    os.close(fd)
print("up", flush=True)
time.sleep(120)
"""


def test_a_process_with_twenty_thousand_libraries_is_read_within_the_maps_budget(tmp_path):
    """20,000 files named *.so mapped: every name went into the sample (60,000 cost the first
    tick 1.3 s, the engine's reading of them). Now as the content scanner reads the maps: at
    most MAPS_MAX_BYTES of them, and MAX_LIBRARIES names, the libraries loaded first, and a
    last word that says the list was cut."""
    from colab_guard.observe.content import MAX_LIBRARIES
    from colab_guard.observe.processes import LIBRARIES_CUT
    proc = subprocess.Popen([PYTHON, "-c", MAPPER, str(tmp_path), "20000"], stdout=subprocess.PIPE)
    sampler = ProcessSampler()
    try:
        assert proc.stdout.readline() == b"up\n"
        sample = next(p for p in sampler.sample({"k": proc.pid})["k"].processes
                      if p.pid == proc.pid)
        assert len(sample.libraries) <= MAX_LIBRARIES + 1, len(sample.libraries)
        assert sample.libraries[-1] == LIBRARIES_CUT
        # the decoys, mapped only to be read, did not push out the libraries it loaded
        assert any("/libc.so" in path for path in sample.libraries), sample.libraries[:40]
        assert any(path.startswith(str(tmp_path)) for path in sample.libraries)
    finally:
        proc.kill()
        proc.wait()
        sampler.content.close()


# ---------------------------------------------------------------- the watcher's exec check


def test_a_named_miner_in_a_storm_of_hostile_shells_is_checked_first_and_at_once(tmp_path):
    """A batch of execs as the process connector announces them: 30 shells with hostile
    scripts (each cost the exec check 300 ms: the batch held the event loop 9 s), then a miner
    known by name. The miner is checked first; the shells within the batch's budget, the rest
    left to the passes."""
    from types import SimpleNamespace

    from colab_guard.watch.proc_events import ProcEvents

    hostile = "sleep 60; exit; " + "A='$(eval $A)'; eval $A; " * 500
    shells = [subprocess.Popen(["bash", "-c", f"{hostile} #{i}"]) for i in range(30)]
    xmrig = tmp_path / "xmrig"
    shutil.copy(shutil.which("sleep"), xmrig)
    miner = subprocess.Popen([str(xmrig), "60"])
    check = ExecCheck(Engine(load_signatures(), log=logging.getLogger("test")))
    checked: list[tuple[str, bool]] = []

    def check_at_exec(kernel_id, process):
        checked.append((process.name, bool(check.detections(kernel_id, process))))

    kernels = SimpleNamespace(pids=dict, kernel=lambda _: SimpleNamespace(uid=os.getuid()))
    monitor = SimpleNamespace(exec_argv={}, attributed_at_pass={}, kernels=kernels,
                              check_at_exec=check_at_exec)
    events = ProcEvents.__new__(ProcEvents)  # no netlink socket: its exec checks only
    events.monitor, events.left_to_pass = monitor, 0
    pids = [p.pid for p in shells] + [miner.pid]
    events._lineage = {pid: "k1" for pid in pids}
    try:
        _wait_exec(shells, "bash")  # (sleep is its child)
        started = [(pid, events._remember_argv(pid)) for pid in pids]
        events._check_all_at_exec(started)
    finally:
        for p in [*shells, miner]:
            p.kill()
            p.wait()
    assert checked[0] == ("xmrig", True), checked[:3]
    assert events.left_to_pass > 0 and len(checked) - 1 + events.left_to_pass == len(shells)


# ---------------------------------------------------------------- the script threads


def test_a_parse_that_races_another_thread_reads_the_script_all_the_same(monkeypatch):
    """CPython 3.11 keeps the depth of its AST conversion in state threads share: two parses
    at once (the content scanner's two script threads) raised SystemError ("AST constructor
    recursion depth mismatch", seen in this session's benchmark), which failed the whole
    script's reading (and its local modules'). Now tried again, then read by its tokens."""
    import ast

    from colab_guard.observe import scripts

    source = b"import socket\nfrom helper import mine\nmine(socket)\n"
    parse, failures = ast.parse, []

    def racing(text, *args, **kwargs):
        if len(failures) < fail_times:
            failures.append(1)
            raise SystemError("AST constructor recursion depth mismatch (before=39, after=27)")
        return parse(text, *args, **kwargs)
    monkeypatch.setattr(scripts.ast, "parse", racing)
    for fail_times in (1, 2):  # once: parsed on the retry; twice: read by its tokens
        failures.clear()
        evidence = scripts.python_evidence(source)
        assert {"socket", "helper"} <= set(evidence.imports), (fail_times, evidence.imports)


# ---------------------------------------------------------------- the watcher, for real

from tests.harness import wait_until  # noqa: E402
from tests.test_watch_exec import _alive, carol, pool, root_only, watching, world  # noqa: E402,F401

#: A shell that lives half a second (long enough to be read at its exec), with a hostile script
STORM_SHELL = "sleep 0.5; exit; " + "A='$(eval $A)'; eval $A; " * 500


def _storm_shells() -> int:
    """The storm's shells alive now."""
    alive = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                alive += f.read(64).startswith(b"bash\0-c\0sleep 0.5; exit; ")
        except OSError:
            continue
    return alive


@root_only
def test_a_named_miner_started_in_an_exec_storm_of_hostile_shells_is_stopped_at_once(
        watching, world, pool):
    """The kernel starts fifty shells a second, each with a hostile script of its own: each
    cost the watcher's check at exec 300 ms on its event loop, and a miner known by name
    started among them was stopped 4.3-4.9 s after (three runs); now 0.1-0.7 s."""
    (world / "hostile.txt").write_text(STORM_SHELL)
    (world / "hostile.txt").chmod(0o644)
    storm = watching.start(["/bin/sh", "-c", f'H=$(cat {world}/hostile.txt); i=0; while :; do '
                            f'i=$((i+1)); bash -c "$H #$i" & sleep 0.02; done'])
    try:
        wait_until(lambda: _storm_shells() >= 20, timeout=30, what="the storm under way")
        started = time.monotonic()
        miner = watching.start([str(world / "xmrig"), "-o", f"127.0.0.1:{pool}"])
        watching.waits(lambda: not _alive(miner), "the miner stopped", timeout=60)
        # (0.1-0.7 s here, 4.3-4.9 s before: a bound far from both, for a loaded machine;
        # the figures are ./dev bench blinding's)
        assert time.monotonic() - started < 3.5
    finally:
        os.kill(storm, 9)
