"""Search speed: naive (a full forward per candidate, as the BlockPruner authors' code) vs the
engine's prefix cache, prefix + trajectory caches, and all of it with early exit; then the
kernels of issue 29 on top of the last: the head's workspace (logits into a kept buffer,
log-softmax in place) and lanes (a step's candidates two at a time side by side, one thread each).

One run, on the embedded SmolLM2: the same calibration windows, the same number of greedy steps
over mix blocks, each configuration in its own subprocess (so its peak memory is its own).
Prints a markdown table: median seconds per step, total, measured ratio to naive, counted ideal
ratio (MACs the naive search runs / MACs the configuration ran), peak RSS and peak cached-state
bytes, whether the chosen blocks equal naive's with perplexities within 1e-5, and whether the
perplexities are naive's bit for bit. Then the counted ratios, from shapes alone, for Llama-2-7B
with 2048-token windows and the authors' published 20-step order.

The cached configurations before ``+workspace`` run the engine's kernels as before issue 29: one
candidate at a time (``candidate_batch=1``), the head through ``F.cross_entropy`` on fresh logits.

    python benchmarks/search_speed.py                    # 8 windows x 128 tokens, 8 steps
    python benchmarks/search_speed.py --steps 1 --windows 2   # a quick smoke run
    python benchmarks/search_speed.py --configs naive,prefix+trajectory+early-exit,+workspace,+workspace+lanes
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
CONFIGS = {  # (cache, early exit, head workspace, candidate batch: None = the engine's choice, its lanes on the CPU)
    "naive": None,
    "prefix": ("prefix", False, False, 1),
    "prefix+trajectory": ("trajectory", False, False, 1),
    "prefix+trajectory+early-exit": ("trajectory", True, False, 1),
    "+workspace": ("trajectory", True, True, 1),
    "+workspace+lanes": ("trajectory", True, True, None),
}

LLAMA2_7B = {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
             "num_hidden_layers": 32, "vocab_size": 32000}
AUTHORS_ORDER_7B = ("attn 25, attn 27, attn 24, attn 23, attn 28, attn 29, attn 8, mlp 7, attn 19, attn 30, mlp 22, "
                    "attn 21, mlp 27, attn 18, mlp 21, mlp 11, attn 12, attn 14, mlp 14, mlp 24")


def run_one(name: str, args) -> dict:
    import torch

    import prunekit as pk
    from prunekit.data import build_windows
    from prunekit.engine import Engine
    from prunekit.methods.depth.search import GreedySearch
    from prunekit.methods.depth.units import make_units, unit_name

    sys.path.insert(0, str(TESTS))  # the naive search is a test oracle (tests/oracles.py)
    from oracles import naive_greedy

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = pk.load_model("smollm2-135m", device="cpu")
    w = build_windows(lm.tokenizer, "wiki", args.seq_len, args.windows)
    units = make_units(lm.adapter, "mix")
    pad = lm.model.config.pad_token_id
    times, chosen = [], []
    if name == "naive":
        last = [time.perf_counter()]

        def on_step(unit, value):
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now
            chosen.append((unit_name(unit), value))

        naive_greedy(lm.adapter, w, units, args.steps, pad, batch_size=args.batch_size, on_step=on_step)
        counted, peak_cache, macs = None, 0, None
    else:
        cache, early, workspace, k = CONFIGS[name]
        e = Engine(lm.adapter, w, batch_size=args.batch_size, ignore_index=pad, cache_bytes=args.cache_gb * 2**30)
        if not workspace:
            e.workspace = None  # the head as before issue 29: F.cross_entropy on fresh logits
        k = k or e.auto_candidate_batch()
        s = GreedySearch(e, units, cache=cache, early_exit=early, candidate_batch=k)
        for _ in range(args.steps):
            t = time.perf_counter()
            r = s.step()
            times.append(time.perf_counter() - t)
            chosen.append((unit_name(r.unit), r.value))
        counted, peak_cache = s.naive_macs / e.counter.total_macs, e.store.peak
        macs = {"engine": e.counter.as_dict(), "naive": s.naive_macs}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"name": name, "times": times, "chosen": chosen, "counted": counted, "peak_rss": rss, "peak_cache": peak_cache,
            "candidate_batch": 1 if name == "naive" else k, "threads": torch.get_num_threads(), "macs": macs}


def llama2_counts(seq_len: int = 2048, n_windows: int = 1) -> dict:
    from prunekit.methods.depth.units import parse_unit
    from prunekit.methods.depth.workcount import count_search, llama_block_macs

    macs = llama_block_macs(LLAMA2_7B, seq_len)
    units = [(b,) for b in range(2 * LLAMA2_7B["num_hidden_layers"])]
    order = [parse_unit(u) for u in AUTHORS_ORDER_7B.split(", ")]
    head = LLAMA2_7B["vocab_size"] * LLAMA2_7B["hidden_size"]
    return count_search(macs, head, order, units, n_windows=n_windows, seq_len=seq_len)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--cache-gb", type=float, default=4.0)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)))
        return
    results = {}
    for name in args.configs.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--windows", str(args.windows), "--seq-len", str(args.seq_len),
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--cache-gb", str(args.cache_gb),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
        print(f"{name}: done in {sum(results[name]['times']):.1f} s: " + json.dumps(results[name]), file=sys.stderr, flush=True)
    base = results.get("naive")
    print(f"\nSmolLM2-135M, {args.windows} windows x {args.seq_len} tokens of wiki, batch {args.batch_size}, "
          f"{args.steps} greedy steps over mix blocks, torch threads {args.threads or 'default'}\n")
    print("| configuration | median s/step | total s | measured ratio | counted ideal ratio | measured / ideal | peak RSS"
          " | peak cached states | same choices as naive | bit-identical perplexities |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        med, tot = statistics.median(r["times"]), sum(r["times"])
        ratio = statistics.median(base["times"]) / med if base else float("nan")
        ideal = r["counted"] if r["counted"] else 1.0
        same = "-" if not base or name == "naive" else (
            "yes" if all(a[0] == b[0] and math.isclose(a[1], b[1], rel_tol=1e-5) for a, b in zip(r["chosen"], base["chosen"])) else "NO")
        bits = "-" if not base or name == "naive" else ("yes" if r["chosen"] == base["chosen"] else "NO")
        print(f"| {name} | {med:.2f} | {tot:.1f} | {ratio:.2f}x | {ideal:.2f}x | {ratio / ideal:.2f} | "
              f"{r['peak_rss'] / 2**20:.0f} MiB | {r['peak_cache'] / 2**20:.1f} MiB | {same} | {bits} |")
    print("\nchosen (naive): " + ", ".join(f"{u} ({v:.3f})" for u, v in (base or next(iter(results.values())))["chosen"]))
    c = llama2_counts()
    print("\nLlama-2-7B shapes, 2048-token windows, the authors' 20-step order (counted from the config alone):")
    print(f"prefix cache {c['naive'] / c['prefix']:.2f}x less work than naive; prefix + trajectory {c['naive'] / c['trajectory']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "llama2_7b": c, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
