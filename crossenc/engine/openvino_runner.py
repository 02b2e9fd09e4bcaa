"""OpenVINO backend (CPU): the model converted once per node, optionally int8 by NNCF, cached.

The conversion reads the float32 ONNX graph of :func:`crossenc.engine.onnx_runner.export_onnx`
(the exporter every architecture is tested with; the cached export that model.backend onnx
uses, so a model is exported from torch once for both backends) into OpenVINO and saves it as
IR (weights kept float32). ``model.quantize int8`` then quantizes it statically with NNCF's
post-training quantization (its transformer preset), calibrated on pairs of the job's own input
(:attr:`crossenc.models.describe.ModelInfo.calibration`, drawn by :mod:`crossenc.job.gate`), so
no dataset is downloaded. OpenVINO is used directly, not through optimum-intel, which pins an
older transformers.

Exports are cached under ``<runtime.cache_dir>/openvino/<key>/`` (:mod:`crossenc.engine.
export_cache`), keyed by the model folder's files (weights, tokenizer), the options (the
calibration sample's size among them) and the versions of openvino, nncf, torch and
transformers: once per model, not per input. The first run calibrates on its own pairs; later
runs, on other inputs, reuse that model (every run's quality gate checks it on its own pairs),
so one night's scores and the next come from the same int8 model. The compiled model
runs with float32 inference precision unless model.dtype asks for 16 bits: OpenVINO lowers
float32 to bf16 on CPUs with AMX by default, which would change the scores. An int8 model with
model.dtype auto runs its unquantized operations in bf16 where OpenVINO reports BF16 among the
CPU's capabilities (AVX-512 BF16 or AMX), as OpenVINO's own default (what sentence-transformers'
OpenVINO path runs): on a Zen 4 EPYC, 248 against 208 pairs/s for MiniLM-L6 int8, Spearman to
torch float32 0.9932 against 0.9931 (its quality gate checks every run).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from crossenc.config import ConfigError, ModelConfig
from crossenc.engine.export_cache import cache_root, cached_export, options_key
from crossenc.models.describe import ModelInfo, export_digest, with_digest

log = logging.getLogger(__name__)

EXPORT_VERSION = 2  # bumped whenever the recipe below changes
PRECISION = {"auto": "f32", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def cache_key(cfg: ModelConfig, info: ModelInfo) -> str:
    """Hash of the model's files (:func:`export_digest`: a local folder or a Hub id), the
    options and versions that change the converted model, and (int8) the calibration sample's
    size; not the pairs themselves (once per model)."""
    options = {
        "model": export_digest(cfg, info),
        "quantize": cfg.quantize,
        "prune_last_layer": cfg.prune_last_layer,
        "export_version": EXPORT_VERSION,
        "max_length": info.max_length,
        **{name: version(name) for name in ("openvino", "torch", "transformers")},
    }
    if cfg.quantize != "none":
        options["nncf"] = version("nncf")
        options["calibration_sample"] = cfg.calibration_sample
    return options_key(options)


def calibration_batches(
    cfg: ModelConfig, info: ModelInfo, pairs: Sequence[tuple[str, str]]
) -> list[dict[str, np.ndarray]]:
    """The calibration pairs as the model's inputs, one unpadded row each (no pad token
    enters the activation statistics)."""
    from crossenc.models.load import load_tokenizer
    from crossenc.models.tokenize import encode_pairs

    tokenizer = load_tokenizer(cfg, info.source)
    ids, type_ids, _ = encode_pairs(
        tokenizer, info, [a for a, _ in pairs], [b for _, b in pairs], cfg.truncation
    )
    batches = []
    for i, row in enumerate(ids):
        batch = {
            "input_ids": np.asarray([row], dtype=np.int64),
            "attention_mask": np.ones((1, len(row)), dtype=np.int64),
        }
        if info.uses_token_type_ids:
            types = type_ids[i] if type_ids else [0] * len(row)
            batch["token_type_ids"] = np.asarray([types], dtype=np.int64)
        batches.append(batch)
    return batches


def one_row_matmuls(model: Any) -> list[str]:
    """The MatMuls whose rows are at most one, whatever the batch: the pruned last layer's
    (:mod:`crossenc.engine.first_token`: its query, attention, output and feed-forward for the
    first position). Quantizing them saves nothing and puts their error straight into the
    logits, so int8 leaves them out."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        shape = op.input(0).get_partial_shape()
        if shape.rank.is_static and shape.rank.get_length() >= 3:
            rows = shape[shape.rank.get_length() - 2].get_max_length()  # -1: unbounded
            if 0 <= rows <= 1:
                names.append(op.get_friendly_name())
    return names


def _convert(cfg: ModelConfig, info: ModelInfo, out: Path, cache_dir: str | None) -> None:
    """Write ``out/model.xml`` (and .bin): the cached float32 ONNX export read into OpenVINO,
    int8-quantized by NNCF where model.quantize asks."""
    import openvino as ov

    from crossenc.engine.onnx_runner import float32_onnx

    model = ov.convert_model(str(float32_onnx(cfg, info, cache_dir)))
    if cfg.quantize != "none":
        import nncf

        batches = calibration_batches(cfg, info, info.calibration)
        model = nncf.quantize(
            model,
            nncf.Dataset(batches),
            model_type=nncf.ModelType.TRANSFORMER,  # keeps softmax, layer norms, adds float
            preset=nncf.QuantizationPreset.MIXED,  # asymmetric activations (after GELU)
            subset_size=len(batches),
            ignored_scope=nncf.IgnoredScope(names=one_row_matmuls(model), validate=False),
        )
    ov.save_model(model, str(out / "model.xml"), compress_to_fp16=False)
    export = {"source": info.source, "quantize": cfg.quantize, "calibration": len(info.calibration)}
    (out / "export.json").write_text(json.dumps(export, indent=1))


def ensure_openvino_model(cfg: ModelConfig, info: ModelInfo, cache_dir: str | None) -> Path:
    """The cached ``model.xml`` for this model folder and options, converted (and calibrated on
    ``info.calibration``) on first use."""
    if cfg.quantize == "int8-full":
        raise ConfigError(
            "model.quantize int8-full is an ONNX Runtime recipe; model.backend openvino "
            "quantizes with int8 (NNCF's static quantization of every MatMul it can keep exact)"
        )
    if cfg.quantize != "none" and not info.calibration:
        raise ConfigError(
            "model.quantize int8 with model.backend openvino calibrates on a sample of the "
            "pairs to score: a job (crossenc score, crossenc.run) draws model.calibration_sample "
            "of its input, and a LocalScorer takes its first predict()'s pairs (or "
            "calibration=...); a ScoringEngine or crossenc.scorer needs ModelInfo.calibration set"
        )
    info = with_digest(cfg, info)  # one hash of the model's files for this key and ONNX's
    key = cache_key(cfg, info)
    return cached_export(
        cache_root(cache_dir, "openvino"),
        key,
        "model.xml",
        lambda out: _convert(cfg, info, out, cache_dir),
    )


def inference_precision(cfg: ModelConfig, capabilities: Sequence[str]) -> str:
    """The compiled model's inference precision: model.dtype's, and for ``auto`` float32
    (scores as torch float32's), except for an int8 model where the CPU has BF16
    (``capabilities``: OpenVINO's OPTIMIZATION_CAPABILITIES), whose unquantized operations
    run in bf16 (see the module docstring)."""
    if cfg.dtype == "auto" and cfg.quantize != "none" and "BF16" in capabilities:
        return "bf16"
    return PRECISION[cfg.dtype]


class OpenVinoRunner:
    """Runs padded batches through an OpenVINO CPU compiled model; returns float32 logits."""

    def __init__(
        self, cfg: ModelConfig, info: ModelInfo, threads: int, cache_dir: str | None = None
    ) -> None:
        import openvino as ov

        from crossenc.engine.onnx_runner import input_names

        self.path = ensure_openvino_model(cfg, info, cache_dir)
        core = ov.Core()
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self.precision = inference_precision(cfg, capabilities)
        self.compiled = core.compile_model(
            core.read_model(str(self.path)),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",  # one batch at a time, every thread on it
                "INFERENCE_PRECISION_HINT": self.precision,
            },
        )
        self.request = self.compiled.create_infer_request()
        self.names = input_names(info.uses_token_type_ids)
        self.weights = "float32" if cfg.quantize == "none" else cfg.quantize

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: inputs[name] for name in self.names}
        result = self.request.infer(feed, share_inputs=True)
        return np.array(result[self.compiled.output(0)], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """What runs: for stats and logs."""
        precision = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[self.precision]
        if self.weights == "float32":
            dtype = precision
        else:  # as onnx's: int8, and the precision of what is not quantized where not float32
            dtype = self.weights if precision == "float32" else f"{self.weights} {precision}"
        return {"backend": "openvino", "device": "cpu", "dtype": dtype, "path": str(self.path)}
