"""The training windows of recovery: ``alpaca-cleaned`` (the paper's; instruction/input/output rows in the
Alpaca prompt format) when the hub is reachable, else the embedded ``wiki`` calibration split (``data`` ``auto``,
the default), or any source :func:`prunekit.data.corpora.load_texts` knows. Texts are joined and cut into
``seq_len``-token windows (:func:`prunekit.data.windows.windows_from_texts`)."""

from __future__ import annotations

import random

from prunekit.core.errors import PrunekitError
from prunekit.core.hub import hub_reachable
from prunekit.data.windows import Windows, build_windows, windows_from_texts

ALPACA_PROMPT = (
    "Below is an instruction that describes a task{ctx}. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n{output}"
)


def alpaca_cleaned_texts(rows: int, seed: int) -> list[str]:
    """``rows`` rows of yahma/alpaca-cleaned (drawn with ``seed``) in the Alpaca prompt format."""
    import datasets

    try:
        ds = datasets.load_dataset("yahma/alpaca-cleaned", split="train")
    except (OSError, ConnectionError, ValueError) as e:
        raise PrunekitError(
            f"could not fetch 'alpaca-cleaned' from the hub ({str(e).splitlines()[0][:160]}).",
            "Check the network, or use `data` wiki (the embedded calibration split) or a local .txt/.jsonl file.",
        ) from None
    pick = sorted(random.Random(seed).sample(range(len(ds)), min(rows, len(ds))))
    out = []
    for i in pick:
        r = ds[i]
        has_input = bool(str(r.get("input") or "").strip())
        out.append(ALPACA_PROMPT.format(
            ctx=", paired with an input that provides further context" if has_input else "",
            instruction=r["instruction"], input_block=f"### Input:\n{r['input']}\n\n" if has_input else "",
            output=r["output"]))
    return out


def training_windows(
    tokenizer, source: str, *, seq_len: int, windows: int | None, rows: int, seed: int, max_positions: int | None,
) -> tuple[Windows, str]:
    """(windows, the source actually used): ``auto`` -> alpaca-cleaned online, else the embedded wiki split;
    ``rows`` alpaca-cleaned rows drawn with ``seed``; ``windows``: how many (None: all)."""
    if source == "auto":
        source = "alpaca-cleaned" if hub_reachable() else "wiki"
    if source == "alpaca-cleaned":
        texts = alpaca_cleaned_texts(rows, seed)
        return windows_from_texts(tokenizer, texts, seq_len, windows, source=source, max_positions=max_positions), source
    return build_windows(tokenizer, source, seq_len, windows, max_positions=max_positions), source
