"""Commands that prune and look at models: ``prune``, ``eval``, ``info``, ``demo``."""

from __future__ import annotations

import time
from typing import Optional

import typer
from rich.table import Table

from prunekit.cli.console import console, out_console, print_plan, print_step, print_width_plan, progress_bar
from prunekit.cli.export import export_after_prune, run_zero_shot
from prunekit.core.errors import PrunekitError, check_choice
from prunekit.data.calibration import CalibConfig
from prunekit.engine import ranks
from prunekit.engine.memo import ScoreMemo
from prunekit.export import FORMATS
from prunekit.methods.depth.patch import PATCHES, PatchConfig
from prunekit.methods.options import DepthConfig
from prunekit.methods.registry import METHODS, get_method
from prunekit.methods.width.options import WidthConfig
from prunekit.methods.width.pg_options import PolicyConfig
from prunekit.models.contract import Block
from prunekit.pipeline import prune as pipeline
from prunekit.pipeline.load import load_model
from prunekit.plan.patch import read_patch
from prunekit.plan.schema import read_plan


def _calib(calib, seq_len, windows, *, sample, seed, batch_size) -> CalibConfig:
    return CalibConfig(source=calib, seq_len=seq_len, windows=windows, sample=sample, seed=seed, batch_size=batch_size)


PATCH_HELP = "none, or linear: a least-squares map per run of removed blocks, folded into the block before it (depth methods)."
RIDGE_HELP = "--patch linear: ridge toward the identity, relative to the mean diagonal of M^T M (0: plain least squares)."
TOKENS_HELP = "--patch linear: tokens the map is fitted on, from --calib in --seq-len windows (default: 32 x hidden size)."


def patch_config(patch: str, ridge: float, tokens: int | None) -> PatchConfig | None:
    """``--patch``, ``--patch-ridge``, ``--patch-tokens`` as a :class:`PatchConfig` (None for ``--patch none``)."""
    check_choice("--patch", patch, PATCHES)
    return None if patch == "none" else PatchConfig(kind=patch, ridge=ridge, tokens=tokens)


def prune(
    model: str = typer.Argument(..., help="Model spec: smollm2-135m, a checkpoint dir, a .gguf file or a hub id."),
    *,
    out: str = typer.Option(..., "--out", help="Output directory (plan.json, pruned weights, report)."),
    method: str = typer.Option("blockpruner", "--method", help=f"Pruning method: {', '.join(METHODS)}."),
    remove: Optional[int] = typer.Option(None, "--remove", help="Number of blocks to remove."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Fraction of the parameters to remove, in (0, 1) (see --ratio-of)."),
    ratio_of: str = typer.Option("total", "--ratio-of",
                                 help="What --ratio is a fraction of: total (every parameter, embedding and LM head included) or "
                                 "decoder (the decoder layers' parameters only)."),
    blocks_kind: str = typer.Option("mix", "--blocks-kind", help="Blocks searched: mix, attn or mlp."),
    search: str = typer.Option("greedy", "--search",
                               help="greedy, beam:K (K >= 2) or greedy+swap (greedy methods: blockpruner, sleb, finercut)."),
    calib: Optional[str] = typer.Option(None, "--calib",
                                        help="Calibration source: wiki, news, alpaca, wikitext2, c4, ptb or a .txt/.jsonl file (default: "
                                        "alpaca; wiki for llm-pruner)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per calibration window (default: 2048; 64 for llm-pruner)."),
    windows: Optional[int] = typer.Option(None, "--windows", help="Number of windows (default: all)."),
    sample: str = typer.Option("first", "--sample", help="first or random windows."),
    seed: int = typer.Option(0, "--seed", help="Seed for --sample random."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Windows per batch (default 2; policy-gradient: 8 per step)."),
    cache: str = typer.Option("trajectory", "--cache", help="Engine caches: none, prefix or trajectory."),
    early_exit: bool = typer.Option(True, "--early-exit/--no-early-exit", help="Drop candidates that cannot win a step."),
    cache_gb: Optional[float] = typer.Option(None, "--cache-gb",
                                             help="Memory budget of the cached states (default: half the free memory)."),
    candidate_batch: Optional[int] = typer.Option(None, "--candidate-batch",
                                                  help="Greedy candidates run as one group: side by side, one thread each, on the CPU "
                                                  "(default: the torch threads); stacked into one batch on an accelerator "
                                                  "(default: as many as its free memory allows). Same plan."),
    max_memory: Optional[float] = typer.Option(None, "--max-memory",
                                               help="GiB of weights resident on the compute device; the rest stay memory-mapped in the "
                                               "checkpoint's dtype and blocks come in as they run (same plan)."),
    device_map: Optional[str] = typer.Option(None, "--device-map",
                                             help="Split the model over devices with accelerate: auto, or a JSON object {module: device} "
                                             "(inline or a .json file); each block runs on its own device (same plan)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N... (default: cuda if available)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed search (or llm-pruner's gradient pass) from OUT/journal.jsonl."),
    importance: str = typer.Option("param_first", "--importance",
                                   help="llm-pruner: param_first, element1, element2, param_second, param_mix, vector, l1, l2 or random."),
    aggregate: str = typer.Option("sum", "--aggregate",
                                  help="llm-pruner: how a group's part scores combine: sum, mean, max, prod or last."),
    strategy: str = typer.Option("block", "--strategy",
                                 help="llm-pruner: block (heads and MLP channels in --layers) or channel (hidden size)."),
    layers: Optional[str] = typer.Option(None, "--layers",
                                         help="llm-pruner: START:END (END exclusive) of the pruned layers (default: the paper's 4:30 of "
                                         "32 layers, scaled; SmolLM2: 4:28)."),
    global_: bool = typer.Option(False, "--global",
                                 help="llm-pruner: rank heads and channels across layers instead of the same fraction per layer."),
    samples: int = typer.Option(10, "--samples", help="llm-pruner: calibration samples whose gradients are accumulated."),
    at_least: bool = typer.Option(False, "--at-least",
                                  help="llm-pruner: remove at least --ratio (as the depth methods do), not the closest reachable amount."),
    steps: int = typer.Option(200, "--steps", help="policy-gradient: SGD steps on the keep probabilities (0: the initialisation's top-k)."),
    masks: int = typer.Option(2, "--masks", help="policy-gradient: masks drawn per step, run as one batched forward."),
    lr: float = typer.Option(0.05, "--lr", help="policy-gradient: peak learning rate (cosine schedule)."),
    init: str = typer.Option("wanda", "--init", help="policy-gradient: wanda, taylor or uniform initialisation."),
    units: str = typer.Option("width", "--units", help="policy-gradient: width (KV groups, MLP channels) or mixed (also whole blocks)."),
    estimator: str = typer.Option("sqrt", "--estimator", help="policy-gradient: sqrt (the authors') or score (exact, unbiased)."),
    export: Optional[str] = typer.Option(None, "--export",
                                         help="Also export the pruned model: hf, nemotron-nas or gguf (to OUT/export-FORMAT, "
                                         "OUT/export.gguf)."),
    patch: str = typer.Option("none", "--patch", help=PATCH_HELP),
    patch_ridge: float = typer.Option(1e-4, "--patch-ridge", help=RIDGE_HELP),
    patch_tokens: Optional[int] = typer.Option(None, "--patch-tokens", help=TOKENS_HELP),
) -> None:
    """Prune a model and write OUT/plan.json, the pruned weights, timings and OUT/report.md."""
    if export is not None:
        check_choice("`export`", export, FORMATS)
    patch_cfg = patch_config(patch, patch_ridge, patch_tokens)
    if get_method(method).kind == "width":
        if patch_cfg is not None:
            raise PrunekitError(f"--patch linear applies to the depth methods; {method} is a width method.", "Drop --patch.")
        if remove is not None:
            raise PrunekitError("--remove counts blocks; llm-pruner takes --ratio (a fraction of the parameters).", "Use e.g. --ratio 0.2.")
        if device_map is not None:
            raise PrunekitError("--device-map does not apply to llm-pruner (its gradient pass runs the whole model on one device).",
                                "Drop --device-map.")
        if method == "policy-gradient":
            config = PolicyConfig(ratio=ratio, ratio_of=ratio_of, layers=layers, samples=samples, seed=seed, max_memory=max_memory,
                                  steps=steps, masks=masks, lr=lr, init=init, units=units, estimator=estimator)
        else:
            config = WidthConfig(ratio=ratio, ratio_of=ratio_of, importance=importance, aggregate=aggregate, strategy=strategy,
                                 layers=layers, global_=global_, samples=samples, seed=seed, at_least=at_least, max_memory=max_memory)
        pg = isinstance(config, PolicyConfig)
        cal = _calib(calib or "wiki", seq_len or (128 if pg else 64), windows, sample=sample, seed=seed,
                     batch_size=batch_size or (8 if pg else 2))
    else:
        config = DepthConfig(method=method, blocks_kind=blocks_kind, remove=remove, ratio=ratio, ratio_of=ratio_of, search=search,
                             cache=cache, early_exit=early_exit, cache_gb=cache_gb, candidate_batch=candidate_batch,
                             max_memory=max_memory, device_map=device_map)
        cal = _calib(calib or "alpaca", seq_len or 2048, windows, sample=sample, seed=seed, batch_size=batch_size or 2)
    with progress_bar() as update:
        result = pipeline.prune(model, config, cal, out=out, overwrite=overwrite, resume=resume, progress=update,
                                on_step=print_step, dtype=dtype, device=device, patch=patch_cfg)
    if ranks.requested_world() > 1 and not ranks.current().is_main:  # under torchrun, rank 0 reports and exports
        return
    if isinstance(config, WidthConfig):
        if result.timing.get("resumed_at_step") is not None:
            console.print(f"resumed the policy-gradient run after step {result.timing['resumed_at_step']} of {config.steps}")
        if result.timing.get("resumed_samples"):
            console.print(f"resumed the gradient pass after {result.timing['resumed_samples']} of {config.samples} samples")
        print_width_plan(result.plan, result.timing)
    else:
        print_plan(result.plan, result.timing)
    console.print(f"wrote {out}")
    if export is not None:
        export_after_prune(out, export)


def eval_(
    model: str = typer.Argument(..., help="Model spec or a prunekit output directory."),
    *,
    data: str = typer.Option("wiki-test", "--data", help="Comma-separated sources: wiki-test, news, wiki, a file..."),
    plan: Optional[str] = typer.Option(None, "--plan", help="Apply this plan.json to MODEL first."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per window."),
    windows: Optional[int] = typer.Option(16, "--windows", help="Windows per source."),
    batch_size: int = typer.Option(4, "--batch-size", help="Windows per forward batch."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda if available)."),
    tasks: Optional[str] = typer.Option(None, "--tasks",
                                        help="lm-eval zero-shot tasks instead of perplexity, e.g. "
                                        "piqa,winogrande,hellaswag,arc_easy,arc_challenge."),
    limit: Optional[int] = typer.Option(None, "--limit", help="--tasks: items per task (quick runs)."),
    task_dir: Optional[str] = typer.Option(None, "--task-dir", help="--tasks: a directory of your own lm-eval task YAMLs."),
    max_memory: Optional[float] = typer.Option(None, "--max-memory",
                                               help="GiB of weights resident on the device (a base checkpoint; blocks come in as they "
                                               "run, same values)."),
    device_map: Optional[str] = typer.Option(None, "--device-map",
                                             help="Split a base checkpoint over devices with accelerate: auto, or a JSON object {module: "
                                             "device} (inline or a .json file)."),
) -> None:
    """Perplexity of a model (or a pruned output) on held-out text, and its parameter count; with --tasks, lm-eval zero-shot accuracy."""
    if tasks and max_memory is not None:
        raise PrunekitError("--max-memory does not apply to --tasks (lm-eval runs the whole model).",
                            "Drop --max-memory, or evaluate perplexity.")
    if tasks and device_map is not None:
        raise PrunekitError("--device-map does not apply to --tasks.", "Drop --device-map, or evaluate perplexity.")
    if tasks:
        run_zero_shot(model, tasks, limit=limit, task_dir=task_dir, batch_size=batch_size, plan=plan, dtype=dtype, device=device)
        return
    p = read_plan(plan) if plan else None
    res = pipeline.evaluate(model, [s for s in data.split(",") if s], seq_len, windows, batch_size, plan=p, dtype=dtype, device=device,
                            max_memory=max_memory, device_map=device_map, patch_tensors=read_patch(plan, p) if p else None)
    t = Table(title=f"{res['model']}: {res['parameters']:,} parameters")
    t.add_column("data")
    t.add_column("perplexity", justify="right")
    t.add_column("tokens", justify="right")
    for src, ppl in res["perplexity"].items():
        t.add_row(src, f"{ppl:.3f}", str(res["tokens"][src]))
    out_console.print(t)
    if res.get("weights"):
        w = res["weights"]
        out_console.print(f"weights: {w['moved_bytes'] / 2**30:.2f} GiB brought in; peak resident {w['peak_resident_bytes'] / 2**30:.3f}"
                          f" GiB of the {w['cap_bytes'] / 2**30:.3f} GiB cap")


def info(model: str = typer.Argument(..., help="Model spec or a prunekit output directory.")) -> None:
    """Blocks of a model and their parameter counts."""
    loaded = load_model(model, device="cpu")
    a = loaded.adapter
    d = a.describe()
    out_console.print(" ".join(f"{k}={v}" for k, v in d.items()))
    t = Table(title="blocks (attn = pre-norm + self-attention, mlp = pre-norm + MLP)")
    for col in ("layer", "attn params", "mlp params"):
        t.add_column(col, justify="right")
    for i in range(a.num_layers):
        cells = []
        for kind in ("attn", "mlp"):
            b = Block.of(i, kind)
            cells.append("removed" if a.is_removed(b) else f"{a.block_params(b):,}")
        t.add_row(str(i), *cells)
    out_console.print(t)


def demo(
    *,
    model: str = typer.Option("smollm2-135m", "--model", help="Model spec."),
    ratio: float = typer.Option(0.2, "--ratio", help="Fraction of parameters to remove."),
    method: str = typer.Option("budget-greedy", "--method",
                               help="The depth method the demo prunes with (budget-greedy: lowest held-out perplexity in 5 of the 6 "
                               "compare cells of BENCHMARKS.md)."),
    against: str = typer.Option("blockpruner", "--against", help="The depth method run beside it on the same calibration ('none': skip)."),
    windows: int = typer.Option(4, "--windows", help="Calibration windows (of --seq-len tokens) from wiki."),
    seq_len: int = typer.Option(64, "--seq-len", help="Tokens per calibration window."),
    batch_size: int = typer.Option(1, "--batch-size", help="Calibration windows per batch (early exit works between batches)."),
    eval_windows: int = typer.Option(8, "--eval-windows", help="Evaluation windows of 256 tokens per source."),
    search_dtype: str = typer.Option("bfloat16", "--search-dtype",
                                     help="dtype the searches run in: bfloat16 (faster where the CPU has bf16 units) or float32; every "
                                     "plan is evaluated in float32."),
) -> None:
    """What `make demo` runs: --method (and --against beside it) on the embedded model, held-out perplexity of each."""
    t0 = time.perf_counter()
    check_choice("--search-dtype", search_dtype, ("float32", "bfloat16"))
    methods = [method] + ([against] if against != "none" and against != method else [])
    for m in methods:
        if get_method(m).kind != "depth":
            raise PrunekitError(f"the demo runs depth methods; '{m}' is a {get_method(m).kind} method.",
                                "Use e.g. --method sleb --against blockpruner.")
    loaded = load_model(model, device="cpu")
    searched = loaded if search_dtype == "float32" else load_model(model, dtype=search_dtype, device="cpu")
    console.print(f"calibrating on {windows} x {seq_len} = {windows * seq_len} tokens of the embedded wiki split "
                  f"(searches in {search_dtype}); "
                  f"evaluating on {eval_windows} x 256 tokens of wiki-test (held-out articles) and news")
    rows = [("dense", pipeline.evaluate(loaded, ["wiki-test", "news"], 256, eval_windows), None)]
    cal = CalibConfig(source="wiki", seq_len=seq_len, windows=windows, batch_size=batch_size)
    memo = ScoreMemo()  # the later search reads the sums of the candidates the earlier one scored (same plans, less work)
    for m in methods:
        console.print(f"{m}: searching for {ratio:.0%} of the parameters")
        with progress_bar() as update:
            res = pipeline.prune(searched, DepthConfig(method=m, ratio=ratio), cal, progress=update, on_step=print_step, memo=memo)
        print_plan(res.plan, res.timing)
        if res.timing["memo_hits"]:
            console.print(f"{m}: {res.timing['memo_hits']} window-batch scores of removed sets scored earlier in this demo read, "
                          "not run again")
        held_out = pipeline.evaluate(loaded, ["wiki-test", "news"], 256, eval_windows, plan=res.plan)  # in float32
        rows.append((m, held_out, res.timing["search_seconds"]))
        del res
    t = Table(title="held-out perplexity, dense vs pruned (the same calibration for every method)")
    for col in ("model", "parameters", "removed", "wiki-test", "news", "search s"):
        t.add_column(col, justify="right")
    dense_params = rows[0][1]["parameters"]
    for name, r, secs in rows:
        t.add_row(name, f"{r['parameters']:,}", f"{1 - r['parameters'] / dense_params:.1%}", f"{r['perplexity']['wiki-test']:.3f}",
                  f"{r['perplexity']['news']:.3f}", "-" if secs is None else f"{secs:.0f}")
    out_console.print(t)
    out_console.print(f"wall time: {time.perf_counter() - t0:.1f} s")
