"""Tokenize stage: text pairs to token ids on CPU; unscorable rows get a reason code."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crossenc.config import JobConfig
from crossenc.model import ModelInfo, load_tokenizer, render_chat

SOURCE = "_source"  # the input file a row came from
ROW = "_row"  # the row's position in that file
IDS = "_input_ids"
TYPE_IDS = "_token_type_ids"
ERROR = "_error"
TRUNCATED = "truncated"

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
    truncated = np.zeros(len(ids), dtype=bool)
    at_limit = [i for i, row in enumerate(ids) if len(row) >= limit]
    if at_limit:
        full = tokenizer([texts[i] for i in at_limit], add_special_tokens=False)["input_ids"]
        truncated[at_limit] = [len(row) > limit for row in full]
        keep = min(len(suffix), limit)
        for i in at_limit:
            if keep:
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
    lengths = np.fromiter((len(s) for s in ids), dtype=np.int32, count=len(ids))
    # A pair at the limit may have been cut; confirm with an untruncated count of those only.
    truncated = np.zeros(len(ids), dtype=bool)
    at_limit = np.flatnonzero(lengths >= info.max_length)
    if len(at_limit):
        full = tokenizer(
            [texts_a[i] for i in at_limit],
            [texts_b[i] for i in at_limit],
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        truncated[at_limit] = [len(s) > info.max_length for s in full]
    return ids, type_ids, truncated


def tokenize_batch(batch: pa.Table, cfg: JobConfig, info: ModelInfo) -> pa.Table:
    """Add token ids, the truncated flag and a reason for unscorable rows; drop text columns."""
    a_name, b_name = cfg.input.text_a, cfg.input.text_b
    errors_a = row_errors(batch.column(a_name), a_name)
    errors_b = row_errors(batch.column(b_name), b_name)
    errors = [ea or eb for ea, eb in zip(errors_a, errors_b, strict=True)]
    good = [i for i, e in enumerate(errors) if e is None]
    texts_a = batch.column(a_name).to_pylist()
    texts_b = batch.column(b_name).to_pylist()
    tokenizer = load_tokenizer(cfg.model, info.source)
    ids_good, types_good, trunc_good = encode_pairs(
        tokenizer,
        info,
        [texts_a[i] for i in good],
        [texts_b[i] for i in good],
        cfg.model.truncation,
    )
    ids: list[list[int]] = [[] for _ in errors]
    types: list[list[int]] = [[] for _ in errors]
    truncated = np.zeros(len(errors), dtype=bool)
    for j, i in enumerate(good):
        ids[i] = ids_good[j]
        if types_good is not None:
            types[i] = types_good[j]
    truncated[good] = trunc_good
    out = batch.select(cfg.carried_columns())
    # where the job's rows came from, and the read task's retries, for the writer and summary
    for name in (SOURCE, ROW, "_store_retries"):
        if name in batch.column_names:
            out = out.append_column(name, batch.column(name))
    out = out.append_column(IDS, _list_array(ids, np.int32))
    if info.uses_token_type_ids:
        out = out.append_column(TYPE_IDS, _list_array(types, np.int8))
    out = out.append_column(TRUNCATED, pa.array(truncated))
    out = out.append_column(ERROR, pa.array(errors, type=pa.string()))
    assert out.num_rows == batch.num_rows, "tokenize stage must keep every row"
    return out
