"""The policy-preset registry: named ``VLAConfig`` factories, through ``vlamergebench.registry``.

``PRESETS.make("tiny")`` returns a fresh ``VLAConfig``; entry points are strings, so registering imports
nothing. Add a preset by adding one ``register`` call here and a factory in ``config.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vlamergebench.registry import Registry

if TYPE_CHECKING:
    from vlamergebench.policies.config import VLAConfig

PRESETS = Registry("policy preset")
PRESETS.register(
    "tiny",
    "vlamergebench.policies.config:tiny_config",
    description="CPU-scale MergeVLA policy (84 px, 4-layer Qwen2 of width 128), the embedded default",
)
PRESETS.register(
    "small",
    "vlamergebench.policies.config:small_config",
    description="deeper CPU-scale policy (84 px, 8-layer Qwen2 of width 128, 8 head blocks), default v2",
)
PRESETS.register(
    "reference",
    "vlamergebench.policies.config:reference_config",
    description="published MergeVLA sizes: DINOv2-L/14-reg4 + SigLIP so400m/14, Qwen2.5-0.5B, 24-block head",
    paper="2511.18810",
)


def make_config(name: str, overrides: Mapping[str, Any] | None = None) -> VLAConfig:
    """The ``VLAConfig`` of preset ``name``, with ``overrides`` merged into its JSON form.

    Overrides nest like the JSON (``{"action_dim": 14, "llm": {"num_layers": 2}}``); an unknown name, preset
    or field raises naming it. This is how a base for another embodiment (ALOHA's 14-D actions, SO-101's
    joint states) is made from a preset.
    """
    config = PRESETS.make(name)
    if not overrides:
        return config
    from vlamergebench.policies.config import VLAConfig

    return VLAConfig.from_dict(_merged(config.to_dict(), overrides, "policy"), f"--policy-config on {name!r}")


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any], where: str) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merged(merged[key], value, f"{where}.{key}")
        else:
            merged[key] = value
    return merged
