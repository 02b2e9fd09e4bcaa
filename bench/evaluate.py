"""Evaluation of two models (``python -m bench --mode evaluate``): whole-process wall time of
crossenc's one pass over a labelled log against its separate runs and against
sentence-transformers' evaluator, per size.

The log: :func:`bench.data.make_pairs` rows (10 passages a query, spread over 8 files) with a
seeded random ``relevance`` grade, one relevant passage a query (grade 1-3). The grades are
random, so the metrics sit near chance: the figures are for cost and parity, not for choosing.
The two models: MiniLM-L6 (real weights) and a seeded tiny BERT (its own tokenizer).

- ``crossenc_one_pass``: one ``task: evaluate`` run with ``models: {minilm, tiny}``;
- ``crossenc_separate``: a run per model, the second comparing itself with the first
  (``evaluate.compare_to``): the same metrics and paired differences, two reads and passes;
- ``st_evaluator``: one process loading both models and calling sentence-transformers'
  ``CrossEncoderRerankingEvaluator(samples, at_k=10)`` for each (:data:`ST_EVALUATOR`).

``ratio_*`` is the contender's wall time over the one pass's (above 1: the one pass is faster).
The one pass's leaderboard is recorded, and each model's metrics against the evaluator's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from bench.oob import _timed

ST_EVALUATOR = """
import json, sys, time
import pyarrow.parquet as pq
from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

src, dest, *models = sys.argv[1:]
table = pq.read_table(src, columns=["qid", "query", "passage", "relevance"]).to_pylist()
samples = {}
for row in table:
    s = samples.setdefault(row["qid"], {"query": row["query"], "positive": [], "negative": []})
    s["positive" if row["relevance"] >= 1 else "negative"].append(row["passage"])
out = {}
for model in models:
    evaluator = CrossEncoderRerankingEvaluator(list(samples.values()), at_k=10)
    out[model] = evaluator(CrossEncoder(model))
json.dump(out, open(dest, "w"))
"""


def labelled_log(folder: Path, rows: int, seed: int) -> None:
    """:func:`bench.data.make_pairs` rows with a random relevant passage a query, in 8 files."""
    from bench.data import make_pairs
    from crossenc.testing import write_parquet_files

    table = make_pairs(rows, seed)
    rng = np.random.default_rng(seed + 1)
    qids = table.column("qid").to_numpy()
    first = {}
    for i in rng.permutation(len(qids)):
        first.setdefault(int(qids[i]), int(i))
    relevance = np.zeros(len(qids), dtype=np.int64)
    chosen = np.fromiter(first.values(), dtype=np.int64)
    relevance[chosen] = rng.integers(1, 4, size=len(chosen))
    write_parquet_files(table.append_column("relevance", pa.array(relevance)), folder, 8)


def _config(data: Path, out: Path, models: dict[str, Path], compare_to: Path | None) -> dict:
    section = {n: {"name": str(p), "activation": "sigmoid"} for n, p in models.items()}
    cfg: dict[str, Any] = {
        "input": {"path": str(data), "text_a": "query", "text_b": "passage", "keep": ["doc_id"]},
        "task": "evaluate",
        "evaluate": {"kind": "rerank", "gold": "relevance", "group_by": "qid", "at_k": 10},
        "output": {"path": str(out), "mode": "overwrite"},
    }
    if len(section) > 1:
        cfg["models"] = section
    else:
        cfg["model"] = next(iter(section.values()))
    if compare_to is not None:
        cfg["evaluate"]["compare_to"] = [str(compare_to)]
    return cfg


def _command(work: Path, name: str, cfg: dict) -> list[str]:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [str(Path(sys.executable).with_name("crossenc")), "score", "--config", str(path)]


def _run(
    commands: dict[str, list[list[str]]],
    outputs: dict[str, list[Path]],
    env: dict[str, str],
    name: str,
) -> float:
    """Wall seconds of contender ``name``'s processes, one after the other, its earlier
    outputs removed first."""
    for path in outputs.get(name, []):
        shutil.rmtree(path, ignore_errors=True)
    return sum(_timed(cmd, env) for cmd in commands[name])


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved whole-process runs of the one pass, the separate runs and the evaluator."""
    from bench.machine import header
    from bench.oob import contenders_setup, interleaved
    from crossenc.testing import build_tiny_model

    work = Path(args.work)
    minilm, _, env = contenders_setup(work)
    tiny = work / "tiny-bert"
    if not tiny.exists():
        build_tiny_model(tiny, "bert", 1, seed=0)
    models = {"minilm": minilm, "tiny": tiny}
    script = work / "st_evaluator.py"
    script.write_text(ST_EVALUATOR)
    result: dict[str, Any] = {
        **header(args.reps),
        "models": {n: str(p) for n, p in models.items()},
        "sizes": {},
    }
    for rows in args.eval_pairs:
        data = work / f"labelled-{rows}"
        if not data.exists():
            labelled_log(data, rows, args.seed)
        one, alone = work / f"one-{rows}", {n: work / f"alone-{n}-{rows}" for n in models}
        one_cmd = _command(work, "one", _config(data, one, models, None))
        first, second = list(models)
        separate = [
            _command(work, first, _config(data, alone[first], {first: minilm}, None)),
            _command(work, second, _config(data, alone[second], {second: tiny}, alone[first])),
        ]
        st_out = work / f"st-{rows}.json"
        st_cmd = [sys.executable, str(script), str(data), str(st_out), *map(str, models.values())]

        commands = {
            "crossenc_one_pass": [one_cmd],
            "crossenc_separate": separate,
            "st_evaluator": [st_cmd],
        }
        outputs = {"crossenc_one_pass": [one], "crossenc_separate": list(alone.values())}
        times = interleaved(list(commands), partial(_run, commands, outputs, env), args.reps)
        med = {k: statistics.median(v) for k, v in times.items()}
        summary = json.loads((one / "_summary.json").read_text())
        evaluation = summary["evaluation"]
        st = json.loads(st_out.read_text())
        parity = {}
        for entry in evaluation["models"]:
            theirs = st[str(models[entry["name"]])]
            parity[entry["name"]] = {
                m: abs(entry["metrics"][m] - theirs[m]) for m in ("map", "mrr@10", "ndcg@10")
            }
        result["sizes"][str(rows)] = {
            "queries": evaluation.get("queries"),
            "wall_seconds_all_reps": times,
            "wall_seconds_median": med,
            "ratio_separate_to_one_pass": round(
                med["crossenc_separate"] / med["crossenc_one_pass"], 2
            ),
            "ratio_st_evaluator_to_one_pass": round(
                med["st_evaluator"] / med["crossenc_one_pass"], 2
            ),
            "one_pass_phases_seconds": summary.get("phases"),
            "one_pass_models": summary.get("models"),
            "leaderboard": evaluation["leaderboard"],
            "paired_differences": evaluation.get("compared"),
            "abs_difference_to_st_evaluator": parity,
        }
        shutil.rmtree(one, ignore_errors=True)
        for path in alone.values():
            shutil.rmtree(path, ignore_errors=True)
    return result
