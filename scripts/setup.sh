#!/usr/bin/env bash
# Create .venv with crossenc, its test dependencies and the documentation tools (mkdocs).
# torch is pinned to the CPU build (2.13.0); a plain `torch` requirement would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test,docs]"
