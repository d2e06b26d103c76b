"""Pair two cells of a ``policy_gradient.py`` results file: ``ppl_A / ppl_B`` with its 95% paired-bootstrap interval.

The cells' per-window NLLs are in the JSON (``cells[name]["nll"][source/when]``), so any two cells can be compared
after the run without scoring again (``evaluation.intervals.paired_ppl_ratio``: 10,000 resamples, seed 0).

    .venv/bin/python benchmarks/pair_cells.py benchmarks/results/policy_gradient_50_recover.json \
        "llm-pruner fusion@0.5" "llm-pruner vector@0.5"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prunekit.evaluation.intervals import paired_ppl_ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("a", help="cell name, e.g. 'llm-pruner fusion@0.5'")
    ap.add_argument("b", nargs="+", help="the cells to pair it with")
    args = ap.parse_args()
    cells = json.loads(Path(args.json).read_text())["cells"]
    for name in [args.a, *args.b]:
        if "nll" not in cells.get(name, {}):
            raise SystemExit(f"{args.json}: no cell {name!r} with per-window NLLs; cells: {', '.join(cells)}")
    print(f"| {args.a} over | " + " | ".join(cells[args.a]["nll"]) + " |")
    print("|---|" + "---:|" * len(cells[args.a]["nll"]))
    for other in args.b:
        parts = []
        for key, (a, tokens) in cells[args.a]["nll"].items():
            r, lo, hi = paired_ppl_ratio(a, cells[other]["nll"][key][0], tokens)
            parts.append(f"{r:.3f} ({lo:.3f}-{hi:.3f})")
        print(f"| {other} | " + " | ".join(parts) + " |")


if __name__ == "__main__":
    main()
