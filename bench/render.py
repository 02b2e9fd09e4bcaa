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
    "job_onnx": "full job, ONNX fp32 backend",
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


def job_time_table(result: dict[str, Any]) -> str:
    """Where each full job's wall time goes (medians), and its ratios to predict."""
    lines = [
        "| job | wall s | replica busy s | backend + model load s | the rest s "
        "| busy rate vs predict | vs predict without the load |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in result.get("job_where_the_time_goes", {}).items():
        if not isinstance(t, dict):  # older results hold one flat record: not shown
            continue
        lines.append(
            f"| {LABELS.get(name, name)} | {t['wall_seconds_median']} "
            f"| {t['replica_busy_seconds_median']} "
            f"| {t['replica_backend_and_model_load_seconds_median']} "
            f"| {t['other_seconds_median']} | {t['replica_busy_ratio_to_st_predict']}× "
            f"| {t['ratio_to_st_predict_without_model_load']}× |"
        )
    return "\n".join(lines)


def memory_table(result: dict[str, Any]) -> str:
    """Rows, seconds and peak memory of the full job per input size, with the peak's parts."""
    lines = [
        "| rows | seconds | rows/s | peak, driver + Ray (MiB) | driver | Ray processes "
        "| object store |",
        "|---|---|---|---|---|---|---|",
    ]
    for rows, size in result["sizes"].items():
        rate = round(int(rows) / size["seconds"], 1)
        at = size.get("at_peak", {})
        parts = " | ".join(
            str(at.get(k, "—"))
            for k in ("driver_private_mib", "ray_processes_private_mib", "shared_object_store_mib")
        )
        lines.append(
            f"| {int(rows):,} | {size['seconds']} | {rate} "
            f"| {size['peak_memory_driver_and_workers_mib']} | {parts} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0]) as f:
        result = json.load(f)
    print(throughput_table(result))
    print()
    print(job_time_table(result))
    if len(args) > 1:
        with open(args[1]) as f:
            print()
            print(memory_table(json.load(f)))


if __name__ == "__main__":
    main()
