"""The hand-computable q_proj case shared by the method tests (tests prepend this folder to ``sys.path``).

Each expert's only non-zero task vector is ``tau[q_proj] = [T_t | 0]``: a 4 x 2 block ``T_t`` below, zeros in
the other two columns and on every other target, so a merged block can be written down from a method's rule.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from vlamergebench.merge_methods.registry import make_method

Q_PROJ = "llm.layers.0.self_attn.q_proj"
W = Q_PROJ + ".weight"
T1 = torch.tensor([[1.0, -2.0], [3.0, 0.0], [-1.0, 4.0], [0.0, 0.5]])
T2 = torch.tensor([[-2.0, -1.0], [1.0, 0.5], [2.0, -3.0], [0.0, 1.0]])
T3 = torch.tensor([[1.0, 1.0], [-4.0, 0.0], [0.5, 1.0], [0.0, -2.0]])


def full(block: torch.Tensor) -> torch.Tensor:
    """The 4 x 4 q_proj task vector ``[block | 0]``."""
    return torch.cat([block, torch.zeros(4, 2)], dim=1)


def merged_q_proj(name, experts, tmp_path, skill="skill_0", **overrides):
    """(merged model, its q_proj weight for ``skill``, the base's q_proj weight)."""
    merged = make_method(name, **overrides).merge(experts, tmp_path / name, progress=False)
    base = load_file(str(experts.base.file("vlm.safetensors")))
    return merged, merged.instantiate(skill).tensors[W], base[W]
