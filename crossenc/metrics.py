"""Per-row metric columns of the scorers and their per-part records, merged on the driver.

Every scored row carries internal columns from its scorer replica (which replica, its share of
the replica's busy time, its real tokens, its share of the padded tokens computed for its batch;
the first row a replica scores also carries the seconds its model took to load). When a part is
written, :func:`part_metrics` reduces its rows to a small JSON record: per-replica sums, a
token-length histogram, label counts, exact count/sum/min/max of each score column and a uniform
sample of at most ``SAMPLE`` scores. The driver folds each record into :class:`RunMetrics` as
the part arrives (memory bounded whatever the row count); :mod:`crossenc.job.summary` turns
that into the run summary.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crossenc.evaluation.streamed import add as add_moments
from crossenc.mining.negatives import add_counts
from crossenc.models.tokenize import ERROR, TRUNCATED
from crossenc.tasks.base import LABEL, SCORE

REPLICA = "_replica"  # which scorer replica scored the row


BUSY = "_busy_s"  # the row's share of that replica's busy seconds for its block


TOKENS = "_tokens"  # real tokens of the row


COMPUTED = "_computed"  # the row's share of the tokens computed (with padding) for its batch


LOAD = "_load_s"  # the replica's model-load seconds, on the first row it scored, else 0


RUNS = "_runs"  # what the replica runs: backend, device, dtype... ("torch cuda bfloat16 sdpa")


OOM = "_oom_splits"  # batches of the block split after running out of memory, on its first row


STORE_RETRIES = "_store_retries"  # object-store requests the read task retried, on a first row


REUSED = "_reused"  # output.incremental: the row's scores were copied from an earlier run


METRIC_COLUMNS = (REPLICA, BUSY, TOKENS, COMPUTED, LOAD, RUNS, OOM, STORE_RETRIES)


MODEL_BUSY = "_busy_s@"  # + a model's short name: its share of BUSY (several models)


MODEL_ERRORS = "_model_errors"  # runtime.model_pools per_model: why a pool's model could not
# score a row, handed down the pools; the last pool makes it the row's dead-letter reason


SAMPLE = 512  # scores kept per part for quantiles


MERGED_SAMPLE = 200_000  # scores the driver keeps per column while merging parts


TIMELINE_POINTS = 500  # throughput points in a summary


QUANTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


HISTOGRAM_BINS = 20


def metric_columns(
    replica: str,
    busy_seconds: float,
    tokens: np.ndarray,
    computed_tokens: int,
    valid: np.ndarray,
    load_seconds: float = 0.0,
    runs: str = "",
    oom_splits: int = 0,
) -> dict[str, pa.Array]:
    """The per-row metric columns of one scored block: busy time and computed tokens are shared
    out equally over the block's scored (``valid``) rows; ``load_seconds`` and ``oom_splits``
    go on the first; ``runs`` says what the replica runs (a one-entry dictionary column, as the
    replica's name)."""
    n, scored = len(tokens), max(int(valid.sum()), 1)

    def on_first(value: float, dtype: type) -> pa.Array:
        out = np.zeros(n, dtype=dtype)
        if valid.any():
            out[int(np.argmax(valid))] = value
        return pa.array(out)

    def constant(value: str) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), [value])

    return {
        REPLICA: constant(replica),
        BUSY: pa.array(np.where(valid, busy_seconds / scored, 0.0)),
        TOKENS: pa.array(tokens.astype(np.int32)),
        COMPUTED: pa.array(np.where(valid, computed_tokens / scored, 0.0)),
        LOAD: on_first(load_seconds, np.float64),
        RUNS: constant(runs),
        OOM: on_first(oom_splits, np.int32),
    }


def model_busy_columns(
    names: list[str], busy_seconds: list[float], scored: list[np.ndarray]
) -> dict[str, pa.Array]:
    """Several models: each one's busy seconds for the block, shared out over the rows it
    scored (``scored``: each one's mask; output.incremental reuses some models' scores) as
    :data:`BUSY` is (per-model throughput: the model cards' docs/s)."""
    return {
        f"{MODEL_BUSY}{name}": pa.array(np.where(rows, busy / max(int(rows.sum()), 1), 0.0))
        for name, busy, rows in zip(names, busy_seconds, scored, strict=True)
    }


def _add_models(into: dict[str, list[float]], models: dict[str, list[float]]) -> None:
    for name, (rows, busy) in models.items():
        acc = into.setdefault(name, [0, 0.0])
        acc[0], acc[1] = acc[0] + rows, acc[1] + busy


def _score_columns(table: pa.Table) -> list[str]:
    return [c for c in table.column_names if c == SCORE or c.startswith(f"{SCORE}_")]


def part_metrics(rows: pa.Table, seed: int = 0) -> dict[str, Any]:
    """The metrics record of one part: rows of one input file, as the scorer left them."""
    out: dict[str, Any] = {
        "t": time.time(),
        "replicas": {},
        "runs": {},
        "tokens": {},
        "scores": {},
    }
    if STORE_RETRIES in rows.column_names:
        out["store_retries"] = int(pc.sum(rows.column(STORE_RETRIES)).as_py() or 0)
    if REPLICA not in rows.column_names:
        return out
    scored = rows.filter(pc.is_null(rows.column(ERROR)))
    # the replicas' work and the token lengths: rows the model scored, not those whose scores
    # output.incremental copied from an earlier run (the score statistics: every row's)
    ran = scored
    if REUSED in scored.column_names:
        ran = scored.filter(pc.invert(scored.column(REUSED)))
    # one set of metric columns per pool of replicas the rows went through (model_pools
    # per_model: the earlier pools' named <column>#<pool>)
    pools = [""] + [c[len(REPLICA) :] for c in ran.column_names if c.startswith(f"{REPLICA}#")]
    for pool in pools:
        replicas = ran.column(REPLICA + pool).combine_chunks().dictionary_decode().to_numpy(False)
        busy = ran.column(BUSY + pool).to_numpy()
        counted = ran.column(TOKENS + pool).to_numpy()
        computed = ran.column(COMPUTED + pool).to_numpy()
        load = ran.column(LOAD + pool).to_numpy()  # metric_columns writes it beside REPLICA
        runs = ran.column(RUNS + pool).combine_chunks().dictionary_decode().to_numpy(False)
        oom = ran.column(OOM + pool).to_numpy()
        for name in np.unique(replicas):
            sel = replicas == name
            out["runs"][str(name)] = str(runs[np.argmax(sel)])
            out["replicas"][str(name)] = [
                int(sel.sum()),
                float(busy[sel].sum()),
                int(counted[sel].sum()),
                float(computed[sel].sum()),
                float(load[sel].sum()),
                int(oom[sel].sum()),
            ]
    tokens = ran.column(TOKENS).to_numpy()
    models = [c for c in ran.column_names if c.startswith(MODEL_BUSY)]
    if models:
        out["models"] = {
            c[len(MODEL_BUSY) :]: [
                int(pc.sum(pc.greater(ran.column(c), 0.0)).as_py() or 0),
                float(pc.sum(ran.column(c)).as_py() or 0.0),
            ]
            for c in models
        }
    lengths, counts = np.unique(tokens, return_counts=True)
    out["tokens"] = {str(int(k)): int(v) for k, v in zip(lengths, counts, strict=True)}
    if TRUNCATED in scored.column_names:
        out["truncated"] = int(pc.sum(scored.column(TRUNCATED)).as_py() or 0)
    rng = np.random.default_rng(seed)
    for col in _score_columns(scored):
        values = scored.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
        if len(values) == 0:
            continue
        sample = values if len(values) <= SAMPLE else rng.choice(values, SAMPLE, replace=False)
        out["scores"][col] = {
            "n": len(values),
            "sum": float(values.sum()),
            "min": float(values.min()),
            "max": float(values.max()),
            "sample": [float(f"{v:.7g}") for v in sample],  # float32 precision
        }
    if LABEL in scored.column_names:
        labels = scored.column(LABEL).to_pylist()
        out["labels"] = {str(k): v for k, v in Counter(labels).items()}
    return out


def merge_part_metrics(records: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """One metrics record from several of :func:`part_metrics` (the blocks of one part): counts
    and sums added, score samples merged into one of at most ``SAMPLE`` values, each drawn with
    the weight of the rows it stands for."""
    if len(records) == 1:
        return records[0]
    out: dict[str, Any] = {"replicas": {}, "runs": {}, "tokens": Counter(), "scores": {}}
    labels: Counter[str] = Counter()
    truncated, has_truncated = 0, False
    rng = np.random.default_rng(seed)
    samples: dict[str, list[tuple[list[float], float]]] = {}
    for record in records:
        for name, values in record.get("replicas", {}).items():
            acc = out["replicas"].setdefault(name, [0, 0.0, 0, 0.0, 0.0, 0])
            for i, v in enumerate(values):
                acc[i] += v
        out["runs"].update(record.get("runs", {}))
        if record.get("models"):
            _add_models(out.setdefault("models", {}), record["models"])
        out["tokens"].update({k: v for k, v in record.get("tokens", {}).items()})
        if "truncated" in record:
            truncated, has_truncated = truncated + record["truncated"], True
        if record.get("store_retries"):
            out["store_retries"] = out.get("store_retries", 0) + record["store_retries"]
        labels.update(record.get("labels", {}))
        for col, part in record.get("scores", {}).items():
            acc = out["scores"].setdefault(
                col, {"n": 0, "sum": 0.0, "min": float("inf"), "max": float("-inf")}
            )
            acc["n"] += part["n"]
            acc["sum"] += part["sum"]
            acc["min"], acc["max"] = min(acc["min"], part["min"]), max(acc["max"], part["max"])
            samples.setdefault(col, []).append((part["sample"], part["n"] / len(part["sample"])))
    for col, pieces in samples.items():
        values = np.concatenate([np.asarray(s, dtype=np.float64) for s, _ in pieces])
        weights = np.concatenate([np.full(len(s), w) for s, w in pieces])
        if len(values) > SAMPLE:
            values = rng.choice(values, SAMPLE, replace=False, p=weights / weights.sum())
        out["scores"][col]["sample"] = [float(v) for v in values]
    out["tokens"] = dict(out["tokens"])
    if has_truncated:
        out["truncated"] = truncated
    if labels:
        out["labels"] = dict(labels)
    return out


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, q: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order]
    cum = np.cumsum(weights) - weights / 2
    return np.interp(q * weights.sum(), cum, values)


class _ScoreStats:
    """Exact count/sum/min/max of one score column, and a bounded weighted sample of it."""

    def __init__(self) -> None:
        self.n, self.total, self.lo, self.hi = 0, 0.0, float("inf"), float("-inf")
        self.values: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.kept = 0

    def add(self, part: dict[str, Any], rng: np.random.Generator) -> None:
        self.n += part["n"]
        self.total += part["sum"]
        self.lo, self.hi = min(self.lo, part["min"]), max(self.hi, part["max"])
        sample = np.asarray(part["sample"], dtype=np.float64)
        self.values.append(sample)
        self.weights.append(np.full(len(sample), part["n"] / max(len(sample), 1)))
        self.kept += len(sample)
        if self.kept > MERGED_SAMPLE:  # keep a random half, each standing for twice the rows
            values, weights = np.concatenate(self.values), np.concatenate(self.weights)
            keep = rng.random(len(values)) < 0.5
            self.values, self.weights = [values[keep]], [weights[keep] * 2]
            self.kept = int(keep.sum())

    def summary(self) -> dict[str, Any]:
        values, weights = np.concatenate(self.values), np.concatenate(self.weights)
        levels = np.concatenate([np.array(QUANTILES) / 100, np.linspace(0, 1, 101)])
        found = _weighted_quantiles(values, weights, levels)  # one sort for both sets
        named, percentiles = found[: len(QUANTILES)], found[len(QUANTILES) :]
        percentiles[0], percentiles[-1] = self.lo, self.hi
        hi = self.hi if self.hi > self.lo else self.lo + 1e-9
        counts, edges = np.histogram(  # clip: the samples are rounded to float32 precision
            np.clip(values, self.lo, hi), bins=HISTOGRAM_BINS, range=(self.lo, hi), weights=weights
        )
        return {
            "count": self.n,
            "mean": self.total / self.n,
            "min": self.lo,
            "max": self.hi,
            "quantiles": {f"p{q}": float(v) for q, v in zip(QUANTILES, named, strict=True)},
            "percentiles": [float(v) for v in percentiles],
            "histogram": {
                "edges": [float(e) for e in edges],
                "counts": [round(float(c), 1) for c in counts],
            },
        }


class RunMetrics:
    """Folds parts' metrics records into the run's totals as the parts arrive, in memory that
    does not grow with the number of rows: replicas, padding and throughput count this run's
    parts (``mine``), scores, labels and token lengths every part (taken-over ones too)."""

    def __init__(self, seed: int = 0) -> None:
        self.replicas: dict[str, list[float]] = {}
        self.runs: dict[str, str] = {}  # replica -> what it runs
        self.models: dict[str, list[float]] = {}  # several models: name -> [rows, busy seconds]
        # evaluate.within_files: the writers' moments of their files' queries, and where those
        # files' per-query metrics are (crossenc.evaluation.streamed)
        self.evaluation: dict[str, Any] | None = None
        self.per_query_files: list[str] = []
        # task mine: what choosing the negatives found, and the files of mined rows
        self.mining: dict[str, Any] | None = None
        self.mined_files: list[str] = []
        self.tokens: Counter[int] = Counter()
        self.labels: Counter[str] = Counter()
        self.truncated = 0
        self.store_retries = 0  # object-store requests retried by this run's workers
        self.scores: dict[str, _ScoreStats] = {}
        self.timeline: list[tuple[float, int]] = []
        self._rng = np.random.default_rng(seed)

    def add(self, record: dict[str, Any], rows: int, mine: bool) -> None:
        """Fold in one part's metrics record; ``rows``: the input rows the part accounts for."""
        if mine:
            for name, values in record.get("replicas", {}).items():
                acc = self.replicas.setdefault(name, [0, 0.0, 0, 0.0, 0.0, 0])
                for i, v in enumerate(values):
                    acc[i] += v
            self.runs.update(record.get("runs", {}))
            _add_models(self.models, record.get("models", {}))
            self.store_retries += record.get("store_retries", 0)
            if "t" in record:
                self.timeline.append((record["t"], rows))
        self.tokens.update({int(k): v for k, v in record.get("tokens", {}).items()})
        self.labels.update(record.get("labels", {}))
        if record.get("evaluation"):  # every part's, taken-over ones too: each query once
            self.evaluation = add_moments(self.evaluation, record["evaluation"])
            self.per_query_files.append(record["evaluation"]["per_query"])
        if record.get("mining"):  # every part's, taken-over ones too: each query once
            found = dict(record["mining"])
            self.mined_files.append(found.pop("file"))
            self.mining = add_counts(self.mining, found)
        self.truncated += record.get("truncated", 0)
        for col, part in record.get("scores", {}).items():
            self.scores.setdefault(col, _ScoreStats()).add(part, self._rng)

    def progress(self, t: float, rows: int) -> None:
        """Record ``rows`` of this run handed to the writers at time ``t`` (the timeline)."""
        self.timeline.append((t, rows))

    def token_histogram(self) -> dict[str, list[float]]:
        """Token lengths in at most ~40 equal bins."""
        if not self.tokens:
            return {"edges": [], "counts": []}
        longest = max(self.tokens)
        width = max(1, int(np.ceil((longest + 1) / 40)))
        edges = np.arange(0, longest + width + 1, width)
        hist = np.zeros(len(edges) - 1)
        for length, n in self.tokens.items():
            hist[min(length // width, len(hist) - 1)] += n
        return {"edges": [float(e) for e in edges], "counts": [float(c) for c in hist]}

    def throughput(self, started: float) -> list[dict[str, float]]:
        """Cumulative rows over seconds since the start, at most ``TIMELINE_POINTS`` points."""
        points, total = [], 0
        for t, rows in sorted(self.timeline):
            total += rows
            points.append({"t": round(t - started, 3), "rows": total})
        if len(points) > TIMELINE_POINTS:
            idx = np.linspace(0, len(points) - 1, TIMELINE_POINTS).round().astype(int)
            points = [points[i] for i in idx]
        return points
