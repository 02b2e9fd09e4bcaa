"""The pipeline's object-store budget: what bounds the blocks queued ahead of the scorers."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossenc.config import RuntimeConfig
from crossenc.inputs.plan import plan_job
from crossenc.inputs.read import read_units
from crossenc.job.dataflow import build_dataset
from crossenc.job.run_job import run_job
from crossenc.output.parts import new_run_id
from crossenc.output.writer import WriterOptions
from tests.helpers import job_config, read_input, read_output

MIB = 2**20


@pytest.mark.parametrize(
    ("settings", "budget_mib"),
    [({}, 256), ({"replicas": 2}, 256), ({"replicas": 8}, 1024), ({"object_store_mb": 96}, 96)],
)
def test_budget_defaults_scale_with_replicas(settings: dict, budget_mib: int):
    assert RuntimeConfig(**settings).object_store_budget() == budget_mib * MIB


def test_budget_below_64_mib_is_refused():
    with pytest.raises(ValueError, match="object_store_mb"):
        RuntimeConfig(object_store_mb=8)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["score", "rerank"])
def test_small_budget_reaches_the_executor_and_every_row_lands(
    ray_local, models, pairs_dir: Path, tmp_path: Path, task: str
):
    # 300 rows in blocks of 20 through a 64 MiB budget: the stages take turns, none starves,
    # and rerank's shuffle gets through it too
    cfg = job_config(
        pairs_dir,
        tmp_path / "out",
        models[("bert", 1)],
        task=task,
        rerank={"group_by": "qid"},
        runtime={"object_store_mb": 64, "block_rows": 20},
    )
    plan = plan_job(cfg)
    assert not plan.rerank_within_files  # the sample's groups span files: a shuffle
    units = read_units(plan.files)
    ds = build_dataset(
        cfg, units, plan.info, new_run_id(), [], WriterOptions(), group_shuffle=task == "rerank"
    )
    assert ds.context.execution_options.resource_limits.object_store_memory == 64 * MIB
    result = run_job(cfg, plan)
    out = read_output(tmp_path / "out")
    assert result.rows_written == out.num_rows == 300
    keys = list(zip(out["qid"].to_pylist(), out["doc_id"].to_pylist(), strict=True))
    want = read_input(pairs_dir)
    assert sorted(keys) == sorted(
        zip(want["qid"].to_pylist(), want["doc_id"].to_pylist(), strict=True)
    )
    if task == "rerank":  # ranks 1..n within every query group
        groups: dict[int, list[int]] = {}
        for qid, rank in zip(out["qid"].to_pylist(), out["rank"].to_pylist(), strict=True):
            groups.setdefault(qid, []).append(rank)
        assert len(groups) == 30
        assert all(sorted(r) == list(range(1, len(r) + 1)) for r in groups.values())
