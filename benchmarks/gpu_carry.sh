#!/usr/bin/env bash
# Prepares .carry/site (git-ignored, about 3 MB) for benchmarks/gpu_check.sh on a machine without a package index
# (the lent GPU machines): the pure-Python packages prunekit imports at start that such a machine lacks (gguf,
# mwparserfromhell; torch, transformers and the rest are in its image). The embedded SmolLM2 (a 94 MB package) is
# larger than a carry: gpu_check.py then runs a random model of SmolLM2's shapes on random tokens.
# Usage (repository root, after `make setup`): bash benchmarks/gpu_carry.sh; then carry ".carry" with the run of
# `bash benchmarks/gpu_check.sh`.
set -euo pipefail
PY=${PY:-.venv/bin/python}
rm -rf .carry && mkdir -p .carry/site
for pkg in gguf mwparserfromhell; do
  src=$("$PY" -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('$pkg').origin))")
  cp -r "$src" .carry/site/
done
find .carry/site -name '__pycache__' -prune -exec rm -rf {} +
du -sh .carry
