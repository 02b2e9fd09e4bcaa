"""Read stage: row groups sliced to block_rows, each row tagged with its file and position."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crossenc.config import InputConfig
from crossenc.inputs.plan import InputFile
from crossenc.inputs.read import read_row_groups, read_units
from crossenc.models.tokenize import ROW, SOURCE


def test_large_row_groups_are_read_in_slices_with_positions(tmp_path):
    path = tmp_path / "big.parquet"
    pq.write_table(
        pa.table({"pos": np.arange(25), "query": [f"q{i}" for i in range(25)]}),
        path,
        row_group_size=10,
    )
    meta = pq.read_metadata(path)
    groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    units = read_units([InputFile(str(path), 25, groups)])
    assert [u["offset"] for u in units] == [0, 10, 20]
    blocks = list(
        read_row_groups(
            pa.Table.from_pylist(units), InputConfig(path=str(path)), ["pos", "query"], block_rows=4
        )
    )
    assert max(b.num_rows for b in blocks) == 4  # no block larger than block_rows
    rows = [r for b in blocks for r in b.column(ROW).to_pylist()]
    assert rows == list(range(25))  # every row once, in order, with its file position
    assert all(b.column("pos").to_pylist() == b.column(ROW).to_pylist() for b in blocks)
    assert {s for b in blocks for s in b.column(SOURCE).to_pylist()} == {str(path)}
