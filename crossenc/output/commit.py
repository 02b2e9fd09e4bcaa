"""The Parquet folder's commit protocol: one conditional write makes a run the committed one.

Data files are written once, under run-unique final names, while the run scores
(:mod:`crossenc.output.writer`); the driver journals them (:mod:`crossenc.output.journal`).
Committing moves nothing. It is, in order:

1. ``_commits/<generation>.json``, the full manifest, created only if absent (S3 conditional
   write ``If-None-Match: *``; an exclusive link on local disk). Generation = the latest one
   when the run started, plus one. This is the commit point: of two runs that started from the
   same state, exactly one creates it; the other stops (:class:`ConcurrentRunError`), removes
   its own files and commits nothing.
2. ``_SUCCESS`` removed if it names an older run, then ``_manifest.json`` and
   ``_summary.json`` written, then ``_SUCCESS`` (the run id), for readers.
3. Cleanup: files of the replaced run, of older killed or outrun runs, and their staging
   folders, removed in bulk (one request per 1,000 objects on S3).

A driver killed after step 1 left a committed run: the next command on the output rolls it
forward (steps 2 and 3) before anything else. Every step costs a constant number of requests,
plus one bulk delete per 1,000 files removed: no request per part.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from crossenc.config import ConfigError, OutputConfig
from crossenc.errors import ConcurrentRunError, output_errors
from crossenc.mining.negatives import FOLDER as MINED_FOLDER
from crossenc.output.journal import read_journal
from crossenc.output.parts import PartStats, run_of
from crossenc.storage import Location, resolve
from crossenc.testing.failpoints import failpoint

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
SUMMARY = "_summary.json"  # the run summary, also in the manifest's "summary"
SUCCESS = "_SUCCESS"
STAGING = "_temporary"
RUN_RECORD = "_run.json"
COMMITS = "_commits"
LAYOUT = "crossenc-folder/2"  # data files under final names, commit records in _commits/


@dataclass
class RunRecord:
    """What a run stages before it writes anything: who it is, what it scores, and the commit
    generation it started from."""

    run_id: str
    config_hash: str
    model: dict[str, Any]
    base_generation: int = 0  # a table: its version when the run started (-1: no table yet)
    partition: dict[str, str] = field(default_factory=dict)  # output.partition_value


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
    generation: int = 0
    layout: str = LAYOUT
    scoring_key: str = ""  # output.incremental: runs with the same key share scores
    scoring_keys: dict[str, str] = field(default_factory=dict)  # several models: each one's
    rows_reused: int = 0  # rows whose scores were copied from earlier runs
    rows_skipped_reused: int = 0  # of those, not written (output.incremental skip)
    # the versions of the packages that made the scores (crossenc.versions.stack_versions):
    # not in the scoring key; output.incremental checks stored scores made under others
    stack: dict[str, str] = field(default_factory=dict)


def staging_dir(loc: Location, run_id: str) -> str:
    """Where one run keeps its record and journal."""
    return loc.join(STAGING, run_id)


def _write_json(loc: Location, path: str, data: dict[str, Any], indent: int | None = None) -> None:
    loc.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    loc.fs.pipe_file(path, json.dumps(data, indent=indent, sort_keys=True).encode())


def _read_json(loc: Location, path: str) -> dict[str, Any] | None:
    try:
        return json.loads(loc.fs.cat_file(path))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def exclusive_create(loc: Location, path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` only if nothing is there; True when this call did.

    Local disk: the bytes go to a temporary file first, then a hard link to ``path``, which
    fails if it exists, so no reader ever sees a half-written record. S3: a PUT with
    ``If-None-Match: *``. A retried PUT whose first attempt landed also finds the object there:
    callers compare its content with their own.
    """
    loc.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if isinstance(loc.fs, LocalFileSystem):
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True
    try:
        loc.fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    return True


def _commit_path(loc: Location, generation: int) -> str:
    return loc.join(COMMITS, f"{generation:012d}.json")


def _generations(loc: Location) -> list[int]:
    folder = loc.join(COMMITS)
    loc.fs.invalidate_cache(folder)
    try:
        names = loc.fs.ls(folder, detail=False)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        stem = name.rstrip("/").rsplit("/", 1)[-1]
        if stem.endswith(".json") and stem[:-5].isdigit():
            out.append(int(stem[:-5]))
    return sorted(out)


@output_errors
def latest_commit(out: OutputConfig) -> tuple[int, dict[str, Any] | None]:
    """(generation, manifest) of the run committed last at the output path; (0, None) when
    none is. Output of crossenc before commit records (``_SUCCESS`` + ``_manifest.json``)
    reads as generation 0."""
    loc = resolve(out.path, out.storage)
    generations = _generations(loc)
    if generations:
        manifest = _read_json(loc, _commit_path(loc, generations[-1]))
        if manifest is None:
            raise ConfigError(f"{out.path}: commit record {generations[-1]} cannot be read")
        return generations[-1], manifest
    if loc.fs.exists(loc.join(SUCCESS)):
        return 0, _read_json(loc, loc.join(MANIFEST))
    return 0, None


def read_manifest(out: OutputConfig) -> dict[str, Any] | None:
    """The committed manifest at the output path, or None when nothing is committed there."""
    return latest_commit(out)[1]


def check_output_mode(out: OutputConfig, committed: dict[str, Any] | None) -> None:
    """Refuse to run over committed output when output.mode is ``error``."""
    if out.mode == "error" and committed is not None:
        raise ConfigError(
            f"output.path {out.path} already holds a committed run ({committed['run_id']}); "
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


@output_errors
def write_run_record(out: OutputConfig, record: RunRecord) -> None:
    """Record the run's identity in its staging folder before any part is written."""
    loc = resolve(out.path, out.storage)
    _write_json(loc, f"{staging_dir(loc, record.run_id)}/{RUN_RECORD}", asdict(record))


@output_errors
def staged_runs(out: OutputConfig) -> list[str]:
    """Run ids with a staging folder at the output path (interrupted or in-flight runs)."""
    loc = resolve(out.path, out.storage)
    root = loc.join(STAGING)
    if not isinstance(loc.fs, LocalFileSystem):
        # Delimited listings of the prefix: s3fs's ls of an empty prefix lists the parent
        # instead (the whole output folder: a request per 1,000 data files of a table).
        bucket, _, prefix = root.partition("/")
        names: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = loc.fs.call_s3(
                "list_objects_v2", Bucket=bucket, Prefix=prefix + "/", Delimiter="/", **token
            )
            names += [
                c["Prefix"].rstrip("/").rsplit("/", 1)[1] for c in page.get("CommonPrefixes", [])
            ]
            if not page.get("IsTruncated"):
                return sorted(names)
            token = {"ContinuationToken": page["NextContinuationToken"]}
    loc.fs.invalidate_cache(root)
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[1] for p in loc.fs.ls(root, detail=False))
    except FileNotFoundError:
        return []


@output_errors
def staged_parts(out: OutputConfig, record: RunRecord, after: str | None = None) -> list[PartStats]:
    """Every part that earlier, uncommitted runs (started after run ``after``, the committed
    one, when given) journaled, for a resume to take over.

    Each run's record and journal are read in parallel: O(runs) listings and O(journal
    objects) reads, never one per part. A run that differs in model or scoring config is
    refused (ConfigError); a folder with per-part sidecars but no journal is an interrupted
    run of crossenc before 0.2, which cannot be resumed.
    """
    loc = resolve(out.path, out.storage)
    runs = [r for r in staged_runs(out) if r != record.run_id and (after is None or r > after)]

    def read(run_id: str) -> list[PartStats]:
        staging = staging_dir(loc, run_id)
        previous = _read_json(loc, f"{staging}/{RUN_RECORD}")
        if previous is None:
            return []  # the run died before recording itself: it wrote nothing usable
        if previous.get("partition", {}) != record.partition:
            return []  # a run of another partition of the same table: not this run's to take
        check_same_run(previous, record, f"run {run_id}")
        if "base_generation" not in previous and loc.fs.exists(f"{staging}/parts"):
            raise ConfigError(
                f"run {run_id} at {out.path} was staged by an earlier crossenc (parts moved at "
                "commit): finish it with that version, or start again with output.mode=overwrite"
            )
        return read_journal(loc, staging)

    with ThreadPoolExecutor(max_workers=16) as pool:
        return [p for parts in pool.map(read, runs) for p in parts]


def manifest_files(parts: Iterable[PartStats]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The manifest's data and dead-letter file lists, from the parts (one entry per file)."""
    files: dict[str, dict[str, Any]] = {}
    dead: dict[str, dict[str, Any]] = {}
    by_file: dict[str, list[str]] = defaultdict(list)
    by_dead: dict[str, list[str]] = defaultdict(list)
    for p in parts:
        if p.file:
            entry = files.setdefault(p.file, {"path": p.file.rsplit("/", 1)[1], "rows": 0})
            entry["rows"] += p.rows
            by_file[p.file].append(p.input_file)
        if p.dead_file:
            entry = dead.setdefault(p.dead_file, {"path": p.dead_file, "rows": 0})
            entry["rows"] += p.dead_rows
            by_dead[p.dead_file].append(p.input_file)
    for path, entry in files.items():
        entry["input_files"] = sorted(set(by_file[path]))
    for path, entry in dead.items():
        entry["input_files"] = sorted(set(by_dead[path]))
    return (
        sorted(files.values(), key=lambda f: f["path"]),
        sorted(dead.values(), key=lambda f: f["path"]),
    )


def outrun(out: OutputConfig, winner: str, mine: str) -> ConcurrentRunError:
    """The error of a run that another run's commit overtook."""
    return ConcurrentRunError(
        f"another run ({winner}) committed to {out.path} while this run ({mine}) was scoring; "
        "nothing of this run was committed and its files were removed. The output holds that "
        "run's result"
    )


@output_errors
def check_not_outrun(
    out: OutputConfig, base: int, run_id: str, parts: Iterable[PartStats] = ()
) -> None:
    """Raise ConcurrentRunError, having removed this run's ``parts`` and staging, when a run
    committed since generation ``base`` (a run that started from it can then no longer commit,
    and that commit's cleanup may have removed this run's files mid-write)."""
    generation, latest = latest_commit(out)
    if generation > base and latest is not None and latest["run_id"] != run_id:
        loc = resolve(out.path, out.storage)
        kept = {loc.join(f["path"]) for f in latest.get("files", [])}
        mine = {p.file for p in parts if p.file and p.run_id == run_id} - kept
        _remove(loc, sorted(mine))
        _remove_tree(loc, staging_dir(loc, run_id))
        raise outrun(out, latest["run_id"], run_id)


@output_errors
def commit(out: OutputConfig, manifest: Manifest, parts: Iterable[PartStats], base: int) -> float:
    """Commit the run: its commit record (the commit point), then the files readers look for,
    then cleanup; returns the time.monotonic() at which ``_SUCCESS`` was written. Raises
    ConcurrentRunError, having removed this run's files, when another run committed first."""
    loc = resolve(out.path, out.storage)
    parts = list(parts)
    manifest.files, manifest.dead_letter_files = manifest_files(parts)
    manifest.generation = base + 1
    data = json.dumps(asdict(manifest), indent=1, sort_keys=True).encode()
    failpoint("commit.before_record")
    path = _commit_path(loc, manifest.generation)
    if not exclusive_create(loc, path, data):
        winner = _read_json(loc, path) or {}
        if winner.get("run_id") != manifest.run_id:  # not our own retried write
            mine = {p.file for p in parts if p.file and p.run_id == manifest.run_id}
            mine |= {p.dead_file for p in parts if p.dead_file and p.run_id == manifest.run_id}
            # A resume that won may have taken over some of them: those stay.
            mine -= {loc.join(f["path"]) for f in winner.get("files", [])}
            mine -= {f["path"] for f in winner.get("dead_letter_files", [])}
            _remove(loc, sorted(mine))
            _remove_tree(loc, staging_dir(loc, manifest.run_id))
            raise outrun(out, winner.get("run_id", "?"), manifest.run_id)
    failpoint("commit.after_record")
    previous = _manifest_at(loc, base) if base else _legacy_manifest(loc)
    return finish_commit(out, asdict(manifest), previous)


def _manifest_at(loc: Location, generation: int) -> dict[str, Any] | None:
    return _read_json(loc, _commit_path(loc, generation))


def _legacy_manifest(loc: Location) -> dict[str, Any] | None:
    if loc.fs.exists(loc.join(SUCCESS)):
        return _read_json(loc, loc.join(MANIFEST))
    return None


@output_errors
def finish_commit(
    out: OutputConfig, manifest: dict[str, Any], previous: dict[str, Any] | None
) -> float:
    """Steps 2 and 3 of a commit whose record exists: readers' files, then cleanup; returns
    the time.monotonic() at which ``_SUCCESS`` was in place."""
    loc = resolve(out.path, out.storage)
    success = loc.join(SUCCESS)
    current = None
    with contextlib.suppress(FileNotFoundError):
        current = loc.fs.cat_file(success).decode().strip()
    if current != manifest["run_id"]:
        if current is not None:
            loc.fs.rm(success)  # readers stop trusting the old run first
        failpoint("commit.after_unset")
        _write_json(loc, loc.join(MANIFEST), manifest, indent=1)
        failpoint("commit.after_manifest")
        _write_json(loc, loc.join(SUMMARY), manifest.get("summary", {}), indent=1)
        loc.fs.pipe_file(success, (manifest["run_id"] + "\n").encode())
    done = time.monotonic()
    failpoint("commit.after_success")
    cleanup(out, manifest, previous)
    return done


@output_errors
def write_summary(out: OutputConfig, summary: dict[str, Any]) -> None:
    """Rewrite ``_summary.json`` once the commit has finished (its phases are then known)."""
    loc = resolve(out.path, out.storage)
    _write_json(loc, loc.join(SUMMARY), summary, indent=1)


@output_errors
def roll_forward(out: OutputConfig) -> tuple[int, dict[str, Any] | None]:
    """Finish a commit that a killed driver left after its commit point; returns
    :func:`latest_commit`. A committed run whose readers' files are in place is left as is."""
    generation, manifest = latest_commit(out)
    if manifest is None or generation == 0:
        return generation, manifest
    loc = resolve(out.path, out.storage)
    current = None
    with contextlib.suppress(FileNotFoundError):
        current = loc.fs.cat_file(loc.join(SUCCESS)).decode().strip()
    if current != manifest["run_id"] or staged_runs(out):
        if current != manifest["run_id"]:
            log.warning(
                "%s: run %s was committed (generation %d) but its commit did not finish: "
                "finishing it",
                out.path,
                manifest["run_id"],
                generation,
            )
        previous = _manifest_at(loc, generation - 1) if generation > 1 else None
        finish_commit(out, manifest, previous)
    return generation, manifest


def _remove(loc: Location, paths: list[str]) -> None:
    if not paths:
        return
    if isinstance(loc.fs, LocalFileSystem):
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    else:
        loc.fs.rm(paths)  # bulk DeleteObjects, 1,000 keys a request; missing keys are no error


def _remove_tree(loc: Location, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        loc.fs.rm(path, recursive=True)


def _listing(loc: Location) -> list[str]:
    loc.fs.invalidate_cache(loc.path)
    try:
        return loc.fs.ls(loc.path, detail=False)
    except FileNotFoundError:
        return []


def remove_stale_twins(
    loc: Location, keep: set[str], mine: str, runs: set[str] | None = None
) -> None:
    """task mine's ``_mined/`` folder under ``loc``: remove the twins of data files the commit
    of run ``mine`` does not keep (``keep``: paths) of the runs in ``runs`` (None: every run
    that started no later than ``mine``): a killed writer's, a replaced run's."""
    folder = Location(loc.uri, loc.fs, loc.join(MINED_FOLDER))
    kept = {p.rsplit("/", 1)[-1] for p in keep}
    stale = []
    for path in _listing(folder):
        name = path.rsplit("/", 1)[-1]
        run = run_of(name)
        if run is None or name in kept:
            continue
        if (runs is None and run <= mine) or (runs is not None and run in runs):
            stale.append(path)
    _remove(folder, stale)


@output_errors
def cleanup(out: OutputConfig, manifest: dict[str, Any], previous: dict[str, Any] | None) -> None:
    """Remove what the committed run replaced: the previous run's files, files of runs that
    started no later than it and are not in its manifest (killed, outrun), and staging folders
    of those runs. Files of a run that started later (it may still commit) are left alone."""
    loc = resolve(out.path, out.storage)
    dead = resolve(out.dead_letter_path(), out.storage)
    mine = manifest["run_id"]
    keep = {loc.join(f["path"]) for f in manifest["files"]}
    keep_dead = {f["path"] for f in manifest["dead_letter_files"]}
    doomed: list[str] = []
    doomed_dead: list[str] = []
    if previous is not None:
        doomed += [loc.join(f["path"]) for f in previous.get("files", [])]
        doomed_dead += [f["path"] for f in previous.get("dead_letter_files", [])]
    staged = staged_runs(out)
    # The dead-letter folder may be shared with other outputs (output.dead_letter): there,
    # only files of runs of this output are removed.
    ours = {mine, *manifest.get("resumed_from", []), *staged}
    if previous is not None:
        ours.add(previous["run_id"])
    for folder, bucket, only in ((loc, doomed, None), (dead, doomed_dead, ours)):
        for path in _listing(folder):
            name = path.rsplit("/", 1)[-1]
            run = run_of(name.removeprefix(".").removesuffix(".inprogress"))
            if run is not None and run <= mine and (only is None or run in only):
                bucket.append(path)
    _remove(loc, sorted({p for p in doomed if p not in keep and p != loc.join(MANIFEST)}))
    remove_stale_twins(loc, keep, mine)
    _remove(dead, sorted({p for p in doomed_dead if p not in keep_dead}))
    for run in staged:
        if run <= mine:
            _remove_tree(loc, staging_dir(loc, run))
    if isinstance(loc.fs, LocalFileSystem):  # object stores have no folders to remove
        with contextlib.suppress(OSError):
            os.rmdir(loc.join(STAGING))  # only when empty: a later run may be staging there
