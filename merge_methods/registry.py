"""The catalogue of merge methods and routers: every ``register`` call, in one place.

Registering imports nothing (entry points are strings resolved by ``make``), so ``import
vlamergebench.merge_methods.registry`` is cheap. Each method entry carries metadata a leaderboard can read
without importing the method: ``paper`` (title), ``arxiv`` (id), ``needs_task_identity`` (whether
instantiating needs the skill for its *weights*; every method selects per-skill norm stats by skill),
``router`` (its own router, or None: run it with ``oracle`` or a named router), ``kind`` (``one_shot`` or
``continual``) and ``stores`` (what its merged directory holds at inference). A variant that differs only in
defaults is a second registration with ``kwargs``, never a second file. Build a method with
``base.make_method(name, **overrides)``. Installed plug-ins and ``package.module:Name`` import paths join
these entries through ``vlamergebench/plugins.py``.
"""

from __future__ import annotations

from vlamergebench.registry import Registry

# Installed packages add entries through these entry-point groups (vlamergebench/plugins.py).
METHODS = Registry("merge method", entry_point_group="vlamergebench.merge_methods")
ROUTERS = Registry("router", entry_point_group="vlamergebench.routers")

_PACKAGE = "vlamergebench.merge_methods"
_TA = ("Editing Models with Task Arithmetic", "2212.04089")
_TIES = ("TIES-Merging: Resolving Interference When Merging Models", "2306.01708")
_DARE = (
    "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch",
    "2311.03099",
)
_CONSENSUS = ("Localizing Task Information for Improved Model Merging and Compression", "2405.07813")
_ROBUST = ("RobustMerge: Parameter-Efficient Model Merging for MLLMs with Direction Robustness", "2502.17159")
_MERGEVLA = (
    "MergeVLA: Cross-Skill Model Merging Toward a Generalist Vision-Language-Action Agent",
    "2511.18810",
)
_CARVE = ("CARVE: continual VLA expert merging (anonymous NeurIPS 2026 submission)", None)
_MERGEVLA_STORES = (
    "base + tau_merge + per-skill bit-packed masks + shared head + per-skill expert heads + router keys"
)
_ONE_MODEL = "one merged model (VLM + averaged action expert) + per-skill norm stats"


def _method(
    name: str,
    entry: str,
    paper: tuple[str | None, str | None],
    *,
    kwargs: dict | None = None,
    needs_task_identity: bool,
    router: str | None,
    kind: str = "one_shot",
    stores: str,
) -> None:
    METHODS.register(
        name,
        f"{_PACKAGE}.{entry}",
        kwargs=kwargs,
        paper=paper[0],
        arxiv=paper[1],
        needs_task_identity=needs_task_identity,
        router=router,
        kind=kind,
        stores=stores,
    )


_method(
    "base",
    "baselines:BaseOnly",
    (None, None),
    needs_task_identity=False,
    router=None,
    stores="the base checkpoint (its own head and norm stats)",
)
_method(
    "expert_bank",
    "baselines:ExpertBank",
    (None, None),
    needs_task_identity=True,
    router=None,
    stores="every expert whole: folded VLM + action expert + norm stats per skill",
)
_method(
    "lora_bank",
    "baselines:LoraBank",
    (None, None),
    needs_task_identity=True,
    router=None,
    stores="base + per skill LoRA factors, action expert and norm stats",
)
_method(
    "ta", "task_arithmetic:TaskArithmetic", _TA, needs_task_identity=False, router=None, stores=_ONE_MODEL
)
_method(
    "ties",
    "ties:Ties",
    _TIES,
    kwargs={"topk_scope": "global"},
    needs_task_identity=False,
    router=None,
    stores=_ONE_MODEL,
)
_method(
    "ties_per_tensor",
    "ties:Ties",
    _TIES,
    kwargs={"topk_scope": "per_tensor"},
    needs_task_identity=False,
    router=None,
    stores=_ONE_MODEL,
)
_method(
    "dare",
    "dare:Dare",
    _DARE,
    kwargs={"combine": "ta"},
    needs_task_identity=False,
    router=None,
    stores=_ONE_MODEL,
)
_method(
    "dare_ties",
    "dare:Dare",
    _DARE,
    kwargs={"combine": "ties"},
    needs_task_identity=False,
    router=None,
    stores=_ONE_MODEL,
)
_method(
    "consensus_ta",
    "consensus:Consensus",
    _CONSENSUS,
    kwargs={"merge": "ta"},
    needs_task_identity=False,
    router=None,
    stores=_ONE_MODEL,
)
_method(
    "consensus_ties",
    "consensus:Consensus",
    _CONSENSUS,
    kwargs={"merge": "ties"},
    needs_task_identity=False,
    router=None,
    stores=_ONE_MODEL,
)
_method(
    "robustmerge",
    "robustmerge:RobustMerge",
    _ROBUST,
    kwargs={"variant": "code"},
    needs_task_identity=False,
    router=None,
    stores="base + one merged LoRA (A*, B*) + averaged action expert + per-skill norm stats",
)
_method(
    "robustmerge_paper",
    "robustmerge:RobustMerge",
    _ROBUST,
    kwargs={"variant": "paper", "weight": 2.0},
    needs_task_identity=False,
    router=None,
    stores=_ONE_MODEL,
)
_method(
    "mergevla",
    "mergevla:MergeVLA",
    _MERGEVLA,
    kwargs={"merge": "ta"},
    needs_task_identity=True,
    router="mergevla_value_subspace",
    stores=_MERGEVLA_STORES,
)
_method(
    "mergevla_ties",
    "mergevla:MergeVLA",
    _MERGEVLA,
    kwargs={"merge": "ties"},
    needs_task_identity=True,
    router="mergevla_value_subspace",
    stores=_MERGEVLA_STORES,
)
_method(
    "carve",
    "carve:Carve",
    _CARVE,
    needs_task_identity=True,
    router="carve_text",
    kind="continual",
    stores="base + dense core + per-skill low-rank residuals + per-group norms + text router keys",
)
_method(
    "carve_vlm",
    "carve:Carve",
    _CARVE,
    kwargs={"action_expert": "own"},
    needs_task_identity=True,
    router="carve_text",
    kind="continual",
    stores="base + dense VLM core + per-skill VLM residuals + per-skill whole action experts + router keys",
)

ROUTERS.register(
    "oracle",
    f"{_PACKAGE}.routers:OracleRouter",
    needs_policy=False,
    signal="the true skill, given by the evaluator",
)
ROUTERS.register(
    "mergevla_value_subspace",
    f"{_PACKAGE}.routers:ValueSubspaceRouter",
    needs_policy=True,
    signal="energy of final-layer LLM states in each skill's top-k value-projection input subspace",
)
ROUTERS.register(
    "carve_text",
    f"{_PACKAGE}.routers:TextRouter",
    needs_policy=True,
    signal="cosine of the instruction's mean-pooled LLM embedding with per-skill keys",
)
ROUTERS.register(
    "instruction_lookup",
    f"{_PACKAGE}.routers:InstructionLookupRouter",
    needs_policy=False,
    signal="exact match of the episode instruction against each skill's training instructions",
)
