"""The package's import graph: no cycles, and layers that point one way (DESIGN.md §2).

Imports are read from the source with ``ast``, including imports inside functions and under
``if TYPE_CHECKING:``; an import of a package's submodule counts as an edge to that submodule
(the implicit import of its parent package does not).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "xsky"

# layer -> layers it may import (besides itself, exceptions, _version, _interop, _coerce)
ALLOWED = {
    "accessor": {"api", "plot"},
    "api": {"engine", "models.spec", "io", "modalities", "geo", "runtime", "models"},
    "engine": {"runtime", "modalities", "models.spec", "geo"},
    "runtime": {"models", "modalities"},
    "models": {"modalities"},
    "io": {"modalities", "geo"},
    "modalities": set(),
    "geo": set(),
    "plot": {"geo", "api"},
    "index": {"api", "engine", "io", "geo"},
    "cli": {"api", "io", "plot", "tutorial", "models", "geo", "modalities", "train"},
    # train reads cubes exactly as embed does (api._inputs), so training inputs are inference inputs
    "train": {"api", "engine", "runtime", "models", "io", "modalities", "geo", "tutorial"},
}
BASE = {"exceptions", "_version", "_interop", "_coerce"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            targets = []
            for a in node.names:
                sub = f"{mod}.{a.name}"
                targets.append(sub if sub in modules else mod)
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    names = set(modules)
    return {n: _imports(n, p, names) for n, p in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_the_package_import_graph_has_no_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = _graph()
    graph["xsky.models.spec"] = {*graph["xsky.models.spec"], "xsky.api.embedding"}
    assert _find_cycle(graph) is not None


def _layer(module: str) -> str | None:
    parts = module.split(".")[1:]
    if not parts:
        return None
    if parts[:2] == ["models", "spec"]:
        return "models.spec"
    return parts[0]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_the_layers_below_them(layer):
    allowed = ALLOWED[layer] | BASE | {layer}
    if layer == "models":
        allowed |= {"models.spec"}
    bad = []
    for mod, deps in _graph().items():
        if _layer(mod) != layer and not (layer == "models" and _layer(mod) == "models.spec"):
            continue
        for dep in deps:
            dl = _layer(dep)
            if dl is not None and dl not in allowed:
                bad.append(f"{mod} -> {dep}")
    assert not bad, f"layer {layer!r} imports what it may not: {sorted(bad)}"


def test_model_contract_imports_without_torch():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from xsky.models import ModelSpec, ModelRef, ModalitySpec\n"
        "import xsky.engine.plan, xsky.modalities\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
