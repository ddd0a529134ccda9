"""The notebook corpus (tests/notebooks/) run cell by cell in a real guarded kernel.

Each notebook runs in a kernel of a real guarded ``jupyter server`` (strikes off, cell checks
on, not dry run, defaults otherwise); per notebook it reports the key cell, the first cell
acted on (refused, or an incident recorded for the kernel: the guard's REST API), every
incident (cell, category, action, signature) and whether the notebook meets the manifest.

    ./dev bench notebooks_kernel                 # the whole corpus: a table (many minutes)
    ./dev bench notebooks_kernel --only NAME...  # some notebooks (file stems)
    ./dev bench notebooks_kernel --json          # one object per notebook

These are real abuse notebooks (they install packages, add users, change passwords, download
and run miners, open tunnels), so, as root only:

- the whole run is in a network namespace of its own (it re-executes itself under
  ``unshare --net``; only loopback, brought up for the server): every download fails and
  nothing leaves the machine; it refuses to run if any interface but ``lo`` is there;
- the server and its kernels run as a throwaway unprivileged Unix user made for the run
  (removed at the end with its home), with no new privileges (no setuid program works:
  ``sudo``, ``su``, ``passwd``) and a cap on its processes;
- a cell still running after --cell-timeout seconds is interrupted (then the kernel is
  restarted if it does not answer), the kernel is shut down after each notebook, and every
  process of that user is killed (by uid) after each notebook and at the end.

Exit status 1 when a notebook misses: an abuse notebook not acted on at or before its key cell
(or not refused there when the manifest says ``refuse: true``), a benign one acted on at all.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

import psutil

from benchmarks.notebooks import CORPUS, ROOT, NotebookResult, code_cells, manifest
from colab_guard.vocabulary import RANK
from tests.harness import GuardedServer, wait_until

#: The guard as the benchmark runs it: one notebook's strikes must not stop the next.
GUARD_SETTINGS = {"strike_limit": 0, "cell_checks": True, "dry_run": False}
USER_PREFIX = "notebooks-nbk-"  # throwaway users: this prefix and random hex
NETNS_MARK = "COLAB_GUARD_NOTEBOOKS_NETNS"  # set once the run is in its own namespace
MAX_PROCESSES = 512  # the throwaway user's processes (a fork bomb stops there)
MAX_FILE_BYTES = 2 * 2**30
#: A cell that only shows the kernel is the one asked for, as the user, with the hook loaded.
PROBE = ("print(__import__('os').getpid(), __import__('os').getuid(), "
         "__import__('colab_guard.kernel', fromlist=['_guard'])._guard is not None, "
         "__import__('colab_guard').__file__)")


# ---------------------------------------------------------------- results


@dataclass
class KernelIncident:
    id: str
    category: str
    action: str  # the strongest action the incident records
    signature: str
    signatures: list[str]
    from_cell_check: bool  # the cell's source was checked (else: what the kernel ran)

    @classmethod
    def from_api(cls, record: dict) -> KernelIncident:
        actions = [a["action"] for a in record.get("actions", [])] or ["record"]
        return cls(record["id"], record["category"], max(actions, key=RANK.__getitem__),
                   record["signature"], record.get("signatures", []),
                   "cell" in (record.get("evidence") or {}))


@dataclass
class CellRun:
    index: int  # in the notebook's cells, markdown included
    outcome: str  # ok, error, refused (CellRefused), timeout (interrupted), stuck (restarted)
    ename: str = ""
    seconds: float = 0.0
    incidents: list[KernelIncident] = field(default_factory=list)

    @property
    def action(self) -> str:
        """What the guard did about this cell, as benchmarks.notebooks ranks it: refuse when
        the kernel refused it; a refusal the kernel did not see (the verdict came after
        cell_check_timeout) let the cell run, so it counts as a warning."""
        found = ["refuse"] if self.outcome == "refused" else []
        for incident in self.incidents:
            found.append("warn" if incident.action == "refuse" else incident.action)
        return max(found, key=RANK.__getitem__) if found else ""

    @property
    def signatures(self) -> list[str]:
        return sorted({s for i in self.incidents for s in i.signatures})

    @property
    def late_refusals(self) -> list[str]:
        """Refusals recorded for a cell the kernel ran anyway (the verdict came too late)."""
        return [i.signature for i in self.incidents
                if i.action == "refuse" and self.outcome != "refused"]


@dataclass
class KernelNotebookResult(NotebookResult):
    cells: list[CellRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict:
        first, refused = self.first_acted, self.first_refused
        return {
            "notebook": self.name, "kind": self.kind, "key_cell": self.key_cell,
            "refuse": self.refuse,
            "first_acted": first.index if first else None,
            "action": first.action if first else None,
            "first_refused": refused.index if refused else None,
            "incidents": [{"cell": c.index, "category": i.category, "action": i.action,
                           "signature": i.signature, "cell_check": i.from_cell_check}
                          for c in self.cells for i in c.incidents],
            "cells": [{"cell": c.index, "outcome": c.outcome, "ename": c.ename,
                       "seconds": round(c.seconds, 1)} for c in self.cells],
            "late_refusals": [[c.index, s] for c in self.cells for s in c.late_refusals],
            "notes": self.notes, "ok": self.ok, "seconds": round(self.seconds, 1),
        }


# ---------------------------------------------------------------- the sandbox


def only_loopback() -> bool:
    """Is this process in a network namespace with no interface but loopback?"""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def enter_network_namespace(argv: list[str]) -> None:
    """Re-execute this benchmark in a new network namespace (never returns), or, once in
    it, bring loopback up and make sure nothing else is there."""
    if os.environ.get(NETNS_MARK) != str(os.getpid()):
        os.environ[NETNS_MARK] = str(os.getpid())  # unshare execs: the pid stays
        os.execvp("unshare", ["unshare", "--net", "--", sys.executable, "-m",
                              "benchmarks.notebooks_kernel", *argv])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if not only_loopback():
        raise SystemExit(f"refusing to run: interfaces other than lo: {socket.if_nameindex()}")


def python_for_users(folder: Path) -> Path:
    """A Python environment the throwaway user can run, laid out as an installed guard's:
    a virtual environment of the system's Python (the shared one's base lies in root's
    home), this worktree and the shared environment's packages on PYTHONPATH, and the
    kernel hook's IPython startup file in its prefix, as the package installs it."""
    base = os.path.realpath(sys.executable)
    python = base if all(os.stat(p).st_mode & 0o005 == 0o005 for p in Path(base).parents) \
        else "/usr/bin/python3"
    found = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True)
    if found.stdout.strip() != str(tuple(sys.version_info[:2])):
        raise SystemExit(f"no Python {sys.version_info[:2]} that another user can run")
    env = folder / "venv"
    subprocess.run([python, "-m", "venv", "--without-pip", str(env)], check=True)
    startup = env / "etc" / "ipython" / "startup"
    startup.mkdir(parents=True)
    shutil.copy(ROOT / "jupyter-config" / "ipython_startup" / "50-colab-guard.py", startup)
    return env / "bin" / "python"


def pythonpath() -> str:
    return os.pathsep.join([str(ROOT), *site.getsitepackages()])


class ThrowawayUser:
    """An unprivileged Unix user for one run; ``remove()`` kills its processes (by uid) and
    removes it with its home."""

    def __init__(self):
        self.name = USER_PREFIX + secrets.token_hex(4)
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", self.name], check=True,
                       capture_output=True)
        self.pw = pwd.getpwnam(self.name)

    def processes(self, sparing: set[int] = frozenset()) -> list[psutil.Process]:
        uid = self.pw.pw_uid
        return [p for p in psutil.process_iter(["uids"]) if p.pid not in sparing
                and p.info["uids"] and uid in (p.info["uids"].real, p.info["uids"].effective)]

    def kill_processes(self, sparing: set[int] = frozenset()) -> int:
        """Kill every process of this user but ``sparing``; how many there were."""
        killed = 0
        for _ in range(20):  # what forks while we kill is caught by the next round
            found = self.processes(sparing)
            if not found:
                return killed
            for proc in found:
                try:
                    proc.kill()
                    killed += 1
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(found, timeout=5)
        raise RuntimeError(f"processes of {self.name} keep coming back")

    def remove(self) -> None:
        self.kill_processes()
        subprocess.run(["userdel", "-r", "-f", self.name], capture_output=True)
        shutil.rmtree(self.pw.pw_dir, ignore_errors=True)


def remove_stale_users() -> None:
    """Throwaway users an interrupted run left behind (none of their processes runs)."""
    for entry in pwd.getpwall():
        if entry.pw_name.startswith(USER_PREFIX) and not any(
                p.info["uids"] and p.info["uids"].real == entry.pw_uid
                for p in psutil.process_iter(["uids"])):
            subprocess.run(["userdel", "-r", "-f", entry.pw_name], capture_output=True)


class SandboxServer(GuardedServer):
    """A guarded ``jupyter server`` run as the throwaway user, with no new privileges and a
    cap on its processes, in a folder of that user's, with a minimal environment."""

    def __init__(self, user: ThrowawayUser, folder: Path, python: Path):
        folder.mkdir(mode=0o700)
        super().__init__(guard=GUARD_SETTINGS, folder=folder)
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, user.pw.pw_uid, user.pw.pw_gid)
        self.user = user
        jupyter = {k: v for k, v in self.env.items() if k.startswith("JUPYTER")}
        self.env = {**jupyter, "HOME": user.pw.pw_dir, "USER": user.name, "LOGNAME": user.name,
                    "SHELL": "/bin/sh", "LANG": "C.UTF-8", "TERM": "xterm",
                    "PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin",
                    "PYTHONPATH": pythonpath()}
        server = [str(python) if a == sys.executable else a for a in self.argv
                  if a != "--allow-root"]
        self.argv = ["prlimit", f"--nproc={MAX_PROCESSES}", f"--fsize={MAX_FILE_BYTES}", "--",
                     "setpriv", "--no-new-privs", "--", *server]

    def launch(self) -> subprocess.Popen:
        log = open(self.log_path, "wb")  # noqa: SIM115 (the server writes it until it stops)
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.dir, stdout=log,
                                        stderr=subprocess.STDOUT, user=self.user.pw.pw_uid,
                                        group=self.user.pw.pw_gid, extra_groups=[],
                                        start_new_session=True)
        return self.process

    def ticks(self) -> int:
        return self.api("GET", "colab-guard/api/status")["ticks"]

    def incidents_of(self, kernel_id: str) -> list[dict]:
        found = self.api("GET", f"colab-guard/api/incidents?kernel_id={kernel_id}&limit=1000")
        return found["incidents"]


# ---------------------------------------------------------------- running cells


class NotebookRun:
    """One notebook in one kernel: its cells in order, each with the incidents that came."""

    def __init__(self, server: SandboxServer, user: ThrowawayUser, cell_timeout: float):
        self.server, self.user, self.cell_timeout = server, user, cell_timeout
        self.kernel_id, self.client = server.start_kernel()
        self.seen: set[str] = set()
        self.probe()

    def probe(self) -> None:
        """Refuse to go on unless the kernel runs as the throwaway user, with no new
        privileges, in this network namespace, with the kernel hook loaded from this worktree."""
        reply, text = self.execute(PROBE, 120)
        if reply is None or reply["status"] != "ok":
            raise RuntimeError(f"the probe cell failed: {text[-2000:]}")
        pid, uid, hooked, package = text.split()
        status = Path(f"/proc/{pid}/status").read_text()
        if int(uid) != self.user.pw.pw_uid or hooked != "True" or \
                not package.startswith(str(ROOT / "colab_guard")) or \
                "NoNewPrivs:\t1" not in status or \
                os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net"):
            raise RuntimeError(f"the kernel is not the one asked for: {text!r}")

    def execute(self, source: str, timeout: float) -> tuple[dict | None, str]:
        """Run a cell: its execute reply's content (None if none came in time) and its
        printed text. No stdin: input() and getpass() raise at once."""
        msg_id = self.client.execute(source, allow_stdin=False, stop_on_error=False)
        reply = self.reply_to(msg_id, timeout)
        return reply, (self.drain_output(msg_id) if reply is not None else "")

    def reply_to(self, msg_id: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.client.get_shell_msg(timeout=min(left, 1.0))
            except Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg["content"]
        return None

    def drain_output(self, msg_id: str) -> str:
        """The cell's printed text, up to its kernel's idle status."""
        text = []
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=10)
            except Empty:
                return "".join(text)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                text.append(msg["content"]["text"])
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(text)

    def run_cell(self, index: int, source: str) -> CellRun:
        started = time.monotonic()
        msg_id = self.client.execute(source, allow_stdin=False, stop_on_error=False)
        reply = self.reply_to(msg_id, self.cell_timeout)
        if reply is None:  # still running: interrupt it, as a user would
            self.server.api("POST", f"api/kernels/{self.kernel_id}/interrupt")
            reply = self.reply_to(msg_id, self.cell_timeout)
            cell = CellRun(index, "timeout" if reply is not None else "stuck")
            if reply is None:
                self.restart()
        else:
            ename = reply.get("ename", "") if reply["status"] == "error" else ""
            cell = CellRun(index, "refused" if ename == "CellRefused" else reply["status"], ename)
        self.drain_iopub()  # the output is not kept: the zmq queue must not grow
        self.settle()
        cell.incidents = self.new_incidents()
        cell.seconds = time.monotonic() - started
        return cell

    def drain_iopub(self) -> None:
        while True:
            try:
                self.client.get_iopub_msg(timeout=0.2)
            except Empty:
                return

    def restart(self) -> None:
        """A kernel that does not answer an interrupt: restarted (its memory of earlier
        cells goes with it, in the kernel and in the guard)."""
        self.server.api("POST", f"api/kernels/{self.kernel_id}/restart", timeout=120)
        self.client.wait_for_ready(timeout=120)
        self.drain_iopub()

    def settle(self) -> None:
        """Wait for two sampling ticks to start after the cell ended: what it left running
        has been seen, and any incident about it recorded."""
        now = self.server.ticks()
        wait_until(lambda: self.server.ticks() >= now + 2, timeout=60, interval=0.2,
                   what="two sampling ticks")

    def new_incidents(self) -> list[KernelIncident]:
        found = [r for r in reversed(self.server.incidents_of(self.kernel_id))
                 if r["id"] not in self.seen]  # oldest first
        self.seen.update(r["id"] for r in found)
        return [KernelIncident.from_api(r) for r in found]

    def close(self) -> None:
        self.client.stop_channels()
        try:
            self.server.api("DELETE", f"api/kernels/{self.kernel_id}", timeout=120)
        except OSError:
            pass  # gone already


def run_notebook(server: SandboxServer, user: ThrowawayUser, entry: dict,
                 cell_timeout: float) -> KernelNotebookResult:
    path = CORPUS / entry["file"]
    result = KernelNotebookResult(path.stem, entry["kind"], entry.get("key_cell"),
                                  bool(entry.get("refuse")))
    started = time.monotonic()
    run = NotebookRun(server, user, cell_timeout)
    try:
        for index, source in code_cells(path):
            cell = run.run_cell(index, source)
            result.cells.append(cell)
            if cell.outcome in ("timeout", "stuck"):
                result.notes.append(f"cell {index} ran past {cell_timeout:g} s: interrupted"
                                    + (", kernel restarted" if cell.outcome == "stuck" else ""))
    finally:
        run.close()
        left = user.kill_processes(sparing={server.process.pid})
        if left:
            result.notes.append(f"{left} processes left behind, killed")
    result.seconds = time.monotonic() - started
    return result


# ---------------------------------------------------------------- the run


def selected(only: list[str]) -> list[dict]:
    entries = manifest()["notebooks"]
    if not only:
        return entries
    by_name = {Path(e["file"]).stem: e for e in entries}
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise SystemExit(f"not in tests/notebooks/manifest.yaml: {', '.join(unknown)}")
    return [by_name[n] for n in only]


def run_all(entries: list[dict], cell_timeout: float, report) -> list[KernelNotebookResult]:
    remove_stale_users()
    work = Path(tempfile.mkdtemp(prefix="cg-notebooks-kernel-"))
    work.chmod(0o755)
    user = ThrowawayUser()
    server = None
    results = []
    try:
        python = python_for_users(work)
        for entry in entries:
            if server is None or server.process.poll() is not None:  # a cell can kill it
                server = SandboxServer(user, Path(user.pw.pw_dir) / f"server-{len(results)}",
                                       python).start(timeout=180)
            result = run_notebook(server, user, entry, cell_timeout)
            results.append(result)
            report(result)
    finally:
        if server is not None:
            server.stop()
        user.remove()
        shutil.rmtree(work, ignore_errors=True)
    return results


def print_row(result: KernelNotebookResult) -> None:
    row = result.row()
    print(f"{'ok  ' if result.ok else 'MISS'} {result.kind:6} {result.name:30} "
          f"key {str(result.key_cell):>4}  first acted {str(row['first_acted']):>4} "
          f"({row['action'] or '-'}), refused {str(row['first_refused']):>4}  "
          f"{row['seconds']:.0f} s", flush=True)
    for cell in result.cells:
        for i in cell.incidents:
            print(f"       cell {cell.index:>3} {cell.outcome:8} {i.category:18} {i.action:9} "
                  f"{i.signature}{'' if i.from_cell_check else ' (what it ran)'}", flush=True)
    for late in row["late_refusals"]:
        print(f"       cell {late[0]:>3}: refusal recorded but the cell ran (verdict late): "
              f"{late[1]}", flush=True)
    for note in result.notes:
        print(f"       {note}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME",
                        help="these notebooks (file stems), in this order")
    parser.add_argument("--json", action="store_true", help="one JSON object per notebook")
    parser.add_argument("--cell-timeout", type=float, default=20.0,
                        help="seconds a cell may run before it is interrupted (default 20)")
    args = parser.parse_args(argv)
    entries = selected(args.only)
    if os.geteuid() != 0:
        raise SystemExit("run as root: it creates a Unix user and a network namespace")
    enter_network_namespace(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the cleanup still runs
    started = time.monotonic()
    report = (lambda r: print(json.dumps(r.row()), flush=True)) if args.json else print_row
    results = run_all(entries, args.cell_timeout, report)
    if not args.json:
        abuse = [r for r in results if r.kind == "abuse"]
        benign = [r for r in results if r.kind == "benign"]
        print(f"\nabuse acted on at or before the key cell: {sum(r.ok for r in abuse)}/"
              f"{len(abuse)}; benign touched: {sum(not r.ok for r in benign)}/{len(benign)}; "
              f"{time.monotonic() - started:.0f} s in all")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
