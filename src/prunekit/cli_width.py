"""Commands of the width area: ``prunekit recover`` (registered through :func:`register`), and
:func:`run_llm_pruner`, which ``prunekit prune --method llm-pruner`` dispatches to."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def _consoles():
    from .cli import console, out_console

    return console, out_console


@contextmanager
def loss_progress():
    """A rich progress bar whose rows show the latest training loss; yields ``progress(stage, done, total, info)``."""
    console, _ = _consoles()
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
    )
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int, info: dict | None = None) -> None:
        loss = f"loss {info['loss']:.4f}" if info and "loss" in info else ""
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, loss=loss)
        bar.update(tasks[stage], completed=done, total=total, loss=loss)

    with bar:
        yield update


def run_llm_pruner(model: str, out: str, width, calib, overwrite: bool, dtype: str, device: Optional[str],
                   resume: bool = False) -> None:
    """``prunekit prune --method llm-pruner``: score, choose, slice, write OUT; print the outcome."""
    from .api import as_loaded
    from .cli import progress_bar
    from .models.loading import resolve_dtype
    from .width.api import prune_width
    from .width.importance import check_gradient_dtype

    console, out_console = _consoles()
    loaded = as_loaded(model, dtype, device)
    if width.needs_gradients:
        check_gradient_dtype(resolve_dtype(dtype), loaded.device)
    with progress_bar() as update:
        result = prune_width(loaded, width, calib, progress=update, out=out, overwrite=overwrite, resume=resume)
    if result.timing.get("resumed_samples"):
        console.print(f"resumed the gradient pass after {result.timing['resumed_samples']} of {width.samples} samples")
    print_width_plan(result.plan, result.timing)
    console.print(f"wrote {out}")


def print_width_plan(plan: dict, timing: dict | None = None) -> None:
    _, out_console = _consoles()
    w = plan["width"]
    frac = w.get("per_layer_fraction")
    title = (f"llm-pruner ({plan['options']['importance']}, {w['strategy']}): removed {plan['ratio_removed']:.1%} of "
             f"{plan['params_before']:,} parameters" + (f", {frac:.3f} of each pruned layer" if frac is not None and w["strategy"] == "block" else ""))
    t = Table(title=title)
    if w["strategy"] == "channel":
        t.add_column("hidden size", justify="right")
        t.add_row(f"{plan['model']['config']['hidden_size']} -> {w['hidden_size']}")
    else:
        cfg = plan["model"]["config"]
        for col in ("layer", "query heads", "KV heads", "MLP channels"):
            t.add_column(col, justify="right")
        for e in w["layers"]:
            t.add_row(str(e["layer"]), f"{e.get('num_heads', cfg['num_attention_heads'])}/{cfg['num_attention_heads']}",
                      f"{e.get('num_kv_heads', cfg['num_key_value_heads'])}/{cfg['num_key_value_heads']}",
                      f"{e.get('intermediate_size', cfg['intermediate_size'])}/{cfg['intermediate_size']}")
    out_console.print(t)
    if plan.get("dense_value") is not None:
        out_console.print(f"calibration perplexity of the dense model: {plan['dense_value']:.3f}")
    if timing:
        out_console.print(f"scoring: {timing['search_seconds']:.1f} s")


def register(app: typer.Typer) -> None:
    @app.command()
    def recover(
        pruned: str = typer.Argument(..., help="A prunekit output directory (from prunekit prune)."),
        out: str = typer.Option(..., "--out", help="Directory for the recovered (merged) model."),
        data: str = typer.Option("auto", "--data", help="Training text: auto (alpaca-cleaned online, else the embedded wiki split), alpaca-cleaned, wiki, news or a .txt/.jsonl file."),
        epochs: int = typer.Option(2, "--epochs", help="Passes over the training windows."),
        lora_r: int = typer.Option(8, "--lora-r", help="LoRA rank."),
        lora_alpha: int = typer.Option(16, "--lora-alpha", help="LoRA alpha (scale = alpha / r)."),
        lora_dropout: float = typer.Option(0.05, "--lora-dropout", help="Dropout on the LoRA input."),
        lr: float = typer.Option(1e-4, "--lr", help="AdamW learning rate (constant)."),
        seq_len: int = typer.Option(256, "--seq-len", help="Tokens per training window."),
        batch_size: int = typer.Option(4, "--batch-size", help="Windows per step."),
        windows: Optional[int] = typer.Option(None, "--windows", help="Training windows (default: all)."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many steps in all."),
        save_every: int = typer.Option(50, "--save-every", help="Checkpoint every N steps (and at each epoch's end)."),
        eval_data: str = typer.Option("wiki-test,news", "--eval-data", help="Held-out sources for perplexity before/after."),
        eval_windows: int = typer.Option(8, "--eval-windows", help="Evaluation windows per source."),
        eval_seq_len: int = typer.Option(256, "--eval-seq-len", help="Tokens per evaluation window."),
        seed: int = typer.Option(0, "--seed", help="Seed of the data order and the LoRA initialisation."),
        rows: int = typer.Option(2000, "--rows", help="alpaca-cleaned rows to train on."),
        dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda if available)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out (and start over instead of resuming)."),
    ) -> None:
        """LoRA recovery of a pruned model (LLM-Pruner's post-training); merges the adapters and writes a plain model."""
        from .recover import RecoverConfig
        from .recover import recover as run

        cfg = RecoverConfig(data=data, epochs=epochs, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, lr=lr,
                            seq_len=seq_len, batch_size=batch_size, windows=windows, max_steps=max_steps, save_every=save_every,
                            eval_data=tuple(s for s in eval_data.split(",") if s), eval_windows=eval_windows,
                            eval_seq_len=eval_seq_len, seed=seed, rows=rows)
        console, out_console = _consoles()
        with loss_progress() as update:
            rep = run(pruned, cfg, out, overwrite=overwrite, dtype=dtype, device=device, progress=update)
        if rep["resumed_from_step"]:
            console.print(f"resumed from step {rep['resumed_from_step']}")
        t = Table(title=f"recover: {rep['steps']} steps on {rep['data']} ({rep['train_windows']} windows of {cfg.seq_len}); "
                        f"loss {rep['first_loss']:.3f} -> {rep['last_loss']:.3f}")
        for col in ("held-out", "perplexity before", "after"):
            t.add_column(col, justify="right")
        for src, v in rep["perplexity_before"].items():
            t.add_row(src, f"{v:.3f}", f"{rep['perplexity_after'][src]:.3f}")
        out_console.print(t)
        console.print(f"wrote {out}")
