"""Post-processing: scores to output columns (score, score_<label>, label, rank)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crossenc.config import JobConfig
from crossenc.models.load import ModelInfo
from crossenc.models.tokenize import ERROR

SCORE = "score"
LABEL = "label"
RANK = "rank"
DROPPED = "_dropped"


def score_names(info: ModelInfo) -> list[str]:
    """Names of the score columns: ``score``, or ``score_<label>`` per output."""
    return [SCORE] if info.num_labels == 1 else [f"{SCORE}_{name}" for name in info.labels]


def output_columns(cfg: JobConfig, info: ModelInfo) -> list[str]:
    """The columns a task adds to every output row, in order (before ``truncated``)."""
    extra = {"classify": [LABEL], "rerank": [RANK]}.get(cfg.task, [])
    return score_names(info) + extra


def score_columns(
    scores: np.ndarray, valid: np.ndarray, cfg: JobConfig, info: ModelInfo
) -> dict[str, pa.Array]:
    """The task's output columns for a block; rows not ``valid`` get nulls."""
    mask = ~valid
    if info.num_labels == 1:
        cols = {SCORE: pa.array(scores[:, 0], mask=mask)}
        if cfg.task == "classify":
            cols[LABEL] = pa.array(scores[:, 0] >= cfg.classify.threshold, mask=mask)
        return cols
    cols = {name: pa.array(scores[:, i], mask=mask) for i, name in enumerate(score_names(info))}
    names = np.asarray(info.labels, dtype=object)[np.argmax(scores, axis=1)]
    cols[LABEL] = pa.array(names, type=pa.string(), mask=mask)
    return cols


def rank_group(group: pa.Table, top_k: int | None) -> pa.Table:
    """Rank one group's scored rows (1 = best score); rows beyond top_k are marked dropped.

    Unscorable rows (with an error) keep a null rank and pass through to the dead letters.
    """
    n = group.num_rows
    scores = group.column(SCORE).to_numpy(zero_copy_only=False)
    ok = pc.is_null(group.column(ERROR)).to_numpy(zero_copy_only=False)
    rank = np.zeros(n, dtype=np.int64)
    ok_idx = np.flatnonzero(ok)
    order = ok_idx[np.argsort(-scores[ok_idx], kind="stable")]
    rank[order] = np.arange(1, len(order) + 1)
    dropped = ok & (rank > top_k) if top_k is not None else np.zeros(n, dtype=bool)
    group = group.append_column(RANK, pa.array(rank, mask=~ok))
    return group.append_column(DROPPED, pa.array(dropped))


def rank_within(table: pa.Table, group_by: str, top_k: int | None) -> pa.Table:
    """:func:`rank_group` for every group of a table at once (vectorised): the rank of each
    scored row within its ``group_by`` group (a null key is a group of its own), and rows past
    top_k marked dropped."""
    n = table.num_rows
    keys = table.column(group_by).combine_chunks()
    codes = pc.dictionary_encode(keys, null_encoding="encode").indices.to_numpy(
        zero_copy_only=False
    )
    scores = table.column(SCORE).to_numpy(zero_copy_only=False)
    ok = pc.is_null(table.column(ERROR)).to_numpy(zero_copy_only=False)
    idx = np.flatnonzero(ok)
    order = idx[np.lexsort((-scores[idx], codes[idx]))]  # by group, best score first (stable)
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    rank = np.zeros(n, dtype=np.int64)
    rank[order] = np.arange(len(order)) - np.repeat(starts, sizes) + 1
    dropped = ok & (rank > top_k) if top_k is not None else np.zeros(n, dtype=bool)
    table = table.append_column(RANK, pa.array(rank, mask=~ok))
    return table.append_column(DROPPED, pa.array(dropped))
