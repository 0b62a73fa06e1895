"""The package layout is the architecture: lower layers never import upper ones, and no module imports itself
back through others. Read from the source (every import statement, also those inside functions and under
TYPE_CHECKING), so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parent.parent / "agent"

# Low to high. A module may import its own layer and the layers before it. config.py, types.py and errors.py
# are shared by every layer (config.py gathers the per-package config slices, so it may import them).
LAYERS = [
    "ops",
    "capture",
    "inference",
    "gates",
    "gallery",
    "publish",
    "recognition",
    "evaluation",
    "api",
    "sync",
    "console",
    "app",
    "cli",
    "__main__",
]
SHARED = {"agent", "agent.config", "agent.types", "agent.errors"}
# The config slices config.py gathers, where a package keeps its config class beside its code.
SLICES = {
    "agent.gates.blink",
    "agent.gates.challenge",
    "agent.gates.depth_config",
    "agent.gates.ir_config",
    "agent.ops.log",
    "agent.ops.metrics_config",
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in AGENT.rglob("*.py"):
        parts = list(path.relative_to(AGENT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The agent modules `path` imports (a `from pkg import name` of a submodule counts as that submodule)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name != "agent" and not name.startswith("agent."):
                continue
            while name not in known:
                name = name.rpartition(".")[0]
            found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, mods) - {m} for m, p in mods.items()}


def _layer(module: str) -> str | None:
    if module in SHARED:
        return None
    return module.split(".")[1]


def test_every_module_is_in_a_layer():
    unplaced = sorted(m for m in _graph() if _layer(m) is not None and _layer(m) not in LAYERS)
    assert not unplaced, f"modules outside the layer list (add a layer or move them): {unplaced}"


def test_lower_layers_never_import_upper_ones():
    upward = []
    for module, targets in _graph().items():
        src = _layer(module)
        for target in targets:
            dst = _layer(target)
            if src is None and dst is not None and not (target.endswith(".config") or target in SLICES):
                upward.append(f"{module} -> {target} (shared modules import only config slices)")
            elif src is not None and dst is not None and LAYERS.index(dst) > LAYERS.index(src):
                upward.append(f"{module} ({src}) -> {target} ({dst})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    # The check above is only worth something if it can fail.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_package_says_what_it_owns():
    for init in AGENT.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 40, f"{init.relative_to(AGENT.parent)} needs a docstring: what it owns"
