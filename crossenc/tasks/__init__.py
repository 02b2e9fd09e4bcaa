"""The tasks: one module each behind :class:`crossenc.tasks.base.Task`."""

from __future__ import annotations

from crossenc.config import ConfigError, JobConfig
from crossenc.engine.scoring import check_backend
from crossenc.models.describe import ModelInfo
from crossenc.models.load import load_tokenizer
from crossenc.models.tokenize import check_chunking
from crossenc.tasks.base import Task
from crossenc.tasks.classify import ClassifyTask
from crossenc.tasks.evaluate import EvaluateTask
from crossenc.tasks.mine import MineTask
from crossenc.tasks.rerank import RerankTask
from crossenc.tasks.score import ScoreTask

TASKS: dict[str, type[Task]] = {
    t.name: t for t in (ScoreTask, ClassifyTask, RerankTask, EvaluateTask, MineTask)
}


def task_for(cfg: JobConfig) -> Task:
    """The task ``task:`` names."""
    return TASKS[cfg.task](cfg)


def check_task(cfg: JobConfig, info: ModelInfo) -> None:
    """Refuse task/model combinations that cannot give the promised output columns, and what
    model.backend cannot run (:func:`~crossenc.engine.scoring.check_backend`): in the driver,
    before a replica starts."""
    task_for(cfg).check(info)
    check_backend(cfg.model, info, cfg.runtime)
    if cfg.model.long_text == "chunk":
        if info.num_labels != 1:
            raise ConfigError(
                f"model.long_text chunk keeps each pair's best window score (MaxP), which needs "
                f"a single-output model (task score, rerank, or classify with "
                f"classify.threshold); {cfg.model.name} has {info.num_labels} outputs "
                f"{list(info.labels)}, whose per-window maxima would not be one window's "
                "scores (use model.long_text: truncate)"
            )
        check_chunking(cfg.model, info, load_tokenizer(cfg.model, info.source))
