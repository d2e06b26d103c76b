"""Issue 15's benchmarks: sequential onloading under --max-memory, and one search over torchrun ranks.

``memory``: a random Llama-shaped model (hidden 1024, 16 layers, FFN 3072, SmolLM2's 49,152-token
vocabulary: 302M parameters, 1.21 GB in float32) stored as bfloat16, pruned in float32 without a cap
and with ``--max-memory 0.25``; each run's RssAnon is sampled from /proc every 20 ms.

``ranks``: the embedded SmolLM2 pruned by one process with 2 threads and by
``torchrun --nproc-per-node 2`` with 1 thread per rank; wall times and each rank's counted work.

Every run is a fresh ``prunekit prune`` process; the plans of the runs compared must be byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

BIN = Path(sys.executable).parent


def sample_rss_anon(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; peak RssAnon (MiB) over it and its children, sampled every 20 ms, and the wall time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    import psutil  # noqa: PLC0415 (benchmarks only)

    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        total = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        total += int(line.split()[1])
            except (OSError, psutil.Error):
                pass
        peak = max(peak, total)
        time.sleep(0.02)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out[-3000:]}")
    return {"peak_rss_anon_mib": peak / 1024, "wall_s": time.perf_counter() - t0}


def random_model(path: Path) -> Path:
    """The random Llama, stored as bfloat16, with SmolLM2's tokenizer (nothing downloaded)."""
    import torch  # noqa: PLC0415
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    from prunekit.models.loading import _embedded_checkpoint  # noqa: PLC0415

    if (path / "model.safetensors").exists():
        return path
    cfg = LlamaConfig(vocab_size=49152, hidden_size=1024, intermediate_size=3072, num_hidden_layers=16,
                      num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=2048,
                      tie_word_embeddings=False, pad_token_id=2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    model.to(torch.bfloat16).save_pretrained(path)
    AutoTokenizer.from_pretrained(_embedded_checkpoint("smollm2-135m")).save_pretrained(path)
    return path


def memory(args) -> dict:
    model = random_model(Path(args.work) / "random-llama-bf16")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    common = [str(BIN / "prunekit"), "prune", str(model), "--remove", str(args.steps), "--calib", "wiki",
              "--seq-len", "128", "--windows", str(args.windows or 2), "--batch-size", "1", "--device", "cpu", "--dtype", "float32",
              "--overwrite"]
    res: dict = {"runs": []}
    for rep in range(args.repeats):  # side by side: uncapped, capped, uncapped, capped, ...
        runs = {}
        for name, extra in (("uncapped", []), ("capped", ["--max-memory", str(args.cap)])):
            out = Path(args.work) / f"mem-{name}"
            runs[name] = sample_rss_anon([*common, "--out", str(out), *extra], env)
            timing = json.loads((out / "timing.json").read_text())
            runs[name]["search_s"] = timing["search_seconds"]
            runs[name]["weights"] = timing.get("weights")
            runs[name]["plan"] = [s["unit"] for s in json.loads((out / "plan.json").read_text())["removed"]]
        a, b = (Path(args.work) / f"mem-{n}" / "plan.json" for n in ("uncapped", "capped"))
        runs["plans_identical"] = a.read_bytes() == b.read_bytes()
        res["runs"].append(runs)
        partial(args, res)
    rs = res["runs"]
    res["plans_identical"] = all(r["plans_identical"] for r in rs)
    for name in ("uncapped", "capped"):
        res[f"median_peak_rss_anon_mib_{name}"] = median(r[name]["peak_rss_anon_mib"] for r in rs)
        res[f"median_wall_s_{name}"] = median(r[name]["wall_s"] for r in rs)
    res["median_wall_ratio_capped_over_uncapped"] = median(r["capped"]["wall_s"] / r["uncapped"]["wall_s"] for r in rs)
    res["median_search_ratio_capped_over_uncapped"] = median(r["capped"]["search_s"] / r["uncapped"]["search_s"] for r in rs)
    res["median_rss_ratio_capped_over_uncapped"] = median(r["capped"]["peak_rss_anon_mib"] / r["uncapped"]["peak_rss_anon_mib"] for r in rs)
    return res


def ranks(args) -> dict:
    common = ["prune", "smollm2-135m", "--remove", str(args.steps), "--calib", "wiki", "--seq-len", "128",
              "--windows", str(args.windows or 4), "--batch-size", "1", "--device", "cpu", "--overwrite"]
    runs = {
        "1 process x 2 threads": ([str(BIN / "prunekit"), *common], "2"),
        "2 ranks x 1 thread": ([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python",
                                str(BIN / "prunekit"), *common], "1"),
    }
    res: dict = {"runs": []}
    for rep in range(args.repeats):  # side by side, alternating
        one_rep = {}
        for name, (cmd, threads) in runs.items():
            out = Path(args.work) / ("ranks-" + name.split()[0])
            t0 = time.perf_counter()
            r = subprocess.run([*cmd, "--out", str(out)], env=dict(os.environ, OMP_NUM_THREADS=threads),
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(r.stderr[-3000:])
            timing = json.loads((out / "timing.json").read_text())
            one_rep[name] = {"wall_s": time.perf_counter() - t0, "search_s": timing["search_seconds"],
                             "rank_total_macs": [w["total_macs"] for w in timing["rank_work"]],
                             "counted_ratio_vs_naive": timing["counted_ratio"]}
        one, two = (Path(args.work) / p / "plan.json" for p in ("ranks-1", "ranks-2"))
        one_rep["plans_identical"] = one.read_bytes() == two.read_bytes()
        one_rep["same_choices"] = ([s["unit"] for s in json.loads(one.read_text())["removed"]]
                                   == [s["unit"] for s in json.loads(two.read_text())["removed"]])
        one_rep["search_speedup"] = one_rep["1 process x 2 threads"]["search_s"] / one_rep["2 ranks x 1 thread"]["search_s"]
        one_rep["wall_speedup"] = one_rep["1 process x 2 threads"]["wall_s"] / one_rep["2 ranks x 1 thread"]["wall_s"]
        res["runs"].append(one_rep)
        partial(args, res)
    rs = res["runs"]
    res["same_choices"] = all(r["same_choices"] for r in rs)
    res["median_search_speedup"] = median(r["search_speedup"] for r in rs)
    res["median_wall_speedup"] = median(r["wall_speedup"] for r in rs)
    w = rs[0]["2 ranks x 1 thread"]["rank_total_macs"]
    res["rank_total_macs"] = w
    res["rank_balance_min_over_max"] = min(w) / max(w)
    return res


def partial(args, res: dict) -> None:
    """Write the repeats finished so far (a run cut short keeps them)."""
    if args.json:
        Path(args.json).write_text(json.dumps(res | {"partial": True}, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("memory", "ranks"))
    ap.add_argument("--work", default="/tmp/prunekit-scale-bench")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--cap", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="side-by-side repeats (medians reported)")
    ap.add_argument("--windows", type=int, default=None, help="calibration windows (memory: 2, ranks: 4)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    res = memory(args) if args.what == "memory" else ranks(args)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if args.what == "memory":
        shutil.rmtree(Path(args.work) / "mem-uncapped", ignore_errors=True)


if __name__ == "__main__":
    main()
