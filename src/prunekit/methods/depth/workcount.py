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


def count_search(block_macs: list[float], head_macs: float, order: list[Unit], units: list[Unit],
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
