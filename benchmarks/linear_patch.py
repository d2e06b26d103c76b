"""The linear patch (``--patch linear``, issue 28) on SmolLM2-135M: SLEB and budget-greedy at 20%, with and without.

The cells' plans are the compare table's (``benchmarks/results/compare_*.csv``: calibration wiki, 8 windows x 128
tokens): each cell's removed units are parsed back into blocks and the first 8 held-out windows are checked to give
the table's perplexity (as ``heldout_spread.py`` does). For each ridge the patch is fitted on the first windows of
the same calibration source and length (``--patch-tokens``, default 32 x hidden size = 18,432 tokens), folded for
the duration, and both models are scored on ``--windows`` windows x ``--seq-len`` tokens of each held-out source,
with the patched / unpatched perplexity ratio and its 95% paired-bootstrap interval over windows.

    flock /tmp/prunekit-heavy.lock python benchmarks/linear_patch.py --ridges 0,1e-4,1e-2 --windows 64
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from prunekit.data.calibration import CalibConfig
from prunekit.data.windows import build_windows
from prunekit.evaluation.intervals import paired_ppl_ratio
from prunekit.evaluation.perplexity import window_nll as perplexity_window_nll
from prunekit.methods.depth.patch import PatchConfig, fit_linear_patch, patch_windows
from prunekit.methods.depth.units import parse_unit
from prunekit.models.contract import Block
from prunekit.pipeline.load import load_model
from prunekit.plan.patch import patched
from prunekit.plan.schema import build_plan, model_record

HERE = Path(__file__).resolve().parent
CSVS = (HERE / "results" / "compare_methods.csv", HERE / "results" / "compare_budget_greedy.csv")


def cell(rows: list[dict], method: str, ratio: float) -> tuple[list[list[int]], dict]:
    row = next(r for r in rows if r["method"] == method and r["search"] in ("", "greedy") and math.isclose(float(r["target_ratio"]), ratio))
    return [list(parse_unit(u)) for u in row["removed"].split(";")], row


def window_nll(loaded, windows, removed: frozenset[int]) -> np.ndarray:
    """Summed next-token NLL of each window (float64 ``[n_windows]``) for the model without ``removed``."""
    return np.asarray(perplexity_window_nll(loaded, windows, removed=removed)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="sleb,budget-greedy")
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--sources", default="wiki-test,news")
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--ridges", default="1e-4")
    ap.add_argument("--patch-tokens", type=int, default=None)
    ap.add_argument("--json", default=str(HERE / "results" / "linear_patch.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = [r for path in CSVS for r in csv.DictReader(path.open())]
    loaded = load_model("smollm2-135m", device="cpu")
    a = loaded.adapter
    calib = CalibConfig(source="wiki", seq_len=128, windows=8, batch_size=2)  # the compare table's calibration
    evals = {src: build_windows(loaded.tokenizer, src, args.seq_len, args.windows) for src in args.sources.split(",")}
    calib_windows = build_windows(loaded.tokenizer, "wiki", 128, 8)
    tokens = args.seq_len - 1
    out: dict = {"model": "smollm2-135m", "ratio": args.ratio, "eval": {s: [args.windows, args.seq_len] for s in evals},
                 "calibration": "wiki, 8 x 128 (the compare table's)", "cells": {}}
    for method in args.methods.split(","):
        units, row = cell(rows, method, args.ratio)
        removed = frozenset(b for u in units for b in u)
        steps = [(sum(a.block_params(Block(b)) for b in u), {"step": i, "unit": str(i), "blocks": u, "score": 0.0, "value": 0.0})
                 for i, u in enumerate(units)]
        plan = build_plan(method, {}, model_record(loaded), {}, a.total_params(), decoder_params=a.decoder_params(), steps=steps)
        base = {src: window_nll(loaded, w, removed) for src, w in evals.items()}
        for src, nll in base.items():
            first8 = math.exp(nll[:8].sum() / (8 * tokens))
            if not math.isclose(first8, float(row[f"ppl_{src}"]), rel_tol=1e-4):
                raise SystemExit(f"{method} {src}: the first 8 windows give {first8:.4f}, the table {row[f'ppl_{src}']}")
        calib_base = window_nll(loaded, calib_windows, removed)
        res = {"blocks": sorted(removed), "ratio_removed": plan["ratio_removed"],
               "ppl": {src: math.exp(n.sum() / (len(n) * tokens)) for src, n in base.items()},
               "calib_ppl": math.exp(calib_base.sum() / (8 * 127)), "patched": {}}
        print(method, json.dumps(res), flush=True)
        for ridge in [float(r) for r in args.ridges.split(",")]:
            cfg = PatchConfig(ridge=ridge, tokens=args.patch_tokens)
            fit = patch_windows(loaded, calib, cfg)
            t0 = time.perf_counter()
            p, tensors, _ = fit_linear_patch(loaded, plan, fit, cfg, batch_size=2)
            seconds = time.perf_counter() - t0
            with patched(a, p["patch"], tensors):
                nll = {src: window_nll(loaded, w, removed) for src, w in evals.items()}
                calib_nll = window_nll(loaded, calib_windows, removed)
            r = {"fit_seconds": seconds, "tokens": p["patch"]["tokens"],
                 "runs": [{k: x[k] for k in ("blocks", "into", "module", "fit")} for x in p["patch"]["runs"]],
                 "skipped": p["patch"]["skipped"],
                 "ppl": {src: math.exp(n.sum() / (len(n) * tokens)) for src, n in nll.items()},
                 "calib_ppl": math.exp(calib_nll.sum() / (8 * 127)),
                 "patched_over_unpatched": {src: dict(zip(("ratio", "low", "high"),
                                                          paired_ppl_ratio(nll[src], base[src], [tokens] * len(nll[src]))))
                                            for src in nll}}
            res["patched"][f"{ridge:g}"] = r
            print(method, f"ridge {ridge:g}", json.dumps(r), flush=True)
        out["cells"][method] = res
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print("| cell | ridge | wiki-test ppl | news ppl | calib ppl (in-sample) | patched/unpatched wiki-test (95% CI) | news | fit s |\n"
          "|---|---|---|---|---|---|---|---|")
    for method, res in out["cells"].items():
        print(f"| {method} | - | {res['ppl']['wiki-test']:.3f} | {res['ppl']['news']:.3f} | {res['calib_ppl']:.3f} | | | |")
        for ridge, r in res["patched"].items():
            v = r["patched_over_unpatched"]
            print(f"| {method} + patch | {ridge} | {r['ppl']['wiki-test']:.3f} | {r['ppl']['news']:.3f} | {r['calib_ppl']:.3f} | "
                  + " | ".join(f"{v[s]['ratio']:.4f} ({v[s]['low']:.4f}-{v[s]['high']:.4f})" for s in ("wiki-test", "news"))
                  + f" | {r['fit_seconds']:.1f} |")


if __name__ == "__main__":
    main()
