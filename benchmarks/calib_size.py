"""Calibration size: BlockPruner and SLEB at 20% of SmolLM2-135M with more calibration tokens (issue 16, item 3).

For each ``--cells`` entry ``METHOD:WINDOWSxSEQ_LEN:DTYPE`` the search runs on ``WINDOWS`` windows of
``SEQ_LEN`` tokens of the embedded ``wiki`` split (``sample: first``, batches of ``--batch-size`` windows,
as the compare table), in ``DTYPE`` (``float32``, or ``bfloat16``: the model loaded in bfloat16; the plan
records the dtype its weights hash is of and applies to the float32 model). Every plan is then evaluated
in float32 on the held-out 8 x 256 tokens of ``wiki-test`` and ``news``, the compare table's windows.
Finished cells are kept in ``--json``; each search is journaled in ``--work`` (a killed run resumes its
cell from the last finished step), and a markdown table is printed.

A cell is the library equivalent of (for float32)

    prunekit prune smollm2-135m --method METHOD --ratio 0.2 --calib wiki --windows W --seq-len T --batch-size 2 --out OUT

    python benchmarks/calib_size.py --cells sleb:8x128:bfloat16,blockpruner:16x512:bfloat16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prunekit.core.journal import JOURNAL_NAME
from prunekit.data.calibration import CalibConfig
from prunekit.methods.options import DepthConfig
from prunekit.pipeline import prune as api
from prunekit.pipeline.load import load_model

HERE = Path(__file__).resolve().parent
SOURCES = ("wiki-test", "news")


def parse_cell(text: str) -> tuple[str, int, int, str]:
    """``sleb:16x512:bfloat16`` -> ("sleb", 16, 512, "bfloat16")."""
    method, size, dtype = text.split(":")
    windows, seq_len = (int(x) for x in size.split("x"))
    if dtype not in ("float32", "bfloat16"):
        raise SystemExit(f"cell {text!r}: dtype must be float32 or bfloat16")
    return method, windows, seq_len, dtype


def run_cell(method: str, windows: int, seq_len: int, dtype: str, *, ratio: float, batch_size: int, dense,
             out: Path) -> dict:
    """Search one cell in ``dtype`` (journaled in ``out``: a killed cell resumes); evaluate its plan on the
    float32 model ``dense``."""
    searched = dense if dtype == "float32" else load_model("smollm2-135m", dtype=dtype, device="cpu")
    calib = CalibConfig(source="wiki", seq_len=seq_len, windows=windows, batch_size=batch_size)
    res = api.prune(searched, DepthConfig(method=method, ratio=ratio), calib, out=out, overwrite=True,
                    resume=(out / JOURNAL_NAME).is_file(),
                    on_step=lambda rec: print(f"  step {rec['step']}: {rec['unit']} calib ppl {rec['value']:.3f}", flush=True))
    plan = res.plan
    held = api.evaluate(dense, list(SOURCES), seq_len=256, windows=8, plan=plan)  # float32, on a copy
    return {
        "method": method, "windows": windows, "seq_len": seq_len, "search_dtype": dtype,
        "units": [r["unit"] for r in plan["removed"]],
        "ratio_removed": plan["ratio_removed"], "params_after": plan["params_after"],
        "calib_ppl_searched": plan["removed"][-1]["value"], "dense_calib_ppl_searched": plan["dense_value"],
        "perplexity": held["perplexity"], "search_seconds": res.timing["search_seconds"],
        "search_work_macs": res.timing["work"]["total_macs"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", required=True, help="comma-separated METHOD:WINDOWSxSEQ_LEN:DTYPE")
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--json", default=str(HERE / "results" / "calib_size.json"))
    ap.add_argument("--work", default=str(HERE.parent / "runs" / "calib_size"), help="Each cell's prune output and journal.")
    args = ap.parse_args()
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() else {}
    dense = load_model("smollm2-135m", device="cpu")
    for text in args.cells.split(","):
        key = text.strip()
        if key in results:
            continue
        results[key] = run_cell(*parse_cell(key), ratio=args.ratio, batch_size=args.batch_size, dense=dense,
                                out=Path(args.work) / key.replace(":", "_"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(key, json.dumps(results[key]), flush=True)
    print("| cell | removed | units | wiki-test | news | calib ppl (searched) | search s |\n|---|---:|---|---:|---:|---:|---:|")
    for key, r in results.items():
        p = r["perplexity"]
        print(f"| {key} | {r['ratio_removed']:.1%} | {', '.join(r['units'])} | {p['wiki-test']:.3f} | "
              f"{p['news']:.3f} | {r['calib_ppl_searched']:.3f} | {r['search_seconds']:.0f} |")


if __name__ == "__main__":
    main()
