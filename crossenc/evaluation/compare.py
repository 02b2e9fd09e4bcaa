"""A model against others evaluated on the same labelled log (``evaluate.compare_to``): their
runs' per-query metrics joined with this run's by query, and per metric the paired difference,
its 95% interval and its significance (:func:`~crossenc.evaluation.metrics.paired`)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crossenc.config import ConfigError, StorageConfig
from crossenc.evaluation.metrics import paired
from crossenc.storage import resolve


def paired_by_query(
    here: pa.Table, there: pa.Table, key: str, metrics: list[str], resamples: int, seed: int
) -> dict[str, Any]:
    """Two models' per-query ``metrics`` (queries in ``key``) over the queries both have: the
    counts, and per metric ``here`` minus ``there`` with its interval and significance."""
    theirs = there.select([key, *metrics]).rename_columns([key, *(f"{m}__b" for m in metrics)])
    joined = here.select([key, *metrics]).join(theirs, key, join_type="inner")
    out: dict[str, Any] = {
        "queries_compared": joined.num_rows,
        "queries_only_here": here.num_rows - joined.num_rows,
        "queries_only_there": there.num_rows - joined.num_rows,
        "differences": {},
    }
    for name in metrics:
        a = joined.column(name).to_numpy()
        b = joined.column(f"{name}__b").to_numpy()
        out["differences"][name] = paired(a, b, resamples, seed)
    return out


def compare(
    per_query: pa.Table,
    key: str,
    metrics: list[str],
    other: dict[str, Any],
    path: str,
    storage: StorageConfig,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """This run's per-query ``metrics`` (``per_query``, queries in ``key``) against the run at
    ``path`` (its evaluation section ``other``; a run of several models: its first), over the
    queries both have."""
    loc = resolve(other["per_query"], storage)
    theirs = pq.read_table(loc.path, filesystem=loc.arrow_fs)
    missing = [m for m in [key, *metrics] if m not in theirs.column_names]
    if missing:
        raise ConfigError(
            f"evaluate.compare_to {path}: its per-query metrics lack {missing} (another "
            "evaluate.group_by or at_k?)"
        )
    if "model" in theirs.column_names and other.get("models"):  # several: their baseline's
        theirs = theirs.filter(pc.equal(theirs.column("model"), other["models"][0]["name"]))
    return {
        "compare_to": path,
        "model": other.get("model"),
        "leaderboard": (other.get("leaderboard") or [None])[0],  # their row, as they measured it
        "ci95": other.get("ci95") or {},
        **paired_by_query(per_query, theirs, key, metrics, resamples, seed),
    }
