"""The registered perturbed suites (ours, not the official LIBERO-Plus): a fixed variant list and the factory.

``vlamergebench/LIBERO-Perturbed-<Suite>-v0`` (Spatial, Object, Goal, 10) takes ``task`` and either
``variant`` (an index into :data:`VARIANTS` or its label, e.g. ``"camera-L3-s0"``) or ``perturbation`` (a
:class:`PerturbationConfig` dict, for ad-hoc or composed stacks). The variant list is fixed so that papers
using this benchmark compare like with like: 7 axes x levels 1..5 x seeds (0, 1) = 70 variants per task,
700 per suite. The protocol (docs/perturbations.md): one episode per (task, variant), from init state 0,
as LIBERO-Plus runs each of its variants once; report per axis, per level, pooled, and the unweighted mean
of the seven axes. A change to the list, the levels or the axes' parameters bumps the ids' version.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from vlamergebench.envs import LIBERO_PERTURBED_IDS
from vlamergebench.envs.libero import LiberoEnv
from vlamergebench.envs.perturb.config import AXES, MAX_LEVEL, PerturbationConfig

VARIANT_SEEDS = (0, 1)
PERTURBED_SUITES = tuple(LIBERO_PERTURBED_IDS)  # the base suites with a registered perturbed id
PROTOCOL_INIT_STATE_ID = 0  # each (task, variant) is one episode from this init state, as in LIBERO-Plus


@dataclass(frozen=True)
class Variant:
    """One entry of the fixed list: a single axis at one level with one seed."""

    axis: str
    level: int
    seed: int

    @property
    def label(self) -> str:
        """Stable text id, e.g. ``camera-L3-s0`` (the results store's ``variant`` column)."""
        return f"{self.axis}-L{self.level}-s{self.seed}"

    def config(self) -> PerturbationConfig:
        """The :class:`PerturbationConfig` of this variant."""
        return PerturbationConfig(**{self.axis: self.level}, seed=self.seed)


VARIANTS: tuple[Variant, ...] = tuple(
    Variant(axis, level, seed) for axis in AXES for level in range(1, MAX_LEVEL + 1) for seed in VARIANT_SEEDS
)
_BY_LABEL = {variant.label: variant for variant in VARIANTS}


def resolve_variant(variant: int | str) -> Variant:
    """The :class:`Variant` at an index of :data:`VARIANTS` or with a label; bad input raises."""
    if isinstance(variant, str):
        if variant not in _BY_LABEL:
            raise ValueError(
                f"unknown perturbation variant {variant!r}; labels look like 'camera-L3-s0' "
                f"(axes {list(AXES)}, levels 1..{MAX_LEVEL}, seeds {list(VARIANT_SEEDS)})"
            )
        return _BY_LABEL[variant]
    if isinstance(variant, bool) or not isinstance(variant, int) or not 0 <= variant < len(VARIANTS):
        raise ValueError(
            f"perturbation variant index must be an int in 0..{len(VARIANTS) - 1}, got {variant!r}"
        )
    return VARIANTS[variant]


def list_variants(suite: str) -> list[dict[str, Any]]:
    """The fixed (task x variant) list of a perturbed suite, in order: what one full evaluation runs.

    Returns:
        ``[{"task_id", "task", "variant", "variant_index", "axis", "level", "seed", "init_state_id"}, ...]``.
    """
    if suite not in PERTURBED_SUITES:
        raise ValueError(f"no perturbed suite for {suite!r}; perturbed suites: {list(PERTURBED_SUITES)}")
    return [
        {
            "task_id": task["task_id"],
            "task": task["name"],
            "variant": variant.label,
            "variant_index": index,
            "axis": variant.axis,
            "level": variant.level,
            "seed": variant.seed,
            "init_state_id": PROTOCOL_INIT_STATE_ID,
        }
        for task in LiberoEnv.list_tasks(suite)
        for index, variant in enumerate(VARIANTS)
    ]


class PerturbedLiberoFactory:
    """Entry point of the perturbed suites: builds the scene env and stacks the language and noise wrappers.

    Calling it returns ``SensorNoise(InstructionRewrite(PerturbedLiberoEnv(...)))``, each layer present only
    when its level is non-zero; every layer records its arguments, so ``env.spec`` names the exact stack.
    """

    metadata = LiberoEnv.metadata  # read by gymnasium.make to check render_mode

    def __call__(
        self,
        suite: str,
        task: int | str | None = None,
        variant: int | str | None = None,
        perturbation: PerturbationConfig | Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
        **libero_kwargs: Any,
    ) -> gym.Env:
        """Build one perturbed task; exactly one of ``variant`` and ``perturbation`` must be given."""
        from vlamergebench.envs.perturb.env import PerturbedLiberoEnv
        from vlamergebench.envs.perturb.language import InstructionRewrite
        from vlamergebench.envs.perturb.noise import SensorNoise

        if (variant is None) == (perturbation is None):
            raise ValueError(
                "pass exactly one of variant= (an index 0..69 or a label such as 'camera-L3-s0', see "
                "vlamergebench.envs.perturb.VARIANTS) and perturbation= (a PerturbationConfig dict)"
            )
        label = None
        if variant is not None:
            chosen = resolve_variant(variant)
            config, label = chosen.config(), chosen.label
        elif isinstance(perturbation, Mapping):
            config = PerturbationConfig.from_dict(perturbation)
        elif isinstance(perturbation, PerturbationConfig):
            config = perturbation
        else:
            raise TypeError(
                f"perturbation must be a PerturbationConfig or a dict, got {type(perturbation).__name__}"
            )
        scene = dataclasses.replace(config, noise=0, language=0)
        env: gym.Env = PerturbedLiberoEnv(
            suite, task, perturbation=scene, variant=label, cache_dir=cache_dir, **libero_kwargs
        )
        if config.language:
            env = InstructionRewrite(
                env, config.language, config.seed, config.language_source, config.liberoplus_root
            )
        if config.noise:
            env = SensorNoise(env, config.noise, config.seed, config.noise_kind)
        return env

    def list_tasks(self, suite: str, **_spec_kwargs: Any) -> list[dict[str, Any]]:
        """Catalogue hook (as ``LiberoEnv.list_tasks``): the suite's tasks, each with its variant count."""
        return [{**task, "variants": len(VARIANTS)} for task in LiberoEnv.list_tasks(suite)]


make_perturbed_libero = PerturbedLiberoFactory()
