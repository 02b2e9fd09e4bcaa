"""LLM rerankers and long inputs (``python -m bench --mode causal`` / ``--mode long``).

Causal mode: a small seeded Qwen3 causal-LM reranker with Qwen3's real vocabulary size
(151,936), scored three ways on the same left-padded batches, interleaved:

- ``full_vocab_every_position``: ``model(...).logits`` (rows x length x vocab), then the last
  position's yes/no logits: what a plain ``AutoModelForCausalLM`` forward computes;
- ``last_position_full_vocab``: ``logits_to_keep=1`` (the LM head on the last position only, the
  whole vocabulary): what sentence-transformers 6 does;
- ``last_position_two_rows``: crossenc's :class:`crossenc.engine.torch_runner.LastTokenScore`,
  the LM head's yes and no rows on the last position only;

and, as the peer, ``CrossEncoder.predict`` against crossenc's ``LocalScorer`` on the same folder
and pairs (both tokenize through the chat template).

Long mode: a MiniLM-size XLM-RoBERTa (6 layers, hidden 384, 12 heads, 8,194 positions) on rows
of 512 to 8,192 tokens with the default CPU token budget, each length in a fresh process: the
peak resident memory, the rows per forward pass and the seconds per row.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

QWEN3_VOCAB = 151_936


def build_causal(folder: Path, seed: int = 0) -> Path:
    """The tiny test reranker's tokenizer and chat template on a Qwen3 causal LM of hidden 256,
    4 layers and Qwen3's vocabulary size (the tokenizer uses its first ids only)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from crossenc.testing import build_tiny_causal_reranker

    build_tiny_causal_reranker(folder, arch="qwen3", seed=seed, max_length=1024)
    small = AutoConfig.from_pretrained(folder)
    config = AutoConfig.for_model(
        "qwen3",
        vocab_size=QWEN3_VOCAB,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=1024,
        pad_token_id=small.pad_token_id,
        tie_word_embeddings=True,
        architectures=["Qwen3ForCausalLM"],
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.05)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def causal(args: argparse.Namespace) -> dict[str, Any]:
    """The three ways of scoring a causal-LM reranker, and crossenc against predict."""
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForCausalLM

    from bench.machine import cpu_model
    from crossenc.config import ModelConfig, RuntimeConfig
    from crossenc.engine.scoring import LocalScorer, pad_batch, plan_batches
    from crossenc.engine.torch_runner import LastTokenScore
    from crossenc.testing import sample_sentences

    threads = torch.get_num_threads()
    folder = build_causal(Path(args.work) / "causal-reranker", args.seed)
    queries = sample_sentences(args.pairs, seed=args.seed, max_words=12)
    passages = sample_sentences(args.pairs, seed=args.seed + 1, min_words=20, max_words=120)
    pairs = list(zip(queries, passages, strict=True))
    scorer = LocalScorer(ModelConfig(name=str(folder)), RuntimeConfig(torch_threads=threads))
    tokens, _ = scorer.encode(pairs)
    info = scorer.info
    assert info.score_tokens is not None
    lengths = np.array([len(t) for t in tokens])
    batches = [
        pad_batch([tokens[i] for i in b], None, info.pad_token_id, left=True)
        for b in plan_batches(lengths, scorer.engine.batch_tokens, scorer.engine.max_batch_rows)
    ]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    two_rows = LastTokenScore(model, info.score_tokens).eval()
    ids = list(info.score_tokens)

    def run(kind: str) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for b in batches:
                t = {k: torch.from_numpy(v) for k, v in b.items()}
                if kind == "full_vocab_every_position":
                    logits = model(**t).logits[:, -1, ids]
                elif kind == "last_position_full_vocab":
                    logits = model(**t, logits_to_keep=1).logits[:, -1, ids]
                else:
                    out.append(two_rows(**t).logits[:, 0].numpy())
                    continue
                out.append((logits[:, 0] - logits[:, 1]).numpy())
        return np.concatenate(out)

    kinds = ["full_vocab_every_position", "last_position_full_vocab", "last_position_two_rows"]
    ce = CrossEncoder(str(folder))
    peers = {
        "st_predict": lambda: ce.predict(pairs, batch_size=32),
        "crossenc_local_scorer": lambda: scorer.predict(pairs),
    }
    times: dict[str, list[float]] = {k: [] for k in kinds + list(peers)}
    results: dict[str, Any] = {}
    for rep in range(args.reps):
        order = kinds + list(peers)
        for name in order if rep % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            results[name] = run(name) if name in kinds else peers[name]()
            times[name].append(time.perf_counter() - started)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = sum(len(b["input_ids"]) for b in batches)
    largest = max(b["input_ids"].size for b in batches)
    diff = results["full_vocab_every_position"] - results["last_position_two_rows"]
    return {
        "mode": "causal",
        "machine": f"{cpu_model()}, {threads} torch threads",
        "model": "seeded Qwen3ForCausalLM, hidden 256, 4 layers, vocab 151,936 (tied head)",
        "pairs": args.pairs,
        "mean_tokens": round(float(lengths.mean()), 1),
        "forward_rows": rows,
        "pairs_per_s": {k: round(args.pairs / v, 1) for k, v in med.items()},
        "seconds_all_reps": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "ratio_to_full_vocab_every_position": {
            k: round(med["full_vocab_every_position"] / med[k], 2) for k in kinds
        },
        "ratio_to_st_predict": round(med["st_predict"] / med["crossenc_local_scorer"], 2),
        "logits_bytes_largest_batch": {
            "full_vocab_every_position": largest * QWEN3_VOCAB * 4,
            "last_position_full_vocab": len(batches[0]["input_ids"]) * QWEN3_VOCAB * 4,
            "last_position_two_rows": len(batches[0]["input_ids"]) * 2 * 4,
        },
        "max_abs_diff_two_rows_vs_full": float(np.abs(diff).max()),
        "max_abs_diff_local_scorer_vs_st_predict": float(
            np.abs(results["crossenc_local_scorer"] - results["st_predict"]).max()
        ),
    }


LONG_SCRIPT = """
import json, resource, sys, time
import numpy as np
from crossenc.config import ModelConfig, RuntimeConfig
from crossenc.engine.scoring import ScoringEngine
from crossenc.models.describe import ModelInfo
folder, length, rows, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
info = ModelInfo(source=folder, num_labels=1, labels=("LABEL_0",), activation="sigmoid",
                 max_length=8192, uses_token_type_ids=False, pad_token_id=1,
                 model_type="xlm-roberta")
engine = ScoringEngine(ModelConfig(name=folder), info, RuntimeConfig(torch_threads=threads), folder)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rng = np.random.default_rng(0)
ids = [np.r_[0, rng.integers(5, 250, length - 2), 2].astype(np.int64) for _ in range(rows)]
started = time.perf_counter()
scores = engine.score(ids)
seconds = time.perf_counter() - started
print(json.dumps({"length": length, "rows": rows, "finite": bool(np.isfinite(scores).all()),
    "forward_passes": engine.stats.forward_passes, "batch_tokens": engine.batch_tokens,
    "seconds_per_row": round(seconds / rows, 3),
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "peak_rss_after_load_mib": round(before / 1024, 1)}))
"""


def long_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory and time per row of 512- to 8,192-token rows, one process per length."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from bench.machine import cpu_model

    folder = Path(args.work) / "xlmr-minilm-size"
    config = AutoConfig.for_model(
        "xlm-roberta",
        vocab_size=250,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=8194,
        type_vocab_size=1,
        pad_token_id=1,
        num_labels=1,
    )
    torch.manual_seed(args.seed)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    threads = torch.get_num_threads()
    out: dict[str, Any] = {
        "mode": "long",
        "machine": f"{cpu_model()}, {threads} torch threads",
        "model": "seeded XLM-RoBERTa of MiniLM-L6 size (6 layers, hidden 384), SDPA, float32",
        "lengths": [],
    }
    for length in args.lengths:
        rows = max(2, 8192 // length)
        done = subprocess.run(
            [sys.executable, "-c", LONG_SCRIPT, str(folder), str(length), str(rows), str(threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        out["lengths"].append(json.loads(done.stdout.strip().splitlines()[-1]))
    out["driver_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out
