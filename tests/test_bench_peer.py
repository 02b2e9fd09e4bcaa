"""bench.peer's figures from fake contender outputs (no peer environment needed): scores read
from a script's Parquet file and a crossenc output folder, joined by pair, fidelity and ratios;
and which crossenc contenders the installed config accepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.peer import (
    BASELINE,
    REFERENCE,
    crossenc_contenders,
    guarded,
    onnx_quantization_config,
    read_scores,
    size_result,
    where_the_time_went,
)


def _write(path: Path, doc_ids: list[str], scores: np.ndarray, parts: int = 1) -> None:
    table = pa.table({"qid": np.arange(len(doc_ids)) // 10, "doc_id": doc_ids, "score": scores})
    if parts == 1:
        pq.write_table(table, path)
        return
    path.mkdir()
    for i, chunk in enumerate(np.array_split(np.arange(len(doc_ids)), parts)):
        pq.write_table(table.take(pa.array(chunk)), path / f"part-{i}.parquet")
    (path / "_SUCCESS").write_text("")  # not Parquet: left out by the reader


def test_size_result_joins_by_pair_and_reports_ratios_and_fidelity(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = [f"d{i}" for i in range(200)]
    ref = rng.random(200).astype(np.float32)
    _write(tmp_path / "ref.parquet", ids, ref)
    # crossenc: the same pairs in another order, over 3 files, scores off by at most 1e-3
    order = rng.permutation(200)
    noise = rng.uniform(-1e-3, 1e-3, 200).astype(np.float32)
    _write(tmp_path / "ce", [ids[i] for i in order], ref[order] + noise[order], parts=3)
    # an int8 peer: a monotone transform of the reference (same ranking), one pair missing
    _write(tmp_path / "ov.parquet", ids[:-1], ref[:-1] * 0.5)

    scores = {
        REFERENCE: read_scores(tmp_path / "ref.parquet"),
        "crossenc_default": read_scores(tmp_path / "ce"),
        BASELINE: read_scores(tmp_path / "ov.parquet"),
    }
    times = {REFERENCE: [10.0, 12.0, 11.0], "crossenc_default": [5.0, 5.5], BASELINE: [8.0]}
    out = size_result(times, scores, pairs=200, cores=2)

    assert out["wall_seconds_median"] == {REFERENCE: 11.0, "crossenc_default": 5.25, BASELINE: 8.0}
    assert out[f"ratio_to_{REFERENCE}"]["crossenc_default"] == round(11.0 / 5.25, 2)
    assert out[f"ratio_to_{BASELINE}"] == {
        REFERENCE: round(8 / 11, 2),
        "crossenc_default": round(8 / 5.25, 2),
        BASELINE: 1.0,
    }
    assert out["pairs_per_s_per_core"][BASELINE] == 12.5
    fid = out[f"fidelity_to_{REFERENCE}"]
    assert set(fid) == {"crossenc_default", BASELINE}
    ce = fid["crossenc_default"]
    assert ce["pairs_joined"] == 200 and ce["pairs_missing"] == 0
    assert ce["max_abs_diff"] == pytest.approx(np.abs(noise).max(), abs=1e-6)
    assert ce["spearman"] > 0.999
    ov = fid[BASELINE]
    assert ov["spearman"] == 1.0 and ov["pairs_joined"] == 199 and ov["pairs_missing"] == 1


def test_no_baseline_no_ratio_to_it() -> None:
    scores = {REFERENCE: {"d0": 0.1, "d1": 0.2, "d2": 0.3}}
    out = size_result({REFERENCE: [4.0]}, scores, pairs=3, cores=1)
    assert out[f"ratio_to_{BASELINE}"] is None
    assert out[f"fidelity_to_{REFERENCE}"] == {}


def test_onnx_quantization_config_follows_the_cpu_flags() -> None:
    assert onnx_quantization_config({"avx2", "avx512f", "avx512_vnni"}) == "avx512_vnni"
    assert onnx_quantization_config({"avx2", "avx512f"}) == "avx512"
    assert onnx_quantization_config({"avx2"}) == "avx2"
    assert onnx_quantization_config({"fp", "asimd"}) == "arm64"


def test_crossenc_contenders_are_the_ones_its_config_accepts(tmp_path: Path) -> None:
    from typing import get_args

    from crossenc.config import ModelConfig

    accepted, rejected = crossenc_contenders(tmp_path / "model", tmp_path / "cache")
    assert accepted["crossenc_default"] == [f"runtime.cache_dir={tmp_path / 'cache'}"]
    assert accepted["crossenc_onnx_int8"][:2] == ["model.backend=onnx", "model.quantize=int8"]
    openvino = "openvino" in get_args(ModelConfig.model_fields["backend"].annotation)
    assert ("crossenc_openvino" in accepted) == openvino
    if not openvino:
        assert "model.backend=openvino" in rejected["crossenc_openvino"]


def test_where_a_crossenc_run_spent_its_time_is_kept_from_its_summary(tmp_path: Path) -> None:
    import json

    summary = {
        "wall_seconds": 144.6,
        "phases": {"inspect": 4.2, "gate": 34.1, "score": 95.0, "commit": 0.1},
        "gate": {"seconds": 34.1, "spearman": 0.9936, "passed": True},
        "replicas": [
            {
                "replica": "r0",
                "busy_seconds": 80.0,
                "load_seconds": 1.2,
                "rows": 20000,
                "rows_per_second": 250.0,
                "utilization": 0.84,
                "runs": "openvino cpu int8",
            }
        ],
        "rows": {"written": 20000},
    }
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "_summary.json").write_text(json.dumps(summary))
    got = where_the_time_went(tmp_path / "run")
    assert got == {
        "wall_seconds": 144.6,
        "phases": summary["phases"],
        "gate_seconds": 34.1,
        "replicas": [
            {
                "busy_seconds": 80.0,
                "load_seconds": 1.2,
                "rows_per_second": 250.0,
                "utilization": 0.84,
            }
        ],
    }
    assert where_the_time_went(tmp_path / "missing") is None


def test_a_contender_that_fails_a_timed_run_is_recorded_not_run_again() -> None:
    """A gate that refuses a contender (exit 2) skips it with the reason; the benchmark goes on,
    but the user's script failing still ends it."""
    calls: list[str] = []

    def run(name: str) -> float:
        calls.append(name)
        if name != "crossenc_openvino_int8":
            return 1.0
        raise RuntimeError("crossenc score exited 2:\nquality gate: spearman 0.98 < 0.99")

    failed: dict[str, str] = {}
    timed = guarded(run, failed)
    names = [REFERENCE, "crossenc_openvino_int8", BASELINE]
    seconds = [timed(n) for _ in range(2) for n in names]
    assert seconds[0] == 1.0 and np.isnan(seconds[1]) and np.isnan(seconds[4])
    assert calls.count("crossenc_openvino_int8") == 1  # not run again after it failed
    assert failed == {
        "crossenc_openvino_int8": "crossenc score exited 2:\nquality gate: spearman 0.98 < 0.99"
    }

    def script_fails(name: str) -> float:
        raise RuntimeError("the script broke")

    with pytest.raises(RuntimeError, match="the script broke"):
        guarded(script_fails, {})(REFERENCE)
