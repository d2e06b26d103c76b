#!/usr/bin/env bash
# Issue 15's prepared GPU check: one H200 (or any CUDA GPU), well within 8 minutes.
# bf16 SmolLM2 and a random Llama-3-8B-shaped model: the cached search with candidate batching (and one by one)
# against the naive search (same choices?), and the capped run's peak GPU memory (torch.cuda.max_memory_allocated).
# Usage (repository root, the venv of `make setup`): bash benchmarks/gpu_check.sh [OUT_JSON]
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT_JSON=${1:-benchmarks/results/gpu_check.json}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False); this check needs a GPU." >&2
  exit 1
fi
"$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
# 460 s: the check stops itself before 8 minutes; the JSON is written only when every part finished.
PYTHONPATH=${PYTHONPATH:-$PWD/src} timeout 460 "$PY" benchmarks/gpu_check.py --json "$OUT_JSON"
echo "gpu_check: wrote $OUT_JSON"
