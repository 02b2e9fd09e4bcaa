"""The HTML run report: self-contained, every plot an embedded PNG, user strings escaped."""

from __future__ import annotations

import base64
import copy
import struct
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest

from crossenc.job.report import render_report, write_report
from crossenc.job.summary import summary_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL_LABEL = "<script>alert('x')</script>"
NLI = ["entailment", "neutral", EVIL_LABEL]
FIGURE_IDS = ("score-histogram", "label-distribution", "throughput", "token-lengths")


def _score_stats(rng: np.random.Generator, n: int, a: float, b: float) -> dict[str, Any]:
    values = rng.beta(a, b, size=n)
    counts, edges = np.histogram(values, bins=20, range=(0.0, 1.0))
    qs = (1, 5, 10, 25, 50, 75, 90, 95, 99)
    return {
        "count": n,
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "quantiles": {f"p{q}": float(np.quantile(values, q / 100)) for q in qs},
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def classify_summary() -> dict[str, Any]:
    """A 3-label classify run (one label name is hostile HTML) compared with a previous run."""
    rng = np.random.default_rng(0)
    scores = {f"score_{name}": _score_stats(rng, 990, 2 + i, 3) for i, name in enumerate(NLI)}
    previous = {f"score_{name}": _score_stats(rng, 800, 3, 2 + i) for i, name in enumerate(NLI)}
    for stats in previous.values():
        del stats["count"], stats["mean"], stats["min"], stats["max"]
    tokens, token_edges = np.histogram(rng.normal(90, 25, 990).clip(8, 256), bins=30)
    return {
        "run_id": "20261127T031500-ab12cd34",
        "task": "classify",
        "model": "cross-encoder/nli-deberta-v3-small",
        "started_at": "2026-11-27T03:15:00+00:00",
        "wall_seconds": 12.3,
        "rows": {
            "read": 1000,
            "scored": 1000,
            "written": 990,
            "dead_lettered": 10,
            "dropped_top_k": 0,
            "resumed": 0,
            "truncated": 3,
        },
        "files": {"input": 2, "skipped": 0, "written": 2},
        "rows_per_second": 81.3,
        "replicas": [
            {
                "replica": "10.0.0.5:4242",
                "runs": "torch cuda bfloat16 sdpa compiled",
                "rows": 520,
                "busy_seconds": 9.1,
                "rows_per_second": 57.1,
                "utilization": 0.74,
                "oom_splits": 1234,
            },
            {
                "replica": "10.0.0.6:4243",
                "rows": 480,
                "busy_seconds": 8.7,
                "rows_per_second": 55.2,
                "utilization": 0.71,
            },
        ],
        "padding_efficiency": 0.93,
        "scores": scores,
        "labels": dict(zip(NLI, [400, 300, 290], strict=True)),
        "token_lengths": {"edges": token_edges.tolist(), "counts": tokens.tolist()},
        "throughput": [
            {"t": 1.5 * (i + 1), "rows": min(1000, 128 * (i + 1) + 30 * (i % 3))} for i in range(8)
        ],
        "drift": {
            "compare_to": "s3://bucket/prev?x=1&y=<2>",
            "previous_run_id": "20261120T031500-ffee0011",
            "label_tvd": 0.31,
            "score_ks": {col: 0.05 + 0.1 * i for i, col in enumerate(scores)},
            "thresholds": {"max_label_tvd": 0.1, "max_score_ks": 0.1},
            "drifted": True,
            "reasons": ["label TVD 0.31 > 0.1", f"score KS score_{EVIL_LABEL} 0.25 > 0.1"],
            "previous": {
                "labels": dict(zip(NLI, [200, 300, 300], strict=True)),
                "scores": previous,
            },
        },
    }


def score_summary() -> dict[str, Any]:
    """A plain score run: no labels, no drift comparison, a single throughput sample."""
    summary = classify_summary()
    summary.update(
        task="score",
        run_id="20261128T090000-00c0ffee",
        scores={"score": summary["scores"]["score_entailment"]},
        labels=None,
        drift=None,
        throughput=[{"t": 4.0, "rows": 300}],
        rows_per_second=75.0,
    )
    return summary


class _Page(HTMLParser):
    """Every tag, the <img> and caption text of each <figure>, and the drift verdict's text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.figures: dict[str, dict[str, Any]] = {}
        self.verdict: str | None = None
        self._figure: str | None = None
        self._in: str | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "figure":
            self._figure = a["id"]
            self.figures[a["id"]] = {"imgs": [], "caption": ""}
        elif tag == "img" and self._figure:
            self.figures[self._figure]["imgs"].append(a)
        elif tag == "figcaption":
            self._in = "caption"
        elif a.get("id") == "drift-verdict":
            self._in = "verdict"
            self.verdict = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None
        if tag in ("figcaption", "p"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "caption" and self._figure:
            self.figures[self._figure]["caption"] += data
        elif self._in == "verdict":
            self.verdict += data


def _png(img: dict[str, str | None]) -> bytes:
    src = img["src"] or ""
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    return base64.b64decode(src[len(prefix) :], validate=True)


@pytest.fixture(scope="module")
def classify_page() -> str:
    return render_report(classify_summary())


def test_classify_report_embeds_every_plot_as_png(classify_page):
    page = _Page(classify_page)
    assert set(FIGURE_IDS) <= set(page.figures)
    for fig_id in FIGURE_IDS:
        (img,) = page.figures[fig_id]["imgs"]
        assert img["alt"]
        png = _png(img)
        assert png.startswith(PNG_SIGNATURE)
        assert len(png) > 5000, fig_id
        width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
        assert (width, height) == (700, 320), fig_id
    assert "previous run" in page.figures["score-histogram"]["caption"]
    assert "previous run" in page.figures["label-distribution"]["caption"]


def test_classify_report_shows_run_drift_and_escapes_user_data(classify_page):
    page = _Page(classify_page)
    assert page.verdict == "DRIFT"
    assert "20261127T031500-ab12cd34" in classify_page
    assert "20261120T031500-ffee0011" in classify_page  # previous run id
    assert "2026-11-27" in classify_page
    assert "<td>torch cuda bfloat16 sdpa compiled</td>" in classify_page  # what replicas run
    assert "out-of-memory splits" in classify_page and ">1,234</td>" in classify_page
    assert "1234 out-of-memory splits" in summary_table(classify_summary())  # the terminal's
    assert "script" not in page.tags
    assert "<script" not in classify_page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in classify_page
    assert "s3://bucket/prev?x=1&amp;y=&lt;2&gt;" in classify_page
    assert "http://" not in classify_page and "https://" not in classify_page
    assert not {"link", "iframe", "object"} & set(page.tags)
    # the previous run's quantiles sit beside this run's
    assert "score_entailment (previous)" in classify_page
    prev_p50 = classify_summary()["drift"]["previous"]["scores"]["score_neutral"]["quantiles"]
    assert f"{prev_p50['p50']:.4g}" in classify_page


def test_no_drift_verdict():
    summary = classify_summary()
    summary["drift"].update(drifted=False, reasons=[])
    assert _Page(render_report(summary)).verdict == "no drift"


def test_score_report_without_labels_or_drift():
    out = render_report(score_summary())
    page = _Page(out)
    assert set(FIGURE_IDS) <= set(page.figures)
    labels = page.figures["label-distribution"]
    assert labels["imgs"] == []
    assert "no labels for this task" in labels["caption"].lower()
    for fig_id in ("score-histogram", "throughput", "token-lengths"):
        (img,) = page.figures[fig_id]["imgs"]
        assert _png(img).startswith(PNG_SIGNATURE)
    assert "overall rate" in page.figures["throughput"]["caption"]
    assert "previous run" not in page.figures["score-histogram"]["caption"]
    assert page.verdict is None
    assert "20261128T090000-00c0ffee" in out


def test_degenerate_summary_still_renders():
    out = render_report({"run_id": "r1", "drift": None, "throughput": []})
    page = _Page(out)
    assert set(FIGURE_IDS) <= set(page.figures)
    assert all(not f["imgs"] for f in page.figures.values())


def test_write_report_writes_the_rendered_page(tmp_path, classify_page):
    path = tmp_path / "nested" / "dir" / "report.html"
    write_report(copy.deepcopy(classify_summary()), str(path))
    assert path.read_text(encoding="utf-8") == classify_page
