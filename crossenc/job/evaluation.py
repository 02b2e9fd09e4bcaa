"""Phase 5b, evaluation (task: evaluate): the metrics of the written rows against their gold
labels, computed before the commit so that the summary and the manifest carry them.

Only the narrow columns are read back from the run's output files (the gold label, the score
columns, the query): a few bytes a row, read by IO threads from any store. Ranking metrics are
computed per query, whatever file a query's rows landed in, and the overall figure is their
mean, exactly. The per-query metrics are written as Parquet at
``<output.path>/_evaluation/<run_id>/per_query.parquet``, to be joined with the team's own
slices of its queries (length, locale, traffic).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crossenc.config import ConfigError, JobConfig, RuntimeConfig, StorageConfig
from crossenc.evaluation import metrics, streamed
from crossenc.evaluation.compare import compare, paired_by_query
from crossenc.evaluation.streamed import FOLDER, by_model, stacked
from crossenc.inputs.sample import IO_THREADS
from crossenc.metrics import RunMetrics
from crossenc.models.describe import ModelInfo
from crossenc.models.several import named
from crossenc.output.parts import PartStats
from crossenc.storage import Location, resolve
from crossenc.tasks.base import score_names

log = logging.getLogger(__name__)


def read_columns(output: Location, parts: list[PartStats], columns: list[str]) -> pa.Table:
    """``columns`` of every output file the parts name, concatenated (IO threads)."""
    files = sorted({p.file for p in parts if p.file})
    if not files:
        return pa.table({c: pa.array([], pa.null()) for c in columns})
    fs = output.arrow_fs

    def read(path: str) -> pa.Table:
        return pq.read_table(path, columns=columns, filesystem=fs)

    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="evaluate") as pool:
        return pa.concat_tables(list(pool.map(read, files)), promote_options="permissive")


def evaluate_run(
    cfg: JobConfig,
    output: Location,
    parts: list[PartStats],
    infos: dict[str, ModelInfo],
    run_id: str,
    earlier: dict[str, dict[str, Any]],
    measured_in_files: RunMetrics | None = None,
) -> dict[str, Any]:
    """The evaluation section of the run summary: each model's metrics against
    ``evaluate.gold`` over the rows written (dead-lettered rows have no score; rows without a
    gold label are counted and left out), with their 95% intervals; a ranking's per-query
    metrics are written as Parquet (its path in ``per_query``), and compared with ``earlier``:
    the evaluation sections of evaluate.compare_to's runs (:mod:`crossenc.job.prepare`).
    ``infos``: each model's info by short name (:meth:`crossenc.inputs.plan.JobPlan.model_infos`).
    ``measured_in_files``: the run's metrics, where the writers measured each file's queries
    (evaluate.within_files, :mod:`crossenc.evaluation.streamed`): their moments make the
    figures, and no row is read back.

    The first model's figures are the section's own; with several models (``models:``) each
    has its entry in ``models``, and each after the first is compared with it query by query
    (``compared``: that model minus the first)."""
    ev = cfg.evaluate
    started = time.monotonic()
    views = cfg.model_views()
    if measured_in_files is not None:
        measured = _streamed(cfg, measured_in_files)
    else:
        measured = _read_back(cfg, output, parts, infos)
    out, sections = measured.out, measured.sections
    if sections is None:  # every row dead-lettered, or none labelled: nothing to measure
        log.warning("evaluation of %s: no scored row has a gold label", cfg.model.name)
        out.update({"metrics": {}, "ci95": {}, "seconds": round(time.monotonic() - started, 3)})
        return out
    first, *rest = [name for name, _ in views]
    out.update(sections[first])
    if len(views) > 1:
        out["models"] = [
            {"name": name, "model": view.model.name, **sections[name]} for name, view in views
        ]
    if ev.kind == "rerank":
        out["at_k"] = ev.at_k
        out["per_query"], out["compared"] = _comparisons(cfg, measured, output, run_id, earlier)
    out["seconds"] = round(time.monotonic() - started, 3)
    for name, view in views:
        log.info("evaluation of %s: %s", view.model.name, _headline(sections[name]))
    return out


def _comparisons(
    cfg: JobConfig,
    measured: _Measured,
    output: Location,
    run_id: str,
    earlier: dict[str, dict[str, Any]],
) -> tuple[str | list[str], list[dict[str, Any]]]:
    """Where a ranking's per-query metrics are, and its comparisons: each later model against
    the first (from the per-query tables, or past the bootstrap's limit from the moments),
    then each earlier run of evaluate.compare_to against the first."""
    ev = cfg.evaluate
    names = metrics.ranking_names(ev.at_k)
    first, *rest = [name for name, _ in cfg.model_views()]
    per_query = measured.per_query
    if measured.files is not None:  # past the limit: the writers' files stay where they are
        where: str | list[str] = measured.files
        compared = [{"model": n, "baseline": first, **measured.paired[n]} for n in rest]
        if ev.compare_to:  # (every query's values of the first: memory grows with them)
            per_query = by_model(_read_tables(measured.files, cfg.output.storage), [first])
    else:
        where = _write_per_query(output, run_id, per_query)
        compared = [
            {
                "model": name,
                "baseline": first,
                **paired_by_query(
                    per_query[name], per_query[first], ev.group_by, names, ev.bootstrap, ev.seed
                ),
            }
            for name in rest
        ]
    compared += [
        compare(
            per_query[first],
            ev.group_by,
            names,
            earlier[path],
            path,
            cfg.output.storage,
            ev.bootstrap,
            ev.seed,
        )
        for path in ev.compare_to
    ]
    return where, compared


@dataclass
class _Measured:
    """Each model's figures before the comparisons: the run's counts (``out``), the figures by
    model (None: no row to measure) and a ranking's per-query tables by model; past the
    bootstrap's limit instead the writers' per-query files and each later model's paired
    figures against the first, from the moments."""

    out: dict[str, Any]
    sections: dict[str, dict[str, Any]] | None = None
    per_query: dict[str, pa.Table] = field(default_factory=dict)
    files: list[str] | None = None
    paired: dict[str, dict[str, Any]] = field(default_factory=dict)


def _read_back(
    cfg: JobConfig, output: Location, parts: list[PartStats], infos: dict[str, ModelInfo]
) -> _Measured:
    """Each model's figures from the narrow columns of the output files, read back."""
    ev, views = cfg.evaluate, cfg.model_views()
    columns = {n: [named(c, n) for c in score_names(infos[n])] for n, _ in views}
    group = [ev.group_by] if ev.kind == "rerank" else []
    table = read_columns(output, parts, [ev.gold, *sum(columns.values(), []), *group])
    labelled = pc.is_valid(table.column(ev.gold)).to_numpy(zero_copy_only=False)
    out = _counts(cfg, table.num_rows, int((~labelled).sum()))
    table = table.filter(pa.array(labelled))
    if table.num_rows == 0:
        return _Measured(out)
    sections = {name: _measure(view, table, columns[name], infos[name]) for name, view in views}
    per_query = {name: section.pop("per_query", None) for name, section in sections.items()}
    return _Measured(out, sections, per_query)


def _by_query(per_query: pa.Table, key: str) -> pa.Table:
    """Per-query metrics in query order: the bootstrap draws the same queries whatever files
    and order the rows came in."""
    return per_query.sort_by(key)


def _streamed(cfg: JobConfig, run: RunMetrics) -> _Measured:
    """:func:`_read_back`'s figures from the moments the writers measured: up to
    ``BOOTSTRAP_EXACT_UNITS`` queries the per-query files are read back (the bootstrap and
    the randomization test need each query's value); past it the figures come from the
    moments, and the per-query files stay where the writers wrote them."""
    ev, views = cfg.evaluate, cfg.model_views()
    total, paths = run.evaluation, run.per_query_files
    if total is None:
        return _Measured(_counts(cfg, 0, 0))
    out = _counts(cfg, total["rows"], total["rows_without_gold"])
    if total["queries"] == 0:
        return _Measured(out)
    names = [name for name, _ in views]
    paths = list(dict.fromkeys(paths))
    if total["queries"] <= metrics.BOOTSTRAP_EXACT_UNITS:
        tables = by_model(_read_tables(paths, cfg.output.storage), names)
        per_query = {name: _by_query(table, ev.group_by) for name, table in tables.items()}
        sections = {
            name: metrics.ranking_summary(per_query[name], ev.at_k, ev.bootstrap, ev.seed)
            for name in names
        }
        return _Measured(out, sections, per_query)
    sections = {name: streamed.summary_of(total, name, ev.at_k) for name in names}
    paired = {name: streamed.paired_of(total, name, ev.at_k) for name in names[1:]}
    return _Measured(out, sections, files=paths, paired=paired)


def _counts(cfg: JobConfig, rows: int, without_gold: int) -> dict[str, Any]:
    ev = cfg.evaluate
    return {
        "kind": ev.kind,
        "gold": ev.gold,
        "model": cfg.model.name,
        "rows": rows,
        "rows_without_gold": without_gold,
    }


def _read_tables(paths: list[str], storage: StorageConfig) -> pa.Table:
    """Per-query files (each named as a user names it), concatenated (IO threads)."""

    def read(path: str) -> pa.Table:
        loc = resolve(path, storage)
        return pq.read_table(loc.path, filesystem=loc.arrow_fs)

    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="evaluate") as pool:
        return pa.concat_tables(list(pool.map(read, paths)))


def _measure(
    view: JobConfig, table: pa.Table, scores: list[str], info: ModelInfo
) -> dict[str, Any]:
    """One model's metrics against the gold labels, its score columns ``scores`` (a ranking's
    per-query table under ``per_query``, the query column named as evaluate.group_by)."""
    ev, model = view.evaluate, view.model.name
    gold = table.column(ev.gold)
    if ev.kind == "rerank":
        per_query = metrics.per_query_ranking(
            table.column(ev.group_by).combine_chunks(),
            _integers(gold, ev.gold),
            _column(table, scores[0]),
            ev.at_k,
            ev.relevant_from,
        )
        per_query = per_query.rename_columns([ev.group_by, *per_query.column_names[1:]])
        per_query = _by_query(per_query, ev.group_by)
        out = metrics.ranking_summary(per_query, ev.at_k, ev.bootstrap, ev.seed)
        out["per_query"] = per_query
        return out
    if ev.kind == "similarity":
        # (a gold column that is not numbers was refused from the footers: inputs.plan)
        return metrics.similarity(_column(table, scores[0]), _column(table, ev.gold))
    if info.num_labels == 1:
        binary = _integers(gold, ev.gold)
        if not np.isin(binary, (0, 1)).all():
            bad = sorted(set(np.unique(binary).tolist()) - {0, 1})[:5]
            raise ConfigError(
                f"evaluate.kind classify with single-output model {model} needs 0/1 "
                f"(or bool) gold labels in {ev.gold!r}; it holds {bad}"
            )
        return metrics.binary_classification(
            _column(table, scores[0]), binary, ev.bootstrap, ev.seed
        )
    logits = np.stack([_column(table, s) for s in scores], axis=1)
    indices = _label_indices(gold, list(info.labels), ev.gold, model)
    return metrics.multiclass_classification(
        logits, indices, list(info.labels), ev.bootstrap, ev.seed
    )


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy().astype(np.float64, copy=False)


def _integers(gold: pa.ChunkedArray, name: str) -> np.ndarray:
    """Integer grades (bool as 0/1); a fractional grade is refused, naming it."""
    kind = gold.type
    if pa.types.is_boolean(kind) or pa.types.is_integer(kind):
        return gold.to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_floating(kind):
        values = gold.to_numpy(zero_copy_only=False)
        fractional = values[values != np.round(values)]
        if len(fractional):
            raise ConfigError(
                f"evaluate.gold {name!r} must hold integer grades (or bool): it holds "
                f"{fractional[0]}; a similarity score is evaluate.kind similarity"
            )
        return values.astype(np.int64)
    raise ConfigError(f"evaluate.gold {name!r} must hold integer grades or bool, not {kind}")


def _label_indices(gold: pa.ChunkedArray, labels: list[str], name: str, model: str) -> np.ndarray:
    """Gold label names (or indices) as indices into the model's labels; an unknown one is
    refused, naming it and the model's labels."""
    if pa.types.is_integer(gold.type):
        indices = gold.to_numpy(zero_copy_only=False).astype(np.int64)
        bad = indices[(indices < 0) | (indices >= len(labels))]
        if len(bad):
            raise ConfigError(
                f"evaluate.gold {name!r} holds label index {bad[0]}, but {model} has "
                f"{len(labels)} labels {labels}"
            )
        return indices
    text = pc.utf8_lower(gold.cast(pa.string()))
    lowered = [label.lower() for label in labels]
    indices = pc.index_in(text, value_set=pa.array(lowered)).to_numpy(zero_copy_only=False)
    missing = np.isnan(indices) if indices.dtype.kind == "f" else np.zeros(len(indices), bool)
    if missing.any():
        unknown = sorted(set(pc.filter(text, pa.array(missing)).to_pylist()))[:5]
        raise ConfigError(
            f"evaluate.gold {name!r} holds labels {unknown} that {model} does not have; its "
            f"labels are {labels}"
        )
    return indices.astype(np.int64)


def _write_per_query(output: Location, run_id: str, per_query: dict[str, pa.Table]) -> str:
    """Write the per-query metrics under the output (several models' stacked:
    :func:`~crossenc.evaluation.streamed.stacked`); returns where, as the output is named."""
    return output.write_table(f"{FOLDER}/{run_id}/per_query.parquet", stacked(per_query))


HEADLINE = {  # the model cards' columns per kind: sentence-transformers' tables
    "rerank": ("ndcg@{k}", "mrr@{k}", "map"),
    "classify": ("accuracy", "f1_macro", "average_precision"),
    "similarity": ("spearman", "pearson"),
}


def with_leaderboard(
    evaluation: dict[str, Any], summary: dict[str, Any], runtime: RuntimeConfig
) -> dict[str, Any]:
    """The evaluation with its leaderboard rows, laid out as the model cards lay theirs out:
    the model, the kind's headline metrics and docs/s (rows a second per replica while it
    scored, the same per GPU of a replica (``runtime.gpus_per_replica``) or per core of a CPU
    replica (its torch threads), and over the whole score phase), measured in this run, a row
    per model of the run (several models: docs/s per replica is each model's own time; the
    score phase's is the pass's, every model's rows scored together); then the row of each run
    of ``evaluate.compare_to``, as that run measured it."""
    k = evaluation.get("at_k", 10)
    names = [n.format(k=k) for n in HEADLINE[evaluation["kind"]]]
    replicas = summary.get("replicas") or []
    rows = sum(r["rows"] for r in replicas)
    busy = sum(r["busy_seconds"] for r in replicas)
    models = summary.get("models") or []
    passed = max(m["rows"] for m in models) if models else rows  # (a pool per model: each's)
    score_seconds = (summary.get("phases") or {}).get("score") or 0
    phase = round(passed / score_seconds, 1) if score_seconds else None
    own = {m["model"]: m["docs_per_second_per_replica"] for m in models}
    gpus = runtime.gpus_per_replica
    per, units = ("gpu", gpus) if gpus else ("core", runtime.cpu_threads())
    board = []
    for m in evaluation.get("models") or [evaluation]:
        rate = own.get(m["name"]) if "name" in m else round(rows / busy, 1) if busy else None
        board.append(
            {
                "model": m.get("name") or m["model"],
                **{n: m["metrics"][n] for n in names if n in m["metrics"]},
                "docs_per_second_per_replica": rate,
                f"docs_per_second_per_{per}": round(rate / units, 1) if rate else None,
                "docs_per_second_score_phase": phase,
            }
        )
    earlier = [c["leaderboard"] for c in evaluation.get("compared") or [] if c.get("leaderboard")]
    return {**evaluation, "leaderboard": [*board, *earlier]}


def intervals(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """The 95% intervals of each leaderboard row: this run's models', then each compared
    run's own."""
    compared = [c for c in evaluation.get("compared") or [] if c.get("leaderboard")]
    here = [m.get("ci95") or {} for m in evaluation.get("models") or [evaluation]]
    return [*here, *(c.get("ci95") or {} for c in compared)]


def summary_row(evaluation: dict[str, Any]) -> tuple[str, str]:
    """The evaluation's row of the summary table: what was measured against what, and what was
    left out (queries without a relevant pair, rows without gold)."""
    counted = evaluation.get("queries")
    return (
        f"evaluation ({evaluation['kind']})",
        f"against {evaluation['gold']}: {evaluation['rows']} rows"
        + (f", {counted} queries" if counted is not None else "")
        + (
            f" ({evaluation['queries_without_relevant']} without a relevant pair)"
            if evaluation.get("queries_without_relevant")
            else ""
        )
        + (
            f", {evaluation['rows_without_gold']} rows without gold left out"
            if evaluation.get("rows_without_gold")
            else ""
        ),
    )


def leaderboard_lines(evaluation: dict[str, Any]) -> list[str]:
    """The leaderboard as an aligned text table, with the intervals where there are some, then
    a line per compared run with the paired differences."""
    rows = evaluation.get("leaderboard") or []
    if not rows:
        return []
    columns = list(rows[0])

    def cell(row: dict[str, Any], column: str, ci: dict[str, Any]) -> str:
        value = row.get(column)
        if isinstance(value, float) and ci.get(column):
            low, high = ci[column]
            return f"{value:.4f} [{low:.4f}, {high:.4f}]"
        return f"{value:.4f}" if isinstance(value, float) and "docs" not in column else str(value)

    cis = intervals(evaluation)
    table = [columns, *[[cell(r, c, ci) for c in columns] for r, ci in zip(rows, cis, strict=True)]]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in table]
    return [line.rstrip() for line in lines] + [
        difference_line(c) for c in evaluation.get("compared") or []
    ]


def difference_line(compared: dict[str, Any]) -> str:
    """One compared run (or another model of this run): per metric, this model minus that one
    over the queries both have, the 95% interval, and the p-value (randomization test, else
    paired t)."""
    said = []
    for name, d in compared["differences"].items():
        ci = d.get("ci95")
        p = d["p_randomization"] if d["p_randomization"] is not None else d["p_paired_t"]
        said.append(
            f"{name} {d['mean_difference']:+.4f}"
            + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
            + (f" p {p:.3g}" if p is not None else "")
        )
    if "baseline" in compared:  # another model of this run, minus the first
        head = f"{compared['model']} - {compared['baseline']}"
    else:
        head = f"vs {compared['model']}"
    return f"{head} ({compared['queries_compared']} queries): " + "; ".join(said)


def _headline(out: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in out["metrics"].items() if isinstance(v, float))
