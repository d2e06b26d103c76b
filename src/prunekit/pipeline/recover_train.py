"""Recovery's training loop: LoRA adapters attached to every Linear of the kept blocks (or every weight with
``full``), AdamW on the windows, checkpoints to resume from (:mod:`prunekit.pipeline.recover_checkpoint`), and
the adapters merged back into the weights.

Recipe (the paper's defaults, :class:`~prunekit.pipeline.recover_config.RecoverConfig`): LoRA of rank ``r = 8``,
``alpha = 16``, dropout 0.05 (peft); AdamW at a constant ``lr = 1e-4``; 2 epochs. The loss of a batch is
``loss_fn(model, x, labels, window indices)``: :func:`lm_loss` (the mean next-token NLL, targets equal to the pad
id ignored) or distillation's (:mod:`prunekit.pipeline.distill`). Determinism for resuming: the data order of
epoch ``e`` is ``randperm`` seeded by ``seed*1000+e`` and the RNG is re-seeded per step (LoRA dropout) inside
``torch.random.fork_rng``, so the caller's random state is untouched and a resumed run reproduces an
uninterrupted one bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.models.adapter import ModelAdapter
from prunekit.pipeline.recover_checkpoint import FULL_KEY, LORA_KEY, load_ckpt, save_ckpt, unflatten_optimizer
from prunekit.pipeline.recover_config import RecoverConfig

#: ``progress(stage, done, total, info)``; ``info`` carries ``loss`` during training.
RecoverProgress = Callable[[str, int, int, dict], None]
#: ``loss(model, x, labels, window indices)`` -> the batch's scalar loss.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def lora_targets(adapter: ModelAdapter) -> list[str]:
    """Full module names of every Linear of the blocks the model still has (q, k, v, o, gate, up, down ...)."""
    wanted: dict[int, str] = {}
    for block in adapter.blocks():
        if not adapter.is_removed(block):
            wanted.update({id(m): "" for m in adapter.linear_modules(block)})
    names = [n for n, mod in adapter.model.named_modules() if id(mod) in wanted]
    if not names:
        raise PrunekitError("the model has no projection left to adapt.", "Recover a model that keeps some attention or MLP blocks.")
    return names


def attach_lora(model: nn.Module, adapter: ModelAdapter, cfg: RecoverConfig) -> nn.Module:
    """Wrap ``model`` with fresh LoRA adapters (initialised from ``cfg.seed``); only they train."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_targets(adapter), bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng():  # seeded here; the caller's random state is restored afterwards
        torch.manual_seed(cfg.seed)
        return get_peft_model(model, lcfg)


def merge_lora(peft_model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights; returns the plain model."""
    return peft_model.merge_and_unload()


def _trainable(peft_model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in peft_model.named_parameters() if p.requires_grad}


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    resumed_from: int = 0
    seconds: float = 0.0


def lm_loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, window_ids: torch.Tensor) -> torch.Tensor:
    """The mean next-token NLL of the batch (targets labelled -100 ignored)."""
    return model(input_ids=x, labels=labels, use_cache=False).loss


def train_lora(
    peft_model: nn.Module, ids: torch.Tensor, cfg: RecoverConfig, *, ignore_index: int | None = None,
    ckpt_dir: Path | None = None, fingerprint: str = "", progress: RecoverProgress | None = None,
    loss_fn: LossFn = lm_loss,
) -> TrainResult:
    """Train the model's trainable weights (the adapters; all of them with ``cfg.full``) on windows ``ids``
    ``[n, T]``: ``epochs`` passes in a seeded order, batches of ``batch_size``; ``loss_fn(model, x, labels,
    window indices)`` is the batch loss (:func:`lm_loss`, or distillation's).

    Dropout masks are seeded per step (a resumed run draws the same ones) inside a forked random
    state, so the caller's random state is the same afterwards.
    """
    with torch.random.fork_rng():
        return _train(peft_model, ids, cfg, ignore_index=ignore_index, ckpt_dir=ckpt_dir, fingerprint=fingerprint,
                      progress=progress, loss_fn=loss_fn)


def _train(peft_model: nn.Module, ids: torch.Tensor, cfg: RecoverConfig, *, ignore_index: int | None, ckpt_dir: Path | None,
           fingerprint: str, progress: RecoverProgress | None, loss_fn: LossFn) -> TrainResult:
    params = _trainable(peft_model)
    prefix = FULL_KEY if cfg.full else LORA_KEY
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=0.0)
    n = ids.shape[0]
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * per_epoch)
    result = TrainResult()
    state = load_ckpt(ckpt_dir, fingerprint) if ckpt_dir is not None else None
    if state is not None:
        tensors = state["tensors"]
        lora = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if set(lora) != set(params):
            raise PrunekitError(f"the checkpoint in '{ckpt_dir}' holds other trained weights than this model's.",
                                "Pass `overwrite` to start over.")
        with torch.no_grad():
            for name, value in lora.items():
                params[name].copy_(value)
        opt.load_state_dict(unflatten_optimizer(tensors, state["optimizer"], opt.state_dict()))
        result.losses = list(state["losses"])
        result.resumed_from = result.steps = int(state["step"])
    device = next(iter(params.values())).device
    t0 = time.perf_counter()
    peft_model.train()
    step = result.steps
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        for b in range(per_epoch):
            global_step = epoch * per_epoch + b
            if global_step < step:
                continue
            if global_step >= total:
                break
            torch.manual_seed(cfg.seed * 1_000_003 + global_step)  # LoRA dropout: the same masks when resumed
            picked = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x = ids[picked].to(device)
            labels = x.clone()
            if ignore_index is not None:
                labels[labels == ignore_index] = -100
            loss = loss_fn(peft_model, x, labels, picked)
            if not torch.isfinite(loss):
                raise PrunekitError(f"the training loss became {float(loss)} at step {global_step + 1}.",
                                    "Use a smaller `lr` or `dtype` float32.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step = global_step + 1
            result.losses.append(float(loss.detach()))
            if progress:
                progress("recover", step, total, {"loss": result.losses[-1], "epoch": epoch + 1})
            end_of_epoch = b == per_epoch - 1
            if ckpt_dir is not None and (step % cfg.save_every == 0 or end_of_epoch) and step < total:
                save_ckpt(ckpt_dir, fingerprint, step, result.losses, weights=params, opt_state=opt.state_dict(), prefix=prefix)
    peft_model.eval()
    result.steps = step
    result.seconds = time.perf_counter() - t0
    return result
