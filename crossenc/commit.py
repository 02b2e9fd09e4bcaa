"""Writing and committing output: parts are staged, then published with a manifest and _SUCCESS.

Readers never see a partial run: every part is first written under
``<output>/_temporary/<run_id>/`` (Parquet readers skip ``_``-prefixed paths), and only when
every row is accounted for are the parts moved into place, followed by ``_manifest.json`` and,
last, the ``_SUCCESS`` marker. A reader that waits for ``_SUCCESS`` and reads the files the
manifest lists sees exactly one complete run.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crossenc.config import ConfigError, OutputConfig
from crossenc.postprocess import DROPPED
from crossenc.storage import Location, resolve
from crossenc.tokenize import ERROR, IDS, TRUNCATED, TYPE_IDS

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
STAGING = "_temporary"
INTERNAL = (ERROR, DROPPED, IDS, TYPE_IDS)


@dataclass
class PartStats:
    """What one written block contributed."""

    file: str | None
    rows: int
    dead_file: str | None
    dead_rows: int
    dropped_rows: int


def new_run_id() -> str:
    """A sortable, unique id for one run."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def _staging(loc: Location, run_id: str) -> str:
    return loc.join(STAGING, run_id)


def write_part(batch: pa.Table, out: OutputConfig, run_id: str) -> pa.Table:
    """Write one block's good rows and dead letters to staging; return its stats as one row."""
    loc = resolve(out.path, out.storage)
    staging = _staging(loc, run_id)
    err = batch.column(ERROR)
    bad_mask = pc.is_valid(err)
    dropped = (
        batch.column(DROPPED)
        if DROPPED in batch.column_names
        else pa.array([False] * batch.num_rows)
    )
    good_mask = pc.and_(pc.invert(bad_mask), pc.invert(dropped))
    name = f"part-{uuid.uuid4().hex}.parquet"
    stats = PartStats(None, 0, None, 0, int(pc.sum(dropped).as_py() or 0))
    visible = [c for c in batch.column_names if c not in (*INTERNAL, TRUNCATED)] + [TRUNCATED]
    good = batch.filter(good_mask).select(visible)
    if good.num_rows:
        stats.file, stats.rows = f"{staging}/data/{name}", good.num_rows
        loc.fs.makedirs(f"{staging}/data", exist_ok=True)
        pq.write_table(good, stats.file, filesystem=loc.arrow_fs)
    bad = batch.filter(bad_mask)
    if bad.num_rows:
        keep = [
            c
            for c in visible
            if c not in ("score", "label", "rank", TRUNCATED) and not c.startswith("score_")
        ]
        bad = bad.select(keep).append_column("reason", bad.column(ERROR))
        stats.dead_file, stats.dead_rows = f"{staging}/dead/{name}", bad.num_rows
        loc.fs.makedirs(f"{staging}/dead", exist_ok=True)
        pq.write_table(bad, stats.dead_file, filesystem=loc.arrow_fs)
    return pa.Table.from_pylist([asdict(stats)], schema=PART_SCHEMA)


PART_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("rows", pa.int64()),
        ("dead_file", pa.string()),
        ("dead_rows", pa.int64()),
        ("dropped_rows", pa.int64()),
    ]
)


@dataclass
class Manifest:
    """The record of one committed run."""

    run_id: str
    files: list[dict[str, Any]]
    dead_letter_files: list[dict[str, Any]]
    input_files: list[dict[str, Any]]
    rows_read: int
    rows_written: int
    rows_dead_lettered: int
    rows_dropped_top_k: int
    model: dict[str, Any]
    config_hash: str
    config: dict[str, Any]
    crossenc_version: str
    summary: dict[str, Any] = field(default_factory=dict)


def read_manifest(out: OutputConfig) -> dict[str, Any] | None:
    """The committed manifest at the output path, or None when nothing is committed there."""
    loc = resolve(out.path, out.storage)
    if not loc.fs.exists(loc.join(SUCCESS)):
        return None
    with loc.fs.open(loc.join(MANIFEST), "r") as f:
        return json.load(f)


def check_output_mode(out: OutputConfig) -> None:
    """Refuse to run over committed output unless output.mode says to replace it."""
    if out.mode == "error" and read_manifest(out) is not None:
        raise ConfigError(
            f"output.path {out.path} already holds a committed run (_SUCCESS present); "
            "set output.mode=overwrite to replace it"
        )


def commit(out: OutputConfig, run_id: str, parts: list[PartStats], manifest: Manifest) -> None:
    """Publish staged parts, then the manifest, then _SUCCESS; remove what they replace."""
    loc = resolve(out.path, out.storage)
    dead = resolve(out.dead_letter_path(), out.storage)
    previous = read_manifest(out)
    if previous is not None:
        loc.fs.rm(loc.join(SUCCESS))  # readers stop trusting the old run first
    files, dead_files = [], []
    loc.fs.makedirs(loc.path, exist_ok=True)
    if any(p.dead_file for p in parts):
        dead.fs.makedirs(dead.path, exist_ok=True)
    for part in parts:
        if part.file:
            final = loc.join(part.file.rsplit("/", 1)[1])
            loc.fs.mv(part.file, final)
            files.append({"path": final.rsplit("/", 1)[1], "rows": part.rows})
        if part.dead_file:
            final = dead.join(part.dead_file.rsplit("/", 1)[1])
            loc.fs.mv(part.dead_file, final)
            dead_files.append({"path": final, "rows": part.dead_rows})
    manifest.files = sorted(files, key=lambda f: f["path"])
    manifest.dead_letter_files = sorted(dead_files, key=lambda f: f["path"])
    if previous is not None:
        keep = {f["path"] for f in manifest.files}
        for old in previous["files"]:
            if old["path"] not in keep and loc.fs.exists(loc.join(old["path"])):
                loc.fs.rm(loc.join(old["path"]))
        for old in previous.get("dead_letter_files", []):
            if loc.fs.exists(old["path"]):
                loc.fs.rm(old["path"])
    with loc.fs.open(loc.join(MANIFEST), "w") as f:
        json.dump(asdict(manifest), f, indent=2, sort_keys=True)
    with loc.fs.open(loc.join(SUCCESS), "w") as f:
        f.write(run_id + "\n")
    staging = _staging(loc, run_id)
    if loc.fs.exists(staging):
        loc.fs.rm(staging, recursive=True)
    root = loc.join(STAGING)
    if loc.fs.exists(root) and not loc.fs.ls(root):
        loc.fs.rm(root, recursive=True)
