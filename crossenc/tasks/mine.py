"""task: mine. Every candidate's teacher score, written as task score writes it (with the query,
positive flag and retriever score carried along), and each query's hard negatives, chosen by the
output writers once a query's rows are all there (:mod:`crossenc.mining.negatives`): a file's
queries when each sits in one file, else each query after a shuffle by query."""

from __future__ import annotations

from crossenc.tasks.base import Task


class MineTask(Task):
    """A teacher score per candidate; the negatives are chosen per query by the writers."""

    name = "mine"

    @property
    def group_by(self) -> str | None:
        """The query column (mine.group_by, else input.text_a)."""
        return self.cfg.group_column()
