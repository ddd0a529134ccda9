"""The server's end of the kernel channel: reports in, cell verdicts and notices out.

A Unix socket in a private folder (0700) of Jupyter's runtime directory, itself
mode 0600. Every connection opens with ``hello``: the kernel id and the token
HMAC(secret, kernel id), which only that kernel's environment holds (the
secret never leaves the server), from a process that is that kernel or one of
its descendants (checked with SO_PEERCRED). So a kernel reports only for
itself, and nothing else can inject reports or receive verdicts.

What arrives makes the monitor check at once (a short burst of ticks, long
enough for a program just started to open its sockets); what the guard does is
told to the kernel, which shows it in the notebook.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from jupyter_core.paths import jupyter_runtime_dir

from . import cellwitness
from .act.policy import Policy
from .cellwitness import CellWitness
from .detect.cells import CellProcess, normalise_cell
from .detect.engine import STARTS_PREFIX, Detection, Engine, cell_findings
from .detect.signatures import SignatureSet
from .kernel import protocol
from .kernel.notice import shorten
from .observe.model import Snapshot, normalise_ip
from .record import metrics
from .record.incident import Action, Incident, clean_text
from .record.recorder import Recorder
from .settings import Settings
from .vocabulary import at_least

if TYPE_CHECKING:
    from .monitor import Monitor

#: After a report, the monitor checks every BURST_STEP seconds for BURST_SECONDS.
BURST_SECONDS = 1.5
BURST_STEP = 0.1
HELLO_TIMEOUT = 5.0
#: A channel that closes while its kernel lives on this long after is tampering.
CLOSE_GRACE = 1.0
WITNESS_STEP = 0.5  # seconds between two looks at what the kernels' reports owe
#: Run-time code (exec, compile, imports of files outside the environment) is checked like a
#: cell, within a budget per kernel: seconds of checking earned per second, at most BURST.
CODE_CHECK_RATE = 0.2
CODE_CHECK_BURST = 2.0
MAX_PIECES = protocol.MAX_CHECKED // protocol.MAX_CELL + 2
READ_CELLS_KEPT = 8  # a kernel's last cells read, answered again without reading


class KernelChannel:
    def __init__(self, settings: Settings, rules: SignatureSet, monitor: Monitor,
                 policy: Policy, recorder: Recorder, log: logging.Logger | None = None):
        self.settings, self.monitor, self.policy, self.recorder = settings, monitor, policy, recorder
        self.log = log or logging.getLogger("colab_guard")
        self._secret = os.urandom(32)
        self.folder = _private_folder()
        self.path = str(self.folder / "kernels.sock")
        self.kernels: dict[str, _Connection] = {}  # kernel id -> its live connection
        self.rules = rules
        #: kernel id -> its cell checks (an engine of its own and a thread of its own)
        self._cell_checks: dict[str, _KernelChecks] = {}
        #: cell signatures switched off after raising, with the error, and those whose regex
        #: ran out of time: shared by every kernel's engine, so that one is said once and
        #: switched off for all (never raising again in each new kernel)
        self.disabled: dict[str, str] = {}
        self.slow: set[str] = set()
        self.code_engine = self._engine()  # run-time code (its own memory)
        self._code_checking = ThreadPoolExecutor(1, thread_name_prefix="colab-guard-code")
        self._witness_task: asyncio.Task | None = None
        self._server: asyncio.AbstractServer | None = None
        self._burst_until = 0.0
        self._burst_task: asyncio.Task | None = None
        self._told: set[tuple[str, str]] = set()  # (incident, action) sent to its kernel
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        recorder.acting_listeners.append(self._tell_kernel)
        recorder.listeners.append(self._tell_kernel)

    def environment(self, kernel_id: str) -> dict[str, str]:
        """What a kernel needs in its environment to reach the channel as itself."""
        return {
            protocol.ENV_SOCKET: self.path,
            protocol.ENV_TOKEN: protocol.token_for(self._secret, kernel_id),
            # 0: the kernel does not ask (cell checks off)
            protocol.ENV_CELL_TIMEOUT: str(self.settings.cell_check_timeout
                                           if self.settings.cell_checks else 0),
            protocol.ENV_CELL_LIMIT: str(self.settings.cell_check_limit),
        }

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path,
                                                       limit=protocol.MAX_LINE)
        os.chmod(self.path, 0o600)
        self._witness_task = asyncio.ensure_future(self._watch_witnesses())
        self.log.info("colab-guard: kernel channel on %s", self.path)

    async def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._witness_task is not None:
            self._witness_task.cancel()
        for conn in list(self.kernels.values()):
            conn.writer.close()
            conn.stop_witness()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for checks in self._cell_checks.values():
            checks.thread.shutdown()
        self._code_checking.shutdown(wait=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    def connected(self, kernel_id: str) -> bool:
        return kernel_id in self.kernels

    # ------------------------------------------------------------ connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = await self._greet(reader, writer)
        except (OSError, ValueError, KeyError, asyncio.TimeoutError,
                asyncio.LimitOverrunError, asyncio.IncompleteReadError) as err:
            metrics.KERNEL_CHANNEL_REFUSED.inc()
            self.log.warning("colab-guard: kernel channel connection refused: %s", err)
            writer.close()
            return
        if conn is None:
            writer.close()
            return
        try:
            await self._listen(conn)
        except (OSError, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            await self._closed(conn)

    async def _greet(self, reader, writer) -> _Connection | None:
        peer_pid, peer_uid = _peer(writer)
        if peer_uid != os.getuid():
            raise ValueError(f"a process of uid {peer_uid} connected")
        hello = protocol.decode(await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT))
        kernel_id, token = str(hello.get("kernel_id", "")), str(hello.get("token", ""))
        if hello["type"] != "hello" or not hmac.compare_digest(
                protocol.token_for(self._secret, kernel_id), token):
            raise ValueError(f"bad token for kernel {kernel_id[:40]!r} from pid {peer_pid}")
        kernel_pid = self.monitor.kernel_pids().get(kernel_id)
        if kernel_pid is None or not _descends_from(peer_pid, kernel_pid):
            raise ValueError(f"pid {peer_pid} is not kernel {kernel_id}'s process or a child")
        conn = _Connection(kernel_id, peer_pid, kernel_pid, reader, writer)
        if hello.get("role") == "child":
            await self._child_report(conn)
            return None
        previous = self.kernels.get(kernel_id)
        self.kernels[kernel_id] = conn
        if previous is not None:
            previous.replaced = True
            previous.writer.close()
            previous.stop_witness()
        conn.send("welcome")
        self._start_witness(conn)
        return conn

    async def _child_report(self, conn: _Connection) -> None:
        """A child the kernel forked (a ``!`` line) reports the command it is about to exec."""
        self.monitor.claim(conn.pid, conn.kernel_id)
        self._check_burst()
        line = await asyncio.wait_for(conn.reader.readline(), HELLO_TIMEOUT)
        if line:
            self._events(conn, protocol.decode(line))

    async def _listen(self, conn: _Connection) -> None:
        while True:
            line = await conn.reader.readline()
            if not line:
                return
            message = protocol.decode(line)
            kind = message["type"]
            if kind == "events":
                self._events(conn, message)
            elif kind == "cell-part":
                conn.add_part(message.get("id"), message.get("piece"))
            elif kind == "cell":
                conn.send("checking", id=message.get("id"))  # the kernel waits for the verdict
                if conn.witness is not None and isinstance(message.get("digest"), str):
                    conn.witness.checked(message["digest"], str(message.get("file") or ""),
                                         "pending", "")
                self._spawn(self._answer_cell(conn, message))
            elif kind == "cell-abandoned":  # the kernel gave up waiting: the cell did not run
                if conn.witness is not None and isinstance(message.get("digest"), str):
                    conn.witness.decide(message["digest"], "abandoned", force=True)
            elif kind == "unloaded":
                conn.unloaded = True
                conn.stop_witness()
                await self._tampering(conn, "kernel-hook-unloaded",
                                      "The kernel hook was unloaded from inside the kernel; the "
                                      "server side still watches and enforces.")

    async def _closed(self, conn: _Connection) -> None:
        conn.stop_witness()
        if self.kernels.get(conn.kernel_id) is conn:
            del self.kernels[conn.kernel_id]
            checks = self._cell_checks.pop(conn.kernel_id, None)
            if checks is not None:  # what its cells left: gone with it
                checks.thread.shutdown()
        if conn.unloaded or conn.replaced or self._stopping:
            return
        try:
            await asyncio.sleep(CLOSE_GRACE)  # a kernel shutting down or restarting dies now
        except asyncio.CancelledError:
            return  # the server is stopping
        if self._stopping or not _alive(conn.kernel_pid) or \
                self.monitor.kernel_pids().get(conn.kernel_id) != conn.kernel_pid:
            return
        await self._tampering(conn, "kernel-hook-channel-closed",
                              "The kernel hook's channel was closed while the kernel went on "
                              "running; the server side still watches and enforces.")

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ reports

    def _events(self, conn: _Connection, message: dict) -> None:
        altered = message.get("altered")
        if isinstance(altered, list) and altered and "kernel-hook-altered" not in conn.tampered:
            conn.tampered.add("kernel-hook-altered")
            what = ", ".join(clean_text(str(a))[:40] for a in altered[:8])
            self._spawn(self._tampering(
                conn, "kernel-hook-altered",
                f"The kernel hook's settings were changed from inside the kernel ({what}): "
                "what it reports was silenced. The server side still watches and enforces."))
        dropped = message.get("dropped")
        if isinstance(dropped, int) and dropped > conn.dropped:
            metrics.KERNEL_EVENTS_DROPPED.inc(dropped - conn.dropped)
            conn.dropped = dropped
        if message.get("events"):
            if any(not (isinstance(e, list) and e and e[0] in ("ran", "code"))
                   for e in message["events"]):
                self._check_burst()  # a program, a connection: sample now
            endpoints = connected_to(message["events"])
            if endpoints:
                self.monitor.note_connects(conn.kernel_id, endpoints)
            modules = [e[1] for e in message["events"] if isinstance(e, list) and len(e) == 2
                       and e[0] == "import" and isinstance(e[1], str)]
            if modules:
                self.monitor.note_imports(conn.kernel_id, modules)
            binds = bound_by(message["events"])
            if binds:
                self.monitor.note_binds(conn.kernel_id, binds)
            for kind, detail in _details(message["events"], ("ran", "code")):
                if kind == "ran" and conn.witness is not None:
                    conn.witness.ran(detail)
                elif kind == "code":
                    self._check_code(conn, detail)

    def _check_burst(self) -> None:
        """Check now, and keep checking briefly: a program just started has no sockets yet."""
        self._burst_until = time.monotonic() + BURST_SECONDS
        self.monitor.check_soon()
        if self._burst_task is None or self._burst_task.done():
            self._burst_task = asyncio.ensure_future(self._burst())

    async def _burst(self) -> None:
        while time.monotonic() < self._burst_until and not self._stopping:
            await asyncio.sleep(BURST_STEP)
            self.monitor.check_soon()

    # ------------------------------------------------------------ cells

    async def _answer_cell(self, conn: _Connection, message: dict) -> None:
        pieces = conn.parts.pop(message.get("id"), [])
        if isinstance(message.get("code"), str) and message["code"]:
            pieces.append(message["code"])
        source = str(message.get("source") or "")[:protocol.MAX_SOURCE_SHOWN] or \
            "\n".join(pieces)[:protocol.MAX_SOURCE_SHOWN]
        answer = {"id": message.get("id"), "decision": "run"}
        detections: list[Detection] = []
        reason = _too_long(pieces)
        if not reason:
            detections, reason = await self._read_cell(conn, pieces)
        if reason:
            answer.update(decision="refuse", reason=reason)
            detections = []
        elif detections and self.settings.cell_checks:
            incident, action = await self._record_cell(conn, source, detections)
            answer["decision"] = "refuse" if action == "refuse" and not incident.dry_run \
                else "run"
            if action != "record":
                answer["notice"] = self.notice(incident, action)
        conn.send("verdict", **answer)
        if conn.witness is not None and isinstance(message.get("digest"), str):
            conn.witness.decide(message["digest"], answer["decision"])
            # What the check read (one piece: to tell a cell that cannot compile; all of it,
            # to compare with what the cell itself makes), and what it found there.
            conn.witness.read(message["digest"], pieces[0] if len(pieces) == 1 else "",
                              "\n".join(pieces) if not reason else None,
                              frozenset(d.signature.id for d in detections) if not reason
                              else frozenset())

    async def _read_cell(self, conn: _Connection, pieces: list[str]
                         ) -> tuple[list[Detection], str]:
        """What the cell check finds in this code, and why it could not be read at all (or
        ""); the same code sent again (a cell run again after the kernel gave up waiting for
        a long check) is answered from the first reading."""
        key = hashlib.sha256("\0".join(pieces).encode("utf-8", "surrogatepass")).digest()
        found = conn.read_cells.get(key)
        if found is None and self.kernels.get(conn.kernel_id) is not conn:
            return [], ""  # its kernel is gone (or connected anew): no one waits for this
        if found is None:
            checks = self._checks_of(conn)
            found = await asyncio.wrap_future(checks.thread.submit(
                self._evaluate_cell, conn, checks.engine, pieces))
            conn.read_cells[key] = found
            while len(conn.read_cells) > READ_CELLS_KEPT:
                conn.read_cells.pop(next(iter(conn.read_cells)))
        return found

    @staticmethod
    def _evaluate_cell(conn: _Connection, engine: Engine, pieces: list[str]
                       ) -> tuple[list[Detection], str]:
        """A cell's code, piece by piece (read as consecutive cells: names carry over); and
        why a piece could not be read at all, or ""."""
        found: list[Detection] = []
        # a glob in a program's place is resolved against the kernel's folder, as its shell
        # would (through /proc: the kernel's own view, whatever its mount namespace)
        engine.cell_memory(conn.kernel_id).folder = f"/proc/{conn.kernel_pid}/cwd"
        for piece in pieces:
            process = CellProcess(pid=conn.kernel_pid, is_kernel=True, cell=piece)
            found.extend(engine.evaluate(Snapshot(conn.kernel_id, time.time(), [process])))
            if process.unread:
                return [], process.unread
        return found, ""

    def _checks_of(self, conn: _Connection) -> _KernelChecks:
        checks = self._cell_checks.get(conn.kernel_id)
        if checks is None:
            checks = self._cell_checks[conn.kernel_id] = _KernelChecks(self._engine())
        return checks

    def _engine(self) -> Engine:
        return Engine(self.rules, log=self.log, disabled=self.disabled, slow=self.slow)

    # ------------------------------------------------------------ code run in the kernel

    def _check_code(self, conn: _Connection, text: str) -> None:
        """Source the kernel compiled and ran (exec of a string, a file imported): checked
        like a cell, off the event loop, within the kernel's budget; what it finds is acted on
        like a process of the kernel (interrupt)."""
        if not self.settings.cell_checks:
            return
        now = time.monotonic()
        conn.code_credit = min(CODE_CHECK_BURST,
                               conn.code_credit + (now - conn.code_checked) * CODE_CHECK_RATE)
        conn.code_checked = now
        if conn.code_credit <= 0 or conn.code_queued >= 8:
            metrics.KERNEL_CODE_UNCHECKED.inc()
            self.log.info("colab-guard: kernel %s: run-time code over its check budget, not "
                          "checked (%d characters)", conn.kernel_id, len(text))
            return
        conn.code_queued += 1
        self._spawn(self._answer_code(conn, text))

    async def _answer_code(self, conn: _Connection, text: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            started = time.monotonic()
            snapshot, detections = await loop.run_in_executor(
                self._code_checking, self._evaluate_code, conn, text)
            conn.code_credit -= time.monotonic() - started
        finally:
            conn.code_queued -= 1
        if snapshot.processes[0].unread:  # already running: said, not refused
            metrics.KERNEL_CODE_UNCHECKED.inc()
            self.log.info("colab-guard: kernel %s: run-time code too deeply nested to read, not "
                          "checked (%d characters)", conn.kernel_id, len(text))
        if detections and not self._stopping:
            self.monitor.act_on(snapshot, detections)

    def _evaluate_code(self, conn: _Connection, text: str):
        process = CellProcess(pid=conn.kernel_pid, is_kernel=True, cell=text,
                              name="python", cmdline=["(code run in the kernel)"])
        snapshot = Snapshot(conn.kernel_id, time.time(), [process])
        return snapshot, self.code_engine.evaluate(snapshot)

    # ------------------------------------------------------------ the witness

    def _start_witness(self, conn: _Connection) -> None:
        """Subscribe to the kernel's IOPub, as a frontend does: the cells that run there must
        be the cells the hook had checked and reported run (cellwitness.py)."""
        km = getattr(getattr(self.monitor, "kernels", None), "km", None)
        if km is None:
            return
        try:
            from jupyter_client.session import Session

            kernel = km.get_kernel(conn.kernel_id)
            session = Session(config=kernel.session.config, key=kernel.session.key)
            stream = kernel.connect_iopub()
        except Exception as err:  # no IOPub to watch: the other checks still hold
            self.log.warning("colab-guard: kernel %s: its IOPub cannot be watched (%s)",
                             conn.kernel_id, err)
            return
        conn.witness = CellWitness(expect_checks=self.settings.cell_checks)
        conn.iopub = stream
        stream.on_recv(lambda parts: _witness_message(conn.witness, session, parts))
        self._note_interrupts(km)

    def _note_interrupts(self, km) -> None:
        """Wrap the kernel manager's interrupt (this instance, once): a cell interrupted through
        the server owes no check and no run report."""
        if getattr(km, "_colab_guard_notes_interrupts", False):
            return
        interrupt_kernel = km.interrupt_kernel

        def noted_interrupt_kernel(kernel_id, *args, **kwargs):
            conn = self.kernels.get(kernel_id)
            if conn is not None and conn.witness is not None:
                conn.witness.interrupted()
            return interrupt_kernel(kernel_id, *args, **kwargs)

        km.interrupt_kernel = noted_interrupt_kernel
        km._colab_guard_notes_interrupts = True

    async def _watch_witnesses(self) -> None:
        while not self._stopping:
            await asyncio.sleep(WITNESS_STEP)
            for conn in list(self.kernels.values()):
                if conn.witness is None or conn.unloaded:
                    continue
                for execution, what in conn.witness.due():
                    self._spawn(self._confirm_tampering(conn, execution, what))

    async def _confirm_tampering(self, conn: _Connection, execution, what: str) -> None:
        """The server itself checks the cell could run before it calls the silence tampering."""
        loop = asyncio.get_running_loop()
        if what == "compare":
            await self._compare_check(conn, execution)
            return
        if what == "unchecked":
            if not await loop.run_in_executor(self._code_checking, cellwitness.would_run,
                                              execution.code):
                return
            signature, text = "kernel-hook-cell-unchecked", (
                "A cell ran without being checked: the kernel hook's cell check was switched "
                "off from inside the kernel. The server side still watches and enforces.")
        else:
            if execution.checked_code and not await loop.run_in_executor(
                    self._code_checking, cellwitness.compiles, execution.checked_code):
                return
            signature, text = "kernel-hook-silenced", (
                "A cell ran and the kernel hook did not report it: its audit hook was "
                "switched off from inside the kernel. The server side still watches and "
                "enforces.")
        if signature in conn.tampered or not self._alive_connection(conn):
            return
        conn.tampered.add(signature)
        await self._tampering(conn, signature, text)

    async def _compare_check(self, conn: _Connection, execution) -> None:
        """A cell checked and let run: if the code the check read is not what the cell itself
        makes, the server reads the cell (as run-time code, off the event loop); what it
        finds there that the check did not means the check was fed other code: tampering,
        and acted on like code run in the kernel."""
        loop = asyncio.get_running_loop()
        pieces = await loop.run_in_executor(self._code_checking, cellwitness.own_pieces,
                                            execution.code, execution.checked_text)
        if not pieces or self._stopping:
            return
        snapshot, detections = await loop.run_in_executor(
            self._code_checking, self._evaluate_code, conn, "\n".join(pieces))
        missed = [d for d in detections if d.signature.id not in execution.checked_found]
        if not missed or not self._alive_connection(conn):
            return
        if "kernel-hook-check-forged" not in conn.tampered:
            conn.tampered.add("kernel-hook-check-forged")
            await self._tampering(conn, "kernel-hook-check-forged", (
                "A cell ran whose check had read other code: the kernel hook's cell check was "
                "fed something else from inside the kernel. The server read the cell itself "
                "and acts on what it found."))
        self.monitor.act_on(snapshot, missed)

    def _alive_connection(self, conn: _Connection) -> bool:
        return self.kernels.get(conn.kernel_id) is conn and not conn.unloaded

    async def _record_cell(self, conn: _Connection, source: str,
                           detections: list[Detection]) -> tuple[Incident, str]:
        plan = self.policy.cell(detections)
        incident = Incident.from_detections(detections, self.settings.user_name,
                                            await self.monitor.kernels.notebook_path(conn.kernel_id),
                                            self.settings.dry_run)
        cell = cell_evidence(detections, source)
        matches = incident.evidence.get("matches", [])
        for match in matches:  # the lines that matched, not the signature's regex
            match["reasons"] = [_finding_text(f) for f in cell["findings"]
                                if f["signature"] == match["signature"]]
        incident.evidence = {"cell": cell, "matches": matches}
        incident.actions = plan.steps
        self._told.add((incident.id, plan.action))  # the verdict carries the notice
        await self.recorder.record(incident, plan.action)
        return incident, plan.action

    # ------------------------------------------------------------ notices

    def notice(self, incident: Incident, action: str, message: str | None = None,
               policy_url: str | None = None) -> dict:
        """What the notebook shows (every text in it is escaped there); the message and
        policy link are this server's unless given (the node watcher's own)."""
        detected = incident.summary()
        procs = incident.evidence.get("processes") or []
        if procs and procs[0].get("cmdline"):
            detected += f" — {shorten(procs[0]['cmdline'], 120)}"
        findings = (incident.evidence.get("cell") or {}).get("findings")
        if findings:
            detected += f" — {shorten(_finding_text(findings[0]), 120)}"
        return {"incident_id": incident.id, "category": incident.category,
                "detected": detected, "action": action, "dry_run": incident.dry_run,
                "strike": incident.strike, "package": _package_text(incident.package),
                "message": self.settings.warning_message if message is None else message,
                "policy_url": self.settings.policy_url if policy_url is None else policy_url}

    def _tell_kernel(self, incident: Incident, action: str, message: str | None = None,
                     policy_url: str | None = None) -> None:
        """Monitor listener: send the notice to the incident's kernel, once."""
        told = (incident.id, action)  # an incident's later, stronger action told too
        if told in self._told or not at_least(action, "warn"):
            return
        conn = self.kernels.get(incident.kernel_id)
        if conn is not None:
            self._told.add(told)
            if len(self._told) > 10_000:
                self._told.clear()
            conn.send("notice", notice=self.notice(incident, action, message, policy_url))

    #: the node watcher's incidents (watcher_link.py), with the watcher's message and link
    tell = _tell_kernel

    async def _tampering(self, conn: _Connection, signature: str, description: str) -> None:
        action = self.policy.tampering()
        incident = Incident(kernel_id=conn.kernel_id, category="tampering", severity="medium",
                            signature=signature, description=description,
                            user=self.settings.user_name, signatures=[signature],
                            notebook=await self.monitor.kernels.notebook_path(conn.kernel_id),
                            evidence={"kernel_pid": conn.kernel_pid, "reporter_pid": conn.pid},
                            dry_run=self.settings.dry_run,
                            actions=[Action("record", "incident log", "done")])
        if at_least(action, "warn"):
            incident.actions.append(Action("warn", "user", "done"))
        await self.recorder.record(incident, action)


class _KernelChecks:
    """One kernel's cell checks: an engine of its own (what its earlier cells left) and a
    thread of its own, so that a cell slow to read (a quarter of a MiB of chained calls reads
    for seconds) holds up only its own kernel's cells, never another user's: the threads take
    turns on the GIL."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.thread = OnDemandThread("colab-guard-cells")


class OnDemandThread:
    """Runs calls one after another, in the order given, on a thread that exists only while
    there are calls to run: cells come at a person's pace, and a thread kept for each live
    kernel would idle between them (two hundred kernels, two hundred threads)."""

    def __init__(self, name: str):
        self.name = name
        self._calls: deque[tuple[Future, Callable, tuple]] = deque()
        self._lock = threading.Lock()
        self._running = False

    def submit(self, call: Callable, *args) -> Future:
        future: Future = Future()
        with self._lock:
            self._calls.append((future, call, args))
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name=self.name, daemon=True).start()
        return future

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._calls:
                    self._running = False
                    return
                future, call, args = self._calls.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call(*args))
                except BaseException as err:  # handed to whoever waits, as an executor does
                    future.set_exception(err)

    def shutdown(self) -> None:
        """Calls not started yet are cancelled; the one running ends on its own."""
        with self._lock:
            calls, self._calls = self._calls, deque()
        for future, _, _ in calls:
            future.cancel()


class _Connection:
    def __init__(self, kernel_id: str, pid: int, kernel_pid: int,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.kernel_id, self.pid, self.kernel_pid = kernel_id, pid, kernel_pid
        self.reader, self.writer = reader, writer
        self.dropped = 0
        self.unloaded = False
        self.replaced = False
        self.parts: dict = {}  # check request id -> pieces of a long cell received so far
        #: digest of a cell's code -> what was found, and why it could not be read (or "")
        self.read_cells: dict[bytes, tuple[list, str]] = {}
        self.witness: CellWitness | None = None
        self.iopub = None  # the kernel's IOPub stream the witness reads
        self.tampered: set[str] = set()  # tampering signatures recorded for this connection
        self.code_credit, self.code_checked, self.code_queued = CODE_CHECK_BURST, 0.0, 0

    def send(self, kind: str, **fields) -> None:
        if not self.writer.is_closing():
            self.writer.write(protocol.encode(kind, **fields))

    def add_part(self, request_id, piece) -> None:
        """A piece of a long cell; past MAX_PIECES the rest is kept as one overflow marker."""
        if not isinstance(piece, str) or len(self.parts) > 16 and request_id not in self.parts:
            return
        pieces = self.parts.setdefault(request_id, [])
        if len(pieces) < MAX_PIECES:
            pieces.append(piece)

    def stop_witness(self) -> None:
        self.witness = None
        if self.iopub is not None:
            try:
                self.iopub.close()
            except Exception:
                pass
            self.iopub = None


def _witness_message(witness: CellWitness | None, session, parts) -> None:
    """One IOPub message: what the witness needs of it (cells starting and finishing)."""
    if witness is None:
        return
    try:
        _idents, fed = session.feed_identities(parts)
        message = session.deserialize(fed, content=False)
        kind = message["header"]["msg_type"]
        if kind not in ("execute_input", "status"):
            return
        message = session.deserialize(fed)
        parent = str((message.get("parent_header") or {}).get("msg_id", ""))
        content = message["content"]
        if kind == "execute_input":
            witness.executing(parent, str(content.get("code", "")))
        elif kind == "status" and content.get("execution_state") == "idle":
            witness.idle(parent)
    except Exception:  # a malformed message is the kernel's problem, never the server's
        return


def _details(events, kinds: tuple[str, ...]):
    """(kind, detail) of the well-formed events of these kinds (the events are untrusted)."""
    if not isinstance(events, list):
        return
    for event in events:
        if isinstance(event, list) and len(event) == 2 and event[0] in kinds \
                and isinstance(event[1], str):
            yield event[0], event[1]


def _too_long(pieces: list[str]) -> str:
    """Why a cell's code is too long to check, or ''."""
    total = sum(len(p) for p in pieces)
    if total > protocol.MAX_CHECKED or len(pieces) >= MAX_PIECES:
        return (f"it has more code than the guard checks in one cell ({total:,} characters; "
                f"the limit is {protocol.MAX_CHECKED:,}). Split it into smaller cells, or load "
                "large data from a file (json.load, pandas.read_csv).")
    longest = max((len(p) for p in pieces), default=0)
    if longest > protocol.MAX_CELL:
        return (f"one of its statements is {longest:,} characters long, more than the guard "
                f"checks at once ({protocol.MAX_CELL:,}). Split it, or load large data from a "
                "file (json.load, pandas.read_csv).")
    return ""


_CONNECT = re.compile(r"\('([0-9A-Za-z.:_-]{1,255})', ([0-9]{1,5})[,)]")


def connected_to(events) -> list[tuple[str, int]]:
    """The (host, port) of each inet connection among a kernel's reported events (the hook
    reports socket.connect's address as text: "('127.0.0.1', 8080)"); anything else is
    skipped (the events are the user's, untrusted)."""
    found = []
    if not isinstance(events, list):
        return found
    for event in events:
        if isinstance(event, list) and len(event) == 2 and event[0] == "connect" \
                and isinstance(event[1], str):
            match = _CONNECT.match(event[1])
            if match and int(match.group(2)) <= 65535:
                found.append((normalise_ip(match.group(1)), int(match.group(2))))
    return found


_BIND = re.compile(r"\('[0-9A-Za-z.:_-]{0,255}', ([0-9]{1,5})[^)]*\)((?: [A-Za-z_][A-Za-z0-9_]{0,99}){0,16})$")


def bound_by(events) -> list[tuple[int, list[str]]]:
    """(port, the modules on the stack) of each inet socket the kernel bound, from the hook's
    "bind" reports ("('0.0.0.0', 8022) asyncssh asyncio ..."); anything else is skipped."""
    found = []
    if not isinstance(events, list):
        return found
    for event in events:
        if isinstance(event, list) and len(event) == 2 and event[0] == "bind" \
                and isinstance(event[1], str):
            match = _BIND.match(event[1])
            if match and int(match.group(1)) <= 65535:  # 0: a port the system picks
                found.append((int(match.group(1)), match.group(2).split()))
    return found


def cell_evidence(detections: list[Detection], source: str) -> dict:
    """The cell as evidence: its source, and per signature what made it match: the lines of
    the cell as the guard read it (disguises undone, earlier cells remembered), or the
    program it would start; with the line number in the cell where the text is found."""
    process = detections[0].process if detections else None
    normalised = getattr(process, "normalised", None) or normalise_cell(source)
    original = source.splitlines()
    findings = []
    for d in detections:
        for text in cell_findings([d], normalised):
            wanted = text.removeprefix(STARTS_PREFIX).strip()
            number = next((n for n, line in enumerate(original, 1)
                           if wanted and wanted in line), None)
            findings.append({"signature": d.signature.id, "line": number,
                             "text": clean_text(text, 512)})
    return {"source": clean_text(source), "findings": findings[:20]}


def _finding_text(finding: dict) -> str:
    return (f"line {finding['line']}: " if finding.get("line") else "") + finding["text"]


def _peer(writer: asyncio.StreamWriter) -> tuple[int, int]:
    sock = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _descends_from(pid: int, ancestor: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return pid == ancestor or any(p.pid == ancestor for p in proc.parents())
    except psutil.Error:
        return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _private_folder() -> Path:
    """A 0700 folder for the socket: in Jupyter's runtime dir, or /tmp if that path is too
    long for a Unix socket (108 bytes)."""
    runtime = Path(jupyter_runtime_dir())
    if len(str(runtime)) < 70:
        runtime.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="colab-guard-", dir=runtime))
    return Path(tempfile.mkdtemp(prefix="colab-guard-"))


def _package_text(package: dict | None) -> str | None:
    """"ultralytics 8.3.41": the installed package the program came from, for the notice."""
    return f"{package.get('name', '')} {package.get('version', '')}".strip() if package else None
