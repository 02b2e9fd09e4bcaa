"""output.incremental, the read tasks' side: each row's pair hash, and the scores an earlier run
gave the rows a match found (see :mod:`crossenc.job.incremental` for the match itself).

A read task takes each row group's matches from its input file's match file
(:func:`load_reuse`, :func:`reuse_for`); a matched row is not tokenized or scored, its scores
are copied in the scorer stage (:func:`reused_scores`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crossenc.config import OutputConfig
from crossenc.metrics import REUSED
from crossenc.models.tokenize import ROW, TRUNCATED, WINDOWS
from crossenc.storage import resolve

PAIR_HASH = "pair_hash"  # an output column: BLAKE2b-128 of the two texts


REUSE_SCORES = "_reuse_scores"  # internal: those scores (a fixed-size list per row)


def model_column(column: str, name: str) -> str:
    """Several models: a model's own reuse column (``_reused@<name>``, ``_reuse_scores@<name>``);
    unchanged for a lone model (name "")."""
    return f"{column}@{name}" if name else column


ORDER = "_order"  # a match's earlier run (its index in EarlierRuns.runs)


def pair_hashes(
    texts_a: pa.Array | pa.ChunkedArray, texts_b: pa.Array | pa.ChunkedArray
) -> pa.Array:
    """Per row, BLAKE2b-128 of the two texts, length-prefixed (16 bytes); null where either
    text is null or not a string (such a row is a dead letter, never reused)."""
    out: list[bytes | None] = []
    blake2b = hashlib.blake2b
    for a, b in zip(texts_a.to_pylist(), texts_b.to_pylist(), strict=True):
        if not isinstance(a, str) or not isinstance(b, str):
            out.append(None)
            continue
        ab, bb = a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
        digest = blake2b(len(ab).to_bytes(8, "little"), digest_size=16)
        digest.update(ab)
        digest.update(len(bb).to_bytes(8, "little"))
        digest.update(bb)
        out.append(digest.digest())
    return pa.array(out, pa.binary())


@dataclass
class Reuse:
    """An input file's matches: sorted row positions and, per row, what it reuses."""

    rows: np.ndarray
    scores: np.ndarray  # (rows, outputs) float32
    truncated: np.ndarray
    windows: np.ndarray | None
    orders: np.ndarray | None = None  # each row's earlier run (EarlierRuns.runs' index)

    @classmethod
    def empty(cls, width: int) -> Reuse:
        """No matches (an input file no earlier run scored a row of)."""
        return cls(np.zeros(0, np.int64), np.zeros((0, width), np.float32), np.zeros(0, bool), None)


_LOADED: OrderedDict[str, Reuse] = OrderedDict()  # a read task's row groups of one file


_LOADED_FILES = 4  # read its matches once


def load_reuse(path: str, out: OutputConfig) -> Reuse:
    """An input file's matches, at ``path`` on the output's store (the last few files read
    are kept in this process)."""
    if path in _LOADED:
        _LOADED.move_to_end(path)
        return _LOADED[path]
    reuse = _read_reuse(path, out)
    _LOADED[path] = reuse
    while len(_LOADED) > _LOADED_FILES:
        _LOADED.popitem(last=False)
    return reuse


def _read_reuse(path: str, out: OutputConfig) -> Reuse:
    from crossenc.errors import storage_errors

    loc = resolve(out.path, out.storage)
    with storage_errors("output", out.path, out.storage):
        table = pq.read_table(path, filesystem=loc.arrow_fs)
    scores = table.column(REUSE_SCORES).combine_chunks()
    width = scores.type.list_size
    return Reuse(
        rows=table.column(ROW).to_numpy(),
        scores=scores.values.to_numpy(zero_copy_only=False).reshape(-1, width),
        truncated=table.column(TRUNCATED).to_numpy(zero_copy_only=False).astype(bool),
        windows=(
            table.column(WINDOWS).to_numpy(zero_copy_only=False)
            if WINDOWS in table.column_names
            else None
        ),
        orders=(
            table.column(ORDER).to_numpy(zero_copy_only=False)
            if ORDER in table.column_names
            else None
        ),
    )


def reuse_for(reuse: Reuse, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows at ``positions`` of an input file with matches ``reuse``: which rows have a
    match, and the index of each one's match (-1: none)."""
    at = np.searchsorted(reuse.rows, positions)
    inside = at < len(reuse.rows)
    hit = np.zeros(len(positions), dtype=bool)
    hit[inside] = reuse.rows[at[inside]] == positions[inside]
    return hit, np.where(hit, at, -1)


def with_reuse(
    table: pa.Table, hit: np.ndarray, index: np.ndarray, reuse: Reuse, name: str = ""
) -> pa.Table:
    """A tokenized block with its matched rows' reused scores (``_reused``, ``_reuse_scores``;
    of model ``name``, several models: :func:`model_column`), ``truncated`` and windows in place
    of the ones tokenizing left them."""
    width = reuse.scores.shape[1]
    scores = np.zeros((table.num_rows, width), dtype=np.float32)
    scores[hit] = reuse.scores[index[hit]]
    table = table.append_column(model_column(REUSED, name), pa.array(hit))
    table = table.append_column(
        model_column(REUSE_SCORES, name),
        pa.FixedSizeListArray.from_arrays(pa.array(scores.ravel()), width),
    )
    if name:  # several models: a row's truncated flag is its tokenizing's (or the first's)
        return table
    truncated = table.column(TRUNCATED).to_numpy(zero_copy_only=False).copy()
    truncated[hit] = reuse.truncated[index[hit]]
    table = table.set_column(
        table.schema.get_field_index(TRUNCATED), TRUNCATED, pa.array(truncated)
    )
    if reuse.windows is not None and WINDOWS in table.column_names:
        windows = table.column(WINDOWS).to_numpy(zero_copy_only=False).copy()
        windows[hit] = reuse.windows[index[hit]]
        table = table.set_column(
            table.schema.get_field_index(WINDOWS), WINDOWS, pa.array(windows.astype(np.int32))
        )
    return table


def reused_scores(batch: pa.Table, name: str = "") -> tuple[np.ndarray, np.ndarray | None]:
    """A scorer's block: which rows reuse model ``name``'s scores (a lone model's: ""), and
    those scores (rows x outputs)."""
    if model_column(REUSED, name) not in batch.column_names:
        return np.zeros(batch.num_rows, dtype=bool), None
    hit = batch.column(model_column(REUSED, name)).to_numpy(zero_copy_only=False).astype(bool)
    column = batch.column(model_column(REUSE_SCORES, name)).combine_chunks()
    values = column.values.to_numpy(zero_copy_only=False)
    return hit, values.reshape(batch.num_rows, column.type.list_size)
