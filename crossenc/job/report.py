"""A self-contained HTML report for one run: summary tables and plots embedded as base64 PNG.

The page has no external resources and no JavaScript, so it can be mailed, attached to a ticket
or opened from an object store as is. Plots are drawn with matplotlib's Agg canvas directly
(no pyplot global state), so rendering is safe in a worker thread. Every string taken from the
summary (paths, model ids, label names, replica names) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from crossenc.storage import resolve

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from crossenc.config import StorageConfig

FIGSIZE = (7.0, 3.2)  # inches, per row of plots
DPI = 100
QUANTILES = ("p1", "p5", "p10", "p25", "p50", "p75", "p90", "p95", "p99")
CURRENT_COLOR = "#4C72B0"
PREVIOUS_COLOR = "#DD8452"
MISSING = "—"
MAX_RATE_INTERVALS = 40  # throughput plot: at most this many rate steps

ROW_FIELDS = (
    ("read", "rows read"),
    ("scored", "rows scored"),
    ("written", "rows written"),
    ("dead_lettered", "rows dead-lettered"),
    ("dropped_top_k", "rows dropped (top-k)"),
    ("resumed", "rows resumed"),
    ("truncated", "rows truncated"),
)
FILE_FIELDS = (
    ("input", "files input"),
    ("skipped", "files skipped"),
    ("written", "files written"),
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; }
.verdict { font-weight: bold; font-size: 1.1em; padding: 0.3em 0.6em; display: inline-block; }
.verdict.drift { background: #fbe3e3; color: #a40000; }
.verdict.ok { background: #e3f5e3; color: #1d6b1d; }
""".strip()


def render_report(summary: dict[str, Any]) -> str:
    """A self-contained HTML page (plots embedded as base64 PNG <img>) for one run's summary."""
    run_id = str(summary.get("run_id") or "unknown run")
    started = _started(summary.get("started_at"))
    sections = [
        f"<h1>crossenc run report: {_esc(run_id)}</h1>",
        _meta(summary, started),
        "<h2>Summary</h2>",
        _summary_table(summary),
        "<h2>Replicas</h2>",
        _replica_table(summary.get("replicas") or []),
        "<h2>Scores</h2>",
        _score_figure(summary),
        _quantile_table(summary),
        "<h2>Labels</h2>",
        _label_figure(summary),
        *_evaluation_section(summary.get("evaluation")),
        *_mining_section(summary.get("mining")),
        "<h2>Drift</h2>",
        _drift_section(summary.get("drift")),
        "<h2>Throughput</h2>",
        _throughput_figure(summary),
        "<h2>Token lengths</h2>",
        _token_figure(summary.get("token_lengths")),
    ]
    title = f"crossenc run {run_id}" + (f" ({started})" if started else "")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


def write_report(summary: dict[str, Any], path: str, storage: StorageConfig | None = None) -> None:
    """Render and write the report to a local path or s3:// URL (UTF-8)."""
    page = render_report(summary).encode("utf-8")
    loc = resolve(path, storage)
    parent = loc.path.rsplit("/", 1)[0]
    if parent:
        loc.fs.makedirs(parent, exist_ok=True)
    with loc.fs.open(loc.path, "wb") as f:
        f.write(page)


# --- HTML helpers -------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """A number for a table cell: integers with thousands separators, floats to 4 digits."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    return _esc(value)


def _pct(value: Any) -> str:
    return MISSING if value is None else f"{float(value):.1%}"


def _started(value: Any) -> str:
    """The run's start as 'YYYY-MM-DD HH:MM:SS TZ', or the raw string if it is not ISO 8601."""
    if not value:
        return ""
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return str(value)


def _meta(summary: dict[str, Any], started: str) -> str:
    parts = [
        f"task <b>{_esc(summary.get('task') or MISSING)}</b>",
        f"model <code>{_esc(summary.get('model') or MISSING)}</code>",
        f"started {_esc(started or MISSING)}",
    ]
    return f'<p class="meta">{" · ".join(parts)}</p>'


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str, text: int = 1
) -> str:
    """A table from already-escaped cells: the first column a row header, the first ``text``
    columns left-aligned, the others right-aligned (numbers)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>"
        + f"<th>{row[0]}</th>"
        + "".join(f"<td>{c}</td>" for c in row[1:text])
        + "".join(f'<td class="num">{c}</td>' for c in row[text:])
        + "</tr>"
        for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _summary_table(summary: dict[str, Any]) -> str:
    counts = summary.get("rows") or {}
    files = summary.get("files") or {}
    rows = [[label, _fmt(counts.get(key))] for key, label in ROW_FIELDS]
    rows += [[label, _fmt(files.get(key))] for key, label in FILE_FIELDS]
    rows += [
        ["wall seconds", _fmt(summary.get("wall_seconds"))],
        ["rows / s", _fmt(summary.get("rows_per_second"))],
        ["padding efficiency", _pct(summary.get("padding_efficiency"))],
    ]
    return _table(["", "value"], rows, "summary")


def _replica_table(replicas: list[dict[str, Any]]) -> str:
    if not replicas:
        return "<p>No per-replica statistics were recorded.</p>"
    rows = [
        [
            _esc(r.get("replica", MISSING)),
            _esc(r.get("runs") or MISSING),
            _fmt(r.get("rows")),
            _fmt(r.get("busy_seconds")),
            _fmt(r.get("rows_per_second")),
            _pct(r.get("utilization")),
            _fmt(r.get("load_seconds")),
            _fmt(r.get("oom_splits")),
        ]
        for r in replicas
    ]
    header = [
        "replica",
        "runs",
        "rows",
        "busy seconds",
        "rows / s",
        "utilization",
        "model load (s)",
        "out-of-memory splits",
    ]
    return _table(header, rows, "replicas", text=2)  # replica and what it runs


def _previous(summary: dict[str, Any]) -> dict[str, Any]:
    """The previous run's summary excerpt from the drift section ({} when there is none)."""
    return (summary.get("drift") or {}).get("previous") or {}


def _quantile_table(summary: dict[str, Any]) -> str:
    scores = summary.get("scores") or {}
    if not scores:
        return "<p>No score statistics were recorded.</p>"
    prev_scores = _previous(summary).get("scores") or {}
    columns: list[tuple[str, dict[str, Any]]] = []
    for col, stats in scores.items():
        columns.append((_esc(col), stats or {}))
        if col in prev_scores:
            columns.append((f"{_esc(col)} (previous)", prev_scores[col] or {}))
    extra = [q for stats in scores.values() for q in (stats or {}).get("quantiles") or {}]
    names = list(QUANTILES) + sorted({q for q in extra if q not in QUANTILES})
    rows = [
        [stat, *(_fmt(stats.get(stat)) for _, stats in columns)]
        for stat in ("count", "mean", "min", "max")
    ]
    rows += [
        [q, *(_fmt((stats.get("quantiles") or {}).get(q)) for _, stats in columns)] for q in names
    ]
    return _table(["", *(name for name, _ in columns)], rows, "score-quantiles")


def _drift_section(drift: dict[str, Any] | None) -> str:
    if not drift:
        return "<p>This run was not compared with an earlier run.</p>"
    thresholds = drift.get("thresholds") or {}
    drifted = bool(drift.get("drifted"))
    verdict = (
        '<p id="drift-verdict" class="verdict drift">DRIFT</p>'
        if drifted
        else '<p id="drift-verdict" class="verdict ok">no drift</p>'
    )
    rows = [
        ["compared to", f"<code>{_esc(drift.get('compare_to') or MISSING)}</code>", ""],
        ["previous run", _esc(drift.get("previous_run_id") or MISSING), ""],
        ["label TVD", _fmt(drift.get("label_tvd")), _fmt(thresholds.get("max_label_tvd"))],
    ]
    rows += [
        [f"score KS: {_esc(col)}", _fmt(ks), _fmt(thresholds.get("max_score_ks"))]
        for col, ks in (drift.get("score_ks") or {}).items()
    ]
    reasons = drift.get("reasons") or []
    reason_list = (
        "<ul>" + "".join(f"<li>{_esc(r)}</li>" for r in reasons) + "</ul>" if reasons else ""
    )
    return verdict + _table(["", "value", "threshold"], rows, "drift") + reason_list


def _figure_html(fig_id: str, caption: str, alt: str, fig: Figure | None) -> str:
    """A <figure> with the plot as an embedded PNG (no <img> when there is nothing to plot)."""
    img = ""
    if fig is not None:
        img = f'<img alt="{_esc(alt)}" src="data:image/png;base64,{_png_base64(fig)}">'
    return f'<figure id="{fig_id}">{img}<figcaption>{caption}</figcaption></figure>'


# --- plots --------------------------------------------------------------------------------


def _new_figure(nrows: int = 1, ncols: int = 1) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(FIGSIZE[0], FIGSIZE[1] * nrows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def _png_base64(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plain(text: Any, limit: int = 28) -> str:
    """User text for a plot: shortened to ``limit`` characters, '$' kept from starting mathtext."""
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _legend_on_top(fig: Figure, *axes: Axes) -> None:
    """One legend for the whole figure (the entries of ``axes``), above the plots."""
    entries = [ax.get_legend_handles_labels() for ax in axes]
    handles = [h for hs, _ in entries for h in hs]
    labels = [label for _, ls in entries for label in ls]
    fig.legend(
        handles, labels, loc="outside upper center", ncols=3, fontsize="small", frameon=False
    )


def _histogram(hist: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(edges, counts) of a {"edges", "counts"} histogram, or None when empty or malformed."""
    if not hist:
        return None
    edges = np.asarray(hist.get("edges") or [], dtype=float)
    counts = np.asarray(hist.get("counts") or [], dtype=float)
    if counts.size == 0 or edges.size != counts.size + 1 or counts.sum() <= 0:
        return None
    return edges, counts


def _density(edges: np.ndarray, counts: np.ndarray) -> np.ndarray:
    widths = np.diff(edges)
    return counts / (counts.sum() * np.where(widths > 0, widths, 1.0))


def _bars(ax: Axes, edges: np.ndarray, heights: np.ndarray, label: str | None = None) -> None:
    ax.bar(
        edges[:-1],
        heights,
        width=np.diff(edges),
        align="edge",
        color=CURRENT_COLOR,
        alpha=0.8,
        edgecolor="white",
        linewidth=0.5,
        label=label,
    )


def _score_figure(summary: dict[str, Any]) -> str:
    scores = summary.get("scores") or {}
    prev_scores = _previous(summary).get("scores") or {}
    hists = {col: h for col, s in scores.items() if (h := _histogram((s or {}).get("histogram")))}
    prev_hists = {
        col: h for col in hists if (h := _histogram((prev_scores.get(col) or {}).get("histogram")))
    }
    caption = "Score distribution per score column."
    if not hists:
        return _figure_html(
            "score-histogram", caption + " No score histogram was recorded.", "", None
        )
    ncols = min(len(hists), 3)
    nrows = -(-len(hists) // ncols)
    fig, axes = _new_figure(nrows, ncols)
    for ax, (col, (edges, counts)) in zip(axes, hists.items(), strict=False):
        prev = prev_hists.get(col)
        _bars(ax, edges, _density(edges, counts) if prev else counts, "this run")
        if prev:
            ax.stairs(
                _density(*prev), prev[0], color=PREVIOUS_COLOR, linewidth=1.5, label="previous run"
            )
            legend_ax = ax
        ax.set_title(_plain(col), fontsize="medium")
        ax.set_xlabel("score")
        ax.set_ylabel("density" if prev else "rows")
    for ax in axes[len(hists) :]:
        ax.set_visible(False)
    if prev_hists:
        _legend_on_top(fig, legend_ax)
        caption += (
            " Bars: this run; step line: the previous run. Both normalised to density so"
            " runs of different sizes compare."
        )
    return _figure_html("score-histogram", caption, "histogram of scores", fig)


def _label_figure(summary: dict[str, Any]) -> str:
    labels = summary.get("labels")
    if not labels:
        task = summary.get("task") or "this"
        caption = f"No labels for this task ({_esc(task)} runs do not predict labels)."
        return _figure_html("label-distribution", caption, "", None)
    prev = _previous(summary).get("labels") or {}
    names = list(labels) + [n for n in prev if n not in labels]
    counts = np.array([labels.get(n, 0) for n in names], dtype=float)
    fractions = counts / max(counts.sum(), 1.0)
    fig, (ax,) = _new_figure()
    x = np.arange(len(names))
    if prev:
        prev_counts = np.array([prev.get(n, 0) for n in names], dtype=float)
        prev_fractions = prev_counts / max(prev_counts.sum(), 1.0)
        width = 0.4
        cur = ax.bar(x - width / 2, fractions, width, color=CURRENT_COLOR, label="this run")
        old = ax.bar(
            x + width / 2, prev_fractions, width, color=PREVIOUS_COLOR, label="previous run"
        )
        for bars, fr in ((cur, fractions), (old, prev_fractions)):
            ax.bar_label(bars, labels=[f"{f:.1%}" for f in fr], fontsize="x-small", padding=2)
        ax.set_ylabel("fraction of rows")
        _legend_on_top(fig, ax)
        caption = "Predicted label fractions, this run beside the previous run."
    else:
        bars = ax.bar(x, counts, color=CURRENT_COLOR)
        ax.bar_label(bars, labels=[f"{f:.1%}" for f in fractions], fontsize="small", padding=2)
        ax.set_ylabel("rows")
        caption = "Rows per predicted label; the annotation is the fraction of rows."
    ax.margins(y=0.15)
    long_names = len(names) > 6 or max(len(str(n)) for n in names) > 14
    ax.set_xticks(
        x,
        [_plain(n) for n in names],
        rotation=25 if long_names else 0,
        ha="right" if long_names else "center",
        fontsize="small",
    )
    return _figure_html("label-distribution", caption, "distribution of predicted labels", fig)


def _mining_section(mining: dict[str, Any] | None) -> list[str]:
    """task mine: the summary's counts (queries without a positive or short of negatives, the
    candidates each filter dropped) and where the mined rows are."""
    if not mining:
        return []
    from crossenc.job.summary import mining_lines

    rows = [[_esc(name), _esc(str(value))] for name, value in mining_lines(mining)]
    return ["<h2>Training data (task mine)</h2>", _table(["", "count"], rows, "mining", text=2)]


def _evaluation_section(evaluation: dict[str, Any] | None) -> list[str]:
    """task evaluate: the leaderboard (with 95% intervals), the per-query metric distributions
    of a ranking, the confusion matrix and the calibration of a classifier."""
    if not evaluation:
        return []
    from crossenc.job.evaluation import difference_line, intervals

    rows = evaluation.get("leaderboard") or []
    header = list(rows[0]) if rows else []

    def cell(column: str, value: Any, ci: dict[str, Any]) -> str:
        bounds = ci.get(column)
        if isinstance(value, float) and bounds:
            return f"{_fmt(value)} [{_fmt(bounds[0])}, {_fmt(bounds[1])}]"
        return _esc(_fmt(value))

    cis = intervals(evaluation)
    board = [[cell(c, r.get(c), ci) for c in header] for r, ci in zip(rows, cis, strict=True)]
    said = f"{evaluation['kind']} against <code>{_esc(evaluation['gold'])}</code>: " + (
        f"{evaluation['rows']:,} rows"
        + (f", {evaluation['queries']:,} queries" if "queries" in evaluation else "")
    )
    out = ["<h2>Evaluation</h2>", f"<p>{said}</p>", _table(header, board, "leaderboard")]
    out += [f"<p>{_esc(difference_line(c))}</p>" for c in evaluation.get("compared") or []]
    out.append(_distribution_figure(evaluation))
    if evaluation.get("confusion"):
        labels = [_esc(n) for n in evaluation["confusion"]["labels"]]
        matrix = evaluation["confusion"]["matrix"]
        body = [
            [f"gold {n}", *(str(v) for v in row)] for n, row in zip(labels, matrix, strict=True)
        ]
        out.append(_table(["", *(f"predicted {n}" for n in labels)], body, "confusion"))
    out.append(_calibration_figure(evaluation.get("calibration")))
    return [o for o in out if o]


def _distribution_figure(evaluation: dict[str, Any]) -> str:
    dist = evaluation.get("distribution")
    if not dist:
        return ""
    edges = np.asarray(dist["edges"])
    names = [n for n in dist if n != "edges"]
    fig, axes = _new_figure(1, len(names))
    for ax, name in zip(axes, names, strict=True):
        _bars(ax, edges, np.asarray(dist[name], dtype=float))
        ax.set_xlabel(name)
    axes[0].set_ylabel("queries")
    caption = "Per-query metrics: how many queries reach each value (tenths of 0 to 1)."
    return _figure_html("per-query", caption, "histograms of per-query metrics", fig)


def _calibration_figure(curve: dict[str, Any] | None) -> str:
    if not curve:
        return ""
    fig, (ax,) = _new_figure()
    ax.plot(curve["mean_score"], curve["positive_rate"], marker="o", color=CURRENT_COLOR)
    low = min(0.0, *curve["mean_score"])
    high = max(1.0, *curve["mean_score"])
    ax.plot([low, high], [low, high], linestyle="--", color="0.5", linewidth=1)
    ax.set_xlabel("mean score (per score decile)")
    ax.set_ylabel("share of gold positives")
    caption = "Calibration: per score decile, the share of gold positives against the mean score."
    return _figure_html("calibration", caption, "reliability curve", fig)


def _throughput_figure(summary: dict[str, Any]) -> str:
    samples = [
        (float(p["t"]), float(p["rows"]))
        for p in summary.get("throughput") or []
        if p.get("t") is not None and p.get("rows") is not None
    ]
    t, rows = _rate_grid(samples)
    if len(t) < 3:  # fewer than two intervals is no time series
        return _overall_rate_figure(summary.get("rows_per_second"), t, rows)
    rates = np.diff(rows) / np.diff(t)
    fig, (ax,) = _new_figure()
    ax.stairs(rates, t, color=CURRENT_COLOR, fill=True, alpha=0.3)
    ax.stairs(rates, t, color=CURRENT_COLOR, linewidth=1.5, label="rows / s")
    overall = summary.get("rows_per_second")
    if overall is not None:
        ax.axhline(
            overall, color="0.3", linestyle="--", linewidth=1, label=f"whole run {overall:,.1f}"
        )
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("rows / s", color=CURRENT_COLOR)
    ax.set_ylim(bottom=0)
    cum = ax.twinx()
    cum.plot(
        t,
        rows,
        color=PREVIOUS_COLOR,
        marker="o",
        markersize=3,
        linewidth=1.2,
        label="cumulative rows",
    )
    cum.set_ylabel("cumulative rows", color=PREVIOUS_COLOR)
    cum.set_ylim(bottom=0)
    _legend_on_top(fig, ax, cum)
    caption = (
        f"Scoring rate over {len(rates)} intervals (steps, left axis; dashed: the whole"
        f" run's rate) and cumulative rows (line, right axis), from {len(samples)} samples."
    )
    return _figure_html("throughput", caption, "rows per second over time", fig)


def _rate_grid(samples: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Times and cumulative rows to take rates between: from the start (t=0, 0 rows), samples at
    the same instant merged, many samples resampled to equal intervals (a rate over a few
    milliseconds between two blocks that finished together says little)."""
    points = sorted(samples)
    if points and points[0][0] > 0:
        points.insert(0, (0.0, 0.0))  # t is seconds since the start, rows are cumulative
    if not points:
        return np.empty(0), np.empty(0)
    t, rows = (np.array(v) for v in zip(*points, strict=True))
    keep = np.append(np.diff(t) > 0, True)  # the last sample of each instant
    t, rows = t[keep], rows[keep]
    if len(t) > MAX_RATE_INTERVALS + 1:
        grid = np.linspace(t[0], t[-1], MAX_RATE_INTERVALS + 1)
        t, rows = grid, np.interp(grid, t, rows)
    return t, rows


def _overall_rate_figure(overall: float | None, t: np.ndarray, rows: np.ndarray) -> str:
    """A single bar of the whole run's rate, for runs with too few samples for a time series."""
    if overall is None and len(t) > 1 and t[-1] > t[0]:
        overall = (rows[-1] - rows[0]) / (t[-1] - t[0])
    if overall is None:
        return _figure_html("throughput", "No throughput samples were recorded.", "", None)
    fig, (ax,) = _new_figure()
    bars = ax.bar([0], [overall], width=0.5, color=CURRENT_COLOR)
    ax.bar_label(bars, labels=[f"{overall:,.1f} rows/s"], padding=2)
    ax.set_xticks([0], ["whole run"])
    ax.set_xlim(-1, 1)
    ax.margins(y=0.15)
    ax.set_ylabel("rows / s")
    caption = "Too few throughput samples for a time series; the bar is the overall rate."
    return _figure_html("throughput", caption, "overall scoring rate", fig)


def _token_figure(token_lengths: dict[str, Any] | None) -> str:
    hist = _histogram(token_lengths)
    if hist is None:
        return _figure_html("token-lengths", "No token lengths were recorded.", "", None)
    fig, (ax,) = _new_figure()
    _bars(ax, *hist)
    ax.set_xlabel("tokens per pair")
    ax.set_ylabel("rows")
    caption = "Tokens per (query, passage) pair as fed to the model."
    return _figure_html("token-lengths", caption, "histogram of token lengths", fig)
