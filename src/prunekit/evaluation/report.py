"""The run report: ``OUT/report.md`` with two figures, rebuilt from ``plan.json`` (+ ``timing.json``).

- ``ppl_trajectory.png``: the calibration value (perplexity, or the plan's criterion) after each
  step, step 0 being the dense model, each point labelled with the unit removed at that step, and
  the fraction of parameters removed on the right axis.
- ``layer_map.png``: one column per decoder layer, rows ``attn`` and ``mlp``; a removed block is
  dark and carries the step that removed it; a width-pruned block is shaded by the fraction of
  its heads / channels kept.

Everything comes from the plan, never from the weights, so a report can be written for any plan
(e.g. each cell of ``prunekit compare``): :func:`render_report`. :func:`write_report` does it for a
prunekit output directory; ``prune`` calls it and ``prunekit report OUT`` rebuilds it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from prunekit.core.errors import PrunekitError
from prunekit.plan.schema import read_plan

REPORT = "report.md"
TRAJECTORY_PNG = "ppl_trajectory.png"
LAYER_MAP_PNG = "layer_map.png"
PPL_VALUED = ("ppl", "ppl_rise_per_param", "ppl_rise_per_mac")  # criteria whose step values are perplexities


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _criterion(plan: dict) -> str:
    crit = (plan.get("options") or {}).get("criterion", "ppl")
    return "calibration perplexity" if crit in PPL_VALUED else f"calibration {crit}"


def trajectory(plan: dict) -> list[tuple[int, str, float | None, float]]:
    """(step, unit, value, fraction of parameters removed) for the dense model (step 0) and each step."""
    rows = [(0, "(dense)", plan.get("dense_value"), 0.0)]
    for i, s in enumerate(plan.get("removed", [])):
        rows.append((i + 1, str(s.get("unit", s.get("blocks"))), s.get("value"), float(s.get("ratio_removed", 0.0))))
    return rows


def plot_trajectory(plan: dict, path: Path) -> bool:
    """Write the trajectory figure; False (nothing written) when the plan has no valued steps."""
    rows = [r for r in trajectory(plan) if r[2] is not None and math.isfinite(r[2])]
    if len(rows) < 2:
        return False
    plt = _pyplot()
    steps, units, values, ratios = zip(*rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.42 * len(rows) + 2.5), 4.2))
    ax.plot(steps, values, marker="o", color="#1f5fa8", label=_criterion(plan))
    if max(values) / max(min(values), 1e-12) > 5:
        ax.set_yscale("log")
    for s, u, v in zip(steps, units, values):
        ax.annotate(u, (s, v), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7, rotation=60)
    ax.set_xlabel("step (0 = dense model)")
    ax.set_ylabel(_criterion(plan))
    ax.set_xticks(list(steps))
    ax.grid(alpha=0.3)
    ax.margins(y=0.25)
    ax2 = ax.twinx()
    ax2.plot(steps, [100 * r for r in ratios], ls="--", marker="s", ms=3, color="#c0504d", alpha=0.7, label="parameters removed")
    ax2.set_ylabel("parameters removed (%)", color="#c0504d")
    ax2.set_ylim(0, max(5.0, 100 * max(ratios) * 1.15))
    ax.set_title(f"{plan.get('method', '?')}: {_criterion(plan)} after each step", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def block_map(plan: dict) -> tuple[int, dict[tuple[str, int], dict]]:
    """(number of layers, {(kind, layer): {"removed_at": step | None, "kept": fraction}}) from the plan."""
    cfg = plan["model"]["config"]
    n_layers = int(cfg["num_hidden_layers"])
    cells = {(kind, i): {"removed_at": None, "kept": 1.0} for i in range(n_layers) for kind in ("attn", "mlp")}
    for step, s in enumerate(plan.get("removed", [])):
        for b in s["blocks"]:
            kind, layer = ("attn" if b % 2 == 0 else "mlp"), b // 2
            if (kind, layer) in cells:
                cells[(kind, layer)]["removed_at"] = step + 1
    width = plan.get("width") or {}
    for e in width.get("layers", []) or []:
        layer = e["layer"]
        if "num_heads" in e:
            cells[("attn", layer)]["kept"] = e["num_heads"] / cfg["num_attention_heads"]
        if "intermediate_size" in e:
            cells[("mlp", layer)]["kept"] = e["intermediate_size"] / cfg["intermediate_size"]
    return n_layers, cells


def plot_layer_map(plan: dict, path: Path) -> None:
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    n_layers, cells = block_map(plan)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * n_layers + 1.6), 2.6))
    cmap = plt.get_cmap("Blues")
    for row, kind in enumerate(("attn", "mlp")):
        for i in range(n_layers):
            c = cells[(kind, i)]
            if c["removed_at"] is not None:
                face, text, color = "#7a1f1f", str(c["removed_at"]), "white"
            elif c["kept"] < 1.0:
                face, text, color = cmap(0.25 + 0.6 * c["kept"]), f"{c['kept']:.0%}".replace("%", ""), "black"
            else:
                face, text, color = "#e4e9f0", "", "black"
            ax.add_patch(Rectangle((i, 1 - row), 0.92, 0.86, facecolor=face, edgecolor="white"))
            if text:
                ax.text(i + 0.46, 1 - row + 0.43, text, ha="center", va="center", fontsize=6.5, color=color)
    ax.set_xlim(-0.1, n_layers)
    ax.set_ylim(-0.1, 2)
    ax.set_yticks([1.43, 0.43], ["attn", "mlp"])
    step = 1 if n_layers <= 32 else 2
    ax.set_xticks([i + 0.46 for i in range(0, n_layers, step)], [str(i) for i in range(0, n_layers, step)], fontsize=7)
    ax.set_xlabel("layer")
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.tick_params(length=0)
    removed = sum(1 for c in cells.values() if c["removed_at"] is not None)
    note = f"{removed} blocks removed (dark: the step that removed them)"
    if any(c["kept"] < 1.0 for c in cells.values()):
        note += "\nshaded: % of the heads / channels kept"
    ax.set_title(f"{plan.get('method', '?')}: {note}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(plan: dict, timing: dict | None, figures: dict[str, bool], out_name: str = "OUT",
             next_cmds: list[str] | None = None) -> str:
    """The report text (links the figures by relative path); ``next_cmds`` replaces the suggested commands."""
    model, cal = plan["model"], plan.get("calibration") or {}
    cfg = model["config"]
    lines = [f"# prunekit run report: {plan['method']} on {model.get('spec', model['model_type'])}", ""]
    lines += ["| | |", "|---|---|"]
    lines.append(f"| model | {model.get('spec')} ({model['model_type']}, {cfg.get('num_hidden_layers')} layers,"
                 f" {plan['params_before']:,} parameters) |")
    opts = ", ".join(f"{k}={v}" for k, v in sorted((plan.get("options") or {}).items()) if v is not None)
    lines.append(f"| method | {plan['method']} ({opts}) |")
    if cal:
        lines.append(f"| calibration | {cal.get('source')}: {cal.get('windows', cal.get('n_windows', '?'))} windows x {cal.get('seq_len')}"
                     f" tokens, text sha256 {str(cal.get('text_sha256', ''))[:12]} |")
    dec = plan.get("decoder_ratio_removed")
    lines.append(f"| removed | {plan['ratio_removed']:.2%} of the parameters ({plan['params_before']:,} -> {plan['params_after']:,})"
                 + ("" if dec is None else f"; {dec:.2%} of the decoder layers' ({plan['decoder_params_before']:,})") + " |")
    traj = trajectory(plan)
    if plan.get("dense_value") is not None:
        final = traj[-1][2] if len(traj) > 1 else None
        lines.append(f"| {_criterion(plan)} | dense {_fmt(plan.get('dense_value'))} -> pruned {_fmt(final)} |")
    if plan.get("patch"):
        p = plan["patch"]
        runs = ", ".join(f"blocks {r['blocks'][0]}-{r['blocks'][-1]} into {r['module']}" for r in p["runs"]) or "none"
        lines.append(f"| linear patch | ridge {p['ridge']:g}, {p['tokens']:,} tokens; {runs}"
                     + (f"; {len(p['skipped'])} run(s) at block 0 left unpatched" if p["skipped"] else "") + " |")
    if timing:
        t = f"{timing.get('search_seconds', 0):.1f} s"
        if timing.get("counted_ratio"):
            t += f"; counted work {timing['counted_ratio']:.2f}x less than a naive search"
        lines.append(f"| search time | {t} |")
    lines.append("")
    if len(traj) > 1:
        lines += [f"## {_criterion(plan).capitalize()} per step", ""]
        if figures.get(TRAJECTORY_PNG):
            lines += [f"![{_criterion(plan)} per step]({TRAJECTORY_PNG})", ""]
        lines += [f"| step | unit removed | {_criterion(plan)} | parameters removed |", "|---:|---|---:|---:|"]
        for step, unit, value, ratio in traj:
            lines.append(f"| {step} | {unit} | {_fmt(value)} | {ratio:.2%} |")
        lines.append("")
    lines += ["## Layer map", "", f"![layer map]({LAYER_MAP_PNG})", ""]
    width = plan.get("width") or {}
    if width.get("layers"):
        lines += ["## Width", "", "| layer | query heads | KV heads | MLP channels |", "|---:|---:|---:|---:|"]
        for e in width["layers"]:
            lines.append(f"| {e['layer']} | {e.get('num_heads', cfg['num_attention_heads'])}/{cfg['num_attention_heads']} | "
                         f"{e.get('num_kv_heads', cfg.get('num_key_value_heads'))}/{cfg.get('num_key_value_heads')} | "
                         f"{e.get('intermediate_size', cfg['intermediate_size'])}/{cfg['intermediate_size']} |")
        lines.append("")
    if width.get("hidden") is not None:
        lines += [f"Hidden size: {cfg['hidden_size']} -> {width.get('hidden_size')}.", ""]
    cmds = next_cmds or [f"prunekit eval {out_name} --data wiki-test,news        # held-out perplexity",
                         f"prunekit bench {out_name}                             # measured speed vs the dense model",
                         f"prunekit export {out_name} --format hf --to {out_name}-hf"]
    lines += ["## Next", "", "```", *cmds, "```", ""]
    return "\n".join(lines)


def render_report(plan: dict, out_dir: str | Path, timing: dict | None = None, name: str | None = None,
                  next_cmds: list[str] | None = None) -> Path:
    """Write report.md and its figures for ``plan`` into ``out_dir``; return the report's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {TRAJECTORY_PNG: plot_trajectory(plan, out_dir / TRAJECTORY_PNG)}
    plot_layer_map(plan, out_dir / LAYER_MAP_PNG)
    figures[LAYER_MAP_PNG] = True
    text = markdown(plan, timing, figures, name or out_dir.name, next_cmds)
    tmp = out_dir / f".{REPORT}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out_dir / REPORT)
    return out_dir / REPORT


def write_report(out_dir: str | Path) -> Path:
    """(Re)build ``out_dir/report.md`` and its figures from ``out_dir/plan.json`` and ``timing.json``."""
    out_dir = Path(out_dir)
    if not (out_dir / "plan.json").is_file():
        raise PrunekitError(f"'{out_dir}' has no plan.json.", "Give a directory written by prunekit prune.")
    plan = read_plan(out_dir / "plan.json")
    timing = None
    if (out_dir / "timing.json").is_file():
        try:
            timing = json.loads((out_dir / "timing.json").read_text())
        except json.JSONDecodeError:
            timing = None
    return render_report(plan, out_dir, timing, name=str(out_dir))
