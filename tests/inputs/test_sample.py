"""The seeded sample of the job's pairs that the quality gate and int8 calibration read."""

from __future__ import annotations

import numpy as np

from crossenc.inputs import sample as sample_module
from crossenc.inputs.plan import plan_job
from crossenc.inputs.sample import sample_pairs
from crossenc.testing import write_pairs, write_parquet_files
from tests.helpers import job_config, read_input


def test_a_rerank_sample_holds_whole_groups_across_files(models, pairs_dir, tmp_path):
    """pairs_dir's groups of 10 are spread over its 3 files: each sampled group is whole."""
    cfg = job_config(pairs_dir, tmp_path / "out", models[("bert", 1)], task="rerank")
    plan = plan_job(cfg)
    sample = sample_pairs(cfg, plan.files, 45, seed=3)
    assert len(sample.pairs) == 40 and len(np.unique(sample.groups)) == 4  # 5 would be 50
    table = read_input(pairs_dir).to_pylist()
    qid_of = {(r["query"], r["passage"]): r["qid"] for r in table}
    for g in np.unique(sample.groups):
        qids = {qid_of[p] for p, at in zip(sample.pairs, sample.groups, strict=True) if at == g}
        assert len(qids) == 1
        assert sum(r["qid"] in qids for r in table) == 10
    again = sample_pairs(cfg, plan.files, 45, seed=3)
    assert again.pairs == sample.pairs  # seeded
    assert sample_pairs(cfg, plan.files, 45, seed=4).pairs != sample.pairs


def test_a_row_sample_is_seeded_and_sized(models, pairs_dir, tmp_path):
    cfg = job_config(pairs_dir, tmp_path / "out", models[("bert", 1)])
    plan = plan_job(cfg)
    sample = sample_pairs(cfg, plan.files, 50, seed=0)
    assert len(sample.pairs) == 50 and sample.groups is None
    assert len(set(sample.pairs)) == 50
    assert sample_pairs(cfg, plan.files, 50, seed=0).pairs == sample.pairs
    assert len(sample_pairs(cfg, plan.files, 10_000, seed=0).pairs) == 300  # all there is


def test_a_rerank_sample_within_files_reads_only_the_files_it_needs(models, tmp_path, monkeypatch):
    """Where no group spans two files (20 files of 2 groups of 10 rows, sorted by qid), the
    sample reads the group column of the few files its groups come from, not of every file:
    at 10^5 input files that is a few GETs instead of 10^5, twice a run (calibration, gate)."""
    write_pairs(tmp_path / "all", rows=400, files=1, seed=5)
    table = read_input(tmp_path / "all").sort_by("qid")
    write_parquet_files(table, tmp_path / "in", 20)
    cfg = job_config(tmp_path / "in", tmp_path / "out", models[("bert", 1)], task="rerank")
    plan = plan_job(cfg)
    assert plan.rerank_within_files
    read = []
    real = sample_module._read_group_column
    monkeypatch.setattr(
        sample_module, "_read_group_column", lambda c, path: read.append(path) or real(c, path)
    )
    sample = sample_pairs(cfg, plan.files, 45, seed=3, within_files=True)
    assert len(sample.pairs) == 40 and len(np.unique(sample.groups)) == 4
    assert 2 <= len(read) <= 3, read
    qid_of = {(r["query"], r["passage"]): r["qid"] for r in table.to_pylist()}
    for g in np.unique(sample.groups):
        qids = {qid_of[p] for p, at in zip(sample.pairs, sample.groups, strict=True) if at == g}
        assert len(qids) == 1 and sum(r == next(iter(qids)) for r in table["qid"].to_pylist()) == 10
    assert sample_pairs(cfg, plan.files, 45, seed=3, within_files=True).pairs == sample.pairs
    read.clear()
    spanning = sample_pairs(cfg, plan.files, 45, seed=3)  # groups may span files: all are read
    assert len(read) == 20 and len(np.unique(spanning.groups)) == 4
