"""Each task end to end on a local Ray: output columns and values."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pytest

from crossenc.config import ConfigError
from crossenc.engine.scoring import LocalScorer
from crossenc.inputs.plan import plan_job
from crossenc.job.run_job import run_job
from crossenc.output.commit import MANIFEST, SUCCESS, SUMMARY
from crossenc.testing import NLI_LABELS, write_parquet_files
from tests.helpers import job_config, read_input, read_output


def _expected(cfg, table) -> np.ndarray:
    pairs = list(
        zip(table.column("query").to_pylist(), table.column("passage").to_pylist(), strict=True)
    )
    return LocalScorer(cfg.model, cfg.runtime).predict(pairs)


def _by_doc(table, column):
    return dict(
        zip(table.column("doc_id").to_pylist(), table.column(column).to_pylist(), strict=True)
    )


def test_score_task(ray_local, models, pairs_dir, tmp_path):
    cfg = job_config(pairs_dir, tmp_path / "out", models[("bert", 1)])
    result = run_job(cfg)
    out = read_output(tmp_path / "out")
    inp = read_input(pairs_dir)
    assert result.rows_read == result.rows_written == inp.num_rows == out.num_rows
    assert out.column_names == ["qid", "doc_id", "score", "truncated"]
    got = _by_doc(out, "score")
    want = dict(zip(inp.column("doc_id").to_pylist(), _expected(cfg, inp), strict=True))
    assert set(got) == set(want)
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-5)
    assert _by_doc(out, "qid") == _by_doc(inp, "qid")  # keep columns unchanged
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert (tmp_path / "out" / SUCCESS).exists()
    assert manifest["rows_written"] == inp.num_rows
    assert sum(f["rows"] for f in manifest["files"]) == inp.num_rows
    assert manifest["model"]["activation"] == "sigmoid"
    assert not (tmp_path / "out" / "_temporary").exists()


@pytest.mark.slow
def test_score_task_on_a_compiled_model(ray_local, models, pairs_dir, tmp_path):
    """model.compile: the replica compiles at start (the summary says so); scores as eager."""
    cfg = job_config(
        pairs_dir,
        tmp_path / "out",
        models[("bert", 1)],
        model={"backend": "torch", "compile": True},
    )
    result = run_job(cfg)
    out, inp = read_output(tmp_path / "out"), read_input(pairs_dir)
    assert result.rows_written == inp.num_rows
    eager = cfg.model_copy(update={"model": cfg.model.model_copy(update={"compile": False})})
    want = dict(zip(inp.column("doc_id").to_pylist(), _expected(eager, inp), strict=True))
    got = _by_doc(out, "score")
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=0, atol=1e-5)
    summary = json.loads((tmp_path / "out" / SUMMARY).read_text())
    assert {r["runs"] for r in summary["replicas"]} == {"torch cpu float32 sdpa compiled"}
    assert "_runs" not in out.column_names


@pytest.mark.slow
def test_classify_multi_output(ray_local, models, pairs_dir, tmp_path):
    cfg = job_config(
        pairs_dir,
        tmp_path / "out",
        models[("deberta-v2", 3)],
        task="classify",
        model={"activation": "softmax"},
    )
    run_job(cfg)
    out = read_output(tmp_path / "out")
    score_cols = [f"score_{name}" for name in NLI_LABELS]
    assert out.column_names == ["qid", "doc_id", *score_cols, "label", "truncated"]
    scores = np.stack([out.column(c).to_numpy() for c in score_cols], axis=1)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    want = [NLI_LABELS[i] for i in scores.argmax(axis=1)]
    assert out.column("label").to_pylist() == want
    assert len(set(want)) > 1  # the tiny model does not put every pair in one class


@pytest.mark.slow
def test_classify_labels_override(ray_local, models, pairs_dir, tmp_path):
    names = ["c", "e", "n"]
    cfg = job_config(
        pairs_dir,
        tmp_path / "out",
        models[("roberta", 3)],
        task="classify",
        model={"labels": names},
    )
    run_job(cfg)
    out = read_output(tmp_path / "out")
    assert [c for c in out.column_names if c.startswith("score_")] == [
        "score_c",
        "score_e",
        "score_n",
    ]
    assert set(out.column("label").to_pylist()) <= set(names)


@pytest.mark.slow
def test_classify_threshold_single_output(ray_local, models, pairs_dir, tmp_path):
    inp = read_input(pairs_dir)
    base = job_config(pairs_dir, tmp_path / "x", models[("electra", 1)])
    threshold = float(np.median(_expected(base, inp)))
    cfg = job_config(
        pairs_dir,
        tmp_path / "out",
        models[("electra", 1)],
        task="classify",
        classify={"threshold": threshold},
    )
    run_job(cfg)
    out = read_output(tmp_path / "out")
    assert out.column_names == ["qid", "doc_id", "score", "label", "truncated"]
    score = out.column("score").to_numpy()
    assert out.column("label").to_pylist() == (score >= threshold).tolist()
    assert 0 < pc.sum(out.column("label")).as_py() < out.num_rows


@pytest.fixture(scope="module")
def grouped_dir(pairs_dir, tmp_path_factory):
    """The sample pairs sorted by query into 3 files, so that no group spans two files."""
    table = read_input(pairs_dir).sort_by("qid")
    root = tmp_path_factory.mktemp("grouped")
    write_parquet_files(table, root, 3)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    ("top_k", "layout"),
    [
        (None, "shuffle"),
        (3, "shuffle"),
        (None, "in_files"),
        (3, "in_files"),
        (None, "whole_input"),
        (3, "whole_input"),
    ],
)
def test_rerank(ray_local, models, pairs_dir, grouped_dir, tmp_path, top_k, layout):
    """Ranks as pandas computes them, whether groups span files (a shuffle; or, an input that
    fits in one output file, ranked whole by its one writer) or sit in one file each (ranked
    as each file is written; detected from the footers, resume allowed)."""
    inp_dir = grouped_dir if layout == "in_files" else pairs_dir
    max_rows = 1000 if layout == "whole_input" else 70  # 300 rows: one output file, or several
    cfg = job_config(
        inp_dir,
        tmp_path / "out",
        models[("bert", 1)],
        task="rerank",
        rerank={"group_by": "qid", "top_k": top_k},
        output={
            "mode": "resume" if layout == "in_files" else "error",
            "files": {"max_rows": max_rows},
        },
    )
    plan = plan_job(cfg)
    assert plan.rerank_within_files == (layout == "in_files")
    result = run_job(cfg, plan)
    out = read_output(tmp_path / "out").to_pandas()
    inp = read_input(inp_dir).to_pandas()
    inp["score"] = _expected(cfg, read_input(inp_dir))
    inp = inp.sort_values(["qid", "score"], ascending=[True, False])
    inp["rank"] = inp.groupby("qid").cumcount() + 1
    if top_k is not None:
        inp = inp[inp["rank"] <= top_k]
    assert result.rows_dropped_top_k == result.rows_read - len(inp)
    merged = inp.merge(out, on="doc_id", suffixes=("_want", "_got"))
    assert len(merged) == len(inp) == len(out)
    assert (merged["rank_want"] == merged["rank_got"]).all()
    np.testing.assert_allclose(merged["score_got"], merged["score_want"], atol=1e-5)
    assert out.groupby("qid")["rank"].max().max() == (top_k or 10)
    if layout == "whole_input":  # the one writer ranked everything: one file
        assert result.files_written == 1


def test_rerank_resume_is_refused_when_groups_span_files(models, pairs_dir, tmp_path):
    model = models[("bert", 1)]
    cfg = job_config(pairs_dir, tmp_path / "out", model, task="rerank", output={"mode": "resume"})
    with pytest.raises(ConfigError, match="rerank whose groups span input files"):
        plan_job(cfg)


@pytest.mark.slow
def test_output_mode(ray_local, models, pairs_dir, tmp_path):
    cfg = job_config(pairs_dir, tmp_path / "out", models[("bert", 1)])
    first = run_job(cfg)
    with pytest.raises(ConfigError, match="already holds a committed run"):
        run_job(cfg)
    again = run_job(
        job_config(pairs_dir, tmp_path / "out", models[("bert", 1)], output={"mode": "overwrite"})
    )
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["run_id"] == again.run_id != first.run_id
    assert read_output(tmp_path / "out").num_rows == again.rows_read  # old parts gone
