"""The one command-line entry point: ``vlamergebench <subcommand>``.

Each subcommand parses and validates its options, then calls one library function in the room that owns the
work. Heavy modules (torch, mujoco, robosuite) are imported inside the handlers, so ``vlamergebench --help``
stays fast.

Examples:
    vlamergebench envs
    vlamergebench collect-demos --suite libero_object --task 0 --episodes 20 --out demos/
    vlamergebench train --demos demos/libero_object_task0.hdf5 --base base/ --out experts/object0
    vlamergebench run --method carve
    vlamergebench leaderboard runs/carve --out leaderboards/default
    vlamergebench export runs/carve --format parquet --out exports/carve
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from vlamergebench import subcommands  # stdlib-only: what users bring (methods, eval) and shared options
from vlamergebench.configs import DEFAULT_EPISODES_PER_TASK
from vlamergebench.subcommands import non_negative_int, positive_int

# Each subcommand: (one-line help, function adding its options, function running it). Handlers live below,
# one pair per subcommand, so that adding a subcommand is adding one pair and one entry here.
Handler = Callable[[argparse.Namespace], int]


# --- envs -----------------------------------------------------------------------------------------------
def _add_envs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", default=None, help="only list this family (libero, so101, aloha, ...)")
    parser.add_argument("--tasks", action="store_true", help="also list every task and its instruction")
    parser.add_argument("--id", dest="env_ids", nargs="+", default=None, help="only these env ids")


def _run_envs(args: argparse.Namespace) -> int:
    # The hook (docs/formats.md section 1): an env class lists its tasks with a classmethod
    # list_tasks(**spec_kwargs) -> [{"task_id", "name", "instruction"}]; the family is its module (or
    # package) under vlamergebench.envs.
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    import vlamergebench.envs  # noqa: F401  (registers the ids)

    specs = [spec for key, spec in gym.registry.items() if key.startswith("vlamergebench/")]
    if args.env_ids:
        unknown = sorted(set(args.env_ids) - {spec.id for spec in specs})
        if unknown:
            print(f"unknown env ids {unknown}; run 'vlamergebench envs' for the list", file=sys.stderr)
            return 2
        specs = [spec for spec in specs if spec.id in args.env_ids]
    shown = 0
    for spec in specs:
        module = spec.entry_point.split(":")[0] if isinstance(spec.entry_point, str) else ""
        family = module.removeprefix("vlamergebench.envs.").split(".")[0]
        if args.family and family != args.family:
            continue
        creator = (
            load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
        )
        lister = getattr(creator, "list_tasks", None)
        tasks = lister(**spec.kwargs) if lister is not None else None
        count = "?" if tasks is None else len(tasks)
        print(f"{spec.id:44s} family={family:10s} tasks={count!s:4s} max_steps={spec.max_episode_steps}")
        shown += 1
        if args.tasks and tasks:
            for task in tasks:
                print(f"    {task['task_id']:>3}  {task['name']}\n         {task['instruction']}")
    if shown == 0:
        print(f"no registered env matches family={args.family!r}", file=sys.stderr)
        return 2
    return 0


# --- collect-demos --------------------------------------------------------------------------------------
def _add_collect_demos(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "records scripted-expert demonstrations (successful episodes only) in LIBERO's HDF5 layout; "
        "with --no-save it only rolls the expert out and prints its success (docs/libero.md)"
    )
    parser.add_argument(
        "--suite", required=True, help="LIBERO suite, e.g. libero_object (see 'vlamergebench envs')"
    )
    parser.add_argument("--task", required=True, help="task id (LIBERO's order) or task name")
    parser.add_argument(
        "--episodes", type=positive_int, default=50, help="episodes (init states) to attempt (default 50)"
    )
    parser.add_argument(
        "--start", type=non_negative_int, default=0, dest="start_init_state", help="first init state id"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode (episode k: seed + k)")
    parser.add_argument(
        "--image-size", type=positive_int, default=128, help="stored camera size in pixels (default 128)"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="output directory; writes <suite>_task<id>.hdf5")
    target.add_argument(
        "--no-save", action="store_true", help="roll out and report only (no images, no file)"
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted <file>.partial")
    parser.add_argument(
        "--action-noise",
        type=float,
        default=0.0,
        help="std of Gaussian noise added to the executed arm command, the expert's own action recorded "
        "(DART noise injection; default 0)",
    )
    parser.add_argument("--report", help="append one CSV row per episode to this file (docs/libero.md table)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_collect_demos(args: argparse.Namespace) -> int:
    from vlamergebench.experts.collect import CollectConfig, collect_demos

    config = CollectConfig(
        suite=args.suite,
        task=int(args.task) if args.task.isdigit() else args.task,
        episodes=args.episodes,
        start_init_state=args.start_init_state,
        seed=args.seed,
        image_size=args.image_size,
        out=None if args.no_save else args.out,
        resume=args.resume,
        action_noise=args.action_noise,
    )
    result = collect_demos(config, progress=not args.no_progress)
    for episode in result.episodes:
        outcome = "success" if episode.success else "failure"
        print(f"init state {episode.init_state_id:>2}: {outcome} in {episode.steps} steps")
    rate = result.successes / max(len(result.episodes), 1)
    where = f"{config.suite} task {args.task}"
    print(f"scripted success {result.successes}/{len(result.episodes)} = {rate:.0%} on {where}")
    if result.path is not None:
        print(f"wrote {result.successes} demos to {result.path}")
    if args.report:
        _append_report(args.report, config, result)
    return 0


def _append_report(path: str, config: object, result: object) -> None:
    import csv
    from pathlib import Path

    fields = ["suite", "task", "task_name", "init_state_id", "seed", "success", "steps"]
    new = not Path(path).exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new:
            writer.writeheader()
        for episode in result.episodes:
            row = {"suite": config.suite, "task": result.task_id, "task_name": result.task_name}
            row.update(init_state_id=episode.init_state_id, seed=episode.seed)
            writer.writerow({**row, "success": int(episode.success), "steps": episode.steps})


# --- train ----------------------------------------------------------------------------------------------
def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "a base: vlamergebench train --preset tiny --demos demos/*.hdf5 --out base/ --steps 4000; "
        "an expert: vlamergebench train --base base/ --demos demos/libero_object_task0.hdf5 "
        "--out experts/object_0 --skill object_0 --suite libero_object --task-id 0 (docs/policy.md)"
    )
    parser.add_argument("--demos", nargs="+", required=True, help="LIBERO-layout HDF5 demonstration files")
    parser.add_argument("--out", required=True, help="checkpoint directory to write (must not exist)")
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--base", help="train an expert (LoRA + head) on this base checkpoint")
    role.add_argument("--preset", help="train a new base of this policy preset (tiny, reference)")
    parser.add_argument(
        "--policy-config",
        metavar="JSON",
        help="with --preset: overrides of the preset's policy config, JSON text or @file.json, e.g. "
        '\'{"action_dim": 14, "proprio_dim": 14}\' for ALOHA (docs/policy.md)',
    )
    parser.add_argument("--skill", help="expert skill name (default: the output directory's name)")
    parser.add_argument("--suite", help="expert skill's suite, e.g. libero_object")
    parser.add_argument("--task-id", type=int, help="expert skill's task id within the suite")
    parser.add_argument("--env-id", help="expert skill's Gymnasium env id")
    parser.add_argument("--config", help="JSON file of TrainConfig fields (flags below override it)")
    parser.add_argument("--steps", type=positive_int, help="optimiser steps (default 2000)")
    parser.add_argument("--batch-size", type=positive_int, help="frames per step (default 32)")
    parser.add_argument("--lr", type=float, dest="learning_rate", help="AdamW learning rate (default 2e-4)")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), help="default constant (upstream)")
    parser.add_argument("--warmup-steps", type=non_negative_int, help="linear warm-up steps (default 0)")
    parser.add_argument("--seed", type=int, help="batch order / augmentation / noise seed (default 0)")
    parser.add_argument("--init-seed", type=int, help="a base's weight initialisation seed (default 0)")
    parser.add_argument("--head-init", choices=("seed", "base"), help="expert head start (default seed)")
    parser.add_argument("--head-init-seed", type=int, help="head init seed; experts must use their base's")
    parser.add_argument(
        "--checkpoint-every", type=positive_int, help="steps between saved states (default 250)"
    )
    parser.add_argument(
        "--max-demos-per-file", type=positive_int, help="use only the first demos of each file"
    )
    parser.add_argument("--frame-stride", type=positive_int, help="use every n-th frame (default 1)")
    parser.add_argument(
        "--no-augment",
        action="store_const",
        const=False,
        dest="augment",
        help="disable random crop and colour jitter",
    )
    parser.add_argument("--work", help="work directory for resume state and logs (default <out>.work)")
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)"
    )


def _run_train(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from vlamergebench.policies.checkpoint import CheckpointDir
    from vlamergebench.policies.registry import make_config
    from vlamergebench.policies.train import TrainConfig, train

    fields = json.loads(Path(args.config).read_text()) if args.config else {}
    for name in (
        "steps",
        "batch_size",
        "learning_rate",
        "lr_schedule",
        "warmup_steps",
        "seed",
        "init_seed",
        "head_init",
        "head_init_seed",
        "checkpoint_every",
        "max_demos_per_file",
        "frame_stride",
        "augment",
    ):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    fields["role"] = "base" if args.preset else "expert"
    if args.policy_config and not args.preset:
        raise SystemExit(
            "vlamergebench train: --policy-config applies to a new base (--preset); an expert "
            "takes its base's policy config"
        )
    text = args.policy_config or "{}"
    policy_overrides = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    if args.base and "head_init_seed" not in fields:
        recorded = CheckpointDir.open(args.base).config.get("provenance", {}).get("head_init_seed")
        if recorded is not None:
            fields["head_init_seed"] = recorded
    config = TrainConfig.from_dict(fields)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    skill = None
    if args.base:
        skill = {
            "name": args.skill or Path(args.out).name,
            "suite": args.suite,
            "task": None,
            "task_id": args.task_id,
            "env_id": args.env_id,
        }
    result = train(
        config,
        args.demos,
        args.out,
        base=args.base,
        policy=make_config(args.preset, policy_overrides) if args.preset else None,
        skill=skill,
        work=args.work,
        command=" ".join(sys.argv),
    )
    print(f"wrote {result.role} checkpoint {result.path}")
    return 0


# --- merge ----------------------------------------------------------------------------------------------
def _add_merge(parser: argparse.ArgumentParser) -> None:
    from vlamergebench.merge_methods.registry import METHODS  # stdlib-only module: --help stays cheap

    parser.epilog = (
        "every config default is written to the output's merged.json ('vlamergebench methods' lists them)"
    )
    parser.add_argument(
        "--method",
        required=True,
        help=f"one of: {', '.join(METHODS.names())}; or package.module:Name (a method class on the path)",
    )
    parser.add_argument("--experts", required=True, help="expert-set directory (holding expert_set.json)")
    parser.add_argument("--out", required=True, help="merged model directory to write (atomically)")
    subcommands.add_override_options(parser)
    parser.add_argument(
        "--snapshots",
        default=None,
        metavar="DIR",
        help="continual methods only: keep the merged model after every admission in DIR/<t>",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (and snapshots)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_merge(args: argparse.Namespace) -> int:
    from vlamergebench.configs import ConfigError
    from vlamergebench.merge_methods.io import MergeInputError, keep_freed_memory, refuse_overlap
    from vlamergebench.merge_methods.registry import make_method
    from vlamergebench.plugins import PluginError
    from vlamergebench.policies.checkpoint import CheckpointError, ExpertSet
    from vlamergebench.registry import UnknownNameError

    keep_freed_memory()  # reuse freed tensor buffers instead of re-faulting fresh pages (merge_methods/io.py)

    try:
        overrides = subcommands.method_overrides(args.method_config, args.overrides)
    except ValueError as error:
        print(f"vlamergebench merge: error: {error}", file=sys.stderr)
        return 2
    try:
        method = make_method(args.method, **overrides)
        if args.snapshots is not None and method.kind != "continual":
            raise ConfigError(f"--snapshots needs a continual method; {args.method!r} is {method.kind}")
        extra = {"snapshot_dir": args.snapshots} if method.kind == "continual" else {}
        experts = ExpertSet.open(args.experts)
        inputs = [experts.path, experts.base.path, *(expert.path for expert in experts.experts)]
        refuse_overlap(args.out, inputs, "--out")
        if args.snapshots is not None:
            refuse_overlap(args.snapshots, inputs, "--snapshots")
        merged = method.merge(
            experts, args.out, overwrite=args.overwrite, progress=not args.no_progress, **extra
        )
    except (
        UnknownNameError, ConfigError, CheckpointError, MergeInputError, FileExistsError, PluginError
    ) as error:  # fmt: skip
        print(f"vlamergebench merge: error: {error}", file=sys.stderr)
        return 2
    storage = merged.storage
    print(f"{merged.path}: {merged.method_name}, config {merged.config_hash}, {len(merged.skills)} skills")
    print(
        f"storage: {storage.total_bytes:,} bytes = {100 * storage.fraction_of_dense_bank:.1f}% of the dense "
        f"expert bank, {100 * storage.fraction_of_lora_bank:.1f}% of the LoRA bank"
    )
    return 0


# --- run ------------------------------------------------------------------------------------------------
def _add_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method",
        required=True,
        help="registered merge method (ta, ties, dare, robustmerge, mergevla, carve, lora_bank, ...; "
        "'vlamergebench methods' lists them, plug-ins included) or package.module:Name",
    )
    subcommands.add_override_options(parser)
    subcommands.add_runtime_options(parser)
    parser.add_argument(
        "--experts",
        default=None,
        metavar="DIR",
        help="expert-set directory (with expert_set.json); default: the embedded default set shipped in the "
        "package",
    )
    parser.add_argument(
        "--select",
        default="",
        metavar="NAMES",
        help="comma-separated skill or suite names to evaluate (default: every skill of the expert set)",
    )
    parser.add_argument(
        "--episodes",
        type=positive_int,
        default=DEFAULT_EPISODES_PER_TASK,
        help=f"episodes per task, on LIBERO's fixed init states 0..N-1 (default {DEFAULT_EPISODES_PER_TASK}, "
        "so that the embedded default's main command stays around 10 minutes on 2 cores; the committed board "
        "uses 10, LIBERO's protocol 50)",
    )
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated run seeds, one run each (default 0); episode seeds derive from (run seed, "
        "skill, episode)",
    )
    parser.add_argument(
        "--routing",
        default="oracle",
        metavar="MODES",
        help="comma-separated routing modes, one run each: 'oracle' (true skill), 'method' (the method's own "
        "router) or a registered router name (e.g. instruction_lookup, carve_text); default oracle",
    )
    parser.add_argument(
        "--protocol",
        choices=("one_shot", "continual"),
        default=None,
        help="one_shot: merge all experts once; continual: admit them one at a time and evaluate the seen "
        "skills after each admission (default: the method's own kind)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="rollout worker processes (default: min(2, CPU cores))",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output directory for the store, merged models and leaderboard (default runs/<method>); "
        "rerunning the same command resumes",
    )
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        help="cap on steps per episode (default: the env's limit)",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="camera resolution in pixels (default: policy input)",
    )
    parser.add_argument(
        "--perturbations",
        default="",
        metavar="ITEMS",
        help="also evaluate every LIBERO skill on perturbed variants (docs/perturbations.md): "
        "comma-separated variant labels (camera-L3-s0), axis names (camera, robot_init, language, light, "
        "background, noise, layout: every level and seed), L1..L5 (every axis at that level, seed 0) or "
        "all; default none",
    )
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        help="also rerun stored episodes that ended in a simulator error (episodes whose worker process "
        "died are always rerun)",
    )
    parser.add_argument(
        "--record-videos",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="save the first N episodes of every task as MP4 under OUT/videos, one frame per observation the "
        "policy reads (no extra rendering), shown on the leaderboard page (pip install "
        "'vlamergebench[video]'; docs/leaderboards.md); default 0",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    # --- evaluation at scale (docs/scaling.md) ---
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run only shard I of N (0-based) of the episode plan, e.g. 0/4; join the shards' stores with "
        "'vlamergebench combine'",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: worker processes on this machine; ray: --workers Ray actors on a Ray cluster "
        "(pip install 'vlamergebench[ray]'); default local",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join with --executor ray (default: RAY_ADDRESS, else a new local cluster)",
    )
    parser.add_argument(
        "--batch-envs",
        type=positive_int,
        default=1,
        metavar="K",
        help="simulators each worker steps side by side, with one policy query per chunk for all K "
        "(default 1); same actions as unbatched, faster where a query costs more than a physics step",
    )


def _run_run(args: argparse.Namespace) -> int:
    import json
    import os
    import time
    from pathlib import Path

    from vlamergebench.eval.run import RunConfig, default_out, run_command
    from vlamergebench.eval.store import StoreError
    from vlamergebench.eval.summary import SUMMARY_FILE, write_summary
    from vlamergebench.eval.workers import WorkerError
    from vlamergebench.leaderboards.registry import build_leaderboards
    from vlamergebench.policies.checkpoint import CheckpointError
    from vlamergebench.registry import UnknownNameError

    started = time.monotonic()
    out = args.out or default_out(args.method)
    try:
        overrides = subcommands.method_overrides(args.method_config, args.overrides)
        config = RunConfig(
            method=args.method,
            method_config=overrides,
            experts=args.experts,
            select=tuple(name for name in args.select.split(",") if name),
            episodes_per_task=args.episodes,
            seeds=tuple(int(seed) for seed in args.seeds.split(",")),
            routing=tuple(mode for mode in args.routing.split(",") if mode),
            protocol=args.protocol,
            out=out,
            workers=args.workers or min(2, os.cpu_count() or 1),
            max_steps=args.max_steps,
            image_size=args.image_size,
            render_profile=args.render_profile,
            perturbations=tuple(item for item in args.perturbations.split(",") if item),
            progress=not args.no_progress,
            shard=args.shard,
            executor=args.executor,
            ray_address=args.ray_address,
            batch_envs=args.batch_envs,
            retry_errors=args.retry_errors,
            tokenizer_dir=args.tokenizer_dir,
            device=args.device,
            dtype=args.dtype,
            record_videos=args.record_videos,
        )
        summaries = run_command(config)
        build_leaderboards([out], Path(out) / "leaderboard")
        summary = write_summary(out, Path(out) / SUMMARY_FILE)
    except (
        CheckpointError,
        StoreError,
        ValueError,
        UnknownNameError,
        FileNotFoundError,
        FileExistsError,
        WorkerError,
    ) as error:
        print(f"vlamergebench run: error: {error}", file=sys.stderr)
        return 1
    ran = sum(summary.ran for summary in summaries)
    episodes = sum(summary.episodes for summary in summaries)
    subcommands.print_leaderboard(str(Path(out) / "leaderboard"))
    _print_run_summary(json.loads(summary.read_text()))
    elapsed_s = time.monotonic() - started
    print(f"{episodes} episodes ({ran} run now, {episodes - ran} resumed) in {elapsed_s:.0f} s")
    print(f"store: {Path(out) / 'results.sqlite'}")
    print(f"summary: {summary}")
    print(f"leaderboard: {Path(out) / 'leaderboard' / 'leaderboard.html'}")
    return 0


def _print_run_summary(summary: dict) -> None:
    """Each run's averages, each named for what it averages, and its perturbation results."""

    def rate(r: dict) -> str:
        low, high = 100 * r["ci95_low"], 100 * r["ci95_high"]
        return f"{100 * r['success_rate']:.1f}% [{low:.1f}, {high:.1f}], {r['episodes']} episodes"

    for run in summary["runs"]:
        routing = run["routing_mode"] + (f" ({run['router']})" if run["router"] else "")
        print(f"\nrun {run['run_id']} ({run['method']}, {run['protocol']}, routing {routing}):")
        if run["overall"] is not None:
            print(f"  overall success of the final model (unweighted mean of suites): {rate(run['overall'])}")
        for suite, value in run["suites"].items():
            print(f"  suite {suite} (unweighted mean of its tasks): {rate(value)}")
        for row in run["perturbations"]:
            if row["aggregate"] == "pooled":
                print(f"  perturbed episodes (pooled over every variant): {rate(row)}")
            elif row["aggregate"] == "mean_of_axes":
                print(f"  perturbed, unweighted mean of the axes: {rate(row)}")
            elif row["aggregate"] == "axis":
                print(f"  perturbed, axis {row['axis']} (pooled over its levels): {rate(row)}")
    print(
        "(the progress bar's rate pools every episode of every admission step; the averages above are of "
        "the final model)"
    )


# --- combine --------------------------------------------------------------------------------------------
def _add_combine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "stores", nargs="+", metavar="STORE", help="the shards' stores (output directories or .sqlite files)"
    )
    parser.add_argument("--out", required=True, metavar="STORE", help="the combined store to write (new)")


def _run_combine(args: argparse.Namespace) -> int:
    from vlamergebench.eval.combine import combine_stores
    from vlamergebench.eval.store import StoreError

    try:
        summary = combine_stores(args.stores, args.out)
    except (StoreError, ValueError) as error:
        print(f"vlamergebench combine: error: {error}", file=sys.stderr)
        return 1
    shards = f" (shards {', '.join(summary.shards)})" if summary.shards else ""
    print(f"combined {summary.sources} stores{shards}: {summary.runs} runs, {summary.episodes} episodes")
    print(f"store: {summary.out}")
    return 0


# --- leaderboard ----------------------------------------------------------------------------------------
def _add_leaderboard(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="results to rank: a run's output directory (holding results.sqlite), a .sqlite store, or a "
        "results bundle (.zip, or a directory with manifest.json) from anyone; bundles are validated, never "
        "executed",
    )
    parser.add_argument(
        "--out",
        default="leaderboard",
        help="directory for the CSV, Markdown, PNG and HTML files (default: ./leaderboard)",
    )
    parser.add_argument(
        "--only",
        default=None,
        metavar="NAMES",
        help="comma-separated builders to run (default: all of success, storage, forgetting, page)",
    )
    parser.add_argument(
        "--export-bundle",
        default=None,
        metavar="ZIP",
        help="also write the single SOURCE store as a results bundle (store + provenance manifest)",
    )
    parser.add_argument("--description", default="", help="free text stored in an exported bundle's manifest")


def _run_leaderboard(args: argparse.Namespace) -> int:
    from vlamergebench.eval.bundle import BundleError, write_bundle
    from vlamergebench.eval.store import StoreError
    from vlamergebench.leaderboards.registry import build_leaderboards
    from vlamergebench.registry import UnknownNameError

    try:
        only = None if args.only is None else [name.strip() for name in args.only.split(",") if name.strip()]
        written = build_leaderboards(args.sources, args.out, only)
        if args.export_bundle:
            if len(args.sources) != 1:
                raise ValueError(f"--export-bundle takes exactly one SOURCE store, got {len(args.sources)}")
            bundle = write_bundle(args.sources[0], args.export_bundle, args.description)
            written["bundle"] = [bundle]
    except (StoreError, BundleError, ValueError, UnknownNameError, FileExistsError) as error:
        print(f"vlamergebench leaderboard: error: {error}", file=sys.stderr)
        return 1
    subcommands.print_leaderboard(args.out)
    print()
    for name, paths in written.items():
        print(f"{name}: " + ", ".join(str(path) for path in paths))
    return 0


# --- build-default-experts ------------------------------------------------------------------------------
def _add_build_default_experts(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "recipes: v2 (the default: a pretrained 'small' base and four two-task experts, with acceptance "
        "statistics; vlamergebench/experts/default_v2.py) and v1 (the first set, one tiny expert per task; "
        "vlamergebench/experts/default_v1.py); finished stages are skipped and an interrupted one resumes"
    )
    parser.add_argument("--out", required=True, help="expert-set directory to build (demos, base, experts)")
    parser.add_argument("--recipe", choices=("v2", "v1"), default="v2", help="which recipe (default v2)")
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument(
        "--jobs", type=positive_int, default=2, help="v2: demo tasks collected at once (default 2)"
    )
    parser.add_argument("--workers", type=positive_int, default=2, help="v2: acceptance rollout workers")
    parser.add_argument(
        "--stop-before",
        choices=("base", "experts", "acceptance"),
        help="v2: stop before this stage (staged runs; rerun without it to continue)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _run_build_default_experts(args: argparse.Namespace) -> int:
    if args.recipe == "v1":
        from vlamergebench.experts.default_v1 import build_default_experts

        build_default_experts(args.out, threads=args.threads, progress=not args.no_progress)
        return 0
    from pathlib import Path

    from vlamergebench.eval.own_success import success_by_task
    from vlamergebench.experts.acceptance import AcceptanceError
    from vlamergebench.experts.default_v2 import ACCEPTANCE_EPISODES, build_default_experts_v2

    runs = Path(args.out).with_name(Path(args.out).name + ".acceptance")

    def measure(method: str, experts: Path) -> dict[tuple[str, str], float]:
        return success_by_task(
            method,
            experts,
            out=runs,
            episodes=ACCEPTANCE_EPISODES,
            workers=args.workers,
            progress=not args.no_progress,
        )

    try:
        build_default_experts_v2(
            args.out,
            threads=args.threads,
            jobs=args.jobs,
            measure_success=measure,
            progress=not args.no_progress,
            stop_before=args.stop_before,
        )
    except AcceptanceError as error:  # a measured result, not a crash: one line, every stage kept
        print(f"vlamergebench build-default-experts: {error}", file=sys.stderr)
        return 1
    return 0


SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {
    "envs": ("list environment suites, tasks and instructions", _add_envs, _run_envs),
    "collect-demos": (
        "record scripted demonstrations as LIBERO-layout HDF5",
        _add_collect_demos,
        _run_collect_demos,
    ),
    "train": (
        "fine-tune a canonical-policy expert (or a base) from HDF5 demonstrations",
        _add_train,
        _run_train,
    ),
    "merge": (
        "merge an expert set with a registered method and write the merged model",
        _add_merge,
        _run_merge,
    ),
    "run": (
        "merge experts, roll the merged policy out, store episodes, print the leaderboard",
        _add_run,
        _run_run,
    ),
    "methods": (
        "list merge methods (built-in and installed plug-ins): kind, paper, router, config defaults",
        subcommands.add_methods,
        subcommands.run_methods,
    ),
    "eval": (
        "evaluate without merging: a merged directory, one checkpoint, or your own policy factory",
        subcommands.add_eval,
        subcommands.run_eval,
    ),
    "import-experts": (
        "write an expert set from PEFT adapters or released MergeVLA / VLA-Adapter expert directories",
        subcommands.add_import_experts,
        subcommands.run_import_experts,
    ),
    "import-base": (
        "write a base checkpoint from a released VLA-Adapter / MergeVLA (VLA or VLM) directory",
        subcommands.add_import_base,
        subcommands.run_import_base,
    ),
    "build-default-experts": (
        "rebuild the embedded default expert set (scripted demos, base, experts, acceptance checks)",
        _add_build_default_experts,
        _run_build_default_experts,
    ),
    "combine": (
        "join the stores of one run's shards (run --shard i/N) into one store",
        _add_combine,
        _run_combine,
    ),
    "leaderboard": (
        "build success, storage and forgetting leaderboards from results stores",
        _add_leaderboard,
        _run_leaderboard,
    ),
    "export": (
        "write results as Parquet with a Hugging Face dataset card (upload with the Hub's own client)",
        subcommands.add_export,
        subcommands.run_export,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (used by ``main`` and by tests that check ``--help``)."""
    from vlamergebench import __version__

    parser = argparse.ArgumentParser(prog="vlamergebench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"vlamergebench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_options, run) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        add_options(sub_parser)
        sub_parser.set_defaults(handler=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the process exit status.

    A system error (a full disk, a read-only directory) is one line; Ctrl-C says how to go on.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except OSError as error:
        print(f"vlamergebench {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = RESUME_HINTS.get(args.command, "finished work is kept")
        print(f"\nvlamergebench {args.command}: interrupted; {hint}", file=sys.stderr)
        return 130


# What an interrupted subcommand keeps, and how to continue it.
RESUME_HINTS = {
    "run": "every finished episode is stored; rerun the same command to resume",
    "collect-demos": "rerun the same command with --resume to continue",
    "train": "rerun the same command to resume from the last saved state",
    "build-default-experts": "rerun the same command to resume",
    "merge": "nothing was written; rerun the command",
}


if __name__ == "__main__":
    sys.exit(main())
