"""Acceptance statistics of an expert set: is it mergeable, and is every expert good at its own tasks?

The task-vector statistics are the preconditions merging papers assume of fine-tuned experts (Task
Arithmetic, arXiv 2212.04089; TIES, arXiv 2306.01708; MergeVLA, arXiv 2511.18810):

- ``ratio``: ||tau_g|| / ||W0_g|| per group g (vision, projector, llm over the LoRA targets; action_head over
  the head and queries), with tau the expert's dense update (``(alpha / r) B A`` for LoRA, ``W_expert - W0``
  for the head). Fine-tunes of a pretrained model sit around a few percent; the v2 target is <= 0.10.
- ``cosine`` and ``sign_conflict`` between every pair of experts' VLM task vectors: cosine of the flattened
  vectors, and the share of coordinates where both are non-zero with opposite signs (TIES's interference).
- ``head_block_distance``: per action-expert block, the mean over expert pairs of ||h_i - h_j|| / ||h_0||
  (MergeVLA's premise is that shallow blocks of different experts stay close).

Own success (each expert on each of its tasks, and the base on the same tasks) is measured by evaluation,
which this room does not import: :func:`accept_expert_set` receives it as a callable.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from vlamergebench.policies.checkpoint import (
    ACTION_EXPERT_FILE,
    LORA_A_SUFFIX,
    LORA_B_SUFFIX,
    LORA_FILE,
    VLM_FILE,
    ExpertSet,
)
from vlamergebench.policies.io import read_tensors

VLM_GROUPS = ("vision", "projector", "llm")
HEAD_PREFIXES = ("action_head.", "action_queries.")
_BLOCK = re.compile(r"^action_head\.blocks\.(\d+)\.")

# (skill, task) -> success rate in [0, 1], for one contender (an expert bank or the base alone).
SuccessByTask = Mapping[tuple[str, str], float]


class AcceptanceError(RuntimeError):
    """An expert set misses an acceptance bar; the message names the expert, the task and the rate."""


def _vlm_task_vector(expert: Any) -> dict[str, torch.Tensor]:
    factors = read_tensors(expert.file(LORA_FILE))
    scale = expert.lora_scale
    return {
        name[: -len(LORA_A_SUFFIX)] + ".weight": scale
        * (factors[name[: -len(LORA_A_SUFFIX)] + LORA_B_SUFFIX].float() @ factors[name].float())
        for name in factors
        if name.endswith(LORA_A_SUFFIX)
    }


def _head_task_vector(expert: Any, base_head: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    head = read_tensors(expert.file(ACTION_EXPERT_FILE))
    return {
        name: head[name].float() - base_head[name].float()
        for name in base_head
        if name.startswith(HEAD_PREFIXES) and name in head
    }


def _norm(tensors: Mapping[str, torch.Tensor]) -> float:
    return float(sum(float(t.float().pow(2).sum()) for t in tensors.values()) ** 0.5)


def task_vector_statistics(experts: ExpertSet) -> dict[str, Any]:
    """The mergeability statistics of ``experts`` (see the module docstring), as plain JSON values."""
    base_vlm = read_tensors(experts.base.file(VLM_FILE))
    base_head = read_tensors(experts.base.file(ACTION_EXPERT_FILE))
    vectors = {expert.skill: _vlm_task_vector(expert) for expert in experts.experts}
    heads = {expert.skill: _head_task_vector(expert, base_head) for expert in experts.experts}
    ratio: dict[str, dict[str, float]] = {}
    for skill, tau in vectors.items():
        ratio[str(skill)] = {}
        for group in VLM_GROUPS:
            names = [name for name in tau if name.startswith(group + ".")]
            if names:
                delta = _norm({name: tau[name] for name in names})
                ratio[str(skill)][group] = delta / _norm({name: base_vlm[name] for name in names})
        head_base = {name: base_head[name] for name in heads[skill]}
        ratio[str(skill)]["action_head"] = _norm(heads[skill]) / max(_norm(head_base), 1e-12)
    pairs = {}
    for first, second in itertools.combinations(vectors, 2):
        a = torch.cat([vectors[first][name].flatten() for name in sorted(vectors[first])])
        b = torch.cat([vectors[second][name].flatten() for name in sorted(vectors[first])])
        both = (a != 0) & (b != 0)
        pairs[f"{first}|{second}"] = {
            "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
            "sign_conflict": float(((a.sign() != b.sign()) & both).sum() / both.sum().clamp(min=1)),
        }
    return {
        "ratio": ratio,
        "ratio_max": {
            group: max(r[group] for r in ratio.values() if group in r)
            for group in (*VLM_GROUPS, "action_head")
            if any(group in r for r in ratio.values())
        },
        "pairs": pairs,
        "head_block_distance": _head_block_distance(experts, base_head),
    }


def _head_block_distance(experts: ExpertSet, base_head: Mapping[str, torch.Tensor]) -> dict[str, float]:
    heads = {e.skill: read_tensors(e.file(ACTION_EXPERT_FILE)) for e in experts.experts}
    blocks: dict[int, list[str]] = {}
    for name in base_head:
        match = _BLOCK.match(name)
        if match:
            blocks.setdefault(int(match.group(1)), []).append(name)
    out = {}
    for block, names in sorted(blocks.items()):
        reference = _norm({name: base_head[name] for name in names})
        distances = [
            _norm({name: heads[i][name].float() - heads[j][name].float() for name in names}) / reference
            for i, j in itertools.combinations(heads, 2)
        ]
        out[str(block)] = sum(distances) / max(len(distances), 1)
    return out


def accept_expert_set(
    path: str | os.PathLike[str],
    *,
    measure_success: Callable[[str, Path], SuccessByTask],
    bar: float,
    ratio_target: float,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Compute the statistics, measure own and base success, write ``stats.json``; raise below the bar.

    Args:
        path: The expert-set directory.
        measure_success: ``(method, expert-set path) -> {(skill, task): rate}``; called with ``expert_bank``
            (each expert on its own tasks) and ``base`` (the base alone on the same tasks).
        bar: Minimum own success of every expert on each of its tasks.
        ratio_target: The task-vector size the recipe aims at (reported, not enforced: a larger vector is a
            property of the set that merge results must be read against, not a broken expert).
        log: Where the summary lines go.

    Returns:
        The statistics written to ``stats.json``.

    Raises:
        AcceptanceError: an expert is below ``bar`` on one of its tasks (``stats.rejected.json`` is written
            instead of ``stats.json``, so nothing is shipped as accepted).
    """
    path = Path(path)
    experts = ExpertSet.open(path)
    stats = task_vector_statistics(experts)
    own = measure_success("expert_bank", path)
    base = measure_success("base", path)
    stats["own_success"] = {f"{skill}|{task}": rate for (skill, task), rate in own.items()}
    stats["base_success"] = {f"{skill}|{task}": rate for (skill, task), rate in base.items()}
    stats["bar"] = bar
    stats["ratio_target"] = ratio_target
    stats["expert_set_id"] = experts.id
    for group, value in stats["ratio_max"].items():
        flag = "" if value <= ratio_target else f"  (above the {ratio_target:.2f} target)"
        log(f"||tau||/||W0|| max over experts, {group}: {value:.3f}{flag}")
    for pair, values in stats["pairs"].items():
        log(f"{pair}: cosine {values['cosine']:.3f}, sign conflict {values['sign_conflict']:.1%}")
    for (skill, task), rate in own.items():
        log(f"{skill} on {task!r}: own {rate:.0%}, base {base.get((skill, task), float('nan')):.0%}")
    order = {skill: index for index, skill in enumerate(experts.skills)}
    below = sorted(
        ((skill, task, rate) for (skill, task), rate in own.items() if rate < bar),
        key=lambda item: order.get(item[0], len(order)),
    )
    text = json.dumps(stats, indent=1, sort_keys=True)
    if below:
        (path / "stats.rejected.json").write_text(text)
        listed = "; ".join(f"{skill} on {task!r}: {rate:.0%}" for skill, task, rate in below)
        raise AcceptanceError(
            f"{path}: experts below the own-success bar of {bar:.0%} ({listed}); statistics in "
            f"{path / 'stats.rejected.json'}; the set is not accepted"
        )
    (path / "stats.json").write_text(text)
    return stats
