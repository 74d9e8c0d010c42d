"""Adapters from a merged model directory to what evaluation runs: a :class:`PolicySource` and a router.

Both are built inside each worker from the directory's path (the factories below are picklable), so no model
crosses a process boundary; where a worker has a local copy of the directory (and of its base), they read
that (:func:`~vlamergebench.eval.model_files.local_dir`). A skill's policy is the canonical ``VLAPolicy`` on
the tensors the merge method instantiates for that skill, with that skill's normalisation statistics.
"""

from __future__ import annotations

import functools
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlamergebench.eval.model_files import local_dir, model_dirs_of
from vlamergebench.eval.policy import Policy, PolicySourceFactory, RouterFactory


def _recorded_base(merged_dir: str | os.PathLike[str]) -> str | None:
    """The base checkpoint path ``merged.json`` records; None where it cannot be read (opening says why)."""
    from vlamergebench.merge_methods.merged import MERGED_FILE

    try:
        return str(json.loads((Path(merged_dir) / MERGED_FILE).read_text())["base"]["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_merged(merged_dir: str | os.PathLike[str]) -> Any:
    """``MergedModel.open`` of ``merged_dir`` or its local copy, with its base's local copy if any."""
    from vlamergebench.merge_methods.merged import MergedModel

    path = local_dir(merged_dir)
    recorded = _recorded_base(path)
    base = local_dir(recorded) if recorded is not None else None
    return MergedModel.open(path, base=None if base == recorded else base)


def merged_model_dirs(
    merged_dir: str | os.PathLike[str], tokenizer_dir: str | None = None
) -> tuple[str, ...]:
    """The directories the factories of a merged model read: it, its base checkpoint, the tokenizer's."""
    return model_dirs_of([merged_dir, _recorded_base(merged_dir), tokenizer_dir])


class MergedPolicies:
    """The policies of a merged model, one per skill, built on first use and kept in a small LRU cache.

    Args:
        merged_dir: A merged model directory (``merge_methods.base.MergedModel``).
        cache_size: Policies kept built at once; the reference preset is large, so only a few are.
        tokenizer_dir: Passed to ``VLAPolicy.from_state_dict`` for presets with a file-based tokenizer.
        trusted_method: The method the caller named (``--method``): a merged model recording an import path
            is read only if it is this one (``vlamergebench/plugins.py``).
        device: Torch device of the policies (``cpu``, ``cuda``, ``cuda:1``).
        dtype: Their compute dtype (``float32``, ``bfloat16``, ``float16``).
    """

    def __init__(
        self,
        merged_dir: str | os.PathLike[str],
        cache_size: int = 2,
        tokenizer_dir: str | None = None,
        trusted_method: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
    ):
        from vlamergebench.plugins import trust_method

        trust_method(trusted_method)
        self.model = open_merged(merged_dir)
        self.model.method  # noqa: B018  (fails here, naming the method, rather than mid-episode)
        self.cache_size = cache_size
        self.tokenizer_dir = tokenizer_dir
        self.device, self.dtype = device, dtype
        self._cache: OrderedDict[str, Policy] = OrderedDict()

    @property
    def skills(self) -> Sequence[str]:
        """The merged model's skills, in admission order."""
        return self.model.skills

    def policy(self, skill: str) -> Policy:
        """The ``VLAPolicy`` of ``skill`` (instantiated from the merged tensors on first use)."""
        if skill in self._cache:
            self._cache.move_to_end(skill)
            return self._cache[skill]
        import torch

        from vlamergebench.policies.config import VLAConfig
        from vlamergebench.policies.policy import VLAPolicy

        weights = self.model.instantiate(skill)
        policy = VLAPolicy.from_state_dict(
            VLAConfig.from_dict(weights.policy_config),
            weights.tensors,
            weights.norm_stats,
            tokenizer_dir=None if self.tokenizer_dir is None else local_dir(self.tokenizer_dir),
            dtype=getattr(torch, self.dtype),
            device=self.device,
            source=f"{self.model.path} skill {skill!r}",
        )
        policy.model.eval()
        self._cache[skill] = policy
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return policy


def _load_router(
    merged_dir: str, name: str | None, trusted_method: str | None = None, tokenizer_dir: str | None = None
) -> Any:
    from vlamergebench.plugins import trust_method

    trust_method(trusted_method)
    model = open_merged(merged_dir)
    model.method  # noqa: B018  (a router instantiates skills: check the method first)
    kwargs = {} if tokenizer_dir is None else {"tokenizer_dir": local_dir(tokenizer_dir)}
    return model.router(name, **kwargs)


def merged_policies(
    merged_dir: str | os.PathLike[str],
    trusted_method: str | None = None,
    *,
    tokenizer_dir: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> PolicySourceFactory:
    """A picklable factory of :class:`MergedPolicies` for ``merged_dir`` (arguments as that class's)."""
    return functools.partial(
        MergedPolicies,
        str(merged_dir),
        tokenizer_dir=tokenizer_dir,
        trusted_method=trusted_method,
        device=device,
        dtype=dtype,
    )


def merged_router(
    merged_dir: str | os.PathLike[str],
    name: str | None,
    trusted_method: str | None = None,
    tokenizer_dir: str | None = None,
) -> RouterFactory:
    """A picklable factory of router ``name`` (None: the method's own) over the merged model's skills."""
    return functools.partial(_load_router, str(merged_dir), name, trusted_method, tokenizer_dir)
