"""task: rerank. Each pair's score and its rank within its ``rerank.group_by`` group (1 = best),
rows past ``rerank.top_k`` kept out of the output. Several models (``models:``): each model's
rank of its own scores (``rank_<name>`` beside ``score_<name>``), and a row is kept while any
model puts it in its top k."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crossenc.models.several import named
from crossenc.models.tokenize import ERROR
from crossenc.tasks.base import DROPPED, RANK, SCORE, Task


class RerankTask(Task):
    """A score and a rank within the group per pair (per model, with several)."""

    name = "rerank"
    added = (RANK,)

    @property
    def group_by(self) -> str | None:
        """rerank.group_by: the query id, or whatever column groups the candidates."""
        return self.cfg.rerank.group_by

    def post_group(self, group: pa.Table) -> pa.Table:
        """Rank one group's scored rows (see :func:`rank_within`)."""
        names = tuple(name for name, _ in self.cfg.model_views())
        return rank_within(group, self.cfg.rerank.group_by, self.cfg.rerank.top_k, names)


def rank_within(
    table: pa.Table, group_by: str, top_k: int | None, models: tuple[str, ...] = ("",)
) -> pa.Table:
    """The rank of each scored row within its ``group_by`` group (1 = best score; a null key
    is a group of its own; ties keep the rows' order), for a whole table at once (vectorised):
    the column ``rank``, or with several ``models`` (short names) ``rank_<name>`` of each
    model's ``score_<name>``. Rows past top_k in every model's ranking are marked dropped;
    unscorable rows (with an error) keep a null rank and pass through to the dead letters."""
    n = table.num_rows
    keys = table.column(group_by).combine_chunks()
    codes = pc.dictionary_encode(keys, null_encoding="encode").indices.to_numpy(
        zero_copy_only=False
    )
    ok = pc.is_null(table.column(ERROR)).to_numpy(zero_copy_only=False)
    idx = np.flatnonzero(ok)
    kept = np.zeros(n, dtype=bool)
    for model in models:
        scores = table.column(named(SCORE, model)).to_numpy(zero_copy_only=False)
        order = idx[np.lexsort((-scores[idx], codes[idx]))]  # by group, best first (stable)
        sorted_codes = codes[order]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        sizes = np.diff(np.r_[starts, len(order)])
        rank = np.zeros(n, dtype=np.int64)
        rank[order] = np.arange(len(order)) - np.repeat(starts, sizes) + 1
        kept |= rank <= top_k if top_k is not None else ok
        table = table.append_column(named(RANK, model), pa.array(rank, mask=~ok))
    return table.append_column(DROPPED, pa.array(ok & ~kept))
