"""The audit hook: what the kernel starts, connects to, resolves and imports.

``sys.addaudithook`` calls the hook for every audit event the interpreter raises
(file opens included), so the hook does almost nothing: one dict lookup, then for
the events it watches an append to a bounded deque. Never I/O, never a lock,
never waiting: when the deque is full the event is dropped and counted. A sender
thread drains the deque and writes batches to the server.

Two events concern code rather than programs. ``exec`` of the cell's own code object
is reported as ``ran``: the server knows which cells it checked, and a cell checked but
never reported run means the hook was silenced. ``compile`` of source text (``exec``
of a string, ``compile()``, the import of a file outside the environment) is kept, and
reported as ``code`` when that code is executed, for the server to check like a cell.

Audit hooks cannot be removed, so "unloading" switches the hook off. A child
forked by the kernel (``!cmd`` lines go through pexpect's forkpty) keeps the hook
but not the sender thread: just before it execs the command, it reports the
command itself over a short-lived connection.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import weakref
from collections import deque

KINDS = {
    "subprocess.Popen": "start", "os.system": "start", "os.exec": "start",
    "os.posix_spawn": "start", "os.spawn": "start", "pty.spawn": "start",
    "os.fork": "fork", "os.forkpty": "fork",
    "socket.connect": "connect", "socket.getaddrinfo": "resolve", "socket.bind": "bind",
    "import": "import",
    "ctypes.dlopen": "load",  # a shared library loaded, under any name (ctypes.CDLL)
    "exec": "exec", "compile": "compile",
}
#: Kinds that make the sender write at once (and the server check at once: a library just
#: loaded is scanned for what it is, content.py).
URGENT = frozenset({"start", "fork", "connect", "resolve", "load", "ran"})
FLUSH_INTERVAL = 0.25  # seconds: imports are sent at least this often
MAX_DETAIL = 1024
MAX_CODE = 256 * 1024  # characters of one piece of run-time code sent (its head)
CODE_BUDGET = 1024 * 1024  # characters of run-time code sent a second, at most (then dropped)
MAX_COMPILED = 32  # compiled sources kept, waiting for their execution
CELLS_KEPT = 64  # file names of cells run after their check, remembered
#: standard library modules that generate code from field names (namedtuple, dataclass):
#: what they compile is theirs, not the user's
CODE_GENERATORS = frozenset({"collections", "dataclasses", "typing", "enum", "functools"})


class Reporter:
    """The events seen by the audit hook, waiting for the sender thread."""

    def __init__(self, maxlen: int = 4096):
        self.maxlen = maxlen
        self.pending: deque = deque()
        self.dropped = 0
        self.enabled = True
        self.wake = threading.Event()
        self.pid = os.getpid()
        self.quiet_threads: set[int] = set()  # the channel's own threads
        self.child_report = None  # callable(detail) used in a forked child
        self._in_child_report = False
        self.cell_file = None  # the file name the cell about to run is compiled under
        # Cells run without a check (the check taken out and put back around silent ones):
        # the prefix of the file names IPython compiles cells under (None: not tracked), the
        # cells whose code ran after a check (their later statements, a cell that called
        # run_cell going on, the same cell again), whether a check let the next one run,
        # and how many ran with none (said by ``altered``)
        self.cell_prefix: str | None = None
        self.cells_run: dict[str, None] = {}
        self.cell_checked = False
        self.unchecked_cells = 0
        self.code_checks = True  # report run-time code (off with the server's cell checks)
        self.compiled: dict = {}  # file name -> source compiled, until its code is executed
        # code compiled from files in the environment is the environment's (imports)
        self.library_prefixes = tuple({os.path.join(p, "") for p in (
            sys.prefix, sys.base_prefix, sys.exec_prefix)})
        self.code_seen: set[int] = set()  # hashes of code already sent
        self._code_window = [0.0, 0]  # start of this second, characters sent in it
        self._own_threads: set[int] = set()  # the channel's threads (quiet on purpose)
        self._settled: dict | None = None  # the settings as the guard left them (settle())
        #: callable -> names of what the guard put in IPython and is gone (the cell check
        #: from the AST transformers...): asked at every flush, a heartbeat (extension.py)
        self.watched = None

    def quiet(self, ident: int) -> None:
        """The channel's own thread: its socket's events are not reported."""
        self._own_threads.add(ident)
        self.quiet_threads.add(ident)

    def settle(self) -> None:
        """Remember the settings as the guard configured them: ``altered`` says what a cell
        changed since (switched off from inside the kernel, it would not say so itself)."""
        self._settled = self._settings()

    def _settings(self) -> dict:
        own = vars(self)
        return {"code_checks": self.code_checks, "library_prefixes": self.library_prefixes,
                "maxlen": self.maxlen, "child_report": self.child_report is not None,
                "compiled": type(self.compiled) is dict, "code_seen": type(self.code_seen) is set,
                "watched": self.watched is not None, "cell_prefix": self.cell_prefix,
                # what the installed hook reads: the same queue, events, and methods
                "pending": self.pending is own.get("_hook_pending", self.pending),
                "kinds": own.get("_hook_kinds") == KINDS_INSTALLED,
                "methods": all(n not in own and getattr(type(self), n, None) is f
                               for n, f in _METHODS.items())}

    def altered(self) -> list[str]:
        """The settings changed since ``settle`` (sorted names), and threads made quiet that
        are not the channel's: what silences the hook without switching it off. (``enabled``
        is the witness's: a cell run and not reported.)"""
        if self._settled is None:
            return []
        now = self._settings()
        found = [k for k, v in self._settled.items() if now.get(k) != v]
        if not self.quiet_threads <= self._own_threads:
            found.append("quiet_threads")
        if self.unchecked_cells:
            found.append("cell-ran-unchecked")
        if self.watched is not None:
            try:
                found += [str(name) for name in self.watched()]
            except Exception:
                found.append("watched")
        return sorted(set(found))

    def make_hook(self):
        """The function given to sys.addaudithook (a closure: fewer lookups per event)."""
        kinds, pending, wake, get_ident = KINDS, self.pending, self.wake, threading.get_ident
        self._hook_kinds, self._hook_pending = kinds, pending  # (altered() compares them)
        urgent = URGENT
        state = self
        listeners = weakref.WeakSet()  # sockets the kernel's code bound (its own servers)

        def colab_guard_audit_hook(event, args):
            kind = kinds.get(event)
            if kind is None or not state.enabled or get_ident() in state.quiet_threads:
                return
            if kind == "exec" or kind == "compile":
                state._code_event(kind, args)
                return
            if kind == "start" and os.getpid() != state.pid:
                state._from_child(event, args)
                return
            if len(pending) >= state.maxlen:
                state.dropped += 1
                return
            if kind == "bind":  # rare: who binds is read now, while its code is on the stack
                _remember(listeners, args[0])
                args = (args[1], _callers())
            elif kind == "connect" and _own_listener(listeners, args[1]):
                return  # to a server of its own (a test's, on a port gone before any tick)
            pending.append((kind, event, args))
            if kind in urgent and not wake.is_set():
                wake.set()

        return colab_guard_audit_hook

    def _code_event(self, kind: str, args) -> None:
        """Cheap: a dict store on compile, a lookup on exec; the rest in the sender thread."""
        if kind == "compile":
            source, filename = args[0], args[1]
            if self.code_checks and isinstance(source, (str, bytes)) and \
                    isinstance(filename, str) and \
                    not filename.startswith(self.library_prefixes) and not _generated():
                compiled = self.compiled
                if len(compiled) >= MAX_COMPILED:
                    compiled.pop(next(iter(compiled)))
                compiled[filename] = source
            return
        filename = getattr(args[0], "co_filename", None)
        if filename is None or os.getpid() != self.pid:
            return
        prefix = self.cell_prefix
        if prefix and filename not in self.cells_run and filename.startswith(prefix):
            if self.cell_checked:  # a new cell's code, after its check
                self.cell_checked = False
                self.cells_run[filename] = None
                try:
                    if len(self.cells_run) > CELLS_KEPT:
                        self.cells_run.pop(next(iter(self.cells_run)))
                except (RuntimeError, StopIteration, KeyError):
                    pass  # (another thread's exec meanwhile: trimmed next time)
            else:
                self.unchecked_cells += 1
                self.wake.set()  # said at once (the sender's next flush), not within 0.25 s
        if len(self.pending) >= self.maxlen:
            return
        if filename == self.cell_file:  # the cell's own text (IPython parsed it) was checked
            self.cell_file = None
            self.compiled.pop(filename, None)
            self.pending.append(("ran", "exec", filename))
            self.wake.set()
        else:
            source = self.compiled.pop(filename, None)
            if source is not None:
                if len(self.pending) >= self.maxlen // 2:  # half the queue stays for programs
                    self.dropped += 1
                    return
                # not urgent: sent within FLUSH_INTERVAL (a loop of exec() wakes no thread)
                self.pending.append(("code", "exec", (source, filename)))

    def _from_child(self, event: str, args) -> None:
        if event != "os.exec" or self._in_child_report or self.child_report is None:
            return
        self._in_child_report = True  # the report's own socket raises audit events
        try:
            self.child_report(describe("start", event, args))
        except Exception:
            pass  # the server side sees the program anyway
        finally:
            self._in_child_report = False

    def drain(self) -> list[list[str]]:
        batch = []
        while self.pending:
            kind, event, args = self.pending.popleft()
            if kind == "code":
                text = self._code_text(*args)
                if text is not None:
                    batch.append([kind, text])
                continue
            batch.append([kind, describe(kind, event, args)])
        return batch

    def _code_text(self, source, filename: str) -> str | None:
        """Run-time code, once per distinct text, within the budget (else dropped, counted)."""
        text = _word(source[:MAX_CODE])
        key = hash(text)
        if key in self.code_seen or not text.strip():
            return None
        now = time.monotonic()
        window = self._code_window
        if now - window[0] >= 1.0:
            window[0], window[1] = now, 0
        if window[1] + len(text) > CODE_BUDGET:
            self.dropped += 1
            return None
        window[1] += len(text)
        if len(self.code_seen) > 4096:
            self.code_seen.clear()
        self.code_seen.add(key)
        return text


#: What the hook is installed with (a cell that edits KINDS or patches a method silences it).
KINDS_INSTALLED = dict(KINDS)
_METHODS = {name: Reporter.__dict__[name] for name in ("_code_event", "_from_child", "drain",
                                                        "_code_text", "altered", "_settings")}


def describe(kind: str, event: str, args) -> str:
    """A short text for an event's arguments (done in the sender thread, off the hot path)."""
    try:
        if kind == "start":
            argv = {"subprocess.Popen": 1, "os.system": 0, "os.exec": 1, "os.posix_spawn": 1,
                    "os.spawn": 2, "pty.spawn": 0}[event]
            value = args[argv]
            text = value if isinstance(value, (str, bytes)) else " ".join(map(_word, value))
        elif kind == "connect":
            text = str(args[1])
        elif kind == "resolve":
            text = f"{_word(args[0])}:{args[1]}"
        elif kind == "import":
            text = str(args[0])
        elif kind == "load":
            text = _word(args[0])
        elif kind == "bind":
            text = f"{args[0]} {' '.join(args[1])}"
        elif kind == "ran":
            return _word(args)
        else:
            text = event
    except Exception:
        text = event
    text = _word(text)
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "…"


#: Sockets the kernel bound that are remembered (to tell its own servers' ports).
MAX_LISTENERS = 256
LOOPBACK_HOSTS = ("127.", "::1", "localhost")
WILDCARDS = ("0.0.0.0", "::")


def _remember(listeners, sock) -> None:
    if isinstance(sock, socket.socket) and len(listeners) < MAX_LISTENERS:
        listeners.add(sock)


def _own_listener(listeners, address) -> bool:
    """Whether ``address`` is on loopback and one of the kernel's own sockets listens on its
    port, on loopback or every address (a server a test suite started on an ephemeral port,
    gone before the next sample): connecting to it tries no one else's port. Two or three
    system calls per socket remembered, for loopback connects only; the socket class's own
    methods (a subclass cannot pretend)."""
    try:
        host, port = address[0], address[1]
    except (TypeError, IndexError, KeyError):
        return False
    if not (isinstance(host, str) and host.startswith(LOOPBACK_HOSTS)) or not port:
        return False
    for sock in list(listeners):
        try:
            bound = socket.socket.getsockname(sock)
            if bound[1] == port and str(bound[0]).startswith(LOOPBACK_HOSTS + WILDCARDS) \
                    and socket.socket.getsockopt(sock, socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                return True
        except (OSError, TypeError, IndexError, ValueError):
            continue  # closed meanwhile, or not an internet socket
    return False


def _callers(limit: int = 64) -> tuple[str, ...]:
    """The top-level modules whose code is on the stack (asyncssh's listen, pproxy's server,
    a dashboard's framework), innermost first, at most 16."""
    found: list[str] = []
    frame = sys._getframe(2)
    while frame is not None and limit and len(found) < 16:
        name = str(frame.f_globals.get("__name__", "")).partition(".")[0]
        if name and name not in found:
            found.append(name)
        frame, limit = frame.f_back, limit - 1
    return tuple(found)


def _generated() -> bool:
    """Whether the code being compiled comes from a standard code generator (its caller is
    two frames up: this hook's closure, then the caller of compile/exec)."""
    try:
        return sys._getframe(3).f_globals.get("__name__") in CODE_GENERATORS
    except ValueError:
        return False


def _word(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


_installed: Reporter | None = None


def install(maxlen: int = 4096) -> Reporter:
    """Install the audit hook once per process; later calls switch it back on."""
    global _installed
    if _installed is None:
        _installed = Reporter(maxlen)
        sys.addaudithook(_installed.make_hook())
    _installed.enabled = True
    return _installed
