"""``colab-guard signatures list|check``."""

from __future__ import annotations

import json

from ..vocabulary import DEFAULT_ACTIONS
from ..detect.engine import check_examples
from ..detect.signatures import SignatureError, load_file
from .config import load_guard, load_rules


def register(groups) -> None:
    parser = groups.add_parser("signatures", help="list or check signatures")
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    listing = commands.add_parser("list", help="the signatures in force: id, category, severity, action")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(run=list_signatures)
    check = commands.add_parser("check", help="validate signature files and run their examples; "
                                              "every error is reported, at its field's line")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(run=check_files)


def list_signatures(args) -> int:
    guard = load_guard(args.config)
    rules = load_rules(guard)
    actions = {**DEFAULT_ACTIONS, **guard.actions}
    rows = []
    for sig in rules.signatures.values():
        action = sig.action or actions.get(sig.category, guard.default_action)
        rows.append({"id": sig.id, "category": sig.category, "severity": sig.severity,
                     "action": "would " + action if guard.dry_run else action,
                     "source": sig.source})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    widths = {k: max([len(k)] + [len(r[k]) for r in rows]) for k in ("id", "category", "severity", "action")}
    print("  ".join(k.upper().ljust(w) for k, w in widths.items()))
    for row in rows:
        print("  ".join(row[k].ljust(w) for k, w in widths.items()))
    return 0


def check_files(args) -> int:
    """Exit status 1 if any file is invalid or any example fails. Files are read in order, as
    ``signature_paths`` would be: a category one declares serves the next ones."""
    failed = False
    categories: list[str] = []
    for file in args.files:
        try:
            loaded = load_file(file, categories=categories)
        except SignatureError as err:
            for error in err.errors:
                print(f"FAIL {error}")
            failed = True
            continue
        categories.extend(c for c in loaded.categories if c not in categories)
        problems = [p for sig in loaded.signatures.values() for p in check_examples(sig)]
        problems += [p for rule in loaded.allow.values() for p in check_examples(rule)]
        for problem in problems:
            print(f"FAIL {file}: {problem}")
        failed = failed or bool(problems)
        if not problems:
            print(f"ok   {file}: {len(loaded.signatures)} signature(s), {len(loaded.allow)} allow "
                  "rule(s), every example behaves")
    return 1 if failed else 0
