"""Issue #17 items the audit (AUDIT17.md) found with no test of their own, on the red team's real
guarded server (tests/test_redteam_evasions.py: cell checks on, argv read from files so that no
cell check sees the program, everything on loopback).

- a face-swap stand-in whose options (source, target, model) come from an ini file: nothing on
  its command line, nothing in its code, its swap model opened 0.8 s in and held;
- a UPX-packed hydra under a neutral name;
- the in-kernel Stratum miner with its pool on 8443 and throttled to 70 %, asserted to 2 s
  (tests/test_behaviour_mining.py allows the 15 s window);
- the blinding attacks all running at once (argument areas of 450,000 tiny words, 40 processes
  flipping arguments crafted against a built-in regex, a program padded with 64 MiB of needle
  prefixes, scripts swapped for FIFOs once queued, a script that is a FIFO): the server still
  answers its API at once, a miner known by name is stopped within 1 s of its start, and a
  renamed tool known only by its file's content within 2 s (the content scanner not blinded);
- the cells of the honest network workloads that other files run with cell checks off, through
  the cell check.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime

import pytest

from tests.harness import wait_until
from tests.test_redteam_evasions import (  # noqa: F401 (fixtures)
    LIMIT, PYTHON, STANDINS, USER, Kernel, _alive, _copy, _port, assert_stopped_in_time, kernel,
    server)

NAMED_LIMIT = 1.0  # issue #17: a named miner stopped within 1 s while the blinding attacks run

# ---------------------------------------------------------------- a face swap configured by a file

#: A roop-like stand-in: every option from an ini file, the swap model opened and held while it
#: "processes frames" (CPU, as inference would); a neutral name, no tool word in its code.
RENDER = '''
import configparser, hashlib, sys, time
config = configparser.ConfigParser()
config.read(sys.argv[1])
job = config["job"]
time.sleep(float(job["warm_up"]))  # its frames read first, as a tool starts
held = open(job["model"], "rb")
frame = open(job["source"], "rb").read()
end = time.monotonic() + 60
while time.monotonic() < end:
    held.seek(0)
    frame = hashlib.sha1(frame + held.read(1024)).digest() * 200
    time.sleep(0.01)
'''


def test_a_face_swap_stand_in_whose_options_come_from_an_ini_file_is_stopped(kernel, tmp_path):
    """Missing from the suite (issue #17's evasion list): nothing on its command line or in its
    code names a face swap; its swap model, opened 0.8 s after its start, is. Was seen only at
    the next fd walk, 5 s after its first read (5.1 s here); now a young process whose fd count
    moved is walked at that read (processes.py _walk_fds)."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "inswapper_128.onnx").write_bytes(os.urandom(1 << 20))
    (tmp_path / "me.jpg").write_bytes(os.urandom(4096))
    settings = tmp_path / "settings.ini"
    settings.write_text(f"[job]\nsource = {tmp_path / 'me.jpg'}\ntarget = {tmp_path / 'clip.mp4'}\n"
                        f"output = {tmp_path / 'out.mp4'}\nframe_processor = face_swapper\n"
                        f"model = {models / 'inswapper_128.onnx'}\nwarm_up = 0.8\n")
    script = tmp_path / "render.py"
    script.write_text(RENDER)
    pid, started = kernel.start([PYTHON, str(script), str(settings)])
    assert_stopped_in_time(kernel, pid, started, "deepfake")


# ---------------------------------------------------------------- a packed login cracker


def test_a_upx_packed_login_cracker_is_stopped(kernel, tmp_path):
    """Issue #17's packed hydra (its packed xmrig cannot be tested: xmrig is no Debian package;
    john, dropbear, microsocks and nmap packed are in tests/test_redteam_evasions.py). Fails in
    CI where hydra is missing (benchmarks/scenarios/install.sh --small installs it)."""
    from tests.standins.holder import Holder
    from tests.test_redteam_evasions import _packed
    tool = _packed("hydra", tmp_path, "syncd")
    # Its log-ins and targets in files (-C login:password pairs, -M servers): no option on its
    # command line tells a cracker (cracking-hydra-options), only its unpacked memory does.
    (tmp_path / "pairs").write_text("\n".join(f"admin:guess{i}" for i in range(5000)) + "\n")
    target = Holder()  # an FTP server that never answers: the cracker keeps trying
    (tmp_path / "servers").write_text(f"127.0.0.1:{target.port}\n")
    try:
        pid, started = kernel.start([tool, "-I", "-C", str(tmp_path / "pairs"),
                                     "-M", str(tmp_path / "servers"), "-t", "4", "ftp"])
        assert_stopped_in_time(kernel, pid, started, "password-cracking")
        incident = kernel.incidents("password-cracking")[0]
        assert incident["signature"] == "cracking-tool-content", incident["signature"]
    finally:
        target.close()


# ---------------------------------------------------------------- a Python miner in the kernel


@pytest.fixture
def pool_8443():
    from tests.standins import pool as standin_pool
    try:
        server = standin_pool.serve(8443)
    except OSError:
        server = standin_pool.serve(0)  # taken on this machine: any other port is as telling
    yield server.getsockname()[1]
    server.close()


def test_an_in_kernel_stratum_miner_on_8443_throttled_to_70_percent_is_stopped(kernel, pool_8443,
                                                                              tmp_path):
    """The issue's in-kernel miner, both variants at once: its pool on 8443 (no listed pool
    port), 70 % of a core; its method names assembled at run time, imported from a module under
    a neutral name. Stopped within 2 s (tests/test_behaviour_mining.py allows the 15 s window)."""
    shutil.copy(STANDINS / "quiet_miner.py", tmp_path / "weights_util.py")
    started = time.time()
    reply, text = kernel.run(f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n"
                             "import weights_util\n"
                             f"weights_util.run('127.0.0.1', {pool_8443}, 0.7, {LIMIT + 5})",
                             timeout=60)
    assert reply["status"] == "error", text  # interrupted (or refused): it did not run its course
    found = wait_until(lambda: kernel.incidents("crypto-mining"), timeout=10,
                       what="a mining incident")
    assert (found[0]["user"], found[0]["kernel_id"]) == (USER, kernel.id)
    late = datetime.fromisoformat(found[0]["time"]).timestamp() - started
    assert late <= LIMIT, f"recorded {late:.2f} s after the start ({found[0]['signature']})"
    assert len(kernel.incidents("crypto-mining")) == 1


# ---------------------------------------------------------------- the blinding attacks, together

#: Run in the kernel: starts the attacks from a JSON plan, prints their pids. Arguments of
#: 450,000 words need a bigger stack limit (execve allows a quarter of it).
ATTACKS = '''
import json, os, resource, subprocess, sys, time
plan = json.load(open(PLAN))
def big_stack():
    resource.setrlimit(resource.RLIMIT_STACK, (256 << 20, resource.RLIM_INFINITY))
quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
pids = []
for _ in range(plan["wordy"]):
    pids.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]
                                 + ["ab"] * 450_000, preexec_fn=big_stack, **quiet).pid)
for _ in range(plan["flippers"]):
    pids.append(subprocess.Popen(plan["flipper"], **quiet).pid)
pids.append(subprocess.Popen([plan["padded"], "600"], **quiet).pid)
pids.append(subprocess.Popen([sys.executable, plan["fifo_script"]], **quiet).pid)
for job in plan["swapped"]:  # each script read by Python, then a FIFO in its place
    pids.append(subprocess.Popen([sys.executable, job], **quiet).pid)
    time.sleep(0.05)
    os.unlink(job)
    os.mkfifo(job)
print(json.dumps(pids))
'''


def _needle_prefixes(size: int) -> bytes:
    """``size`` bytes of every marker needle less its last byte: the search's worst case."""
    from colab_guard.observe.content import SEARCH
    blob = b"".join(n[:-1] + b"\x00" for n in SEARCH.needles)
    return (blob * (size // len(blob) + 1))[:size]


def _plan(tmp_path) -> dict:
    from tests.test_regex_budget import _tuned_length
    padded = tmp_path / "render-worker"  # a real program with 64 MiB of needle prefixes after it
    shutil.copy(shutil.which("sleep"), padded)
    with open(padded, "ab") as f:
        for _ in range(64):
            f.write(_needle_prefixes(1 << 20))
    padded.chmod(0o755)
    fifo_script = tmp_path / "run.py"
    os.mkfifo(fifo_script)
    swapped = []
    for i in range(5):
        job = tmp_path / f"job{i}.py"
        job.write_text("import time\ntime.sleep(600)\n")
        swapped.append(str(job))
    size = _tuned_length("nc -e")
    flipper = [PYTHON, str(STANDINS / "argv_flipper.py"), "nc -e", str(size), "0.3",
               "x" * (size + 16)]
    return {"wordy": 8, "flippers": 40, "flipper": flipper, "padded": str(padded),
            "fifo_script": str(fifo_script), "swapped": swapped}


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def _api_seconds(kernel: Kernel) -> float:
    started = time.monotonic()
    kernel.server.api("GET", "api/kernels", timeout=30)
    return time.monotonic() - started


def test_while_the_blinding_attacks_run_a_named_miner_is_stopped_within_a_second(kernel,
                                                                                tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(_plan(tmp_path)))
    reply, text = kernel.run(f"PLAN = {str(plan)!r}\n" + ATTACKS, timeout=120)
    assert reply["status"] == "ok", text
    attackers = json.loads(text.strip().splitlines()[-1])
    try:
        # The guard has had a few ticks with all of them (every one read, the padded program
        # queued for its scan); none of them is an offence.
        ticks_seen = time.monotonic() + 3.0
        wait_until(lambda: time.monotonic() > ticks_seen, timeout=10, interval=0.2,
                   what="a few ticks with the attacks running")
        assert kernel.incidents() == [], [i["signature"] for i in kernel.incidents()]
        assert all(_alive(p) for p in attackers)  # every attack still under way
        assert max(_api_seconds(kernel) for _ in range(5)) < 1.0
        miner = _copy("sleep", tmp_path, "xmrig")
        pid, started = kernel.start([miner, "600"])
        assert_stopped_in_time(kernel, pid, started, "crypto-mining", limit=NAMED_LIMIT)
        recorded = datetime.fromisoformat(kernel.incidents("crypto-mining")[0]["time"])
        print(f"named miner recorded {recorded.timestamp() - started:.2f} s after its start")
        # The content scanner is not blinded: a renamed tool known only by its file's content,
        # started from another kernel of the user (the first one's incident is its own).
        other = Kernel(kernel.server)
        try:
            tool = _copy("microsocks", tmp_path, "kworker")
            pid, started = other.start([tool, "-i", "127.0.0.1", "-p", str(_port())])
            assert_stopped_in_time(other, pid, started, "proxy", limit=LIMIT)
            assert _api_seconds(other) < 1.0
        finally:
            other.close()
    finally:
        _kill_all(attackers)


# ---------------------------------------------------------------- honest cells, as deployed

def _honest_network_cells() -> dict[str, str]:
    """The cells of the honest workloads tests/test_behaviour_network.py and
    test_behaviour_mining.py run with cell checks off (their fixtures' default), as written."""
    from tests.test_behaviour_network import BENCHMARK, LLM_SERVER, WEB_APP
    return {
        "a 200-client benchmark of the user's own LLM server": (
            "import subprocess, sys\n"
            f"server = subprocess.Popen([sys.executable, '-c', {LLM_SERVER!r}], "
            "stdout=subprocess.PIPE, text=True)\n"
            "port = int(server.stdout.readline())\n" + BENCHMARK
            + "n = await bench(port, 200, 16)\nserver.kill(); print('done', n)\n"),
        "a web app in the kernel for 120 users behind one proxy": WEB_APP,
        "a small API on port 6900": WEB_APP.replace("('127.0.0.1', 0)", "('0.0.0.0', 6900)"),
        "a CPU-bound loop asking a service on a pool port": (
            "import hashlib, socket, time\n"
            "s = socket.create_connection(('127.0.0.1', 3333))\n"
            "f = s.makefile('rwb'); end = time.time() + 23; n = 0; d = b'x'\n"
            "while time.time() < end:\n"
            "    for _ in range(20000): d = hashlib.sha256(d).digest()\n"
            "    f.write(b'{\"get\": %d}\\n' % n); f.flush(); f.readline(); n += 1\n"
            "print('done', n)\n"),
    }


@pytest.mark.parametrize("name", sorted(_honest_network_cells()))
def test_the_honest_network_workloads_cells_pass_the_cell_check(name):
    """Their end-to-end tests run with cell checks off; deployed, the check is on: it must
    find nothing in them either."""
    from tests.test_redteam_evasions import _cell_signatures
    assert _cell_signatures(_honest_network_cells()[name]) == set()
