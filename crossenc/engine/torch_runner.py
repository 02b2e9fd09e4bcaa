"""The torch backend: the transformers model on CPU or one GPU, one padded batch at a time.

On CPU the engine's padded arrays reach the model without a copy (``torch.from_numpy``) and
its logits come back the same way. On a GPU the engine pads each batch straight into one of two
pinned host buffers the runner keeps (:class:`Staging`: reused across batches, grown when a
batch is larger), which reaches the device in one asynchronous copy (input ids, mask and type
ids packed one after the other, sliced on the device; left-padded rows' positions computed
there); the logits stay on the device until the engine fetches a whole block's at once
(:meth:`TorchRunner.fetch`, one copy back). Nothing waits on the GPU between batches, so the
host pads the next batch while the current one runs.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any

import numpy as np
import torch

from crossenc.config import ModelConfig, RuntimeConfig
from crossenc.engine.checked import Checked, keep_if_same
from crossenc.engine.first_token import can_prune, prune_last_layer
from crossenc.engine.prepack import can_prepack, prepack_linears
from crossenc.models.describe import ModelInfo
from crossenc.models.load import CAUSAL_LM, SEQUENCE_CLASSIFICATION, load_model

log = logging.getLogger(__name__)


def pick_device(gpus: float) -> torch.device:
    """CUDA when the replica was given a GPU and one is visible, else CPU."""
    if gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX, as on Sapphire
    Rapids and later Xeons): there, bfloat16 runs a cross-encoder 2.5-2.8x as fast as float32."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe and probe())
    except RuntimeError:  # pragma: no cover - a torch built without the probe's support
        return False


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """With ``auto``: on GPU bfloat16 where supported, else float16; on CPU bfloat16 where the
    CPU multiplies it in hardware (:func:`cpu_has_bf16_matmul`), else float32."""
    if requested != "auto":
        return getattr(torch, requested)
    if device.type != "cuda":
        return torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Staging:
    """Host buffers the engine pads batches into, reused across batches: ``slots`` of them in
    turn, each grown (doubled) when a batch is larger. Pinned (page-locked) for a GPU, whose
    copies from them run asynchronously: a slot is written again only once the copy last made
    from it has completed (a CUDA event recorded after it)."""

    def __init__(self, pin: bool, slots: int = 2) -> None:
        self.pin = pin
        self.tensors: list[torch.Tensor | None] = [None] * slots
        self.arrays: list[np.ndarray | None] = [None] * slots
        self.events: list[Any] = [None] * slots
        self.next = 0
        self.grown = 0  # buffers allocated: the first of each slot, and every growth
        self.current: tuple[int, tuple[int, int, int]] | None = None  # the last buffer given

    def take(self, planes: int, rows: int, width: int) -> np.ndarray:
        """The next slot's buffer as an int64 array of shape (planes, rows, width)."""
        size = planes * rows * width
        slot, self.next = self.next, (self.next + 1) % len(self.tensors)
        event, self.events[slot] = self.events[slot], None
        if event is not None:
            event.synchronize()  # the copy from this buffer (two batches ago) is done
        tensor = self.tensors[slot]
        if tensor is None or tensor.numel() < size:
            capacity = max(size, 2 * tensor.numel() if tensor is not None else 0)
            tensor = torch.empty(capacity, dtype=torch.int64, pin_memory=self.pin)
            self.tensors[slot], self.arrays[slot] = tensor, tensor.numpy()
            self.grown += 1
        self.current = (slot, (planes, rows, width))
        return self.arrays[slot][:size].reshape(planes, rows, width)  # type: ignore[index]

    def packed(self, arrays: list[np.ndarray]) -> tuple[int, torch.Tensor]:
        """(slot, the flat host tensor holding ``arrays`` one after the other): the buffer
        :meth:`take` gave last where they are its planes (the engine padded into it), else a
        copy of them into the next one."""
        rows, width = arrays[0].shape
        shape = (len(arrays), rows, width)
        if self.current is not None and self.current[1] == shape:
            slot = self.current[0]
            base = self.arrays[slot].__array_interface__["data"][0]  # type: ignore[union-attr]
            plane = rows * width * 8
            if all(
                a.dtype == np.int64
                and a.flags.c_contiguous
                and a.__array_interface__["data"][0] == base + i * plane
                for i, a in enumerate(arrays)
            ):
                self.current = None
                return slot, self.tensors[slot][: len(arrays) * rows * width]  # type: ignore[index]
        staged = self.take(*shape)
        for plane, array in zip(staged, arrays, strict=True):
            plane[...] = array
        slot = self.current[0]  # type: ignore[index]
        self.current = None
        return slot, self.tensors[slot][: staged.size]  # type: ignore[index]

    def copied(self, slot: int) -> None:
        """A copy from ``slot`` was queued: the slot waits for it before it is written again."""
        if self.pin:
            event = torch.cuda.Event()
            event.record()
            self.events[slot] = event


class TorchRunner:
    """The transformers model on CPU or one GPU.

    On GPU: bfloat16/float16 weights (model.dtype), SDPA attention, each batch padded by the
    engine into a reused pinned buffer (:meth:`staging`) and copied to the device in one
    non-blocking copy, its logits left there until :meth:`fetch` (once per block). On CPU:
    float32, or bfloat16 where the CPU has bf16 matrix units (model.dtype auto), intra-op
    threads set to the replica's CPUs, the padded arrays read in place, float32 linear layers
    on pre-packed oneDNN weights (model.prepack).
    On both, torch.compile with model.compile.
    ``uses_token_type_ids``: whether the engine's batches carry token_type_ids (the compile's
    warm-up batch must have the same inputs, or the first real batch compiles again).
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        source: str,
        runtime: RuntimeConfig,
        uses_token_type_ids: bool = True,
        info: ModelInfo | None = None,
    ) -> None:
        self.device = pick_device(runtime.gpus_per_replica)
        self.dtype = pick_dtype(model_cfg.dtype, self.device)
        if self.device.type == "cpu":
            torch.set_num_threads(runtime.cpu_threads())
        self.kind = info.kind if info is not None else SEQUENCE_CLASSIFICATION
        # GPU: pinned staging buffers, one copy per batch, logits fetched per block. Set on
        # CPU too by tests of that path (the buffers are then plain memory).
        self.staged = self.device.type == "cuda"
        self._staging = Staging(pin=self.device.type == "cuda")
        self.copies = 0  # host-to-device copies of staged batches
        self.compiled = self.prepacked = self.pruned = False
        self._load(model_cfg, source, info)
        if model_cfg.dtype == "auto" and self.dtype != torch.float32:
            self._check_half_precision(model_cfg, source, info, uses_token_type_ids)
        if model_cfg.prune_last_layer and self.kind == SEQUENCE_CLASSIFICATION:
            self._prune(model_cfg.name, uses_token_type_ids)
        if model_cfg.compile:
            self._compile(model_cfg.name, runtime, uses_token_type_ids)
        cpu_float32 = self.device.type == "cpu" and self.dtype == torch.float32
        if model_cfg.prepack and cpu_float32 and not self.compiled:  # a failed compile too
            self._prepack(model_cfg.name, uses_token_type_ids)

    def _load(self, model_cfg: ModelConfig, source: str, info: ModelInfo | None) -> None:
        model = load_model(model_cfg, source, dtype=self.dtype, kind=self.kind)
        self.attn_implementation = _use_sdpa(model)
        # Left-padded rows get positions counted from their first real token: each row scores
        # as it would alone, whatever the batch (transformers counts positions from the pads).
        self.positions = (
            info is not None
            and info.padding_side == "left"
            and "position_ids" in inspect.signature(model.forward).parameters
        )
        if self.kind == CAUSAL_LM:
            assert info is not None and info.score_tokens is not None
            model = LastTokenScore(model, info.score_tokens)
        self.model = model.to(self.device)

    def _check_half_precision(
        self, model_cfg: ModelConfig, source: str, info: ModelInfo | None, type_ids: bool
    ) -> None:
        """model.dtype auto picked a 16-bit type: score a sample batch in it, and load the
        model in float32 instead where that fails (transformers' DeBERTa mixes float32 into
        its bfloat16 attention on CPU) or gives non-finite logits."""
        try:
            finite = bool(np.isfinite(self._run(self._sample_batch(2, 16, type_ids))).all())
            why = "non-finite logits"
        except RuntimeError as err:
            finite, why = False, f"{type(err).__name__}: {err}"
        if finite:
            return
        log.warning(
            "%s does not run in %s here (%s): loading it in float32 (set model.dtype to choose)",
            model_cfg.name,
            str(self.dtype).replace("torch.", ""),
            why,
        )
        self.dtype = torch.float32
        self._load(model_cfg, source, info)

    def staging(self, planes: int, rows: int, width: int) -> np.ndarray:
        """Host memory for the engine to pad the next batch into, (planes, rows, width) int64:
        a reused pinned buffer on a GPU, a new array on CPU (the model reads it in place)."""
        if self.staged:
            return self._staging.take(planes, rows, width)
        return np.empty((planes, rows, width), dtype=np.int64)

    def _tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The batch as the model's tensors: on CPU the arrays themselves (no copy); staged,
        one copy of the packed planes to the device, sliced there."""
        if not self.staged:
            return {name: torch.from_numpy(array) for name, array in inputs.items()}
        names = list(inputs)
        slot, host = self._staging.packed([inputs[name] for name in names])
        device = host.to(self.device, non_blocking=True)
        self._staging.copied(slot)
        self.copies += 1
        planes = device.view(len(names), *inputs[names[0]].shape)
        return {name: planes[i] for i, name in enumerate(names)}

    def _run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The logits of one batch on the host (the warm-up and check batches)."""
        logits = self(inputs)
        return self.fetch([logits]) if isinstance(logits, torch.Tensor) else logits

    def _compile(self, name: str, runtime: RuntimeConfig, uses_token_type_ids: bool) -> None:
        """torch.compile the model and build its graph on a warm-up batch; eager if that fails.

        Inductor with dynamic shapes (one graph for every rows x length) and freezing: the
        weights become constants, so linear layers run on pre-packed weights with their bias and
        activation fused (on CPU: 1.2x plain eager, 1.02x the pre-packed eager model of
        model.prepack; without freezing it is slower than eager). Compiling here, not on the
        first real batch, counts its time in the replica's load time and turns a failure (no C++
        compiler, an unsupported model) into a warning. The warm-up batch has a typical shape:
        inductor tunes its kernels to the first one.
        """
        eager = self.model
        self.model, self.compiled = torch.compile(eager, dynamic=True), True
        length = min(128, getattr(eager.config, "max_position_embeddings", 130) - 2)
        tokens, max_rows = runtime.batch_budget(self.device.type == "cuda")
        rows = max(2, min(max_rows, tokens // length))
        try:
            self._run(self._sample_batch(rows, length, uses_token_type_ids))
        except Exception as err:  # noqa: BLE001 - any failure to compile means: run eagerly
            log.warning("torch.compile of %s failed, running it eagerly: %s", name, err)
            self.model, self.compiled = eager, False

    def _sample_batch(
        self, rows: int, length: int, uses_token_type_ids: bool
    ) -> dict[str, np.ndarray]:
        """Seeded token ids from the model's vocabulary; the last row half padding."""
        vocab = int(getattr(self.model.config, "vocab_size", 0) or 100)
        ids = np.random.default_rng(0).integers(0, vocab, size=(rows, length), dtype=np.int64)
        mask = np.ones((rows, length), dtype=np.int64)
        mask[-1, max(1, length // 2) :] = 0
        batch = {"input_ids": ids, "attention_mask": mask}
        if uses_token_type_ids:
            batch["token_type_ids"] = np.zeros((rows, length), dtype=np.int64)
        return batch

    def _checked(
        self, change: Any, what: str, name: str, uses_token_type_ids: bool, otherwise: str
    ) -> Checked:
        """Apply ``change`` and keep it only where the model then scores a sample batch as
        before (:func:`~crossenc.engine.checked.keep_if_same`); warn, naming the model and
        what runs ``otherwise``, where it was refused."""
        sample = self._sample_batch(4, 24, uses_token_type_ids)
        checked = keep_if_same(change, self.model, lambda: self._run(sample), self.dtype)
        if checked.why:
            log.warning("%s for %s refused (%s): %s", what, name, checked.why, otherwise)
        return checked

    def _prune(self, name: str, uses_token_type_ids: bool) -> None:
        """Compute the last layer for the position the head reads only
        (:mod:`crossenc.engine.first_token`), where the architecture allows and the logits
        stay the same."""
        if not can_prune(self.model):
            return
        checked = self._checked(
            prune_last_layer,
            "the first-token last layer",
            name,
            uses_token_type_ids,
            "its last layer runs in full",
        )
        if checked.kept:
            self.pruned = True
            log.info(
                "%s: last layer computed for the first position only (logits within %.1e)",
                name,
                checked.diff,
            )

    def _prepack(self, name: str, uses_token_type_ids: bool) -> None:
        """Run the linear layers on pre-packed oneDNN weights (:mod:`crossenc.engine.prepack`), if
        this PyTorch can and the packed model scores a sample batch as the plain one does."""
        if not can_prepack():
            log.info("this PyTorch has no oneDNN packed linear ops: %s runs plain", name)
            return
        checked = self._checked(
            prepack_linears, "pre-packed weights", name, uses_token_type_ids, "it runs plain"
        )
        if not checked.kept:
            return
        self.prepacked = True
        log.info(
            "%s: %d linear layers on pre-packed weights, %d GELUs fused (logits within %.1e)",
            name,
            checked.result.linears,
            checked.result.fused_gelus,
            checked.diff,
        )

    @torch.inference_mode()
    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray | torch.Tensor:
        """Logits of one padded batch, float32 (rows, outputs): a numpy array, or staged (on a
        GPU) a tensor left on the device for :meth:`fetch`."""
        rows = len(inputs["input_ids"])
        if self.compiled and rows == 1:
            # A 1-row batch would compile a second graph (size 1 is specialised): pad to 2.
            inputs = {name: np.repeat(array, 2, axis=0) for name, array in inputs.items()}
        tensors = self._tensors(inputs)
        if self.positions:  # counted from each row's first real token, on the batch's device
            tensors["position_ids"] = (tensors["attention_mask"].cumsum(1) - 1).clamp_min(0)
        with _frozen_weights() if self.compiled else contextlib.nullcontext():
            logits = self.model(**tensors).logits
        logits = logits[:rows].float()
        return logits if self.staged else logits.cpu().numpy()

    @torch.inference_mode()
    def fetch(self, outputs: list[Any]) -> np.ndarray:
        """The logits of several staged calls, in their order, (rows, outputs) float32: one
        copy back to the host (which waits for the batches to finish)."""
        return torch.cat([torch.as_tensor(out) for out in outputs]).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        """What runs: for stats and logs."""
        return {
            "backend": "torch",
            "kind": self.kind,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "attention": self.attn_implementation,
            "compiled": self.compiled,
            "prepacked": self.prepacked,
            "first_token": self.pruned,
        }


class LastTokenScore(torch.nn.Module):
    """A causal-LM reranker scored as sentence-transformers' LogitScore does: the last
    position's logit of the true token, minus the false token's where there is one. The LM
    head is computed for that position and those one or two vocabulary rows only, not the
    whole vocabulary at every position (rows x length x vocab); inputs are left-padded.
    Models whose head rescales logits (softcapping, a logit scale) run their own head on the
    last position instead."""

    def __init__(self, model: Any, tokens: tuple[int, int | None]) -> None:
        super().__init__()
        self.config = model.config
        self.ids = [tokens[0]] if tokens[1] is None else [tokens[0], tokens[1]]
        head = model.get_output_embeddings()
        rescales = any(
            getattr(model.config, key, None) not in (None, 1.0)
            for key in ("final_logit_softcapping", "logit_scale")
        )
        self.full: Any = None
        if rescales or not isinstance(head, torch.nn.Linear):
            self.full = model  # its forward with logits_to_keep=1
            return
        self.decoder = model.get_decoder()
        self.register_buffer("rows", head.weight[self.ids].detach().clone())
        bias = None if head.bias is None else head.bias[self.ids].detach().clone()
        self.register_buffer("bias", bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if position_ids is not None:
            inputs["position_ids"] = position_ids
        if self.full is not None:
            logits = self.full(**inputs, logits_to_keep=1).logits[:, -1, self.ids]
        else:
            hidden = self.decoder(**inputs)
            last = hidden.last_hidden_state[:, -1]
            logits = torch.nn.functional.linear(last, self.rows, self.bias)
        score = logits[:, :1] if len(self.ids) == 1 else logits[:, :1] - logits[:, 1:]
        return SequenceClassifierOutput(logits=score)


def _frozen_weights() -> contextlib.AbstractContextManager[Any]:
    """Inductor's freezing, for the calls of this model only (a graph compiles in its first call,
    and again on a recompile): not set process-wide, where it would also freeze the weights of
    other models that a LocalScorer's caller compiles (later changes to them then ignored).
    Passed as torch.compile(options=...), it did not reach the frozen-weight passes."""
    import torch._inductor.config

    return torch._inductor.config.patch(freezing=True)


def _use_sdpa(model: Any) -> str:
    """Switch the model to PyTorch SDPA attention where the architecture supports it (asked of
    one that does not, such as DeBERTa, transformers logs a warning a user cannot act on)."""
    current = str(getattr(model.config, "_attn_implementation", "eager"))
    supported = getattr(model, "_supports_sdpa", True)
    if current != "sdpa" and supported and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("sdpa")
        except (ValueError, ImportError):  # e.g. an architecture without SDPA support
            return current
    return str(getattr(model.config, "_attn_implementation", current))
