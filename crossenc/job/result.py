"""What a run did (RunResult), and its lines for the terminal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crossenc.config import JobConfig
from crossenc.inputs.plan import JobPlan
from crossenc.job.accounting import Counts
from crossenc.job.summary import summary_table


@dataclass
class RunResult:
    """What a run did. ``rows_scored`` is what this run read and scored with the model; on a
    resume, ``rows_resumed`` were taken over from the interrupted run's staged parts; with
    output.incremental, ``rows_reused`` took their scores from an earlier run. ``summary`` is
    the run summary committed beside the manifest (see :mod:`crossenc.job.summary`)."""

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


def already_committed(manifest: dict[str, Any], seconds: float, path: str) -> RunResult:
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


def summary_lines(result: RunResult) -> list[str]:
    """The run summary for the terminal: what was committed where, then the summary table."""
    head = (
        f"output {result.output_path} was already committed by run {result.run_id}"
        if result.already_committed
        else f"run {result.run_id} committed to {result.output_path}"
    )
    return [head, *(summary_table(result.summary).splitlines() if result.summary else [])]


def run_result(
    cfg: JobConfig,
    run_id: str,
    plan: JobPlan,
    counts: Counts,
    files_resumed: int,
    summary: dict[str, Any],
    seconds: float,
) -> RunResult:
    """What the committed run did, for the caller."""
    return RunResult(
        run_id=run_id,
        rows_read=counts.read,
        rows_written=counts.written,
        rows_dead_lettered=counts.dead_lettered,
        rows_dropped_top_k=counts.dropped_top_k,
        rows_scored=counts.scored,
        rows_resumed=counts.resumed,
        files_resumed=files_resumed,
        files_skipped=len(plan.skipped),
        skipped=[b.reason for b in plan.skipped],
        files_written=summary["files"]["written"],
        seconds=seconds,
        output_path=cfg.output.path,
        summary=summary,
        rows_reused=counts.reused,
    )
