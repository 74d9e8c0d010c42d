"""Writing merged tensors, shared by the methods: the streamed VLM pass and the action-expert average.

The methods say what a merged tensor is; these functions read the inputs and write the files, one tensor at
a time, so that no method holds a model in memory or opens a file itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from vlamergebench.merge_methods.io import (
    CheckpointIndex,
    ExpertView,
    StreamingSafetensorsWriter,
    TensorFile,
    as_float32,
    check_finite_tensor,
)
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE


def target_names(base: CheckpointIndex, views: Sequence[ExpertView]) -> list[str]:
    """VLM tensors that are a LoRA target of at least one expert, in the base file's order."""
    return [name for name in base.file(VLM_FILE).names if any(view.is_target(name) for view in views)]


def write_vlm(
    path: Path,
    base: CheckpointIndex,
    merged_delta: Callable[[str, torch.Tensor], torch.Tensor],
    targets: Sequence[str],
    progress: bool,
) -> None:
    """Write a whole VLM: base tensors copied, each target ``base + merged_delta(name, base)``, base dtype.

    ``merged_delta`` receives the base weight in float32 and returns a fresh float32 delta (added to in
    place).
    """
    vlm = base.file(VLM_FILE)
    wanted = set(targets)
    specs = [(name, vlm.dtype(name), vlm.shape(name)) for name in vlm.names]
    with StreamingSafetensorsWriter(path, specs) as writer:
        for name in tqdm(vlm.names, desc="merging VLM tensors", disable=not progress, leave=False):
            if name not in wanted:
                writer.copy_from(name, vlm)
                continue
            weight = vlm.read(name)
            base_float = as_float32(weight)
            merged = merged_delta(name, base_float).add_(base_float)
            check_finite_tensor(merged, f"merged tensor {name!r}")
            writer.write(name, merged.to(weight.dtype))


def write_action_expert(
    path: Path, base: CheckpointIndex, views: Sequence[ExpertView], names: Sequence[str] | None = None
) -> None:
    """Write the uniform average of the experts' action-expert tensors (all, or ``names``), in base dtype.

    The action expert has no pretrained base to take task vectors against (MergeVLA ``weighted_average``).
    """
    reference = base.file(ACTION_EXPERT_FILE)
    chosen = reference.names if names is None else list(names)
    specs = [(name, reference.dtype(name), reference.shape(name)) for name in chosen]
    with StreamingSafetensorsWriter(path, specs) as writer:
        for name in chosen:
            total = sum(view.action_expert(name).float() for view in views)
            writer.write(name, (total / len(views)).to(reference.dtype(name)))


def copy_action_expert(path: Path, view: ExpertView, names: Sequence[str]) -> None:
    """Write the named tensors of one expert's action expert, unchanged."""
    source = view.index.file(ACTION_EXPERT_FILE)
    with StreamingSafetensorsWriter(path, [(n, source.dtype(n), source.shape(n)) for n in names]) as writer:
        for name in names:
            writer.copy_from(name, source)


# Per-skill low-rank storage (TSV-C, Twin-Merging): a target's delta is kept as ``name.US`` (m, k) and
# ``name.V`` (n, k), so that delta = US V^T, or as ``name.whole`` when the tensor is not a matrix.


def write_factor_parts(path: Path, vlm: TensorFile, parts: Mapping[str, torch.Tensor]) -> None:
    """Write ``{target + suffix: tensor}`` in each target's base dtype, one tensor at a time."""

    def dtype(part: str) -> torch.dtype:
        return vlm.dtype(part.rsplit(".", 1)[0])

    specs = [(part, dtype(part), tensor.shape) for part, tensor in parts.items()]
    with StreamingSafetensorsWriter(path, specs) as writer:
        for part, tensor in parts.items():
            writer.write(part, tensor.to(dtype(part)).contiguous())


def factor_deltas(stored: TensorFile) -> Iterator[tuple[str, torch.Tensor]]:
    """``(target, dense delta)`` of each target in a file of :func:`write_factor_parts` (float64 products)."""
    for name in dict.fromkeys(part.rsplit(".", 1)[0] for part in stored.names):
        if name + ".whole" in stored:
            yield name, stored.read(name + ".whole").double()
        else:
            yield name, stored.read(name + ".US").double() @ stored.read(name + ".V").double().T
