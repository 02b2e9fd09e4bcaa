"""No deprecated call: crossenc's Ray Data stages are built from Ray's current API, and the
suite's warning filters (pyproject.toml, tests/conftest.py) fail a deprecated call made from
crossenc or a test, whether Ray warns of it or logs it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from crossenc.inspect_input import plan_job
from crossenc.output.parts import new_run_id
from crossenc.output.writer import WriterOptions
from crossenc.pipeline import build_dataset
from crossenc.read import read_units
from tests.helpers import job_config


def _double(batch: dict) -> dict:
    return batch


@pytest.mark.parametrize("task", ["score", "rerank"])
def test_the_jobs_pipeline_is_built_without_a_deprecated_call(
    ray_local, models, pairs_dir: Path, tmp_path: Path, task: str
):
    # Every map_batches of the job (read+tokenize, the scorer pool, the rerank shuffle, the
    # write tasks) is built here; a deprecated argument fails this test at the call, through
    # pyproject.toml's filters: putting map_batches(concurrency=...) back into build_dataset
    # fails it with "DeprecationWarning: The argument ``concurrency`` is deprecated".
    cfg = job_config(pairs_dir, tmp_path / "out", models[("bert", 1)], task=task)
    plan = plan_job(cfg)
    ds = build_dataset(
        cfg,
        read_units(plan.files),
        plan.info,
        new_run_id(),
        [object()],
        WriterOptions(),
        rerank_shuffle=task == "rerank",
    )
    names, ops = [], [ds._logical_plan.dag]  # (the stages are lazy: built, not run)
    while ops:
        names.append(ops[-1].name)
        ops += ops.pop().input_dependencies
    assert {"MapBatches(ScorerReplica)", "MapBatches(write_block)"} <= set(names)


def test_a_deprecation_ray_logs_fails_the_call_that_made_it(ray_local):
    ds = ray_local.data.from_items([{"x": 1}])
    with pytest.raises(DeprecationWarning, match="concurrency"):
        ds.map_batches(_double, concurrency=1)  # Ray logs this one, warns of nothing


def test_a_deprecation_ray_warns_of_fails_the_call_that_made_it(ray_local):
    ds = ray_local.data.from_items([{"x": 1}])
    with pytest.raises(DeprecationWarning, match="ray_remote_args"):
        ds.map_batches(_double, max_retries=1)  # a remote argument without a name of its own


def test_the_filters_fail_a_deprecation_attributed_to_crossenc_or_a_test_only():
    for module in ("crossenc.pipeline", "bench.oob", "test_api", "tests.helpers"):
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            with pytest.raises(category):
                warnings.warn_explicit("old", category, "f.py", 1, module=module)
    # a library's own, attributed to its module (as Ray's DataContext warns whenever one is
    # made): not raised
    with warnings.catch_warnings(record=True):
        for module in ("ray.data.context", "transformers.modeling_utils"):
            warnings.warn_explicit("old", DeprecationWarning, "f.py", 1, module=module)
