"""The OpenVINO backend: float32 scores as torch's, int8 calibrated on the pairs and close to
them, exports cached by hash, once per model, wrong combinations refused."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import spearmanr

from crossenc.config import ConfigError, ModelConfig, RuntimeConfig
from crossenc.engine import openvino_runner as ov_backend
from crossenc.engine.scoring import LocalScorer, ScoringEngine
from crossenc.models.describe import describe_model
from crossenc.testing import sample_sentences
from tests.helpers import export_cache

pytest.importorskip("openvino")
pytest.importorskip("nncf")


def _pairs(n: int = 40, seed: int = 3) -> list[tuple[str, str]]:
    a = sample_sentences(n, seed=seed, max_words=12)
    b = sample_sentences(n, seed=seed + 1, min_words=2, max_words=60)
    b[0] = " ".join(["berlin population"] * 150)  # past max_length: truncated
    return list(zip(a, b, strict=True))


def _scores(folder: str, runtime: RuntimeConfig, pairs, **options) -> tuple[np.ndarray, str]:
    scorer = LocalScorer(ModelConfig(name=folder, dtype="float32", **options), runtime)
    return scorer.predict(pairs), scorer.engine.runs


@pytest.mark.parametrize("outputs", [1, 3])
def test_openvino_float32_matches_torch_on_a_tiny_bert(models, tmp_path, outputs):
    folder = str(models[("bert", outputs)])
    runtime = RuntimeConfig(batch_tokens=512, cache_dir=str(tmp_path))  # many batch shapes
    pairs = _pairs()
    ref, _ = _scores(folder, runtime, pairs)
    got, runs = _scores(folder, runtime, pairs, backend="openvino")
    assert runs == "openvino cpu float32"
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert np.ptp(ref, axis=0).min() > 1e-3  # the scores differ: the comparison means something


def test_openvino_float32_matches_torch_on_minilm(minilm):
    runtime = RuntimeConfig(cache_dir=export_cache(minilm))  # the session's MiniLM exports
    pairs = _pairs(64)
    ref, _ = _scores(str(minilm), runtime, pairs)
    got, _ = _scores(str(minilm), runtime, pairs, backend="openvino")
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_int8_export_is_cached_once_per_model(models, tmp_path, monkeypatch):
    folder = str(models[("bert", 1)])
    runtime = RuntimeConfig(cache_dir=str(tmp_path))
    cfg = ModelConfig(name=folder, dtype="float32", backend="openvino", quantize="int8")
    calibration = _pairs(24, seed=9)
    first = LocalScorer(cfg, runtime, calibration=calibration)
    assert first.engine.runs == "openvino cpu int8"
    exported = list(tmp_path.glob("openvino/*/model.xml"))
    assert len(exported) == 1
    mtime = exported[0].stat().st_mtime_ns

    def no_convert(*args, **kwargs):
        raise AssertionError("a cached export must be reused")

    monkeypatch.setattr(ov_backend, "_convert", no_convert)
    scores = LocalScorer(cfg, runtime, calibration=calibration).predict(_pairs(5))
    assert exported[0].stat().st_mtime_ns == mtime and scores.shape == (5,)
    assert not list(tmp_path.glob("openvino/.*"))  # no temporary folders left behind
    # another night's pairs reuse the export; another calibration size or option does not
    info = describe_model(cfg, str(tmp_path))
    key = ov_backend.cache_key(cfg, replace(info, calibration=tuple(calibration)))
    night = ov_backend.cache_key(cfg, replace(info, calibration=tuple(_pairs(24))))
    bigger = ov_backend.cache_key(cfg.model_copy(update={"calibration_sample": 600}), info)
    plain = ov_backend.cache_key(cfg.model_copy(update={"quantize": "none"}), info)
    assert key == night and len({key, bigger, plain}) == 3


def _weight_is_float(op) -> bool:
    """Whether a MatMul's weight input is a float32 constant (not int8 weights dequantized)."""
    source = op.input_value(1).get_node()
    return (
        source.get_type_name() == "Constant" and source.get_element_type().get_type_name() == "f32"
    )


def test_int8_leaves_the_pruned_last_layer_in_float(models, tmp_path):
    """The pruned last layer's MatMuls (one row each, whatever the batch) stay float: they cost
    nothing and their error would go straight into the logits; every other MatMul with a
    weight is int8. Without the prune there is no such MatMul."""
    import openvino as ov

    from crossenc.engine.onnx_runner import float32_onnx

    folder = str(models[("bert", 1)])
    cfg = ModelConfig(name=folder, dtype="float32", backend="openvino", quantize="int8")
    info = replace(describe_model(cfg, str(tmp_path)), calibration=tuple(_pairs(24, seed=9)))
    float_model = ov.Core().read_model(str(float32_onnx(cfg, info, str(tmp_path))))
    one_row = ov_backend.one_row_matmuls(float_model)
    last = json.loads((models[("bert", 1)] / "config.json").read_text())["num_hidden_layers"] - 1
    layers = {name.split("/layer.")[1].split("/")[0] for name in one_row}
    assert len(one_row) == 6 and layers == {str(last)}  # query, scores, context, output, ffn x2
    int8 = ov.Core().read_model(str(ov_backend.ensure_openvino_model(cfg, info, str(tmp_path))))
    matmuls = {
        op.get_friendly_name(): op
        for op in int8.get_ordered_ops()
        if op.get_type_name() == "MatMul"
    }
    projections = [
        n
        for n in matmuls
        if "/dense" in n or any(f"/{name}/" in n for name in ("query", "key", "value"))
    ]
    kept = {n for n in projections if _weight_is_float(matmuls[n])}
    assert kept == {n for n in one_row if n in projections} and len(kept) == 4
    assert len(projections) - len(kept) > 4  # the other layers' projections are int8
    unpruned = cfg.model_copy(update={"prune_last_layer": False, "quantize": "none"})
    plain = ov.Core().read_model(str(float32_onnx(unpruned, info, str(tmp_path))))
    assert ov_backend.one_row_matmuls(plain) == []


@pytest.mark.slow
def test_minilm_int8_keeps_the_order_of_float32(minilm):
    """Static int8 on real MiniLM-L6 weights (a seeded head): scores move, their order stays.
    The scorer calibrates on a seeded sample of its first predict's pairs."""
    runtime = RuntimeConfig(cache_dir=export_cache(minilm))  # the session's MiniLM exports
    pairs = _pairs(300, seed=11)
    ref, _ = _scores(str(minilm), runtime, pairs, backend="openvino")
    cfg = ModelConfig(
        name=str(minilm),
        dtype="float32",
        backend="openvino",
        quantize="int8",
        calibration_sample=100,
    )
    scorer = LocalScorer(cfg, runtime)
    assert scorer.awaits_calibration
    got = scorer.predict(pairs)
    assert len(scorer.info.calibration) == 100
    assert scorer.engine.runs == "openvino cpu int8"
    assert not np.array_equal(got, ref)  # it did run in int8
    assert spearmanr(got, ref).statistic > 0.99


def test_int8_with_dtype_auto_runs_bf16_where_the_cpu_has_it(models, tmp_path):
    """dtype auto: float32 stays float32 everywhere; an int8 model's unquantized operations run
    in bf16 where OpenVINO reports BF16 (AVX-512 BF16, AMX), as OpenVINO's default would."""
    import openvino as ov

    int8 = ModelConfig(name="m", backend="openvino", quantize="int8")
    assert ov_backend.inference_precision(int8, ["FP32", "BF16", "INT8"]) == "bf16"
    assert ov_backend.inference_precision(int8, ["FP32", "INT8"]) == "f32"  # AVX2 only
    exact = int8.model_copy(update={"dtype": "float32"})
    assert ov_backend.inference_precision(exact, ["BF16"]) == "f32"
    assert (
        ov_backend.inference_precision(int8.model_copy(update={"quantize": "none"}), ["BF16"])
        == "f32"
    )
    cfg = int8.model_copy(update={"name": str(models[("bert", 1)])})
    scorer = LocalScorer(cfg, RuntimeConfig(cache_dir=str(tmp_path)), calibration=_pairs(20))
    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert scorer.engine.runs == ("openvino cpu int8 bfloat16" if bf16 else "openvino cpu int8")
    assert scorer.predict(_pairs(6)).shape == (6,)


def test_wrong_combinations_name_the_key(models, tmp_path):
    folder = str(models[("bert", 1)])
    runtime = RuntimeConfig(cache_dir=str(tmp_path))
    for options, key in (
        ({"compile": True}, "model.compile"),
        ({"quantize": "int8-full"}, "model.quantize int8-full"),
    ):
        cfg = ModelConfig(name=folder, backend="openvino", **options)
        with pytest.raises(ConfigError, match=key):
            LocalScorer(cfg, runtime, calibration=_pairs(4))
    with pytest.raises(ConfigError, match="model.quantize int8 needs model.backend onnx or"):
        LocalScorer(ModelConfig(name=folder, quantize="int8"), runtime)
    gpu = RuntimeConfig(cache_dir=str(tmp_path), gpus_per_replica=1)
    with pytest.raises(ConfigError, match="runtime.gpus_per_replica"):
        LocalScorer(ModelConfig(name=folder, backend="openvino"), gpu)
    # an engine without calibration pairs cannot quantize: it says where they come from
    cfg = ModelConfig(name=folder, backend="openvino", quantize="int8")
    info = describe_model(cfg, str(tmp_path))
    with pytest.raises(ConfigError, match="model.calibration_sample"):
        ScoringEngine(cfg, info, runtime, info.source)


def test_causal_rerankers_are_refused(tmp_path):
    from crossenc.testing import build_tiny_causal_reranker

    folder = build_tiny_causal_reranker(tmp_path / "qwen", "qwen3")
    with pytest.raises(ConfigError, match="model.backend openvino: .* causal-LM reranker"):
        LocalScorer(ModelConfig(name=str(folder), backend="openvino"), RuntimeConfig())
