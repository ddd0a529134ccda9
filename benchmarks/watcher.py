"""The node watcher's own CPU on many users' idle kernels, with activity, and its exec-to-stop latency.

    ./dev bench watcher [--users 50] [--kernels 5] [--processes 20] [--small-users 10]
                        [--seconds 20] [--runs 3] [--exec-rates 10,50] [--busy 3]
                        [--latency-runs 20] [--json FILE] [--profile DIR]

As root. Simulated users: Unix users made for the run (``cgb<pid>-NN``, no home; removed at
the end with every process they have). Each user runs a stand-in Jupyter server
(``benchmarks/watcher_standins/``) that starts ``--kernels`` kernel stand-ins the way
jupyter_client starts kernels: a session of their own, ``COLAB_GUARD_KERNEL_ID`` and
``JPY_SESSION_NAME`` in their environment, ``-f …/kernel-<id>.json`` on their command line.
Each kernel starts ``--processes`` - 1 idle children (``sleep``) and wakes once a second, as an
idle ipykernel does. Real ipykernels would not fit 250 times in this machine's memory and CPU;
what the watcher reads of a process (its stat, uid, environment, command line, schedstat, fds)
is the same for these.

``python -m colab_guard.watch`` runs as root, watching only these users (``Watcher.users``: the
other processes on the machine are never its to act on), sampling every second, process events
on. Its CPU is its process's utime + stime from ``/proc/PID/stat`` over ``--seconds`` windows,
``--runs`` of them per scenario (median and range):

- idle, first with ``--small-users`` users (1,000 processes by default), then with all of them;
- with activity: ``/bin/true`` started at each rate of ``--exec-rates`` a second from one
  kernel; ``--busy`` processes each using half a core (pure computation) in as many kernels.

Then the latency trials, from a kernel with no children of user 0: ``--latency-runs`` times each,
a child notes CLOCK_MONOTONIC just before it execs a miner, its parent notes when it reaps it
(waitpid); the difference is exec to stop. The miners (the pool: the stand-in pool on
127.0.0.1):

- ``name``: the stand-in miner under the name ``xmrig`` (known by its name at its exec);
- ``args``: the stand-in miner as ``python3 miner.py -o stratum+tcp://… -u WALLET -p x
  --donate-level 1`` (known by its arguments at its exec: xmrig's donation option);
- ``url``: the same without ``--donate-level``: a pool URL alone is acted on only once the
  program holds a socket (a URL in arguments is no proof), so at the first tick after its
  connect;
- ``content``: ``job.py``, a neutral name and arguments, whose file carries the Stratum
  protocol's method names (its file's content, once scanned, and its socket).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

from tests.harness import free_port, wait_until
from tests.standins import pool

ROOT = Path(__file__).resolve().parent.parent
STANDINS = Path(__file__).resolve().parent / "watcher_standins"
PYTHON = "/usr/bin/python3"  # the users' interpreter: the system's, readable by all
WALLET = "4" + "A" * 94
TICKS = os.sysconf("SC_CLK_TCK")
METRICS = ("colab_guard_sample_duration_seconds_sum", "colab_guard_sample_duration_seconds_count",
           "colab_guard_processes_sampled_total", "colab_guard_processes_read_in_full_total",
           "colab_guard_processes_read_lightly_total")


class Bench:
    """The users, their servers and kernels, and the watcher; everything undone by close()."""

    def __init__(self, args):
        self.args = args
        self.prefix = f"cgb{os.getpid()}"
        self.users: list[pwd.struct_passwd] = []
        self.servers: list[subprocess.Popen] = []
        self.kernels: dict[str, list[str]] = {}  # user -> kernel ids (the last: latency's)
        self.world = Path(tempfile.mkdtemp(prefix="cg-bench-watch-world-"))
        self.folder = Path(tempfile.mkdtemp(prefix="cg-bench-watch-"))  # root's alone
        self.watcher: subprocess.Popen | None = None
        self.pool = None
        self.port = 0

    # ------------------------------------------------------------ setting up

    def make_world(self) -> None:
        """The stand-ins, readable by every user; out/ writable by them (their reports)."""
        self.world.chmod(0o755)
        for name in ("jupyter-server", "kernel.py", "task.py", "job.py"):
            shutil.copy(STANDINS / name, self.world / name)
        for name in ("miner.py", "common.py"):
            shutil.copy(ROOT / "tests" / "standins" / name, self.world / name)
        xmrig = self.world / "xmrig"  # the stand-in miner under a miner's name
        xmrig.write_text(f"#!{PYTHON}\n" + (ROOT / "tests" / "standins" / "miner.py").read_text())
        xmrig.chmod(0o755)
        for folder in ("out", "runtime"):
            (self.world / folder).mkdir()
            (self.world / folder).chmod(0o777)  # not sticky: a kernel renames what it took
        self.pool = pool.serve()
        self.port = self.pool.getsockname()[1]
        (self.world / "job.cfg").write_text(f"127.0.0.1 {self.port}\n")

    def make_users(self, count: int) -> None:
        for index in range(count):
            name = f"{self.prefix}-{index:02d}"
            subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                            name], check=True, capture_output=True)
            self.users.append(pwd.getpwnam(name))

    def start_watcher(self) -> None:
        self.metrics_port = free_port()
        self.watcher, self.log_path = start_watcher(
            self.folder, [u.pw_name for u in self.users], metrics_port=self.metrics_port)

    def start_servers(self, users: list[pwd.struct_passwd]) -> None:
        """Each user's server and its kernels; returns once the watcher knows every kernel
        and every process is up."""
        for user in users:
            extra = 1 if user is self.users[0] else 0  # the latency trials' kernel
            self.servers.append(subprocess.Popen(
                [PYTHON, str(self.world / "jupyter-server"), str(self.world),
                 str(self.args.kernels), str(self.args.processes), str(extra)],
                user=user.pw_uid, group=user.pw_gid, extra_groups=[], cwd="/",
                env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "USER": user.pw_name,
                     "JUPYTERHUB_USER": user.pw_name, "LANG": "C.UTF-8"}))
        started = self.users[:self.users.index(users[-1]) + 1]
        listing = {u.pw_name: self.world / "out" / f"{u.pw_name}.kernels" for u in started}
        wait_until(lambda: all(p.exists() and p.read_text().endswith("\n")
                               for p in listing.values()), timeout=300, what="kernels started")
        self.kernels = {name: path.read_text().split() for name, path in listing.items()}
        expected = self.expected_processes(len(started))
        wait_until(lambda: self.processes() >= expected, timeout=600, interval=0.5,
                   what=f"{expected} processes up")
        ids = [kid for ids in self.kernels.values() for kid in ids]
        wait_until(lambda: all(f"kernel {kid} of user" in self.log() for kid in ids),
                   timeout=300, interval=0.5, what="the watcher knows every kernel")

    def expected_processes(self, users: int) -> int:
        return users * (1 + self.args.kernels * self.args.processes) + 1

    def processes(self) -> int:
        """Live processes of the benchmark's users."""
        uids = {u.pw_uid for u in self.users}
        return sum(1 for pid in _pids() if _uid(pid) in uids)

    # ------------------------------------------------------------ measuring

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.watcher.pid)

    def metrics(self) -> dict[str, float]:
        page = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/", timeout=30)
        found = {}
        for line in page.read().decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name in METRICS:
                found[name] = float(value)
        return found

    def windows(self, label: str) -> dict:
        """``--runs`` windows of ``--seconds``: the watcher's CPU (% of one core) in each."""
        percents, ticks, tick_ms, sampled, full, light = [], 0, 0.0, 0.0, 0.0, 0.0
        for run in range(self.args.runs):
            m0, cpu0, t0 = self.metrics(), self.cpu_seconds(), time.monotonic()
            if self.args.profile and run == 0:  # py-spy's own sampling costs the watcher little
                self.profile(label)
            time.sleep(max(0.0, self.args.seconds - (time.monotonic() - t0)))
            cpu1, t1, m1 = self.cpu_seconds(), time.monotonic(), self.metrics()
            percents.append(100 * (cpu1 - cpu0) / (t1 - t0))
            delta = {k: m1.get(k, 0) - m0.get(k, 0) for k in METRICS}
            count = delta["colab_guard_sample_duration_seconds_count"]
            ticks += count
            tick_ms += 1e3 * delta["colab_guard_sample_duration_seconds_sum"]
            sampled += delta["colab_guard_processes_sampled_total"]
            full += delta["colab_guard_processes_read_in_full_total"]
            light += delta["colab_guard_processes_read_lightly_total"]
        result = {"scenario": label, "percents": percents, "median": statistics.median(percents),
                  "min": min(percents), "max": max(percents), "processes": self.processes(),
                  "ticks_per_s": ticks / (self.args.runs * self.args.seconds),
                  "tick_ms": tick_ms / max(ticks, 1), "sampled_per_tick": sampled / max(ticks, 1),
                  "full_per_tick": full / max(ticks, 1), "light_per_tick": light / max(ticks, 1),
                  "load": os.getloadavg()[0]}
        print(f"  {label}: {_spread(result)} of a core ({result['processes']} processes, "
              f"load {result['load']:.1f})", file=sys.stderr)
        return result

    def profile(self, label: str) -> None:
        """py-spy's samples of the watcher (raw, for flamegraph.pl) during ``--seconds``."""
        folder = Path(self.args.profile)
        folder.mkdir(parents=True, exist_ok=True)
        name = "".join(c if c.isalnum() else "-" for c in label)
        subprocess.run([str(Path(sys.executable).parent / "py-spy"), "record", "-p",
                        str(self.watcher.pid), "-d", str(int(self.args.seconds)), "-r", "200",
                        "-f", "raw", "--nonblocking", "-o", str(folder / f"{name}.txt")],
                       capture_output=True)

    def settle(self) -> None:
        """Wait until the new processes' first reads, scans and checks are behind: at least
        ``--settle`` s, then until two 5 s windows in a row read in full no more than the
        quiet refresh does (each process once in one to two minutes) and cost the watcher
        about the same CPU (within a quarter, or half a point)."""
        if self.args.settle <= 0:
            return  # a smoke run (the tests)
        time.sleep(self.args.settle)
        deadline, calm, before = time.monotonic() + 300, 0, None
        while time.monotonic() < deadline and calm < 2:
            m0, cpu0 = self.metrics(), self.cpu_seconds()
            time.sleep(5)
            m1, cpu = self.metrics(), (self.cpu_seconds() - cpu0) / 5
            ticks = max(1, m1[METRICS[1]] - m0[METRICS[1]])
            full = (m1[METRICS[3]] - m0[METRICS[3]]) / ticks
            steady = before is not None and abs(cpu - before) <= max(0.005, 0.25 * before)
            calm = calm + 1 if steady and full <= 5 + self.processes() / 50 else 0
            before = cpu
        if calm < 2:
            print("  (the watcher did not settle within 300 s: measuring all the same)",
                  file=sys.stderr)

    def command(self, kernel_id: str, task: dict) -> None:
        """Have a kernel start task.py with ``task`` (the kernel looks once a second)."""
        path = self.world / "out" / f"{kernel_id}.cmd"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(task))
        temporary.chmod(0o644)
        temporary.replace(path)

    def with_activity(self, label: str, tasks: list[tuple[str, dict]]) -> dict:
        """The windows while ``tasks`` run (each a kernel id and its task), started first."""
        span = self.args.runs * (self.args.seconds + 1) + 6
        for kernel_id, task in tasks:
            self.command(kernel_id, {**task, "seconds": span})
        time.sleep(4)  # the kernels took their commands; the first execs checked
        result = self.windows(label)
        wait_until(lambda: not self.tasks_running(), timeout=span + 60, interval=0.5,
                   what="the tasks ended")
        return result

    def tasks_running(self) -> bool:
        task = str(self.world / "task.py").encode()
        for pid in _pids():
            try:
                if task in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
            except OSError:
                continue
        return False

    def latency(self, mode: str) -> dict:
        url = f"stratum+tcp://127.0.0.1:{self.port}"
        argv = {"name": [str(self.world / "xmrig"), "-o", f"127.0.0.1:{self.port}"],
                "args": [PYTHON, str(self.world / "miner.py"), "-o", url, "-u", WALLET, "-p", "x",
                         "--donate-level", "1"],
                "url": [PYTHON, str(self.world / "miner.py"), "-o", url, "-u", WALLET, "-p", "x"],
                "content": [PYTHON, str(self.world / "job.py"), str(self.world / "job.cfg")]}[mode]
        out = self.world / "out" / f"latency-{mode}.txt"
        kernel_id = self.kernels[self.users[0].pw_name][-1]
        self.command(kernel_id, {"task": "latency", "argv": argv, "runs": self.args.latency_runs,
                                 "pause": 1.0, "out": str(out)})
        done = lambda: out.exists() and \
            len(out.read_text().splitlines()) >= self.args.latency_runs  # noqa: E731
        wait_until(done, timeout=60 + 15 * self.args.latency_runs, interval=0.5,
                   what=f"the {mode} latency trials")
        runs = [line.split() for line in out.read_text().splitlines()]
        seconds = [float(s) for s, _ in runs]
        result = {"miner": mode, "seconds": seconds, "median": statistics.median(seconds),
                  "min": min(seconds), "max": max(seconds),
                  "ended": sorted({how for _, how in runs}), "load": os.getloadavg()[0]}
        print(f"  {mode}: median {1e3 * result['median']:.0f} ms ({1e3 * result['min']:.0f}–"
              f"{1e3 * result['max']:.0f} ms), ended by {', '.join(result['ended'])}",
              file=sys.stderr)
        return result

    # ------------------------------------------------------------ undoing

    def close(self) -> None:
        if self.watcher is not None and self.watcher.poll() is None:
            self.watcher.send_signal(signal.SIGTERM)
            try:
                self.watcher.wait(30)
            except subprocess.TimeoutExpired:
                self.watcher.kill()
                self.watcher.wait()
        kill_users_processes({u.pw_uid for u in self.users})
        for server in self.servers:
            server.wait()
        for user in self.users:
            subprocess.run(["userdel", user.pw_name], capture_output=True)
        if self.pool is not None:
            self.pool.close()
        shutil.rmtree(self.world, ignore_errors=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def incidents_in(log: Path) -> tuple[int, int]:
    """(incidents, processes to stop) in the watcher's incident log, where each incident is
    a line when it begins and another when it is done (and one per offence merged into a
    coalesced one): the last line of each (the last may not be done yet)."""
    last = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        incident = json.loads(line)
        last[incident["id"]] = incident
    stops = sum(1 for incident in last.values() for action in incident["actions"]
                if action["action"] == "stop")
    return len(last), stops


def start_watcher(folder: Path, users: list[str], metrics_port: int = 0, user_socket: str = ""
                  ) -> tuple[subprocess.Popen, Path]:
    """``python -m colab_guard.watch`` as root, watching only ``users``, its config, database,
    log and heartbeat in ``folder`` (root's alone); returns once it samples."""
    config = folder / "watch_config.py"
    config.write_text(textwrap.dedent(f"""
        c.Watcher.users = {users!r}
        c.Watcher.sample_interval = 1.0
        c.Watcher.strike_limit = 0
        c.Watcher.gpu_sampling = False
        c.Watcher.database_url = "sqlite:///{folder / 'incidents.sqlite'}"
        c.Watcher.incident_log = "{folder / 'incidents.jsonl'}"
        c.Watcher.heartbeat_file = "{folder / 'heartbeat.json'}"
        c.Watcher.user_socket = {user_socket!r}
        c.Watcher.metrics_port = {metrics_port}
    """))
    config.chmod(0o644)
    log_path = folder / "watcher.log"
    with open(log_path, "w") as log:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "colab_guard.watch", f"--Watcher.config_file={config}"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: "sampling every" in log_path.read_text(errors="replace")
               or watcher.poll() is not None, timeout=60, what="the watcher started")
    if watcher.poll() is not None:
        raise SystemExit(f"the watcher did not start:\n{log_path.read_text(errors='replace')}")
    return watcher, log_path


def python_for_users() -> tuple[str, dict[str, str]]:
    """An interpreter other users can run with this environment's packages, and the
    environment it needs: this one (a virtual environment's base may sit in root's home, out
    of their reach) or the system's of the same version, given the packages on PYTHONPATH."""
    base = os.path.realpath(sys.executable)
    if all(os.stat(folder).st_mode & 0o005 == 0o005 for folder in Path(base).parents):
        return sys.executable, {}
    found = subprocess.run([PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True) if Path(PYTHON).exists() else None
    if found is None or found.stdout.strip() != str(tuple(sys.version_info[:2])):
        raise SystemExit("no Python interpreter with this environment's packages that another "
                         "user can run")
    import site

    return PYTHON, {"PYTHONPATH": os.pathsep.join([str(ROOT), *site.getsitepackages()])}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True  # gone


def kill_users_processes(uids: set[int]) -> None:
    """SIGKILL every process of these uids (only the benchmark's users), until none is left
    (zombies apart: their parents, the servers, are reaped by the caller)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = [pid for pid in _pids() if _uid(pid) in uids and not _zombie(pid)]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def _spread(result: dict) -> str:
    return f"{result['median']:.2f} % (runs {', '.join(f'{p:.2f}' for p in result['percents'])})"


def run(args) -> dict:
    if os.geteuid() != 0:
        raise SystemExit("the watcher benchmark creates Unix users and runs the watcher: as root")
    bench = Bench(args)
    results = {"machine": {"cores": os.cpu_count(), "load_before": os.getloadavg()},
               "size": {"users": args.users, "kernels": args.kernels,
                        "processes": args.processes}, "users_prefix": bench.prefix,
               "cpu": [], "latency": []}
    try:
        bench.make_world()
        bench.make_users(args.users)
        bench.start_watcher()
        small = min(args.small_users, args.users)
        stages = [bench.users[:small], bench.users[small:]] if 0 < small < args.users \
            else [bench.users]
        for users in stages:
            bench.start_servers(users)
            bench.settle()
            count = bench.expected_processes(len(bench.kernels)) - 1
            results["cpu"].append(bench.windows(f"idle, {count} processes"))
        kernels = [ids[0] for ids in bench.kernels.values()]
        for rate in args.exec_rates:
            results["cpu"].append(bench.with_activity(
                f"{rate:g} execs a second", [(kernels[0], {"task": "execs", "rate": rate})]))
        if args.busy:
            results["cpu"].append(bench.with_activity(
                f"{args.busy} busy processes (half a core each)",
                [(kid, {"task": "busy", "duty": 0.5}) for kid in kernels[1:1 + args.busy]]))
        if args.latency_runs:
            for mode in ("name", "args", "url", "content"):
                results["latency"].append(bench.latency(mode))
        results["incidents"], results["stops"] = incidents_in(bench.folder / "incidents.jsonl")
        results["machine"]["load_after"] = os.getloadavg()
        if "Traceback" in bench.log():
            print(bench.log()[-4000:], file=sys.stderr)
            results["tracebacks"] = True
        return results
    finally:
        bench.close()


def report(results: dict, args) -> None:
    size = results["size"]
    machine = results["machine"]
    print(f"\nnode watcher: {size['users']} users x {size['kernels']} kernels x "
          f"{size['processes']} processes, sample_interval 1 s, process events on; "
          f"{machine['cores']} cores, load average before {machine['load_before'][0]:.2f}, "
          f"after {machine['load_after'][0]:.2f}; {args.runs} windows of {args.seconds:g} s\n")
    print("| scenario | watcher CPU, % of one core: median (runs) | processes | ticks/s | "
          "tick (wall) | sampled / full / light reads per tick |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results["cpu"]:
        print(f"| {r['scenario']} | {_spread(r)} | {r['processes']} | {r['ticks_per_s']:.2f} | "
              f"{r['tick_ms']:.1f} ms | {r['sampled_per_tick']:.0f} / {r['full_per_tick']:.1f} "
              f"/ {r['light_per_tick']:.1f} |")
    if results["latency"]:
        print(f"\nexec to stop ({args.latency_runs} runs each, as the parent's waitpid sees it)\n")
        print("| miner | median | fastest | slowest | ended by |")
        print("| --- | --- | --- | --- | --- |")
        for r in results["latency"]:
            print(f"| {r['miner']} | {1e3 * r['median']:.0f} ms | {1e3 * r['min']:.0f} ms | "
                  f"{1e3 * r['max']:.0f} ms | {', '.join(r['ended'])} |")
    print(f"\nincidents recorded: {results['incidents']} ({results.get('stops', 0)} processes "
          "to stop in them; past a kernel's burst, offences are coalesced into one incident)"
          + ("; the watcher logged a traceback" if results.get("tracebacks") else ""))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--kernels", type=int, default=5, help="kernels per user")
    parser.add_argument("--processes", type=int, default=20,
                        help="processes per kernel (the kernel and its idle children)")
    parser.add_argument("--small-users", type=int, default=10,
                        help="users of the first idle measurement (0: none)")
    parser.add_argument("--seconds", type=float, default=20, help="length of each window")
    parser.add_argument("--runs", type=int, default=3, help="windows per scenario")
    parser.add_argument("--settle", type=float, default=15,
                        help="seconds at least between the last kernel found and the first "
                        "window (then until the watcher reads no more in full than it does idle "
                        "and its CPU is steady); 0: measure at once")
    parser.add_argument("--exec-rates", type=lambda s: [float(r) for r in s.split(",") if r],
                        default=[10.0, 50.0], help="programs started a second (comma-separated)")
    parser.add_argument("--busy", type=int, default=3, help="busy processes (0: none)")
    parser.add_argument("--latency-runs", type=int, default=20, help="per miner (0: none)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--profile", help="py-spy the watcher in each scenario's first window "
                        "(raw samples, one file per scenario, in this folder)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # the users are removed all the same
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    results = run(args)
    report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
