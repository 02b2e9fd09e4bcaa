"""ONNX Runtime backend (CPU): export the model folder once, optionally int8-quantize, cache it.

The exported graph takes the same padded ``input_ids`` / ``attention_mask`` (/ ``token_type_ids``)
as the torch model and returns its logits; batching, activation and ordering stay in
:class:`crossenc.engine.scoring.ScoringEngine`, shared with the torch backend.

Exports are cached under ``<runtime.cache_dir>/onnx/<key>/`` (default ``~/.cache/crossenc/onnx``),
keyed by a hash of the model folder's files and the export options, one export per node however
many replicas start at once (:mod:`crossenc.engine.export_cache`, shared with OpenVINO, whose
backend converts this module's float32 export).
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from crossenc.config import ModelConfig
from crossenc.engine.export_cache import cache_root, cached_export, options_key
from crossenc.models.describe import ModelInfo, export_digest, with_digest

log = logging.getLogger(__name__)

# Bumped whenever the export recipe below changes, so that old cache entries are not reused.
EXPORT_VERSION = 4
OPSET = 17


def onnx_cache_root(cache_dir: str | None) -> Path:
    """``<cache_dir>/onnx``, or ``~/.cache/crossenc/onnx``: where exported graphs live."""
    return cache_root(cache_dir, "onnx")


def cache_key(cfg: ModelConfig, info: ModelInfo) -> str:
    """Hash of the model's files (:func:`export_digest`: a local folder or a Hub id) and every
    option and version that changes the exported graph."""
    import onnxruntime

    options = {
        "model": export_digest(cfg, info),
        "quantize": cfg.quantize,
        "prune_last_layer": cfg.prune_last_layer,
        "export_version": EXPORT_VERSION,
        "opset": OPSET,
        # the exporter's and the modelling code's versions, without importing torch
        **{name: version(name) for name in ("torch", "transformers")},
        "onnxruntime": onnxruntime.__version__,
    }
    return options_key(options)


def input_names(uses_token_type_ids: bool) -> list[str]:
    """The graph's inputs, in order."""
    names = ["input_ids", "attention_mask"]
    return [*names, "token_type_ids"] if uses_token_type_ids else names


def export_onnx(cfg: ModelConfig, source: str, uses_token_type_ids: bool, out: Path) -> None:
    """Export the float32 model to ``out`` (TorchScript exporter, dynamic batch and length)."""
    import torch

    from crossenc.models.load import load_model

    model = load_model(cfg, source, dtype=torch.float32)
    if hasattr(model, "set_attn_implementation"):
        # plain matmul/softmax attention exports for every architecture
        with contextlib.suppress(ValueError, ImportError):
            model.set_attn_implementation("eager")
    names = input_names(uses_token_type_ids)
    ids = torch.tensor([[2, 7, 8, 9, 3, 5, 6, 3], [2, 7, 8, 3, 5, 3, 0, 0]], dtype=torch.int64)
    mask = (ids != 0).long()
    sample = [ids, mask, torch.zeros_like(ids)][: len(names)]

    class Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, args, strict=True))).logits

    if cfg.prune_last_layer:
        _prune_checked(Logits(model).eval(), sample, cfg.name)
    axes = {name: {0: "batch", 1: "length"} for name in names}
    axes["logits"] = {0: "batch"}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python branches on shapes in some architectures (DeBERTa);
        # the parity tests check the exported graphs at many batch widths.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            Logits(model).eval(),
            tuple(sample),
            str(out),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def _prune_checked(model: Any, sample: list[Any], name: str) -> None:
    """Export the last layer for the first position only (:mod:`crossenc.engine.first_token`)
    where the architecture allows and the logits on ``sample`` stay the same."""
    import torch

    from crossenc.engine.checked import keep_if_same
    from crossenc.engine.first_token import can_prune, prune_last_layer

    if not can_prune(model.inner):
        return
    with torch.no_grad():
        checked = keep_if_same(prune_last_layer, model.inner, lambda: model(*sample), torch.float32)
    if checked.why:
        log.warning(
            "the first-token last layer of %s was refused for the export (%s): it is exported "
            "in full",
            name,
            checked.why,
        )


def feed_forward_matmuls(model: Any, intermediate_size: int | None) -> list[str]:
    """MatMul nodes whose weight has a dimension of ``intermediate_size``: the feed-forward
    (intermediate and output) projections of every layer, whatever the architecture."""
    if not intermediate_size:
        return []
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul"
        and any(intermediate_size in weights.get(name, ()) for name in node.input)
    ]


def head_gemms(model: Any) -> list[str]:
    """The Gemm nodes (pooler, classifier) under both names the quantizer knows them by: it
    rewrites a Gemm as ``<name>_MatMul`` plus an Add before quantizing it."""
    gemms = [node.name for node in model.graph.node if node.op_type == "Gemm"]
    return gemms + [f"{name}_MatMul" for name in gemms]


def _quantize(src: Path, dst: Path, recipe: str, intermediate_size: int | None) -> None:
    """int8 dynamic quantization: per-channel int8 weights, activations quantized per batch at
    run time; the pooler and classifier (Gemm, a negligible share of the work) stay float32.

    ``int8``: the attention projections only, the feed-forward MatMuls stay float32.
    ``int8-full``: every MatMul with a weight matrix. On the benchmark's MiniLM-L6 (1500 pairs,
    2-core CPU) full int8 ran 2.9x predict but kept the score order only to Spearman 0.977;
    attention-only ran 1.8x at Spearman 0.995.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src))
    exclude = head_gemms(graph)
    if recipe == "int8":
        exclude += feed_forward_matmuls(graph, intermediate_size)
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,  # per output channel: Spearman 0.976 vs 0.924 per tensor (MiniLM-L6)
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=exclude,
    )


def ensure_onnx_model(cfg: ModelConfig, info: ModelInfo, cache_dir: str | None = None) -> Path:
    """The cached ``model.onnx`` for this model and options, exported on first use. An int8
    model is quantized from the cached float32 export (:func:`float32_onnx`): the model is
    exported from torch once, whatever the quantization options and backends that use it."""
    info = with_digest(cfg, info)  # one hash of the model's files for both keys
    source = info.source

    def build(tmp: Path) -> None:
        if cfg.quantize != "none":
            from crossenc.models.load import load_hf_config

            width = getattr(load_hf_config(cfg, source), "intermediate_size", None)
            _quantize(float32_onnx(cfg, info, cache_dir), tmp / "model.onnx", cfg.quantize, width)
        else:
            export_onnx(cfg, source, info.uses_token_type_ids, tmp / "model.onnx")
        export = {"source": source, "quantize": cfg.quantize, "opset": OPSET}
        (tmp / "export.json").write_text(json.dumps(export, indent=1))

    return cached_export(onnx_cache_root(cache_dir), cache_key(cfg, info), "model.onnx", build)


def float32_onnx(cfg: ModelConfig, info: ModelInfo, cache_dir: str | None = None) -> Path:
    """The cached float32 export of this model (what onnx int8 and OpenVINO start from)."""
    return ensure_onnx_model(cfg.model_copy(update={"quantize": "none"}), info, cache_dir)


class OnnxRunner:
    """Runs padded batches through an ONNX Runtime CPU session; returns float32 logits."""

    def __init__(
        self,
        cfg: ModelConfig,
        info: ModelInfo,
        threads: int,
        cache_dir: str | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = ensure_onnx_model(cfg, info, cache_dir)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(self.path), opts, providers=["CPUExecutionProvider"]
        )
        self.names = input_names(info.uses_token_type_ids)
        self.weights = "float32" if cfg.quantize == "none" else cfg.quantize

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: inputs[name] for name in self.names}
        (logits,) = self.session.run(["logits"], feed)
        return np.asarray(logits, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """What runs: for stats and logs."""
        return {"backend": "onnx", "device": "cpu", "dtype": self.weights, "path": str(self.path)}
