"""A projection on paper: BlockPruner's greedy search on Llama-2-70B, on 8 x 80 GB GPUs and on one.

Nothing is run: every figure is counted from the model's shapes with prunekit's own counting
(:mod:`prunekit.methods.depth.workcount`: ``llama_block_macs``, ``count_search`` for the MACs of
the naive / prefix / trajectory searches, ``count_onload``, which replays the capped engine's block visits
through its least-recently-used cache, for the weights brought in) and the engine's own rules for kept
states (one state per boundary and per kept candidate, ``windows x seq_len x hidden`` values in the compute
dtype). Seconds are those counts divided by
rates that are ASSUMED, not measured (``--tmacs``, ``--h2d-gbs``); change them to your hardware.

The removal order is not known before the search runs, and the trajectory cache's saving depends
on it, so two orders bracket it: ``late`` (attention blocks from the last layer down, what the
search tends to remove first) and ``early`` (from the first layer up).

    python benchmarks/projection_70b.py --json benchmarks/results/projection_70b.json
"""

from __future__ import annotations

import argparse
import json
import math

from prunekit.methods.depth.workcount import count_onload, count_search, llama_block_macs

# Llama-2-70B (meta-llama/Llama-2-70b-hf config.json)
LLAMA2_70B = {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
              "num_key_value_heads": 8, "vocab_size": 32000, "tie_word_embeddings": False}
GB = 1e9
GIB = 2**30


def block_params(cfg: dict) -> list[float]:
    """Parameters of each block (attention: q, k, v, o + its norm; MLP: gate, up, down + its norm)."""
    h, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = h // heads
    attn = h * heads * hd * 2 + h * kv * hd * 2 + h
    mlp = 3 * h * cfg["intermediate_size"] + h
    return [attn, mlp] * cfg["num_hidden_layers"]


def setup(name: str, cfg: dict, order: list, units: list, args, *, gpus: int, cap_gib: float, state_gib: float) -> dict:
    """One machine layout: ``gpus`` ranks, each with ``cap_gib`` of resident weights and ``state_gib`` of states."""
    nb = 2 * cfg["num_hidden_layers"]
    itemsize = 2  # bfloat16 compute on the GPUs
    bparams = block_params(cfg)
    head = cfg["vocab_size"] * cfg["hidden_size"] + cfg["hidden_size"]
    embed = cfg["vocab_size"] * cfg["hidden_size"]
    macs = llama_block_macs(cfg, args.seq_len)
    work = count_search(macs, cfg["vocab_size"] * cfg["hidden_size"], order, units, n_windows=args.windows, seq_len=args.seq_len)
    state = args.windows * args.seq_len * cfg["hidden_size"] * itemsize  # one boundary, all windows
    prefix_full = (nb + 1) * state
    cands = sum(len([u for u in units if not set(u) & set(b for p in order[:s] for b in p)]) for s in range(len(order)))
    traj_per_rank = math.ceil(len(units) / gpus) * state  # one kept state per candidate of this rank
    budget = state_gib * GIB
    stride = max(1, math.ceil(prefix_full / (budget / 2)))
    group = int(max(1, min(16, math.isqrt(int(budget / 2 / state)))))  # Engine.auto_candidate_batch under a cap
    moved = count_onload([p * itemsize for p in bparams], head * itemsize, order, units, args.windows // args.batch_size,
                         group=group, ranks=gpus, cap_bytes=cap_gib * GIB, embed_bytes=embed * itemsize)
    rank_macs = work["trajectory"] / gpus
    return {
        "setup": name, "gpus": gpus, "steps": len(order), "candidates_evaluated": cands,
        "weights_bf16_gb": (sum(bparams) + head + embed) * itemsize / GB,
        "cap_gib_per_gpu": cap_gib, "state_budget_gib_per_gpu": state_gib,
        "state_per_boundary_gib": state / GIB, "prefix_states_all_boundaries_gib": prefix_full / GIB,
        "prefix_stride": stride, "trajectory_states_per_rank_gib": traj_per_rank / GIB,
        "trajectory_states_fit": traj_per_rank <= budget / 2, "candidate_group": group,
        "gpu_memory_gib_per_gpu": cap_gib + state_gib + (embed * itemsize + state) / GIB,
        "tmacs_naive": work["naive"] / 1e12, "tmacs_prefix": work["prefix"] / 1e12, "tmacs_trajectory": work["trajectory"] / 1e12,
        "counted_ratio_naive_over_trajectory": work["naive"] / work["trajectory"],
        "tmacs_per_rank": rank_macs / 1e12, "compute_hours_per_rank": rank_macs / (args.tmacs * 1e12) / 3600,
        "moved_tb_per_rank": moved["rank_bytes"] / 1e12, "moved_tb_all_ranks": moved["total_bytes"] / 1e12,
        "transfer_hours_per_rank": moved["rank_bytes"] / (args.h2d_gbs * GB) / 3600,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="greedy steps (units removed)")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--tmacs", type=float, default=200.0, help="ASSUMED sustained bf16 tera-MACs/s of one GPU")
    ap.add_argument("--h2d-gbs", type=float, default=20.0, help="ASSUMED host-to-GPU GB/s of one GPU's weight copies")
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = LLAMA2_70B
    layers = cfg["num_hidden_layers"]
    units = [(b,) for b in range(2 * layers)]
    orders = {"late": [(2 * i,) for i in range(layers - 1, layers - 1 - args.steps, -1)],
              "early": [(2 * i,) for i in range(1, 1 + args.steps)]}
    rows = []
    for oname, order in orders.items():
        rows.append(setup("8 x 80 GB", cfg, order, units, args, gpus=8, cap_gib=40, state_gib=30) | {"order": oname})
        rows.append(setup("1 x 80 GB", cfg, order, units, args, gpus=1, cap_gib=40, state_gib=30) | {"order": oname})
    res = {"model": "Llama-2-70B", "config": cfg, "windows": args.windows, "seq_len": args.seq_len,
           "assumed_tmacs_per_gpu": args.tmacs, "assumed_h2d_gbs": args.h2d_gbs, "rows": rows}
    keys = ("setup", "order", "steps", "candidates_evaluated", "tmacs_per_rank", "compute_hours_per_rank", "moved_tb_per_rank",
            "transfer_hours_per_rank", "gpu_memory_gib_per_gpu", "prefix_stride", "trajectory_states_fit",
            "counted_ratio_naive_over_trajectory")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
