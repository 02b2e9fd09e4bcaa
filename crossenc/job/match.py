"""Phase 3, match earlier scores (output.incremental): the rows to score are matched against the
earlier runs of the same scoring key, and stored scores made under another stack are checked."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from crossenc.config import JobConfig
from crossenc.inputs.plan import JobPlan
from crossenc.inputs.read import pending_units, read_units
from crossenc.job.clock import Clock
from crossenc.job.incremental import Matches, earlier_runs, match
from crossenc.job.prepare import Prepared
from crossenc.job.takeover import TakeOver
from crossenc.job.verify import Verdict, check_reuse

log = logging.getLogger(__name__)


@dataclass
class EarlierScores:
    """What this run may take from earlier runs."""

    key: str  # this run's scoring key ("": not incremental)
    matches: Matches | None = None  # None: nothing to reuse
    verdict: Verdict | None = None  # the check of scores made under another stack, if any


def match_earlier(
    cfg: JobConfig, run: Prepared, taken: TakeOver, stack: dict[str, str], clock: Clock
) -> EarlierScores:
    """With output.incremental, match the rows left to score (``match`` and ``verify`` phase
    seconds go on ``clock``); else nothing to reuse."""
    if not cfg.output.incremental:
        return EarlierScores("")
    key = cfg.scoring_key(run.record.model)
    if not taken.todo and not run.plan.pending:
        return EarlierScores(key)
    started = time.monotonic()
    matches, verdict = _match(cfg, run.plan, taken.todo, key, run.staging, taken.rows_now, stack)
    clock.lap("match", started)
    if verdict is not None:  # (within the match's seconds)
        clock.phases["verify"] = round(verdict.seconds, 3)
    return EarlierScores(key, matches, verdict)


def _match(
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
    that recorded another ``stack`` (:mod:`crossenc.job.verify`; None: nothing to check)."""
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
    verdict = check_reuse(cfg, matches, earlier, stack, key, plan.info)
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
