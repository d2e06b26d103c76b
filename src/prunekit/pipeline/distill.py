"""Recovery by distillation: the dense base model teaches the pruned one (``prunekit recover --distill``).

The teacher is the plan's base model (``plan.model.spec``, or ``--teacher``); the student is the
pruned model, trained with LoRA (the default) or in full (``--full``) by
:func:`prunekit.pipeline.recover_train.train_lora` on the same windows and schedule as LM-loss recovery.
The loss of a batch is

    alpha * KL(teacher || student) + (1 - alpha) * LM loss,        alpha = ``--distill-alpha`` (default 0.5; 1: KL only)

with the KL of the next-token distributions averaged over the positions whose target is counted
(the LM loss's positions). The teacher's log-probabilities are computed on the fly, or, with
``--distill-topk K``, kept per training window as its top ``K`` token ids and log-probabilities
(memory-bounded: windows past ``cache_bytes`` are recomputed). With top-``K`` targets the KL is
the one between the ``K + 1``-outcome distributions (the ``K`` tokens and "any other token"),
which never exceeds the full KL and equals it when the teacher's tail is empty.

The teacher is deterministic (evaluation mode, no dropout), so a resumed run sees the same
targets and reaches the same result as an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.models.loading import LoadedModel
from prunekit.pipeline.load import load_model
from prunekit.pipeline.recover_train import LossFn

TopK = tuple[torch.Tensor, torch.Tensor]  # (token ids [B, T, K], teacher log-probs [B, T, K])


def kl_full(student_logits: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over ``mask``ed positions of ``KL(teacher || student)``; logits and log-probs ``[B, T, V]``."""
    logq = F.log_softmax(student_logits.float(), dim=-1)
    kl = (teacher_logp.exp() * (teacher_logp - logq)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def kl_topk(student_logits: torch.Tensor, top: TopK, mask: torch.Tensor) -> torch.Tensor:
    """Mean over ``mask``ed positions of the KL between the teacher's and the student's distributions
    over the teacher's top-``K`` tokens plus one bucket for all others."""
    idx, logp = top
    logq = F.log_softmax(student_logits.float(), dim=-1).gather(-1, idx)
    p = logp.exp()
    head = (p * (logp - logq)).sum(-1)
    tail_p = (1.0 - p.sum(-1)).clamp_min(0.0)
    log_tail_q = torch.log(-torch.expm1(torch.logsumexp(logq, -1).clamp_max(-1e-7)))
    log_tail_p = torch.log(tail_p.clamp_min(1e-30))
    kl = head + torch.where(tail_p > 0, tail_p * (log_tail_p - log_tail_q), torch.zeros_like(head))
    return (kl * mask).sum() / mask.sum().clamp_min(1)


class Teacher:
    """The teacher's next-token log-probabilities of training windows: full, or top-``topk`` cached."""

    def __init__(self, model: nn.Module, topk: int = 0, cache_bytes: float = 2 * 2**30) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.topk = int(topk)
        self.cache_bytes = float(cache_bytes)
        self.cached_bytes = 0
        self._cache: dict[int, TopK] = {}
        self.forwards = 0  # windows the teacher ran (a cache hit runs none)

    @torch.no_grad()
    def _logp(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += x.shape[0]
        return F.log_softmax(self.model(input_ids=x, use_cache=False).logits.float(), dim=-1)

    def full(self, x: torch.Tensor) -> torch.Tensor:
        return self._logp(x)

    def top(self, x: torch.Tensor, window_ids: torch.Tensor) -> TopK:
        """Top-``K`` ids and log-probs of windows ``x`` ``[B, T]`` (``window_ids``: their indices, the cache keys)."""
        keys = [int(i) for i in window_ids]
        out: list[TopK | None] = [self._cache.get(k) for k in keys]
        missing = [j for j, o in enumerate(out) if o is None]
        if missing:
            vals, idx = self._logp(x[missing]).topk(self.topk, dim=-1)
            for row, j in enumerate(missing):
                entry = (idx[row].clone(), vals[row].clone())
                out[j] = entry
                size = sum(t.numel() * t.element_size() for t in entry)
                if self.cached_bytes + size <= self.cache_bytes:
                    self._cache[keys[j]] = entry
                    self.cached_bytes += size
        return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


def load_teacher(spec: str, student: LoadedModel, *, dtype: str, device: str | None, topk: int = 0) -> Teacher:
    """The distillation teacher ``spec`` (the plan's base model by default), checked to share the student's vocabulary."""
    model = load_model(spec, dtype=dtype, device=device).model
    if model.config.vocab_size != student.model.config.vocab_size:
        raise PrunekitError(f"the teacher '{spec}' has a vocabulary of {model.config.vocab_size}, the pruned model "
                            f"{student.model.config.vocab_size}.", "Give `teacher` the base model the plan was made from.")
    return Teacher(model.to(next(student.model.parameters()).device), topk=topk)


def distill_loss(teacher: Teacher, alpha: float) -> LossFn:
    """``loss(student, x, labels, window_ids)``: ``alpha`` KL to the teacher + ``(1 - alpha)`` LM loss."""
    if not 0.0 <= alpha <= 1.0:
        raise PrunekitError(f"`distill_alpha` {alpha} is outside [0, 1].", "Use 1 for KL only, e.g. 0.5 to mix in the LM loss.")

    def loss(student: nn.Module, x: torch.Tensor, labels: torch.Tensor, window_ids: torch.Tensor) -> torch.Tensor:
        out = student(input_ids=x, labels=labels if alpha < 1.0 else None, use_cache=False)
        logits = out.logits[:, :-1]
        mask = (labels[:, 1:] != -100).float()
        if teacher.topk:
            idx, logp = teacher.top(x, window_ids)
            kl = kl_topk(logits, (idx[:, :-1], logp[:, :-1]), mask)
        else:
            kl = kl_full(logits, teacher.full(x)[:, :-1], mask)
        return kl if alpha >= 1.0 else alpha * kl + (1.0 - alpha) * out.loss

    return loss
