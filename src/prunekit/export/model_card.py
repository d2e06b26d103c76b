"""The model card of an ``hf`` export: ``README.md`` with the Hub's YAML metadata, what was pruned and how to load it.

The front matter holds ``base_model`` (the base spec when it is a hub id, or the hub id of the embedded
model), ``library_name: transformers``, ``pipeline_tag``, ``tags`` (``pruned``, ``prunekit``, the method) and
the base model's ``license`` when prunekit can know it without the network: a GGUF's ``general.license``
(the embedded model, a ``.gguf`` spec), the front matter of a local checkpoint's README.md, or that of a
hub model's README.md already in the Hugging Face cache. The body gives the method and its options, the
parameters before and after, what was removed (read from the export's own per-layer geometry, so it is
true for any pruning), the calibration perplexity of the search, the held-out perplexities when the pruned
output has them (a ``recover`` run measures them before and after training), and how to load the export
(``trust_remote_code=True`` for the per-layer layout, whose code files are named).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from huggingface_hub import try_to_load_from_cache

from prunekit.core.errors import PrunekitError
from prunekit.export.layout import ModelLayout
from prunekit.models.loading import EMBEDDED, EMBEDDED_HUB_IDS, LoadedModel, embedded_gguf, gguf_reader

CARD = "README.md"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PPL_CRITERIA = ("ppl", "ppl_rise_per_param", "ppl_rise_per_mac")  # criteria whose step values are perplexities


def base_spec(loaded: LoadedModel) -> str | None:
    """The spec of the base model: the plan's for a pruned output, else the loaded spec (None when in memory)."""
    plan = loaded.info.get("plan") or {}
    spec = (plan.get("model") or {}).get("spec") or loaded.spec
    return None if not spec or spec.startswith("<") else str(spec)


def base_model_id(spec: str | None) -> str | None:
    """The hub id of the base model: ``spec`` itself when it names one (and no local path), the embedded model's id."""
    if spec in EMBEDDED_HUB_IDS:
        return EMBEDDED_HUB_IDS[spec]
    if spec and HUB_ID.fullmatch(spec) and not Path(spec).expanduser().exists():
        return spec
    return None


def _front_matter(text: str) -> dict:
    """The YAML front matter of a model card ({} when it has none or it does not parse)."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        meta = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _card_license(path: Path | str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    try:
        value = _front_matter(Path(path).read_text(encoding="utf-8")).get("license")
    except (OSError, UnicodeDecodeError):
        return None
    return str(value) if isinstance(value, str) and value else None


def base_license(spec: str | None) -> str | None:
    """The base model's license as its files say it, without the network; None when unknown."""
    if not spec:
        return None
    gguf_file = None
    if spec in EMBEDDED:
        try:
            gguf_file = embedded_gguf(spec)
        except PrunekitError:
            return None
    elif spec.endswith(".gguf"):
        gguf_file = Path(spec).expanduser()
    if gguf_file is not None:
        try:
            field = gguf_reader(gguf_file).fields.get("general.license") if gguf_file.is_file() else None
        except PrunekitError:
            return None
        return str(field.contents()) if field is not None else None
    local = Path(spec).expanduser()
    if local.is_dir():
        return _card_license(local / CARD)
    hub_id = base_model_id(spec)
    if hub_id:
        try:
            cached = try_to_load_from_cache(hub_id, CARD)  # the cache only: never the network
        except ValueError:  # not a valid repo id after all (huggingface_hub's validation)
            return None
        return _card_license(cached if isinstance(cached, str) else None)
    return None


def _removed_lines(loaded: LoadedModel, layout: ModelLayout) -> list[str]:
    """What the export lacks against its base, layer by layer (base layer numbers), from its geometry."""
    cfg = loaded.model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    kept = {g.source for g in layout.layers}
    lines = []
    for label, layers in (("layers removed whole", [i for i in range(layout.base_layers) if i not in kept]),
                          ("attention removed", [g.source for g in layout.layers if not g.has_attention]),
                          ("MLP removed", [g.source for g in layout.layers if not g.has_mlp])):
        if layers:
            lines.append(f"- {label}: {', '.join(map(str, layers))}")
    for g in layout.layers:
        parts = []
        if g.has_attention and (g.num_heads, g.num_kv_heads) != (heads, kv):
            parts.append(f"{g.num_heads} of {heads} query heads, {g.num_kv_heads} of {kv} KV heads")
        sparse = loaded.adapter.experts(g.source) is not None  # a MoE block's width is its experts'
        base_width = (getattr(cfg, "moe_intermediate_size", None) if sparse else None) or cfg.intermediate_size
        if g.has_mlp and g.intermediate_size != base_width:
            parts.append(f"{'each expert ' if sparse else ''}MLP {g.intermediate_size} of {base_width} channels")
        if g.shared_size and layout.width_pruned:  # a pruned shared expert (DeepSeek)
            parts.append(f"shared expert {g.shared_size} channels")
        if parts:
            lines.append(f"- layer {g.source}: {'; '.join(parts)}")
    if layout.config["hidden_size"] != cfg.hidden_size:
        lines.append(f"- hidden size {cfg.hidden_size} -> {layout.config['hidden_size']}")
    return lines or ["- nothing (the export holds the whole base model)"]


def _figures(plan: dict) -> list[str]:
    """The perplexities a pruned output records: the search's on its calibration data, held-out ones of ``recover``."""
    lines = []
    options, cal = plan.get("options") or {}, plan.get("calibration") or {}
    steps = plan.get("removed") or []
    final = steps[-1].get("value") if steps else None
    if options.get("criterion", "ppl") in PPL_CRITERIA and plan.get("dense_value") is not None and final is not None:
        data = f"{cal.get('source', '?')}, {cal.get('windows', cal.get('n_windows', '?'))} windows x {cal.get('seq_len', '?')} tokens"
        lines.append(f"| calibration ({data}) | {plan['dense_value']:.3f} | {final:.3f} | |")
    recovery = plan.get("recovery") or {}
    before, after = recovery.get("perplexity_before") or {}, recovery.get("perplexity_after") or {}
    for source in before:
        got = after.get(source)
        lines.append(f"| held-out {source} | | {before[source]:.3f} | {'' if got is None else f'{got:.3f}'} |")
    if not lines:
        return []
    head = ["## Perplexity", "", "| data | base | pruned | after recovery |", "|---|---:|---:|---:|"]
    note = ["", "Held-out figures are measured by `prunekit recover` (before and after its training); "
            "`prunekit eval DIR --data wiki-test,news` measures them for any model."]
    return [*head, *lines, *(note if recovery else [])]


def model_card(loaded: LoadedModel, layout: ModelLayout, *, kind: str, parameters: int, name: str = "DIR") -> str:
    """README.md of an hf export of ``loaded`` laid out as ``layout`` (``kind``: stock or per-layer)."""
    plan = loaded.info.get("plan") or {}
    spec = base_spec(loaded)
    method = plan.get("method")
    meta: dict = {}
    if base_model_id(spec):
        meta["base_model"] = base_model_id(spec)
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["pruned", "prunekit", *([method] if method else [])]
    license_ = base_license(spec)
    if license_:
        meta["license"] = license_
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()
    lines = ["---", front, "---", "", f"# {spec or 'A model'}, pruned with prunekit", ""]
    lines += ["| | |", "|---|---|"]
    if spec:
        lines.append(f"| base model | {spec} ({loaded.model.config.model_type}) |")
    if method:
        options = ", ".join(f"{k}={v}" for k, v in sorted((plan.get("options") or {}).items()) if v is not None)
        lines.append(f"| method | {method}{f' ({options})' if options else ''} |")
    if plan.get("params_before"):
        lines.append(f"| parameters | {plan['params_before']:,} -> {parameters:,} "
                     f"({plan.get('ratio_removed', 1 - parameters / plan['params_before']):.2%} removed) |")
    else:
        lines.append(f"| parameters | {parameters:,} |")
    lines.append(f"| layers | {len(layout.layers)} of {layout.base_layers} kept |")
    lines.append(f"| layout | {kind} |")
    lines += ["", "## What was removed", "", *_removed_lines(loaded, layout), ""]
    figures = _figures(plan)
    if figures:
        lines += [*figures, ""]
    remote = kind == "per-layer"
    load = f'AutoModelForCausalLM.from_pretrained("{name}"{", trust_remote_code=True" if remote else ""})'
    lines += ["## How to load", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f"model = {load}", f'tokenizer = AutoTokenizer.from_pretrained("{name}", trust_remote_code=False)', "```", ""]
    if remote:
        lines += ["Some layers differ from the others, which the stock config cannot say: the model's classes are "
                  "in `modeling_pruned.py` (with `zero_blocks.py`), which subclass the family's own transformers "
                  "classes and import only torch and transformers; `trust_remote_code=True` runs them. Read them first.", ""]
    else:
        lines += ["The config is the family's own: every tool that reads the base family reads this model.", ""]
    return "\n".join(lines)
