"""``python -m bench.render RESULT.json [MEMORY.json]``: the README's benchmark tables."""

from __future__ import annotations

import json
import sys
from typing import Any

LABELS = {
    "st_predict": "CrossEncoder.predict (batch 32)",
    "local_torch": "crossenc LocalScorer, torch fp32 (incl. tokenization)",
    "engine_torch": "crossenc engine, torch fp32 (pre-tokenized)",
    "local_onnx": "crossenc LocalScorer, ONNX fp32",
    "local_onnx_int8": "crossenc LocalScorer, ONNX int8 (attention)",
    "local_onnx_int8_full": "crossenc LocalScorer, ONNX int8-full",
    "job": "full job, Parquet → Parquet, local Ray",
    "st_predict_bf16": "CrossEncoder.predict bf16 (batch 32)",
    "local_torch_auto_dtype": "crossenc LocalScorer, bf16",
}


def throughput_table(result: dict[str, Any], model: str = "minilm-l6") -> str:
    """One row per contender: median pairs/s, every repetition, ratio, GFLOP/s, peak share."""
    block = result[model]
    peak = block.get("fraction_of_matmul_peak_float32", {})
    lines = [
        "| contender | pairs/s (median) | each repetition | vs predict | useful GFLOP/s "
        "| of fp32 matmul peak |",
        "|---|---|---|---|---|---|",
    ]
    for name, rate in block["pairs_per_s"].items():
        reps = ", ".join(str(r) for r in block["pairs_per_s_all_reps"][name])
        share = f"{peak[name]:.3f}" if name in peak else "—"
        lines.append(
            f"| {LABELS.get(name, name)} | {rate} | {reps} | "
            f"{block['ratio_to_st_predict'][name]}× | {block['useful_gflop_per_s'][name]} "
            f"| {share} |"
        )
    return "\n".join(lines)


def memory_table(result: dict[str, Any]) -> str:
    """Rows, seconds and peak memory of the full job per input size."""
    lines = [
        "| rows | seconds | rows/s | peak memory, driver + Ray workers (MiB) |",
        "|---|---|---|---|",
    ]
    for rows, size in result["sizes"].items():
        rate = round(int(rows) / size["seconds"], 1)
        lines.append(
            f"| {int(rows):,} | {size['seconds']} | {rate} "
            f"| {size['peak_memory_driver_and_workers_mib']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0]) as f:
        print(throughput_table(json.load(f)))
    if len(args) > 1:
        with open(args[1]) as f:
            print()
            print(memory_table(json.load(f)))


if __name__ == "__main__":
    main()
