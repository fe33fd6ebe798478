"""Text made safe for HTML and SVG (XML) output, and shortened for display."""

from __future__ import annotations

import html
import re

__all__ = ["escape", "shorten"]

# Characters XML 1.0 forbids even as character references, and lone surrogates
# (which cannot be encoded to send the markup anywhere).
_UNWRITABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escape(text: str) -> str:
    """``text`` as the content of an XML/HTML element or a quoted attribute."""
    shown = _UNWRITABLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode(), text)
    return html.escape(shown, quote=True)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending with "…" if cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
