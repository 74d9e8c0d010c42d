"""Rooms and arrows: imports point one way, no module imports itself back, importing the package is cheap."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# room -> folder, and the rooms of ours it may import (itself and the shared modules below all rooms always
# allowed). Every import counts, lazy ones inside functions included.
ROOMS = {
    "envs": (ROOT / "vlamergebench" / "envs", set()),
    "policies": (ROOT / "policies", set()),
    "merge_methods": (ROOT / "merge_methods", {"policies"}),
    "eval": (ROOT / "vlamergebench" / "eval", {"envs", "policies", "merge_methods"}),
    "experts": (ROOT / "vlamergebench" / "experts", {"envs", "policies"}),
    # leaderboards read the method registry's paper metadata (arXiv ids) for the page's links
    "leaderboards": (ROOT / "leaderboards", {"eval", "merge_methods"}),
}
MODULE_TO_ROOM = {
    "vlamergebench.envs": "envs",
    "vlamergebench.policies": "policies",
    "vlamergebench.merge_methods": "merge_methods",
    "vlamergebench.eval": "eval",
    "vlamergebench.experts": "experts",
    "vlamergebench.leaderboards": "leaderboards",
    "vlamergebench.cli": "cli",
}
# The shared mechanisms every room may import: they import no room (provenance and configs: stdlib only).
SHARED = ("vlamergebench.configs", "vlamergebench.provenance", "vlamergebench.registry")
# Source folders -> the package they install as (pyproject's package-dir).
FOLDERS = {
    ROOT / "vlamergebench": "vlamergebench",
    ROOT / "policies": "vlamergebench.policies",
    ROOT / "merge_methods": "vlamergebench.merge_methods",
    ROOT / "leaderboards": "vlamergebench.leaderboards",
}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):  # every node: imports inside functions (lazy ones) count too
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _room_of(module: str) -> str | None:
    for prefix, room in MODULE_TO_ROOM.items():
        if module == prefix or module.startswith(prefix + "."):
            return room
    return None


def _modules() -> dict[str, Path]:
    """Every module of the distribution, by its installed dotted name."""
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if (
                package == "vlamergebench"
                and parts
                and parts[0] in ("policies", "merge_methods", "leaderboards")
            ):
                continue
            modules[".".join([package, *parts])] = path
    return modules


def _import_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports, lazy imports included.

    ``from a import b`` is an edge to module ``a.b`` when that is a module (a submodule), else to ``a``.
    """
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    if submodule in modules:
                        targets.add(submodule)
                    elif node.module in modules:
                        targets.add(node.module)
        graph[module] = targets - {module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_arrows_point_one_way():
    wrong = []
    for room, (folder, allowed) in ROOMS.items():
        for path in sorted(folder.rglob("*.py")):
            for module in _imported_modules(path):
                target = _room_of(module)
                if target is not None and target != room and target not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)} imports {module} ({room} -> {target})")
    for shared in SHARED:
        path = _modules()[shared]
        for module in _imported_modules(path):
            if module.startswith("vlamergebench") and not module.startswith(SHARED):
                wrong.append(f"{path.relative_to(ROOT)} imports {module} (shared -> a room)")
    assert not wrong, "imports against the arrows (docs/development.md):\n" + "\n".join(wrong)


def test_no_import_cycle_lazy_imports_included():
    graph = _import_graph()
    assert len(graph) > 80 and "vlamergebench.merge_methods.base" in graph  # the walk sees the whole package
    assert "vlamergebench.merge_methods.merged" in graph["vlamergebench.merge_methods.base"]
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(cycle) for cycle in cycles)


def test_the_cycle_finder_finds_a_lazy_cycle(tmp_path):
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_import_and_help_are_cheap():
    code = (
        "import sys, vlamergebench, vlamergebench.registry, vlamergebench.envs, vlamergebench.cli\n"
        "try:\n    vlamergebench.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'mujoco', 'robosuite', 'libero', 'transformers')"
        " if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY=\n" in out, out[-500:]
