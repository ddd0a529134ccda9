"""Attribution that cannot be forged, on real processes: the sampler's ties of orphans.

A kernel here is a Python process in a session of its own (as jupyter_client starts
kernels) that, on a line of JSON, double-forks a program with the environment it is
given, calling setsid on the way or not, and answers the grandchild's pid: what a user's
cell can do. Framing: from kernel B, an orphan whose environment names kernel A.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from colab_guard.observe.attribution import KERNEL_ENV_MARKER, unknown_kernel
from colab_guard.observe.processes import ProcessSampler
from tests.harness import wait_until

PY = sys.executable

KERNEL = textwrap.dedent("""
    import json, os, sys
    for line in sys.stdin:
        order = json.loads(line)
        read, write = os.pipe()
        if os.fork() == 0:
            if order["setsid"]:
                os.setsid()
            child = os.fork()
            if child == 0:
                os.execvpe(order["argv"][0], order["argv"], order["env"])
            os.write(write, b"%d" % child)
            os._exit(0)
        os.wait()
        print(os.read(read, 32).decode(), flush=True)
""")


class Kernel:
    def __init__(self, kernel_id: str, user: str | None = None):
        self.kernel_id = kernel_id
        env = {"PATH": "/usr/bin:/bin", KERNEL_ENV_MARKER: kernel_id}
        python = PY if user is None else "/usr/bin/python3"  # a venv another user can run
        self.proc = subprocess.Popen([python, "-c", KERNEL], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True, user=user)
        self.pid = self.proc.pid
        self.orphans: list[int] = []

    def detach(self, env: dict[str, str], setsid: bool, argv=("sleep", "120")) -> int:
        """A double-forked orphan (reparented to init), as a cell would start one."""
        self.proc.stdin.write(json.dumps({"argv": list(argv), "env": env,
                                          "setsid": setsid}) + "\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline())
        self.orphans.append(pid)
        wait_until(lambda: psutil.Process(pid).ppid() != self.pid
                   and psutil.Process(pid).name() == os.path.basename(argv[0]), timeout=30,
                   what="the orphan reparented, its program started")
        return pid

    def stop(self) -> None:
        for pid in [*self.orphans, self.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


@pytest.fixture
def kernels():
    started: list[Kernel] = []

    def start(kernel_id: str, user: str | None = None) -> Kernel:
        kernel = Kernel(kernel_id, user)
        started.append(kernel)
        return kernel

    yield start
    for kernel in started:
        kernel.stop()


def owners(sampler: ProcessSampler, kernels: list[Kernel]) -> dict[int, str]:
    """pid -> kernel id of every process the sampler attributed."""
    snapshots = sampler.sample({k.kernel_id: k.pid for k in kernels})
    return {p.pid: kid for kid, snap in snapshots.items() for p in snap.processes}


def marker(kernel_id: str | None) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin"}
    if kernel_id is not None:
        env[KERNEL_ENV_MARKER] = kernel_id
    return env


def test_an_orphan_of_kernel_b_naming_kernel_a_is_b_s_by_its_session(kernels):
    a, b = kernels("kernel-a"), kernels("kernel-b")
    sampler = ProcessSampler()
    owners(sampler, [a, b])
    framed = b.detach(marker("kernel-a"), setsid=False)
    found = owners(sampler, [a, b])
    assert found[framed] == "kernel-b"
    tie = sampler.orphans.why(next(k for k in sampler._tracked if k[0] == framed))
    assert tie.how == "session" and tie.kernel == "kernel-b"


def test_a_framing_orphan_in_a_session_of_its_own_is_the_user_s_with_the_kernel_unknown(kernels):
    a, b = kernels("kernel-a"), kernels("kernel-b")
    sampler = ProcessSampler()
    owners(sampler, [a, b])
    framed = b.detach(marker("kernel-a"), setsid=True)
    found = owners(sampler, [a, b])
    # Nothing proves kernel A (the user has two kernels; the marker is the user's to write),
    # nor B: the user's, the kernel unknown.
    assert found[framed] == unknown_kernel(os.getuid())
    tie = sampler.orphans.why(next(k for k in sampler._tracked if k[0] == framed))
    assert tie.how == "unproven" and "kernel-a" in tie.detail
    assert sampler.stats.claimed_by_environment == 0
    # It stays so: a later tick does not hand it to a kernel.
    assert owners(sampler, [a, b])[framed] == unknown_kernel(os.getuid())


def test_an_orphan_with_its_environment_wiped_is_tied_by_its_session(kernels):
    a, b = kernels("kernel-a"), kernels("kernel-b")
    sampler = ProcessSampler()
    owners(sampler, [a, b])
    orphan = b.detach(marker(None), setsid=False)
    assert owners(sampler, [a, b])[orphan] == "kernel-b"


def test_the_marker_of_the_user_s_only_kernel_still_ties_a_detached_orphan(kernels):
    a = kernels("kernel-a")
    sampler = ProcessSampler()
    owners(sampler, [a])
    orphan = a.detach(marker("kernel-a"), setsid=True)
    assert owners(sampler, [a])[orphan] == "kernel-a"
    assert sampler.stats.claimed_by_environment == 1


def test_a_marker_naming_a_kernel_that_started_after_the_process_is_not_taken(kernels):
    early = kernels("kernel-early")
    sampler = ProcessSampler()
    owners(sampler, [early])
    orphan = early.detach(marker("kernel-late"), setsid=True)
    time.sleep(0.02)  # a start time after the orphan's, at the clock's resolution
    wait_until(lambda: psutil.Process(orphan).create_time() < time.time() - 0.02)
    late = kernels("kernel-late")
    wait_until(lambda: psutil.Process(late.pid).create_time()
               > psutil.Process(orphan).create_time(), what="the late kernel started")
    found = owners(sampler, [late])
    assert found[orphan] == unknown_kernel(os.getuid())


@pytest.fixture
def other_user():
    if os.geteuid() != 0:
        pytest.skip("creates a Unix user: root only")
    name = f"attrib{os.getpid()}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


def test_a_marker_naming_another_user_s_kernel_is_ignored(kernels, other_user):
    root_kernel = kernels("kernel-root")
    # A process of another user, detached, naming root's kernel; its own user has no kernel.
    theirs = kernels("not-a-watched-kernel", user=other_user.pw_name)
    sampler = ProcessSampler()
    owners(sampler, [root_kernel])
    forged = theirs.detach(marker("kernel-root"), setsid=True)
    found = owners(sampler, [root_kernel])
    assert forged not in found  # never the other user's kernel's, never acted on
    # Where its own user has a kernel here, it is that user's, the kernel unknown.
    sampler = ProcessSampler()
    found = owners(sampler, [root_kernel, theirs])
    assert found[forged] == unknown_kernel(other_user.pw_uid)


def test_no_kernel_is_interrupted_for_processes_tied_to_none():
    from colab_guard.act.policy import Policy
    from colab_guard.settings import Settings
    from tests.test_policy import MINER, detection, steps

    [plan] = Policy(Settings()).respond(unknown_kernel(1001),
                                        [detection(MINER, kernel=unknown_kernel(1001))])
    assert plan.action == "stop"
    assert [s[:2] for s in steps(plan)] == [("record", "incident log"), ("warn", "user"),
                                            ("stop", "pid 4242")]
