"""The Ray Data job: read Parquet → tokenize → score on replicas → post-process → write → commit."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from crossenc import __version__
from crossenc.config import ConfigError, JobConfig
from crossenc.engine.scoring import ScoringEngine
from crossenc.errors import InvariantError
from crossenc.inputs.plan import InputFile, JobPlan, finish_inspection, plan_job
from crossenc.inputs.read import pending_units, read_tokenized, read_units
from crossenc.inputs.reuse import REUSE_SCORES, reused_scores
from crossenc.metrics import RunMetrics, metric_columns
from crossenc.models.load import ModelInfo, load_tokenizer, model_fingerprint, model_source
from crossenc.models.tokenize import (
    ERROR,
    IDS,
    TYPE_IDS,
    WINDOW_LENGTHS,
    WINDOWS,
    encoder_spec,
    tokenize_batch,
)
from crossenc.output.commit import (
    Manifest,
    RunRecord,
    check_same_run,
    staged_parts,
    staging_dir,
    write_run_record,
)
from crossenc.output.committers import committer_for, previous_manifest
from crossenc.output.journal import Journal
from crossenc.output.parts import (
    PartStats,
    merge_ranges,
    missing_ranges,
    new_run_id,
    overlaps,
)
from crossenc.output.writer import WriterOptions, write_block, writer_actor
from crossenc.run.incremental import Matches, earlier_runs, match
from crossenc.run.summary import build_summary, compare_runs, summary_table
from crossenc.run.verify import Verdict, check_reuse
from crossenc.storage import resolve, retried_requests
from crossenc.tasks import task_for
from crossenc.versions import stack_versions

log = logging.getLogger(__name__)

# Ray Data warns when a stage capped at n tasks at a time got fewer than n blocks: the write
# stage's cap (one task per writer) is a bound, not a wish, so a small run needs no warning.
warnings.filterwarnings(
    "ignore", message=r"The maximum number of concurrent tasks for 'MapBatches\(write_block\)'"
)


def _flat(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column's own buffers, without a copy where it is one chunk (as a block is):
    (values, offsets), row ``i`` being ``values[offsets[i]:offsets[i + 1]]``, offsets from 0."""
    if isinstance(col, pa.ChunkedArray):
        col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy()[offsets[0] : offsets[-1]]  # a slice's rows only
    return values, (offsets - offsets[0]).astype(np.int64, copy=False)


class ScorerReplica:
    """A Ray actor holding one model replica; scores tokenized blocks.

    A block's token ids reach the engine as the Arrow column's own flat buffers (no array per
    row): :meth:`crossenc.engine.scoring.ScoringEngine.score_flat`, or ``score_windows_flat`` for
    model.long_text chunk's rows of windows."""

    def __init__(self, cfg: JobConfig, info: ModelInfo, load: bool = True) -> None:
        """``load`` false: the model is loaded when a row to score first arrives (a night whose
        every row output.incremental matched loads none)."""
        self.cfg, self.info, self.task = cfg, info, task_for(cfg)
        self.replica = f"{ray.util.get_node_ip_address()}:{os.getpid()}"
        self.engine: ScoringEngine | None = None
        self.load_seconds = 0.0  # reported with the first rows scored
        if load:
            self._load()

    def _load(self) -> ScoringEngine:
        started = time.perf_counter()
        source = model_source(self.cfg.model, self.cfg.runtime.cache_dir)  # s3: to this node
        self.engine = ScoringEngine(self.cfg.model, self.info, self.cfg.runtime, source)
        self.load_seconds = time.perf_counter() - started
        return self.engine

    @staticmethod
    def _flat_types(batch: pa.Table, offsets: np.ndarray) -> np.ndarray | None:
        """The type ids column's values, at the positions of the token ids they go with; None
        without one, or where every row's list is empty (a chat template's pairs)."""
        if TYPE_IDS not in batch.column_names:
            return None
        values, type_offsets = _flat(batch.column(TYPE_IDS))
        if np.array_equal(type_offsets, offsets):
            return values
        if type_offsets[-1] == 0:
            return None
        raise ValueError(f"{TYPE_IDS} and {IDS} hold rows of different lengths")

    @staticmethod
    def _window_spans(
        batch: pa.Table, offsets: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """model.long_text chunk: (starts, lengths) of the windows of the ``valid`` rows in the
        flat token ids (a row holds its windows one after the other), their counts per valid
        row, and each row's longest window (every row)."""
        lengths, window_offsets = _flat(batch.column(WINDOW_LENGTHS))
        lengths = lengths.astype(np.int64)
        counts = np.diff(window_offsets)
        ends = np.cumsum(lengths)
        has = counts > 0
        if (ends[window_offsets[1:][has] - 1] != offsets[1:][has]).any() or (
            np.diff(offsets)[~has] != 0
        ).any():
            raise ValueError(f"{WINDOW_LENGTHS} does not add up to each row's {IDS}")
        keep = np.repeat(valid, counts)  # the windows of the rows to score
        longest = np.zeros(len(counts), dtype=np.int64)
        if has.any():
            longest[has] = np.maximum.reduceat(lengths, window_offsets[:-1][has])
        return (ends - lengths)[keep], lengths[keep], counts[valid], longest

    def __call__(self, batch: pa.Table) -> pa.Table:
        valid = pc.is_null(batch.column(ERROR)).to_numpy(zero_copy_only=False)
        reused, copied = reused_scores(batch)  # output.incremental: scored by an earlier run
        reused &= valid
        todo = valid & ~reused
        idx = np.flatnonzero(todo)
        values, offsets = _flat(batch.column(IDS))
        types = self._flat_types(batch, offsets)
        tokens = np.where(todo, np.diff(offsets), 0)  # a row of windows: all of their tokens
        scores = np.zeros((batch.num_rows, self.info.num_labels), dtype=np.float32)
        if copied is not None:
            scores[reused] = copied[reused]
        engine = self.engine if self.engine is not None or not len(idx) else self._load()
        busy, computed, splits, unfit, runs, longest = 0.0, 0, 0, [], "", tokens
        if engine is not None:  # (a replica without its model has no row to score)
            stats = engine.stats
            before, started = (stats.computed_tokens, stats.oom_splits), time.perf_counter()
            if WINDOW_LENGTHS in batch.column_names:  # model.long_text chunk: rows of windows
                starts, lengths, counts, longest = self._window_spans(batch, offsets, todo)
                scores[idx] = engine.score_windows_flat(values, starts, lengths, counts, types)
            else:
                scores[idx] = engine.score_flat(values, offsets, types, rows=idx)
            busy = time.perf_counter() - started
            computed, splits = stats.computed_tokens - before[0], stats.oom_splits - before[1]
            unfit, runs = engine.unfit, engine.runs
        if unfit:  # rows (a window of them) that ran out of memory alone: dead letters
            errors = batch.column(ERROR).to_pylist()
            for i in idx[unfit]:
                errors[i], valid[i] = f"out_of_memory:{int(longest[i])}_tokens", False
            column = batch.schema.get_field_index(ERROR)
            batch = batch.set_column(column, ERROR, pa.array(errors, type=pa.string()))
        dropped = (IDS, TYPE_IDS, WINDOW_LENGTHS, WINDOWS, REUSE_SCORES)  # windows: see below
        out = batch.drop_columns([c for c in dropped if c in batch.column_names])
        columns = self.task.score_columns(scores, valid, self.info)
        if WINDOWS in batch.column_names:
            columns[WINDOWS] = batch.column(WINDOWS)
        columns |= metric_columns(
            self.replica, busy, tokens, computed, todo, self.load_seconds, runs, splits
        )
        if len(idx):
            self.load_seconds = 0.0
        for name, column in columns.items():
            out = out.append_column(name, column)
        assert out.num_rows == batch.num_rows, "scorer must keep every row"
        return out


def tokenizer_spec(cfg: JobConfig, info: ModelInfo) -> dict[str, Any] | None:
    """The tokenizer's backend for the tokenize tasks to encode with (they never import
    transformers; see :func:`crossenc.models.tokenize.encoder_spec`), or None where they load the
    tokenizer themselves (a chat template, model.long_text chunk)."""
    if cfg.model.long_text == "chunk":
        return None
    return encoder_spec(load_tokenizer(cfg.model, info.source), info)


TOKENIZE_CPUS = 0.5  # a tokenize task's reservation: its own tasks, never fused into the scorers


def scoring_stages(
    ds: ray.data.Dataset,
    cfg: JobConfig,
    info: ModelInfo,
    rank_partitions: int | None = None,
    tokenized: bool = False,
    load_model: bool = True,
) -> ray.data.Dataset:
    """Tokenize (unless ``tokenized``: the rows hold the token columns already, as the job's
    read tasks leave them), score on the replicas, and (with ``rank_partitions``) rank each
    rerank group after a shuffle into that many partitions: the stages the job and
    :func:`crossenc.scorer` share. Rows keep the carried columns and gain the score columns,
    ``truncated`` and the internal ones (the error, metrics; see
    :data:`crossenc.output.writer.INTERNAL`). ``load_model`` false: the replicas load the model
    only if a row to score reaches them (output.incremental matched every row)."""
    rt = cfg.runtime
    if not tokenized:
        ds = ds.map_batches(
            tokenize_batch,
            fn_kwargs={"cfg": cfg, "info": info, "encoder": tokenizer_spec(cfg, info)},
            batch_size=rt.block_rows,
            batch_format="pyarrow",
            num_cpus=TOKENIZE_CPUS,
        )
    ds = ds.map_batches(
        ScorerReplica,
        fn_constructor_kwargs={"cfg": cfg, "info": info, "load": load_model},
        batch_size=rt.block_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=rt.replicas),
        num_cpus=rt.cpus_per_replica,
        num_gpus=rt.gpus_per_replica,
        resources=rt.resources_per_replica or None,
    )  # Ray restarts a dead scorer and retries its batch (max_restarts=-1 by default)
    if rank_partitions:
        ds = ds.groupby(cfg.rerank.group_by, num_partitions=rank_partitions).map_groups(
            task_for(cfg).post_group, batch_format="pyarrow"
        )
    return ds


def build_dataset(
    cfg: JobConfig,
    units: list[dict[str, object]],
    info: ModelInfo,
    run_id: str,
    writers: list[Any],
    options: WriterOptions,
    rerank_shuffle: bool = False,
    reference: dict[str, Any] | None = None,
    load_model: bool = True,
) -> ray.data.Dataset:
    """The lazy Ray Data pipeline; executing it hands scored rows to the writers and yields
    one progress row per block (rows handed over, and the parts of files that closed)."""
    rt = cfg.runtime
    ds = ray.data.from_items(units, override_num_blocks=max(1, min(len(units), 1000)))
    # Each row group is read and tokenized by one task: the texts never go through the object
    # store, and one kind of task (one worker process per CPU Ray gives them) does both.
    ds = ds.map_batches(
        read_tokenized,
        fn_kwargs={
            "storage": cfg.input,
            "columns": cfg.needed_columns(),
            "block_rows": rt.block_rows,
            "cfg": cfg,
            "info": info,
            "encoder": tokenizer_spec(cfg, info),
            "reference": reference,
        },
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=TOKENIZE_CPUS,
    )
    rows = sum(max(int(u["end"]) - int(u["start"]), 0) for u in units)  # type: ignore[call-overload]
    partitions = max(1, min(200, rows // rt.block_rows + 1))
    ranks = partitions if rerank_shuffle else None
    ds = scoring_stages(ds, cfg, info, ranks, tokenized=True, load_model=load_model)
    # The write tasks only wait on the writers: they reserve no CPU (a reservation of theirs
    # would keep tokenize tasks from the CPUs they leave idle), and as many run at a time as
    # there are writers (two per writer ran no faster), not a worker process per block.
    ds = ds.map_batches(
        write_block,
        fn_kwargs={
            "writers": writers,
            "out": cfg.output,
            "run_id": run_id,
            "options": replace(options, expected_rows={}),  # only the writers need those
        },
        batch_size=rt.block_rows,
        num_cpus=0,
        # (a dataset built without writers: tests)
        compute=ray.data.TaskPoolStrategy(size=max(1, len(writers))),
        batch_format="pyarrow",
    )
    # Reading and tokenizing outrun the scorers; without a budget of its own the queue ahead of
    # them grows with the input up to half of the cluster's object store.
    options_ = ds.context.execution_options
    options_.resource_limits = options_.resource_limits.copy(
        object_store_memory=rt.object_store_budget()
    )
    return ds


@dataclass
class RunResult:
    """What a run did. ``rows_scored`` is what this run read and scored with the model; on a
    resume, ``rows_resumed`` were taken over from the interrupted run's staged parts; with
    output.incremental, ``rows_reused`` took their scores from an earlier run. ``summary`` is
    the run summary committed beside the manifest (see :mod:`crossenc.run.summary`)."""

    run_id: str
    rows_read: int
    rows_written: int
    rows_dead_lettered: int
    rows_dropped_top_k: int
    rows_scored: int
    rows_resumed: int
    files_resumed: int
    files_skipped: int
    files_written: int
    seconds: float
    output_path: str
    already_committed: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    rows_reused: int = 0  # output.incremental: rows whose scores an earlier run gave
    skipped: list[str] = field(default_factory=list)  # why each skipped input file was bad

    @property
    def rows_per_second(self) -> float:
        """Rows this run scored with the model per wall-clock second."""
        return self.rows_scored / self.seconds if self.seconds else 0.0

    @property
    def rescored(self) -> bool:
        """True when output.incremental scored every pair again: the stored scores, made under
        another stack, did not agree with a sample scored again (``summary["reuse"]``)."""
        return (self.summary.get("reuse") or {}).get("decision") == "rescored"

    @property
    def drifted(self) -> bool:
        """True when output.compare_to was set and this run moved past its thresholds."""
        return bool((self.summary.get("drift") or {}).get("drifted"))


def coverage(parts: list[PartStats]) -> dict[str, list[list[int]]]:
    """Per input file, the row ranges the parts hold (not merged: overlaps stay visible)."""
    out: dict[str, list[list[int]]] = {}
    for part in parts:
        out.setdefault(part.input_file, []).extend(part.row_ranges())
    return out


def check_accounted(files: list[InputFile], parts: list[PartStats], run_id: str) -> None:
    """Per input file: the parts' row ranges tile its rows exactly once, and rows read = rows
    written + dead-lettered + dropped by top_k."""
    accounted: dict[str, int] = {}
    for part in parts:
        accounted[part.input_file] = accounted.get(part.input_file, 0) + part.accounted
    ranges = coverage(parts)
    wrong = []
    for f in files:
        got = ranges.pop(f.path, [])
        n = accounted.pop(f.path, 0)
        if (
            n != f.rows
            or overlaps(got)
            or missing_ranges(got, f.rows)
            or (got and max(e for _, e in got) > f.rows)
        ):
            wrong.append(f"{f.path}: read {f.rows}, accounted {n}, ranges {merge_ranges(got)}")
    wrong += [f"{path}: not an input file, {n} rows" for path, n in accounted.items()]
    if wrong:
        raise InvariantError(
            f"rows read != rows written + dead-lettered + dropped; nothing committed "
            f"(run {run_id}): " + "; ".join(wrong[:5])
        )


def usable_parts(staged: list[PartStats], files: tuple[InputFile, ...]) -> list[PartStats]:
    """The staged parts a resume can take over: whole output files (every part of a file, as
    many as each part says it has, or none), whose input files are all still in the input
    with the same row counts, holding no row that an already kept file holds."""
    rows = {f.path: f.rows for f in files}
    by_file: dict[str, list[PartStats]] = {}
    for part in staged:
        name = (part.file or part.dead_file or "").rsplit("/", 1)[-1]
        by_file.setdefault(name, []).append(part)
    kept: list[PartStats] = []
    taken: dict[str, list[list[int]]] = {}
    for name in sorted(by_file):  # run ids sort by start: the earliest run's files first
        group = list({(p.input_file, p.ranges): p for p in by_file[name]}.values())
        fits = (
            bool(name)
            and all(len(group) == p.siblings for p in group)
            and all(
                p.input_file in rows
                and (p.input_rows in (-1, rows[p.input_file]))
                and not overlaps(taken.get(p.input_file, []) + p.row_ranges())
                and max((e for _, e in p.row_ranges()), default=0) <= rows[p.input_file]
                for p in group
            )
        )
        if fits:
            kept += group
            for p in group:
                taken.setdefault(p.input_file, []).extend(p.row_ranges())
    return kept


def machine_cores() -> int:
    """CPUs this process may run on (its affinity; the machine's count where none is set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def starts_own_ray() -> bool:
    """True when :func:`ensure_ray` would start an in-process Ray on this machine (no Ray
    running in this process, no RAY_ADDRESS naming a cluster)."""
    return not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")


IDLE_WORKER_MS = 300_000  # crossenc's own in-process Ray: how long an idle worker is kept


def ensure_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (or the Ray this process runs already), else start
    an in-process Ray on this machine's cores, without a dashboard."""
    if starts_own_ray():
        ray.init(
            num_cpus=machine_cores(),
            # Idle workers are kept for the run rather than killed after 1 s (Ray's default
            # once more workers exist than CPUs: the actors count), so a stage's next task
            # reuses a worker that has imported crossenc instead of starting one that must.
            _system_config={"idle_worker_killing_time_threshold_ms": IDLE_WORKER_MS},
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
    elif not ray.is_initialized():  # the cluster RAY_ADDRESS names
        ray.init(logging_level=logging.WARNING, log_to_driver=True)
    # crossenc shows its own progress (a live line on a terminal, else log lines); marking
    # Ray's notice about that as logged keeps it from printing a warning about it
    from ray.util.debug import log_once

    log_once("ray_data_progress_manager_disabled")
    ray.data.DataContext.get_current().enable_progress_bars = False


def for_this_machine(cfg: JobConfig) -> JobConfig:
    """The config as it runs here: on crossenc's own in-process Ray, unset runtime settings
    sized to the machine's cores (see :meth:`RuntimeConfig.on_machine`); else unchanged."""
    if not starts_own_ray():
        return cfg
    cores = machine_cores()
    runtime = cfg.runtime.on_machine(cores)
    if runtime is not cfg.runtime:
        log.info(
            "in-process Ray on %d cores: %d replica(s) x %d torch threads (set "
            "runtime.torch_threads or runtime.cpus_per_replica to choose)",
            cores,
            runtime.replicas,
            runtime.torch_threads,
        )
    return cfg.model_copy(update={"runtime": runtime})


def _already_committed(manifest: dict[str, Any], seconds: float, path: str) -> RunResult:
    return RunResult(
        run_id=manifest["run_id"],
        rows_read=manifest["rows_read"],
        rows_written=manifest["rows_written"],
        rows_dead_lettered=manifest["rows_dead_lettered"],
        rows_dropped_top_k=manifest["rows_dropped_top_k"],
        rows_scored=0,
        rows_resumed=manifest["rows_read"],
        files_resumed=manifest.get("input_file_count", len(manifest.get("input_files", []))),
        files_skipped=len(manifest.get("skipped_files", [])),
        skipped=[b["reason"] for b in manifest.get("skipped_files", [])],
        files_written=manifest.get("file_count", len(manifest.get("files", []))),
        seconds=seconds,
        output_path=path,
        already_committed=True,
        summary=manifest.get("summary", {}),
    )


class Progress:
    """Rows done, rows/s and the time left: one live tqdm line when ``stream`` is a terminal,
    else a log line at most every ``every`` seconds."""

    def __init__(self, total: int, every: float = 10.0, stream: Any = None) -> None:
        self.total, self.every, self.done = total, every, 0
        self.started = self.last = time.monotonic()
        stream = stream if stream is not None else sys.stderr
        self.bar = None
        if stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                unit="rows",
                unit_scale=True,
                dynamic_ncols=True,
                smoothing=0.1,
                file=stream,
                desc="crossenc",
            )

    def add(self, rows: int) -> None:
        """Count rows finished; update the bar, or log a progress line when one is due."""
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
            return
        now = time.monotonic()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-9)
        left = (self.total - self.done) / rate if rate else float("inf")
        log.info(
            "progress: %d/%d rows (%.1f%%), %.1f rows/s, ETA %s",
            self.done,
            self.total,
            100 * self.done / max(self.total, 1),
            rate,
            time.strftime("%H:%M:%S", time.gmtime(left)) if left < 8.64e4 else ">1 day",
        )

    def close(self) -> None:
        """End the live line (the log lines need no ending)."""
        if self.bar is not None:
            self.bar.close()


def previous_summary(cfg: JobConfig) -> dict[str, Any] | None:
    """The summary of the run at output.compare_to, or None when no comparison is asked for."""
    if not cfg.output.compare_to:
        return None
    manifest = previous_manifest(cfg.output)  # a Parquet folder, or a table's commit
    if manifest is None or not manifest.get("summary", {}).get("scores"):
        raise ConfigError(
            f"output.compare_to {cfg.output.compare_to} holds no committed crossenc run with a "
            "summary (_SUCCESS and _manifest.json, or a table commit of crossenc); remove "
            "compare_to for a first run"
        )
    return manifest["summary"]


def _todo(files: tuple[InputFile, ...], parts: list[PartStats]) -> dict[str, list[list[int]]]:
    """Per input file, the row ranges no part holds yet."""
    have = coverage(parts)
    todo = {f.path: missing_ranges(have.get(f.path, []), f.rows) for f in files}
    return {path: ranges for path, ranges in todo.items() if ranges}


def _todo_rows(todo: dict[str, list[list[int]]]) -> int:
    """How many rows the todo ranges hold."""
    return sum(end - start for ranges in todo.values() for start, end in ranges)


WHOLE_INPUT_RANK_ROWS = 1_000_000  # a rerank this small is ranked in its one writer, no shuffle


def _score_pass(
    cfg: JobConfig,
    plan: JobPlan,
    todo: dict[str, list[list[int]]],
    run_id: str,
    attempt: int,
    on_parts: Any,
    on_progress: Any,
    reuse: Matches | None = None,
) -> None:
    """One pass of the pipeline over the todo ranges: writers started, the stream consumed,
    the writers flushed (a writer that died loses its open file: the next pass redoes it).
    ``reuse``: output.incremental's matches (see :mod:`crossenc.run.incremental`)."""
    ensure_ray()
    files = cfg.output.files
    count = cfg.runtime.writers or cfg.runtime.replicas
    rows = _todo_rows(todo)
    # A small rerank whose groups span files: its one writer ranks the whole input, no shuffle.
    whole = (
        cfg.task == "rerank"
        and not plan.rerank_within_files
        and count == 1
        and rows <= min(files.max_rows, WHOLE_INPUT_RANK_ROWS)
    )
    within = cfg.task == "rerank" and (plan.rerank_within_files or whole)
    options = WriterOptions(
        max_rows=files.max_rows,
        max_bytes=int(files.max_mib * 2**20),
        max_seconds=files.max_seconds,
        rerank_by=cfg.rerank.group_by if within else None,
        top_k=cfg.rerank.top_k if within else None,
        expected_rows={f.path: f.rows for f in plan.files if f.path in todo} if within else {},
        rank_whole_input=whole,
    )
    actor = writer_actor()
    prefix = f"r{attempt}" if attempt else ""
    writers = [actor.remote(cfg.output, run_id, f"{prefix}w{i}", options) for i in range(count)]
    try:
        units = read_units(plan.files, todo) + pending_units([p for p, _ in plan.pending])
        if cfg.output.incremental:
            paths = reuse.paths if reuse else {}
            for unit in units:
                unit["reuse"] = paths.get(str(unit["file"]), "")
        ds = build_dataset(
            cfg,
            units,
            plan.info,
            run_id,
            writers,
            options,
            cfg.task == "rerank" and not within,
            dict(plan.reference),
            load_model=not (reuse and reuse.covers(todo) and not plan.pending),
        )
        for row in ds.iter_rows():
            on_progress(row["t"], row["accounted"])
            on_parts([PartStats(**p) for p in json.loads(row["parts"])])
        for writer in writers:
            try:
                on_parts(ray.get(writer.flush.remote()))
            except ray.exceptions.RayActorError:
                log.warning("an output writer died: its open file is scored again")
    finally:
        for writer in writers:
            ray.kill(writer)


def _score_passes(
    cfg: JobConfig,
    plan: JobPlan,
    todo: dict[str, list[list[int]]],
    parts: list[PartStats],
    run_id: str,
    pending: Any,
    on_parts: Any,
    on_progress: Any,
    reuse: Matches | None = None,
) -> tuple[JobPlan, dict[str, list[list[int]]]]:
    """Score the todo ranges; while rows are missing (a writer died with its open file), score
    them again, at most twice. Returns the plan with every footer read, and what is missing."""
    for attempt in range(3):
        if not todo and not plan.pending:
            break
        if attempt:
            log.warning(
                "%d rows of %d files were not written (a writer died): scoring them again",
                _todo_rows(todo),
                len(todo),
            )
        _score_pass(cfg, plan, todo, run_id, attempt, on_parts, on_progress, reuse)
        if pending is not None:  # every footer is known now: the accounting needs them all
            plan, pending = pending.result(), None
        todo = _todo(plan.files, parts)
    return plan, todo


def _match_earlier(
    cfg: JobConfig,
    plan: JobPlan,
    todo: dict[str, list[list[int]]],
    key: str,
    staging: str,
    rows: int,
    stack: dict[str, str],
) -> tuple[Matches | None, Verdict | None]:
    """output.incremental: the earlier runs with this run's scoring key, matched against the
    rows to score (None: no earlier run to match, or none to reuse), and the check of those
    that recorded another ``stack`` (:mod:`crossenc.run.verify`; None: nothing to check)."""
    earlier = earlier_runs(cfg, key)
    where = ", ".join(cfg.output.reuse_from) or cfg.output.path
    if earlier.other_keys:
        log.warning(
            "incremental: %d earlier run(s) in %s scored with another scoring key (another "
            "model, revision, weights, activation, max_length, truncation, dtype...): their "
            "scores are not reused",
            len(earlier.other_keys),
            where,
        )
    if not earlier.files:
        log.info(
            "incremental: no earlier run in %s has scoring key %s: every row is scored", where, key
        )
        return None, None
    units = read_units(plan.files, todo) + pending_units([p for p, _ in plan.pending])
    matches = Matches(match(cfg, plan.info, units, earlier, staging, rows), staging)
    verdict = check_reuse(cfg, matches, earlier, stack, key)
    if verdict is not None:
        log.log(
            logging.INFO if verdict.decision == "reused" else logging.WARNING,
            "incremental: scores made under another stack: %s",
            verdict.reason,
        )
        if verdict.decision == "rescored":
            return None, verdict
    if matches.covers(todo) and not plan.pending:
        log.info("incremental: every row to score was scored before: no model is loaded")
    return matches, verdict


def run_job(cfg: JobConfig, plan: JobPlan | None = None) -> RunResult:
    """Run the whole job and commit its output; returns the counts and the run summary."""
    started, wall_started = time.monotonic(), time.time()
    if plan is not None:  # inspected before the call: its phase counts in the run's wall time
        started, wall_started = started - plan.inspect_seconds, wall_started - plan.inspect_seconds
    retried = retried_requests()
    cfg = for_this_machine(cfg)
    committer = committer_for(cfg.output)  # the Parquet folder, a Delta or an Iceberg table

    def prepare() -> tuple[int, dict[str, Any] | None, dict[str, Any] | None, JobPlan]:
        base, committed = committer.prepare()
        committer.check_mode(committed)
        return base, committed, previous_summary(cfg), plan or plan_job(cfg)

    # The output's state and the input's footers are read while Ray starts (seconds each).
    with ThreadPoolExecutor(1, thread_name_prefix="prepare") as pool:
        prepared = pool.submit(prepare)
        try:
            ensure_ray()
        finally:
            base, committed, previous, plan = prepared.result()
    phases: dict[str, float | None] = {"inspect": round(plan.inspect_seconds, 3)}
    record = RunRecord(
        new_run_id(),
        cfg.fingerprint(),
        model_fingerprint(cfg.model, plan.info),
        base,
        dict(cfg.output.partition_value),
    )
    kept: list[PartStats] = []
    pending = None
    if plan.pending and cfg.output.mode == "resume":
        plan = finish_inspection(cfg, plan)  # what to keep depends on every file's rows
    elif plan.pending:  # the rest of the footers are read while the run scores
        pending = ThreadPoolExecutor(1, thread_name_prefix="footers").submit(
            finish_inspection, cfg, plan
        )
    if cfg.output.mode == "resume":
        after = committed["run_id"] if committed is not None else None
        staged = staged_parts(cfg.output, record, after)  # runs interrupted since the commit
        if committed is not None and not staged:
            check_same_run(committed, record, "the committed run")
            log.info("resume: %s already holds the committed run", cfg.output.path)
            return _already_committed(committed, time.monotonic() - started, cfg.output.path)
        kept = usable_parts(staged, plan.files)
    todo = _todo(plan.files, kept)
    write_run_record(cfg.output, record)
    rows_now = _todo_rows(todo)
    rows_now += plan.rows_estimate - plan.rows  # files whose footers are still to be read
    files_resumed = sum(1 for f in plan.files if f.path not in todo)
    log.info(
        "run %s: %d rows of %d files -> %s (%d rows of %d files taken over from interrupted "
        "runs, %d skipped)",
        record.run_id,
        rows_now,
        len(todo),
        cfg.output.path,
        plan.rows - rows_now,
        files_resumed,
        len(plan.skipped),
    )
    loc = resolve(cfg.output.path, cfg.output.storage)
    journal = Journal(loc, staging_dir(loc, record.run_id))
    parts = list(kept)
    metrics = RunMetrics()
    for part in parts:
        metrics.add(json.loads(part.metrics), part.accounted, mine=False)
        part.metrics = ""  # folded in: the driver keeps only what the commit needs
    progress = Progress(rows_now)

    def on_parts(new: list[PartStats]) -> None:
        for part in new:
            metrics.add(json.loads(part.metrics), part.accounted, mine=True)
        journal.add(new)  # the journal keeps the metrics (a resume folds them in)
        for part in new:
            part.metrics = ""
        parts.extend(new)

    def on_progress(t: float, rows: int) -> None:
        metrics.progress(t, rows)
        progress.add(rows)

    key = cfg.scoring_key(record.model) if cfg.output.incremental else ""
    stack = stack_versions(cfg.model.backend)
    reuse, verdict = None, None
    if key and (todo or plan.pending):
        match_started = time.monotonic()
        staging = staging_dir(loc, record.run_id)
        reuse, verdict = _match_earlier(cfg, plan, todo, key, staging, rows_now, stack)
        phases["match"] = round(time.monotonic() - match_started, 3)
        if verdict is not None:  # (within the match's seconds)
            phases["verify"] = round(verdict.seconds, 3)
    score_started = time.monotonic()
    try:
        plan, todo = _score_passes(
            cfg, plan, todo, parts, record.run_id, pending, on_parts, on_progress, reuse
        )
    except Exception:
        # A run that committed meanwhile outran this one (and may have removed its files):
        # say so, rather than report the failure it caused.
        committer.check_not_outrun(base, record.run_id, parts)
        raise
    finally:
        progress.close()
    rows_resumed = sum(p.accounted for p in kept)
    journal.flush()
    staged_at = time.monotonic()
    phases["score"] = round(staged_at - score_started, 3)
    check_accounted(list(plan.files), parts, record.run_id)
    written = sum(p.rows for p in parts)
    dead = sum(p.dead_rows for p in parts)
    dropped = sum(p.dropped_rows for p in parts)
    reused = sum(p.reused_rows for p in parts)
    skipped = sum(p.skipped_rows for p in parts)
    # the model's rows: read now, neither taken over from an interrupted run nor copied from
    # an earlier one (output.incremental)
    rows_scored = plan.rows - rows_resumed - (reused - sum(p.reused_rows for p in kept))
    phases["commit"] = None  # known once committed: _summary.json and the report carry it
    summary = build_summary(
        metrics,
        run_id=record.run_id,
        task=cfg.task,
        model=cfg.model.name,
        started=wall_started,
        wall_seconds=staged_at - started,
        rows={
            "read": plan.rows,
            "scored": rows_scored,
            "written": written,
            "dead_lettered": dead,
            "dropped_top_k": dropped,
            "resumed": rows_resumed,
            # output.incremental: rows this run read that no earlier run had scored, rows whose
            # scores were copied (and, skip, of those the ones not written)
            **({"new": rows_scored, "reused": reused, "skipped_reused": skipped} if key else {}),
        },
        files={
            "input": len(plan.files),
            "skipped": len(plan.skipped),
            "written": len({p.file for p in parts if p.file}),
        },
    )
    summary["phases"] = phases
    if verdict is not None:
        summary["reuse"] = verdict.summary()
    if previous is not None:
        drift = cfg.output.drift
        summary["drift"] = compare_runs(
            summary, previous, str(cfg.output.compare_to), drift.max_label_tvd, drift.max_score_ks
        )
        for reason in summary["drift"]["reasons"]:
            log.warning("drift against %s: %s", cfg.output.compare_to, reason)
    manifest = Manifest(
        run_id=record.run_id,
        files=[],
        dead_letter_files=[],
        input_files=[{"path": f.path, "rows": f.rows} for f in plan.files],
        skipped_files=[{"path": b.path, "reason": b.reason} for b in plan.skipped],
        rows_read=plan.rows,
        rows_written=written,
        rows_dead_lettered=dead,
        rows_dropped_top_k=dropped,
        model=record.model,
        config_hash=record.config_hash,
        config=cfg.redacted(),
        crossenc_version=__version__,
        resumed_from=sorted({p.run_id for p in kept}),
        summary=summary,
        scoring_key=key,
        rows_reused=reused,
        rows_skipped_reused=skipped,
        stack=stack,
    )
    committed_at = committer.commit(manifest, parts, base)
    phases["commit"] = round(committed_at - staged_at, 3)
    phases["cleanup"] = round(time.monotonic() - committed_at, 3)
    seconds = time.monotonic() - started
    summary["wall_seconds"] = round(seconds, 3)
    summary["store"]["retried_requests"] += retried_requests() - retried  # the driver's own
    committer.write_summary(summary)
    result = RunResult(
        run_id=record.run_id,
        rows_read=plan.rows,
        rows_written=written,
        rows_dead_lettered=dead,
        rows_dropped_top_k=dropped,
        rows_scored=rows_scored,
        rows_resumed=rows_resumed,
        files_resumed=files_resumed,
        files_skipped=len(plan.skipped),
        skipped=[b.reason for b in plan.skipped],
        files_written=summary["files"]["written"],
        seconds=seconds,
        output_path=cfg.output.path,
        summary=summary,
        rows_reused=reused,
    )
    log.info(
        "run %s committed: %d rows written, %d dead-lettered, %.1f s (inspect %.1f s, score "
        "%.1f s, commit %.1f s)",
        record.run_id,
        written,
        dead,
        seconds,
        phases["inspect"],
        phases["score"],
        phases["commit"],
    )
    if cfg.output.report:
        from crossenc.run.report import write_report

        write_report(summary, cfg.output.report, cfg.output.storage)
        log.info("report written to %s", cfg.output.report)
    return result


def summary_lines(result: RunResult) -> list[str]:
    """The run summary for the terminal: what was committed where, then the summary table."""
    head = (
        f"output {result.output_path} was already committed by run {result.run_id}"
        if result.already_committed
        else f"run {result.run_id} committed to {result.output_path}"
    )
    return [head, *(summary_table(result.summary).splitlines() if result.summary else [])]
