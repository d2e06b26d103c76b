"""Issues 15 and 29's GPU check (run by ``benchmarks/gpu_check.sh``; about 8 minutes on one H200).

``--what search`` (issue 15; the default):

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
The JSON is rewritten after each model, so a run stopped by its time limit keeps what finished.

``--what kernels`` (issue 29): ``benchmarks/kernel_profile.py``'s parts on CUDA for SmolLM2 in
float32 and bf16: its matrix products in GMAC/s; a greedy step's candidates (every 4th unit)
one after another and stacked in groups of 2, 4 and 8 (candidate batching: seconds, and whether
the scores stay bit-identical); and, in bf16, ``torch.compile`` of the block step (compile
seconds, seconds per block against eager, largest difference).

Where the embedded SmolLM2 or its ``wiki`` corpus cannot be loaded (the device machine has no
package index: ``benchmarks/gpu_carry.sh`` prepares what to carry), a random model of SmolLM2's
shapes and random tokens stand in; ``model`` in the JSON says which ran. ``--smoke`` runs each part
on a tiny random model on the CPU (to check the script, not the GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_profile import profile  # noqa: E402

from oracles import naive_greedy  # noqa: E402

SMOLLM2_SHAPES = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)


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


def random_llama(shape: str, device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """A seeded random Llama on ``device`` (``8b``: Llama-3-8B's shapes; ``smollm2``: SmolLM2-135M's; ``tiny``: for --smoke)."""
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415 (a benchmark)

    dims = {"8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=False),
            "smollm2": SMOLLM2_SHAPES,
            "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False)}[shape]
    cfg = LlamaConfig(**dims, max_position_embeddings=4096, pad_token_id=None)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.manual_seed(0)
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    return pk.wrap_model(model.eval(), spec=f"random-llama-{shape}")


def random_windows(vocab: int, n: int, seq_len: int) -> Windows:
    ids = torch.randint(0, vocab, (n, seq_len), generator=torch.Generator().manual_seed(0))
    return Windows(ids, "random", "seed0", {"seq_len": seq_len, "windows": n})


def smollm2(device: torch.device, dtype: str, n: int, seq_len: int, *, smoke: bool = False) -> tuple:
    """The embedded SmolLM2 and ``n`` windows of ``wiki``; where either cannot be loaded, a random model of
    its shapes (``tiny`` for --smoke) and random tokens. Returns (loaded model, windows, what ran)."""
    try:
        if smoke:
            raise RuntimeError("--smoke: a tiny random model")
        lm = pk.load_model("smollm2-135m", dtype=dtype, device=str(device))
    except Exception as exc:  # noqa: BLE001 (a benchmark: record what stood in, and why)
        lm = random_llama("tiny" if smoke else "smollm2", device, getattr(torch, dtype))
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return lm, random_windows(lm.model.config.vocab_size, n, seq_len), f"{lm.spec} (smollm2-135m not loaded: {why})"
    try:
        w = build_windows(lm.tokenizer, "wiki", seq_len, n)
        return lm, w, "smollm2-135m, wiki"
    except Exception as exc:  # noqa: BLE001
        return lm, random_windows(lm.model.config.vocab_size, n, seq_len), f"smollm2-135m, random tokens (wiki: {exc})"


def kernels(dev: torch.device, smoke: bool) -> list[dict]:
    """kernel_profile's parts on ``dev`` for SmolLM2 in float32 and bf16 (torch.compile in bf16 only)."""
    out = []
    for dtype in ("float32", "bfloat16"):
        lm, w, what = smollm2(dev, dtype, 2 if smoke else 8, 32 if smoke else 512, smoke=smoke)
        print(f"[kernels] {what}, {dtype}", file=sys.stderr, flush=True)
        parts = ("gemm", "group") if dev.type == "cuda" else ("gemm", "head", "group")
        try:
            res = profile(lm, w, dev, rounds=2 if smoke else 5, every=4, batch=w.ids.shape[0], parts=parts,
                          sizes=(2, 4, 8), compile_blocks=(4 if dtype == "bfloat16" else 0))
        except Exception:  # noqa: BLE001 (keep the other dtype's figures; the error is the finding)
            res = {"error": traceback.format_exc()}
        out.append({"model": what, "dtype": dtype, "windows": list(w.ids.shape), **res})
        del lm
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


def write(path: str, res: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(res, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--what", choices=("search", "kernels"), default="search")
    ap.add_argument("--smoke", action="store_true", help="a tiny model on the CPU: checks the script only")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (torch.cuda.is_available() is False); this check needs a GPU.")
    dev = torch.device("cpu" if args.smoke else "cuda")
    res = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "torch": torch.__version__,
           "device": "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(dev), "runs": []}
    if args.what == "kernels":
        res["runs"] = kernels(dev, args.smoke)
        write(args.json, res)
        print(json.dumps(res, indent=2))
        return
    if not args.smoke:  # (bf16 SmolLM2 on 2 CPU cores would take the smoke test many minutes)
        smol, w, what = smollm2(dev, "bfloat16", 16, 512)
        res["runs"].append(check(what, smol, w, 4, 8, cap_fraction=0.25))
        write(args.json, res)
        del smol
    big = random_llama("tiny" if args.smoke else "8b", dev)
    rand = random_windows(big.model.config.vocab_size, 2 if args.smoke else 8, 32 if args.smoke else 512)
    res["runs"].append(check(big.spec, big, rand, 2, 2, cap_fraction=0.25))
    write(args.json, res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
