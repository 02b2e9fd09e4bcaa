"""task: evaluate end to end on a local Ray: the job's metrics equal sentence-transformers'
evaluators' on the same pairs and model (within 1e-6), and the per-query Parquet, the summary
and the leaderboard say what they should."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder.evaluation import (
    CrossEncoderClassificationEvaluator,
    CrossEncoderCorrelationEvaluator,
    CrossEncoderRerankingEvaluator,
)

from crossenc.config import ConfigError
from crossenc.job.cluster import for_this_machine
from crossenc.job.report import render_report
from crossenc.job.result import summary_lines
from crossenc.job.run_job import run_job
from crossenc.output.commit import SUMMARY
from crossenc.testing import NLI_LABELS, write_pairs, write_parquet_files
from tests.helpers import job_config, read_input

pytestmark = pytest.mark.slow


def labelled(folder: Path, rows: int, seed: int, **gold: np.ndarray) -> pa.Table:
    """write_pairs' rows (queries' pairs spread over 3 files) with gold columns added."""
    write_pairs(folder / "raw", rows, files=1, seed=seed, queries_per_group=8)
    table = read_input(folder / "raw")
    for name, values in gold.items():
        table = table.append_column(name, pa.array(values))
    write_parquet_files(table, folder / "in", files=3)
    return table


def evaluate_config(folder: Path, out: str, model: Path, **evaluate: object):
    """A task evaluate job over ``labelled``'s input in ``folder``, writing to ``folder / out``."""
    return job_config(folder / "in", folder / out, model, task="evaluate", evaluate=evaluate)


def pairs(table: pa.Table) -> list[list[str]]:
    texts = (table.column(c).to_pylist() for c in ("query", "passage"))
    return [list(p) for p in zip(*texts, strict=True)]


def test_reranking_equals_sentence_transformers(ray_local, models, tmp_path):
    rng = np.random.default_rng(5)
    relevance = (rng.random(192) < 0.25).astype(np.int64)
    table = labelled(tmp_path, 192, seed=5, relevance=relevance)
    model = models[("bert", 1)]
    cfg = evaluate_config(
        tmp_path, "out", model, kind="rerank", gold="relevance", group_by="qid", at_k=5
    )
    result = run_job(cfg)
    got = result.summary["evaluation"]

    samples = []
    for qid in dict.fromkeys(table.column("qid").to_pylist()):
        rows = table.filter(pa.compute.equal(table.column("qid"), qid))
        docs = rows.column("passage").to_pylist()
        gold = rows.column("relevance").to_pylist()
        samples.append(
            {
                "query": rows.column("query")[0].as_py(),
                "positive": [d for d, g in zip(docs, gold, strict=True) if g],
                "negative": [d for d, g in zip(docs, gold, strict=True) if not g],
            }
        )
    want = CrossEncoderRerankingEvaluator(samples, at_k=5)(CrossEncoder(str(model)))
    for name in ("map", "mrr@5", "ndcg@5"):
        assert got["metrics"][name] == pytest.approx(want[name], abs=1e-6), name
    assert 0 < got["metrics"]["ndcg@5"] < 1
    assert got["queries"] == 24 and got["pairs"] == 192 == got["rows"]
    assert got["queries_without_relevant"] == sum(1 for s in samples if not s["positive"])

    per_query = pq.read_table(got["per_query"])
    assert per_query.column_names == ["qid", "pairs", "relevant", *got["metrics"]]
    assert sorted(per_query.column("qid").to_pylist()) == list(range(24))
    assert np.mean(per_query.column("map").to_numpy()) == pytest.approx(got["metrics"]["map"])
    low, high = got["ci95"]["ndcg@5"]
    assert low < got["metrics"]["ndcg@5"] < high

    board = got["leaderboard"][0]
    assert board["model"] == str(model) and board["ndcg@5"] == got["metrics"]["ndcg@5"]
    assert board["docs_per_second_score_phase"] > 0 and board["docs_per_second_per_replica"] > 0
    threads = for_this_machine(cfg).runtime.cpu_threads()  # a CPU replica's cores
    per_core = board["docs_per_second_per_replica"] / threads
    assert board["docs_per_second_per_core"] == pytest.approx(per_core, abs=0.051)
    committed = json.loads((tmp_path / "out" / SUMMARY).read_text())
    assert committed["evaluation"]["metrics"] == got["metrics"]
    assert committed["phases"]["evaluate"] >= 0
    text = "\n".join(summary_lines(result))
    assert "evaluation (rerank)" in text and "ndcg@5" in text and "mrr@5" in text
    page = render_report(result.summary)
    assert 'id="leaderboard"' in page and 'id="per-query"' in page
    assert sum(got["distribution"]["map"]) == 24

    # another model on the same log, compared with this one query by query
    other = models[("electra", 1)]
    cfg = evaluate_config(
        tmp_path, "out-other", other, kind="rerank", at_k=5, compare_to=[str(tmp_path / "out")]
    )
    result = run_job(cfg)
    second = result.summary["evaluation"]
    assert [r["model"] for r in second["leaderboard"]] == [str(other), str(model)]
    (compared,) = second["compared"]
    assert compared["queries_compared"] == 24 and compared["queries_only_here"] == 0
    theirs = pq.read_table(got["per_query"]).sort_by("qid")
    ours = pq.read_table(second["per_query"]).sort_by("qid")
    diff = ours.column("ndcg@5").to_numpy() - theirs.column("ndcg@5").to_numpy()
    ndcg = compared["differences"]["ndcg@5"]
    assert ndcg["mean_difference"] == pytest.approx(diff.mean())
    assert 0 < ndcg["p_randomization"] <= 1 and ndcg["ci95"][0] <= diff.mean() <= ndcg["ci95"][1]
    text = "\n".join(summary_lines(result))
    assert f"vs {model} (24 queries): mrr@5 " in text


def test_classification_of_labels_equals_sentence_transformers(ray_local, models, tmp_path):
    rng = np.random.default_rng(6)
    gold = rng.integers(0, 3, 120)
    names = [NLI_LABELS[g] if i % 7 else None for i, g in enumerate(gold)]  # None: unlabelled
    table = labelled(tmp_path, 120, seed=6, nli=np.array(names, dtype=object))
    model = models[("bert", 3)]
    cfg = evaluate_config(tmp_path, "out", model, kind="classify", gold="nli", bootstrap=200)
    got = run_job(cfg).summary["evaluation"]
    kept = table.filter(pa.compute.is_valid(table.column("nli")))
    ids = [NLI_LABELS.index(n) for n in kept.column("nli").to_pylist()]
    want = CrossEncoderClassificationEvaluator(pairs(kept), ids)(CrossEncoder(str(model)))
    for name in ("f1_macro", "f1_micro", "f1_weighted"):
        assert got["metrics"][name] == pytest.approx(want[name], abs=1e-6), name
    assert got["rows_without_gold"] == 120 - kept.num_rows > 0
    matrix = np.array(got["confusion"]["matrix"])
    assert got["confusion"]["labels"] == list(NLI_LABELS)
    assert matrix.sum() == kept.num_rows
    assert matrix.sum(axis=1).tolist() == np.bincount(ids, minlength=3).tolist()
    assert got["metrics"]["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert 'id="confusion"' in render_report({"evaluation": got})


def test_binary_classification_and_similarity_equal_sentence_transformers(
    ray_local, models, tmp_path
):
    rng = np.random.default_rng(7)
    duplicate = rng.random(160) < 0.4
    similar = np.round(rng.random(160) * 5, 1)
    table = labelled(tmp_path, 160, seed=7, duplicate=duplicate, similar=similar)
    model = models[("bert", 1)]
    st = CrossEncoder(str(model))

    def evaluate(kind: str, gold: str, out: str) -> dict:
        return run_job(evaluate_config(tmp_path, out, model, kind=kind, gold=gold)).summary[
            "evaluation"
        ]

    got = evaluate("classify", "duplicate", "out-binary")
    want = CrossEncoderClassificationEvaluator(pairs(table), duplicate.astype(int))(st)
    for name in ("accuracy", "f1", "precision", "recall", "average_precision"):
        assert got["metrics"][name] == pytest.approx(want[name], abs=1e-6), name
    for name in ("accuracy_threshold", "f1_threshold"):  # the same activation (sigmoid)
        assert got["metrics"][name] == pytest.approx(want[name], abs=1e-5), name
    assert [r["model"] for r in got["leaderboard"]] == [str(model)]
    assert "average_precision" in got["leaderboard"][0]
    assert sum(got["calibration"]["rows"]) == 160
    assert 'id="calibration"' in render_report({"evaluation": got})

    got = evaluate("similarity", "similar", "out-sts")
    want = CrossEncoderCorrelationEvaluator(pairs(table), similar.tolist())(st)
    assert got["metrics"]["pearson"] == pytest.approx(want["pearson"], abs=1e-6)
    assert got["metrics"]["spearman"] == pytest.approx(want["spearman"], abs=1e-6)


def test_gold_labels_the_kind_cannot_read_are_refused_naming_the_column(models, tmp_path):
    labelled(tmp_path, 16, seed=8, relevance=np.array(["yes", "no"] * 8))

    def config(model: Path, kind: str):
        return evaluate_config(tmp_path, "out", model, kind=kind, gold="relevance")

    with pytest.raises(Exception, match=r"gold column 'relevance' has type string.*evaluate"):
        run_job(config(models[("bert", 1)], "rerank"))
    with pytest.raises(ConfigError, match="evaluate.kind similarity needs a single-output"):
        run_job(config(models[("bert", 3)], "similarity"))
    cfg = config(models[("bert", 1)], "rerank")
    cfg.evaluate.gold = "pair_id"
    cfg.evaluate.compare_to = [str(tmp_path / "nothing")]
    with pytest.raises(ConfigError, match=r"compare_to .*nothing: no committed run there"):
        run_job(cfg)
