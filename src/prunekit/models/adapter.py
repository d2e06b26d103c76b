"""The adapter contract: what every algorithm may know about a model family.

Algorithms never touch ``model.model.layers`` or branch on architecture; they ask the adapter
for the decoder layers, the blocks, the projections and the head geometry, and let it skip or
remove blocks.

Blocks. Decoder layer ``i`` holds two blocks, numbered in forward order:
``2*i`` = the mixer block (softmax attention; in hybrid families a linear-attention / Gated DeltaNet
or Mamba2 mixer, by the layer's type) and ``2*i + 1`` = the feed-forward block (MLP or sparse MoE).
A family whose layers hold one block each (Nemotron-H) leaves the other slot *absent*: it holds
nothing and counts as removed from the start, so no method can choose it. Each family
describes how a block is built (:class:`BlockSpec`: optional input norm, sub-layer, optional
output norm, residual scale), so running block ``b`` on the residual stream ``h`` (shape
``[batch, seq, hidden]``) computes ``h + s_b * out_b(f_b(in_b(h)))``; removing it removes its
norms and sub-layer and leaves ``h`` unchanged. Projections are :class:`Proj` row ranges of a
Linear (fused ``qkv_proj`` / ``gate_up_proj`` included); the head is a :class:`Head`.

The contract's plain data (block ids, family facts, the projection views) is :mod:`prunekit.models.contract`;
what the mixer slot holds, by the layer's type, is :mod:`prunekit.models.mixers` (a base of
:class:`ModelAdapter`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from prunekit.models.contract import (
    ATTN,
    LLAMA_FACTS,
    MLP,
    SOFTMAX,
    AttentionProjections,
    Block,
    BlockSpec,
    ExpertProjections,
    Head,
    LlamaFolds,
    MlpProjections,
    Proj,
)
from prunekit.models.mixers import ABSENT, MixerSlots


class _StopForward(Exception):
    pass


class _Catcher(nn.Module):
    """Replaces a decoder layer for one forward: records the layer's inputs and passes ``h`` on.

    ``copied``: attributes of the replaced layer that the model's own loop reads (Nemotron-H picks each
    layer's mask by ``layer.block_type``)."""

    def __init__(self, record: list, stop: bool, copied: dict | None = None) -> None:
        super().__init__()
        self.record, self.stop = record, stop
        for name, value in (copied or {}).items():
            setattr(self, name, value)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.record.append((hidden_states, kwargs))
        if self.stop:
            raise _StopForward
        return hidden_states


class ModelAdapter(MixerSlots):
    """The contract for decoder-only families; the defaults describe Llama's pre-norm layer.

    A family file (``models/families/``) subclasses it and describes, rather than assumes, how each
    block is built (:meth:`block_spec`), where its projections are (:meth:`attention`,
    :meth:`mlp`), what its head does (:meth:`head`), and which per-layer config entries follow the
    layer index (:meth:`kept_layers_config`).
    """

    model_type: str = ""
    #: the family's layer, as plain data (see :data:`~prunekit.models.contract.LLAMA_FACTS`)
    facts: dict = LLAMA_FACTS
    #: None when LLM-Pruner's width pruning works on the family, else why it is refused.
    width_refusal: str | None = None
    #: None when the channel strategy and global ranking work on the family, else why they are refused.
    width_options_refusal: str | None = None
    #: False when the stock config cannot say a width-pruned model's widths (MoE: experts and dense MLPs).
    stock_width = True
    #: None when an export's config may give a narrower ``hidden_size``, else why not (a value derived from it).
    hidden_resize_refusal: str | None = None
    #: None when the model can be written in Llama's per-layer layout (gguf ``deci``, nemotron-nas), else why not.
    llama_layout_refusal: str | None = None
    #: Attributes of a decoder layer that the model's forward loop reads (copied onto the input catchers).
    layer_attributes: tuple[str, ...] = ()

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config

    # --- structure ---------------------------------------------------------------------------
    @property
    def decoder(self) -> nn.Module:
        return self.model.model

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_blocks(self) -> int:
        return 2 * self.num_layers

    @property
    def embed(self) -> nn.Embedding:
        return self.decoder.embed_tokens

    def head(self) -> Head:
        return Head(self.decoder.norm, self.model.lm_head)

    @property
    def final_norm(self) -> nn.Module:
        return self.head().final_norm

    @property
    def lm_head(self) -> nn.Linear:
        return self.head().lm_head

    def blocks(self, kind: str = "mix") -> list[Block]:
        """All blocks of ``kind`` ('mix' = both), in forward order, removed ones included."""
        out = [Block(i) for i in range(self.num_blocks)]
        return out if kind == "mix" else [b for b in out if b.kind == kind]

    def block_spec(self, block: Block) -> BlockSpec:
        """How ``block`` is built (attribute names on its decoder layer, from :attr:`facts`); an absent slot
        has no sub-layer name."""
        f = self.facts
        m = self._mixer_facts(block)
        if m:
            return BlockSpec(m["norms"][0], m["sublayer"], m["norms"][1])
        if m is None and f.get("mixers"):
            return BlockSpec(None, "", None)
        inp, out = f["attention_norms"] if block.kind == ATTN else f["mlp_norms"]
        return BlockSpec(inp, f["attention_sublayer"] if block.kind == ATTN else f["mlp_sublayer"], out)

    def sublayer(self, block: Block) -> nn.Module:
        name = self.block_spec(block).sublayer
        return getattr(self.layers[block.layer], name) if name else ABSENT

    def norms(self, block: Block) -> tuple[nn.Module | None, nn.Module | None]:
        """(input norm, output norm) of a block; None where the family has none (or it is removed)."""
        layer, spec = self.layers[block.layer], self.block_spec(block)
        out = []
        for name in (spec.input_norm, spec.output_norm):
            m = getattr(layer, name) if name else None
            out.append(None if m is None or isinstance(m, nn.Identity) else m)
        return out[0], out[1]

    def block_modules(self, block: Block) -> tuple[nn.Module, ...]:
        """Every module of a block in forward order: input norm, sub-layer, output norm (those it has)."""
        inp, outp = self.norms(block)
        return tuple(m for m in (inp, self.sublayer(block), outp) if m is not None)

    def is_removed(self, block: Block) -> bool:
        return getattr(self.sublayer(block), "removed", False)

    def block_params(self, block: Block) -> int:
        """Parameters of the block (norms + sub-layer) as the model holds it now."""
        return sum(p.numel() for m in self.block_modules(block) for p in m.parameters())

    def total_params(self) -> int:
        """Parameters of the whole model, tied embeddings counted once."""
        return sum(p.numel() for p in self.model.parameters())

    def decoder_params(self) -> int:
        """Parameters of the decoder layers: the whole model's but the embedding, the final norm and the LM head."""
        return sum(p.numel() for p in self.layers.parameters())

    def weight_macs(self, block: Block) -> float:
        """Multiply-accumulates per token of the block's weights (one per weight of its Linears)."""
        return float(sum(m.weight.numel() for m in self.sublayer(block).modules() if isinstance(m, nn.Linear)))

    def linear_modules(self, block: Block) -> list[nn.Module]:
        """The Linear layers of a present block (what LoRA adapts)."""
        return [m for m in self.sublayer(block).modules() if isinstance(m, nn.Linear)]

    def attention(self, layer: int) -> AttentionProjections:
        """q, k, v, o of ``layer`` as :attr:`facts` names them; a fused ``qkv`` holds ``[Q | K | V]`` rows
        (``num_heads * head_dim``, then ``num_kv_heads * head_dim`` twice)."""
        attn = self.sublayer(Block.of(layer, ATTN))
        names = self.facts["attention_projections"]
        o = getattr(attn, names["o"])
        head_params = tuple((attn, name) for name in self.facts["head_parameters"])
        if "kv" in names:
            return self._latent_attention(attn, names, o, head_params)
        hd = attn.head_dim
        if "qkv" in names:
            qkv = getattr(attn, names["qkv"])
            n_q = o.in_features // hd
            n_kv = (qkv.out_features // hd - n_q) // 2
            q_end, k_end = n_q * hd, (n_q + n_kv) * hd
            q, k, v = Proj(qkv, 0, q_end), Proj(qkv, q_end, k_end), Proj(qkv, k_end, k_end + n_kv * hd)
        else:
            q, k, v = (Proj(getattr(attn, names[x])) for x in ("q", "k", "v"))
            n_q, n_kv = q.out_features // hd, k.out_features // hd
        head_norms = tuple((getattr(attn, name), which) for which, name in self.facts["head_norms"].items())
        if self.facts.get("query_gate"):  # q rows [q_h | gate_h] per head
            return AttentionProjections(q, k, v, Proj(o), n_q // 2, n_kv, hd, head_norms=head_norms, head_params=head_params,
                                        q_rows_per_head=2)
        return AttentionProjections(q, k, v, Proj(o), n_q, n_kv, hd, head_norms=head_norms, head_params=head_params)

    def _latent_attention(self, attn: nn.Module, names: dict, o: nn.Linear, head_params: tuple) -> AttentionProjections:
        """Latent attention (DeepSeek's MLA): each query head owns its q rows, its ``[k_nope | v]`` rows of ``kv``
        and its value's o columns; the per-head sizes are the config's (``qk_head_dim``, ``v_head_dim``), so each
        head is a KV group of its own."""
        c = self.config
        q = next(getattr(attn, n) for n in names["q"] if getattr(attn, n, None) is not None)
        kv = getattr(attn, names["kv"])
        hd, vd = int(c.qk_nope_head_dim + c.qk_rope_head_dim), int(c.v_head_dim)
        n = q.out_features // hd
        return AttentionProjections(Proj(q), None, None, Proj(o), n, n, hd, head_params=head_params, kv=Proj(kv),
                                    kv_head_dim=kv.out_features // n, o_head_dim=vd)

    def mlp(self, layer: int) -> MlpProjections:
        """gate, up, down of ``layer`` as :attr:`facts` names them; a fused ``gate_up`` holds ``[gate | up]``
        rows (split by ``chunk(2)``: channel ``j`` owns rows ``j`` and ``I + j``)."""
        m = self.sublayer(Block.of(layer, MLP))
        names = self.facts["mlp_projections"]
        down = getattr(m, names["down"])
        if "gate_up" in names:
            gate_up, width = getattr(m, names["gate_up"]), down.in_features
            return MlpProjections(Proj(gate_up, 0, width), Proj(gate_up, width, 2 * width), Proj(down))
        return MlpProjections(Proj(getattr(m, names["gate"])), Proj(getattr(m, names["up"])), Proj(down))

    def experts(self, layer: int) -> ExpertProjections | None:
        """The routed experts of ``layer``'s MLP block when it is a sparse MoE block, else None."""
        return None

    def output_projection(self, block: Block) -> Proj:
        """The Linear whose output is what ``block`` writes to the residual stream (attention's o, the MLP's
        down): linearly, times the residual scale, when :meth:`output_fold_refusal` is None."""
        return self.attention(block.layer).o if block.kind == ATTN else self.mlp(block.layer).down

    def output_fold_refusal(self, block: Block) -> str | None:
        """Why a linear map on what ``block`` writes to the residual cannot be folded exactly into its
        :meth:`output_projection` (None when it can): an output norm between the projection and the residual,
        a sparse MoE block (no single projection), a projection that is part of a fused Linear, a hybrid family's
        linear mixer (Gated DeltaNet, Mamba2: not described for a fold yet)."""
        spec = self.block_spec(block)
        if block.kind == ATTN and self.mixer_kind(block.layer) != SOFTMAX:
            return f"{block} is a {self.layer_type(block.layer)} mixer, whose output projection no fold describes yet"
        if self.norms(block)[1] is not None:
            return f"{block}'s output norm ({spec.output_norm}) normalises its projection's output before the residual"
        if block.kind == MLP and self.experts(block.layer) is not None:
            return f"{block} is a sparse mixture-of-experts block, with no single output projection"
        if not self.output_projection(block).whole:
            return f"{block}'s output projection is part of a fused Linear"
        return None

    def shared_mlp(self, layer: int) -> MlpProjections | None:
        """The shared expert of ``layer``'s sparse MoE block whose channels are pruned (``facts["shared_mlp"]``:
        a gated MLP with the facts' MLP projections), else None."""
        name = self.facts["shared_mlp"]
        if name is None or self.experts(layer) is None:
            return None
        m = getattr(self.sublayer(Block.of(layer, MLP)), name)
        names = self.facts["mlp_projections"]
        return MlpProjections(Proj(getattr(m, names["gate"])), Proj(getattr(m, names["up"])), Proj(getattr(m, names["down"])))

    def sync_experts(self, layer: int) -> None:
        """Make ``layer``'s experts module agree with its sliced weights (MoE families override it)."""

    def mlp_width(self, layer: int) -> int:
        """Channels of ``layer``'s MLP (as the model holds it now)."""
        return self.mlp(layer).gate.out_features

    def sync_attention(self, layer: int) -> None:
        """Make ``layer``'s attention module agree with its sliced weights (after head removal).

        Llama-like attention infers the head count from the weights (``view(..., -1, head_dim)``). An
        attention that slices its fused rows by its config's head counts (``facts['heads_from_config']``,
        Phi-3) gets its own copy of the config with its own counts."""
        if not self.facts["heads_from_config"]:
            return
        attn = self.sublayer(Block.of(layer, ATTN))
        a = self.attention(layer)
        if a.num_heads != attn.config.num_attention_heads or a.num_kv_heads != attn.num_key_value_heads:
            attn.config = copy.copy(attn.config)
            attn.config.num_attention_heads = a.num_heads
            attn.config.num_key_value_heads = a.num_kv_heads
            attn.num_key_value_heads = a.num_kv_heads
            attn.num_key_value_groups = a.num_heads // a.num_kv_heads

    def llama_folds(self) -> LlamaFolds:
        """How this model's weights are scaled to be written in Llama's layout (see :class:`LlamaFolds`)."""
        return LlamaFolds()

    def llama_config(self, config: dict) -> dict:
        """``config`` (a dict of this family's config) as the config of the Llama-layout model it is
        written as; the family's own for families that are Llama's layout already."""
        return config

    def kept_layers_config(self, sources: list[int]) -> dict:
        """Config entries that follow the layer index, for a model that keeps base layers ``sources``
        (in order) as its layers ``0..K-1``: e.g. the per-layer attention types."""
        types = getattr(self.config, "layer_types", None)
        if isinstance(types, list) and len(types) == self.num_layers:
            return {"layer_types": [types[i] for i in sources]}
        return {}

    # --- running blocks ----------------------------------------------------------------------
    def capture_inputs(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """Embeddings and each decoder layer's keyword inputs (mask, rotary cos/sin) for a batch.

        The model's own preamble computes them (so every family's embedding scale, masks and
        position encodings are its own); the decoder layers are swapped for catchers and the
        forward stops before the LM head. Returns ``h0 [batch, seq, hidden]`` and one kwargs dict
        per layer.
        """
        record: list = []
        originals = list(self.layers)
        n = len(originals)
        for i in range(n):
            copied = {name: getattr(originals[i], name) for name in self.layer_attributes}
            self.layers[i] = _Catcher(record, stop=(i == n - 1), copied=copied)
        try:
            with torch.inference_mode():
                self.model(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
        finally:
            for i, layer in enumerate(originals):
                self.layers[i] = layer
        h0 = record[0][0]
        keep = ("attention_mask", "position_embeddings", "position_ids")
        kwargs = [{k: v for k, v in kw.items() if k in keep} for _, kw in record]
        return h0, kwargs

    def run_block(self, block: Block, h: torch.Tensor, layer_kwargs: dict) -> torch.Tensor:
        """One block on the residual stream, as :class:`BlockSpec` says (an absent slot passes it unchanged)."""
        spec = self.block_spec(block)
        if not spec.sublayer:
            return h
        inp, outp = self.norms(block)
        sub = self.sublayer(block)
        x = inp(h) if inp is not None else h
        y = self.call_sublayer(block, sub, x, layer_kwargs)
        if outp is not None:
            y = outp(y)
        return h + (y * spec.residual_scale if spec.residual_scale != 1.0 else y)

    def tile_inputs(self, layer_kwargs: dict, k: int, batch: int) -> dict:
        """A layer's keyword inputs for ``k`` copies of a ``batch``-window batch stacked along dim 0
        (several candidates run as one batch): tensors whose first dim is ``batch`` are tiled ``k``
        times (mask ``[batch, 1, T, T]``, rotary cos/sin ``[batch, T, d]``); size-1 dims broadcast."""

        def tile(v):
            if isinstance(v, torch.Tensor) and v.dim() > 1 and v.shape[0] == batch and batch > 1:
                return v.repeat(k, *([1] * (v.dim() - 1)))
            if isinstance(v, tuple):
                return tuple(tile(x) for x in v)
            return v

        return {name: tile(v) for name, v in layer_kwargs.items()}

    def logits(self, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The head on residual states ``[..., hidden]`` -> ``[..., vocab]`` (see :class:`Head`).

        ``out``: a buffer ``[n, vocab]`` for 2-D ``h`` ``[n, hidden]`` to write the logits into (no
        fresh memory per call). It is used when the LM head is a plain ``nn.Linear`` without bias of
        ``out``'s dtype and device and no gradient is recorded: ``torch.mm(x, W.T, out=out)`` is the product ``F.linear`` runs,
        and the divisor and soft-cap are then applied in place (the same kernels, the same bits).
        Otherwise the logits are computed as without it; use the returned tensor either way.
        """
        head = self.head()
        x = head.final_norm(h)
        lm = head.lm_head
        x = x.to(lm.weight.device)  # a no-op unless a device map put them apart
        into = (out is not None and type(lm) is nn.Linear and lm.bias is None and x.dim() == 2
                and out.shape == (x.shape[0], lm.weight.shape[0]) and out.dtype == x.dtype == lm.weight.dtype
                and out.device == x.device and not (torch.is_grad_enabled() and (x.requires_grad or lm.weight.requires_grad)))
        if into:
            logits = torch.mm(x, lm.weight.t(), out=out)
            if head.logit_divisor != 1.0:
                logits.div_(head.logit_divisor)
            if head.softcap is not None:
                logits.div_(head.softcap).tanh_().mul_(head.softcap)
            return logits
        logits = lm(x)
        if head.logit_divisor != 1.0:
            logits = logits / head.logit_divisor
        if head.softcap is not None:
            logits = torch.tanh(logits / head.softcap) * head.softcap
        return logits

    # --- skipping and removing -----------------------------------------------------------------
    def _swap(self, block: Block, mods: dict[str, nn.Module]) -> dict[str, nn.Module]:
        layer = self.layers[block.layer]
        old = {name: getattr(layer, name) for name in mods}
        for name, m in mods.items():
            setattr(layer, name, m)
        return old

    def remove_block(self, block: Block) -> None:
        """Remove a block for good: its norms and sub-layer leave the model, the residual passes through."""
        if not self.is_removed(block):
            self._swap(block, self._zero(block))

    @contextlib.contextmanager
    def skipping(self, blocks: Iterable[Block]) -> Iterator[None]:
        """Temporarily skip blocks (used by the naive reference search and by evaluation)."""
        saved = []
        try:
            for b in blocks:
                if not self.is_removed(b):
                    saved.append((b, self._swap(b, self._zero(b))))
            yield
        finally:
            for b, old in reversed(saved):
                self._swap(b, old)

    def removed_blocks(self) -> list[Block]:
        """Blocks removed from the model (an absent slot was never a block)."""
        return [b for b in self.blocks() if self.is_removed(b) and not self.is_absent(b)]

    def describe(self) -> dict:
        """A JSON-able summary of the model's geometry."""
        first = 0 if not self.facts.get("mixers") else next((i for i in range(self.num_layers) if self.mixer_kind(i) == SOFTMAX), 0)
        a = self.attention(first) if self.has_attention(first) else None
        return {
            "model_type": self.model_type,
            "layers": self.num_layers,
            "blocks": self.num_blocks,
            "hidden_size": self.config.hidden_size,
            "num_heads": a.num_heads if a else self.config.num_attention_heads,
            "num_kv_heads": a.num_kv_heads if a else self.config.num_key_value_heads,
            "head_dim": a.head_dim if a else getattr(self.config, "head_dim", None),
            "intermediate_size": self.config.intermediate_size,
            "vocab_size": self.config.vocab_size,
            "parameters": self.total_params(),
        }


def embedding_keys(model: nn.Module) -> tuple[str, str]:
    """State-dict keys of the LM head's and the input embedding's weights (``get_output_embeddings`` /
    ``get_input_embeddings``, transformers' own accessors), e.g. for restoring a tied pair."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    return f"{names[id(head)]}.weight", f"{names[id(embed)]}.weight"
