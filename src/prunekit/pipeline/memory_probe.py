"""Peak memory of a model in a fresh process (``prunekit bench``'s memory column).

:func:`peak_memory` starts this very module as a child (``python -m prunekit.pipeline.memory_probe SPEC DTYPE
DEVICE CONFIG_JSON``, the name taken from the module itself, so no module is launched by a name the import graph
cannot see); the child loads the spec (:func:`prunekit.pipeline.load.load_model`: any spec, exports included), runs
the longest prefill and the decode of :mod:`prunekit.evaluation.speed`, and prints its peak memory as one JSON line.
A fresh process because two models share the benchmarking process, and ``VmHWM`` because Linux carries a
parent's ``ru_maxrss`` into a child across fork and exec.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from prunekit.evaluation.speed import BenchConfig, run_case
from prunekit.pipeline.load import load_model

PROBE_MODULE = __spec__.name if __spec__ is not None else __name__  # this module's import name, also when run by -m


def peak_memory(spec: str, cfg: BenchConfig, dtype: str = "float32", device: str = "cpu", timeout: float = 900) -> dict:
    """Peak memory of a fresh process that loads ``spec`` and runs the longest prefill and the decode."""
    args = [sys.executable, "-m", PROBE_MODULE, spec, dtype, device,
            json.dumps({"seq_lens": list(cfg.seq_lens), "prompt_len": cfg.prompt_len, "new_tokens": cfg.new_tokens, "batch": cfg.batch})]
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:200]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM (per address space, so it starts afresh at exec).

    ``ru_maxrss`` is not used on Linux: it carries the parent's peak over fork and exec, so a child
    of a process holding two models would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    import resource  # pragma: no cover

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # pragma: no cover


def _probe(spec: str, dtype: str, device: str, cfg_json: str) -> dict:
    """Child side of :func:`peak_memory` (prints one JSON line)."""
    c = json.loads(cfg_json)
    cfg = BenchConfig(seq_lens=tuple(c["seq_lens"]), prompt_len=c["prompt_len"], new_tokens=c["new_tokens"], batch=c["batch"], repeats=1)
    loaded = load_model(spec, dtype=dtype, device=device)
    after_load = _peak_rss_bytes()
    if loaded.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(loaded.device)
    run_case(loaded, ("prefill", max(cfg.seq_lens)), cfg)
    run_case(loaded, ("decode", cfg.prompt_len), cfg)
    out = {"peak_rss_bytes": _peak_rss_bytes(), "rss_after_load_bytes": after_load}
    if loaded.device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(loaded.device)
    return out


if __name__ == "__main__":  # pragma: no cover - run by peak_memory in a child process
    if len(sys.argv) == 5:
        print(json.dumps(_probe(*sys.argv[1:5])))
    else:
        sys.exit(f"usage: python -m {PROBE_MODULE} SPEC DTYPE DEVICE CONFIG_JSON")
