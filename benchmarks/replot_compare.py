"""Redraw ``docs/img/compare_ppl_vs_ratio.png`` from the committed compare CSVs, merged.

The compare table and budget-greedy's cells were searched in two runs of ``compare_methods.py`` on the
same footing (model, calibration windows, held-out windows; the dense row is the same), so their rows
go into one figure: the first CSV's dense row, then every method row of each CSV in order. Only the
perplexity figure is redrawn: the layer map needs LLM-Pruner's per-layer widths, which the CSV lacks.

    .venv/bin/python benchmarks/replot_compare.py benchmarks/results/compare_methods.csv \\
        benchmarks/results/compare_budget_greedy.csv --out docs/img/compare_ppl_vs_ratio.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from prunekit.evaluation.compare_report import plot_ppl

SOURCES = ("wiki-test", "news")
ABOUT = {"model": "smollm2-135m", "calibration": "wiki, 8 windows x 128 tokens"}


def read_rows(path: Path) -> list[dict]:
    """The CSV's rows as ``plot_ppl`` reads them: method, search, target and removed ratio, ppl per source."""
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append({"method": r["method"], "search": r["search"], "target_ratio": float(r["target_ratio"]),
                         "ratio_removed": float(r["ratio_removed"] or 0), "unreachable": r.get("unreachable") or "",
                         "ppl": {s: float(r[f"ppl_{s}"]) if r[f"ppl_{s}"] else float("nan") for s in SOURCES}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csvs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    tables = [read_rows(p) for p in args.csvs]
    dense = tables[0][0]
    for t in tables[1:]:
        if t[0]["ppl"] != dense["ppl"]:
            raise SystemExit(f"error: the dense rows differ ({t[0]['ppl']} vs {dense['ppl']}): not the same footing.")
    rows = [dense] + [r for t in tables for r in t[1:]]
    plot_ppl(rows, list(SOURCES), args.out, ABOUT)
    print(f"wrote {args.out} ({len(rows) - 1} cells)")


if __name__ == "__main__":
    main()
