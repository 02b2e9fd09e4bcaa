"""Rolling output files: scored blocks in, right-sized Parquet files out, each written once.

A :class:`RollingWriter` appends the scored blocks it is given to one open output file (and one
dead-letter file) and closes it when it holds ``output.files.max_rows`` rows, about
``max_mib`` MiB, or has been open ``max_seconds``: the last bound is what a killed run can lose
per writer. Files are written under their final, run-unique names (on local disk under a hidden
temporary name, renamed when complete; on S3 built in memory and uploaded whole at close), so a
commit moves nothing. Closing a file returns its :class:`PartStats`, one per input file in it.

A block's rows are identified by ``(input file, row position)``: a writer drops rows it has
already taken (a retried task sending the same block twice), so an output file never holds a
row twice. With ``rerank.within_files`` the writer holds each input file's rows until all of
them have arrived, ranks the groups inside it, then writes: a rerank with no shuffle.

In a job, writers are Ray actors (:data:`WriterActor`) owned by the driver, which asks each to
:meth:`~RollingWriter.flush` when the stream ends; :func:`write_block` is the pipeline stage that
hands each block to the writer of its input file.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from crossenc.config import OutputConfig
from crossenc.errors import storage_errors
from crossenc.evaluation.streamed import FOLDER as EVALUATION_FOLDER
from crossenc.evaluation.streamed import FileEvaluation, add, moments, per_query_of
from crossenc.metrics import (
    METRIC_COLUMNS,
    MODEL_BUSY,
    MODEL_ERRORS,
    REUSED,
    merge_part_metrics,
    part_metrics,
)
from crossenc.mining.negatives import FOLDER as MINED_FOLDER
from crossenc.mining.negatives import MineSpec, add_counts, mine_rows
from crossenc.models.tokenize import ERROR, IDS, ROW, SOURCE, TRUNCATED, TYPE_IDS
from crossenc.output.parts import PartStats, in_ranges, merge_ranges, part_file_name, row_ranges
from crossenc.storage import Location, resolve, retried_requests
from crossenc.tasks.base import DROPPED, GROUP_ROWS, LABEL, RANK, SCORE
from crossenc.tasks.rerank import rank_within
from crossenc.testing.failpoints import failpoint

INTERNAL = (
    ERROR,
    DROPPED,
    GROUP_ROWS,
    REUSED,
    IDS,
    TYPE_IDS,
    SOURCE,
    ROW,
    MODEL_ERRORS,
    *METRIC_COLUMNS,
)
ROW_GROUP_ROWS = 128 * 1024  # rows buffered before a row group is written


@dataclass
class WriterOptions:
    """What a writer needs besides the output: size bounds and the in-file rerank, if any."""

    max_rows: int = 1_000_000
    max_bytes: int = 256 * 2**20
    max_seconds: float = 120.0
    rerank_by: str | None = None  # rank within each input file by this group column
    top_k: int | None = None
    expected_rows: dict[str, int] = field(default_factory=dict)  # for the in-file rerank
    # rank across every input file at once (one writer holding the whole input's scored rows,
    # a small input): groups may span files, and no shuffle is needed
    rank_whole_input: bool = False
    models: tuple[str, ...] = ("",)  # the models' short names (a lone model's: "")
    # evaluate.within_files: measure each input file's queries once its rows are all here
    evaluate: FileEvaluation | None = None
    mine: MineSpec | None = None  # task mine: choose each input file's queries' negatives
    # task mine after a shuffle: hold each query's rows (of this column) until all are here;
    # every row of one query reaches one writer (:func:`writer_index`)
    hold_groups: str | None = None

    @property
    def several_models(self) -> bool:
        """models: each has its own columns, and a dead letter keeps the others' scores."""
        return len(self.models) > 1

    @property
    def holds_files(self) -> bool:
        """Whether an input file's rows are held until all of them are here (a rerank, an
        evaluation or a mining within files): a partial file cannot be written."""
        held = (self.rerank_by, self.evaluate, self.mine, self.hold_groups)
        return any(x is not None for x in held)


class _Sink:
    """One Parquet file being written under its final name (hidden until closed on disk)."""

    def __init__(self, loc: Location, name: str, schema: pa.Schema) -> None:
        self.loc, self.schema = loc, schema
        self.path = loc.join(name)
        self.local = isinstance(loc.fs, LocalFileSystem)
        loc.fs.makedirs(loc.path, exist_ok=True)
        if self.local:
            self.tmp = loc.join(f".{name}.inprogress")
            self.stream: Any = pa.OSFile(self.tmp, "wb")
        else:
            # Built in memory (compressed; max_mib bounds it) and uploaded at close: an object
            # store file is never visible unfinished, and one dropped without close (a killed
            # writer, a garbage-collected one) uploads nothing.
            self.stream = pa.BufferOutputStream()
        self.writer = pq.ParquetWriter(self.stream, schema)
        self.buffered: list[pa.Table] = []
        self.buffered_rows = 0
        self.buffered_bytes = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        failpoint("writer.write")  # tests: a full disk where the real one cannot be had
        table = table.select(self.schema.names).cast(self.schema)
        self.buffered.append(table)
        self.buffered_rows += table.num_rows
        self.buffered_bytes += table.nbytes
        self.rows += table.num_rows
        if self.buffered_rows >= ROW_GROUP_ROWS:
            self._write_row_group()

    def _write_row_group(self) -> None:
        if self.buffered:
            table = pa.concat_tables(self.buffered)
            self.writer.write_table(table, row_group_size=table.num_rows)
        self.buffered, self.buffered_rows, self.buffered_bytes = [], 0, 0

    @property
    def bytes(self) -> int:
        """Bytes written so far, plus the rows still buffered (uncompressed)."""
        return self.stream.tell() + self.buffered_bytes

    def close(self) -> str:
        self._write_row_group()
        self.writer.close()
        self.size = self.stream.tell()
        if self.local:
            self.stream.close()
            os.replace(self.tmp, self.path)
        else:
            self.loc.fs.pipe_file(self.path, self.stream.getvalue().to_pybytes())
        return self.path


@dataclass
class _Piece:
    """What the open file holds of one input file."""

    ranges: list[list[int]] = field(default_factory=list)
    rows: int = 0
    dead_rows: int = 0
    dropped_rows: int = 0
    reused_rows: int = 0
    skipped_rows: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    input_rows: int = -1
    evaluation: dict[str, Any] | None = None  # evaluate.within_files: the queries' moments
    per_query: list[pa.Table] = field(default_factory=list)  # and their per-query metrics
    mining: dict[str, Any] | None = None  # task mine: what choosing its negatives found
    mined: list[pa.Table] = field(default_factory=list)  # and the rows it chose


@dataclass
class _Found:
    """What a writer worked out over whole files or queries (see :meth:`RollingWriter._whole`)."""

    mined: pa.Table | None = None
    mining: dict[str, Any] | None = None
    per_query: pa.Table | None = None
    evaluation: dict[str, Any] | None = None


def visible_columns(columns: list[str]) -> list[str]:
    """The columns an output file holds: every non-internal one, ``truncated`` last."""
    hidden = (*INTERNAL, TRUNCATED)  # (and an earlier pool's metrics: <column>#<pool>)
    return [
        c for c in columns if c.split("#")[0] not in hidden and not c.startswith(MODEL_BUSY)
    ] + [TRUNCATED]


def dead_columns(columns: list[str], several: bool = False) -> list[str]:
    """The columns a dead-letter file holds (the reason is appended): no scores or ranks, but
    for ``several`` models' scores (of the models that could score the row)."""
    outputs = (SCORE, LABEL, RANK, TRUNCATED)
    return [
        c
        for c in visible_columns(columns)
        if c not in outputs
        and not c.startswith(f"{RANK}_")
        and (several or not c.startswith(f"{SCORE}_"))
    ]


def with_partition_values(table: pa.Table, out: OutputConfig) -> pa.Table:
    """The rows with output.partition_by's constant columns appended (their partition_value)."""
    for column in out.partition_by:
        value = out.partition_value[column]
        table = table.append_column(column, pa.array([value] * table.num_rows, pa.string()))
    return table


def by_source(block: pa.Table) -> list[tuple[str, pa.Table]]:
    """A block's rows split by the input file they came from."""
    sources = block.column(SOURCE)
    return [(s, block.filter(pc.equal(sources, s))) for s in pc.unique(sources).to_pylist()]


class RollingWriter:
    """Appends scored blocks to right-sized output files; see the module docstring."""

    def __init__(
        self, out: OutputConfig, run_id: str, name: str, options: WriterOptions | None = None
    ) -> None:
        self.out, self.run_id, self.name = out, run_id, name
        self.options = options or WriterOptions()
        self.loc = resolve(out.path, out.storage)
        self.dead_loc = resolve(out.dead_letter_path(), out.storage)
        self.seq = 0
        self.retried = retried_requests()
        self.seen: dict[str, list[list[int]]] = {}  # rows taken so far, per input file
        self.held: dict[str, list[pa.Table]] = {}  # in-file rerank: rows waiting for their file
        self.held_rows: dict[str, int] = {}
        self.held_groups: pa.Table | None = None  # hold_groups: rows of incomplete queries
        self.whole_input_rows = sum(self.options.expected_rows.values())  # rank_whole_input
        self._reset()

    def _reset(self) -> None:
        self.data: _Sink | None = None
        self.dead: _Sink | None = None
        self.pieces: dict[str, _Piece] = {}
        self.opened = time.monotonic()

    # -- appending ---------------------------------------------------------------------------

    def append(self, block: pa.Table) -> list[PartStats]:
        """Take a scored block; returns the parts of any file this closed. A store or disk
        problem raises a StorageError naming output.path."""
        with storage_errors("output", self.out.path, self.out.storage):
            return self._append(block)

    def _append(self, block: pa.Table) -> list[PartStats]:
        closed: list[PartStats] = []
        if not self.pieces:
            self.opened = time.monotonic()
        for source, rows in by_source(block):
            rows = self._new_rows(source, rows)
            if rows.num_rows == 0:
                continue
            if self.options.holds_files:
                hold_groups = self.options.hold_groups is not None
                whole = self._hold_groups(rows) if hold_groups else self._hold(source, rows)
                if whole is None:
                    continue
                found = self._whole(whole)
                for i, (whole_source, whole_rows) in enumerate(by_source(whole)):
                    # a held file is never split: a resume takes it whole
                    self._add(whole_source, whole_rows, found if i == 0 else None)
                if self._full():
                    closed += self.close_file()
                continue
            while rows.num_rows:
                room = max(1, self.options.max_rows - self._rows())
                self._add(source, rows.slice(0, room))
                rows = rows.slice(room)
                if self._full():
                    closed += self.close_file()
        if self.pieces and time.monotonic() - self.opened >= self.options.max_seconds:
            closed += self.close_file()
        return closed

    def _new_rows(self, source: str, rows: pa.Table) -> pa.Table:
        positions = rows.column(ROW).to_numpy()
        seen = self.seen.setdefault(source, [])
        fresh = ~in_ranges(positions, seen)
        if not fresh.all():
            rows = rows.filter(pa.array(fresh))
            positions = positions[fresh]
        self.seen[source] = merge_ranges(seen + row_ranges(positions))
        return rows

    def _hold(self, source: str, rows: pa.Table) -> pa.Table | None:
        """Rerank in the writer: keep the rows until the whole input file (or, ranking the
        whole input, every file) is here, then rank them."""
        if self.options.rank_whole_input:
            source, wanted = "", self.whole_input_rows
        else:
            wanted = self.options.expected_rows.get(source, 0)
        self.held.setdefault(source, []).append(rows)
        self.held_rows[source] = self.held_rows.get(source, 0) + rows.num_rows
        if self.held_rows[source] < wanted:
            return None
        table = pa.concat_tables(self.held.pop(source))
        del self.held_rows[source]
        if self.options.rerank_by is None:  # an evaluation or mining: done in _add
            return table
        return rank_within(table, self.options.rerank_by, self.options.top_k, self.options.models)

    def _hold_groups(self, rows: pa.Table) -> pa.Table | None:
        """Task mine after a shuffle: keep the rows until every row of their query is here
        (each carries its query's row count), then hand over the whole queries."""
        key = self.options.hold_groups
        assert key is not None
        held = rows if self.held_groups is None else pa.concat_tables([self.held_groups, rows])
        counts = held.group_by(key).aggregate([(GROUP_ROWS, "count"), (GROUP_ROWS, "max")])
        whole = pc.equal(counts[f"{GROUP_ROWS}_count"], counts[f"{GROUP_ROWS}_max"])
        done = pc.is_in(held.column(key), value_set=counts[key].filter(whole), skip_nulls=False)
        rest = held.filter(pc.invert(done))
        self.held_groups = rest if rest.num_rows else None
        ready = held.filter(done)
        return ready if ready.num_rows else None

    def _written(self, rows: pa.Table) -> pa.ChunkedArray | pa.Array:
        """Which rows go to the data file: scored, not past a rerank's top_k, and (incremental
        skip) not copied from an earlier run."""
        keep = pc.is_null(rows.column(ERROR))
        if DROPPED in rows.column_names:
            keep = pc.and_(keep, pc.invert(rows.column(DROPPED)))
        if REUSED in rows.column_names and self.out.incremental == "skip":
            keep = pc.and_(keep, pc.invert(rows.column(REUSED)))
        return keep

    def _whole(self, whole: pa.Table) -> _Found | None:
        """What is worked out over whole files or queries as they are written: task mine's
        negatives (and counts), an evaluation's per-query metrics (and their moments)."""
        if self.options.mine is None and self.options.evaluate is None:
            return None
        good = whole.filter(self._written(whole))
        if not good.num_rows:
            return None
        found = _Found()
        if self.options.mine is not None:
            found.mined, counts = mine_rows(good, self.options.mine)
            found.mining = counts.as_dict()
        if self.options.evaluate is not None:
            spec = self.options.evaluate
            found.per_query, measured, without = per_query_of(good, spec)
            found.evaluation = moments(found.per_query, spec, measured, without)
        return found

    def _add(self, source: str, rows: pa.Table, found: _Found | None = None) -> None:
        """Write one input file's rows (``found``: what was worked out over whole files or
        queries, some of whose rows these are, recorded with this file's part)."""
        piece = self.pieces.setdefault(source, _Piece())
        positions = rows.column(ROW).to_numpy()
        piece.ranges = merge_ranges(piece.ranges + row_ranges(positions))
        if "_input_rows" in rows.column_names:
            piece.input_rows = int(rows.column("_input_rows")[0].as_py())
        record = part_metrics(rows, seed=int(positions[0]))
        record.pop("t", None)
        piece.metrics.append(record)
        bad = pc.is_valid(rows.column(ERROR))
        scored = pc.invert(bad)  # (and not past a rerank's top_k)
        if DROPPED in rows.column_names:
            piece.dropped_rows += int(pc.sum(rows.column(DROPPED)).as_py() or 0)
            scored = pc.and_(scored, pc.invert(rows.column(DROPPED)))
        if REUSED in rows.column_names:  # output.incremental: copied scores (skip: not written)
            reused = int(pc.sum(pc.and_(scored, rows.column(REUSED))).as_py() or 0)
            piece.reused_rows += reused
            if self.out.incremental == "skip":
                piece.skipped_rows += reused
        keep = self._written(rows)
        good = rows.filter(keep)
        if found is not None and found.evaluation is not None:
            piece.evaluation = add(piece.evaluation, found.evaluation)
            piece.per_query.append(found.per_query)
        if found is not None and found.mining is not None:
            piece.mining = add_counts(piece.mining, found.mining)
            piece.mined.append(found.mined)
        if good.num_rows:
            good = with_partition_values(good.select(visible_columns(rows.column_names)), self.out)
            if self.data is None:
                self.data = _Sink(self.loc, self._file_name(), good.schema)
            self.data.write(good)
            piece.rows += good.num_rows
        dead = rows.filter(bad)
        if dead.num_rows:
            dead = dead.select(
                dead_columns(rows.column_names, self.options.several_models)
            ).append_column("reason", dead.column(ERROR))
            dead = with_partition_values(dead, self.out)
            if self.dead is None:
                self.dead = _Sink(self.dead_loc, self._file_name(), dead.schema)
            self.dead.write(dead)
            piece.dead_rows += dead.num_rows

    def _file_name(self) -> str:
        return part_file_name(self.run_id, self.name, self.seq)

    def _rows(self) -> int:
        return sum(s.rows for s in (self.data, self.dead) if s is not None)

    def _full(self) -> bool:
        sinks = [s for s in (self.data, self.dead) if s is not None]
        return self._rows() >= self.options.max_rows or sum(s.bytes for s in sinks) >= (
            self.options.max_bytes
        )

    # -- closing -----------------------------------------------------------------------------

    def close_file(self) -> list[PartStats]:
        """Close the open output (and dead-letter) file; one PartStats per input file in it."""
        if not self.pieces:
            return []
        with storage_errors("output", self.out.path, self.out.storage):
            data = self.data.close() if self.data is not None else None
            dead = self.dead.close() if self.dead is not None else None
            measured = self._write_per_query(data) | self._write_mined(data)
        size = self.data.size if self.data is not None else -1
        first = next(iter(self.pieces.values()))  # the writes' retries count once, here
        first.metrics.append({"store_retries": retried_requests() - self.retried})
        self.retried = retried_requests()
        parts = [
            PartStats(
                input_file=source,
                file=data if piece.rows else None,
                rows=piece.rows,
                dead_file=dead if piece.dead_rows else None,
                dead_rows=piece.dead_rows,
                dropped_rows=piece.dropped_rows,
                run_id=self.run_id,
                ranges=json.dumps(piece.ranges),
                metrics=json.dumps(merge_part_metrics(piece.metrics) | measured.get(source, {})),
                input_rows=piece.input_rows,
                siblings=len(self.pieces),
                file_bytes=size if piece.rows else -1,
                reused_rows=piece.reused_rows,
                skipped_rows=piece.skipped_rows,
            )
            for source, piece in self.pieces.items()
        ]
        self.seq += 1
        self._reset()
        return parts

    def _write_per_query(self, data: str | None) -> dict[str, dict[str, Any]]:
        """evaluate.within_files: the per-query metrics of the input files in the file being
        closed, written as ``_evaluation/<run_id>/per_query/<its name>`` under the output;
        per input file, its metrics record's ``evaluation`` entry (the moments, and where
        that file is)."""
        tables = [t for piece in self.pieces.values() for t in piece.per_query]
        if data is None or not tables:
            return {}
        name = data.rsplit("/", 1)[-1]
        relative = f"{EVALUATION_FOLDER}/{self.run_id}/per_query/{name}"
        where = self.loc.write_table(relative, pa.concat_tables(tables))
        return {
            source: {"evaluation": {**piece.evaluation, "per_query": where}}
            for source, piece in self.pieces.items()
            if piece.evaluation is not None
        }

    def _write_mined(self, data: str | None) -> dict[str, dict[str, Any]]:
        """task mine: the rows chosen from the input files in the file being closed, written as
        ``_mined/<its name>`` under the output (the data file's twin: the commit keeps the
        twins of the files it commits); per input file, its metrics record's ``mining`` entry
        (the counts, and that file)."""
        tables = [t for piece in self.pieces.values() for t in piece.mined]
        if data is None or not tables:
            return {}
        name = data.rsplit("/", 1)[-1]
        where = self.loc.write_table(f"{MINED_FOLDER}/{name}", pa.concat_tables(tables))
        return {
            source: {"mining": {**piece.mining, "file": where}}
            for source, piece in self.pieces.items()
            if piece.mining is not None
        }

    def flush(self) -> list[PartStats]:
        """Close the open file at the end of the stream. Rows held for an in-file rerank whose
        file never completed stay unwritten (the driver's accounting sees them missing)."""
        return self.close_file()


class WriterActorImpl(RollingWriter):
    """A :class:`RollingWriter` as a Ray actor (no CPU reserved: it mostly waits on I/O)."""

    def ready(self) -> str:
        """Where the writer runs, once it has started."""
        import ray

        return ray.util.get_node_ip_address()


def writer_actor() -> Any:
    """The Ray actor class of a writer (built lazily: importing this module needs no Ray)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(WriterActorImpl)


def writer_for(source: str, writers: list[Any]) -> Any:
    """The writer of an input file: every row of one file goes to the same writer."""
    return writers[zlib.crc32(source.encode()) % len(writers)]


def by_writer(
    batch: pa.Table, writers: list[Any], options: WriterOptions
) -> list[tuple[Any, pa.Table]]:
    """A block's rows split by the writer that takes them: an input file's rows go to one
    writer, or with ``options.hold_groups`` (mining after a shuffle) a query's rows do."""
    if options.hold_groups is None:
        return [(writer_for(source, writers), rows) for source, rows in by_source(batch)]
    keys = pc.dictionary_encode(batch.column(options.hold_groups).combine_chunks())
    index = np.array(
        [zlib.crc32(repr(k).encode()) % len(writers) for k in keys.dictionary.to_pylist()],
        dtype=np.int64,
    )
    codes = pc.fill_null(keys.indices, 0).to_numpy(zero_copy_only=False)
    to = index[codes] if len(index) else np.zeros(batch.num_rows, dtype=np.int64)
    if keys.null_count:  # the rows without a query: one group, one writer
        to = np.where(keys.is_null().to_numpy(zero_copy_only=False), 0, to)
    return [(writers[w], batch.filter(pa.array(to == w))) for w in np.unique(to).tolist()]


PROGRESS_SCHEMA = pa.schema(
    [("accounted", pa.int64()), ("t", pa.float64()), ("parts", pa.string())]
)


def write_block(
    batch: pa.Table, writers: list[Any], out: OutputConfig, run_id: str, options: WriterOptions
) -> pa.Table:
    """The write stage: hand each input file's rows to its writer; a writer that has died is
    replaced by writing the rows here, as a file of their own. Returns one progress row: the
    rows handed over, when, and the parts of the files that closed."""
    import ray

    calls = [
        (rows, writer.append.remote(rows)) for writer, rows in by_writer(batch, writers, options)
    ]
    parts: list[PartStats] = []
    for rows, ref in calls:
        try:
            parts += ray.get(ref)
        except ray.exceptions.RayActorError:
            if options.holds_files:
                continue  # a partial file cannot be ranked here: the repair pass redoes it
            local = RollingWriter(out, run_id, f"f{uuid.uuid4().hex[:6]}", options)
            parts += local.append(rows) + local.flush()
    return pa.table(
        {
            "accounted": [batch.num_rows],
            "t": [time.time()],
            "parts": [json.dumps([asdict(p) for p in parts])],
        },
        schema=PROGRESS_SCHEMA,
    )
