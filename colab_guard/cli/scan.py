"""``colab-guard scan PID``: one-shot scan of a process tree, what matches and why.

It reads the processes exactly as the server's sampler does (command line,
sockets, libraries, open files, executable content) and tests every
signature in force. A signature with a ``for:`` window is reported when its
condition holds now, with the window it would have to hold for: a one-shot
scan cannot watch it hold.
"""

from __future__ import annotations

import json
import os

import psutil

from ..detect.fields import FieldView
from ..observe.content import ContentScanner
from ..observe.model import Process
from ..observe.processes import ProcessSampler
from ..text import terminal_safe as _safe
from ..vocabulary import DEFAULT_ACTIONS
from .config import load_guard, load_rules



def register(groups) -> None:
    parser = groups.add_parser("scan", help="scan a process and its descendants now; print what "
                                            "matches and why (exit status 1 if anything does)")
    parser.add_argument("pid", type=int, metavar="PID")
    parser.add_argument("--json", action="store_true", help="one JSON object per process")
    parser.set_defaults(run=scan)


def scan(args) -> int:
    from . import CommandError  # defined after the command modules are imported

    if not psutil.pid_exists(args.pid):
        raise CommandError(f"no process with pid {args.pid}")
    guard = load_guard(args.config)
    rules = load_rules(guard)
    actions = {**DEFAULT_ACTIONS, **guard.actions}
    sampler = ProcessSampler(read_environ=False, content=ContentScanner(background=False))
    snapshot = sampler.sample({"scan": args.pid})["scan"]
    matched = False
    for process in sorted(snapshot.processes, key=lambda p: p.pid):
        result = _check(process, rules, actions, guard.default_action)
        result["sockets_hidden"] = sockets_hidden(process.pid)
        matched = matched or bool(result["matches"])
        if args.json:
            print(json.dumps(result))
        else:
            _print(result)
    return 1 if matched else 0


def _check(process: Process, rules, actions: dict, default_action: str) -> dict:
    view = FieldView(process)
    allowed_by = [rule.id for rule in rules.allow.values() if rule.when.test(view)[0]]
    matches = []
    for sig in rules.signatures.values():
        if getattr(sig, "on_cells", False):
            continue  # cell signatures test a cell's source, not processes
        ok, reasons = sig.when.test(view)
        if ok:
            matches.append({"signature": sig.id, "category": sig.category,
                            "action": sig.action or actions.get(sig.category, default_action),
                            "for_seconds": sig.hold_seconds, "reasons": reasons})
    return {"pid": process.pid, "ppid": process.ppid, "name": process.name, "exe": process.exe,
            "cmdline": " ".join(process.cmdline), "exe_markers": process.exe_markers,
            "sockets": len(process.sockets), "allowed_by": allowed_by,
            "matches": [] if allowed_by else matches,
            "would_match_but_allowed": matches if allowed_by else []}


def _print(result: dict) -> None:
    """Human-readable; process text is untrusted, so control characters are escaped."""
    markers = ", ".join(result["exe_markers"]) or "none"
    print(f"pid {result['pid']} ({_safe(result['name'])}): {_safe(result['cmdline'])[:300]}")
    hidden = result.get("sockets_hidden")
    sockets = f"not visible ({hidden})" if hidden else result["sockets"]
    print(f"  content markers: {markers}; sockets: {sockets}")
    if result["allowed_by"]:
        print(f"  allowed by {', '.join(result['allowed_by'])}"
              + (f" (would otherwise match {len(result['would_match_but_allowed'])} signature(s))"
                 if result["would_match_but_allowed"] else ""))
    for m in result["matches"]:
        window = f", if it holds for {m['for_seconds']:g} s" if m["for_seconds"] else ""
        print(f"  MATCH {m['signature']} [{m['category']}] -> {m['action']}{window}")
        for reason in m["reasons"]:
            print(f"    because {_safe(reason)[:300]}")
    if not result["matches"] and not result["allowed_by"]:
        print("  no signature matches" + (" (the rules on sockets could not be tested)"
                                          if hidden else ""))



def sockets_hidden(pid: int, proc: str = "/proc") -> str:
    """Why this process's sockets cannot be seen from here, or '' when they can.

    Sockets are read from our own network namespace's tables (/proc/net/tcp...): a process in
    another namespace (a container, ``unshare -n``) holds sockets that are not in them."""
    try:
        theirs = os.readlink(f"{proc}/{pid}/ns/net")
    except FileNotFoundError:
        return ""  # exited meanwhile, or no namespaces in this kernel
    except OSError as err:
        return f"its network namespace cannot be read: {err.strerror}; run as its user or root"
    try:
        ours = os.readlink(f"{proc}/self/ns/net")
    except OSError:
        return ""
    if theirs != ours:
        return (f"it is in another network namespace ({theirs}, ours is {ours}); run the scan "
                f"inside it, e.g. nsenter --net=/proc/{pid}/ns/net colab-guard scan {pid}")
    return ""
