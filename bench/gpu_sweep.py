"""``python -m bench.gpu_sweep``: on one CUDA GPU, the engine's pairs/s per token budget, and a
real out-of-memory check; prints JSON.

- ``sweep``: crossenc's engine (model.dtype auto: bf16 on the card) on pre-tokenized pairs, for
  ``runtime.batch_tokens`` / ``max_batch_rows`` from the defaults (16384 / 256) up, on the
  MiniLM-L6 and BERT-base-size models of ``python -m bench``; the median of interleaved
  repetitions, and the peak GPU memory the allocator held.
- ``out_of_memory``: BERT-base with the process held to a slice of the card's memory
  (``torch.cuda.set_per_process_memory_fraction``) and a token budget far too large for it: the
  engine must split the failing batches, lower its budget, score every pair and give the
  scores of a run that fits (bf16, so within bf16's rounding), without failing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SETTINGS = ((16384, 256), (32768, 512), (65536, 1024), (131072, 2048), (262144, 4096))


def _engine(folder: Path, batch_tokens: int, max_rows: int, device: str) -> Any:
    from crossenc.config import ModelConfig, RuntimeConfig
    from crossenc.engine.scoring import LocalScorer

    runtime = RuntimeConfig(
        gpus_per_replica=1 if device == "cuda" else 0,
        batch_tokens=batch_tokens,
        max_batch_rows=max_rows,
    )
    return LocalScorer(ModelConfig(name=str(folder)), runtime)


def main(argv: list[str] | None = None) -> None:
    import pyarrow.parquet as pq
    import torch

    from bench.data import write_pairs
    from bench.models import build_bert_base
    from crossenc.testing import build_minilm_cross_encoder

    p = argparse.ArgumentParser(prog="python -m bench.gpu_sweep")
    p.add_argument("--pairs", type=int, default=10000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--oom-gib", type=float, default=3.0, help="memory left to the OOM check")
    p.add_argument("--models", nargs="+", default=["minilm-l6", "bert-base"])
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    work = Path(tempfile.mkdtemp(prefix="crossenc-gpu-sweep-"))
    write_pairs(work / "pairs", args.pairs)
    table = pq.read_table(work / "pairs")
    pairs = list(zip(table["query"].to_pylist(), table["passage"].to_pylist(), strict=True))
    builders = {"minilm-l6": build_minilm_cross_encoder, "bert-base": build_bert_base}
    models = {}
    for name in args.models:
        builders[name](work / name)
        models[name] = work / name
    out: dict[str, Any] = {
        "machine": torch.cuda.get_device_name(0) if cuda else "cpu",
        "pairs": args.pairs,
        "sweep": {},
    }
    for name, folder in models.items():
        scorers = {s: _engine(folder, *s, args.device) for s in SETTINGS}
        first = next(iter(scorers.values()))
        ids, types = first.encode(pairs)
        times: dict[tuple[int, int], list[float]] = {s: [] for s in scorers}
        peak: dict[tuple[int, int], int] = {}
        for scorer in scorers.values():
            scorer.engine.score(ids[:256], types[:256] if types else None)  # warm up
        for rep in range(args.reps):
            order = list(scorers)[rep % len(scorers) :] + list(scorers)[: rep % len(scorers)]
            for s in order:
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                scorers[s].engine.score(ids, types)
                times[s].append(time.perf_counter() - t0)
                if cuda:
                    peak[s] = max(peak.get(s, 0), torch.cuda.max_memory_allocated())
        out["sweep"][name] = [
            {
                "batch_tokens": s[0],
                "max_batch_rows": s[1],
                "pairs_per_s": round(args.pairs / statistics.median(t), 1),
                "each_repetition": [round(args.pairs / x, 1) for x in t],
                "padding_efficiency": round(scorers[s].engine.stats.padding_efficiency, 3),
                "peak_gpu_memory_mib": round(peak.get(s, 0) / 2**20),
                "runs": scorers[s].engine.runs,
            }
            for s, t in times.items()
        ]
        del scorers, first  # free the card for the next model
    if cuda:
        out["out_of_memory"] = _oom_check(models["bert-base"], pairs, args.oom_gib)
    print(json.dumps(out, indent=1))


def _oom_check(folder: Path, pairs: list[tuple[str, str]], gib: float) -> dict[str, Any]:
    """Score with a budget of ~1M tokens in ``gib`` GiB of the card: counts the splits."""
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()
    fits = _engine(folder, 65536, 1024, "cuda").predict(pairs)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(gib * 2**30 / total)
    try:
        scorer = _engine(folder, 1 << 20, 8192, "cuda")
        t0 = time.perf_counter()
        scores = scorer.predict(pairs)
        seconds, splits = time.perf_counter() - t0, scorer.engine.stats.oom_splits
        t0 = time.perf_counter()
        scorer.predict(pairs)  # the next call: from the lowered budget
        again = time.perf_counter() - t0
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    return {
        "memory_gib": gib,
        "batch_tokens": 1 << 20,
        "oom_splits_first_call": splits,
        "oom_splits_second_call": scorer.engine.stats.oom_splits - splits,
        "lowered_batch_tokens": scorer.engine.max_tokens,
        "pairs_scored": int(len(scores)),
        "seconds_first_call": round(seconds, 2),
        "seconds_second_call": round(again, 2),
        "max_abs_diff_vs_fitting_run": float(np.abs(scores - fits).max()),
    }


if __name__ == "__main__":
    main()
