#!/usr/bin/env bash
# Create .venv-peer: sentence-transformers with its ONNX and OpenVINO backends, resolved as its
# user installs it (pip install "sentence-transformers[openvino,onnx]", no crossenc constraints),
# for `python -m bench --mode peer`. torch is pinned first, as scripts/setup.sh does, so that pip
# keeps the CPU build (2.13.0) instead of pulling a CUDA one. datasets: what sentence-transformers'
# export_static_quantized_openvino_model asks for (its calibration set); pyarrow reads the pairs.
# pip steps back here to sentence-transformers 5.x with transformers 4.x: the onnx extra's
# optimum-onnx (0.1.0 and earlier) needs transformers < 4.58, sentence-transformers 6 needs 5.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${PEER_VENV:-.venv-peer}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -m pip install -q "sentence-transformers[openvino,onnx]" datasets pyarrow
"$VENV/bin/python" -m pip freeze > "$VENV/freeze.txt"
