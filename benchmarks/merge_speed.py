"""Merge wall time and peak memory: ours against MergeKit, same inputs, same machine, same run.

Inputs (generated once, seeded, under ``--root``, default ``scratch/merge_speed``): a base and 4 experts in
our checkpoint layout with Qwen2.5-0.5B shapes in bfloat16 (the LLM: 494,032,768 parameters; the vision
towers are left out, the action expert is a small stand-in of ~2.5 M parameters), each expert a rank-64 LoRA
on every linear layer (alpha 128) plus its folded ``dense.safetensors``; and, for MergeKit, each expert as
one whole dense safetensors file (base tensors with the LoRA targets folded in).

Runs, each a fresh process timed by ``/usr/bin/time`` (wall seconds, peak resident set size):
- Task Arithmetic, lambda 1: ``vlamergebench merge --method ta`` vs ``mergekit-pytorch`` ``task_arithmetic``.
- TIES, keep 20% per tensor (MergeKit's ``density`` semantics): ``ties_per_tensor`` vs MergeKit ``ties``.
- Ours only: TA from the LoRA factors, TIES with the official global top-k, and the SVD- and
  optimisation-heavy methods from the LoRA factors: TSV-M (``tsv``), Iso-C (``iso_c``), WUDI (``wudi``, 300
  Adam steps per matrix) and OPCM (``opcm``: the experts admitted in turn, a dense SVD per target each time).

Ours reads task vectors from ``dense.safetensors`` in the head-to-head rows (MergeKit reads dense files too)
and computes in float32; MergeKit runs with its defaults (arithmetic in the checkpoint dtype, bfloat16). The
page cache is warmed before timing. The machine is shared: both tools run with one intra-op thread by default
(``--threads``), rerun with ``--repeats`` and read the minimum; CPU seconds are reported beside wall time.

``--layers`` and ``--vocab`` shrink the model (default: Qwen2.5-0.5B's 24 layers and 151,936 tokens); a small
setting only checks that the script runs, its figures are not the benchmark's. ``--cases`` runs a subset.

Usage:
    python benchmarks/merge_speed.py                   # generate if needed, run everything, print the table
    python benchmarks/merge_speed.py --skip-mergekit --repeats 3
    python benchmarks/merge_speed.py --cases tsv,iso_c,wudi,opcm --skip-mergekit
    python benchmarks/merge_speed.py --root scratch/merge_speed_smoke --layers 1 --vocab 1024 --experts 2 \
        --skip-mergekit                                # the smallest setting: does the script run?
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.io import StreamingSafetensorsWriter, TensorFile
from vlamergebench.policies import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, INTERMEDIATE, LAYERS, KV, VOCAB = 896, 4864, 24, 128, 151936
RANK, ALPHA = 64, 128.0
PROJECTIONS = {  # module -> (out, in) of Qwen2.5-0.5B
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (KV, HIDDEN),
    "self_attn.v_proj": (KV, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTERMEDIATE, HIDDEN),
    "mlp.up_proj": (INTERMEDIATE, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTERMEDIATE),
}
HEAD = {
    "action_head.fc1.weight": (HIDDEN, HIDDEN),
    "action_head.blocks.0.v_adapter.weight": (HIDDEN, HIDDEN),
    "action_head.blocks.0.v_task.weight": (HIDDEN, HIDDEN),
    "action_head.layer_norm2.weight": (HIDDEN,),
    "action_head.fc2.weight": (7, HIDDEN),
    "action_queries.weight": (64, HIDDEN),
    "proprio_projector.fc1.weight": (HIDDEN, 8),
}
STATS = ckpt.NormStats((-1.0,) * 7, (1.0,) * 7, (True,) * 6 + (False,), (-1.0,) * 8, (1.0,) * 8)


def vlm_shapes(layers: int = LAYERS, vocab: int = VOCAB) -> dict[str, tuple[int, ...]]:
    """Qwen2.5-0.5B's tensors in our namespace (``llm.*``), file order; ``layers`` blocks, ``vocab`` rows."""
    shapes: dict[str, tuple[int, ...]] = {"llm.embed_tokens.weight": (vocab, HIDDEN)}
    for layer in range(layers):
        prefix = f"llm.layers.{layer}."
        for module, shape in PROJECTIONS.items():
            shapes[prefix + module + ".weight"] = shape
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                shapes[prefix + module + ".bias"] = (shape[0],)
        shapes[prefix + "input_layernorm.weight"] = (HIDDEN,)
        shapes[prefix + "post_attention_layernorm.weight"] = (HIDDEN,)
    shapes["llm.norm.weight"] = (HIDDEN,)
    return shapes


def targets(layers: int = LAYERS) -> list[str]:
    return [f"llm.layers.{layer}.{module}" for layer in range(layers) for module in PROJECTIONS]


def random_bf16(shape: tuple[int, ...], std: float, *seed: object) -> torch.Tensor:
    return (torch.randn(shape, generator=ops.generator_for(0, *seed)) * std).to(torch.bfloat16)


def write_config(path: Path, role: str, base_id: str, skill: str | None, layers: int) -> None:
    from vlamergebench.policies.registry import make_config

    config = {
        "format": ckpt.FORMAT_NAME,
        "format_version": ckpt.FORMAT_VERSION,
        "role": role,
        "policy": make_config("reference").to_dict(),
        "base_id": base_id,
        "skill": None
        if skill is None
        else {"name": skill, "suite": "bench", "task": skill, "task_id": 0, "env_id": "none"},  # fmt: skip
        "lora": None if skill is None else {"rank": RANK, "alpha": ALPHA, "targets": targets(layers)},
        "provenance": {"generator": "benchmarks/merge_speed.py (random weights)"},
    }
    (path / ckpt.NORM_STATS_FILE).write_text(json.dumps(STATS.to_dict()))
    (path / ckpt.INSTRUCTIONS_FILE).write_text(json.dumps([f"benchmark {skill or 'base'}"]))
    (path / ckpt.CONFIG_FILE).write_text(json.dumps(config, indent=1))


def generate(root: Path, experts: int, layers: int, vocab: int) -> None:
    """Write base, experts, expert set and MergeKit's whole-model files, one tensor at a time."""
    shapes = vlm_shapes(layers, vocab)
    base = root / "set" / "base"
    base.mkdir(parents=True)
    with StreamingSafetensorsWriter(
        base / ckpt.VLM_FILE, [(n, torch.bfloat16, s) for n, s in shapes.items()]
    ) as w:
        for name, shape in shapes.items():
            w.write(
                name,
                torch.ones(shape, dtype=torch.bfloat16) if "norm" in name else random_bf16(shape, 0.02, name),
            )
    save_file(
        {n: random_bf16(s, 0.02, "head", n) for n, s in HEAD.items()}, str(base / ckpt.ACTION_EXPERT_FILE)
    )
    base_id = ckpt.file_sha256(base / ckpt.VLM_FILE)
    write_config(base, "base", base_id, None, layers)
    vlm = TensorFile(base / ckpt.VLM_FILE, "base")
    modules = set(targets(layers))
    paths = []
    for index in range(experts):
        skill = f"skill_{index}"
        path = root / "set" / skill
        path.mkdir()
        lora_specs = []
        for module in targets(layers):
            out_dim, in_dim = shapes[module + ".weight"]
            lora_specs += [(module + ".lora_A", torch.bfloat16, (RANK, in_dim)),
                           (module + ".lora_B", torch.bfloat16, (out_dim, RANK))]  # fmt: skip
        dense_specs = [(m + ".weight", torch.bfloat16, shapes[m + ".weight"]) for m in targets(layers)]
        full_specs = [(n, torch.bfloat16, s) for n, s in shapes.items()]
        with (
            StreamingSafetensorsWriter(path / ckpt.LORA_FILE, lora_specs) as lora,
            StreamingSafetensorsWriter(path / ckpt.DENSE_FILE, dense_specs) as dense,
            StreamingSafetensorsWriter(root / f"mergekit_{skill}.safetensors", full_specs) as full,
        ):
            for name in vlm.names:
                module = name.rsplit(".", 1)[0]
                if module not in modules or not name.endswith(".weight"):
                    full.copy_from(name, vlm)
                    continue
                out_dim, in_dim = shapes[name]
                a = random_bf16((RANK, in_dim), 0.02, skill, module, "A")
                b = random_bf16((out_dim, RANK), 0.01, skill, module, "B")
                folded = (vlm.read(name).float() + ops.lora_delta(a, b, ALPHA / RANK)).to(torch.bfloat16)
                lora.write(module + ".lora_A", a)
                lora.write(module + ".lora_B", b)
                dense.write(name, folded)
                full.write(name, folded)
        save_file(
            {n: random_bf16(s, 0.02, skill, n) for n, s in HEAD.items()}, str(path / ckpt.ACTION_EXPERT_FILE)
        )
        write_config(path, "expert", base_id, skill, layers)
        paths.append(path)
        print(f"generated {skill}", flush=True)
    ckpt.write_expert_set(root / "set", "merge-speed", base, paths)
    os.link(base / ckpt.VLM_FILE, root / "mergekit_base.safetensors")


def rss_anon_kib(pid: int) -> int:
    """Resident anonymous (private) memory of ``pid`` in KiB; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def timed(command: list[str], log: Path, threads: int) -> tuple[float, float, float, float]:
    """(wall s, peak RSS GiB, CPU s user + system, peak private GiB) of one fresh process.

    Peak RSS (the kernel's ``ru_maxrss``) counts memory-mapped input pages, which safetensors readers map
    rather than copy; peak private memory (``RssAnon`` in ``/proc/PID/status``, sampled every 20 ms) is the
    memory the process itself allocated. CPU seconds are the steadier figure on a shared machine: other jobs
    stretch wall time, not CPU time. ``threads`` sets ``OMP_NUM_THREADS`` (torch's intra-op threads) for the
    process; 0 keeps the default.
    """
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    started = time.perf_counter()
    peak_anon = 0
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak_anon = max(peak_anon, rss_anon_kib(process.pid))
            time.sleep(0.02)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{tail}")
    return wall, usage.ru_maxrss / 2**20, usage.ru_utime + usage.ru_stime, peak_anon / 2**20


def mergekit_config(root: Path, method: str, experts: int, prefix: str = "mergekit_") -> Path:
    """A ``mergekit-pytorch`` YAML: base + every expert at weight 1 (and density 0.2 for TIES).

    ``prefix`` picks the input files: ``mergekit_`` the whole models, ``mergekit_targets_`` the LoRA
    targets only.
    """
    parameters = {"weight": 1.0, "density": 0.2} if method == "ties" else {"weight": 1.0}
    lines = [f"merge_method: {method}", f"base_model: {root / f'{prefix}base.safetensors'}", "models:"]
    for index in range(experts):
        lines.append(f"  - model: {root / f'{prefix}skill_{index}.safetensors'}")
        lines.append(f"    parameters: {json.dumps(parameters)}")
    path = root / f"{prefix}{method}.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_target_only_files(root: Path, experts: int, layers: int) -> None:
    """MergeKit's inputs cut to the tensors ours merges (the LoRA targets' weights), once.

    MergeKit merges every tensor of its files, the 136 M-parameter embedding and the norms included, whose
    task vectors are zero here; on these files both tools merge the identical tensor set.
    """
    names = [module + ".weight" for module in targets(layers)]
    for model in ["base", *(f"skill_{index}" for index in range(experts))]:
        path = root / f"mergekit_targets_{model}.safetensors"
        if path.exists():
            continue
        whole = TensorFile(root / f"mergekit_{model}.safetensors", model)
        partial = path.with_suffix(".partial")
        with StreamingSafetensorsWriter(partial, [(n, torch.bfloat16, whole.shape(n)) for n in names]) as out:
            for name in names:
                out.copy_from(name, whole)
        partial.rename(path)


def ours(root: Path, method: str, out: str, *overrides: str) -> list[str]:
    command = [sys.executable, "-m", "vlamergebench.cli", "merge", "--method", method, "--overwrite"]
    command += ["--experts", str(root / "set"), "--out", str(root / "out" / out), "--no-progress"]
    for override in overrides:
        command += ["--set", override]
    return command


def agreement(ours_file: Path, mergekit_dir: Path, names: list[str]) -> float:
    """Largest |ours - MergeKit| over ``names``, relative to the largest |task vector sum| there."""
    from safetensors import safe_open

    mergekit_files = sorted(mergekit_dir.glob("*.safetensors"))
    worst, scale = 0.0, 0.0
    mine = TensorFile(ours_file, "ours")
    base = TensorFile(ours_file.parents[2] / "set" / "base" / ckpt.VLM_FILE, "base")
    for name in names:
        theirs = None
        for file in mergekit_files:
            with safe_open(str(file), "pt") as handle:
                if name in handle.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    theirs = handle.get_tensor(name).float()
        if theirs is None:
            raise KeyError(f"{name} not in MergeKit's output {mergekit_dir}")
        ours_tensor = mine.read(name).float()
        worst = max(worst, float((ours_tensor - theirs).abs().max()))
        scale = max(scale, float((ours_tensor - base.read(name).float()).abs().max()))
    return worst / scale


def plot(rows: list[dict], path: Path, threads: int, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{row['case']}\n{row['tool']}" for row in rows]
    colors = ["tab:blue" if row["tool"].startswith("ours") else "tab:gray" for row in rows]
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5), sharey=True)
    for axis, key, title in (
        (axes[0], "wall_s", "wall time (s)"),
        (axes[1], "peak_rss_gib", "peak RSS (GiB; mapped input pages included)"),
        (axes[2], "private_gib", "peak private memory (GiB)"),
    ):
        values = [row[key] for row in rows]
        bars = axis.barh(labels, values, color=colors)
        axis.bar_label(bars, [f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values], padding=3, fontsize=8)
        axis.set_title(title)
        axis.margins(x=0.15)  # room for the value labels
    # A scaled FusionBench WUDI row runs to a day: on a linear axis every other bar would vanish.
    axes[0].set_xscale("log")
    axes[0].invert_yaxis()  # shared y: once for all three
    for axis in axes[1:]:
        axis.axvline(2.5, color="tab:red", linestyle="--", label="2.5 GiB goal")
        axis.legend(loc="lower right")
    per_tool = f"{threads} thread(s) per tool" if threads else "default threads"
    figure.suptitle(f"Merging {model}, 2-core CPU, {per_tool}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


CASES = {  # --cases name -> the case label in the table
    "ta": "TA",
    "ties_per_tensor": "TIES 20%/tensor",
    "ties": "TIES 20% global",
    "tsv": "TSV-M",
    "iso_c": "Iso-C",
    "wudi": "WUDI",
    "opcm": "OPCM",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT / "scratch" / "merge_speed")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="runs per case; the minimum is reported")
    parser.add_argument(
        "--threads",
        default="1",
        help="OMP_NUM_THREADS for every tool, or a comma-separated list run in turn (e.g. 1,2); default 1: "
        "on a shared 2-core machine, multi-threaded runs mostly measure the other jobs; 0: torch's default",
    )
    parser.add_argument(
        "--fusionbench-python",
        default=None,
        help="python of a venv with fusion-bench installed: adds FusionBench's TSV-M, Iso-C and WUDI "
        "(benchmarks/fusionbench_merge.py) beside ours",
    )
    parser.add_argument(
        "--fusionbench-wudi-steps", type=int, default=3, help="Adam steps of FusionBench's WUDI run (scaled)"
    )
    parser.add_argument("--layers", type=int, default=LAYERS, help="LLM blocks (default: Qwen2.5-0.5B's 24)")
    parser.add_argument("--vocab", type=int, default=VOCAB, help="embedding rows (default 151936)")
    parser.add_argument(
        "--cases",
        default="",
        help="comma-separated subset of: " + ", ".join(CASES) + " (default: all)",
    )
    parser.add_argument("--skip-mergekit", action="store_true")
    parser.add_argument("--regenerate", action="store_true", help="rewrite the inputs even if present")
    parser.add_argument("--generate-only", action="store_true", help="write the inputs and stop")
    args = parser.parse_args()
    root: Path = args.root
    if args.regenerate and root.exists():
        shutil.rmtree(root)
    setting = {"experts": args.experts, "layers": args.layers, "vocab": args.vocab}
    if (root / "set" / ckpt.EXPERT_SET_FILE).exists():
        found = json.loads((root / "setting.json").read_text()) if (root / "setting.json").exists() else None
        if found not in (None, setting):  # None: inputs written before settings were recorded (the defaults)
            sys.exit(
                f"{root}: inputs were generated with {found}, not {setting}; pass --regenerate or --root"
            )
    else:
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        generate(root, args.experts, args.layers, args.vocab)
        (root / "setting.json").write_text(json.dumps(setting))
        print(f"generated inputs in {time.perf_counter() - started:.0f} s", flush=True)
    if args.generate_only:
        return
    for file in root.rglob("*.safetensors"):  # warm the page cache so both tools read from memory
        with open(file, "rb") as handle:
            while handle.read(1 << 26):
                pass
    mergekit = str(Path(sys.executable).with_name("mergekit-pytorch"))
    cases = [
        ("TA", "ours (dense tau)", ours(root, "ta", "ta", 'task_vectors="dense"')),
        (
            "TA",
            "MergeKit",
            [
                mergekit,
                str(mergekit_config(root, "task_arithmetic", args.experts)),
                str(root / "out" / "mergekit_ta"),
                "--quiet",
            ],
        ),  # fmt: skip
        (
            "TIES 20%/tensor",
            "ours (dense tau)",
            ours(root, "ties_per_tensor", "ties", 'task_vectors="dense"'),
        ),
        (
            "TIES 20%/tensor",
            "MergeKit",
            [
                mergekit,
                str(mergekit_config(root, "ties", args.experts)),
                str(root / "out" / "mergekit_ties"),
                "--quiet",
            ],
        ),  # fmt: skip
        *(
            (
                case,
                "MergeKit (LoRA targets only)",
                [
                    mergekit,
                    str(mergekit_config(root, method, args.experts, "mergekit_targets_")),
                    str(root / "out" / f"mergekit_targets_{method}"),
                    "--quiet",
                ],
            )
            for case, method in (("TA", "task_arithmetic"), ("TIES 20%/tensor", "ties"))
        ),  # fmt: skip
        ("TA", "ours (LoRA tau)", ours(root, "ta", "ta_lora")),
        ("TIES 20%/tensor", "ours (LoRA tau)", ours(root, "ties_per_tensor", "ties_lora")),
        ("TIES 20% global", "ours (dense tau)", ours(root, "ties", "ties_global", 'task_vectors="dense"')),
        ("TSV-M", "ours (LoRA tau)", ours(root, "tsv", "tsv")),
        ("Iso-C", "ours (LoRA tau)", ours(root, "iso_c", "iso_c")),
        ("WUDI", "ours (LoRA tau)", ours(root, "wudi", "wudi")),
        ("OPCM", "ours (LoRA tau)", ours(root, "opcm", "opcm")),
    ]
    scales: dict[str, float] = {}  # tool -> factor from the measured run to the figure in the table
    if args.fusionbench_python:
        fusionbench = [args.fusionbench_python, str(ROOT / "benchmarks" / "fusionbench_merge.py")]
        fusionbench += ["--root", str(root), "--experts", str(args.experts), "--targets-only"]
        for case, method in (("TSV-M", "tsv"), ("Iso-C", "iso_c")):
            out = str(root / "out" / f"fusionbench_{method}.safetensors")
            cases.append((case, "FusionBench", [*fusionbench, "--method", method, "--out", out]))
        # FusionBench's WUDI forms (tau_m - tau_t) tau_t^T, an m x m product per task and Adam step (4864^2
        # for the MLP's gate and up projections): 300 steps of the whole model take hours here. It runs one
        # LLM block for a few steps; the table scales that figure to every block and 300 steps.
        steps = args.fusionbench_wudi_steps
        out = str(root / "out" / "fusionbench_wudi.safetensors")
        wudi = [*fusionbench, "--method", "wudi", "--layers", "1", "--iterations", str(steps), "--out", out]
        wudi_tool = f"FusionBench (1 block, {steps} steps; scaled)"
        scales[wudi_tool] = args.layers * 300 / steps  # the measured figure stands for every block, 300 steps
        cases.append(("WUDI", wudi_tool, wudi))
    chosen = [name for name in args.cases.split(",") if name]
    unknown = sorted(set(chosen) - set(CASES))
    if unknown:
        sys.exit(f"--cases: unknown {unknown}; expected some of {list(CASES)}")
    wanted = {CASES[name] for name in chosen} or {case for case, _, _ in cases}
    cases = [case for case in cases if case[0] in wanted]
    (root / "out").mkdir(exist_ok=True)
    rows = []
    thread_counts = [int(value) for value in str(args.threads).split(",")]
    for threads in thread_counts:
        for case, tool, command in cases:
            if args.skip_mergekit and tool.startswith("MergeKit"):
                continue
            if tool == "MergeKit (LoRA targets only)":
                write_target_only_files(root, args.experts, args.layers)  # not timed
            runs = [timed(command, root / "out" / "last.log", threads) for _ in range(args.repeats)]
            wall, peak, cpu, private = (min(run[i] for run in runs) for i in range(4))
            scale = scales.get(tool, 1.0)
            row = {"case": case, "tool": tool, "threads": threads, "wall_s": wall * scale,
                   "cpu_s": cpu * scale, "peak_rss_gib": peak, "private_gib": private,
                   "measured_wall_s": wall, "scale": scale, "runs": runs}  # fmt: skip
            rows.append(row)
            print(f"{case:17s} {tool:30s} {threads} thr {wall:8.1f} s wall {cpu:8.1f} s CPU "
                  f"{peak:6.2f} GiB peak {private:6.2f} GiB private", flush=True)  # fmt: skip
    print(
        "\n| case | tool | threads | wall (s) | CPU (s) | peak RSS (GiB) | peak private (GiB) "
        "| wall speed-up | CPU speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        reference = next(
            (r for r in rows if r["case"] == row["case"] and r["threads"] == row["threads"]
             and (r["tool"] == "MergeKit" or r["tool"].startswith("FusionBench"))),
            None,
        )  # fmt: skip
        speed = f"{reference['wall_s'] / row['wall_s']:.1f}x" if reference else "-"
        cpu = f"{reference['cpu_s'] / row['cpu_s']:.1f}x" if reference else "-"
        figures = (
            f"{row['wall_s']:.1f} | {row['cpu_s']:.1f} | {row['peak_rss_gib']:.2f} | {row['private_gib']:.2f}"
        )
        print(f"| {row['case']} | {row['tool']} | {row['threads']} | {figures} | {speed} | {cpu} |")
    for row in (r for r in rows if r["tool"] == "ours (dense tau)"):
        same_set = next(
            (r for r in rows if r["case"] == row["case"] and r["threads"] == row["threads"]
             and r["tool"] == "MergeKit (LoRA targets only)"),
            None,
        )  # fmt: skip
        if same_set:
            wall, cpu = same_set["wall_s"] / row["wall_s"], same_set["cpu_s"] / row["cpu_s"]
            memory = f"private {row['private_gib']:.2f} vs {same_set['private_gib']:.2f} GiB"
            print(f"identical tensor set, {row['case']}, {row['threads']} thread(s): ours {wall:.1f}x wall, "
                  f"{cpu:.1f}x CPU; {memory}")  # fmt: skip
    if any(row["scale"] != 1.0 for row in rows):
        print(
            "\nscaled rows: the measured time x blocks x 300 / steps (loading included, so an overestimate)"
        )
    if not args.skip_mergekit and "TA" in {row["case"] for row in rows}:
        names = [
            "llm.layers.0.self_attn.q_proj.weight",
            f"llm.layers.{args.layers - 1}.mlp.down_proj.weight",
            "llm.norm.weight",
        ]
        error = agreement(root / "out" / "ta" / ckpt.VLM_FILE, root / "out" / "mergekit_ta", names)
        print(
            f"\nTA agreement: max |ours - MergeKit| = {error:.2e} of the largest merged delta (bf16 rounding)"
        )
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores")
    print(f"threads per tool: {args.threads}")
    results = {"rows": rows, "load_average": load, "threads": thread_counts, "setting": setting}
    (root / "results.json").write_text(json.dumps(results, indent=1))
    model = f"base + {args.experts} experts with Qwen2.5-0.5B shapes (bf16"
    if (args.layers, args.vocab) != (LAYERS, VOCAB):
        model += f"; smoke setting: {args.layers} LLM layer(s), {args.vocab} tokens"
    model += ")"
    plot([row for row in rows if row["threads"] == thread_counts[0]], root / "merge_speed.png",
         thread_counts[0], model)  # fmt: skip
    print(f"wrote {root / 'results.json'} and {root / 'merge_speed.png'}")


if __name__ == "__main__":
    main()
