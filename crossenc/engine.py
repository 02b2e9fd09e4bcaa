"""The scoring engine: token ids in, activated scores out, in length-sorted token-budget batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from crossenc.config import ModelConfig, RuntimeConfig
from crossenc.model import ModelInfo, load_model


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


def activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """Apply the named activation to float32 logits of shape (rows, outputs)."""
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=-1)
    return logits


def plan_batches(lengths: np.ndarray, batch_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Group row indices, longest first, so that rows x longest length stays within the budget."""
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, min(max_rows, batch_tokens // longest))
        batches.append(order[start : start + rows])
        start += rows
    return batches


@dataclass
class EngineStats:
    """Counters for the run summary."""

    rows: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0
    forward_passes: int = 0
    oom_splits: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def padding_efficiency(self) -> float:
        """Real tokens over computed (padded) tokens."""
        return self.real_tokens / self.computed_tokens if self.computed_tokens else 1.0


class ScoringEngine:
    """One model replica: scores tokenized pairs in token-budget batches, in input order."""

    def __init__(
        self, model_cfg: ModelConfig, info: ModelInfo, runtime: RuntimeConfig, source: str
    ) -> None:
        self.info = info
        self.runtime = runtime
        self.device = pick_device(runtime.gpus_per_replica)
        self.dtype = pick_dtype(model_cfg.dtype, self.device)
        if self.device.type == "cpu":
            torch.set_num_threads(runtime.torch_threads or max(1, int(runtime.cpus_per_replica)))
        self.model = load_model(model_cfg, source, dtype=self.dtype).to(self.device)
        self.stats = EngineStats()

    def _pad(self, seqs: Sequence[np.ndarray], pad: int, width: int, dtype: type) -> torch.Tensor:
        out = np.full((len(seqs), width), pad, dtype=dtype)
        for row, seq in enumerate(seqs):
            out[row, : len(seq)] = seq
        tensor = torch.from_numpy(out)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    @torch.inference_mode()
    def _forward(self, ids: list[np.ndarray], type_ids: list[np.ndarray] | None) -> torch.Tensor:
        width = max(max(len(s) for s in ids), 1)
        inputs = {
            "input_ids": self._pad(ids, self.info.pad_token_id, width, np.int64),
            "attention_mask": self._pad(
                [np.ones(len(s), np.int64) for s in ids], 0, width, np.int64
            ),
        }
        if type_ids is not None:
            inputs["token_type_ids"] = self._pad(type_ids, 0, width, np.int64)
        try:
            logits = self.model(**inputs).logits
        except torch.cuda.OutOfMemoryError:
            if len(ids) == 1:
                raise
            # Out of memory on a batch: split it and retry each half, never fail the run.
            torch.cuda.empty_cache()
            self.stats.oom_splits += 1
            half = len(ids) // 2
            halves = [
                (ids[:half], type_ids[:half] if type_ids else None),
                (ids[half:], type_ids[half:] if type_ids else None),
            ]
            return torch.cat([self._forward(i, t) for i, t in halves])
        self.stats.forward_passes += 1
        self.stats.computed_tokens += width * len(ids)
        return logits.float()

    def score(
        self, ids: Sequence[np.ndarray], type_ids: Sequence[np.ndarray] | None = None
    ) -> np.ndarray:
        """Activated scores, shape (rows, outputs), float32, in the order the rows were given."""
        n = len(ids)
        out = np.empty((n, self.info.num_labels), dtype=np.float32)
        if n == 0:
            return out
        lengths = np.fromiter((len(s) for s in ids), dtype=np.int64, count=n)
        for batch in plan_batches(lengths, self.runtime.batch_tokens, self.runtime.max_batch_rows):
            logits = self._forward(
                [ids[i] for i in batch], [type_ids[i] for i in batch] if type_ids else None
            )
            out[batch] = activate(logits, self.info.activation).cpu().numpy()
        self.stats.rows += n
        self.stats.real_tokens += int(lengths.sum())
        return out


class LocalScorer:
    """In-process scoring of (text_a, text_b) pairs with the job's tokenizer and engine."""

    def __init__(self, model_cfg: ModelConfig, runtime: RuntimeConfig | None = None) -> None:
        from crossenc.model import describe_model, load_tokenizer

        self.model_cfg = model_cfg
        self.runtime = runtime or RuntimeConfig()
        self.info = describe_model(model_cfg, self.runtime.cache_dir)
        self.tokenizer = load_tokenizer(model_cfg, self.info.source)
        self.engine = ScoringEngine(model_cfg, self.info, self.runtime, self.info.source)

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores of shape (pairs,) for single-output models, (pairs, outputs) otherwise."""
        from crossenc.tokenize import encode_pairs

        ids, type_ids, _ = encode_pairs(
            self.tokenizer,
            self.info,
            [a for a, _ in pairs],
            [b for _, b in pairs],
            self.model_cfg.truncation,
        )
        arrays = [np.asarray(s, dtype=np.int64) for s in ids]
        types = [np.asarray(s, dtype=np.int64) for s in type_ids] if type_ids else None
        scores = self.engine.score(arrays, types)
        return scores[:, 0] if self.info.num_labels == 1 else scores
