"""``crossenc plan``: what a run would cost, from Parquet footers and a small tokenized sample.

Nothing is scored. Files and rows come from the footers (no data pages read); token lengths
from the first row group of a few files; replica-hours from a throughput the user gives or the
one crossenc measured on this model before (recorded per model fingerprint after each run).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from crossenc.config import JobConfig
from crossenc.inspect_input import JobPlan
from crossenc.model import load_tokenizer
from crossenc.storage import resolve
from crossenc.tokenize import encode_pairs, row_errors


def throughput_file(cfg: JobConfig) -> Path:
    """Where measured pairs/s per replica are kept, keyed by model and settings."""
    root = Path(cfg.runtime.cache_dir).expanduser() if cfg.runtime.cache_dir else None
    return (root or Path.home() / ".cache" / "crossenc") / "throughput.json"


def _throughput_key(cfg: JobConfig) -> str:
    return f"{cfg.model.name}@{cfg.model.revision}:{cfg.model.backend}:{cfg.model.quantize}"


def record_throughput(cfg: JobConfig, pairs_per_second_per_replica: float) -> None:
    """Remember what a finished run measured, for later plans of the same model."""
    path = throughput_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[_throughput_key(cfg)] = round(pairs_per_second_per_replica, 2)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def known_throughput(cfg: JobConfig) -> float | None:
    """Pairs/s per replica measured on this model before, if any."""
    path = throughput_file(cfg)
    if not path.exists():
        return None
    return json.loads(path.read_text()).get(_throughput_key(cfg))


@dataclass
class RunEstimate:
    """The answer of ``crossenc plan``."""

    files: int
    rows: int
    skipped_files: int
    sample_rows: int
    token_length: dict[str, float]
    truncated_fraction: float
    pairs_per_second_per_replica: float | None
    throughput_source: str
    replicas: int
    replica_hours: float | None
    wall_hours: float | None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def sample_lengths(cfg: JobConfig, plan: JobPlan, sample_rows: int) -> tuple[np.ndarray, float]:
    """Token lengths of up to sample_rows scorable pairs, spread over the first files."""
    loc = resolve(cfg.input.path, cfg.input.storage)
    tokenizer = load_tokenizer(cfg.model, plan.info.source)
    per_file = max(1, sample_rows // 8)
    lengths: list[np.ndarray] = []
    truncated = 0
    taken = 0
    for f in plan.files[:64]:  # a few files: a plan must answer in seconds on 10^4 files
        if taken >= sample_rows:
            break
        if not f.rows:
            continue
        table = pq.ParquetFile(f.path, filesystem=loc.arrow_fs).read_row_group(
            0, columns=[cfg.input.text_a, cfg.input.text_b]
        )
        table = table.slice(0, min(per_file, sample_rows - taken))
        errors_a = row_errors(table.column(0), cfg.input.text_a)
        errors_b = row_errors(table.column(1), cfg.input.text_b)
        keep = [i for i, (a, b) in enumerate(zip(errors_a, errors_b, strict=True)) if not (a or b)]
        texts_a, texts_b = table.column(0).to_pylist(), table.column(1).to_pylist()
        ids, _, cut = encode_pairs(
            tokenizer,
            plan.info,
            [texts_a[i] for i in keep],
            [texts_b[i] for i in keep],
            cfg.model.truncation,
        )
        lengths.append(np.fromiter((len(s) for s in ids), dtype=np.int64, count=len(ids)))
        truncated += int(cut.sum())
        taken += table.num_rows
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    return all_lengths, (truncated / len(all_lengths) if len(all_lengths) else 0.0)


def estimate(
    cfg: JobConfig, plan: JobPlan, pairs_per_second: float | None = None, sample_rows: int = 2000
) -> RunEstimate:
    """Files, rows, token lengths of a sample and the cost of the run, without scoring."""
    lengths, truncated = sample_lengths(cfg, plan, sample_rows)
    quantiles = {}
    if len(lengths):
        for name, q in (("mean", None), ("p50", 50), ("p90", 90), ("p95", 95), ("max", 100)):
            value = lengths.mean() if q is None else np.percentile(lengths, q)
            quantiles[name] = round(float(value), 1)
    source = "given"
    if pairs_per_second is None:
        pairs_per_second = known_throughput(cfg)
        source = "measured by an earlier run" if pairs_per_second else "unknown"
    replicas = cfg.runtime.replicas
    hours = plan.rows_estimate / pairs_per_second / 3600 if pairs_per_second else None
    return RunEstimate(
        files=len(plan.files) + len(plan.pending),
        rows=plan.rows_estimate,  # extrapolated by bytes when footers were sampled
        skipped_files=len(plan.skipped),
        sample_rows=int(len(lengths)),
        token_length=quantiles,
        truncated_fraction=round(truncated, 4),
        pairs_per_second_per_replica=pairs_per_second,
        throughput_source=source,
        replicas=replicas,
        replica_hours=round(hours, 4) if hours is not None else None,
        wall_hours=round(hours / replicas, 4) if hours is not None else None,
    )
