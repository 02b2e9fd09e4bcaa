"""A model against others evaluated on the same labelled log (``evaluate.compare_to``): their
runs' per-query metrics joined with this run's by query, and per metric the paired difference,
its 95% interval and its significance (:func:`~crossenc.evaluation.metrics.paired`)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from crossenc.config import ConfigError, StorageConfig
from crossenc.evaluation.metrics import paired
from crossenc.storage import resolve


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
    ``path`` (its evaluation section ``other``), over the queries both have."""
    loc = resolve(other["per_query"], storage)
    theirs = pq.read_table(loc.path, filesystem=loc.arrow_fs)
    missing = [m for m in [key, *metrics] if m not in theirs.column_names]
    if missing:
        raise ConfigError(
            f"evaluate.compare_to {path}: its per-query metrics lack {missing} (another "
            "evaluate.group_by or at_k?)"
        )
    theirs = theirs.select([key, *metrics]).rename_columns([key, *(f"{m}__b" for m in metrics)])
    joined = per_query.select([key, *metrics]).join(theirs, key, join_type="inner")
    out: dict[str, Any] = {
        "compare_to": path,
        "model": other.get("model"),
        "queries_compared": joined.num_rows,
        "queries_only_here": per_query.num_rows - joined.num_rows,
        "queries_only_there": theirs.num_rows - joined.num_rows,
        "leaderboard": (other.get("leaderboard") or [None])[0],  # their row, as they measured it
        "ci95": other.get("ci95") or {},
        "differences": {},
    }
    for name in metrics:
        here = joined.column(name).to_numpy()
        there = joined.column(f"{name}__b").to_numpy()
        out["differences"][name] = paired(here, there, resamples, seed)
    return out
