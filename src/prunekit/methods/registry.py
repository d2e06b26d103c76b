"""The one table of pruning methods and what each can do.

Every method, depth or width, is one :class:`Method` row: the units it removes, the criterion
that decides, the search variants it accepts and whether it needs gradients. The CLI, ``prune``
and ``compare`` read this table alone; nothing else lists methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prunekit.core.errors import PrunekitError, check_choice
from prunekit.methods.depth import baselines
from prunekit.methods.depth.blockpruner import blockpruner
from prunekit.methods.depth.budget import budget_greedy, budget_greedy_lookahead, budget_greedy_mac
from prunekit.methods.options import DepthConfig, parse_search
from prunekit.methods.width.llm_pruner import plan_width
from prunekit.methods.width.options import WidthConfig
from prunekit.methods.width.policy_gradient import plan_policy_gradient

BLOCKS = ("mix", "attn", "mlp")  # block units, chosen by `blocks_kind`
GREEDY_SEARCHES = ("greedy", "beam", "greedy+swap")  # as parse_search names them


@dataclass(frozen=True)
class Method:
    """A pruning method's capabilities and its entry point.

    ``units``: what it removes (``BLOCKS``: attention / MLP blocks as ``blocks_kind`` says;
    ``("layer",)``: whole layers; ``("mix+layers",)``: blocks and whole layers; width methods: the coupled structures); ``criterion``: what
    decides; ``searches``: the search variants it accepts (one-shot methods: ``("greedy",)``
    only, i.e. none); ``needs_gradients``: whether it takes a backward pass (llm-pruner: with a
    Taylor importance); ``run``: a depth method's ``(loaded, engine, units, stop, depth, ...) ->
    DepthOutcome`` or the width planner ``plan_width``; ``stepwise``: a depth method whose work is in
    its steps (a greedy search: resumed from its finished steps, ``start``, it continues where it
    stopped), so journaling them saves a killed run's work (one-shot methods rank every unit first).
    """

    name: str
    kind: str  # "depth" or "width"
    units: tuple[str, ...]
    criterion: str
    searches: tuple[str, ...]
    needs_gradients: bool
    run: Callable
    paper: str
    stepwise: bool = False

    def unit_kind(self, blocks_kind: str = "mix") -> str:
        """The unit kind a depth run searches: the method's own, or ``blocks_kind`` for block methods."""
        return blocks_kind if self.units == BLOCKS else self.units[0]

    def check(self, config: DepthConfig | WidthConfig) -> None:
        """Refuse options this method cannot honour."""
        wanted = WidthConfig if self.kind == "width" else DepthConfig
        if not isinstance(config, wanted):
            raise PrunekitError(f"`method` {self.name} is a {self.kind} method, given a {type(config).__name__}.",
                                f"Give its options as a {wanted.__name__}.")
        if isinstance(config, DepthConfig) and parse_search(config.search)[0] not in self.searches:
            greedy = [m.name for m in METHODS.values() if len(m.searches) > 1]
            raise PrunekitError(
                f"`search` {config.search} applies to the greedy methods ({', '.join(greedy)}); '{self.name}' ranks units in one shot.",
                "Drop `search`, or use `method` blockpruner.",
            )


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("blockpruner", "depth", BLOCKS, "ppl", GREEDY_SEARCHES, False, blockpruner, "arXiv 2406.10594", True),
    Method("sleb", "depth", ("layer",), "ppl", GREEDY_SEARCHES, False, baselines.sleb, "arXiv 2402.09025", True),
    Method("shortgpt", "depth", ("layer",), "block_influence", ("greedy",), False, baselines.shortgpt, "arXiv 2403.03853"),
    Method("layer-ppl", "depth", ("layer",), "ppl", ("greedy",), False, baselines.layer_ppl, "arXiv 2402.02834"),
    Method("taylor", "depth", ("layer",), "taylor", ("greedy",), True, baselines.taylor, "arXiv 2402.02834"),
    Method("relative-magnitude", "depth", BLOCKS, "relative_magnitude", ("greedy",), False,
           baselines.relative_magnitude_method, "Samragh et al. 2023"),
    Method("blockpruner-oneshot", "depth", BLOCKS, "ppl", ("greedy",), False, baselines.blockpruner_oneshot, "arXiv 2406.10594"),
    Method("finercut", "depth", BLOCKS, "js", GREEDY_SEARCHES, False, baselines.finercut, "arXiv 2405.18218", True),
    Method("budget-greedy", "depth", ("mix+layers",), "ppl_rise_per_param", ("greedy",), False, budget_greedy,
           "prunekit (issue 16)", True),
    Method("budget-greedy-mac", "depth", ("mix+layers",), "ppl_rise_per_mac", ("greedy",), False, budget_greedy_mac,
           "prunekit (issue 16)", True),
    Method("budget-greedy-la", "depth", ("mix+layers",), "ppl_rise_per_param", ("greedy",), False,
           budget_greedy_lookahead, "prunekit (issue 16)", True),
    Method("llm-pruner", "width", ("kv groups", "mlp channels", "hidden channels"), "taylor importance (`importance`)",
           (), True, plan_width, "arXiv 2305.11627"),
    Method("policy-gradient", "width", ("kv groups", "mlp channels", "blocks"), "lm loss of sampled masks", (), False,
           plan_policy_gradient, "arXiv 2406.10576"),
)}


def get_method(name: str) -> Method:
    """The method called ``name``, or a refusal listing the known ones."""
    return METHODS[check_choice("`method`", name, sorted(METHODS))]


def method_for(config: DepthConfig | WidthConfig) -> Method:
    """The method ``config`` runs, checked against what it can do."""
    method = get_method(config.method)
    method.check(config)
    return method


def depth_methods() -> list[str]:
    return [m.name for m in METHODS.values() if m.kind == "depth"]
