"""Texts -> token windows.

Recipe (as the BlockPruner authors build their calibration): the texts joined with blank lines,
tokenized in one call with the tokenizer's default settings, cut into consecutive windows of
``seq_len`` tokens (the tail shorter than a window is dropped); the first ``n_windows`` are taken,
or ``n_windows`` drawn at random with ``seed`` when ``sample='random'``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from prunekit.core.errors import PrunekitError
from prunekit.core.io import sha256_text
from prunekit.data.corpora import load_texts


@dataclass
class Windows:
    """Calibration or evaluation windows: ``ids`` is ``[n_windows, seq_len]`` int64."""

    ids: torch.Tensor
    source: str
    text_sha256: str
    recipe: dict

    @property
    def n_windows(self) -> int:
        return self.ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.ids.shape[1]

    @property
    def n_tokens(self) -> int:
        return self.ids.numel()

    def fingerprint(self) -> dict:
        return {"source": self.source, "text_sha256": self.text_sha256, **self.recipe}


def windows_from_texts(
    tokenizer, texts: list[str], seq_len: int, n_windows: int | None = None, *, sample: str = "first",
    seed: int = 0, source: str = "<texts>", max_positions: int | None = None,
) -> Windows:
    """Token windows from texts (see the module docstring). ``n_windows=None`` takes them all."""
    if seq_len < 2:
        raise PrunekitError(f"`seq_len` {seq_len} is too short.", "Use at least 2 tokens (e.g. 128 or 2048).")
    if max_positions is not None and seq_len > max_positions:
        raise PrunekitError(
            f"`seq_len` {seq_len} is above the model's context of {max_positions} tokens.",
            f"Use `seq_len` {max_positions} or less.",
        )
    if n_windows is not None and n_windows < 1:
        raise PrunekitError(f"`windows` {n_windows} asks for no windows.", "Use `windows` 1 or more.")
    if sample not in ("first", "random"):
        raise PrunekitError(f"`sample` '{sample}' is not known.", "Use first or random.")
    text = "\n\n".join(texts)
    ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    total = len(ids) // seq_len
    if total < 1:
        raise PrunekitError(
            f"the text of '{source}' has {len(ids)} tokens, too short for one window of {seq_len}.",
            "Use a longer text or a smaller `seq_len`.",
        )
    n = total if n_windows is None else n_windows
    if n > total:
        raise PrunekitError(
            f"'{source}' gives only {total} windows of {seq_len} tokens; `windows` {n} asked for more.",
            f"Use `windows` {total} or less, or a smaller `seq_len`.",
        )
    starts = list(range(total))
    picked = sorted(random.Random(seed).sample(starts, n)) if sample == "random" else starts[:n]
    tensor = torch.tensor([ids[s * seq_len:(s + 1) * seq_len] for s in picked], dtype=torch.long)
    recipe = {"seq_len": seq_len, "windows": n, "sample": sample, "seed": seed if sample == "random" else None}
    return Windows(tensor, source, sha256_text(text), recipe)


def build_windows(
    tokenizer, source: str, seq_len: int, n_windows: int | None = None, *, sample: str = "first",
    seed: int = 0, max_positions: int | None = None, rows: int = 256,
) -> Windows:
    """Token windows from a named source or file (see :func:`prunekit.data.corpora.load_texts`)."""
    texts = load_texts(source, rows=rows, seed=seed)
    return windows_from_texts(tokenizer, texts, seq_len, n_windows, sample=sample, seed=seed, source=source, max_positions=max_positions)
