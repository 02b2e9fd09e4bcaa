"""Rewrite docs/reference/config.md's table from the config models (crossenc schema --markdown).

tests/test_cli.py checks that the committed page is current."""

from pathlib import Path

from crossenc.config import config_reference

START, END = "<!-- config-reference:start -->\n", "\n<!-- config-reference:end -->"
page = Path(__file__).resolve().parents[1] / "docs" / "reference" / "config.md"
text = page.read_text()
head, rest = text.split(START, 1)
_, tail = rest.split(END, 1)
page.write_text(head + START + config_reference() + END + tail)
