"""The Python API: crossenc.scorer as a step inside a real Ray Data pipeline, crossenc.run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import crossenc
from crossenc.config import ConfigError
from crossenc.testing import NLI_LABELS, write_pairs
from tests.helpers import job_config, job_model, read_output


def _by(table: pa.Table, key: str) -> dict:
    rows = table.to_pylist()
    return {r[key]: r for r in rows}


@pytest.mark.slow
def test_scorer_in_a_pipeline_matches_the_job_row_by_row(ray_local, models, pairs_dir, tmp_path):
    model = models[("bert", 1)]
    # the job, over every input row, through the Python entry point (a pydantic config)
    job = crossenc.run(job_config(pairs_dir, tmp_path / "job", model))
    assert isinstance(job, crossenc.RunResult) and job.rows_written == 300
    expected = _by(read_output(tmp_path / "job"), "doc_id")

    # read_parquet -> filter -> crossenc -> write_parquet, config as a plain dict, no paths
    score = crossenc.scorer(
        {
            **job_model(model),  # as the job's
            "input": {"text_a": "query", "text_b": "passage", "keep": ["qid", "doc_id"]},
        }
    )
    ds = ray_local.data.read_parquet(str(pairs_dir)).filter(lambda r: r["qid"] % 2 == 0)
    score(ds).write_parquet(str(tmp_path / "pipeline"))
    got = pq.read_table(tmp_path / "pipeline")
    assert got.column_names == ["qid", "doc_id", "score", "truncated", "reason"]
    kept = {d for d, r in expected.items() if r["qid"] % 2 == 0}
    assert got.num_rows == len(kept) == 150
    rows = _by(got, "doc_id")
    assert set(rows) == kept
    for doc_id, row in rows.items():
        assert row["reason"] is None
        assert row["truncated"] == expected[doc_id]["truncated"]
        assert row["score"] == pytest.approx(expected[doc_id]["score"], abs=1e-5)


@pytest.mark.slow
def test_scorer_reports_unscorable_rows_in_a_reason_column(ray_local, models):
    rows = [
        {"id": 0, "query": "what is ray", "passage": "Ray is a framework for scaling Python."},
        {"id": 1, "query": "what is ray", "passage": None},
        {"id": 2, "query": "   ", "passage": "A passage."},
    ]
    score = crossenc.scorer(
        {"model": {"name": str(models[("bert", 1)])}, "input": {"keep": ["id"]}}
    )
    out = sorted(score(ray_local.data.from_items(rows)).take_all(), key=lambda r: r["id"])
    assert [r["reason"] for r in out] == [None, "null_text:passage", "empty_text:query"]
    assert out[0]["score"] is not None and 0 < out[0]["score"] < 1  # sigmoid, one output
    assert out[1]["score"] is None and out[2]["score"] is None


@pytest.mark.slow
def test_scorer_labels_with_the_models_names(ray_local, models, tmp_path):
    write_pairs(tmp_path / "nli", rows=40, files=2, columns=("premise", "hypothesis"))
    section = {"text_a": "premise", "text_b": "hypothesis", "keep": ["pair_id"]}
    model = models[("deberta-v2", 3)]
    crossenc.run(
        {
            "input": {"path": str(tmp_path / "nli"), **section},
            **job_model(model),
            "task": "classify",
            "output": {"path": str(tmp_path / "job")},
        }
    )
    expected = _by(read_output(tmp_path / "job"), "pair_id")
    score = crossenc.scorer({"input": section, **job_model(model), "task": "classify"})
    got = score(ray_local.data.read_parquet(str(tmp_path / "nli"))).take_all()
    assert len(got) == 40
    for row in got:
        want = expected[row["pair_id"]]
        assert row["label"] == want["label"] and row["label"] in NLI_LABELS
        for label in NLI_LABELS:
            assert row[f"score_{label}"] == pytest.approx(want[f"score_{label}"], abs=1e-5)


@pytest.mark.slow
def test_scorer_reranks_across_the_dataset_with_top_k(ray_local, models, pairs_dir, tmp_path):
    model = models[("bert", 1)]
    sections = {"task": "rerank", "rerank": {"group_by": "qid", "top_k": 3}}
    crossenc.run(job_config(pairs_dir, tmp_path / "job", model, **sections))
    expected = _by(read_output(tmp_path / "job"), "doc_id")
    score = crossenc.scorer(
        {
            **job_model(model),  # as the job's
            "input": {"keep": ["doc_id"]},
            **sections,
        }
    )
    got = score(ray_local.data.read_parquet(str(pairs_dir))).take_all()
    assert len(got) == len(expected) == 30 * 3  # 30 queries, the best 3 of each
    for row in got:
        assert row["rank"] == expected[row["doc_id"]]["rank"]
    ranks: dict[int, list[int]] = {}
    for row in got:
        ranks.setdefault(row["qid"], []).append(row["rank"])
    assert all(sorted(r) == [1, 2, 3] for r in ranks.values())


def test_scorer_names_a_missing_column_and_a_bad_config(ray_local, models):
    score = crossenc.scorer({"model": {"name": str(models[("bert", 1)])}})
    ds = ray_local.data.from_items([{"question": "a", "passage": "b"}])
    with pytest.raises(
        Exception, match=r"column 'query' not found \(input.text_a; columns: question, passage\)"
    ):
        score(ds).take_all()
    with pytest.raises(ConfigError, match="model.bogus: unknown key"):
        crossenc.scorer({"model": {"name": str(models[("bert", 1)]), "bogus": 1}})
    with pytest.raises(ConfigError, match="use task: classify"):
        crossenc.scorer({"model": {"name": str(models[("bert", 3)])}, "task": "score"})


@pytest.mark.slow
def test_scores_are_deterministic_across_block_layouts(ray_local, models):
    """The same pairs give the same scores whatever the dataset's blocks (length-sorted
    batches differ in composition)."""
    rows = [{"i": i, "query": f"query {i % 7}", "passage": "word " * (5 + i)} for i in range(60)]
    score = crossenc.scorer({**job_model(models[("bert", 1)]), "input": {"keep": ["i"]}})
    one = {r["i"]: r["score"] for r in score(ray_local.data.from_items(rows)).take_all()}
    many = ray_local.data.from_items(rows, override_num_blocks=6)
    six = {r["i"]: r["score"] for r in score(many).take_all()}
    assert np.allclose([one[i] for i in range(60)], [six[i] for i in range(60)], atol=1e-5)


@pytest.mark.slow
def test_the_readme_example_runs_as_written(minilm, tmp_path):
    """The README's Python example, in a fresh interpreter in a folder holding demo/."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("### From Python")[1].split("```python\n")[1].split("```")[0]
    write_pairs(tmp_path / "demo" / "pairs", rows=60, files=2)
    (tmp_path / "demo" / "model").symlink_to(minilm)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == "60"  # rows_written
    pairs = pq.read_table(tmp_path / "demo" / "pairs")
    even = sum(1 for q in pairs["qid"].to_pylist() if q % 2 == 0)
    assert pq.read_table(tmp_path / "demo" / "scored-even").num_rows == even
    assert (tmp_path / "demo" / "scored-all" / "_SUCCESS").exists()


def test_scorer_refuses_a_model_folder_without_weights_at_once(models, tmp_path):
    import shutil

    folder = tmp_path / "no-weights"
    shutil.copytree(models[("bert", 1)], folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no weights in the model folder"):
        crossenc.scorer({"model": {"name": str(folder)}})
