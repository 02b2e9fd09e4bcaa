"""Phase 7b, commit: the run's parts and manifest become the output's committed run (one
conditional write, see :mod:`crossenc.output.commit`), then the final summary is written."""

from __future__ import annotations

import logging
from typing import Any

from crossenc.job.clock import Clock
from crossenc.job.prepare import Prepared
from crossenc.output.commit import Manifest
from crossenc.output.parts import PartStats

log = logging.getLogger(__name__)


def commit_run(
    run: Prepared,
    manifest: Manifest,
    parts: list[PartStats],
    summary: dict[str, Any],
    clock: Clock,
    staged_at: float,
) -> float:
    """Commit, clean up, and write the summary with the commit's and the cleanup's seconds and
    the whole run's; returns the run's seconds."""
    committed_at = run.committer.commit(manifest, parts, run.base)
    clock.phases["commit"] = round(committed_at - staged_at, 3)
    clock.lap("cleanup", committed_at)
    seconds = clock.seconds()
    summary["wall_seconds"] = round(seconds, 3)
    summary["store"]["retried_requests"] += clock.retried_since_start()  # the driver's own
    run.committer.write_summary(summary)
    log.info(
        "run %s committed: %d rows written, %d dead-lettered, %.1f s (inspect %.1f s, score "
        "%.1f s, commit %.1f s)",
        manifest.run_id,
        manifest.rows_written,
        manifest.rows_dead_lettered,
        seconds,
        clock.phases["inspect"],
        clock.phases["score"],
        clock.phases["commit"],
    )
    return seconds
