"""Gymnasium environments of vlamergebench, registered into Gymnasium's own registry.

``import vlamergebench`` (or ``import vlamergebench.envs``) registers every id below, Gymnasium's convention
for third-party env packages; nothing heavy is imported (entry points are strings resolved by
``gymnasium.make``). Ids are ``vlamergebench/<Name>-v<N>`` (:func:`~vlamergebench.envs.contract.env_id`); the
contract every family follows (make keyword arguments, reset options, instruction space, chunkable rendering)
is :mod:`vlamergebench.envs.contract`.

The catalogue is one block per env family. Envs import nothing of the rest of vlamergebench (policies,
merging, evaluation): arrows point into this room only.
"""

from __future__ import annotations

from vlamergebench.envs import rendering as _rendering
from vlamergebench.envs.contract import register as _register

# Choose the MuJoCo GL backend before anything can import mujoco (headless EGL by default).
_rendering.configure_gl_backend()
# robosuite warns on import, in every process, that it has no private macro file (we need none: LIBERO sets
# what it uses); the three lines tear progress bars. The filter is installed before robosuite is imported.
_rendering.quiet_robosuite_macro_warning()

# --- LIBERO and LIBERO-PRO (vlamergebench/envs/libero.py) ---------------------------------------------------
# suite -> (id name, max_episode_steps). Step limits are LIBERO's standard evaluation limits; a LIBERO-PRO
# suite (<base>_{lan,object,swap,task}, the complete ones `libero-pro list` reports) keeps its base's limit.
LIBERO_SUITES: dict[str, tuple[str, int]] = {
    "libero_spatial": ("LIBERO-Spatial", 220),
    "libero_object": ("LIBERO-Object", 280),
    "libero_goal": ("LIBERO-Goal", 300),
    "libero_10": ("LIBERO-10", 520),
    "libero_90": ("LIBERO-90", 400),
}
_LIBERO_PRO_KINDS = {"lan": "Lan", "object": "Object", "swap": "Swap", "task": "Task"}
for _base in ("spatial", "object", "goal", "10"):
    for _kind, _kind_name in _LIBERO_PRO_KINDS.items():
        _base_name, _limit = LIBERO_SUITES[f"libero_{_base}"]
        _pro_name = _base_name.replace("LIBERO-", "LIBERO-PRO-") + f"-{_kind_name}"
        LIBERO_SUITES[f"libero_{_base}_{_kind}"] = (_pro_name, _limit)
# suite -> its registered id, e.g. "libero_object" -> "vlamergebench/LIBERO-Object-v0": the one place ids of
# LIBERO suites are spelled (expert recipes, demo collection and benchmarks read it).
LIBERO_ENV_IDS: dict[str, str] = {
    _suite: _register(_name, "vlamergebench.envs.libero:LiberoEnv", _limit, {"suite": _suite})
    for _suite, (_name, _limit) in LIBERO_SUITES.items()
}

# --- LIBERO perturbations, ours, not the official LIBERO-Plus (vlamergebench/envs/perturb/) ---------------
# LIBERO-Plus-style axes on plain LIBERO (docs/perturbations.md). make kwargs: task, and variant (index or
# label such as "camera-L3-s0" into the fixed list vlamergebench.envs.perturb.VARIANTS) or perturbation (a
# PerturbationConfig dict). Step limits are the base suite's.
# suite -> the id of its perturbed family (what `vlamergebench run --perturbations` evaluates a skill on).
LIBERO_PERTURBED_IDS: dict[str, str] = {
    _suite: _register(
        LIBERO_SUITES[_suite][0].replace("LIBERO-", "LIBERO-Perturbed-"),
        "vlamergebench.envs.perturb.suites:make_perturbed_libero",
        LIBERO_SUITES[_suite][1],
        {"suite": _suite},
    )
    for _suite in ("libero_spatial", "libero_object", "libero_goal", "libero_10")
}

# The ids whose envs take ``render_profile`` ("full" or "fast": decimated visual meshes, envs/fast_meshes.py).
RENDER_PROFILE_IDS: frozenset[str] = frozenset(
    [f"vlamergebench/{_name}-v0" for _name, _ in LIBERO_SUITES.values()] + list(LIBERO_PERTURBED_IDS.values())
)

# --- SO-101 arm: MuJoCo twin and real-arm adapter (vlamergebench/envs/so101.py) -----------------------
# Tasks (task=<name or index>): pick_place_cube, push_cube, stack_cubes. 300 steps = 10 s at 30 Hz on the twin
# (the scripted experts need 60..250); a real arm gets 30 s and its operator ends episodes sooner.
_register("SO101-Twin", "vlamergebench.envs.so101:SO101Env", 300, {"robot": "twin"})
_register("SO101-Real", "vlamergebench.envs.so101:SO101Env", 900, {"robot": "lerobot"})

# --- Bimanual: ALOHA (gym-aloha) and RoboTwin 2.0 (vlamergebench/envs/aloha.py, robotwin.py) ----------------
# ALOHA: one id per gym-aloha task (task=<name> preset); 400 steps = 8 s at 50 Hz, ACT's episode length (the
# scripted experts succeed by ~280). gym-aloha itself is an optional extra: `pip install -e ".[aloha]"`
# plus `pip install --no-deps gym-aloha==0.1.5` (it pins mujoco<3.9 but runs on 3.17).
for _aloha_name, _aloha_task in (("AlohaTransferCube", "transfer_cube"), ("AlohaInsertion", "insertion")):
    _register(_aloha_name, "vlamergebench.envs.aloha:AlohaEnv", 400, {"task": _aloha_task})
# RoboTwin 2.0: needs a CUDA GPU and a RoboTwin checkout with assets (ROBOTWIN_ROOT); the listing says so.
# One id per task and domain (clean = demo_clean, randomized = demo_randomized), with RoboTwin's own per-task
# step limit, e.g. vlamergebench/RoboTwin-Clean-handover_block-v0.
from vlamergebench.envs.robotwin import STEP_LIMITS as _ROBOTWIN_STEP_LIMITS  # noqa: E402 (stdlib+numpy only)

for _domain in ("clean", "randomized"):
    for _robotwin_task, _limit in _ROBOTWIN_STEP_LIMITS.items():
        _register(
            f"RoboTwin-{_domain.capitalize()}-{_robotwin_task}",
            "vlamergebench.envs.robotwin:RoboTwinEnv",
            _limit,
            {"task": _robotwin_task, "domain": _domain},
        )
