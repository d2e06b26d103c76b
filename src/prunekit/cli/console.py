"""What the commands show: consoles, progress bars, the tables they print, and one-line errors.

Library errors name options by their parameter name in backticks (`` `ratio` ``); :func:`render_error`
prints the flag of the command that ran in its place (``--ratio``).
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)
out_console = Console()


def render_error(message: str, command) -> str:
    """``message`` with each backticked option name replaced by ``command``'s flag for it (``--name`` otherwise).

    ``command``: the click command that ran (its ``params``), or None.
    """
    flags = {}
    for p in command.params if command is not None else []:
        longs = [o for o in p.opts if o.startswith("--")]
        if longs and p.name:
            flags[p.name.rstrip("_")] = longs[0]
    return re.sub(r"`(\w+)`", lambda m: flags.get(m.group(1), "--" + m.group(1).replace("_", "-")), message)


def _info(info: dict | None) -> str:
    """A progress callback's optional ``info`` (e.g. policy-gradient's loss, baseline, kept fraction) as text."""
    return "".join(f" · {k} {v:.4f}" if isinstance(v, float) else f" · {k} {v}" for k, v in (info or {}).items())


@contextmanager
def progress_bar():
    """A rich progress bar; yields a ``progress(stage, done, total, info=None)`` callback (``info``: values shown beside the stage).

    When stderr is not a terminal (a log, CI), a live display would hold every line back until the
    end, so plain lines are printed instead: one per finished stage.
    """
    if not console.is_terminal:
        def plain(stage: str, done: int, total: int, info: dict | None = None) -> None:
            if done == total:
                console.print(f"{stage}: {done}/{total} done{_info(info)}", highlight=False)

        yield plain
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
    )
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int, info: dict | None = None) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total, **({"description": stage + _info(info)} if info else {}))

    with bar:
        yield update


@contextmanager
def loss_progress():
    """A rich progress bar whose rows show the latest training loss; yields ``progress(stage, done, total, info)``."""
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


def print_step(rec: dict) -> None:
    console.print(f"step {rec['step'] + 1}: removed {rec['unit']}, calibration value {rec['value']:.4f}", highlight=False)


def decoder_note(plan: dict) -> str:
    """``" (54.3% of the decoder layers')"``: the plan's removed fraction of the decoder layers' parameters, when it records it."""
    dec = plan.get("decoder_ratio_removed")
    return "" if dec is None else f" ({dec:.1%} of the decoder layers')"


def print_plan(plan: dict, timing: dict | None = None) -> None:
    t = Table(title=f"{plan['method']}: removed {len(plan['removed'])} units, {plan['ratio_removed']:.1%} of parameters"
              + decoder_note(plan))
    criterion = plan.get("options", {}).get("criterion", "ppl")
    for col in ("step", "unit", "calib ppl" if criterion.startswith("ppl") else criterion, "params removed"):
        t.add_column(col, justify="right")
    t.add_row("-", "(dense)", f"{plan['dense_value']:.3f}" if criterion.startswith("ppl") else "-", "0")
    for s in plan["removed"]:
        t.add_row(str(s["step"] + 1), s["unit"], f"{s['value']:.3f}", f"{s['ratio_removed']:.1%}")
    out_console.print(t)
    if timing:
        work = f"; counted work vs naive search: {timing['counted_ratio']:.2f}x less" if timing.get("naive_macs") else ""
        out_console.print(f"search: {timing['search_seconds']:.1f} s{work}")
        if timing.get("ranks", 1) > 1:
            macs = [w["total_macs"] for w in timing["rank_work"]]
            out_console.print(f"ranks: {timing['ranks']}; counted work per rank {min(macs) / 1e9:.1f}-{max(macs) / 1e9:.1f} GMAC"
                              f" (balance {min(macs) / max(max(macs), 1):.2f})")
        print_weights(timing)
    if plan.get("patch"):
        p = plan["patch"]
        fits = "; ".join(f"{r['module']} (runs {r['blocks'][0]}-{r['blocks'][-1]}): fit MSE {r['fit']['mse_identity']:.4g} -> "
                         f"{r['fit']['mse']:.4g}" for r in p["runs"])
        secs = f" in {timing['patch']['seconds']:.1f} s" if timing and timing.get("patch") else ""
        out_console.print(f"linear patch ({p['tokens']} tokens, ridge {p['ridge']:g}){secs}: {fits or 'nothing to patch'}"
                          + "".join(f"; blocks {r['blocks'][0]}-{r['blocks'][-1]} skipped ({r['reason']})" for r in p["skipped"]))


def print_weights(timing: dict) -> None:
    """One line on the weights brought in under a memory cap (``timing['weights']``), when there was one."""
    if timing.get("weights"):
        w = timing["weights"]
        out_console.print(f"weights: {w['moved_bytes'] / 2**30:.2f} GiB brought in; peak resident {w['peak_resident_bytes'] / 2**30:.3f}"
                          f" GiB of the {w['cap_bytes'] / 2**30:.3f} GiB cap"
                          f" (model {w['model_bytes'] / 2**30:.3f} GiB in {w['compute_dtype']})")


def print_width_plan(plan: dict, timing: dict | None = None) -> None:
    w = plan["width"]
    frac = w.get("per_layer_fraction")
    how = plan["options"].get("importance") or f"init {plan['options'].get('init')}, {len(plan['removed'])} blocks removed"
    title = (f"{plan['method']} ({how}, {w['strategy']}): removed {plan['ratio_removed']:.1%} of "
             f"{plan['params_before']:,} parameters" + decoder_note(plan)
             + (f", {frac:.3f} of each pruned layer" if frac is not None and w["strategy"] == "block" else ""))
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
        print_weights(timing)


def print_export(info: dict) -> None:
    t = Table(title=f"exported {info['format']} -> {info['path']}")
    t.add_column("field")
    t.add_column("value")
    for key, value in info.items():
        if key not in ("format", "path"):
            t.add_row(key, f"{value:.3g}" if isinstance(value, float) else str(value))
    out_console.print(t)
    if info["format"] == "hf":
        code = ", trust_remote_code=True" if info.get("trust_remote_code") else ""
        console.print(f"load it with: AutoModelForCausalLM.from_pretrained('{info['path']}'{code}); "
                      f"AutoTokenizer.from_pretrained('{info['path']}', trust_remote_code=False)", highlight=False)
    elif info["format"] == "nemotron-nas":
        console.print(f"serve it with: {info['serve']}", highlight=False)
    else:
        console.print(f"run it with llama.cpp: llama-cli -m {info['path']} -p 'The capital of France is' -n 16", highlight=False)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def print_bench(res: dict) -> None:
    both = "dense" in res["models"]
    t = Table(title=f"speed on {res['device']} ({res['threads']} threads, {res['dtype']}, batch {res['config']['batch']}, "
                    f"median of {res['config']['repeats']})")
    cols = ["case"] + (["dense tok/s"] if both else []) + ["pruned tok/s"] + (["speedup", "ideal (MACs)", "of ideal"] if both else [])
    for c in cols:
        t.add_column(c, justify="right")
    rows = [(f"prefill {r['seq_len']}", r) for r in res["prefill"]]
    d = res["decode"]
    rows.append((f"decode {d['new_tokens']} after {d['prompt_len']}", d))
    for name, r in rows:
        cells = [name] + ([f"{r['dense_tokens_per_s']:.1f}"] if both else []) + [f"{r['pruned_tokens_per_s']:.1f}"]
        if both:
            cells += [f"{r['speedup']:.3f}x", f"{r['ideal']:.3f}x", f"{r['of_ideal']:.2f}"]
        t.add_row(*cells)
    out_console.print(t)
    m = Table(title="models")
    for c in ("model", "spec", "parameters", "weights MiB", "peak RSS MiB"):
        m.add_column(c, justify="right")
    for name, rec in res["models"].items():
        mem = rec.get("memory") or {}
        peak = f"{mem['peak_rss_bytes'] / 2**20:.0f}" if "peak_rss_bytes" in mem else mem.get("error", "-")
        m.add_row(name, str(rec["spec"]), f"{rec['parameters']:,}", f"{rec['weights_bytes'] / 2**20:.1f}", peak)
    out_console.print(m)

