"""CARVE (``carve``): continual admission into a sign-concordant core plus per-skill low-rank residuals.

Source: the anonymous NeurIPS 2026 submission's code, ``anonymousprojectpage2/CARVE``
(``carve/admit/merge.py``, ``docs/ALGORITHM.md``, ``configs/default.yaml``), as read in
``research/merge-methods.md`` section 4 (no arXiv id).

Admission of expert t (t = 1, 2, ...), per tensor k that any expert may change (LoRA targets and the action
expert, whose task vector is taken against the base's own action expert), in float32::

    tau_t    = theta_t - theta_0
    protect  = (core == 0) | (sign(core) == sign(tau_t))
    core    <- where(protect, (1 - a_t) core + a_t tau_t, core),  a_t = 1 / sqrt(t)   (stored, base dtype)
    r_t      = tau_t - core                                        (against the core at admission time)
    store r_t as U sqrt(S), V sqrt(S) at rank r (randomised SVD of r_t reshaped to (shape[0], -1)),
    or raw when 1-D or smaller than min_factorise_numel; an all-zero residual is stored with rank 0
    per group g (one per LLM block, one per action-head block, one per other module): ||tau_t||_g

Inference for skill m after T admissions::

    theta_m = theta_0 + beta_mg core_T + U_m V_m^T,   beta_mg = min(1, gamma ||tau_m||_g / ||core_T||_g)

Consequences the tests check: a_1 = 1 and an empty core give core = tau_1 and r_1 = 0 (skill 1 relies on the
core alone); a rank-r residual's error is the tail of its singular values (Eckart-Young). Residuals are never
updated, so later core drift is what moves earlier skills (backward transfer).

The action expert: CARVE's code merges only the VLM (it has no action head). ``action_expert = "core"`` (the
``carve`` entry) is this project's extrapolation: the head joins the core and residuals like any other
tensor. ``action_expert = "own"`` (``carve_vlm``) is CARVE as published: the VLM through core + residuals and
each skill's own action expert kept whole (its bytes counted in storage).

State between admissions (and what storage counts): the dense core, every admitted skill's residual factors,
group norms and norm stats, and its instructions (the text router's data, in ``merged.json``). The text router
(``carve_text``) embeds instructions with the theta_0 + core LLM; its keys are computed from that state when
the router is built, not stored (T x hidden floats).

Defaults and sources: ``rate = "inv_sqrt"`` (``alpha_mode``), ``min_factorise_numel = 4096``, randomised SVD
with ``oversample = 8`` and ``power_iterations = 4`` (``torch.svd_lowrank`` q = r + 8, niter 4, but with our
explicit generator), residual factors in bfloat16, ``gamma = 1.0`` and ``use_beta = True``. ``rank = None``
resolves to 64 * hidden / 896: CARVE's rank 64 on the reference (Qwen2.5-0.5B, hidden 896) width, and the
same fraction of the width at the tiny preset (hidden 128 -> 9), where a rank of 64 would store the residuals
at full rank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.base import ContinualMethod
from vlamergebench.merge_methods.config import MethodConfig, check_choice
from vlamergebench.merge_methods.io import AtomicDirectory, StreamingSafetensorsWriter, open_views
from vlamergebench.merge_methods.merged import MergedModel, read_all, skill_dir
from vlamergebench.merge_methods.writers import copy_action_expert
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet

CORE_FILE = "core.safetensors"
RESIDUAL_FILE = "residual.safetensors"
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class CarveConfig(MethodConfig):
    """CARVE parameters.

    Attributes:
        rate: Core step a_t: "inv_sqrt" (1/sqrt(t), CARVE default) or "inv_t" (1/t, a running mean).
        rank: Residual rank r; None = round(64 * hidden / 896), at least 1.
        min_factorise_numel: Tensors with fewer entries (or 1-D) keep a raw residual (4096, CARVE).
        oversample: Extra sketch columns of the randomised SVD (8).
        power_iterations: Power iterations of the randomised SVD (4).
        residual_dtype: Storage dtype of residual factors and raw residuals ("bfloat16", CARVE).
        gamma: beta = min(1, gamma * ||tau_m||_g / ||core||_g) (1.0, CARVE).
        use_beta: Apply the per-group beta (True, CARVE); False uses beta = 1.
        seed: Seed of the randomised SVD sketches (with skill and tensor name).
        task_vectors: Where tau comes from: "lora" (factors) or "dense" (folded weights minus the base).
        action_expert: "core" (the head merged like the VLM; our extrapolation) or "own" (each skill keeps
            its own action expert, CARVE's code merging the VLM only).
    """

    rate: str = "inv_sqrt"
    rank: int | None = None
    min_factorise_numel: int = 4096
    oversample: int = 8
    power_iterations: int = 4
    residual_dtype: str = "bfloat16"
    gamma: float = 1.0
    use_beta: bool = True
    seed: int = 0
    task_vectors: str = "lora"
    action_expert: str = "core"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "action_expert", self.action_expert, ("core", "own"))
        check_choice(owner, "rate", self.rate, ("inv_sqrt", "inv_t"))
        check_choice(owner, "residual_dtype", self.residual_dtype, tuple(_DTYPES))
        check_choice(owner, "task_vectors", self.task_vectors, ("lora", "dense"))


def group_of(name: str) -> str:
    """CARVE's scope group of a tensor: one per LLM block, one per action-head block, else its module."""
    parts = name.split(".")
    if parts[:2] in (["llm", "layers"], ["action_head", "blocks"]):
        return f"{parts[0]}_block_{parts[2]}"
    return ".".join(parts[:2]) if parts[0] in ("llm", "vision") else parts[0]


def factorise(
    residual: torch.Tensor, rank: int, config: CarveConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """A residual's stored form: {"raw"} or {"U", "V"} (rank 0 when the residual is exactly zero)."""
    dtype = _DTYPES[config.residual_dtype]
    if residual.dim() < 2 or residual.numel() < config.min_factorise_numel:
        return {"raw": residual.to(dtype)}
    matrix = residual.reshape(residual.shape[0], -1)
    if not bool(matrix.any()):
        return {
            "U": matrix.new_zeros(matrix.shape[0], 0, dtype=dtype),
            "V": matrix.new_zeros(matrix.shape[1], 0, dtype=dtype),
        }
    u, v = ops.low_rank_factors(matrix, rank, generator, config.oversample, config.power_iterations)
    return {"U": u.to(dtype), "V": v.to(dtype)}


def expand(stored: Mapping[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """Float32 residual from its stored form."""
    if "raw" in stored:
        return stored["raw"].float().reshape(shape)
    return (stored["U"].float() @ stored["V"].float().T).reshape(shape)


class Carve(ContinualMethod[CarveConfig]):
    """Continual core + residual merging with per-group beta; the text router by default."""

    base_files = (VLM_FILE, ACTION_EXPERT_FILE)

    def write_admission(
        self, seen: ExpertSet, previous: MergedModel | None, work: AtomicDirectory, progress: bool
    ) -> Mapping[str, Any]:
        """Stream every changeable tensor: update the core, factorise the new skill's residual."""
        config = self.config
        count = len(seen.experts)
        rate = 1.0 / math.sqrt(count) if config.rate == "inv_sqrt" else 1.0 / count
        base, (view,) = open_views(seen.base, seen.experts[-1:], config.task_vectors)
        vlm, head = base.file(VLM_FILE), base.file(ACTION_EXPERT_FILE)
        policy = seen.base.config["policy"]
        rank = config.rank or max(1, round(64 * int(policy["llm"]["hidden_size"]) / 896))
        earlier = set(previous.tensor_file(CORE_FILE).names) if previous else set()
        names = [n for n in vlm.names if view.is_target(n) or n in earlier]
        if config.action_expert == "core":
            names += head.names
        else:
            copy_action_expert(work.file(f"{skill_dir(count - 1)}/{ACTION_EXPERT_FILE}"), view, head.names)
        source = {n: (vlm if n in vlm else head) for n in names}
        residuals: dict[str, torch.Tensor] = {}
        task_norms: dict[str, float] = {}
        core_norms: dict[str, float] = {}
        with StreamingSafetensorsWriter(
            work.file(CORE_FILE), [(n, source[n].dtype(n), source[n].shape(n)) for n in names]
        ) as writer:
            for name in names:
                if source[name] is vlm:
                    tau = view.task_vector(name, vlm.read(name) if view.source == "dense" else None)
                else:
                    tau = view.action_expert(name).float() - head.read(name).float()
                core = (
                    previous.tensor_file(CORE_FILE).read(name).float()
                    if name in earlier
                    else torch.zeros_like(tau)
                )
                stored = ops.sign_concordant_update(core, tau, rate).to(source[name].dtype(name))
                writer.write(name, stored)
                generator = ops.generator_for(config.seed, view.skill, name)
                for part, tensor in factorise(tau - stored.float(), rank, config, generator).items():
                    residuals[f"{name}.{part}"] = tensor.contiguous()
                group = group_of(name)
                task_norms[group] = task_norms.get(group, 0.0) + float(tau.double().square().sum())
                core_norms[group] = core_norms.get(group, 0.0) + float(stored.double().square().sum())
        from safetensors.torch import save_file

        save_file(residuals, str(work.file(f"{skill_dir(count - 1)}/{RESIDUAL_FILE}")))
        group_norms = dict(previous.state["task_norms"]) if previous else {}
        group_norms[view.skill] = {g: math.sqrt(v) for g, v in task_norms.items()}
        kept = (RESIDUAL_FILE,) if config.action_expert == "core" else (RESIDUAL_FILE, ACTION_EXPERT_FILE)
        if previous is not None:
            for index in range(count - 1):
                for file in kept:
                    relative = f"{skill_dir(index)}/{file}"
                    work.file(relative).write_bytes((previous.path / relative).read_bytes())
        return {
            "rank": rank,
            "admitted": count,
            "rate": rate,
            "task_norms": group_norms,
            "core_norms": {g: math.sqrt(v) for g, v in core_norms.items()},
        }

    def betas(self, model: MergedModel, skill: str) -> dict[str, float]:
        """Beta per group for ``skill`` against the current core."""
        config = self.config
        state = model.state
        core, task = state["core_norms"], state["task_norms"][skill]
        if not config.use_beta:
            return dict.fromkeys(core, 1.0)
        return {g: min(1.0, config.gamma * task[g] / core[g]) if core[g] > 0 else 1.0 for g in core}

    def probe_tensors(self, model: MergedModel) -> dict[str, torch.Tensor]:
        """theta_0 + core (beta = 1, no residual): what the text router embeds instructions with."""
        return self._compose(model, None)

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """``theta_0 + beta * core + U V^T`` for every core tensor; the base elsewhere."""
        return self._compose(model, skill)

    def _compose(self, model: MergedModel, skill: str | None) -> dict[str, torch.Tensor]:
        tensors = {**read_all(model.base_file(VLM_FILE)), **read_all(model.base_file(ACTION_EXPERT_FILE))}
        core = model.tensor_file(CORE_FILE)
        betas = self.betas(model, skill) if skill is not None else {}
        residual = (
            read_all(model.tensor_file(f"{skill_dir(model.skill_index(skill))}/{RESIDUAL_FILE}"))
            if skill
            else {}
        )
        for name in core.names:
            weight = tensors[name]
            value = weight.float() + betas.get(group_of(name), 1.0) * core.read(name).float()
            if skill is not None:
                stored = {
                    part: residual[f"{name}.{part}"]
                    for part in ("raw", "U", "V")
                    if f"{name}.{part}" in residual
                }
                value = value + expand(stored, weight.shape)
            tensors[name] = value.to(weight.dtype)
        if skill is not None and self.config.action_expert == "own":
            own = f"{skill_dir(model.skill_index(skill))}/{ACTION_EXPERT_FILE}"
            tensors.update(read_all(model.tensor_file(own)))
        return tensors
