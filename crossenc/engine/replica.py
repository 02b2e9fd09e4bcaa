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
from crossenc.metrics import MODEL_ERRORS, REUSED, metric_columns, model_busy_columns
from crossenc.models.describe import ModelInfo
from crossenc.models.load import model_source
from crossenc.models.several import ModelSet, group_column, lone, named
from crossenc.models.tokenize import (
    ERROR,
    IDS,
    TYPE_IDS,
    WINDOW_LENGTHS,
    WINDOWS,
)
from crossenc.tasks import task_for

MODEL_REUSE = (f"{REUSED}@", f"{REUSE_SCORES}@")  # several models' reuse columns, by name


def _flat(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column's own buffers, without a copy where it is one chunk (as a block is):
    (values, offsets), row ``i`` being ``values[offsets[i]:offsets[i + 1]]``, offsets from 0."""
    if isinstance(col, pa.ChunkedArray):
        col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy()[offsets[0] : offsets[-1]]  # a slice's rows only
    return values, (offsets - offsets[0]).astype(np.int64, copy=False)


class ScorerReplica:
    """A Ray actor holding a replica of each model of the run; scores tokenized blocks.

    A block's token ids reach the engine as the Arrow column's own flat buffers (no array per
    row): :meth:`crossenc.engine.scoring.ScoringEngine.score_flat`, or ``score_windows_flat`` for
    model.long_text chunk's rows of windows. With several models (``models``), each scores the
    block in turn from its tokenizer group's ids and adds its own named columns; a row one model
    cannot score is dead-lettered with that model's name, the others' scores kept.

    With ``runtime.model_pools: per_model`` each model has a pool of its own, one after the
    other in the dataflow: a replica of pool ``pool`` holds that model only, adds its columns
    and hands the rows on (token ids kept, its metric columns named ``<column>#<pool>``, the
    reasons its model failed rows in :data:`MODEL_ERRORS`); the last pool's finishes the rows
    as a replica of every model would."""

    def __init__(
        self,
        cfg: JobConfig,
        info: ModelInfo,
        load: bool = True,
        counter: Any = None,
        models: ModelSet | None = None,
        pool: int | None = None,
    ) -> None:
        """``load`` false: the models are loaded when a row to score first arrives (a night
        whose every row output.incremental matched loads none). ``counter``: an actor told the
        rows of every block scored (:class:`crossenc.job.progress.ScoredRows`), for runs whose
        rows reach the driver only after a shuffle. ``models``: the run's models (default: the
        lone model of ``cfg``). ``pool``: the one model this replica holds (its index in
        ``models``), None for all of them."""
        self.cfg, self.info = cfg, info
        self.models = models or lone(cfg, info)
        self.tasks = [task_for(m.cfg) for m in self.models.members]
        self.counter = counter
        self.replica = f"{ray.util.get_node_ip_address()}:{os.getpid()}"
        self.pool = pool
        self.held = range(len(self.models.members)) if pool is None else range(pool, pool + 1)
        self.last = pool is None or pool == len(self.models.members) - 1
        self.engines: dict[int, ScoringEngine] = {}  # by the model's index in ``models``
        self.load_seconds = 0.0  # reported with the first rows scored
        if load:
            self._load()

    @property
    def engine(self) -> ScoringEngine | None:
        """The first held model's engine (None until loaded)."""
        return next(iter(self.engines.values()), None)

    def _load(self) -> dict[int, ScoringEngine]:
        started = time.perf_counter()
        for k in self.held:
            member = self.models.members[k]
            rt = member.cfg.runtime
            source = model_source(member.cfg.model, rt.cache_dir)  # s3: to this node
            self.engines[k] = ScoringEngine(member.cfg.model, member.info, rt, source)
        self.load_seconds = time.perf_counter() - started
        return self.engines

    @staticmethod
    def _flat_types(batch: pa.Table, offsets: np.ndarray, group: int = 0) -> np.ndarray | None:
        """The type ids column's values (of tokenizer group ``group``), at the positions of the
        token ids they go with; None without one, or where every row's list is empty (a chat
        template's pairs)."""
        column = group_column(TYPE_IDS, group)
        if column not in batch.column_names:
            return None
        values, type_offsets = _flat(batch.column(column))
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

    def _score_member(
        self, k: int, batch: pa.Table, todo: np.ndarray, scores: np.ndarray
    ) -> tuple[float, int, int, np.ndarray, np.ndarray]:
        """Model ``k`` scores the ``todo`` rows into ``scores``; returns its busy seconds, the
        tokens computed, the batches split after running out of memory, the rows it could not
        fit (indices into the block) and each row's longest input (its tokens, or window)."""
        member, engine = self.models.members[k], self.engines[k]
        idx = np.flatnonzero(todo)
        values, offsets = _flat(batch.column(group_column(IDS, member.group)))
        types = self._flat_types(batch, offsets, member.group)
        longest = np.diff(offsets)
        stats = engine.stats
        before, started = (stats.computed_tokens, stats.oom_splits), time.perf_counter()
        if WINDOW_LENGTHS in batch.column_names:  # model.long_text chunk: rows of windows
            starts, lengths, counts, longest = self._window_spans(batch, offsets, todo)
            scores[idx] = engine.score_windows_flat(values, starts, lengths, counts, types)
        else:
            scores[idx] = engine.score_flat(values, offsets, types, rows=idx)
        busy = time.perf_counter() - started
        computed, splits = stats.computed_tokens - before[0], stats.oom_splits - before[1]
        return busy, computed, splits, idx[engine.unfit], longest

    def __call__(self, batch: pa.Table) -> pa.Table:
        valid = pc.is_null(batch.column(ERROR)).to_numpy(zero_copy_only=False)
        members = self.models.members
        several = len(members) > 1
        scores = {
            k: np.zeros((batch.num_rows, members[k].info.num_labels), np.float32) for k in self.held
        }
        todos = {}  # per held model, the rows it scores: output.incremental copies the others'
        for k in self.held:
            reused, copied = reused_scores(batch, members[k].name if several else "")
            reused &= valid
            if copied is not None:
                scores[k][reused] = copied[reused]
            todos[k] = valid & ~reused
        todo = np.logical_or.reduce(list(todos.values()))  # rows some model here scores
        ids = group_column(IDS, members[self.held[0]].group)
        tokens = np.where(todo, np.diff(_flat(batch.column(ids))[1]), 0)  # windows: all theirs
        if todo.any() and not self.engines:
            self._load()
        busy, computed, splits, runs = dict.fromkeys(self.held, 0.0), 0, 0, ""
        failed = self._earlier_failures(batch)  # row -> why models could not score it
        scored = {k: valid.copy() for k in self.held}
        for k in self.held if self.engines else ():
            member = members[k]
            busy[k], tokens_k, splits_k, unfit, longest = self._score_member(
                k, batch, todos[k], scores[k]
            )
            computed, splits = computed + tokens_k, splits + splits_k
            runs = runs or self.engines[k].runs
            for i in unfit:  # rows (a window of them) that ran out of memory alone
                scored[k][i] = False
                why = f"out_of_memory:{int(longest[i])}_tokens"
                reason = f"{member.name}: {why}" if member.name else why
                failed.setdefault(int(i), []).append(reason)
        if failed and self.last:  # dead letters, with every model that failed them named
            errors = batch.column(ERROR).to_pylist()
            for i, reasons in failed.items():
                errors[i], valid[i] = "; ".join(reasons), False
            column = batch.schema.get_field_index(ERROR)
            batch = batch.set_column(column, ERROR, pa.array(errors, type=pa.string()))
        out = batch.drop_columns([c for c in batch.column_names if self._done_with(c)])
        columns: dict[str, pa.Array] = {}
        for k in self.held:
            # a lone model's rows: written or dead-lettered whole; several models': each keeps
            # the scores of the rows it scored (a dead letter carries the others')
            ok = scored[k] if several else valid
            made = self.tasks[k].score_columns(scores[k], ok, members[k].info)
            columns |= {named(c, members[k].name): v for c, v in made.items()}
        if WINDOWS in batch.column_names and self.last:  # (chunk: one model only)
            columns[WINDOWS] = batch.column(WINDOWS)
        metrics = metric_columns(
            self.replica,
            sum(busy.values()),
            tokens,
            computed,
            todo,
            self.load_seconds,
            runs,
            splits,
        )
        columns |= metrics if self.last else {f"{c}#{self.pool}": v for c, v in metrics.items()}
        if several:
            names = [members[k].name for k in self.held]
            columns |= model_busy_columns(names, list(busy.values()), list(todos.values()))
        if not self.last and failed:
            reasons = ["; ".join(failed[i]) if i in failed else None for i in range(batch.num_rows)]
            columns[MODEL_ERRORS] = pa.array(reasons, type=pa.string())
        if todo.any():
            self.load_seconds = 0.0
        for name, column in columns.items():
            out = out.append_column(name, column)
        assert out.num_rows == batch.num_rows, "scorer must keep every row"
        if self.counter is not None and self.last:
            self.counter.add.remote(out.num_rows)  # fire and forget
        return out

    def _earlier_failures(self, batch: pa.Table) -> dict[int, list[str]]:
        """The reasons earlier pools' models could not score rows (model_pools per_model)."""
        if MODEL_ERRORS not in batch.column_names:
            return {}
        reasons = batch.column(MODEL_ERRORS).to_pylist()
        return {i: [r] for i, r in enumerate(reasons) if r is not None}

    def _done_with(self, column: str) -> bool:
        """Whether the rows leave this replica without ``column``: the token ids, windows and
        reused scores once the last model has read them, and an earlier pool's reasons."""
        if column == MODEL_ERRORS:
            return True
        dropped = (*self._token_columns_of(), WINDOW_LENGTHS, WINDOWS, REUSE_SCORES)
        return self.last and (column in dropped or column.startswith(MODEL_REUSE))

    def _token_columns_of(self) -> list[str]:
        groups = range(len(self.models.encoders))
        return [group_column(c, g) for c in (IDS, TYPE_IDS) for g in groups]
