"""Pre-packed oneDNN linear layers (model.prepack): same scores as plain PyTorch, a refused
pack leaves the plain model in place, and the switch does not change a run's fingerprint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from crossenc.config import ModelConfig, RuntimeConfig, build_config
from crossenc.engine.prepack import PackedLinear, prepack_linears
from crossenc.engine.scoring import LocalScorer
from crossenc.testing import ARCHITECTURES, sample_sentences

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN"
)


def _pairs(n: int = 24) -> list[tuple[str, str]]:
    queries = sample_sentences(n, seed=1, max_words=8)
    return list(zip(queries, sample_sentences(n, seed=2, max_words=40), strict=True))


def _linears(model: nn.Module) -> list[type]:
    return [type(m) for m in model.modules() if isinstance(m, nn.Linear | PackedLinear)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prepacked_model_scores_as_the_plain_one(arch, models):
    folder = str(models[(arch, 3)])
    runtime = RuntimeConfig(max_batch_rows=5)  # several batches of several widths
    plain = LocalScorer(ModelConfig(dtype="float32", name=folder, prepack=False), runtime)
    packed = LocalScorer(ModelConfig(dtype="float32", name=folder), runtime)
    assert packed.engine.runs == "torch cpu float32 " + (
        "sdpa prepacked" if arch != "deberta-v2" and arch != "deberta" else "eager prepacked"
    )
    assert set(_linears(packed.engine.runner.model)) == {PackedLinear}
    assert set(_linears(plain.engine.runner.model)) == {nn.Linear}
    got, want = packed.predict(_pairs()), plain.predict(_pairs())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(want) > 1e-2  # the pairs' scores differ: agreement means something


def test_feed_forward_gelu_is_fused_into_the_projection(models):
    model = LocalScorer(
        ModelConfig(dtype="float32", name=str(models[("bert", 1)]))
    ).engine.runner.model
    intermediate = model.bert.encoder.layer[0].intermediate
    assert intermediate.dense.attr == "gelu"
    assert isinstance(intermediate.intermediate_act_fn, nn.Identity)
    # the attention output projection has no activation after it
    assert model.bert.encoder.layer[0].output.dense.attr == "none"


def test_undo_puts_back_every_original_module(models):
    model = LocalScorer(
        ModelConfig(dtype="float32", name=str(models[("roberta", 1)]), prepack=False)
    )
    model = model.engine.runner.model
    before = dict(model.named_modules())
    packed = prepack_linears(model)
    assert packed.linears == sum(t is nn.Linear for t in map(type, before.values()))
    assert packed.fused_gelus == model.config.num_hidden_layers
    packed.undo()
    after = dict(model.named_modules())
    assert after.keys() == before.keys()
    assert all(after[name] is module for name, module in before.items())


@pytest.mark.parametrize(
    "broken",
    [
        lambda self, x: torch.zeros(*x.shape[:-1], self.out_features) + 0.5,  # wrong numbers
        lambda self, x: (_ for _ in ()).throw(RuntimeError("no such kernel")),  # an op that fails
    ],
    ids=["wrong-logits", "raises"],
)
def test_a_pack_that_does_not_score_as_plain_is_refused(broken, models, monkeypatch, caplog):
    folder = str(models[("electra", 1)])
    monkeypatch.setattr(PackedLinear, "forward", broken)
    with caplog.at_level("WARNING", logger="crossenc.engine.torch_runner"):
        scorer = LocalScorer(ModelConfig(dtype="float32", name=folder))
    assert "pre-packed weights for" in caplog.text and "it runs plain" in caplog.text
    assert scorer.engine.stats.extra["prepacked"] is False
    assert scorer.engine.runs == "torch cpu float32 sdpa"
    assert set(_linears(scorer.engine.runner.model)) == {nn.Linear}
    monkeypatch.undo()
    plain = LocalScorer(ModelConfig(dtype="float32", name=folder, prepack=False))
    np.testing.assert_array_equal(scorer.predict(_pairs()), plain.predict(_pairs()))


def test_speed_switches_leave_the_run_fingerprint_alone():
    def fingerprint(**model: object) -> str:
        cfg = {"input": {"path": "in"}, "output": {"path": "out"}, "model": model}
        return build_config(cfg).fingerprint()

    base = fingerprint()
    assert fingerprint(prepack=False) == fingerprint(compile=True) == base
    assert fingerprint(backend="onnx") != base  # another backend is another run


def test_bias_free_layers_and_other_activations_are_packed_without_fusing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.GELU(), nn.Linear(16, 4)).eval()
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        want = model(x)
        packed = prepack_linears(model)
        got = model(x)
    assert (packed.linears, packed.fused_gelus) == (2, 0)  # no dense/intermediate_act_fn pair
    assert [type(m) for m in model] == [PackedLinear, nn.GELU, PackedLinear]
    assert model[0].bias is None and model[0].weight.is_meta  # shape and dtype only
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_layer_that_cannot_be_packed_leaves_the_whole_model_plain(models, monkeypatch, caplog):
    folder = str(models[("roberta", 1)])
    made = [0]
    original_init = PackedLinear.__init__

    def fails_on_the_fifth(self: PackedLinear, linear: nn.Linear) -> None:
        made[0] += 1
        if made[0] == 5:
            raise RuntimeError("unsupported weight layout")
        original_init(self, linear)

    monkeypatch.setattr(PackedLinear, "__init__", fails_on_the_fifth)
    with caplog.at_level("WARNING", logger="crossenc.engine.torch_runner"):
        scorer = LocalScorer(ModelConfig(dtype="float32", name=folder))
    assert "unsupported weight layout" in caplog.text and "it runs plain" in caplog.text
    assert scorer.engine.runs == "torch cpu float32 sdpa"
    assert set(_linears(scorer.engine.runner.model)) == {nn.Linear}  # the first four put back
    monkeypatch.undo()
    plain = LocalScorer(ModelConfig(dtype="float32", name=folder, prepack=False))
    np.testing.assert_array_equal(scorer.predict(_pairs()), plain.predict(_pairs()))
