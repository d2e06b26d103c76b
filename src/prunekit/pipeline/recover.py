"""Recovery of a pruned model (``prunekit recover OUT --out OUT2``): LoRA (LLM-Pruner's post-training) or
full fine-tuning (``--full``), on the LM loss or by distillation from the dense base (``--distill``,
:mod:`prunekit.pipeline.distill`).

This module is the recipe; its parts, each of one job:

- :mod:`~prunekit.pipeline.recover_config`: the options (:class:`RecoverConfig`, the paper's defaults);
- :mod:`~prunekit.pipeline.recover_data`: the training windows (``alpaca-cleaned`` when the hub is reachable,
  else the embedded ``wiki`` split, or any known source);
- :mod:`~prunekit.pipeline.recover_train`: the model set-up (LoRA attached to every Linear of the kept blocks, or
  every weight trainable with ``full``), the training loop and the merge;
- :mod:`~prunekit.pipeline.recover_checkpoint`: the checkpoint in ``OUT2/.recover-ckpt/`` (no pickle, committed
  atomically), written every ``save_every`` steps and at each epoch's end.

:func:`recover` runs them in order: check ``OUT2`` (resuming when only a checkpoint is there), load the pruned
directory, build the windows, measure held-out perplexity (exp of the token-weighted mean NLL) on ``eval_data``, set
up the model (and the teacher), train (resuming from the checkpoint when the inputs and options are the same: the
same result as an uninterrupted run), merge the adapters (``merge_and_unload``; nothing to merge with ``full``),
measure again and write a plain pruned model directory with :func:`prunekit.plan.apply.save_pruned` (its plan
gains a ``recovery`` record), so ``load_model(OUT2)`` reloads it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from prunekit.core.errors import PrunekitError
from prunekit.core.io import check_output_dir, options_hash
from prunekit.data.windows import build_windows
from prunekit.evaluation.perplexity import perplexity
from prunekit.models.loading import LoadedModel
from prunekit.models.registry import get_adapter
from prunekit.pipeline.distill import distill_loss, load_teacher
from prunekit.pipeline.load import load_model
from prunekit.pipeline.recover_checkpoint import CKPT
from prunekit.pipeline.recover_config import RecoverConfig
from prunekit.pipeline.recover_data import training_windows
from prunekit.pipeline.recover_train import RecoverProgress, attach_lora, lm_loss, merge_lora, train_lora
from prunekit.plan.apply import save_pruned

__all__ = ["CKPT", "RecoverConfig", "attach_lora", "merge_lora", "prepare_output", "recover", "train_lora"]


def _held_out(loaded: LoadedModel, cfg: RecoverConfig, progress: RecoverProgress | None, stage: str) -> dict[str, float]:
    out = {}
    max_pos = getattr(loaded.model.config, "max_position_embeddings", None)
    for i, src in enumerate(cfg.eval_data):
        w = build_windows(loaded.tokenizer, src, cfg.eval_seq_len, cfg.eval_windows, max_positions=max_pos)
        with torch.inference_mode():
            out[src] = perplexity(loaded, w, batch_size=4)
        if progress:
            progress(stage, i + 1, len(cfg.eval_data), {})
    return out


def prepare_output(src: Path, out: Path, overwrite: bool) -> Path:
    """Check OUT2 and return its checkpoint directory: resume when only a checkpoint is there."""
    if out.resolve() == src.resolve():
        raise PrunekitError("`out` is the input directory.", "Write the recovered model to another directory.")
    ckpt = out / CKPT
    if out.is_dir() and overwrite:
        shutil.rmtree(ckpt, ignore_errors=True)
    elif out.is_dir() and any(out.iterdir()) and {p.name for p in out.iterdir()} != {CKPT}:
        check_output_dir(out, overwrite)
    elif out.exists() and not out.is_dir():
        check_output_dir(out, overwrite)
    return ckpt


def recover(
    pruned: str | Path, cfg: RecoverConfig, out: str | Path, *, overwrite: bool = False, dtype: str = "float32",
    device: str | None = None, progress: RecoverProgress | None = None,
) -> dict:
    """Train a pruned model directory (LoRA, merged; or in full), write ``out``; returns the run's report (also in ``recover.json``)."""
    src = Path(pruned)
    if not (src.is_dir() and (src / "plan.json").exists()):
        raise PrunekitError(f"'{pruned}' is not a prunekit output directory (no plan.json).",
                            "Give the `out` directory of prunekit prune.")
    out = Path(out)
    ckpt = prepare_output(src, out, overwrite)
    loaded = load_model(str(src), dtype=dtype, device=device)
    plan = loaded.info["plan"]
    if loaded.tokenizer is None:
        raise PrunekitError(f"'{src}' has no tokenizer files.", "Re-run the pruning; it saves the tokenizer beside the weights.")
    max_pos = getattr(loaded.model.config, "max_position_embeddings", None)
    windows, source = training_windows(loaded.tokenizer, cfg.data, seq_len=cfg.seq_len, windows=cfg.windows, rows=cfg.rows,
                                       seed=cfg.seed, max_positions=max_pos)
    fingerprint = options_hash({"plan": plan, "options": cfg.as_dict(), "source": source, "data": windows.fingerprint()})
    before = _held_out(loaded, cfg, progress, "held-out before")
    params = loaded.adapter.total_params()
    loss_fn, teacher = lm_loss, None
    if cfg.distill:
        teacher = load_teacher(cfg.teacher or plan["model"]["spec"], loaded, dtype=dtype, device=device, topk=cfg.distill_topk)
        loss_fn = distill_loss(teacher, cfg.distill_alpha)
    if cfg.full:
        model = loaded.model
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        model = attach_lora(loaded.model, loaded.adapter, cfg)
    trained = train_lora(model, windows.ids, cfg, ignore_index=loaded.model.config.pad_token_id, ckpt_dir=ckpt,
                         fingerprint=fingerprint, progress=progress, loss_fn=loss_fn)
    merged = (model if cfg.full else merge_lora(model)).eval()
    for p in merged.parameters():
        p.requires_grad_(False)
    done = LoadedModel(merged, loaded.tokenizer, get_adapter(merged), str(out), {"source": "recovered", "plan": plan})
    if done.adapter.total_params() != params:
        raise AssertionError("merging the adapters changed the parameter count")
    after = _held_out(done, cfg, progress, "held-out after")
    report = {
        "input": str(src), "options": cfg.as_dict(), "data": source, "train_windows": windows.n_windows,
        "train_tokens": windows.n_tokens, "steps": trained.steps, "resumed_from_step": trained.resumed_from,
        "first_loss": trained.losses[0] if trained.losses else None,
        "last_loss": trained.losses[-1] if trained.losses else None, "losses": trained.losses,
        "train_seconds": trained.seconds, "perplexity_before": before, "perplexity_after": after,
        "parameters": params, "mode": "full" if cfg.full else "lora",
        "loss": "distill" if cfg.distill else "lm",
        "teacher": (cfg.teacher or plan["model"]["spec"]) if cfg.distill else None,
        "teacher_windows_run": teacher.forwards if teacher is not None else None,
    }
    new_plan = dict(plan) | {"recovery": {k: v for k, v in report.items() if k != "losses"}}
    save_pruned(done, new_plan, out, overwrite=True, extra_files={"recover.json": report}, patch=loaded.info.get("patch"))
    return report
