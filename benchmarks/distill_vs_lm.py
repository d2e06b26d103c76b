"""Recovery by distillation vs LM-loss recovery on a pruned SmolLM2-135M, at equal steps and tokens (issue 16).

The pruned model: ``--plan`` (a plan of ``smollm2-135m``, e.g. a compare cell's
``plans/budget-greedy__r0.2.json``) applied and saved once to ``--work``/pruned. Then, for each
``--steps`` and each loss, ``prunekit recover`` with LoRA (r 8, alpha 16, lr 1e-4), ``--batch-size 4
--seq-len 128`` windows of the embedded ``wiki`` split (the same windows in the same order for both
losses), held-out perplexity on 8 x 256 tokens of ``wiki-test`` and ``news``; the wall time of the
training loop (``train_seconds``) is recorded. Each run is the CLI equivalent of

    prunekit recover PRUNED --out OUT --data wiki --seq-len 128 --batch-size 4 --max-steps N --epochs 100 [--distill]

Writes ``--json`` and prints a markdown table.

    python benchmarks/distill_vs_lm.py --plan runs/compare/plans/budget-greedy__r0.2.json \\
        [--steps 30,200] [--alpha 0.5] [--seed 1] [--work /tmp/distill]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prunekit.pipeline.load import load_model
from prunekit.pipeline.prune import with_plan
from prunekit.pipeline.recover import RecoverConfig, recover
from prunekit.plan.apply import save_pruned
from prunekit.plan.schema import read_plan

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", required=True)
    ap.add_argument("--work", default="/tmp/prunekit-distill")
    ap.add_argument("--steps", default="30,200")
    ap.add_argument("--losses", default="lm,distill")
    ap.add_argument("--alpha", type=float, default=0.5, help="distill: weight of the KL (the LM loss gets 1 - alpha; 1: KL only).")
    ap.add_argument("--topk", type=int, default=0, help="distill: cache the teacher's top-K (0: full, on the fly).")
    ap.add_argument("--seed", type=int, default=0, help="recover's seed: the data order and the LoRA initialisation.")
    ap.add_argument("--json", default=str(HERE / "results" / "distill_vs_lm.json"))
    args = ap.parse_args()
    work = Path(args.work)
    pruned = work / "pruned"
    plan = read_plan(args.plan)
    if not (pruned / "plan.json").is_file():
        base = load_model(plan["model"]["spec"], device="cpu")
        save_pruned(with_plan(base, plan, owned=True), plan, pruned, overwrite=True)
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() else {}
    for steps in [int(s) for s in args.steps.split(",")]:
        for loss in args.losses.split(","):
            variant = "" if loss == "lm" or (args.alpha == 1.0 and not args.topk) else f"-a{args.alpha:g}-k{args.topk}"
            key = f"{loss}{variant}{f'-s{args.seed}' if args.seed else ''}-{steps}"
            if key in results:
                continue
            cfg = RecoverConfig(data="wiki", seq_len=128, batch_size=4, max_steps=steps, epochs=100,
                                save_every=10**6, distill=loss == "distill", distill_alpha=args.alpha,
                                distill_topk=args.topk, seed=args.seed)
            rep = recover(pruned, cfg, work / key, overwrite=True, device="cpu")
            results[key] = {k: rep[k] for k in ("steps", "train_seconds", "perplexity_before", "perplexity_after",
                                                "first_loss", "last_loss", "train_windows", "loss")}
            results[key]["plan"] = args.plan
            results[key]["options"] = {k: rep["options"][k] for k in ("lr", "lora_r", "distill_alpha", "distill_topk", "seed")}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=2) + "\n")
            print(key, json.dumps(results[key]), flush=True)
    print("| steps | loss | wiki-test | news | train s |\n|---:|---|---:|---:|---:|")
    for key, r in results.items():
        after = r["perplexity_after"]
        print(f"| {r['steps']} | {key.rsplit('-', 1)[0]} | {after['wiki-test']:.3f} | {after['news']:.3f} | {r['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
