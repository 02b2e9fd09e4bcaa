"""crossenc's scores equal sentence-transformers' CrossEncoder.predict for every architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder

from crossenc.config import ModelConfig, RuntimeConfig
from crossenc.engine.scoring import LocalScorer
from crossenc.testing import ARCHITECTURES, sample_sentences

ST_ACTIVATIONS = {
    "auto": None,
    "identity": torch.nn.Identity(),
    "sigmoid": torch.nn.Sigmoid(),
    "softmax": torch.nn.Softmax(dim=-1),
}


def _pairs() -> list[tuple[str, str]]:
    a = sample_sentences(40, seed=3, max_words=12)
    b = sample_sentences(40, seed=4, min_words=2, max_words=60)
    b[0] = " ".join(["berlin population"] * 150)  # far past max_length: truncated
    return [("A man is eating pizza", "A man eats something"), *zip(a, b, strict=True)]


CASES = [
    (arch, n, act)
    for arch in ARCHITECTURES
    for n, acts in ((1, ("auto", "identity", "sigmoid")), (3, ("auto", "identity", "softmax")))
    for act in acts
]


@pytest.mark.canary
@pytest.mark.parametrize(("arch", "outputs", "activation"), CASES)
def test_scores_match_sentence_transformers(models, arch, outputs, activation):
    folder = str(models[(arch, outputs)])
    pairs = _pairs()
    # A small token budget forces many length-sorted batches of different widths.
    scorer = LocalScorer(
        ModelConfig(dtype="float32", name=folder, activation=activation),
        RuntimeConfig(batch_tokens=512),
    )
    ours = scorer.predict(pairs)
    theirs = CrossEncoder(folder, device="cpu").predict(
        pairs, activation_fn=ST_ACTIVATIONS[activation], batch_size=32
    )
    assert ours.shape == theirs.shape == ((len(pairs),) if outputs == 1 else (len(pairs), 3))
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    assert scorer.engine.stats.forward_passes > 1
    if activation == "auto":
        assert scorer.info.activation == ("sigmoid" if outputs == 1 else "identity")
    # Scores must actually vary, or the comparison proves nothing.
    assert np.ptp(ours, axis=0).min() > 1e-3


def test_auto_activation_follows_the_models_stored_choice(models, tmp_path):
    """A model saved by sentence-transformers with Identity keeps it under ``auto``."""
    folder = tmp_path / "stsb-like"
    ce = CrossEncoder(str(models[("roberta", 1)]), activation_fn=torch.nn.Identity())
    ce.save(str(folder))
    scorer = LocalScorer(ModelConfig(dtype="float32", name=str(folder)))
    assert scorer.info.activation == "identity"
    pairs = _pairs()[:8]
    np.testing.assert_allclose(
        scorer.predict(pairs), CrossEncoder(str(folder)).predict(pairs), atol=1e-5, rtol=0
    )
