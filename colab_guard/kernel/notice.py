"""The platform's message, as the notebook shows it: HTML with a plain-text fallback.

Everything in a notice comes from the server, and parts of it (program names,
command lines) from the user's own programs: every piece is escaped.
"""

from __future__ import annotations

import html
import re

_HEADLINES = {
    "refuse": "This cell was not run.",
    "interrupt": "Stopped: this code was interrupted by the platform's usage guard.",
    "shutdown": "Stopped: this kernel was shut down by the platform's usage guard.",
    "stop": "Stopped: a program started from this notebook was stopped by the platform's usage guard.",
}
_DRY_RUN = ("Trial mode: the platform's usage guard would have acted here ({action}); "
            "nothing was stopped.")
_WARN = "The platform's usage guard noticed something this service does not allow."
# C0/C1 controls (ESC starts terminal sequences: the text form reaches jupyter console and
# nbconvert), DEL, and bidi/zero-width marks that reorder or hide text on screen.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def headline(notice: dict) -> str:
    action = str(notice.get("action", "warn"))
    if notice.get("dry_run"):
        return _DRY_RUN.format(action=action)
    return _HEADLINES.get(action, _WARN)


def shorten(text: str, limit: int = 160) -> str:
    """One line of at most ``limit`` characters, control characters shown as escapes."""
    text = _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                       else f"\\u{ord(m.group()):04x}", " ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def package_line(notice: dict) -> str:
    """Fair strikes: the program came from an installed package; not held against the user."""
    if not notice.get("package"):
        return ""
    return (f"The program came from the installed package {shorten(notice['package'], 80)}: "
            "this does not count as a strike against you.")


def as_text(notice: dict) -> str:
    lines = [headline(notice), str(notice.get("message", ""))]
    lines.append(f"Detected: {shorten(notice.get('detected', notice.get('category', '')))}")
    lines.append(package_line(notice))
    if notice.get("policy_url"):
        lines.append(f"Policy: {notice['policy_url']}")
    lines.append(f"Incident: {notice.get('incident_id', '')} (quote it if you appeal)")
    return "\n".join(line for line in lines if line)


def as_html(notice: dict) -> str:
    e = html.escape
    url = str(notice.get("policy_url") or "")
    policy = ""
    if url.startswith(("https://", "http://")):
        policy = (f'<div>Policy: <a href="{e(url)}" target="_blank" rel="noopener noreferrer">'
                  f"{e(url)}</a></div>")
    elif url:
        policy = f"<div>Policy: {e(url)}</div>"
    colour = "#b26a00" if notice.get("dry_run") or notice.get("action") == "warn" else "#b3261e"
    return (
        f'<div class="colab-guard-notice" style="border-left:4px solid {colour};'
        'padding:6px 12px;margin:4px 0;">'
        f"<div><strong>{e(headline(notice))}</strong></div>"
        f"<div>{e(str(notice.get('message', '')))}</div>"
        f"<div>Detected: {e(shorten(notice.get('detected', notice.get('category', ''))))}</div>"
        + (f"<div>{e(package_line(notice))}</div>" if notice.get("package") else "") +
        f"{policy}"
        f"<div>Incident: <code>{e(str(notice.get('incident_id', '')))}</code> "
        "(quote it if you appeal)</div></div>"
    )


def bundle(notice: dict) -> dict:
    """The display_data bundle: HTML for notebooks, text for everything else."""
    return {"text/html": as_html(notice), "text/plain": as_text(notice)}
