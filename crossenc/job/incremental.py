"""output.incremental: pairs an earlier run of the same scoring key scored are not scored again.

Every row of an incremental run gets a ``pair_hash`` column, BLAKE2b-128 of its two texts
(each UTF-8, prefixed by its byte length, so ``("ab", "c")`` and ``("a", "bc")`` differ), and the
run's manifest (a table's commit metadata) its *scoring key*
(:meth:`crossenc.config.JobConfig.scoring_key`): two runs with the same key give a pair the same
scores. Before scoring, a *match* runs on Ray Data, with no set of hashes on the driver:

1. the input rows still to score are read (their two text columns) and hashed; the data files
   of the earlier runs with this run's key (:func:`earlier_runs`) are read (``pair_hash`` and
   the score columns);
2. both sides are hash-partitioned on ``pair_hash`` (one Ray Data shuffle) and each partition
   is matched with one vectorised lookup: an input row whose hash an earlier run holds takes
   that run's scores (the latest run's, where several do);
3. the matches are shuffled again by input file, and each input file's become one small Parquet
   file in the run's staging folder (its row positions, scores, ``truncated``, windows).

A match of at most :data:`MATCH_ROWS_PER_PARTITION` rows (both sides: one partition's worth)
runs the same three steps in the driver instead, its reads and writes on a thread pool: on a
laptop-sized night the two shuffles cost seconds more than the match itself (9 s of a 10^4-pair
night on 2 cores, against under 1 s in the driver).

Then the job runs as ever, its read tasks taking each row group's matches from that file
(:func:`crossenc.inputs.reuse.reuse_for`): a matched row is not tokenized or scored, its scores
are copied in the scorer stage (``_reused``), and the writer counts it (``skip``: counts it and
writes nothing).
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crossenc.config import ConfigError, JobConfig, OutputConfig, StorageConfig
from crossenc.inputs.reuse import ORDER, PAIR_HASH, REUSE_SCORES, pair_hashes
from crossenc.models.describe import ModelInfo
from crossenc.models.several import named
from crossenc.models.tokenize import ROW, SOURCE, TRUNCATED, WINDOWS
from crossenc.storage import resolve
from crossenc.tasks.base import score_names

log = logging.getLogger(__name__)

SCORING_KEY = "scoring_key"  # the manifest's (a table commit's) key
SCORING_KEYS = "scoring_keys"  # several models: each one's key, by short name
STACK = "stack"  # the manifest's versions of the packages that made its scores
_BUCKET, _SIDE = "_bucket", "_side"
MATCH_ROWS_PER_PARTITION = 2_000_000  # rows (both sides) per partition of the match shuffle
MATCH_IO_THREADS = 16  # a driver-side match's reads and writes at a time (store latency)


def reuse_columns(cfg: JobConfig, info: ModelInfo) -> list[str]:
    """The output columns an earlier run's row gives a reused one: its scores (the task's
    other columns, label and rank, follow from them), ``truncated`` and, chunking, ``windows``."""
    return [*score_names(info), TRUNCATED] + ([WINDOWS] if cfg.model.long_text == "chunk" else [])


# -- the earlier runs ------------------------------------------------------------------------


@dataclass
class EarlierRuns:
    """The runs this one reuses scores from: their data files, each with the run's order
    (later runs win), and what was passed over."""

    runs: list[str] = field(default_factory=list)
    files: list[tuple[str, int]] = field(default_factory=list)  # (path, order)
    rows: int = 0  # rows their files hold (their manifests' counts)
    other_keys: list[str] = field(default_factory=list)  # runs found with another scoring key
    stacks: list[dict[str, str]] = field(default_factory=list)  # per run (order): its stack
    # per run (order): the short name its columns carry the matched model's scores under
    # (score_<name>; "": a lone model's, score)
    names: list[str] = field(default_factory=list)


def model_of(manifest: dict[str, Any], key: str) -> str | None:
    """Under which short name a committed run's files hold the scores of scoring key ``key``:
    "" for a lone model's run with that key, a model's name for a run of several models, None
    when no model of the run has it."""
    if manifest.get(SCORING_KEY) == key:
        return ""
    for name, theirs in (manifest.get(SCORING_KEYS) or {}).items():
        if theirs == key:
            return name
    return None


def earlier_runs(cfg: JobConfig, key: str) -> EarlierRuns:
    """The committed runs output.reuse_from names (this output, when empty) whose scoring key
    is ``key``; unset reuse_from takes the latest such run of this output (incremental true:
    it holds every pair it read) or every one (skip: each holds only its new pairs)."""
    from crossenc.output.committers import committer_at, committer_for

    out = cfg.output
    found: dict[str, tuple[dict[str, Any], list[str], str]] = {}
    other: list[str] = []
    sources = out.reuse_from or [None]
    for ref in sources:
        if ref is None:
            runs = committer_for(out).runs()
        else:
            committer, version, partition = committer_at(out, ref)
            runs = committer.runs(version, partition)
            if not runs:
                raise ConfigError(
                    f"output.reuse_from {ref} holds no committed crossenc run; name the folder "
                    "or table an earlier run wrote (a first night: leave reuse_from out)"
                )
        for run in runs:
            name = model_of(run.manifest, key)
            if name is None:
                other.append(run.run_id)
            elif run.files:
                found[run.run_id] = (run.manifest, run.files, name)
    chosen = sorted(found)  # run ids sort by their start time
    if not out.reuse_from and out.incremental is True:
        chosen = chosen[-1:]
    earlier = EarlierRuns(runs=chosen, other_keys=sorted(set(other) - set(found)))
    for order, run in enumerate(chosen):
        manifest, files, name = found[run]
        earlier.files += [(f, order) for f in files]
        earlier.names.append(name)
        earlier.rows += int(manifest.get("rows_written") or 0)
        earlier.stacks.append(dict(manifest.get(STACK) or {}))  # {}: recorded none
    return earlier


# -- the match -------------------------------------------------------------------------------


def _buckets(hashes: pa.Array, partitions: int) -> pa.Array:
    """Each (non-null, 16-byte) hash's partition: its first 4 bytes modulo ``partitions``."""
    _, offsets, data = hashes.buffers()
    starts = np.frombuffer(offsets, dtype=np.int32)[hashes.offset : hashes.offset + len(hashes)]
    values = np.frombuffer(data, dtype=np.uint8)
    head = values[starts[:, None] + np.arange(4)].copy().view("<u4").ravel()
    return pa.array((head % partitions).astype(np.int32))


def _match_schema(width: int, chunk: bool) -> pa.Schema:
    """Both sides of the match, as one schema (a side's other columns are null)."""
    fields = [
        (_BUCKET, pa.int32()),
        (_SIDE, pa.int8()),  # 0: a row to score, 1: an earlier run's row
        (PAIR_HASH, pa.binary()),
        (SOURCE, pa.string()),
        (ROW, pa.int64()),
        (ORDER, pa.int32()),
        (REUSE_SCORES, pa.list_(pa.float32(), width)),
        (TRUNCATED, pa.bool_()),
    ]
    if chunk:
        fields.append((WINDOWS, pa.int32()))
    return pa.schema(fields)


def _side(schema: pa.Schema, columns: dict[str, pa.Array]) -> pa.Table:
    n = len(next(iter(columns.values())))
    return pa.table(
        {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema
    )


def hash_units(units: pa.Table, cfg: JobConfig, schema: pa.Schema, partitions: int) -> pa.Table:
    """The match's left side: the units' rows, hashed (rows with no hash need no match)."""
    from crossenc.inputs.read import read_row_groups

    a, b = cfg.input.text_a, cfg.input.text_b
    tables = []
    for table in read_row_groups(units, cfg.input, [a, b], cfg.runtime.block_rows, cfg):
        hashes = pair_hashes(table.column(a), table.column(b))
        keep = pc.is_valid(hashes)
        table, hashes = table.filter(keep), hashes.filter(keep)
        if table.num_rows:
            tables.append(
                _side(
                    schema,
                    {
                        _BUCKET: _buckets(hashes, partitions),
                        _SIDE: pa.array(np.zeros(len(hashes), np.int8)),
                        PAIR_HASH: hashes,
                        SOURCE: table.column(SOURCE).combine_chunks(),
                        ROW: table.column(ROW).combine_chunks(),
                    },
                )
            )
    return pa.concat_tables(tables) if tables else schema.empty_table()


def read_earlier(
    files: pa.Table, storage: StorageConfig, names: list[str], schema: pa.Schema, partitions: int
) -> pa.Table:
    """The match's right side: an earlier run's data file, its hashes and scores (a file of
    several models: the scores under its ``model`` column's name, score_<name>)."""
    from crossenc.errors import storage_errors

    tables = []
    models = files["model"].to_pylist() if "model" in files.column_names else [""] * len(files)
    paths, orders = files["path"].to_pylist(), files["order"].to_pylist()
    for uri, order, model in zip(paths, orders, models, strict=True):
        scores = [named(c, model) for c in score_names_of(names)]
        loc = resolve(uri, storage)
        read = [PAIR_HASH, *scores, *(c for c in names if c in (TRUNCATED, WINDOWS))]
        with storage_errors("output.reuse_from", uri, storage):
            table = pq.read_table(loc.path, columns=read, filesystem=loc.arrow_fs)
        table = table.filter(pc.is_valid(table.column(PAIR_HASH)))
        if not table.num_rows:
            continue
        n = table.num_rows
        hashes = table.column(PAIR_HASH).combine_chunks().cast(pa.binary())
        matrix = np.stack(
            [table.column(c).to_numpy(zero_copy_only=False).astype(np.float32) for c in scores],
            axis=1,
        )
        columns = {
            _BUCKET: _buckets(hashes, partitions),
            _SIDE: pa.array(np.ones(n, np.int8)),
            PAIR_HASH: hashes,
            ORDER: pa.array(np.full(n, order, np.int32)),
            REUSE_SCORES: pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), len(scores)),
            TRUNCATED: table.column(TRUNCATED).combine_chunks(),
        }
        if WINDOWS in names:
            columns[WINDOWS] = table.column(WINDOWS).combine_chunks().cast(pa.int32())
        tables.append(_side(schema, columns))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def score_names_of(names: list[str]) -> list[str]:
    """The score columns among :func:`reuse_columns`."""
    return [c for c in names if c not in (TRUNCATED, WINDOWS)]


MATCHED = (SOURCE, ROW, ORDER, REUSE_SCORES, TRUNCATED, WINDOWS)


def match_partition(group: pa.Table) -> pa.Table:
    """One partition of the match: each row to score whose hash an earlier row has gets that
    row's scores (the latest run's: the earlier rows are looked up newest first)."""
    side = group.column(_SIDE).to_numpy()
    left = group.filter(pa.array(side == 0))
    right = group.filter(pa.array(side == 1))
    keep = [c for c in MATCHED if c in group.column_names]
    if not left.num_rows or not right.num_rows:
        return group.select(keep).slice(0, 0)
    right = right.sort_by([(ORDER, "descending")])
    found = pc.index_in(left.column(PAIR_HASH), value_set=right.column(PAIR_HASH).combine_chunks())
    hit = pc.is_valid(found)
    left, found = left.filter(hit), found.filter(hit)
    out = {c: left.column(c) for c in (SOURCE, ROW)}
    for c in keep[2:]:
        out[c] = right.column(c).take(found)
    return pa.table(out)


def reuse_path(staging: str, source: str, model: str = "") -> str:
    """Where the match leaves an input file's matches: ``<staging>/reuse/<hash of path>``
    (several models: ``<staging>/reuse/<model>/<hash of path>``)."""
    name = hashlib.blake2b(source.encode(), digest_size=12).hexdigest()
    folder = f"reuse/{model}" if model else "reuse"
    return f"{staging.rstrip('/')}/{folder}/{name}.parquet"


def write_matches(group: pa.Table, out: OutputConfig, staging: str, model: str = "") -> pa.Table:
    """One input file's matches, sorted by row, to its file in the staging folder; returns
    (input file, rows matched)."""
    from crossenc.errors import storage_errors

    source = group.column(SOURCE)[0].as_py()
    table = group.sort_by(ROW).drop_columns([SOURCE])
    loc = resolve(out.path, out.storage)
    path = reuse_path(staging, source, model)
    with storage_errors("output", out.path, out.storage):
        loc.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with loc.fs.open(path, "wb") as f:
            pq.write_table(table, f)
    return pa.table({SOURCE: [source], "rows": [table.num_rows]})


def match(
    cfg: JobConfig,
    info: ModelInfo,
    units: list[dict[str, object]],
    earlier: EarlierRuns,
    staging: str,
    todo_rows: int,
    model: str = "",
) -> dict[str, int]:
    """Run the match (see the module docstring) over the units' rows; returns, per input
    file with matches, how many of its rows were matched (its file: :func:`reuse_path`;
    ``model``: several models' short name of the model matched)."""
    started = time.monotonic()
    names = reuse_columns(cfg, info)
    schema = _match_schema(len(score_names_of(names)), WINDOWS in names)
    partitions = (todo_rows + earlier.rows) // MATCH_ROWS_PER_PARTITION + 1
    if partitions == 1:
        where = "in the driver"
        matched = _match_here(cfg, units, earlier, names, schema, staging, model)
    else:
        partitions = min(1000, partitions)
        where = f"over {partitions} partitions"
        matched = _match_on_ray(cfg, units, earlier, names, schema, staging, partitions, model)
    log.info(
        "incremental: %d of %d rows to score were scored%s by %d earlier run(s) (%d files, "
        "%d rows); matched in %.1f s %s",
        sum(matched.values()),
        todo_rows,
        f" by model {model}" if model else "",
        len(earlier.runs),
        len(earlier.files),
        earlier.rows,
        time.monotonic() - started,
        where,
    )
    return matched


def _match_here(
    cfg: JobConfig,
    units: list[dict[str, object]],
    earlier: EarlierRuns,
    names: list[str],
    schema: pa.Schema,
    staging: str,
    model: str = "",
) -> dict[str, int]:
    """The match of a small run in this process: the same steps as :func:`_match_on_ray`, one
    partition, each input file's units and each earlier file read on a thread pool."""
    by_file: dict[str, list[dict[str, object]]] = {}
    for unit in units:
        by_file.setdefault(str(unit["file"]), []).append(unit)

    def left(file_units: list[dict[str, object]]) -> pa.Table:
        return hash_units(pa.Table.from_pylist(file_units), cfg, schema, 1)

    def right(path_order: tuple[str, int]) -> pa.Table:
        path, order = path_order
        files = pa.table({"path": [path], "order": [order], "model": [earlier.names[order]]})
        return read_earlier(files, cfg.output.storage, names, schema, 1)

    with ThreadPoolExecutor(MATCH_IO_THREADS, thread_name_prefix="match") as pool:
        sides = [*pool.map(left, by_file.values()), *pool.map(right, earlier.files)]
        found = match_partition(pa.concat_tables(sides)) if sides else None
        if found is None or not found.num_rows:
            return {}
        found = found.sort_by(SOURCE)
        sources = found.column(SOURCE).to_numpy(zero_copy_only=False)
        cuts = [0, *np.flatnonzero(sources[1:] != sources[:-1]) + 1, len(sources)]
        groups = [found.slice(lo, hi - lo) for lo, hi in zip(cuts, cuts[1:], strict=False)]
        written = pool.map(lambda g: write_matches(g, cfg.output, staging, model), groups)
        return {t.column(SOURCE)[0].as_py(): t.column("rows")[0].as_py() for t in written}


def _match_on_ray(
    cfg: JobConfig,
    units: list[dict[str, object]],
    earlier: EarlierRuns,
    names: list[str],
    schema: pa.Schema,
    staging: str,
    partitions: int,
    model: str = "",
) -> dict[str, int]:
    """The match on Ray Data: both sides hash-partitioned (a shuffle), matched per partition,
    then shuffled by input file into one file of matches each."""
    import ray

    from crossenc.job.dataflow import TOKENIZE_CPUS

    left = ray.data.from_items(units, override_num_blocks=max(1, min(len(units), 1000)))
    left = left.map_batches(
        hash_units,
        fn_kwargs={"cfg": cfg, "schema": schema, "partitions": partitions},
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=TOKENIZE_CPUS,
    )
    files = [{"path": p, "order": o, "model": earlier.names[o]} for p, o in earlier.files]
    right = ray.data.from_items(files, override_num_blocks=max(1, min(len(files), 1000)))
    right = right.map_batches(
        read_earlier,
        fn_kwargs={
            "storage": cfg.output.storage,
            "names": names,
            "schema": schema,
            "partitions": partitions,
        },
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=TOKENIZE_CPUS,
    )
    ds = left.union(right).groupby(_BUCKET, num_partitions=partitions)
    ds = ds.map_groups(match_partition, batch_format="pyarrow")
    ds = ds.groupby(SOURCE, num_partitions=partitions).map_groups(
        write_matches,
        fn_kwargs={"out": cfg.output, "staging": staging, "model": model},
        batch_format="pyarrow",
    )
    return {row[SOURCE]: int(row["rows"]) for row in ds.iter_rows()}


@dataclass
class Matches:
    """What a match found: per input file, how many of its rows to score it matched; each
    such file's matches are at :func:`reuse_path` in the run's ``staging`` folder."""

    rows: dict[str, int]
    staging: str
    model: str = ""  # several models: the model whose scores these are

    @property
    def paths(self) -> dict[str, str]:
        """Per input file with matches, the file of its matches."""
        return {source: reuse_path(self.staging, source, self.model) for source in self.rows}

    def covers(self, todo: dict[str, list[list[int]]]) -> bool:
        """True when every row of the todo ranges (per input file) was matched."""
        return all(
            self.rows.get(path, 0) == sum(end - start for start, end in ranges)
            for path, ranges in todo.items()
        )
