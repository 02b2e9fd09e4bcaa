"""Committers: how a run's written files become the committed output, one per output.format.

The pipeline writes data files the same way for every format (:mod:`crossenc.output.writer`,
journaled by :mod:`crossenc.output.journal`), then asks the output's :class:`Committer` to
``prepare`` (roll a killed commit forward, say what is committed), ``check_mode``,
``check_not_outrun`` when scoring failed, and ``commit``. :class:`ParquetCommitter` is the
folder protocol of :mod:`crossenc.output.commit`; :class:`TableCommitter` adds the run's files
to a Delta Lake (:mod:`crossenc.output.delta`) or Iceberg (:mod:`crossenc.output.iceberg`)
table in one table commit whose metadata carries the manifest's facts (run id, model
fingerprint, config hash, counts, summary, dead-letter folder).

Exactly once on a table: files nobody committed are invisible to table readers; before
committing, the commits since the table version the run started from are read: one holding
this run's id means a retried commit that landed (nothing is done), one of another crossenc
run in the same partition (or any, unpartitioned) means two runs raced (the later one stops
with :class:`~crossenc.output.commit.ConcurrentRunError`, exit 7). The table commit itself is
optimistic with no silent retry: a commit that lands between that check and this run's commit
fails it, and the check runs again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from crossenc.config import ConfigError, OutputConfig, StorageConfig
from crossenc.errors import output_errors
from crossenc.output import commit as folder
from crossenc.output.commit import (
    ConcurrentRunError,
    Manifest,
    _remove,
    _remove_tree,
    manifest_files,
    outrun,
    remove_stale_twins,
    staged_runs,
    staging_dir,
)
from crossenc.output.parts import PartStats, run_of
from crossenc.storage import is_remote, resolve
from crossenc.testing.failpoints import failpoint

log = logging.getLogger(__name__)

PREFIX = "crossenc."  # commit metadata keys: crossenc.run_id, crossenc.manifest
RUN_ID = PREFIX + "run_id"
MANIFEST = PREFIX + "manifest"
COMMIT_ATTEMPTS = 10  # table commits that another commit overtook, checked and tried again


class Committer(Protocol):
    """What the pipeline asks of an output format."""

    out: OutputConfig

    def prepare(self) -> tuple[int, dict[str, Any] | None]:
        """Finish what a killed commit left; (base version, manifest of the committed run this
        run's output.mode is checked against, or None)."""
        ...

    def check_mode(self, committed: dict[str, Any] | None) -> None:
        """Refuse output.mode error over committed output (ConfigError)."""
        ...

    def check_not_outrun(self, base: int, run_id: str, parts: Iterable[PartStats]) -> None:
        """Raise ConcurrentRunError (having removed this run's files) when another run
        committed over this one's output since ``base``."""
        ...

    def commit(self, manifest: Manifest, parts: Iterable[PartStats], base: int) -> float:
        """Commit the run; returns the time.monotonic() at which readers see it."""
        ...

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Record the final summary (phases included) once committed, where the format can."""
        ...

    def history(self) -> list[dict[str, Any]]:
        """The committed crossenc runs, oldest first (see :func:`history_row`)."""
        ...

    def runs(
        self, version: int | None = None, partition: dict[str, str] | None = None
    ) -> list[CommittedRun]:
        """The committed crossenc runs whose data files are still live, oldest first (at
        ``version`` / of ``partition`` only, when given): output.incremental's sources."""
        ...


@dataclass
class CommittedRun:
    """A committed run and the data files of it that the output still holds."""

    run_id: str
    manifest: dict[str, Any]
    files: list[str]  # URIs: a local path or s3://bucket/key


def plain_uri(uri: str) -> str:
    """A table's file URI as crossenc names files: file:///a/b -> /a/b (s3:// stays)."""
    return uri[len("file://") :] if uri.startswith("file://") else uri


def history_row(
    version: int, timestamp_ms: int | None, manifest: dict[str, Any], operation: str = ""
) -> dict[str, Any]:
    """One run of ``crossenc history``: where it sits in the output and what it wrote."""
    return {
        "version": version,
        "time": (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp_ms / 1000))
            if timestamp_ms
            else ""
        ),
        "run_id": manifest.get("run_id", ""),
        "operation": operation or manifest.get("write_mode", ""),
        "partition": manifest.get("partition", {}),
        "rows_written": manifest.get("rows_written"),
        "rows_dead_lettered": manifest.get("rows_dead_lettered"),
        "model": manifest.get("model", {}).get("name", ""),
        "weights_sha256": str(manifest.get("model", {}).get("weights_sha256", ""))[:12],
        "config_hash": manifest.get("config_hash", ""),
        "dead_letter": manifest.get("dead_letter", ""),
    }


class ParquetCommitter:
    """The Parquet folder: manifest, ``_commits/`` record, ``_SUCCESS``
    (:mod:`crossenc.output.commit`)."""

    def __init__(self, out: OutputConfig) -> None:
        self.out = out

    def prepare(self) -> tuple[int, dict[str, Any] | None]:
        """See :func:`crossenc.output.commit.roll_forward`."""
        return folder.roll_forward(self.out)

    def check_mode(self, committed: dict[str, Any] | None) -> None:
        """See :func:`crossenc.output.commit.check_output_mode`."""
        folder.check_output_mode(self.out, committed)

    def check_not_outrun(self, base: int, run_id: str, parts: Iterable[PartStats]) -> None:
        """See :func:`crossenc.output.commit.check_not_outrun`."""
        folder.check_not_outrun(self.out, base, run_id, parts)

    def commit(self, manifest: Manifest, parts: Iterable[PartStats], base: int) -> float:
        """See :func:`crossenc.output.commit.commit`."""
        return folder.commit(self.out, manifest, parts, base)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Rewrite ``_summary.json``."""
        folder.write_summary(self.out, summary)

    @output_errors
    def runs(
        self, version: int | None = None, partition: dict[str, str] | None = None
    ) -> list[CommittedRun]:
        """The committed run, the only one a folder holds (``version`` / ``partition`` name a
        table's runs: ConfigError)."""
        if version is not None or partition is not None:
            raise ConfigError(
                f"{self.out.path} is a Parquet folder: it holds one run, with no @version or "
                "#partition to choose"
            )
        manifest = folder.read_manifest(self.out)
        if manifest is None:
            return []
        root = self.out.path.rstrip("/")
        files = [f"{root}/{f['path']}" for f in manifest.get("files", [])]
        return [CommittedRun(manifest["run_id"], manifest, files)]

    @output_errors
    def history(self) -> list[dict[str, Any]]:
        """Every commit record in ``_commits/`` (the folder holds only the latest run's
        files; the records of the runs it replaced stay)."""
        loc = resolve(self.out.path, self.out.storage)
        generations = folder._generations(loc)
        with ThreadPoolExecutor(16) as pool:
            records = pool.map(lambda g: folder._manifest_at(loc, g) or {}, generations)
            return [
                history_row(g, None, m, "overwrite" if g > 1 else "create")
                for g, m in zip(generations, records, strict=True)
            ]


@dataclass
class TableCommit:
    """One commit of a table, as crossenc reads it back."""

    version: int
    timestamp_ms: int | None
    operation: str
    properties: dict[str, str] = field(default_factory=dict)  # the crossenc.* metadata

    @property
    def run_id(self) -> str | None:
        """The crossenc run that made this commit, None for another writer's."""
        return self.properties.get(RUN_ID)

    def manifest(self) -> dict[str, Any]:
        """The compact manifest this commit carries ({} for another writer's commit)."""
        raw = self.properties.get(MANIFEST)
        return json.loads(raw) if raw else {}


@dataclass
class DataFile:
    """A data file to add to a table."""

    path: str  # on the output's filesystem (Location.path based)
    name: str  # relative to output.path
    rows: int
    size: int


class TableConflictError(RuntimeError):
    """The table moved on between the check and the commit: check again."""


class TableCommitter(ABC):
    """The protocol of :class:`Committer` for a table; subclasses speak the table format."""

    def __init__(self, out: OutputConfig) -> None:
        self.out = out
        self.loc = resolve(out.path, out.storage)

    # -- what a format provides --------------------------------------------------------------

    @abstractmethod
    def version(self) -> int:
        """The table's current version (Iceberg: sequence number); -1 when no table exists."""

    @abstractmethod
    def load(self) -> Any:
        """The table as it is now (one snapshot of it), None when there is none."""

    @abstractmethod
    def commits_since(self, base: int, table: Any = None) -> list[TableCommit]:
        """The commits of ``table`` (loaded now when None) after version ``base``, oldest
        first ([] without a table)."""

    @abstractmethod
    def write(
        self,
        files: list[DataFile],
        schema: pa.Schema | None,
        overwrite: bool,
        meta: dict[str, str],
        table: Any,
    ) -> None:
        """Add the files in one table commit on top of ``table`` (the state the caller
        checked; None: create the table), replacing this run's partition, or the whole table
        unpartitioned, when ``overwrite``, with ``meta`` as its metadata. Raises
        TableConflictError when any commit landed after that state (or the table was created
        meanwhile)."""

    @abstractmethod
    def live_files(self) -> list[str]:
        """The URIs of the table's current data files."""

    def file_uri(self, path: str) -> str:
        """A data file's URI as the table format records it."""
        return f"s3://{path}" if is_remote(self.out.path) else path

    # -- the protocol ------------------------------------------------------------------------

    def partition_commits(self, commits: Iterable[TableCommit]) -> list[TableCommit]:
        """The crossenc commits of this run's partition (every one, unpartitioned)."""
        mine = self.out.partition_value
        return [c for c in commits if c.run_id and c.manifest().get("partition", {}) == mine]

    @output_errors
    def prepare(self) -> tuple[int, dict[str, Any] | None]:
        """Remove the staging folders of runs that committed but were killed before cleaning
        up; returns the table version and the latest crossenc run of this partition."""
        base = self.version()
        commits = self.commits_since(-1) if base >= 0 else []
        committed = {c.run_id for c in commits if c.run_id}
        for c in commits:
            committed.update(c.manifest().get("resumed_from", []))
        for run in staged_runs(self.out):
            if run in committed:
                log.info(
                    "%s: run %s was committed: removing its staging folder", self.out.path, run
                )
                _remove_tree(self.loc, staging_dir(self.loc, run))
        ours = self.partition_commits(commits)
        return base, (ours[-1].manifest() if ours else None)

    def check_mode(self, committed: dict[str, Any] | None) -> None:
        """output.mode error: refuse when this partition (the table, unpartitioned) holds a
        crossenc run."""
        if self.out.mode == "error" and committed is not None:
            where = f"partition {self.out.partition_value} of " if self.out.partition_value else ""
            raise ConfigError(
                f"{where}output.path {self.out.path} already holds a committed run "
                f"({committed['run_id']}); set output.mode=append to add to it, overwrite to "
                "replace it, or resume"
            )

    def _rival(self, commits: list[TableCommit], run_id: str) -> TableCommit | None:
        return next((c for c in self.partition_commits(commits) if c.run_id != run_id), None)

    def _discard(self, run_id: str, parts: Iterable[PartStats]) -> None:
        """Remove what this run wrote (no table holds it) and its staging folder."""
        mine = {p.file for p in parts if p.file and p.run_id == run_id}
        mine |= {p.dead_file for p in parts if p.dead_file and p.run_id == run_id}
        _remove(self.loc, sorted(mine))
        _remove_tree(self.loc, staging_dir(self.loc, run_id))

    @output_errors
    def check_not_outrun(self, base: int, run_id: str, parts: Iterable[PartStats]) -> None:
        """Another crossenc run committed to this partition since ``base``: this run's files
        are removed and ConcurrentRunError raised."""
        rival = self._rival(self.commits_since(base), run_id)
        if rival is not None:
            self._discard(run_id, parts)
            raise outrun(self.out, rival.run_id or "?", run_id)

    def compact_manifest(self, manifest: Manifest, files: int) -> dict[str, Any]:
        """The manifest's facts for the table commit's metadata: everything but the file
        lists (the table lists the files) and the full config (its hash stays)."""
        data = asdict(manifest)
        for key in ("files", "input_files", "config", "generation", "dead_letter_files"):
            data.pop(key)
        data["layout"] = f"crossenc-{self.out.format}/1"
        data["input_file_count"] = len(manifest.input_files)
        data["file_count"] = files
        data["dead_letter"] = self.out.dead_letter_path()
        data["dead_letter_file_count"] = len(manifest.dead_letter_files)
        data["partition"] = dict(self.out.partition_value)
        data["write_mode"] = "overwrite" if self.out.mode == "overwrite" else "append"
        return data

    def _data_files(self, parts: list[PartStats], listed: list[dict[str, Any]]) -> list[DataFile]:
        sizes = {p.file: p.file_bytes for p in parts if p.file and p.file_bytes >= 0}
        files = []
        for entry in listed:
            path = self.loc.join(entry["path"])
            size = sizes.get(path)
            if size is None:  # journaled by a crossenc that did not record sizes
                size = int(self.loc.fs.size(path))
            files.append(DataFile(path, entry["path"], entry["rows"], size))
        return files

    @output_errors
    def commit(self, manifest: Manifest, parts: Iterable[PartStats], base: int) -> float:
        """One table commit adding the run's files (see the module docstring); then this
        run's staging folder and the leftovers of the runs it resumed are removed."""
        parts = list(parts)
        listed, manifest.dead_letter_files = manifest_files(parts)
        files = self._data_files(parts, listed)
        meta = {
            RUN_ID: manifest.run_id,
            MANIFEST: json.dumps(self.compact_manifest(manifest, len(files)), sort_keys=True),
        }
        schema = None
        if files:
            with self.loc.fs.open(files[0].path, "rb") as f:
                schema = pq.read_schema(f)
        failpoint("table.before_commit")
        for _ in range(COMMIT_ATTEMPTS):
            table = self.load()  # the check and the commit see this same state
            since = self.commits_since(base, table)
            if any(c.run_id == manifest.run_id for c in since):
                log.info("run %s is already committed to %s", manifest.run_id, self.out.path)
                break  # a retried commit whose first attempt landed
            rival = self._rival(since, manifest.run_id)
            if rival is not None:
                self._discard(manifest.run_id, parts)
                raise outrun(self.out, rival.run_id or "?", manifest.run_id)
            try:
                self.write(files, schema, self.out.mode == "overwrite", meta, table)
                break
            except TableConflictError as err:
                log.info("%s: %s; checking the table again", self.out.path, err)
        else:  # other writers (compaction, another engine) kept committing first
            self._discard(manifest.run_id, parts)
            raise ConcurrentRunError(
                f"{self.out.path}: this run's table commit was overtaken {COMMIT_ATTEMPTS} times "
                f"by other commits; nothing of run {manifest.run_id} was committed and its files "
                "were removed"
            )
        done = time.monotonic()
        failpoint("table.after_commit")
        self._cleanup(manifest, {f.path for f in files})
        return done

    def _cleanup(self, manifest: Manifest, kept: set[str]) -> None:
        """Remove this run's staging, and the staging and unkept files of the runs it took
        over (their kept files are in the table now). Files of runs killed and never resumed
        stay, invisible to table readers, until the table's own vacuum / orphan-file removal
        (or a Parquet-style cleanup) removes them."""
        resumed = set(manifest.resumed_from)
        if resumed:
            loc = self.loc
            loc.fs.invalidate_cache(loc.path)
            with contextlib.suppress(FileNotFoundError):
                leftovers = [
                    p
                    for p in loc.fs.ls(loc.path, detail=False)
                    if run_of(p.rsplit("/", 1)[-1]) in resumed and p not in kept
                ]
                _remove(loc, sorted(leftovers))
        remove_stale_twins(self.loc, kept, manifest.run_id, resumed | {manifest.run_id})
        for run in sorted(resumed | {manifest.run_id}):
            _remove_tree(self.loc, staging_dir(self.loc, run))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """A table commit's metadata cannot change after the commit: the summary it carries
        is the one of the commit (``phases.commit`` null); the final one is in the log."""
        log.debug("%s: final summary of run %s not recorded", self.out.path, summary.get("run"))

    @output_errors
    def history(self) -> list[dict[str, Any]]:
        """The table's crossenc commits, oldest first."""
        rows: dict[str, dict[str, Any]] = {}
        for c in self.commits_since(-1):
            if c.run_id:  # an Iceberg overwrite is a delete and an append snapshot: one run
                rows[c.run_id] = history_row(c.version, c.timestamp_ms, c.manifest(), c.operation)
        return list(rows.values())

    @output_errors
    def runs(
        self, version: int | None = None, partition: dict[str, str] | None = None
    ) -> list[CommittedRun]:
        """The table's crossenc runs (at ``version``, of ``partition``), oldest first, each with
        its live data files: those whose names carry its run id or that of a run it resumed
        (an overwrite since may have removed some, or all)."""
        commits = [c for c in self.commits_since(-1) if c.run_id]
        if partition is not None:
            commits = [c for c in commits if c.manifest().get("partition", {}) == partition]
        if version is not None:
            commits = [c for c in commits if c.version == version]
        by_run: dict[str, list[str]] = {}
        for uri in self.live_files() if commits else []:
            run = run_of(uri)
            if run is not None:
                by_run.setdefault(run, []).append(plain_uri(uri))
        out: dict[str, CommittedRun] = {}  # an Iceberg overwrite: two snapshots, one run
        for c in commits:
            manifest = c.manifest()
            runs = [c.run_id or "", *manifest.get("resumed_from", [])]
            files = sorted(f for run in runs for f in by_run.get(run, []))
            out[c.run_id or ""] = CommittedRun(c.run_id or "", manifest, files)
        return list(out.values())

    def find(self, version: int | None, partition: dict[str, str] | None) -> dict[str, Any]:
        """The compact manifest of the crossenc commit at ``version`` (the latest one when
        None), among the commits of ``partition`` when given; ConfigError naming the table
        when there is none."""
        commits = [c for c in self.commits_since(-1) if c.run_id]
        if partition is not None:
            commits = [c for c in commits if c.manifest().get("partition", {}) == partition]
        if version is not None:
            commits = [c for c in commits if c.version == version]
        if not commits:
            what = f" at version {version}" if version is not None else ""
            what += f" in partition {partition}" if partition is not None else ""
            raise ConfigError(
                f"output.compare_to {self.out.compare_to or self.out.path}: the table holds no "
                f"crossenc run{what}; remove compare_to for a first run"
            )
        return commits[-1].manifest()


def store_options(storage: StorageConfig, names: dict[str, str]) -> dict[str, str]:
    """The endpoint, credentials, region and anonymity of crossenc's s3fs store, under a table
    library's own option ``names`` (keys: endpoint_url, key, secret, token, region, anon)."""
    options: dict[str, str] = {}
    if storage.endpoint_url:
        options[names["endpoint_url"]] = storage.endpoint_url
    for key in ("key", "secret", "token"):
        value = getattr(storage, key)
        if value is not None:
            options[names[key]] = value.get_secret_value()
    region = storage.region or ("us-east-1" if storage.endpoint_url else None)
    if region:
        options[names["region"]] = region
    if storage.anon:
        options[names["anon"]] = "true"
    return options


DELTA_OPTIONS = {
    "endpoint_url": "AWS_ENDPOINT_URL",
    "key": "AWS_ACCESS_KEY_ID",
    "secret": "AWS_SECRET_ACCESS_KEY",
    "token": "AWS_SESSION_TOKEN",
    "region": "AWS_REGION",
    "anon": "AWS_SKIP_SIGNATURE",
}


def delta_storage_options(storage: StorageConfig) -> dict[str, str]:
    """deltalake's (object_store's) options for the same store as crossenc's s3fs."""
    options = store_options(storage, DELTA_OPTIONS)
    if (storage.endpoint_url or "").startswith("http://"):
        options["AWS_ALLOW_HTTP"] = "true"
    return options


__all__ = [
    "CommittedRun",
    "Committer",
    "DataFile",
    "ParquetCommitter",
    "TableCommit",
    "TableCommitter",
    "TableConflictError",
    "delta_storage_options",
]
