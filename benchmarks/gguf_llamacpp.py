"""A pruned embedded model exported to GGUF runs in a real llama.cpp, with the pruned PyTorch model's logits.

Installs ``llama-cpp-python`` (which compiles llama.cpp, ~3.5 minutes on 2 cores) into the running
interpreter's environment when it is missing. For each pruned output directory given (``--runs``, under
``--work``; default: the BlockPruner and LLM-Pruner 20% runs of benchmarks/pruned_speed.py) and each
``--gguf-types``, it exports with ``prunekit export --format gguf --gguf-type T`` (whose own check
compares the file with the pruned model with its weights rounded to T, and reports what that rounding
costs: ``rounding_logit_diff``), then compares llama.cpp with the pruned PyTorch model:

- on the first ``--text-tokens`` tokens of the held-out ``wiki-test`` text, teacher-forced: the positions
  whose argmax agrees, and the max logit gap;
- for each of the README's prompts, the next token and a greedy continuation of ``--new-tokens`` tokens,
  each side feeding its own choices back (llama.cpp recomputes the sequence at each step and takes the
  argmax of its logits, no sampler), counting the tokens that agree before the first divergence.

The same token ids go to both runtimes, so the comparison is of the models, not the tokenizers.
llama.cpp runs through :class:`prunekit.export.llamacpp.LlamaCppModel`, with its extra buffer types off: on
an AMX CPU, the llama-cpp-python build made here faults in its AMX path for every quantized file
(prunekit/export/llamacpp.py says why). Writes ``--json`` (default ``benchmarks/results/gguf_llamacpp.json``)
and prints a markdown table.

    python benchmarks/gguf_llamacpp.py [--work /tmp/prunekit-bench] [--runs a,b] [--gguf-types f32,f16,bf16,q8_0]
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


def torch_logits(loaded, ids: list[int]):
    import torch

    with torch.no_grad():
        return loaded.model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def torch_greedy(loaded, ids: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = loaded.model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    toks: list[int] = []
    for _ in range(n):
        toks.append(int(llm.logits(ids + toks)[-1].argmax()))
    return toks


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
    ap.add_argument("--gguf-types", default="f32,f16,bf16,q8_0")
    ap.add_argument("--text-tokens", type=int, default=200)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=str(HERE / "results" / "gguf_llamacpp.json"))
    args = ap.parse_args()
    llama_cpp = ensure_llama_cpp()
    import numpy as np

    from prunekit.data import build_windows
    from prunekit.export import export
    from prunekit.export.llamacpp import LlamaCppModel
    from prunekit.pipeline.load import load_model

    work = Path(args.work)
    results = {"llama_cpp_python": getattr(llama_cpp, "__version__", "?"), "text": f"wiki-test, first {args.text_tokens} tokens",
               "runs": {}}
    for run in [r for r in args.runs.split(",") if r]:
        out = work / run
        if not (out / "plan.json").is_file():
            print(f"skipping {run}: {out} has no plan.json (run benchmarks/pruned_speed.py or prunekit prune first)", flush=True)
            continue
        plan = json.loads((out / "plan.json").read_text())
        loaded = load_model(str(out), device="cpu")
        text = build_windows(loaded.tokenizer, "wiki-test", args.text_tokens, 1).ids[0].tolist()
        ref_text = torch_logits(loaded, text)
        prompts = {p: loaded.tokenizer(p)["input_ids"] for p in PROMPTS}
        ref_prompts = {p: (int(torch_logits(loaded, ids)[-1].argmax()), torch_greedy(loaded, ids, args.new_tokens))
                       for p, ids in prompts.items()}
        entry = {"method": plan.get("method"), "removed": [r["unit"] for r in plan.get("removed", [])],
                 "ratio_removed": plan.get("ratio_removed"), "types": {}}
        for gguf_type in [t for t in args.gguf_types.split(",") if t]:
            path = work / f"{run}.{gguf_type}.gguf"
            t0 = time.perf_counter()
            info = export(loaded, "gguf", path, overwrite=True, gguf_type=gguf_type)
            seconds = time.perf_counter() - t0
            with LlamaCppModel(path, n_threads=args.threads) as llm:
                got = llm.logits(text)
                rows = []
                for p, ids in prompts.items():
                    t_first, t_toks = ref_prompts[p]
                    l_first = int(llm.logits(ids)[-1].argmax())
                    l_toks = llama_greedy(llm, ids, args.new_tokens)
                    rows.append({
                        "prompt": p, "prompt_tokens": len(ids), "next_token_agrees": t_first == l_first,
                        "torch_next": loaded.tokenizer.decode([t_first]), "llama_cpp_next": loaded.tokenizer.decode([l_first]),
                        "greedy_agreeing_prefix": agree_prefix(t_toks, l_toks), "new_tokens": args.new_tokens,
                        "torch_text": loaded.tokenizer.decode(t_toks), "llama_cpp_text": loaded.tokenizer.decode(l_toks),
                    })
            r = entry["types"][gguf_type] = {
                "export": info, "export_seconds": round(seconds, 1),
                "text_argmax_agree": int((got.argmax(-1) == ref_text.argmax(-1)).sum()), "text_tokens": len(text),
                "text_max_logit_gap": float(np.abs(got - ref_text).max()), "prompts": rows,
            }
            print(f"{run} {gguf_type}: {info['bytes'] / 2**20:.0f} MiB in {seconds:.1f} s; file vs rounded model "
                  f"{info['max_logit_diff']:.3g}, rounding {info['rounding_logit_diff']:.3g}; llama.cpp on the text: argmax "
                  f"{r['text_argmax_agree']}/{len(text)}, max gap {r['text_max_logit_gap']:.3g}; greedy "
                  f"{[row['greedy_agreeing_prefix'] for row in rows]} of {args.new_tokens}", flush=True)
        results["runs"][run] = entry
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = ["| run | type | MiB | file vs rounded model | rounding | llama.cpp argmax (text) | max logit gap | next tokens agree "
             "| greedy tokens agreeing |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for run, r in results["runs"].items():
        for t, x in r["types"].items():
            e, p = x["export"], x["prompts"]
            lines.append(f"| {run} | {t} | {e['bytes'] / 2**20:.0f} | {e['max_logit_diff']:.2g} | {e['rounding_logit_diff']:.3g} | "
                         f"{x['text_argmax_agree']}/{x['text_tokens']} | {x['text_max_logit_gap']:.3g} | "
                         f"{sum(q['next_token_agrees'] for q in p)}/{len(p)} | "
                         f"{', '.join(str(q['greedy_agreeing_prefix']) for q in p)} (of {p[0]['new_tokens'] if p else 0}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
