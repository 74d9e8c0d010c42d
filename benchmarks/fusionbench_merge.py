"""One FusionBench merge of merge_speed.py's inputs, for timing beside ours (run in FusionBench's own venv).

FusionBench (``pip install fusion-bench``, 0.2.33 here; it pins lightning and hydra, so it lives in its own
virtual environment with ``-c torch==2.13.0``) merges ``nn.Module`` models from a model pool. This script
builds that pool from the whole-model files merge_speed.py writes for MergeKit (``mergekit_base`` and
``mergekit_skill_<i>.safetensors``): each model is a plain module tree whose parameters are the file's tensors
in float32 (FusionBench's SVDs do not run in bfloat16 on a CPU). The pool loads each model when an algorithm
asks for it, so only the models an algorithm itself keeps stay in memory. Then it runs one algorithm with its
FusionBench defaults and writes the merged state dict as safetensors (ours writes its merged model too).

- ``--method tsv``: ``TaskSingularVectorMerging`` (TSV-M), alpha 1.0.
- ``--method iso_c``: ``IsotropicMergingInCommonSubspace``, scaling factor 1.0.
- ``--method wudi``: ``WUDIMerging``, ``--iterations`` Adam steps per matrix (FusionBench's default 300).
- ``--targets-only``: pass every tensor whose task vector is zero in all experts as ``exclude_keys`` (its
  own option), so FusionBench merges exactly the tensor set ours does; without it FusionBench treats every
  2-D tensor (the 136 M-parameter embedding included) as the method says.
- ``--layers N``: keep only LLM blocks 0..N-1 (and drop the embedding), for methods whose full-size cost on
  this CPU is out of reach; merge_speed.py scales such a figure to the full model and says so.

    FB=/path/to/fusionbench-venv/bin/python
    $FB benchmarks/fusionbench_merge.py --root scratch/merge_speed --method tsv --targets-only --out tsv.st
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn


def tensor_names(path: Path, layers: int | None) -> list[str]:
    """Names in ``path``; with ``layers``, only LLM blocks below it (no embedding)."""
    with safe_open(str(path), "pt") as handle:
        names = list(handle.keys())
    if layers is None:
        return names
    kept = []
    for name in names:
        block = re.match(r"llm\.layers\.(\d+)\.", name)
        if block and int(block.group(1)) < layers:
            kept.append(name)
    return kept


def module_from_file(path: Path, names: list[str]) -> nn.Module:
    """A module tree whose parameters are ``names`` of ``path`` in float32 (dots become submodules)."""
    root = nn.Module()
    with safe_open(str(path), "pt") as handle:
        for name in names:
            *parents, leaf = name.split(".")
            module = root
            for part in parents:
                if not hasattr(module, part):
                    module.add_module(part, nn.Module())
                module = getattr(module, part)
            module.register_parameter(
                leaf, nn.Parameter(handle.get_tensor(name).float(), requires_grad=False)
            )
    return root


def zero_task_vector_names(root: Path, experts: int, names: list[str]) -> list[str]:
    """Tensors equal to the base's in every expert (outside the LoRA targets: tau = 0)."""
    unchanged = []
    with safe_open(str(root / "mergekit_base.safetensors"), "pt") as base:
        handles = [safe_open(str(root / f"mergekit_skill_{i}.safetensors"), "pt") for i in range(experts)]
        for name in names:
            weight = base.get_tensor(name)
            if all(torch.equal(handle.get_tensor(name), weight) for handle in handles):
                unchanged.append(name)
    return unchanged


def main() -> None:
    from fusion_bench import BaseModelPool

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="merge_speed.py's --root (its inputs)")
    parser.add_argument("--method", choices=("tsv", "iso_c", "wudi"), required=True)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--targets-only", action="store_true", help="exclude tensors whose tau is zero")
    parser.add_argument("--layers", type=int, default=None, help="LLM blocks kept (default: the whole model)")
    parser.add_argument("--iterations", type=int, default=300, help="WUDI's Adam steps per matrix")
    parser.add_argument("--out", type=Path, required=True, help="merged state dict (.safetensors)")
    args = parser.parse_args()

    base_file = args.root / "mergekit_base.safetensors"
    names = tensor_names(base_file, args.layers)
    exclude = zero_task_vector_names(args.root, args.experts, names) if args.targets_only else []

    class SafetensorsPool(BaseModelPool):
        """Loads each model from its file when an algorithm asks for it (FusionBench's extension point)."""

        def load_model(self, model_name_or_config, *_, **__):  # noqa: ANN001, ANN202 (FusionBench's signature)
            return module_from_file(self._models[model_name_or_config], names)

    files = {"_pretrained_": str(base_file)}
    files |= {f"skill_{i}": str(args.root / f"mergekit_skill_{i}.safetensors") for i in range(args.experts)}
    pool = SafetensorsPool(files)
    if args.method == "tsv":
        from fusion_bench.method.task_singular_vector import TaskSingularVectorMerging

        algorithm = TaskSingularVectorMerging(alpha=1.0, exclude_keys=exclude)
    elif args.method == "iso_c":
        from fusion_bench.method.isotropic_merging import IsotropicMergingInCommonSubspace

        algorithm = IsotropicMergingInCommonSubspace(scaling_factor=1.0, exclude_keys=exclude)
    else:
        from fusion_bench.method.wudi.wudi import WUDIMerging

        algorithm = WUDIMerging(iter_num=args.iterations, exclude_keys=exclude)
    started = time.perf_counter()
    merged = algorithm.run(pool)
    seconds = time.perf_counter() - started
    state = {
        name: tensor.detach().to(torch.bfloat16).contiguous() for name, tensor in merged.state_dict().items()
    }
    save_file(state, str(args.out))
    print(
        f"FUSIONBENCH {args.method} merged {len(state)} tensors ({len(exclude)} excluded) in {seconds:.1f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
