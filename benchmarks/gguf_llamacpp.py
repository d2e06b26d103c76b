"""A pruned embedded model exported to GGUF runs in a real llama.cpp, with PyTorch's greedy tokens.

Installs ``llama-cpp-python`` (which compiles llama.cpp, ~3.5 minutes on 2 cores) into the running
interpreter's environment when it is missing, exports each pruned output directory given (default:
the BlockPruner and LLM-Pruner 20% runs of benchmarks/pruned_speed.py) with ``prunekit export --format
gguf``, and for each of the README's prompts compares llama.cpp with the pruned PyTorch model:

- the next token after the prompt (argmax of the last logits), and
- a greedy continuation of ``--new-tokens`` tokens, each side feeding its own choices back
  (llama.cpp: ``eval`` + argmax of its logits, no sampler), counting the tokens that agree
  before the first divergence.

Prompts are tokenized once with the model's Hugging Face tokenizer and the same ids go to both
runtimes, so the comparison is of the models, not the tokenizers. Writes ``--json`` (default
``benchmarks/results/gguf_llamacpp.json``) and prints a markdown table.

    python benchmarks/gguf_llamacpp.py [--work /tmp/prunekit-bench] [--gguf-type f32]
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
PROMPTS = [
    "The capital of France is",
    "Pruning a language model means",
    "def fibonacci(n):",
    "The first law of thermodynamics states that",
]


def ensure_llama_cpp():
    try:
        return importlib.import_module("llama_cpp")
    except ImportError:
        print(f"installing {LLAMA_CPP_PYTHON} (compiles llama.cpp; minutes)...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", LLAMA_CPP_PYTHON], check=True)
        return importlib.import_module("llama_cpp")


def torch_greedy(loaded, ids: list[int], n: int) -> tuple[int, list[int]]:
    import torch

    with torch.no_grad():
        x = torch.tensor([ids])
        first = int(loaded.model(input_ids=x).logits[0, -1].argmax())
        out = loaded.model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return first, out[0, len(ids):].tolist()


def llama_greedy(llm, ids: list[int], n: int) -> tuple[int, list[int]]:
    import numpy as np

    llm.reset()
    llm.eval(ids)
    first = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    toks = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        toks.append(nxt)
        llm.eval([nxt])
    return first, toks


def agree_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/prunekit-bench")
    ap.add_argument("--runs", default="smollm2-blockpruner-20,smollm2-llm-pruner-20")
    ap.add_argument("--gguf-type", default="f32")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--json", default=str(HERE / "results" / "gguf_llamacpp.json"))
    args = ap.parse_args()
    llama_cpp = ensure_llama_cpp()
    from prunekit.export import export
    from prunekit.pipeline.load import load_model

    work = Path(args.work)
    results = {"llama_cpp_python": getattr(llama_cpp, "__version__", "?"), "gguf_type": args.gguf_type, "runs": {}}
    for run in [r for r in args.runs.split(",") if r]:
        out = work / run
        if not (out / "plan.json").is_file():
            print(f"skipping {run}: {out} has no plan.json (run benchmarks/pruned_speed.py first)", flush=True)
            continue
        loaded = load_model(str(out), device="cpu")
        gguf_path = work / f"{run}.{args.gguf_type}.gguf"
        t0 = time.perf_counter()
        info = export(loaded, "gguf", gguf_path, overwrite=True, gguf_type=args.gguf_type)
        print(f"{run}: exported {gguf_path.name} ({info['bytes'] / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s; "
              f"stand-ins: zero FFN in layers {info['zero_ffn_layers']}, zero attention in {info['zero_attention_layers']}", flush=True)
        llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
        rows = []
        try:
            for prompt in PROMPTS:
                ids = loaded.tokenizer(prompt)["input_ids"]
                t_first, t_toks = torch_greedy(loaded, ids, args.new_tokens)
                l_first, l_toks = llama_greedy(llm, ids, args.new_tokens)
                rows.append({
                    "prompt": prompt, "prompt_tokens": len(ids), "next_token_agrees": t_first == l_first,
                    "torch_next": loaded.tokenizer.decode([t_first]), "llama_cpp_next": loaded.tokenizer.decode([l_first]),
                    "greedy_agreeing_prefix": agree_prefix(t_toks, l_toks), "new_tokens": args.new_tokens,
                    "torch_text": loaded.tokenizer.decode(t_toks), "llama_cpp_text": loaded.tokenizer.decode(l_toks),
                })
                r = rows[-1]
                print(f"  {prompt!r}: next token {'agrees' if r['next_token_agrees'] else 'DIFFERS'} ({r['torch_next']!r}); "
                      f"greedy {r['greedy_agreeing_prefix']}/{args.new_tokens} agree; torch: {r['torch_text']!r}", flush=True)
        finally:
            llm.close()
        results["runs"][run] = {"export": info, "prompts": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"| run | prompt | next token (PyTorch = llama.cpp?) | greedy tokens agreeing (of {results['runs'] and next(iter(results['runs'].values()))['prompts'][0]['new_tokens']}) |",
             "|---|---|---|---:|"]
    for run, r in results["runs"].items():
        for p in r["prompts"]:
            lines.append(f"| {run} | `{p['prompt']}` | {'yes' if p['next_token_agrees'] else 'no'} (`{p['torch_next']!r}`) | {p['greedy_agreeing_prefix']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
