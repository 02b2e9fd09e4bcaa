"""Small helpers shared by the tests."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from crossenc.config import JobConfig, StorageConfig, build_config
from crossenc.output.tables import delta_storage_options, store_options
from crossenc.storage import is_remote

if TYPE_CHECKING:
    from crossenc.output.tables import TableCommitter

TABLE_COLUMNS = ["pair_id", "score", "truncated", "dt"]  # what table_rows compares with DuckDB
JOB_BACKEND = "onnx"  # the tests' jobs' model.backend (job_model)


def job_model(model_path: Path | str) -> dict[str, Any]:
    """The model and runtime sections of the tests' jobs (:func:`job_config`'s, and of the
    configs that tests write for a ``crossenc score`` process of their own).

    float32: the tests compare scores with float32 references (dtype auto would run bfloat16
    on a CPU with AMX); tests of auto set it themselves. The ONNX backend: the jobs' scorer
    actors are fresh processes, and an ONNX replica starts in ~0.1 s where a torch one imports
    torch and transformers' model code (4-5 s on 2 cores), which ~100 test jobs paid; its
    float32 scores equal torch's to ~1e-7. The export is made once per model for the session
    (:func:`export_cache`). Tests of the torch path (sentence-transformers parity, compile, the
    S3 model, the README example, the demo, the API's defaults) ask for torch or leave
    model.backend unset."""
    sections: dict[str, Any] = {
        "model": {"name": str(model_path), "dtype": "float32", "backend": JOB_BACKEND}
    }
    if not is_remote(str(model_path)):
        sections["runtime"] = {"cache_dir": export_cache(model_path)}
        if (Path(model_path) / "config.json").is_file():  # (configs of no model: paths only)
            _export(str(model_path))
    return sections


@functools.cache
def _export(model_path: str) -> None:
    """Export a model of the session to its ONNX cache here, where torch is imported already,
    not in the first job's scorer actor, which would import torch for it (~4 s); models ONNX
    does not serve (causal-LM rerankers) are left to the job to refuse."""
    from crossenc.config import ModelConfig
    from crossenc.engine.onnx_runner import ensure_onnx_model
    from crossenc.models.describe import describe_model
    from crossenc.models.load import SEQUENCE_CLASSIFICATION

    cfg = ModelConfig(name=model_path, dtype="float32", backend=JOB_BACKEND)
    info = describe_model(cfg, export_cache(model_path))
    if info.kind == SEQUENCE_CLASSIFICATION:
        ensure_onnx_model(cfg, info, export_cache(model_path))


def export_cache(model_path: Path | str) -> str:
    """The session's ONNX / OpenVINO export cache of a model folder of the session (beside
    it): each model is exported once for the suite, whichever test comes first."""
    return str(Path(model_path).parent / "export-cache")


def job_config(
    input_path: Path | str, output_path: Path | str, model_path: Path | str, **sections: Any
) -> JobConfig:
    """A validated config over the sample pairs (:func:`job_model`'s model), with sections
    merged in."""
    data: dict[str, Any] = {
        "input": {
            "path": str(input_path),
            "text_a": "query",
            "text_b": "passage",
            "keep": ["qid", "doc_id"],
        },
        **job_model(model_path),
        "output": {"path": str(output_path)},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return build_config(data)


def long_row_block() -> pa.Table:
    """Four read rows of one file: short pairs, a 60-word passage (row 1) and an empty query
    (row 2); what a scorer that runs out of memory on long rows is tested with."""
    from crossenc.models.tokenize import ROW, SOURCE

    return pa.table(
        {
            "query": ["short", "short", "", "short"],
            "passage": ["a b", " ".join(["word"] * 60), "a b", "c d"],
            "qid": [1, 2, 3, 4],
            "doc_id": ["d1", "d2", "d3", "d4"],
            SOURCE: ["f.parquet"] * 4,
            ROW: [0, 1, 2, 3],
        }
    )


def several_config(
    input_path: Path | str,
    output_path: Path | str,
    model_paths: dict[str, Path],
    **sections: Any,
) -> JobConfig:
    """:func:`job_config` with several models (``models:``, by short name) in place of one."""
    data = job_config(input_path, output_path, next(iter(model_paths.values())), **sections)
    dumped = data.model_dump(mode="json", exclude={"model"})
    dumped["models"] = {n: job_model(p)["model"] for n, p in model_paths.items()}
    return build_config(dumped)


def hub_model(monkeypatch: Any, cache: Path, repo_id: str, folder: Path) -> str:
    """``folder``'s files as the Hugging Face Hub cache holds a downloaded ``repo_id`` (a
    snapshot and its refs/main), with the Hub offline and its cache at ``cache``: the Hub
    loading path, run without the Hub. Returns ``repo_id``."""
    import huggingface_hub.constants as hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        if path.is_file():
            (snapshot / path.name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    return repo_id


def spread_over_files(table: pa.Table, folder: Path, files: int = 2) -> None:
    """``table`` written as ``files`` Parquet files in ``folder``, row i in file i % files:
    every query's rows in each file (queries spanning files)."""
    folder.mkdir()
    rows = np.arange(table.num_rows)
    for i in range(files):
        pq.write_table(table.take(rows[i::files]), folder / f"part-{i}.parquet")


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


def sorted_rows(table: pa.Table) -> list[tuple]:
    """Sorted (pair_id, score, truncated, dt) tuples."""
    data = table.select(TABLE_COLUMNS).to_pylist()
    return sorted((tuple(r[c] for c in TABLE_COLUMNS) for r in data), key=lambda r: (r[3], r[0]))


def assert_same_rows(got: list[tuple], want: list[tuple], atol: float = 1e-6) -> None:
    """:func:`sorted_rows` lists that hold the same pairs, flags and partitions, with scores
    equal to ``atol``: a pair scored in another batch (another block layout, another padded
    width) may differ from its earlier score in float32's last bits."""
    assert [(r[0], *r[2:]) for r in got] == [(r[0], *r[2:]) for r in want]
    np.testing.assert_allclose([r[1] for r in got], [r[1] for r in want], rtol=0, atol=atol)


def table_rows(committer: TableCommitter) -> pa.Table:
    """The table's rows as deltalake / pyiceberg read them, once DuckDB's own Delta / Iceberg
    reader has read the same (pair_id, score, truncated, dt) rows (table_rows_duckdb): this
    raises AssertionError where the two differ."""
    if committer.out.format == "delta":
        from deltalake import DeltaTable

        uri = committer.out.path.rstrip("/")
        rows = DeltaTable(
            uri, storage_options=delta_storage_options(committer.out.storage)
        ).to_pyarrow_table()
    else:
        rows = committer.load().scan().to_arrow()
    want, got = sorted_rows(rows), table_rows_duckdb(committer)
    if got != want:
        diff = next(i for i, (a, b) in enumerate(itertools.zip_longest(want, got)) if a != b)
        raise AssertionError(
            f"{committer.out.format} {committer.out.path}: DuckDB reads {len(got)} rows, "
            f"the table library {len(want)}; first difference at row {diff}: "
            f"{got[diff : diff + 1]} against {want[diff : diff + 1]}"
        )
    return rows


DUCKDB_EXTENSIONS = ("httpfs", "avro", "delta", "iceberg")  # iceberg needs avro (manifests)
DUCKDB_SECRET = {  # DuckDB's S3 secret's parameters for store_options' keys
    "endpoint_url": "ENDPOINT",
    "key": "KEY_ID",
    "secret": "SECRET",
    "token": "SESSION_TOKEN",
    "region": "REGION",
}


def duckdb_extension(name: str, platform: str) -> Path:
    """The file of DuckDB's ``name`` extension for this duckdb and ``platform``, as its
    duckdb-ext-<name> package ships it (the test extra installs them)."""
    spec = importlib.util.find_spec("duckdb_ext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("no duckdb_ext package: pip install -c constraints.txt -e .[test]")
    folder = f"extensions/v{duckdb.__version__}/{platform}/{name}.duckdb_extension"
    for root in spec.submodule_search_locations:
        if (path := Path(root) / folder).is_file():
            return path
    raise FileNotFoundError(f"duckdb_ext/{folder}: install duckdb-ext-{name} for this duckdb")


def duckdb_readers(storage: StorageConfig | None = None) -> duckdb.DuckDBPyConnection:
    """A connection to a DuckDB with its own Delta, Iceberg and S3 readers LOADed from the
    duckdb-ext-* packages' files (nothing downloaded: no extension is installed or loaded on
    its own), with ``storage``'s endpoint and keys as its S3 secret. One database per secret
    for the session: loading the four extensions takes most of a second."""
    secret: dict[str, str] = {}
    if storage is not None:
        secret = store_options(storage, DUCKDB_SECRET)
        if "ENDPOINT" in secret:
            url = urlsplit(secret["ENDPOINT"])
            secret |= {"ENDPOINT": url.netloc, "URL_STYLE": "path"}
            secret["USE_SSL"] = str(url.scheme == "https").lower()
    return _duckdb_database(tuple(secret.items())).cursor()


@functools.cache
def _duckdb_database(secret: tuple[tuple[str, str], ...]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    (platform,) = con.execute("PRAGMA platform").fetchone() or ("",)
    for name in DUCKDB_EXTENSIONS:
        con.execute(f"LOAD '{duckdb_extension(name, platform)}'")
    if secret:
        params = "".join(f", {k} '{v}'" for k, v in secret)
        con.execute(f"CREATE SECRET (TYPE s3{params})")
    return con


def table_rows_duckdb(committer: TableCommitter) -> list[tuple]:
    """The table's (pair_id, score, truncated, dt) rows as DuckDB's own readers read them
    (``delta_scan`` of the table's path, ``iceberg_scan`` of its current metadata file), sorted
    by dt and pair_id."""
    out = committer.out
    con = duckdb_readers(out.storage if is_remote(out.path) else None)
    if out.format == "delta":
        scan, location = "delta_scan", out.path.rstrip("/")
    else:
        scan, location = "iceberg_scan", committer.load().metadata_location
    cols = ", ".join(TABLE_COLUMNS)
    return con.execute(f"SELECT {cols} FROM {scan}(?) ORDER BY dt, pair_id", [location]).fetchall()
