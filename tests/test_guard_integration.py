"""A real guarded server, real kernels, real processes: forbidden use is stopped and recorded."""

from __future__ import annotations

import json
import os
import shutil

import psutil
import pytest

from colab_guard.detect.signatures import load_signatures
from tests.conftest import PYTHON, STANDINS, KernelRunner, incidents_in, wait_for

pytestmark = pytest.mark.integration

MINER = STANDINS / "miner.py"
WALLET = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def popen_cell(argv: list[str], then: str = "p.wait()") -> str:
    """A cell that starts ``argv`` with subprocess.Popen, prints its pid, then runs ``then``."""
    return (f"import subprocess, time\np = subprocess.Popen({argv!r})\n"
            f"print('PID', p.pid, flush=True)\n{then}\n")


#: The end of a cell that lets the program run a while and says whether it survived.
STILL_ALIVE_AFTER = "time.sleep({})\nprint('alive', p.poll() is None)\np.kill(); p.wait()"


def pid_from(outputs) -> int:
    for line in KernelRunner.text(outputs).splitlines():
        if line.startswith("PID "):
            return int(line.split()[1])
    raise AssertionError(f"no PID line in {outputs!r}")


async def only_incident(guard_config, category: str) -> dict:
    found = await wait_for(lambda: [i for i in incidents_in(guard_config["incident_log"])
                                    if i["status"] == "done"], timeout=20)
    assert len(found) == 1, [(i["summary"], [(p.get("pid"), p.get("ppid"), p.get("cmdline"))
                                             for p in i["evidence"].get("processes", [])])
                             for i in found]
    assert found[0]["category"] == category
    return found[0]


async def test_miner_started_from_python_is_stopped_and_kernel_interrupted(
        kernel, pool, guard_config, jp_fetch):
    code = popen_cell([PYTHON, str(MINER), "-o", f"stratum+tcp://127.0.0.1:{pool}", "-u", WALLET,
                       "-p", "x"])
    reply, outputs = await kernel.run(code, timeout=60)
    pid = pid_from(outputs)

    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    await wait_for(lambda: gone(pid))
    incident = await only_incident(guard_config, "crypto-mining")
    assert incident["kernel_id"] == kernel.kernel_id
    assert incident["evidence"]["processes"][0]["pid"] == pid
    assert f"stratum+tcp://127.0.0.1:{pool}" in incident["evidence"]["processes"][0]["cmdline"]
    actions = {(a["action"], a["target"]): a["outcome"] for a in incident["actions"]}
    assert actions[("interrupt", "kernel")] == "done"
    assert actions[("stop", f"pid {pid}")] in ("done", "gone")

    response = await jp_fetch("colab-guard", "api", "incidents")
    listed = json.loads(response.body)["incidents"]
    assert [i["id"] for i in listed] == [incident["id"]]


async def test_miner_detached_with_setsid_and_nohup_is_still_stopped(kernel, pool, guard_config):
    # The shell line and its subshell exit at once; the miner is reparented to init, in a
    # session of its own (out of reach of the kernel's process-group interrupt).
    # (The sleep keeps the pty open until nohup ignores SIGHUP, as a user's would.)
    code = (f"!(nohup setsid {PYTHON} {MINER} -o stratum+tcp://127.0.0.1:{pool} -u {WALLET} -p x "
            f"> /dev/null 2>&1 &); sleep 1\n")
    await kernel.run(code, timeout=60)

    incident = await only_incident(guard_config, "crypto-mining")
    pid = incident["evidence"]["processes"][0]["pid"]
    assert incident["evidence"]["processes"][0]["ppid"] == 1  # it had left the kernel's tree
    await wait_for(lambda: gone(pid))
    assert "stratum+tcp" in incident["evidence"]["processes"][0]["cmdline"]
    assert [p for p in psutil.process_iter(["cmdline"])
            if str(MINER) in " ".join(p.info["cmdline"] or []) and p.status() != "zombie"] == []


async def test_renamed_miner_on_an_unusual_port_is_stopped(kernel, pool, guard_config, tmp_path):
    # A copy of the interpreter named like a kernel thread, no stratum:// scheme, pool on a
    # random high port, and the process renames itself after start.
    disguised = tmp_path / "kworker"
    shutil.copy(os.path.realpath(PYTHON), disguised)
    code = popen_cell([str(disguised), str(MINER), "-o", f"127.0.0.1:{pool}", "-u", WALLET,
                       "-p", "x", "--rename", "kworker/0:1"])
    reply, outputs = await kernel.run(code, timeout=60)
    pid = pid_from(outputs)
    assert reply["status"] == "error"
    await wait_for(lambda: gone(pid))
    incident = await only_incident(guard_config, "crypto-mining")
    assert incident["evidence"]["processes"][0]["name"] == "kworker/0:1"
    assert "mining-wallet-login" in incident["signatures"]


async def test_cracker_is_stopped(kernel, guard_config, tmp_path):
    hashcat = tmp_path / "hashcat"
    hashcat.write_text(f"#!{PYTHON}\n" + (STANDINS / "cracker.py").read_text()
                       .replace("os.path.dirname(os.path.realpath(__file__))", repr(str(STANDINS))))
    hashcat.chmod(0o755)
    (tmp_path / "hashes.txt").write_text("5f4dcc3b5aa765d61d8327deb882cf99\n")
    # A ! line: IPython catches the interrupt itself and prints ^C; the program is stopped.
    code = f"!cd {tmp_path} && ./hashcat -m 0 -a 3 hashes.txt '?a?a?a?a?a'\n"
    await kernel.run(code, timeout=60)
    incident = await only_incident(guard_config, "password-cracking")
    first, names = incident["evidence"]["processes"][0], [p["name"] for p in incident["evidence"]["processes"]]
    if "hashcat" in names:
        # The tool itself comes first in the evidence, before the shell that runs it.
        assert first["name"] == "hashcat"
        assert incident["summary"].startswith("password-cracking: hashcat (pid ")
    else:
        # A tick that fell between the shell's start and its fork (the cell's start asks
        # for one at once) catches the shell alone, its command line naming the tool.
        assert names == [first["name"]] and "./hashcat -m 0 -a 3" in first["cmdline"]
    await wait_for(lambda: all(gone(p["pid"]) for p in incident["evidence"]["processes"]))


async def test_torrent_client_is_stopped(kernel, tracker, guard_config):
    link = (f"magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567"
            f"&tr=http://127.0.0.1:{tracker}/announce")
    code = popen_cell([PYTHON, str(STANDINS / "torrent.py"), link])
    reply, outputs = await kernel.run(code, timeout=60)
    pid = pid_from(outputs)
    assert reply["status"] == "error"
    await wait_for(lambda: gone(pid))
    incident = await only_incident(guard_config, "torrenting")
    assert "torrent-magnet-link" in incident["signatures"]


@pytest.fixture
def dry_run(guard_config):
    guard_config["dry_run"] = True


async def test_dry_run_records_and_does_not_act(dry_run, kernel, pool, guard_config):
    code = popen_cell([PYTHON, str(MINER), "-o", f"stratum+tcp://127.0.0.1:{pool}"],
                      then=STILL_ALIVE_AFTER.format(4))
    reply, outputs = await kernel.run(code, timeout=60)
    assert reply["status"] == "ok"
    assert "alive True" in KernelRunner.text(outputs)
    incident = await only_incident(guard_config, "crypto-mining")
    assert incident["dry_run"] is True
    assert {a["outcome"] for a in incident["actions"] if a["action"] in ("stop", "interrupt")} == {"would"}


@pytest.fixture
def mining_rules_off(guard_config):
    rules = load_signatures().signatures.values()
    guard_config["disabled_signatures"] = [s.id for s in rules if s.category == "crypto-mining"]


async def test_disabled_signatures_do_not_fire(mining_rules_off, kernel, pool, guard_config):
    code = popen_cell([PYTHON, str(MINER), "-o", f"stratum+tcp://127.0.0.1:{pool}"],
                      then=STILL_ALIVE_AFTER.format(3))
    reply, outputs = await kernel.run(code, timeout=60)
    assert reply["status"] == "ok"
    assert "alive True" in KernelRunner.text(outputs)
    assert incidents_in(guard_config["incident_log"]) == []


@pytest.fixture
def fast_library_reads(guard_config):
    guard_config["libraries_refresh"] = 0.2


async def test_abuse_from_inside_the_kernel_interrupts_then_shuts_it_down(
        fast_library_reads, kernel, guard_config, guard, tmp_path):
    # A mining hash library loaded into the kernel process itself (a real shared object
    # under the name of RandomX's): nothing to stop but the kernel.
    fake = tmp_path / "librandomx.so"
    shutil.copy(ctypes_util_find("m"), fake)
    code = (f"import ctypes, time\nlib = ctypes.CDLL({str(fake)!r})\n"
            f"time.sleep(30)\n")
    reply, _ = await kernel.run(code, timeout=60)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"

    # The library stays loaded, so the behaviour goes on: the kernel is shut down.
    km = guard.serverapp.kernel_manager
    await wait_for(lambda: kernel.kernel_id not in km.list_kernel_ids(), timeout=30)
    # in the interrupt's incident: one offence, one incident (and one strike)
    incidents = await wait_for(lambda: [i for i in incidents_in(guard_config["incident_log"])
                                        if i["status"] == "done" and
                                        i["actions"][-1]["action"] == "shutdown"], timeout=30)
    assert incidents == incidents_in(guard_config["incident_log"])
    assert [i["signature"] for i in incidents] == ["mining-library-loaded"]
    assert incidents[0]["evidence"]["processes"][0]["is_kernel"] is True
    assert [(a["action"], a["outcome"]) for a in incidents[0]["actions"]
            if a["target"] == "kernel"] == [("interrupt", "done"), ("shutdown", "done")]
    assert incidents[0]["strike"] and "escalation" in incidents[0]["evidence"]


def ctypes_util_find(name: str) -> str:
    import ctypes.util

    found = ctypes.util.find_library(name)
    for folder in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib"):
        path = os.path.join(folder, found or "")
        if found and os.path.exists(path):
            return path
    raise AssertionError(f"no lib{name} on this machine")
