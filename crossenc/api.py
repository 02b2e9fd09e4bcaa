"""The Python API: crossenc as a step of a Ray Data pipeline, or the whole committed job.

``scorer(config)`` has the shape of ``ray.data.llm``'s ``build_processor(config)``: it checks the
config and the model once, and returns a function from a :class:`ray.data.Dataset` of pairs to
the lazy dataset of their scores, which composes with any operator before and after it::

    ds = ray.data.read_parquet("s3://bucket/pairs/").filter(lambda r: r["lang"] == "en")
    score = crossenc.scorer({"model": {"name": "cross-encoder/ms-marco-MiniLM-L6-v2"},
                             "input": {"keep": ["qid", "doc_id"]}})
    score(ds).write_parquet("s3://bucket/scored/")

``run(config)`` runs the job as ``crossenc score`` does (input and output paths, commit,
resume, dead-letter folder, summary) and returns its :class:`~crossenc.job.result.RunResult`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from crossenc.config import ConfigError, JobConfig, build_config
from crossenc.inputs.plan import InputError, describe_view, schema_problem
from crossenc.job.cluster import for_this_machine
from crossenc.job.dataflow import scoring_stages
from crossenc.job.result import RunResult
from crossenc.job.run_job import run_job
from crossenc.models.describe import describe_model
from crossenc.models.several import build_model_set
from crossenc.models.tokenize import ERROR
from crossenc.output.writer import visible_columns
from crossenc.tasks import check_task
from crossenc.tasks.base import DROPPED

REASON = "reason"  # why a row could not be scored (null where it was): the dead-letter reason
IN_DATASET = "(the dataset)"  # input.path and output.path of a scorer: the dataset is both


def _config(config: JobConfig | dict[str, Any], paths: bool) -> JobConfig:
    if isinstance(config, JobConfig):
        return config
    if not isinstance(config, dict):
        raise ConfigError(f"config must be a crossenc.JobConfig or a dict, not {type(config)}")
    if not paths:  # a scorer's input is the dataset it is given; its output, the one returned
        config = {**config}
        for section in ("input", "output"):
            config[section] = {"path": IN_DATASET, **(config.get(section) or {})}
    return build_config(config)


def _check_columns(batch: pa.Table, cfg: JobConfig) -> pa.Table:
    """Refuse a dataset that lacks a column the config names, or holds texts that are not
    strings, as the job refuses such a file (:func:`schema_problem`: the column and its key)."""
    problem = schema_problem(batch.schema, cfg)
    if problem:
        raise InputError(f"crossenc.scorer: the dataset's {problem}")
    return batch.select(cfg.needed_columns())


def _finish(batch: pa.Table) -> pa.Table:
    """The job's output columns (carried, scores, ``windows`` with model.long_text chunk,
    ``truncated``) plus ``reason``; rows past a rerank's top_k left out, as the job leaves
    them out."""
    if DROPPED in batch.column_names:
        batch = batch.filter(pc.invert(batch.column(DROPPED)))
    out = batch.select(visible_columns(batch.column_names))
    return out.append_column(REASON, batch.column(ERROR).cast(pa.string()))


def scorer(config: JobConfig | dict[str, Any]) -> Callable[[ray.data.Dataset], ray.data.Dataset]:
    """A function scoring the (text_a, text_b) pairs of a Ray dataset, lazily, with the job's
    model, activation, task and runtime settings.

    Its dataset has the job's output columns: ``input.keep`` (and a rerank's group column),
    the task's score, label or rank columns (``models``: each model's, ``score_<name>``),
    ``windows`` (model.long_text chunk: the windows scored for the row, whose best score it
    keeps), ``truncated``, and ``reason``: why a row could not be scored (the job's
    dead-letter reason; null where it was scored, and then its scores are null). A rerank ranks
    within groups across the whole dataset (a shuffle), without the rows past
    ``rerank.top_k``. ``input.path`` and ``output.path`` are not needed: the dataset given is
    the input, the dataset returned the output. The model is described and checked against the
    task here, once; a missing column is refused when the dataset runs, naming it.
    """
    cfg = for_this_machine(_config(config, paths=False))
    info = describe_model(cfg.model, cfg.runtime.cache_dir)
    check_task(cfg, info)
    models = None
    if cfg.models:  # several: each described and checked, its own columns (score_<name>)
        infos = {name: describe_view(view) for name, view in cfg.model_views()[1:]}
        models = build_model_set(cfg, {next(iter(cfg.models)): info, **infos})
    if cfg.task == "mine":
        raise ConfigError(
            "task mine chooses each query's negatives in a job's output writers, from whole "
            "input files; a scorer gives the teacher's scores of any pairs: use task score"
        )
    if cfg.task == "rerank" and cfg.rerank.within_files:
        raise ConfigError(
            "rerank.within_files applies to the job's input files; a scorer ranks across its "
            "whole dataset: leave it unset"
        )

    def score(ds: ray.data.Dataset) -> ray.data.Dataset:
        ds = ds.map_batches(
            _check_columns, fn_kwargs={"cfg": cfg}, batch_format="pyarrow", zero_copy_batch=True
        )
        partitions = min(200, 8 * cfg.runtime.replicas) if cfg.task == "rerank" else None
        ds = scoring_stages(ds, cfg, info, partitions, models=models)
        return ds.map_batches(_finish, batch_format="pyarrow", zero_copy_batch=True)

    return score


def run(config: JobConfig | dict[str, Any]) -> RunResult:
    """Run the whole job (read input.path, score, write and commit output.path) as
    ``crossenc score`` does; returns what it did. A drift past output.drift, skipped files and
    dead letters are in the result (``drifted``, ``files_skipped``, ``rows_dead_lettered``);
    what stops a run raises (ConfigError, InputError, ConcurrentRunError, ...)."""
    return run_job(_config(config, paths=True))


__all__ = ["REASON", "run", "scorer"]
