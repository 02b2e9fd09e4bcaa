"""task: score. One score per pair from a single-output model (``score``)."""

from __future__ import annotations

from crossenc.tasks.base import Task


class ScoreTask(Task):
    """A score per pair, nothing more."""

    name = "score"
