"""mkdocs hook: docs/reference/config.md's table as Markdown shows it.

The committed page holds `crossenc schema --markdown` byte for byte (tests/test_cli.py checks
it), whose descriptions name placeholders such as <namespace.name> or #<col>=<value> outside
code spans; Markdown would take those for HTML tags, so the site escapes them at build time.
"""

from __future__ import annotations

import re
from typing import Any

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def escape_placeholders(table: str) -> str:
    """``<`` and ``>`` outside code spans, as entities."""
    parts = re.split(r"(`[^`]*`)", table)
    return "".join(
        part if part.startswith("`") else part.replace("<", "&lt;").replace(">", "&gt;")
        for part in parts
    )


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if START not in markdown:
        return markdown
    head, rest = markdown.split(START, 1)
    table, tail = rest.split(END, 1)
    return head + escape_placeholders(table) + tail
