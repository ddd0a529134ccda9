"""The node watcher's check at a program's exec (colab_guard/watch/at_exec.py).

On data: which signatures are tested there (those that read only the name, the executable
and the command line, and hold at once), an allow rule that may hold later keeps the program
for the pass. For real (root): a watcher whose periodic tick never comes
(``sample_interval`` a minute, the most allowed) stops a miner known by its name, and says in the evidence that
its exec was what it saw; a miner known only by a rule that also needs a socket is not acted
on at its exec (the pass that follows it finds it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures, parse_text
from colab_guard.observe.model import Process
from colab_guard.record.database import IncidentDatabase, IncidentStore
from colab_guard.watch.at_exec import AT_EXEC, ExecCheck, exec_only
from colab_guard.watch.proc_events import ProcEvents
from tests.harness import wait_until
from tests.test_watch import launch_watcher, watcher_config

ROOT = Path(__file__).resolve().parent.parent
MINER = ROOT / "tests" / "standins" / "miner.py"
WALLET = "4" + "A" * 94


def _miner(argv: list[str], name: str = "", exe: str = "/usr/bin/python3.11") -> Process:
    return Process(pid=4242, name=name or Path(argv[0]).name[:15], exe=exe,
                   cmdline=argv, create_time=1e9, uid=1001)


# ---------------------------------------------------------------- on data


def test_only_signatures_on_name_and_command_line_that_hold_at_once_are_tested_at_exec():
    rules = load_signatures()
    at_exec = {s.id for s in rules.signatures.values() if exec_only(s)}
    assert {"mining-known-miner", "mining-miner-command-line"} <= at_exec
    # a pool URL needs a socket too; a miner's content, its file scanned; cells are no programs
    assert not at_exec & {"mining-stratum-url", "mining-miner-options", "mining-wallet-login"}
    assert not any(rules.signatures[i].on_cells or rules.signatures[i].hold_seconds
                   for i in at_exec)


def test_a_miner_by_name_or_options_is_found_at_exec_one_needing_a_socket_is_not():
    check = ExecCheck(Engine(load_signatures()))
    by_name = check.detections("k1", _miner(["./xmrig", "-o", "127.0.0.1:3333"], "xmrig"))
    assert {d.signature.id for d in by_name} == {"mining-known-miner"}
    assert all(d.kernel_id == "k1" and AT_EXEC in d.reasons for d in by_name)
    by_options = check.detections("k1", _miner(
        ["python3", "miner.py", "-o", "stratum+tcp://127.0.0.1:3333", "--donate-level", "1"]))
    assert {d.signature.id for d in by_options} == {"mining-miner-command-line"}
    # the URL alone: mining-stratum-url holds once the program holds a socket, not before
    assert check.detections("k1", _miner(
        ["python3", "miner.py", "-o", "stratum+tcp://127.0.0.1:3333", "-u", WALLET])) == []
    # near misses stay near misses
    grep = ["grep", "-rn", "--donate-level", "cfg/"]
    assert check.detections("k1", _miner(grep, exe="/usr/bin/grep")) == []
    # a file of the user's started as grep (`exec -a grep`) is judged by its options
    assert {d.signature.id for d in check.detections("k1", _miner(grep))} \
        == {"mining-miner-command-line"}
    assert check.detections("k1", _miner(["pip", "install", "xmrig-docs"])) == []


def test_debians_egrep_script_seen_at_its_exec_is_egrep():
    """Debian's egrep is a shell script that starts grep: the exec check sees its shell
    first, `sh /usr/bin/egrep -e '--donate-level 1 …' notes.txt` (a course searching its
    notes), which is egrep's search and no miner; a script of the user's is not."""
    check = ExecCheck(Engine(load_signatures()))
    search = ["-e", "--donate-level 1 -o pool.example.org:3333", "notes.txt"]
    egrep = _miner(["/bin/sh", "/usr/bin/egrep", *search], "egrep", exe="/usr/bin/dash")
    assert check.detections("k1", egrep) == []
    own = _miner(["/bin/sh", "/content/egrep", *search], "egrep", exe="/usr/bin/dash")
    assert {d.signature.id for d in check.detections("k1", own)} == {"mining-miner-command-line"}


def test_the_systems_shell_seen_at_its_exec_is_judged_on_the_programs_it_starts():
    """As a tick's pass judges it (engine.as_judged): `!echo "xmrig --donate-level 1 …"` in
    a course is the system's shell printing text; the shell starting a miner is not."""
    check = ExecCheck(Engine(load_signatures()))
    line = "xmrig --donate-level 1 -o pool.example.org:3333"
    printing = _miner(["/bin/sh", "-c", f'echo "{line}"; sleep 1'], "sh", exe="/usr/bin/dash")
    assert check.detections("k1", printing) == []
    starting = _miner(["/bin/sh", "-c", f"./{line}"], "sh", exe="/usr/bin/dash")
    assert {d.signature.id for d in check.detections("k1", starting)} \
        >= {"mining-miner-command-line"}


def test_a_verdict_is_remembered_per_program_and_a_disabled_signature_is_left_out():
    engine = Engine(load_signatures())
    check = ExecCheck(engine)
    for _ in range(3):
        assert check.detections("k1", _miner(["./xmrig"], "xmrig"))
    assert check.checked == 1
    engine.disabled["mining-known-miner"] = "RuntimeError: a bug"
    assert check.detections("k1", _miner(["./xmrig"], "xmrig")) == []


ALLOW = """
allow:
  - id: allow-course-miner
    description: The course's own miner, once it has shown its own content.
    when:
      all:
        - name: {equals: xmrig}
        - exe_markers: {equals: course-build}
    examples:
      match: [{name: xmrig, cmdline: [./xmrig], exe_markers: [course-build]}]
      no_match: [{name: xmrig, cmdline: [./xmrig]}]
"""


def test_an_allow_rule_that_may_hold_later_leaves_the_program_to_the_pass():
    rules = load_signatures()
    rules.allow.update(parse_text(ALLOW, "site.yaml").allow)
    check = ExecCheck(Engine(rules))
    # its content is not known at the exec: the allow rule may hold, the pass decides
    assert check.detections("k1", _miner(["./xmrig"], "xmrig")) == []
    # a program the allow rule cannot hold on (another name) is still acted on
    assert check.detections("k1", _miner(["./cpuminer"], "cpuminer"))


def test_a_program_read_at_its_exec_is_never_two_programs(tmp_path):
    """Execs are read in batches: a wrapper (`nice grep …`) may exec again while it is read,
    and its command line then went with the next program's file (grep's file with nice's
    words: not the system's text tool, a miner's options in the words). A script that execs
    env, which execs the shell on it again, without end, read as the watcher reads an exec
    (ProcEvents, its monitor a recorder): each program checked is one program."""
    loop = tmp_path / "loop.sh"
    loop.write_text('exec /usr/bin/env /bin/sh "$0"\n')
    proc = subprocess.Popen(["/bin/sh", str(loop)])
    checked: list[Process] = []
    kernels = SimpleNamespace(pids=dict, kernel=lambda _: SimpleNamespace(uid=os.getuid()))
    monitor = SimpleNamespace(exec_argv={}, attributed_at_pass={}, kernels=kernels,
                              check_at_exec=lambda kernel_id, p: checked.append(p))
    events = ProcEvents.__new__(ProcEvents)  # no netlink socket: its exec readings only
    events.monitor, events._lineage = monitor, {proc.pid: "k1"}
    deadline = time.monotonic() + 20
    try:
        while len(checked) < 1500 and time.monotonic() < deadline:
            started = events._remember_argv(proc.pid)
            if started is not None:
                events._check_at_exec(proc.pid, *started)
    finally:
        proc.kill()
        proc.wait()
    torn = [(p.exe, p.cmdline) for p in checked if p.cmdline and p.exe and
            os.path.basename(p.exe) != ("env" if p.cmdline[0] == "/usr/bin/env" else "dash")]
    assert len(checked) > 300 and torn == []


# ---------------------------------------------------------------- for real

root_only = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/sbin/useradd").exists(),
                               reason="creates a Unix user and runs the watcher: root only")
#: this branch's, per test run: another run on the machine never sees or removes it
CAROL = f"watchfast{os.getpid()}c"

KERNEL = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    report, folder = sys.argv[1:3]
    signal.signal(signal.SIGINT, lambda *_: None)  # interrupted, as a kernel, it lives on
    while True:  # as cells: each request file is one program to start
        for name in sorted(os.listdir(folder)):
            if name.endswith(".run"):
                path = os.path.join(folder, name)
                argv = open(path).read().split("\\0")
                os.unlink(path)
                child = subprocess.Popen(argv)
                with open(report, "a") as f:
                    f.write("%s %d\\n" % (name, child.pid))
        time.sleep(0.02)
""")


@pytest.fixture(scope="module")
def carol():
    from tests.test_watch import _remove_user

    _remove_user(CAROL)
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", CAROL], check=True)
    yield pwd.getpwnam(CAROL)
    _remove_user(CAROL)


@pytest.fixture(scope="module")
def world(carol):
    folder = Path(tempfile.mkdtemp(prefix="cg-watch-exec-"))
    folder.chmod(0o1777)
    (folder / "kernel.py").write_text(KERNEL)
    xmrig = folder / "xmrig"  # the stand-in miner under a miner's name
    xmrig.write_text(f"#!/usr/bin/python3\nimport runpy, sys\nsys.path.insert(0, {str(MINER.parent)!r})\n"
                     f"runpy.run_path({str(MINER)!r}, run_name='__main__')\n")
    for path in (folder / "kernel.py", xmrig):
        path.chmod(0o755)
    (folder / "requests").mkdir()
    (folder / "requests").chmod(0o777)  # not sticky: the kernel removes root's requests
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def pool():
    proc = subprocess.Popen([sys.executable, "-m", "tests.standins.pool"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    yield int(proc.stdout.readline())
    proc.kill()
    proc.wait()


class Watching:
    """The watcher, whose periodic tick never comes after its first, and one kernel of carol's."""

    def __init__(self, folder: Path, world: Path, carol):
        self.folder, self.world = folder, world
        # the most allowed sample_interval: no periodic tick in a test
        config = watcher_config(folder, [CAROL], sample_interval=60.0, metrics_port=None,
                                heartbeat_file="", user_socket="")
        self.log_path = folder / "watcher.log"
        self.proc = launch_watcher(config, self.log_path)
        self.waits(lambda: "process events on" in self.log() or self.proc.poll() is not None,
                   "the watcher started")
        assert self.proc.poll() is None, self.log()
        self.report = world / "kernel.report"
        self.kernel = subprocess.Popen(
            ["/usr/bin/python3", str(world / "kernel.py"), str(self.report),
             str(world / "requests")], user=carol.pw_uid, group=carol.pw_gid, extra_groups=[],
            env={"PATH": "/usr/bin:/bin", "COLAB_GUARD_KERNEL_ID": "k-carol"},
            start_new_session=True, cwd="/")
        # found at the look its exec brings (a pass), which also attributes it
        self.waits(lambda: "kernel k-carol of user" in self.log(), "the kernel found")
        self.store = IncidentStore(IncidentDatabase(f"sqlite:///{folder / 'incidents.sqlite'}"))
        self.runs = 0

    def log(self) -> str:
        return self.log_path.read_text()

    def waits(self, predicate, what: str, timeout: float = 60):
        try:
            return wait_until(predicate, timeout=timeout, what=what)
        except AssertionError as err:
            raise AssertionError(f"{err}; the watcher's log:\n{self.log()[-4000:]}") from None

    def start(self, argv: list[str]) -> int:
        """The kernel starts a program; its pid."""
        self.runs += 1
        name = f"{self.runs:03d}.run"
        temporary = self.world / "requests" / f"{name}.tmp"
        temporary.write_text("\0".join(argv))
        temporary.chmod(0o644)
        temporary.replace(self.world / "requests" / name)
        found = lambda: next((int(line.split()[1]) for line in  # noqa: E731
                              self._report() if line.startswith(name + " ")), None)
        return self.waits(found, f"program {name} started")

    def _report(self) -> list[str]:
        try:
            return self.report.read_text().splitlines()
        except FileNotFoundError:
            return []

    def incident_for(self, pid: int):
        return next((i for i in self.store.query() if i.status == "done"
                     and any(p["pid"] == pid for p in i.evidence.get("processes", []))), None)

    def close(self) -> None:
        self.kernel.kill()
        self.kernel.wait()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        assert "Traceback" not in self.log(), self.log()


@pytest.fixture(scope="module")
def watching(carol, world, tmp_path_factory):
    running = Watching(tmp_path_factory.mktemp("watch-exec"), world, carol)
    yield running
    running.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@root_only
def test_a_miner_known_by_its_name_is_stopped_at_its_exec_with_no_periodic_tick(watching, world, pool):
    miner = watching.start([str(world / "xmrig"), "-o", f"127.0.0.1:{pool}"])
    incident = watching.waits(lambda: watching.incident_for(miner), "the incident recorded")
    watching.waits(lambda: not _alive(miner), "the miner stopped")
    assert incident.user == CAROL and incident.kernel_id == "k-carol"
    matches = incident.evidence["matches"]
    assert {m["signature"] for m in matches} == {"mining-known-miner"}
    assert all(AT_EXEC in m["reasons"] for m in matches), matches
    assert {a.action: a.outcome for a in incident.actions}.get("stop") == "done", incident.actions


@root_only
def test_a_miner_known_only_with_its_socket_is_not_acted_on_at_its_exec(watching, world, pool):
    url = f"stratum+tcp://127.0.0.1:{pool}"
    miner = watching.start(["/usr/bin/python3", str(MINER), "-o", url, "-u", WALLET, "-p", "x"])
    # the looks after its exec (passes) find it once it holds its socket
    incident = watching.waits(lambda: watching.incident_for(miner), "the incident recorded")
    watching.waits(lambda: not _alive(miner), "the miner stopped")
    matches = incident.evidence["matches"]
    assert "mining-stratum-url" in {m["signature"] for m in matches}
    assert not any(AT_EXEC in m["reasons"] for m in matches), matches
    assert len([i for i in watching.store.query() if any(
        p["pid"] == miner for p in i.evidence.get("processes", []))]) == 1  # one incident
