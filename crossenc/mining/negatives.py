"""Hard negatives chosen per query (task: mine), with sentence-transformers' semantics.

``mine_hard_negatives(cross_encoder=...)`` retrieves each query's best ``range_max +
max_positives`` passages with a bi-encoder, rescores them with the cross-encoder when a margin or
a score bound is set, and then, per query: drops its positives (unless ``include_positives``),
the candidates within ``absolute_margin`` / ``relative_margin`` of its lowest positive score and
those above ``max_score`` or below ``min_score``; keeps the best ``range_max`` by the
cross-encoder's score, skips the first ``range_min``, and takes ``num_negatives`` of the rest,
the best (``top``) or a random sample sorted by score (``random``). :func:`mine_rows` does the
same over a candidate log's scored rows: the pool is what retrieval showed (its best
``range_max + positives`` by the retriever's score, when that column is given), every score is
the teacher's.

Sampling is seeded per query (its key's hash and ``seed``), so a query's negatives do not
depend on which file or worker it landed in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crossenc.config import JobConfig, MineConfig
from crossenc.models.several import named
from crossenc.models.tokenize import ROW
from crossenc.tasks.base import SCORE

FOLDER = "_mined"  # beside the output's rows: one file of mined rows per data file
FILTERS = ("absolute_margin", "relative_margin", "max_score", "min_score")
DISTILL = ("score_pos", "score_neg", "margin")  # the distill layout's scores (+ _<teacher>)


@dataclass(frozen=True)
class MineSpec:
    """What a writer needs to mine a file's queries: the config's ``mine`` section, the
    columns, and the teacher's score columns (several: their mean is the teacher's score)."""

    mine: MineConfig
    group_by: str
    query: str  # the anchor text column (input.text_a)
    passage: str  # input.text_b
    scores: tuple[str, ...] = (SCORE,)


def mine_spec(cfg: JobConfig) -> MineSpec:
    """The job's :class:`MineSpec`."""
    names = [name for name, _ in cfg.model_views()]
    group = cfg.group_column()
    assert group is not None
    return MineSpec(
        cfg.mine, group, cfg.input.text_a, cfg.input.text_b, tuple(named(SCORE, n) for n in names)
    )


@dataclass
class MineCounts:
    """What mining a set of queries found (summed over files for the run's summary)."""

    queries: int = 0
    without_positive: int = 0  # queries with no positive row: nothing mined
    short: int = 0  # queries (with a positive) given fewer negatives than num_negatives
    candidates: int = 0  # candidates in the pools of queries with a positive
    negatives: int = 0  # negatives chosen
    rows: int = 0  # rows of the output format written
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for a part's metrics record."""
        return {
            "queries": self.queries,
            "without_positive": self.without_positive,
            "short": self.short,
            "candidates": self.candidates,
            "negatives": self.negatives,
            "rows": self.rows,
            "dropped": dict(self.dropped),
        }


def add_counts(total: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    """Two counts records added (``total`` None: ``part``)."""
    if total is None:
        return {k: dict(v) if isinstance(v, dict) else v for k, v in part.items()}
    out = {k: total.get(k, 0) + v for k, v in part.items() if not isinstance(v, dict)}
    out["dropped"] = {
        k: total.get("dropped", {}).get(k, 0) + v for k, v in part.get("dropped", {}).items()
    }
    return out


def is_positive(column: pa.ChunkedArray | pa.Array, relevant_from: int) -> np.ndarray:
    """Per row, whether mine.positive marks it a positive (bool, or a grade >= relevant_from;
    null: not a positive)."""
    if pa.types.is_boolean(column.type):
        flags = pc.fill_null(column, False)
    else:
        flags = pc.fill_null(pc.greater_equal(column, relevant_from), False)
    return np.asarray(flags.to_numpy(zero_copy_only=False), dtype=bool)


def teacher_scores(table: pa.Table, spec: MineSpec) -> np.ndarray:
    """The teacher's score per row: the model's, or the mean of several models' (float32)."""
    columns = [table.column(c).to_numpy(zero_copy_only=False) for c in spec.scores]
    if len(columns) == 1:
        return np.asarray(columns[0], dtype=np.float32)
    return np.mean(np.stack(columns).astype(np.float32), axis=0, dtype=np.float32)


def _query_seed(seed: int, key: Any) -> np.random.Generator:
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


@dataclass
class _Query:
    """One query's choice: its positives and negatives (row indices), best score first."""

    anchor: str
    positives: np.ndarray
    negatives: np.ndarray


def _choose(
    spec: MineSpec,
    key: Any,
    rows: np.ndarray,
    positive: np.ndarray,
    scores: np.ndarray,
    retriever: np.ndarray | None,
    counts: MineCounts,
) -> np.ndarray:
    """The negatives of one query whose rows (in input order) are ``rows``: indices into the
    table, best score first."""
    m = spec.mine
    pos_rows = rows[positive[rows]]
    candidate = np.ones(len(rows), bool) if m.include_positives else ~positive[rows]
    pool = np.ones(len(rows), bool)
    if retriever is not None and m.range_max is not None:
        order = np.argsort(-retriever[rows], kind="stable")
        pool[order[m.range_max + len(pos_rows) :]] = False
    keep = candidate & pool
    counts.candidates += int(keep.sum())
    s = scores[rows]
    if m.absolute_margin is not None or m.relative_margin is not None:
        lowest = np.min(scores[pos_rows])
        if m.absolute_margin is not None:
            drop = keep & (s + np.float32(m.absolute_margin) > lowest)
            counts.dropped["absolute_margin"] += int(drop.sum())
            keep &= ~drop
        if m.relative_margin is not None:
            bar = lowest - np.abs(lowest) * np.float32(m.relative_margin)
            drop = keep & (s > bar)
            counts.dropped["relative_margin"] += int(drop.sum())
            keep &= ~drop
    for name, bound, above in (("max_score", m.max_score, True), ("min_score", m.min_score, False)):
        if bound is not None:
            drop = keep & ((s > bound) if above else (s < bound))
            counts.dropped[name] += int(drop.sum())
            keep &= ~drop
    ranked = np.flatnonzero(keep)
    ranked = ranked[np.argsort(-s[ranked], kind="stable")]
    window = ranked[m.range_min : m.range_max]
    wanted = m.num_negatives
    if m.sampling_strategy == "random" and wanted is not None and len(window) > wanted:
        picked = _query_seed(m.seed, key).choice(len(window), wanted, replace=False)
        window = window[np.sort(picked)]  # (window is best first: sorted picks stay so)
    return rows[window[:wanted]]


def mine_rows(table: pa.Table, spec: MineSpec) -> tuple[pa.Table, MineCounts]:
    """Mine the queries of ``table`` (scored rows holding every row of each of its queries):
    the rows of ``spec.mine.output_format``, queries in input order, and what was found."""
    m = spec.mine
    counts = MineCounts()
    if ROW in table.column_names:
        table = table.sort_by(ROW)
    keys = table.column(spec.group_by).combine_chunks()
    codes = pc.dictionary_encode(keys, null_encoding="encode")
    index = codes.indices.to_numpy(zero_copy_only=False)
    positive = is_positive(table.column(m.positive), m.relevant_from)
    scores = teacher_scores(table, spec)
    retriever = (
        np.asarray(table.column(m.retriever_score).to_numpy(zero_copy_only=False), np.float64)
        if m.retriever_score
        else None
    )
    anchors = table.column(spec.query).to_pylist()
    dictionary = codes.dictionary.to_pylist()
    order = np.argsort(index, kind="stable")  # (codes number queries by first appearance)
    cuts = np.flatnonzero(np.r_[True, index[order][1:] != index[order][:-1], True])
    chosen: list[_Query] = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        rows = order[lo:hi]
        counts.queries += 1
        if not positive[rows].any():
            counts.without_positive += 1
            continue
        key = dictionary[index[rows[0]]]
        negatives = _choose(spec, key, rows, positive, scores, retriever, counts)
        counts.negatives += len(negatives)
        counts.short += int(m.num_negatives is not None and len(negatives) < m.num_negatives)
        chosen.append(_Query(anchors[rows[0]], rows[positive[rows]], negatives))
    passages = table.column(spec.passage).to_pylist()
    teachers = {  # several teachers: each one's own scores, for the distill layout
        c.removeprefix(f"{SCORE}_"): table.column(c).to_numpy(zero_copy_only=False)
        for c in spec.scores
        if len(spec.scores) > 1
    }
    out = _formatted(chosen, passages, scores, spec, teachers)
    counts.rows = out.num_rows
    return out, counts


def _formatted(
    chosen: list[_Query],
    passages: list[str],
    scores: np.ndarray,
    spec: MineSpec,
    teachers: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """The chosen queries in the rows of ``output_format`` (see :class:`MineConfig`); the
    distill layout adds each of several ``teachers``' own scores (by short name)."""
    teachers = teachers or {}
    m, q, p = spec.mine, spec.query, spec.passage
    with_scores = m.output_scores
    cols: dict[str, list[Any]] = {q: [], p: []}
    if m.output_format in ("triplet", "distill"):  # a row per (positive, negative)
        distill = m.output_format == "distill"
        by = {"": scores, **teachers} if distill else {}
        added = [f"{c}{f'_{t}' if t else ''}" for t in by for c in DISTILL]
        added += ["scores"] * (with_scores and not distill)
        for name in ("negative", *added):
            cols[name] = []
        for c in chosen:
            for i in c.positives:
                for j in c.negatives:
                    cols[q].append(c.anchor)
                    cols[p].append(passages[i])
                    cols["negative"].append(passages[j])
                    for t, s in by.items():  # (distill) the mean's, then each teacher's
                        end = f"_{t}" if t else ""
                        cols[f"score_pos{end}"].append(s[i])
                        cols[f"score_neg{end}"].append(s[j])
                        cols[f"margin{end}"].append(s[i] - s[j])
                    if with_scores and not distill:
                        cols["scores"].append([scores[i], scores[j]])
    elif m.output_format == "n-tuple":
        assert m.num_negatives is not None  # (the config's check)
        for k in range(1, m.num_negatives + 1):
            cols[f"negative_{k}"] = []
        if with_scores:
            cols["scores"] = []
        for c in chosen:
            if len(c.negatives) < m.num_negatives:
                continue
            for i in c.positives:
                cols[q].append(c.anchor)
                cols[p].append(passages[i])
                for k, j in enumerate(c.negatives, start=1):
                    cols[f"negative_{k}"].append(passages[j])
                if with_scores:
                    cols["scores"].append([scores[i], *scores[c.negatives]])
    elif m.output_format == "labeled-pair":
        value = "score" if with_scores else "label"
        cols[value] = []
        for c in chosen:
            for rows, label in ((c.positives, 1), (c.negatives, 0)):
                for i in rows:
                    cols[q].append(c.anchor)
                    cols[p].append(passages[i])
                    cols[value].append(scores[i] if with_scores else label)
    else:  # labeled-list
        value = "scores" if with_scores else "labels"
        cols[value] = []
        for c in chosen:
            if not len(c.negatives):
                continue
            for i in c.positives:
                cols[q].append(c.anchor)
                cols[p].append([passages[i], *(passages[j] for j in c.negatives)])
                labels = [1] + [0] * len(c.negatives)
                cols[value].append([scores[i], *scores[c.negatives]] if with_scores else labels)
    return pa.table({name: pa.array(values, _type(name, spec)) for name, values in cols.items()})


def _type(name: str, spec: MineSpec) -> pa.DataType:
    """A mined column's Arrow type (an empty file's columns have theirs too)."""
    listed = spec.mine.output_format == "labeled-list"
    types = {
        "scores": pa.list_(pa.float32()),
        "label": pa.int8(),
        "labels": pa.list_(pa.int8()),
        spec.passage: pa.list_(pa.string()) if listed else pa.string(),
    }
    if name in types or name in (spec.query, "negative"):
        return types.get(name, pa.string())
    if name == "score" or name.startswith(DISTILL):  # (distill: score_pos_<teacher>...)
        return pa.float32()
    return pa.string()  # negative_<k>
