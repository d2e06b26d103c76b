"""The outputs of ``prunekit compare``: ``results.csv``, ``results.md`` and two figures.

- ``ppl_vs_ratio.png``: held-out perplexity (log scale) against the fraction of parameters
  actually removed, one panel per evaluation source, one line per method, the dense model as a
  dotted line.
- ``layer_map.png``: which blocks each method removed, one panel per ratio: a row per method and
  block kind (attention / MLP), a column per layer, a filled cell where the block was removed (or,
  for a width method, narrowed: some of its heads / MLP channels removed).

In ``results.md`` each method's name links to its cell's run report (``reports/<cell>/report.md``).

An unreachable cell (``"unreachable": reason``, no plan) reads "unreachable" in both tables, with
its reason in a list under them; ``ppl_vs_ratio.png`` marks it with an x in the method's colour at
its target ratio on the top edge of each panel, labelled "unreachable", and a legend entry per method
naming its unreachable ratios; ``layer_map.png`` shades its rows
and writes "unreachable" across them.

With ``--ratio-of decoder`` (``about['ratio_of']``) the ratios are fractions of the decoder layers' parameters:
``results.md`` says so and gives each cell's removed fraction of them beside the fraction of all parameters, and
``ppl_vs_ratio.png`` plots against the decoder's fraction (the x of the unreachable marks is their target ratio).

Rows are the cells written by :func:`prunekit.pipeline.compare.compare` (``ppl`` per source,
``ratio_removed``, ``blocks``, ``search_seconds``...).
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from pathlib import Path

from prunekit.evaluation.intervals import versus_best
from prunekit.models.contract import ATTN, Block


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def row_label(row: dict) -> str:
    label = row["method"] if row["search"] in ("", "greedy") else f"{row['method']} ({row['search']})"
    return label + (f" + {row['patch']['kind']} patch" if row.get("patch") else "")


def removed_text(row: dict) -> str:
    """``attn / mlp`` blocks removed, or, for a width cell, the heads and MLP channels it removed."""
    if row.get("unreachable"):
        return "unreachable"
    if row.get("width_removed"):
        w = row["width_removed"]
        return f"width: {w['heads']} heads, {w['mlp_channels']:,} MLP channels"
    kinds = [Block(b).kind for b in row["blocks"]]
    return f"{kinds.count(ATTN)} / {len(kinds) - kinds.count(ATTN)}"


def decoder_ratios(about: dict) -> bool:
    """Whether the compare's ratios are fractions of the decoder layers' parameters (``--ratio-of decoder``)."""
    return about.get("ratio_of") == "decoder"


def markdown(rows: list[dict], sources: list[str], about: dict) -> str:
    """The results table (grouped by ratio, lowest perplexity per source in bold) and a pivot per source."""
    dense, cells = rows[0], rows[1:]
    ratios = sorted({r["target_ratio"] for r in cells})
    lines = [
        f"# prunekit compare: {about['model']}",
        "",
        f"Model: {about['model']}, {about['parameters']:,} parameters. Calibration: {about['calibration']}. "
        f"Held-out evaluation: {about['evaluation']}.",
        *([f"Ratios are fractions of the decoder layers' {about['decoder_parameters']:,} parameters (`--ratio-of decoder`: the "
           "embedding, final norm and LM head left out); `params removed` gives the fraction of all parameters, then of the "
           "decoder layers'."] if decoder_ratios(about) else []),
        "Perplexity: exp of the token-weighted mean next-token NLL (lower is better). `search s`: wall time of the "
        "search until that ratio's answer was known (one search per method serves every ratio). `work`: the search's "
        "counted multiply-accumulates in units of one dense forward over the calibration windows (independent of machine load). "
        "`calib ppl`: perplexity on the calibration windows themselves (in-sample, what the perplexity-guided searches minimise). "
        "A method's name links to that cell's run report (its steps and layer map).",
        "",
        "| ratio | method | params removed | attn / mlp blocks removed | "
        + " | ".join(f"{s} ppl" for s in sources) + " | calib ppl | search s | work |",
        "|---|---|---:|---:|" + "---:|" * len(sources) + "---:|---:|---:|",
        "| 0 | dense | 0 (0.0%) | 0 / 0 | " + " | ".join(f"{dense['ppl'][s]:.3f}" for s in sources)
        + f" | {dense['calib_ppl']:.3f} | - | - |",
    ]
    for ratio in ratios:
        group = [r for r in cells if r["target_ratio"] == ratio]
        reached = [r for r in group if not r.get("unreachable")]
        best = {s: min(r["ppl"][s] for r in reached) for s in sources} if reached else {}
        for r in group:
            if r.get("unreachable"):
                lines.append(f"| {ratio:g} | {row_label(r)} | unreachable | - | " + " | ".join("-" for _ in sources)
                             + " | - | - | - |")
                continue
            ppl = [f"**{r['ppl'][s]:.3f}**" if r["ppl"][s] == best[s] else f"{r['ppl'][s]:.3f}" for s in sources]
            method = f"[{row_label(r)}]({r['report']})" if r.get("report") else row_label(r)
            work = "-" if r.get("search_work") is None else f"{r['search_work']:.1f}"
            lines.append(
                f"| {ratio:g} | {method} | {r['params_removed']:,} ({r['ratio_removed']:.1%}"
                + (f"; {r['decoder_ratio_removed']:.1%} of decoder" if decoder_ratios(about) else "") + f") | {removed_text(r)} | "
                + " | ".join(ppl) + f" | {r['calib_ppl']:.3f} | {r['search_seconds']:.1f} | {work} |"
            )
    lines += _intervals_table(rows, sources)
    blocked = [r for r in cells if r.get("unreachable")]
    if blocked:
        lines += ["", "**Unreachable cells** (the method cannot remove that fraction of the parameters; no plan):", ""]
        lines += [f"- {row_label(r)} @ {r['target_ratio']:g}: {r['unreachable']}" for r in blocked]
    for s in sources:
        lines += ["", f"**{s} perplexity by method and ratio** (dense: {dense['ppl'][s]:.3f})", "",
                  "| method | " + " | ".join(f"{r:g}" for r in ratios) + " |", "|---|" + "---:|" * len(ratios)]
        for label in dict.fromkeys(row_label(r) for r in cells):
            vals = {r["target_ratio"]: "unreachable" if r.get("unreachable") else r["ppl"][s]
                    for r in cells if row_label(r) == label}
            lines.append(f"| {label} | " + " | ".join(
                ("-" if r not in vals else vals[r] if isinstance(vals[r], str) else f"{vals[r]:.3f}") for r in ratios) + " |")
    return "\n".join(lines) + "\n"


def _intervals_table(rows: list[dict], sources: list[str]) -> list[str]:
    """Markdown lines: each measured cell's perplexity over the best other cell's at its ratio, with the 95% paired
    bootstrap interval over the held-out windows (none when the cells carry no per-window NLLs)."""
    vs = versus_best(rows, sources)
    if not vs:
        return []
    n = {s: len(next(r["window_nll"][s] for r in rows if r.get("window_nll", {}).get(s))) for s in sources}
    lines = ["", "**Against the best other cell at the same ratio**: ppl / best other's ppl on the same windows, with a 95% "
             "paired-bootstrap interval over the windows (" + ", ".join(f"{s}: {n[s]}" for s in sources) + "). Below 1: lower "
             "than every other cell; an interval that contains 1 is a tie on these windows.", "",
             "| ratio | method | " + " | ".join(f"{s}: ratio (95% CI) vs" for s in sources) + " |",
             "|---|---|" + "---|" * len(sources)]
    for i, r in enumerate(rows):
        if i not in vs:
            continue
        cells = []
        for s in sources:
            v = vs[i].get(s)
            cells.append("-" if v is None else
                         f"{v['ratio']:.3f} ({v['low']:.3f}-{v['high']:.3f}) vs {row_label(rows[v['other']])}")
        lines.append(f"| {r['target_ratio']:g} | {row_label(r)} | " + " | ".join(cells) + " |")
    return lines


def _styles(labels: list[str]) -> dict[str, dict]:
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    markers = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h"]
    dashes = ["-", "--", "-.", ":"]
    return {lab: {"color": colors[i % 10], "marker": markers[i % len(markers)], "linestyle": dashes[(i // 10) % 4]}
            for i, lab in enumerate(labels)}


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Round values between ``lo`` and ``hi`` for a log axis (1, 1.5, 2, 3, 5, 7 x 10^k, finer when that gives < 3), at most 8."""
    for mults in ((1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9), tuple(1 + i / 10 for i in range(90))):
        ticks = [m * 10**k for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1) for m in mults]
        ticks = [float(f"{t:.3g}") for t in ticks if lo <= t <= hi]
        if len(ticks) >= 3:
            break
    while len(ticks) > 8:
        ticks = ticks[::2]
    return ticks


def plot_ppl(rows: list[dict], sources: list[str], path: Path, about: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter
    from matplotlib.transforms import offset_copy

    dense, cells = rows[0], rows[1:]
    labels = list(dict.fromkeys(row_label(r) for r in cells))
    style = _styles(labels)
    blocked = [r for r in cells if r.get("unreachable")]
    cells = [r for r in cells if not r.get("unreachable")]
    fig, axes = plt.subplots(1, len(sources), figsize=(5.4 * len(sources) + 3.0, 4.8), squeeze=False, layout="constrained")
    removed = "decoder_ratio_removed" if decoder_ratios(about) else "ratio_removed"
    for ax, s in zip(axes[0], sources):
        for lab in labels:
            pts = sorted((r[removed] * 100, r["ppl"][s]) for r in cells if row_label(r) == lab)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=lab, markersize=6, linewidth=1.6, alpha=0.9, **style[lab])
        for ratio in sorted({r["target_ratio"] for r in blocked}):  # no point to plot: x marks on the top edge
            here = [r for r in blocked if r["target_ratio"] == ratio]
            for k, r in enumerate(here):  # side by side, in each method's colour, centred on the target ratio
                shift = offset_copy(ax.get_xaxis_transform(), fig=fig, x=7 * (k - (len(here) - 1) / 2), units="points")
                ax.plot([ratio * 100], [0.96], transform=shift, marker="x", markersize=7, markeredgewidth=2,
                        linestyle="none", color=style[row_label(r)]["color"], clip_on=False)
            ax.annotate("unreachable", (ratio * 100, 0.96), xycoords=ax.get_xaxis_transform(), xytext=(0, -11),
                        textcoords="offset points", fontsize=7, ha="center", va="top")
        if blocked:  # the marks are not data points: widen the x range to hold them
            targets = [r["target_ratio"] * 100 for r in blocked]
            lo, hi = ax.get_xlim()
            ax.set_xlim(min(lo, min(targets) - 3), max(hi, max(targets) + 3))
        ax.axhline(dense["ppl"][s], color="black", linestyle=":", linewidth=1.2, label="dense model")
        ax.annotate(f"dense {dense['ppl'][s]:.2f}", (0.01, dense["ppl"][s]), xycoords=("axes fraction", "data"),
                    xytext=(0, 3), textcoords="offset points", fontsize=8)
        ax.set_yscale("log")
        vals = [r["ppl"][s] for r in cells] + [dense["ppl"][s]]
        lo, hi = min(vals) / 1.05, max(vals) * 1.05
        ax.set_ylim(lo, hi)
        ax.set_yticks(_log_ticks(lo, hi))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("parameters removed (% of the decoder layers')" if decoder_ratios(about) else
                      "parameters removed (% of the model's total)")
        ax.set_ylabel("held-out perplexity (log scale; lower is better)")
        ax.set_title(f"evaluation: {s}", fontsize=11)
        ax.grid(True, which="major", alpha=0.35)
    handles, labs = axes[0][0].get_legend_handles_labels()
    for lab in dict.fromkeys(row_label(r) for r in blocked):  # x: no plan reaches that target (reasons in results.md)
        handles.append(Line2D([], [], color=style[lab]["color"], marker="x", markeredgewidth=2, linestyle="none"))
        labs.append(f"{lab}: unreachable at "
                    + ", ".join(f"{r['target_ratio']:g}" for r in blocked if row_label(r) == lab))
    fig.legend(handles, labs, loc="outside right center", fontsize=9, frameon=False, title="method (search)")
    fig.suptitle(f"{about['model']}: held-out perplexity vs parameters removed (calibration: {about['calibration']})", fontsize=11)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_layer_map(rows: list[dict], num_layers: int, path: Path, about: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    cells = rows[1:]
    ratios = sorted({r["target_ratio"] for r in cells})
    labels = list(dict.fromkeys(row_label(r) for r in cells))
    n_rows = 2 * len(labels)
    fig, axes = plt.subplots(len(ratios), 1, squeeze=False, layout="constrained",
                             figsize=(max(8.0, 0.26 * num_layers + 5.0), (0.19 * n_rows + 0.9) * len(ratios) + 0.7))
    colors = {"kept": "#eeeeee", ATTN: "#1f77b4", "mlp": "#ff7f0e", "narrowed": "#b39ddb", "unreachable": "#f2c4c4"}
    cmap = ListedColormap([colors["kept"], colors[ATTN], colors["mlp"], colors["narrowed"], colors["unreachable"]])
    narrowing = any(r.get("width_removed") for r in cells)
    blocked = any(r.get("unreachable") for r in cells)
    for ax, ratio in zip(axes[:, 0], ratios):
        grid = np.zeros((n_rows, num_layers))
        notes = []
        for i, lab in enumerate(labels):
            row = next((r for r in cells if row_label(r) == lab and r["target_ratio"] == ratio), None)
            if row is not None and row.get("unreachable"):
                grid[2 * i: 2 * i + 2, :] = 4
                notes.append(2 * i + 0.5)
                continue
            for b in row["blocks"] if row else []:
                blk = Block(b)
                grid[2 * i + (0 if blk.kind == ATTN else 1), blk.layer] = 1 if blk.kind == ATTN else 2
            width = (row or {}).get("width_removed") or {}
            for k, key in ((0, "attn_layers"), (1, "mlp_layers")):
                for layer in width.get(key, []):
                    grid[2 * i + k, layer] = 3
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=4, aspect="auto", interpolation="nearest")
        for y in notes:
            ax.text((num_layers - 1) / 2, y, "unreachable: no plan removes this fraction (see results.md)",
                    ha="center", va="center", fontsize=7.5, color="#7f1d1d")
        ax.set_yticks(range(n_rows))
        ax.set_yticklabels([f"{lab} · {k}" for lab in labels for k in ("attn", "mlp")], fontsize=7.5)
        step = 1 if num_layers <= 16 else 2
        ax.set_xticks(range(0, num_layers, step))
        ax.set_xticklabels([str(i) for i in range(0, num_layers, step)], fontsize=7.5)
        ax.set_xticks(np.arange(-0.5, num_layers, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, n_rows, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.6)
        ax.tick_params(which="minor", length=0)
        for i in range(1, len(labels)):
            ax.axhline(2 * i - 0.5, color="#444444", linewidth=1.0)
        ax.set_title(f"budget: at least {ratio:.0%} of parameters removed", fontsize=10)
        ax.set_xlabel("decoder layer")
    fig.legend(handles=[Patch(color=colors[ATTN], label="attention block removed"),
                        Patch(color=colors["mlp"], label="MLP block removed"), Patch(color=colors["kept"], label="kept")]
               + ([Patch(color=colors["narrowed"], label="narrowed (some heads / MLP channels removed)")] if narrowing else [])
               + ([Patch(color=colors["unreachable"], label="unreachable budget (no plan)")] if blocked else []),
               loc="outside lower center", fontsize=8.5, ncol=3 if narrowing and blocked else 4, frameon=False)
    fig.suptitle(f"{about['model']}: blocks removed by each method", fontsize=11)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_outputs(out: Path, rows: list[dict], sources: list[str], num_layers: int, about: dict) -> None:
    """results.csv, results.md, ppl_vs_ratio.png and layer_map.png in ``out`` (each written atomically)."""

    _atomic_text(out / "results.csv", rows_csv(rows, sources))
    _atomic_text(out / "results.md", markdown(rows, sources, about))
    for name, draw in (("ppl_vs_ratio.png", lambda p: plot_ppl(rows, sources, p, about)),
                       ("layer_map.png", lambda p: plot_layer_map(rows, num_layers, p, about))):
        tmp = out / f".{name}.tmp.png"
        draw(tmp)
        os.replace(tmp, out / name)


def _patch(row: dict) -> str:
    return row["patch"]["kind"] if row.get("patch") else ""


def rows_csv(rows: list[dict], sources: list[str]) -> str:
    """CSV text: one line per row (``patch``: the linear patch's kind on a patched cell, else empty); perplexities as
    ``ppl_<source>``; blocks as ``attn 3;mlp 7``; width
    cells (llm-pruner) count their removed heads and MLP channels instead; ``report``: the cell's run report;
    ``unreachable``: why the method cannot reach that ratio (every measured field of that line is empty);
    ``vs_best_<source>``: the cell's perplexity over the best other cell's at its ratio (``_other``), with the 95%
    paired-bootstrap interval (``_low``, ``_high``; :mod:`prunekit.evaluation.intervals`), empty where not measured."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "search", "patch", "target_ratio", "ratio_removed", "decoder_ratio_removed", "params_removed", "params_after",
                "attn_removed", "mlp_removed", "heads_removed", "mlp_channels_removed", *[f"ppl_{s}" for s in sources],
                "calib_ppl", "search_seconds", "search_work", "removed", "report", "unreachable",
                *[f"vs_best_{s}{part}" for s in sources for part in ("", "_low", "_high", "_other")]])
    vs = versus_best(rows, sources)
    for i, r in enumerate(rows):
        versus = []
        for s in sources:
            v = vs.get(i, {}).get(s)
            versus += ["", "", "", ""] if v is None else [f"{v['ratio']:.4f}", f"{v['low']:.4f}", f"{v['high']:.4f}",
                                                          row_label(rows[v["other"]])]
        if r.get("unreachable"):
            w.writerow([r["method"], r["search"], _patch(r), f"{r['target_ratio']:g}", *[""] * (13 + len(sources)), r["unreachable"],
                        *versus])
            continue
        kinds = [Block(b).kind for b in r["blocks"]]
        width = r.get("width_removed") or {}
        work = r.get("search_work")
        dec = r.get("decoder_ratio_removed")
        w.writerow([r["method"], r["search"], _patch(r), f"{r['target_ratio']:g}", f"{r['ratio_removed']:.6f}",
                    "" if dec is None else f"{dec:.6f}", r["params_removed"],
                    r["params_after"], kinds.count(ATTN), len(kinds) - kinds.count(ATTN), width.get("heads", 0),
                    width.get("mlp_channels", 0), *[f"{r['ppl'][s]:.4f}" for s in sources], f"{r['calib_ppl']:.4f}",
                    f"{r['search_seconds']:.2f}", "" if work is None else f"{work:.2f}", ";".join(r["units"]),
                    r.get("report", ""), "", *versus])
    return buf.getvalue()
