"""Phase 6, summarise and compare: the run summary, and how far the run moved from a previous one.

:func:`build_summary` turns the metrics the driver folded from every part
(:class:`crossenc.metrics.RunMetrics`) into the run summary (score quantiles come from the
samples, each weighted by the rows it stands for). :func:`compare_runs` measures how far this
run's labels and scores moved from a previous run's summary: the total variation distance of
the label distribution and, per score column, the largest gap between this run's score CDF and
the previous run's, read at its percentiles (a Kolmogorov-Smirnov distance on 101 points).
:func:`summary_table` is the summary for a terminal.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from crossenc.config import JobConfig
from crossenc.job.accounting import Counts
from crossenc.job.clock import Clock
from crossenc.job.evaluation import leaderboard_lines, summary_row
from crossenc.job.verify import Verdict
from crossenc.metrics import RunMetrics
from crossenc.mining.negatives import FOLDER, MineCounts

log = logging.getLogger(__name__)


def build_summary(
    metrics: RunMetrics,
    *,
    run_id: str,
    task: str,
    model: str,
    started: float,
    wall_seconds: float,
    rows: dict[str, int],
    files: dict[str, int],
) -> dict[str, Any]:
    """The run summary (JSON-ready) from the folded metrics and the run's counts."""
    real = sum(v[2] for v in metrics.replicas.values())
    computed = sum(v[3] for v in metrics.replicas.values())
    return {
        "run_id": run_id,
        "task": task,
        "model": model,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(wall_seconds, 3),
        "rows": {**rows, "truncated": metrics.truncated},
        "files": files,
        "rows_per_second": round(rows["scored"] / wall_seconds, 1) if wall_seconds else None,
        "replicas": [
            {
                "replica": name,
                "runs": metrics.runs.get(name),
                "rows": int(n),
                "busy_seconds": round(busy, 3),
                "rows_per_second": round(n / busy, 1) if busy else None,
                "utilization": round(busy / wall_seconds, 3) if wall_seconds else None,
                "load_seconds": round(load, 3),
                "oom_splits": int(oom),
            }
            for name, (n, busy, _, _, load, oom) in sorted(metrics.replicas.items())
        ],
        **({"models": model_rows(metrics.models)} if metrics.models else {}),
        "padding_efficiency": round(real / computed, 4) if computed else None,
        "store": {"retried_requests": metrics.store_retries},
        "scores": {col: stats.summary() for col, stats in sorted(metrics.scores.items())},
        "labels": (
            dict(sorted(metrics.labels.items()))
            if task == "classify" or (task == "evaluate" and metrics.labels)
            else None
        ),
        "token_lengths": metrics.token_histogram(),
        "throughput": metrics.throughput(started),
        "drift": None,
    }


def model_rows(models: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Several models: each one's rows and busy seconds summed over the replicas, and its
    docs/s per replica (rows per second of a replica's time spent in that model)."""
    return [
        {
            "model": name,
            "rows": int(rows),
            "busy_seconds": round(busy, 3),
            "docs_per_second_per_replica": round(rows / busy, 1) if busy else None,
        }
        for name, (rows, busy) in models.items()
    ]


def label_tvd(now: dict[str, int], before: dict[str, int]) -> float:
    """Total variation distance between two label count tables (0 = same shares, 1 = disjoint)."""
    a, b = sum(now.values()), sum(before.values())
    if not a or not b:
        return 0.0 if a == b else 1.0
    names = set(now) | set(before)
    return 0.5 * sum(abs(now.get(k, 0) / a - before.get(k, 0) / b) for k in names)


def score_ks(now: dict[str, Any], before: dict[str, Any]) -> float:
    """Largest gap between this run's score CDF and the previous run's, each read at the other's
    percentile points (both runs store 101)."""
    x_now, x_before = np.asarray(now["percentiles"]), np.asarray(before["percentiles"])
    levels_now, levels_before = np.linspace(0, 1, len(x_now)), np.linspace(0, 1, len(x_before))
    f_now = np.interp(x_before, x_now, levels_now, left=0.0, right=1.0)
    f_before = np.interp(x_now, x_before, levels_before, left=0.0, right=1.0)
    return float(max(np.abs(f_now - levels_before).max(), np.abs(f_before - levels_now).max()))


def compare_runs(
    summary: dict[str, Any],
    previous: dict[str, Any],
    compare_to: str,
    max_label_tvd: float,
    max_score_ks: float,
) -> dict[str, Any]:
    """The drift section of a summary: distances to the previous run and whether they exceed
    the thresholds."""
    reasons = []
    tvd = None
    if summary.get("labels") is not None and previous.get("labels") is not None:
        tvd = round(label_tvd(summary["labels"], previous["labels"]), 4)
        if tvd > max_label_tvd:
            reasons.append(f"label distribution moved: TVD {tvd} > {max_label_tvd}")
    ks = {}
    for col, stats in summary.get("scores", {}).items():
        before = previous.get("scores", {}).get(col)
        if before and "percentiles" in before:
            ks[col] = round(score_ks(stats, before), 4)
            if ks[col] > max_score_ks:
                reasons.append(f"{col} distribution moved: KS {ks[col]} > {max_score_ks}")
    missing = sorted(set(previous.get("scores", {})) ^ set(summary.get("scores", {})))
    if missing:
        reasons.append(f"score columns differ from the previous run: {', '.join(missing)}")
    return {
        "compare_to": compare_to,
        "previous_run_id": previous.get("run_id"),
        "label_tvd": tvd,
        "score_ks": ks,
        "thresholds": {"max_label_tvd": max_label_tvd, "max_score_ks": max_score_ks},
        "drifted": bool(reasons),
        "reasons": reasons,
        "previous": {
            "labels": previous.get("labels"),
            "scores": {
                c: {"quantiles": s.get("quantiles"), "histogram": s.get("histogram")}
                for c, s in previous.get("scores", {}).items()
            },
        },
    }


def summary_table(summary: dict[str, Any]) -> str:
    """The summary as an aligned text table for the terminal."""
    rows, files = summary["rows"], summary["files"]
    lines = [
        ("run", summary["run_id"]),
        ("rows read", rows["read"]),
        ("rows scored (this run)", rows["scored"]),
        ("rows written", rows["written"]),
        ("rows dead-lettered", rows["dead_lettered"]),
        ("rows dropped by top_k", rows["dropped_top_k"]),
        ("rows resumed", rows["resumed"]),
        *(
            [("rows new / reused from earlier runs", f"{rows['new']} / {rows['reused']}")]
            if "reused" in rows
            else []
        ),
        *(
            [("reused rows not written (skip)", rows["skipped_reused"])]
            if rows.get("skipped_reused")
            else []
        ),
        ("rows truncated", rows["truncated"]),
        ("input files / skipped", f"{files['input']} / {files['skipped']}"),
        ("wall time (s)", summary["wall_seconds"]),
        ("rows/s overall", summary["rows_per_second"]),
        ("padding efficiency", summary["padding_efficiency"]),
    ]
    phases = summary.get("phases") or {}
    if phases:
        lines.append(
            (
                "phases (s)",
                ", ".join(f"{k} {v if v is not None else '?'}" for k, v in phases.items()),
            )
        )
    if summary.get("store"):
        lines.append(("store requests retried", summary["store"]["retried_requests"]))
    for r in summary["replicas"]:
        lines.append(
            (
                f"replica {r['replica']}",
                f"{r.get('runs') or '?'}: {r['rows']} rows, {r['rows_per_second']} rows/s busy, "
                f"utilization {r['utilization']}, model load {r.get('load_seconds', 0)} s"
                + (f", {r['oom_splits']} out-of-memory splits" if r.get("oom_splits") else ""),
            )
        )
    for m in summary.get("models") or []:
        lines.append(
            (
                f"model {m['model']}",
                f"{m['rows']} rows, {m['docs_per_second_per_replica']} docs/s per replica, "
                f"busy {m['busy_seconds']} s",
            )
        )
    for col, s in summary["scores"].items():
        q = s["quantiles"]
        lines.append(
            (
                f"{col} p5/p25/p50/p75/p95",
                " / ".join(f"{q[k]:.4g}" for k in ("p5", "p25", "p50", "p75", "p95")),
            )
        )
    if summary["labels"] is not None:
        total = sum(summary["labels"].values()) or 1
        for label, n in summary["labels"].items():
            lines.append((f"label {label}", f"{n} ({n / total:.1%})"))
    gate = summary.get("gate")
    if gate:
        shown = ("spearman", "max_abs_diff", "label_agreement", "top10_overlap")
        said = ", ".join(f"{k} {gate[k]}" for k in shown if gate.get(k) is not None)
        lines.append((f"quality gate ({gate['path']})", f"{said}; {gate['seconds']} s"))
    drift = summary.get("drift")
    if drift:
        verdict = "DRIFT: " + "; ".join(drift["reasons"]) if drift["drifted"] else "no drift"
        lines.append((f"vs {drift['compare_to']}", verdict))
    lines += mining_lines(summary.get("mining"))
    evaluation = summary.get("evaluation")
    if evaluation:
        lines.append(summary_row(evaluation))
    width = max(len(k) for k, _ in lines)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
    if evaluation:
        text += "\n" + "\n".join(leaderboard_lines(evaluation))
    return text


def mining_summary(cfg: JobConfig, metrics: RunMetrics) -> dict[str, Any]:
    """task mine's section: what choosing the negatives found (queries without a positive,
    queries given fewer negatives than asked, candidates each filter dropped: the false
    negatives a margin caught) and the mined rows' files, the data files' twins under
    ``_mined/`` (the commit removes any other)."""
    found = metrics.mining or MineCounts().as_dict()
    files = list(dict.fromkeys(metrics.mined_files))
    mine = cfg.mine
    return {
        "output_format": mine.output_format,
        "num_negatives": mine.num_negatives,
        "teacher": [name or cfg.model.name for name, _ in cfg.model_views()],
        **found,
        "folder": f"{cfg.output.path.rstrip('/')}/{FOLDER}",
        "files": files,
    }


def mining_lines(mining: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """task mine's lines of the terminal summary."""
    if not mining:
        return []
    dropped = ", ".join(f"{k} {v}" for k, v in mining["dropped"].items() if v) or "none"
    return [
        ("queries mined", mining["queries"]),
        ("queries without a positive", mining["without_positive"]),
        (f"queries with < {mining['num_negatives']} negatives", mining["short"]),
        ("candidates dropped (filters)", dropped),
        (f"{mining['output_format']} rows ({mining['negatives']} negatives)", mining["rows"]),
        ("mined rows in", f"{mining['folder']} ({len(mining['files'])} files)"),
    ]


def summarise(
    cfg: JobConfig,
    run_id: str,
    files: tuple[int, int],
    metrics: RunMetrics,
    counts: Counts,
    clock: Clock,
    staged_at: float,
    previous: dict[str, Any] | None = None,
    verdict: Verdict | dict[str, Verdict] | None = None,
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Phase 6: the run summary (``files``: input files, skipped ones), with the phases' seconds,
    output.incremental's verdict on scores made under another stack, the quality gate's
    figures (``gate``, :mod:`crossenc.job.gate`; None: a float32 path, not checked) and the
    drift against output.compare_to's run (``previous``), whose reasons are logged."""
    incremental = {
        "new": counts.scored,
        "reused": counts.reused,
        "skipped_reused": counts.skipped_reused,
    }
    clock.phases["commit"] = None  # known once committed: _summary.json and the report carry it
    summary = build_summary(
        metrics,
        run_id=run_id,
        task=cfg.task,
        model=cfg.model.name,
        started=clock.wall_started,
        wall_seconds=staged_at - clock.started,
        rows={
            "read": counts.read,
            "scored": counts.scored,
            "written": counts.written,
            "dead_lettered": counts.dead_lettered,
            "dropped_top_k": counts.dropped_top_k,
            "resumed": counts.resumed,
            # output.incremental: rows this run read that no earlier run had scored, rows whose
            # scores were copied (and, skip, of those the ones not written)
            **(incremental if cfg.output.incremental else {}),
        },
        files={"input": files[0], "skipped": files[1], "written": counts.files_written},
    )
    summary["phases"] = clock.phases
    summary["gate"] = gate
    if cfg.task == "mine":
        summary["mining"] = mining_summary(cfg, metrics)
    if isinstance(verdict, dict):  # several models: each one's check
        summary["reuse"] = {"models": {n: v.summary() for n, v in verdict.items()}}
    elif verdict is not None:
        summary["reuse"] = verdict.summary()
    if previous is not None:
        drift = cfg.output.drift
        summary["drift"] = compare_runs(
            summary, previous, str(cfg.output.compare_to), drift.max_label_tvd, drift.max_score_ks
        )
        for reason in summary["drift"]["reasons"]:
            log.warning("drift against %s: %s", cfg.output.compare_to, reason)
    return summary
