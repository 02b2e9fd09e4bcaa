"""The last encoder layer for the first position only: the one the classification head reads.

A BERT-family cross-encoder (BERT, RoBERTa, XLM-R, ELECTRA, CamemBERT) classifies from the
last layer's first position alone: BERT's pooler and the others' classification heads take
``hidden_states[:, 0]``. Every other position of the last layer is computed and thrown away.
Here the last layer computes its query, attention output and feed-forward for that position
only; its keys and values still come from every position. The logits are the same up to
float32 rounding, and of an L-layer model's work, about 5/6 of one layer is left out: 1.14-1.18x
on MiniLM-L6 (2-core AMD EPYC, float32, pre-packed weights), ~8% on a 12-layer model.

The layer's own submodules (projections, output blocks, feed-forward) do the work, so
pre-packed weights, torch.compile and ONNX export all see the pruned layer. It is built on the
current transformers' layer layout: :func:`prune_last_layer` says whether it applied, and the
caller checks the pruned model's logits against the full model's before keeping it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# The sequence-classification models whose head reads position 0 of the last hidden state.
FIRST_TOKEN_HEADS = {
    "BertForSequenceClassification",
    "RobertaForSequenceClassification",
    "XLMRobertaForSequenceClassification",
    "ElectraForSequenceClassification",
    "CamembertForSequenceClassification",
}


class FirstTokenLayer(nn.Module):
    """A BERT-style encoder layer computed for position 0 only: keys and values from every
    position, the rest from the first. Returns hidden states of shape (rows, 1, hidden)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        attention = layer.attention.self
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        module = sys.modules[type(attention).__module__]
        eager: Callable[..., Any] = module.eager_attention_forward
        # Resolved once: the callers choose the attention implementation before they prune.
        self.attend: Callable[..., Any] = ALL_ATTENTION_FUNCTIONS.get_interface(
            attention.config._attn_implementation, eager
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *_: Any,
        **__: Any,
    ) -> torch.Tensor:
        block = self.layer.attention
        attention = block.self
        rows, size = hidden_states.shape[0], attention.attention_head_size
        first = hidden_states[:, :1]
        query = attention.query(first).view(rows, 1, -1, size).transpose(1, 2)
        key = attention.key(hidden_states).view(rows, -1, attention.num_attention_heads, size)
        value = attention.value(hidden_states).view(rows, -1, attention.num_attention_heads, size)
        mask = attention_mask
        if mask is not None and mask.dim() == 4:
            mask = mask[:, :, :1, :]  # the first query row (a broadcast row stays as it is)
        output, _ = self.attend(
            attention,
            query,
            key.transpose(1, 2),
            value.transpose(1, 2),
            mask,
            dropout=0.0,
            scaling=attention.scaling,
        )
        output = block.output(output.reshape(rows, 1, -1), first)
        return self.layer.feed_forward_chunk(output)


def _layers(model: nn.Module) -> nn.ModuleList | None:
    """The encoder layers of a supported model, or None."""
    if type(model).__name__ not in FIRST_TOKEN_HEADS:
        return None
    config = model.config
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return None
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return None
    last = layers[-1]
    attention = getattr(getattr(last, "attention", None), "self", None)
    needed = ("query", "key", "value", "attention_head_size", "num_attention_heads", "scaling")
    if attention is None or not all(hasattr(attention, name) for name in needed):
        return None
    if not hasattr(last, "feed_forward_chunk") or not hasattr(last.attention, "output"):
        return None
    return layers


def can_prune(model: nn.Module) -> bool:
    """Whether ``model`` is one :func:`prune_last_layer` applies to."""
    return _layers(model) is not None


@dataclass(frozen=True)
class Pruned:
    """What :func:`prune_last_layer` changed, and how to put it back."""

    undo: Callable[[], None]


def prune_last_layer(model: nn.Module) -> Pruned | None:
    """Swap the last encoder layer of ``model`` for a :class:`FirstTokenLayer`, in place.
    Returns how to put it back, or None where the architecture is not one whose head reads
    only the first position (or its layers are laid out otherwise)."""
    layers = _layers(model)
    if layers is None:
        return None
    original = layers[-1]
    try:
        layers[-1] = FirstTokenLayer(original)
    except AttributeError:  # a modelling module without eager_attention_forward
        return None

    def undo() -> None:
        layers[-1] = original

    return Pruned(undo)
