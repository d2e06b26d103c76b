"""Commands that take a pruned model elsewhere and measure it: ``export``, ``bench``, ``report``,
and the helpers that ``eval --tasks`` and ``prune --export`` call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.table import Table
from transformers.utils import logging as hf_logging

from prunekit.cli.console import console, out_console, pct, print_bench, print_export, progress_bar
from prunekit.core.errors import PrunekitError, check_choice
from prunekit.evaluation.report import write_report
from prunekit.evaluation.speed import BenchConfig
from prunekit.evaluation.speed import bench as run_bench
from prunekit.evaluation.zero_shot import prepare_tasks, zero_shot
from prunekit.export import FORMATS
from prunekit.export import export as run_export
from prunekit.models.loading import EMBEDDED
from prunekit.pipeline.load import as_loaded, load_model
from prunekit.pipeline.memory_probe import peak_memory
from prunekit.plan.apply import apply_plan
from prunekit.plan.patch import read_patch
from prunekit.plan.schema import read_plan


def _quiet_transformers() -> None:
    """No per-shard progress bars from transformers while prunekit writes and re-reads exports."""
    hf_logging.disable_progress_bar()


def default_export_path(out: str | Path, fmt: str) -> Path:
    """Where ``prune --export FORMAT`` writes: ``OUT/export-hf/``, ``OUT/export-nemotron-nas/``, ``OUT/export.gguf``."""
    return Path(out) / ("export.gguf" if fmt == "gguf" else f"export-{fmt}")


def export_after_prune(out: str, fmt: str, gguf_type: str = "f16") -> dict:
    """``prune --export FORMAT``: export the directory ``prune`` just wrote."""
    _quiet_transformers()
    info = run_export(load_model(out, device="cpu"), fmt, default_export_path(out, fmt), overwrite=True, gguf_type=gguf_type)
    print_export(info)
    return info


def run_zero_shot(model: str, tasks: str, *, limit: Optional[int], task_dir: Optional[str], batch_size: int,
                  plan: Optional[str], dtype: str, device: Optional[str], json_out: Optional[str] = None) -> dict:
    """``eval --tasks``: lm-eval zero-shot accuracies of MODEL (a prunekit output directory, an export, any spec)."""
    names = [t for t in tasks.split(",") if t.strip()]
    prepared = prepare_tasks(names, task_dir, limit)  # refuse bad names / unreachable data before loading the model
    loaded = as_loaded(model, dtype, device)
    if plan:
        p = read_plan(plan)
        apply_plan(loaded.model, p, patch=read_patch(plan, p))
    res = zero_shot(loaded, names, limit=limit, batch_size=batch_size, task_dir=task_dir, prepared=prepared)
    t = Table(title=f"{loaded.spec}: zero-shot (lm-eval), {loaded.adapter.total_params():,} parameters"
                    + (f", --limit {limit}" if limit else ""))
    for col in ("task", "acc", "acc_norm", "items"):
        t.add_column(col, justify="right")
    for name, r in res["tasks"].items():
        t.add_row(name, pct(r["acc"]), pct(r["acc_norm"]), str(r["samples"] or "-"))
    t.add_row("average", pct(res["average_acc"]), pct(res["average_acc_norm"]), "")
    out_console.print(t)
    if json_out:
        Path(json_out).write_text(json.dumps(res | {"model": loaded.spec}, indent=2) + "\n")
    return res


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise PrunekitError(f"{flag} '{text}' is not a comma-separated list of whole numbers.", f"For example {flag} 128,512.") from None


def dense_spec_for(model: str) -> str | None:
    """The base model of a prunekit output directory (its plan's spec), when it can be loaded here."""
    plan_path = Path(model) / "plan.json"
    if not plan_path.is_file():
        return None
    spec = json.loads(plan_path.read_text()).get("model", {}).get("spec")
    if spec in EMBEDDED or (spec and Path(spec).exists()):
        return spec
    return None


def export(
    model: str = typer.Argument(..., help="A prunekit output directory (or any model spec)."),
    *,
    fmt: str = typer.Option(..., "--format", help="hf, nemotron-nas or gguf."),
    to: str = typer.Option(..., "--to", help="Output directory (hf, nemotron-nas) or .gguf file."),
    gguf_type: str = typer.Option("f16", "--gguf-type", help="gguf tensor type: f32, f16, bf16 or q8_0."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --to."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Re-read the export and compare its logits."),
) -> None:
    """Export a pruned model so that transformers, vLLM or llama.cpp load it."""
    _quiet_transformers()
    check_choice("`format`", fmt, FORMATS)
    print_export(run_export(load_model(model, device="cpu"), fmt, to, overwrite=overwrite, gguf_type=gguf_type, verify=verify))


def bench(
    model: str = typer.Argument(..., help="A prunekit output directory, an export, or any model spec."),
    *,
    against: Optional[str] = typer.Option(None, "--against", help="The dense model to compare with (default: the plan's base model)."),
    seq_lens: str = typer.Option("128,512", "--seq-lens", help="Prefill lengths, comma-separated."),
    prompt_len: int = typer.Option(64, "--prompt-len", help="Prompt tokens before decoding."),
    new_tokens: int = typer.Option(32, "--new-tokens", help="Decoded tokens (greedy, KV cache)."),
    batch: int = typer.Option(1, "--batch", help="Sequences per forward."),
    repeats: int = typer.Option(5, "--repeats", help="Interleaved repeats; medians are reported."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Measure peak memory in a fresh process per model."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write the results as JSON here."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda if available)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's own choice)."),
) -> None:
    """Measured prefill/decode speed of a pruned model vs its dense base, and the ideal from MACs."""
    if threads is not None:
        if threads < 1:
            raise PrunekitError(f"--threads {threads} is out of range.", "Use 1 or more.")

        torch.set_num_threads(threads)
    cfg = BenchConfig(seq_lens=_int_list("--seq-lens", seq_lens), prompt_len=prompt_len, new_tokens=new_tokens,
                      batch=batch, repeats=repeats)
    dense_spec = against or dense_spec_for(model)
    if dense_spec is None:
        console.print("no dense model to compare with (give --against): measuring MODEL alone")
    pruned = load_model(model, dtype=dtype, device=device)
    dense = load_model(dense_spec, dtype=dtype, device=device) if dense_spec else None
    with progress_bar() as update:
        res = run_bench(pruned, dense, cfg, progress=update)
    if memory:
        for name, spec in (("pruned", model), ("dense", dense_spec)):
            if spec is not None:
                res["models"][name]["memory"] = peak_memory(spec, cfg, dtype, str(pruned.device))
    print_bench(res)
    if json_out:
        Path(json_out).write_text(json.dumps(res, indent=2) + "\n")


def report(out: str = typer.Argument(..., help="A prunekit output directory.")) -> None:
    """Rebuild OUT/report.md and its figures (perplexity per step, layer map) from OUT/plan.json."""
    console.print(f"wrote {write_report(out)}")
