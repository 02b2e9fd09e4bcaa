"""Rewrite the README config reference from the config models (crossenc schema --markdown)."""

from pathlib import Path

from crossenc.config import config_reference

START, END = "<!-- config-reference:start -->\n", "\n<!-- config-reference:end -->"
readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
head, rest = text.split(START, 1)
_, tail = rest.split(END, 1)
readme.write_text(head + START + config_reference() + END + tail)
