"""Phase 7a, the manifest: what the commit records of the run (files, counts, config, model,
summary, scoring key and stack), built from the phases before it."""

from __future__ import annotations

from typing import Any

from crossenc import __version__
from crossenc.config import JobConfig
from crossenc.job.accounting import Counts
from crossenc.job.prepare import Prepared
from crossenc.output.commit import Manifest
from crossenc.output.parts import PartStats


def build_manifest(
    cfg: JobConfig,
    run: Prepared,
    counts: Counts,
    summary: dict[str, Any],
    kept: list[PartStats],
    key: str,
    stack: dict[str, str],
    keys: dict[str, str] | None = None,
) -> Manifest:
    """The run's manifest; its file lists are filled by the commit from the parts. ``key``:
    output.incremental's scoring key; ``keys``: several models', each one's by short name."""
    plan, record = run.plan, run.record
    return Manifest(
        run_id=record.run_id,
        files=[],
        dead_letter_files=[],
        input_files=[{"path": f.path, "rows": f.rows} for f in plan.files],
        skipped_files=[{"path": b.path, "reason": b.reason} for b in plan.skipped],
        rows_read=counts.read,
        rows_written=counts.written,
        rows_dead_lettered=counts.dead_lettered,
        rows_dropped_top_k=counts.dropped_top_k,
        model=record.model,
        config_hash=record.config_hash,
        config=cfg.redacted(),
        crossenc_version=__version__,
        resumed_from=sorted({p.run_id for p in kept}),
        summary=summary,
        scoring_key=key,
        scoring_keys=keys or {},
        rows_reused=counts.reused,
        rows_skipped_reused=counts.skipped_reused,
        stack=stack,
    )
