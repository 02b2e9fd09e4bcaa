"""``python -m bench --mode tables``: the driver's table commit for 10^3 and 10^4 data files.

What is timed is what a run's driver does after scoring, for output.format delta and iceberg,
on local disk and on moto's S3 server (in a process of its own, on loopback): the committer's
``prepare`` (the table's state and history) and ``commit`` (one table commit adding every data
file, with the crossenc metadata), first into a new table (created by that commit), then a
second run of as many files appended to it. The data files are fabricated (10 rows each, the
columns of a scored run with a ``dt`` partition), written as a job's writers write them, with
their :class:`~crossenc.output.parts.PartStats`; no model runs. The Delta and the Iceberg table
of one (store, size) share one folder of data files (each format keeps its own log:
``_delta_log/`` and ``metadata/``), so the files are written once.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crossenc.config import OutputConfig, StorageConfig
from crossenc.output.commit import Manifest
from crossenc.output.committers import committer_for
from crossenc.output.parts import PartStats, new_run_id, part_file_name
from crossenc.storage import resolve

ROWS_PER_FILE = 10


def _file_bytes(dt: str) -> bytes:
    n = ROWS_PER_FILE
    table = pa.table(
        {
            "pair_id": pa.array(np.arange(n)),
            "score": pa.array(np.linspace(0, 1, n), pa.float32()),
            "truncated": pa.array([False] * n),
            "dt": pa.array([dt] * n),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def fabricate(out: OutputConfig, run_id: str, files: int, dt: str) -> list[PartStats]:
    """``files`` data files of one run under output.path, and their parts."""
    loc = resolve(out.path, out.storage)
    data = _file_bytes(dt)
    loc.fs.makedirs(loc.path, exist_ok=True)
    paths = [loc.join(part_file_name(run_id, "w0", i)) for i in range(files)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: loc.fs.pipe_file(p, data), paths))
    return [
        PartStats(
            input_file=f"in/{i}.parquet",
            file=path,
            rows=ROWS_PER_FILE,
            dead_file=None,
            dead_rows=0,
            dropped_rows=0,
            run_id=run_id,
            ranges=json.dumps([[0, ROWS_PER_FILE]]),
            input_rows=ROWS_PER_FILE,
            file_bytes=len(data),
        )
        for i, path in enumerate(paths)
    ]


def _manifest(run_id: str, files: int) -> Manifest:
    rows = files * ROWS_PER_FILE
    inputs = [{"path": f"in/{i}.parquet", "rows": ROWS_PER_FILE} for i in range(files)]
    model = {"name": "bench", "weights_sha256": "0" * 64}
    return Manifest(run_id, [], [], inputs, [], rows, rows, 0, 0, model, "bench", {}, "bench")


def one_table(section: dict[str, Any], parts: dict[str, list[PartStats]]) -> dict[str, Any]:
    """prepare + commit of the first run (creating the table), then of a second run."""
    row: dict[str, Any] = {}
    for night, dt in enumerate(("2026-11-27", "2026-11-28"), start=1):
        out = OutputConfig.model_validate({**section, "partition_value": {"dt": dt}})
        committer = committer_for(out)
        run_parts = parts[dt]
        started = time.perf_counter()
        base, _ = committer.prepare()
        prepared = time.perf_counter()
        committer.commit(_manifest(run_parts[0].run_id, len(run_parts)), run_parts, base)
        done = time.perf_counter()
        row[f"run{night}_prepare_s"] = round(prepared - started, 3)
        row[f"run{night}_commit_s"] = round(done - prepared, 3)
        row[f"run{night}_commit_ms_per_file"] = round(1000 * (done - prepared) / len(run_parts), 4)
    files = committer.live_files()  # type: ignore[attr-defined]
    expected = sum(len(p) for p in parts.values())
    if len(files) != expected:
        raise AssertionError(f"{section['format']}: {len(files)} files in the table, {expected}")
    row["table_files"] = len(files)
    return row


def moto_process() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in a process of its own (deltalake holds the GIL in some calls)."""
    from tests.conftest import free_port

    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            return proc, url
        time.sleep(0.1)
    raise RuntimeError("moto_server did not start")


def tables(args: Any) -> dict[str, Any]:
    """Every (store, size): the Delta and the Iceberg table over the same fabricated files."""
    import logging

    import s3fs

    from bench.machine import cpu_model

    logging.disable(logging.WARNING)
    proc, endpoint = moto_process()
    storage = StorageConfig(endpoint_url=endpoint, key="bench", secret="bench")
    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "store_s3": "moto server on loopback, in its own process",
        "rows_per_file": ROWS_PER_FILE,
        "what": "driver time of prepare (table state, history) and commit (one table commit "
        "adding every file, with crossenc metadata): run 1 creates the table, run 2 appends as "
        "many files in a second partition",
        "cells": [],
    }
    try:
        for store in args.stores:
            for files in args.files:
                if store == "s3":
                    bucket = f"tables-{uuid.uuid4().hex[:8]}"
                    s3fs.S3FileSystem(**storage.s3fs_kwargs()).mkdir(bucket)
                    path, extra = f"s3://{bucket}/t", {"storage": storage}
                    catalog = {"uri": os.path.join(args.work, f"{bucket}.db")}
                else:
                    path, extra = os.path.join(args.work, f"t{files}"), {}
                    catalog = {}
                started = time.perf_counter()
                base = OutputConfig.model_validate({"path": path, **extra})
                parts = {
                    dt: fabricate(base, new_run_id(), files, dt)
                    for dt in ("2026-11-27", "2026-11-28")
                }
                written = time.perf_counter() - started
                for fmt in ("delta", "iceberg"):
                    section = {
                        "path": path,
                        "format": fmt,
                        "partition_by": ["dt"],
                        **extra,
                    } | ({"table": "bench.scores", "catalog": catalog} if fmt == "iceberg" else {})
                    row = {"store": store, "format": fmt, "files": files}
                    row |= one_table(section, parts)
                    row["fabricate_s"] = round(written, 2)
                    print(json.dumps(row), file=sys.stderr)
                    results["cells"].append(row)
                if store == "local":
                    shutil.rmtree(path, ignore_errors=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return results
