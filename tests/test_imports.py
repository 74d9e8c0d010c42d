"""Rooms and arrows (DESIGN.md): imports point one way, and importing the package is cheap."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# room -> folder, and the rooms of ours it may import (itself and the stdlib-only registry always allowed).
ROOMS = {
    "envs": (ROOT / "vlamergebench" / "envs", set()),
    "policies": (ROOT / "policies", set()),
    "merge_methods": (ROOT / "merge_methods", {"policies"}),
    "eval": (ROOT / "vlamergebench" / "eval", {"envs", "policies", "merge_methods"}),
    # leaderboards read the method registry's paper metadata (arXiv ids) for the page's links
    "leaderboards": (ROOT / "leaderboards", {"eval", "merge_methods"}),
}
MODULE_TO_ROOM = {
    "vlamergebench.envs": "envs",
    "vlamergebench.policies": "policies",
    "vlamergebench.merge_methods": "merge_methods",
    "vlamergebench.eval": "eval",
    "vlamergebench.leaderboards": "leaderboards",
    "vlamergebench.cli": "cli",
}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
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


def test_arrows_point_one_way():
    wrong = []
    for room, (folder, allowed) in ROOMS.items():
        for path in sorted(folder.rglob("*.py")):
            for module in _imported_modules(path):
                target = _room_of(module)
                if target is not None and target != room and target not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)} imports {module} ({room} -> {target})")
    assert not wrong, "imports against the arrows of DESIGN.md:\n" + "\n".join(wrong)


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
