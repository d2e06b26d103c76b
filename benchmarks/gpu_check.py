"""Issue 15's GPU check (run by ``benchmarks/gpu_check.sh``; about 5 minutes on one H200).

For bf16 SmolLM2 and a random Llama-3-8B-shaped model (bf16, seeded) on one GPU:

- ``naive``: BlockPruner's search as the authors run it (a full ``model.forward`` per candidate);
- ``cached``: prunekit's engine (prefix + trajectory caches, early exit) with candidate batching
  (``Engine.auto_candidate_batch``: stacked candidates);
- ``cached_one``: the same one candidate at a time;
- ``capped``: the cached search under a cap on resident weights (the model kept on the CPU in
  bf16, blocks brought in by :class:`prunekit.engine.onload.Onloader`), with
  ``torch.cuda.max_memory_allocated`` over the whole search.

Each records seconds (``torch.cuda.synchronize`` around the search), the units chosen, and whether
they are the naive search's. In bf16 two candidates closer than the format's rounding can swap: the
gap between the best two totals of each step is recorded so such a difference can be read.
``--smoke`` runs the random model's part on a tiny random model on the CPU (to check the script,
not the GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import prunekit as pk
from prunekit.data import build_windows
from prunekit.data.windows import Windows
from prunekit.engine import Engine
from prunekit.engine.onload import Onloader
from prunekit.methods.depth.search import GreedySearch
from prunekit.methods.depth.units import make_units

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the naive search is a test oracle
from oracles import naive_greedy  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cached(lm, windows, units, steps, batch, *, candidate_batch=None, onload=None) -> dict:
    """The engine's greedy search; seconds, units, per-step gap between the best two totals."""
    dev = onload.device if onload is not None else next(lm.model.parameters()).device
    pad = lm.model.config.pad_token_id
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    sync(dev)
    t0 = time.perf_counter()
    engine = Engine(lm.adapter, windows, batch_size=batch, ignore_index=pad, cache_bytes=8 * 2**30, onload=onload)
    k = candidate_batch or engine.auto_candidate_batch()
    search = GreedySearch(engine, units, candidate_batch=k)
    res = search.run(lambda removed: len(removed) >= steps)
    sync(dev)
    out = {"seconds": time.perf_counter() - t0, "candidate_batch": k, "units": [list(r.unit) for r in res],
           "values": [r.value for r in res], "counted_macs": engine.counter.total_macs}
    gaps = []
    for r in res:
        totals = sorted(t for _, t, _ in r.ranking if t is not None)
        gaps.append((totals[1] - totals[0]) / engine.n_targets if len(totals) > 1 else None)
    out["best_two_gap_nll_per_token"] = gaps
    if dev.type == "cuda":
        out["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    if onload is not None:
        out["weights"] = onload.stats()
        onload.release()
    return out


def naive(lm, windows, units, steps, batch) -> dict:
    dev = next(lm.model.parameters()).device
    sync(dev)
    t0 = time.perf_counter()
    res = naive_greedy(lm.adapter, windows, units, steps, lm.model.config.pad_token_id, batch_size=batch)
    sync(dev)
    return {"seconds": time.perf_counter() - t0, "units": [list(u) for u, _ in res], "values": [v for _, v in res]}


def check(name: str, lm, windows, steps: int, batch: int, *, cap_fraction: float) -> dict:
    """Naive, cached (batched and one by one) and capped searches of ``steps`` steps on ``lm``."""
    units = make_units(lm.adapter, "mix")
    dev = next(lm.model.parameters()).device
    out = {"model": name, "parameters": lm.adapter.total_params(), "dtype": str(next(lm.model.parameters()).dtype),
           "windows": list(windows.ids.shape), "batch_size": batch, "steps": steps}
    print(f"[{name}] naive", file=sys.stderr, flush=True)
    out["naive"] = naive(lm, windows, units, steps, batch)
    print(f"[{name}] cached, candidate batching", file=sys.stderr, flush=True)
    out["cached"] = cached(lm, windows, units, steps, batch)
    print(f"[{name}] cached, one by one", file=sys.stderr, flush=True)
    out["cached_one"] = cached(lm, windows, units, steps, batch, candidate_batch=1)
    # the capped run: the weights on the CPU in bf16, at most cap_fraction of them resident on the GPU
    lm.model.to("cpu")
    model_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    onload = Onloader(lm.adapter, dev, torch.bfloat16, cap_bytes=cap_fraction * model_bytes)
    print(f"[{name}] capped at {cap_fraction:.0%} of the weights", file=sys.stderr, flush=True)
    out["capped"] = cached(lm, windows, units, steps, batch, onload=onload)
    out["capped"]["cap_fraction"] = cap_fraction
    for k in ("cached", "cached_one", "capped"):
        out[k]["same_choices_as_naive"] = out[k]["units"] == out["naive"]["units"]
        out[k]["speedup_over_naive"] = out["naive"]["seconds"] / out[k]["seconds"]
    lm.model.to(dev)
    return out


def random_llama(shape: str, device: torch.device):
    """A seeded random Llama in bf16 on ``device`` (``8b``: Llama-3-8B's shapes; ``tiny``: for --smoke)."""
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415 (a benchmark)

    dims = {"8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
            "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512)}[shape]
    cfg = LlamaConfig(**dims, max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=None)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.manual_seed(0)
        model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    return pk.wrap_model(model.eval(), spec=f"random-llama-{shape}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--smoke", action="store_true", help="a tiny model on the CPU: checks the script only")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (torch.cuda.is_available() is False); this check needs a GPU.")
    dev = torch.device("cpu" if args.smoke else "cuda")
    res = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "torch": torch.__version__,
           "device": "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(dev), "runs": []}
    if not args.smoke:  # (bf16 SmolLM2 on 2 CPU cores would take the smoke test many minutes)
        smol = pk.load_model("smollm2-135m", dtype="bfloat16", device=str(dev))
        w = build_windows(smol.tokenizer, "wiki", 512, 16)
        res["runs"].append(check("smollm2-135m", smol, w, 4, 8, cap_fraction=0.25))
        del smol
    big = random_llama("tiny" if args.smoke else "8b", dev)
    g = torch.Generator().manual_seed(0)
    vocab = big.model.config.vocab_size
    ids = torch.randint(0, vocab, (2, 32) if args.smoke else (8, 512), generator=g)
    rand = Windows(ids, "random", "seed0", {"seq_len": ids.shape[1], "windows": ids.shape[0]})
    res["runs"].append(check(big.spec, big, rand, 2, 2, cap_fraction=0.25))
    text = json.dumps(res, indent=2)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
