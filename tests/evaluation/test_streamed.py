"""Evaluation within files (evaluate.within_files): the writers' per-file moments add up to
the figures the driver computes from every query's values, and a job whose queries sit in
one file each is measured in its writers (no row read back) with the same figures as a run
measured in the driver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import ttest_rel

from crossenc.evaluation import metrics, streamed
from crossenc.job.run_job import run_job
from crossenc.testing import write_pairs, write_parquet_files
from tests.helpers import job_config, read_input, several_config, spread_over_files

SPEC = streamed.FileEvaluation("qid", "relevance", 5, 1, (("a", "score_a"), ("b", "score_b")))


def scored_rows(seed: int, queries: int, start: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = queries * 6
    return pa.table(
        {
            "qid": np.repeat(np.arange(start, start + queries), 6),
            "relevance": rng.integers(0, 3, n),
            "score_a": rng.random(n),
            "score_b": rng.random(n),
        }
    )


def test_moments_of_files_add_up_to_the_figures_of_every_query(monkeypatch):
    files = [scored_rows(seed, 40, start=40 * seed) for seed in range(3)]
    total, tables = None, []
    for rows in files:
        table, measured, without = streamed.per_query_of(rows, SPEC)
        total = streamed.add(total, streamed.moments(table, SPEC, measured, without))
        tables.append(table)
    everything = streamed.by_model(pa.concat_tables(tables), ["a", "b"])
    assert total["queries"] == 120 and total["rows"] == 720 and total["pairs"] == 720
    monkeypatch.setattr(metrics, "BOOTSTRAP_EXACT_UNITS", 10)  # the normal interval, as past 1e5
    for model in ("a", "b"):
        got = streamed.summary_of(total, model, 5)
        want = metrics.ranking_summary(everything[model], 5, 100, 0)
        assert got["queries_without_relevant"] == want["queries_without_relevant"]
        assert got["distribution"] == want["distribution"]
        for name, value in want["metrics"].items():
            assert got["metrics"][name] == pytest.approx(value, abs=1e-12)
            assert got["ci95"][name] == pytest.approx(want["ci95"][name], abs=1e-12)
    paired = streamed.paired_of(total, "b", 5)
    for name, d in paired["differences"].items():
        here, there = everything["b"].column(name), everything["a"].column(name)
        diff = here.to_numpy() - there.to_numpy()
        assert d["mean_difference"] == pytest.approx(diff.mean(), abs=1e-12)
        assert d["p_paired_t"] == pytest.approx(ttest_rel(here, there).pvalue, rel=1e-9)
        assert d["p_randomization"] is None  # it needs each query's value


def test_rows_without_gold_are_counted_and_left_out():
    rows = scored_rows(1, 10)
    gold = rows.column("relevance").to_pylist()
    gold[:6] = [None] * 6  # query 0 has no label at all
    rows = rows.set_column(1, "relevance", pa.array(gold, pa.int64()))
    table, measured, without = streamed.per_query_of(rows, SPEC)
    assert (measured, without) == (60, 6)
    assert sorted(set(table.column("qid").to_pylist())) == list(range(1, 10))


def file_local_log(folder: Path, rows: int, seed: int) -> pa.Table:
    """write_pairs' rows with random grades, each query's rows in one of 3 files."""
    write_pairs(folder / "raw", rows, files=1, seed=seed, queries_per_group=8)
    table = read_input(folder / "raw").sort_by("qid")
    rng = np.random.default_rng(seed)
    table = table.append_column("relevance", pa.array(rng.integers(0, 3, rows)))
    cuts = np.searchsorted(table.column("qid").to_numpy(), [8, 16])  # queries 0-7, 8-15, 16+
    for i, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, rows], strict=True)):
        (folder / "in").mkdir(exist_ok=True)
        pq.write_table(table.slice(lo, hi - lo), folder / "in" / f"part-{i}.parquet")
    return table


@pytest.mark.slow
def test_a_log_whose_queries_span_files_is_measured_per_query_in_the_writers(
    ray_local, models, tmp_path, monkeypatch
):
    """After a shuffle over two writers (the whole input in one writer: the mining tests'
    path, the same step of the writer)."""
    writers = 2
    from crossenc.inputs.plan import plan_job

    table = file_local_log(tmp_path, 160, seed=6)
    spread_over_files(table, tmp_path / "mixed")  # each query in both files
    paths = {"bert": models[("bert", 1)], "electra": models[("electra", 1)]}
    evaluate = {"kind": "rerank", "at_k": 5}

    def config(out: str, **sections) -> Any:
        return several_config(
            tmp_path / "mixed", tmp_path / out, paths, task="evaluate", **sections
        )

    driver = run_job(config("driver", evaluate={**evaluate, "within_files": False}))
    cfg = config("writers", evaluate=evaluate, runtime={"writers": writers})
    plan = plan_job(cfg)
    assert plan.evaluate_shuffled and not plan.evaluate_within_files
    import crossenc.job.evaluation as evaluation

    def refused(*args, **kwargs):
        raise AssertionError("the rows were read back")

    monkeypatch.setattr(evaluation, "read_columns", refused)
    got = run_job(cfg).summary["evaluation"]
    want = driver.summary["evaluation"]
    assert got["queries"] == want["queries"] == 20 and got["rows"] == 160
    for theirs, ours in zip(want["models"], got["models"], strict=True):
        assert ours["metrics"] == pytest.approx(theirs["metrics"], abs=1e-12)
    pair, theirs = got["compared"][0], want["compared"][0]
    for name, d in theirs["differences"].items():
        assert pair["differences"][name]["mean_difference"] == pytest.approx(
            d["mean_difference"], abs=1e-12
        )
    pieces = sorted((tmp_path / "writers" / "_evaluation").glob("*/per_query/*.parquet"))
    assert pq.read_table(pieces).num_rows == 40  # 20 queries x 2 models, each once
    resumed = config("again", evaluate=evaluate, output={"mode": "resume"})
    assert not plan_job(resumed).evaluate_shuffled  # a shuffle cannot resume: read back


@pytest.mark.slow
def test_a_file_local_log_is_measured_in_the_writers(ray_local, models, tmp_path, monkeypatch):
    file_local_log(tmp_path, 192, seed=4)
    paths = {"bert": models[("bert", 1)], "electra": models[("electra", 1)]}
    evaluate = {"kind": "rerank", "at_k": 5}
    driver = run_job(
        several_config(
            tmp_path / "in",
            tmp_path / "driver",
            paths,
            task="evaluate",
            evaluate={**evaluate, "within_files": False},
        )
    ).summary["evaluation"]

    import crossenc.job.evaluation as evaluation

    def refused(*args, **kwargs):
        raise AssertionError("the rows were read back")

    monkeypatch.setattr(evaluation, "read_columns", refused)
    cfg = several_config(
        tmp_path / "in", tmp_path / "writers", paths, task="evaluate", evaluate=evaluate
    )
    got = run_job(cfg).summary["evaluation"]  # within_files from the footers
    assert got["queries"] == driver["queries"] == 24 and got["rows"] == 192
    for theirs, ours in zip(driver["models"], got["models"], strict=True):
        assert ours["metrics"] == pytest.approx(theirs["metrics"], abs=1e-12)
        for name, ci in theirs["ci95"].items():  # the same queries drawn
            assert ours["ci95"][name] == pytest.approx(ci, abs=1e-12), name
    pieces = sorted((tmp_path / "writers" / "_evaluation").glob("*/per_query/*.parquet"))
    assert pieces and pq.read_table(pieces).num_rows == 48  # 24 queries x 2 models
    (pair,) = got["compared"]
    for name, want in driver["compared"][0]["differences"].items():
        got_ = pair["differences"][name]
        assert got_["mean_difference"] == pytest.approx(want["mean_difference"], abs=1e-12)
        assert got_["ci95"] == pytest.approx(want["ci95"], abs=1e-12)
        assert got_["p_randomization"] == want["p_randomization"]

    # interrupted before its commit, then resumed: the kept files keep their moments
    from crossenc.testing.failpoints import FailpointError

    monkeypatch.setenv("CROSSENC_FAILPOINT", "commit.before_record:raise")
    cut = several_config(
        tmp_path / "in", tmp_path / "cut", paths, task="evaluate", evaluate=evaluate
    )
    with pytest.raises(FailpointError):
        run_job(cut)
    monkeypatch.delenv("CROSSENC_FAILPOINT")
    resumed = run_job(
        cut.model_copy(update={"output": cut.output.model_copy(update={"mode": "resume"})})
    )
    assert resumed.rows_resumed == 192 and resumed.rows_scored == 0
    again = resumed.summary["evaluation"]
    assert again["queries"] == 24 and again["rows"] == 192
    for theirs, ours in zip(driver["models"], again["models"], strict=True):
        assert ours["metrics"] == pytest.approx(theirs["metrics"], abs=1e-12)

    # past the bootstrap's limit: every figure from the moments, the pieces left where they are
    monkeypatch.setattr(metrics, "BOOTSTRAP_EXACT_UNITS", 10)
    cfg = several_config(
        tmp_path / "in", tmp_path / "moments", paths, task="evaluate", evaluate=evaluate
    )
    far = run_job(cfg).summary["evaluation"]
    assert isinstance(far["per_query"], list) and len(far["per_query"]) >= 1
    for theirs, ours in zip(driver["models"], far["models"], strict=True):
        assert ours["metrics"] == pytest.approx(theirs["metrics"], abs=1e-12)
    (pair,) = far["compared"]
    assert pair["differences"]["ndcg@5"]["p_randomization"] is None
    want = driver["compared"][0]["differences"]["ndcg@5"]
    assert pair["differences"]["ndcg@5"]["mean_difference"] == pytest.approx(
        want["mean_difference"]
    )
    assert pair["differences"]["ndcg@5"]["p_paired_t"] == pytest.approx(want["p_paired_t"])


def test_a_fractional_grade_is_refused_before_streaming(models, tmp_path):
    from crossenc.config import ConfigError
    from crossenc.inputs.plan import plan_job

    table = file_local_log(tmp_path, 48, seed=2)
    write_parquet_files(
        table.set_column(
            table.schema.get_field_index("relevance"),
            "relevance",
            table.column("relevance").cast(pa.float64()),
        ),
        tmp_path / "floats",
        2,
    )
    evaluate = {"kind": "rerank", "within_files": True}
    cfg = job_config(
        tmp_path / "floats",
        tmp_path / "out",
        models[("bert", 1)],
        task="evaluate",
        evaluate=evaluate,
    )
    with pytest.raises(
        ConfigError, match="evaluate.within_files true needs integer or bool grades"
    ):
        plan_job(cfg)
    cfg = job_config(
        tmp_path / "in",
        tmp_path / "out",
        models[("bert", 1)],
        task="evaluate",
        evaluate={"kind": "rerank"},
    )
    assert plan_job(cfg).evaluate_within_files
