"""Sequential onloading: a model's weights stay where they are stored, blocks come in under a cap.

Under ``--max-memory GIB`` the model is loaded in its checkpoint's dtype and left on the CPU:
transformers memory-maps the safetensors file, so those weights are file-backed pages, not
resident copies. The engine asks :class:`Onloader` for a unit (block ``b``, ``"head"`` = final
norm + LM head, ``"embed"``) before running it; the unit's parameters are then replaced by copies
on the compute device in the compute dtype (accelerate's ``set_module_tensor_to_device``), and the
least recently used units are given back (their stored parameters put back) while the resident
copies would exceed the cap. The values are those a model loaded in the compute dtype holds
(the same conversion), so every result is identical to an uncapped run's.

The onloader counts the bytes it brings in (``moved_bytes``) and the peak of the resident copies
(``peak_bytes``, never above ``cap_bytes``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import torch
from accelerate.utils import set_module_tensor_to_device
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import Block

GIB = 2**30


def _slots(modules: list[nn.Module]) -> list[tuple[nn.Module, str, nn.Parameter]]:
    """Every (module, attribute, stored parameter) directly held by ``modules`` and their children."""
    out = []
    for top in modules:
        for m in top.modules():
            out.extend((m, name, p) for name, p in m.named_parameters(recurse=False))
    return out


class Onloader:
    """Brings a model's units to ``device`` in ``dtype`` on demand, keeping at most ``cap_bytes`` resident."""

    def __init__(self, adapter: ModelAdapter, device: torch.device | str, dtype: torch.dtype, cap_bytes: float) -> None:
        self.adapter = adapter
        self.device = torch.device(device)
        self.dtype = dtype
        self.cap_bytes = float(cap_bytes)
        self.units: dict[Hashable, list[tuple[nn.Module, str, nn.Parameter]]] = {}
        for b in range(adapter.num_blocks):
            if not adapter.is_removed(Block(b)):
                self.units[b] = _slots(list(adapter.block_modules(Block(b))))
        self.units["head"] = _slots([adapter.final_norm, adapter.lm_head])
        self.units["embed"] = _slots([adapter.embed])
        self.size = {k: sum(p.numel() for _, _, p in slots) * self._itemsize(slots) for k, slots in self.units.items()}
        largest = max(self.size, key=lambda k: self.size[k])
        if self.size[largest] > self.cap_bytes:
            name = f"block {Block(largest)}" if isinstance(largest, int) else f"the {largest}"
            need = self.size[largest] / GIB
            raise PrunekitError(
                f"`max_memory` {self.cap_bytes / GIB:.4g} GiB cannot hold {name} ({need:.4g} GiB in {str(dtype).removeprefix('torch.')}).",
                f"Use `max_memory` {need:.4g} or more.",
            )
        self.resident: OrderedDict[Hashable, int] = OrderedDict()
        self.used = 0
        self.peak_bytes = 0
        self.moved_bytes = 0
        self.loads = 0

    def _itemsize(self, slots) -> int:
        return torch.empty((), dtype=self.dtype).element_size() if slots else 0

    @property
    def total_bytes(self) -> int:
        """The whole model in the compute dtype (tied weights counted per unit that uses them)."""
        return sum(self.size.values())

    def bring(self, key: Hashable) -> None:
        """Make unit ``key`` resident (most recently used), giving back the least recently used ones first."""
        if key in self.resident:
            self.resident.move_to_end(key)
            return
        size = self.size[key]
        while self.resident and self.used + size > self.cap_bytes:
            self._give_back(next(iter(self.resident)))
        for module, name, stored in self.units[key]:
            set_module_tensor_to_device(module, name, self.device, value=stored.data, dtype=self.dtype)
        self.resident[key] = size
        self.used += size
        self.peak_bytes = max(self.peak_bytes, self.used)
        self.moved_bytes += size
        self.loads += 1

    def _give_back(self, key: Hashable) -> None:
        for module, name, stored in self.units[key]:
            setattr(module, name, stored)
        self.used -= self.resident.pop(key)

    def release(self) -> None:
        """Give every unit back: the model holds its stored parameters again."""
        for key in list(self.resident):
            self._give_back(key)

    def stats(self) -> dict:
        return {"cap_bytes": self.cap_bytes, "peak_resident_bytes": self.peak_bytes, "moved_bytes": self.moved_bytes,
                "loads": self.loads, "model_bytes": self.total_bytes, "compute_dtype": str(self.dtype).removeprefix("torch."),
                "device": str(self.device)}
