"""The interface every task implements: the columns it adds, its per-row post-processing (scores
to output columns), its per-group post-processing, and what it needs from the model and input.

A task is chosen by ``task:`` in the config (:func:`crossenc.tasks.task_for`): ``score``,
``classify``, ``rerank``, ``evaluate`` and ``mine``, a module each.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

from crossenc.config import ConfigError, JobConfig
from crossenc.models.describe import ModelInfo

SCORE = "score"
LABEL = "label"
RANK = "rank"
DROPPED = "_dropped"  # internal: a row the task keeps out of the output (rerank's top_k)
GROUP_ROWS = "_group_rows"  # internal: the rows of the row's group, after a shuffle (task mine)


def score_names(info: ModelInfo) -> list[str]:
    """Names of the score columns: ``score``, or ``score_<label>`` per output."""
    return [SCORE] if info.num_labels == 1 else [f"{SCORE}_{name}" for name in info.labels]


class Task:
    """One task of the job. Subclasses set ``name`` and override what differs."""

    name: ClassVar[str]
    added: ClassVar[tuple[str, ...]] = ()  # columns after the score columns

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg

    @property
    def group_by(self) -> str | None:
        """The input column whose groups the task post-processes together (None: rows alone)."""
        return None

    def columns(self, info: ModelInfo) -> list[str]:
        """The columns the task adds to every output row, in order (before ``truncated``)."""
        return score_names(info) + list(self.added)

    def check(self, info: ModelInfo) -> None:
        """Refuse a model that cannot give the task's columns (a ConfigError naming the key)."""
        if info.num_labels != 1:
            raise ConfigError(
                f"task {self.name} needs a single-output model, but {self.cfg.model.name} has "
                f"{info.num_labels} outputs {list(info.labels)}; use task: classify"
            )

    def score_columns(
        self, scores: np.ndarray, valid: np.ndarray, info: ModelInfo
    ) -> dict[str, pa.Array]:
        """Per row: the task's output columns for a block of scores (rows x outputs); rows not
        ``valid`` get nulls."""
        mask = ~valid
        if info.num_labels == 1:
            return {SCORE: pa.array(scores[:, 0], mask=mask)}
        cols = {n: pa.array(scores[:, i], mask=mask) for i, n in enumerate(score_names(info))}
        names = np.asarray(info.labels, dtype=object)[np.argmax(scores, axis=1)]
        cols[LABEL] = pa.array(names, type=pa.string(), mask=mask)
        return cols

    def post_group(self, group: pa.Table) -> pa.Table:
        """Per group of :attr:`group_by`, after a shuffle: post-process its scored rows (by
        default each is told how many they are: the writer that takes them, every row of a
        group going to one, handles the group once all are there)."""
        return group.append_column(GROUP_ROWS, pa.array([group.num_rows] * group.num_rows))
