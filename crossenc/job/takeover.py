"""Phase 2, take over (output.mode resume): the parts interrupted runs staged that this run keeps,
and the row ranges left to score; then the run's record is staged."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from crossenc.config import JobConfig
from crossenc.job.accounting import rows_in, todo_ranges, usable_parts
from crossenc.job.prepare import Prepared
from crossenc.output.commit import check_same_run, staged_parts, write_run_record
from crossenc.output.parts import PartStats

log = logging.getLogger(__name__)


@dataclass
class TakeOver:
    """What is left to do."""

    kept: list[PartStats]  # interrupted runs' parts this run takes over
    todo: dict[str, list[list[int]]]  # per input file, the row ranges still to score
    rows_now: int = 0  # rows to score, files whose footers are still to be read included
    files_resumed: int = 0  # input files whose every row was taken over
    done: dict[str, Any] | None = None  # the output holds this run already

    @property
    def rows_resumed(self) -> int:
        """Rows taken over from interrupted runs."""
        return sum(p.accounted for p in self.kept)


def take_over(cfg: JobConfig, run: Prepared) -> TakeOver:
    """On a resume, the staged parts of the runs interrupted since the last commit that still
    fit the input (:func:`crossenc.job.accounting.usable_parts`); ``done`` when the output
    already holds the committed run of this very config and model. Stages the run's record."""
    kept: list[PartStats] = []
    plan = run.plan
    if cfg.output.mode == "resume":
        after = run.committed["run_id"] if run.committed is not None else None
        staged = staged_parts(cfg.output, run.record, after)
        if run.committed is not None and not staged:
            check_same_run(run.committed, run.record, "the committed run")
            log.info("resume: %s already holds the committed run", cfg.output.path)
            return TakeOver([], {}, done=run.committed)
        kept = usable_parts(staged, plan.files)
    todo = todo_ranges(plan.files, kept)
    write_run_record(cfg.output, run.record)
    rows_now = rows_in(todo) + plan.rows_estimate - plan.rows  # footers still to read
    files_resumed = sum(1 for f in plan.files if f.path not in todo)
    log.info(
        "run %s: %d rows of %d files -> %s (%d rows of %d files taken over from interrupted "
        "runs, %d skipped)",
        run.record.run_id,
        rows_now,
        len(todo),
        cfg.output.path,
        plan.rows - rows_now,
        files_resumed,
        len(plan.skipped),
    )
    return TakeOver(kept, todo, rows_now, files_resumed)
