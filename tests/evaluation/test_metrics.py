"""The metrics against the functions sentence-transformers' evaluators call, on random data
with ties, queries without a relevant pair and graded relevance."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import pearsonr, spearmanr
from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator
from sklearn.metrics import average_precision_score, f1_score, ndcg_score

from crossenc.evaluation import metrics

RNG = np.random.default_rng(3)


def _queries(n: int, graded: bool) -> tuple[pa.Array, np.ndarray, np.ndarray, list[slice]]:
    """n queries of 3-12 pairs each, shuffled together; some without a relevant pair."""
    sizes = RNG.integers(3, 13, size=n)
    qid = np.repeat([f"q{i}" for i in range(n)], sizes)
    gold = RNG.integers(0, 4 if graded else 2, size=len(qid)) * (RNG.random(len(qid)) < 0.4)
    gold[np.repeat(np.arange(n) % 5 == 0, sizes)] = 0  # every fifth query: nothing relevant
    scores = RNG.normal(size=len(qid)).astype(np.float32)
    order = RNG.permutation(len(qid))
    return pa.array(qid[order]), gold[order], scores[order], sizes


def _st_reranking(qid: pa.Array, gold: np.ndarray, scores: np.ndarray, k: int) -> dict:
    """sentence-transformers' per-query metrics (its own compute_metrics), 0 without a relevant
    pair, as its __call__ does."""
    evaluator = CrossEncoderRerankingEvaluator(samples=[], at_k=k)
    ids = np.asarray(qid.to_pylist())
    out = {}
    for q in dict.fromkeys(ids):
        rows = np.flatnonzero(ids == q)
        relevant = (gold[rows] > 0).astype(int).tolist()
        out[q] = evaluator.compute_metrics(relevant, scores[rows]) if any(relevant) else (0, 0, 0)
    return out


def test_ranking_per_query_equals_sentence_transformers() -> None:
    qid, gold, scores, _ = _queries(200, graded=False)
    table = metrics.per_query_ranking(qid, gold, scores, at_k=5)
    got = {row["query"]: row for row in table.to_pylist()}
    want = _st_reranking(qid, gold, scores, 5)
    assert set(got) == set(want)
    for q, (mrr, ndcg, ap) in want.items():
        assert got[q]["mrr@5"] == pytest.approx(mrr, abs=1e-9)
        assert got[q]["ndcg@5"] == pytest.approx(ndcg, abs=1e-9)
        assert got[q]["map"] == pytest.approx(ap, abs=1e-9)
    assert sum(r["pairs"] for r in got.values()) == len(gold)
    summary = metrics.ranking_summary(table, 5, resamples=200, seed=0)
    assert summary["queries_without_relevant"] == sum(1 for r in got.values() if not r["relevant"])
    assert summary["queries_without_relevant"] >= 40
    mean_mrr = np.mean([v[0] for v in want.values()])
    assert summary["metrics"]["mrr@5"] == pytest.approx(mean_mrr, abs=1e-9)
    low, high = summary["ci95"]["mrr@5"]
    assert low < mean_mrr < high and high - low < 0.3


def test_graded_ndcg_uses_the_grades_as_gains_as_sklearn_does() -> None:
    qid, gold, scores, _ = _queries(50, graded=True)
    table = metrics.per_query_ranking(qid, gold, scores, at_k=10)
    ids = np.asarray(qid.to_pylist())
    for row in table.to_pylist():
        rows = np.flatnonzero(ids == row["query"])
        if gold[rows].sum() == 0:
            assert row["ndcg@10"] == 0
            continue
        want = ndcg_score([gold[rows]], [scores[rows]], k=10)
        assert row["ndcg@10"] == pytest.approx(want, abs=1e-9)
        relevant = np.sort(np.flatnonzero(gold[rows] > 0))
        top = np.argsort(-scores[rows], kind="stable")[:10]
        assert row["recall@10"] == pytest.approx(len(np.intersect1d(top, relevant)) / len(relevant))


def test_relevant_from_raises_the_bar_for_mrr_and_map_not_ndcg() -> None:
    qid = pa.array(["a"] * 4)
    gold = np.array([1, 0, 2, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    low = metrics.per_query_ranking(qid, gold, scores, 10, relevant_from=1).to_pylist()[0]
    high = metrics.per_query_ranking(qid, gold, scores, 10, relevant_from=2).to_pylist()[0]
    assert low["mrr@10"] == 1.0 and high["mrr@10"] == pytest.approx(1 / 3)
    assert high["relevant"] == 1 and low["relevant"] == 2
    assert low["ndcg@10"] == high["ndcg@10"]


def test_a_null_query_is_a_query_of_its_own() -> None:
    qid = pa.array(["a", None, "a", None])
    table = metrics.per_query_ranking(qid, np.array([1, 1, 0, 0]), np.ones(4) * [1, 2, 3, 4], 10)
    assert table.column("query").to_pylist() == ["a", None]  # in order of appearance
    assert table.column("pairs").to_pylist() == [2, 2]


@pytest.mark.parametrize("ties", [False, True])
def test_best_thresholds_equal_sentence_transformers(ties: bool) -> None:
    scores = RNG.normal(size=500).astype(np.float32)
    if ties:
        scores = np.round(scores, 1)
    labels = (scores + RNG.normal(scale=1.0, size=500) > 0.3).astype(int)
    find = BinaryClassificationEvaluator
    assert metrics.best_accuracy(scores, labels) == pytest.approx(
        find.find_best_acc_and_threshold(scores, labels, True)
    )
    assert metrics.best_f1(scores, labels) == pytest.approx(
        find.find_best_f1_and_threshold(scores, labels, True)
    )
    got = metrics.binary_classification(scores, labels, resamples=100, seed=1)
    assert got["metrics"]["average_precision"] == average_precision_score(labels, scores)
    low, high = got["ci95"]["accuracy"]
    assert low < got["metrics"]["accuracy"] < high


def test_best_accuracy_when_calling_everything_negative_wins() -> None:
    scores = np.array([0.9, 0.8, 0.1], dtype=np.float32)
    labels = np.array([0, 0, 0])
    find = BinaryClassificationEvaluator.find_best_acc_and_threshold
    assert metrics.best_accuracy(scores, labels) == find(scores, labels, True)


def test_multiclass_metrics_and_confusion() -> None:
    logits = RNG.normal(size=(300, 3))
    gold = np.where(RNG.random(300) < 0.6, logits.argmax(axis=1), RNG.integers(0, 3, 300))
    got = metrics.multiclass_classification(logits, gold, ["a", "b", "c"], 0, 0)
    predicted = logits.argmax(axis=1)
    for average in ("macro", "micro", "weighted"):
        assert got["metrics"][f"f1_{average}"] == f1_score(gold, predicted, average=average)
    matrix = np.array(got["confusion"]["matrix"])
    assert matrix.sum() == 300 and np.trace(matrix) == (predicted == gold).sum()
    assert matrix[1].sum() == got["per_label"]["b"]["support"] == (gold == 1).sum()
    assert got["per_label"]["c"]["precision"] == pytest.approx(matrix[2, 2] / matrix[:, 2].sum())
    assert got["ci95"]["accuracy"] is None  # no resamples asked for


def test_similarity_is_scipys() -> None:
    gold = RNG.random(100) * 5
    scores = gold + RNG.normal(size=100)
    got = metrics.similarity(scores, gold)["metrics"]
    assert got["pearson"] == pearsonr(gold, scores)[0]
    assert got["spearman"] == spearmanr(gold, scores)[0]


def test_the_interval_is_seeded_and_normal_past_the_bootstrap_limit(monkeypatch) -> None:
    values = RNG.random(1000)
    assert metrics.interval(values, 300, 7) == metrics.interval(values, 300, 7)
    assert metrics.interval(values, 300, 7) != metrics.interval(values, 300, 8)
    assert metrics.interval(values[:1], 300, 7) is None
    bootstrap = metrics.interval(values, 2000, 0)
    monkeypatch.setattr(metrics, "BOOTSTRAP_EXACT_UNITS", 10)
    normal = metrics.interval(values, 2000, 0)
    assert normal == pytest.approx(bootstrap, abs=2e-3)  # the two agree at n = 1000


def test_paired_differences_tell_a_real_gain_from_noise() -> None:
    base = RNG.random(400)
    same = metrics.paired(base, base.copy(), 500, 0)
    assert same["mean_difference"] == 0 and same["p_randomization"] == 1.0
    assert same["p_paired_t"] is None  # no spread: the t statistic is undefined

    better = np.clip(base + 0.05 + RNG.normal(scale=0.1, size=400), 0, 1)
    gain = metrics.paired(better, base, 500, 0, permutations=2000)
    low, high = gain["ci95"]
    assert 0 < low < gain["mean_difference"] < high
    assert gain["p_randomization"] == pytest.approx(1 / 2001)  # no flip reaches it
    assert gain["p_paired_t"] < 1e-6

    noise = base + RNG.normal(scale=0.1, size=400)
    noise -= noise.mean() - base.mean()  # the same mean: no difference at all
    null = metrics.paired(noise, base, 500, 0, permutations=2000)
    assert null["p_randomization"] > 0.5 and null["ci95"][0] < 0 < null["ci95"][1]
    assert null == metrics.paired(noise, base, 500, 0, permutations=2000)  # seeded
