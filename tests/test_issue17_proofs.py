"""Issue #17's framing attack on a real guarded server: from kernel B, an orphan (double fork,
setsid) whose environment names kernel A runs a miner. The guard stops the miner and records
it for B, or for no kernel where nothing ties it, but never for A; A is not interrupted (a
cell running in A runs to its end)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest

from colab_guard.observe.attribution import KERNEL_ENV_MARKER, unknown_kernel
from tests.harness import wait_until
from tests.test_coalesce import MINER, WALLET
from tests.test_redteam_evasions import (LIMIT, USER, Kernel, _alive,  # noqa: F401 (fixtures)
                                         pool, server)

pytestmark = pytest.mark.integration

A_CELL_SECONDS = 12  # A's cell outlasts the miner's detection, its stop and a late tick

#: Double-forks the program given, in a session of its own, its environment naming the kernel
#: given; writes the orphan's pid to a file (what a cell can do, started as a file so that the
#: cell check does not see it).
DETACH = """\
import os, sys
pid_file, named_kernel, *argv = sys.argv[1:]
if os.fork() == 0:
    os.setsid()
    child = os.fork()
    if child == 0:
        os.execve(argv[0], argv, {**os.environ, %r: named_kernel})
    with open(pid_file, "w") as f:
        f.write(str(child))
    os._exit(0)
os.wait()
""" % KERNEL_ENV_MARKER


class _LongCell(threading.Thread):
    """A cell running in a kernel, on a thread of its own: its reply and output once done."""

    def __init__(self, kernel: Kernel, started: Path):
        super().__init__(daemon=True)
        self.kernel, self.reply, self.text = kernel, None, ""
        self.code = (f"import time\nopen({str(started)!r}, 'w').close()\n"
                     f"for _ in range({A_CELL_SECONDS * 10}):\n    time.sleep(0.1)\n"
                     "print('A ran to its end')\n")

    def run(self) -> None:
        self.reply, self.text = self.kernel.run(self.code, timeout=A_CELL_SECONDS + 60)


def test_an_orphan_of_kernel_b_naming_kernel_a_never_frames_a(server, pool, tmp_path):
    a, b = Kernel(server), Kernel(server)
    orphan = None
    try:
        a_started = tmp_path / "a-started"
        cell = _LongCell(a, a_started)
        cell.start()
        wait_until(a_started.exists, timeout=30, what="A's cell running")

        detach, pid_file = tmp_path / "detach.py", tmp_path / "orphan.pid"
        detach.write_text(DETACH)
        miner = [sys.executable, str(MINER), "-o",
                 f"stratum+tcp://127.0.0.1:{pool}", "-u", WALLET, "-p", "x"]
        _, started = b.start([sys.executable, str(detach), str(pid_file), a.id, *miner])
        wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=30,
                   what="the orphan's pid")
        orphan = int(pid_file.read_text())

        found = wait_until(lambda: _incidents_naming(server, orphan), timeout=LIMIT + 10,
                           interval=0.05, what="an incident naming the orphan")
        incident = found[0]
        late = datetime.fromisoformat(incident["time"]).timestamp() - started
        print(f"recorded {late:.2f} s after the start, for kernel {incident['kernel_id']} "
              f"(B {b.id}, A {a.id})")
        assert late <= LIMIT, late
        assert incident["category"] == "crypto-mining", incident
        assert incident["user"] == USER
        # B, whose cell started it, or no kernel where nothing ties it to B; never A
        assert incident["kernel_id"] in (b.id, unknown_kernel(os.getuid())), incident
        wait_until(lambda: not _alive(orphan), timeout=15, what="the miner stopped")
        assert len(_incidents_naming(server, orphan)) == 1

        cell.join(A_CELL_SECONDS + 60)
        assert cell.reply is not None and cell.reply["status"] == "ok", (cell.reply, cell.text)
        assert "A ran to its end" in cell.text
        assert server.incidents(a.id) == []  # nothing recorded against A, no action on it
    finally:
        if orphan is not None and _alive(orphan):
            os.kill(orphan, signal.SIGKILL)
        a.close()
        b.close()


def _incidents_naming(server, pid: int) -> list[dict]:
    return [i for i in server.incidents()
            if any(p.get("pid") == pid for p in i["evidence"].get("processes", []))]
