"""task: rerank. Each pair's score and its rank within its ``rerank.group_by`` group (1 = best),
rows past ``rerank.top_k`` kept out of the output."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crossenc.models.tokenize import ERROR
from crossenc.tasks.base import DROPPED, RANK, SCORE, Task


class RerankTask(Task):
    """A score and a rank within the group per pair."""

    name = "rerank"
    added = (RANK,)

    @property
    def group_by(self) -> str | None:
        """rerank.group_by: the query id, or whatever column groups the candidates."""
        return self.cfg.rerank.group_by

    def post_group(self, group: pa.Table) -> pa.Table:
        """Rank one group's scored rows (see :func:`rank_group`)."""
        return rank_group(group, self.cfg.rerank.top_k)


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
