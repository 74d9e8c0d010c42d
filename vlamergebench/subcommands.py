"""Subcommands for what users bring and take away: ``methods``, ``eval`` and ``export``.

``methods`` lists the catalogue (plug-ins included), ``eval`` evaluates without merging, ``export`` writes
results as Parquet with a Hub dataset card.

Also the one method-override syntax ``merge`` and ``run`` share (:func:`add_override_options`,
:func:`method_overrides`). Kept apart from ``cli.py`` so that each pair (options, handler) stays short; the
handlers import their libraries lazily, as ``cli.py``'s do.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vlamergebench.configs import DEFAULT_EPISODES_PER_TASK


# --- flag types, shared by every subcommand ------------------------------------------------------------
def non_negative_int(text: str) -> int:
    """The ``type`` of flags where 0 means none."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """The ``type`` of count and size flags: a bad value is refused at parse time, naming the flag."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# --- method overrides, shared by merge and run -----------------------------------------------------------
def add_override_options(parser: argparse.ArgumentParser) -> None:
    """``--method-config JSON`` and repeatable ``--set KEY=VALUE`` (applied after it)."""
    parser.add_argument(
        "--method-config",
        default=None,
        metavar="JSON",
        help="overrides of the method's config as JSON text or @file.json, e.g. '{\"keep_fraction\": 0.2}'; "
        "unknown fields are refused",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one config override, repeatable, applied after --method-config; VALUE is read as JSON when it "
        "parses (0.3, true, null, [1,2]), else as a string",
    )


def method_overrides(method_config: str | None, sets: list[str]) -> dict[str, Any]:
    """The overrides of ``--method-config``, then ``--set``; a malformed one raises ``ValueError``."""
    overrides: dict[str, Any] = {}
    if method_config:
        try:
            text = Path(method_config[1:]).read_text() if method_config.startswith("@") else method_config
            parsed = json.loads(text)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(
                f"--method-config {method_config!r}: not JSON text or @file.json ({error})"
            ) from None
        if not isinstance(parsed, dict):
            raise ValueError(f"--method-config: expected a JSON object, got {type(parsed).__name__}")
        overrides.update(parsed)
    for item in sets:
        key, sep, value = item.partition("=")
        if not (sep and key):
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """``--render-profile``, ``--tokenizer-dir``, ``--device``, ``--dtype`` of ``run`` and ``eval``."""
    parser.add_argument(
        "--render-profile",
        choices=("full", "fast"),
        default="full",
        help="full (default): LIBERO's meshes as installed; fast: large visual-only meshes decimated to a "
        "tenth of their triangles (cached under ~/.cache/vlamergebench/meshes; physics unchanged, pixels "
        "close but not equal, and a policy trained on full frames may fail on them: such entries are ranked "
        "apart, docs/libero.md)",
    )
    parser.add_argument(
        "--tokenizer-dir",
        default=None,
        metavar="DIR",
        help="local directory of the tokenizer files (tokenizer.json ...) for presets with a file-based "
        "tokenizer, e.g. the reference preset's Qwen2.5 tokenizer",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        metavar="DEVICE",
        help="torch device of the policies: cpu (default), cuda, cuda:N, or auto (cuda when this machine has "
        "a GPU, else cpu); a non-default device is part of the run's settings",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="policies' compute dtype (default float32; bfloat16 on a GPU)",
    )


# --- methods ---------------------------------------------------------------------------------------------
def add_methods(parser: argparse.ArgumentParser) -> None:
    """Options of ``vlamergebench methods``."""
    parser.epilog = (
        "lists built-in methods and those installed plug-ins add (entry-point group "
        "vlamergebench.merge_methods; docs/plugins.md); a method NAME may also be package.module:Name"
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these methods (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def describe_method(name: str) -> dict[str, Any]:
    """One method's catalogue entry: metadata, source, config fields with their defaults.

    ``needs_lora_factors``: the method refuses dense experts (full fine-tunes); it works on LoRA factors.
    """
    from vlamergebench.merge_methods.registry import make_method
    from vlamergebench.plugins import config_fields, method_metadata, method_source

    return {
        "name": name,
        **method_metadata(name),
        "source": method_source(name),
        "config": config_fields(name),
        "needs_lora_factors": bool(getattr(make_method(name), "needs_lora_factors", False)),
    }


def run_methods(args: argparse.Namespace) -> int:
    """Print the catalogue (``--json``: as one document)."""
    from vlamergebench.merge_methods.registry import METHODS, ROUTERS
    from vlamergebench.plugins import PluginError
    from vlamergebench.registry import UnknownNameError

    try:
        entries = [describe_method(name) for name in (args.names or METHODS.names())]
    except (UnknownNameError, PluginError) as error:
        print(f"vlamergebench methods: error: {error}", file=sys.stderr)
        return 2
    routers = [{"name": spec.name, **dict(spec.metadata)} for spec in ROUTERS]
    if args.json:
        print(json.dumps({"methods": entries, "routers": routers}, indent=1, default=str))
        return 0
    for entry in entries:
        paper = entry["paper"] or "(baseline)"
        arxiv = f" arXiv:{entry['arxiv']}" if entry["arxiv"] else ""
        source = entry["source"]
        plugin = f"  [plug-in {source['distribution']} {source['version']}]" if entry["plugin"] else ""
        print(f"{entry['name']}{plugin}")
        identity = "yes" if entry["needs_task_identity"] else "no"
        router = entry["router"] or "none (oracle or a named router)"
        experts = "LoRA only" if entry["needs_lora_factors"] else "LoRA or dense"
        print(
            f"    kind {entry['kind']}, needs task identity: {identity}, router: {router}, experts: {experts}"
        )
        print(f"    paper: {paper}{arxiv}")
        fields = ", ".join(f"{field['name']}={json.dumps(field['default'])}" for field in entry["config"])
        print(f"    config: {fields or '(none)'}")
    print("\nrouters: " + ", ".join(router["name"] for router in routers))
    return 0


# --- eval ------------------------------------------------------------------------------------------------
def add_eval(parser: argparse.ArgumentParser) -> None:
    """Options of ``vlamergebench eval``."""
    parser.epilog = (
        "evaluates without merging, into the same store and leaderboard as 'run' (rerun to resume); "
        "each skill's env comes from --experts (docs/plugins.md, 'Evaluating your own model')"
    )
    subject = parser.add_mutually_exclusive_group(required=True)
    subject.add_argument("--merged", metavar="DIR", help="a merged-model directory (merged.json + files)")
    subject.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="one checkpoint directory in vlamergebench's format (a dense base-architecture model merged "
        "elsewhere, or one expert of --experts' base), run for every skill",
    )
    subject.add_argument(
        "--policy",
        metavar="MODULE:FACTORY",
        help="a callable on the Python path returning a policy (reset, predict) or a policy source (skills, "
        "policy); imported from this name only",
    )
    parser.add_argument(
        "--name", default=None, help="the entry's leaderboard name (default: from the subject)"
    )
    parser.add_argument(
        "--method",
        default=None,
        metavar="PACKAGE.MODULE:NAME",
        help="with --merged: the import path of the method the merged model records, if it is one (it is "
        "never imported on the file's word)",
    )
    parser.add_argument("--experts", default=None, metavar="DIR", help="expert set naming each skill's env")
    parser.add_argument("--select", default="", metavar="NAMES", help="comma-separated skills or suites")
    parser.add_argument(
        "--episodes",
        type=positive_int,
        default=DEFAULT_EPISODES_PER_TASK,
        help=f"episodes per task (default {DEFAULT_EPISODES_PER_TASK}, as run)",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated run seeds (default 0)")
    parser.add_argument(
        "--workers", type=positive_int, default=None, help="rollout worker processes (default 2)"
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="output directory (default runs/eval-NAME)"
    )
    parser.add_argument("--max-steps", type=positive_int, default=None, help="cap on steps per episode")
    parser.add_argument("--image-size", type=positive_int, default=None, help="camera resolution in pixels")
    parser.add_argument(
        "--record-videos",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="save the first N episodes of every task as MP4 under OUT/videos (as run; default 0)",
    )
    add_runtime_options(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate, build the leaderboard, print it."""
    import os
    import time

    from vlamergebench.eval.evaluate import EvalConfig, default_eval_out, evaluate
    from vlamergebench.eval.policy import PolicyContractError
    from vlamergebench.eval.store import StoreError
    from vlamergebench.eval.workers import WorkerError
    from vlamergebench.leaderboards.registry import build_leaderboards
    from vlamergebench.policies.checkpoint import CheckpointError
    from vlamergebench.registry import UnknownNameError

    started = time.monotonic()
    kind = "merged" if args.merged else "checkpoint" if args.checkpoint else "policy"
    subject = args.merged or args.checkpoint or args.policy
    try:
        config = EvalConfig(
            kind=kind,
            subject=subject,
            name=args.name,
            method=args.method,
            experts=args.experts,
            select=tuple(name for name in args.select.split(",") if name),
            episodes_per_task=args.episodes,
            seeds=tuple(int(seed) for seed in args.seeds.split(",")),
            out=args.out or default_eval_out(args.name or Path(subject).name),
            workers=args.workers or min(2, os.cpu_count() or 1),
            max_steps=args.max_steps,
            image_size=args.image_size,
            render_profile=args.render_profile,
            progress=not args.no_progress,
            tokenizer_dir=args.tokenizer_dir,
            device=args.device,
            dtype=args.dtype,
            record_videos=args.record_videos,
        )
        summaries = evaluate(config)
        build_leaderboards([config.out], Path(config.out) / "leaderboard")
    except (
        CheckpointError,
        StoreError,
        ValueError,
        UnknownNameError,
        FileNotFoundError,
        PolicyContractError,
        WorkerError,
    ) as error:
        print(f"vlamergebench eval: error: {error}", file=sys.stderr)
        return 1
    print_leaderboard(str(Path(config.out) / "leaderboard"))
    ran = sum(summary.ran for summary in summaries)
    episodes = sum(summary.episodes for summary in summaries)
    print(
        f"{episodes} episodes ({ran} run now, {episodes - ran} resumed) in {time.monotonic() - started:.0f} s"
    )
    print(f"store: {Path(config.out) / 'results.sqlite'}")
    return 0


# --- import-experts --------------------------------------------------------------------------------------
def add_import_experts(parser: argparse.ArgumentParser) -> None:
    """Options of ``vlamergebench import-experts``."""
    parser.epilog = (
        'SPEC is JSON: {"name": "my-set", "experts": [{"peft": "adapters/object_0", "skill": {"name": '
        '"object_0", "suite": "libero_object", "task_id": 0, "env_id": "vlamergebench/LIBERO-Object-v0"}, '
        '"instructions": ["..."]}, {"released": "MergeVLA-goal/", "unnorm_key": "libero_goal_no_noops", '
        '"skill": {...}}, {"dense": "finetune/model.safetensors", "skill": {...}}]} '
        '(docs/plugins.md, "Importing experts")'
    )
    parser.add_argument("--base", required=True, metavar="DIR", help="the base checkpoint the experts share")
    parser.add_argument("--spec", required=True, metavar="JSON", help="the experts to import (JSON file)")
    parser.add_argument("--out", required=True, metavar="DIR", help="expert-set directory to write")


_SOURCES = ("peft", "released", "dense")
_SPEC_KEYS = {*_SOURCES, "skill", "instructions", "unnorm_key", "action_expert", "norm_stats"}


def run_import_experts(args: argparse.Namespace) -> int:
    """Import every expert of the spec and write ``expert_set.json``."""
    from vlamergebench.experts.importers import (
        import_dense_finetune,
        import_peft_adapter,
        import_released_expert,
    )
    from vlamergebench.policies.checkpoint import CheckpointDir, CheckpointError, NormStats, write_expert_set

    try:
        spec_path = Path(args.spec)
        try:
            spec = json.loads(spec_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"--spec {spec_path}: not a readable JSON file ({error})") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("experts"), list) or not spec["experts"]:
            raise ValueError(
                f"{spec_path}: expected {{'name': ..., 'experts': [...]}} with at least one expert"
            )
        base = CheckpointDir.open(args.base)
        out = Path(args.out)
        written = []
        for index, entry in enumerate(spec["experts"]):
            where = f"{spec_path}: experts[{index}]"
            unknown = sorted(set(entry) - _SPEC_KEYS) if isinstance(entry, dict) else ["(not an object)"]
            kinds = [key for key in _SOURCES if isinstance(entry, dict) and key in entry]
            if unknown or len(kinds) != 1 or not isinstance(entry.get("skill"), dict):
                raise ValueError(
                    f"{where}: needs exactly one of 'peft' / 'released' / 'dense' and a 'skill' object; "
                    f"unknown keys {unknown}"
                )
            skill = entry["skill"]
            missing = [key for key in ("name", "suite", "task_id", "env_id") if key not in skill]
            if missing:
                raise ValueError(f"{where}: skill lacks {missing} (evaluation needs its env and task)")
            source = spec_path.parent / entry[kinds[0]]
            target = out / str(skill["name"])
            instructions = list(entry.get("instructions", []))
            action_expert = entry.get("action_expert")
            head = None if action_expert is None else spec_path.parent / action_expert
            stats = None
            if entry.get("norm_stats") is not None:
                stats_path = spec_path.parent / entry["norm_stats"]
                try:
                    stats = NormStats.from_dict(json.loads(stats_path.read_text()), str(stats_path))
                except (OSError, json.JSONDecodeError) as error:
                    raise ValueError(
                        f"{where}: norm_stats {stats_path}: not a readable JSON file ({error})"
                    ) from None
            if kinds[0] == "peft":
                expert = import_peft_adapter(
                    source, base, target, skill=skill, instructions=instructions, action_expert=head,
                    norm_stats=stats,
                )  # fmt: skip
            elif kinds[0] == "dense":
                expert = import_dense_finetune(
                    source, base, target, skill=skill, instructions=instructions, action_expert=head,
                    norm_stats=stats,
                )  # fmt: skip
            else:
                expert = import_released_expert(
                    source, base, target, skill=skill, instructions=instructions,
                    unnorm_key=entry.get("unnorm_key"),
                )  # fmt: skip
            if expert.is_dense_expert:
                changed = expert.config["provenance"]["dense_tensors"]
                what = f"dense: {changed} VLM tensors differ from the base"
            else:
                what = f"LoRA rank {expert.config['lora']['rank']}"
            print(f"{expert.path}: skill {skill['name']!r} from {source} ({what})")
            written.append(expert.path)
        experts = write_expert_set(out, str(spec.get("name") or out.name), base.path, written)
    except (CheckpointError, ValueError, FileExistsError) as error:
        print(f"vlamergebench import-experts: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {experts.path / 'expert_set.json'}: {len(experts.experts)} experts, id {experts.id}")
    return 0


# --- import-base -----------------------------------------------------------------------------------------
def add_import_base(parser: argparse.ArgumentParser) -> None:
    """Options of ``vlamergebench import-base``."""
    parser.epilog = (
        "e.g. vlamergebench import-base --released VLA-Adapter-LIBERO-Object/ --preset reference "
        "--policy-config '{\"gripper_open_is_one\": true}' --unnorm-key libero_object_no_noops --out base/ "
        '(docs/plugins.md, "A base from released weights")'
    )
    parser.add_argument(
        "--released",
        required=True,
        metavar="DIR",
        help="a released VLA-Adapter / MergeVLA directory: model.safetensors (or shards) in the HF key "
        "layout, with action_head--* / proprio_projector--* checkpoint.pt and dataset_statistics.json for a "
        "VLA; model.safetensors alone for a VLM (its action expert is then initialised from seeds)",
    )
    parser.add_argument("--preset", required=True, help="the policy preset of its architecture (reference)")
    parser.add_argument(
        "--policy-config",
        metavar="JSON",
        help="overrides of the preset's policy config, JSON text or @file.json (as 'train --preset')",
    )
    parser.add_argument("--unnorm-key", help="the dataset of dataset_statistics.json (when it has several)")
    parser.add_argument(
        "--instructions", nargs="*", default=[], help="the instructions the base was trained on"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="base checkpoint directory to write")


def run_import_base(args: argparse.Namespace) -> int:
    """Convert the release into a base checkpoint and print its id."""
    from vlamergebench.experts.importers import import_released_base
    from vlamergebench.policies.checkpoint import CheckpointError
    from vlamergebench.policies.config import ConfigError
    from vlamergebench.policies.registry import make_config

    try:
        text = args.policy_config or "{}"
        try:
            overrides = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"--policy-config {text!r}: not JSON text or @file.json ({error})") from None
        policy = make_config(args.preset, overrides)
        base = import_released_base(
            args.released, args.out, policy=policy, unnorm_key=args.unnorm_key, instructions=args.instructions
        )
    except (CheckpointError, ConfigError, KeyError, ValueError, FileExistsError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"vlamergebench import-base: error: {message}", file=sys.stderr)
        return 1
    head = base.config["provenance"]["head"]
    print(f"wrote base {base.path} (policy {policy.name!r}, head from the {head}), base_id {base.base_id}")
    return 0


# --- export --------------------------------------------------------------------------------------------
def add_export(parser: argparse.ArgumentParser) -> None:
    """Options of ``vlamergebench export``."""
    parser.epilog = (
        "writes OUT/README.md (a Hugging Face dataset card), OUT/data/{episodes,runs,storage,videos}.parquet "
        "and OUT/videos/ (the MP4 files of recorded rollouts); upload with the Hub's own client, e.g. "
        "'hf upload OWNER/NAME OUT . --repo-type=dataset'; 'vlamergebench leaderboard OUT' reads it back"
    )
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="results to export: a run's output directory, a .sqlite store, a results bundle or an export",
    )
    parser.add_argument("--format", required=True, choices=("parquet",), help="output format (parquet)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the export directory to create (new)")
    parser.add_argument(
        "--license",
        default="cc-by-4.0",
        metavar="ID",
        help="license of the exported data, as a Hub license id, written into the card (default cc-by-4.0)",
    )
    parser.add_argument(
        "--no-videos", action="store_true", help="leave the MP4 files out (their rows and posters stay)"
    )


def run_export(args: argparse.Namespace) -> int:
    """Write the export and print what it holds."""
    import shlex

    from vlamergebench.eval.bundle import BundleError
    from vlamergebench.eval.export import ExportError, export_parquet
    from vlamergebench.eval.results import load_results
    from vlamergebench.eval.store import StoreError

    options = ["--format", args.format, "--out", args.out, "--license", args.license]
    command = shlex.join(
        ["vlamergebench", "export", *args.sources, *options, *(["--no-videos"] * args.no_videos)]
    )
    try:
        load_results(args.sources)  # every check the leaderboard makes, before anything is written
        summary = export_parquet(
            args.sources, args.out, command=command, license_id=args.license, copy_videos=not args.no_videos
        )
    except (StoreError, BundleError, ExportError, FileExistsError) as error:
        print(f"vlamergebench export: error: {error}", file=sys.stderr)
        return 1
    rows = ", ".join(f"{count} {table}" for table, count in summary.rows.items())
    print(f"exported {rows} to {summary.out}")
    if summary.videos_copied or summary.videos_missing:
        print(f"videos: {summary.videos_copied} MP4 files copied, {summary.videos_missing} not (poster only)")
    print(f"dataset card: {summary.out / 'README.md'}")
    return 0


def print_leaderboard(board: str) -> None:
    """Print the headline table of each board whose Markdown file is in the directory ``board``."""
    from vlamergebench.leaderboards.registry import headline_tables

    text = headline_tables(board)
    if text:
        print(text)
