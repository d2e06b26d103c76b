#!/usr/bin/env bash
# Plans are byte-identical across a refactor: the same `prunekit prune` commands run by the code at REF
# (default: 63dd8b8, before the layout of issue 13) and by this checkout, on tiny random checkpoints of every
# family, every method and search variant; prints each plan that differs and a count.
#   bash benchmarks/plans_identical.sh [REF]
# STRIP="key options.key ...": fields that this checkout's plans have and REF's do not (added on purpose, e.g. issue
# 28's STRIP="decoder_params_before decoder_ratio_removed options.ratio_of" against a REF before it); they are removed
# from the new plan, which is written again as prunekit writes plans (sorted keys, 2-space indent), before the
# byte comparison, so every other byte must still be identical.
set -u
REF=${1:-63dd8b8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
W=$(mktemp -d /tmp/plans-identical.XXXXXX)
mkdir -p "$W/old" && git -C "$ROOT" archive "$REF" src | tar -x -C "$W/old"
PYTHONPATH=$ROOT/src:$ROOT/tests "$PY" -c "
from pathlib import Path
from helpers import make_tiny_workspace
for fam in ('llama', 'qwen2', 'qwen3', 'mistral'):
    make_tiny_workspace(Path('$W/ws-' + fam), fam, layers=6)
" >/dev/null 2>&1
ok=0; bad=0
for fam in llama qwen2 qwen3 mistral; do
  M=$W/ws-$fam/tiny-$fam; C=$W/ws-$fam/calib.txt
  for args in "--method blockpruner --remove 3" "--method blockpruner --ratio 0.2 --blocks-kind attn" \
              "--method sleb --remove 2" "--method shortgpt --ratio 0.2" "--method finercut --remove 2" \
              "--method taylor --remove 1" "--method relative-magnitude --remove 2" \
              "--method blockpruner --remove 3 --search beam:2" "--method blockpruner --ratio 0.15 --search greedy+swap" \
              "--method llm-pruner --ratio 0.15 --seq-len 16 --samples 3" \
              "--method llm-pruner --ratio 0.1 --strategy channel --importance l2"; do
    tag=$(echo "$fam $args" | tr ' :+.' '____')
    common="$M $args --calib $C --windows 4"
    [[ "$args" == *llm-pruner* ]] || common="$common --seq-len 16"
    PYTHONPATH=$W/old/src "$PY" -m prunekit.cli prune $common --out "$W/old-$tag" >/dev/null 2>"$W/old-$tag.err"
    PYTHONPATH=$ROOT/src "$PY" -m prunekit.cli prune $common --out "$W/new-$tag" >/dev/null 2>"$W/new-$tag.err"
    if [ -n "${STRIP:-}" ] && [ -f "$W/new-$tag/plan.json" ]; then
      "$PY" -c "
import json, sys
path = sys.argv[1]
plan = json.load(open(path))
for key in sys.argv[2:]:
    *parents, last = key.split('.')
    d = plan
    for p in parents:
        d = d.get(p, {})
    d.pop(last, None)
open(path, 'w').write(json.dumps(plan, indent=2, sort_keys=True) + '\\n')
" "$W/new-$tag/plan.json" $STRIP
    fi
    if cmp -s "$W/old-$tag/plan.json" "$W/new-$tag/plan.json"; then ok=$((ok + 1)); else bad=$((bad + 1)); echo "differs: $fam $args"; fi
  done
done
echo "plans byte-identical: $ok, different: $bad (ref $REF vs this checkout; work dir $W)"
[ "$bad" -eq 0 ]
