"""One-line messages from whatever a server or a library said."""

from __future__ import annotations

import re


def one_line(text: str, limit: int = 200) -> str:
    """Condense a message (text or HTML) to one short line."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.S | re.I)
    text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
