"""Phase 4, score passes: the dataflow run over the rows to score, writers started and flushed, and
rows a dead writer lost scored again."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import ray

from crossenc.config import JobConfig
from crossenc.evaluation.streamed import FileEvaluation
from crossenc.inputs.plan import JobPlan
from crossenc.inputs.read import pending_units, read_units
from crossenc.job.accounting import Ledger, rows_in, todo_ranges
from crossenc.job.cluster import ensure_ray
from crossenc.job.dataflow import build_dataset
from crossenc.job.match import EarlierScores, Reuses
from crossenc.job.prepare import Prepared
from crossenc.job.progress import ScoredRows
from crossenc.job.takeover import TakeOver
from crossenc.mining.negatives import mine_spec
from crossenc.models.several import build_model_set, named
from crossenc.output.parts import (
    PartStats,
)
from crossenc.output.writer import WriterOptions, writer_actor
from crossenc.tasks.base import SCORE

log = logging.getLogger(__name__)


WHOLE_INPUT_ROWS = 1_000_000  # a rerank (mine) this small is handled in its one writer, no shuffle


def score_pass(
    cfg: JobConfig,
    plan: JobPlan,
    todo: dict[str, list[list[int]]],
    run_id: str,
    attempt: int,
    on_parts: Any,
    on_progress: Any,
    reuse: Reuses | None = None,
    on_scored: Any = None,
) -> None:
    """One pass of the pipeline over the todo ranges: writers started, the stream consumed,
    the writers flushed (a writer that died loses its open file: the next pass redoes it).
    ``reuse``: output.incremental's matches (see :mod:`crossenc.job.incremental`).
    ``on_scored``: told the rows the replicas score as they score them, where the rows reach
    the driver only after a shuffle (``on_progress`` then only records them)."""
    ensure_ray()
    files = cfg.output.files
    count = cfg.runtime.writers or cfg.runtime.replicas
    rows = rows_in(todo)
    # A rerank (task mine, an evaluation of rankings) handles each group (query) once its rows
    # are all in one writer: those of each input file where no group spans files; where they
    # may, a small input's in its one writer, else those of each group after a shuffle.
    grouped = cfg.task in ("rerank", "mine") or plan.evaluate_shuffled
    in_files = plan.rerank_within_files or plan.mine_within_files
    whole = (
        grouped and not in_files and count == 1 and rows <= min(files.max_rows, WHOLE_INPUT_ROWS)
    )
    within = grouped and (in_files or whole)
    ranked = cfg.task == "rerank" and within
    measured = plan.evaluate_within_files  # held until a file is whole
    shuffled = grouped and not within  # its rows reach the writers only at the end
    options = WriterOptions(
        max_rows=files.max_rows,
        max_bytes=int(files.max_mib * 2**20),
        max_seconds=files.max_seconds,
        rerank_by=cfg.rerank.group_by if ranked else None,
        top_k=cfg.rerank.top_k if ranked else None,
        expected_rows=(
            {f.path: f.rows for f in plan.files if f.path in todo} if within or measured else {}
        ),
        rank_whole_input=whole,
        models=tuple(name for name, _ in cfg.model_views()),
        evaluate=(
            file_evaluation(cfg, plan)
            if plan.evaluate_within_files or plan.evaluate_shuffled
            else None
        ),
        mine=mine_spec(cfg) if cfg.task == "mine" else None,
        hold_groups=cfg.group_column() if cfg.task != "rerank" and shuffled else None,
    )
    counter = ScoredRows(on_scored) if shuffled and on_scored is not None else None
    actor = writer_actor()
    prefix = f"r{attempt}" if attempt else ""
    writers = [actor.remote(cfg.output, run_id, f"{prefix}w{i}", options) for i in range(count)]
    try:
        units = read_units(plan.files, todo) + pending_units([p for p, _ in plan.pending])
        if cfg.output.incremental:
            for unit in units:
                unit["reuse"] = reuse.unit_paths(str(unit["file"])) if reuse else ""
        ds = build_dataset(
            cfg,
            units,
            plan.info,
            run_id,
            writers,
            options,
            shuffled,
            dict(plan.reference),
            load_model=not (reuse and reuse.covers(todo) and not plan.pending),
            counter=counter.actor if counter else None,
            models=build_model_set(cfg, plan.model_infos(cfg)) if cfg.models else None,
        )
        for row in ds.iter_rows():
            on_progress(row["t"], row["accounted"], counted=counter is not None)
            on_parts([PartStats(**p) for p in json.loads(row["parts"])])
        for writer in writers:
            try:
                on_parts(ray.get(writer.flush.remote()))
            except ray.exceptions.RayActorError:
                log.warning("an output writer died: its open file is scored again")
    finally:
        if counter is not None:
            counter.close()
        for writer in writers:
            ray.kill(writer)


def file_evaluation(cfg: JobConfig, plan: JobPlan) -> FileEvaluation:
    """What the writers need to measure each input file's queries (evaluate.within_files)."""
    ev, infos = cfg.evaluate, plan.model_infos(cfg)
    scores = tuple((name, named(SCORE, name)) for name, _ in cfg.model_views())
    assert all(infos[name].num_labels == 1 for name, _ in scores)  # (kind rerank's check)
    return FileEvaluation(ev.group_by, ev.gold, ev.at_k, ev.relevant_from, scores)


def score_passes(
    cfg: JobConfig,
    plan: JobPlan,
    todo: dict[str, list[list[int]]],
    parts: list[PartStats],
    run_id: str,
    pending: Any,
    on_parts: Any,
    on_progress: Any,
    reuse: Reuses | None = None,
    on_scored: Any = None,
) -> tuple[JobPlan, dict[str, list[list[int]]]]:
    """Score the todo ranges; while rows are missing (a writer died with its open file), score
    them again, at most twice. Returns the plan with every footer read, and what is missing."""
    for attempt in range(3):
        if not todo and not plan.pending:
            break
        if attempt:
            log.warning(
                "%d rows of %d files were not written (a writer died): scoring them again",
                rows_in(todo),
                len(todo),
            )
        score_pass(cfg, plan, todo, run_id, attempt, on_parts, on_progress, reuse, on_scored)
        if pending is not None:  # every footer is known now: the accounting needs them all
            # (the model's description as the gate left it: its int8 calibration pairs)
            plan, pending = replace(pending.result(), info=plan.info), None
        todo = todo_ranges(plan.files, parts)
    return plan, todo


def score(
    cfg: JobConfig, run: Prepared, taken: TakeOver, ledger: Ledger, earlier: EarlierScores
) -> None:
    """Phase 4: score the rows left (:func:`score_passes`), each closed part going to the
    ``ledger``; ``run.plan`` becomes the plan with every footer read. A failure is reported as
    being outrun when another run committed meanwhile (and may have removed this one's files)."""
    try:
        run.plan, _ = score_passes(
            cfg,
            run.plan,
            taken.todo,
            ledger.parts,
            run.record.run_id,
            run.pending,
            ledger.on_parts,
            ledger.on_progress,
            earlier.matches,
            ledger.on_scored,
        )
    except Exception:
        run.committer.check_not_outrun(run.base, run.record.run_id, ledger.parts)
        raise
    finally:
        ledger.progress.close()
    ledger.journal.flush()
