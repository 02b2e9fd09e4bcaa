"""The community and causal-LM tiny models of crossenc.testing load and score in
sentence-transformers, with the tokenizers, files and token budgets their tests rely on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer

from crossenc.testing import (
    CAUSAL_ARCHITECTURES,
    COMMUNITY_ARCHITECTURES,
    QWEN3_RERANKER_TEMPLATE,
    build_tiny_causal_reranker,
    build_tiny_model,
    main,
    sample_sentences,
)

SEQ_CLS_CLASSES = {
    "xlm-roberta": "XLMRobertaForSequenceClassification",
    "modernbert": "ModernBertForSequenceClassification",
    "qwen3": "Qwen3ForSequenceClassification",
}
CAUSAL_CLASSES = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM"}
ST_FILES = ("modules.json", "sentence_bert_config.json", "1_LogitScore/config.json")


def _pairs() -> list[tuple[str, str]]:
    a = sample_sentences(20, seed=3, max_words=10)
    b = sample_sentences(20, seed=4, min_words=2, max_words=60)
    return list(zip(a, b, strict=True))


def _long_text(seed: int) -> str:
    return " ".join(sample_sentences(60, seed=seed, min_words=20, max_words=30))


def _assert_scores_vary(scores: np.ndarray, n: int) -> None:
    assert scores.shape == (n,)
    assert np.isfinite(scores).all()
    assert scores.std() > 1e-3


def _module_types(ce: CrossEncoder) -> list[str]:
    return [type(m).__name__ for m in ce]


@pytest.fixture(scope="module")
def community(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """arch -> seeded single-output tiny model folder, for each community architecture."""
    root = tmp_path_factory.mktemp("community")
    return {
        arch: build_tiny_model(root / arch, arch, 1, seed=i)
        for i, arch in enumerate(SEQ_CLS_CLASSES)
    }


@pytest.fixture(scope="module")
def rerankers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """arch -> seeded Qwen3-Reranker-style reranker folder, with sentence-transformers' files."""
    root = tmp_path_factory.mktemp("causal")
    return {
        arch: build_tiny_causal_reranker(root / arch, arch, seed=i)
        for i, arch in enumerate(CAUSAL_CLASSES)
    }


def test_the_architecture_tuples_name_what_the_builders_take():
    assert set(COMMUNITY_ARCHITECTURES) == set(SEQ_CLS_CLASSES)
    assert set(CAUSAL_ARCHITECTURES) == set(CAUSAL_CLASSES)


@pytest.mark.parametrize("arch", list(SEQ_CLS_CLASSES))
def test_community_model_scores_in_sentence_transformers(community, arch):
    ce = CrossEncoder(str(community[arch]), device="cpu")
    assert _module_types(ce) == ["Transformer"]
    assert ce[0].transformer_task == "sequence-classification"
    assert type(ce.model).__name__ == SEQ_CLS_CLASSES[arch]
    assert ce.tokenizer.is_fast
    assert ce.tokenizer.padding_side == "right"
    _assert_scores_vary(ce.predict(_pairs(), batch_size=8), 20)


def test_pair_layouts_follow_the_real_tokenizers(community):
    a, b = "A man is eating pizza", "A man eats something"
    xlmr = AutoTokenizer.from_pretrained(community["xlm-roberta"])
    enc = xlmr(a, b)
    assert "token_type_ids" not in enc
    tokens = xlmr.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["<s>", *xlmr.tokenize(a), "</s>", "</s>", *xlmr.tokenize(b), "</s>"]
    assert (xlmr.pad_token, xlmr.unk_token_id) == ("<pad>", 3)

    modernbert = AutoTokenizer.from_pretrained(community["modernbert"])
    enc = modernbert(a, b)
    assert "token_type_ids" not in enc
    tokens = modernbert.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", *modernbert.tokenize(a), "[SEP]", *modernbert.tokenize(b), "[SEP]"]
    assert modernbert.pad_token_id == len(modernbert) - 2  # specials follow the trained vocab

    qwen = AutoTokenizer.from_pretrained(community["qwen3"])
    assert (qwen.pad_token, qwen.eos_token, qwen.bos_token) == ("<|endoftext|>", "<|im_end|>", None)
    assert qwen(a, b)["input_ids"] == qwen(a)["input_ids"] + qwen(b)["input_ids"]  # no specials
    assert qwen.convert_ids_to_tokens(qwen("<|im_start|>")["input_ids"]) == ["<|im_start|>"]


@pytest.mark.parametrize("arch", ["xlm-roberta", "modernbert"])
def test_long_pairs_fill_a_1024_token_model(tmp_path, arch):
    folder = build_tiny_model(tmp_path / arch, arch, 1, max_length=1024)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pairs = [(_long_text(5), _long_text(6)), (_long_text(7), "A man eats something")]
    lengths = [len(tokenizer(a, b, truncation=True)["input_ids"]) for a, b in pairs]
    assert min(lengths) >= 900 and max(lengths) <= 1024
    scores = CrossEncoder(str(folder), device="cpu").predict(pairs)
    assert np.isfinite(scores).all()


def test_seq_cls_llm_pads_left_on_request_with_the_same_scores(tmp_path):
    right = build_tiny_model(tmp_path / "right", "qwen3", 1, seed=5)
    left = build_tiny_model(tmp_path / "left", "qwen3", 1, seed=5, padding_side="left")
    assert AutoTokenizer.from_pretrained(left).padding_side == "left"
    # transformers pools the last non-pad token on either side
    theirs = [
        CrossEncoder(str(f), device="cpu").predict(_pairs(), batch_size=8) for f in (right, left)
    ]
    np.testing.assert_allclose(theirs[0], theirs[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", list(CAUSAL_CLASSES))
def test_causal_reranker_scores_yes_against_no(rerankers, arch):
    ce = CrossEncoder(str(rerankers[arch]), device="cpu")
    tokenizer = ce.tokenizer
    assert _module_types(ce) == ["Transformer", "LogitScore"]
    assert ce[0].transformer_task == "text-generation"
    assert type(ce.model).__name__ == CAUSAL_CLASSES[arch]
    assert ce.model.config.tie_word_embeddings
    assert ce[1].true_token_id == tokenizer.convert_tokens_to_ids("yes")
    assert ce[1].false_token_id == tokenizer.convert_tokens_to_ids("no")
    assert None not in (ce[1].true_token_id, ce[1].false_token_id)
    assert tokenizer.is_fast and tokenizer.padding_side == "left"
    assert "message" in ce[0].modality_config  # pairs go through the chat template
    _assert_scores_vary(ce.predict(_pairs(), batch_size=8), 20)
    logits = ce.predict(_pairs(), batch_size=8, activation_fn=torch.nn.Identity())
    assert logits.std() > 0.1  # yes - no logit differences, not all ~0


def test_the_chat_template_renders_query_document_and_prompt(rerankers):
    tokenizer = AutoTokenizer.from_pretrained(rerankers["qwen3"])
    assert tokenizer.chat_template == QWEN3_RERANKER_TEMPLATE
    pair = [
        {"role": "query", "content": "How many people live in Berlin?"},
        {"role": "document", "content": "Berlin has 3.5 million registered inhabitants."},
    ]
    text = tokenizer.apply_chat_template(pair, tokenize=False)
    assert "<Query>: How many people live in Berlin?\n" in text
    assert "<Document>: Berlin has 3.5 million registered inhabitants.<|im_end|>" in text
    assert "<Instruct>: Given a web search query, retrieve relevant passages" in text
    prompted = [{"role": "system", "content": "Find the population"}, *pair]
    assert "<Instruct>: Find the population\n" in tokenizer.apply_chat_template(
        prompted, tokenize=False
    )
    # the fixed prompt stays short, as with Qwen's real vocabulary
    assert len(tokenizer.apply_chat_template(pair, tokenize=True)["input_ids"]) < 100


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("causal", {}),
        ("causal", {"chat_template": None}),
        (
            "causal",
            {
                "false_token": None,
                "prompts": {"web": "Web", "qa": "QA"},
                "default_prompt_name": "web",
            },
        ),
        ("seq-cls", {"chat_template": QWEN3_RERANKER_TEMPLATE, "prompts": {"web": "Web"}}),
        ("seq-cls", {"st_files": True, "num_labels": 3, "labels": ("a", "b", "c")}),
    ],
)
def test_sentence_transformers_files_match_what_it_saves(tmp_path, kind, kwargs):
    """CrossEncoder.save of a built folder rewrites its sentence-transformers files unchanged."""
    if kind == "causal":
        folder = build_tiny_causal_reranker(tmp_path / "model", **kwargs)
    else:
        folder = build_tiny_model(tmp_path / "model", "qwen3", max_length=512, **kwargs)
    CrossEncoder(str(folder), device="cpu").save(str(tmp_path / "resaved"))
    for name in ST_FILES:
        ours, theirs = folder / name, tmp_path / "resaved" / name
        assert ours.exists() == theirs.exists(), name
        if ours.exists():
            assert json.loads(ours.read_text()) == json.loads(theirs.read_text()), name
    ours, theirs = (
        json.loads((f / "config_sentence_transformers.json").read_text())
        for f in (folder, tmp_path / "resaved")
    )
    assert ours.pop("__version__").keys() == theirs.pop("__version__").keys()
    assert ours == theirs


def test_false_token_none_scores_the_yes_logit_alone(tmp_path):
    folder = build_tiny_causal_reranker(tmp_path / "yes-only", false_token=None)
    score = json.loads((folder / "1_LogitScore" / "config.json").read_text())
    assert score["false_token_id"] is None
    ce = CrossEncoder(str(folder), device="cpu")
    assert ce[1].false_token_id is None
    _assert_scores_vary(ce.predict(_pairs(), batch_size=8), 20)


def test_prompts_reach_the_chat_template_of_a_seq_cls_llm(tmp_path):
    folder = build_tiny_model(
        tmp_path / "converted",
        "qwen3",
        max_length=512,
        chat_template=QWEN3_RERANKER_TEMPLATE,
        prompts={"web": "Given a web search query", "code": "Given a code search query"},
        default_prompt_name="web",
    )
    ce = CrossEncoder(str(folder), device="cpu")
    assert ce.prompts == {"web": "Given a web search query", "code": "Given a code search query"}
    assert ce.default_prompt_name == "web"
    assert "message" in ce[0].modality_config
    web = ce.predict(_pairs(), batch_size=8)
    _assert_scores_vary(web, 20)
    assert not np.allclose(web, ce.predict(_pairs(), batch_size=8, prompt_name="code"))


def test_hf_only_reranker_gets_yes_no_scoring_from_sentence_transformers(tmp_path):
    folder = build_tiny_causal_reranker(tmp_path / "hf", "qwen2", st_files=False)
    assert not (folder / "modules.json").exists() and (folder / "chat_template.jinja").exists()
    ce = CrossEncoder(str(folder), device="cpu")
    assert _module_types(ce) == ["Transformer", "LogitScore"]
    assert ce[1].true_token_id == ce.tokenizer.convert_tokens_to_ids("yes")
    assert ce[1].false_token_id == ce.tokenizer.convert_tokens_to_ids("no")
    _assert_scores_vary(ce.predict(_pairs(), batch_size=8), 20)


def test_builders_refuse_what_they_cannot_save(tmp_path):
    with pytest.raises(ValueError, match="causal architecture"):
        build_tiny_causal_reranker(tmp_path / "x", "bert")
    with pytest.raises(ValueError, match="sentence-transformers"):
        build_tiny_causal_reranker(tmp_path / "x", st_files=False, prompts={"a": "A"})
    with pytest.raises(ValueError, match="single token"):
        build_tiny_causal_reranker(tmp_path / "x", false_token="nope-not-a-token")
    with pytest.raises(ValueError, match="names no prompt"):
        build_tiny_model(tmp_path / "x", "qwen3", default_prompt_name="web")
    with pytest.raises(ValueError, match="unknown architecture"):
        build_tiny_model(tmp_path / "x", "gpt9")


def test_cli_builds_a_causal_reranker(tmp_path, capsys):
    main(["causal", str(tmp_path / "cli"), "--arch", "qwen2", "--max-length", "256"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    modules = json.loads((tmp_path / "cli" / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_LogitScore"]
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["architectures"] == [
        "Qwen2ForCausalLM"
    ]
