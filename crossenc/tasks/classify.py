"""task: classify. A label per pair: the argmax of a multi-output model's labels, or a
single-output model's score against ``classify.threshold``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from crossenc.config import ConfigError
from crossenc.models.describe import ModelInfo
from crossenc.tasks.base import LABEL, Task


class ClassifyTask(Task):
    """Scores and a label per pair."""

    name = "classify"
    added = (LABEL,)

    def check(self, info: ModelInfo) -> None:
        """A single-output model needs classify.threshold; a multi-output model refuses it."""
        threshold = self.cfg.classify.threshold
        if info.num_labels == 1 and threshold is None:
            raise ConfigError(
                f"task classify with single-output model {self.cfg.model.name} needs "
                "classify.threshold"
            )
        if info.num_labels > 1 and threshold is not None:
            raise ConfigError("classify.threshold applies to single-output models only")

    def score_columns(
        self, scores: np.ndarray, valid: np.ndarray, info: ModelInfo
    ) -> dict[str, pa.Array]:
        """The score columns and ``label``: a single output's score >= classify.threshold."""
        cols = super().score_columns(scores, valid, info)
        if info.num_labels == 1:
            cols[LABEL] = pa.array(scores[:, 0] >= self.cfg.classify.threshold, mask=~valid)
        return cols
