"""Recovery of a pruned model (``prunekit recover OUT --out OUT2``): LoRA (LLM-Pruner's post-training) or
full fine-tuning (``--full``), on the LM loss or by distillation from the dense base (``--distill``,
:mod:`prunekit.pipeline.distill`).

Recipe (the paper's defaults): LoRA adapters (peft) of rank ``r = 8``, ``alpha = 16``, dropout
0.05 on every q, k, v, o, gate, up and down projection the pruned model still has; AdamW at a
constant ``lr = 1e-4``; 2 epochs over the training windows; then the adapters are merged into
the weights (``merge_and_unload``) and a plain pruned model directory is written with
:func:`prunekit.plan.apply.save_pruned` (its plan gains a ``recovery`` record), so ``load_model(OUT2)``
reloads it.

Data: ``alpaca-cleaned`` (the paper's; instruction/input/output rows in the Alpaca prompt
format) when the hub is reachable, else the embedded ``wiki`` calibration split (``--data auto``,
the default), or any source :func:`prunekit.data.corpora.load_texts` knows. Texts are joined and
cut into ``seq_len``-token windows (:func:`prunekit.data.windows.windows_from_texts`); the loss
of a batch is the mean next-token NLL over its windows (targets equal to the pad id ignored).

Held-out perplexity (exp of the token-weighted mean NLL, :func:`prunekit.pipeline.prune.perplexity`) on
``eval_data`` is measured before and after. A checkpoint (LoRA weights, optimizer state, step,
losses) is written to ``OUT2/.recover-ckpt/`` every ``save_every`` steps and at each epoch's end;
a rerun with the same inputs and options resumes from it, to the same result as an uninterrupted run.

With ``--full`` every weight of the pruned model trains and nothing is merged; the checkpoint then
holds all weights (``weights.<name>``) instead of the LoRA ones (``lora.<name>``).

The checkpoint holds no pickle: the tensors (LoRA weights; AdamW's per-parameter ``exp_avg``,
``exp_avg_sq`` and ``step``) go to ``state-<step>.safetensors``, everything else (fingerprint,
step, losses, the optimizer's ``param_groups``) to ``state.json``, which names its tensors file and
is replaced last (temp file, fsync, rename): it is the commit, so a kill at any moment leaves the
previous complete checkpoint. The random state needs no saving: the data order comes from
``(seed, epoch)`` and the dropout masks from ``(seed, step)``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.core.io import check_output_dir, options_hash, write_json_atomic
from prunekit.data.windows import build_windows, windows_from_texts
from prunekit.evaluation.perplexity import perplexity
from prunekit.models.adapter import ModelAdapter
from prunekit.models.loading import LoadedModel
from prunekit.models.registry import get_adapter
from prunekit.pipeline.distill import Teacher, distill_loss
from prunekit.pipeline.load import load_model
from prunekit.plan.apply import save_pruned

#: ``progress(stage, done, total, info)``; ``info`` carries ``loss`` during training.
RecoverProgress = Callable[[str, int, int, dict], None]
CKPT = ".recover-ckpt"
CKPT_STATE = "state.json"  # the commit record; it names the tensors file (state-<step>.safetensors)
CKPT_FORMAT = 1
LORA_KEY, FULL_KEY, OPT_KEY = "lora.", "weights.", "optimizer.state."
ALPACA_PROMPT = (
    "Below is an instruction that describes a task{ctx}. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n{output}"
)


@dataclass
class RecoverConfig:
    """Options of ``prunekit recover`` (flags in parentheses)."""

    data: str = "auto"            # --data: auto | alpaca-cleaned | wiki | news | a .txt/.jsonl file
    epochs: int = 2               # --epochs
    lora_r: int = 8               # --lora-r
    lora_alpha: int = 16          # --lora-alpha
    lora_dropout: float = 0.05    # --lora-dropout
    lr: float = 1e-4              # --lr
    seq_len: int = 256            # --seq-len: tokens per training window
    batch_size: int = 4           # --batch-size: windows per step
    windows: int | None = None    # --windows: training windows (default: all)
    max_steps: int | None = None  # --max-steps: stop after this many steps in all
    save_every: int = 50          # --save-every: checkpoint interval in steps
    eval_data: tuple[str, ...] = ("wiki-test", "news")  # --eval-data
    eval_windows: int = 8         # --eval-windows
    eval_seq_len: int = 256       # --eval-seq-len
    seed: int = 0                 # --seed: data order and LoRA initialisation
    rows: int = 2000              # --rows: alpaca-cleaned rows used
    full: bool = False            # --full: train every weight (no LoRA)
    distill: bool = False         # --distill: KL to the dense base model's next-token distribution
    distill_alpha: float = 0.5    # --distill-alpha: weight of the KL (the LM loss gets 1 - alpha); 0.5: BENCHMARKS.md
    distill_topk: int = 0         # --distill-topk: cache the teacher's top-K per window (0: full, on the fly)
    teacher: str | None = None    # --teacher: the teacher model (default: the plan's base model)

    def __post_init__(self) -> None:
        for flag, v in (("`epochs`", self.epochs), ("`lora_r`", self.lora_r), ("`lora_alpha`", self.lora_alpha),
                        ("`seq_len`", self.seq_len), ("`batch_size`", self.batch_size), ("`save_every`", self.save_every),
                        ("`eval_windows`", self.eval_windows), ("`eval_seq_len`", self.eval_seq_len), ("`rows`", self.rows)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise PrunekitError(f"{flag} {v} is out of range.", f"Use a whole number of 1 or more for {flag}.")
        for flag, v in (("`windows`", self.windows), ("`max_steps`", self.max_steps)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise PrunekitError(f"{flag} {v} is out of range.", f"Use 1 or more for {flag}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise PrunekitError(f"`lr` {self.lr} must be a positive number.", "Use e.g. `lr` 1e-4.")
        if not (0.0 <= self.distill_alpha <= 1.0):
            raise PrunekitError(f"`distill_alpha` {self.distill_alpha} is outside [0, 1].", "Use 1 for KL only, or e.g. 0.5.")
        if not isinstance(self.distill_topk, int) or self.distill_topk < 0:
            raise PrunekitError(f"`distill_topk` {self.distill_topk} is out of range.", "Use 0 (full distributions) or e.g. 64.")
        if not (0.0 <= self.lora_dropout < 1.0):
            raise PrunekitError(f"`lora_dropout` {self.lora_dropout} is outside [0, 1).", "Use e.g. `lora_dropout` 0.05.")
        self.eval_data = tuple(self.eval_data)
        if not self.eval_data:
            raise PrunekitError("`eval_data` names no source.", "Use e.g. `eval_data` wiki-test,news.")

    def as_dict(self) -> dict:
        return asdict(self) | {"eval_data": list(self.eval_data)}


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when huggingface.co answers on port 443 (and no offline switch is set)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def alpaca_cleaned_texts(rows: int, seed: int) -> list[str]:
    """``rows`` rows of yahma/alpaca-cleaned (drawn with ``seed``) in the Alpaca prompt format."""
    import datasets

    try:
        ds = datasets.load_dataset("yahma/alpaca-cleaned", split="train")
    except (OSError, ConnectionError, ValueError) as e:
        raise PrunekitError(
            f"could not fetch 'alpaca-cleaned' from the hub ({str(e).splitlines()[0][:160]}).",
            "Check the network, or use `data` wiki (the embedded calibration split) or a local .txt/.jsonl file.",
        ) from None
    pick = sorted(random.Random(seed).sample(range(len(ds)), min(rows, len(ds))))
    out = []
    for i in pick:
        r = ds[i]
        has_input = bool(str(r.get("input") or "").strip())
        out.append(ALPACA_PROMPT.format(
            ctx=", paired with an input that provides further context" if has_input else "",
            instruction=r["instruction"], input_block=f"### Input:\n{r['input']}\n\n" if has_input else "",
            output=r["output"]))
    return out


def training_windows(tokenizer, cfg: RecoverConfig, max_positions: int | None):
    """(windows, the source actually used): ``auto`` -> alpaca-cleaned online, else the embedded wiki split."""
    source = cfg.data
    if source == "auto":
        source = "alpaca-cleaned" if hub_reachable() else "wiki"
    if source == "alpaca-cleaned":
        texts = alpaca_cleaned_texts(cfg.rows, cfg.seed)
        return windows_from_texts(tokenizer, texts, cfg.seq_len, cfg.windows, source=source, max_positions=max_positions), source
    return build_windows(tokenizer, source, cfg.seq_len, cfg.windows, max_positions=max_positions), source


def lora_targets(adapter: ModelAdapter) -> list[str]:
    """Full module names of every Linear of the blocks the model still has (q, k, v, o, gate, up, down ...)."""
    wanted: dict[int, str] = {}
    for block in adapter.blocks():
        if not adapter.is_removed(block):
            wanted.update({id(m): "" for m in adapter.linear_modules(block)})
    names = [n for n, mod in adapter.model.named_modules() if id(mod) in wanted]
    if not names:
        raise PrunekitError("the model has no projection left to adapt.", "Recover a model that keeps some attention or MLP blocks.")
    return names


def attach_lora(model: nn.Module, adapter: ModelAdapter, cfg: RecoverConfig) -> nn.Module:
    """Wrap ``model`` with fresh LoRA adapters (initialised from ``cfg.seed``); only they train."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_targets(adapter), bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng():  # seeded here; the caller's random state is restored afterwards
        torch.manual_seed(cfg.seed)
        return get_peft_model(model, lcfg)


def merge_lora(peft_model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights; returns the plain model."""
    return peft_model.merge_and_unload()


def _trainable(peft_model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in peft_model.named_parameters() if p.requires_grad}


def _flatten_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
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


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict, like: dict) -> dict:
    """The ``state_dict`` :func:`_flatten_optimizer` took apart; ``like``: the fresh optimizer's own, whose
    ``param_groups`` give back the tuples JSON turned into lists (AdamW's ``betas``)."""
    state: dict[int, dict] = {int(i): dict(rest) for i, rest in meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith(OPT_KEY):
            index, name = key[len(OPT_KEY):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    groups = [{k: tuple(v) if isinstance(fresh.get(k), tuple) else v for k, v in group.items()}
              for group, fresh in zip(meta["param_groups"], like["param_groups"])]
    return {"state": state, "param_groups": groups}


def _save_ckpt(ckpt_dir: Path, fingerprint: str, step: int, losses: list[float], lora: dict[str, torch.Tensor],
               opt_state: dict, prefix: str = LORA_KEY) -> None:
    """Tensors to ``state-<step>.safetensors`` (temp file, fsync, rename), then ``state.json`` naming it
    (atomically: the commit), then older tensors files are removed."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    opt_tensors, opt_meta = _flatten_optimizer(opt_state)
    tensors = {f"{prefix}{k}": v.detach().cpu().contiguous().clone() for k, v in lora.items()} | opt_tensors
    name = f"state-{step:09d}.safetensors"
    tmp = ckpt_dir / f".{name}.{os.getpid()}.tmp"
    save_file(tensors, str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, ckpt_dir / name)
    write_json_atomic(ckpt_dir / CKPT_STATE, {"format": CKPT_FORMAT, "fingerprint": fingerprint, "step": step,
                                              "losses": list(losses), "tensors": name, "optimizer": opt_meta})
    for old in ckpt_dir.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _load_ckpt(ckpt_dir: Path, fingerprint: str) -> dict | None:
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


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    resumed_from: int = 0
    seconds: float = 0.0


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def lm_loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, window_ids: torch.Tensor) -> torch.Tensor:
    """The mean next-token NLL of the batch (targets labelled -100 ignored)."""
    return model(input_ids=x, labels=labels, use_cache=False).loss


def train_lora(
    peft_model: nn.Module, ids: torch.Tensor, cfg: RecoverConfig, ignore_index: int | None = None,
    ckpt_dir: Path | None = None, fingerprint: str = "", progress: RecoverProgress | None = None,
    loss_fn: LossFn = lm_loss,
) -> TrainResult:
    """Train the model's trainable weights (the adapters; all of them with ``cfg.full``) on windows ``ids``
    ``[n, T]``: ``epochs`` passes in a seeded order, batches of ``batch_size``; ``loss_fn(model, x, labels,
    window indices)`` is the batch loss (:func:`lm_loss`, or distillation's).

    Dropout masks are seeded per step (a resumed run draws the same ones) inside a forked random
    state, so the caller's random state is the same afterwards.
    """
    with torch.random.fork_rng():
        return _train(peft_model, ids, cfg, ignore_index, ckpt_dir, fingerprint, progress, loss_fn)


def _train(peft_model: nn.Module, ids: torch.Tensor, cfg: RecoverConfig, ignore_index: int | None, ckpt_dir: Path | None,
           fingerprint: str, progress: RecoverProgress | None, loss_fn: LossFn) -> TrainResult:
    params = _trainable(peft_model)
    prefix = FULL_KEY if cfg.full else LORA_KEY
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=0.0)
    n = ids.shape[0]
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * per_epoch)
    result = TrainResult()
    state = _load_ckpt(ckpt_dir, fingerprint) if ckpt_dir is not None else None
    if state is not None:
        tensors = state["tensors"]
        lora = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if set(lora) != set(params):
            raise PrunekitError(f"the checkpoint in '{ckpt_dir}' holds other trained weights than this model's.",
                                "Pass `overwrite` to start over.")
        with torch.no_grad():
            for name, value in lora.items():
                params[name].copy_(value)
        opt.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"], opt.state_dict()))
        result.losses = list(state["losses"])
        result.resumed_from = result.steps = int(state["step"])
    device = next(iter(params.values())).device
    t0 = time.perf_counter()
    peft_model.train()
    step = result.steps
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        for b in range(per_epoch):
            global_step = epoch * per_epoch + b
            if global_step < step:
                continue
            if global_step >= total:
                break
            torch.manual_seed(cfg.seed * 1_000_003 + global_step)  # LoRA dropout: the same masks when resumed
            picked = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x = ids[picked].to(device)
            labels = x.clone()
            if ignore_index is not None:
                labels[labels == ignore_index] = -100
            loss = loss_fn(peft_model, x, labels, picked)
            if not torch.isfinite(loss):
                raise PrunekitError(f"the training loss became {float(loss)} at step {global_step + 1}.", "Use a smaller `lr` or `dtype` float32.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step = global_step + 1
            result.losses.append(float(loss.detach()))
            if progress:
                progress("recover", step, total, {"loss": result.losses[-1], "epoch": epoch + 1})
            end_of_epoch = b == per_epoch - 1
            if ckpt_dir is not None and (step % cfg.save_every == 0 or end_of_epoch) and step < total:
                _save_ckpt(ckpt_dir, fingerprint, step, result.losses, params, opt.state_dict(), prefix)
    peft_model.eval()
    result.steps = step
    result.seconds = time.perf_counter() - t0
    return result


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


def load_teacher(spec: str, student: LoadedModel, dtype: str, device: str | None, topk: int = 0) -> Teacher:
    """The distillation teacher ``spec`` (the plan's base model by default), checked to share the student's vocabulary."""
    model = load_model(spec, dtype=dtype, device=device).model
    if model.config.vocab_size != student.model.config.vocab_size:
        raise PrunekitError(f"the teacher '{spec}' has a vocabulary of {model.config.vocab_size}, the pruned model "
                            f"{student.model.config.vocab_size}.", "Give `teacher` the base model the plan was made from.")
    return Teacher(model.to(next(student.model.parameters()).device), topk=topk)


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
    pruned: str | Path, cfg: RecoverConfig, out: str | Path, overwrite: bool = False, dtype: str = "float32",
    device: str | None = None, progress: RecoverProgress | None = None,
) -> dict:
    """Train a pruned model directory (LoRA, merged; or in full), write ``out``; returns the run's report (also in ``recover.json``)."""
    src = Path(pruned)
    if not (src.is_dir() and (src / "plan.json").exists()):
        raise PrunekitError(f"'{pruned}' is not a prunekit output directory (no plan.json).", "Give the `out` directory of prunekit prune.")
    out = Path(out)
    ckpt = prepare_output(src, out, overwrite)
    loaded = load_model(str(src), dtype=dtype, device=device)
    plan = loaded.info["plan"]
    if loaded.tokenizer is None:
        raise PrunekitError(f"'{src}' has no tokenizer files.", "Re-run the pruning; it saves the tokenizer beside the weights.")
    max_pos = getattr(loaded.model.config, "max_position_embeddings", None)
    windows, source = training_windows(loaded.tokenizer, cfg, max_pos)
    fingerprint = options_hash({"plan": plan, "options": cfg.as_dict(), "source": source, "data": windows.fingerprint()})
    before = _held_out(loaded, cfg, progress, "held-out before")
    params = loaded.adapter.total_params()
    loss_fn, teacher = lm_loss, None
    if cfg.distill:
        teacher = load_teacher(cfg.teacher or plan["model"]["spec"], loaded, dtype, device, cfg.distill_topk)
        loss_fn = distill_loss(teacher, cfg.distill_alpha)
    if cfg.full:
        model = loaded.model
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        model = attach_lora(loaded.model, loaded.adapter, cfg)
    trained = train_lora(model, windows.ids, cfg, loaded.model.config.pad_token_id, ckpt, fingerprint, progress, loss_fn)
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
    save_pruned(done, new_plan, out, overwrite=True, extra_files={"recover.json": report})
    return report
