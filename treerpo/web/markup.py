"""Escaping and the page shell shared by every page.

Model and dataset text is untrusted: it may hold `<script>`, attribute breakers, `</textarea>`,
template braces, NUL or bidirectional-override characters. Two ways in, both inert:

- `esc` for HTML built on the server: `html.escape` (quotes included), and characters that
  would be invisible or reorder the text around them (controls, bidi overrides and isolates,
  zero-width marks) shown as a visible `U+XXXX` badge.
- `script_json` for data a page's script reads: JSON whose `<`, `>`, `&` and line separators
  are `\\u` escapes, so no byte sequence in it can end the `<script>` element it sits in; the
  script only puts its strings into text nodes (never `innerHTML`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from functools import cache
from importlib import resources
from typing import Any

# C0/C1 controls except tab and newline, bidi embeddings/overrides/isolates and marks,
# zero-width characters and the BOM: shown, not obeyed.
_HIDDEN_CHARS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]"
)


def _badge(match: re.Match[str]) -> str:
    return f'<span class="ctl">U+{ord(match.group(0)):04X}</span>'


def esc(text: object) -> str:
    """`text` as inert HTML text (attribute-safe too, when it has no hidden characters)."""
    return _HIDDEN_CHARS.sub(_badge, html.escape(str(text), quote=True))


def attr(text: object) -> str:
    """`text` for an attribute value: escaped, hidden characters dropped to `?`."""
    return html.escape(_HIDDEN_CHARS.sub("?", str(text)), quote=True)


def script_json(payload: Any) -> str:
    """`payload` as JSON that is safe inside `<script type="application/json">`."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


@cache
def static_text(name: str) -> str:
    """A file of `treerpo/web/static/`, inlined into pages."""
    return resources.files("treerpo.web").joinpath("static", name).read_text(encoding="utf-8")


def content_security_policy(script: str | None) -> str:
    """Nothing from the network; only the page's own script runs (allowed by its hash), so
    even a markup injection that escaped `esc` could not run an inline script or handler."""
    script_source = "'none'"
    if script:
        digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
        script_source = f"'sha256-{digest}'"
    return (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
            f"script-src {script_source}; base-uri 'none'; form-action 'none'")


def page(*, title: str, body: str, script: str | None = None, nav: str = "") -> str:
    """A whole self-contained HTML page. `body` and `nav` are trusted markup built with `esc`;
    `title` is escaped here. No external resource is referenced (the Content-Security-Policy
    forbids any), so the page works offline and from a file."""
    csp = content_security_policy(script)
    script_tag = f"<script>{script}</script>" if script else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{attr(csp)}\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)}</title><style>{static_text('page.css')}</style></head>"
        f"<body>{nav}<main>{body}</main>{script_tag}</body></html>\n"
    )
