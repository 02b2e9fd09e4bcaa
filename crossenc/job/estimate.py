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
from crossenc.inputs.plan import JobPlan
from crossenc.models.load import load_tokenizer
from crossenc.models.tokenize import encode_pairs, row_errors
from crossenc.storage import resolve


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
    gpu_pairs_per_second_estimate: float | None = None  # per GPU, for a GPU config
    cpus_to_feed_each_gpu: float | None = None
    feed_warning: str | None = None

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
    # a throughput recorded earlier may be a CPU run's: only a given one speaks for a GPU
    given = pairs_per_second if source == "given" else None
    feed = feed_check(cfg, plan, quantiles.get("mean", FEED_TOKENS), given)
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
        **feed,
    )


# What feeds a GPU, from the benchmarks. The data plane (read, tokenize, hand over, write)
# around a model that costs nothing: pairs/s per CPU core, MiniLM's WordPiece tokenizer on
# MS MARCO-like pairs of FEED_TOKENS tokens (python -m bench --mode feed): the scoring phase's
# rate on 2 cores once the run's fixed cost is spread, 11,076 rows/s at 3*10^5 rows
# (bench/latest-feed-3e5.json) and 11,071 at 10^6 (bench/2026-12-02-feed-1m.json); a
# 10^5-row run, 6,843 (bench/latest-feed.json), is a fifth Ray workers starting.
FEED_PAIRS_PER_CORE = 5_500.0
FEED_TOKENS = 82.0
# The bf16 engine on an H200 (bench/latest-gpu.json): BERT-base 17-20k pairs/s at ~76 tokens
# (~2.4e14 useful FLOP/s), MiniLM-L6 52-58k (bound by the host, not the card).
GPU_USEFUL_FLOPS = 2.4e14
GPU_PAIRS_CAP = 58_000.0
_GATED_MLP = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "modernbert")


def weight_params(hf_config: Any) -> int:
    """Weights a token meets in the transformer layers (no embeddings), from the config:
    attention projections and the MLP (three matrices where it is gated)."""
    hidden = int(getattr(hf_config, "hidden_size", 768))
    layers = int(getattr(hf_config, "num_hidden_layers", 12))
    inner = int(getattr(hf_config, "intermediate_size", 4 * hidden))
    mlp = (3 if hf_config.model_type in _GATED_MLP else 2) * hidden * inner
    return layers * (4 * hidden * hidden + mlp)


def gpu_pairs_per_second(params: int, tokens: float) -> float:
    """An H100/H200's pairs/s for a model of ``params`` layer weights at ``tokens`` a pair."""
    return min(GPU_PAIRS_CAP, GPU_USEFUL_FLOPS / (2 * params * max(tokens, 1.0)))


def cpus_to_feed(gpu_rate: float, tokens: float) -> float:
    """CPU cores whose data plane keeps up with ``gpu_rate`` pairs/s of ``tokens`` a pair."""
    return gpu_rate / (FEED_PAIRS_PER_CORE * FEED_TOKENS / max(tokens, 1.0))


def _cluster_cpus() -> float | None:
    """CPUs of the Ray cluster this process is attached to, else of this machine when crossenc
    would start its own Ray; None for a cluster it is not attached to (RAY_ADDRESS)."""
    import ray

    from crossenc.job.cluster import machine_cores, starts_own_ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("CPU", 0))
    return float(machine_cores()) if starts_own_ray() else None


def feed_check(
    cfg: JobConfig, plan: JobPlan, tokens: float, pairs_per_second: float | None
) -> dict[str, Any]:
    """For a GPU config: the pairs/s a GPU would score (measured before, else estimated from
    the model's size), the CPU cores it takes to feed one, and a warning when the machine's
    CPUs beside the scorers cannot feed its GPUs."""
    rt = cfg.runtime
    if not rt.gpus_per_replica:
        return {}
    from crossenc.models.load import load_hf_config

    per_gpu = (pairs_per_second or 0.0) / rt.gpus_per_replica or gpu_pairs_per_second(
        weight_params(load_hf_config(cfg.model, plan.info.source)), tokens
    )
    need = cpus_to_feed(per_gpu, tokens)
    out: dict[str, Any] = {
        "gpu_pairs_per_second_estimate": round(per_gpu, 1),
        "cpus_to_feed_each_gpu": round(need, 1),
    }
    gpus = rt.replicas * rt.gpus_per_replica
    cpus = _cluster_cpus()
    spare = None if cpus is None else cpus - rt.replicas * rt.cpus_per_replica
    if spare is not None and spare < need * gpus:
        out["feed_warning"] = (
            f"runtime: {gpus:g} GPU(s) would score ~{per_gpu:,.0f} pairs/s each ({cfg.model.name} "
            f"at {tokens:.0f} tokens a pair), but the data plane reads, tokenizes and writes "
            f"~{FEED_PAIRS_PER_CORE * FEED_TOKENS / max(tokens, 1.0):,.0f} pairs/s per CPU core: "
            f"feeding them takes ~{need * gpus:.0f} CPUs beside the scorers, and {spare:g} are "
            "left; the GPUs will wait on the CPUs (fewer GPU replicas per node, or nodes with "
            "more CPUs: see docs/benchmarks/feeding-a-gpu.md)"
        )
    return out
