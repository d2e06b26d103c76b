"""The checkpoint of recovery's training loop, ``OUT2/.recover-ckpt/``: no pickle, committed atomically.

The tensors (the trained weights: LoRA's ``lora.<name>``, or with ``full`` all of them, ``weights.<name>``; AdamW's
per-parameter ``exp_avg``, ``exp_avg_sq`` and ``step``) go to ``state-<step>.safetensors``, everything else
(fingerprint, step, losses, the optimizer's ``param_groups``) to ``state.json``, which names its tensors file and is
replaced last (temp file, fsync, rename): it is the commit, so a kill at any moment leaves the previous complete
checkpoint. The random state needs no saving: the data order comes from ``(seed, epoch)`` and the dropout masks
from ``(seed, step)`` (:mod:`prunekit.pipeline.recover_train`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from prunekit.core.errors import PrunekitError
from prunekit.core.io import write_json_atomic
from prunekit.core.journal import write_state

CKPT = ".recover-ckpt"
CKPT_STATE = "state.json"  # the commit record; it names the tensors file (state-<step>.safetensors)
CKPT_FORMAT = 1
LORA_KEY, FULL_KEY, OPT_KEY = "lora.", "weights.", "optimizer.state."


def flatten_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer ``state_dict`` as safetensors tensors (``optimizer.state.<index>.<name>``) and JSON (the rest)."""
    tensors, rest = {}, {}
    for index, entry in opt_state["state"].items():
        rest[str(index)] = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPT_KEY}{index}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                rest[str(index)][name] = value
    return tensors, {"state": rest, "param_groups": opt_state["param_groups"]}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict, like: dict) -> dict:
    """The ``state_dict`` :func:`flatten_optimizer` took apart; ``like``: the fresh optimizer's own, whose
    ``param_groups`` give back the tuples JSON turned into lists (AdamW's ``betas``)."""
    state: dict[int, dict] = {int(i): dict(rest) for i, rest in meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith(OPT_KEY):
            index, name = key[len(OPT_KEY):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    groups = [{k: tuple(v) if isinstance(fresh.get(k), tuple) else v for k, v in group.items()}
              for group, fresh in zip(meta["param_groups"], like["param_groups"])]
    return {"state": state, "param_groups": groups}


def save_ckpt(ckpt_dir: Path, fingerprint: str, step: int, losses: list[float], *, weights: dict[str, torch.Tensor],
              opt_state: dict, prefix: str = LORA_KEY) -> None:
    """Tensors to ``state-<step>.safetensors`` (temp file, fsync, rename), then ``state.json`` naming it
    (atomically: the commit), then older tensors files are removed."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    opt_tensors, opt_meta = flatten_optimizer(opt_state)
    tensors = {f"{prefix}{k}": v.detach().cpu().contiguous().clone() for k, v in weights.items()} | opt_tensors
    name = f"state-{step:09d}.safetensors"
    write_state(ckpt_dir / name, tensors)
    write_json_atomic(ckpt_dir / CKPT_STATE, {"format": CKPT_FORMAT, "fingerprint": fingerprint, "step": step,
                                              "losses": list(losses), "tensors": name, "optimizer": opt_meta})
    for old in ckpt_dir.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_ckpt(ckpt_dir: Path, fingerprint: str) -> dict | None:
    """The checkpoint's JSON record with its tensors (``tensors``), or None when there is none. Reads no pickle."""
    if (ckpt_dir / "state.pt").exists():
        raise PrunekitError(f"'{ckpt_dir}' holds a checkpoint of an older prunekit (state.pt, a pickle), which is not read.",
                            "Pass `overwrite` to start over.")
    path = ckpt_dir / CKPT_STATE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        known = state.get("format") == CKPT_FORMAT
    except (OSError, ValueError, AttributeError) as e:  # a checkpoint that cannot be read is refused, never silently replaced
        raise PrunekitError(f"the checkpoint '{path}' cannot be read ({type(e).__name__}).", "Pass `overwrite` to start over.") from None
    if not known:
        raise PrunekitError(f"the checkpoint '{path}' has an unknown format.", "Pass `overwrite` to start over.")
    if state.get("fingerprint") != fingerprint:
        raise PrunekitError(
            f"the checkpoint in '{ckpt_dir}' was made with other inputs or options.",
            "Rerun with the same options to resume, or pass `overwrite` to start over.",
        )
    try:
        state["tensors"] = load_file(str(ckpt_dir / state["tensors"]), device="cpu")
    except Exception as e:
        raise PrunekitError(f"the checkpoint tensors '{ckpt_dir / str(state['tensors'])}' cannot be read ({type(e).__name__}).",
                            "Pass `overwrite` to start over.") from None
    return state
