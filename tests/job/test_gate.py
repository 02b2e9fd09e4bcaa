"""The quality gate: a path faster than float32 is compared with it on a sample of the job's
pairs before scoring; its figures reach the summary and manifest, a missed bar fails the run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from crossenc.errors import EXIT_CONFIG, explain
from crossenc.inputs.plan import plan_job
from crossenc.job.gate import (
    QualityGateError,
    check_quality,
    failures,
    fast_path,
    figures,
    gate,
    spearman,
    top_overlap,
)
from tests.helpers import job_config


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, 300).astype(float)  # many ties
    y = x + rng.normal(0, 3, 300)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(np.ones(5), np.ones(5)) == 1.0


def test_top_overlap_counts_each_groups_top_ten():
    groups = np.repeat([0, 1], [12, 4])
    ref = np.r_[np.arange(12.0), np.arange(4.0)]
    fast = ref.copy()
    assert top_overlap(ref, fast, groups) == 1.0
    fast[:2], fast[10:12] = [10.5, 11.5], [0.0, 1.0]  # group 0: two of its top 10 swapped out
    assert top_overlap(ref, fast, groups) == pytest.approx((8 / 10 + 1.0) / 2)


def test_figures_and_failures_name_the_figure_and_the_bar(models, pairs_dir, tmp_path):
    cfg = job_config(
        pairs_dir,
        tmp_path / "out",
        models[("bert", 3)],
        task="classify",
        quality_gate={"min_spearman": 0.999, "max_abs_diff": 0.01},
    )
    ref = np.random.default_rng(1).normal(size=(200, 3))
    fast = ref.copy()
    fast[:2] = np.roll(fast[:2], 1, axis=1)  # two pairs change label
    found = figures(cfg, ref, fast, None)
    assert found["pairs"] == 200 and found["label_agreement"] <= 0.99
    said = failures(cfg, found)
    assert any(
        s.startswith("label_agreement ") and "quality_gate.min_label_agreement 0.995" in s
        for s in said
    )
    assert any("quality_gate.max_abs_diff 0.01" in s for s in said)


def test_which_paths_are_checked(models, pairs_dir, tmp_path):
    folder = models[("bert", 1)]

    def path(**model):
        model = {"backend": "torch", **model}
        return fast_path(job_config(pairs_dir, tmp_path / "o", folder, model=model))

    assert path() is None  # float32
    assert path(backend="onnx") is None
    assert path(backend="onnx", quantize="int8") == "onnx int8"
    assert path(backend="openvino", quantize="int8") == "openvino int8"
    assert path(dtype="bfloat16") == "torch bfloat16 on CPU"
    assert path(backend="openvino", dtype="bfloat16") == "openvino bfloat16 on CPU"


def test_gate_passes_a_good_path_and_fails_a_bar_set_above_it(models, pairs_dir, tmp_path):
    """openvino int8 on a tiny BERT (calibrated on the job's pairs): the figures it reaches pass
    bars below them and fail a Spearman bar above them, naming both; nothing else ran."""
    folder = models[("bert", 1)]
    runtime = {"cache_dir": str(tmp_path / "cache")}
    model = {"backend": "openvino", "quantize": "int8", "calibration_sample": 40}
    good = job_config(
        pairs_dir,
        tmp_path / "out",
        folder,
        task="rerank",
        model=model,
        runtime=runtime,
        quality_gate={"sample": 120, "min_spearman": 0.9},
    )
    plan, entry = gate(good, plan_job(good))
    assert len(plan.info.calibration) == 40
    assert entry is not None and entry["passed"]
    assert entry["path"] == "openvino cpu int8" and entry["reference"].startswith(
        "torch cpu float32"
    )
    assert entry["pairs"] == 120 and entry["groups"] == 12  # whole groups of 10
    assert 0.9 <= entry["spearman"] < 1.0 and entry["max_abs_diff"] > 0
    assert 0 < entry["top10_overlap"] <= 1 and entry["calibration_pairs"] == 40
    assert entry["seconds"] > 0

    strict = good.model_copy(
        update={"quality_gate": good.quality_gate.model_copy(update={"min_spearman": 0.99999})}
    )
    with pytest.raises(QualityGateError) as caught:
        check_quality(strict, plan)
    message = str(caught.value)
    assert f"spearman {entry['spearman']} < quality_gate.min_spearman 0.99999" in message
    assert explain(caught.value)[0] == EXIT_CONFIG
    assert len(list((tmp_path / "cache").glob("openvino/*/model.xml"))) == 1  # one export


def test_a_float32_path_is_not_checked(models, pairs_dir, tmp_path):
    cfg = job_config(pairs_dir, tmp_path / "out", models[("bert", 1)])
    plan = plan_job(cfg)
    assert gate(cfg, plan) == (plan, None)


@pytest.mark.slow
def test_the_gates_figures_reach_the_summary_and_manifest(ray_local, models, pairs_dir, tmp_path):
    from crossenc.job.run_job import run_job
    from crossenc.output.commit import MANIFEST

    cache = tmp_path / "cache"
    cfg = job_config(
        pairs_dir,
        tmp_path / "out",
        models[("bert", 1)],
        model={"backend": "openvino", "quantize": "int8", "calibration_sample": 40},
        runtime={"cache_dir": str(cache)},
        quality_gate={"sample": 100, "min_spearman": 0.9},
    )
    result = run_job(cfg)
    entry = result.summary["gate"]
    assert entry["passed"] and entry["pairs"] == 100 and entry["spearman"] >= 0.9
    assert result.summary["phases"]["gate"] == entry["seconds"]
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["summary"]["gate"] == entry
    assert manifest["stack"]["openvino"] and manifest["stack"]["nncf"]
    # the driver's check and the replica ran one model: one export, one calibration
    assert len(list(cache.glob("openvino/*/model.xml"))) == 1
    assert result.summary["replicas"][0]["runs"] == "openvino cpu int8"
