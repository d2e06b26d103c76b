"""The options of ``prunekit recover`` (:class:`RecoverConfig`), checked on construction; the recipe
(:mod:`prunekit.pipeline.recover`), its data (:mod:`~prunekit.pipeline.recover_data`) and its training loop
(:mod:`~prunekit.pipeline.recover_train`) all read them from here."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from prunekit.core.errors import PrunekitError


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
