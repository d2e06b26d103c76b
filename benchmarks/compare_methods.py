"""Benchmark: every depth method at 10/20/30% of the parameters on the embedded SmolLM2-135M.

Runs ``prunekit compare`` (one search per method serves every ratio; finished cells are kept, so
an interrupted run continues where it stopped), then prints the table and, for the search
variants, their held-out perplexity and cost against greedy at each ratio. The figures go to
``--img-dir`` for BENCHMARKS.md.

    flock /tmp/prunekit-heavy.lock .venv/bin/python benchmarks/compare_methods.py

Defaults keep it CPU-sized: calibration 8 windows x 128 tokens of the embedded ``wiki`` split,
evaluation 8 x 256 tokens of ``wiki-test`` (held-out articles) and ``news``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = ("blockpruner,blockpruner/beam:2,blockpruner/greedy+swap,sleb,shortgpt,layer-ppl,taylor,"
                   "relative-magnitude,blockpruner-oneshot,finercut,llm-pruner")


def variant_summary(rows: list[dict], sources: list[str]) -> list[str]:
    """Lines comparing each blockpruner search variant with greedy at each ratio (held-out ppl, seconds, work)."""
    greedy = {r["target_ratio"]: r for r in rows if r["method"] == "blockpruner" and r["search"] == "greedy"}
    lines = []
    for r in rows:
        if r["method"] != "blockpruner" or r["search"] in ("", "greedy") or r["target_ratio"] not in greedy:
            continue
        g = greedy[r["target_ratio"]]
        ppl = ", ".join(f"{s} {g['ppl'][s]:.3f} -> {r['ppl'][s]:.3f}" for s in sources)
        same = " (same blocks)" if sorted(r["blocks"]) == sorted(g["blocks"]) else ""
        lines.append(f"{r['search']} @ {r['target_ratio']:g}: calib {g['calib_value']:.3f} -> {r['calib_value']:.3f}; "
                     f"{ppl}{same}; time {r['search_seconds'] / max(g['search_seconds'], 1e-9):.2f}x greedy, "
                     f"work {r['search_work'] / max(g['search_work'], 1e-9):.2f}x greedy")
    return lines


def recheck_variants(model: str, out: Path, rows: list[dict], sources: list[str], *, windows: int, seq_len: int) -> list[str]:
    """Re-evaluate greedy and the blockpruner search variants on ``windows`` held-out windows (their saved plans)."""
    from prunekit.models.contract import Block
    from prunekit.pipeline import prune as api
    from prunekit.pipeline.load import load_model
    from prunekit.plan.schema import read_plan

    loaded = load_model(model, device="cpu")
    lines = [f"held-out recheck on {windows} x {seq_len} tokens per source:"]
    for r in rows:
        if r["method"] != "blockpruner":
            continue
        plan = read_plan(out / r["plan"])
        with loaded.adapter.skipping([Block(b) for b in r["blocks"]]):  # the plan's model, as compare evaluates it
            res = api.evaluate(loaded, sources, seq_len=seq_len, windows=windows)
        assert res["parameters"] == plan["params_after"]
        lines.append(f"  {r['search']:12s} @ {r['target_ratio']:g}: "
                     + ", ".join(f"{s} {res['perplexity'][s]:.3f}" for s in sources))
    return lines


def progress_lines(every: float):
    """A progress callback that prints one line (elapsed seconds, what, done/total) at most every ``every`` s."""
    t0, last = time.perf_counter(), [0.0]

    def show(what: str, done: int, total: int) -> None:
        now = time.perf_counter() - t0
        if now - last[0] >= every or done == total:
            last[0] = now
            print(f"[{now:7.0f} s] {what} {done}/{total}", flush=True)
    return show


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--ratios", default="0.1,0.2,0.3")
    ap.add_argument("--calib", default="wiki")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--eval", default="wiki-test,news")
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--eval-seq-len", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "runs" / "compare_methods"))
    ap.add_argument("--img-dir", default=str(ROOT / "docs" / "img"), help="Where the PNGs are copied ('' to skip).")
    ap.add_argument("--recheck-windows", type=int, default=0,
                    help="Also re-evaluate blockpruner's greedy and search-variant plans on this many held-out windows.")
    args = ap.parse_args(argv)

    import torch

    from prunekit.data.calibration import CalibConfig
    from prunekit.pipeline.compare import compare

    torch.manual_seed(0)
    sources = [s for s in args.eval.split(",") if s]
    calib = CalibConfig(source=args.calib, seq_len=args.seq_len, windows=args.windows, batch_size=args.batch_size)
    t0 = time.perf_counter()
    rows = compare(args.model, args.methods, args.ratios, calib, sources, out=args.out, eval_windows=args.eval_windows,
                   eval_seq_len=args.eval_seq_len, device="cpu", log=lambda m: print(m, flush=True),
                   progress=progress_lines(60.0))
    out = Path(args.out)
    print((out / "results.md").read_text(encoding="utf-8"))
    for line in variant_summary(rows, sources):
        print(line)
    if args.recheck_windows:
        for line in recheck_variants(args.model, out, rows, sources, windows=args.recheck_windows, seq_len=args.eval_seq_len):
            print(line, flush=True)
    if args.img_dir:
        img = Path(args.img_dir)
        img.mkdir(parents=True, exist_ok=True)
        for name in ("ppl_vs_ratio.png", "layer_map.png"):
            shutil.copyfile(out / name, img / f"compare_{name}")
        print(f"figures copied to {img}/compare_ppl_vs_ratio.png, compare_layer_map.png")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; wall time of this run {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
