"""output.incremental: stored scores made under other package versions are checked before reuse.

The scoring key (:meth:`crossenc.config.JobConfig.scoring_key`) leaves out the versions of the
packages that compute a score (``stack``: :func:`crossenc.versions.stack_versions`), so that an
upgrade does not throw away every stored score. Instead, when an earlier run to reuse recorded
another stack (or none), the driver scores a seeded sample of the pairs matched to it
(output.verify_sample) in process (:class:`crossenc.engine.scoring.LocalScorer`) and compares
them with the stored scores: within the dtype's tolerance (:func:`tolerance`, on the largest and the
mean absolute difference) the scores are reused, else none is and every pair is scored. Runs
whose stack equals this one's cost nothing here.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossenc.config import JobConfig
from crossenc.inputs.reuse import load_reuse
from crossenc.inputs.sample import IO_THREADS, read_pairs_at
from crossenc.job.incremental import EarlierRuns, Matches
from crossenc.models.describe import ModelInfo

log = logging.getLogger(__name__)

# (largest, mean) |stored - rescored| of the sample still "the same scores", by the dtype that
# scored them. Measured (python -m bench.verify tolerance: MiniLM-L6, logits -6..10, 2,000 pairs
# scored twice in other batches, AMD EPYC): float32 moves by at most 2.3e-6 (mean 8e-8);
# bfloat16 by up to 0.021 (p99 0.0086, mean 0.0005), so one bf16 score is only known to ~0.02
# and a change must show in the mean: float32 against bfloat16 is max 0.033 but mean 0.0056.
# float16 (3 more mantissa bits) and int8 weights are given bfloat16's, unmeasured.
FLOAT32_TOLERANCE = (1e-5, 1e-5)
HALF_TOLERANCE = (5e-2, 2e-3)


@dataclass
class Verdict:
    """What the check of stored scores made under another stack found and decided."""

    verified: bool  # a sample was scored again and compared
    sample: int  # pairs scored again
    max_abs_diff: float | None
    mean_abs_diff: float | None
    tolerance: tuple[float, float]  # (max, mean)
    decision: str  # "reused" or "rescored"
    reason: str
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The run summary's ``reuse`` entry."""
        return {
            "verified": self.verified,
            "sample": self.sample,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "tolerance": {"max": self.tolerance[0], "mean": self.tolerance[1]},
            "decision": self.decision,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
        }


def stack_changes(earlier: EarlierRuns, stack: dict[str, str]) -> dict[int, str]:
    """Per earlier run (its order) whose recorded stack is not ``stack``, how it differs."""
    out = {}
    for order, (run, theirs) in enumerate(zip(earlier.runs, earlier.stacks, strict=True)):
        if theirs == stack:
            continue
        if not theirs:
            out[order] = f"run {run} recorded no stack"
            continue
        moved = [
            f"{k} {theirs.get(k, 'absent')} -> {stack.get(k, 'absent')}"
            for k in sorted(set(theirs) | set(stack))
            if theirs.get(k) != stack.get(k)
        ]
        out[order] = f"run {run}: {', '.join(moved)}"
    return out


def tolerance(cfg: JobConfig, dtype: str) -> tuple[float, float]:
    """The (max, mean) tolerance for scores made in model.dtype (``auto``: ``dtype``, what the
    check's own engine picked, unless the replicas are on GPUs, where auto picks 16 bits)."""
    model = cfg.model
    if model.dtype == "auto":
        half = dtype != "float32" or cfg.runtime.gpus_per_replica > 0
    else:
        half = model.dtype != "float32"
    return HALF_TOLERANCE if half or model.quantize != "none" else FLOAT32_TOLERANCE


def _sample(
    cfg: JobConfig, matches: Matches, orders: set[int], size: int, seed: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """A seeded sample of the matched rows of the runs ``orders``: per input file, its row
    positions (sorted) and their stored scores."""
    sources = sorted(matches.paths)
    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="verify") as pool:
        loaded = list(pool.map(lambda s: load_reuse(matches.paths[s], cfg.output), sources))
    picks = []
    for reuse in loaded:
        orders_of = reuse.orders if reuse.orders is not None else np.zeros(len(reuse.rows))
        picks.append(np.flatnonzero(np.isin(orders_of, list(orders))))
    total = sum(len(p) for p in picks)
    chosen = np.sort(np.random.default_rng(seed).choice(total, min(size, total), replace=False))
    out, start = [], 0
    for source, reuse, pick in zip(sources, loaded, picks, strict=True):
        mine = pick[chosen[(chosen >= start) & (chosen < start + len(pick))] - start]
        start += len(pick)
        if len(mine):
            out.append((source, reuse.rows[mine], reuse.scores[mine]))
    return out


def check_reuse(
    cfg: JobConfig,
    matches: Matches,
    earlier: EarlierRuns,
    stack: dict[str, str],
    key: str,
    info: ModelInfo | None = None,
) -> Verdict | None:
    """Check the matched scores made under another stack (see the module docstring); None
    when every earlier run's stack is this one's (nothing to check). ``info``: the model as
    the driver described it (with the int8 calibration pairs of model.backend openvino), so the
    check scores as the run does."""
    changes = stack_changes(earlier, stack)
    if not changes or not matches.rows:
        return None
    started = time.monotonic()
    changed = "; ".join(changes.values())
    size = cfg.output.verify_sample
    if not size:
        why = f"{changed}; not checked (output.verify_sample 0)"
        return Verdict(False, 0, None, None, (0.0, 0.0), "reused", why)
    sample = _sample(cfg, matches, set(changes), size, seed=int(key[:8], 16))
    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="verify") as pool:
        texts = list(pool.map(lambda s: read_pairs_at(cfg, s[0], s[1]), sample))
    pairs = [pair for file_pairs in texts for pair in file_pairs]
    if not pairs:
        return None
    stored = np.concatenate([s[2] for s in sample]).astype(np.float64)
    from crossenc.engine.scoring import LocalScorer

    scorer = LocalScorer(cfg.model, cfg.runtime, info=info)
    scores = np.asarray(scorer.predict(pairs), dtype=np.float64).reshape(stored.shape)
    diff = np.abs(scores - stored)
    diff[np.isnan(scores) & np.isnan(stored)] = 0.0  # unscorable then and now
    diff[np.isnan(diff)] = np.inf
    worst, mean = float(diff.max()), float(diff.mean())
    limit = tolerance(cfg, str(scorer.engine.stats.extra.get("dtype", "float32")))
    agree = worst <= limit[0] and mean <= limit[1]
    said = (
        f"{len(pairs)} reused pairs scored again differ by up to {worst:.3g} (mean {mean:.3g}; "
        f"tolerance {limit[0]:g}, mean {limit[1]:g})"
    )
    reason = (
        f"{changed}; {said}: the stored scores are reused"
        if agree
        else f"{changed}; {said}: no score is reused, every pair is scored"
    )
    decision = "reused" if agree else "rescored"
    seconds = time.monotonic() - started
    return Verdict(True, len(pairs), worst, mean, limit, decision, reason, seconds)
