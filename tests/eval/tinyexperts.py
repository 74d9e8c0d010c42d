"""A real tiny expert set (the ``tiny`` preset, untrained, random LoRA factors and heads) for run tests.

Untrained experts do not solve their tasks; the tests check the pipeline (merge, instantiate, roll out in
LIBERO, store, leaderboard), not success.
"""

from __future__ import annotations

import torch

from vlamergebench.policies.checkpoint import NormStats, write_expert_set
from vlamergebench.policies.io import load_model, save_base, save_expert
from vlamergebench.policies.lora import add_lora
from vlamergebench.policies.model import build_model
from vlamergebench.policies.registry import make_config

STATS = NormStats((-0.5,) * 6 + (-1.0,), (0.5,) * 6 + (1.0,), (True,) * 6 + (False,), (-1.0,) * 8, (1.0,) * 8)
SKILLS = [
    {
        "name": "object_0",
        "suite": "libero_object",
        "task": "alphabet_soup",
        "task_id": 0,
        "env_id": "vlamergebench/LIBERO-Object-v0",
    },
    {
        "name": "spatial_0",
        "suite": "libero_spatial",
        "task": "black_bowl",
        "task_id": 0,
        "env_id": "vlamergebench/LIBERO-Spatial-v0",
    },
]


def make_expert_set(root, skills=SKILLS):
    """Write a tiny base, one expert per skill and ``expert_set.json`` under ``root``; returns the set dir."""
    base = save_base(
        build_model(make_config("tiny"), seed=0).eval(),
        root / "base",
        norm_stats=STATS,
        instructions=["base"],
        provenance={"made_by": "tests/eval/tinyexperts.py"},
    )
    experts = []
    for index, skill in enumerate(skills):
        model, _ = load_model(base.path)
        add_lora(model, model.config.lora, seed=10 + index)
        generator = torch.Generator().manual_seed(20 + index)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name or name.startswith("action_head."):
                    param.add_(0.02 * torch.randn(param.shape, generator=generator))
        experts.append(
            save_expert(
                model.eval(),
                root / skill["name"],
                base=base,
                skill=skill,
                norm_stats=STATS,
                instructions=[skill["task"]],
                provenance={},
            )
        )
    return write_expert_set(root / "set", "tiny-test", base.path, [e.path for e in experts]).path
