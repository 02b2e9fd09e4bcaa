#!/usr/bin/env bash
# The peer's environments for `python -m bench --mode peer`, resolved as sentence-transformers'
# users install them (no crossenc constraints), two of them because its extras cannot share one:
# - .venv-peer: pip install "sentence-transformers[openvino]": sentence-transformers 6 with
#   optimum-intel's pins (transformers < 5.6, huggingface-hub < 1.22); runs the user's script
#   (torch float32) and OpenVINO static int8;
# - .venv-peer-onnx: pip install "sentence-transformers[onnx]": its optimum-onnx (0.1.0 and
#   earlier) needs transformers < 4.58, so pip steps back to sentence-transformers 5; runs ONNX
#   int8. (Both extras in one environment would take the OpenVINO path back to 5 as well.)
# torch is pinned, as scripts/setup.sh does, so that pip keeps the CPU build (2.13.0) instead of
# a CUDA one: optimum-intel asks for torchvision, whose newest release wants torch 2.14, and pip
# would otherwise swap torch for 2.14.1 and its CUDA libraries (6.3 GB); the pin travels with the
# install, so pip picks the torchvision made for 2.13. That torchvision is built against PyPI's
# CUDA torch, not the CPU one ("operator torchvision::nms does not exist", and transformers,
# which imports it when present, then fails to import PreTrainedModel); nothing a cross-encoder
# runs uses it, so it is uninstalled again. datasets: what export_static_quantized_openvino_model asks for
# (its calibration set); pyarrow reads the pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
build() {  # VENV EXTRA PACKAGES...
    local venv=$1 extra=$2
    shift 2
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
    "$venv/bin/python" -m pip install -q "sentence-transformers[$extra]" "$@" \
        "torch==${TORCH_VERSION:-2.13.0}"
    "$venv/bin/python" -m pip uninstall -q -y torchvision
    "$venv/bin/python" -m pip freeze > "$venv/freeze.txt"
}
build "${PEER_VENV:-.venv-peer}" openvino datasets pyarrow
build "${PEER_ONNX_VENV:-.venv-peer-onnx}" onnx pyarrow
