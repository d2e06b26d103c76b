"""Units of depth pruning: a block (``attn i`` / ``mlp i``) or a whole layer (``layer i``).

``mix+layers`` (budget-greedy) is every block and every whole layer: units that overlap.

A unit is a sorted tuple of block indices (see :mod:`prunekit.models.adapter`): ``attn i`` =
``(2i,)``, ``mlp i`` = ``(2i+1,)``, ``layer i`` = ``(2i, 2i+1)``.
"""

from __future__ import annotations

from prunekit.core.errors import PrunekitError
from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import ATTN, MLP, Block

Unit = tuple[int, ...]
UNIT_KINDS = ("mix", "attn", "mlp", "layer", "mix+layers")


def make_units(adapter: ModelAdapter, kind: str) -> list[Unit]:
    """All units of ``kind`` in the model as it is (already removed blocks are left out)."""
    if kind == "layer":
        units = [(2 * i, 2 * i + 1) for i in range(adapter.num_layers)]
    elif kind in ("mix", ATTN, MLP):
        units = [(b.index,) for b in adapter.blocks(kind)]
    elif kind == "mix+layers":
        layers = [(2 * i, 2 * i + 1) for i in range(adapter.num_layers)]
        return make_units(adapter, "mix") + [u for u in layers if not any(adapter.is_removed(Block(b)) for b in u)]
    else:
        raise PrunekitError(f"unit kind '{kind}' is not known.", f"Use one of: {', '.join(UNIT_KINDS)}.")
    return [u for u in units if not all(adapter.is_removed(Block(b)) for b in u)]


def unit_name(unit: Unit) -> str:
    if len(unit) == 2 and unit[0] % 2 == 0 and unit[1] == unit[0] + 1:
        return f"layer {unit[0] // 2}"
    return ", ".join(str(Block(b)) for b in unit)


def parse_unit(name: str) -> Unit:
    """Inverse of :func:`unit_name` for single blocks and layers."""
    kind, _, idx = name.strip().partition(" ")
    if not idx.isdigit() or kind not in (ATTN, MLP, "layer"):
        raise PrunekitError(f"'{name}' is not a unit name.", "Use 'attn N', 'mlp N' or 'layer N'.")
    i = int(idx)
    return (2 * i, 2 * i + 1) if kind == "layer" else (Block.of(i, kind).index,)


def unit_params(adapter: ModelAdapter, unit: Unit) -> int:
    return sum(adapter.block_params(Block(b)) for b in unit)
