"""The last layer for the first position only (model.prune_last_layer): the same scores as the
full model on every architecture it applies to, about 5/6 of a layer's work less, a pruned
layer that does not score as the full one refused, and the same on the ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from crossenc.config import ModelConfig, RuntimeConfig, build_config
from crossenc.engine.first_token import FirstTokenLayer, prune_last_layer
from crossenc.engine.onnx_runner import cache_key, ensure_onnx_model
from crossenc.engine.scoring import LocalScorer
from crossenc.models.describe import describe_model
from crossenc.testing import ARCHITECTURES, build_tiny_model, sample_sentences

PRUNED = {"bert", "electra", "roberta", "xlm-roberta"}  # heads that read position 0 only


def _pairs(n: int = 24) -> list[tuple[str, str]]:
    queries = sample_sentences(n, seed=1, max_words=8)
    return list(zip(queries, sample_sentences(n, seed=2, max_words=40), strict=True))


@pytest.fixture(scope="module")
def xlmr(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("xlmr") / "m", "xlm-roberta", 1, seed=4))


def _folder(arch: str, models: dict, xlmr: str, outputs: int = 3) -> str:
    return xlmr if arch == "xlm-roberta" else str(models[(arch, outputs)])


@pytest.mark.parametrize("arch", [*ARCHITECTURES, "xlm-roberta"])
def test_the_pruned_model_scores_as_the_full_one(arch, models, xlmr):
    folder = _folder(arch, models, xlmr)
    runtime = RuntimeConfig(max_batch_rows=5)  # several batches of several widths, padded
    full = LocalScorer(ModelConfig(dtype="float32", name=folder, prune_last_layer=False), runtime)
    pruned = LocalScorer(ModelConfig(dtype="float32", name=folder), runtime)
    assert pruned.engine.stats.extra["first_token"] is (arch in PRUNED)
    assert full.engine.stats.extra["first_token"] is False
    model = pruned.engine.runner.model
    last = model.base_model.encoder.layer[-1] if hasattr(model.base_model, "encoder") else None
    assert isinstance(last, FirstTokenLayer) is (arch in PRUNED)
    got, want = pruned.predict(_pairs()), full.predict(_pairs())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(want) > 1e-2  # the pairs' scores differ: agreement means something


def test_the_pruned_layer_leaves_out_most_of_a_layers_work(models):
    scorer = LocalScorer(ModelConfig(dtype="float32", name=str(models[("bert", 1)]), prepack=False))
    model = scorer.engine.runner.model
    layers = model.config.num_hidden_layers
    ids = torch.randint(5, 100, (8, 64))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def flops() -> int:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(**batch)
        return counter.get_total_flops()

    pruned = flops()
    undo = model.base_model.encoder.layer[-1].layer
    model.base_model.encoder.layer[-1] = undo
    full = flops()
    saved = 1 - pruned / full
    # one layer of `layers` less, but for its keys and values (2 of its 12 d x d projections)
    assert 0.6 / layers < saved < 1.0 / layers, (pruned, full)


def test_a_pruned_layer_that_does_not_score_as_the_full_one_is_refused(models, monkeypatch, caplog):
    folder = str(models[("roberta", 1)])
    monkeypatch.setattr(
        FirstTokenLayer, "forward", lambda self, hidden, *a, **k: hidden[:, :1] * 0 + 0.5
    )
    with caplog.at_level("WARNING", logger="crossenc.engine.torch_runner"):
        scorer = LocalScorer(ModelConfig(dtype="float32", name=folder))
    assert "the first-token last layer for" in caplog.text and "differ" in caplog.text
    assert scorer.engine.stats.extra["first_token"] is False
    assert not isinstance(scorer.engine.runner.model.base_model.encoder.layer[-1], FirstTokenLayer)
    monkeypatch.undo()
    full = LocalScorer(ModelConfig(dtype="float32", name=folder, prune_last_layer=False))
    np.testing.assert_array_equal(scorer.predict(_pairs()), full.predict(_pairs()))


def test_prune_applies_only_where_the_head_reads_the_first_position(models):
    scorer = LocalScorer(
        ModelConfig(dtype="float32", name=str(models[("deberta-v2", 1)]), prune_last_layer=False)
    )
    assert (
        prune_last_layer(scorer.engine.runner.model) is None
    )  # DeBERTa's head: a pooler of its own


def test_the_switch_leaves_the_run_fingerprint_alone():
    def fingerprint(**model: object) -> str:
        return build_config(
            {"input": {"path": "i"}, "output": {"path": "o"}, "model": model}
        ).fingerprint()

    assert fingerprint(prune_last_layer=False) == fingerprint()


def test_the_onnx_export_is_pruned_and_scores_as_torch(models, tmp_path):
    folder = str(models[("electra", 3)])
    scores, keys = {}, {}
    for prune in (True, False):
        cfg = ModelConfig(name=folder, backend="onnx", dtype="float32", prune_last_layer=prune)
        info = describe_model(cfg)
        keys[prune] = cache_key(cfg, info)
        path = ensure_onnx_model(cfg, info, str(tmp_path))
        scores[prune] = LocalScorer(
            cfg, RuntimeConfig(cache_dir=str(tmp_path), max_batch_rows=5)
        ).predict(_pairs())
        if prune:
            pruned_graph = path.read_bytes()
        else:
            assert path.read_bytes() != pruned_graph
    assert keys[True] != keys[False]  # one export each, cached apart
    torch_scores = LocalScorer(
        ModelConfig(name=folder, dtype="float32"), RuntimeConfig(max_batch_rows=5)
    )
    np.testing.assert_allclose(scores[True], scores[False], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores[True], torch_scores.predict(_pairs()), rtol=1e-5, atol=1e-5)
