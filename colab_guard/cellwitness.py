"""Cells the server saw run, against what the kernel hook reported: tampering, noticed.

Everything in the kernel is the user's to change: the hook's transformer can be removed,
its timeout zeroed, its audit hook switched off, and none of that can be trusted to report
itself. What the server can check is consistency with a witness the user does not write:
the kernel's IOPub channel, which the server subscribes to like any frontend. Every
``execute_input`` there is a cell about to run; for each, the hook must have asked for a
check of that very cell (matched by the digest of its source), and for each cell it was
told to run, its audit hook must report the cell's code executed (matched by the file name
IPython compiles the cell under). A cell that ran with no check, or checked and run with
no report, is tampering.

Not tampering: a cell with nothing to run (blank, comments only, a syntax error, all
checked by the server itself before it says so), a cell refused, a cell interrupted through
the server (the kernel manager's interrupt, which the channel notes), a check still in progress (a long cell, a slow kernel: the deadline
grows with the cell's size and counts from the kernel going idle).

Pure: fed messages and times, it answers what is due; channel.py does the I/O.
"""

from __future__ import annotations

import ast
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

#: seconds after the kernel goes idle for the hook's reports to arrive (another socket)
GRACE = 1.5
#: a cell still running: seconds after it started before its check must have arrived,
#: plus one per DEADLINE_PER_CHARS characters of source (the kernel parses it first)
DEADLINE = 10.0
DEADLINE_PER_CHARS = 50_000
#: checks and run reports not matched yet are kept this long (they can arrive first)
KEEP = 60.0
MAX_OPEN = 256
MAX_UNMATCHED = 128  # checks (silent executions, nested run_cell) and run reports not matched


def digest(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Execution:
    msg_id: str
    digest: str
    code: str  # the raw cell, as IOPub showed it
    started: float
    idle_at: float | None = None
    checked: bool = False
    decision: str = ""  # the check's verdict: pending, run, refuse, abandoned (by the kernel)
    file: str = ""  # the file the check said the cell compiles under
    checked_code: str = ""  # the code the check read (what runs), when one piece
    checked_text: str | None = None  # all of the code the check read (its pieces joined)
    checked_found: frozenset = frozenset()  # the signatures the check found in it
    compared: bool = False  # handed out to be compared with the cell itself (due: "compare")
    ran: bool = False
    interrupted: bool = False  # the server interrupted the kernel while it ran


class CellWitness:
    """One kernel's executions (IOPub) against its hook's checks and run reports."""

    def __init__(self, expect_checks: bool = True, clock=time.monotonic):
        self.expect_checks = expect_checks
        self.clock = clock
        self.open: OrderedDict[str, Execution] = OrderedDict()
        # digest -> unmatched checks: (time, file, decision, code, text, found)
        self._checks: dict[str, list[tuple]] = {}
        self._ran: dict[str, list[float]] = {}  # file -> unmatched run reports

    # ------------------------------------------------------------ what arrives

    def executing(self, msg_id: str, code: str) -> None:
        """IOPub: execute_input (a cell about to run)."""
        if not code.strip() or msg_id in self.open:
            return
        ex = Execution(msg_id, digest(code), code, self.clock())
        self.open[msg_id] = ex
        while len(self.open) > MAX_OPEN:
            self.open.popitem(last=False)
        waiting = self._checks.get(ex.digest)
        if waiting:
            self._match_check(ex, *waiting.pop(0)[1:])

    def idle(self, msg_id: str) -> None:
        ex = self.open.get(msg_id)
        if ex is not None and ex.idle_at is None:
            ex.idle_at = self.clock()

    def interrupted(self) -> None:
        """The kernel was interrupted through the server (a KeyboardInterrupt may come before
        the check or before the code starts: neither is then owed)."""
        for ex in self.open.values():
            if ex.idle_at is None:
                ex.interrupted = True

    def checked(self, cell_digest: str, file: str, decision: str, code: str) -> None:
        """The hook asked for a check of the cell with this digest; the server answered."""
        for ex in self.open.values():
            if ex.digest == cell_digest and not ex.checked:
                self._match_check(ex, file, decision, code)
                return
        if sum(len(v) for v in self._checks.values()) >= MAX_UNMATCHED:
            self._checks.pop(next(iter(self._checks)))  # the oldest digest's
        self._checks.setdefault(cell_digest, []).append(
            (self.clock(), file, decision, code, None, frozenset()))

    def decide(self, cell_digest: str, decision: str, force: bool = False) -> None:
        """The server's verdict on a check (``force``: the kernel gave up waiting for it, and
        did not run the cell, whatever the verdict)."""
        for ex in self.open.values():
            if ex.digest == cell_digest and ex.checked and not ex.ran and \
                    (force or ex.decision == "pending"):
                ex.decision = decision
                return
        for i, (at, file, old, *rest) in enumerate(self._checks.get(cell_digest, [])):
            if force or old == "pending":
                self._checks[cell_digest][i] = (at, file, decision, *rest)
                return

    def read(self, cell_digest: str, code: str, text: str | None = None,
             found: frozenset = frozenset()) -> None:
        """The code the check read of that cell: ``code`` when one piece (is it compilable?
        asked only if no report), ``text`` all its pieces, and the signatures it ``found``
        (is it what the cell itself makes? see ``due``)."""
        for ex in self.open.values():
            if ex.digest == cell_digest and ex.checked and ex.checked_text is None:
                ex.checked_code, ex.checked_text, ex.checked_found = code, text, found
                return
        for i, (at, file, decision, _, old, _) in enumerate(self._checks.get(cell_digest, [])):
            if old is None:
                self._checks[cell_digest][i] = (at, file, decision, code, text, found)
                return

    def ran(self, file: str) -> None:
        """The audit hook saw the code of the cell compiled under ``file`` executed."""
        for ex in self.open.values():
            if ex.checked and ex.file == file and not ex.ran:
                ex.ran = True
                return
        if sum(len(v) for v in self._ran.values()) >= MAX_UNMATCHED:
            self._ran.pop(next(iter(self._ran)))
        self._ran.setdefault(file, []).append(self.clock())

    def _match_check(self, ex: Execution, file: str, decision: str, code: str,
                     text: str | None = None, found: frozenset = frozenset()) -> None:
        ex.checked, ex.file, ex.decision, ex.checked_code = True, file, decision, code
        ex.checked_text, ex.checked_found = text, found
        waiting = self._ran.get(file)
        if waiting:
            waiting.pop(0)
            ex.ran = True

    # ------------------------------------------------------------ what is due

    def due(self) -> list[tuple[Execution, str]]:
        """Executions whose reports are overdue: (execution, "unchecked" | "unreported").
        Each is answered once (and forgotten); the caller confirms the cell could run. And
        cells checked and let run, once each: (execution, "compare"), for the caller to tell
        whether the code the check read is what the cell itself makes (``own_pieces``)."""
        now = self.clock()
        found = []
        for msg_id, ex in list(self.open.items()):
            if ex.checked and ex.decision == "run" and ex.checked_text is not None and \
                    not ex.compared:
                ex.compared = True
                found.append((ex, "compare"))
            finished = ex.idle_at is not None and now - ex.idle_at > GRACE
            overdue = now - ex.started > DEADLINE + len(ex.code) / DEADLINE_PER_CHARS
            if ex.interrupted:
                if finished or overdue:
                    del self.open[msg_id]
                continue
            if self.expect_checks and not ex.checked:
                if finished or overdue:
                    found.append((ex, "unchecked"))
                    del self.open[msg_id]
                continue
            if ex.decision == "pending":  # the verdict is on its way (a long cell)
                if now - ex.started > KEEP:
                    del self.open[msg_id]
                continue
            needs_run = ex.checked and ex.decision == "run" and ex.file and not ex.ran
            if needs_run and (finished or overdue):
                found.append((ex, "unreported"))
                del self.open[msg_id]
            elif finished or (ex.checked and not needs_run) or (ex.ran and overdue):
                del self.open[msg_id]
        self._expire(now)
        return found

    def _expire(self, now: float) -> None:
        for table in (self._checks, self._ran):
            for key in list(table):
                table[key] = [e for e in table[key]
                              if now - (e[0] if isinstance(e, tuple) else e) < KEEP]
                if not table[key]:
                    del table[key]


def would_run(code: str) -> bool:
    """Whether a cell has code that runs (so the hook had to check it): it transforms (IPython's
    own transforms) and parses to at least one statement. Off the event loop: it parses."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        code = TransformerManager().transform_cell(code)
    except Exception:
        pass
    try:
        return bool(ast.parse(code).body)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False


def compiles(code: str) -> bool:
    """Whether code the check read compiles (a cell with ``return`` at its top level parses,
    is checked, then fails to compile: it never runs)."""
    try:
        compile(code, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        return True
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False


def own_pieces(code: str, checked_text: str) -> list[str] | None:
    """The pieces the kernel hook sends for this cell (IPython's own transforms, the same
    ``cell_pieces``), or None where they are what the check read. A hook whose check was
    fed other code (its functions replaced, a transformer after it) is told apart from one
    that read the cell: what the cell itself makes is then read by the server. Honest
    transformers (another extension's) differ too, so what it finds decides, not the
    difference. Off the event loop: it parses."""
    from .kernel.code import cell_pieces

    raw_length = len(code)
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        code = TransformerManager().transform_cell(code)
    except Exception:
        pass
    try:
        pieces = cell_pieces(ast.parse(code), raw_length)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None  # it does not parse: nothing of it ran
    return None if "\n".join(pieces) == checked_text else pieces
