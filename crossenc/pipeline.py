"""The Ray Data job: read Parquet → tokenize → score on replicas → post-process → write → commit."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from crossenc import __version__
from crossenc.commit import Manifest, PartStats, check_output_mode, commit, new_run_id, write_part
from crossenc.config import JobConfig
from crossenc.engine import ScoringEngine
from crossenc.inspect_input import JobPlan, plan_job
from crossenc.model import ModelInfo, model_fingerprint, model_source
from crossenc.postprocess import rank_group, score_columns
from crossenc.storage import resolve
from crossenc.tokenize import ERROR, IDS, TYPE_IDS, tokenize_batch

log = logging.getLogger(__name__)


def _ragged(col: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """A list<int> column as one numpy view per row."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy()
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(arr))]


class ScorerReplica:
    """A Ray actor holding one model replica; scores tokenized blocks."""

    def __init__(self, cfg: JobConfig, info: ModelInfo) -> None:
        source = model_source(cfg.model, cfg.runtime.cache_dir)  # per node: s3 copies land here
        self.cfg, self.info = cfg, info
        self.engine = ScoringEngine(cfg.model, info, cfg.runtime, source)

    def __call__(self, batch: pa.Table) -> pa.Table:
        valid = pc.is_null(batch.column(ERROR)).to_numpy(zero_copy_only=False)
        idx = np.flatnonzero(valid)
        ids = _ragged(batch.column(IDS))
        types = _ragged(batch.column(TYPE_IDS)) if TYPE_IDS in batch.column_names else None
        scores = np.zeros((batch.num_rows, self.info.num_labels), dtype=np.float32)
        scores[idx] = self.engine.score(
            [ids[i] for i in idx], [types[i] for i in idx] if types else None
        )
        out = batch.drop_columns([c for c in (IDS, TYPE_IDS) if c in batch.column_names])
        for name, column in score_columns(scores, valid, self.cfg, self.info).items():
            out = out.append_column(name, column)
        assert out.num_rows == batch.num_rows, "scorer must keep every row"
        return out


def build_dataset(cfg: JobConfig, plan: JobPlan, run_id: str) -> ray.data.Dataset:
    """The lazy Ray Data pipeline; executing it writes staged parts and yields their stats."""
    loc = resolve(cfg.input.path, cfg.input.storage)
    rt = cfg.runtime
    ds = ray.data.read_parquet(
        [f.path for f in plan.files],
        filesystem=loc.arrow_fs,
        columns=cfg.needed_columns(),
        file_extensions=None,
        partitioning=None,
    )
    ds = ds.map_batches(
        tokenize_batch,
        fn_kwargs={"cfg": cfg, "info": plan.info},
        batch_size=rt.block_rows,
        batch_format="pyarrow",
        num_cpus=1,
    )
    ds = ds.map_batches(
        ScorerReplica,
        fn_constructor_kwargs={"cfg": cfg, "info": plan.info},
        batch_size=rt.block_rows,
        batch_format="pyarrow",
        concurrency=rt.replicas,
        num_cpus=rt.cpus_per_replica,
        num_gpus=rt.gpus_per_replica,
    )  # Ray restarts a dead scorer and retries its batch (max_restarts=-1 by default)
    if cfg.task == "rerank":
        partitions = max(1, min(200, plan.rows // rt.block_rows + 1))
        ds = ds.groupby(cfg.rerank.group_by, num_partitions=partitions).map_groups(
            rank_group, fn_kwargs={"top_k": cfg.rerank.top_k}, batch_format="pyarrow"
        )
    return ds.map_batches(
        write_part,
        fn_kwargs={"out": cfg.output, "run_id": run_id},
        batch_size=None,
        batch_format="pyarrow",
    )


@dataclass
class RunResult:
    """What a finished run did."""

    run_id: str
    rows_read: int
    rows_written: int
    rows_dead_lettered: int
    rows_dropped_top_k: int
    files_written: int
    seconds: float
    output_path: str

    @property
    def rows_per_second(self) -> float:
        """Input rows handled per wall-clock second."""
        return self.rows_read / self.seconds if self.seconds else 0.0


class InvariantError(RuntimeError):
    """Rows read differ from rows written + dead-lettered + dropped: nothing is committed."""


def ensure_ray() -> None:
    """Join the cluster named by RAY_ADDRESS, or start an in-process Ray."""
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, logging_level=logging.WARNING, log_to_driver=True)


def run_job(cfg: JobConfig, plan: JobPlan | None = None) -> RunResult:
    """Run the whole job and commit its output; returns the counts."""
    check_output_mode(cfg.output)
    plan = plan or plan_job(cfg)
    ensure_ray()
    run_id = new_run_id()
    started = time.monotonic()
    log.info(
        "run %s: %d rows in %d files -> %s", run_id, plan.rows, len(plan.files), cfg.output.path
    )
    parts = [PartStats(**row) for row in build_dataset(cfg, plan, run_id).iter_rows()]
    written = sum(p.rows for p in parts)
    dead = sum(p.dead_rows for p in parts)
    dropped = sum(p.dropped_rows for p in parts)
    if written + dead + dropped != plan.rows:
        raise InvariantError(
            f"rows read {plan.rows} != written {written} + dead-lettered {dead} + "
            f"dropped by top_k {dropped}; nothing committed (staging: run {run_id})"
        )
    seconds = time.monotonic() - started
    manifest = Manifest(
        run_id=run_id,
        files=[],
        dead_letter_files=[],
        input_files=[{"path": f.path, "rows": f.rows} for f in plan.files],
        rows_read=plan.rows,
        rows_written=written,
        rows_dead_lettered=dead,
        rows_dropped_top_k=dropped,
        model=model_fingerprint(cfg.model, plan.info),
        config_hash=cfg.fingerprint(),
        config=cfg.redacted(),
        crossenc_version=__version__,
        summary={
            "seconds": round(seconds, 3),
            "rows_per_second": round(plan.rows / seconds, 1) if seconds else None,
        },
    )
    commit(cfg.output, run_id, parts, manifest)
    result = RunResult(
        run_id,
        plan.rows,
        written,
        dead,
        dropped,
        sum(1 for p in parts if p.file),
        seconds,
        cfg.output.path,
    )
    log.info("run %s committed: %s", run_id, asdict(result))
    return result


def summary_lines(result: RunResult) -> list[str]:
    """A short human summary of a run."""
    return [
        f"run {result.run_id} committed to {result.output_path}",
        f"  rows read {result.rows_read}, written {result.rows_written}, "
        f"dead-lettered {result.rows_dead_lettered}, dropped by top_k "
        f"{result.rows_dropped_top_k}",
        f"  {result.files_written} files, {result.seconds:.1f} s, "
        f"{result.rows_per_second:.1f} rows/s",
    ]
