"""A program checked as its exec is announced, on what it shows then: its name, executable
and command line.

The process connector (proc_events.py) names the process that exec'd; root reads its stat,
command line and executable at once, before the program has run far. The signatures that
read nothing else (``EXEC_FIELDS``: a miner's own name, xmrig's ``--donate-level``) and hold
at once (no ``for``) are tested on that, and a match is acted on there: the same Policy,
Recorder and coalescing as a tick's, without waiting for a pass over the machine's processes.
Every other signature (one that needs a socket, the file's content, CPU) waits for the pass,
as does a program that an allow rule might let run once more is known of it (an allow rule
that reads sockets or content counts as holding: the pass decides).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict

from ..detect.conditions import RegexBudget, RegexTimeout, charged_to, fields_read
from ..detect.engine import Detection, Engine, as_judged
from ..detect.fields import KNOWN_BEFORE_START, FieldView, PendingView
from ..detect.signatures import Signature
from ..observe.model import Process

#: What a program shows at its exec: the fields a signature may read to be tested there.
EXEC_FIELDS = KNOWN_BEFORE_START
#: Distinct (name, executable, command line) remembered with their verdict: a loop of
#: ``sleep 1`` or ``git status`` is tested once. Kept by a digest: a storm of execs with
#: 64 KiB command lines would otherwise hold 256 MiB of them.
CACHE_SIZE = 4096
#: Said in the evidence, so that an admin knows what the verdict rested on.
AT_EXEC = "seen at its exec (name, executable and command line)"


class ExecCheck:
    """The exec-time test of the node watcher. Called on the event loop only."""

    def __init__(self, engine: Engine, log: logging.Logger | None = None):
        self.engine = engine
        self.log = log or logging.getLogger("colab_guard.watch")
        self._rules: tuple[tuple, list[Signature]] | None = None
        self._verdicts: OrderedDict[bytes, list[tuple[Signature, list[str]]]] = OrderedDict()
        self.checked = 0  # programs tested (not from the cache)

    def signatures(self) -> list[Signature]:
        """The signatures that hold on what a program shows at its exec alone."""
        rules = self.engine.rules
        key = tuple(id(s.when) for s in rules.signatures.values())
        if self._rules is None or self._rules[0] != key:
            self._rules = (key, [s for s in rules.signatures.values() if exec_only(s)])
            self._verdicts.clear()
        return self._rules[1]

    def detections(self, kernel_id: str, process: Process) -> list[Detection]:
        """The exec-only signatures the program matches (none if an allow rule may hold)."""
        signatures = self.signatures()
        if not signatures:
            return []
        key = _digest(process)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = self._test(process, signatures)
            if len(self._verdicts) > CACHE_SIZE:
                self._verdicts.popitem(last=False)
        else:
            self._verdicts.move_to_end(key)
        disabled = self.engine.disabled  # switched off by the pass after raising
        return [Detection(sig, kernel_id, process, reasons + [AT_EXEC])
                for sig, reasons in verdict if sig.id not in disabled]

    def _test(self, process: Process, signatures: list[Signature]
              ) -> list[tuple[Signature, list[str]]]:
        self.checked += 1
        if self._may_be_allowed(process):
            return []
        view, found = FieldView(as_judged(process)), []  # as a tick's pass judges it
        for sig in signatures:
            try:
                with charged_to(RegexBudget()):
                    ok, reasons = sig.when.test(view)
            except RegexTimeout:
                continue  # the pass tests it again, and says so
            except Exception:  # a bug in a rule: the pass disables it and logs why
                continue
            if ok:
                found.append((sig, reasons))
        return found

    def _may_be_allowed(self, process: Process) -> bool:
        """An allow rule that may hold once more is known of the program (fields not known
        at its exec count as holding)."""
        view = PendingView(process, optimistic=True)
        for rule in self.engine.rules.allow.values():
            try:
                if rule.when.test(view)[0]:
                    return True
            except Exception:
                return True  # cannot tell: the pass decides
        return False


def _digest(process: Process) -> bytes:
    """The verdict cache's key: a digest of the name, executable and command line."""
    text = "\0".join([process.name, process.exe, *process.cmdline])
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def exec_only(sig: Signature) -> bool:
    """Whether a signature reads only what a program shows at its exec and holds at once."""
    if sig.on_cells or sig.hold_seconds:
        return False
    reads = fields_read(sig.when)
    return reads is not None and reads <= EXEC_FIELDS
