"""task: evaluate. Scores written as task score (or classify, for a multi-output model) writes
them, with the gold labels carried along; the metrics against those labels are computed over
the written rows before the commit (:mod:`crossenc.job.evaluation`)."""

from __future__ import annotations

from crossenc.config import ConfigError
from crossenc.models.describe import ModelInfo
from crossenc.tasks.base import LABEL, Task, score_names


class EvaluateTask(Task):
    """Scores (and a multi-output model's label) per pair, for the metrics."""

    name = "evaluate"

    @property
    def group_by(self) -> str | None:
        """kind rerank: the query column (evaluate.group_by); None for the other kinds."""
        return self.cfg.group_column()

    def columns(self, info: ModelInfo) -> list[str]:
        """The score columns, and ``label`` for a multi-output model."""
        return score_names(info) + ([LABEL] if info.num_labels > 1 else [])

    def check(self, info: ModelInfo) -> None:
        """Ranking and similarity need one score per pair; classification takes either: a
        single output against 0/1 gold labels, or labels against gold label names."""
        kind = self.cfg.evaluate.kind
        if kind != "classify" and info.num_labels != 1:
            raise ConfigError(
                f"evaluate.kind {kind} needs a single-output model, but {self.cfg.model.name} "
                f"has {info.num_labels} outputs {list(info.labels)}; use evaluate.kind: classify"
            )
