"""A seeded sample of the job's own pairs, read in the driver: what the quality gate compares
and what an int8 model calibrates on (:mod:`crossenc.job.gate`).

Row groups of the inspected input files are read in a seeded order (the two text columns) until
they hold the sample's size, and the sample is a seeded choice of their rows: a few row groups,
whatever the input's size. A rerank's sample is of whole groups: where groups sit within files,
the group column of a few files in a seeded order; where they span files, of every file. Then
the texts of the chosen groups' rows only.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crossenc.config import JobConfig
from crossenc.errors import storage_errors
from crossenc.inputs.plan import InputFile
from crossenc.storage import resolve

IO_THREADS = 16  # input files read at a time for a sample (store latency, not CPU)


@dataclass(frozen=True)
class PairSample:
    """Sampled (text_a, text_b) pairs; for a rerank, each pair's group as an integer id."""

    pairs: list[tuple[str, str]]
    groups: np.ndarray | None = None


def _read_units(
    cfg: JobConfig, files: Sequence[InputFile], size: int, seed: int, columns: list[str]
) -> pa.Table:
    """Row groups of ``files`` in a seeded order, read until they hold ``size`` rows."""
    units = [
        (f.path, group)
        for f in files
        for group, rows in enumerate(f.row_groups or (f.rows,))
        if rows
    ]
    order = np.random.default_rng(seed).permutation(len(units))
    loc = resolve(cfg.input.path, cfg.input.storage)
    tables, rows = [], 0
    for i in order:
        path, group = units[i]
        with storage_errors("input", path, cfg.input.storage):
            table = pq.ParquetFile(path, filesystem=loc.arrow_fs).read_row_group(
                group, columns=columns
            )
        tables.append(table)
        rows += table.num_rows
        if rows >= size:
            break
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return pa.concat_tables(tables, promote_options="permissive")


def read_pairs_at(cfg: JobConfig, source: str, rows: np.ndarray) -> list[tuple[str, str]]:
    """The (text_a, text_b) pairs at sorted row positions ``rows`` of one input file (only
    the row groups holding them are read)."""
    a, b = cfg.input.text_a, cfg.input.text_b
    loc = resolve(cfg.input.path, cfg.input.storage)
    with storage_errors("input", source, cfg.input.storage):
        parquet = pq.ParquetFile(source, filesystem=loc.arrow_fs)
        meta = parquet.metadata
        sizes = np.array([meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        starts = np.r_[0, np.cumsum(sizes)]
        group_of = np.searchsorted(starts, rows, side="right") - 1
        groups = np.unique(group_of)
        table = parquet.read_row_groups([int(g) for g in groups], columns=[a, b])
    at = np.r_[0, np.cumsum(sizes[groups])][np.searchsorted(groups, group_of)]
    table = table.take(at + rows - starts[group_of])
    return list(zip(table.column(a).to_pylist(), table.column(b).to_pylist(), strict=True))


def _groups(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Each row's group as an integer code (equal keys, equal codes; -1 for a null key), and
    each code's row count."""
    encoded = pc.dictionary_encode(column)
    chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
    if not chunks:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    indices = pa.chunked_array([c.indices for c in chunks]).combine_chunks()
    codes = np.asarray(indices.fill_null(-1), dtype=np.int64)
    return codes, np.bincount(codes[codes >= 0])


def _choose(
    counts: np.ndarray, rng: np.random.Generator, size: int, total: int
) -> tuple[list[int], bool]:
    """Groups (indices into ``counts``) in a seeded order, taken while they fit in ``size``
    pairs with the ``total`` sampled so far (the first group always: a sample holds at least
    one); and whether the sample is full (the next group would overflow it)."""
    chosen: list[int] = []
    for g in rng.permutation(len(counts)):
        if total and total + counts[g] > size:
            return chosen, True
        chosen.append(int(g))
        total += int(counts[g])
    return chosen, total >= size


def _read_group_column(cfg: JobConfig, path: str) -> pa.ChunkedArray:
    loc = resolve(cfg.input.path, cfg.input.storage)
    column = cfg.rerank.group_by
    with storage_errors("input", path, cfg.input.storage):
        table = pq.read_table(path, columns=[column], filesystem=loc.arrow_fs)
    return table.column(column)


def _sample_groups(
    cfg: JobConfig, files: Sequence[InputFile], size: int, seed: int, within_files: bool
) -> PairSample:
    """Whole rerank groups, seeded, until the next would overflow ``size`` pairs (at least
    one group).

    Groups within files: files in a seeded order, each one's group column read until the
    chosen groups hold ``size`` pairs (a file or two, whatever the input's size). Groups that
    span files: every file's group column is read (in parallel), as the shuffle the run does
    anyway. Then only the chosen rows' texts are read."""
    rng = np.random.default_rng(seed)
    live = [f for f in files if f.rows]
    picks: list[tuple[int, np.ndarray, np.ndarray]] = []  # (file, its rows, their group ids)
    if within_files:
        total, groups, full = 0, 0, False
        for i in rng.permutation(len(live)):
            if full:
                break
            codes, counts = _groups(_read_group_column(cfg, live[i].path))
            chosen, full = _choose(counts, rng, size, total)
            if not chosen:
                continue
            rows = np.flatnonzero(np.isin(codes, chosen))
            ids = np.searchsorted(np.sort(chosen), codes[rows]) + groups
            picks.append((int(i), rows, ids))
            total += int(counts[chosen].sum())
            groups += len(chosen)
    else:
        with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="sample") as pool:
            columns = list(pool.map(lambda f: _read_group_column(cfg, f.path), live))
        if not columns:
            return PairSample([], np.zeros(0, dtype=np.int64))
        kind = columns[0].type
        codes, counts = _groups(
            pa.chunked_array([chunk for c in columns for chunk in c.cast(kind).chunks], kind)
        )
        chosen = np.isin(codes, _choose(counts, rng, size, 0)[0])
        start = 0
        for i, column in enumerate(columns):
            mine = np.flatnonzero(chosen[start : start + len(column)])
            if len(mine):
                picks.append((i, mine, codes[start + mine]))
            start += len(column)
    if not picks:
        return PairSample([], np.zeros(0, dtype=np.int64))
    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="sample") as pool:
        texts = pool.map(lambda pick: read_pairs_at(cfg, live[pick[0]].path, pick[1]), picks)
        pairs = [pair for file_pairs in texts for pair in file_pairs]
    return PairSample(pairs, np.concatenate([ids for _, _, ids in picks]))


def sample_pairs(
    cfg: JobConfig,
    files: Sequence[InputFile],
    size: int,
    seed: int = 0,
    within_files: bool = False,
) -> PairSample:
    """Up to ``size`` pairs of the input, seeded, pairs with a null text left out: rows of a
    few row groups, or for task rerank whole groups (at least one, however large), read from
    a few files when ``within_files`` (no group spans two files: the plan's
    ``rerank_within_files``)."""
    if cfg.task == "rerank":
        sample = _sample_groups(cfg, files, size, seed, within_files)
    else:
        a, b = cfg.input.text_a, cfg.input.text_b
        table = _read_units(cfg, files, size, seed, [a, b])
        take = np.random.default_rng(seed + 1).choice(
            table.num_rows, min(size, table.num_rows), replace=False
        )
        table = table.take(pa.array(np.sort(take), pa.int64()))
        pairs = zip(table.column(a).to_pylist(), table.column(b).to_pylist(), strict=True)
        sample = PairSample(list(pairs))
    # a null text is dead-lettered by the run, never scored
    keep = np.array([x is not None and y is not None for x, y in sample.pairs], dtype=bool)
    if keep.all():
        return sample
    groups = None if sample.groups is None else sample.groups[keep]
    return PairSample([p for p, k in zip(sample.pairs, keep, strict=True) if k], groups)
