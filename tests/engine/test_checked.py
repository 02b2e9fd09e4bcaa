"""keep_if_same: a change to a model is kept only where the model scores as before."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from crossenc.engine.checked import keep_if_same, logits_tolerance


@dataclass
class Model:
    """A stand-in whose logits are its offset; changes move the offset and can be undone."""

    offset: float = 0.0
    history: list[str] = field(default_factory=list)

    def score(self) -> np.ndarray:
        return np.array([[1.0, -2.0]]) + self.offset


@dataclass
class Change:
    undo: object


def shift(by: float):
    def change(model: Model) -> Change:
        model.offset += by
        model.history.append("applied")

        def undo() -> None:
            model.offset -= by
            model.history.append("undone")

        return Change(undo)

    return change


def test_a_change_within_rounding_is_kept_with_its_diff() -> None:
    model = Model()
    checked = keep_if_same(shift(1e-6), model, model.score, torch.float32)
    assert checked.kept and checked.why == ""
    assert abs(checked.diff - 1e-6) < 1e-9
    assert model.history == ["applied"]


def test_a_change_that_moves_the_logits_is_undone_and_says_by_how_much() -> None:
    model = Model()
    checked = keep_if_same(shift(0.5), model, model.score, torch.float32)
    assert not checked.kept
    assert "5.00e-01" in checked.why
    assert model.offset == 0.0 and model.history == ["applied", "undone"]


def test_a_change_that_does_not_apply_is_not_a_refusal() -> None:
    model = Model()
    checked = keep_if_same(lambda m: None, model, model.score, torch.float32)
    assert not checked.kept and checked.why == ""


def test_a_change_whose_model_then_raises_is_undone_with_the_error() -> None:
    model = Model()
    calls = iter([model.score(), None])

    def score() -> np.ndarray:
        value = next(calls)
        if value is None:
            raise RuntimeError("no kernel for this op")
        return value

    checked = keep_if_same(shift(0.0), model, score, torch.float32)
    assert not checked.kept
    assert checked.why == "RuntimeError: no kernel for this op"
    assert model.history == ["applied", "undone"]


def test_the_tolerance_scales_with_the_logits_and_widens_for_16_bit() -> None:
    small, large = np.array([0.5]), np.array([-30.0])
    assert logits_tolerance(small, torch.float32) == 1e-4
    assert logits_tolerance(large, torch.float32) == 30 * 1e-4
    assert logits_tolerance(small, torch.bfloat16) == 2e-2
    assert logits_tolerance(torch.tensor([3.0]), torch.float16) == 3 * 2e-2
