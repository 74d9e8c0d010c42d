"""Hand-sized real checkpoints in the documented format (docs/formats.md section 3), built with the real
writer.

Tensor names follow the canonical policy's namespace; shapes are tiny so that expected values can be computed
by hand (or by an independent few-line formula) in the tests.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save

sys.path.insert(0, str(Path(__file__).resolve().parent))

from qproj import Q_PROJ, T1, T2, T3

from vlamergebench.policies.checkpoint import (
    ACTION_EXPERT_FILE,
    DENSE_FILE,
    LORA_FILE,
    VLM_FILE,
    ExpertSet,
    NormStats,
    write_checkpoint,
    write_expert_set,
)

RANK, ALPHA = 2, 4.0  # scale alpha / rank = 2
VLM_SHAPES = {
    "vision.featurizer.blocks.0.attn.qkv.weight": (6, 4),
    "vision.featurizer.blocks.0.norm1.weight": (4,),
    "projector.fc1.weight": (4, 4),
    "llm.embed_tokens.weight": (10, 4),
    "llm.layers.0.self_attn.q_proj.weight": (4, 4),
    "llm.layers.0.self_attn.q_proj.bias": (4,),
    "llm.layers.0.mlp.down_proj.weight": (4, 8),
    "llm.norm.weight": (4,),
}
TARGETS = [
    "vision.featurizer.blocks.0.attn.qkv",
    "projector.fc1",
    "llm.layers.0.self_attn.q_proj",
    "llm.layers.0.mlp.down_proj",
]
HEAD_SHAPES = {
    "action_head.layer_norm1.weight": (8,),
    "action_head.fc1.weight": (4, 8),
    **{
        f"action_head.blocks.{i}.{p}.weight": (4, 4)
        for i in (0, 1)
        for p in ("v_adapter", "v_task", "o_proj")
    },
    "action_head.layer_norm2.weight": (4,),
    "action_head.fc2.weight": (2, 4),
    "action_queries.weight": (3, 4),
    "proprio_projector.fc1.weight": (4, 2),
}
POLICY = {"name": "hand", "llm": {"hidden_size": 4}, "action_expert": {"expert_head_depth": 1}}


def norm_stats(offset: float) -> NormStats:
    return NormStats((offset, -1.0), (offset + 1.0, 1.0), (True, False), (0.0, 0.0), (1.0, 1.0))


def random_tensors(
    shapes: Mapping[str, tuple[int, ...]], seed: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator).to(dtype) for name, shape in shapes.items()}


def write_base(path: Path, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    vlm = random_tensors(VLM_SHAPES, seed, dtype)
    head = random_tensors(HEAD_SHAPES, seed + 1, dtype)
    base_id = hashlib.sha256(save(vlm)).hexdigest()
    config = {
        "role": "base",
        "policy": POLICY,
        "base_id": base_id,
        "skill": None,
        "lora": None,
        "provenance": {},
    }
    write_checkpoint(path, config, {VLM_FILE: vlm, ACTION_EXPERT_FILE: head}, norm_stats(-1.0), ["base"])
    return path


def write_expert(
    path: Path,
    base: Path,
    skill: str,
    seed: int,
    *,
    dtype: torch.dtype = torch.float32,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    head: Mapping[str, torch.Tensor] | None = None,
    dense: bool = False,
    edit: Callable[[dict[str, dict[str, torch.Tensor]]], None] | None = None,
) -> Path:
    """An expert: LoRA factors (random unless given), a random head unless given, optional folded dense
    file."""
    from vlamergebench.policies.checkpoint import CheckpointDir

    base_dir = CheckpointDir.open(base)
    generator = torch.Generator().manual_seed(1000 + seed)
    lora: dict[str, torch.Tensor] = {}
    for module in TARGETS:
        out_dim, in_dim = VLM_SHAPES[module + ".weight"]
        a, b = (factors or {}).get(
            module,
            (torch.randn(RANK, in_dim, generator=generator), torch.randn(out_dim, RANK, generator=generator)),
        )
        lora[module + ".lora_A"], lora[module + ".lora_B"] = a.to(dtype), b.to(dtype)
    files = {
        LORA_FILE: lora,
        ACTION_EXPERT_FILE: dict(head)
        if head is not None
        else random_tensors(HEAD_SHAPES, 2000 + seed, dtype),
    }
    if dense:
        from safetensors.torch import load_file

        weights = load_file(str(base_dir.file(VLM_FILE)))
        files[DENSE_FILE] = {
            m + ".weight": (
                weights[m + ".weight"].float()
                + (ALPHA / RANK) * lora[m + ".lora_B"].float() @ lora[m + ".lora_A"].float()
            ).to(dtype)
            for m in TARGETS
        }
    if edit is not None:
        edit(files)
    config = {
        "role": "expert",
        "policy": POLICY,
        "base_id": base_dir.base_id,
        "skill": {"name": skill, "suite": "hand", "task": skill, "task_id": seed, "env_id": "none"},
        "lora": {"rank": RANK, "alpha": ALPHA, "targets": TARGETS},
        "provenance": {},
    }
    write_checkpoint(path, config, files, norm_stats(float(seed)), [f"do {skill}", f"please do {skill}"])
    return path


def build_set(
    root: Path, count: int = 3, *, dtype: torch.dtype = torch.float32, dense: bool = False, name: str = "hand"
) -> ExpertSet:
    base = write_base(root / "base", dtype)
    experts = [
        write_expert(root / f"expert{i}", base, f"skill_{i}", i, dtype=dtype, dense=dense)
        for i in range(count)
    ]
    return write_expert_set(root, name, base, experts)


@pytest.fixture(scope="session")
def hand_set(tmp_path_factory: pytest.TempPathFactory) -> ExpertSet:
    """Three float32 experts with random factors and heads (dense files included)."""
    return build_set(tmp_path_factory.mktemp("hand"), dense=True)


@pytest.fixture(scope="session")
def bf16_set(tmp_path_factory: pytest.TempPathFactory) -> ExpertSet:
    """Three bfloat16 experts."""
    return build_set(tmp_path_factory.mktemp("bf16"), dtype=torch.bfloat16)


SELECT = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])  # A = [I | 0]: tau = scale * [B | 0]


def q_proj_factors(block: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Factors giving ``tau[q_proj] = [block | 0]`` (block is 4 x 2) and tau = 0 on every other target."""
    factors = {}
    for module in TARGETS:
        out_dim, in_dim = VLM_SHAPES[module + ".weight"]
        factors[module] = (torch.zeros(RANK, in_dim), torch.zeros(out_dim, RANK))
    factors[Q_PROJ] = (SELECT, block / (ALPHA / RANK))
    return factors


def build_q_proj_set(root: Path, blocks: list[torch.Tensor], heads: list[dict] | None = None) -> ExpertSet:
    """Experts whose only non-zero task vector is ``[block | 0]`` on q_proj (hand-computable merges)."""
    base = write_base(root / "base")
    experts = [
        write_expert(root / f"expert{i}", base, f"skill_{i}", i, factors=q_proj_factors(block),
                     head=None if heads is None else heads[i])
        for i, block in enumerate(blocks)
    ]  # fmt: skip
    return write_expert_set(root, "hand-q", base, experts)


def write_dense_expert(path: Path, base: Path, skill: str, seed: int) -> Path:
    """A dense expert (a full fine-tune): every VLM tensor of the base moved by seeded noise, matrices and
    1-D tensors alike, in ``dense.safetensors``; no LoRA."""
    from safetensors.torch import load_file

    from vlamergebench.policies.checkpoint import CheckpointDir

    base_dir = CheckpointDir.open(base)
    weights = load_file(str(base_dir.file(VLM_FILE)))
    noise = random_tensors(VLM_SHAPES, 3000 + seed, torch.float32)
    dense = {name: weights[name] + 0.1 * noise[name] for name in VLM_SHAPES}
    config = {
        "role": "expert",
        "policy": POLICY,
        "base_id": base_dir.base_id,
        "skill": {"name": skill, "suite": "hand", "task": skill, "task_id": seed, "env_id": "none"},
        "lora": None,
        "provenance": {},
    }
    files = {DENSE_FILE: dense, ACTION_EXPERT_FILE: random_tensors(HEAD_SHAPES, 2000 + seed, torch.float32)}
    write_checkpoint(path, config, files, norm_stats(float(seed)), [f"do {skill}", f"please do {skill}"])
    return path


@pytest.fixture(scope="session")
def dense_set(tmp_path_factory: pytest.TempPathFactory) -> ExpertSet:
    """Three dense float32 experts (full fine-tunes of every VLM tensor) on the hand base."""
    root = tmp_path_factory.mktemp("dense")
    base = write_base(root / "base")
    experts = [write_dense_expert(root / f"expert{i}", base, f"skill_{i}", i) for i in range(3)]
    return write_expert_set(root, "hand-dense", base, experts)


@pytest.fixture(scope="session")
def three(tmp_path_factory: pytest.TempPathFactory) -> ExpertSet:
    """The q_proj case of ``qproj.py`` with experts T1, T2, T3."""
    return build_q_proj_set(tmp_path_factory.mktemp("three"), [T1, T2, T3])


@pytest.fixture(scope="session")
def two(tmp_path_factory: pytest.TempPathFactory) -> ExpertSet:
    """The q_proj case of ``qproj.py`` with experts T1, T2."""
    return build_q_proj_set(tmp_path_factory.mktemp("two"), [T1, T2])


@pytest.fixture(scope="session")
def builders() -> SimpleNamespace:
    """The builders above, for tests (pytest's importlib mode does not let tests import conftest)."""
    return SimpleNamespace(
        write_base=write_base,
        write_expert=write_expert,
        build_set=build_set,
        build_q_proj_set=build_q_proj_set,
        q_proj_factors=q_proj_factors,
        write_dense_expert=write_dense_expert,
    )


TINY_SKILLS = (
    ("object_0", "pick up the alphabet soup and place it in the basket"),
    ("object_1", "pick up the cream cheese and place it in the basket"),
    ("spatial_0", "pick up the black bowl on the stove and place it on the plate"),
)


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> ExpertSet:
    """Real tiny-preset checkpoints (STYLE M5): a base and three LoRA experts written by ``policies.io``.

    The experts are not trained (that takes minutes); their LoRA B factors and heads are moved off the base by
    seeded noise, which is all merging needs: real names, shapes, dtypes and a real model to instantiate.
    """
    from vlamergebench.policies.io import load_model, save_base, save_expert
    from vlamergebench.policies.lora import add_lora
    from vlamergebench.policies.model import build_model
    from vlamergebench.policies.registry import make_config

    root = tmp_path_factory.mktemp("tiny")
    stats = NormStats((-1.0,) * 7, (1.0,) * 7, (True,) * 6 + (False,), (-1.0,) * 8, (1.0,) * 8)
    base = save_base(
        build_model(make_config("tiny"), seed=0),
        root / "base",
        norm_stats=stats,
        instructions=[text for _, text in TINY_SKILLS],
        provenance={"head_init_seed": 7},
    )
    experts = []
    for index, (skill, instruction) in enumerate(TINY_SKILLS):
        model, _ = load_model(base.path)
        add_lora(model, model.config.lora, seed=10 + index)
        generator = torch.Generator().manual_seed(20 + index)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name or name.startswith(
                    ("action_head.", "action_queries.", "proprio_projector.")
                ):
                    param.add_(0.05 * torch.randn(param.shape, generator=generator))
        info = {
            "name": skill,
            "suite": skill.split("_")[0],
            "task": skill,
            "task_id": index,
            "env_id": "none",
        }
        experts.append(
            save_expert(
                model,
                root / skill,
                base=base,
                skill=info,
                norm_stats=stats,
                instructions=[instruction],
                provenance={},
            ).path
        )
    return write_expert_set(root, "tiny", base.path, experts)
