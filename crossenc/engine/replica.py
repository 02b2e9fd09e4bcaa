"""The scorer replica: a Ray Data actor holding one copy of the model, scoring tokenized blocks."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from crossenc.config import JobConfig
from crossenc.engine.scoring import ScoringEngine
from crossenc.inputs.reuse import REUSE_SCORES, reused_scores
from crossenc.metrics import metric_columns
from crossenc.models.describe import ModelInfo
from crossenc.models.load import load_tokenizer, model_source
from crossenc.models.tokenize import (
    ERROR,
    IDS,
    TYPE_IDS,
    WINDOW_LENGTHS,
    WINDOWS,
    encoder_spec,
)
from crossenc.tasks import task_for


def _flat(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column's own buffers, without a copy where it is one chunk (as a block is):
    (values, offsets), row ``i`` being ``values[offsets[i]:offsets[i + 1]]``, offsets from 0."""
    if isinstance(col, pa.ChunkedArray):
        col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy()[offsets[0] : offsets[-1]]  # a slice's rows only
    return values, (offsets - offsets[0]).astype(np.int64, copy=False)


class ScorerReplica:
    """A Ray actor holding one model replica; scores tokenized blocks.

    A block's token ids reach the engine as the Arrow column's own flat buffers (no array per
    row): :meth:`crossenc.engine.scoring.ScoringEngine.score_flat`, or ``score_windows_flat`` for
    model.long_text chunk's rows of windows."""

    def __init__(
        self, cfg: JobConfig, info: ModelInfo, load: bool = True, counter: Any = None
    ) -> None:
        """``load`` false: the model is loaded when a row to score first arrives (a night whose
        every row output.incremental matched loads none). ``counter``: an actor told the rows
        of every block scored (:class:`crossenc.job.progress.ScoredRows`), for runs whose rows
        reach the driver only after a shuffle."""
        self.cfg, self.info, self.task = cfg, info, task_for(cfg)
        self.counter = counter
        self.replica = f"{ray.util.get_node_ip_address()}:{os.getpid()}"
        self.engine: ScoringEngine | None = None
        self.load_seconds = 0.0  # reported with the first rows scored
        if load:
            self._load()

    def _load(self) -> ScoringEngine:
        started = time.perf_counter()
        source = model_source(self.cfg.model, self.cfg.runtime.cache_dir)  # s3: to this node
        self.engine = ScoringEngine(self.cfg.model, self.info, self.cfg.runtime, source)
        self.load_seconds = time.perf_counter() - started
        return self.engine

    @staticmethod
    def _flat_types(batch: pa.Table, offsets: np.ndarray) -> np.ndarray | None:
        """The type ids column's values, at the positions of the token ids they go with; None
        without one, or where every row's list is empty (a chat template's pairs)."""
        if TYPE_IDS not in batch.column_names:
            return None
        values, type_offsets = _flat(batch.column(TYPE_IDS))
        if np.array_equal(type_offsets, offsets):
            return values
        if type_offsets[-1] == 0:
            return None
        raise ValueError(f"{TYPE_IDS} and {IDS} hold rows of different lengths")

    @staticmethod
    def _window_spans(
        batch: pa.Table, offsets: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """model.long_text chunk: (starts, lengths) of the windows of the ``valid`` rows in the
        flat token ids (a row holds its windows one after the other), their counts per valid
        row, and each row's longest window (every row)."""
        lengths, window_offsets = _flat(batch.column(WINDOW_LENGTHS))
        lengths = lengths.astype(np.int64)
        counts = np.diff(window_offsets)
        ends = np.cumsum(lengths)
        has = counts > 0
        if (ends[window_offsets[1:][has] - 1] != offsets[1:][has]).any() or (
            np.diff(offsets)[~has] != 0
        ).any():
            raise ValueError(f"{WINDOW_LENGTHS} does not add up to each row's {IDS}")
        keep = np.repeat(valid, counts)  # the windows of the rows to score
        longest = np.zeros(len(counts), dtype=np.int64)
        if has.any():
            longest[has] = np.maximum.reduceat(lengths, window_offsets[:-1][has])
        return (ends - lengths)[keep], lengths[keep], counts[valid], longest

    def __call__(self, batch: pa.Table) -> pa.Table:
        valid = pc.is_null(batch.column(ERROR)).to_numpy(zero_copy_only=False)
        reused, copied = reused_scores(batch)  # output.incremental: scored by an earlier run
        reused &= valid
        todo = valid & ~reused
        idx = np.flatnonzero(todo)
        values, offsets = _flat(batch.column(IDS))
        types = self._flat_types(batch, offsets)
        tokens = np.where(todo, np.diff(offsets), 0)  # a row of windows: all of their tokens
        scores = np.zeros((batch.num_rows, self.info.num_labels), dtype=np.float32)
        if copied is not None:
            scores[reused] = copied[reused]
        engine = self.engine if self.engine is not None or not len(idx) else self._load()
        busy, computed, splits, unfit, runs, longest = 0.0, 0, 0, [], "", tokens
        if engine is not None:  # (a replica without its model has no row to score)
            stats = engine.stats
            before, started = (stats.computed_tokens, stats.oom_splits), time.perf_counter()
            if WINDOW_LENGTHS in batch.column_names:  # model.long_text chunk: rows of windows
                starts, lengths, counts, longest = self._window_spans(batch, offsets, todo)
                scores[idx] = engine.score_windows_flat(values, starts, lengths, counts, types)
            else:
                scores[idx] = engine.score_flat(values, offsets, types, rows=idx)
            busy = time.perf_counter() - started
            computed, splits = stats.computed_tokens - before[0], stats.oom_splits - before[1]
            unfit, runs = engine.unfit, engine.runs
        if unfit:  # rows (a window of them) that ran out of memory alone: dead letters
            errors = batch.column(ERROR).to_pylist()
            for i in idx[unfit]:
                errors[i], valid[i] = f"out_of_memory:{int(longest[i])}_tokens", False
            column = batch.schema.get_field_index(ERROR)
            batch = batch.set_column(column, ERROR, pa.array(errors, type=pa.string()))
        dropped = (IDS, TYPE_IDS, WINDOW_LENGTHS, WINDOWS, REUSE_SCORES)  # windows: see below
        out = batch.drop_columns([c for c in dropped if c in batch.column_names])
        columns = self.task.score_columns(scores, valid, self.info)
        if WINDOWS in batch.column_names:
            columns[WINDOWS] = batch.column(WINDOWS)
        columns |= metric_columns(
            self.replica, busy, tokens, computed, todo, self.load_seconds, runs, splits
        )
        if len(idx):
            self.load_seconds = 0.0
        for name, column in columns.items():
            out = out.append_column(name, column)
        assert out.num_rows == batch.num_rows, "scorer must keep every row"
        if self.counter is not None:
            self.counter.add.remote(out.num_rows)  # fire and forget
        return out


def tokenizer_spec(cfg: JobConfig, info: ModelInfo) -> dict[str, Any] | None:
    """The tokenizer's backend for the tokenize tasks to encode with (they never import
    transformers; see :func:`crossenc.models.tokenize.encoder_spec`), or None where they load the
    tokenizer themselves (a chat template, model.long_text chunk)."""
    if cfg.model.long_text == "chunk":
        return None
    return encoder_spec(load_tokenizer(cfg.model, info.source), info)
