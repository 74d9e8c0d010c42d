"""Experts trained elsewhere, into an expert set: PEFT adapters and released MergeVLA / VLA-Adapter experts.

Every importer writes a standard expert checkpoint (docs/formats.md section 3) on a given base checkpoint, so
every merge method reads it as it reads experts trained here. Only safetensors, JSON and weights-only torch
files are read.

- **PEFT adapter directory** (``adapter_config.json`` + ``adapter_model.safetensors``, as
  ``PeftModel.save_pretrained`` writes it): tensors ``base_model.model.<module>.lora_A.weight`` (rank, in) and
  ``...lora_B.weight`` (out, rank); ``r`` and ``lora_alpha`` give the scale ``alpha / r``. Module names are
  either this package's (``llm.layers.0.self_attn.q_proj``) or the released HF VLA's
  (``language_model.model.layers.0...``, ``vision_backbone.featurizer...``), renamed as ``read_released_vla``
  renames. Per-module ranks or alphas (``rank_pattern``, ``alpha_pattern``), rsLoRA and DoRA change the
  update rule and are refused by name. The adapter holds no action head: the expert takes the base's, unless
  the caller passes another.
- **Released expert directory** (MergeVLA / VLA-Adapter: ``model.safetensors`` with the dense VLM and action
  queries, ``action_head--*checkpoint.pt``, ``proprio_projector--*checkpoint.pt``, ``dataset_statistics.json``
  and the LoRA in ``lora_adapter/``): LoRA from ``lora_adapter/``, head, queries and proprio projector from
  the release, norm statistics under its ``unnorm_key``. The released dense VLM is checked against base +
  LoRA on one target, which catches a wrong ``--base``. Without ``lora_adapter/`` the release is a dense
  expert.
- **Dense full fine-tune** (a whole-model safetensors file or directory, our names or the release's): a
  *dense expert*, ``dense.safetensors`` holding the VLM tensors that differ from the base and no LoRA; its
  task vector is ``W_ft - W_0``. Methods that work on LoRA factors refuse it (``needs_lora_factors``).
- **Base from a release** (:func:`import_released_base`): a released VLA directory (or a VLM-only one, whose
  action expert is then initialised from seeds) as a base checkpoint of a given policy config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlamergebench.policies.checkpoint import (
    ACTION_EXPERT_FILE,
    ACTION_EXPERT_PREFIXES,
    DENSE_FILE,
    LORA_A_SUFFIX,
    LORA_B_SUFFIX,
    LORA_FILE,
    VLM_FILE,
    VLM_PREFIXES,
    CheckpointDir,
    CheckpointError,
    NormStats,
    write_checkpoint,
)
from vlamergebench.policies.io import (
    has_released_head,
    read_model_directory,
    read_released_stats,
    read_released_vla,
    read_released_weights,
    read_tensors,
    rename_released,
    save_base,
)
from vlamergebench.policies.model import build_model, init_head, load_tensors

if TYPE_CHECKING:
    from vlamergebench.policies.config import VLAConfig

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
RELEASED_ADAPTER_DIR = "lora_adapter"
_HF_TO_OURS = (
    ("vision_backbone.featurizer.", "vision.featurizer."),
    ("vision_backbone.fused_featurizer.", "vision.fused_featurizer."),
    ("language_model.model.", "llm."),
)
_REFUSED_OPTIONS = {
    "rank_pattern": "per-module ranks",
    "alpha_pattern": "per-module alphas",
    "use_rslora": "rsLoRA scaling (alpha / sqrt(r))",
    "use_dora": "DoRA magnitudes",
}


def _our_module(name: str) -> str:
    for theirs, ours in _HF_TO_OURS:
        if name.startswith(theirs):
            return ours + name[len(theirs) :]
    return name


def read_peft_adapter(directory: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], int, float]:
    """A PEFT LoRA adapter directory as ``(<module>.lora_A / .lora_B tensors, rank, alpha)`` in our names."""
    directory = Path(directory)
    config_path, weights_path = directory / PEFT_CONFIG, directory / PEFT_WEIGHTS
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing: not a PEFT adapter directory")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path}: not valid JSON ({error})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{config_path}: peft_type is {config.get('peft_type')!r}; only LORA imports")
    for key, what in _REFUSED_OPTIONS.items():
        if config.get(key):
            raise CheckpointError(
                f"{config_path}: {key} is set ({what}); only plain LoRA (W + alpha/r B A) imports"
            )
    try:
        rank, alpha = int(config["r"]), float(config["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{config_path}: fields 'r' and 'lora_alpha' must be numbers") from None
    factors = {}
    for name, tensor in read_tensors(weights_path).items():
        for peft_suffix, ours in ((".lora_A.weight", LORA_A_SUFFIX), (".lora_B.weight", LORA_B_SUFFIX)):
            if name.startswith(PEFT_PREFIX) and name.endswith(peft_suffix):
                module = _our_module(name[len(PEFT_PREFIX) : -len(peft_suffix)])
                factors[module + ours] = tensor
                break
        else:
            raise CheckpointError(
                f"{weights_path}: tensor {name!r} is not base_model.model.<module>.lora_A/B.weight "
                "(embeddings, biases and modules_to_save do not import)"
            )
    for name, tensor in factors.items():
        expected = rank if name.endswith(LORA_A_SUFFIX) else None
        if tensor.ndim != 2 or (expected is not None and tensor.shape[0] != rank):
            raise CheckpointError(f"{weights_path}: {name} has shape {tuple(tensor.shape)}, rank is {rank}")
    return factors, rank, alpha


def _check_factors(factors: Mapping[str, torch.Tensor], base: CheckpointDir, source: str) -> list[str]:
    """The LoRA targets, after checking each factor pair against the base's weight shape."""
    from safetensors import safe_open

    with safe_open(base.file(VLM_FILE), "pt") as vlm_file:  # headers only: names and shapes
        shapes = {name: tuple(vlm_file.get_slice(name).get_shape()) for name in vlm_file.keys()}  # noqa: SIM118
    targets = sorted(name[: -len(LORA_A_SUFFIX)] for name in factors if name.endswith(LORA_A_SUFFIX))
    for module in targets:
        if module + LORA_B_SUFFIX not in factors:
            raise CheckpointError(f"{source}: {module} has lora_A but no lora_B")
        weight = module + ".weight"
        if not module.startswith(VLM_PREFIXES) or weight not in shapes:
            raise CheckpointError(f"{source}: LoRA target {module} is not a weight of the base's VLM")
        a, b = factors[module + LORA_A_SUFFIX], factors[module + LORA_B_SUFFIX]
        if (b.shape[0], a.shape[1]) != shapes[weight] or a.shape[0] != b.shape[1]:
            raise CheckpointError(
                f"{source}: {module}: B {tuple(b.shape)} @ A {tuple(a.shape)} does not give the base's "
                f"{weight} {shapes[weight]}"
            )
    unpaired = sorted(
        name
        for name in factors
        if name.endswith(LORA_B_SUFFIX) and name[: -len(LORA_B_SUFFIX)] not in targets
    )
    if unpaired:
        raise CheckpointError(f"{source}: lora_B without lora_A: {unpaired[:5]}")
    return targets


def write_imported_expert(
    out: str | os.PathLike[str],
    base: CheckpointDir,
    factors: Mapping[str, torch.Tensor],
    rank: int,
    alpha: float,
    action_expert: Mapping[str, torch.Tensor],
    norm_stats: NormStats,
    skill: Mapping[str, Any],
    instructions: Sequence[str],
    provenance: Mapping[str, Any],
) -> CheckpointDir:
    """Write an expert checkpoint on ``base`` from LoRA factors and an action expert (checked against it)."""
    targets = _check_factors(factors, base, str(provenance.get("source", "imported LoRA")))
    head = _checked_head(action_expert, base, str(provenance.get("source")))
    dtype = next(iter(read_tensors(base.file(VLM_FILE)).values())).dtype
    policy = {**dict(base.config["policy"]), "lora": {"rank": rank, "alpha": alpha, "targets": targets}}
    config = {
        "role": "expert",
        "policy": policy,
        "base_id": base.base_id,
        "skill": dict(skill),
        "lora": {"rank": rank, "alpha": alpha, "targets": targets},
        "provenance": dict(provenance),
    }
    lora = {name: tensor.to(dtype).contiguous() for name, tensor in factors.items()}
    return write_checkpoint(
        out, config, {LORA_FILE: lora, ACTION_EXPERT_FILE: head}, norm_stats, instructions
    )


def _checked_head(
    action_expert: Mapping[str, torch.Tensor], base: CheckpointDir, source: str
) -> dict[str, torch.Tensor]:
    """The action expert in the base's names, shapes and dtypes (a missing or extra tensor raises)."""
    head_reference = read_tensors(base.file(ACTION_EXPERT_FILE))
    missing, extra = (
        sorted(set(head_reference) - set(action_expert)),
        sorted(set(action_expert) - set(head_reference)),
    )
    if missing or extra:
        raise CheckpointError(
            f"{source}: action expert differs from the base's: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    head = {}
    for name, reference in head_reference.items():
        tensor = action_expert[name]
        if tensor.shape != reference.shape:
            raise CheckpointError(
                f"{source}: action-expert tensor {name} has shape {tuple(tensor.shape)}, "
                f"the base has {tuple(reference.shape)}"
            )
        head[name] = tensor.to(reference.dtype)
    return head


def import_peft_adapter(
    adapter: str | os.PathLike[str],
    base: CheckpointDir,
    out: str | os.PathLike[str],
    *,
    skill: Mapping[str, Any],
    instructions: Sequence[str] = (),
    action_expert: str | os.PathLike[str] | None = None,
    norm_stats: NormStats | None = None,
) -> CheckpointDir:
    """An expert from a PEFT adapter directory.

    Its head is ``action_expert`` (a safetensors file in our names) or the base's; its norm statistics are
    ``norm_stats`` or the base's.
    """
    factors, rank, alpha = read_peft_adapter(adapter)
    head_path = Path(action_expert) if action_expert else base.file(ACTION_EXPERT_FILE)
    return write_imported_expert(
        out,
        base,
        factors,
        rank,
        alpha,
        read_tensors(head_path),
        norm_stats or base.norm_stats(),
        skill,
        instructions,
        {"imported_from": "peft", "source": str(Path(adapter).resolve()), "action_expert": str(head_path)},
    )


def import_released_expert(
    release: str | os.PathLike[str],
    base: CheckpointDir,
    out: str | os.PathLike[str],
    *,
    skill: Mapping[str, Any],
    instructions: Sequence[str] = (),
    unnorm_key: str | None = None,
    check_atol: float = 1e-2,
) -> CheckpointDir:
    """An expert from a released MergeVLA / VLA-Adapter directory.

    With its LoRA in ``lora_adapter/``, a LoRA expert; without, its dense weights are the expert (a full
    fine-tune: :func:`import_dense_expert`).
    """
    release = Path(release)
    adapter = release / RELEASED_ADAPTER_DIR
    tensors, stats = read_released_vla(release, unnorm_key)
    if not adapter.exists():
        provenance = {"imported_from": "released", "source": str(release.resolve()), "unnorm_key": unnorm_key}
        return import_dense_expert(tensors, base, out, skill=skill, instructions=instructions,
                                   norm_stats=stats, provenance=provenance)  # fmt: skip
    factors, rank, alpha = read_peft_adapter(adapter)
    _check_dense_against_base(tensors, factors, alpha / rank, base, release, check_atol)
    head = {name: tensor for name, tensor in tensors.items() if name.startswith(ACTION_EXPERT_PREFIXES)}
    provenance = {"imported_from": "released", "source": str(release.resolve()), "unnorm_key": unnorm_key}
    return write_imported_expert(
        out, base, factors, rank, alpha, head, stats, skill, instructions, provenance
    )


def _check_dense_against_base(
    dense: Mapping[str, torch.Tensor],
    factors: Mapping[str, torch.Tensor],
    scale: float,
    base: CheckpointDir,
    release: Path,
    atol: float,
) -> None:
    """The release's dense weight of the first target equals base + LoRA: else ``--base`` is not its base."""
    from safetensors import safe_open

    module = sorted(name for name in factors if name.endswith(LORA_A_SUFFIX))[0][: -len(LORA_A_SUFFIX)]
    weight = module + ".weight"
    if weight not in dense:
        raise CheckpointError(f"{release}/model.safetensors: no {weight}, a LoRA target of lora_adapter/")
    with safe_open(base.file(VLM_FILE), "pt") as vlm_file:
        base_weight = vlm_file.get_tensor(weight).float()
    expected = (
        base_weight
        + scale * factors[module + LORA_B_SUFFIX].float() @ factors[module + LORA_A_SUFFIX].float()
    )
    error = float((dense[weight].float() - expected).abs().max())
    if error > atol:
        raise CheckpointError(
            f"{release}: its dense {weight} differs from base + LoRA by {error:.3g} (> {atol}); "
            f"is {base.path} the base these experts were trained on?"
        )


# ---- dense experts (full fine-tunes) ------------------------------------------------------------------


def read_model_tensors(source: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every tensor of a whole-model safetensors file or directory, in our names.

    ``source`` is a ``.safetensors`` file, or a directory with ``model.safetensors`` (or shards and their
    ``model.safetensors.index.json``). Names are this package's (``llm.layers.0...``, ``action_head...``) or
    the released HF VLA's (``language_model.model...``), renamed as ``read_released_vla`` renames.
    """
    source = Path(source)
    raw = read_model_directory(source) if source.is_dir() else read_tensors(source)
    if all(name.startswith(VLM_PREFIXES + ACTION_EXPERT_PREFIXES) for name in raw):
        return raw
    return rename_released(raw, str(source))


def import_dense_expert(
    tensors: Mapping[str, torch.Tensor],
    base: CheckpointDir,
    out: str | os.PathLike[str],
    *,
    skill: Mapping[str, Any],
    instructions: Sequence[str] = (),
    norm_stats: NormStats | None = None,
    action_expert: Mapping[str, torch.Tensor] | None = None,
    provenance: Mapping[str, Any],
    max_relative_change: float = 0.5,
) -> CheckpointDir:
    """A dense expert (a full fine-tune of ``base``) from its whole-model tensors, in our names.

    Every VLM tensor of the base must be there with its shape; those that differ from the base's (after a cast
    to the base's dtype) are written to ``dense.safetensors``, so the expert's task vector is ``W_ft - W_0``
    on them and 0 elsewhere. The action expert is the fine-tune's (when it has one), else ``action_expert``,
    else the base's; norm statistics are ``norm_stats`` or the base's. A fine-tune whose changed matrices
    moved by more than ``max_relative_change`` of their norm (median) is refused: it is not a fine-tune of
    this base.
    """
    source = str(provenance.get("source", "dense fine-tune"))
    base_vlm = read_tensors(base.file(VLM_FILE))
    vlm = {name: tensor for name, tensor in tensors.items() if name.startswith(VLM_PREFIXES)}
    head = {name: tensor for name, tensor in tensors.items() if name.startswith(ACTION_EXPERT_PREFIXES)}
    other = sorted(set(tensors) - set(vlm) - set(head))
    missing, extra = sorted(set(base_vlm) - set(vlm)), sorted(set(vlm) - set(base_vlm))
    if other or missing or extra:
        raise CheckpointError(
            f"{source}: not the base's architecture: missing VLM tensors {missing[:5]}, unexpected "
            f"{(extra + other)[:5]} ({len(missing)} missing, {len(extra) + len(other)} unexpected)"
        )
    changed: dict[str, torch.Tensor] = {}
    ratios = []
    cast_from = sorted({str(t.dtype) for n, t in vlm.items() if t.dtype != base_vlm[n].dtype})
    for name, reference in base_vlm.items():
        tensor = vlm[name]
        if tensor.shape != reference.shape:
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"the base has {tuple(reference.shape)}"
            )
        tensor = tensor.to(reference.dtype)
        if torch.equal(tensor, reference):
            continue
        changed[name] = tensor.contiguous()
        if tensor.ndim == 2:
            moved = (tensor.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-12)
            ratios.append(float(moved))
    median = float(torch.tensor(ratios).median()) if ratios else 0.0
    if median > max_relative_change:
        raise CheckpointError(
            f"{source}: its changed matrices differ from the base's by {median:.3g} of their norm (median "
            f"||W - W_0|| / ||W_0||, > {max_relative_change}); is {base.path} the base it was tuned from?"
        )
    chosen_head = head or action_expert or read_tensors(base.file(ACTION_EXPERT_FILE))
    config = {
        "role": "expert",
        "policy": dict(base.config["policy"]),
        "base_id": base.base_id,
        "skill": dict(skill),
        "lora": None,
        "provenance": {
            **dict(provenance),
            "dense_tensors": len(changed),
            "head": "fine-tune" if head else ("given" if action_expert else "base"),
            **({"cast_from": cast_from} if cast_from else {}),
        },
    }
    files = {DENSE_FILE: changed, ACTION_EXPERT_FILE: _checked_head(chosen_head, base, source)}
    return write_checkpoint(out, config, files, norm_stats or base.norm_stats(), instructions)


def import_dense_finetune(
    finetune: str | os.PathLike[str],
    base: CheckpointDir,
    out: str | os.PathLike[str],
    *,
    skill: Mapping[str, Any],
    instructions: Sequence[str] = (),
    action_expert: str | os.PathLike[str] | None = None,
    norm_stats: NormStats | None = None,
    max_relative_change: float = 0.5,
) -> CheckpointDir:
    """A dense expert from a whole-model safetensors file or directory (:func:`read_model_tensors`)."""
    head = read_tensors(Path(action_expert)) if action_expert else None
    provenance = {"imported_from": "dense", "source": str(Path(finetune).resolve())}
    return import_dense_expert(
        read_model_tensors(finetune), base, out, skill=skill, instructions=instructions,
        norm_stats=norm_stats, action_expert=head, provenance=provenance,
        max_relative_change=max_relative_change,
    )  # fmt: skip


# ---- a base from a release ----------------------------------------------------------------------------

INIT_SEED, HEAD_INIT_SEED = 0, 7  # the seeds ``vlamergebench train`` uses for a new base (TrainConfig)


def import_released_base(
    release: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    policy: VLAConfig,
    unnorm_key: str | None = None,
    instructions: Sequence[str] = (),
    init_seed: int = INIT_SEED,
    head_init_seed: int = HEAD_INIT_SEED,
) -> CheckpointDir:
    """A base checkpoint (``policy``'s architecture) from a released VLA-Adapter / MergeVLA directory.

    A VLA directory (``action_head--*checkpoint.pt`` present) gives every tensor and the statistics under
    ``unnorm_key``. A VLM-only directory (``model.safetensors`` alone) gives the VLM; the action queries, head
    and proprio projector are then initialised from ``init_seed`` / ``head_init_seed`` (recorded, so experts
    trained on the base start from the same head) and the statistics are the identity (q01 = -1, q99 = 1).
    Every tensor must match ``policy``'s model by name and shape; the base's dtype is the VLM's.
    """
    release = Path(release)
    model = build_model(policy, seed=init_seed)
    if has_released_head(release):
        tensors, stats = read_released_vla(release, unnorm_key)
        head = "release"
    else:
        tensors, head = read_released_weights(release), "seed"
        init_head(model, head_init_seed)
        initialised = {n: t for n, t in model.state_dict().items() if n.startswith(ACTION_EXPERT_PREFIXES)}
        tensors = {**initialised, **tensors}
        statistics = release / "dataset_statistics.json"
        if statistics.is_file():
            stats = read_released_stats(statistics, unnorm_key)
        else:
            action, proprio = policy.action_dim, policy.proprio_dim
            stats = NormStats((-1.0,) * action, (1.0,) * action, (True,) * action, (-1.0,) * proprio,
                              (1.0,) * proprio)  # fmt: skip
    load_tensors(model, tensors, f"{release} as policy {policy.name!r}")
    dtypes = sorted({str(t.dtype) for n, t in tensors.items() if n.startswith(VLM_PREFIXES)})
    if len(dtypes) != 1:
        raise CheckpointError(f"{release}: the VLM tensors mix dtypes {dtypes}; expected one")
    model.to(next(t for n, t in tensors.items() if n.startswith(VLM_PREFIXES)).dtype)
    provenance = {
        "imported_from": "released",
        "source": str(release.resolve()),
        "unnorm_key": unnorm_key,
        "head": head,
        "init_seed": init_seed,
        "head_init_seed": head_init_seed,
    }
    return save_base(model.eval(), out, norm_stats=stats, instructions=instructions, provenance=provenance)
