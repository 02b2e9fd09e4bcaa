"""The job, as its phases, one module of :mod:`crossenc.job` each:

1. :mod:`~crossenc.job.prepare`: the output's state, the input's plan, Ray;
2. :mod:`~crossenc.job.takeover`: what interrupted runs staged that a resume keeps;
   :mod:`~crossenc.job.gate`: a path faster than float32 checked against it (and calibrated);
3. :mod:`~crossenc.job.match`: earlier runs' scores to reuse (output.incremental);
4. :mod:`~crossenc.job.passes`: the score passes (the dataflow of :mod:`~crossenc.job.dataflow`);
5. :mod:`~crossenc.job.accounting`: every row read written, dead-lettered or dropped once;
   :mod:`~crossenc.job.evaluation`: the metrics against gold labels (task: evaluate);
6. :mod:`~crossenc.job.summary`: the run summary, and the drift against an earlier run;
7. :mod:`~crossenc.job.manifest` and :mod:`~crossenc.job.commit`: the one commit;
8. :mod:`~crossenc.job.report`: the HTML report (output.report).
"""

from __future__ import annotations

import logging
import time

from crossenc.config import JobConfig
from crossenc.inputs.plan import JobPlan
from crossenc.job.accounting import Ledger, account
from crossenc.job.clock import Clock
from crossenc.job.cluster import for_this_machine
from crossenc.job.commit import commit_run
from crossenc.job.evaluation import evaluate_run, with_leaderboard
from crossenc.job.gate import gate
from crossenc.job.manifest import build_manifest
from crossenc.job.match import match_earlier
from crossenc.job.passes import score
from crossenc.job.prepare import prepare
from crossenc.job.result import RunResult, already_committed, run_result
from crossenc.job.summary import summarise
from crossenc.job.takeover import take_over
from crossenc.versions import stack_versions

log = logging.getLogger(__name__)


def run_job(cfg: JobConfig, plan: JobPlan | None = None) -> RunResult:
    """Run the whole job and commit its output; returns the counts and the run summary."""
    clock = Clock.start(plan)
    cfg = for_this_machine(cfg)
    run = prepare(cfg, plan)
    clock.phases["inspect"] = round(run.plan.inspect_seconds, 3)
    taken = take_over(cfg, run)
    if taken.done is not None:
        return already_committed(taken.done, clock.seconds(), cfg.output.path)
    run.plan, checked = gate(cfg, run.plan)
    if checked:
        clock.phases["gate"] = checked["seconds"]
    stack = stack_versions(cfg.model.backend)
    ledger = Ledger(run.output, run.staging, taken.kept, taken.rows_now)
    earlier = match_earlier(cfg, run, taken, stack, clock)
    started = time.monotonic()
    score(cfg, run, taken, ledger, earlier)
    staged_at = clock.lap("score", started)
    plan, run_id = run.plan, run.record.run_id
    counts = account(plan.files, plan.rows, ledger, taken.kept, run_id)
    files = (len(plan.files), len(plan.skipped))
    evaluation = None
    if cfg.task == "evaluate":
        evaluation = evaluate_run(
            cfg,
            run.output,
            ledger.parts,
            plan.model_infos(cfg),
            run_id,
            run.compared,
            ledger.metrics if plan.evaluate_within_files or plan.evaluate_shuffled else None,
        )
        staged_at = clock.lap("evaluate", staged_at)
    summary = summarise(
        cfg,
        run_id,
        files,
        ledger.metrics,
        counts,
        clock,
        staged_at,
        run.previous,
        earlier.verdicts or earlier.verdict,
        checked,
    )
    if evaluation is not None:
        summary["evaluation"] = with_leaderboard(evaluation, summary, cfg.runtime)
    manifest = build_manifest(
        cfg, run, counts, summary, taken.kept, earlier.key, stack, earlier.keys
    )
    seconds = commit_run(run, manifest, ledger.parts, summary, clock, staged_at)
    if cfg.output.report:
        from crossenc.job.report import write_report  # (matplotlib: only when asked for)

        write_report(summary, cfg.output.report, cfg.output.storage)
        log.info("report written to %s", cfg.output.report)
    return run_result(cfg, run_id, plan, counts, taken.files_resumed, summary, seconds)
