"""Does a compare run reproduce the committed table? For every cell of OUT, the removed units and the
held-out perplexities (4 decimals) against benchmarks/results/compare_methods.csv.

    python benchmarks/compare_reproduces.py OUT
"""
import csv
import json
import pathlib
import sys

TABLE = pathlib.Path(__file__).parent / "results" / "compare_methods.csv"
rows = {(r["method"], r["search"], r["target_ratio"]): r for r in csv.DictReader(open(str(TABLE)))}
same = diff = 0
for f in sorted(pathlib.Path(sys.argv[1]).glob("cells/*.json")):
    c = json.loads(f.read_text())
    if c["method"] == "dense":
        key = ("dense", "", "0")
    else:
        key = (c["method"], c["search"], f"{c['target_ratio']:g}")
    r = rows[key]
    units = ";".join(c.get("units", []))
    ok = units == r["removed"] and all(f"{c['ppl'][s]:.4f}" == r[f"ppl_{s}"] for s in ("wiki-test", "news"))
    same += ok
    diff += not ok
    if not ok:
        print("DIFF", key, units, r["removed"], c["ppl"], r["ppl_wiki-test"], r["ppl_news"])
print(f"cells equal to benchmarks/results/compare_methods.csv (units and held-out ppl to 4 decimals): {same}, different: {diff}")
