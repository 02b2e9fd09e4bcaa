"""The torch backend: the transformers model on CPU or one GPU, one padded batch at a time."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from crossenc.config import ModelConfig, RuntimeConfig
from crossenc.engine import cpu_threads
from crossenc.model import load_model


def pick_device(gpus: float) -> torch.device:
    """CUDA when the replica was given a GPU and one is visible, else CPU."""
    if gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """float32 on CPU; with ``auto`` on GPU, bfloat16 where supported, else float16."""
    if requested != "auto":
        return getattr(torch, requested)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class TorchRunner:
    """The transformers model on CPU or one GPU.

    On GPU: bfloat16/float16 weights (model.dtype), SDPA attention, inputs copied from pinned
    host memory with non-blocking copies, optional torch.compile. On CPU: float32 unless the
    config says otherwise, intra-op threads set to the replica's CPUs.
    """

    def __init__(self, model_cfg: ModelConfig, source: str, runtime: RuntimeConfig) -> None:
        self.device = pick_device(runtime.gpus_per_replica)
        self.dtype = pick_dtype(model_cfg.dtype, self.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(runtime))
        model = load_model(model_cfg, source, dtype=self.dtype)
        self.attn_implementation = _use_sdpa(model)
        self.model = model.to(self.device)
        self.compiled = False
        if model_cfg.compile:
            # dynamic=True: one graph for every (rows, length) shape instead of one per shape.
            self.model = torch.compile(self.model, dynamic=True)
            self.compiled = True

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    @torch.inference_mode()
    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        tensors = {name: self._to_device(array) for name, array in inputs.items()}
        logits = self.model(**tensors).logits
        return logits.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        """What runs: for stats and logs."""
        return {
            "backend": "torch",
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "attention": self.attn_implementation,
            "compiled": self.compiled,
        }


def _use_sdpa(model: Any) -> str:
    """Switch the model to PyTorch SDPA attention where the architecture supports it."""
    current = str(getattr(model.config, "_attn_implementation", "eager"))
    if current != "sdpa" and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("sdpa")
        except (ValueError, ImportError):  # e.g. an architecture without SDPA support
            return current
    return str(getattr(model.config, "_attn_implementation", current))
