"""prunekit's dense perplexity on the embedded Gemma 3 270M against llama.cpp's on the same GGUF and token ids (issue 28).

prunekit computes with the GGUF's weights de-quantized to float32; llama.cpp computes with the quantized weights
(Q4_K / Q5_0 / Q6_K / Q8_0) themselves. The two are close, not equal. Both score the same windows: consecutive
``--seq-len``-token pieces of one tokenizer call on the source (no BOS added), every position but the last, NLL
summed in float64; perplexity = exp(token-weighted mean NLL).

    python benchmarks/gemma_llamacpp.py --source news --windows 4 --seq-len 128
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

import prunekit as pk
from prunekit.data import build_windows
from prunekit.evaluation.perplexity import window_nll
from prunekit.export.llamacpp import LlamaCppModel
from prunekit.models.loading import embedded_gguf


def llama_cpp_nll(path, ids: torch.Tensor, threads: int) -> list[float]:
    """llama.cpp's summed next-token NLL per window (float64 log-softmax of its logits)."""
    out = []
    with LlamaCppModel(path, n_threads=threads) as model:
        for row in ids.tolist():
            logits = model.logits(row)[:-1].astype(np.float64)
            logz = np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1)) + logits.max(axis=1)
            out.append(float((logz - logits[np.arange(len(row) - 1), row[1:]]).sum()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="news")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    loaded = pk.load_model("gemma3-270m", device="cpu")
    windows = build_windows(loaded.tokenizer, args.source, args.seq_len, args.windows)
    t0 = time.perf_counter()
    ppl, nll, tokens = window_nll(loaded, windows, batch_size=2)
    t1 = time.perf_counter()
    theirs = llama_cpp_nll(embedded_gguf("gemma3-270m"), windows.ids, args.threads)
    t2 = time.perf_counter()
    ppl_cpp = math.exp(sum(theirs) / sum(tokens))
    res = {"source": args.source, "windows": args.windows, "seq_len": args.seq_len, "prunekit_ppl": ppl,
           "llama_cpp_ppl": ppl_cpp, "ratio": ppl_cpp / ppl, "prunekit_s": t1 - t0, "llama_cpp_s": t2 - t1,
           "per_window_nll_gap": [b - a for a, b in zip(nll, theirs)]}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
