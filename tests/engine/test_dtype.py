"""model.dtype auto on CPU: bfloat16 where the CPU multiplies it in hardware (AMX), float32
elsewhere, and float32 for a model that cannot run in bfloat16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from crossenc.config import ModelConfig, RuntimeConfig
from crossenc.engine import torch_runner as torch_backend
from crossenc.engine.scoring import LocalScorer
from crossenc.engine.torch_runner import cpu_has_bf16_matmul, pick_dtype


def _pairs(n: int = 40) -> list[tuple[str, str]]:
    rng = np.random.default_rng(3)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "paper", "tree"]
    return [
        (" ".join(rng.choice(words, 3)), " ".join(rng.choice(words, int(rng.integers(4, 30)))))
        for _ in range(n)
    ]


def test_auto_follows_the_cpus_bf16_matrix_units():
    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32)
    assert pick_dtype("float32", cpu) == torch.float32
    assert pick_dtype("bfloat16", cpu) == torch.bfloat16


@pytest.fixture
def amx(monkeypatch):
    """This process's replicas pick as on a CPU with AMX (bfloat16 still runs without it)."""
    monkeypatch.setattr(torch_backend, "cpu_has_bf16_matmul", lambda: True)


def test_auto_runs_bfloat16_close_to_float32(amx, minilm):
    """Real MiniLM-L6 weights (a seeded head): bfloat16 keeps 8 bits of mantissa, so the scores
    move, but by little against their spread, and in nearly the same order."""
    runtime = RuntimeConfig(batch_tokens=512)
    auto = LocalScorer(ModelConfig(name=str(minilm)), runtime)
    fp32 = LocalScorer(ModelConfig(name=str(minilm), dtype="float32"), runtime)
    assert auto.engine.runs == "torch cpu bfloat16 sdpa"  # no oneDNN float32 pre-packing
    assert fp32.engine.runs == "torch cpu float32 sdpa prepacked"
    pairs = _pairs(200)
    got, want = np.ravel(auto.predict(pairs)), np.ravel(fp32.predict(pairs))
    assert got.dtype == np.float32
    assert not np.array_equal(got, want)  # it did run in bfloat16
    # measured: max abs diff 2.4e-4 after the sigmoid, scores' std 2.9e-3, Spearman 0.9999
    assert np.abs(got - want).max() < 1e-3
    assert spearmanr(got, want).statistic > 0.99


def test_a_model_that_fails_in_bfloat16_is_loaded_in_float32(amx, models, caplog):
    """transformers' DeBERTa mixes float32 into its attention: auto falls back, with a warning,
    and scores as float32; an explicit bfloat16 is not second-guessed."""
    folder = str(models[("deberta", 1)])
    with caplog.at_level("WARNING", logger="crossenc.engine.torch_runner"):
        auto = LocalScorer(ModelConfig(name=folder), RuntimeConfig())
    assert auto.engine.runs == "torch cpu float32 eager prepacked"  # DeBERTa has no SDPA
    assert "does not run in bfloat16 here" in caplog.text and "model.dtype" in caplog.text
    fp32 = LocalScorer(ModelConfig(name=folder, dtype="float32"), RuntimeConfig())
    pairs = _pairs(8)
    np.testing.assert_allclose(auto.predict(pairs), fp32.predict(pairs), rtol=0, atol=1e-6)
    explicit = LocalScorer(ModelConfig(name=folder, dtype="bfloat16"), RuntimeConfig())
    with pytest.raises(RuntimeError):
        explicit.predict(pairs)
