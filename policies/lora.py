"""LoRA on the VLM through real ``peft``, and the conversions between peft layers and our tensor names.

Upstream (VLA-Adapter / MergeVLA ``finetune.py``) applies ``LoraConfig(r=64, lora_alpha=128,
lora_dropout=0.0, target_modules="all-linear", init_lora_weights="gaussian")`` to the VLM: every
``nn.Linear`` of both vision towers (the unused last blocks and SigLIP's attention pool included), the
projector and the LLM. Ours targets the same modules by explicit name, so the action expert, queries and
proprio projector stay outside LoRA and are trained fully. peft's gaussian init gives A ~ N(0, 1/r) and B = 0.

peft renames a wrapped module's weight to ``<module>.base_layer.weight``; everything here speaks the base
namespace (``<module>.weight``, ``<module>.lora_A`` ``(rank, in)``, ``<module>.lora_B`` ``(out, rank)``),
which is the checkpoint format's (``docs/formats.md`` section 3).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from vlamergebench.policies.checkpoint import LORA_A_SUFFIX, LORA_B_SUFFIX, VLM_PREFIXES, CheckpointError
from vlamergebench.policies.config import LoRASettings

ADAPTER = "default"


def lora_targets(model: nn.Module, settings: LoRASettings) -> list[str]:
    """Names of the ``nn.Linear`` modules of the VLM (vision, projector, LLM) that LoRA adapts."""
    linears = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith(VLM_PREFIXES)
    ]
    if settings.targets == "all-linear":
        return linears
    if settings.targets == "forward-linear":
        return [name for name in linears if _on_forward_path(model, name)]
    chosen = [name for name in linears if any(name == t or name.endswith("." + t) for t in settings.targets)]
    if not chosen:
        raise ValueError(f"lora targets {list(settings.targets)} match no nn.Linear of the VLM")
    return chosen


def _on_forward_path(model: nn.Module, name: str) -> bool:
    """False for a tower's blocks after its feature block (``depth - 2``) and for SigLIP's attention pool."""
    parts = name.split(".")
    if parts[0] != "vision" or len(parts) < 3:
        return True
    if parts[2] == "attn_pool":
        return False
    if parts[2] == "blocks":
        tower = model.get_submodule(".".join(parts[:2]))
        return int(parts[3]) < tower.config.depth - 1
    return True


def add_lora(
    model: nn.Module, settings: LoRASettings, seed: int, targets: list[str] | None = None
) -> list[str]:
    """Inject peft LoRA layers into ``model`` in place (A drawn from ``seed``, B zero); returns the targets.

    Every other parameter of the VLM is frozen; the caller decides what else trains.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = targets if targets is not None else lora_targets(model, settings)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=0.0,
        target_modules=targets,
        init_lora_weights="gaussian",
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's global RNG
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    return targets


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def lora_factors(model: nn.Module) -> dict[str, Tensor]:
    """``<module>.lora_A`` ``(rank, in)`` and ``<module>.lora_B`` ``(out, rank)`` of every LoRA layer."""
    factors = {}
    for name, layer in _lora_layers(model).items():
        factors[name + LORA_A_SUFFIX] = layer.lora_A[ADAPTER].weight.detach()
        factors[name + LORA_B_SUFFIX] = layer.lora_B[ADAPTER].weight.detach()
    if not factors:
        raise ValueError("the model has no LoRA layers")
    return factors


def load_lora_factors(model: nn.Module, factors: Mapping[str, Tensor], source: str) -> None:
    """Copy factors into the model's LoRA layers; missing, unexpected or mis-shaped tensors raise."""
    layers = _lora_layers(model)
    expected = {name + suffix for name in layers for suffix in (LORA_A_SUFFIX, LORA_B_SUFFIX)}
    missing, unexpected = sorted(expected - set(factors)), sorted(set(factors) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: LoRA tensors differ from the model's: missing {missing[:5]}"
            f"{'…' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'…' if len(unexpected) > 5 else ''}"
        )
    with torch.no_grad():
        for name, layer in layers.items():
            for suffix, param in (
                (LORA_A_SUFFIX, layer.lora_A[ADAPTER].weight),
                (LORA_B_SUFFIX, layer.lora_B[ADAPTER].weight),
            ):
                tensor = factors[name + suffix]
                if tensor.shape != param.shape:
                    raise CheckpointError(
                        f"{source}: tensor {name + suffix} has shape {tuple(tensor.shape)}, "
                        f"the model expects {tuple(param.shape)}"
                    )
                param.copy_(tensor)


def fold_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer into its base weight with peft (``W + (B @ A) * alpha / r``) and unwrap it."""
    for name, layer in _lora_layers(model).items():
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    return model


def base_namespace(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict without LoRA factors and with ``.base_layer.`` removed from names."""
    out = {}
    for name, tensor in state.items():
        if ".lora_A." in name or ".lora_B." in name:
            continue
        out[name.replace(".base_layer.", ".")] = tensor
    return out


def fold_factors(
    weights: Mapping[str, Tensor], factors: Mapping[str, Tensor], scale: float
) -> dict[str, Tensor]:
    """Dense ``<module>.weight = W + (B @ A) * scale`` for every factor pair, computed in float32.

    Args:
        weights: Base tensors in the base namespace (only the targets' ``.weight`` are read).
        factors: ``<module>.lora_A`` / ``<module>.lora_B`` tensors.
        scale: ``alpha / rank``.
    """
    dense = {}
    for name in factors:
        if not name.endswith(LORA_A_SUFFIX):
            continue
        module = name[: -len(LORA_A_SUFFIX)]
        weight = weights[module + ".weight"]
        delta = (factors[module + LORA_B_SUFFIX].float() @ factors[name].float()) * scale
        dense[module + ".weight"] = (weight.float() + delta).to(weight.dtype)
    return dense
