"""Detection quality: the scenario corpus against a real guarded Jupyter server.

    ./dev bench detection [--fast] [--only TEXT] [--json FILE] [--no-netns]

Starts ``jupyter server`` with colab-guard on a temporary configuration, starts one
kernel per scenario through the REST API, runs the scenario's cell in it, and reads
the incident log. Prints, per scenario: stopped / recorded / left alone, the latency
(from the program's start to the incident), whether the user was shown the platform's
message, and the incident recorded; then recall, false positives, median and worst
latency. As root it runs the whole corpus inside a new network namespace that has only
loopback (``unshare -n``), so nothing can leave the machine whatever a program tries.

Install the real programs first: ``benchmarks/scenarios/install.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

from benchmarks.scenarios.corpus import SCENARIOS, Env, Scenario
from tests.harness import GuardedServer

NETNS_FLAG = "COLAB_GUARD_CORPUS_NETNS"
WARNING = "You may be executing code that is disallowed"
STOP_ACTIONS = {"stop", "interrupt", "shutdown"}


@dataclass
class Result:
    scenario: str
    category: str  # the abuse category, or "benign"
    expected: str
    outcome: str  # stopped, recorded, left alone, skipped (missing ...), error
    latency: float | None = None
    message: bool = False
    incident: str = ""  # category and signature recorded
    output: str = ""  # the cell's last output, for the JSON report

    @property
    def ok(self) -> bool:
        return self.outcome == self.expected


# ---------------------------------------------------------------- the server

def guarded_server(sample_interval: float, cell_checks: bool, kernel_hook: bool = True):
    return GuardedServer({
        "sample_interval": sample_interval, "stop_grace": 1.0,
        # one user runs every scenario: no refusal after three strikes
        "strike_limit": 0,
        # off by default: measure what the server-side sampler recognises
        # (cell checks would refuse most cells before the program runs)
        "cell_checks": cell_checks, "kernel_hook": kernel_hook,
        "policy_url": "https://example.org/acceptable-use"})


def run_scenario(server: GuardedServer, env: Env, scenario: Scenario) -> Result:
    category = scenario.category or "benign"
    missing = scenario.missing()
    if missing:
        return Result(scenario.name, category, scenario.expect, f"skipped (missing {', '.join(missing)})")
    kernel_id, client = server.start_kernel()
    outputs: list[str] = []

    def hook(msg):
        content = msg["content"]
        if msg["msg_type"] == "stream":
            outputs.append(content["text"])
        elif msg["msg_type"] == "error":
            outputs.append("\n".join(content.get("traceback", [])))
        elif "data" in content:
            outputs.append(json.dumps(content["data"]))

    try:
        try:
            client.execute_interactive(scenario.code(env), timeout=scenario.seconds + 60,
                                       output_hook=hook)
        except TimeoutError:
            outputs.append("(cell timed out)")
        started = _started(outputs)
        incidents = _wait_incidents(server, kernel_id, scenario)
        result = _judge(scenario, category, started, incidents, "".join(outputs))
        result.output = "".join(outputs)[-600:]
        return result
    finally:
        client.stop_channels()
        try:
            server.api("DELETE", f"api/kernels/{kernel_id}")
        except OSError:
            pass


def _started(outputs: list[str]) -> float | None:
    for line in "".join(outputs).splitlines():
        if line.startswith("START "):
            return float(line.split()[1])
    return None


def _wait_incidents(server: GuardedServer, kernel_id: str, scenario: Scenario) -> list[dict]:
    """Incidents of the kernel once they are done (a benign scenario gets two seconds more)."""
    deadline = time.monotonic() + (3 if scenario.abuse else 2)
    while True:
        found = server.incidents(kernel_id)
        if (found and all(i["status"] == "done" for i in found)) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _judge(scenario: Scenario, category: str, started: float | None, incidents: list[dict],
           text: str) -> Result:
    if not incidents:
        return Result(scenario.name, category, scenario.expect, "left alone", message=WARNING in text)
    first = min(incidents, key=lambda i: i["time"])
    if started is None and scenario.cell is None:  # the cell was refused before it ran
        return Result(scenario.name, category, scenario.expect, "stopped", None, WARNING in text,
                      f"{first['category']} / {first['signature']} (cell refused)")
    stopped = any(a["action"] in STOP_ACTIONS and a["outcome"] in ("done", "gone")
                  for i in incidents for a in i["actions"])
    when = _epoch(first["time"])
    latency = round(when - started, 2) if started is not None else None
    return Result(scenario.name, category, scenario.expect, "stopped" if stopped else "recorded",
                  latency, WARNING in text, f"{first['category']} / {first['signature']}")


def _epoch(value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    from datetime import datetime
    return datetime.fromisoformat(value).timestamp()


# ---------------------------------------------------------------- the report

def report(results: list[Result]) -> str:
    rows = [("scenario", "expected", "outcome", "latency", "message", "incident", "")]
    for r in results:
        rows.append((r.scenario, r.expected, r.outcome,
                     f"{r.latency:.2f} s" if r.latency is not None else "-",
                     "yes" if r.message else "no", r.incident or "-",
                     "" if r.ok or r.outcome.startswith("skipped") else "<-- MISS"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    ran = [r for r in results if not r.outcome.startswith("skipped")]
    abuse = [r for r in ran if r.category != "benign"]
    benign = [r for r in ran if r.category == "benign"]
    caught = [r for r in abuse if r.ok]
    false_positives = [r for r in benign if r.outcome in ("stopped", "recorded")]
    errors = [r for r in ran if r.outcome.startswith("error")]
    latencies = sorted(r.latency for r in abuse if r.latency is not None and r.expected == "stopped")
    skipped = [r for r in results if r.outcome.startswith("skipped")]
    lines += [
        "",
        f"recall: {len(caught)}/{len(abuse)} abuse scenarios handled as expected"
        + (f" (missed: {', '.join(r.scenario for r in abuse if not r.ok)})" if len(caught) < len(abuse) else ""),
        f"false positives: {len(false_positives)}/{len(benign)} honest look-alikes"
        + (f" ({', '.join(r.scenario for r in false_positives)})" if false_positives else ""),
    ]
    if latencies:
        lines.append(f"latency (stopped scenarios): median {statistics.median(latencies):.2f} s, "
                     f"worst {latencies[-1]:.2f} s")
    if errors:
        lines.append(f"errors (neither caught nor left alone): {', '.join(r.scenario for r in errors)}")
    if skipped:
        lines.append(f"skipped {len(skipped)} (programs not installed: benchmarks/scenarios/install.sh)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="only the small subset the tests run")
    parser.add_argument("--only", metavar="TEXT", help="only scenarios whose name contains TEXT")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--sample-interval", type=float, default=1.0,
                        help="the guard's sample_interval (default 1.0, its default)")
    parser.add_argument("--cell-checks", action="store_true",
                        help="let the guard check cells before they run (most abuse cells are "
                             "then refused before their program starts)")
    parser.add_argument("--no-kernel-hook", action="store_true",
                        help="switch the kernel hook off: the server-side sampler alone, "
                             "as when a user has removed the hook")
    parser.add_argument("--no-netns", action="store_true",
                        help="do not enter a loopback-only network namespace")
    args = parser.parse_args(argv)
    if not args.no_netns and os.environ.get(NETNS_FLAG) is None:
        return _rerun_in_netns(sys.argv[1:] if argv is None else argv)
    scenarios = [s for s in SCENARIOS if (not args.fast or s.fast)
                 and (args.only is None or args.only.lower() in s.name.lower())]
    env = Env.start()
    server = guarded_server(args.sample_interval, args.cell_checks, not args.no_kernel_hook)
    results = []
    try:
        server.start()
        for scenario in scenarios:
            print(f"... {scenario.name}", file=sys.stderr, flush=True)
            try:
                results.append(run_scenario(server, env, scenario))
            except Exception as err:  # report it and go on with the others
                results.append(Result(scenario.name, scenario.category or "benign",
                                      scenario.expect, f"error: {type(err).__name__}: {err}"[:80]))
    finally:
        server.stop()
        env.close()
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    missed = [r for r in results if not r.ok and not r.outcome.startswith("skipped")]
    return 1 if missed else 0


def _rerun_in_netns(argv: list[str]) -> int:
    """Run again inside a new network namespace with only loopback (root only)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        print("note: not root (or no unshare/ip): running in the host's network namespace; "
              "everything still talks to 127.0.0.1 only", file=sys.stderr)
        os.environ[NETNS_FLAG] = "host"
        return main(argv)
    command = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
               sys.executable, "-m", "benchmarks.detection", *argv]
    return subprocess.call(command, env={**os.environ, NETNS_FLAG: "1"}, cwd=HERE.parent)


if __name__ == "__main__":
    sys.exit(main())
