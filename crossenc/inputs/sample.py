"""A seeded sample of the job's own pairs, read in the driver: what the quality gate compares
and what an int8 model calibrates on (:mod:`crossenc.job.gate`).

Row groups of the inspected input files are read in a seeded order (the two text columns) until
they hold the sample's size, and the sample is a seeded choice of their rows: a few row groups,
whatever the input's size. A rerank's sample is of whole groups, which may span files: the group
column of every inspected file is read, then the texts of the chosen groups' rows only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crossenc.config import JobConfig
from crossenc.errors import storage_errors
from crossenc.inputs.plan import InputFile
from crossenc.storage import resolve


@dataclass(frozen=True)
class PairSample:
    """Sampled (text_a, text_b) pairs; for a rerank, each pair's group (a group's pairs are
    consecutive)."""

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


def _sample_groups(cfg: JobConfig, files: Sequence[InputFile], size: int, seed: int) -> PairSample:
    """Whole rerank groups, seeded, up to ``size`` pairs (at least one group): the group
    column of every file is read (groups may span files), then the chosen rows' texts."""
    column = cfg.rerank.group_by
    loc = resolve(cfg.input.path, cfg.input.storage)
    keys, owner = [], []
    for i, f in enumerate(files):
        with storage_errors("input", f.path, cfg.input.storage):
            table = pq.read_table(f.path, columns=[column], filesystem=loc.arrow_fs)
        keys.append(np.asarray(table.column(column).to_pylist(), dtype=object).astype(str))
        owner.append(np.full(table.num_rows, i))
    if not keys:
        return PairSample([], np.zeros(0, dtype=np.int64))
    key, file_of = np.concatenate(keys), np.concatenate(owner)
    row_of = np.concatenate([np.arange(len(k)) for k in keys])
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    chosen, total = [], 0
    for g in np.random.default_rng(seed).permutation(len(counts)):
        if total >= size:
            break
        if chosen and total + counts[g] > size:
            continue
        chosen.append(g)
        total += int(counts[g])
    picked = np.flatnonzero(np.isin(inverse, chosen))
    pairs: list[tuple[str, str]] = []
    groups = []
    for i in np.unique(file_of[picked]):
        mine = picked[file_of[picked] == i]
        mine = mine[np.argsort(row_of[mine])]
        pairs += read_pairs_at(cfg, files[int(i)].path, row_of[mine])
        groups.append(inverse[mine])
    return PairSample(pairs, np.concatenate(groups))


def sample_pairs(
    cfg: JobConfig, files: Sequence[InputFile], size: int, seed: int = 0
) -> PairSample:
    """Up to ``size`` pairs of the input, seeded, pairs with a null text left out: rows of a
    few row groups, or for task rerank whole groups (at least one, however large)."""
    if cfg.task == "rerank":
        sample = _sample_groups(cfg, files, size, seed)
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
