"""Tiny random models and a tiny tokenizer, built in memory: for tests, examples and the CLI's
end-to-end checks. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

TINY_TEXT = (
    "The quick brown fox jumps over the lazy dog. A block of text for a tiny tokenizer, with "
    "numbers 0123456789 and punctuation: commas, stops; questions? Pruning removes blocks and "
    "heads from a language model while keeping its quality as far as it can."
)


def tiny_config(model_type: str = "llama", **overrides):
    """A small config of ``model_type``: 4 layers, hidden 64, 4 query / 2 KV heads, vocab 256."""
    kw = dict(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, pad_token_id=None, bos_token_id=0, eos_token_id=1,
    )
    if model_type == "qwen3":
        kw["head_dim"] = 16
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


# Per-family settings that make a tiny checkpoint exercise what the family does differently (sliding
# and global layers, soft-caps, multipliers, sparse and dense MoE layers); see tests/test_families.py.
FAMILY_OVERRIDES: dict[str, dict] = {
    "llama": {}, "mistral": {}, "qwen2": {}, "qwen3": {}, "phi3": {}, "olmo2": {},
    "gemma2": dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=4, final_logit_softcapping=3.0,
                   attn_logit_softcapping=5.0, layer_types=["sliding_attention", "full_attention"] * 2),
    "gemma3_text": dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=4, final_logit_softcapping=3.0,
                        layer_types=["sliding_attention", "full_attention"] * 2),
    "granite": dict(embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=4.0),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                      mlp_only_layers=[1], decoder_sparse_step=1),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=[1],
                      decoder_sparse_step=1, head_dim=16),
    # hybrid: Gated DeltaNet layers 0 and 2 (2 key heads, each serving 2 value heads), gated attention in 1 and 3
    "qwen3_5_text": dict(head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                         linear_value_head_dim=8, layer_types=["linear_attention", "full_attention"] * 2),
    # Qwen3-Next: as Qwen3.5's mixers (fused per key head); sparse MoE layers but layer 1 (dense), a gated shared expert
    "qwen3_next": dict(head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                       linear_value_head_dim=8, layer_types=["linear_attention", "full_attention"] * 2, num_experts=4,
                       num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                       mlp_only_layers=[1], decoder_sparse_step=1),
    # one mixer per layer: Mamba2 (4 heads of 8 in 2 groups), MoE (4 experts, top 2, a shared expert), attention, MLP
    "nemotron_h": dict(layers_block_type=["linear_attention", "moe", "full_attention", "mlp", "linear_attention", "moe"],
                       head_dim=16, mamba_num_heads=4, mamba_head_dim=8, n_groups=2, ssm_state_size=8, chunk_size=8,
                       n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       moe_shared_expert_intermediate_size=48, pad_token_id=None),
    # every layer sparse; sliding (window 4) and full layers alternating; YaRN as released, at a tiny scale
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=32, head_dim=16, sliding_window=4,
                    rope_parameters={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                     "truncate": False, "original_max_position_embeddings": 8, "rope_theta": 150000.0}),
    # latent attention with per-head [nope | rope] q rows and [k_nope | v] kv rows; two dense layers, then MoE with
    # group-limited routing (2 groups of 4) and a shared expert; YaRN with mscale as released
    "deepseek_v3": dict(num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
                        v_head_dim=12, n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=2,
                        first_k_dense_replace=2, moe_intermediate_size=32, n_shared_experts=1,
                        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                         "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                                         "rope_theta": 10000.0}),
}


def family_model(model_type: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """:func:`tiny_model` with the family's :data:`FAMILY_OVERRIDES` and random (non-trivial) norm weights,
    biases and per-head sinks."""
    model = tiny_model(model_type, seed=seed, **(FAMILY_OVERRIDES[model_type] | overrides))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # every 1-D parameter: the norms' weights around 1, Linear biases around 0
        for module in model.modules():
            for p in module.parameters(recurse=False):
                if p.dim() == 1:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (0.0 if isinstance(module, torch.nn.Linear) else 1.0))
        for name, t in [*model.named_parameters(), *model.named_buffers()]:  # biases kept outside Linears (experts, routers)
            if name.endswith("_bias") and t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.3)
    return model


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    """A randomly initialised causal LM of ``model_type`` (weights scaled up so blocks matter)."""
    config = tiny_config(model_type, **overrides)
    config.initializer_range = 0.2
    with torch.random.fork_rng():  # seeded weights; the caller's random state is left as it was
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def tiny_tokenizer(vocab_size: int = 256):
    """A byte-level BPE tokenizer trained in memory on a paragraph, wrapped as a fast HF tokenizer."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([TINY_TEXT] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def save_tiny_checkpoint(path: str | Path, model_type: str = "llama", seed: int = 0, **overrides) -> Path:
    """Write a tiny random checkpoint (model + tokenizer) that ``load_model(path)`` reads."""
    path = Path(path)
    model = tiny_model(model_type, seed=seed, **overrides)
    model.save_pretrained(path)
    tiny_tokenizer(model.config.vocab_size).save_pretrained(path)
    return path
