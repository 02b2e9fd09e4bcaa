"""Tokenize stage: text pairs to token ids on CPU; unscorable rows get a reason code.

Pairs are encoded by the fast tokenizer's Rust backend itself (:class:`PairEncoder`), as the
tokenizer's ``__call__`` encodes them (the same truncation, special tokens and type ids), without
transformers' per-row conversion and without the character offsets it asks the backend for; a
job's tokenize tasks get the backend as JSON (:func:`encoder_spec`), so they never import
transformers. A model with a chat template, and model.long_text chunk's windows, go through the
transformers tokenizer.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crossenc.config import ConfigError, JobConfig, ModelConfig
from crossenc.models.describe import ModelInfo, render_chat
from crossenc.models.load import load_tokenizer

SOURCE = "_source"  # the input file a row came from
ROW = "_row"  # the row's position in that file
IDS = "_input_ids"
TYPE_IDS = "_token_type_ids"
ERROR = "_error"
TRUNCATED = "truncated"
WINDOWS = "windows"  # model.long_text chunk: windows scored for the row (an output column)
WINDOW_LENGTHS = "_window_lengths"  # chunk: each window's tokens, its ids in _input_ids in turn

# Reason codes of dead-lettered rows. A text column whose Parquet type is not a string makes
# the whole file bad (input.on_bad_file), since a column has one type per file.
NULL_TEXT = "null_text"
EMPTY_TEXT = "empty_text"


def row_errors(col: pa.ChunkedArray | pa.Array, name: str) -> list[str | None]:
    """Per row, why this text column cannot be scored (None where it can)."""
    if pa.types.is_null(col.type):  # a column with no value at all in this block
        return [f"{NULL_TEXT}:{name}"] * len(col)
    is_null = pc.is_null(col).to_numpy(zero_copy_only=False)
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), False)
    blank = blank.to_numpy(zero_copy_only=False)
    out: list[str | None] = [None] * len(col)
    for i in np.flatnonzero(is_null | blank):
        out[i] = f"{NULL_TEXT}:{name}" if is_null[i] else f"{EMPTY_TEXT}:{name}"
    return out


@dataclass
class Encoded:
    """Pairs' token ids as flat buffers: row ``i`` is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: np.ndarray  # int32
    offsets: np.ndarray  # int32, one more than the rows
    type_ids: np.ndarray | None  # int8, beside ids; None for a model without them
    truncated: np.ndarray  # bool per row

    def lists(self) -> tuple[list[list[int]], list[list[int]] | None]:
        """The ids (and type ids) as one list per row."""
        cuts = self.offsets[1:-1]
        ids = [row.tolist() for row in np.split(self.ids, cuts)]
        types = None
        if self.type_ids is not None:
            types = [row.tolist() for row in np.split(self.type_ids, cuts)]
        return ids, types


def cut_at_limit(
    lengths: Any, limit: int, full_lengths: Callable[[np.ndarray], Iterable[int]]
) -> np.ndarray:
    """Which rows ``limit`` cut. A row shorter than the limit was not; one at it may have been,
    so only those are encoded again untruncated: ``full_lengths(rows)`` gives their lengths."""
    lengths = np.asarray(lengths)
    truncated = np.zeros(len(lengths), dtype=bool)
    at_limit = np.flatnonzero(lengths >= limit)
    if len(at_limit):
        full = np.fromiter(full_lengths(at_limit), dtype=np.int64, count=len(at_limit))
        truncated[at_limit] = full > limit
    return truncated


class PairEncoder:
    """A fast tokenizer's Rust backend encoding text pairs as the tokenizer's ``__call__`` does
    with ``truncation``, ``max_length`` and no padding (see transformers' TokenizersBackend:
    the backend's truncation set the same way, its ``encode_special_tokens`` from the
    tokenizer's split_special_tokens, special tokens added), through ``encode_batch_fast``
    (no character offsets: nothing here reads them) and into flat buffers.

    Built from a loaded tokenizer (:meth:`of`: it shares that tokenizer's backend, as its own
    calls do) or from :func:`encoder_spec`'s JSON (:meth:`from_spec`, in a process that never
    imports transformers)."""

    def __init__(self, backend: Any, truncation_side: str, split_special_tokens: bool) -> None:
        self.backend = backend
        self.truncation_side = truncation_side
        self.split_special_tokens = split_special_tokens

    _from_spec: dict[str, PairEncoder] = {}

    @classmethod
    def of(cls, tokenizer: Any) -> PairEncoder | None:
        """The encoder of a loaded tokenizer (its own backend and current settings), or None
        where its ``__call__`` may do more than the backend's pair encoding (not a
        TokenizersBackend, or a class that overrides how it encodes): such a tokenizer is
        called as it is."""
        if not _encodes_as_backend(type(tokenizer)):
            return None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        split = bool(getattr(tokenizer, "split_special_tokens", False))
        return cls(backend, tokenizer.truncation_side, split)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> PairEncoder:
        """The encoder :func:`encoder_spec` describes, built once per process."""
        found = cls._from_spec.get(spec["key"])
        if found is None:
            from tokenizers import Tokenizer

            found = cls(
                Tokenizer.from_str(spec["backend"]),
                spec["truncation_side"],
                spec["split_special_tokens"],
            )
            cls._from_spec[spec["key"]] = found
        return found

    def _encode(self, texts_a: list[str], texts_b: list[str], truncation: Any) -> list[Any]:
        """The backend's encodings of the pairs; ``truncation``: (strategy, max_length) or
        None for none."""
        backend = self.backend
        if truncation is None:
            if backend.truncation is not None:
                backend.no_truncation()
        else:
            strategy, max_length = truncation
            target = {
                "max_length": max_length,
                "stride": 0,
                "strategy": strategy,
                "direction": self.truncation_side,
            }
            current = backend.truncation
            if current is None or {k: current.get(k) for k in target} != target:
                backend.enable_truncation(**target)
        if backend.padding is not None:
            backend.no_padding()
        if backend.encode_special_tokens != self.split_special_tokens:
            backend.encode_special_tokens = self.split_special_tokens
        return backend.encode_batch_fast(
            list(zip(texts_a, texts_b, strict=True)), add_special_tokens=True
        )

    def encode(
        self,
        texts_a: list[str],
        texts_b: list[str],
        max_length: int,
        truncation: str = "longest_first",
        type_ids: bool = True,
    ) -> Encoded:
        """The pairs cut to ``max_length`` by ``truncation``, flat, and which were cut."""
        encodings = self._encode(texts_a, texts_b, (truncation, max_length))
        n = len(encodings)
        lengths = np.fromiter(map(len, encodings), dtype=np.int32, count=n)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        chain = itertools.chain.from_iterable
        ids = np.fromiter(chain(e.ids for e in encodings), dtype=np.int32, count=total)
        types = None
        if type_ids:
            types = np.fromiter(chain(e.type_ids for e in encodings), dtype=np.int8, count=total)
        truncated = cut_at_limit(
            lengths,
            max_length,
            lambda rows: map(
                len, self._encode([texts_a[i] for i in rows], [texts_b[i] for i in rows], None)
            ),
        )
        return Encoded(ids, offsets, types, truncated)


@functools.lru_cache(maxsize=64)
def _encodes_as_backend(cls: type) -> bool:
    """True when a tokenizer class's ``__call__`` on pairs is its backend's ``encode_batch``
    with truncation set (transformers' TokenizersBackend, its encoding methods not
    overridden)."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return False
    return (
        issubclass(cls, TokenizersBackend)
        and cls.__call__ is PreTrainedTokenizerBase.__call__
        and cls._encode_plus is TokenizersBackend._encode_plus
        and cls.set_truncation_and_padding is TokenizersBackend.set_truncation_and_padding
        and cls._get_padding_truncation_strategies
        is PreTrainedTokenizerBase._get_padding_truncation_strategies
        and getattr(cls, "_switch_to_input_mode", None)
        is getattr(PreTrainedTokenizerBase, "_switch_to_input_mode", None)
    )


def encoder_spec(tokenizer: Any, info: ModelInfo) -> dict[str, Any] | None:
    """What a tokenize task needs to build the tokenizer's :class:`PairEncoder` without
    transformers (its backend as JSON, truncation side, split_special_tokens), or None where
    the pairs go through the tokenizer itself (a chat template, or a tokenizer that encodes
    differently)."""
    if info.chat_template or PairEncoder.of(tokenizer) is None:
        return None
    backend = tokenizer.backend_tokenizer.to_str()
    split = bool(getattr(tokenizer, "split_special_tokens", False))
    key = hashlib.sha256(f"{backend}\0{tokenizer.truncation_side}\0{split}".encode()).hexdigest()
    return {
        "key": key,
        "backend": backend,
        "truncation_side": tokenizer.truncation_side,
        "split_special_tokens": split,
    }


def _list_array(seqs: list[list[int]], dtype: Any) -> pa.Array:
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int32, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(seqs), dtype=dtype, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _suffix_tokens(tokenizer: Any, prompt: str | None) -> list[int]:
    """The chat template's fixed tail in tokens (e.g. the assistant prefill), which
    sentence-transformers writes back over a truncated row's last tokens: the longest common
    token suffix of two renders with different filler texts (its own derivation)."""
    renders = [
        tokenizer(render_chat(tokenizer, prompt, [(f, f)])[0], add_special_tokens=False)[
            "input_ids"
        ]
        for f in ("0", "1 2 3 4")
    ]
    count = 0
    for left, right in zip(reversed(renders[0]), reversed(renders[1]), strict=False):
        if left != right:
            break
        count += 1
    return renders[0][len(renders[0]) - count :] if 0 < count < min(map(len, renders)) else []


def _layout(tokenizer: Any, prompt: str | None) -> tuple[str, str, str] | None:
    """(before, between, after) when the chat template places both texts verbatim, so a pair
    renders as ``before + a + between + b + after`` without running the template per row;
    None when probes show it transforms them (then every pair is rendered)."""
    q, d = "\u241equery\u241e", "\u241edocument\u241e"
    (probe,) = render_chat(tokenizer, prompt, [(q, d)])
    if probe.count(q) != 1 or probe.count(d) != 1 or probe.index(q) > probe.index(d):
        return None
    before, rest = probe.split(q)
    between, after = rest.split(d)
    checks = [("  Q <b> & {{ x }}\n", " D\t{% y %} "), ("", "x")]
    rendered = render_chat(tokenizer, prompt, checks)
    expected = [before + a + between + b + after for a, b in checks]
    if rendered != expected:
        return None
    return before, between, after


_CHAT: dict[tuple[int, str, str | None], tuple[tuple[str, str, str] | None, list[int]]] = {}


def _encode_chat(
    tokenizer: Any, info: ModelInfo, texts_a: list[str], texts_b: list[str]
) -> tuple[list[list[int]], np.ndarray]:
    """Pairs through the model's chat template, tokenized and truncated as sentence-transformers
    6 does: the rendered text cut at max_length, then the template's tail restored."""
    key = (id(tokenizer), str(tokenizer.chat_template), info.prompt)
    if key not in _CHAT:
        _CHAT[key] = (_layout(tokenizer, info.prompt), _suffix_tokens(tokenizer, info.prompt))
    layout, suffix = _CHAT[key]
    if layout is not None:
        before, between, after = layout
        texts = [before + a + between + b + after for a, b in zip(texts_a, texts_b, strict=True)]
    else:
        texts = render_chat(tokenizer, info.prompt, list(zip(texts_a, texts_b, strict=True)))
    limit = info.max_length
    ids = tokenizer(
        texts,
        add_special_tokens=False,
        truncation=True,
        max_length=limit,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    truncated = cut_at_limit(
        [len(row) for row in ids],
        limit,
        lambda rows: map(
            len, tokenizer([texts[i] for i in rows], add_special_tokens=False)["input_ids"]
        ),
    )
    keep = min(len(suffix), limit)
    if keep:  # the rows cut lost the template's tail: written back over their last tokens
        for i in np.flatnonzero(truncated):
            ids[i][-keep:] = suffix[-keep:]
    return ids, truncated


def encode_pairs(
    tokenizer: Any,
    info: ModelInfo,
    texts_a: list[str],
    texts_b: list[str],
    truncation: str = "longest_first",
) -> tuple[list[list[int]], list[list[int]] | None, np.ndarray]:
    """Token ids (and type ids) of pairs as the tokenizer builds them, plus a truncated flag.

    As sentence-transformers 6 builds them: through the model's chat template where it has
    one, else the tokenizer's pair encoding, with the model's prompt before text_a.
    """
    if info.chat_template:
        ids, truncated = _encode_chat(tokenizer, info, texts_a, texts_b)
        return ids, None, truncated
    encoder = PairEncoder.of(tokenizer)
    if encoder is not None:
        encoded = encode_pairs_flat(encoder, info, texts_a, texts_b, truncation)
        ids, type_ids = encoded.lists()
        return ids, type_ids, encoded.truncated
    if info.prompt:
        texts_a = [info.prompt + text for text in texts_a]
    enc = tokenizer(
        texts_a,
        texts_b,
        truncation=truncation,
        max_length=info.max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=info.uses_token_type_ids,
        return_overflowing_tokens=False,
        return_length=False,
    )
    ids = enc["input_ids"]
    type_ids = enc["token_type_ids"] if info.uses_token_type_ids else None
    truncated = cut_at_limit(
        [len(row) for row in ids],
        info.max_length,
        lambda rows: map(
            len,
            tokenizer(
                [texts_a[i] for i in rows],
                [texts_b[i] for i in rows],
                truncation=False,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"],
        ),
    )
    return ids, type_ids, truncated


def encode_pairs_flat(
    encoder: PairEncoder,
    info: ModelInfo,
    texts_a: list[str],
    texts_b: list[str],
    truncation: str = "longest_first",
) -> Encoded:
    """:func:`encode_pairs` (a model without a chat template) as flat buffers."""
    if info.chat_template:
        raise ValueError("a chat template's pairs are rendered by the tokenizer: encode_pairs")
    if info.prompt:
        texts_a = [info.prompt + text for text in texts_a]
    return encoder.encode(texts_a, texts_b, info.max_length, truncation, info.uses_token_type_ids)


def window_size(tokenizer: Any, info: ModelInfo) -> int:
    """Tokens of a pair's window beside its special tokens: the limit less the pair's specials."""
    return info.max_length - int(tokenizer.num_special_tokens_to_add(pair=True))


def overlap_for(overlap: int | None, window: int) -> int:
    """model.chunk_overlap, or its default: 64 tokens, an eighth of the window for models whose
    window is under 512 tokens."""
    return overlap if overlap is not None else min(64, window // 8)


def min_room(window: int, overlap: int) -> int:
    """The fewest tokens of text_b a window must hold for a row to be windowed: twice the
    overlap and a quarter of the window, so each window advances by at least an eighth of it
    (a row of a long first text would otherwise cost a window per few tokens of its second)."""
    return max(2 * overlap, -(-window // 4), 1)


def check_chunking(cfg: ModelConfig, info: ModelInfo, tokenizer: Any) -> None:
    """Refuse model.long_text chunk where it cannot work: a chat template (it wraps the whole
    pair, so there is no second text to window), an overlap of half the window or more."""
    if info.chat_template:
        raise ConfigError(
            f"model.long_text chunk: model {cfg.name} has a chat template, which renders the "
            "whole pair as one text; there is no second text to split into windows (use "
            "model.long_text: truncate)"
        )
    window = window_size(tokenizer, info)
    if 2 * overlap_for(cfg.chunk_overlap, window) >= window:
        raise ConfigError(
            f"model.chunk_overlap {cfg.chunk_overlap} must be under half the window of model "
            f"{cfg.name}: max_length {info.max_length} less {info.max_length - window} special "
            f"tokens = {window} tokens (windows must advance)"
        )


def encode_windows(
    tokenizer: Any,
    info: ModelInfo,
    texts_a: list[str],
    texts_b: list[str],
    truncation: str = "longest_first",
    overlap: int | None = None,
) -> tuple[list[list[int]], list[list[int]] | None, np.ndarray, np.ndarray]:
    """model.long_text chunk: the windows of pairs, as :func:`encode_pairs` but a pair longer
    than the limit has text_b split into windows, consecutive ones sharing ``overlap`` tokens,
    each built by the tokenizer as a pair with the whole (prompted) text_a.

    Returns every row's windows in row order (ids, type ids), the truncated flag and the
    windows per row. A pair that fits is one window, as :func:`encode_pairs` encodes it. A row
    whose text_a leaves less than :func:`min_room` tokens for text_b is truncated as
    :func:`encode_pairs` truncates it (one window, truncated).
    """
    if info.chat_template:
        raise ConfigError("model.long_text chunk does not apply to a model with a chat template")
    ids, type_ids, truncated = encode_pairs(tokenizer, info, texts_a, texts_b, truncation)
    counts = np.ones(len(ids), dtype=np.int32)
    long_rows = np.flatnonzero(truncated)
    if not len(long_rows):
        return ids, type_ids, truncated, counts
    prompt = info.prompt or ""
    firsts = [prompt + texts_a[i] for i in long_rows]
    first_lengths = np.fromiter(
        (len(s) for s in tokenizer(firsts, add_special_tokens=False)["input_ids"]),
        dtype=np.int64,
        count=len(firsts),
    )
    window = window_size(tokenizer, info)
    overlap = overlap_for(overlap, window)
    # Rows whose text_a leaves too little room keep the truncated encoding (the tokenizer
    # would refuse the whole batch for a row whose window is no larger than the stride).
    fits = (window - first_lengths) >= min_room(window, overlap)
    rows = long_rows[fits]
    if not len(rows):
        return ids, type_ids, truncated, counts
    enc = tokenizer(
        [firsts[j] for j in np.flatnonzero(fits)],
        [texts_b[i] for i in rows],
        truncation="only_second",
        max_length=info.max_length,
        stride=overlap,
        return_overflowing_tokens=True,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=info.uses_token_type_ids,
        return_length=False,
    )
    owner = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
    windowed: list[list[int]] = [[] for _ in ids]  # window positions in enc, per row
    for w, j in enumerate(owner):
        windowed[int(rows[j])].append(w)
    out_ids: list[list[int]] = []
    out_types: list[list[int]] | None = [] if type_ids is not None else None
    for i in range(len(ids)):
        if windowed[i]:
            out_ids.extend(enc["input_ids"][w] for w in windowed[i])
            if out_types is not None:
                out_types.extend(enc["token_type_ids"][w] for w in windowed[i])
        else:
            out_ids.append(ids[i])
            if out_types is not None:
                out_types.append(type_ids[i])  # type: ignore[index]
    counts[rows] = [len(windowed[i]) for i in rows]
    truncated[rows] = False  # every token of both texts is in some window
    return out_ids, out_types, truncated, counts


def _pair_encoder(
    cfg: JobConfig, info: ModelInfo, spec: dict[str, Any] | None
) -> PairEncoder | None:
    """The encoder of the job's pairs: from the spec (no transformers in this process), else
    from the loaded tokenizer; None where the tokenizer itself encodes them."""
    if cfg.model.long_text == "chunk" or info.chat_template:
        return None
    if spec is not None:
        return PairEncoder.from_spec(spec)
    return PairEncoder.of(load_tokenizer(cfg.model, info.source))


def tokenize_batch(
    batch: pa.Table,
    cfg: JobConfig,
    info: ModelInfo,
    encoder: dict[str, Any] | None = None,
    skip: np.ndarray | None = None,
) -> pa.Table:
    """Add token ids, the truncated flag and a reason for unscorable rows; drop text columns.
    ``encoder``: :func:`encoder_spec` of the model's tokenizer (a job's tasks get it, so they
    need not import transformers), else the tokenizer is loaded here. Rows ``skip`` marks
    (output.incremental's reused ones) are checked but not encoded: no tokens, no windows."""
    a_name, b_name = cfg.input.text_a, cfg.input.text_b
    errors_a = row_errors(batch.column(a_name), a_name)
    errors_b = row_errors(batch.column(b_name), b_name)
    errors = [ea or eb for ea, eb in zip(errors_a, errors_b, strict=True)]
    good = [i for i, e in enumerate(errors) if e is None and (skip is None or not skip[i])]
    texts_a = batch.column(a_name).to_pylist()
    texts_b = batch.column(b_name).to_pylist()
    good_a, good_b = [texts_a[i] for i in good], [texts_b[i] for i in good]
    chunk = cfg.model.long_text == "chunk"
    counts = np.zeros(len(errors), dtype=np.int32)  # windows per row: none for a dead letter
    pair_encoder = _pair_encoder(cfg, info, encoder)
    type_values: np.ndarray | None = None
    if pair_encoder is not None:
        encoded = encode_pairs_flat(pair_encoder, info, good_a, good_b, cfg.model.truncation)
        values, offsets, type_values = encoded.ids, encoded.offsets, encoded.type_ids
        trunc_good, counts_good = encoded.truncated, np.ones(len(good), dtype=np.int32)
    else:
        tokenizer = load_tokenizer(cfg.model, info.source)
        if chunk:
            ids_good, types_good, trunc_good, counts_good = encode_windows(
                tokenizer, info, good_a, good_b, cfg.model.truncation, cfg.model.chunk_overlap
            )
        else:
            ids_good, types_good, trunc_good = encode_pairs(
                tokenizer, info, good_a, good_b, cfg.model.truncation
            )
            counts_good = np.ones(len(good), dtype=np.int32)
        windows = _list_array(ids_good, np.int32)
        values, offsets = windows.values.to_numpy(), windows.offsets.to_numpy()
        if types_good is not None:
            type_values = _list_array(types_good, np.int8).values.to_numpy()
    counts[good] = counts_good
    truncated = np.zeros(len(errors), dtype=bool)
    truncated[good] = trunc_good
    # Every window, in row order (a row holds its windows' ids one after the other): the
    # stages count rows, so a row stays one row however many windows it has.
    window_lengths = np.diff(offsets)
    window_offsets = np.zeros(len(errors) + 1, dtype=np.int32)
    np.cumsum(counts, out=window_offsets[1:])
    token_offsets = pa.array(offsets[window_offsets])

    def per_row(flat: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(token_offsets, pa.array(flat))

    out = batch.select(cfg.carried_columns())
    # where the job's rows came from, and the read task's retries, for the writer and summary
    for name in (SOURCE, ROW, "_store_retries"):
        if name in batch.column_names:
            out = out.append_column(name, batch.column(name))
    out = out.append_column(IDS, per_row(values))
    if info.uses_token_type_ids:
        if type_values is not None:
            types = per_row(type_values)
        else:  # a chat template's pairs: no type ids, an empty list per row
            types = _list_array([[] for _ in errors], np.int8)
        out = out.append_column(TYPE_IDS, types)
    out = out.append_column(TRUNCATED, pa.array(truncated))
    out = out.append_column(ERROR, pa.array(errors, type=pa.string()))
    if chunk:
        lengths = pa.array(window_lengths.astype(np.int32))
        out = out.append_column(
            WINDOW_LENGTHS, pa.ListArray.from_arrays(pa.array(window_offsets), lengths)
        )
        out = out.append_column(WINDOWS, pa.array(counts))
    assert out.num_rows == batch.num_rows, "tokenize stage must keep every row"
    return out
