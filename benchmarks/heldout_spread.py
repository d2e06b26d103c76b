"""How far apart two compare cells really are on held-out text: more windows and a paired bootstrap (issue 16).

The compare table scores each pruned model on 8 windows x 256 tokens per held-out source. This script
rebuilds the models of compare cells from their removed units (a results CSV of ``prunekit compare``:
``benchmarks/results/compare_*.csv``), checks that the first 8 windows give the table's perplexity,
then scores ``--windows`` windows of each source and reports, for each pair ``A:B`` at each ratio,

    d = mean over windows of (NLL_A(w) - NLL_B(w)) / tokens per window     (nats per token; < 0: A lower)

with a 95% interval from a paired bootstrap over windows (``--resamples``, numpy's own generator with
``--seed``). ``ppl_A / ppl_B = exp(d)`` for windows of equal length, so the interval is one of the ratio of
perplexities. Windows are consecutive ``seq_len``-token pieces of the source, the first ``--windows``.

    python benchmarks/heldout_spread.py --pairs budget-greedy:sleb --ratios 0.2 --windows 64
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np

from prunekit.data.windows import build_windows
from prunekit.evaluation.perplexity import window_nll as perplexity_window_nll
from prunekit.methods.depth.units import parse_unit
from prunekit.pipeline.load import load_model

HERE = Path(__file__).resolve().parent
CSVS = (HERE / "results" / "compare_methods.csv", HERE / "results" / "compare_budget_greedy.csv")


def cell_blocks(rows: list[dict], method: str, ratio: float) -> tuple[frozenset[int], dict]:
    """The removed blocks of a greedy cell (its units' names parsed back) and its row."""
    row = next(r for r in rows if r["method"] == method and r["search"] in ("", "greedy")
               and math.isclose(float(r["target_ratio"]), ratio))
    return frozenset(b for name in row["removed"].split(";") for b in parse_unit(name)), row


def window_nll(loaded, windows, removed: frozenset[int]) -> np.ndarray:
    """Summed next-token NLL of each window (float64 ``[n_windows]``) for the model without ``removed``."""
    return np.asarray(perplexity_window_nll(loaded, windows, removed=removed)[1])


def paired_interval(a: np.ndarray, b: np.ndarray, tokens: int, resamples: int, seed: int) -> tuple[float, float, float]:
    """Mean per-token NLL difference a - b over windows and its 95% paired-bootstrap interval."""
    diff = (a - b) / tokens
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    return float(diff.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="budget-greedy:sleb")
    ap.add_argument("--ratios", default="0.2")
    ap.add_argument("--sources", default="wiki-test,news")
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--resamples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(HERE / "results" / "heldout_spread.json"))
    args = ap.parse_args()
    rows = [r for path in CSVS for r in csv.DictReader(path.open())]
    loaded = load_model("smollm2-135m", device="cpu")
    results, nll = {}, {}
    for src in args.sources.split(","):
        windows = build_windows(loaded.tokenizer, src, args.seq_len, args.windows)
        tokens = args.seq_len - 1  # scored positions per window (no padding in these sources)
        for ratio in [float(r) for r in args.ratios.split(",")]:
            for pair in args.pairs.split(","):
                names = pair.split(":")
                for name in names:
                    if (name, ratio, src) in nll:
                        continue
                    removed, row = cell_blocks(rows, name, ratio)
                    per_window = window_nll(loaded, windows, removed)
                    first8 = math.exp(per_window[:8].sum() / (8 * tokens))
                    if not math.isclose(first8, float(row[f"ppl_{src}"]), rel_tol=1e-4):
                        raise SystemExit(f"{name} @ {ratio} {src}: first 8 windows give {first8:.4f}, the table {row[f'ppl_{src}']}")
                    nll[name, ratio, src] = per_window
                a, b = (nll[n, ratio, src] for n in names)
                d, lo, hi = paired_interval(a, b, tokens, args.resamples, args.seed)
                key = f"{pair}@{ratio:g}/{src}"
                results[key] = {
                    "windows": len(a), "seq_len": args.seq_len,
                    "ppl": {n: math.exp(nll[n, ratio, src].sum() / (len(a) * tokens)) for n in names},
                    "ppl_first8": {n: math.exp(nll[n, ratio, src][:8].sum() / (8 * tokens)) for n in names},
                    "ratio_of_ppl": math.exp(d), "ci95": [math.exp(lo), math.exp(hi)],
                    "ratio_of_ppl_first8": math.exp(float(((a[:8] - b[:8]) / tokens).mean())),
                }
                print(key, json.dumps(results[key]), flush=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"| pair @ ratio / source | ppl A / B on 8 windows | ppl A / B on {args.windows} windows | A/B (95% CI) |\n|---|---|---|---|")
    for key, r in results.items():
        (na, a8), (nb, b8) = r["ppl_first8"].items()
        print(f"| {key} | {a8:.3f} / {b8:.3f} | {r['ppl'][na]:.3f} / {r['ppl'][nb]:.3f} | "
              f"{r['ratio_of_ppl']:.4f} ({r['ci95'][0]:.4f}-{r['ci95'][1]:.4f}) |")


if __name__ == "__main__":
    main()
