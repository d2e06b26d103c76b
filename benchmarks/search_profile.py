"""Where the time of the fastest exact search goes: blocks, LM head + loss, and everything else.

Runs the engine's greedy search (prefix + trajectory caches, early exit) on an embedded model
(SmolLM2 by default; ``--model gemma3-270m`` for Gemma 3's 262k-vocabulary head) with the same windows
as ``search_speed.py``, timing the engine's two kernels by wrapping them:
``Engine.run`` (decoder blocks on a residual state) and ``Engine.score`` (final norm, LM head and
the chunked NLL). The rest is the search's own bookkeeping (state store, ordering, early exit).
Beside each share it prints the counted MACs of that kernel, so seconds per GMAC can be compared:
equal rates mean the time is in the arithmetic, not in overhead.

    flock /tmp/prunekit-heavy.lock .venv/bin/python benchmarks/search_profile.py --steps 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="an embedded model (smollm2-135m, gemma3-270m) or a path")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import torch

    import prunekit as pk
    from prunekit.data import build_windows
    from prunekit.engine import Engine
    from prunekit.methods.depth.search import GreedySearch
    from prunekit.methods.depth.units import make_units

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = pk.load_model(args.model, device="cpu")
    w = build_windows(lm.tokenizer, "wiki", args.seq_len, args.windows)
    e = Engine(lm.adapter, w, batch_size=args.batch_size, ignore_index=lm.model.config.pad_token_id, cache_bytes=4 * 2**30)
    spent = {"run": 0.0, "score": 0.0}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapper

    e.run = timed("run", e.run)
    e.score = timed("score", e.score)
    search = GreedySearch(e, make_units(lm.adapter, "mix"), cache="trajectory", early_exit=True)
    spent.update(run=0.0, score=0.0)  # set-up work (the dense total) is not part of the steps
    e.counter = type(e.counter)()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        search.step()
    total = time.perf_counter() - t0
    c = e.counter
    rows = [("decoder blocks (Engine.run)", spent["run"], c.block_macs),
            ("LM head + loss (Engine.score)", spent["score"], c.head_macs),
            ("search bookkeeping (the rest)", total - spent["run"] - spent["score"], 0.0)]
    print(f"{args.model}, {args.windows} x {args.seq_len} tokens, batch {args.batch_size}, {args.steps} greedy steps, "
          f"prefix + trajectory + early exit, torch threads {torch.get_num_threads()}: {total:.1f} s\n")
    print("| part | seconds | share of time | counted GMACs | share of MACs | s per GMAC |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, sec, macs in rows:
        rate = f"{sec / (macs / 1e9):.3f}" if macs else "-"
        print(f"| {name} | {sec:.1f} | {sec / total:.1%} | {macs / 1e9:.1f} | {macs / c.total_macs:.1%} | {rate} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "total_seconds": total, "threads": torch.get_num_threads(),
                       "parts": [{"part": n, "seconds": s, "macs": m} for n, s, m in rows]}, f, indent=2)


if __name__ == "__main__":
    main()
