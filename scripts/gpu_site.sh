#!/usr/bin/env bash
# Build .gpu-site.tar.xz: a trimmed install of what the GPU check (bench/gpu.sh) needs beyond
# the GPU machine's own Python stack (torch, transformers, sentence-transformers, pyarrow,
# pydantic, pyyaml, fsspec are there; Ray, s3fs and accelerate are not), for machines that reach
# no package registry. Ray's wheel is ~240 MB installed: its dashboard build, Java jars, RLlib,
# Tune, Train, Serve and LLM packages are left out (the job imports none of them), and the rest
# travels xz-compressed. bench/gpu.sh unpacks it into .gpu-site/ and puts that first on
# PYTHONPATH. PYVER picks the device's Python (default: this one), e.g. PYVER=3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PYVER=${PYVER:-$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
rm -rf .gpu-site .gpu-site.tar.xz
PKGS=$(grep -iE '^(ray|click|jsonschema|jsonschema-specifications|referencing|rpds-py|attrs|msgpack|protobuf|s3fs|aiobotocore|botocore|jmespath|python-dateutil|six|urllib3|aiohttp|aiohappyeyeballs|aiosignal|frozenlist|multidict|yarl|propcache|aioitertools|wrapt|accelerate|psutil|tqdm)==' constraints.txt)
# shellcheck disable=SC2086
"$PY" -m pip install --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --implementation cp --target .gpu-site $PKGS
cd .gpu-site
rm -rf ray/dashboard/client ray/jars ray/rllib ray/tune ray/train ray/serve ray/llm \
    ray/air/examples ray/tests bin
find . -name '__pycache__' -prune -exec rm -rf {} +
cd ..
tar -cJf .gpu-site.tar.xz .gpu-site
du -sh .gpu-site .gpu-site.tar.xz
