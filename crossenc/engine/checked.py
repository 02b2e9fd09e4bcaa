"""Keep a change to a model (a pruned layer, pre-packed weights) only where it scores as before.

Both the torch replica and the ONNX export apply such changes and check them the same way: score
a sample, apply the change, score the sample again, and put the model back if the logits moved
more than rounding in another order could move them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch


class Undoable(Protocol):
    """What a change to a model returns: how to put the model back."""

    undo: Callable[[], None]


@dataclass(frozen=True)
class Checked:
    """The outcome of :func:`keep_if_same`: the change's result where it was kept, else None
    with ``why`` (empty where the change did not apply to the model at all)."""

    result: Any | None
    diff: float = 0.0
    why: str = ""

    @property
    def kept(self) -> bool:
        """Whether the change applied and the model still scores as before."""
        return self.result is not None


def logits_tolerance(plain: Any, dtype: torch.dtype) -> float:
    """How far a changed model's logits may be from the plain model's: float32 rounding of the
    same sums in another order (1e-4 of the logits' scale), or 16-bit's (2e-2)."""
    scale = max(1.0, float(abs(plain).max()))
    return (1e-4 if dtype == torch.float32 else 2e-2) * scale


def keep_if_same(
    change: Callable[[Any], Undoable | None],
    model: Any,
    score: Callable[[], Any],
    dtype: torch.dtype,
) -> Checked:
    """Apply ``change`` to ``model`` (it returns None where it does not apply) and keep it only
    if ``score()`` (logits of a fixed sample, numpy or torch) stays within
    :func:`logits_tolerance`; otherwise undo it and say why."""
    plain = score()
    result = None
    try:
        result = change(model)
        if result is None:
            return Checked(None)
        diff = float(abs(score() - plain).max())
        why = f"its logits differ from the plain model's by {diff:.2e}"
    except Exception as err:  # noqa: BLE001 - an op this build lacks: keep the plain model
        diff, why = math.nan, f"{type(err).__name__}: {err}"
    if not diff <= logits_tolerance(plain, dtype):  # NaN (it raised) too
        if result is not None:
            result.undo()
        return Checked(None, diff, why)
    return Checked(result, diff)
