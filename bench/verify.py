"""``python -m bench.verify cost|tolerance``: what output.incremental's check of scores stored
under another stack costs, and how far 16-bit scores of the same pairs move on their own.

``cost``: night 1 (N pairs, a tiny BERT, :func:`bench.incremental.nights`) scored into a Parquet
folder, then night 2 (90% of its pairs) twice, in this process, reusing from it: once on the
same stack (no check), once on "another torch" (the stack recorded by the runs patched), so that
a sample of output.verify_sample pairs is scored again in the driver. Reports each night's wall
seconds and the check's own (``phases.verify``).

``tolerance``: MiniLM-L6 (:func:`crossenc.testing.build_minilm_cross_encoder`, its seeded head
scaled so that its logits spread as a trained reranker's do, ~±8) scores N pairs in
float32 and in bfloat16, the latter twice with other batches (another batch_tokens: other batch
mates and padding, as a sample scored again gets), and the bfloat16 logits through the sigmoid
in bfloat16 (sentence-transformers before 6) against float32 (crossenc; ST 6): the max abs
differences, i.e. what a tolerance for 16-bit scores must allow and what it can still see.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np


def _cpu() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    found = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")]
    return found[0] if found else platform.processor()


def cost(work: Path, pairs: int, sample: int) -> dict[str, Any]:
    """Night 2 with and without the check (see the module docstring)."""
    from bench.incremental import nights
    from crossenc.config import build_config
    from crossenc.job import run_job as pipeline
    from crossenc.testing import build_tiny_model

    one, two = nights(work, pairs, seed=0)
    model = build_tiny_model(work / "tiny-bert", "bert", seed=0)

    def config(data: Path, out: Path, **output: Any) -> Any:
        return build_config(
            {
                "input": {"path": str(data), "keep": ["pair_id"]},
                "model": {"name": str(model), "dtype": "float32"},
                "output": {"path": str(out), "incremental": True, "mode": "overwrite", **output},
            }
        )

    first = pipeline.run_job(config(one, work / "night1"))
    result: dict[str, Any] = {"night1_seconds": round(first.seconds, 1)}
    installed = pipeline.stack_versions
    upgraded = {**installed(), "torch": "99.0.0"}  # as if torch were upgraded since night 1
    for name, stack in (("same_stack", installed), ("other_stack", lambda _="torch": upgraded)):
        pipeline.stack_versions = stack  # type: ignore[assignment]
        try:
            cfg = config(two, work / name, reuse_from=[str(work / "night1")], verify_sample=sample)
            run = pipeline.run_job(cfg)
        finally:
            pipeline.stack_versions = installed
        result[name] = {
            "seconds": round(run.seconds, 1),
            "reused": run.rows_reused,
            "phases": run.summary["phases"],
            "reuse": run.summary.get("reuse"),
        }
    return result


def _scale_head(model: Path, scale: float) -> None:
    """Multiply the classifier head's weights by ``scale`` (the seeded head's logits are
    ~±0.04, where no 16-bit rounding shows)."""
    from safetensors.torch import load_file, save_file

    path = next(model.glob("*.safetensors"))
    weights = load_file(path)
    weights["classifier.weight"] = weights["classifier.weight"] * scale
    save_file(weights, path, metadata={"format": "pt"})


def tolerance(work: Path, pairs: int, head_scale: float) -> dict[str, Any]:
    """16-bit scores' own spread (see the module docstring)."""
    import torch

    from bench.data import make_pairs
    from crossenc.config import ModelConfig, RuntimeConfig
    from crossenc.engine.scoring import LocalScorer
    from crossenc.testing import build_minilm_cross_encoder

    model = build_minilm_cross_encoder(work / "minilm")
    _scale_head(model, head_scale)
    table = make_pairs(pairs, seed=1)
    texts = list(zip(table["query"].to_pylist(), table["passage"].to_pylist(), strict=True))

    def scores(dtype: str, batch_tokens: int, activation: str = "sigmoid") -> np.ndarray:
        scorer = LocalScorer(
            ModelConfig(name=str(model), dtype=dtype, activation=activation),
            RuntimeConfig(batch_tokens=batch_tokens),
        )
        return np.asarray(scorer.predict(texts), dtype=np.float64)

    f32_a, f32_b = scores("float32", 8192), scores("float32", 1024)
    bf16_a, bf16_b = scores("bfloat16", 8192), scores("bfloat16", 1024)
    logits = scores("bfloat16", 8192, activation="identity")
    in_bf16 = torch.sigmoid(torch.tensor(logits, dtype=torch.bfloat16)).double().numpy()

    def spread(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        diff = np.abs(a - b)
        return {k: float(f(diff)) for k, f in (("max", np.max), ("p99", _p99), ("mean", np.mean))}

    return {
        "float32_other_batches": spread(f32_a, f32_b),
        "bf16_other_batches": spread(bf16_a, bf16_b),
        "bf16_vs_float32": spread(bf16_a, f32_a),
        "bf16_sigmoid_in_bf16_vs_float32": spread(in_bf16, 1 / (1 + np.exp(-logits))),
        "logit_range": [float(logits.min()), float(logits.max())],
        "head_scale": head_scale,
    }


def _p99(x: np.ndarray) -> float:
    return float(np.quantile(x, 0.99))


def main() -> None:
    """Run one measurement and print it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["cost", "tolerance"])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--head-scale", type=float, default=200.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-verify"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    found = (
        cost(args.work, args.pairs, args.sample)
        if args.what == "cost"
        else tolerance(args.work, args.pairs, args.head_scale)
    )
    out = {"what": args.what, "pairs": args.pairs, "cpu": _cpu(), **found}
    out["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
