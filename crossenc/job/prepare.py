"""Phase 1, prepare: the output's state, the input's plan and Ray, the first two read while Ray
starts; and the run's record (its id, config and model fingerprints, the commit it builds on)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from crossenc.config import ConfigError, JobConfig
from crossenc.inputs.plan import JobPlan, finish_inspection, plan_job
from crossenc.job.cluster import ensure_ray
from crossenc.models.describe import fingerprint_and_digest
from crossenc.output.commit import RunRecord, staging_dir
from crossenc.output.committers import committer_for, previous_manifest
from crossenc.output.parts import new_run_id
from crossenc.output.tables import Committer
from crossenc.storage import Location, resolve


@dataclass
class Prepared:
    """The run before any row is scored."""

    committer: Committer  # the Parquet folder's, a Delta or an Iceberg table's
    base: int  # the output's commit generation this run builds on
    committed: dict[str, Any] | None  # the manifest of the run committed there, if any
    previous: dict[str, Any] | None  # output.compare_to's run summary, if set
    plan: JobPlan  # every footer read once ``pending`` is done
    record: RunRecord
    pending: Future[JobPlan] | None  # the rest of the footers, read while the run scores
    output: Location  # output.path on its store
    staging: str  # the run's staging folder there (its journal, its matches)
    compared: dict[str, dict[str, Any]]  # evaluate.compare_to: each run's evaluation section
    # models: each one's fingerprint by short name (a lone model's: record.model, under "")
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)


def prepare(cfg: JobConfig, plan: JobPlan | None = None) -> Prepared:
    """Read the output's state and plan the input (unless ``plan`` is given) while Ray starts;
    a resume reads every footer first (what it keeps depends on every file's rows), any other
    run reads the rest while it scores."""
    committer = committer_for(cfg.output)

    def read_state() -> tuple[Any, ...]:
        base, committed = committer.prepare()
        committer.check_mode(committed)
        previous, compared = previous_summary(cfg), earlier_evaluations(cfg)
        return base, committed, previous, compared, plan or plan_job(cfg)

    with ThreadPoolExecutor(1, thread_name_prefix="prepare") as pool:
        state = pool.submit(read_state)
        try:
            ensure_ray()
        finally:
            base, committed, previous, compared, plan = state.result()
    fingerprint, digest = fingerprint_and_digest(cfg.model, plan.info)
    plan = replace(plan, info=replace(plan.info, digest=digest))  # the replicas' export key
    others = []
    views = cfg.model_views()
    fingerprints = {views[0][0]: fingerprint}
    for (name, view), (_, info) in zip(views[1:], plan.others, strict=True):
        fingerprints[name], digest_of = fingerprint_and_digest(view.model, info)
        others.append((name, replace(info, digest=digest_of)))
    plan = replace(plan, others=tuple(others))
    record = RunRecord(
        new_run_id(),
        cfg.fingerprint(),
        fingerprint,
        base,
        dict(cfg.output.partition_value),
    )
    pending = None
    if plan.pending and cfg.output.mode == "resume":
        plan = finish_inspection(cfg, plan)
    elif plan.pending:
        footers = ThreadPoolExecutor(1, thread_name_prefix="footers")
        pending = footers.submit(finish_inspection, cfg, plan)
        footers.shutdown(wait=False)
    output = resolve(cfg.output.path, cfg.output.storage)
    staging = staging_dir(output, record.run_id)
    return Prepared(
        committer,
        base,
        committed,
        previous,
        plan,
        record,
        pending,
        output,
        staging,
        compared,
        fingerprints,
    )


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


def earlier_evaluations(cfg: JobConfig) -> dict[str, dict[str, Any]]:
    """evaluate.compare_to: the evaluation section of each run named (a Parquet folder, a Delta
    table or ``iceberg:<name>``, read as output.compare_to's run is), refused, naming the path,
    where there is no committed run or it has no per-query ranking metrics."""
    if cfg.task != "evaluate":
        return {}
    out = {}
    for path in cfg.evaluate.compare_to:
        manifest = previous_manifest(cfg.output.model_copy(update={"compare_to": path}))
        if manifest is None:
            raise ConfigError(
                f"evaluate.compare_to {path}: no committed run there (_SUCCESS and "
                "_manifest.json, or a table commit of crossenc)"
            )
        evaluation = manifest.get("summary", {}).get("evaluation")
        if not evaluation or not evaluation.get("per_query"):
            raise ConfigError(
                f"evaluate.compare_to {path}: its run has no per-query ranking metrics (a task "
                "evaluate run of kind rerank)"
            )
        out[path] = evaluation
    return out
