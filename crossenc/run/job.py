"""The Ray Data job: read Parquet → tokenize → score on replicas → post-process → write → commit."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from crossenc import __version__
from crossenc.config import JobConfig
from crossenc.inputs.plan import JobPlan, finish_inspection, plan_job
from crossenc.metrics import RunMetrics
from crossenc.models.load import model_fingerprint
from crossenc.output.commit import (
    Manifest,
    RunRecord,
    check_same_run,
    staged_parts,
    staging_dir,
    write_run_record,
)
from crossenc.output.committers import committer_for
from crossenc.output.journal import Journal
from crossenc.output.parts import (
    PartStats,
    new_run_id,
)
from crossenc.run.accounting import check_accounted, rows_in, todo_ranges, usable_parts
from crossenc.run.cluster import ensure_ray, for_this_machine
from crossenc.run.match import match_earlier
from crossenc.run.passes import score_passes
from crossenc.run.progress import Progress
from crossenc.run.result import RunResult, already_committed
from crossenc.run.summary import build_summary, compare_runs, previous_summary
from crossenc.storage import resolve, retried_requests
from crossenc.versions import stack_versions

log = logging.getLogger(__name__)

















































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
            return already_committed(committed, time.monotonic() - started, cfg.output.path)
        kept = usable_parts(staged, plan.files)
    todo = todo_ranges(plan.files, kept)
    write_run_record(cfg.output, record)
    rows_now = rows_in(todo)
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
        reuse, verdict = match_earlier(cfg, plan, todo, key, staging, rows_now, stack)
        phases["match"] = round(time.monotonic() - match_started, 3)
        if verdict is not None:  # (within the match's seconds)
            phases["verify"] = round(verdict.seconds, 3)
    score_started = time.monotonic()
    try:
        plan, todo = score_passes(
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


