"""A reduced load on a real guarded server (the full one is benchmarks/load.py).

Five kernels of five children: every process attributed to its kernel, and ticks keep
coming, also after a burst of early ticks. A fork storm in one kernel: another kernel's
miner is still stopped during it, and the sampler's state stays bounded by the live
processes. No timing is asserted beyond generous time limits.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import psutil
import pytest

from tests.conftest import PYTHON, STANDINS, incidents_in, wait_for

pytestmark = pytest.mark.integration

CHILDREN = ("import subprocess\n_kids = [subprocess.Popen(['sleep', '300']) for _ in range(5)]\n"
            "print('PIDS', *[p.pid for p in _kids], flush=True)\n")

STORM = str(Path(__file__).resolve().parent / "standins" / "fork_storm.py")


def numbers_after(outputs, word: str) -> list[int]:
    for out in outputs:
        for line in out.get("text", "").splitlines():
            if line.startswith(word + " "):
                return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no {word} line in {outputs!r}")


def kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def owners(sampler, pids) -> dict[int, str | None]:
    """Whom the sampler attributes each pid to (read while its thread may be writing)."""
    while True:
        try:
            return {pid: sampler.owner_of(pid) for pid in pids}
        except RuntimeError:  # its dict changed size under us: read again
            continue


@pytest.fixture
def five_kernels(start_kernel):
    return [start_kernel() for _ in range(5)]


async def test_five_kernels_of_five_children_are_all_attributed_and_ticks_keep_coming(
        five_kernels, guard):
    expected: dict[int, str] = {}
    try:
        for kernel in five_kernels:
            _, outputs = await kernel.run(CHILDREN)
            expected.update({pid: kernel.kernel_id for pid in numbers_after(outputs, "PIDS")})
        assert len(expected) == 25
        sampler = guard.monitor.sampler
        await wait_for(lambda: owners(sampler, expected) == expected, timeout=20)
        assert guard.status()["kernels_monitored"] == 5

        # A burst of early ticks (what the kernel hook's reports cause) must not hold up
        # the periodic ones that follow.
        for _ in range(30):
            guard.monitor.check_soon()
            await asyncio.sleep(0.01)
        ticks = guard.monitor.ticks
        await wait_for(lambda: guard.monitor.ticks >= ticks + 4, timeout=10)
        assert owners(sampler, expected) == expected
    finally:
        kill(expected)


@pytest.fixture
def two_kernels(start_kernel):
    return start_kernel(), start_kernel()


async def test_a_fork_storm_leaves_other_kernels_guarded_and_the_state_bounded(
        two_kernels, guard, pool, guard_config, tmp_path):
    storming, other = two_kernels
    count_file = tmp_path / "forked"
    _, outputs = await storming.run(
        f"import subprocess, sys\n_storm = subprocess.Popen([sys.executable, {STORM!r}, "
        f"'300', '15', {str(count_file)!r}])\nprint('STORM', _storm.pid, flush=True)\n")
    [storm] = numbers_after(outputs, "STORM")
    sampler = guard.monitor.sampler
    try:
        await wait_for(lambda: len(psutil.Process(storm).children()) > 0, timeout=30)  # under way
        reply, outputs = await other.run(
            f"import subprocess\np = subprocess.Popen([{PYTHON!r}, {str(STANDINS / 'miner.py')!r}, "
            f"'-o', 'stratum+tcp://127.0.0.1:{pool}'])\nprint('PIDS', p.pid, flush=True)\np.wait()\n",
            timeout=60)
        [miner] = numbers_after(outputs, "PIDS")
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        [incident] = await wait_for(lambda: [i for i in incidents_in(guard_config["incident_log"])
                                             if i["status"] == "done"], timeout=20)
        assert incident["kernel_id"] == other.kernel_id and incident["category"] == "crypto-mining"
        await wait_for(lambda: gone(miner))
        assert not gone(storm)  # all this happened during the storm

        await wait_for(count_file.exists, timeout=40)
        assert int(count_file.read_text()) >= 500  # it did storm
        ticks = guard.monitor.ticks
        await wait_for(lambda: guard.monitor.ticks >= ticks + 2, timeout=10)
        # What the sampler keeps is for live processes only: the storm's thousands are gone.
        assert sampler.tracked() <= len(psutil.pids()) + 20
        assert len(guard.engine._since) < 100
        assert [i["kernel_id"] for i in incidents_in(guard_config["incident_log"])] == \
            [other.kernel_id]  # nothing in the storm was blamed on anyone
    finally:
        kill([storm])
