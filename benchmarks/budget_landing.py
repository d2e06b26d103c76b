"""budget-greedy's landing, looked ahead: from the compare cells of ``budget-greedy`` on SmolLM2-135M,
what a landing ``k`` steps later would have given (issue 16).

budget-greedy lands at the first step where some unit reaches the budget (the path so far plus the
lowest-total reaching unit). With ``landing L`` (``budget-greedy-la`` is 2) each of the first ``L``
such steps offers a landing and the lowest calibration total wins. The per-cost path does not
depend on the landing, so the options follow from the compare plans: the largest ratio's plan
holds the path (all its steps but the landing), and one search step (the engine's greedy step with
budget-greedy's selection) at ``path[:n + j]`` gives option ``j + 1`` (its best reaching unit)
and, past the known path, the path's next unit. Every option is evaluated like a compare cell:
held-out 8 x 256 tokens of ``wiki-test`` and ``news``, calibration 8 x 128 of ``wiki`` (batches of
2). Option 1 is checked against the compare cell (the same units and total).

    flock /tmp/prunekit-heavy.lock .venv/bin/python benchmarks/budget_landing.py --compare runs/compare_bg --landing 3
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from prunekit.data.calibration import CalibConfig, calibration_windows
from prunekit.data.windows import build_windows
from prunekit.engine.runner import Engine, default_cache_bytes
from prunekit.evaluation.perplexity import perplexity
from prunekit.methods.depth.budget import PerCost, unit_costs
from prunekit.methods.depth.planner import stop_rule
from prunekit.methods.depth.search import GreedySearch
from prunekit.methods.depth.units import make_units, unit_name, unit_params
from prunekit.methods.options import DepthConfig
from prunekit.models.contract import Block
from prunekit.pipeline.load import load_model
from prunekit.plan.schema import read_plan

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", default="runs/compare_bg", help="A compare directory with budget-greedy cells.")
    ap.add_argument("--method", default="budget-greedy", choices=("budget-greedy", "budget-greedy-mac"))
    ap.add_argument("--landing", type=int, default=3)
    ap.add_argument("--ratios", default="0.1,0.2,0.3")
    ap.add_argument("--json", default=str(HERE / "results" / "budget_landing.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    ratios = [float(r) for r in args.ratios.split(",")]
    cost = "params" if args.method == "budget-greedy" else "macs"
    plans = {r: read_plan(Path(args.compare) / "plans" / f"{args.method}__r{r:g}.json") for r in ratios}
    loaded = load_model(plans[ratios[0]]["model"]["spec"], device="cpu")
    adapter = loaded.adapter
    windows = calibration_windows(loaded, CalibConfig(source="wiki", seq_len=128, windows=8, batch_size=2))
    max_pos = loaded.model.config.max_position_embeddings
    evals = {s: build_windows(loaded.tokenizer, s, 256, 8, max_positions=max_pos) for s in ("wiki-test", "news")}
    units = make_units(adapter, "mix+layers")
    path = [tuple(s["blocks"]) for s in plans[max(ratios)]["removed"][:-1]]
    path_scores = [s["score"] for s in plans[max(ratios)]["removed"][:-1]]
    engine = Engine(adapter, windows, batch_size=2, ignore_index=loaded.model.config.pad_token_id,
                    cache_bytes=default_cache_bytes(loaded.device))
    dense_total = engine.total_score(frozenset())
    costs = unit_costs(engine, units, cost)
    total = adapter.total_params()
    rows, t0 = [], time.perf_counter()

    def step_at(n: int, stop) -> tuple:
        """One greedy step at ``path[:n]``: (the path's next unit and total, the best unit reaching ``stop``)."""
        current = path_scores[n - 1] if n else dense_total
        sel = PerCost(costs, [stop], current, "")
        search = GreedySearch(engine, units, removed=path[:n], selection=sel, candidate_batch=engine.auto_candidate_batch())
        r = search.step()
        return (r.unit, r.score), r.also[0]

    def evaluate(chosen: list) -> tuple[dict, float]:
        blocks = [b for u in chosen for b in u]
        with adapter.skipping([Block(b) for b in blocks]), torch.inference_mode():
            return {s: perplexity(loaded, w, 4) for s, w in evals.items()}, perplexity(loaded, windows, 4)

    for ratio in ratios:
        stop = stop_rule(loaded, units, DepthConfig(method=args.method, ratio=ratio), "mix+layers")
        first = plans[ratio]["removed"]
        n0 = len(first) - 1
        assert [tuple(s["blocks"]) for s in first[:-1]] == path[:n0], "the plans do not share one path"
        for j in range(args.landing):
            n = n0 + j
            if j == 0:
                land, score = tuple(first[-1]["blocks"]), first[-1]["score"]
            else:
                while len(path) < n:  # extend the path past the largest plan's landing
                    (u, s), _ = step_at(len(path), stop)
                    path.append(u)
                    path_scores.append(s)
                _, best = step_at(n, stop)
                if best is None:
                    break
                land, score = best
            chosen = path[:n] + [land]
            ppl, calib_ppl = evaluate(chosen)
            if j == 0:  # the compare cell, re-evaluated
                cell = json.loads((Path(args.compare) / "cells" / f"{args.method}__r{ratio:g}.json").read_text())
                assert cell["blocks"] == [b for u in chosen for b in u] and math.isclose(cell["calib_ppl"], calib_ppl, rel_tol=1e-9)
            kinds = [unit_name(u).split()[0] for u in chosen]
            rows.append({"ratio": ratio, "option": j + 1, "units_removed": len(chosen), "calib_total": score,
                         "calib_ppl": calib_ppl, "ppl": ppl,
                         "removed": sum(unit_params(adapter, u) for u in chosen) / total,
                         "landing_unit": unit_name(land), "units": [unit_name(u) for u in chosen],
                         "counts": {k: kinds.count(k) for k in ("attn", "mlp", "layer")}})
            print(json.dumps(rows[-1]), flush=True)
    seconds = time.perf_counter() - t0
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"method": args.method, "landing": args.landing, "seconds": seconds,
                                           "path": [unit_name(u) for u in path], "rows": rows}, indent=1) + "\n")
    print("| ratio | landing k | picks option | removed | attn/mlp/layer | last unit | calib ppl | wiki-test | news |")
    print("|---|---:|---:|---:|---|---|---:|---:|---:|")
    for ratio in ratios:
        opts = [r for r in rows if r["ratio"] == ratio]
        for k in range(1, len(opts) + 1):
            best = min(opts[:k], key=lambda r: (r["calib_total"], r["option"]))
            c = best["counts"]
            print(f"| {ratio:g} | {k} | {best['option']} | {best['removed']:.1%} | {c['attn']}/{c['mlp']}/{c['layer']} | "
                  f"{best['landing_unit']} | {best['calib_ppl']:.3f} | {best['ppl']['wiki-test']:.3f} | {best['ppl']['news']:.3f} |")
    print(f"{seconds:.0f} s (torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
