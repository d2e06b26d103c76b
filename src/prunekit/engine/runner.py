"""The block-stepping engine: run blocks ``a..b`` of a (partly removed) model on residual states.

Searches never call ``model.forward`` in their inner loop. The engine holds the calibration
windows in batches, each batch's layer inputs (rotary cos/sin, masks: computed once per batch
shape by the model's own preamble), a memory-budgeted store of residual states, and a counter of
the work it runs. A model split over devices (``--device-map``: each block's weights on one device)
is stepped block by block on each block's own device: the residual state moves to the block's
device before it runs, each layer's inputs are kept on that layer's device (moved once, one copy
per device), and the head runs where the final norm is. Boundary ``b`` means "the residual stream just before block ``b``"; boundary
``num_blocks`` is the final state, before the final norm.

Kernels on the CPU (issue 29): a group of candidates runs side by side on :mod:`lanes
<prunekit.engine.lanes>` (worker threads of one intra-op thread each), each candidate alone in a
lane, instead of stacked into larger matrix products; the head writes its logits into a buffer kept
per thread and takes the log-softmax in place (:class:`~prunekit.engine.loss.Workspace`). Both
leave every float as it was: the same kernels on the same shapes.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from typing import Hashable

import psutil
import torch

from prunekit.core.errors import PrunekitError
from prunekit.data.windows import Windows
from prunekit.engine.lanes import lanes as lane_pool
from prunekit.engine.loss import DEFAULT_CHUNK_TOKENS, Workspace, counted_targets, window_js, window_kl, window_nll
from prunekit.engine.memo import ScoreMemo
from prunekit.engine.onload import Onloader
from prunekit.engine.ranks import Ranks
from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import ATTN, Block

_COUNTER_LOCK = threading.Lock()
#: lanes run at most this many candidates side by side (each holds its own head buffer)
MAX_LANES = 8


@dataclass
class WorkCounter:
    """Work run, in multiply-accumulates (MACs): blocks weighted by their MACs per token, and the head."""

    block_macs: float = 0.0
    head_macs: float = 0.0
    block_runs: int = 0
    head_tokens: int = 0

    @property
    def total_macs(self) -> float:
        return self.block_macs + self.head_macs

    def add(self, *, block_macs: float = 0.0, block_runs: int = 0, head_macs: float = 0.0, head_tokens: int = 0) -> None:
        """Add work (under a lock: lanes count from several threads)."""
        with _COUNTER_LOCK:
            self.block_macs += block_macs
            self.block_runs += block_runs
            self.head_macs += head_macs
            self.head_tokens += head_tokens

    def as_dict(self) -> dict:
        return {**asdict(self), "total_macs": self.total_macs}


def block_macs_per_token(adapter: ModelAdapter, block: Block, seq_len: int) -> float:
    """MACs per token of one block on ``seq_len``-token windows.

    Weights: one MAC per weight (``adapter.weight_macs``: a sparse MoE block counts its active experts).
    A mixer adds ``adapter.mixing_macs``: for attention ``Q K^T`` and ``A V``, ``n_heads * (head_dim + value
    width)`` MACs per attended key (the value width is ``head_dim`` but in DeepSeek's latent attention),
    ``(seq_len + 1) / 2`` keys on average under the causal mask; for a linear mixer its state update and
    read-out per token.
    """
    if adapter.is_removed(block):
        return 0.0
    macs = adapter.weight_macs(block)
    if block.kind == ATTN:
        macs += adapter.mixing_macs(block.layer, seq_len)
    return macs


def _weights_device(modules, what: str) -> torch.device | None:
    """The one device of the weights of ``modules`` (None when they hold none); refuses several."""
    devices = {p.device for m in modules if m is not None for p in m.parameters()}
    if len(devices) > 1:
        raise PrunekitError(f"{what} has weights on several devices ({', '.join(sorted(map(str, devices)))}).",
                            "Give a `device_map` that keeps each decoder layer on one device (e.g. model.layers.N), or auto.")
    return next(iter(devices), None)


def check_runnable(devices: list[torch.device | None], head: torch.device) -> None:
    """Refuse weights on ``meta`` (offloaded by accelerate's hooks, which the engine does not call, or never loaded)."""
    meta = torch.device("meta")
    if meta in devices or head == meta:
        name = f"block {Block(devices.index(meta))}" if meta in devices else "the head"
        raise PrunekitError(f"{name} has its weights on the meta device (offloaded by accelerate, or never loaded).",
                            "Put every module on a device that runs it; to go past the device memory use `max_memory`.")


def block_devices(adapter: ModelAdapter) -> list[torch.device | None]:
    """The device of each block's weights (None for a removed block, which holds none): where it runs.

    A block's norms and sub-layer must share one device (accelerate's ``auto`` never splits a
    decoder layer); a block split over devices, or with weights on ``meta``, is refused."""
    return [_weights_device(adapter.block_modules(Block(b)), f"block {Block(b)}") for b in range(adapter.num_blocks)]


def head_device(adapter: ModelAdapter) -> torch.device:
    """Where the head runs: the final norm's device (the LM head's, when the norm holds no weights);
    :meth:`ModelAdapter.logits` moves the normed state to the LM head when it lies elsewhere."""
    lm = _weights_device([adapter.lm_head], "the LM head")
    return _weights_device([adapter.final_norm], "the final norm") or lm


def _on(value, device: torch.device, memo: dict):
    """``value`` (a tensor, a tuple of them, or anything else) on ``device``; each tensor moved once per device."""
    if isinstance(value, torch.Tensor):
        key = (id(value), device)
        if key not in memo:
            memo[key] = value.to(device)
        return memo[key]
    if isinstance(value, tuple):
        return tuple(_on(v, device, memo) for v in value)
    return value


class StateStore:
    """Residual states under one memory budget (bytes); ``put`` refuses past the budget."""

    def __init__(self, budget_bytes: float, device: torch.device | str) -> None:
        self.budget = float(budget_bytes)
        self.device = torch.device(device)
        self.used = 0
        self.peak = 0
        self._data: dict[Hashable, tuple[object, torch.Tensor]] = {}

    def put(self, key: Hashable, tensor: torch.Tensor, meta: object = None) -> bool:
        self.pop(key)
        size = tensor.numel() * tensor.element_size()
        if self.used + size > self.budget:
            return False
        self._data[key] = (meta, tensor.detach().to(self.device))
        self.used += size
        self.peak = max(self.peak, self.used)
        return True

    def get(self, key: Hashable) -> tuple[object, torch.Tensor] | None:
        return self._data.get(key)

    def pop(self, key: Hashable) -> None:
        item = self._data.pop(key, None)
        if item is not None:
            self.used -= item[1].numel() * item[1].element_size()

    def drop(self, predicate) -> None:
        for key in [k for k in self._data if predicate(k)]:
            self.pop(key)


class Engine:
    """Runs blocks on the calibration windows and scores final states.

    ``criterion``: ``'ppl'`` (summed next-token NLL; lower is better), ``'kl'`` (summed KL
    divergence from the dense model's next-token distribution) or ``'js'`` (summed Jensen-Shannon
    divergence from it: FinerCut's criterion). Scores are float64 per window. ``ranks``: the
    torchrun processes a greedy step's candidates are spread over (:mod:`prunekit.engine.ranks`).
    ``onload``: under a memory cap, the weights are brought in unit by unit
    (:mod:`prunekit.engine.onload`); the engine then steps block-major where it can (all window
    batches at a block, or every candidate of a group at a block), so each block's weights move
    once per batch and group rather than once per candidate. ``memo``: per-batch sums shared with
    another search on the same model and windows (:mod:`prunekit.engine.memo`; one process only). ``lanes``: how many
    candidates of a group run side by side on the CPU (:meth:`evaluate_group`; default: torch's intra-op threads, at
    most :data:`MAX_LANES`; 1 runs them through :meth:`run_group`); not used on an accelerator, under
    a memory cap or with a device map.
    """

    def __init__(
        self, adapter: ModelAdapter, windows: Windows, batch_size: int = 8, *, criterion: str = "ppl",
        ignore_index: int | None = None, cache_bytes: float = 2 * 2**30, cache_device: str | None = None,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS, ranks: Ranks | None = None, onload: Onloader | None = None,
        memo: ScoreMemo | None = None, lanes: int | None = None,
    ) -> None:
        self.adapter = adapter
        self.ranks = ranks or Ranks()  # the processes a greedy step's candidates are spread over
        self.onload = onload
        self.windows = windows
        self.device = onload.device if onload is not None else next(adapter.model.parameters()).device
        self.batches = [b.to(self.device) for b in windows.ids.split(batch_size)]
        self.criterion = criterion
        self.ignore_index = ignore_index
        if memo is not None:
            if self.ranks.spread:
                raise ValueError("a ScoreMemo is for one process (ranks keep their own states)")
            memo.bind(model=adapter.model, windows_fingerprint=windows.fingerprint(), batch_sizes=[len(b) for b in self.batches],
                      criterion=criterion, ignore_index=ignore_index)
        self.memo = memo  # sums shared with another search on the same inputs (engine/memo.py), or None
        self.chunk_tokens = chunk_tokens
        self.counter = WorkCounter()
        self.num_blocks = adapter.num_blocks
        self.macs = [block_macs_per_token(adapter, Block(b), windows.seq_len) for b in range(self.num_blocks)]
        self.head_macs = float(adapter.lm_head.weight.numel())
        self.vocab = int(adapter.lm_head.weight.shape[0])
        self.store = StateStore(cache_bytes, cache_device or self.device)
        self.n_targets = counted_targets(windows.ids, ignore_index) if criterion == "ppl" else windows.n_tokens
        self._inputs: list[tuple[torch.Tensor, list[dict]]] = []
        if onload is not None:
            self.devices: list[torch.device | None] = [onload.device] * self.num_blocks
            self.head_device = onload.device
        else:
            self.devices, self.head_device = block_devices(adapter), head_device(adapter)
            check_runnable(self.devices, self.head_device)
        self.workspace = Workspace() if self.head_device.type == "cpu" else None  # the head's buffers (see loss.py)
        on_cpu = onload is None and self.head_device.type == "cpu" and all(d is None or d.type == "cpu" for d in self.devices)
        self.lanes = (min(MAX_LANES, torch.get_num_threads()) if lanes is None else max(1, int(lanes))) if on_cpu else 1
        self._bring("embed")
        with torch.inference_mode():
            for ids in self.batches:
                h0, kwargs = adapter.capture_inputs(ids)
                self._inputs.append((h0, self._per_layer_device(kwargs)))
        self._targets = [ids.to(self.head_device) for ids in self.batches]
        self._dense_final: list[torch.Tensor] | None = None
        if criterion in ("kl", "js"):
            self._dense_final = [self.run(j, self.h0(j), 0, self.num_blocks, frozenset()).to(self.head_device)
                                 for j in range(len(self.batches))]

    # --- running -----------------------------------------------------------------------------
    def _per_layer_device(self, kwargs: list[dict]) -> list[dict]:
        """Each layer's inputs on the device its attention block runs on (shared tensors moved once per device)."""
        memo: dict = {}
        out = []
        for i, kw in enumerate(kwargs):
            dev = self.devices[2 * i] or self.devices[2 * i + 1]
            out.append(kw if dev is None else {k: _on(v, dev, memo) for k, v in kw.items()})
        return out

    def _bring(self, key) -> None:
        if self.onload is not None:
            self.onload.bring(key)

    @property
    def n_batches(self) -> int:
        return len(self.batches)

    def h0(self, j: int) -> torch.Tensor:
        """The embeddings of batch ``j``: the state at boundary 0 ``[batch, T, hidden]``."""
        return self._inputs[j][0]

    def layer_inputs(self, j: int) -> list[dict]:
        """Batch ``j``'s keyword inputs of each decoder layer (masks, rotary cos/sin), as the model's preamble made them."""
        return self._inputs[j][1]

    def active(self, removed: frozenset[int]) -> list[int]:
        return [b for b in range(self.num_blocks) if b not in removed and self.macs[b] > 0]

    def auto_candidate_batch(self, cap: int = 16) -> int:
        """How many candidates to run as one group: on the CPU the lanes (one candidate per lane; 1
        with a single thread); on an accelerator, as many as a quarter of its free memory holds,
        counting per candidate and window batch the residual state, the MLP's intermediate
        activations and one layer's attention scores.

        Under a memory cap (``onload``): the group that steps block-major, as large as a quarter of
        the state budget holds (a group of ``g`` keeps up to ``g (g + 1) / 2`` boundaries of states
        until its totals are known), at most ``cap``."""
        if self.onload is not None:
            return int(max(1, min(cap, math.isqrt(int(self.store.budget / 2 / max(self.state_bytes(), 1))))))
        if self.device.type != "cuda":
            return self.lanes
        free, _ = torch.cuda.mem_get_info(self.device)
        b, t = self.batches[0].shape
        h = self.h0(0)
        cfg = self.adapter.model.config
        per_token = 4 * h.shape[-1] + 3 * int(getattr(cfg, "intermediate_size", 4 * h.shape[-1]))
        per_token += int(getattr(cfg, "num_attention_heads", 1)) * t
        per_candidate = b * t * per_token * h.element_size()
        return int(max(1, min(cap, free // 4 // max(per_candidate, 1))))

    def state_bytes(self) -> int:
        """Bytes of one boundary's states over all windows."""
        h = self.h0(0)
        return self.windows.n_tokens * h.shape[-1] * h.element_size()

    @torch.inference_mode()
    def run(self, j: int, h: torch.Tensor, start: int, stop: int, removed: frozenset[int]) -> torch.Tensor:
        """Run the blocks ``start <= b < stop`` not in ``removed`` on batch ``j``'s state ``h``."""
        kwargs = self._inputs[j][1]
        tokens = h.shape[0] * h.shape[1]
        for b in range(start, stop):
            if b in removed or self.macs[b] == 0:
                continue
            self._bring(b)
            h = self.adapter.run_block(Block(b), h.to(self.devices[b]), kwargs[b // 2])
            self.counter.add(block_macs=self.macs[b] * tokens, block_runs=1)
        return h

    def evaluate_group(self, j: int, items: list[tuple[int, torch.Tensor, frozenset[int], tuple[int, ...]]]
                       ) -> list[tuple[torch.Tensor, dict]]:
        """Several candidates on batch ``j``, run and scored: per candidate (its criterion per window,
        float64 ``[batch]``; {boundary: state}), ``items`` as :meth:`run_group` takes them.

        With lanes (the CPU) the candidates run side by side, each alone in a lane from its state to
        its score; otherwise through :meth:`run_group` (stacked on an accelerator, one after another
        at each block under a memory cap), then scored. The work counted is the same either way.
        """
        if self.lanes > 1 and len(items) > 1:
            pool = lane_pool(self.lanes, max(1, torch.get_num_threads() // self.lanes))
            return pool.map(lambda item: self._alone(j, item), items)
        return [(self.score(j, h), kept) for h, kept in self.run_group(j, items)]

    def _alone(self, j: int, item: tuple[int, torch.Tensor, frozenset[int], tuple[int, ...]]) -> tuple[torch.Tensor, dict]:
        """One candidate of :meth:`evaluate_group` alone: its blocks, the states at ``keep_at``, its score."""
        start, h, skip, keep_at = item
        kept = {}
        for b in sorted(keep_at):
            h = self.run(j, h, start, b, skip)
            kept[b], start = h, b
        h = self.run(j, h, start, self.num_blocks, skip)
        return self.score(j, h), kept

    @torch.inference_mode()
    def run_group(self, j: int, items: list[tuple[int, torch.Tensor, frozenset[int], tuple[int, ...]]]) -> list[tuple[torch.Tensor, dict]]:
        """Several candidates on batch ``j`` at once (candidate batching on an accelerator).

        ``items``: per candidate ``(start, h, skip, keep_at)``: its state ``h`` ``[B, T, H]`` just
        before block ``start``, the blocks it skips, and the boundaries whose states to return.
        Block ``b`` runs once, on the candidates that have started and do not skip it, stacked
        along dim 0 (``[k*B, T, H]``). Returns per candidate (final state, {boundary: state}).
        The work counted is the same as running the candidates one after another. Under a memory
        cap (``onload``) the candidates are not stacked but run one after another at each block
        (block-major: the block's weights come in once for the group), so every candidate's
        arithmetic is that of a run alone.
        """
        hs = [h for _, h, _, _ in items]
        kept: list[dict] = [{} for _ in items]
        batch = hs[0].shape[0]
        kwargs = self._inputs[j][1]
        for b in range(min(s for s, _, _, _ in items), self.num_blocks):
            for i, (_, _, _, keep_at) in enumerate(items):
                if b in keep_at:
                    kept[i][b] = hs[i].clone()  # not a view that would keep the whole stacked batch alive
            active = [i for i, (s, _, skip, _) in enumerate(items) if s <= b and b not in skip]
            if not active or self.macs[b] == 0:
                continue
            self._bring(b)
            for i in active:  # to the block's device (a no-op unless the model is split over devices)
                hs[i] = hs[i].to(self.devices[b])
            if self.onload is not None:
                for i in active:
                    hs[i] = self.adapter.run_block(Block(b), hs[i], kwargs[b // 2])
                self.counter.add(block_macs=self.macs[b] * batch * hs[active[0]].shape[1] * len(active), block_runs=len(active))
                continue
            stacked = torch.cat([hs[i] for i in active]) if len(active) > 1 else hs[active[0]]
            lkw = self.adapter.tile_inputs(kwargs[b // 2], len(active), batch) if len(active) > 1 else kwargs[b // 2]
            out = self.adapter.run_block(Block(b), stacked, lkw)
            for i, part in zip(active, out.split(batch)):
                hs[i] = part
            self.counter.add(block_macs=self.macs[b] * batch * hs[active[0]].shape[1] * len(active), block_runs=len(active))
        return list(zip(hs, kept))

    # --- scoring -----------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, j: int, h: torch.Tensor) -> torch.Tensor:
        """The criterion per window of batch ``j`` from its final state ``h`` (float64 ``[batch]``)."""
        ids = self._targets[j]
        h = h.to(self.head_device)
        self._bring("head")
        logits_fn = self.adapter.logits
        if self.criterion == "ppl":
            positions = ids.shape[0] * (ids.shape[1] - 1)
            out = window_nll(logits_fn, h, ids, self.ignore_index, self.chunk_tokens, workspace=self.workspace, vocab=self.vocab)
            self._count_head(positions)
            return out
        dense = self._dense_final[j].reshape(-1, h.shape[-1])

        def dense_logprobs(s: int, e: int) -> torch.Tensor:
            self._count_head(e - s)
            return torch.log_softmax(logits_fn(dense[s:e]).float(), dim=-1)

        divergence = window_js if self.criterion == "js" else window_kl
        out = divergence(logits_fn, h, dense_logprobs, self.chunk_tokens)
        self._count_head(h.shape[0] * h.shape[1])
        return out

    def _count_head(self, positions: int) -> None:
        self.counter.add(head_macs=self.head_macs * positions, head_tokens=positions)

    def total_score(self, removed: frozenset[int]) -> float:
        """The criterion summed over all windows for the model without ``removed`` (full forward)."""
        total = 0.0
        if self.onload is None:
            for j in range(self.n_batches):
                known = self.memo.get(removed, j) if self.memo is not None else None
                if known is None:
                    known = float(self.score(j, self.run(j, self.h0(j), 0, self.num_blocks, removed)).sum())
                    if self.memo is not None:
                        self.memo.put(removed, j, known)
                total += known
            return total
        hs = [self.h0(j) for j in range(self.n_batches)]
        for b in range(self.num_blocks):  # block-major: each block's weights once for all batches
            hs = [self.run(j, h, b, b + 1, removed) for j, h in enumerate(hs)]
        for j, h in enumerate(hs):
            total += float(self.score(j, h).sum())
        return total

    def perplexity(self, total_nll: float) -> float:
        """exp(token-weighted mean NLL)."""
        return math.exp(total_nll / self.n_targets)

    # --- counting without running ---------------------------------------------------------------
    def naive_candidate_macs(self, removed: frozenset[int], unit: tuple[int, ...]) -> float:
        """MACs a full forward of the model without ``removed | unit`` costs on all windows (the naive search)."""
        skip = removed | set(unit)
        tokens = self.windows.n_tokens
        blocks = sum(self.macs[b] for b in range(self.num_blocks) if b not in skip)
        positions = self.windows.n_windows * (self.windows.seq_len - 1)
        head = self.head_macs * positions * (1 if self.criterion == "ppl" else 2)
        return blocks * tokens + head


def default_cache_bytes(device: str | torch.device) -> float:
    """Half of the free memory of ``device`` (accelerator memory, or RAM for the CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return free / 2
    return psutil.virtual_memory().available / 2
