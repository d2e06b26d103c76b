"""The package layout: imports point one way (cli -> pipeline -> methods / export / evaluation ->
engine -> data / plan -> models -> core), there is no import cycle, and no function-local import
except of an optional heavy dependency. Every import is read from the source (function-local ones
included), so a cycle hidden inside a function is found too; so is a string naming a prunekit module (a
``python -m prunekit.x.y`` child, an ``importlib.import_module`` name), which counts as an import of it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "prunekit"

# Layer of each sub-package: a module may import from a lower layer or from its own sub-package.
LAYERS = {
    "core": 0, "models": 1, "plan": 2, "data": 2, "engine": 3, "methods": 4, "export": 4, "evaluation": 4,
    "pipeline": 5, "cli": 6, "__init__": 7, "__main__": 7,
}
# Imported inside functions on purpose: optional, heavy, or needed by one rarely used path only.
LOCAL_OK = {"matplotlib", "peft", "lm_eval", "llama_cpp", "datasets", "huggingface_hub", "numpy", "resource"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mods: dict[str, Path]):
    """Yield (importer, imported prunekit module, lineno, is_local) for every import in the package, and for every
    string that is exactly the name of one of its modules (a module launched or imported by name)."""
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        local_nodes = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                local_nodes.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
        for node in ast.walk(tree):
            local = id(node) in local_nodes
            if isinstance(node, ast.Import):
                for a in node.names:
                    yield mod, a.name, node.lineno, local
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, path.name == "__init__.py", node)
                for a in node.names:  # `from prunekit.x import y` may name the submodule y
                    sub = f"{target}.{a.name}"
                    yield mod, sub if sub in mods else target, node.lineno, local
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value and node.value in mods:
                yield mod, node.value, node.lineno, False


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, target, _, _ in _imports(mods):
        while target and target not in mods:  # `prunekit.x.y.name` -> the module that holds it
            target = target.rpartition(".")[0]
        if target in mods and target != mod and target.startswith("prunekit"):
            graph[mod].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(mod: str) -> tuple[str, int]:
    parts = mod.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return top, LAYERS[top]


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_every_subpackage_has_a_layer():
    tops = {_module_name(p).split(".")[1] for p in PKG.rglob("*.py") if p.parent != PKG}
    assert tops <= set(LAYERS), sorted(tops - set(LAYERS))


def test_a_module_named_in_a_string_is_an_import(tmp_path, monkeypatch):
    """A child launched by name (``[sys.executable, "-m", "prunekit.pipeline.x"]``) is an edge of the graph,
    so the layer check sees it: here a planted evaluation module launching a pipeline module."""
    pkg = tmp_path / "prunekit"
    for sub in ("evaluation", "pipeline"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text('"""x."""\n')
    (pkg / "__init__.py").write_text('"""x."""\n')
    (pkg / "pipeline" / "probe.py").write_text('"""x."""\n')
    (pkg / "evaluation" / "speed.py").write_text('"""x."""\nimport sys\nARGS = [sys.executable, "-m", "prunekit.pipeline.probe"]\n')
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    assert _graph()["prunekit.evaluation.speed"] == {"prunekit.pipeline.probe"}


def test_imports_point_down_the_layers():
    wrong = []
    for mod, targets in _graph().items():
        top, rank = _layer(mod)
        for t in targets:
            ttop, trank = _layer(t)
            if ttop != top and trank >= rank:
                wrong.append(f"{mod} -> {t}")
    assert wrong == []


def test_no_function_local_imports_but_optional_heavy_ones():
    mods = _modules()
    local = sorted(
        f"{mod}:{line} imports {target}"
        for mod, target, line, is_local in _imports(mods)
        if is_local and target.split(".")[0] not in LOCAL_OK
    )
    assert local == []


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_every_module_opens_with_a_docstring(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"{path} has no module docstring"
