"""Run summary, drift check and exit codes: merged metrics against the committed output."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from crossenc.cli import EXIT_CONFIG, EXIT_DRIFT, EXIT_OK, EXIT_PARTIAL, main
from crossenc.job.summary import build_summary, label_tvd, score_ks
from crossenc.metrics import (
    MERGED_SAMPLE,
    QUANTILES,
    SAMPLE,
    TIMELINE_POINTS,
    RunMetrics,
    metric_columns,
    part_metrics,
)
from crossenc.models.tokenize import ERROR
from crossenc.output.commit import MANIFEST, SUMMARY
from tests.helpers import job_config, read_input, read_output


def _scored_block(
    scores: np.ndarray, labels: list[str], bad: set[int], load: float = 0.0, oom: int = 0
) -> pa.Table:
    n = len(scores)
    valid = np.array([i not in bad for i in range(n)])
    table = pa.table(
        {
            ERROR: pa.array([("empty_text:passage" if i in bad else None) for i in range(n)]),
            "score": pa.array(scores, mask=~valid),
            "label": pa.array(labels, mask=~valid),
            "truncated": pa.array([i % 7 == 0 for i in range(n)]),
        }
    )
    tokens = np.where(valid, np.arange(n) % 50 + 5, 0)
    cols = metric_columns(
        "node:1", 2.0, tokens, int(tokens.sum() * 1.25), valid, load, "torch cpu float32 sdpa", oom
    )
    for name, col in cols.items():
        table = table.append_column(name, col)
    return table


def test_part_metrics_merge_to_exact_counts_and_quantiles():
    rng = np.random.default_rng(0)
    blocks, everything = [], []
    for size, load in ((300, 1.5), (500, 0.0), (200, 0.0)):  # the model load, on block one
        scores = rng.normal(size=size).astype(np.float32)  # as scores are
        labels = [("yes" if s > 0.5 else "no") for s in scores]
        bad = {0, 3, 17}  # row 0 dead-lettered: the load lands on the first scored row
        oom = 3 if size == 500 else 0  # one block's batches ran out of memory three times
        blocks.append(_scored_block(scores, labels, bad, load, oom))
        everything.append(np.delete(scores, sorted(bad)))
    records = [part_metrics(b) for b in blocks]
    metrics = RunMetrics()
    for record, block in zip(records, blocks, strict=True):
        metrics.add(record, block.num_rows, mine=True)
    summary = build_summary(
        metrics,
        run_id="r",
        task="classify",
        model="m",
        started=records[0]["t"] - 1,
        wall_seconds=4.0,
        rows={"read": 1000, "scored": 1000, "written": 991, "dead_lettered": 9},
        files={"input": 3, "skipped": 0, "written": 3},
    )
    scores = np.concatenate(everything)
    stats = summary["scores"]["score"]
    assert stats["count"] == len(scores) == 991
    assert stats["mean"] == pytest.approx(scores.mean())
    assert (stats["min"], stats["max"]) == (scores.min(), scores.max())
    # every part is smaller than the per-part sample: the quantiles are exact (Hazen's rule)
    want = np.quantile(scores, np.array(QUANTILES) / 100, method="hazen")
    got = [stats["quantiles"][f"p{q}"] for q in QUANTILES]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert sum(stats["histogram"]["counts"]) == pytest.approx(991)
    assert summary["labels"] == {"no": int((scores <= 0.5).sum()), "yes": int((scores > 0.5).sum())}
    (replica,) = summary["replicas"]
    assert replica["rows"] == 991 and replica["busy_seconds"] == pytest.approx(6.0)
    assert replica["load_seconds"] == pytest.approx(1.5)
    assert replica["oom_splits"] == 3
    assert replica["runs"] == "torch cpu float32 sdpa"
    assert summary["padding_efficiency"] == pytest.approx(0.8)
    assert sum(summary["token_lengths"]["counts"]) == 991
    assert summary["rows"]["truncated"] == sum(
        int(pc.sum(b.filter(pc.is_null(b.column(ERROR))).column("truncated")).as_py())
        for b in blocks
    )
    assert [p["rows"] for p in summary["throughput"]] == [300, 800, 1000]


def test_part_sample_is_bounded_and_quantiles_stay_close():
    rng = np.random.default_rng(1)
    scores = rng.uniform(size=50_000)
    block = _scored_block(scores, ["a"] * len(scores), set())
    record = part_metrics(block)
    assert len(record["scores"]["score"]["sample"]) == SAMPLE
    metrics = RunMetrics()
    for _ in range(1000):  # a thousand such parts: the merged sample stays bounded
        metrics.add(record, 50_000, mine=True)
    assert metrics.scores["score"].kept <= MERGED_SAMPLE
    summary = build_summary(
        metrics,
        run_id="r",
        task="score",
        model="m",
        started=0.0,
        wall_seconds=1.0,
        rows={"read": 50_000_000, "scored": 50_000_000},
        files={},
    )
    stats = summary["scores"]["score"]
    assert stats["count"] == 50_000_000
    assert abs(stats["quantiles"]["p50"] - 0.5) < 0.06  # a 512-value sample of U(0, 1)
    assert len(summary["throughput"]) <= TIMELINE_POINTS
    assert summary["labels"] is None  # not a classify run


def test_drift_distances():
    assert label_tvd({"a": 50, "b": 50}, {"a": 5, "b": 5}) == 0
    assert label_tvd({"a": 10}, {"b": 3}) == 1
    assert label_tvd({"a": 30, "b": 70}, {"a": 50, "b": 50}) == pytest.approx(0.2)
    base = {"percentiles": list(np.linspace(0, 1, 101))}
    assert score_ks(base, base) == 0
    shifted = {"percentiles": list(np.linspace(0.3, 1.3, 101))}
    assert score_ks(shifted, base) == pytest.approx(0.3, abs=0.011)


def _write_config(tmp_path, name: str, data: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _shorten_passages(src, dest) -> None:
    """The same pairs with every passage cut to its first three words: a shifted input."""
    dest.mkdir()
    for path in sorted(src.glob("*.parquet")):
        table = pq.read_table(path)
        short = [" ".join(p.split()[:3]) for p in table.column("passage").to_pylist()]
        index = table.column_names.index("passage")
        pq.write_table(table.set_column(index, "passage", pa.array(short)), dest / path.name)


class _Figures(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.figures: list[str] = []
        self.images = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.figures.append(attrs.get("id", ""))
        if tag == "img" and attrs.get("src", "").startswith("data:image/png;base64,"):
            self.images += 1


@pytest.mark.slow
def test_nightly_labelling_summary_report_and_drift(ray_local, models, pairs_dir, tmp_path):
    model = models[("bert", 3)]
    base = job_config(
        pairs_dir, tmp_path / "night1", model, task="classify", model={"activation": "softmax"}
    )
    data = base.model_dump(mode="json")
    data["output"]["report"] = str(tmp_path / "night1.html")
    assert main(["score", "--config", _write_config(tmp_path, "night1", data)]) == EXIT_OK

    out = read_output(tmp_path / "night1")
    summary = json.loads((tmp_path / "night1" / SUMMARY).read_text())
    manifest = json.loads((tmp_path / "night1" / MANIFEST).read_text())
    # The manifest's copy is written before the commit ends: its commit phase is not known yet.
    final = ("phases", "wall_seconds")
    assert {k: v for k, v in manifest["summary"].items() if k not in final} == {
        k: v for k, v in summary.items() if k not in final
    }
    assert manifest["summary"]["phases"]["commit"] is None
    phases = summary["phases"]
    assert set(phases) == {"inspect", "score", "commit", "cleanup"}
    assert all(v >= 0 for v in phases.values())
    assert phases["inspect"] + phases["score"] + phases["commit"] <= summary["wall_seconds"] + 0.01
    rows = read_input(pairs_dir).num_rows
    assert summary["rows"] == {
        "read": rows,
        "scored": rows,
        "written": rows,
        "dead_lettered": 0,
        "dropped_top_k": 0,
        "resumed": 0,
        "truncated": int(pc.sum(out.column("truncated")).as_py()),
    }
    labels = out.column("label").to_pylist()
    assert summary["labels"] == {k: labels.count(k) for k in sorted(set(labels))}
    for col in ("score_contradiction", "score_entailment", "score_neutral"):
        values = out.column(col).to_numpy()
        want = np.quantile(values, np.array(QUANTILES) / 100, method="hazen")
        got = [summary["scores"][col]["quantiles"][f"p{q}"] for q in QUANTILES]
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert sum(r["rows"] for r in summary["replicas"]) == rows
    # each replica reports its model load, once, and it fits in the run
    assert all(0 < r["load_seconds"] < summary["wall_seconds"] for r in summary["replicas"])
    assert {r["runs"] for r in summary["replicas"]} == {"onnx cpu float32"}  # job_model's
    assert all(r["oom_splits"] == 0 for r in summary["replicas"])
    assert 0 < summary["padding_efficiency"] <= 1
    assert summary["throughput"][-1]["rows"] == rows
    assert summary["drift"] is None
    page = _Figures()
    page.feed((tmp_path / "night1.html").read_text())
    assert {"score-histogram", "label-distribution", "throughput", "token-lengths"} <= set(
        page.figures
    )
    assert page.images >= 4

    # The next night on the same input: compared with night 1 and silent.
    data["output"] |= {"path": str(tmp_path / "night2"), "compare_to": str(tmp_path / "night1")}
    data["output"]["report"] = None
    assert main(["score", "--config", _write_config(tmp_path, "night2", data)]) == EXIT_OK
    drift = json.loads((tmp_path / "night2" / SUMMARY).read_text())["drift"]
    assert drift["drifted"] is False and drift["label_tvd"] == 0
    assert drift["previous_run_id"] == summary["run_id"]
    assert set(drift["score_ks"].values()) == {0.0}

    # A night whose passages were cut short upstream: the label shares move, the run fails.
    _shorten_passages(pairs_dir, tmp_path / "shifted")
    data["input"]["path"] = str(tmp_path / "shifted")
    data["output"]["path"] = str(tmp_path / "night3")
    assert main(["score", "--config", _write_config(tmp_path, "night3", data)]) == EXIT_DRIFT
    drift = json.loads((tmp_path / "night3" / SUMMARY).read_text())["drift"]
    assert drift["drifted"] and drift["label_tvd"] > 0.1
    assert any("label distribution moved" in r for r in drift["reasons"])
    # on_drift: warn commits and exits 0, with the drift recorded
    data["output"] |= {"path": str(tmp_path / "night4"), "drift": {"on_drift": "warn"}}
    assert main(["score", "--config", _write_config(tmp_path, "night4", data)]) == EXIT_OK
    assert json.loads((tmp_path / "night4" / SUMMARY).read_text())["drift"]["drifted"]


def test_compare_to_without_a_committed_run_is_a_config_error(models, pairs_dir, tmp_path, capsys):
    cfg = job_config(pairs_dir, tmp_path / "out", models[("bert", 1)])
    data = cfg.model_dump(mode="json")
    data["output"]["compare_to"] = str(tmp_path / "nothing-here")
    path = _write_config(tmp_path, "c", data)
    assert main(["validate", "--config", path]) == EXIT_CONFIG
    assert "holds no committed crossenc run" in capsys.readouterr().err


@pytest.mark.slow
def test_dead_letters_above_the_allowed_fraction_exit_5(ray_local, models, tmp_path, capsys):
    table = pa.table(
        {
            "query": ["what is it"] * 10,
            "passage": ["a passage of words"] * 8 + ["", None],
        }
    )
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "part.parquet")
    cfg = job_config(tmp_path / "in", tmp_path / "out", models[("bert", 1)], input={"keep": []})
    data = cfg.model_dump(mode="json")
    assert main(["score", "--config", _write_config(tmp_path, "a", data)]) == EXIT_PARTIAL
    assert "2 of 10 rows dead-lettered" in capsys.readouterr().err
    data["output"] |= {"path": str(tmp_path / "out2"), "max_dead_letter_fraction": 0.2}
    assert main(["score", "--config", _write_config(tmp_path, "b", data)]) == EXIT_OK
    result = json.loads((tmp_path / "out2" / SUMMARY).read_text())
    assert result["rows"]["dead_lettered"] == 2 and result["rows"]["written"] == 8
