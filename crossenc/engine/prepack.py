"""CPU float32: linear layers on oneDNN's pre-packed weights, without torch.compile.

``nn.Linear`` on CPU calls a BLAS GEMM that re-lays out the weight matrix on every call. oneDNN
can lay it out once, in the blocked format its kernels read, and fuse the exact GELU of a
feed-forward layer into the same call: the two things that made inductor's frozen graph faster
than eager (see ``TorchRunner._compile``), here at load time, in milliseconds, with no compiler.
On the benchmark's MiniLM-L6 (2-core AMD EPYC) each projection runs 1.15-1.25x faster, the
whole engine 1.15-1.2x, with scores within 1.2e-7 of the plain model.

The ops (``torch.ops.mkldnn._reorder_linear_weight`` / ``_linear_pointwise``) are the ones
inductor itself emits for frozen linear layers; they are internal to PyTorch, so
:func:`prepack_linears` reports whether it could use them and the caller checks the packed model
against the plain one before keeping it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


def can_prepack() -> bool:
    """Whether this PyTorch has oneDNN and the packed-linear ops."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class PackedLinear(nn.Module):
    """``nn.Linear`` (float32, CPU, inference) on a weight packed once for oneDNN, optionally
    with an exact GELU fused into the same call. ``weight`` stays as a shape-and-dtype-only
    (meta) tensor for code that inspects it; computing with it fails loudly."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.weight = torch.empty_like(weight, device="meta")
        self.attr, self.algorithm = "none", ""

    def fuse_gelu(self) -> None:
        """Apply the exact (erf) GELU to the output, in the same oneDNN call."""
        self.attr, self.algorithm = "gelu", "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x, self.packed, self.bias, self.attr, [], self.algorithm
        )

    def extra_repr(self) -> str:
        fused = ", gelu fused" if self.attr == "gelu" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}{fused}"


def _exact_gelu(module: nn.Module) -> bool:
    """transformers' GELUActivation computing ``torch.nn.functional.gelu`` (erf), or nn.GELU()."""
    if isinstance(module, nn.GELU):
        return module.approximate == "none"
    return (
        type(module).__name__ == "GELUActivation"
        and getattr(module, "act", None) is nn.functional.gelu
    )


@dataclass
class Prepacked:
    """What :func:`prepack_linears` changed, and how to put it back."""

    linears: int
    fused_gelus: int
    undo: Callable[[], None]


def prepack_linears(model: nn.Module) -> Prepacked:
    """Swap every float32 ``nn.Linear`` of ``model`` for a :class:`PackedLinear`, in place, and
    fuse the GELU of feed-forward blocks that apply one right after their ``dense`` projection
    (BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa-v2: ``dense`` then ``intermediate_act_fn``).
    If packing a layer raises, the layers already swapped are put back before it propagates."""
    swaps: list[tuple[nn.Module, str, nn.Module]] = []

    def undo() -> None:
        for parent, name, original in reversed(swaps):
            setattr(parent, name, original)

    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear and child.weight.dtype == torch.float32:
                    setattr(parent, name, PackedLinear(child))
                    swaps.append((parent, name, child))
    except Exception:
        undo()
        raise
    fused = 0
    for parent in list(model.modules()):
        dense, act = getattr(parent, "dense", None), getattr(parent, "intermediate_act_fn", None)
        if isinstance(dense, PackedLinear) and act is not None and _exact_gelu(act):
            dense.fuse_gelu()
            parent.intermediate_act_fn = nn.Identity()
            swaps.append((parent, "intermediate_act_fn", act))
            fused += 1
    return Prepacked(len(swaps) - fused, fused, undo)
