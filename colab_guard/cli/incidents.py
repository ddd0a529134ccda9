"""``colab-guard incidents|strikes|appeals ...``: the admin's view of the incident database.

It opens the database the server's configuration names (``database_url``),
so it needs no flags. Evidence is untrusted text: every field printed in a
table is stripped of terminal control sequences; ``--json`` output is ASCII
JSON, the same objects the REST API returns.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
import time

from ..record.database import DatabaseError, IncidentDatabase, incident_view
from ..text import parse_time, terminal_safe as safe
from .config import load_guard

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def register(groups) -> None:
    _register_incidents(groups)
    _register_strikes(groups)
    _register_appeals(groups)


def _register_incidents(groups) -> None:
    parser = groups.add_parser("incidents", help="list, show or follow incidents")
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    listing = commands.add_parser("list", help="incidents, newest first")
    listing.add_argument("--since", type=since_time, metavar="WHEN",
                         help="ISO 8601 time, epoch seconds, or an age such as 30m, 12h, 7d")
    listing.add_argument("--user")
    listing.add_argument("--category")
    listing.add_argument("--package", metavar="NAME",
                         help="incidents whose program came from this installed distribution")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    listing.add_argument("--json", action="store_true",
                         help="one JSON object per line, as the REST API returns them")
    listing.set_defaults(run=list_incidents)
    show = commands.add_parser("show", help="one incident with its evidence, actions and appeals")
    show.add_argument("id", help="the incident id, or a unique prefix of it")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=show_incident)
    tail = commands.add_parser("tail", help="print new incidents as they are recorded (Ctrl-C stops)")
    tail.add_argument("--interval", type=float, default=1.0, help="seconds between two looks")
    tail.add_argument("--json", action="store_true")
    tail.set_defaults(run=tail_incidents)


def _register_strikes(groups) -> None:
    parser = groups.add_parser("strikes", help="list or clear strikes")
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    listing = commands.add_parser("list", help="strikes in force (within strike_window)")
    listing.add_argument("--user")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=list_strikes)
    clear = commands.add_parser("clear", help="clear every strike against a user")
    clear.add_argument("user")
    clear.set_defaults(run=clear_strikes)


def _register_appeals(groups) -> None:
    parser = groups.add_parser("appeals", help="list or resolve appeals")
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    listing = commands.add_parser("list", help="appeals, newest first")
    listing.add_argument("--status", choices=("pending", "accepted", "rejected"))
    listing.add_argument("--user")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=list_appeals)
    resolve = commands.add_parser("resolve", help="accept (the strike is removed) or reject")
    resolve.add_argument("id", help="the appeal id, or a unique prefix of it")
    resolve.add_argument("decision", choices=("accept", "reject"))
    resolve.add_argument("--reply", default="", help="what the user reads (up to 2000 characters)")
    resolve.set_defaults(run=resolve_appeal)


# ------------------------------------------------------------ incidents


def list_incidents(args) -> int:
    db = open_database(args)
    incidents = db.query(user=args.user, category=args.category, since=args.since,
                         limit=args.limit, package=args.package)
    views = with_appeals(db, incidents)
    if args.json:
        for view in views:
            print_json(view)
        return 0
    print_table(["time", "user", "category", "action", "status", "id", "summary"],
                [incident_row(v) for v in views])
    return 0


def show_incident(args) -> int:
    db = open_database(args)
    incident = db.get(find_id(db, "incidents", args.id))
    view = with_appeals(db, [incident])[0]
    if args.json:
        print_json(view)
        return 0
    for key in ("id", "time", "user", "kernel_id", "notebook", "category", "severity",
                "signature", "summary", "description", "status", "dry_run"):
        print(f"{key + ':':<12} {safe(view[key])}")
    print("signatures:  " + safe(", ".join(view["signatures"])))
    print(f"strike:      {'yes' if view.get('strike') else 'no'}")
    if view.get("package"):
        package = view["package"]
        print(f"package:     {safe(package.get('name', ''))} {safe(package.get('version', ''))} "
              f"({safe(package.get('path', ''))}): no strike (fair strikes)")
    elif view["evidence"].get("package_refused"):
        print(f"package:     none counted: {safe(view['evidence']['package_refused'].get('reason', ''))}")
    print("actions:")
    for a in view["actions"]:
        print(f"  {safe(a['action'])} {safe(a['target'])}: {safe(a['outcome'])}"
              + (f" ({safe(a['detail'])})" if a["detail"] else ""))
    print("evidence:")
    for p in view["evidence"].get("processes", []):
        print(f"  pid {p.get('pid')} {safe(p.get('name', ''))}: {safe(p.get('cmdline', ''))}")
        for sock in p.get("sockets", []):
            print(f"    {safe(sock)}")
    for m in view["evidence"].get("matches", []):
        for reason in m.get("reasons", []):
            print(f"  {safe(m.get('signature', ''))}: {safe(reason)}")
    for appeal in view["appeals"]:
        print(f"appeal {appeal['id']} ({appeal['status']}, {appeal['time']}): {safe(appeal['text'])}")
        if appeal["reply"]:
            print(f"  reply: {safe(appeal['reply'])}")
    return 0


def tail_incidents(args) -> int:
    db = open_database(args)
    seen = db.last_rowid()
    print(f"colab-guard: following new incidents in {safe(db.path)} (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    try:
        while True:
            for rowid, incident in db.after(seen):
                seen = rowid
                view = with_appeals(db, [incident])[0]
                if args.json:
                    print_json(view)
                else:
                    print("  ".join(incident_row(view)), flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def incident_row(view: dict) -> list[str]:
    enforced = [a["action"] for a in view["actions"] if a["action"] not in ("record", "warn")]
    action = enforced[0] if enforced else ("warn" if len(view["actions"]) > 1 else "record")
    package = view.get("package")
    summary = view["summary"] + (f" [package {package.get('name')} {package.get('version')}]"
                                 if package else "")
    return [view["time"][:19], view["user"], view["category"],
            ("would " + action) if view["dry_run"] else action, view["status"], view["id"][:12],
            summary]


# ------------------------------------------------------------ strikes


def list_strikes(args) -> int:
    guard = load_guard(args.config)
    db = open_database(args, guard)
    strikes = db.strikes(args.user, guard.strike_window)
    if args.json:
        for strike in strikes:
            print_json(strike.to_dict())
        return 0
    print_table(["time", "user", "category", "incident"],
                [[s.to_dict()["time"][:19], s.user, s.category, s.incident_id] for s in strikes])
    counts: dict[str, int] = {}
    for s in strikes:
        counts[s.user] = counts.get(s.user, 0) + 1
    for user, count in sorted(counts.items()):
        refused = guard.strike_limit and count >= guard.strike_limit
        print(f"{safe(user)}: {count} of {guard.strike_limit}"
              + (" - new kernels are refused" if refused else ""))
    return 0


def clear_strikes(args) -> int:
    cleared = open_database(args).clear_strikes(args.user, getpass.getuser())
    print(f"cleared {cleared} strike(s) against {safe(args.user)}")
    return 0


# ------------------------------------------------------------ appeals


def list_appeals(args) -> int:
    appeals = open_database(args).appeals(user=args.user, status=args.status)
    if args.json:
        for appeal in appeals:
            print_json(appeal.to_dict())
        return 0
    print_table(["time", "user", "status", "id", "incident", "text"],
                [[a.to_dict()["time"][:19], a.user, a.status, a.id, a.incident_id[:12],
                  a.text[:80]] for a in appeals])
    return 0


def resolve_appeal(args) -> int:
    from ..record.database import APPEAL_MAX_TEXT, AppealError

    if len(args.reply.strip()) > APPEAL_MAX_TEXT:
        fail(f"--reply: at most {APPEAL_MAX_TEXT} characters")
    db = open_database(args)
    try:
        appeal = db.resolve_appeal(find_id(db, "appeals", args.id), args.decision,
                                   args.reply.strip(), getpass.getuser())
    except AppealError as err:
        fail(str(err))
    print(f"appeal {appeal.id} {appeal.status}"
          + (" (the strike is removed)" if appeal.status == "accepted" else ""))
    return 0


# ------------------------------------------------------------ helpers


def open_database(args, guard=None) -> IncidentDatabase:
    guard = guard or load_guard(args.config)
    try:
        return IncidentDatabase(guard.database_url)
    except DatabaseError as err:
        fail(str(err))


def with_appeals(db: IncidentDatabase, incidents) -> list[dict]:
    appeals = db.appeals_by_incident([i.id for i in incidents])
    return [incident_view(i, appeals[i.id]) for i in incidents]


def find_id(db: IncidentDatabase, table: str, prefix: str) -> str:
    """The full id for an id or a unique prefix of one."""
    if not re.fullmatch(r"[0-9a-f]{1,32}", prefix):
        fail(f"{prefix!r} is not an id (hexadecimal)")
    found = db.ids_starting_with(table, prefix)
    if not found:
        fail(f"no {table[:-1]} with id {prefix!r}")
    if len(found) > 1:
        fail(f"{prefix!r} names {len(found)} {table}; give more of the id")
    return found[0]


def since_time(raw: str) -> float:
    relative = _RELATIVE.match(raw)
    if relative:
        return time.time() - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        return parse_time(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not an ISO 8601 time, epoch seconds or an age like 12h") from None


def print_json(data) -> None:
    print(json.dumps(data, ensure_ascii=True), flush=True)


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[safe(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def fail(message: str):
    from . import CommandError

    raise CommandError(safe(message))
