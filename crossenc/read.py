"""Read stage: Parquet row groups to Ray blocks, each row tagged with its file and position.

Reading by row group (rather than with ``ray.data.read_parquet``) gives every row a stable
identity, ``(file, row)``, which is what lets a resumed run tell exactly which rows an
interrupted run already committed to staging, with bookkeeping per row group, not per row.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crossenc.config import InputConfig
from crossenc.inspect_input import InputFile
from crossenc.storage import resolve
from crossenc.tokenize import ROW, SOURCE

UNIT_SCHEMA = ("file", "row_group", "offset")


def read_units(files: list[InputFile]) -> list[dict[str, object]]:
    """One work unit per non-empty row group: its file, index and first row's position."""
    units = []
    for f in files:
        offset = 0
        for index, rows in enumerate(f.row_groups):
            if rows:
                units.append({"file": f.path, "row_group": index, "offset": offset})
            offset += rows
    return units


def read_row_groups(
    units: pa.Table, storage: InputConfig, columns: list[str], block_rows: int
) -> Iterator[pa.Table]:
    """Read the given row groups' needed columns in slices of at most block_rows rows, adding
    the source file and row position; a large row group never becomes one large block."""
    loc = resolve(storage.path, storage.storage)
    for unit in units.to_pylist():
        parquet = pq.ParquetFile(unit["file"], filesystem=loc.arrow_fs)
        start = unit["offset"]
        for batch in parquet.iter_batches(
            batch_size=block_rows, row_groups=[unit["row_group"]], columns=columns
        ):
            table = pa.Table.from_batches([batch])
            n = table.num_rows
            table = table.append_column(SOURCE, pa.array([unit["file"]] * n, pa.string()))
            table = table.append_column(ROW, pa.array(np.arange(n) + start, pa.int64()))
            start += n
            yield table
