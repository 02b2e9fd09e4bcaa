"""Phase 2b, the quality gate: a path faster than float32 is checked against it before scoring.

A run whose scores come from int8 weights (model.quantize on onnx or openvino) or a 16-bit
model.dtype on CPU (torch, openvino) first scores a seeded sample of its own pairs
(quality_gate.sample; whole groups for a rerank, :mod:`crossenc.inputs.sample`) in the driver,
with the reference (torch float32) and with its own path, both as a
:class:`crossenc.engine.scoring.LocalScorer` (no Ray actor). The figures (Spearman correlation
of the scores, their largest difference, label agreement for classify, the mean top-10 overlap
of the groups for rerank) and the seconds they cost go to the run summary's ``gate`` (and so to
the manifest); one below its bar fails the run before any row is scored
(:class:`QualityGateError`, exit code 2, naming the figure and the bar).

An OpenVINO int8 model is calibrated here too: the run's calibration pairs
(model.calibration_sample) are drawn from its input and handed to every replica with the
model's description, so that the driver's check and every replica run the same model (exported
once per model and node, calibrated by the first run that exports it; a later run's gate checks
that model on its own pairs).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np

from crossenc.config import ConfigError, JobConfig
from crossenc.inputs.plan import JobPlan
from crossenc.inputs.sample import sample_pairs

log = logging.getLogger(__name__)

TOP_K = 10  # a rerank's figure: how much of each group's top 10 both paths put there


class QualityGateError(ConfigError):
    """The run's fast path scores too unlike float32 on the sample: nothing was scored."""


def fast_path(cfg: JobConfig) -> str | None:
    """What makes this run's path faster than float32 (and unlike it), in words; None for a
    float32 path, or one on GPU replicas (the driver cannot run their path)."""
    model = cfg.model
    if model.quantize != "none":
        return f"{model.backend} {model.quantize}"
    if cfg.runtime.gpus_per_replica and model.backend == "torch":
        return None
    if model.dtype in ("bfloat16", "float16"):
        return f"{model.backend} {model.dtype} on CPU"
    if model.dtype == "auto" and model.backend == "torch":
        from crossenc.engine.torch_runner import cpu_has_bf16_matmul

        return "torch bfloat16 on CPU (model.dtype auto)" if cpu_has_bf16_matmul() else None
    return None


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (ties share their mean rank); 1.0 when both are constant."""

    def ranks(v: np.ndarray) -> np.ndarray:
        _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        return ((ends - counts + ends - 1) / 2.0)[inverse]

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return 1.0 if rx.std() == ry.std() else 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def top_overlap(ref: np.ndarray, fast: np.ndarray, groups: np.ndarray, k: int = TOP_K) -> float:
    """Mean over groups of the share of the reference's top ``k`` (all rows of a smaller
    group) that the fast path also ranks in its top ``k``."""
    shares = []
    for g in np.unique(groups):
        at = np.flatnonzero(groups == g)
        n = min(k, len(at))
        top_ref = set(at[np.argsort(-ref[at], kind="stable")[:n]])
        top_fast = set(at[np.argsort(-fast[at], kind="stable")[:n]])
        shares.append(len(top_ref & top_fast) / n)
    return float(np.mean(shares)) if shares else 1.0


def labels(scores: np.ndarray, threshold: float | None) -> np.ndarray:
    """The classify task's labels: argmax of several outputs, or one output >= threshold."""
    if scores.shape[1] > 1:
        return scores.argmax(axis=1)
    return scores[:, 0] >= (threshold if threshold is not None else 0.5)


def figures(
    cfg: JobConfig, ref: np.ndarray, fast: np.ndarray, groups: np.ndarray | None
) -> dict[str, Any]:
    """The gate's figures for scores of shape (pairs, outputs); pairs that either path left
    unscored (NaN) are left out."""
    ok = ~(np.isnan(ref).any(axis=1) | np.isnan(fast).any(axis=1))
    ref, fast = ref[ok].astype(np.float64), fast[ok].astype(np.float64)
    out: dict[str, Any] = {
        "pairs": int(ok.sum()),
        "spearman": round(min(spearman(ref[:, j], fast[:, j]) for j in range(ref.shape[1])), 6)
        if len(ref)
        else None,
        "max_abs_diff": float(f"{np.abs(ref - fast).max():.4g}") if len(ref) else None,
    }
    if cfg.task == "classify":
        same = labels(ref, cfg.classify.threshold) == labels(fast, cfg.classify.threshold)
        out["label_agreement"] = round(float(same.mean()), 6) if len(same) else None
    if cfg.task == "rerank" and groups is not None:
        kept = groups[ok]
        out["groups"] = len(np.unique(kept))
        out["top10_overlap"] = round(top_overlap(ref[:, 0], fast[:, 0], kept), 6)
    return out


def failures(cfg: JobConfig, found: dict[str, Any]) -> list[str]:
    """Each figure below (or above) its quality_gate bar, in words naming both."""
    gate = cfg.quality_gate
    bars = [
        ("spearman", gate.min_spearman, "min_spearman", True),
        ("label_agreement", gate.min_label_agreement, "min_label_agreement", True),
        ("top10_overlap", gate.min_top10_overlap, "min_top10_overlap", True),
        ("max_abs_diff", gate.max_abs_diff, "max_abs_diff", False),
    ]
    out = []
    for figure, bar, key, at_least in bars:
        value = found.get(figure)
        if value is None or bar is None:
            continue
        if (value < bar) if at_least else (value > bar):
            sign = "<" if at_least else ">"
            out.append(f"{figure} {value} {sign} quality_gate.{key} {bar}")
    return out


def calibrate(cfg: JobConfig, plan: JobPlan) -> JobPlan:
    """The plan whose model description carries the int8 calibration pairs, where
    model.backend openvino quantizes (else the plan as it is)."""
    model = cfg.model
    if model.backend != "openvino" or model.quantize == "none" or plan.info.calibration:
        return plan
    sample = sample_pairs(
        cfg,
        plan.files,
        model.calibration_sample,
        cfg.quality_gate.seed + 1,
        plan.rerank_within_files,
    )
    log.info("int8 calibration: %d pairs of the input", len(sample.pairs))
    return replace(plan, info=replace(plan.info, calibration=tuple(sample.pairs)))


def check_quality(cfg: JobConfig, plan: JobPlan) -> dict[str, Any] | None:
    """Score the gate's sample with torch float32 and with the run's path, and compare (see
    the module docstring): the summary's ``gate`` entry, or None when the path is float32 (or
    quality_gate.sample is 0). Raises :class:`QualityGateError` when a figure misses its bar."""
    path = fast_path(cfg)
    if path is None or not cfg.quality_gate.sample:
        return None
    from crossenc.engine.scoring import LocalScorer

    started = time.monotonic()
    sample = sample_pairs(
        cfg, plan.files, cfg.quality_gate.sample, cfg.quality_gate.seed, plan.rerank_within_files
    )
    if not sample.pairs:
        return None
    reference = cfg.model.model_copy(
        update={"backend": "torch", "quantize": "none", "dtype": "float32", "compile": False}
    )
    scored = []
    for model in (reference, cfg.model):
        scorer = LocalScorer(model, cfg.runtime, info=plan.info)
        scores = np.asarray(scorer.predict(sample.pairs), dtype=np.float32)
        scored.append((scores.reshape(len(sample.pairs), -1), scorer.engine.runs))
        del scorer
    (ref, ref_runs), (fast, fast_runs) = scored
    found = figures(cfg, ref, fast, sample.groups)
    failed = failures(cfg, found)
    gate = cfg.quality_gate
    entry = {
        "path": fast_runs,
        "why": path,
        "reference": ref_runs,
        **found,
        "bars": {
            "min_spearman": gate.min_spearman,
            **({"min_label_agreement": gate.min_label_agreement} if cfg.task == "classify" else {}),
            **({"min_top10_overlap": gate.min_top10_overlap} if cfg.task == "rerank" else {}),
            **({"max_abs_diff": gate.max_abs_diff} if gate.max_abs_diff is not None else {}),
        },
        "passed": not failed,
        "seconds": round(time.monotonic() - started, 3),
    }
    if plan.info.calibration:
        entry["calibration_pairs"] = len(plan.info.calibration)
    log.info("quality gate (%s against %s): %s", fast_runs, ref_runs, found)
    if failed:
        raise QualityGateError(
            f"quality gate: {path} ({fast_runs}) scores the {found['pairs']}-pair sample too "
            f"unlike torch float32: {'; '.join(failed)}; nothing was scored (lower the bar, "
            "or use a float32 path: model.quantize none, model.dtype float32)"
        )
    return entry


def gate(cfg: JobConfig, plan: JobPlan) -> tuple[JobPlan, dict[str, Any] | None]:
    """Phase 2b: the plan with the int8 calibration pairs (:func:`calibrate`), and the quality
    gate's summary entry (:func:`check_quality`). Several models: each is calibrated and
    gated on its own; the entry is the first gated model's, with every gated one's under
    ``models`` and the seconds of all."""
    if len(cfg.models) <= 1:
        plan = calibrate(cfg, plan)
        return plan, check_quality(cfg, plan)
    infos, entries = plan.model_infos(cfg), {}
    for name, view in cfg.model_views():
        alone = calibrate(view, replace(plan, info=infos[name], others=()))
        infos[name] = alone.info
        entry = check_quality(view, alone)
        if entry is not None:
            entries[name] = entry
    first, *rest = infos
    plan = replace(plan, info=infos[first], others=tuple((n, infos[n]) for n in rest))
    if not entries:
        return plan, None
    seconds = round(sum(e["seconds"] for e in entries.values()), 3)
    return plan, {**next(iter(entries.values())), "models": entries, "seconds": seconds}
