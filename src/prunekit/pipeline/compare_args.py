"""``prunekit compare``'s arguments: the methods (each with its search) and the ratios, checked before any model loads."""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.core.errors import PrunekitError, check_choice
from prunekit.methods.options import DepthConfig
from prunekit.methods.registry import METHODS, get_method
from prunekit.pipeline.compare_width import check_variant


@dataclass(frozen=True)
class MethodSpec:
    """A method and the search it runs: ``blockpruner``, ``blockpruner/beam:3``, ``sleb/greedy+swap``; ``patch``: the
    cells of that method's plans with a linear patch fitted (``compare --patch linear``)."""

    method: str
    search: str = "greedy"
    patch: str | None = None

    @property
    def name(self) -> str:
        name = self.method if self.search == "greedy" else f"{self.method}/{self.search}"
        return name if self.patch is None else f"{name} + {self.patch} patch"

    @property
    def slug(self) -> str:
        base = self.method if self.search == "greedy" else f"{self.method}/{self.search}"
        return base.replace("/", "__").replace(":", "-").replace("+", "-") + ("" if self.patch is None else f"__patch-{self.patch}")


def parse_methods(text: str) -> list[MethodSpec]:
    """``--methods a,b/beam:3,...`` -> specs; unknown names and searches are refused with the fix."""
    specs = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        method, _, search = item.partition("/")
        check_choice("`methods`", method, sorted(METHODS))
        search = search or "greedy"
        if get_method(method).kind == "width":
            check_variant(search)  # llm-pruner/IMPORTANCE
        else:
            get_method(method).check(DepthConfig(method=method, ratio=0.1, search=search))  # the search fits the method
        specs.append(MethodSpec(method, search))
    if not specs:
        raise PrunekitError("`methods` is empty.", "Give a comma-separated list, e.g. `methods` blockpruner,sleb,shortgpt.")
    if len({s.name for s in specs}) != len(specs):
        raise PrunekitError(f"`methods` '{text}' names a method twice.", "Give each method once.")
    return specs


def parse_ratios(text: str) -> list[float]:
    """``--ratios 0.1,0.2,0.3`` -> sorted distinct fractions in (0, 1)."""
    try:
        ratios = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise PrunekitError(f"`ratios` '{text}' is not a list of numbers.", "Use e.g. `ratios` 0.1,0.2,0.3.") from None
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise PrunekitError(f"`ratios` '{text}' needs fractions in (0, 1).", "Use e.g. `ratios` 0.1,0.2,0.3.")
    return sorted(set(ratios))
