"""Per-query latency of the canonical policy on this CPU, one torch thread, fp32 and bf16.

A query is one ``predict``: two images through both vision towers, the projector, the Qwen2 LLM over the whole
sequence (no logits), and the action expert, giving one 8-step action chunk. The tiny preset runs through
``VLAPolicy.predict`` (preprocessing included) with its real offline tokenizer. The reference preset has
random weights and, since Qwen's tokenizer files are not available offline, a 50-id prompt (VLA-Adapter's
LIBERO prompts are 44-56 Qwen tokens), so its sequence is 1 + 512 + 49 + 64 + 1 = 627 positions; it also
reports the split between vision (towers + projector), LLM and head. Building the reference needs about 6 GB
of memory.

Timings on a shared machine are noisy: the script prints the 1-minute load average next to each figure and
reports the minimum and median of the repetitions.

Usage:
    python benchmarks/policy_latency.py                  # tiny and reference
    python benchmarks/policy_latency.py --presets tiny --repeats 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from vlamergebench.policies.checkpoint import NormStats
from vlamergebench.policies.model import PromptBatch, build_model
from vlamergebench.policies.policy import VLAPolicy
from vlamergebench.policies.registry import make_config
from vlamergebench.policies.tokenizer import HashedWordTokenizer

PROMPT_IDS = 50


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def _time(function, repeats: int) -> tuple[float, float]:
    function()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def _observation(size: int) -> dict:
    rng = np.random.default_rng(0)
    return {
        "agentview_image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        "state": rng.uniform(-0.5, 0.5, 8).astype(np.float32),
        "instruction": "pick up the alphabet soup and place it in the basket",
    }


def bench_tiny(repeats: int) -> None:
    config = make_config("tiny")
    stats = NormStats((-1.0,) * 7, (1.0,) * 7, (True,) * 6 + (False,), (-1.0,) * 8, (1.0,) * 8)
    for dtype in (torch.float32, torch.bfloat16):
        policy = VLAPolicy(
            build_model(config, 0), stats, HashedWordTokenizer(config.llm.vocab_size), dtype=dtype
        )
        observation = _observation(128)
        best, median = _time(lambda: policy.predict(observation), repeats)  # noqa: B023
        print(
            f"tiny       {str(dtype)[6:]:9s} per query: min {best * 1e3:7.1f} ms  "
            f"median {median * 1e3:7.1f} ms  (load {_load()})"
        )


def bench_reference(repeats: int) -> None:
    config = make_config("reference")
    print("building the reference model (random weights, ~1.41 B parameters)...", flush=True)
    model = build_model(config, 0).eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 2, 3, 224, 224, generator=generator)
    proprio = torch.rand(1, 8, generator=generator) * 2 - 1
    ids = torch.randint(3, config.llm.vocab_size, (1, PROMPT_IDS), generator=generator)
    prompts = PromptBatch(ids=ids, mask=torch.ones_like(ids))
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        timings = _time_reference(model, images.to(dtype), proprio.to(dtype), prompts, repeats)
        best, median, vision, bridge, head = timings
        print(
            f"reference  {str(dtype)[6:]:9s} per query: min {best:6.2f} s  median {median:6.2f} s  "
            f"(vision+projector {vision:.2f} s, vision+projector+LLM {bridge:.2f} s, head {head:.2f} s; "
            f"{1 + 512 + PROMPT_IDS - 1 + 64 + 1} positions; load {_load()})"
        )


@torch.inference_mode()
def _time_reference(model, pixels, state, prompts, repeats: int) -> tuple[float, float, float, float, float]:
    best, median = _time(lambda: model(pixels, state, prompts), repeats)
    parts = max(1, repeats // 2)
    vision, _ = _time(lambda: model.projector(model.vision(pixels)), parts)
    bridge, _ = _time(lambda: model.bridge_states(pixels, prompts), parts)
    states = model.bridge_states(pixels, prompts)
    head, _ = _time(
        lambda: model.action_head(states.task, states.action, model.proprio_projector(state)), parts
    )
    return best, median, vision, bridge, head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "reference"], choices=["tiny", "reference"])
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (tiny 30, reference 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {os.cpu_count()} CPUs on the machine")
    if "tiny" in args.presets:
        bench_tiny(args.repeats or 30)
    if "reference" in args.presets:
        bench_reference(args.repeats or 3)


if __name__ == "__main__":
    main()
