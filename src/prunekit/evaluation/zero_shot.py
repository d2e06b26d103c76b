"""Zero-shot accuracy through lm-eval's own tasks, on the in-memory (pruned) model.

The tasks are lm-eval's (no re-implementation): ``HFLM(pretrained=<the model instance>)`` wraps the
pruned model as it is in memory, and ``simple_evaluate`` runs the tasks with ``num_fewshot=0``.
Reported per task: ``acc`` (the fraction of items whose highest-log-likelihood choice is the
gold one) and ``acc_norm`` (the same with each choice's log-likelihood divided by its length in
bytes), both as lm-eval computes them, and their averages over the tasks, as the BlockPruner and
LLM-Pruner papers report them (PIQA, WinoGrande, HellaSwag, ARC-e, ARC-c).

Datasets come from the Hugging Face hub (and its local cache). When the hub cannot be reached,
the hub datasets that are not cached are named in one error at once, before any download is
tried, instead of minutes of retries; when they are all cached, the evaluation runs with the hub's offline
switches set (restored afterwards, :func:`prunekit.core.hub.hub_offline`). Local task YAMLs (``task_dir``; e.g. ``dataset_path: json``
over a JSONL file) need no network; the tests use one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from prunekit.core.errors import PrunekitError, suggest
from prunekit.core.hub import HUB_HOST, hub_offline, hub_reachable
from prunekit.models.loading import LoadedModel

PAPER_TASKS = ("piqa", "winogrande", "hellaswag", "arc_easy", "arc_challenge")
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}


class PreparedTasks(NamedTuple):
    """Checked task names, lm-eval's ``TaskManager`` for them, and whether to run offline (the hub is not
    reachable and every hub dataset the tasks need is cached)."""

    tasks: list[str]
    manager: Any
    offline: bool


def _lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise PrunekitError("zero-shot evaluation needs lm-eval, which is not installed.",
                            "Install it with: pip install 'prunekit[eval]' (or pip install lm-eval).") from None
    return simple_evaluate, HFLM, TaskManager


def _cached(dataset_path: str) -> bool:
    """Whether a hub dataset has a local copy in the datasets or hub cache."""
    try:
        import datasets.config as dc
        from huggingface_hub import constants

        roots = [(Path(dc.HF_DATASETS_CACHE), dataset_path.replace("/", "___")),
                 (Path(constants.HF_HUB_CACHE), "datasets--" + dataset_path.replace("/", "--"))]
    except (ImportError, AttributeError):  # pragma: no cover
        return False
    return any((root / name).is_dir() for root, name in roots)


def _hub_dataset(cfg: dict) -> str | None:
    path = cfg.get("dataset_path")
    if not path or path in LOCAL_BUILDERS or Path(str(path)).exists():
        return None
    return str(path)


def resolve_tasks(task_manager, tasks: list[str]) -> dict[str, str | None]:
    """Task name -> the hub dataset it needs (None for local data); unknown names are refused."""
    known = set(task_manager.all_tasks)
    out = {}
    for name in tasks:
        if name not in known:
            raise PrunekitError(f"`tasks` '{name}' is not an lm-eval task.{suggest(name, known)}",
                                f"Use lm-eval task names, e.g. {','.join(PAPER_TASKS)}, or add `task_dir` with your YAMLs.")
        out[name] = _hub_dataset(task_manager.task_index[name].cfg)
    return out


def _check_fetchable(needs: dict[str, str | None]) -> bool:
    """Refuse hub datasets that can be had neither from the hub nor from the cache; True when the run should be
    offline (the hub is not reachable, and all of them are cached: no retries)."""
    hub = {t: d for t, d in needs.items() if d is not None}
    if not hub or hub_reachable():
        return False
    missing = {t: d for t, d in hub.items() if not _cached(d)}
    if missing:
        listed = ", ".join(f"{t} ({d})" for t, d in missing.items())
        raise PrunekitError(
            f"could not fetch the datasets of {listed}: the Hugging Face hub ({HUB_HOST}) is not reachable and they are not cached.",
            "Run once with network access (they are cached under ~/.cache/huggingface), or give local task YAMLs with `task_dir`.",
        )
    return True


def prepare_tasks(tasks: list[str] | tuple[str, ...], task_dir: str | Path | None = None, limit: int | None = None) -> PreparedTasks:
    """Validate the task names and options and check the data can be had, before any model is loaded.

    Returns the :class:`PreparedTasks`; raises a PrunekitError naming what is wrong.
    """
    _, _, TaskManager = _lm_eval()
    tasks = [t.strip() for t in tasks if t and t.strip()]
    if not tasks:
        raise PrunekitError("`tasks` names no task.", f"For example `tasks` {','.join(PAPER_TASKS)}.")
    if limit is not None and limit < 1:
        raise PrunekitError(f"`limit` {limit} asks for no items.", "Use `limit` 1 or more, or leave it out.")
    if task_dir is not None and not Path(task_dir).is_dir():
        raise PrunekitError(f"`task_dir` '{task_dir}' is not a directory.", "Give the directory holding your task YAMLs.")
    manager = None
    if task_dir is not None:  # indexing only the user's YAMLs is much faster than lm-eval's 200+ task folders
        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        if not set(tasks) <= set(manager.all_tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=str(task_dir) if task_dir else None)
    offline = _check_fetchable(resolve_tasks(manager, tasks))
    return PreparedTasks(tasks, manager, offline)


def zero_shot(
    loaded: LoadedModel, tasks: list[str] | tuple[str, ...] = PAPER_TASKS, *, limit: int | None = None,
    batch_size: int = 8, task_dir: str | Path | None = None, prepared: PreparedTasks | None = None,
) -> dict:
    """lm-eval zero-shot accuracies of the in-memory model.

    Returns ``{"tasks": {name: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "samples"}},
    "average_acc", "average_acc_norm", "limit"}``; ``acc_norm`` is None for tasks without it, and
    the averages are over the tasks that report the metric. ``prepared``: the result of
    :func:`prepare_tasks` for these arguments, when the caller checked them already.
    """
    simple_evaluate, HFLM, _ = _lm_eval()
    tasks, manager, offline = prepared or prepare_tasks(tasks, task_dir, limit)
    if loaded.tokenizer is None:
        raise PrunekitError("the model has no tokenizer, which lm-eval needs.", "Load a model directory that holds its tokenizer.")
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size, device=str(loaded.device))
    try:
        with hub_offline(offline):  # cached data: no retries; the switches are restored afterwards
            out = simple_evaluate(
                model=lm, tasks=tasks, num_fewshot=0, limit=limit, task_manager=manager, log_samples=False,
                bootstrap_iters=1000, verbosity="ERROR",
            )
    except (ConnectionError, OSError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise PrunekitError(f"lm-eval could not load the data of {','.join(tasks)}: {first}.",
                            "Check the network, or the dataset files named in the task YAMLs.") from None
    return summarize(out, tasks, limit)


def summarize(out: dict, tasks: list[str], limit: int | None) -> dict:
    """acc / acc_norm per task and their averages from a ``simple_evaluate`` result."""
    results = out["results"]
    n_samples = out.get("n-samples", {})
    table = {}
    for name in tasks:
        r = results.get(name, {})
        table[name] = {
            "acc": r.get("acc,none"), "acc_stderr": r.get("acc_stderr,none"),
            "acc_norm": r.get("acc_norm,none"), "acc_norm_stderr": r.get("acc_norm_stderr,none"),
            "samples": (n_samples.get(name) or {}).get("effective"),
        }
    accs = [v["acc"] for v in table.values() if v["acc"] is not None]
    norms = [v["acc_norm"] for v in table.values() if v["acc_norm"] is not None]
    return {
        "tasks": table, "limit": limit,
        "average_acc": sum(accs) / len(accs) if accs else None,
        "average_acc_norm": sum(norms) / len(norms) if norms else None,
    }
