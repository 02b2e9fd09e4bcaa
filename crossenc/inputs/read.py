"""Read stage: Parquet row groups to Ray blocks, each row tagged with its file and position.

Reading by row group (rather than with ``ray.data.read_parquet``) gives every row a stable
identity, ``(file, row)``, which is what lets a resumed run score exactly the rows an
interrupted run did not write, with bookkeeping per row range, not per row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crossenc.config import InputConfig, JobConfig
from crossenc.inputs.plan import InputError, InputFile, schema_problem
from crossenc.inputs.reuse import PAIR_HASH, Reuse, load_reuse, pair_hashes, reuse_for, with_reuse
from crossenc.metrics import STORE_RETRIES
from crossenc.models.describe import ModelInfo
from crossenc.models.several import ModelSet, lone, tokenize_models
from crossenc.models.tokenize import ROW, SOURCE
from crossenc.storage import resolve, retried_requests
from crossenc.tasks.base import score_names

UNIT_SCHEMA = ("file", "row_group", "offset", "start", "end")


def read_units(
    files: list[InputFile] | tuple[InputFile, ...], todo: dict[str, list[list[int]]] | None = None
) -> list[dict[str, object]]:
    """One work unit per row group with rows to read: its file, index, first row's position
    and the [start, end) positions to read in it (all of it, or what ``todo`` asks of that
    file; a file absent from ``todo`` is read whole when ``todo`` is None, else skipped)."""
    units = []
    for f in files:
        wanted = [[0, f.rows]] if todo is None else todo.get(f.path, [])
        offset = 0
        for index, rows in enumerate(f.row_groups):
            for start, end in wanted:
                lo, hi = max(start, offset), min(end, offset + rows)
                if lo < hi:
                    units.append(
                        {
                            "file": f.path,
                            "row_group": index,
                            "offset": offset,
                            "start": lo,
                            "end": hi,
                        }
                    )
            offset += rows
    return units


def pending_units(paths: list[str]) -> list[dict[str, object]]:
    """Units for files whose footers were not read before the start: the whole file, its
    footer checked by the read task (row group -1, end -1: to the file's end)."""
    return [{"file": p, "row_group": -1, "offset": 0, "start": 0, "end": -1} for p in paths]


def read_row_groups(
    units: pa.Table,
    storage: InputConfig,
    columns: list[str],
    block_rows: int,
    cfg: JobConfig | None = None,
    reference: dict[str, Any] | None = None,
) -> Iterator[pa.Table]:
    """Read the given row groups' needed columns in slices of at most block_rows rows, adding
    the source file and row position; a large row group never becomes one large block. A
    whole-file unit (row group -1) first checks the file's schema: a bad file raises
    InputError naming it (``input.on_bad_file: fail``) or is left unread (``skip``: the
    driver lists it from its own reading of the footer)."""
    loc = resolve(storage.path, storage.storage)
    retried = retried_requests()
    for unit in units.to_pylist():
        try:
            parquet = pq.ParquetFile(unit["file"], filesystem=loc.arrow_fs)
        except (pa.ArrowInvalid, OSError) as err:
            if unit["row_group"] != -1 or cfg is None or cfg.input.on_bad_file == "fail":
                raise InputError(f"{unit['file']}: not a readable Parquet file ({err})") from None
            continue
        offset, start, end = unit["offset"], unit["start"], unit["end"]
        groups = [unit["row_group"]]
        if unit["row_group"] == -1:
            assert cfg is not None, "whole-file units need the job config"
            problem = schema_problem(parquet.schema_arrow, cfg, reference)
            if problem:
                if cfg.input.on_bad_file == "fail":
                    raise InputError(f"{unit['file']}: {problem}")
                continue
            groups, end = list(range(parquet.num_row_groups)), parquet.metadata.num_rows
        position = offset
        for batch in parquet.iter_batches(
            batch_size=block_rows, row_groups=groups, columns=columns
        ):
            lo, hi = max(start, position), min(end, position + batch.num_rows)
            if lo < hi:
                table = pa.Table.from_batches([batch.slice(lo - position, hi - lo)])
                n = table.num_rows
                table = table.append_column(SOURCE, pa.array([unit["file"]] * n, pa.string()))
                table = table.append_column(ROW, pa.array(np.arange(lo, hi), pa.int64()))
                now = retried_requests()  # this read's retries ride on its first row
                table = table.append_column(
                    STORE_RETRIES, pa.array(np.r_[now - retried, np.zeros(n - 1)], pa.int32())
                )
                retried = now
                yield table
            position += batch.num_rows
            if position >= end:
                break


def read_tokenized(
    units: pa.Table,
    storage: InputConfig,
    columns: list[str],
    block_rows: int,
    cfg: JobConfig,
    info: ModelInfo,
    encoder: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
    models: ModelSet | None = None,
) -> Iterator[pa.Table]:
    """The job's read-and-tokenize task: :func:`read_row_groups`, each slice tokenized where it
    was read (:func:`crossenc.models.tokenize.tokenize_batch`), so the texts never travel
    through the object store and one kind of task, one worker per CPU Ray gives them, does both.

    The Rust tokenizer runs on this task's thread alone: Ray runs as many of these tasks as
    there are CPUs for them, and processes scale where the tokenizer's own threads do not (on
    2 cores, two processes tokenized 1.2x the pairs/s of one process on two threads)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # this worker process's tokenizer calls
    models = models or lone(cfg, info, encoder)  # ``models``: several, a tokenizer's ids each
    for i in range(units.num_rows):
        unit = units.slice(i, 1)
        if not cfg.output.incremental:
            for table in read_row_groups(unit, storage, columns, block_rows, cfg, reference):
                yield tokenize_models(table, models)
            continue
        given = unit.column("reuse")[0].as_py() if "reuse" in unit.column_names else None
        paths = json.loads(given or "{}")  # model -> its matches in this file
        reuses = {name: load_reuse(path, cfg.output) for name, path in paths.items() if path}
        for table in read_row_groups(unit, storage, columns, block_rows, cfg, reference):
            yield reuse_block(table, cfg, models, reuses)


def reuse_block(
    table: pa.Table, cfg: JobConfig, models: ModelSet, reuses: dict[str, Reuse]
) -> pa.Table:
    """output.incremental's read slice: hashed (the ``pair_hash`` column), tokenized but for
    the rows every model's matches in ``reuses`` (by short name, a lone model's under "") hold,
    each model's matched rows carrying its scores (several models: its own columns,
    :func:`crossenc.inputs.reuse.model_column`; ``_reused``: every model's)."""
    hashes = pair_hashes(table.column(cfg.input.text_a), table.column(cfg.input.text_b))
    positions = table.column(ROW).to_numpy()
    found = []
    for member in models.members:
        reuse = reuses.get(member.name) or Reuse.empty(len(score_names(member.info)))
        found.append((member.name, reuse, *reuse_for(reuse, positions)))
    every = np.logical_and.reduce([hit for _, _, hit, _ in found])
    out = tokenize_models(table, models, skip=every).append_column(PAIR_HASH, hashes)
    _, reuse, _, index = found[0]
    out = with_reuse(out, every, index, reuse)  # truncated and windows: the first model's
    if len(found) > 1:
        for name, reuse, hit, index in found:
            out = with_reuse(out, hit, index, reuse, name)
    return out
