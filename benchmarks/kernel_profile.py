"""The engine's kernels side by side (issue 29): which operations a greedy step spends its time in,
and which ways of running them are faster while every float stays the same.

On the embedded SmolLM2 with the windows of ``search_speed.py`` (8 x 128 tokens of ``wiki``,
batches of 2), each part timed in interleaved rounds (the median of ``--rounds``) so that a
machine shared with other work slows every variant alike:

- ``ops``: torch.profiler's self time per operator over an attention block, an MLP block and
  the head + loss on one window batch (what dominates: matrix products, softmax, copies...);
- ``gemm``: the block's and the head's matrix products alone, in GMAC/s, beside a 2048^3 product
  (the arithmetic's ceiling on this machine and thread count);
- ``head``: ``Engine.score`` on one batch as before issue 29 (``F.linear`` + ``F.cross_entropy``:
  fresh logits and log-probabilities per call) and with the engine's workspace (logits into a
  kept buffer, log-softmax in place); minor page faults per call; NLLs compared bit for bit;
- ``group``: the candidates of a greedy step (every ``--every``-th unit, in the search's order,
  in pairs) on one batch from the dense prefix states: one after another on all threads, stacked
  into one batch (``lanes=1``: the accelerator path), and side by side in lanes (one thread
  each); every candidate's score compared bit for bit;
- ``compile`` (``--compile``): ``torch.compile`` of the block step: compile seconds (the first
  block and each further one), seconds per block against eager, largest difference.

    flock /tmp/prunekit-heavy.lock .venv/bin/python benchmarks/kernel_profile.py --threads 2 --compile \\
        --json benchmarks/results/kernel_profile.json

:func:`profile` takes any loaded model and device; ``gpu_check.py`` calls it on CUDA.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.data import build_windows
from prunekit.engine import Engine
from prunekit.methods.depth.units import make_units
from prunekit.models.adapter import ATTN, Block


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rounds(fns: dict[str, Callable[[], object]], rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function over ``rounds`` interleaved rounds (after one warm-up call each)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def score_before(engine: Engine, j: int, h: torch.Tensor) -> torch.Tensor:
    """``Engine.score`` as before issue 29: fresh logits per chunk and ``F.cross_entropy``."""
    ids = engine._targets[j]
    b, t, d = h.shape
    flat = h[:, :-1].reshape(-1, d)
    targets = ids[:, 1:].reshape(-1)
    owner = torch.arange(b, device=h.device).repeat_interleave(t - 1)
    out = torch.zeros(b, dtype=torch.float64, device=h.device)
    ign = -100 if engine.ignore_index is None else engine.ignore_index
    with torch.inference_mode():
        for s in range(0, flat.shape[0], engine.chunk_tokens):
            e = min(flat.shape[0], s + engine.chunk_tokens)
            nll = F.cross_entropy(engine.adapter.logits(flat[s:e]).float(), targets[s:e], reduction="none", ignore_index=ign)
            out.index_add_(0, owner[s:e], nll.double())
    return out


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def part_ops(engine: Engine, h: torch.Tensor, final: torch.Tensor) -> dict:
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415 (a benchmark)

    ad, kw = engine.adapter, engine.layer_inputs(0)
    attn = next(b for b in range(engine.num_blocks) if Block(b).kind == ATTN and engine.macs[b] > 0)
    out = {}
    for name, fn in (("attention block", lambda: ad.run_block(Block(attn), h, kw[attn // 2])),
                     ("mlp block", lambda: ad.run_block(Block(attn + 1), h, kw[attn // 2])),
                     ("head + loss", lambda: engine.score(0, final))):
        with torch.inference_mode():
            fn()
            with profile(activities=[ProfilerActivity.CPU]) as p:
                for _ in range(3):
                    fn()
        rows = sorted(p.key_averages(), key=lambda r: r.self_cpu_time_total, reverse=True)
        total = sum(r.self_cpu_time_total for r in rows)
        out[name] = [{"op": r.key, "share": r.self_cpu_time_total / total, "ms_per_call": r.self_cpu_time_total / 3e3}
                     for r in rows[:8]]
    return out


def part_gemm(engine: Engine, device: torch.device, rounds: int) -> dict:
    cfg = engine.adapter.model.config
    d, f, v = cfg.hidden_size, cfg.intermediate_size, engine.vocab
    m = engine.batches[0].numel()
    g = torch.Generator(device="cpu").manual_seed(0)
    mats = {"2048x2048x2048": (torch.randn(2048, 2048, generator=g), torch.randn(2048, 2048, generator=g)),
            f"block {m}x{d}x{f}": (torch.randn(m, d, generator=g), torch.randn(f, d, generator=g)),
            f"block {m}x{f}x{d}": (torch.randn(m, f, generator=g), torch.randn(d, f, generator=g)),
            f"head {m}x{d}x{v}": (torch.randn(m, d, generator=g), torch.randn(v, d, generator=g))}
    dtype = next(engine.adapter.model.parameters()).dtype
    mats = {k: (a.to(device, dtype), b.to(device, dtype)) for k, (a, b) in mats.items()}
    buf = torch.empty(m, v, device=device, dtype=dtype)
    with torch.inference_mode():
        fns = {k: (lambda a=a, b=b: a @ b) if k.startswith("2048") else (lambda a=a, b=b: F.linear(a, b)) for k, (a, b) in mats.items()}
        a, b = mats[f"head {m}x{d}x{v}"]
        fns[f"head {m}x{d}x{v} into a kept buffer"] = lambda: torch.mm(a, b.t(), out=buf)
        secs = timed_rounds(fns, rounds, device)
    out = {}
    for k, s in secs.items():
        a, b = mats[k.replace(" into a kept buffer", "")]
        macs = a.shape[0] * a.shape[1] * (b.shape[1] if k.startswith("2048") else b.shape[0])
        out[k] = {"seconds": s, "gmac_per_s": macs / s / 1e9}
    return out


def part_head(engine: Engine, final: torch.Tensor, device: torch.device, rounds: int) -> dict:
    before, after = score_before(engine, 0, final), engine.score(0, final)
    secs = timed_rounds({"before (F.linear + F.cross_entropy)": lambda: score_before(engine, 0, final),
                         "workspace (kept buffer, log-softmax in place)": lambda: engine.score(0, final)}, rounds, device)
    flt = {}
    for name, fn in (("before", lambda: score_before(engine, 0, final)), ("workspace", lambda: engine.score(0, final))):
        f0 = faults()
        fn()
        flt[name] = faults() - f0
    return {"seconds": secs, "minor_page_faults_per_call": flt, "bit_identical": bool(torch.equal(before, after)),
            "gmacs_per_call": engine.head_macs * final.shape[0] * (final.shape[1] - 1) / 1e9}


def group_items(engine: Engine, every: int) -> list[list[tuple]]:
    """Pairs of candidates of a first greedy step (every ``every``-th unit, decreasing block order),
    each from the dense model's state at its first block, as ``evaluate_group`` takes them."""
    units = sorted(make_units(engine.adapter, "mix")[::every], key=lambda u: u[0], reverse=True)
    states, h = {}, engine.h0(0)
    with torch.inference_mode():
        for b in range(engine.num_blocks):
            states[b] = h
            h = engine.run(0, h, b, b + 1, frozenset())
    items = [(u[0], states[u[0]], frozenset(u), ()) for u in units]
    return [items[i:i + 2] for i in range(0, len(items), 2)]


def part_group(lm, windows, device: torch.device, rounds: int, *, every: int, batch: int, sizes: tuple[int, ...] = (2,)) -> dict:
    """The candidates one after another, stacked in groups of each of ``sizes``, and (on the CPU) in lanes."""
    pad = lm.model.config.pad_token_id
    eng = {k: Engine(lm.adapter, windows, batch_size=batch, ignore_index=pad, lanes=n) for k, n in (("stacked", 1), ("lanes", None))}
    items = [it for g in group_items(eng["stacked"], every) for it in g]
    one = eng["stacked"]

    def one_by_one():
        return [one.score(0, one.run(0, h, s, one.num_blocks, skip)) for s, h, skip, _ in items]

    def evaluated(e, k):
        return lambda: [score for i in range(0, len(items), k) for score, _ in e.evaluate_group(0, items[i:i + k])]

    fns = {"one after another": one_by_one}
    for k in sizes:
        fns[f"stacked, groups of {k} (lanes=1)"] = evaluated(eng["stacked"], k)
    if eng["lanes"].lanes > 1:
        fns[f"side by side in {eng['lanes'].lanes} lanes"] = evaluated(eng["lanes"], eng["lanes"].lanes)
    ref = one_by_one()
    outs = {k: fn() for k, fn in fns.items()}
    same = {k: all(torch.equal(a, b) for a, b in zip(ref, out)) for k, out in outs.items()}
    diff = {k: max(float((a - b).abs().max()) for a, b in zip(ref, out)) for k, out in outs.items()}
    secs = timed_rounds(fns, rounds, device)
    return {"candidates": len(items), "lanes": eng["lanes"].lanes, "seconds": secs,
            "bit_identical_to_one_after_another": same, "max_abs_diff": diff}


def part_threads(lm, windows, rounds: int, batch: int) -> dict:
    """One candidate (the dense model from block 0) at 1 thread and at the process's thread count."""
    n = torch.get_num_threads()
    e = Engine(lm.adapter, windows, batch_size=batch, ignore_index=lm.model.config.pad_token_id, lanes=1)

    def run(threads):
        def fn():
            torch.set_num_threads(threads)
            try:
                return e.score(0, e.run(0, e.h0(0), 0, e.num_blocks, frozenset()))
            finally:
                torch.set_num_threads(n)
        return fn

    ref = run(n)()
    secs = timed_rounds({f"{t} thread(s)": run(t) for t in sorted({1, n})}, rounds, torch.device("cpu"))
    return {"seconds": secs, "bit_identical": bool(torch.equal(ref, run(1)()))}


def part_compile(engine: Engine, h: torch.Tensor, device: torch.device, rounds: int, blocks: int) -> dict:
    """torch.compile of ``adapter.run_block`` on the first ``blocks`` blocks: compile seconds, speed, differences."""
    ad, kw = engine.adapter, engine.layer_inputs(0)
    step = torch.compile(ad.run_block, dynamic=False)
    out: dict = {"first_call_seconds": [], "max_abs_diff": [], "bit_identical": []}
    with torch.inference_mode():
        for b in range(blocks):
            ref = ad.run_block(Block(b), h, kw[b // 2])
            sync(device)
            t = time.perf_counter()
            got = step(Block(b), h, kw[b // 2])
            sync(device)
            out["first_call_seconds"].append(time.perf_counter() - t)
            out["max_abs_diff"].append(float((got - ref).abs().max()))
            out["bit_identical"].append(bool(torch.equal(got, ref)))
        fns = {}
        for b in (blocks - 2, blocks - 1):
            fns[f"eager block {b}"] = lambda b=b: ad.run_block(Block(b), h, kw[b // 2])
            fns[f"compiled block {b}"] = lambda b=b: step(Block(b), h, kw[b // 2])
        out["seconds"] = timed_rounds(fns, rounds, device)
    return out


def profile(lm, windows, device: torch.device, *, rounds: int = 5, every: int = 4, batch: int = 2,
            compile_blocks: int = 0, parts: tuple[str, ...] = ("ops", "gemm", "head", "group", "threads"),
            sizes: tuple[int, ...] = (2,)) -> dict:
    """The parts named in ``parts`` (and ``compile`` when ``compile_blocks``) on ``lm`` (already on ``device``);
    ``sizes``: the group sizes the ``group`` part stacks."""
    engine = Engine(lm.adapter, windows, batch_size=batch, ignore_index=lm.model.config.pad_token_id, lanes=1)
    h = engine.h0(0)
    with torch.inference_mode():
        final = engine.run(0, h, 0, engine.num_blocks, frozenset())
    res: dict = {"device": str(device), "threads": torch.get_num_threads(), "batch": batch,
                 "dtype": str(next(lm.model.parameters()).dtype)}
    steps = {"ops": lambda: part_ops(engine, h, final), "gemm": lambda: part_gemm(engine, device, rounds),
             "head": lambda: part_head(engine, final, device, rounds),
             "group": lambda: part_group(lm, windows, device, rounds, every=every, batch=batch, sizes=sizes),
             "threads": lambda: part_threads(lm, windows, rounds, batch)}
    for name in parts:
        t = time.perf_counter()
        res[name] = steps[name]()
        print(f"{name}: {time.perf_counter() - t:.1f} s: {json.dumps(res[name])}", flush=True)
    if compile_blocks:
        res["compile"] = part_compile(engine, h, device, rounds, compile_blocks)
        print(f"compile: {json.dumps(res['compile'])}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--every", type=int, default=4, help="the group part takes every N-th unit")
    ap.add_argument("--compile", type=int, nargs="?", const=6, default=0, metavar="BLOCKS",
                    help="also torch.compile the block step on the first BLOCKS blocks (default 6)")
    ap.add_argument("--parts", default="ops,gemm,head,group,threads")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = pk.load_model("smollm2-135m", device="cpu")
    w = build_windows(lm.tokenizer, "wiki", args.seq_len, args.windows)
    res = profile(lm, w, torch.device("cpu"), rounds=args.rounds, every=args.every, batch=args.batch_size,
                  compile_blocks=args.compile, parts=tuple(p for p in args.parts.split(",") if p))
    res["args"] = vars(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
