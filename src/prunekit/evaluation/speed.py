"""Measured speed of a pruned model next to its dense base, and the ideal speedup from MACs.

What is measured (wall clock, ``time.perf_counter``, after one warm-up run of each case):

- **prefill**: one forward pass over a ``[batch, T]`` prompt without a KV cache, for each ``T`` in
  ``seq_lens``; tokens/s = ``batch * T / seconds``.
- **decode**: after a prompt of ``prompt_len`` tokens, ``new_tokens`` greedy steps of one token each
  with the KV cache (the model's own ``past_key_values``); tokens/s = ``batch * new_tokens /
  seconds`` of the steps alone.

Dense and pruned runs are interleaved (repeat r: dense then pruned, for every case) and each
figure is the median over ``repeats``, so drifts in machine load hit both alike.

The **ideal speedup** is the ratio of MACs per token, dense / pruned: every kept block's linear
weights, its attention's ``Q K^T`` and ``A V`` over the keys it attends to (``(T + 1) / 2`` on
average in a causal prefill of ``T``; the whole context, ``prompt_len + new_tokens / 2`` on
average, in decode), and the LM head (``vocab x hidden``), per
:func:`prunekit.engine.block_macs_per_token`. ``of_ideal`` = measured speedup / ideal speedup.

Memory: the bytes of the weights, and where the models are given as specs (the CLI), the peak
resident memory of a fresh process that loads the model and runs the longest prefill and the
decode (``VmHWM``); on CUDA, ``torch.cuda.max_memory_allocated`` of the same runs
(:func:`prunekit.pipeline.memory_probe.peak_memory`, which loads any spec and so lives in the pipeline).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from prunekit.core.errors import PrunekitError
from prunekit.engine import block_macs_per_token
from prunekit.models.loading import LoadedModel

DEFAULT_SEQ_LENS = (128, 512)


@dataclass(frozen=True)
class BenchConfig:
    """What ``bench`` runs; validated on construction (errors name the flag)."""

    seq_lens: tuple[int, ...] = DEFAULT_SEQ_LENS
    prompt_len: int = 64
    new_tokens: int = 32
    batch: int = 1
    repeats: int = 5

    def __post_init__(self) -> None:
        for flag, value in (("`prompt_len`", self.prompt_len), ("`new_tokens`", self.new_tokens),
                            ("`batch`", self.batch), ("`repeats`", self.repeats)):
            if not isinstance(value, int) or value < 1:
                raise PrunekitError(f"{flag} {value} is out of range.", f"Use a whole number of 1 or more for {flag}.")
        if not self.seq_lens or any((not isinstance(t, int)) or t < 1 for t in self.seq_lens):
            raise PrunekitError(f"`seq_lens` {self.seq_lens} needs positive lengths.", "For example `seq_lens` 128,512.")


def macs_per_token(loaded: LoadedModel, keys_seq_len: int) -> float:
    """MACs per token of the whole model (blocks + LM head) when attention averages ``(keys_seq_len + 1) / 2`` keys."""
    a = loaded.adapter
    head = float(a.lm_head.weight.numel())
    return sum(block_macs_per_token(a, b, keys_seq_len) for b in a.blocks()) + head


def weights_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _ids(loaded: LoadedModel, batch: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(length)
    vocab = loaded.model.config.vocab_size
    return torch.randint(3, vocab, (batch, length), generator=g).to(loaded.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_prefill(loaded: LoadedModel, ids: torch.Tensor) -> float:
    """Seconds of one forward pass over ``ids`` without a cache."""
    with torch.inference_mode():
        _sync(loaded.device)
        t0 = time.perf_counter()
        loaded.model(input_ids=ids, use_cache=False)
        _sync(loaded.device)
        return time.perf_counter() - t0


def time_decode(loaded: LoadedModel, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds of ``new_tokens`` greedy one-token steps with the KV cache, after prefilling ``prompt``."""
    with torch.inference_mode():
        out = loaded.model(input_ids=prompt, use_cache=True)
        cache = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
        _sync(loaded.device)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = loaded.model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
        _sync(loaded.device)
        return time.perf_counter() - t0


def _cases(cfg: BenchConfig) -> list[tuple[str, int]]:
    return [("prefill", t) for t in cfg.seq_lens] + [("decode", cfg.prompt_len)]


def run_case(loaded: LoadedModel, case: tuple[str, int], cfg: BenchConfig) -> float:
    kind, length = case
    ids = _ids(loaded, cfg.batch, length)
    if kind == "prefill":
        return time_prefill(loaded, ids)
    return time_decode(loaded, ids, cfg.new_tokens)


def measure(models: dict[str, LoadedModel], cfg: BenchConfig, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Median seconds per (model, case), runs interleaved across models; one warm-up of each first."""
    cases = _cases(cfg)
    times: dict[str, dict[tuple[str, int], list[float]]] = {name: {c: [] for c in cases} for name in models}
    for loaded in models.values():
        for case in cases:
            run_case(loaded, case, cfg)
    total, done = cfg.repeats * len(cases) * len(models), 0
    for _ in range(cfg.repeats):
        for case in cases:
            for name, loaded in models.items():
                times[name][case].append(run_case(loaded, case, cfg))
                done += 1
                if progress:
                    progress("bench", done, total)
    return {name: {case: statistics.median(v) for case, v in per.items()} for name, per in times.items()}


def _model_record(loaded: LoadedModel) -> dict:
    return {"spec": loaded.spec, "parameters": loaded.adapter.total_params(), "weights_bytes": weights_bytes(loaded.model)}


def bench(
    pruned: LoadedModel, dense: LoadedModel | None = None, cfg: BenchConfig | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Prefill and decode tokens/s of ``pruned`` (and ``dense``, side by side), with ideal speedups from MACs."""
    cfg = cfg or BenchConfig()
    max_pos = getattr(pruned.model.config, "max_position_embeddings", None)
    longest = max(max(cfg.seq_lens), cfg.prompt_len + cfg.new_tokens)
    if max_pos and longest > max_pos:
        raise PrunekitError(f"a length of {longest} tokens exceeds the model's {max_pos} positions.",
                            "Use shorter `seq_lens` / `prompt_len`.")
    models = {"pruned": pruned} if dense is None else {"dense": dense, "pruned": pruned}
    med = measure(models, cfg, progress)
    decode_ctx = cfg.prompt_len + cfg.new_tokens / 2.0
    out: dict = {
        "device": str(pruned.device), "threads": torch.get_num_threads(),
        "dtype": str(next(pruned.model.parameters()).dtype).removeprefix("torch."),
        "config": {"seq_lens": list(cfg.seq_lens), "prompt_len": cfg.prompt_len, "new_tokens": cfg.new_tokens,
                   "batch": cfg.batch, "repeats": cfg.repeats},
        "models": {name: _model_record(m) for name, m in models.items()},
        "prefill": [], "decode": {},
    }
    rows = [("prefill", t, cfg.batch * t, t) for t in cfg.seq_lens]
    rows.append(("decode", cfg.prompt_len, cfg.batch * cfg.new_tokens, 2 * decode_ctx - 1))
    for kind, length, tokens, keys_len in rows:
        row: dict = {"seq_len": length} if kind == "prefill" else {"prompt_len": length, "new_tokens": cfg.new_tokens}
        for name, m in models.items():
            row[f"{name}_tokens_per_s"] = tokens / med[name][(kind, length)]
            row[f"{name}_macs_per_token"] = macs_per_token(m, int(round(keys_len)))
        if dense is not None:
            row["speedup"] = row["pruned_tokens_per_s"] / row["dense_tokens_per_s"]
            row["ideal"] = row["dense_macs_per_token"] / row["pruned_macs_per_token"]
            row["of_ideal"] = row["speedup"] / row["ideal"]
        if kind == "prefill":
            out["prefill"].append(row)
        else:
            out["decode"] = row
    return out
