"""The ``recover`` command: LoRA recovery of a pruned model (:mod:`prunekit.pipeline.recover`)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from prunekit.cli.console import console, loss_progress, out_console
from prunekit.pipeline.recover import RecoverConfig
from prunekit.pipeline.recover import recover as run


def recover(
    pruned: str = typer.Argument(..., help="A prunekit output directory (from prunekit prune)."),
    *,
    out: str = typer.Option(..., "--out", help="Directory for the recovered (merged) model."),
    data: str = typer.Option("auto", "--data", help="Training text: auto (alpaca-cleaned online, else the embedded wiki split), "
                             "alpaca-cleaned, wiki, news or a .txt/.jsonl file."),
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
    full: bool = typer.Option(False, "--full", help="Train every weight instead of LoRA adapters."),
    distill: bool = typer.Option(False, "--distill", help="Distil from the dense base model: KL to its next-token distribution."),
    distill_alpha: float = typer.Option(0.5, "--distill-alpha",
                                        help="With --distill: weight of the KL (1: KL only); the LM loss gets 1 - alpha."),
    distill_topk: int = typer.Option(0, "--distill-topk",
                                     help="With --distill: cache the teacher's top-K per window (0: full distributions on the fly)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="With --distill: the teacher (default: the plan's base model)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda if available)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out (and start over instead of resuming)."),
) -> None:
    """Recovery of a pruned model: LoRA (merged) or --full, on the LM loss or --distill from the dense base; writes a plain model."""
    cfg = RecoverConfig(data=data, epochs=epochs, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, lr=lr,
                        seq_len=seq_len, batch_size=batch_size, windows=windows, max_steps=max_steps, save_every=save_every,
                        eval_data=tuple(s for s in eval_data.split(",") if s), eval_windows=eval_windows,
                        eval_seq_len=eval_seq_len, seed=seed, rows=rows, full=full, distill=distill,
                        distill_alpha=distill_alpha, distill_topk=distill_topk, teacher=teacher)
    with loss_progress() as update:
        rep = run(pruned, cfg, out, overwrite=overwrite, dtype=dtype, device=device, progress=update)
    if rep["resumed_from_step"]:
        console.print(f"resumed from step {rep['resumed_from_step']}")
    t = Table(title=f"recover ({rep['mode']}, {rep['loss']} loss): {rep['steps']} steps on {rep['data']} "
                    f"({rep['train_windows']} windows of {cfg.seq_len}); loss {rep['first_loss']:.3f} -> {rep['last_loss']:.3f}")
    for col in ("held-out", "perplexity before", "after"):
        t.add_column(col, justify="right")
    for src, v in rep["perplexity_before"].items():
        t.add_row(src, f"{v:.3f}", f"{rep['perplexity_after'][src]:.3f}")
    out_console.print(t)
    console.print(f"wrote {out}")
