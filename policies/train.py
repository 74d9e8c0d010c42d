"""Training: a tiny base (multi-task, every weight) and experts (LoRA on the base's VLM, head trained fully).

Recipe (VLA-Adapter / MergeVLA ``finetune.py``, section 1.5 of the research notes): L1 loss between predicted
and target action chunks, both in normalised units; AdamW (lr 2e-4, default betas and weight decay 0.01);
random-crop (0.9 area) and colour-jitter augmentation; N(0, 0.02^2) noise on the head's zero input. Upstream's
LR is constant in effect (its warm-up code overwrites the decay every step); ``lr_schedule="cosine"`` is our
option for short CPU runs. Deviation: upstream leaves the head's initialisation unseeded, so the experts of
one base start from different heads; here every expert starts from the base's recorded ``head_init_seed``.

Determinism and resume: the batch indices, augmentation and head-input noise of step s come from a generator
seeded by ``(seed, s)``, so a run resumed from a saved state continues exactly as if never interrupted (a test
checks this bit for bit). Training state (trainable tensors, AdamW moments, step) is saved every
``checkpoint_every`` steps in the work directory, together with a loadable checkpoint of the current weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlamergebench.configs import ConfigError, from_mapping
from vlamergebench.policies import checkpoint as ckpt
from vlamergebench.policies.checkpoint import CheckpointDir
from vlamergebench.policies.config import VLAConfig
from vlamergebench.policies.data import FrameDataset, load_frames
from vlamergebench.policies.images import augment, crop_resize, to_float
from vlamergebench.policies.io import load_model, save_base, save_expert
from vlamergebench.policies.lora import add_lora
from vlamergebench.policies.model import (
    VLA,
    PromptBatch,
    build_model,
    init_head,
    normalize_actions,
    normalize_proprio,
)
from vlamergebench.policies.tokenizer import make_tokenizer
from vlamergebench.provenance import config_hash, git_revision, package_versions

logger = logging.getLogger(__name__)

ROLES = ("base", "expert")
PROPRIO_PREFIX = "proprio_projector."
SCHEDULES = ("constant", "cosine")
HEAD_INITS = ("seed", "base")
NORM_STATS_SOURCES = ("demos", "base")


@dataclass(frozen=True)
class TrainConfig:
    """What a training run does (hashed into provenance); run options such as paths live elsewhere.

    Attributes:
        role: ``base`` (every weight trained from ``init_seed``) or ``expert`` (LoRA on a base).
        steps: Optimiser steps.
        batch_size: Frames per step.
        learning_rate: AdamW learning rate (2e-4 upstream).
        weight_decay: AdamW weight decay (torch's default 0.01, as upstream).
        lr_schedule: ``constant`` (upstream in effect) or ``cosine`` (to 0 at ``steps``).
        warmup_steps: Linear warm-up steps.
        seed: Seed of batch order, augmentation and head-input noise.
        init_seed: Seed of a base's VLM initialisation (bases only).
        head_init: Expert head start: ``seed`` (fresh from ``head_init_seed``, our default and MergeVLA's
            setting) or ``base`` (a copy of the base's trained head).
        head_init_seed: Seed of the head initialisation. A base records it; an expert must use its base's.
        lora_seed: Seed of the LoRA A-factor initialisation (experts only).
        head_learning_rate: Learning rate of an expert's action head and action queries (None: the same
            as ``learning_rate``); follows the same schedule.
        freeze_proprio_projector: Keep an expert's proprio projector at the base's value.
        norm_stats: Where an expert's action/proprio normalisation comes from: ``demos`` (its own
            demonstrations, upstream's per-dataset statistics) or ``base`` (the base's, so that every expert
            of one base reads and writes the same normalised units).
        augment: Random crop + colour jitter.
        checkpoint_every: Steps between saved training states (0: only at the end).
        log_every: Steps between logged losses.
        max_demos_per_file: Use only the first demos of each file.
        frame_stride: Use every n-th frame as an input.
    """

    role: str = "expert"
    steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 2e-4
    weight_decay: float = 0.01
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    seed: int = 0
    init_seed: int = 0
    head_init: str = "seed"
    head_init_seed: int = 7
    lora_seed: int = 0
    head_learning_rate: float | None = None
    freeze_proprio_projector: bool = False
    norm_stats: str = "demos"
    augment: bool = True
    checkpoint_every: int = 250
    log_every: int = 10
    max_demos_per_file: int | None = None
    frame_stride: int = 1

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("role", self.role, ROLES),
            ("lr_schedule", self.lr_schedule, SCHEDULES),
            ("head_init", self.head_init, HEAD_INITS),
            ("norm_stats", self.norm_stats, NORM_STATS_SOURCES),
        ):
            if value not in allowed:
                raise ConfigError(f"train: {name} must be one of {allowed}, got {value!r}")
        if self.role == "base" and (
            self.norm_stats != "demos" or self.freeze_proprio_projector or self.head_learning_rate is not None
        ):
            raise ConfigError(
                "train: norm_stats='base', freeze_proprio_projector and head_learning_rate are for "
                "experts only"
            )
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(
                f"train: steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Every field, defaults written out."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "train") -> TrainConfig:
        """Parse; unknown keys and values of the wrong type raise :class:`ConfigError`."""
        return from_mapping(cls, data, where)


def learning_rate_at(config: TrainConfig, step: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based)."""
    rate = config.learning_rate
    if config.warmup_steps and step < config.warmup_steps:
        return rate * (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return rate * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return rate


class Batcher:
    """Turns frame indices into model inputs and normalised targets (all randomness from one generator)."""

    def __init__(
        self, frames: FrameDataset, config: VLAConfig, norm_stats: ckpt.NormStats, train: TrainConfig
    ) -> None:
        """Precompute normalised proprio, targets and prompt ids."""
        self.frames, self.config, self.train = frames, config, train
        self.proprio = torch.from_numpy(normalize_proprio(frames.proprio.astype(np.float64), norm_stats))
        self.targets = torch.from_numpy(normalize_actions(frames.chunks.astype(np.float64), norm_stats))
        tokenizer = make_tokenizer(config.llm.tokenizer, config.llm.vocab_size)
        self.prompts = [
            tokenizer.prompt_ids(config.llm.prompt_template, text) for text in frames.instructions
        ]
        self.pad_id = tokenizer.pad_id

    def batch(self, step: int) -> tuple[Tensor, Tensor, PromptBatch, Tensor, Tensor]:
        """Images, proprio, prompts, targets and head-input noise of step ``step``."""
        generator = torch.Generator().manual_seed(self.train.seed * 1_000_003 + step)
        index = torch.randint(len(self.frames), (self.train.batch_size,), generator=generator)
        pixels = to_float(self.frames.images[index.numpy()]).flatten(0, 1)  # (batch * images, 3, S, S)
        fraction = self.config.vision.center_crop_fraction
        pixels = augment(pixels, fraction, generator) if self.train.augment else crop_resize(pixels, fraction)
        pixels = pixels.view(len(index), self.config.num_images, *pixels.shape[1:])
        prompts = PromptBatch.from_lists(
            [self.prompts[i] for i in self.frames.instruction_index[index.numpy()]], self.pad_id
        )
        width = self.config.llm.hidden_size
        noise = torch.randn(
            len(index), self.config.chunk_size, self.config.action_dim * width, generator=generator
        )
        noise = noise * self.config.action_expert.train_input_noise_std
        return pixels, self.proprio[index], prompts, self.targets[index], noise


def prepare_model(train: TrainConfig, policy: VLAConfig | None, base: CheckpointDir | None) -> VLA:
    """The model to train: a fresh base, or a base with LoRA and the expert's head initialisation."""
    if train.role == "base":
        if policy is None:
            raise ConfigError("train: a base needs a policy config (a preset)")
        model = build_model(policy, train.init_seed)
        init_head(model, train.head_init_seed)
        model.requires_grad_(True)
        return model
    if base is None:
        raise ConfigError("train: an expert needs a base checkpoint")
    recorded = base.config.get("provenance", {}).get("head_init_seed")
    if train.head_init == "seed" and recorded is not None and recorded != train.head_init_seed:
        raise ConfigError(
            f"train: head_init_seed {train.head_init_seed} differs from the base's recorded "
            f"{recorded} ({base.path}); experts of one base must share it"
        )
    model, _ = load_model(base.path)
    if train.head_init == "seed":
        init_head(model, train.head_init_seed)
    add_lora(model, model.config.lora, seed=train.lora_seed)  # freezes the VLM
    for prefix in ckpt.ACTION_EXPERT_PREFIXES:
        if train.freeze_proprio_projector and prefix == PROPRIO_PREFIX:
            continue
        for name, param in model.named_parameters():
            if name.startswith(prefix):
                param.requires_grad_(True)
    return model


def parameter_groups(model: VLA, train: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: the action head and queries at ``head_learning_rate``, the rest at ``learning_rate``.

    Each group carries ``lr_scale``, the factor applied to the scheduled rate of every step.
    """
    params = _trainable(model)
    head_scale = 1.0
    if train.head_learning_rate is not None:
        head_scale = train.head_learning_rate / train.learning_rate
    head_prefixes = tuple(p for p in ckpt.ACTION_EXPERT_PREFIXES if p != PROPRIO_PREFIX)
    head = [p for name, p in params.items() if name.startswith(head_prefixes)]
    rest = [p for name, p in params.items() if not name.startswith(head_prefixes)]
    groups = [{"params": rest, "lr_scale": 1.0}, {"params": head, "lr_scale": head_scale}]
    return [group for group in groups if group["params"]]


def _trainable(model: VLA) -> dict[str, torch.nn.Parameter]:
    return {name: param for name, param in model.named_parameters() if param.requires_grad}


def save_train_state(
    work: Path, model: VLA, optimizer: torch.optim.Optimizer, step: int, identity: Mapping[str, Any]
) -> None:
    """Trainable tensors, AdamW moments and the step, atomically (safetensors + JSON)."""
    from safetensors.torch import save_file

    tensors = {}
    params = _trainable(model)
    for name, param in params.items():
        tensors["param/" + name] = param.detach().clone()
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"{key}/{name}"] = state[key]
    work.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(work / "train_state.safetensors.tmp"))
    os.replace(work / "train_state.safetensors.tmp", work / "train_state.safetensors")
    (work / "train_state.json.tmp").write_text(
        json.dumps({"step": step, **identity}, indent=1, sort_keys=True)
    )
    os.replace(work / "train_state.json.tmp", work / "train_state.json")


def load_train_state(
    work: Path, model: VLA, optimizer: torch.optim.Optimizer, identity: Mapping[str, Any]
) -> int:
    """Restore a saved state if one matches ``identity``; returns the step to continue from (0 if none)."""
    from vlamergebench.policies.io import read_tensors

    meta_path = work / "train_state.json"
    if not meta_path.is_file():
        return 0
    meta = json.loads(meta_path.read_text())
    step = int(meta.pop("step"))
    if meta != json.loads(json.dumps(dict(identity))):
        raise ConfigError(
            f"{meta_path}: saved run differs from this one (config, data or base); use a new "
            "output directory or delete the work directory to start over"
        )
    tensors = read_tensors(work / "train_state.safetensors")
    with torch.no_grad():
        for name, param in _trainable(model).items():
            if "param/" + name not in tensors:
                raise ckpt.CheckpointError(f"{work / 'train_state.safetensors'}: missing param/{name}")
            param.copy_(tensors["param/" + name])
            if f"exp_avg/{name}" in tensors:
                optimizer.state[param] = {
                    "step": torch.tensor(float(step)),
                    "exp_avg": tensors[f"exp_avg/{name}"].clone(),
                    "exp_avg_sq": tensors[f"exp_avg_sq/{name}"].clone(),
                }
    return step


def plot_losses(log_path: Path, out_path: Path) -> None:
    """Write the loss curve of ``log.jsonl`` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([r["step"] for r in rows], [r["loss"] for r in rows], linewidth=1)
    axis.set_xlabel("step")
    axis.set_ylabel("L1 loss (normalised actions)")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out_path, dpi=120)
    plt.close(figure)


def _snapshot(
    model: VLA,
    path: Path,
    config: TrainConfig,
    base: CheckpointDir | None,
    norm_stats: ckpt.NormStats,
    instructions: Sequence[str],
    step: int,
) -> None:
    """A loadable checkpoint of the current weights (replaced at every periodic save)."""
    provenance = {
        "snapshot_of_step": step,
        "train": config.to_dict(),
        "head_init_seed": config.head_init_seed,
    }
    if config.role == "base":
        save_base(
            model,
            path,
            norm_stats=norm_stats,
            instructions=instructions,
            provenance=provenance,
            overwrite=True,
        )
    else:
        save_expert(
            model,
            path,
            base=base,
            skill={"name": "snapshot"},
            norm_stats=norm_stats,
            instructions=instructions,
            provenance=provenance,
            overwrite=True,
        )


def train(
    config: TrainConfig,
    demos: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    policy: VLAConfig | None = None,
    skill: Mapping[str, Any] | None = None,
    work: str | os.PathLike[str] | None = None,
    command: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> CheckpointDir | None:
    """Train a base or an expert and write its checkpoint to ``out``.

    Args:
        config: The training recipe.
        demos: LIBERO-layout HDF5 files.
        out: Destination checkpoint directory (must not exist).
        base: The base checkpoint an expert trains on.
        policy: The policy config of a new base (e.g. ``make_config("tiny")``).
        skill: An expert's skill record ``{"name", "suite", "task", "task_id", "env_id"}``.
        work: Work directory for training state, logs and the loss plot (default ``<out>.work``).
        command: The command line, recorded in the provenance.
        progress: Show a tqdm progress bar.
        stop_after: Stop after this many steps of this call, leaving only the training state (as an
            interrupted run would); the next call resumes.
        on_step: Called with (step, loss) after every step.

    Returns:
        The written checkpoint, or None when stopped early by ``stop_after``.
    """
    from tqdm import tqdm

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose a new output directory")
    work = Path(work) if work is not None else out.with_name(out.name + ".work")
    base_dir = CheckpointDir.open(base) if base is not None else None
    model = prepare_model(config, policy, base_dir)
    started = time.monotonic()
    frames = load_frames(demos, model.config, config.max_demos_per_file, config.frame_stride)
    if config.norm_stats == "base" and base_dir is not None:
        norm_stats = base_dir.norm_stats()
    else:
        norm_stats = frames.norm_stats(model.config.binarize_gripper)
    batcher = Batcher(frames, model.config, norm_stats, config)
    identity = {
        "train": config.to_dict(),
        "policy": model.config.to_dict(),
        "demos": [source["sha256"] for source in frames.sources],
        "base_id": base_dir.base_id if base_dir else None,
    }
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    step = load_train_state(work, model, optimizer, identity)
    model.train()
    work.mkdir(parents=True, exist_ok=True)
    log = (work / "log.jsonl").open("a")
    bar = tqdm(
        total=config.steps, initial=step, disable=not progress, desc=f"train {config.role}", unit="step"
    )
    loss_value, stopped = float("nan"), False
    try:
        while step < config.steps:
            images, proprio, prompts, targets, noise = batcher.batch(step)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(config, step) * group["lr_scale"]
            loss = (model(images, proprio, prompts, input_noise=noise) - targets).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_value = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if on_step is not None:
                on_step(step, loss_value)
            if step % config.log_every == 0 or step == config.steps:
                log.write(
                    json.dumps(
                        {
                            "step": step,
                            "loss": loss_value,
                            "lr": learning_rate_at(config, step - 1),
                            "seconds": round(time.monotonic() - started, 2),
                        }
                    )
                    + "\n"
                )
                log.flush()
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                save_train_state(work, model, optimizer, step, identity)
                _snapshot(model, work / "checkpoint", config, base_dir, norm_stats, frames.instructions, step)
            if stop_after is not None and step >= stop_after:
                save_train_state(work, model, optimizer, step, identity)
                stopped = True
                break
    finally:
        bar.close()
        log.close()
    if stopped and step < config.steps:
        return None
    plot_losses(work / "log.jsonl", work / "loss.png")
    provenance = {
        "command": command,
        "train": config.to_dict(),
        "steps": step,
        "final_loss": loss_value,
        "train_seconds_this_run": round(time.monotonic() - started, 1),
        "demos": [
            {k: s[k] for k in ("path", "sha256", "demos", "frames", "instruction")} for s in frames.sources
        ],
        "frames": len(frames),
        "head_init_seed": config.head_init_seed,
        "train_config_hash": config_hash(config.to_dict()),
        "versions": package_versions(),
        "git_rev": git_revision(),
        "base_path": str(base_dir.path) if base_dir else None,
    }
    model.eval()
    if config.role == "base":
        return save_base(
            model, out, norm_stats=norm_stats, instructions=frames.instructions, provenance=provenance
        )
    skill = {"name": out.name, "suite": None, "task": None, "task_id": None, "env_id": None, **(skill or {})}
    if skill["task"] is None:
        skill["task"] = frames.instructions[0]
    return save_expert(
        model,
        out,
        base=base_dir,
        skill=skill,
        norm_stats=norm_stats,
        instructions=frames.instructions,
        provenance=provenance,
    )
