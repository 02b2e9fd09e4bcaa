"""mkdocs hook: the benchmark pages' tables and sources, rendered from bench/*.json at build time.

A page names a result file in an HTML comment, and the build replaces the comment:

    <!-- bench:results -->                 every bench/latest-*.json: date, machine, what it holds
    <!-- bench:source FILE -->             one line naming FILE, its date and its CPU / device
    <!-- bench:throughput FILE MODEL -->   pairs/s per contender (bench.render.throughput_table)
    <!-- bench:job-time FILE -->           where each full job's time goes (bench.render)
    <!-- bench:memory FILE -->             peak memory per input size (bench.render)
    <!-- bench:gpu-sweep FILE [RUN1] -->   the GPU engine per token budget (RUN1: its median too)

Each table is preceded by its source line, so every figure names the CPU or device its JSON
records. A missing file or key fails the build (mkdocs build --strict in CI), so a page never
shows figures the results in bench/ no longer hold.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import render  # noqa: E402  (the repository's own renderer, bench/render.py)

MARKER = re.compile(r"<!-- bench:([a-z-]+)((?: (?!-->)\S+)*) -->")


def _load(name: str) -> dict[str, Any]:
    path = BENCH / name
    if not path.is_file():
        raise FileNotFoundError(f"docs: bench/{name} named by a benchmark page does not exist")
    with path.open() as f:
        return json.load(f)


def machine(result: dict[str, Any]) -> str:
    """The CPU / device a result records, in its own words."""
    m = result.get("machine")
    if isinstance(m, dict):  # --mode host: {cpu, cores, python, torch, ...}
        return ", ".join(
            [f"{m['cpu']}, {m['cores']} cores"]
            + [f"{k} {m[k]}" for k in ("torch", "transformers") if k in m]
        )
    if m:
        return str(m)
    if "cpu" in result:  # bench.verify: cpu only
        return str(result["cpu"])
    raise KeyError("no machine or cpu recorded")


def date(result: dict[str, Any]) -> str:
    d = result.get("date")
    return d.replace("T", " ")[:16] + (" UTC" if "T" in d else "") if d else "date not recorded"


def what(name: str, result: dict[str, Any]) -> str:
    for key in ("model", "what", "store_s3", "mode"):
        if isinstance(result.get(key), str):
            return result[key]
    if "minilm-l6" in result:
        return f"{result.get('pairs', '?')} pairs, " + ", ".join(
            m for m in ("minilm-l6", "bert-base") if m in result
        )
    return name.removeprefix("latest-").removesuffix(".json")


def source(name: str) -> str:
    result = _load(name)
    versions = result.get("versions") or {}
    stack = ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("torch", "transformers"))
    return f"*`bench/{name}`: {date(result)}, {machine(result)}" + (f"; {stack}*" if stack else "*")


# The page each result is shown on, and what it measures where its JSON does not say.
PAGES = {
    "latest-causal.json": ("causal.md", None),
    "latest-cpu-engine.json": ("cpu.md", "the engine alone, 7 repetitions (a shorter run)"),
    "latest-cpu.json": ("cpu.md", None),
    "latest-feed-3e5.json": ("feeding-a-gpu.md", None),
    "latest-feed.json": ("feeding-a-gpu.md", None),
    "latest-gpu-sweep.json": ("gpu.md", "the bf16 engine per token budget; out of memory"),
    "latest-gpu.json": ("gpu.md", None),
    "latest-host.json": ("feeding-a-gpu.md", "the engine's host work per pair (zeros runner)"),
    "latest-incremental-tiny.json": ("incremental.md", None),
    "latest-incremental.json": ("incremental.md", None),
    "latest-long.json": ("../models.md#long-inputs-8192-token-models", None),
    "latest-memory.json": ("cpu.md", None),
    "latest-oob.json": ("oob.md", "crossenc score's defaults against a user's script"),
    "latest-oob-avx2-capped.json": ("oob.md", "the same, the CPU capped at AVX2"),
    "latest-peer-20000.json": ("peer.md", "20,000 pairs: the 16-bit paths, one repetition"),
    "latest-peer-2400-bert-base.json": ("peer.md", "BERT-base size (seeded), 2,400 pairs"),
    "latest-peer.json": ("peer.md", None),
    "latest-scale.json": ("scale.md", None),
    "latest-tables.json": ("scale.md#delta-lake-and-iceberg-commits", None),
    "latest-verify-cost.json": ("../concepts/incremental.md", "the reuse check's cost"),
    "latest-verify-tolerance.json": ("../concepts/incremental.md", "the reuse check's tolerance"),
}


def results_table() -> str:
    rows = []
    for path in sorted(BENCH.glob("latest-*.json")):
        result = _load(path.name)
        page, description = PAGES.get(path.name, (None, None))
        name = f"[`{path.name}`]({page})" if page else f"`{path.name}`"
        rows.append([name, date(result), machine(result), description or what(path.name, result)])
    return render._markdown(["bench/", "date", "CPU / device", "what"], rows)


def gpu_sweep(name: str, run1: str | None = None) -> str:
    result = _load(name)
    first = _load(run1)["sweep"] if run1 else {}
    header = ["model", "batch_tokens / max_batch_rows", "pairs/s (median)", "each repetition"]
    header += ["run 1 median"] if run1 else []
    header += ["padding efficiency", "peak GPU memory (MiB)"]
    rows = []
    for model, settings in result["sweep"].items():
        for i, s in enumerate(settings):
            row = [
                model,
                f"{s['batch_tokens']} / {s['max_batch_rows']}",
                s["pairs_per_s"],
                ", ".join(str(r) for r in s["each_repetition"]),
            ]
            row += [first[model][i]["pairs_per_s"]] if run1 else []
            row += [s["padding_efficiency"], f"{s['peak_gpu_memory_mib']:,}"]
            rows.append(row)
    return render._markdown(header, rows)


def expand(kind: str, args: list[str]) -> str:
    if kind == "results":
        return results_table()
    if kind == "source":
        return source(args[0])
    if kind == "throughput":
        table = render.throughput_table(_load(args[0]), args[1])
    elif kind == "job-time":
        table = render.job_time_table(_load(args[0]))
    elif kind == "memory":
        table = render.memory_table(_load(args[0]))
    elif kind == "gpu-sweep":
        table = gpu_sweep(*args)
    else:
        raise ValueError(f"docs: unknown benchmark marker bench:{kind}")
    return source(args[0]) + "\n\n" + table


def render_markers(markdown: str) -> str:
    return MARKER.sub(lambda m: expand(m.group(1), m.group(2).split()), markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return render_markers(markdown)
