"""Benchmark: LLM-Pruner width pruning of the embedded SmolLM2-135M at 20% of its parameters.

Every importance is scored from ONE gradient pass (``--samples`` windows of ``--seq-len`` tokens
of the embedded ``wiki`` calibration split, the Fisher diagonal included), block strategy over
the default layer range (4:28: the authors' 4..29 of 32 layers, scaled), the same fraction per layer
(and, as a second row per importance, ``--global``).
Each pruned model (a copy) is evaluated on held-out text: ``--eval-windows`` x 256 tokens of
``wiki-test`` (articles not in the calibration split) and ``news``. Then, for ``--recover``
importances, a short LoRA run (``prunekit recover``'s code: r=8, alpha=16, lr 1e-4) of
``--steps`` steps of ``--batch`` x ``--train-seq-len`` tokens on the ``wiki`` split, and the same
evaluation after. Finally the prefill and decode speed of one pruned model next to the dense one,
interleaved in the same run (:func:`prunekit.evaluation.speed.bench`).

    flock /tmp/prunekit-heavy.lock .venv/bin/python benchmarks/width_quality.py --json benchmarks/results/width_quality.json

Side result: under GQA the authors' code adds query head ``h``'s score to KV group ``h mod
n_kv`` whereas the head really reads group ``h // n_rep``; the script counts the layers where
that scoring would remove another KV group than prunekit's (for the first-order Taylor score).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from prunekit.data.calibration import CalibConfig  # noqa: E402
from prunekit.evaluation.speed import BenchConfig, bench  # noqa: E402
from prunekit.methods.width.importance import element_scores  # noqa: E402
from prunekit.methods.width.llm_pruner import families_for, width_gradients  # noqa: E402
from prunekit.methods.width.options import WidthConfig  # noqa: E402
from prunekit.pipeline.load import load_model  # noqa: E402
from prunekit.pipeline.prune import evaluate, prune_width  # noqa: E402
from prunekit.pipeline.recover import RecoverConfig, recover  # noqa: E402
from prunekit.plan.apply import save_pruned  # noqa: E402

IMPORTANCES = ("param_first", "element2", "param_second", "vector", "l2", "l1", "random")
ALIASES = {"param_first": "param_first = element1", "element2": "element2 = param_mix"}


def authors_gqa_disagreement(loaded, width: WidthConfig, grads) -> dict:
    """Layers where scoring query head h into group h mod n_kv (the authors') removes another group than h // n_rep."""
    fams, _ = families_for(loaded.adapter, width)
    stats = grads.stats
    differ, layers = [], 0
    for fam in fams:
        if fam.kind != "attn":
            continue
        layers += 1
        a = loaded.adapter.attention(fam.layer)
        hd, n_kv, n_rep = a.head_dim, a.num_kv_heads, a.num_heads // a.num_kv_heads
        part = {p.role + p.attr: p for p in fam.parts}
        per_head = torch.zeros(a.num_heads, dtype=torch.float64)
        for key, dim in (("qweight", 0), ("oweight", 1)):
            p = part[key]
            s = element_scores("param_first", p.param, stats.grad[p.name], None)
            per_head += s.sum(dim=1 - dim).double().reshape(a.num_heads, hd).sum(1)
        kv = torch.zeros(n_kv, dtype=torch.float64)
        for key in ("kweight", "vweight"):
            p = part[key]
            kv += element_scores("param_first", p.param, stats.grad[p.name], None).sum(1).double().reshape(n_kv, hd).sum(1)
        ours = kv + per_head.reshape(n_kv, n_rep).sum(1)
        theirs = kv + torch.stack([per_head[[h for h in range(a.num_heads) if h % n_kv == g]].sum() for g in range(n_kv)])
        if int(ours.argmin()) != int(theirs.argmin()):
            differ.append(fam.layer)
    return {"layers": layers, "differ": differ}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--importances", default=",".join(IMPORTANCES))
    ap.add_argument("--recover", default="param_first,l2,random,param_first+global", help="pruned models that get a LoRA run")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--train-seq-len", type=int, default=128)
    ap.add_argument("--speed", default="param_first", help="importance whose pruned model is timed against the dense one ('' = skip)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    t_start = time.perf_counter()
    sources = ["wiki-test", "news"]
    dense = load_model(args.model, device="cpu")
    res: dict = {"args": vars(args), "threads": torch.get_num_threads()}
    res["dense"] = evaluate(dense, sources, 256, args.eval_windows)
    print(f"dense: {res['dense']['parameters']:,} params, " + ", ".join(f"{s} {res['dense']['perplexity'][s]:.3f}" for s in sources),
          flush=True)

    calib = CalibConfig(source="wiki", seq_len=args.seq_len)
    t0 = time.perf_counter()
    grads = width_gradients(dense, WidthConfig(ratio=args.ratio, samples=args.samples), calib, fisher=True)
    res["gradient_seconds"] = time.perf_counter() - t0
    res["calibration"] = grads.calibration
    res["gqa_scoring"] = authors_gqa_disagreement(dense, WidthConfig(ratio=args.ratio), grads)
    print(f"gradients: {args.samples} x {args.seq_len} tokens in {res['gradient_seconds']:.1f} s; authors' GQA scoring picks another "
          f"KV group in {len(res['gqa_scoring']['differ'])} of {res['gqa_scoring']['layers']} layers", flush=True)

    rows, pruned_models = {}, {}
    runs = [(imp, glob) for imp in args.importances.split(",") if imp for glob in (False, True)]
    for imp, glob in runs:
        name = imp + ("+global" if glob else "")
        t0 = time.perf_counter()
        r = prune_width(dense, WidthConfig(ratio=args.ratio, importance=imp, samples=args.samples, global_=glob), calib,
                        gradients=grads, copy=True)
        ev = evaluate(r.loaded, sources, 256, args.eval_windows)
        kept = {e["layer"]: (e.get("num_kv_heads"), e.get("intermediate_size")) for e in r.plan["width"]["layers"]}
        rows[name] = {"ratio_removed": r.plan["ratio_removed"], "params_after": r.plan["params_after"],
                     "per_layer_fraction": r.plan["width"]["per_layer_fraction"], "ppl": ev["perplexity"],
                     "kept_layer_4": kept.get(4), "seconds": time.perf_counter() - t0,
                     "mlp_kept": {e["layer"]: e.get("mlp_channels") for e in r.plan["width"]["layers"]},
                     "kv_kept": {e["layer"]: e.get("kv_heads") for e in r.plan["width"]["layers"]}}
        pruned_models[name] = r
        frac = r.plan["width"]["per_layer_fraction"]
        heads = sum(1 for e in r.plan["width"]["layers"] if "kv_heads" in e)
        print(f"{ALIASES.get(imp, imp)}{' --global' if glob else ''}: removed {r.plan['ratio_removed']:.4f}"
              + (f" (per-layer fraction {frac:.4f})" if frac is not None else f" (heads pruned in {heads} layers)") + "; "
              + ", ".join(f"{s} {ev['perplexity'][s]:.3f}" for s in sources), flush=True)
    if "param_first" in rows and "element2" in rows:
        a, b = rows["param_first"], rows["element2"]
        diff = sum(len(set(a["mlp_kept"][k]) ^ set(b["mlp_kept"][k])) // 2 for k in a["mlp_kept"])
        res["param_first_vs_element2_channels_differ"] = diff
        print(f"param_first vs element2: {diff} MLP channels chosen differently", flush=True)
    for r in rows.values():
        r.pop("mlp_kept"), r.pop("kv_kept")
    res["rows"] = rows

    res["recover"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for imp in [s for s in args.recover.split(",") if s and s in pruned_models]:
            d = Path(tmp) / imp
            save_pruned(pruned_models[imp].loaded, pruned_models[imp].plan, d)
            cfg = RecoverConfig(data="wiki", epochs=1, seq_len=args.train_seq_len, batch_size=args.batch, max_steps=args.steps,
                                eval_data=tuple(sources), eval_windows=args.eval_windows, eval_seq_len=256)
            rep = recover(d, cfg, Path(tmp) / f"{imp}-rec", device="cpu")
            res["recover"][imp] = {k: rep[k] for k in ("steps", "first_loss", "last_loss", "train_seconds", "perplexity_before",
                                                       "perplexity_after")}
            res["recover"][imp]["mean_loss_first_5"] = sum(rep["losses"][:5]) / 5
            res["recover"][imp]["mean_loss_last_5"] = sum(rep["losses"][-5:]) / 5
            print(f"recover {imp}: {rep['steps']} steps in {rep['train_seconds']:.0f} s, loss (mean of 5) "
                  f"{res['recover'][imp]['mean_loss_first_5']:.3f} -> {res['recover'][imp]['mean_loss_last_5']:.3f}; "
                  + ", ".join(f"{s} {rep['perplexity_before'][s]:.3f} -> {rep['perplexity_after'][s]:.3f}" for s in sources), flush=True)

    if args.speed and args.speed in pruned_models:
        sp = bench(pruned_models[args.speed].loaded, dense, BenchConfig(seq_lens=(128, 512), prompt_len=64, new_tokens=32, repeats=5))
        res["speed"] = sp
        for row in sp["prefill"]:
            print(f"prefill {row['seq_len']}: dense {row['dense_tokens_per_s']:.0f} tok/s, pruned {row['pruned_tokens_per_s']:.0f} tok/s, "
                  f"speedup {row['speedup']:.2f}x (ideal {row['ideal']:.2f}x)", flush=True)
        d = sp["decode"]
        print(f"decode {d['new_tokens']} after {d['prompt_len']}: dense {d['dense_tokens_per_s']:.1f} tok/s, "
              f"pruned {d['pruned_tokens_per_s']:.1f} tok/s, "
              f"speedup {d['speedup']:.2f}x (ideal {d['ideal']:.2f}x)", flush=True)
    res["wall_seconds"] = time.perf_counter() - t_start
    print(f"wall time {res['wall_seconds']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
