"""prunekit: structured pruning of causal language models, without training, with proof of what
it cost and saved. See README.md and docs/ARCHITECTURE.md."""

from prunekit.core.errors import PrunekitError
from prunekit.data.calibration import CalibConfig
from prunekit.evaluation.perplexity import perplexity
from prunekit.methods.depth.patch import PatchConfig
from prunekit.methods.options import DepthConfig
from prunekit.methods.width.options import WidthConfig
from prunekit.models.loading import LoadedModel, wrap_model
from prunekit.pipeline.load import load_model
from prunekit.pipeline.prune import PruneResult, evaluate, prune, prune_width
from prunekit.plan.apply import apply_plan, load_pruned, save_pruned
from prunekit.plan.patch import read_patch
from prunekit.plan.schema import read_plan

__version__ = "0.1.0"
__all__ = [
    "CalibConfig", "DepthConfig", "LoadedModel", "PatchConfig", "PruneResult", "PrunekitError", "apply_plan", "evaluate",
    "load_model", "load_pruned", "perplexity", "prune", "prune_width", "read_patch", "read_plan", "save_pruned", "WidthConfig",
    "wrap_model",
]
