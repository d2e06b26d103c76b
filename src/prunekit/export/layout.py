"""The per-layer geometry of a (pruned) model, read through the adapter, and its state dict renumbered.

Every exporter starts here, so it works for any pruning without knowing how it was made: a block is
present or removed (``adapter.is_removed``), an attention block has its head counts from the weight
shapes (``adapter.attention``; a hybrid family's linear mixer its own counts, ``adapter.head_counts``), an
MLP its width (``adapter.mlp_width``). Layers whose blocks are all removed are dropped and the kept layers
renumbered ``0..K-1`` (each keeps its own type: ``adapter.kept_layers_config``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import ATTN, MLP, Block
from prunekit.models.modeling_pruned import PER_LAYER_KEYS, SHARED_KEY


@dataclass(frozen=True)
class LayerGeometry:
    """One decoder layer as the model holds it now; 0 heads / 0 width mean the block is absent."""

    source: int  # index of the layer in the pruned (unrenumbered) model
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    mixer: str = "attention"  # what the mixer slot holds (adapter.mixer_kind): attention, linear, or mlp (none)
    whole: bool = True  # every block the layer had is present
    shared_size: int = 0  # the width of its sparse MoE block's pruned shared expert (DeepSeek), else 0

    @property
    def has_attention(self) -> bool:
        return self.num_heads > 0

    @property
    def has_mlp(self) -> bool:
        return self.intermediate_size > 0


@dataclass(frozen=True)
class ModelLayout:
    """The kept layers of a pruned model, the shared head dimension and the base config."""

    layers: tuple[LayerGeometry, ...]
    head_dim: int
    base_layers: int
    config: dict  # the model's config, with hidden_size set to the embedding width it has now
    kept_config: dict = field(default_factory=dict)  # config entries that follow the layer index, for the kept layers
    width_pruned: bool = False  # heads, channels or hidden size sliced (a width plan applied)

    @property
    def uniform(self) -> bool:
        """True when every kept layer has both blocks and (after width pruning) one and the same geometry:
        the stock config can say it."""
        if not all(g.whole for g in self.layers):
            return False
        shapes = {(g.mixer, g.num_heads, g.num_kv_heads, g.intermediate_size, g.shared_size) for g in self.layers}
        return len(shapes) == len({g.mixer for g in self.layers}) or not self.width_pruned

    def lists(self) -> dict[str, list[int]]:
        """The per-layer lists of a per-layer hf config (``modeling_pruned.PER_LAYER_KEYS``, and ``SHARED_KEY``
        where a layer has a pruned shared expert)."""
        heads, kv, inter = PER_LAYER_KEYS
        out = {
            heads: [g.num_heads for g in self.layers],
            kv: [g.num_kv_heads for g in self.layers],
            inter: [g.intermediate_size for g in self.layers],
        }
        if any(g.shared_size for g in self.layers):
            out[SHARED_KEY] = [g.shared_size for g in self.layers]
        return out


def model_layout(adapter: ModelAdapter) -> ModelLayout:
    """Per-layer geometry of the model behind ``adapter``; layers with no block left are dropped."""
    config = adapter.config
    head_dims = set()
    layers = []
    for i in range(adapter.num_layers):
        heads = kv = inter = shared = 0
        mixer = adapter.mixer_kind(i)
        if adapter.has_attention(i):
            a = adapter.attention(i)
            heads, kv = a.num_heads, a.num_kv_heads
            if a.kv is None:  # latent attention's per-head sizes are the config's own fields, and its head_dim the rope size
                head_dims.add(a.head_dim)
        elif not adapter.is_removed(Block.of(i, ATTN)):  # a linear mixer
            heads, kv = adapter.head_counts(i)
        if not adapter.is_removed(Block.of(i, MLP)):
            inter = adapter.mlp_width(i)
            m = adapter.shared_mlp(i)
            shared = m.gate.out_features if m is not None else 0
        whole = not any(adapter.is_removed(b) and not adapter.is_absent(b) for b in (Block.of(i, ATTN), Block.of(i, MLP)))
        if heads or inter:
            layers.append(LayerGeometry(i, heads, kv, inter, mixer=mixer, whole=whole, shared_size=shared))
    for i in adapter.cache_layers([g.source for g in layers]):  # removed layers kept as zero mixers for the cache
        layers.append(LayerGeometry(i, 0, 0, 0, mixer=adapter.mixer_kind(i), whole=False))
    layers.sort(key=lambda g: g.source)
    if len(head_dims) > 1:  # pragma: no cover - no pruning changes head_dim
        raise ValueError(f"layers disagree on head_dim: {sorted(head_dims)}")
    head_dim = head_dims.pop() if head_dims else int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )
    cfg = {k: v for k, v in config.to_dict().items() if k != "prunekit_width"}
    cfg["hidden_size"] = int(adapter.embed.weight.shape[1])  # hidden-channel pruning narrows it
    kept = adapter.kept_layers_config([g.source for g in layers])
    width_pruned = bool(getattr(config, "prunekit_width", None))
    return ModelLayout(tuple(layers), head_dim, adapter.num_layers, cfg, kept, width_pruned)


def _layers_prefix(adapter: ModelAdapter) -> str:
    for name, module in adapter.model.named_modules():
        if module is adapter.layers:
            return f"{name}."
    raise ValueError("the adapter's decoder layers are not a sub-module of the model")  # pragma: no cover


def renumbered_state_dict(adapter: ModelAdapter, layout: ModelLayout) -> dict[str, torch.Tensor]:
    """The model's state dict with kept layer ``layout.layers[k].source`` renamed to layer ``k``.

    Keys are the model's own (e.g. ``model.layers.3.self_attn.q_proj.weight``); removed blocks hold
    no weights, so nothing else changes. Tensors are shared with the model, not copied.
    """
    prefix = _layers_prefix(adapter)
    new_index = {g.source: k for k, g in enumerate(layout.layers)}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in adapter.model.state_dict().items():
        if key.startswith(prefix):
            old, rest = key[len(prefix):].split(".", 1)
            if int(old) not in new_index:
                continue
            key = f"{prefix}{new_index[int(old)]}.{rest}"
        out[key] = tensor
    return out
