"""Small helpers shared by the tests."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from crossenc.config import JobConfig, StorageConfig, build_config

if TYPE_CHECKING:
    from crossenc.output.tables import TableCommitter

TABLE_COLUMNS = ["pair_id", "score", "truncated", "dt"]  # what table_rows_duckdb reads


def job_config(
    input_path: Path | str, output_path: Path | str, model_path: Path | str, **sections: Any
) -> JobConfig:
    """A validated config over the sample pairs, with sections merged in."""
    data: dict[str, Any] = {
        "input": {
            "path": str(input_path),
            "text_a": "query",
            "text_b": "passage",
            "keep": ["qid", "doc_id"],
        },
        # float32: the tests compare scores with float32 references (dtype auto would run
        # bfloat16 on a CPU with AMX); tests of auto set it themselves
        "model": {"name": str(model_path), "dtype": "float32"},
        "output": {"path": str(output_path)},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return build_config(data)


def read_output(path: Path | str) -> pa.Table:
    """Every committed output row (Parquet readers skip _-prefixed paths)."""
    return pads.dataset(str(path), format="parquet").to_table()


def read_input(path: Path | str) -> pa.Table:
    """Every input row."""
    return pq.read_table(str(path))


@contextlib.contextmanager
def table_output(kind: str, root: Path, endpoint: str) -> Iterator[dict[str, Any]]:
    """The output section of an empty table partitioned by dt (dt=d1): ``kind`` is
    ``delta-local``, ``iceberg-local``, ``delta-s3`` or ``iceberg-s3`` (a bucket of its own on
    the moto server at ``endpoint``, removed afterwards)."""
    import s3fs

    fmt, store = kind.split("-")
    out: dict[str, Any] = {"format": fmt, "partition_by": ["dt"], "partition_value": {"dt": "d1"}}
    if fmt == "iceberg":
        out["table"] = "nightly.scores"
    if store == "local":
        out["path"] = str(root / "table")
        yield out
        return
    storage = StorageConfig(endpoint_url=endpoint, key="testing", secret="testing")
    fs = s3fs.S3FileSystem(**storage.s3fs_kwargs())
    bucket = f"tables-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    out["path"] = f"s3://{bucket}/table"
    out["storage"] = storage.model_dump(mode="json") | {"key": "testing", "secret": "testing"}
    if fmt == "iceberg":
        out["catalog"] = {"uri": str(root / "catalog.db")}
    try:
        yield out
    finally:
        fs.rm(bucket, recursive=True)


def table_rows(committer: TableCommitter) -> pa.Table:
    """The table's rows as deltalake / pyiceberg read them."""
    if committer.out.format == "delta":
        from deltalake import DeltaTable

        from crossenc.output.tables import delta_storage_options

        uri = committer.out.path.rstrip("/")
        return DeltaTable(
            uri, storage_options=delta_storage_options(committer.out.storage)
        ).to_pyarrow_table()
    return committer._table().scan().to_arrow()  # type: ignore[attr-defined]


def table_rows_duckdb(committer: TableCommitter) -> list[tuple]:
    """The table's (pair_id, score, truncated, dt) rows as DuckDB reads them, sorted by dt and
    pair_id: the table's current files with read_parquet on local disk, its Arrow dataset on S3
    (DuckDB's delta / iceberg extensions cannot be installed offline)."""
    cols = ", ".join(TABLE_COLUMNS)
    con = duckdb.connect()
    if committer.out.path.startswith("s3://"):
        if committer.out.format == "delta":
            from deltalake import DeltaTable

            from crossenc.output.tables import delta_storage_options

            options = delta_storage_options(committer.out.storage)
            dataset = DeltaTable(committer.out.path, storage_options=options).to_pyarrow_dataset()
        else:
            dataset = committer._table().scan().to_arrow()  # type: ignore[attr-defined]
        con.register("rows", dataset)
        return con.sql(f"SELECT {cols} FROM rows ORDER BY dt, pair_id").fetchall()
    files = committer.live_files()  # type: ignore[attr-defined]
    if not files:
        return []
    return con.execute(
        f"SELECT {cols} FROM read_parquet(?) ORDER BY dt, pair_id", [files]
    ).fetchall()
