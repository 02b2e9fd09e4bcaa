"""Writing and committing output: parts are staged, then published with a manifest and _SUCCESS.

Readers never see a partial run. Every part is first written under
``<output>/_temporary/<run_id>/`` (Parquet readers skip ``_``-prefixed paths). Each part holds
rows of exactly one input file, and a small JSON sidecar written *after* the part says how many
rows of that file it accounts for. Only when every input row is accounted for are the parts
moved into place, followed by ``_manifest.json`` and, last, the ``_SUCCESS`` marker.

Object stores have no atomic rename, so the guarantee is the one Hadoop's manifest committers
give: the manifest is the truth. A reader that waits for ``_SUCCESS`` and reads the files the
manifest lists sees exactly one complete run; a listing of the folder during a commit may show
a mix. Resume works from the sidecars: an input file is done when the parts of one earlier run cover
its rows (positions 0..n-1, n from the Parquet footer) exactly once; the rest is scored again.
The bookkeeping is one record per (block, input file) holding the row ranges it covers, never
one per row.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crossenc.config import ConfigError, OutputConfig
from crossenc.postprocess import DROPPED, LABEL, RANK, SCORE
from crossenc.storage import Location, resolve
from crossenc.summary import METRIC_COLUMNS, part_metrics
from crossenc.tokenize import ERROR, IDS, ROW, SOURCE, TRUNCATED, TYPE_IDS

MANIFEST = "_manifest.json"
SUMMARY = "_summary.json"  # the run summary, also in the manifest's "summary"
SUCCESS = "_SUCCESS"
STAGING = "_temporary"
RUN_RECORD = "_run.json"
INTERNAL = (ERROR, DROPPED, IDS, TYPE_IDS, SOURCE, ROW, *METRIC_COLUMNS)


@dataclass
class PartStats:
    """What one written part contributed, for one input file."""

    input_file: str
    file: str | None
    rows: int
    dead_file: str | None
    dead_rows: int
    dropped_rows: int
    run_id: str = ""
    ranges: str = "[]"  # JSON [[start, end), ...] of the input file's rows this part holds
    metrics: str = "{}"  # JSON crossenc.summary.part_metrics record

    @property
    def accounted(self) -> int:
        """Input rows this part accounts for."""
        return self.rows + self.dead_rows + self.dropped_rows


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
    ]
)


def row_ranges(rows: np.ndarray) -> list[list[int]]:
    """Sorted row positions as maximal [start, end) runs."""
    if len(rows) == 0:
        return []
    rows = np.sort(rows)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    return [[int(rows[a]), int(rows[b - 1]) + 1] for a, b in zip(starts, ends, strict=True)]


def covers_exactly(parts: list[PartStats], rows: int) -> bool:
    """True when the parts' row ranges tile [0, rows) with no gap and no overlap."""
    ranges = sorted(r for p in parts for r in json.loads(p.ranges))
    position = 0
    for start, end in ranges:
        if start != position:
            return False
        position = end
    return position == rows


def new_run_id() -> str:
    """A sortable, unique id for one run."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def staging_dir(loc: Location, run_id: str) -> str:
    """Where one run stages its parts."""
    return loc.join(STAGING, run_id)


def _write_table(loc: Location, table: pa.Table, path: str) -> None:
    loc.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    pq.write_table(table, path, filesystem=loc.arrow_fs)


def _write_json(loc: Location, path: str, data: dict[str, Any], indent: int | None = None) -> None:
    loc.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with loc.fs.open(path, "w") as f:
        json.dump(data, f, indent=indent, sort_keys=True)


def _write_source_part(loc: Location, staging: str, run_id: str, rows: pa.Table) -> PartStats:
    source = rows.column(SOURCE)[0].as_py()
    bad_mask = pc.is_valid(rows.column(ERROR))
    dropped = (
        rows.column(DROPPED) if DROPPED in rows.column_names else pa.array([False] * rows.num_rows)
    )
    good_mask = pc.and_(pc.invert(bad_mask), pc.invert(dropped))
    name = f"part-{uuid.uuid4().hex}"
    ranges = json.dumps(row_ranges(rows.column(ROW).to_numpy()))
    stats = PartStats(source, None, 0, None, 0, int(pc.sum(dropped).as_py() or 0), run_id, ranges)
    stats.metrics = json.dumps(part_metrics(rows, seed=int(rows.column(ROW)[0].as_py())))
    visible = [c for c in rows.column_names if c not in (*INTERNAL, TRUNCATED)] + [TRUNCATED]
    good = rows.filter(good_mask).select(visible)
    if good.num_rows:
        stats.file, stats.rows = f"{staging}/data/{name}.parquet", good.num_rows
        _write_table(loc, good, stats.file)
    bad = rows.filter(bad_mask)
    if bad.num_rows:
        outputs = (SCORE, LABEL, RANK, TRUNCATED)
        keep = [c for c in visible if c not in outputs and not c.startswith(f"{SCORE}_")]
        bad = bad.select(keep).append_column("reason", bad.column(ERROR))
        stats.dead_file, stats.dead_rows = f"{staging}/dead/{name}.parquet", bad.num_rows
        _write_table(loc, bad, stats.dead_file)
    # The sidecar is written last: its presence means the part's files are complete.
    _write_json(loc, f"{staging}/parts/{name}.json", asdict(stats))
    return stats


def write_part(batch: pa.Table, out: OutputConfig, run_id: str) -> pa.Table:
    """Write a block to staging, one part per input file it holds; return the parts' stats."""
    loc = resolve(out.path, out.storage)
    staging = staging_dir(loc, run_id)
    sources = batch.column(SOURCE)
    stats = []
    for source in pc.unique(sources).to_pylist():
        rows = batch.filter(pc.equal(sources, source))
        stats.append(asdict(_write_source_part(loc, staging, run_id, rows)))
    return pa.Table.from_pylist(stats, schema=PART_SCHEMA)


@dataclass
class RunRecord:
    """What a run stages with its parts, so that a resume can tell whether it may reuse them."""

    run_id: str
    config_hash: str
    model: dict[str, Any]


def write_run_record(out: OutputConfig, record: RunRecord) -> None:
    """Record the run's identity in its staging folder before any part is written."""
    loc = resolve(out.path, out.storage)
    _write_json(loc, f"{staging_dir(loc, record.run_id)}/{RUN_RECORD}", asdict(record))


@dataclass
class Manifest:
    """The record of one committed run."""

    run_id: str
    files: list[dict[str, Any]]
    dead_letter_files: list[dict[str, Any]]
    input_files: list[dict[str, Any]]
    skipped_files: list[dict[str, Any]]
    rows_read: int
    rows_written: int
    rows_dead_lettered: int
    rows_dropped_top_k: int
    model: dict[str, Any]
    config_hash: str
    config: dict[str, Any]
    crossenc_version: str
    resumed_from: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def read_manifest(out: OutputConfig) -> dict[str, Any] | None:
    """The committed manifest at the output path, or None when nothing is committed there."""
    loc = resolve(out.path, out.storage)
    if not loc.fs.exists(loc.join(SUCCESS)):
        return None
    with loc.fs.open(loc.join(MANIFEST), "r") as f:
        return json.load(f)


def check_output_mode(out: OutputConfig) -> None:
    """Refuse to run over committed output when output.mode is ``error``."""
    if out.mode == "error" and read_manifest(out) is not None:
        raise ConfigError(
            f"output.path {out.path} already holds a committed run (_SUCCESS present); "
            "set output.mode=overwrite to replace it, or output.mode=resume"
        )


def check_same_run(previous: dict[str, Any], record: RunRecord, what: str) -> None:
    """Refuse to resume work scored with another model or scoring-relevant config."""
    problems = []
    if previous["model"] != record.model:
        diff = sorted(
            k
            for k in set(previous["model"]) | set(record.model)
            if previous["model"].get(k) != record.model.get(k)
        )
        problems.append(f"model differs in {', '.join(diff)}")
    if previous["config_hash"] != record.config_hash:
        problems.append("the scoring-relevant config (model, activation, task, columns) differs")
    if problems:
        raise ConfigError(
            f"cannot resume {what}: {'; '.join(problems)}. Use output.mode=overwrite to start again"
        )


def _read_json(loc: Location, path: str) -> dict[str, Any] | None:
    try:
        with loc.fs.open(path, "r") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def staged_runs(out: OutputConfig) -> list[str]:
    """Run ids with a staging folder at the output path (interrupted or in-flight runs)."""
    loc = resolve(out.path, out.storage)
    root = loc.join(STAGING)
    if not loc.fs.exists(root):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[1] for p in loc.fs.ls(root, detail=False))


def completed_inputs(
    out: OutputConfig, record: RunRecord, expected_rows: dict[str, int]
) -> dict[str, list[PartStats]]:
    """Input files that earlier, uncommitted runs finished, with the parts that hold them.

    A file counts as finished when the row ranges of one earlier run's parts tile the file
    exactly; a part whose sidecar is missing (cut off mid-write) does not count, and a part
    staged twice (a write retried after its first attempt landed) counts once.
    """
    loc = resolve(out.path, out.storage)
    done: dict[str, list[PartStats]] = {}
    for run_id in staged_runs(out):
        staging = staging_dir(loc, run_id)
        previous = _read_json(loc, f"{staging}/{RUN_RECORD}")
        if previous is None:
            continue  # the run died before recording itself: it staged nothing usable
        check_same_run(previous, record, f"run {run_id}")
        by_file: dict[str, list[PartStats]] = defaultdict(list)
        parts_dir = f"{staging}/parts"
        sidecars = loc.fs.ls(parts_dir, detail=False) if loc.fs.exists(parts_dir) else []
        for path in sidecars:
            data = _read_json(loc, path)
            if data is not None:
                part = PartStats(**data)
                by_file[part.input_file].append(part)
        for source, parts in by_file.items():
            # A retried write stages the same rows twice: keep one part per row range.
            unique = list({p.ranges: p for p in parts}.values())
            if source not in done and covers_exactly(unique, expected_rows.get(source, -1)):
                done[source] = unique
    return done


def _publish(loc: Location, src: str, folder: Location) -> str:
    final = folder.join(src.rsplit("/", 1)[1])
    loc.fs.mv(src, final)
    return final


def commit(out: OutputConfig, manifest: Manifest, parts: Iterable[PartStats]) -> None:
    """Publish staged parts, then the manifest and summary, then _SUCCESS; remove what they
    replace."""
    loc = resolve(out.path, out.storage)
    dead = resolve(out.dead_letter_path(), out.storage)
    previous = read_manifest(out)
    if previous is not None:
        loc.fs.rm(loc.join(SUCCESS))  # readers stop trusting the old run first
    loc.fs.makedirs(loc.path, exist_ok=True)
    files, dead_files = [], []
    for part in parts:
        if part.file:
            final = _publish(loc, part.file, loc)
            files.append(
                {"path": final.rsplit("/", 1)[1], "rows": part.rows, "input_file": part.input_file}
            )
        if part.dead_file:
            dead.fs.makedirs(dead.path, exist_ok=True)
            final = _publish(loc, part.dead_file, dead)
            dead_files.append(
                {"path": final, "rows": part.dead_rows, "input_file": part.input_file}
            )
    manifest.files = sorted(files, key=lambda f: f["path"])
    manifest.dead_letter_files = sorted(dead_files, key=lambda f: f["path"])
    if previous is not None:
        keep = {f["path"] for f in manifest.files}
        for old in previous["files"]:
            if old["path"] not in keep and loc.fs.exists(loc.join(old["path"])):
                loc.fs.rm(loc.join(old["path"]))
        keep_dead = {f["path"] for f in dead_files}
        for old in previous.get("dead_letter_files", []):
            if old["path"] not in keep_dead and loc.fs.exists(old["path"]):
                loc.fs.rm(old["path"])
    _write_json(loc, loc.join(MANIFEST), asdict(manifest), indent=2)
    _write_json(loc, loc.join(SUMMARY), manifest.summary, indent=1)
    with loc.fs.open(loc.join(SUCCESS), "w") as f:
        f.write(manifest.run_id + "\n")
    root = loc.join(STAGING)
    if loc.fs.exists(root):
        loc.fs.rm(root, recursive=True)
