"""The scoring engine: token ids in, activated scores out, in length-sorted token-budget batches.

One :class:`ScoringEngine` holds one model replica. It owns everything both backends share:
length-sorted batches within a token budget, padding to the longest row of each batch,
splitting a batch that runs out of memory, the activation, input-order results and the
counters. A *runner* does only the forward pass of one padded batch:
:class:`crossenc.engine.torch_runner.TorchRunner` (CPU or GPU) or
:class:`crossenc.engine.onnx_runner.OnnxRunner` (ONNX Runtime on CPU). This module does not import
torch: an ONNX replica never loads it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from crossenc.config import ConfigError, ModelConfig, RuntimeConfig
from crossenc.models.describe import ModelInfo
from crossenc.models.load import SEQUENCE_CLASSIFICATION

log = logging.getLogger(__name__)

# A runner maps padded int64 arrays (input_ids, attention_mask[, token_type_ids]) to logits,
# (rows, outputs), as anything numpy reads as float32 (an array, a CPU tensor). It may also have
# (see :class:`crossenc.engine.torch_runner.TorchRunner` on a GPU):
#   staging(planes, rows, width) -> an int64 array of that shape, host memory the engine pads
#     the next batch into (pinned and reused across batches on a GPU); the batch then reaches
#     the runner as that array's planes, in order: input_ids, attention_mask[, token_type_ids];
#   fetch(outputs) -> the logits of several of its calls at once, (rows, outputs) float32 in
#     their order: a call may then return something numpy cannot read (logits left on the
#     device), which the engine hands back to fetch once per block.
Runner = Callable[[dict[str, np.ndarray]], Any]


def oom_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "this batch did not fit": the engine halves the batch and retries."""
    torch = sys.modules.get("torch")  # loaded when a runner uses it; never imported here
    return (MemoryError, torch.OutOfMemoryError) if torch else (MemoryError,)


def _release_gpu_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Apply the named activation to float32 logits of shape (rows, outputs)."""
    if activation == "sigmoid":
        return np.exp(-np.logaddexp(np.float32(0), -logits))  # 1 / (1 + e^-x), no overflow
    if activation == "softmax":
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
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


def flatten(
    ids: Sequence[np.ndarray], type_ids: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows given one array each, as flat buffers: (values, offsets, type values), row ``i``
    being ``values[offsets[i]:offsets[i + 1]]`` (its type ids at the same positions). Token
    ids are held as int32 and type ids as int8, as the job's Arrow columns hold them (half and
    an eighth of the memory the padding reads)."""
    n = len(ids)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, ids), dtype=np.int64, count=n), out=offsets[1:])
    if n:
        values = np.concatenate(ids, dtype=np.int32, casting="unsafe")
    else:
        values = np.zeros(0, dtype=np.int32)
    types = None
    if type_ids is not None:
        if n:
            types = np.concatenate(type_ids, dtype=np.int8, casting="unsafe")
        else:
            types = np.zeros(0, dtype=np.int8)
        if len(types) != len(values):
            raise ValueError(f"{len(types)} type ids for {len(values)} token ids")
    return values, offsets, types


def pad_spans(
    values: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    type_values: np.ndarray | None,
    pad_token_id: int,
    left: bool = False,
    out: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Pad rows held in flat buffers to the longest of them, vectorised (no loop per row): row
    ``r`` is ``values[starts[r]:starts[r] + lengths[r]]`` (its type ids at the same positions
    of ``type_values``), padded on the right (or the left: decoder models read the last
    position). Returns int64 input_ids, attention_mask[, token_type_ids], of shape (rows, the
    longest length or 1): the planes of ``out``, an int64 array of shape (2 or 3, rows, width)
    where one is given (a runner's staging buffer), else of a new one."""
    rows = len(starts)
    width = max(int(lengths.max(initial=0)), 1)
    planes = 2 if type_values is None else 3
    if out is None:
        out = np.empty((planes, rows, width), dtype=np.int64)
    elif out.shape != (planes, rows, width) or out.dtype != np.int64:
        raise ValueError(f"a staging buffer of {out.shape} {out.dtype} for {planes, rows, width}")
    cols = np.arange(width, dtype=np.int64)
    starts, lengths = starts.astype(np.int64, copy=False), lengths.astype(np.int64, copy=False)
    mask = out[1]
    if left:
        skip = width - lengths  # pads before each row's first token
        index = (starts - skip)[:, None] + cols
        np.greater_equal(cols, skip[:, None], out=mask)
    else:
        index = starts[:, None] + cols
        np.less(cols, lengths[:, None], out=mask)
    # Positions past a row read a neighbour's tokens (or a clipped index), zeroed by the mask.
    if len(values) == 0:
        values = np.zeros(1, dtype=np.int64)
    gathered = values.take(index, mode="clip")
    if pad_token_id:
        np.subtract(gathered, pad_token_id, out=out[0], casting="unsafe")
        out[0] *= mask
        out[0] += pad_token_id
    else:
        np.multiply(gathered, mask, out=out[0], casting="unsafe")  # any int (or float) ids
    result = {"input_ids": out[0], "attention_mask": mask}
    if type_values is not None:
        if len(type_values) == 0:
            type_values = np.zeros(1, dtype=np.int64)
        np.multiply(type_values.take(index, mode="clip"), mask, out=out[2], casting="unsafe")
        result["token_type_ids"] = out[2]
    return result


def pad_batch(
    ids: Sequence[np.ndarray],
    type_ids: Sequence[np.ndarray] | None,
    pad_token_id: int,
    left: bool = False,
) -> dict[str, np.ndarray]:
    """Pad a batch to its longest row, on the right (or the left: decoder models read the last
    position): int64 input_ids, attention_mask[, token_type_ids]. :func:`pad_spans` on the
    rows made flat."""
    values, offsets, types = flatten(ids, type_ids)
    return pad_spans(values, offsets[:-1], np.diff(offsets), types, pad_token_id, left)


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


class ZeroRunner:
    """A runner whose forward pass costs nothing (zeros): what the data plane and the engine's
    own host work cost without a model (``CROSSENC_RUNNER=zeros``, for benchmarks only)."""

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.zeros((len(inputs["input_ids"]), self.num_labels), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """What runs: for stats and logs."""
        return {"backend": "zeros", "device": "cpu"}


RUNNER_ENV = "CROSSENC_RUNNER"  # "zeros": benchmarks swap the model for a ZeroRunner


def check_backend(model_cfg: ModelConfig, info: ModelInfo, runtime: RuntimeConfig) -> None:
    """Refuse what model.backend cannot run (the model's kind, model.compile, GPUs,
    model.quantize on torch), naming the key: in the driver, before any replica starts, and
    again where a runner is made."""
    if model_cfg.backend in ("onnx", "openvino"):
        backend = model_cfg.backend
        if info.kind != SEQUENCE_CLASSIFICATION:
            raise ConfigError(
                f"model.backend {backend} serves sequence classification, not {info.kind}"
            )
        if model_cfg.compile:
            raise ConfigError(f"model.compile needs model.backend torch ({backend} optimises)")
        if runtime.gpus_per_replica:
            raise ConfigError(
                f"model.backend {backend} runs on CPU: set runtime.gpus_per_replica 0"
            )
    elif model_cfg.quantize != "none":
        raise ConfigError(
            f"model.quantize {model_cfg.quantize} needs model.backend onnx or openvino"
        )


def make_runner(model_cfg: ModelConfig, info: ModelInfo, runtime: RuntimeConfig, source: str):
    """The runner model.backend names (imported here: an ONNX or OpenVINO replica whose export
    is cached never loads torch)."""
    if os.environ.get(RUNNER_ENV) == "zeros":
        log.warning("%s=zeros: scoring with a runner that returns zeros", RUNNER_ENV)
        return ZeroRunner(info.num_labels)
    check_backend(model_cfg, info, runtime)
    if model_cfg.backend == "onnx":
        from crossenc.engine.onnx_runner import OnnxRunner

        return OnnxRunner(model_cfg, info, runtime.cpu_threads(), runtime.cache_dir)
    if model_cfg.backend == "openvino":
        from crossenc.engine.openvino_runner import OpenVinoRunner

        return OpenVinoRunner(model_cfg, info, runtime.cpu_threads(), runtime.cache_dir)
    from crossenc.engine.torch_runner import TorchRunner

    return TorchRunner(model_cfg, source, runtime, info.uses_token_type_ids, info)


def runner_label(described: dict[str, Any]) -> str:
    """What a runner's describe() says, in words: "torch cpu float32 sdpa prepacked"."""
    keys = ("backend", "device", "dtype", "attention")
    words = [str(described[k]) for k in keys if k in described]
    return " ".join(words + [flag for flag in ("compiled", "prepacked") if described.get(flag)])


class ScoringEngine:
    """One model replica: scores tokenized pairs in token-budget batches, in input order."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        info: ModelInfo,
        runtime: RuntimeConfig,
        source: str,
        runner: Runner | None = None,
    ) -> None:
        self.info = info
        self.runner = runner or make_runner(model_cfg, info, runtime, source)
        self.stats = EngineStats()
        describe = getattr(self.runner, "describe", None)
        self.stats.extra.update(describe() if describe else {})
        on_gpu = str(self.stats.extra.get("device", "cpu")).startswith("cuda")
        self.batch_tokens, self.max_batch_rows = runtime.batch_budget(on_gpu)
        self.max_tokens = self.batch_tokens  # lowered when a batch runs out of memory
        self.unfit: list[int] = []  # rows of the last score() that did not fit even alone
        self.runs = runner_label(self.stats.extra)

    def score(
        self, ids: Sequence[np.ndarray], type_ids: Sequence[np.ndarray] | None = None
    ) -> np.ndarray:
        """Activated scores, shape (rows, outputs), float32, in the order the rows were given
        (one array of token ids per row, and of type ids where the model takes them): the rows
        made flat (:func:`flatten`), then :meth:`score_flat`.

        A row that runs out of memory even alone scores NaN; ``self.unfit`` lists such rows.
        """
        values, offsets, types = flatten(ids, type_ids)
        return self.score_flat(values, offsets, types)

    def score_flat(
        self,
        values: np.ndarray,
        offsets: np.ndarray,
        type_values: np.ndarray | None = None,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """:meth:`score` of rows held in flat buffers, as Arrow holds a list column (zero-copy
        from its buffers): row ``i`` is ``values[offsets[i]:offsets[i + 1]]``, its type ids at
        the same positions of ``type_values``. ``rows``: the rows to score (default all), in
        the order of the result."""
        offsets = np.asarray(offsets)
        starts, lengths = offsets[:-1], np.diff(offsets)
        if rows is not None:
            starts, lengths = starts[rows], lengths[rows]
        return self.score_spans(values, starts, lengths, type_values)

    def score_spans(
        self,
        values: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        type_values: np.ndarray | None = None,
    ) -> np.ndarray:
        """Activated scores of the rows ``values[starts[r]:starts[r] + lengths[r]]`` (type ids
        at the same positions of ``type_values``), shape (rows, outputs), float32, in the order
        given: every other way in. Rows are batched longest first within the token budget,
        each batch padded by :func:`pad_spans` (into the runner's staging buffer where it has
        one); the results of the block are gathered and put in order once, at the end.

        A row that runs out of memory even alone scores NaN; ``self.unfit`` lists such rows.
        """
        starts = np.asarray(starts, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        n = len(lengths)
        out = np.empty((n, self.info.num_labels), dtype=np.float32)
        self.unfit = []
        if n == 0:
            return out
        block = _Block(values, starts, lengths, type_values)
        for batch in plan_batches(lengths, self.batch_tokens, self.max_batch_rows):
            self._forward(block, batch)
        rows, logits = block.results(getattr(self.runner, "fetch", None))
        with np.errstate(invalid="ignore"):  # NaN: rows that did not fit even alone
            out[rows] = activate(logits, self.info.activation)
        self.stats.rows += n
        self.stats.real_tokens += int(lengths.sum())
        return out

    def _forward(self, block: _Block, rows: np.ndarray) -> None:
        """Run one batch: ``rows`` (positions in the block); its logits kept in the block."""
        lengths = block.lengths[rows]
        longest = int(lengths.max())
        if len(rows) > 1 and len(rows) * longest > self.max_tokens:
            return self._halves(block, rows)  # as large as a batch that ran out of memory
        staging = getattr(self.runner, "staging", None)
        planes = 2 if block.type_values is None else 3
        buffer = staging(planes, len(rows), max(longest, 1)) if staging else None
        inputs = pad_spans(
            block.values,
            block.starts[rows],
            lengths,
            block.type_values,
            self.info.pad_token_id,
            self.info.padding_side == "left",
            buffer,
        )
        try:
            logits = self.runner(inputs)
        except oom_errors():
            logits = None  # handled below: inside this block the error's traceback still holds
            # the failed pass's tensors, so the cache could not release them
        if logits is None:
            _release_gpu_cache()
            if len(rows) == 1:
                # A row that does not fit even alone: left unscored (NaN; a job dead-letters it
                # with its reason), not a failed run.
                self.unfit.append(int(rows[0]))
                log.warning("out of memory on one row of %d tokens alone: left unscored", longest)
                block.add(rows, np.full((1, self.info.num_labels), np.nan, dtype=np.float32))
                return None
            # Out of memory on a batch: split it and retry each half, never fail the run; and
            # split every later batch as large before trying it, not after another failure.
            self.stats.oom_splits += 1
            self.max_tokens = (len(rows) + 1) // 2 * longest
            log.warning(
                "out of memory on a batch of %d rows x %d tokens: retrying it as two halves; "
                "batches above %d tokens are split from now on",
                len(rows),
                longest,
                self.max_tokens,
            )
            return self._halves(block, rows)
        self.stats.forward_passes += 1
        self.stats.computed_tokens += int(inputs["input_ids"].size)
        block.add(rows, logits, deferred=hasattr(self.runner, "fetch"))
        return None

    def _halves(self, block: _Block, rows: np.ndarray) -> None:
        h = len(rows) // 2
        self._forward(block, rows[:h])
        self._forward(block, rows[h:])

    def score_windows(
        self,
        ids: Sequence[np.ndarray],
        type_ids: Sequence[np.ndarray] | None,
        counts: Sequence[int] | np.ndarray,
    ) -> np.ndarray:
        """MaxP scores of rows made of windows: ``ids`` holds every row's windows in turn,
        ``counts`` how many each row has. Every window is scored as a row of :meth:`score` (in
        the same token-budget batches); a row keeps its best window's score, shape (rows,
        outputs). A row one of whose windows ran out of memory even alone scores NaN;
        ``self.unfit`` lists such rows (row positions, not windows)."""
        counts = np.asarray(counts, dtype=np.int64)
        if int(counts.sum()) != len(ids):
            raise ValueError(f"{len(ids)} windows, but the counts add up to {int(counts.sum())}")
        return self._best_windows(self.score(ids, type_ids), counts)

    def score_windows_flat(
        self,
        values: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        counts: np.ndarray,
        type_values: np.ndarray | None = None,
    ) -> np.ndarray:
        """:meth:`score_windows` of windows held in flat buffers: window ``w`` is
        ``values[starts[w]:starts[w] + lengths[w]]``, every row's windows in turn, ``counts``
        of them per row."""
        counts = np.asarray(counts, dtype=np.int64)
        if int(counts.sum()) != len(lengths):
            raise ValueError(
                f"{len(lengths)} windows, but the counts add up to {int(counts.sum())}"
            )
        return self._best_windows(self.score_spans(values, starts, lengths, type_values), counts)

    def _best_windows(self, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Each row's best window score (NaN stays NaN); ``self.unfit`` turned into rows."""
        out = np.full((len(counts), self.info.num_labels), np.nan, dtype=np.float32)
        starts = np.cumsum(counts) - counts
        has = counts > 0
        if has.any():
            out[has] = np.maximum.reduceat(scores, starts[has], axis=0)  # NaN stays NaN
        owner = np.repeat(np.arange(len(counts)), counts)
        self.unfit = sorted({int(owner[w]) for w in self.unfit})
        out[self.unfit] = np.nan
        return out


class _Block:
    """The rows of one scoring call, and the logits of its batches as they run: the runner's
    own outputs where it can fetch them later (logits left on a GPU), fetched at once."""

    def __init__(
        self,
        values: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        type_values: np.ndarray | None,
    ) -> None:
        self.values, self.starts, self.lengths = values, starts, lengths
        self.type_values = type_values
        self.rows: list[np.ndarray] = []
        self.logits: list[Any] = []
        self.deferred: list[bool] = []

    def add(self, rows: np.ndarray, logits: Any, deferred: bool = False) -> None:
        deferred = deferred and not isinstance(logits, np.ndarray)
        self.rows.append(rows)
        self.logits.append(logits if deferred else np.asarray(logits, dtype=np.float32))
        self.deferred.append(deferred)

    def results(self, fetch: Callable[[list[Any]], Any] | None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, logits) of every batch, in the order they ran: one fetch for the deferred."""
        pieces = list(self.logits)
        later = [i for i, deferred in enumerate(self.deferred) if deferred]
        if later:
            assert fetch is not None
            fetched = np.asarray(fetch([pieces[i] for i in later]), dtype=np.float32)
            at = 0
            for i in later:
                size = len(self.rows[i])
                pieces[i], at = fetched[at : at + size], at + size
        return np.concatenate(self.rows), np.concatenate(pieces)


class LocalScorer:
    """In-process scoring of (text_a, text_b) pairs with the job's tokenizer and engine.

    ``calibration``: the pairs an OpenVINO int8 model (model.backend openvino, model.quantize
    int8) calibrates on; without them, its first :meth:`predict` calibrates on a seeded sample
    of model.calibration_sample of the pairs it is given, and the engine starts then.
    ``info``: the model as a job's driver described it (with its export digest), so that the
    driver's own scorers (the quality gate, the reuse check) neither describe nor hash it again.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        runtime: RuntimeConfig | None = None,
        calibration: Sequence[tuple[str, str]] | None = None,
        info: ModelInfo | None = None,
    ) -> None:
        from crossenc.models.describe import describe_model
        from crossenc.models.load import load_tokenizer

        self.model_cfg = model_cfg
        self.runtime = runtime or RuntimeConfig()
        self.info = info or describe_model(model_cfg, self.runtime.cache_dir)
        if calibration is not None:
            self.info = replace(self.info, calibration=tuple(map(tuple, calibration)))
        self.tokenizer = load_tokenizer(model_cfg, self.info.source)
        self.chunk = model_cfg.long_text == "chunk"
        if self.chunk:
            from crossenc.models.tokenize import check_chunking

            if self.info.num_labels != 1:
                raise ConfigError(
                    f"model.long_text chunk keeps each pair's best window score, which needs a "
                    f"single-output model; {model_cfg.name} has {self.info.num_labels} outputs"
                )
            check_chunking(model_cfg, self.info, self.tokenizer)
        self._engine: ScoringEngine | None = None
        if not self.awaits_calibration:
            self._engine = ScoringEngine(model_cfg, self.info, self.runtime, self.info.source)

    @property
    def awaits_calibration(self) -> bool:
        """Whether the engine starts at the first :meth:`predict`, calibrated on its pairs."""
        cfg = self.model_cfg
        quantized = cfg.backend == "openvino" and cfg.quantize != "none"
        return quantized and not self.info.calibration and self._engine is None

    @property
    def engine(self) -> ScoringEngine:
        """The scoring engine (an uncalibrated OpenVINO int8 model has none before predict)."""
        if self._engine is None:
            raise ConfigError(
                "model.backend openvino with model.quantize int8 calibrates on pairs: call "
                "predict() first, or give LocalScorer calibration pairs"
            )
        return self._engine

    def _calibrate(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Start the engine calibrated on a seeded sample of ``pairs``."""
        size = min(self.model_cfg.calibration_sample, len(pairs))
        picks = np.sort(np.random.default_rng(0).choice(len(pairs), size, replace=False))
        chosen = tuple((str(pairs[i][0]), str(pairs[i][1])) for i in picks)
        self.info = replace(self.info, calibration=chosen)
        log.info("calibrating the int8 model on %d of the %d pairs given", size, len(pairs))
        self._engine = ScoringEngine(self.model_cfg, self.info, self.runtime, self.info.source)

    def encode(self, pairs: Sequence[tuple[str, str]]) -> Any:
        """Token ids, and type ids where the model takes them, one array per pair: what a job's
        tokenizer stage hands its scorers. With model.long_text chunk, one array per window
        and a third item, the windows of each pair (they follow one another)."""
        from crossenc.models.tokenize import encode_pairs, encode_windows

        texts_a, texts_b = [a for a, _ in pairs], [b for _, b in pairs]
        if self.chunk:
            ids, type_ids, _, counts = encode_windows(
                self.tokenizer,
                self.info,
                texts_a,
                texts_b,
                self.model_cfg.truncation,
                self.model_cfg.chunk_overlap,
            )
        else:
            ids, type_ids, _ = encode_pairs(
                self.tokenizer, self.info, texts_a, texts_b, self.model_cfg.truncation
            )
        arrays = [np.asarray(s, dtype=np.int64) for s in ids]
        types = [np.asarray(s, dtype=np.int64) for s in type_ids] if type_ids else None
        return (arrays, types, counts) if self.chunk else (arrays, types)

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores of shape (pairs,) for single-output models, (pairs, outputs) otherwise; NaN
        for a pair that runs out of memory even alone (``engine.unfit`` lists them). With
        model.long_text chunk, each pair's best window score (MaxP)."""
        from crossenc.models.tokenize import PairEncoder, encode_pairs_flat

        if self.awaits_calibration:
            self._calibrate(pairs)
        encoder = None
        if not self.chunk and not self.info.chat_template:
            encoder = PairEncoder.of(self.tokenizer)
        if encoder is not None:  # the fast tokenizer's flat buffers, straight to the engine
            texts_a, texts_b = [a for a, _ in pairs], [b for _, b in pairs]
            flat = encode_pairs_flat(
                encoder, self.info, texts_a, texts_b, self.model_cfg.truncation
            )
            scores = self.engine.score_flat(flat.ids, flat.offsets, flat.type_ids)
        elif self.chunk:
            scores = self.engine.score_windows(*self.encode(pairs))
        else:
            scores = self.engine.score(*self.encode(pairs))
        return scores[:, 0] if self.info.num_labels == 1 else scores
