"""Text the guard reads from users and shows to admins: one parser, one escape.

- ``parse_time``: ISO 8601 or seconds since the epoch; a time without a zone is UTC
  (incidents are stored and shown in UTC), for the REST API and the CLI alike.
- ``terminal_safe``: evidence (command lines, host names) is untrusted; control
  characters and the marks that reorder or hide text on screen are shown as escapes.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

# C0/C1 controls (ESC starts terminal sequences), DEL, and bidi/zero-width marks that reorder
# or hide text on screen.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def parse_time(raw: str) -> float:
    """Seconds since the epoch from ``raw``; ValueError naming what is accepted."""
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{raw[:50]!r} is not an ISO 8601 time or seconds since the "
                         "epoch") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def terminal_safe(text) -> str:
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                       else f"\\u{ord(m.group()):04x}", str(text))
