"""Model <-> checkpoint directory (``docs/formats.md`` section 3), and the released upstream layouts.

A base holds every VLM tensor (``vlm.safetensors``) plus its own multi-task head; its ``base_id`` is the
SHA-256 of that file. An expert holds its LoRA factors (``lora.safetensors``), optionally the folded dense
weights of the LoRA targets (``dense.safetensors``), and its own head, queries and proprio projector. Tensors
keep their dtype, so a save/load round trip is bit-exact. The file format itself (validation, atomic
writes) is ``policies/checkpoint.py``; this module decides which tensor goes where.

Released layouts read here (key renames from the research notes, section 8):

- VLA-Adapter / MergeVLA HF directories: ``model.safetensors`` (or shards with an index) with
  ``vision_backbone.{featurizer,fused_featurizer}.*``, ``projector.fc{1,2,3}.*``, ``language_model.model.*``
  (``language_model.lm_head.weight`` is the tied embedding and is dropped), ``action_queries.weight``; the
  head in ``action_head--*checkpoint.pt`` (``[module.]model.mlp_resnet_blocks.N.*``), the proprio projector
  in ``proprio_projector--*checkpoint.pt``, statistics in ``dataset_statistics.json``. ``.pt`` files are
  read with ``torch.load(weights_only=True)``: plain tensors only, never arbitrary pickles.
- Prismatic VLM checkpoints (``{"model": {"vision_backbone", "projector", "llm_backbone"}}``):
  ``dino_featurizer`` -> ``featurizer``, ``siglip_featurizer`` -> ``fused_featurizer``,
  ``projector.{0,2,4}`` -> ``fc{1,2,3}``, ``llm.model`` -> ``llm``, timm's ``gamma`` -> ``scale_factor``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlamergebench.policies import checkpoint as ckpt
from vlamergebench.policies.checkpoint import CheckpointDir, CheckpointError, NormStats
from vlamergebench.policies.config import ConfigError, VLAConfig
from vlamergebench.policies.lora import add_lora, base_namespace, fold_factors, fold_lora, lora_factors
from vlamergebench.policies.lora import load_lora_factors as _load_lora_factors
from vlamergebench.policies.model import VLA, build_model, load_tensors


def split_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a base-namespace state dict into (VLM tensors, action-expert tensors); other names raise."""
    vlm, head = {}, {}
    for name, tensor in state.items():
        if name.startswith(ckpt.VLM_PREFIXES):
            vlm[name] = tensor
        elif name.startswith(ckpt.ACTION_EXPERT_PREFIXES):
            head[name] = tensor
        else:
            raise CheckpointError(f"tensor {name} belongs to neither the VLM nor the action expert")
    return vlm, head


def _safetensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    import hashlib

    from safetensors.torch import save

    return hashlib.sha256(save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})).hexdigest()


def save_base(
    model: VLA,
    path: str | os.PathLike[str],
    *,
    norm_stats: NormStats,
    instructions: Sequence[str],
    provenance: Mapping[str, Any],
    overwrite: bool = False,
) -> CheckpointDir:
    """Write ``model`` (no LoRA layers) as a base checkpoint; returns it, validated."""
    vlm, head = split_state(base_namespace(model.state_dict()))
    base_id = _safetensors_sha256(vlm)
    config = {
        "role": "base",
        "policy": model.config.to_dict(),
        "base_id": base_id,
        "skill": None,
        "lora": None,
        "provenance": dict(provenance),
    }
    written = ckpt.write_checkpoint(
        path,
        config,
        {ckpt.VLM_FILE: vlm, ckpt.ACTION_EXPERT_FILE: head},
        norm_stats,
        instructions,
        overwrite=overwrite,
    )
    actual = ckpt.file_sha256(written.file(ckpt.VLM_FILE))
    if actual != base_id:  # the in-memory serialisation must equal the file's, or base ids would not match
        raise CheckpointError(
            f"{written.file(ckpt.VLM_FILE)}: sha256 {actual} differs from computed {base_id}"
        )
    return written


def save_expert(
    model: VLA,
    path: str | os.PathLike[str],
    *,
    base: CheckpointDir,
    skill: Mapping[str, Any],
    norm_stats: NormStats,
    instructions: Sequence[str],
    provenance: Mapping[str, Any],
    dense: bool = False,
    overwrite: bool = False,
) -> CheckpointDir:
    """Write an expert: LoRA factors (and, with ``dense``, the folded weights), head, queries, proprio.

    ``model`` must carry peft LoRA layers (``lora.add_lora``); its frozen VLM must equal the base's.
    """
    factors = {name: tensor.detach().clone() for name, tensor in lora_factors(model).items()}
    _, head = split_state(base_namespace(model.state_dict()))
    targets = sorted(
        name[: -len(ckpt.LORA_A_SUFFIX)] for name in factors if name.endswith(ckpt.LORA_A_SUFFIX)
    )
    lora = model.config.lora
    files = {ckpt.LORA_FILE: factors, ckpt.ACTION_EXPERT_FILE: head}
    if dense:
        files[ckpt.DENSE_FILE] = fold_factors(base_namespace(model.state_dict()), factors, lora.scale)
    config = {
        "role": "expert",
        "policy": model.config.to_dict(),
        "base_id": base.base_id,
        "skill": dict(skill),
        "lora": {"rank": lora.rank, "alpha": lora.alpha, "targets": targets},
        "provenance": dict(provenance),
    }
    return ckpt.write_checkpoint(path, config, files, norm_stats, instructions, overwrite=overwrite)


def read_tensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file; a missing or corrupt file raises naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None


def policy_config(checkpoint: CheckpointDir) -> VLAConfig:
    """The ``VLAConfig`` stored in a checkpoint's ``config.json``."""
    try:
        return VLAConfig.from_dict(
            checkpoint.config["policy"], where=f"{checkpoint.file(ckpt.CONFIG_FILE)}: policy"
        )
    except (ConfigError, TypeError, KeyError) as error:
        raise CheckpointError(str(error)) from None


def open_pair(
    path: str | os.PathLike[str], base: str | os.PathLike[str] | None
) -> tuple[CheckpointDir, CheckpointDir]:
    """Open a checkpoint and the base it needs (itself for a base); checks the base id and config."""
    checkpoint = CheckpointDir.open(path)
    if checkpoint.role == "base":
        return checkpoint, checkpoint
    if base is None:
        raise CheckpointError(f"{checkpoint.path}: an expert checkpoint needs its base directory (base=...)")
    base_dir = CheckpointDir.open(base)
    if base_dir.role != "base":
        raise CheckpointError(f"{base_dir.path}: given as the base but its role is {base_dir.role!r}")
    if base_dir.base_id != checkpoint.base_id:
        raise CheckpointError(
            f"{checkpoint.path}: trained on base {checkpoint.base_id[:12]}…, but {base_dir.path} "
            f"is base {base_dir.base_id[:12]}…"
        )
    if policy_config(base_dir).replace(lora=policy_config(checkpoint).lora) != policy_config(checkpoint):
        raise CheckpointError(
            f"{checkpoint.path}: its policy config differs from the base's ({base_dir.path})"
        )
    return checkpoint, base_dir


def load_model(
    path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None, fold: bool = False
) -> tuple[VLA, CheckpointDir]:
    """Build the model of a base or expert checkpoint, strictly and with the stored dtypes.

    An expert gets peft LoRA layers carrying its factors (``fold=False``) or has them merged (``fold=True``);
    a dense expert (a full fine-tune) is the base with its ``dense.safetensors`` tensors in place.
    """
    checkpoint, base_dir = open_pair(path, base)
    model = build_model(policy_config(checkpoint), seed=0)
    vlm = read_tensors(base_dir.file(ckpt.VLM_FILE))
    dtype = next(iter(vlm.values())).dtype
    head = read_tensors(checkpoint.file(ckpt.ACTION_EXPERT_FILE))
    sources = f"{base_dir.path} + {checkpoint.file(ckpt.ACTION_EXPERT_FILE)}"
    if checkpoint.is_dense_expert:
        vlm.update(_dense_weights(checkpoint, vlm))
        sources += f" + {checkpoint.file(ckpt.DENSE_FILE)}"
    load_tensors(model, {**vlm, **head}, sources)
    model.to(dtype)
    if checkpoint.role == "expert" and not checkpoint.is_dense_expert:
        stored = checkpoint.config["lora"]
        settings = model.config.lora
        if (int(stored["rank"]), float(stored["alpha"])) != (settings.rank, settings.alpha):
            raise CheckpointError(
                f"{checkpoint.file(ckpt.CONFIG_FILE)}: lora rank/alpha {stored['rank']}/"
                f"{stored['alpha']} differ from policy.lora {settings.rank}/{settings.alpha}"
            )
        add_lora(model, settings, seed=0, targets=list(stored["targets"]))
        _load_lora_factors(
            model, read_tensors(checkpoint.file(ckpt.LORA_FILE)), str(checkpoint.file(ckpt.LORA_FILE))
        )
        if fold:
            fold_lora(model)
    return model, checkpoint


def expert_state_dict(path: str | os.PathLike[str], base: str | os.PathLike[str]) -> dict[str, Tensor]:
    """An expert as one tensor dict in the base namespace: base VLM + (B @ A) * alpha / r, and its head.

    A dense expert gives its own VLM tensors in place of the folded LoRA.
    """
    checkpoint, base_dir = open_pair(path, base)
    vlm = read_tensors(base_dir.file(ckpt.VLM_FILE))
    if checkpoint.is_dense_expert:
        dense = _dense_weights(checkpoint, vlm)
    else:
        factors = read_tensors(checkpoint.file(ckpt.LORA_FILE))
        dense = fold_factors(vlm, factors, checkpoint.lora_scale)
    return {**vlm, **dense, **read_tensors(checkpoint.file(ckpt.ACTION_EXPERT_FILE))}


def _dense_weights(checkpoint: CheckpointDir, vlm: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A dense expert's VLM tensors, each checked against the base's name, shape and dtype."""
    path = checkpoint.file(ckpt.DENSE_FILE)
    dense = read_tensors(path)
    for name, tensor in dense.items():
        reference = vlm.get(name)
        if reference is None or (reference.shape, reference.dtype) != (tensor.shape, tensor.dtype):
            expected = "absent" if reference is None else f"{reference.dtype} {list(reference.shape)}"
            raise CheckpointError(
                f"{path}: tensor {name} is {tensor.dtype} {list(tensor.shape)}; in the base it is {expected}"
            )
    return dense


# --- released upstream layouts ------------------------------------------------------------------------------

_HF_VLM_RENAMES = (
    ("vision_backbone.featurizer.", "vision.featurizer."),
    ("vision_backbone.fused_featurizer.", "vision.fused_featurizer."),
    ("projector.", "projector."),
    ("language_model.model.", "llm."),
    ("action_queries.", "action_queries."),
)
_PRISMATIC_RENAMES = {
    "vision_backbone": (
        ("dino_featurizer.", "vision.featurizer."),
        ("siglip_featurizer.", "vision.fused_featurizer."),
    ),
    "projector": (
        ("projector.0.", "projector.fc1."),
        ("projector.2.", "projector.fc2."),
        ("projector.4.", "projector.fc3."),
    ),
    "llm_backbone": (("llm.model.", "llm."),),
}
_DROPPED = re.compile(r"^(language_model\.lm_head\.weight|llm\.lm_head\.weight)$")


def _rename(name: str, renames: Sequence[tuple[str, str]], source: str) -> str:
    for old, new in renames:
        if name.startswith(old):
            return _gamma(new + name[len(old) :])
    raise CheckpointError(
        f"{source}: tensor {name} matches no known upstream prefix {[old for old, _ in renames]}"
    )


def _gamma(name: str) -> str:
    return re.sub(r"\.(ls[12])\.gamma$", r".\1.scale_factor", name)


def _torch_tensors(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # never unpickles arbitrary objects
    except Exception as error:
        raise CheckpointError(f"{path}: not a weights-only torch checkpoint ({error})") from None


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise CheckpointError(f"{directory}: expected exactly one {pattern}, found {[p.name for p in found]}")
    return found[0]


def read_model_directory(directory: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Every tensor of a HF-style directory: ``model.safetensors``, or the shards its index lists."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        return read_tensors(directory / "model.safetensors")
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({error})") from None
    return {k: v for shard in shards for k, v in read_tensors(directory / shard).items()}


def rename_released(raw: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Released HF VLA tensor names into ours (the tied ``lm_head`` dropped); an unknown prefix raises."""
    return {_rename(k, _HF_VLM_RENAMES, source): v for k, v in raw.items() if not _DROPPED.match(k)}


def read_released_weights(directory: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The ``model.safetensors`` (or its shards) of a released HF VLA / VLM directory, in our names.

    That is the VLM and, for a VLA, the action queries.
    """
    return rename_released(read_model_directory(directory), str(directory))


def has_released_head(directory: str | os.PathLike[str]) -> bool:
    """Whether a released directory holds an action head (``action_head--*checkpoint.pt``): a VLA."""
    return any(Path(directory).glob("action_head--*checkpoint.pt"))


def read_released_vla(
    directory: str | os.PathLike[str], unnorm_key: str | None = None
) -> tuple[dict[str, Tensor], NormStats]:
    """A released VLA-Adapter / MergeVLA expert directory as our tensor dict (base namespace) and stats."""
    directory = Path(directory)
    tensors = read_released_weights(directory)
    head_path = _one(directory, "action_head--*checkpoint.pt")
    for name, value in _torch_tensors(head_path).items():
        name = name.removeprefix("module.")
        if not name.startswith("model."):
            raise CheckpointError(f"{head_path}: tensor {name} does not start with 'model.'")
        tensors["action_head." + name[len("model.") :].replace("mlp_resnet_blocks.", "blocks.")] = value
    proprio_path = _one(directory, "proprio_projector--*checkpoint.pt")
    for name, value in _torch_tensors(proprio_path).items():
        tensors["proprio_projector." + name.removeprefix("module.")] = value
    return tensors, read_released_stats(directory / "dataset_statistics.json", unnorm_key)


def read_released_stats(path: Path, unnorm_key: str | None) -> NormStats:
    """The statistics of one dataset (``unnorm_key``; may be omitted when there is one) of a release."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    stats = json.loads(path.read_text())
    if unnorm_key is None:
        if len(stats) != 1:
            raise CheckpointError(f"{path}: several datasets {sorted(stats)}; pass unnorm_key")
        unnorm_key = next(iter(stats))
    if unnorm_key not in stats:
        raise CheckpointError(f"{path}: no statistics for {unnorm_key!r}; it has {sorted(stats)}")
    entry = stats[unnorm_key]
    action = entry["action"]
    mask = action.get("mask", [True] * len(action["q01"]))
    return NormStats.from_dict(
        {
            "action": {"q01": action["q01"], "q99": action["q99"], "mask": mask},
            "proprio": {"q01": entry["proprio"]["q01"], "q99": entry["proprio"]["q99"]},
        },
        source=f"{path}[{unnorm_key}]",
    )


def read_prismatic_vlm(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The VLM tensors of a Prismatic ``.pt`` checkpoint, renamed into our namespace."""
    path = Path(path)
    data = _torch_tensors(path)
    model = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(model, dict) or not set(model) & set(_PRISMATIC_RENAMES):
        raise CheckpointError(f"{path}: expected {{'model': {{{', '.join(_PRISMATIC_RENAMES)}}}}}")
    tensors = {}
    for component, state in model.items():
        if component not in _PRISMATIC_RENAMES:
            raise CheckpointError(
                f"{path}: unknown component {component!r}; known {sorted(_PRISMATIC_RENAMES)}"
            )
        for name, value in state.items():
            if not _DROPPED.match(name):
                tensors[_rename(name, _PRISMATIC_RENAMES[component], f"{path}[{component}]")] = value
    return tensors
