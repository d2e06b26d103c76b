"""Counting a greedy search's work from shapes alone (no weights), for any chosen order.

Used to predict the saving of the engine's caches on a model one cannot run here (e.g. Llama-2-7B
shapes with 2048-token windows). Costs are MACs per token of each block (see
:func:`prunekit.engine.block_macs_per_token`) and of the LM head; per window the head runs on
``seq_len - 1`` positions and blocks on ``seq_len`` tokens (the engine scores all but the last).

- naive: every candidate of every step is a full forward (all kept blocks but the candidate) + head.
- prefix: candidate ``u`` runs the kept blocks from its first block on, + head; after each step the
  prefix states after the removed block are rebuilt (one pass over the blocks after it).
- trajectory: as prefix, but a candidate lying wholly before the block removed at the previous step
  resumes at that block's boundary (the lead candidate, tried first for early exit, is not counted
  here: it has no kept state, so the measured ratio is slightly below this count).
Early exit depends on the values, so it is not counted from shapes.
"""

from __future__ import annotations

from collections import OrderedDict

Unit = tuple[int, ...]


def attention_macs(hidden: int, heads: int, kv_heads: int, head_dim: int, seq_len: int) -> float:
    proj = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    return proj + 2.0 * heads * head_dim * (seq_len + 1) / 2.0


def llama_block_macs(config: dict, seq_len: int) -> list[float]:
    """MACs per token of each block of a Llama-shaped config (a dict of HF config fields)."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads)
    hd = config.get("head_dim") or hidden // heads
    attn = attention_macs(hidden, heads, kv, hd, seq_len)
    mlp = 3.0 * hidden * config["intermediate_size"]
    return [attn, mlp] * config["num_hidden_layers"]


def count_search(block_macs: list[float], head_macs: float, order: list[Unit], units: list[Unit], *,
                 n_windows: int, seq_len: int) -> dict[str, float]:
    """Total MACs of ``len(order)`` greedy steps that removed ``order``, for naive/prefix/trajectory."""
    tokens = n_windows * seq_len
    head = head_macs * n_windows * (seq_len - 1)
    nb = len(block_macs)
    removed: set[int] = set()
    total = {"naive": 0.0, "prefix": 0.0, "trajectory": 0.0}
    prev: Unit | None = None

    def run(start: int, skip: set[int]) -> float:
        return sum(block_macs[b] for b in range(start, nb) if b not in skip) * tokens

    for p in order:
        cands = [u for u in units if not set(u) & removed]
        for u in cands:
            skip = removed | set(u)
            total["naive"] += run(0, skip) + head
            total["prefix"] += run(u[0], skip) + head
            start = prev[0] if prev is not None and u[-1] < prev[0] else u[0]
            total["trajectory"] += run(start, skip) + head
        removed |= set(p)
        rebuild = run(p[0], removed)
        total["prefix"] += rebuild
        total["trajectory"] += rebuild
        prev = p
    return total



def count_onload(block_bytes: list[float], head_bytes: float, order: list[Unit], units: list[Unit], n_batches: int, *,
                 group: int, ranks: int, cap_bytes: float, embed_bytes: float = 0.0) -> dict[str, float]:
    """Bytes of weights a capped greedy search (``max_memory``, prefix + trajectory caches) brings in.

    Replays the engine's order of block visits with its least-recently-used cache of ``cap_bytes``:
    the dense total and the first prefix pass (every block, block-major); per step, the lead alone
    (the previous step's runner-up, assumed to be the unit the next step removes, as it usually
    is; the unit this step removes on the last step), then
    rounds of ``group * ranks`` candidates in decreasing block order (candidate ``i`` on rank
    ``i mod ranks``), each rank walking, per window batch, the blocks its candidates run (from the
    earliest start: a trajectory state after the previous step's unit, else the unit) and the head;
    then the prefix rebuild after the removed unit. Assumes prefix states at every boundary and no
    early exit. Returns ``rank_bytes`` (the busiest rank's), ``total_bytes`` (all ranks), ``loads``.
    """
    nb = len(block_bytes)
    size = {b: block_bytes[b] for b in range(nb)} | {"head": head_bytes, "embed": embed_bytes}
    lru: list[OrderedDict] = [OrderedDict() for _ in range(ranks)]
    used = [0.0] * ranks
    moved = [0.0] * ranks
    loads = 0

    def bring(r: int, key) -> None:
        nonlocal loads
        cache = lru[r]
        if key in cache:
            cache.move_to_end(key)
            return
        while cache and used[r] + size[key] > cap_bytes:
            used[r] -= cache.popitem(last=False)[1]
        cache[key] = size[key]
        used[r] += size[key]
        moved[r] += size[key]
        loads += 1

    def walk(r: int, cands: list[Unit], removed: set[int], prev: Unit | None) -> None:
        starts = [prev[0] if prev is not None and u[-1] < prev[0] else u[0] for u in cands]
        for b in range(min(starts), nb):
            if b not in removed and any(s <= b and b not in u for s, u in zip(starts, cands)):
                bring(r, b)
        bring(r, "head")

    removed: set[int] = set()
    for r in range(ranks):
        bring(r, "embed")
        for _ in range(2):  # the dense total, then the first prefix pass
            for b in range(nb):
                bring(r, b)
        bring(r, "head")
    prev: Unit | None = None
    for k, p in enumerate(order):
        cands = sorted((u for u in units if not set(u) & removed), key=lambda u: u[0], reverse=True)
        if prev is not None:  # the lead runs alone, on rank 0
            lead = order[k + 1] if k + 1 < len(order) and order[k + 1] in cands else p
            cands.remove(lead)
            for _ in range(n_batches):
                walk(0, [lead], removed, prev)
        for r0 in range(0, len(cands), group * ranks):
            rnd = cands[r0: r0 + group * ranks]
            for r in range(ranks):
                mine = [u for i, u in enumerate(rnd) if (r0 + i + (prev is not None)) % ranks == r]
                for _ in range(n_batches if mine else 0):
                    walk(r, mine, removed, prev)
        removed |= set(p)
        for r in range(ranks):
            for b in range(p[0], nb):
                if b not in removed:
                    bring(r, b)
        prev = p
    return {"rank_bytes": max(moved), "total_bytes": sum(moved), "loads": float(loads)}
