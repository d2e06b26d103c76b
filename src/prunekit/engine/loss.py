"""Criteria computed from the final residual state, in token chunks with bounded memory.

Perplexity. For windows ``w`` of ``T`` tokens, position ``t < T-1`` predicts token ``t+1``:
``NLL_w = sum_t -log softmax(lm_head(norm(h[w, t])))[ids[w, t+1]]`` over targets not equal to
``ignore_index`` (the tokenizer's pad id when set, as the BlockPruner authors do), and
``perplexity = exp(sum_w NLL_w / number of counted targets)`` (token-weighted mean NLL).
The LM head and the cross-entropy run on ``chunk_tokens`` positions at a time in float32; each
position's NLL is summed per window in float64, so the logits of all windows never coexist.
With a :class:`Workspace` (the engine passes one on the CPU) each chunk's logits are written into
a buffer kept between calls and turned into log-probabilities in place: a fresh ``[chunk, vocab]``
tensor of tens of MB is mapped anew by the C allocator on every call, and its page faults made
SmolLM2's head + loss 1.44x slower (``benchmarks/kernel_profile.py``); the values are those of
``F.cross_entropy`` bit for bit
(the same log-softmax kernel, the NLL the negated log-probability of the target, 0 where ignored).

Divergences from the dense model. The same chunking, with the dense model's log-probabilities
as the reference, per position (>= 0), summed per window: ``KL(p_dense || p_pruned)`` or the
Jensen-Shannon divergence ``JS = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2``
(FinerCut's criterion: the authors' configs select ``js_divergence``), in nats.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_TOKENS = 2048


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(n, s + size)


class Workspace:
    """Buffers kept between calls, one set per thread (engines score from several lanes at once)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def buffer(self, name: str, rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A ``[rows, cols]`` view of this thread's buffer ``name`` (grown, never shrunk; contents undefined)."""
        bufs = self._local.__dict__.setdefault("buffers", {})
        buf = bufs.get(name)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols or buf.dtype != dtype or buf.device != device:
            buf = bufs[name] = torch.empty(rows, cols, dtype=dtype, device=device)
        return buf[:rows]


def window_nll(
    logits_fn, h: torch.Tensor, ids: torch.Tensor, ignore_index: int | None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    *, workspace: Workspace | None = None, vocab: int | None = None,
) -> torch.Tensor:
    """Summed next-token NLL per window, float64 ``[batch]``.

    ``h``: final residual states ``[batch, T, hidden]`` (before the final norm);
    ``ids``: the windows' tokens ``[batch, T]``; ``logits_fn``: final norm + LM head.
    ``workspace`` and ``vocab`` (the head's rows): the logits are written into the workspace's
    buffer (``logits_fn(x, out=buffer)``, as :meth:`ModelAdapter.logits` takes it) and the
    log-softmax runs in place; the result is the same bit for bit. The chunks, and so the shapes
    of the head's matrix products, are the same either way: the rows of a float32 product are not
    bit-identical across row counts below a few dozen (MKL on this project's machine: 32 rows and
    fewer differ from one product, 64 and more agree), so the buffer holds a whole chunk
    (``chunk_tokens x vocab`` floats per thread, as large as the fresh logits of a call were).
    """
    b, t, d = h.shape
    flat = h[:, :-1, :].reshape(-1, d)
    targets = ids[:, 1:].reshape(-1).to(h.device)
    owner = torch.arange(b, device=h.device).repeat_interleave(t - 1)
    out = torch.zeros(b, dtype=torch.float64, device=h.device)
    ign = -100 if ignore_index is None else ignore_index
    for s, e in _chunks(flat.shape[0], chunk_tokens):
        if workspace is not None and vocab is not None:
            nll = _nll_in_place(logits_fn, flat[s:e], targets[s:e], ign, workspace=workspace, vocab=vocab)
        else:
            logits = logits_fn(flat[s:e]).float()
            nll = F.cross_entropy(logits, targets[s:e], reduction="none", ignore_index=ign)
        out.index_add_(0, owner[s:e], nll.double())
    return out


def _nll_in_place(logits_fn, x: torch.Tensor, targets: torch.Tensor, ign: int, *, workspace: Workspace, vocab: int) -> torch.Tensor:
    """Per-position NLL ``[n]`` of ``x`` ``[n, hidden]``, equal to ``F.cross_entropy(..., reduction='none')``:
    the logits in the workspace's buffer, log-softmax in place (float32), ``-logp[target]``, 0 where ignored."""
    n = x.shape[0]
    buf = workspace.buffer("logits", n, vocab, x.dtype, x.device)
    logits = logits_fn(x, out=buf)
    if logits.dtype != torch.float32 or logits.data_ptr() != buf.data_ptr():
        # a half-precision model (its logits widened, as ``.float()`` does), or a head that could not
        # write into the buffer: a float32 copy that the in-place log-softmax may overwrite
        logits = workspace.buffer("logits32", n, vocab, torch.float32, x.device).copy_(logits)
    logp = torch.log_softmax(logits, dim=-1, out=logits)
    ignored = targets == ign
    nll = logp.gather(1, targets.masked_fill(ignored, 0).unsqueeze(1)).squeeze(1).neg()
    return nll.masked_fill(ignored, 0.0)


def counted_targets(ids: torch.Tensor, ignore_index: int | None) -> int:
    """Number of next-token targets that count toward perplexity."""
    targets = ids[:, 1:]
    return int(targets.numel() if ignore_index is None else (targets != ignore_index).sum())


def window_kl(
    logits_fn, h: torch.Tensor, dense_logprobs_fn, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> torch.Tensor:
    """Summed ``KL(p_dense || p_pruned)`` per window, float64 ``[batch]``.

    ``dense_logprobs_fn(s, e)`` returns the dense model's log-probabilities ``[e - s, vocab]``
    for flattened positions ``s..e`` of this batch (all ``T`` positions of every window).
    """
    b, t, d = h.shape
    flat = h.reshape(-1, d)
    owner = torch.arange(b, device=h.device).repeat_interleave(t)
    out = torch.zeros(b, dtype=torch.float64, device=h.device)
    for s, e in _chunks(flat.shape[0], chunk_tokens):
        logp = F.log_softmax(logits_fn(flat[s:e]).float(), dim=-1)
        ref = dense_logprobs_fn(s, e).to(logp.device)
        kl = (ref.exp() * (ref - logp)).sum(-1).clamp_min(0)
        out.index_add_(0, owner[s:e], kl.double())
    return out



def window_js(
    logits_fn, h: torch.Tensor, dense_logprobs_fn, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> torch.Tensor:
    """Summed Jensen-Shannon divergence between ``p_dense`` and ``p_pruned`` per window, float64 ``[batch]``.

    Same inputs as :func:`window_kl`; per position ``JS = (KL(p || m) + KL(q || m)) / 2``,
    ``m = (p + q) / 2``, computed from log-probabilities (``log m = logaddexp(log p, log q) - log 2``).
    """
    b, t, d = h.shape
    flat = h.reshape(-1, d)
    owner = torch.arange(b, device=h.device).repeat_interleave(t)
    out = torch.zeros(b, dtype=torch.float64, device=h.device)
    log2 = math.log(2.0)
    for s, e in _chunks(flat.shape[0], chunk_tokens):
        logq = F.log_softmax(logits_fn(flat[s:e]).float(), dim=-1)
        logp = dense_logprobs_fn(s, e).to(logq.device)
        logm = torch.logaddexp(logp, logq) - log2
        js = 0.5 * ((logp.exp() * (logp - logm)).sum(-1) + (logq.exp() * (logq - logm)).sum(-1))
        out.index_add_(0, owner[s:e], js.clamp_min(0).double())
    return out

def reference_nll(logits: torch.Tensor, ids: torch.Tensor, ignore_index: int | None) -> float:
    """Float64 reference: total next-token NLL from full logits ``[batch, T, vocab]`` (for tests)."""
    logp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    tgt = ids[:, 1:].to(logits.device)
    nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    if ignore_index is not None:
        nll = nll[tgt != ignore_index]
    return float(nll.sum())
