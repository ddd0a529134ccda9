"""Load: one guarded server with many kernels, each with many children, and a fork storm.

    ./dev bench load [--kernels 50] [--children 20] [--seconds 30] [--settle 60]
                     [--storm-rate 1000] [--no-watcher] [--guarded-only] [--profile FILE]

Two real `jupyter server` runs with the same kernels (started through the REST API, each
starting ``--children`` sleeping child processes): one with `--ColabGuard.enabled=False`
(the baseline), one guarded, sampling at 1 Hz. ``--settle`` seconds after every kernel is
watched (the startup's first reads and scans behind: the steady state of a hub's idle
kernels), over ``--seconds`` of each it reports:

- ticks done and ticks missed (`colab_guard_ticks_missed_total`);
- processes sampled per tick, and of those the ones read in full (new, changed, or due their
  refresh: `colab_guard_processes_read_in_full_total`) and lightly (ran, changed nothing but
  their CPU and memory use: `colab_guard_processes_read_lightly_total`);
- the guard's CPU: the server process's CPU time with the guard minus without it, and the
  tick's own duration (`colab_guard_sample_duration_seconds`, wall time, mean and max);
- API latency (median and 95th percentile) of `/api/status` and `/api/kernels`;

As root, a third run (``--no-watcher`` leaves it out): the same server and kernels with the
guard on and the node watcher (``python -m colab_guard.watch``, as root) covering them, so that
the server extension leaves processes to the watcher; the server's CPU and the watcher's own
(its process's utime + stime) over the same window. Then every server and its kernels run as
a Unix user made for the run (``cgl<pid>``, removed at the end): the watcher never watches
root's processes.

then, guarded only, a fork storm in kernel 0 (a helper forking ``--storm-rate`` short-lived
processes per second) while kernel 1 starts the stand-in miner: whether the miner is still
stopped, ticks missed during the storm, and the guard's memory (server RSS; the sampler's
state, `colab_guard_sampler_tracked`) before, at worst during, and after the storm.

Loopback only: the server, the stand-in pool and every request are on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from jupyter_client import BlockingKernelClient

from benchmarks.watcher import cpu_seconds, kill_users_processes, python_for_users, start_watcher
from tests.harness import GuardedServer, wait_until
from tests.standins import pool

ROOT = Path(__file__).resolve().parent.parent

MINER = ROOT / "tests" / "standins" / "miner.py"
SLEEP_SECONDS = "86399"  # the children's argv, to find them again if a kernel left them

CHILDREN_CELL = """\
import subprocess
_load_children = [subprocess.Popen(['sleep', '{sleep}']) for _ in range({n})]
open({out!r}, 'w').write(' '.join(str(p.pid) for p in _load_children))
"""

STORM = str(ROOT / "tests" / "standins" / "fork_storm.py")


class Server(GuardedServer):
    """The guarded (or unguarded) server under load, and what it costs."""

    def __init__(self, workdir: Path, guarded: bool, user: pwd.struct_passwd | None = None,
                 watcher_socket: str = ""):
        super().__init__(
            {"enabled": guarded, "sample_interval": 1, "stop_grace": 1, "cell_checks": False,
             "watcher_socket": watcher_socket},
            # IPC, not TCP: fifty kernels starting at once race for random TCP ports.
            args=["--KernelManager.transport=ipc"], folder=workdir)
        self.workdir, self.user = workdir, user
        if user is not None:
            python, env = python_for_users()
            self.argv = [python if a == sys.executable else a for a in self.argv
                         if a != "--allow-root"]
            self.env.update(HOME=str(workdir), USER=user.pw_name, **env)
            subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(workdir)],
                           check=True)
        self.start(timeout=60)
        self.ps = psutil.Process(self.process.pid)

    def launch(self) -> subprocess.Popen:
        if self.user is None:
            return super().launch()
        log = open(self.log_path, "wb")  # noqa: SIM115 (the server writes it until it stops)
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.dir, stdout=log,
                                        stderr=subprocess.STDOUT, user=self.user.pw_uid,
                                        group=self.user.pw_gid, extra_groups=[])
        return self.process

    def call(self, path: str, body: dict | None = None) -> bytes:
        return self.request("POST" if body is not None else "GET", path, body, timeout=120)

    def get(self, path: str) -> dict:
        return json.loads(self.call(path) or b"{}")

    def post(self, path: str, body: dict) -> dict:
        return json.loads(self.call(path, body) or b"{}")

    def metrics(self) -> dict[str, float]:
        """colab_guard_* samples from /metrics (label sets kept in the name)."""
        found = {}
        for line in self.call("/metrics").decode().splitlines():
            if line.startswith("colab_guard_"):
                name, _, value = line.rpartition(" ")
                found[name] = float(value)
        return found

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def thread_cpu(self) -> dict[int, float]:
        """CPU seconds of each of the server's threads (the sampler runs in its own)."""
        return {t.id: t.user_time + t.system_time for t in self.ps.threads()}

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Watcher:
    """The node watcher as root, watching the run's user only, its socket where that user's
    server finds it (the server extension then leaves processes to it)."""

    def __init__(self, folder: Path, user: pwd.struct_passwd):
        folder.mkdir(mode=0o755)
        self.socket = str(folder / "watch.sock")
        records = folder / "records"
        records.mkdir(mode=0o700)
        self.process, self.log_path = start_watcher(records, [user.pw_name],
                                                    user_socket=self.socket)
        self.heartbeat = records / "heartbeat.json"

    def kernels(self) -> int:
        try:
            return json.loads(self.heartbeat.read_text())["kernels"]
        except (OSError, ValueError):
            return 0

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def client_for(server: Server, kernel_id: str) -> BlockingKernelClient:
    client = BlockingKernelClient(
        connection_file=str(server.workdir / "runtime" / f"kernel-{kernel_id}.json"))
    client.load_connection_file()
    client.start_channels()
    client.wait_for_ready(timeout=300)
    return client


def run_cell(client: BlockingKernelClient, code: str, timeout: float = 120) -> dict:
    reply = client.execute_interactive(code, timeout=timeout, output_hook=lambda msg: None)
    return reply["content"]


def start_kernels(server: Server, kernels: int, children: int) -> tuple[list[str], list[int]]:
    """Start the kernels through the REST API, and in each its sleeping children."""
    with ThreadPoolExecutor(8) as pool_:
        ids = list(pool_.map(lambda _: server.post("/api/kernels", {"name": "python3"})["id"],
                             range(kernels)))

    def populate(index_and_id):
        index, kernel_id = index_and_id
        out = server.workdir / f"children-{index}.txt"
        for attempt in range(3):
            # A kernel that lost a race for its random ports is restarted on new ones,
            # written to the same connection file: read it again.
            try:
                client = client_for(server, kernel_id)
            except RuntimeError:
                if attempt == 2:
                    raise
                time.sleep(3)
                continue
            try:
                run_cell(client, CHILDREN_CELL.format(sleep=SLEEP_SECONDS, n=children, out=str(out)))
            finally:
                client.stop_channels()
            return [int(p) for p in out.read_text().split()]

    with ThreadPoolExecutor(8) as pool_:
        pids = [pid for group in pool_.map(populate, enumerate(ids)) for pid in group]
    return ids, pids


def kill_leftovers(workdir: Path) -> None:
    """Children the kernels started and left behind (by pid, if still our sleep), also
    when starting the kernels failed half-way."""
    pids = [int(p) for f in workdir.glob("children-*.txt") for p in f.read_text().split()]
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.cmdline() == ["sleep", SLEEP_SECONDS]:
                proc.kill()
        except psutil.Error:
            pass


def latencies(server: Server, path: str, count: int) -> list[float]:
    found = []
    for _ in range(count):
        start = time.perf_counter()
        server.call(path)
        found.append(time.perf_counter() - start)
        time.sleep(0.02)
    return found


def profile(server: Server, args) -> subprocess.Popen | None:
    """py-spy samples of the guarded server over the measured window (``--profile FILE``:
    collapsed stacks, one line per stack with its sample count; only samples where a thread
    ran, so what the guard spends its CPU on)."""
    if not args.profile:
        return None
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(server.process.pid),
         "--duration", str(int(args.seconds)), "--rate", "50", "--nonblocking", "--threads",
         "--format", "raw", "--output", args.profile], stdout=subprocess.DEVNULL)


def measure(server: Server, seconds: float, requests: int, guarded: bool) -> dict:
    """Server CPU, ticks and API latency over ``seconds``."""
    before_metrics = server.metrics() if guarded else {}
    before_ticks = server.get("/colab-guard/api/status")["ticks"] if guarded else 0
    cpu0, threads0, t0 = server.cpu(), server.thread_cpu(), time.monotonic()
    status = latencies(server, "/api/status", requests)
    kernels = latencies(server, "/api/kernels", requests)
    time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    cpu1, threads1, t1 = server.cpu(), server.thread_cpu(), time.monotonic()
    busy = {tid: cpu - threads0.get(tid, 0.0) for tid, cpu in threads1.items()}
    loop = busy.pop(server.process.pid, 0.0)  # the main thread runs the event loop
    result = {"cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0), "seconds": t1 - t0,
              "system_processes": len(psutil.pids()),
              "loop_percent": 100 * loop / (t1 - t0),
              "busiest_thread_percent": 100 * max(busy.values(), default=0.0) / (t1 - t0),
              "status": status, "kernels": kernels, "rss_mb": server.rss_mb()}
    if guarded:
        after = server.metrics()
        delta = {k: after.get(k, 0) - before_metrics.get(k, 0) for k in after}
        result["ticks"] = server.get("/colab-guard/api/status")["ticks"] - before_ticks
        result["ticks_missed"] = delta.get("colab_guard_ticks_missed_total", 0)
        count = delta.get("colab_guard_sample_duration_seconds_count", 0)
        result["tick_mean_ms"] = 1e3 * delta.get("colab_guard_sample_duration_seconds_sum", 0) / max(count, 1)
        result["tick_max_ms"] = _histogram_max(delta)
        result["processes_per_tick"] = delta.get("colab_guard_processes_sampled_total", 0) / max(count, 1)
        result["full_reads_per_tick"] = \
            delta.get("colab_guard_processes_read_in_full_total", 0) / max(count, 1)
        result["light_reads_per_tick"] = \
            delta.get("colab_guard_processes_read_lightly_total", 0) / max(count, 1)
    return result


def _histogram_max(delta: dict) -> float:
    """Upper bound of the highest bucket the window's ticks reached (ms)."""
    buckets = []
    for name, value in delta.items():
        found = re.match(r'colab_guard_sample_duration_seconds_bucket\{le="([^"]+)"\}', name)
        if found:
            buckets.append((float(found.group(1)), value))
    buckets.sort()
    previous, top = 0.0, float("nan")
    for bound, count in buckets:
        if count > previous:
            top = bound
        previous = count
    return 1e3 * top


def fork_storm(server: Server, ids: list[str], rate: float, seconds: float) -> dict:
    """A fork storm in kernel 0 while kernel 1 starts a miner; the guard's memory throughout."""
    pool_server = pool.serve()
    storm_client, miner_client = client_for(server, ids[0]), client_for(server, ids[1])
    out = server.workdir / "storm.txt"
    before = {"rss_mb": server.rss_mb(),
              "tracked": server.metrics().get("colab_guard_sampler_tracked", float("nan"))}
    ticks0 = server.get("/colab-guard/api/status")["ticks"]
    missed0 = server.metrics().get("colab_guard_ticks_missed_total", 0)
    storm_client.execute(f"import subprocess, sys\n_storm = subprocess.Popen([sys.executable, "
                         f"{STORM!r}, '{rate}', '{seconds}', {str(out)!r}])\n")
    time.sleep(2)  # the storm is under way
    # The kernel's own Python and a copy of the miner in the server's folder: a server run
    # as the benchmark's user can reach neither this Python nor the repository.
    miner = server.workdir / "miner.py"
    for name in ("miner.py", "common.py"):  # the stand-in and what it imports
        shutil.copy(MINER.with_name(name), server.workdir / name)
        if server.user is not None:
            os.chown(server.workdir / name, server.user.pw_uid, server.user.pw_gid)
    miner_start = time.monotonic()
    miner_client.execute(
        f"import subprocess, sys\n_m = subprocess.Popen([sys.executable, {str(miner)!r}, '-o', "
        f"'stratum+tcp://127.0.0.1:{pool_server.getsockname()[1]}', '-u', 'x', '-p', 'x'])\n"
        f"_m.wait()\n")
    miner_stopped = None
    worst_rss, worst_tracked = before["rss_mb"], before["tracked"]
    deadline = time.monotonic() + seconds + 30
    while time.monotonic() < deadline and not out.exists():
        if miner_stopped is None and _miner_stopped(server):
            miner_stopped = time.monotonic() - miner_start
        worst_rss = max(worst_rss, server.rss_mb())
        worst_tracked = max(worst_tracked, server.metrics().get("colab_guard_sampler_tracked", 0))
        time.sleep(0.5)
    ticks = server.get("/colab-guard/api/status")["ticks"] - ticks0
    missed = server.metrics().get("colab_guard_ticks_missed_total", 0) - missed0
    forked = int(out.read_text()) if out.exists() else 0
    time.sleep(3)  # a few ticks after the storm: state of the exited processes forgotten
    after = {"rss_mb": server.rss_mb(),
             "tracked": server.metrics().get("colab_guard_sampler_tracked", float("nan"))}
    storm_client.stop_channels()
    miner_client.stop_channels()
    pool_server.close()
    return {"forked": forked, "rate": forked / seconds, "ticks": ticks, "missed": missed,
            "miner_stopped_s": miner_stopped, "before": before, "after": after,
            "worst": {"rss_mb": worst_rss, "tracked": worst_tracked}}


def _miner_stopped(server: Server) -> bool:
    incidents = server.get("/colab-guard/api/incidents")["incidents"]
    return any(i["category"] == "crypto-mining" and i["status"] == "done" for i in incidents)


def run(guarded: bool, args, user: pwd.struct_passwd | None = None,
        with_watcher: bool = False) -> dict:
    label = "with the watcher" if with_watcher else "guarded" if guarded else "baseline"
    with tempfile.TemporaryDirectory(prefix="colab-guard-load-") as tmp:
        os.chmod(tmp, 0o755)  # the user's server lives below
        watcher = None
        if with_watcher:
            watcher = Watcher(Path(tmp) / "watcher", user)
        server = Server(Path(tmp) / "server", guarded, user,
                        watcher.socket if watcher is not None else "")
        try:
            started = time.monotonic()
            ids, pids = start_kernels(server, args.kernels, args.children)
            print(f"  {label}: {len(ids)} kernels, {len(pids)} "
                  f"children started in {time.monotonic() - started:.0f} s", file=sys.stderr)
            if with_watcher:  # every kernel watched by the watcher, the server covered
                wait_until(lambda: watcher.kernels() >= len(ids) and server.get(
                    "/colab-guard/api/status")["processes_checked_by"] == "node watcher",
                    timeout=120, interval=1, what="the watcher covering every kernel")
            elif guarded:  # every kernel watched before measuring
                deadline = time.monotonic() + 120
                while server.get("/colab-guard/api/status")["kernels_monitored"] < len(ids):
                    if time.monotonic() > deadline:
                        raise SystemExit("the guard did not see every kernel")
                    time.sleep(1)
            # Kernels settled: the first reads and scans of 1,050 new processes, and the
            # kernels' full reads spaced out (see README, Under load), behind.
            time.sleep(max(args.settle, 15) if with_watcher else args.settle)
            watcher_cpu0 = watcher.cpu() if watcher is not None else 0.0
            profiler = profile(server, args) if guarded and not with_watcher else None
            result = measure(server, args.seconds, args.requests, guarded and not with_watcher)
            if profiler is not None:
                profiler.wait(timeout=60)
            if watcher is not None:
                result["watcher_percent"] = \
                    100 * (watcher.cpu() - watcher_cpu0) / result["seconds"]
            if guarded and not with_watcher:
                result["storm"] = fork_storm(server, ids, args.storm_rate, args.storm_seconds)
            return result
        finally:
            server.stop()
            if watcher is not None:
                watcher.stop()
            kill_leftovers(Path(tmp) / "server")
            if user is not None:
                kill_users_processes({user.pw_uid})
            if args.keep_log:
                Path(f"{args.keep_log}-{label.replace(' ', '-')}").write_text(
                    (Path(tmp) / "server" / "server.log").read_text())


def ms(values: list[float], q: float) -> str:
    values = sorted(values)
    return f"{1e3 * values[min(len(values) - 1, int(q * len(values)))]:.1f}"


def report(base: dict, guard: dict, args, watched: dict | None = None) -> None:
    load = os.getloadavg()
    print(f"\n{args.kernels} kernels x {args.children} children, sample_interval 1 s, "
          f"{args.seconds:g} s measured; {os.cpu_count()} cores, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| figure | without the guard | with the guard |")
    print("| --- | --- | --- |")
    print(f"| ticks done / missed | | {guard['ticks']} / {guard['ticks_missed']:.0f} "
          f"(in {guard['seconds']:.0f} s) |")
    print(f"| processes sampled per tick (on the machine) | ({base['system_processes']}) | "
          f"{guard['processes_per_tick']:.0f} ({guard['system_processes']}) |")
    print(f"| of which read in full (new, changed, or due) / lightly (ran, changed nothing) | | "
          f"{guard['full_reads_per_tick']:.1f} / {guard['light_reads_per_tick']:.1f} |")
    print(f"| tick duration, mean / max bucket | | {guard['tick_mean_ms']:.1f} ms / "
          f"≤ {guard['tick_max_ms']:.0f} ms |")
    print(f"| server CPU (% of one core) | {base['cpu_percent']:.1f} | {guard['cpu_percent']:.1f} |")
    print(f"| guard CPU: difference | | {guard['cpu_percent'] - base['cpu_percent']:.1f} % |")
    print(f"| CPU of the event loop's thread / the busiest other thread (the sampler's, "
          f"guarded) | {base['loop_percent']:.1f} / {base['busiest_thread_percent']:.1f} % | "
          f"{guard['loop_percent']:.1f} / {guard['busiest_thread_percent']:.1f} % |")
    for key, path in (("status", "/api/status"), ("kernels", "/api/kernels")):
        print(f"| `{path}` median / p95 | {ms(base[key], 0.5)} / {ms(base[key], 0.95)} ms | "
              f"{ms(guard[key], 0.5)} / {ms(guard[key], 0.95)} ms |")
    print(f"| server RSS | {base['rss_mb']:.0f} MiB | {guard['rss_mb']:.0f} MiB |")
    if watched is not None:
        both = watched["cpu_percent"] + watched["watcher_percent"]
        print("\nwith the node watcher covering the same server (its extension on, leaving "
              "processes to the watcher):\n")
        print("| CPU, % of one core | without the guard | server extension alone | "
              "server extension + node watcher |")
        print("| --- | --- | --- | --- |")
        print(f"| the server | {base['cpu_percent']:.1f} | {guard['cpu_percent']:.1f} | "
              f"{watched['cpu_percent']:.1f} |")
        print(f"| the node watcher | | | {watched['watcher_percent']:.1f} |")
        print(f"| the guard's own (difference to without) | | "
              f"{guard['cpu_percent'] - base['cpu_percent']:.1f} | "
              f"{both - base['cpu_percent']:.1f} |")
    storm = guard["storm"]
    print(f"\nfork storm in kernel 0: {storm['forked']} processes in {args.storm_seconds:g} s "
          f"({storm['rate']:.0f}/s)\n")
    print("| figure | before | worst during | after |")
    print("| --- | --- | --- | --- |")
    for key, label, unit in (("rss_mb", "server RSS", " MiB"),
                             ("tracked", "sampler state (processes tracked)", "")):
        print(f"| {label} | {storm['before'][key]:.0f}{unit} | {storm['worst'][key]:.0f}{unit} | "
              f"{storm['after'][key]:.0f}{unit} |")
    stopped = storm["miner_stopped_s"]
    print(f"\nduring the storm: {storm['ticks']} ticks, {storm['missed']:.0f} missed; the miner in "
          f"kernel 1 {'stopped after %.1f s' % stopped if stopped is not None else 'NOT stopped'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=int, default=50)
    parser.add_argument("--children", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30, help="measured window per run")
    parser.add_argument("--requests", type=int, default=200, help="requests per API route")
    parser.add_argument("--storm-rate", type=float, default=1000, help="forks per second")
    parser.add_argument("--storm-seconds", type=float, default=15)
    parser.add_argument("--keep-log", help="copy the servers' logs to KEEP_LOG-baseline, "
                        "-guarded, -with-the-watcher")
    parser.add_argument("--no-watcher", action="store_true",
                        help="leave out the run with the node watcher (it needs root)")
    parser.add_argument("--settle", type=float, default=60,
                        help="seconds between the last kernel watched and the window")
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy's collapsed stacks of the guarded server over its window")
    parser.add_argument("--guarded-only", action="store_true",
                        help="only the guarded run (to profile it; no comparison)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    user = None
    if not args.no_watcher:
        if os.geteuid() != 0:
            raise SystemExit("the node watcher's run needs root (or --no-watcher)")
        name = f"cgl{os.getpid()}"
        subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        user = pwd.getpwnam(name)
    try:
        if args.guarded_only:
            guard = run(True, args)
            print(json.dumps({k: v for k, v in guard.items() if k not in ("status", "kernels")},
                             indent=1, default=str))
            return
        base = run(False, args, user)
        guard = run(True, args, user)
        watched = run(True, args, user, with_watcher=True) if user is not None else None
    finally:
        if user is not None:
            kill_users_processes({user.pw_uid})
            subprocess.run(["userdel", user.pw_name], capture_output=True)
    report(base, guard, args, watched)


if __name__ == "__main__":
    main()
