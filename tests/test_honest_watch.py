"""The node watcher (``colab-guard watch``, root) judges honest work as the server does: a user's
kernel-like process runs it (tests/test_honest_*.py run the same under a guarded server), and
nothing is recorded or stopped; a miner started after it by the same kernel is stopped, so the
watcher was looking all along. Needs root, as tests/test_watch.py (whose helpers it uses)."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from colab_guard.observe.behaviour import WINDOW
from tests.test_watch import RunningWatcher, _remove_user, launch_watcher, waits, watcher_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/sbin/useradd").exists(),
                                reason="the node watcher's tests create Unix users: root only")

ROOT = Path(__file__).resolve().parent.parent
USER = f"honest{os.getpid()}"  # per test run: another run never sees or removes ours
PYTHON = sys.executable

KERNEL = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    report, command = sys.argv[1], sys.argv[2]
    def note(what):
        with open(report, "a") as f:
            f.write(what + "\\n")
    signal.signal(signal.SIGINT, lambda *_: note("SIGINT"))
    while not os.path.exists(report + ".go"):  # as a cell runs once the kernel has started
        time.sleep(0.02)
    for line in open(command).read().split("\\n---\\n"):
        note("rc %d" % subprocess.run(["/bin/bash", "-c", line], cwd=os.path.dirname(report)).returncode)
    note("finished")
    while True:
        time.sleep(0.05)
""")

#: Pure Python (the system's, no numpy) on both cores, each with a connection to a parameter
#: server that only answers.
TRAINER = textwrap.dedent("""
    import socket, sys, time
    from multiprocessing import Pool
    def train(port):
        server = socket.create_connection(("127.0.0.1", port)).makefile("rwb")
        end, last, n = time.time() + float(sys.argv[2]), 0, 1
        while time.time() < end:
            for _ in range(20000): n = (n * 48271) % 2147483647
            if time.time() - last > 3:
                server.write(b"PULL\\n"); server.flush(); server.readline(); last = time.time()
        return n
    with Pool(2) as pool:
        print(pool.map(train, [int(sys.argv[1])] * 2))
""")


@pytest.fixture(scope="module")
def user():
    _remove_user(USER)  # left over by an interrupted run
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True)
    yield pwd.getpwnam(USER)
    _remove_user(USER)


@pytest.fixture(scope="module")
def world():
    folder = Path(tempfile.mkdtemp(prefix="cg-honest-"))
    folder.chmod(0o1777)
    (folder / "kernel.py").write_text(KERNEL)
    (folder / "trainer.py").write_text(TRAINER)
    for name in ("kernel.py", "trainer.py"):
        (folder / name).chmod(0o644)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)])


@pytest.fixture(scope="module")
def watcher(user, tmp_path_factory):
    folder = tmp_path_factory.mktemp("watcher")
    config = watcher_config(folder, [USER], sample_interval=0.5)
    log = folder / "watcher.log"
    proc = launch_watcher(config, log, PYTHON)
    running = RunningWatcher(folder, proc, log, folder / "run" / "watch.sock")
    waits(running, lambda: "sampling every 0.5s" in running.log() or proc.poll() is not None,
          "the watcher started")
    assert proc.poll() is None, running.log()
    yield running
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)
    assert "Traceback" not in running.log(), running.log()


def _service(*argv: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([PYTHON, "-m", *argv], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def _run_as_user(watcher: RunningWatcher, user, world: Path, kernel_id: str,
                 commands: list[str]) -> tuple[subprocess.Popen, Path]:
    """A kernel-like process of the user runs ``commands`` (bash), one after the other."""
    folder = world / kernel_id
    folder.mkdir()
    os.chown(folder, user.pw_uid, user.pw_gid)
    script = world / f"{kernel_id}.sh"
    script.write_text("\n---\n".join(commands))
    script.chmod(0o644)
    report = folder / "report"
    env = {"PATH": "/usr/bin:/bin", "HOME": user.pw_dir, "COLAB_GUARD_KERNEL_ID": kernel_id}
    proc = subprocess.Popen(["/usr/bin/python3", str(world / "kernel.py"), str(report), str(script)],
                            user=user.pw_uid, group=user.pw_gid, extra_groups=[], env=env,
                            start_new_session=True, cwd="/")
    waits(watcher, lambda: f"kernel {kernel_id} of user" in watcher.log(), f"kernel {kernel_id} found")
    Path(f"{report}.go").touch()
    return proc, report


def _notes(report: Path) -> list[str]:
    return report.read_text().splitlines() if report.exists() else []


def test_the_watcher_leaves_honest_work_alone_and_still_stops_a_miner(watcher, user, world,
                                                                      tmp_path):
    pub = tmp_path / "ftp" / "pub"
    pub.mkdir(parents=True)
    for name in ("train.csv", "test.csv"):
        (pub / name).write_text("x,y\n1,2\n" * 20000)  # 160 KB: seconds at the rate below
    ftp, ftp_port = _service("tests.standins.honest_services", "ftp", str(tmp_path / "ftp"))
    params, params_port = _service("tests.standins.honest_services", "params")
    pool, pool_port = _service("tests.standins.pool")
    kernel_id = "k-honest-1"
    honest = [f"wget -q --limit-rate=100k -r -l 1 -nH -P downloads ftp://127.0.0.1:{ftp_port}/pub/",
              f"/usr/bin/python3 {world / 'trainer.py'} {params_port} {WINDOW + 8}"]
    miner = [f"exec /usr/bin/python3 {ROOT / 'tests' / 'standins' / 'miner.py'} "
             f"-o stratum+tcp://127.0.0.1:{pool_port} -u {'4' + 'A' * 94} -p x"]
    kernel, report = _run_as_user(watcher, user, world, kernel_id, honest + miner)
    try:
        def recorded():
            return [(i.signature, i.evidence) for i in watcher.incidents() if i.kernel_id == kernel_id]

        waits(watcher, lambda: _notes(report)[:2] == ["rc 0", "rc 0"] or recorded(),
              "the honest work done", timeout=WINDOW + 90)
        # The kernel goes straight on to the miner, which may be stopped (SIGINT noted) by
        # now: the honest commands both ran to the end first, and nothing was recorded but it.
        notes = _notes(report)
        assert notes[:2] == ["rc 0", "rc 0"], notes
        assert all("miner.py" in str(evidence) for _, evidence in recorded()), recorded()
        assert len(list((world / kernel_id / "downloads" / "pub").glob("*.csv"))) == 2
        incident = waits(watcher, lambda: next(
            (i for i in watcher.incidents() if i.kernel_id == kernel_id), None),
            "the miner after it recorded")
        assert incident.signature.startswith("mining-"), incident.signature
        assert incident.user == USER and incident.category == "crypto-mining"
    finally:
        try:
            os.killpg(kernel.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kernel.wait()
        for proc in (ftp, params, pool):
            proc.kill()
            proc.wait()
