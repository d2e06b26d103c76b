"""Pruning masks learned by a policy gradient, without back-propagation (Gao et al., arXiv 2406.10576).

:func:`plan_policy_gradient` is what ``prunekit prune --method policy-gradient`` runs:

1. the units (:mod:`.masks`): KV groups and MLP channels of every layer in ``layers`` (default: all),
   with ``units='mixed'`` also whole attention and MLP blocks; a keep probability θ per unit;
2. θ's initialisation (:func:`initial_theta`): Wanda-sp scores, Taylor scores (LLM-Pruner's
   ``param_first``) or uniform, per family z-scored, squashed and shifted to the keep ratio, then projected;
3. ``steps`` SGD steps: ``masks`` Bernoulli masks drawn from a ``torch.Generator`` seeded by ``seed``, their
   losses from ONE batched forward on the engine's batch ``t mod n_batches``, the baseline, the estimate,
   ``θ ← project(θ − η_t g)`` (:mod:`.pg_math`); journaled every ``journal_every`` steps (:mod:`.pg_journal`);
4. the final mask (:func:`final_choice`): the lowest θ removed, per kind up to its budget (``width``: KV
   groups and channels separately, pooled over layers) or under one parameter budget (``mixed``); every
   kept block keeps at least one KV group and one channel. Nothing is sampled at the end.

The plan is an ordinary llm-pruner-style plan: ``removed`` lists the removed blocks (``mixed``) and
``width`` the kept KV groups / channels per layer, plus ``width.theta`` (θ's final values per unit).

Budgets. ``ratio`` R is a fraction of the model's total parameters P (with ``ratio_of`` decoder, P is the
decoder layers' parameters). ``width``: the fraction ``r = R·P / P_u`` of the units' parameters ``P_u``
is removed from each kind: ``round(r · n_kind)`` structures, so the projection keeps
``Σ_kind θ ≤ n_kind − round(r · n_kind)``. ``mixed``: one budget
``Σ c_i θ_i ≤ Σ c_i − R·P`` over all units (``c``: parameters each removes alone from the dense model).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from prunekit.core.errors import PrunekitError
from prunekit.data.calibration import CalibConfig, calibration_record, calibration_windows
from prunekit.engine.onload import Onloader
from prunekit.engine.ranks import Ranks
from prunekit.engine.runner import Engine
from prunekit.methods.options import base_name, ratio_base
from prunekit.methods.width.importance import collect_gradients, family_scores, needed_parameters
from prunekit.methods.width.llm_pruner import RATIO_IS, WidthOutcome, refuse_pruned, width_record
from prunekit.methods.width.masks import BLOCK, CHANNEL, HEAD, KIND_NAMES, MaskedForward, Units, build_units, wanda_scores
from prunekit.methods.width.options import parse_layers
from prunekit.methods.width.pg_journal import PolicyJournal, PolicyState
from prunekit.methods.width.pg_math import cosine_lr, draw_masks, estimate, init_from_scores, project, update_baseline
from prunekit.methods.width.pg_options import PolicyConfig
from prunekit.methods.width.select import Choice
from prunekit.models.contract import Block
from prunekit.models.loading import LoadedModel
from prunekit.plan.schema import Plan, build_plan, model_record

#: ``progress(stage, done, total, info)``; ``info``: ``loss`` (the step's mean), ``baseline``, ``kept`` (Σ c θ / Σ c).
ProgressFn = Callable[..., None]
STAGE = "policy-gradient"


class Budget:
    """The projection's budgets and the final choice's removal targets (see the module docstring)."""

    def __init__(self, units: Units, total: int, ratio: float, mixed: bool, *, of: str = "the parameters") -> None:
        """``total``: the parameters ``ratio`` is a fraction of (all, or the decoder layers'); ``of`` names them."""
        self.units, self.mixed = units, mixed
        self.target = ratio * total  # parameters to remove
        unit_params = sum(f.n * f.params_per_structure for f in units.families)
        smallest = float(units.cost.min()) if units.n else math.inf
        if self.target < smallest / 2:
            raise PrunekitError(f"`ratio` {ratio} is below what one unit removes ({smallest / total:.4f} of {of}).",
                                "Use a larger `ratio`.")
        if mixed:
            self.keep_mass = float(units.cost.sum()) - self.target
            if self.keep_mass <= 0:
                raise PrunekitError(f"`ratio` {ratio} removes more than the units of `layers` hold.", "Use a smaller `ratio`.")
            self.remove = {}
            return
        r = self.target / unit_params
        self.remove, self.keep_count = {}, {}
        for k in (HEAD, CHANNEL):
            n = int((units.kind == k).sum())
            fams = [f for i, f in enumerate(units.families) if int(units.kind[units.offsets[i]]) == k]
            self.remove[k] = int(math.floor(r * n + 0.5))
            self.keep_count[k] = n - self.remove[k]
            if fams and self.keep_count[k] < len(fams):  # every family keeps one structure
                most = (n - len(fams)) / n * unit_params / total
                raise PrunekitError(f"`ratio` {ratio} would remove every {KIND_NAMES[k][:-1]} of some layer (a fraction {r:.3f} of them).",
                                    f"Use `ratio` {math.floor(most * 100) / 100} or less, or `units` mixed.")

    def keep_ratio(self) -> float:
        """The mean keep probability of the width units the budget implies."""
        if self.mixed:
            return self.keep_mass / float(self.units.cost.sum())
        n = sum(int((self.units.kind == k).sum()) for k in self.keep_count)
        return sum(self.keep_count.values()) / max(n, 1)

    def project(self, theta: torch.Tensor) -> torch.Tensor:
        if self.mixed:
            return project(theta, self.keep_mass, self.units.cost)
        out = theta.clone()
        for k, keep in self.keep_count.items():
            sel = self.units.kind == k
            if sel.any():
                out[sel] = project(theta[sel], float(keep))
        return out

    def kept_fraction(self, theta: torch.Tensor) -> float:
        """Σ c θ / Σ c: the expected share of the units' parameters kept (blocks' and width units' added in ``mixed``)."""
        return float((self.units.cost * theta).sum() / self.units.cost.sum())


def initial_theta(loaded: LoadedModel, engine: Engine, units: Units, config: PolicyConfig, budget: Budget, *,
                  windows_ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    """θ before the first step (projected onto the budget), and the dense model's mean NLL on the calibration windows."""
    scores, dense_loss = wanda_scores(engine, units)
    if config.init == "taylor":
        stats = collect_gradients(loaded.model, windows_ids[:config.samples], needed_parameters(units.families), False,
                                  ignore_index=loaded.model.config.pad_token_id)
        scores = [family_scores(f, "param_first", "sum", stats) for f in units.families]
    q = budget.keep_ratio()
    theta = torch.empty(units.n, dtype=torch.float64)
    for i, fam in enumerate(units.families):
        s = torch.zeros(fam.n, dtype=torch.float64) if config.init == "uniform" else scores[i]
        theta[units.span(i)] = init_from_scores(s, q)
    theta[units.kind == BLOCK] = (1.0 + q) / 2  # prunekit's prior for whole blocks: half as likely removed
    return budget.project(theta), dense_loss


def _family_of_block(units: Units) -> dict[Block, int]:
    return {Block.of(f.layer, f.kind): i for i, f in enumerate(units.families)}


def final_choice(theta: torch.Tensor, units: Units, budget: Budget, adapter) -> tuple[list[list[int]], list[Block]]:
    """Removed structures per family and removed blocks: the lowest θ first (ties: lower position), see the module docstring."""
    owners = [(i, s) for i, f in enumerate(units.families) for s in range(f.n)]
    fam_of = _family_of_block(units)
    removed: list[set[int]] = [set() for _ in units.families]
    left = [f.n for f in units.families]
    blocks: list[Block] = []
    done = dict.fromkeys(budget.remove, 0)
    mass = 0.0
    smallest = float(units.cost.min())
    for pos in torch.sort(theta, stable=True).indices.tolist():
        kind = int(units.kind[pos])
        if kind == BLOCK:
            b = units.blocks[pos - units.offsets[-1]]
            i = fam_of.get(b)
            size = adapter.block_params(b) - (len(removed[i]) * units.families[i].params_per_structure if i is not None else 0)
        else:
            i, s = owners[pos]
            fam = units.families[i]
            if left[i] <= 1 or Block.of(fam.layer, fam.kind) in blocks:
                continue
            size = fam.params_per_structure
        if budget.mixed:
            if budget.target - mass < smallest / 2:
                break
            if mass + size > budget.target + size / 2:
                continue
        elif done[kind] >= budget.remove[kind]:
            continue
        if kind == BLOCK:
            blocks.append(b)
        else:
            removed[i].add(s)
            left[i] -= 1
            done[kind] = done.get(kind, 0) + 1
        mass += size
    gone = {fam_of[b] for b in blocks if b in fam_of}
    return [[] if i in gone else sorted(r) for i, r in enumerate(removed)], blocks


def theta_record(theta: torch.Tensor, units: Units) -> list[dict]:
    """θ's final values per layer (6 decimals): ``kv_groups``, ``mlp_channels``, ``attn_block``, ``mlp_block``."""
    rows: dict[int, dict] = {}
    for i, fam in enumerate(units.families):
        key = "kv_groups" if units.kind[units.offsets[i]] == HEAD else "mlp_channels"
        rows.setdefault(fam.layer, {"layer": fam.layer})[key] = [round(float(v), 6) for v in theta[units.span(i)]]
    for b in units.blocks:
        rows.setdefault(b.layer, {"layer": b.layer})[f"{b.kind}_block"] = round(float(theta[units.block_pos(b)]), 6)
    return [rows[k] for k in sorted(rows)]


def make_plan(loaded: LoadedModel, config: PolicyConfig, units: Units, theta: torch.Tensor, *, budget: Budget, record: dict,
              calibration: dict, dense_loss: float) -> Plan:
    """The plan of the final mask of ``theta`` (:func:`final_choice`): removed blocks as steps, kept structures as ``width``."""
    adapter = loaded.adapter
    removed, blocks = final_choice(theta, units, budget, adapter)
    width_removed = sum(len(r) * f.params_per_structure for r, f in zip(removed, units.families))
    layers = f"{units.families[0].layer}:{units.families[-1].layer + 1}"
    width = width_record(units.families, Choice(removed, width_removed), "block", adapter) | {
        "units": config.units, "theta": theta_record(theta, units),
        "removed_per_kind": {KIND_NAMES[k]: n for k, n in _counts(removed, blocks, units).items()},
    }
    steps = [(adapter.block_params(b), {"step": i, "unit": str(b), "blocks": [b.index], "value": None,
                                        "score": round(float(theta[units.block_pos(b)]), 6)}) for i, b in enumerate(blocks)]
    options = config.as_dict() | {"layers": layers, "ratio_is": f"fraction of {RATIO_IS[config.ratio_of]}"}
    return build_plan(STAGE, options, record, calibration, adapter.total_params(), steps=steps, width=width,
                      params_removed=width_removed, dense_value=math.exp(dense_loss), decoder_params=adapter.decoder_params())


def run_steps(fwd: MaskedForward, state: PolicyState, config: PolicyConfig, budget: Budget, *, journal: PolicyJournal | None,
              progress: ProgressFn | None = None) -> PolicyState:
    """Steps ``state.step + 1 .. config.steps`` (1-based) from ``state``; the state after the last."""
    gen = torch.Generator().manual_seed(config.seed)
    gen.set_state(state.generator)
    theta, baseline = state.theta.clone(), state.baseline
    for t in range(state.step, config.steps):  # 0-based step index t is step t + 1
        masks = draw_masks(theta, config.masks, gen)
        losses = fwd.losses(t % fwd.engine.n_batches, masks)
        baseline, weight = update_baseline(baseline, losses)
        g = estimate(losses, masks, theta, baseline, weight=weight, kind=config.estimator)
        theta = budget.project(theta - cosine_lr(config.lr, t, config.steps) * g)
        state = PolicyState(theta, baseline, t + 1, gen.get_state(), state.dense_loss)
        mean = float(losses.mean())
        if journal is not None and ((t + 1) % config.journal_every == 0 or t + 1 == config.steps):
            journal.write(state, mean)
        if progress:
            progress(STAGE, t + 1, config.steps, {"loss": mean, "baseline": baseline, "kept": budget.kept_fraction(theta)})
    return state


def plan_policy_gradient(
    loaded: LoadedModel, config: PolicyConfig, calib: CalibConfig, progress: ProgressFn | None = None, *,
    gradients: object = None, journal_dir: str | Path | None = None, resume: bool = False,
    ranks: Ranks | None = None, onload: Onloader | None = None,
) -> WidthOutcome:
    """The plan of a policy-gradient run on ``loaded`` (left as it is); the signature is the width methods' one.

    ``journal_dir``: journal the run there (``resume``: continue the one there, same inputs or refused).
    ``gradients`` (shared llm-pruner gradients), ``ranks`` spread over several processes and ``onload``
    (a memory cap) do not apply and are refused."""
    if gradients is not None or onload is not None or (ranks is not None and ranks.spread):
        raise PrunekitError("policy-gradient runs in one process on one device, without shared gradients or a memory cap.",
                            "Run it alone: no torchrun ranks, no `max_memory`.")
    refuse_pruned(loaded)
    t0 = time.perf_counter()
    adapter = loaded.adapter
    start, end = (0, adapter.num_layers) if config.layers is None else parse_layers(config.layers, adapter.num_layers)
    units = build_units(adapter, start, end, config.units == "mixed")
    budget = Budget(units, ratio_base(adapter, config.ratio_of), config.ratio, config.units == "mixed", of=base_name(config.ratio_of))
    windows = calibration_windows(loaded, calib)
    ignore = loaded.model.config.pad_token_id
    calibration = calibration_record(windows, calib.batch_size, ignore)
    engine = Engine(adapter, windows, calib.batch_size, ignore_index=ignore, cache_bytes=0)
    record = model_record(loaded)
    fingerprint = {"model": record["weights_sha256"], "calibration": calibration, "options": config.as_dict()}
    journal = PolicyJournal(Path(journal_dir), fingerprint, resume) if journal_dir is not None else None
    state = journal.start() if journal is not None else None
    resumed = state.step if state is not None else None
    if state is None:
        theta, dense_loss = initial_theta(loaded, engine, units, config, budget, windows_ids=windows.ids)
        state = PolicyState(theta, None, 0, torch.Generator().manual_seed(config.seed).get_state(), dense_loss)
        if journal is not None:
            journal.write(state, None)
    t_steps = time.perf_counter()
    state = run_steps(MaskedForward(engine, units), state, config, budget, journal=journal, progress=progress)
    step_seconds = time.perf_counter() - t_steps
    plan = make_plan(loaded, config, units, state.theta, budget=budget, record=record, calibration=calibration,
                     dense_loss=state.dense_loss)
    done = config.steps - (resumed or 0)
    timing = {"search_seconds": time.perf_counter() - t0, "step_seconds": step_seconds, "steps_run": done,
              "seconds_per_step": step_seconds / done if done else None, "resumed_at_step": resumed,
              "forward_work": engine.counter.as_dict()}
    return WidthOutcome(plan, timing, journal.path if journal is not None else None)


def _counts(removed: list[list[int]], blocks: list[Block], units: Units) -> dict[int, int]:
    out = {HEAD: 0, CHANNEL: 0, BLOCK: len(blocks)}
    for i, r in enumerate(removed):
        out[int(units.kind[units.offsets[i]])] += len(r)
    return out
