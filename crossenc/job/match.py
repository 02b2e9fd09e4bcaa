"""Phase 3, match earlier scores (output.incremental): the rows to score are matched against the
earlier runs of the same scoring key, and stored scores made under another stack are checked."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

from crossenc.config import JobConfig
from crossenc.inputs.plan import JobPlan
from crossenc.inputs.read import pending_units, read_units
from crossenc.job.clock import Clock
from crossenc.job.incremental import Matches, earlier_runs, match, reuse_path
from crossenc.job.prepare import Prepared
from crossenc.job.takeover import TakeOver
from crossenc.job.verify import Verdict, check_reuse
from crossenc.models.describe import ModelInfo

log = logging.getLogger(__name__)


@dataclass
class EarlierScores:
    """What this run may take from earlier runs."""

    key: str  # this run's scoring key ("": not incremental; several models: of them all)
    matches: Reuses | None = None  # None: nothing to reuse
    verdict: Verdict | None = None  # the check of scores made under another stack, if any
    keys: dict[str, str] = field(default_factory=dict)  # several models: each one's key
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # several: each one's check


@dataclass
class Reuses:
    """Per model (its short name; a lone model's ""), the matches of its scores."""

    by_model: dict[str, Matches]
    models: list[str]  # every model of the run (one absent from by_model reuses nothing)

    def unit_paths(self, source: str) -> str:
        """An input file's matches, per model: what a read unit carries (JSON). (Built for
        this file alone: ``Matches.paths`` hashes every file's path, and a run has a unit per
        row group.)"""
        return json.dumps(
            {
                name: reuse_path(m.staging, source, m.model)
                for name, m in self.by_model.items()
                if source in m.rows
            }
        )

    def covers(self, todo: dict[str, list[list[int]]]) -> bool:
        """True when every model matched every row of the todo ranges."""
        return all(n in self.by_model and self.by_model[n].covers(todo) for n in self.models)


def scoring_keys(cfg: JobConfig, run: Prepared) -> dict[str, str]:
    """Each model's scoring key, by short name (a lone model's under "")."""
    return {name: view.scoring_key(run.fingerprints[name]) for name, view in cfg.model_views()}


def run_key(keys: dict[str, str]) -> str:
    """The manifest's scoring key: a lone model's own; several models' a key of them all
    (no lone model's run takes it for its own)."""
    if list(keys) == [""]:
        return keys[""]
    joined = json.dumps(keys, sort_keys=True).encode()
    return "models-" + hashlib.sha256(joined).hexdigest()[:32]


def match_earlier(
    cfg: JobConfig, run: Prepared, taken: TakeOver, stack: dict[str, str], clock: Clock
) -> EarlierScores:
    """With output.incremental, match the rows left to score, for each model (``match`` and
    ``verify`` phase seconds go on ``clock``); else nothing to reuse."""
    if not cfg.output.incremental:
        return EarlierScores("")
    keys = scoring_keys(cfg, run)
    several = {} if list(keys) == [""] else keys
    if not taken.todo and not run.plan.pending:
        return EarlierScores(run_key(keys), keys=several)
    started = time.monotonic()
    infos = run.plan.model_infos(cfg)
    found: dict[str, Matches] = {}
    verdicts: dict[str, Verdict] = {}
    for name, view in cfg.model_views():
        matches, verdict = _match(
            view,
            run.plan,
            infos[name],
            name,
            taken.todo,
            keys[name],
            run.staging,
            taken.rows_now,
            stack,
        )
        if matches is not None:
            found[name] = matches
        if verdict is not None:
            verdicts[name] = verdict
    clock.lap("match", started)
    if verdicts:  # (within the match's seconds)
        clock.phases["verify"] = round(sum(v.seconds for v in verdicts.values()), 3)
    reuses = Reuses(found, list(keys)) if found else None
    if reuses is not None and reuses.covers(taken.todo) and not run.plan.pending:
        log.info("incremental: every row to score was scored before: no model is loaded")
    first = verdicts.get(next(iter(keys)))
    return EarlierScores(run_key(keys), reuses, first, several, verdicts if several else {})


def _match(
    cfg: JobConfig,
    plan: JobPlan,
    info: ModelInfo,
    name: str,
    todo: dict[str, list[list[int]]],
    key: str,
    staging: str,
    rows: int,
    stack: dict[str, str],
) -> tuple[Matches | None, Verdict | None]:
    """output.incremental: the earlier runs with model ``name``'s scoring key (``cfg``: the
    config as that model sees it), matched against the rows to score (None: no earlier run to
    match, or none to reuse), and the check of those that recorded another ``stack``
    (:mod:`crossenc.job.verify`; None: nothing to check)."""
    earlier = earlier_runs(cfg, key)
    where = ", ".join(cfg.output.reuse_from) or cfg.output.path
    model = f"model {name}: " if name else ""
    if earlier.other_keys:
        log.warning(
            "incremental: %s%d earlier run(s) in %s scored with another scoring key (another "
            "model, revision, weights, activation, max_length, truncation, dtype...): their "
            "scores are not reused",
            model,
            len(earlier.other_keys),
            where,
        )
    if not earlier.files:
        log.info(
            "incremental: %sno earlier run in %s has scoring key %s: every row is scored",
            model,
            where,
            key,
        )
        return None, None
    units = read_units(plan.files, todo) + pending_units([p for p, _ in plan.pending])
    matches = Matches(match(cfg, info, units, earlier, staging, rows, name), staging, name)
    verdict = check_reuse(cfg, matches, earlier, stack, key, info)
    if verdict is not None:
        log.log(
            logging.INFO if verdict.decision == "reused" else logging.WARNING,
            "incremental: %sscores made under another stack: %s",
            model,
            verdict.reason,
        )
        if verdict.decision == "rescored":
            return None, verdict
    return matches, verdict
