"""Ranking metrics computed where the queries are (``evaluate.within_files``): when no query
spans two input files, each output writer computes the per-query metrics of an input file as
soon as all of its rows are there (as an in-file rerank ranks them), writes them beside the
output file it closes, and hands the driver their *moments*: per model and metric the count,
sum and sum of squares and a histogram, and per model after the first the same of its
differences with the first. Moments add up exactly, so the run's means are exact and the
driver's memory does not grow with the input; past
:data:`~crossenc.evaluation.metrics.BOOTSTRAP_EXACT_UNITS` queries the intervals and the
paired test come from them (the normal interval and the paired t-test, as the in-driver path
does there), below it the per-query files are read back and the bootstrap runs as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crossenc.evaluation import metrics

FOLDER = "_evaluation"  # beside the output's rows (readers of the output skip _-prefixed paths)
MODEL = "model"  # several models: the per-query tables' column naming the model
EDGES = np.linspace(0, 1, 11)  # the per-query metrics' histogram (ranking_summary's)


@dataclass(frozen=True)
class FileEvaluation:
    """What a writer needs to measure an input file's queries."""

    group_by: str
    gold: str
    at_k: int
    relevant_from: int
    scores: tuple[tuple[str, str], ...]  # (model's short name, its score column), first: baseline


def per_query_of(rows: pa.Table, spec: FileEvaluation) -> tuple[pa.Table, int, int]:
    """The per-query metrics of scored rows (one input file's, written ones), each model's
    stacked in model order (with a ``model`` column when there are several), the query column
    named as ``spec.group_by``; and the rows measured and those left out without a gold label."""
    labelled = pc.is_valid(rows.column(spec.gold))
    measured = rows.filter(labelled)
    gold = measured.column(spec.gold).to_numpy(zero_copy_only=False).astype(np.int64)
    tables = {}
    for name, column in spec.scores:
        scores = measured.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
        table = metrics.per_query_ranking(
            measured.column(spec.group_by).combine_chunks(),
            gold,
            scores,
            spec.at_k,
            spec.relevant_from,
        )
        tables[name] = table.rename_columns([spec.group_by, *table.column_names[1:]])
    return stacked(tables), rows.num_rows, rows.num_rows - measured.num_rows


def stacked(per_query: dict[str, pa.Table]) -> pa.Table:
    """Per-query tables by model as one: a lone model's as it is, several models' one after
    the other with the model's name in a ``model`` column after the query's."""
    if len(per_query) == 1:
        return next(iter(per_query.values()))
    return pa.concat_tables(
        t.add_column(1, MODEL, pa.array([name] * t.num_rows, pa.string()))
        for name, t in per_query.items()
    )


def _sums(values: np.ndarray) -> list[float]:
    return [float(values.sum()), float((values * values).sum())]


def moments(per_query: pa.Table, spec: FileEvaluation, rows: int, without_gold: int) -> dict:
    """The moments of one file's per-query table (:func:`per_query_of`), JSON-ready."""
    names = metrics.ranking_names(spec.at_k)
    models = [name for name, _ in spec.scores]
    tables = by_model(per_query, models)
    first = tables[models[0]]
    relevant = first.column("relevant").to_numpy()
    out: dict[str, Any] = {
        "rows": rows,
        "rows_without_gold": without_gold,
        "queries": first.num_rows,
        "queries_without_relevant": int((relevant == 0).sum()),
        "pairs": int(pc.sum(first.column("pairs")).as_py() or 0),
        "models": {},
        "paired": {},
    }
    base = {n: first.column(n).to_numpy() for n in names}
    for model, table in tables.items():
        values = {n: table.column(n).to_numpy() for n in names}
        out["models"][model] = {
            n: [*_sums(v), *np.histogram(v, bins=EDGES)[0].tolist()] for n, v in values.items()
        }
        if model != models[0]:
            out["paired"][model] = {n: _sums(values[n] - base[n]) for n in names}
    return out


def by_model(per_query: pa.Table, models: list[str]) -> dict[str, pa.Table]:
    """A per-query table split by its ``model`` column (dropped), or a lone model's."""
    if MODEL not in per_query.column_names:
        return {models[0]: per_query}
    column = per_query.column(MODEL)
    return {m: per_query.filter(pc.equal(column, m)).drop_columns([MODEL]) for m in models}


def add(into: dict | None, more: dict) -> dict:
    """Two files' moments added (``into`` None: a copy of ``more``)."""
    if into is None:
        return {k: v for k, v in more.items() if k != "per_query"}
    for key in ("rows", "rows_without_gold", "queries", "queries_without_relevant", "pairs"):
        into[key] += more[key]
    for section in ("models", "paired"):
        for model, by_metric in more[section].items():
            target = into[section].setdefault(model, {})
            for name, values in by_metric.items():
                if name in target:
                    target[name] = [a + b for a, b in zip(target[name], values, strict=True)]
                else:
                    target[name] = list(values)
    return into


def _normal(n: int, total: float, squares: float) -> tuple[float, list[float] | None, float]:
    """The mean, its 95% normal interval (None below two units) and the standard error."""
    mean = total / n if n else 0.0
    if n < 2:
        return mean, None, 0.0
    sd = float(np.sqrt(max(squares - n * mean * mean, 0.0) / (n - 1)))
    return mean, metrics.normal_interval(mean, sd, n), sd / float(np.sqrt(n))


def summary_of(total: dict, model: str, at_k: int) -> dict[str, Any]:
    """One model's ranking summary from the run's moments, as
    :func:`~crossenc.evaluation.metrics.ranking_summary` gives it from per-query values past
    the bootstrap's limit."""
    n = total["queries"]
    out: dict[str, Any] = {
        "queries": n,
        "queries_without_relevant": total["queries_without_relevant"],
        "pairs": total["pairs"],
        "metrics": {},
        "ci95": {},
        "distribution": {"edges": EDGES.tolist()},
    }
    for name in metrics.ranking_names(at_k):
        total_, squares, *histogram = total["models"][model][name]
        out["metrics"][name], out["ci95"][name], _ = _normal(n, total_, squares)
        out["distribution"][name] = [int(c) for c in histogram]
    return out


def paired_of(total: dict, model: str, at_k: int) -> dict[str, Any]:
    """A model against the first over every query, from the moments of their differences: the
    mean difference, its normal interval and the paired t-test's p-value (no randomization
    test: it needs the per-query values)."""
    from scipy.stats import t as student

    n = total["queries"]
    out: dict[str, Any] = {"queries_compared": n, "differences": {}}
    for name in metrics.ranking_names(at_k):
        mean, ci, se = _normal(n, *total["paired"][model][name])
        p = float(2 * student.sf(abs(mean / se), n - 1)) if se > 0 else None
        out["differences"][name] = {
            "mean_difference": mean,
            "ci95": ci,
            "p_randomization": None,
            "p_paired_t": p,
        }
    return out
