"""Metrics against gold labels, computed as sentence-transformers' cross-encoder evaluators
compute them, by the libraries IR and ML practice trusts:

- ranking (``CrossEncoderRerankingEvaluator``): MRR@k, NDCG@k (graded gains), MAP and Recall@k
  per query, by ``ir_measures`` over trec_eval's C code (``pytrec_eval``); a query without a
  relevant pair counts 0, as in sentence-transformers;
- classification (``CrossEncoderClassificationEvaluator``): for a single-output model, accuracy
  and F1 at their best thresholds and average precision (the Quora table's metric); for a
  multi-output one, accuracy, macro / micro / weighted F1, per-label precision and recall and
  the confusion matrix, by scikit-learn;
- similarity (``CrossEncoderCorrelationEvaluator``): Pearson and Spearman, by SciPy.

Ties between scores are the one place the two can differ: trec_eval breaks them by document,
scikit-learn averages over them. Float scores of distinct pairs rarely tie.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

QUERY = "query"  # the per-query table's group column, as it was in the input
BOOTSTRAP_EXACT_UNITS = 100_000  # more queries (rows) than this: a normal interval, same width


def ranking_names(at_k: int) -> list[str]:
    """The per-query ranking metrics, in the order of the model cards (MRR, NDCG) then MAP."""
    return [f"mrr@{at_k}", f"ndcg@{at_k}", "map", f"recall@{at_k}"]


def per_query_ranking(
    group: pa.Array, gold: np.ndarray, scores: np.ndarray, at_k: int, relevant_from: int = 1
) -> pa.Table:
    """Per query (one ``group`` value): its pairs, its relevant pairs (gold >= relevant_from),
    and :func:`ranking_names`' metrics of the ranking by ``scores``. ``gold`` holds integer
    relevance grades (NDCG's gains); a null group is a query of its own."""
    import ir_measures
    import pandas as pd
    import pyarrow.compute as pc
    from ir_measures import AP, RR, R, nDCG

    encoded = pc.dictionary_encode(group, null_encoding="encode")
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    queries = len(encoded.dictionary)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(queries))
    within = np.empty(len(codes), dtype=np.int64)
    within[order] = np.arange(len(codes)) - np.repeat(starts, np.bincount(codes, minlength=queries))
    qid = codes.astype(str)
    # zero-padded ids: trec_eval breaks score ties by id, descending; that is the later row
    # first, as sentence-transformers' argsort(...)[::-1] does for MRR
    doc = np.char.zfill(within.astype(str), 10)
    qrels = pd.DataFrame({"query_id": qid, "doc_id": doc, "relevance": gold.astype(np.int64)})
    run = pd.DataFrame({"query_id": qid, "doc_id": doc, "score": scores.astype(np.float64)})
    measures = {
        f"mrr@{at_k}": RR(rel=relevant_from) @ at_k,
        f"ndcg@{at_k}": nDCG @ at_k,
        "map": AP(rel=relevant_from),
        f"recall@{at_k}": R(rel=relevant_from) @ at_k,
    }
    values = {name: np.zeros(queries) for name in measures}
    by_measure = {m: name for name, m in measures.items()}
    for metric in ir_measures.iter_calc(list(measures.values()), qrels, run):
        values[by_measure[metric.measure]][int(metric.query_id)] = metric.value
    relevant = np.bincount(codes, weights=gold >= relevant_from, minlength=queries)
    columns = {
        QUERY: encoded.dictionary,
        "pairs": pa.array(np.bincount(codes, minlength=queries)),
        "relevant": pa.array(relevant.astype(np.int64)),
    }
    columns.update({name: pa.array(v) for name, v in values.items()})
    return pa.table(columns)


def interval(
    values: np.ndarray, resamples: int, seed: int, level: float = 0.95
) -> list[float] | None:
    """A ``level`` confidence interval of the mean of ``values`` (per query or per row): the
    percentile bootstrap with ``resamples`` seeded resamples, or, above
    ``BOOTSTRAP_EXACT_UNITS`` units, the normal interval (the bootstrap's own limit there).
    None with fewer than two units or no resamples."""
    n = len(values)
    if n < 2 or resamples <= 0:
        return None
    tail = (1 - level) / 2
    if n > BOOTSTRAP_EXACT_UNITS:
        return normal_interval(float(values.mean()), float(values.std(ddof=1)), n, level)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start, stop in _draws(resamples, n):
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.quantile(means, [tail, 1 - tail])
    return [float(low), float(high)]


def normal_interval(mean: float, sd: float, n: int, level: float = 0.95) -> list[float]:
    """The normal ``level`` interval of a mean of ``n`` units with standard deviation ``sd``."""
    from scipy.stats import norm

    half = float(norm.ppf(1 - (1 - level) / 2) * sd / np.sqrt(n))
    return [mean - half, mean + half]


def _draws(total: int, n: int, cells: int = 2_000_000) -> list[tuple[int, int]]:
    """``total`` resamples of ``n`` units in slices [start, stop) of at most ``cells`` draws
    (~16 MB at a time, whatever n)."""
    chunk = max(1, cells // n)
    return [(start, min(total, start + chunk)) for start in range(0, total, chunk)]


def paired(
    here: np.ndarray, there: np.ndarray, resamples: int, seed: int, permutations: int = 10_000
) -> dict[str, Any]:
    """Whether ``here`` (per-query values of one model) differs from ``there`` (another model's,
    the same queries in the same order): the mean difference with its 95% interval (the
    bootstrap of the paired differences), the two-sided p-value of a paired randomization test
    (sign flips of the differences, seeded) and that of the paired t-test. Above
    ``BOOTSTRAP_EXACT_UNITS`` queries the randomization test is left to the t-test (None)."""
    from scipy.stats import ttest_rel

    diff = here - there
    n = len(diff)
    out: dict[str, Any] = {
        "mean_difference": float(diff.mean()) if n else 0.0,
        "ci95": interval(diff, resamples, seed),
        "p_randomization": None,
        "p_paired_t": None,
    }
    if n < 2:
        return out
    if diff.std() > 0:
        out["p_paired_t"] = float(ttest_rel(here, there).pvalue)
    if n <= BOOTSTRAP_EXACT_UNITS and permutations > 0:
        rng = np.random.default_rng(seed)
        observed = abs(diff.mean())
        extreme = 0
        for start, stop in _draws(permutations, n):
            signs = rng.choice((-1.0, 1.0), size=(stop - start, n))
            extreme += int((np.abs((signs * diff).mean(axis=1)) >= observed - 1e-15).sum())
        out["p_randomization"] = (extreme + 1) / (permutations + 1)
    return out


def ranking_summary(per_query: pa.Table, at_k: int, resamples: int, seed: int) -> dict[str, Any]:
    """The overall ranking metrics: each the mean over queries (exact, whatever file the
    queries were in), with its confidence interval, and the query counts."""
    names = ranking_names(at_k)
    relevant = per_query.column("relevant").to_numpy()
    out: dict[str, Any] = {
        "queries": per_query.num_rows,
        "queries_without_relevant": int((relevant == 0).sum()),
        "pairs": int(pa.compute.sum(per_query.column("pairs")).as_py() or 0),
        "metrics": {},
        "ci95": {},
    }
    out["distribution"] = {"edges": np.linspace(0, 1, 11).tolist()}
    for name in names:
        values = per_query.column(name).to_numpy()
        out["metrics"][name] = float(values.mean()) if len(values) else 0.0
        out["ci95"][name] = interval(values, resamples, seed)
        counts, _ = np.histogram(values, bins=out["distribution"]["edges"])
        out["distribution"][name] = counts.tolist()
    return out


def calibration(scores: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict[str, list]:
    """A reliability curve: per score decile (rows sorted by score, cut into ``bins`` equal
    parts), the mean score and the share of positive gold labels."""
    order = np.argsort(scores, kind="stable")
    parts = [p for p in np.array_split(order, bins) if len(p)]
    return {
        "mean_score": [float(scores[p].mean()) for p in parts],
        "positive_rate": [float((labels[p] == 1).mean()) for p in parts],
        "rows": [len(p) for p in parts],
    }


def best_accuracy(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Accuracy at the best threshold (label 1 where score > threshold), and that threshold:
    sentence-transformers' ``find_best_acc_and_threshold``, in one sort."""
    n = len(scores)
    if n == 0:
        return 0.0, -1.0
    order = np.argsort(-scores, kind="stable")
    s, positive = scores[order], labels[order] == 1
    negatives = n - int(positive.sum())
    last = np.r_[s[1:] != s[:-1], True]  # the last row of each run of equal scores
    correct = np.cumsum(positive) + (negatives - np.cumsum(~positive))
    ends = np.flatnonzero(last)
    best = ends[np.argmax(correct[ends])]
    if correct[best] / n <= negatives / n:  # nothing beats calling every pair negative
        return negatives / n, float(np.nextafter(np.float32(s[0]), np.float32(np.inf)))
    return float(correct[best] / n), _midpoint(s, best)


def best_f1(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    """F1 at the best threshold, with its precision, recall and threshold:
    sentence-transformers' ``find_best_f1_and_threshold``, in one sort."""
    if len(scores) == 0 or not (labels == 1).any():
        return 0.0, 0.0, 0.0, 0.0
    order = np.argsort(-scores, kind="stable")
    s, positive = scores[order], labels[order] == 1
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    hits = np.cumsum(positive)[last]
    extracted = last + 1
    precision = hits / extracted
    recall = hits / positive.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(hits > 0, 2 * precision * recall / (precision + recall), 0.0)
    i = int(np.argmax(f1))
    if f1[i] <= 0:
        return 0.0, 0.0, 0.0, 0.0
    return float(f1[i]), float(precision[i]), float(recall[i]), _midpoint(s, last[i])


def _midpoint(s: np.ndarray, i: int) -> float:
    """The threshold between sorted score ``s[i]`` and the next one down (``s[i]`` if last or
    if the midpoint rounds onto the next score)."""
    if i == len(s) - 1:
        return float(s[i])
    mid = (s[i] + s[i + 1]) / 2
    return float(s[i] if mid == s[i + 1] else mid)


def binary_classification(
    scores: np.ndarray, labels: np.ndarray, resamples: int, seed: int
) -> dict[str, Any]:
    """A single-output model against 0/1 gold labels: the metrics of sentence-transformers'
    ``CrossEncoderClassificationEvaluator`` (average precision is its primary metric)."""
    from sklearn.metrics import average_precision_score

    acc, acc_threshold = best_accuracy(scores, labels)
    f1, precision, recall, f1_threshold = best_f1(scores, labels)
    correct = ((scores > acc_threshold) == (labels == 1)).astype(np.float64)
    return {
        "rows": len(scores),
        "metrics": {
            "accuracy": acc,
            "accuracy_threshold": acc_threshold,
            "f1": f1,
            "f1_threshold": f1_threshold,
            "precision": precision,
            "recall": recall,
            "average_precision": float(average_precision_score(labels, scores)),
        },
        "ci95": {"accuracy": interval(correct, resamples, seed)},
        "calibration": calibration(scores, labels),
    }


def multiclass_classification(
    scores: np.ndarray, gold: np.ndarray, labels: list[str], resamples: int, seed: int
) -> dict[str, Any]:
    """A multi-output model against gold label indices (0..len(labels)-1): accuracy, F1
    (macro, micro, weighted: sentence-transformers' figures), per-label precision, recall and
    F1, and the confusion matrix (rows gold, columns predicted, in ``labels`` order)."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    predicted = np.argmax(scores, axis=1)
    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=ids, zero_division=0
    )
    correct = (predicted == gold).astype(np.float64)
    return {
        "rows": len(gold),
        "metrics": {
            "accuracy": float(correct.mean()) if len(correct) else 0.0,
            **{
                f"f1_{average}": float(f1_score(gold, predicted, average=average))
                for average in ("macro", "micro", "weighted")
            },
        },
        "ci95": {"accuracy": interval(correct, resamples, seed)},
        "per_label": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(labels)
        },
        "confusion": {
            "labels": list(labels),
            "matrix": confusion_matrix(gold, predicted, labels=ids).tolist(),
        },
    }


def similarity(scores: np.ndarray, gold: np.ndarray) -> dict[str, Any]:
    """Pearson and Spearman of the scores against gold similarity scores (STSb's metrics)."""
    from scipy.stats import pearsonr, spearmanr

    enough = len(scores) >= 2
    return {
        "rows": len(scores),
        "metrics": {
            "pearson": float(pearsonr(gold, scores)[0]) if enough else float("nan"),
            "spearman": float(spearmanr(gold, scores)[0]) if enough else float("nan"),
        },
        "ci95": {},
    }
