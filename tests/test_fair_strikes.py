"""Fair strikes: a program an installed distribution put there is stopped as usual, named on
its incident, and counts as no strike; the same program anywhere else, in a site-packages
folder the user made, edited after the install, or installed from a local path, is a strike.

A real wheel is built here (its console script and its module run the stand-in miner) and
pip-installed offline into a throwaway virtual environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import psutil
import pytest

from colab_guard.act.policy import Policy
from colab_guard.observe import procfs
from colab_guard.observe.model import Process
from colab_guard.observe.packages import PackageIndex, package_of
from colab_guard.record.incident import Action, Incident
from colab_guard.settings import Settings
from tests.conftest import STANDINS
from tests.standins import pool as standin_pool
from tests.harness import GuardedServer, wait_until
from tests.test_guard_integration import gone

PIP = [sys.executable, "-m", "pip"]
NAME, VERSION, MODULE, SCRIPT = "guardtest-miner", "1.2.3", "guardtest_miner", "guardtest-miner"
WALLET = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"


#: A program shipped as a binary in the package (a copy of sleep, named as a miner would be).
BINARY = f"{MODULE}/bin/xmrig"


def build_wheel(folder: Path, name: str = NAME, version: str = VERSION) -> Path:
    """A real wheel: the stand-in miner as a module, a console script that runs it, a binary."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": b"",
        f"{module}/bin/xmrig": Path(shutil.which("sleep")).read_bytes(),
        f"{module}/miner.py": (STANDINS / "miner.py").read_bytes(),
        f"{module}/common.py": (STANDINS / "common.py").read_bytes(),
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: colab-guard-tests\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist_info}/entry_points.txt": f"[console_scripts]\n{name} = {module}.miner:main\n".encode(),
    }
    record = "".join(f"{path},sha256={_digest(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist_info}/RECORD,,\n"
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist_info}/RECORD", record)
    return wheel


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path


def pip_install(venv: Path, *requirement: str) -> None:
    subprocess.run([*PIP, "--python", str(venv / "bin" / "python"), "install", "--no-index",
                    "--no-deps", "--disable-pip-version-check", "-q", *requirement], check=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv with the wheel installed by name from a local index folder (as from PyPI)."""
    root = tmp_path_factory.mktemp("fair-strikes")
    wheels = root / "wheels"
    build_wheel(wheels)
    venv = make_venv(root / "venv")
    pip_install(venv, "--find-links", str(wheels), NAME)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / BINARY).chmod(0o755)
    return {"root": root, "venv": venv, "site": site, "wheels": wheels,
            "script": venv / "bin" / SCRIPT, "module": site / MODULE / "miner.py"}


def run(argv: list[str], cwd: Path | None = None) -> psutil.Process:
    """Start a program that idles long enough to be looked at (its pool is unreachable)."""
    child = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = psutil.Process(child.pid)
    # Until it has exec'd, the child shows its parent's (pytest's) command line.
    wait_until(lambda: child.poll() is not None or any("stratum" in a for a in proc.cmdline()),
               what="the program started")
    assert child.poll() is None, "the program exited at once"
    return proc


@pytest.fixture
def programs():
    started = []

    def start(argv, cwd=None) -> Process:
        proc = run([str(a) for a in argv], cwd)
        started.append(proc)
        return Process(pid=proc.pid, ppid=proc.ppid(), name=proc.name(), exe=proc.exe(),
                       cmdline=proc.cmdline(), create_time=procfs.start_time(proc.pid))

    yield start
    for proc in started:
        try:
            proc.kill()
            proc.wait(10)
        except psutil.Error:
            pass


@pytest.fixture(scope="module")
def pool_port():
    server = standin_pool.serve()
    yield server.getsockname()[1]
    server.close()


def miner_args(port: int) -> list[str]:
    return ["-o", f"stratum+tcp://127.0.0.1:{port}", "-u", WALLET, "--seconds", "60"]


def strike(package) -> bool:
    incident = Incident(kernel_id="k", category="crypto-mining", severity="high", signature="s",
                        description="", user="u", actions=[Action("stop", "pid 1", "done")],
                        package=package.to_dict() if package else None)
    return Policy(Settings()).is_strike(incident)


# ------------------------------------------------------------ the rule, on real processes

def test_the_console_script_of_an_installed_distribution_names_it(installed, programs, pool_port):
    process = programs([installed["script"], *miner_args(pool_port)])
    package, refused = package_of([process], PackageIndex())
    assert refused is None
    assert (package.name, package.version) == (NAME, VERSION)
    assert package.path == str(installed["script"])
    assert not strike(package)


def test_a_module_file_of_the_distribution_run_as_a_script_names_it(installed, programs, pool_port):
    # python miner.py, started from the package's folder: a relative script path
    process = programs([installed["venv"] / "bin" / "python", "miner.py", *miner_args(pool_port)],
                       cwd=installed["module"].parent)
    package, _ = package_of([process], PackageIndex())
    assert package is not None and package.name == NAME
    assert package.path == str(installed["module"].parent / "miner.py")


def test_the_same_program_copied_outside_site_packages_is_a_strike(installed, programs, tmp_path,
                                                                    pool_port):
    copy = tmp_path / "miner"
    shutil.copytree(installed["module"].parent, copy)
    process = programs([sys.executable, copy / "miner.py", *miner_args(pool_port)])
    package, refused = package_of([process], PackageIndex())
    assert package is None and refused is None
    assert strike(package)


def test_a_site_packages_folder_the_user_made_is_a_strike(installed, programs, tmp_path, pool_port):
    fake = tmp_path / "work" / "site-packages" / MODULE
    shutil.copytree(installed["module"].parent, fake)
    # Even with a dist-info that lists it: the folder is no Python environment's.
    shutil.copytree(next(installed["site"].glob("*.dist-info")), fake.parent / f"{MODULE}-{VERSION}.dist-info")
    process = programs([sys.executable, fake / "miner.py", *miner_args(pool_port)])
    package, refused = package_of([process], PackageIndex())
    assert package is None
    assert "is not the site folder of a Python environment" in refused["reason"]


def test_a_package_file_edited_after_the_install_is_a_strike(installed, programs, tmp_path,
                                                             pool_port):
    venv = make_venv(tmp_path / "venv")
    pip_install(venv, "--find-links", str(installed["wheels"]), NAME)
    module = next((venv / "lib").glob(f"python*/site-packages/{MODULE}/miner.py"))
    module.write_text(module.read_text() + "\n# the user's own change\n")
    process = programs([venv / "bin" / "python", module, *miner_args(pool_port)])
    package, refused = package_of([process], PackageIndex())
    assert package is None and "edited after the install" in refused["reason"]


def test_a_distribution_installed_from_a_local_path_is_a_strike(installed, programs, tmp_path,
                                                                pool_port):
    # pip install ./mine: pip writes direct_url.json with a file:// URL
    wheel = build_wheel(tmp_path / "mine", name="guardtest-mine", version="0.1")
    venv = make_venv(tmp_path / "venv")
    pip_install(venv, str(wheel))
    direct_url = json.loads(next((venv / "lib").glob(
        "python*/site-packages/guardtest_mine-0.1.dist-info/direct_url.json")).read_text())
    assert direct_url["url"].startswith("file://")
    process = programs([venv / "bin" / "guardtest-mine", *miner_args(pool_port)])
    package, refused = package_of([process], PackageIndex())
    assert package is None and "installed from a local path" in refused["reason"]
    assert strike(package)


def test_a_binary_the_distribution_ships_names_it_as_it_runs(installed, tmp_path):
    binary = installed["site"] / BINARY
    child = subprocess.Popen([str(binary), "60"])
    try:
        proc = psutil.Process(child.pid)
        wait_until(lambda: proc.exe() == str(binary), what="the exec")
        process = Process(pid=proc.pid, ppid=proc.ppid(), name=proc.name(), exe=proc.exe(),
                          cmdline=proc.cmdline(), create_time=procfs.start_time(proc.pid))
        package, _ = package_of([process], PackageIndex())
        assert (package.name, package.path) == (NAME, str(binary))

        # The file swapped for another after the start (and back in content): not the one running.
        swapped = tmp_path / "swapped"
        shutil.copy(binary, swapped)
        os.replace(swapped, binary)
        package, refused = package_of([process], PackageIndex())
        assert package is None and "replaced after the program started" in refused["reason"]
    finally:
        child.kill()
        child.wait()


def test_the_shell_line_that_started_a_packaged_program_does_not_make_it_a_strike(
        installed, programs, pool_port):
    argv = " ".join([str(installed["script"]), *miner_args(pool_port)])
    shell = programs(["/bin/bash", "-c", f"{argv}; true"])  # "; true": bash forks, not execs
    child = wait_until(lambda: psutil.Process(shell.pid).children(), what="the shell's child")[0]
    try:
        wait_until(lambda: "stratum" in " ".join(child.cmdline()) and len(child.cmdline()) > 2,
                   what="the child's exec")
        packaged = Process(pid=child.pid, ppid=shell.pid, name=child.name(), exe=child.exe(),
                           cmdline=child.cmdline(), create_time=procfs.start_time(child.pid))
        package, _ = package_of([shell, packaged], PackageIndex())
        assert package is not None and package.name == NAME
    finally:
        child.kill()


def test_a_system_program_is_no_package_and_no_error(programs):
    sleeper = programs(["/bin/bash", "-c", "exec -a stratum-sleep sleep 60"])
    # bash's own command line already says "stratum": wait for the exec to sleep.
    wait_until(lambda: psutil.Process(sleeper.pid).cmdline()[0] == "stratum-sleep",
               what="the exec to sleep")
    sleeper.exe = psutil.Process(sleeper.pid).exe()
    assert package_of([sleeper], PackageIndex()) == (None, None)


def test_a_program_that_exec_d_since_the_sample_is_not_called_replaced(programs, tmp_path):
    """Sampled as bash, running sleep by the time it is looked up: not a package, and not
    refused as "replaced" (that reason would tell the hub of a tampered file)."""
    go = tmp_path / "go"
    shell = programs(["/bin/bash", "-c",
                      f": stratum; until [ -e {go} ]; do sleep 0.05; done; exec sleep 60"])
    assert shell.exe.endswith("bash")
    go.touch()
    wait_until(lambda: psutil.Process(shell.pid).exe().endswith("sleep"), what="the exec")
    assert package_of([shell], PackageIndex()) == (None, None)


def test_named_pipes_in_place_of_a_package_file_or_its_record_never_hang_the_lookup(
        installed, tmp_path):
    import threading

    venv = make_venv(tmp_path / "venv")
    pip_install(venv, "--find-links", str(installed["wheels"]), NAME)
    site = next((venv / "lib").glob("python*/site-packages"))
    module = site / MODULE / "miner.py"
    module.unlink()
    os.mkfifo(module)  # python blocks reading it; the guard must not
    child = subprocess.Popen([str(venv / "bin" / "python"), str(module)])
    try:
        proc = psutil.Process(child.pid)
        wait_until(lambda: str(module) in proc.cmdline(), what="the exec")
        process = Process(pid=proc.pid, ppid=proc.ppid(), name=proc.name(), exe=proc.exe(),
                          cmdline=proc.cmdline(), create_time=procfs.start_time(proc.pid))
        answers = []

        def look():
            answers.append(package_of([process], PackageIndex()))
            record = next(site.glob("*.dist-info")) / "RECORD"
            record.unlink()
            os.mkfifo(record)
            answers.append(package_of([process], PackageIndex()))

        looking = threading.Thread(target=look, daemon=True)
        looking.start()
        looking.join(30)
        assert not looking.is_alive(), "the lookup hangs on a named pipe"
        assert [package for package, _ in answers] == [None, None]
        assert "differs from what" in answers[0][1]["reason"]
        assert "no installed distribution lists it" in answers[1][1]["reason"]
    finally:
        child.kill()
        child.wait()


def test_a_program_gone_before_it_is_looked_at_fails_safe(installed):
    gone_process = Process(pid=2**22 + 7, exe=str(installed["venv"] / "bin" / "python"),
                           cmdline=["python", "miner.py"], create_time=1.0)
    assert package_of([gone_process], PackageIndex()) == (None, None)


def test_a_package_program_beside_the_users_own_is_a_strike(installed, programs, tmp_path,
                                                            pool_port):
    packaged = programs([installed["script"], *miner_args(pool_port)])
    copy = tmp_path / "miner.py"
    shutil.copy(installed["module"], copy)
    shutil.copy(installed["module"].parent / "common.py", tmp_path / "common.py")
    own = programs([sys.executable, copy, *miner_args(pool_port)])
    assert package_of([packaged, own], PackageIndex())[0] is None


# ------------------------------------------------------------ end to end, in a guarded server

def test_a_packaged_miner_is_stopped_named_and_no_strike_the_copy_is_one(installed, pool_port,
                                                                         tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(installed["module"].parent, copy)
    server = GuardedServer({"sample_interval": 0.5, "stop_grace": 1.0, "cell_checks": False},
                           folder=tmp_path / "server")
    with server:
        kernel_id, client = server.start_kernel()
        try:
            packaged = _start_in_kernel(server, client, kernel_id,
                                        [str(installed["script"]), *miner_args(pool_port)])
            assert packaged["package"] == {"name": NAME, "version": VERSION,
                                           "path": str(installed["script"])}
            assert packaged["strike"] is False
            assert any(a["action"] == "stop" and a["outcome"] in ("done", "gone")
                       for a in packaged["actions"])
            notice = _notice_text(client)
            assert f"installed package {NAME} {VERSION}" in notice
            assert server.api("GET", "colab-guard/api/status")["strikes"] == 0
            listed = server.api("GET", f"colab-guard/api/incidents/{packaged['id']}")
            assert listed["package"]["name"] == NAME

            copied = _start_in_kernel(server, client, kernel_id,
                                      [sys.executable, str(copy / "miner.py"), *miner_args(pool_port)])
            assert copied["package"] is None and copied["strike"] is True
            assert server.api("GET", "colab-guard/api/status")["strikes"] == 1
        finally:
            client.stop_channels()


def _start_in_kernel(server, client, kernel_id, argv) -> dict:
    known = {i["id"] for i in server.incidents(kernel_id)}
    client.execute(f"import subprocess\np = subprocess.Popen({argv!r})\n")
    found = wait_until(lambda: [i for i in server.incidents(kernel_id)
                                if i["id"] not in known and i["status"] == "done"],
                       timeout=60, what="the incident")
    incident = found[0]
    wait_until(lambda: gone(incident["evidence"]["processes"][0]["pid"]), what="the program stopped")
    return incident


def _notice_text(client) -> str:
    """The guard's notices the next cell shows (a notice that came between cells waits for it)."""
    msg_id = client.execute("pass")
    texts = []
    while True:
        msg = client.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "display_data":
            texts.append(msg["content"]["data"].get("text/plain", ""))
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "\n".join(texts)
