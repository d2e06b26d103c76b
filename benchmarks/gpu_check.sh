#!/usr/bin/env bash
# Issues 15 and 29's prepared GPU check: one H100/H200 (or any CUDA GPU), within 9.5 minutes in all.
#  1. kernels (issue 29, <= 170 s): SmolLM2's matrix products, a greedy step's candidates one after another and
#     stacked in groups of 2/4/8 (candidate batching: seconds and bit-identity), torch.compile of the block step
#     (compile seconds, speed against eager, differences) -> gpu_kernels.json
#  2. search (issue 15, <= 380 s): bf16 SmolLM2 and a random Llama-3-8B-shaped model, the cached search with
#     candidate batching (and one by one) against the naive search (same choices?), and the capped run's peak
#     GPU memory (torch.cuda.max_memory_allocated) -> gpu_check.json (rewritten after each model)
# Usage (repository root): bash benchmarks/gpu_check.sh [OUT_DIR]   (default: $OUT when set, else benchmarks/results)
# Python: $PY, else the venv of `make setup`, else python3 (the device machine's, which holds torch). A machine
# without a package index needs what `bash benchmarks/gpu_carry.sh` puts in .carry/site (the gguf and
# mwparserfromhell packages): carry ".carry" and this script puts it on PYTHONPATH. Without the embedded SmolLM2
# there (its package is larger than a carry), a random model of its shapes stands in; each JSON names what ran.
set -euo pipefail
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT_DIR=${1:-${OUT:-benchmarks/results}}
mkdir -p "$OUT_DIR"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False); this check needs a GPU." >&2
  exit 1
fi
PYPATH=$PWD/src
if [ -d .carry/site ]; then PYPATH=$PYPATH:$PWD/.carry/site; fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PYPATH
"$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'torch', torch.__version__)" | tee "$OUT_DIR/gpu_check.log"
status=0
# Each part stops itself at its limit; a part that fails or stops leaves the other's JSON (and the log) intact.
timeout 170 "$PY" benchmarks/gpu_check.py --what kernels --json "$OUT_DIR/gpu_kernels.json" 2>&1 | tail -n 400 >> "$OUT_DIR/gpu_check.log" \
  || { echo "gpu_check: the kernels part failed or ran out of time (see $OUT_DIR/gpu_check.log)" >&2; status=1; }
timeout 380 "$PY" benchmarks/gpu_check.py --what search --json "$OUT_DIR/gpu_check.json" 2>&1 | tail -n 400 >> "$OUT_DIR/gpu_check.log" \
  || { echo "gpu_check: the search part failed or ran out of time (see $OUT_DIR/gpu_check.log)" >&2; status=1; }
tail -n 40 "$OUT_DIR/gpu_check.log"
echo "gpu_check: wrote $(ls "$OUT_DIR"/gpu_kernels.json "$OUT_DIR"/gpu_check.json 2>/dev/null | tr '\n' ' ')"
exit $status
