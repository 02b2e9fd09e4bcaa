"""Several models in one pass (``models:``): which model reads which tokenizer's ids, and how
each model's columns are named.

Models whose pairs encode to the same token ids (the same tokenizer backend, truncation, limit,
prompt and type ids) form one *tokenizer group*: the read task tokenizes each pair once per
group (:func:`tokenize_models`), and every model of the group reads that group's ids. A lone
``model`` is a set of one, named "", whose columns keep their plain names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from crossenc.config import JobConfig
from crossenc.models.describe import ModelInfo
from crossenc.models.load import load_tokenizer
from crossenc.models.tokenize import (
    ERROR,
    IDS,
    TRUNCATED,
    TYPE_IDS,
    encoder_spec,
    tokenize_batch,
)

GROUP_COLUMNS = (IDS, TYPE_IDS)  # what a tokenizer group adds beyond the first group's columns


def group_column(column: str, group: int) -> str:
    """``column`` (the token ids or type ids) of tokenizer group ``group``: the plain name for
    the first group, ``<column>@<group>`` for the others."""
    return column if group == 0 else f"{column}@{group}"


def named(column: str, name: str) -> str:
    """A model's output column: ``score`` → ``score_<name>``, ``score_<label>`` →
    ``score_<name>_<label>``, ``label`` → ``label_<name>``; unchanged for a lone model."""
    if not name:
        return column
    head, _, rest = column.partition("_")
    return f"{head}_{name}" + (f"_{rest}" if rest else "")


@dataclass(frozen=True)
class Member:
    """One model of the run."""

    name: str  # its short name; "" for a lone model
    cfg: JobConfig  # the job's config as this model sees it (``model`` is this model)
    info: ModelInfo
    group: int  # the tokenizer group whose ids it reads


@dataclass(frozen=True)
class ModelSet:
    """Every model of the run, and per tokenizer group the encoder spec its read tasks use
    (:func:`crossenc.models.tokenize.encoder_spec`; None: the group's first model's tokenizer
    is loaded where it tokenizes)."""

    members: tuple[Member, ...]
    encoders: tuple[dict[str, Any] | None, ...]

    @property
    def primary(self) -> Member:
        """The first model: the lone one, or the baseline of a comparison."""
        return self.members[0]

    def group_leaders(self) -> list[Member]:
        """The first member of each tokenizer group, in group order."""
        return [next(m for m in self.members if m.group == g) for g in range(len(self.encoders))]

    def infos(self) -> dict[str, ModelInfo]:
        """Each member's info by short name."""
        return {m.name: m.info for m in self.members}


def _needs_tokenizer(view: JobConfig, info: ModelInfo) -> bool:
    return view.model.long_text == "chunk" or info.chat_template


def token_key(view: JobConfig, info: ModelInfo, spec: dict[str, Any] | None) -> str:
    """What decides a model's token ids: two models with the same key read the same ids."""
    if spec is None or _needs_tokenizer(view, info):  # the tokenizer itself: its own model's
        tokenizer = {"model": view.model.model_dump(mode="json", exclude={"storage"})}
    else:
        tokenizer = {"backend": spec["key"]}
    return hashlib.sha256(
        json.dumps(
            {
                **tokenizer,
                "truncation": view.model.truncation,
                "max_length": info.max_length,
                "prompt": info.prompt,
                "type_ids": info.uses_token_type_ids,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()


def model_set(
    cfg: JobConfig, infos: dict[str, ModelInfo], specs: dict[str, dict[str, Any] | None]
) -> ModelSet:
    """The run's models (``infos`` and ``specs``: each model's info and encoder spec, by short
    name), grouped by the token ids they read."""
    keys: list[str] = []
    members, encoders = [], []
    for name, view in cfg.model_views():
        info, spec = infos[name], specs[name]
        key = token_key(view, info, spec)
        if key not in keys:
            keys.append(key)
            encoders.append(spec)
        members.append(Member(name, view, info, keys.index(key)))
    return ModelSet(tuple(members), tuple(encoders))


def lone(cfg: JobConfig, info: ModelInfo, encoder: dict[str, Any] | None = None) -> ModelSet:
    """The set of a lone model (``encoder``: its spec, where the caller drew it)."""
    return ModelSet((Member("", cfg, info, 0),), (encoder,))


def tokenizer_spec(view: JobConfig, info: ModelInfo) -> dict[str, Any] | None:
    """The tokenizer's backend for the tokenize tasks to encode with (they never import
    transformers; see :func:`crossenc.models.tokenize.encoder_spec`), or None where they load the
    tokenizer themselves (a chat template, model.long_text chunk)."""
    if view.model.long_text == "chunk":
        return None
    return encoder_spec(load_tokenizer(view.model, info.source), info)


def build_model_set(cfg: JobConfig, infos: dict[str, ModelInfo]) -> ModelSet:
    """:func:`model_set` with each model's encoder spec drawn here, in the driver (one load
    of each tokenizer); ``infos`` by short name (a lone model's under "")."""
    specs = {name: tokenizer_spec(view, infos[name]) for name, view in cfg.model_views()}
    return model_set(cfg, infos, specs)


def tokenize_models(batch: pa.Table, models: ModelSet, skip: np.ndarray | None = None) -> pa.Table:
    """The read slice tokenized once per tokenizer group
    (:func:`crossenc.models.tokenize.tokenize_batch` each): the first group's columns as a lone
    model has them, then each other group's token (and type) ids; ``truncated`` is true where
    any group cut a text. (The reasons a row cannot be scored, its texts', are every group's.)"""
    leaders = models.group_leaders()
    first = leaders[0]
    out = tokenize_batch(batch, first.cfg, first.info, models.encoders[0], skip=skip)
    truncated = out.column(TRUNCATED).to_numpy()
    for group, leader in enumerate(leaders[1:], start=1):
        more = tokenize_batch(batch, leader.cfg, leader.info, models.encoders[group], skip=skip)
        truncated = truncated | more.column(TRUNCATED).to_numpy()
        for column in GROUP_COLUMNS:
            if column in more.column_names:
                out = out.append_column(group_column(column, group), more.column(column))
    if len(leaders) > 1:
        at = out.schema.get_field_index(TRUNCATED)
        out = out.set_column(at, TRUNCATED, pa.array(truncated))
    assert ERROR in out.column_names
    return out
