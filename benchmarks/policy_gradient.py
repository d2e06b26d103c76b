"""Policy-gradient width pruning (and llm-pruner's fusion importance) on SmolLM2-135M against llm-pruner (issue 27).

For each ratio, the plans of: llm-pruner ``param_first`` per layer (the reference) and ``--global``;
policy-gradient (``--units width``, wanda init) after each of ``--pg-steps`` steps (0 = the initialisation's
top-k); with ``--mixed``, policy-gradient ``--units mixed`` at the largest step count; with ``--fusion``,
llm-pruner ``fusion``, ``vector`` (``param_first`` is the reference). Each plan's model is scored on the first
``--windows`` windows of ``--seq-len`` tokens of each held-out source (``evaluation.perplexity.window_nll``), and
compared with the reference by ``evaluation.intervals.paired_ppl_ratio``: ``ppl_A / ppl_ref`` and its 95%
paired-bootstrap interval over windows (10,000 resamples, seed 0). With
``--recover-steps N`` each model is also recovered with N LoRA steps on ``wiki`` (prunekit's defaults otherwise)
and scored again. Wall times of the searches are printed and saved.

    flock /tmp/prunekit-heavy.lock .venv/bin/python benchmarks/policy_gradient.py --ratios 0.2 --pg-steps 0,100
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from prunekit.data.calibration import CalibConfig
from prunekit.data.windows import build_windows
from prunekit.evaluation.intervals import paired_ppl_ratio
from prunekit.evaluation.perplexity import window_nll
from prunekit.methods.width.options import WidthConfig
from prunekit.methods.width.pg_options import PolicyConfig
from prunekit.pipeline.load import load_model
from prunekit.pipeline.prune import prune
from prunekit.pipeline.recover import RecoverConfig, recover

HERE = Path(__file__).resolve().parent
REF = "llm-pruner"


def configs(ratio: float, args) -> dict:
    out = {REF: WidthConfig(ratio=ratio), "llm-pruner --global": WidthConfig(ratio=ratio, global_=True)}
    steps = [int(s) for s in args.pg_steps.split(",")]
    for s in steps:
        out[f"policy-gradient {s} steps"] = PolicyConfig(ratio=ratio, steps=s, lr=args.lr)
    if args.mixed:
        out[f"policy-gradient mixed {max(steps)} steps"] = PolicyConfig(ratio=ratio, steps=max(steps), lr=args.lr, units="mixed")
    if args.fusion:
        out["llm-pruner fusion"] = WidthConfig(ratio=ratio, importance="fusion")
        out["llm-pruner vector"] = WidthConfig(ratio=ratio, importance="vector")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", default="0.2,0.5")
    ap.add_argument("--pg-steps", default="0,100")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--pg-batch", type=int, default=8, help="calibration windows (128 tokens) per policy-gradient step")
    ap.add_argument("--pg-windows", type=int, default=64, help="the policy-gradient's calibration pool (windows of 128 tokens)")
    ap.add_argument("--mixed", action="store_true")
    ap.add_argument("--fusion", action="store_true")
    ap.add_argument("--sources", default="wiki-test,news")
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--recover-steps", type=int, default=0)
    ap.add_argument("--only", help="comma-separated cell names to run (the reference always runs), e.g. "
                    "'llm-pruner --global,policy-gradient 150 steps,llm-pruner fusion,llm-pruner vector'")
    ap.add_argument("--resume", action="store_true", help="reuse the cells (with their per-window NLLs) already in --json")
    ap.add_argument("--json", default=str(HERE / "results" / "policy_gradient.json"))
    args = ap.parse_args()
    base = load_model("smollm2-135m", device="cpu")
    sources = {s: build_windows(base.tokenizer, s, args.seq_len, args.windows) for s in args.sources.split(",")}
    results: dict = {"command": vars(args), "cells": {}}
    done = json.loads(Path(args.json).read_text())["cells"] if args.resume and Path(args.json).exists() else {}
    only = None if args.only is None else {REF, *args.only.split(",")}
    tmp = Path(tempfile.mkdtemp(prefix="pg-bench-"))
    for ratio in [float(r) for r in args.ratios.split(",")]:
        nll: dict = {}
        for name, cfg in configs(ratio, args).items():
            key = f"{name}@{ratio:g}"
            if only is not None and name not in only:
                continue
            if "nll" in done.get(key, {}):  # --resume: the cell's figures and per-window NLLs as saved
                results["cells"][key] = done[key]
                nll.update({(name, *k.split("/")): tuple(v) for k, v in done[key]["nll"].items()})
                continue
            pg = isinstance(cfg, PolicyConfig)
            cal = CalibConfig(source="wiki", seq_len=128 if pg else 64, batch_size=args.pg_batch if pg else 2,
                              windows=args.pg_windows if pg else None)
            out = tmp / f"{name.replace(' ', '_')}_{ratio}"
            t0 = time.perf_counter()
            try:
                res = prune(base, cfg, cal, out=out)
            except Exception as e:  # a refused cell is reported, not fatal
                print(f"{name} @ {ratio}: {type(e).__name__}: {e}", flush=True)
                results["cells"][f"{name}@{ratio:g}"] = {"refused": str(e)}
                continue
            cell = {"seconds": time.perf_counter() - t0, "ratio_removed": res.plan["ratio_removed"]}
            for src, w in sources.items():
                nll[name, src, "before"] = window_nll(res.loaded, w)[1:]
            if args.recover_steps:
                recover(out, RecoverConfig(data="wiki", max_steps=args.recover_steps), out.with_name(out.name + "_rec"))
                rec = load_model(str(out.with_name(out.name + "_rec")), device="cpu")
                for src, w in sources.items():
                    nll[name, src, "after"] = window_nll(rec, w)[1:]
            for (n, src, when), (a, tok) in list(nll.items()):
                if n != name:
                    continue
                ref = nll.get((REF, src, when))
                ppl = math.exp(sum(a) / sum(tok))
                vs = {} if ref is None else dict(zip(("vs_ref", "ci_lo", "ci_hi"), paired_ppl_ratio(a, ref[0], tok)))
                cell[f"{src}/{when}"] = {"ppl": ppl} | vs
            cell["nll"] = {f"{src}/{when}": [a, tok] for (n, src, when), (a, tok) in nll.items() if n == name}
            results["cells"][key] = cell
            print(f"{name} @ {ratio}: {json.dumps({k: v for k, v in cell.items() if k != 'nll'})}", flush=True)
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    whens = ("before", "after")[:1 + bool(args.recover_steps)]
    print("| cell | removed | search s | " + " | ".join(f"{s} {w}" for s in sources for w in whens) + " |")
    for key, c in results["cells"].items():
        if "refused" in c:
            print(f"| {key} | refused: {c['refused'][:80]} |")
            continue
        parts = []
        for s in sources:
            for w in whens:
                v = c[f"{s}/{w}"]
                parts.append(f"{v['ppl']:.2f}" + (f" ({v['vs_ref']:.3f}, {v['ci_lo']:.3f}-{v['ci_hi']:.3f})" if "vs_ref" in v else ""))
        print(f"| {key} | {c['ratio_removed']:.1%} | {c['seconds']:.0f} | " + " | ".join(parts) + " |")


if __name__ == "__main__":
    main()
