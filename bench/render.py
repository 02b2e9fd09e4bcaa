"""``python -m bench.render RESULT.json [MEMORY.json]``: the benchmark tables of docs/benchmarks."""

from __future__ import annotations

import json
import sys
from typing import Any

LABELS = {
    "st_predict": "CrossEncoder.predict (batch 32)",
    "local_torch": "crossenc LocalScorer, torch fp32 (incl. tokenization)",
    "engine_torch": "crossenc engine, torch fp32, pre-packed weights (pre-tokenized)",
    "engine_torch_plain": "crossenc engine, torch fp32, model.prepack off (pre-tokenized)",
    "engine_torch_compiled": "crossenc engine, torch fp32, model.compile (pre-tokenized)",
    "local_onnx": "crossenc LocalScorer, ONNX fp32",
    "local_onnx_int8": "crossenc LocalScorer, ONNX int8 (attention)",
    "local_onnx_int8_full": "crossenc LocalScorer, ONNX int8-full",
    "job": "full job, Parquet → Parquet, local Ray",
    "job_onnx": "full job, ONNX fp32 backend",
    "st_predict_bf16": "CrossEncoder.predict bf16 (batch 32)",
    "local_torch_auto_dtype": "crossenc LocalScorer, bf16",
}
# On a GPU the engine contender runs model.dtype auto (bf16), and the CPU's float32 matmul peak
# says nothing about the card.
GPU_LABELS = {
    "local_torch": "crossenc LocalScorer, fp32 (incl. tokenization)",
    "local_torch_auto_dtype": "crossenc LocalScorer, bf16 (incl. tokenization)",
    "engine_torch": "crossenc engine, bf16 (pre-tokenized)",
}


def _markdown(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def throughput_table(result: dict[str, Any], model: str = "minilm-l6") -> str:
    """One row per contender: median pairs/s, every repetition, ratio, GFLOP/s, and on CPU the
    share of the machine's float32 matmul peak."""
    block = result[model]
    gpu = "st_predict_bf16" in block["pairs_per_s"]  # only GPU runs have it
    labels = LABELS | GPU_LABELS if gpu else LABELS
    peak = {} if gpu else block.get("fraction_of_matmul_peak_float32", {})
    header = ["contender", "pairs/s (median)", "each repetition", "vs predict", "useful GFLOP/s"]
    header += [] if gpu else ["of fp32 matmul peak"]
    rows = [
        [
            labels.get(name, name),
            rate,
            ", ".join(str(r) for r in block["pairs_per_s_all_reps"][name]),
            f"{block['ratio_to_st_predict'][name]}×",
            block["useful_gflop_per_s"][name],
        ]
        + ([] if gpu else [f"{peak[name]:.3f}" if name in peak else "—"])
        for name, rate in block["pairs_per_s"].items()
    ]
    return _markdown(header, rows)


def job_time_table(result: dict[str, Any]) -> str:
    """Where each full job's wall time goes (medians), and its ratios to predict."""
    header = ["job", "wall s", "replica busy s", "backend + model load s", "the rest s"]
    header += ["busy rate vs predict", "vs predict without the load"]
    rows = [
        [
            LABELS.get(name, name),
            t["wall_seconds_median"],
            t["replica_busy_seconds_median"],
            t["replica_backend_and_model_load_seconds_median"],
            t["other_seconds_median"],
            f"{t['replica_busy_ratio_to_st_predict']}×",
            f"{t['ratio_to_st_predict_without_model_load']}×",
        ]
        for name, t in result.get("job_where_the_time_goes", {}).items()
        if isinstance(t, dict)  # older results hold one flat record: not shown
    ]
    return _markdown(header, rows)


def memory_table(result: dict[str, Any]) -> str:
    """Rows, seconds and peak memory of the full job per input size, with the peak's parts."""
    header = ["rows", "seconds", "rows/s", "peak, driver + Ray (MiB)", "driver"]
    header += ["Ray processes", "object store"]
    parts = ("driver_private_mib", "ray_processes_private_mib", "shared_object_store_mib")
    rows = [
        [
            f"{int(n):,}",
            size["seconds"],
            round(int(n) / size["seconds"], 1),
            size["peak_memory_driver_and_workers_mib"],
            *(size.get("at_peak", {}).get(k, "—") for k in parts),
        ]
        for n, size in result["sizes"].items()
    ]
    return _markdown(header, rows)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0]) as f:
        result = json.load(f)
    for model in ("minilm-l6", "bert-base"):
        if model in result:
            print(throughput_table(result, model))
            print()
    print(job_time_table(result))
    if len(args) > 1:
        with open(args[1]) as f:
            print()
            print(memory_table(json.load(f)))


if __name__ == "__main__":
    main()
