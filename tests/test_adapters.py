"""The adapter contract, one test class and a subclass per supported family."""

from __future__ import annotations

import pytest
import torch

from prunekit.core.errors import PrunekitError
from prunekit.models import ATTN, MLP, Block, get_adapter, supported_model_types
from prunekit.models.tiny import tiny_model


class AdapterContract:
    model_type = "llama"

    @pytest.fixture
    def model(self):
        return tiny_model(self.model_type, num_hidden_layers=4)

    @pytest.fixture
    def ids(self):
        return torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))

    def test_registry_picks_this_adapter(self, model):
        assert get_adapter(model).model_type == self.model_type

    def test_blocks_alternate_attn_mlp(self, model):
        a = get_adapter(model)
        blocks = a.blocks()
        assert len(blocks) == 2 * model.config.num_hidden_layers == a.num_blocks
        assert [b.kind for b in blocks[:4]] == [ATTN, MLP, ATTN, MLP]
        assert [b.layer for b in blocks[:4]] == [0, 0, 1, 1]
        assert [b.index for b in a.blocks("mlp")] == [1, 3, 5, 7]

    def test_block_params_add_up(self, model):
        a = get_adapter(model)
        rest = a.embed.weight.numel() + a.lm_head.weight.numel() + sum(p.numel() for p in a.final_norm.parameters())
        assert sum(a.block_params(b) for b in a.blocks()) + rest == a.total_params()

    def test_head_geometry(self, model):
        a = get_adapter(model)
        att = a.attention(0)
        assert att.num_heads == model.config.num_attention_heads
        assert att.num_kv_heads == model.config.num_key_value_heads
        assert att.q.out_features == att.num_heads * att.head_dim
        m = a.mlp(0)
        assert m.gate.out_features == m.up.out_features == m.down.in_features == model.config.intermediate_size

    def test_block_stepping_equals_forward(self, model, ids):
        a = get_adapter(model)
        h, kwargs = a.capture_inputs(ids)
        with torch.inference_mode():
            for b in a.blocks():
                h = a.run_block(b, h, kwargs[b.layer])
            ours = a.logits(h)
            ref = model(input_ids=ids).logits
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("kind", [ATTN, MLP])
    def test_skipping_a_zeroed_block_leaves_logits_unchanged(self, model, ids, kind):
        a = get_adapter(model)
        block = Block.of(1, kind)
        proj = a.attention(1).o if kind == ATTN else a.mlp(1).down
        with torch.no_grad():
            proj.weight.zero_()
            if proj.bias is not None:
                proj.bias.zero_()
            before = model(input_ids=ids).logits
            with a.skipping([block]):
                skipped = model(input_ids=ids).logits
            a.remove_block(block)
            removed = model(input_ids=ids).logits
        torch.testing.assert_close(skipped, before, rtol=0, atol=1e-6)
        torch.testing.assert_close(removed, before, rtol=0, atol=1e-6)

    def test_remove_block_drops_its_weights(self, model):
        a = get_adapter(model)
        before = a.total_params()
        size = a.block_params(Block.of(2, ATTN)) + a.block_params(Block.of(3, MLP))
        a.remove_block(Block.of(2, ATTN))
        a.remove_block(Block.of(3, MLP))
        assert a.total_params() == before - size
        assert a.is_removed(Block.of(2, ATTN)) and a.block_params(Block.of(2, ATTN)) == 0
        assert [b.index for b in a.removed_blocks()] == [4, 7]

    def test_skipping_restores_the_model(self, model, ids):
        a = get_adapter(model)
        with torch.no_grad():
            ref = model(input_ids=ids).logits
            with a.skipping([Block(0), Block(3)]):
                changed = model(input_ids=ids).logits
            after = model(input_ids=ids).logits
        assert not torch.allclose(changed, ref)
        torch.testing.assert_close(after, ref, rtol=0, atol=0)

    def test_generate_with_removed_first_attention(self, model, ids):
        a = get_adapter(model)
        a.remove_block(Block.of(0, ATTN))
        with torch.no_grad():
            cached = model.generate(ids[:1], max_new_tokens=5, do_sample=False)
            full = ids[:1]
            for _ in range(5):
                nxt = model(input_ids=full, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                full = torch.cat([full, nxt], 1)
        assert torch.equal(cached, full)


class TestLlama(AdapterContract):
    model_type = "llama"


class TestMistral(AdapterContract):
    model_type = "mistral"


class TestQwen2(AdapterContract):
    model_type = "qwen2"

    def test_qkv_have_bias(self, model):
        assert get_adapter(model).attention(0).q.bias is not None


class TestQwen3(AdapterContract):
    model_type = "qwen3"


def test_unsupported_model_type_lists_the_supported():
    m = tiny_model("llama")
    m.config.model_type = "gpt2"
    with pytest.raises(PrunekitError) as e:
        get_adapter(m)
    for name in supported_model_types():
        assert name in str(e.value)
