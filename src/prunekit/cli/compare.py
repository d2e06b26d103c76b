"""The ``compare`` command: every method at every ratio, one table and two figures
(:func:`prunekit.pipeline.compare.compare`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from prunekit.cli.console import console, out_console, progress_bar
from prunekit.cli.prune import PATCH_HELP, RIDGE_HELP, TOKENS_HELP, patch_config
from prunekit.data.calibration import CalibConfig
from prunekit.engine import ranks
from prunekit.pipeline.compare import compare as run_compare


def compare(
    model: str = typer.Argument(..., help="Model spec: smollm2-135m, a checkpoint dir, a .gguf file or a hub id."),
    *,
    methods: str = typer.Option(
        "blockpruner,sleb,shortgpt,layer-ppl,taylor,relative-magnitude,blockpruner-oneshot,finercut", "--methods",
        help="Comma-separated methods; METHOD/SEARCH runs a search variant, e.g. blockpruner/beam:3, blockpruner/greedy+swap; "
        "llm-pruner or llm-pruner/IMPORTANCE adds width pruning (e.g. llm-pruner/l2).",
    ),
    ratios: str = typer.Option("0.1,0.2,0.3", "--ratios", help="Comma-separated fractions of the parameters to remove (see --ratio-of)."),
    ratio_of: str = typer.Option("total", "--ratio-of",
                                 help="What --ratios are fractions of: total (every parameter) or decoder (the decoder layers' only)."),
    out: str = typer.Option(..., "--out", help="Output directory (results.csv, results.md, PNG plots, plans, cells)."),
    calib: str = typer.Option("alpaca", "--calib",
                              help="Calibration source: wiki, news, alpaca, wikitext2, c4, ptb or a .txt/.jsonl file."),
    seq_len: int = typer.Option(2048, "--seq-len", help="Tokens per calibration window."),
    windows: Optional[int] = typer.Option(None, "--windows", help="Number of calibration windows (default: all)."),
    sample: str = typer.Option("first", "--sample", help="first or random calibration windows."),
    seed: int = typer.Option(0, "--seed", help="Seed for --sample random."),
    batch_size: int = typer.Option(2, "--batch-size", help="Windows per forward batch in the searches."),
    eval_: str = typer.Option("wiki-test,news", "--eval", help="Comma-separated held-out sources: wiki-test, news, a file..."),
    eval_windows: Optional[int] = typer.Option(8, "--eval-windows", help="Evaluation windows per source."),
    eval_seq_len: int = typer.Option(256, "--eval-seq-len", help="Tokens per evaluation window."),
    blocks_kind: str = typer.Option("mix", "--blocks-kind", help="Blocks the block methods search: mix, attn or mlp."),
    cache_gb: Optional[float] = typer.Option(None, "--cache-gb", help="Memory budget of the searches' cached states."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N... (default: cuda if available)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard the finished cells in --out and start again."),
    patch: str = typer.Option("none", "--patch", help=PATCH_HELP + " linear: a patched cell beside each depth cell."),
    patch_ridge: float = typer.Option(1e-4, "--patch-ridge", help=RIDGE_HELP),
    patch_tokens: Optional[int] = typer.Option(None, "--patch-tokens", help=TOKENS_HELP),
) -> None:
    """Run several pruning methods at several ratios and compare held-out perplexity, size and search time.

    One search per method serves every ratio; finished cells are kept, so a re-run continues where it stopped.
    """

    patch_cfg = patch_config(patch, patch_ridge, patch_tokens)
    cal = CalibConfig(source=calib, seq_len=seq_len, windows=windows, sample=sample, seed=seed, batch_size=batch_size)
    sources = [s.strip() for s in eval_.split(",") if s.strip()]
    with progress_bar() as update:
        run_compare(model, methods, ratios, cal, sources, out=out, eval_windows=eval_windows, eval_seq_len=eval_seq_len,
                    blocks_kind=blocks_kind, ratio_of=ratio_of, cache_gb=cache_gb, overwrite=overwrite, progress=update,
                    log=lambda msg: console.print(msg, highlight=False), dtype=dtype, device=device,
                    patch=patch_cfg)
    if ranks.requested_world() > 1 and not ranks.current().is_main:  # under torchrun, rank 0 writes and reports
        return

    out_console.print((Path(out) / "results.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(f"wrote {out}/results.csv, results.md, ppl_vs_ratio.png, layer_map.png, reports/")
