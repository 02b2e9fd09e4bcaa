"""What a written part is: the rows of one input file inside one output file, as row ranges.

A *part* is the bookkeeping unit of a run: an output file holds rows of one or more input files,
and for each of them one :class:`PartStats` records which row positions of that input file the
output file (and its dead-letter file) accounts for, as ``[start, end)`` ranges. Resume, the
accounting check and the manifest all work from these ranges, never from rows.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass
class PartStats:
    """What one output file contributed for one input file."""

    input_file: str
    file: str | None  # the output file (None: every row of this input file went elsewhere)
    rows: int
    dead_file: str | None
    dead_rows: int
    dropped_rows: int
    run_id: str = ""
    ranges: str = "[]"  # JSON [[start, end), ...] of the input file's rows this part holds
    metrics: str = "{}"  # JSON crossenc.job.summary.part_metrics record
    input_rows: int = -1  # rows of the whole input file (its footer), -1 where not known
    siblings: int = 1  # parts of the same output file: a resume takes all of them or none
    file_bytes: int = -1  # size of the output file, -1 where not known (a table commit needs it)
    reused_rows: int = 0  # rows whose scores came from an earlier run (output.incremental)
    skipped_rows: int = 0  # reused rows not written (output.incremental skip)

    @property
    def accounted(self) -> int:
        """Input rows this part accounts for."""
        return self.rows + self.dead_rows + self.dropped_rows + self.skipped_rows

    def row_ranges(self) -> list[list[int]]:
        """The part's ranges, parsed."""
        return json.loads(self.ranges)


PART_SCHEMA = pa.schema(
    [
        ("input_file", pa.string()),
        ("file", pa.string()),
        ("rows", pa.int64()),
        ("dead_file", pa.string()),
        ("dead_rows", pa.int64()),
        ("dropped_rows", pa.int64()),
        ("run_id", pa.string()),
        ("ranges", pa.string()),
        ("metrics", pa.string()),
        ("input_rows", pa.int64()),
        ("siblings", pa.int64()),
        ("file_bytes", pa.int64()),
        ("reused_rows", pa.int64()),
        ("skipped_rows", pa.int64()),
    ]
)


def parts_table(parts: list[PartStats]) -> pa.Table:
    """Parts as an Arrow table (the journal's and the write stage's format)."""
    cols = {name: [getattr(p, name) for p in parts] for name in PART_SCHEMA.names}
    return pa.table(cols, schema=PART_SCHEMA)


def parts_from_table(table: pa.Table) -> list[PartStats]:
    """The inverse of :func:`parts_table`; columns a table lacks take their defaults."""
    names = [n for n in PART_SCHEMA.names if n in table.column_names]
    columns = {n: table.column(n).to_pylist() for n in names}
    return [PartStats(**{n: columns[n][i] for n in names}) for i in range(table.num_rows)]


def row_ranges(rows: np.ndarray) -> list[list[int]]:
    """Sorted row positions as maximal [start, end) runs."""
    if len(rows) == 0:
        return []
    rows = np.sort(rows)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    return [[int(rows[a]), int(rows[b - 1]) + 1] for a, b in zip(starts, ends, strict=True)]


def merge_ranges(ranges: list[list[int]]) -> list[list[int]]:
    """Sorted, touching or overlapping ranges joined."""
    out: list[list[int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def overlaps(ranges: list[list[int]]) -> bool:
    """True when any two ranges share a row."""
    ordered = sorted(ranges)
    return any(b[0] < a[1] for a, b in zip(ordered, ordered[1:], strict=False))


def missing_ranges(ranges: list[list[int]], rows: int) -> list[list[int]]:
    """The rows of [0, rows) that no range covers, as ranges."""
    out, position = [], 0
    for start, end in merge_ranges(ranges):
        if start > position:
            out.append([position, start])
        position = max(position, end)
    if position < rows:
        out.append([position, rows])
    return out


def in_ranges(rows: np.ndarray, ranges: list[list[int]]) -> np.ndarray:
    """Per row position, whether merged ``ranges`` hold it (vectorised)."""
    if not ranges or len(rows) == 0:
        return np.zeros(len(rows), dtype=bool)
    merged = np.asarray(merge_ranges(ranges), dtype=np.int64)
    idx = np.searchsorted(merged[:, 0], rows, side="right") - 1
    ok = idx >= 0
    return ok & (rows < merged[np.maximum(idx, 0), 1])


_last_ms = 0


def new_run_id() -> str:
    """A sortable, unique id for one run: UTC start time to the millisecond (strictly
    increasing within a process), then random."""
    global _last_ms
    ms = max(int(time.time() * 1000), _last_ms + 1)
    _last_ms = ms
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ms / 1000)) + f"{ms % 1000:03d}"
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


PART_FILE = re.compile(r"^part-(?P<run>\d{8}T\d{6,9}-[0-9a-f]{8})-.+\.parquet$")


def part_file_name(run_id: str, writer: str, seq: int) -> str:
    """The final name of an output (or dead-letter) file: run-unique, written once."""
    return f"part-{run_id}-{writer}-{seq:05d}.parquet"


def run_of(name: str) -> str | None:
    """The run id in an output file's name, or None for a name crossenc did not give."""
    match = PART_FILE.match(name.rsplit("/", 1)[-1])
    return match.group("run") if match else None
