"""KernelGuard: the hook, the channel and the notebook side of the guard, in one kernel."""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import threading
import time
from collections import deque

from IPython.core.error import InputRejected
from IPython.display import publish_display_data

from . import notice as notices
from . import protocol
from .client import ChannelClient, report_from_child
from .code import cell_pieces
from .hook import Reporter, install

#: How long an interrupted cell waits for the guard's notice before it shows a plain
#: KeyboardInterrupt (the server sends the notice before it interrupts; this covers the race).
NOTICE_WAIT = 0.5
#: A guard notice this recent explains a KeyboardInterrupt.
NOTICE_FRESH = 15.0


class CellRefused(InputRejected):
    """The server refused to run a cell; the notice above the error, or ``reason``, says why."""

    def __init__(self, incident_id: str, reason: str = ""):
        super().__init__(reason or incident_id)
        self.incident_id, self.reason = incident_id, reason

    def _render_traceback_(self):
        if self.reason:
            return [f"CellRefused: the platform's usage guard did not run this cell: {self.reason}"]
        return [f"CellRefused: the platform's usage guard did not run this cell "
                f"(incident {self.incident_id})"]


#: A check the server started but did not finish within the limit (its verdict comes later:
#: the same cell run again is answered from what the server read meanwhile).
NOT_CHECKED_IN_TIME = ("the guard could not finish checking it within {limit:g} s (it is long, "
                       "or the server is busy). Run it again; if it is refused again, split it "
                       "into smaller cells or load large data from a file.")


class KernelGuard:
    def __init__(self, shell, client: ChannelClient, reporter: Reporter, cell_timeout: float,
                 cell_limit: float = 15.0):
        self.shell, self.client, self.reporter = shell, client, reporter
        self.cell_timeout, self.cell_limit = cell_timeout, cell_limit
        self.inbox: deque[dict] = deque(maxlen=32)  # notices not shown yet
        self.shown: dict[str, float] = {}  # incident id -> when shown
        self.running = False
        self.arrived = threading.Condition()
        self._raw_cell: str | None = None
        self._checker = _CellCheck(self)
        self._previous_custom = (shell.custom_exceptions, shell.CustomTB)

    @classmethod
    def from_environment(cls, shell) -> KernelGuard | None:
        env = os.environ
        path, token = env.get(protocol.ENV_SOCKET), env.get(protocol.ENV_TOKEN)
        kernel_id = env.get(protocol.ENV_KERNEL)
        if not (path and token and kernel_id):
            return None
        guard = cls.__new__(cls)
        client = ChannelClient(path, kernel_id, token, on_notice=lambda n: guard.receive(n))
        try:
            client.connect()
        except (OSError, ValueError) as err:
            print(f"colab-guard: the kernel hook could not reach the server ({err}); the "
                  "server still watches this kernel", file=sys.__stderr__)
            return None
        reporter = install()
        reporter.child_report = lambda detail: report_from_child(path, kernel_id, token, detail)
        guard.__init__(shell, client, reporter, float(env.get(protocol.ENV_CELL_TIMEOUT, "1.0")),
                       float(env.get(protocol.ENV_CELL_LIMIT, "15")))
        reporter.code_checks = guard.cell_timeout > 0  # run-time code is checked as cells are
        reporter.watched = guard.missing
        if guard.cell_timeout > 0:  # (no checks asked: none owed)
            reporter.cell_prefix = guard._cell_prefix()
            # Loaded from a cell (`%load_ext`, or the guard's own loader run by hand): that
            # cell started before any check existed, and its later statements owe none.
            frame = sys._getframe()
            while frame is not None and reporter.cell_prefix:
                if frame.f_code.co_filename.startswith(reporter.cell_prefix):
                    reporter.cells_run[frame.f_code.co_filename] = None
                frame = frame.f_back
        reporter.settle()
        return guard

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.shell.events.register("pre_run_cell", self.pre_run_cell)
        self.shell.events.register("post_run_cell", self.post_run_cell)
        self.shell.ast_transformers.append(self._checker)
        self.shell.set_custom_exc((KeyboardInterrupt,), _show_interrupt)
        self.shell._colab_guard = self
        self.client.start(self.reporter)  # (its heartbeat asks what is in place: all of it)

    def stop(self) -> None:
        """Unloaded from inside the kernel: the server records it, then stops listening."""
        self.reporter.enabled = False
        self.client.send("unloaded")
        self.client.close()
        for name, callback in (("pre_run_cell", self.pre_run_cell),
                               ("post_run_cell", self.post_run_cell)):
            try:
                self.shell.events.unregister(name, callback)
            except ValueError:
                pass
        while self._checker in self.shell.ast_transformers:
            self.shell.ast_transformers.remove(self._checker)
        self.shell.custom_exceptions, self.shell.CustomTB = self._previous_custom
        self.shell._colab_guard = None

    # ------------------------------------------------------------ notices

    def receive(self, notice: dict) -> None:
        """A notice from the server (receiver thread): into the running cell, or the next one."""
        with self.arrived:
            notice["received"] = time.monotonic()
            if self.running:
                self.show(notice)
            else:
                self.inbox.append(notice)
            self.arrived.notify_all()

    def show(self, notice: dict) -> None:
        incident = str(notice.get("incident_id", ""))
        if incident in self.shown:
            return
        self.shown[incident] = time.monotonic()
        if len(self.shown) > 256:
            self.shown.pop(next(iter(self.shown)))
        publish_display_data(notices.bundle(notice), metadata={"colab_guard": {
            "incident_id": incident, "action": notice.get("action")}})

    def show_inbox(self) -> None:
        with self.arrived:
            while self.inbox:
                self.show(self.inbox.popleft())

    def pre_run_cell(self, info) -> None:
        self._raw_cell = getattr(info, "raw_cell", None)
        transformers = self.shell.ast_transformers
        if self._checker in transformers and \
                (transformers[-1] is not self._checker or transformers.count(self._checker) > 1):
            # Last, once: the check reads the tree as it will run, after other extensions'
            # changes (_CellCheck.visit keeps it last while the transformers run). In one
            # slice assignment: the heartbeat (missing) never sees it gone meanwhile.
            transformers[:] = [t for t in transformers if t is not self._checker] + \
                [self._checker]
        self.running = True
        self.show_inbox()

    def post_run_cell(self, result) -> None:
        self.running = False
        self._raw_cell = None
        self.show_inbox()

    def missing(self) -> list[str]:
        """What of the guard a cell took out of IPython, asked by the hook's sender at every
        flush (a heartbeat, ``Reporter.altered``): the check from the AST transformers, its
        pre/post_run_cell callbacks. Cells that run then (silent ones too, which IOPub does
        not show) would go unchecked; the server records it as tampering."""
        if self.shell is None or getattr(self.shell, "_colab_guard", None) is not self:
            return ["extension"] if self.shell is not None else []
        found = []
        if self._checker not in getattr(self.shell, "ast_transformers", ()):
            found.append("cell-check")
        callbacks = getattr(getattr(self.shell, "events", None), "callbacks", None)
        if not isinstance(callbacks, dict):
            return found  # (an IPython that keeps them otherwise: not told here)
        for name, callback in (("pre_run_cell", self.pre_run_cell),
                               ("post_run_cell", self.post_run_cell)):
            if callback not in callbacks.get(name, ()):
                found.append(name)
        return found

    def guard_interrupted(self) -> dict | None:
        """The notice that explains a KeyboardInterrupt, waiting briefly for it to arrive."""
        deadline = time.monotonic() + NOTICE_WAIT
        with self.arrived:
            while True:
                found = self._fresh_notice()
                if found is not None or time.monotonic() >= deadline:
                    return found
                self.arrived.wait(max(0.0, deadline - time.monotonic()))

    def _fresh_notice(self) -> dict | None:
        now = time.monotonic()
        for notice in list(self.inbox):
            if notice.get("action") in ("interrupt", "shutdown") and \
                    now - notice["received"] < NOTICE_FRESH:
                self.inbox.remove(notice)
                self.show(notice)
                return notice
        recent = [i for i, t in self.shown.items() if now - t < NOTICE_FRESH]
        return {"incident_id": recent[-1]} if recent else None

    # ------------------------------------------------------------ cell checks

    def check_cell(self, tree: ast.Module) -> None:
        """Ask the server about the code about to run (the tree after every transformer, not
        the raw cell); raise CellRefused if it says no."""
        raw, self._raw_cell = self._raw_cell, None
        if self.cell_timeout <= 0 or self.client.closed.is_set():
            return
        try:
            pieces = cell_pieces(tree, len(raw) if raw is not None else 0)
        except RecursionError:  # nested deeper than unparse goes: the server reads the cell
            pieces = [raw[:protocol.MAX_CELL]] if raw is not None else []
        self.reporter.cell_checked = True  # (taken back if refused: then nothing runs)
        if not pieces:
            return
        fields = {}
        if raw is not None:  # the cell itself (not code a magic such as %time transforms)
            fields = {"digest": hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest(),
                      "source": raw[:protocol.MAX_SOURCE_SHOWN], "file": self._file_of(raw)}
            self.reporter.cell_file = fields["file"]
        code = pieces.pop() if len(pieces) == 1 else ""
        verdict = self.client.check(pieces, self.cell_timeout, self.cell_limit, code=code,
                                    **fields)
        if verdict is None:
            return  # the server did not answer: run it; the server side still watches it
        if verdict.get("decision") in ("timeout", "refuse"):
            self.reporter.cell_checked = False
        if verdict.get("decision") == "timeout":
            raise CellRefused("", NOT_CHECKED_IN_TIME.format(limit=self.cell_limit))
        if isinstance(verdict.get("notice"), dict):
            self.show(verdict["notice"])
        if verdict.get("decision") == "refuse":
            notice = verdict.get("notice") if isinstance(verdict.get("notice"), dict) else {}
            raise CellRefused(str(notice.get("incident_id", "")), str(verdict.get("reason", "")))

    def _cell_prefix(self) -> str | None:
        """What the file names IPython compiles cells under start with (ipykernel's
        ``/tmp/ipykernel_PID/``, IPython's ``<ipython-input-``): their code executed with no
        check before it is a cell run unchecked. None where it cannot be told."""
        name = self._file_of("pass")
        if name.startswith("<ipython-input-"):
            return "<ipython-input-"
        folder = os.path.dirname(name)
        return os.path.join(folder, "") if os.path.isabs(name) and folder != "/" else None

    def _file_of(self, raw: str) -> str:
        """The file name IPython compiles this cell under (its executions are reported by it)."""
        try:
            return str(self.shell.compile.get_code_name(raw, raw, self.shell.execution_count))
        except Exception:
            return ""


class _CellCheck(ast.NodeTransformer):
    """Runs on every cell's AST, just before it is compiled."""

    def __init__(self, guard: KernelGuard):
        self.guard = guard

    def visit(self, node):
        transformers = self.guard.shell.ast_transformers
        if transformers and transformers[-1] is not self and self in transformers:
            # A transformer added while they run (IPython iterates the live list): this
            # check comes again after it, so it reads the tree those leave.
            transformers.append(self)
            return node
        if any(t is not self for t in transformers):
            node = _own_copy(node)
        try:
            self.guard.check_cell(node)
        except InputRejected:
            raise
        except Exception:
            pass  # IPython drops a transformer that raises anything else
        return node


def _own_copy(tree: ast.AST) -> ast.AST:
    """A copy of a tree that other transformers saw (and may have kept: a thread holding it
    could rewrite a statement after the check read it, before IPython compiles it). The
    check reads the copy and IPython runs it: what runs is what was read. Only the nodes'
    fields and positions are copied, each into the ``ast`` class it is (a subclass's
    properties read once, attributes of the user's own dropped); about as fast as a pickle
    round trip (~1 ms per KiB of code). Nested past the recursion limit: the tree itself
    (the server then reads the raw cell, check_cell)."""
    try:
        return _copied(tree)
    except (RecursionError, TypeError, ValueError, AttributeError):
        return tree


def _copied(node):
    if isinstance(node, list):
        return [_copied(item) for item in node]
    if not isinstance(node, ast.AST):
        return node  # a constant, an identifier (compile takes exact types only)
    cls = next(c for c in type(node).__mro__ if c.__module__ == "ast" and c is not ast.AST)
    new = cls.__new__(cls)
    for name in cls._fields:
        if hasattr(node, name):
            setattr(new, name, _copied(getattr(node, name)))
    for name in cls._attributes:
        if hasattr(node, name):
            setattr(new, name, getattr(node, name))
    return new


def _show_interrupt(shell, etype, value, tb, tb_offset=None):
    """KeyboardInterrupt: the guard's notice when the guard did it, else the usual traceback."""
    guard = getattr(shell, "_colab_guard", None)
    found = guard.guard_interrupted() if guard is not None else None
    if found is None:
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        return None
    stb = [f"KeyboardInterrupt: stopped by the platform's usage guard "
           f"(incident {found.get('incident_id', '')})"]
    shell._showtraceback(etype, value, stb)
    return None
