"""The catalogue of merge methods and routers: every ``register`` call, in one place.

Registering imports nothing (entry points are strings resolved by ``make``), so ``import
vlamergebench.merge_methods.registry`` is cheap. Each method entry carries metadata a leaderboard can read
without importing the method: ``paper`` (title), ``arxiv`` (id), ``needs_task_identity`` (whether
instantiating needs the skill for its *weights*; every method selects per-skill norm stats by skill),
``router`` (its own router, or None: run it with ``oracle`` or a named router), ``kind`` (``one_shot`` or
``continual``) and ``stores`` (what its merged directory holds at inference). A variant that differs only in
defaults is a second registration with ``kwargs``, never a second file. Build a method with
``make_method(name, **overrides)``. Installed plug-ins and ``package.module:Name`` import paths join
these entries through ``vlamergebench/plugins.py``.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

from vlamergebench.registry import Registry, Spec

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
_TSV = ("Task Singular Vectors: Reducing Task Interference in Model Merging", "2412.00081")
_ISO = ("No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces", "2502.04959")
_WUDI = (
    "Whoever Started the Interference Should End It: Guiding Data-Free Model Merging via Task Vectors",
    "2503.08099",
)
_KNOTS = ("Model merging with SVD to tie the KnOTS", "2410.19735")
_CORE = ("Accurate and Efficient Low-Rank Model Merging in Core Space", "2509.17786")
_EMR = ("EMR-Merging: Tuning-Free High-Performance Model Merging", "2405.17461")
_LINES = ("LiNeS: Post-training Layer Scaling Prevents Forgetting and Enhances Model Merging", "2410.17146")
_TWIN = ("Twin-Merging: Dynamic Integration of Modular Expertise in Model Merging", "2406.15479")
_OPCM = (
    "Merging Models on the Fly Without Retraining: A Sequential Approach to Scalable Continual Model Merging",
    "2501.09522",
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
for _name, _entry, _paper, _kwargs in (
    ("tsv", "tsv:TsvMerge", _TSV, None),
    ("iso_c", "iso:Iso", _ISO, {"variant": "c"}),
    ("iso_cts", "iso:Iso", _ISO, {"variant": "cts"}),
    ("wudi", "wudi:Wudi", _WUDI, None),
    ("knots", "knots:Knots", _KNOTS, None),
    ("core_space", "core_space:CoreSpace", _CORE, None),
    ("lines_ta", "lines:Lines", _LINES, {"base_merge": "ta"}),
    ("lines_ties", "lines:Lines", _LINES, {"base_merge": "ties"}),
):
    _method(_name, _entry, _paper, kwargs=_kwargs, needs_task_identity=False, router=None, stores=_ONE_MODEL)
_method(
    "tsv_c",
    "tsv:TsvCompress",
    _TSV,
    needs_task_identity=True,
    router=None,
    stores="base + per skill its top-min(m,n)/T singular factors (U S, V) per target + its own action expert",
)
_method(
    "emr",
    "emr:Emr",
    _EMR,
    needs_task_identity=True,
    router=None,
    stores="base + tau_uni + per-skill bit-packed masks + per-skill rescalers + averaged action expert",
)
_method(
    "twin_merging",
    "twin:TwinMerging",
    _TWIN,
    needs_task_identity=True,
    router=None,
    stores="shared VLM (base + 0.29 sum tau) + per skill low-rank twin factors, action expert, norm stats",
)
_CONTINUAL_DELTA = {
    "ta": "running mean of the task vectors",
    "ties": "continual TIES task vector",
    "tsv": "continual TSV-M task vector",
}
for _name, _rule, _masks, _heads in (  # CARVE's Table 2 rows (TIES: FusionBench's continual TIES)
    ("continual_ta", "ta", False, False),
    ("continual_ta_mask", "ta", True, False),
    ("continual_ta_mask_heads", "ta", True, True),
    ("continual_ties", "ties", False, False),
    ("continual_ties_mask", "ties", True, False),
    ("continual_tsv", "tsv", False, False),
    ("continual_tsv_mask", "tsv", True, False),
    ("continual_tsv_mask_heads", "tsv", True, True),
):
    _method(
        _name,
        "continual:ContinualMerge",
        _TIES if _rule == "ties" else _CARVE,
        kwargs={"rule": _rule, "masks": _masks, "expert_heads": _heads},
        needs_task_identity=_masks or _heads,
        router=None,
        kind="continual",
        stores=f"base + {_CONTINUAL_DELTA[_rule]}"
        + (" + per-skill bit-packed masks" if _masks else "")
        + (" + shared head + per-skill expert heads" if _heads else " + averaged action expert")
        + " + per-skill norm stats",
    )
_method(
    "opcm",
    "opcm:Opcm",
    _OPCM,
    needs_task_identity=False,
    router=None,
    kind="continual",
    stores="base + running sum of projected task vectors and its scale + averaged action expert + norm stats",
)
for _rule in ("tsv", "wudi", "knots", "emr"):
    _method(
        f"mergevla_{_rule}",
        "mergevla:MergeVLA",
        _MERGEVLA,
        kwargs={"merge": _rule},
        needs_task_identity=True,
        router="mergevla_value_subspace",
        stores=_MERGEVLA_STORES + (" + per-skill rescalers" if _rule == "emr" else ""),
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

_DIAGNOSTIC = ("Diagnostic hybrid: which half of a merged policy fails (vlamergebench)", None)
for _inner in ("ta", "mergevla"):
    _method(
        f"{_inner}_own_head",
        "diagnostics:Hybrid",
        _DIAGNOSTIC,
        kwargs={"method": _inner, "own": "action_expert"},
        needs_task_identity=True,
        router=None,
        stores=f"{_inner}'s merged files + every skill's own action expert (a diagnostic, not a method)",
    )
    _method(
        f"{_inner}_own_vlm",
        "diagnostics:Hybrid",
        _DIAGNOSTIC,
        kwargs={"method": _inner, "own": "vlm"},
        needs_task_identity=True,
        router=None,
        stores=f"{_inner}'s merged files + base VLM + every skill's own LoRA (a diagnostic, not a method)",
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


def make_method(name: str, **overrides: Any) -> Any:
    """Build method ``name`` with config ``overrides`` laid over its registered defaults.

    ``name`` is a registered name, an installed plug-in's, or an import path ``package.module:Name`` (which
    the caller vouches for: see ``vlamergebench/plugins.py``).
    """
    spec = resolve_method(name)
    method_class = load_method_class(name)
    config = method_class.config_class.from_dict({**spec.kwargs, **overrides})
    return method_class(name, config)


# ---- out-of-tree methods: import paths (vlamergebench/plugins.py has the rest) ----------------------------

IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class PluginError(ValueError):
    """A plug-in method cannot be used here; the message names its import path and what to do."""


def is_import_path(name: str) -> bool:
    """Whether ``name`` looks like ``package.module:Name`` (rather than a registered name)."""
    return bool(IMPORT_PATH.match(name))


def _distribution_of(module: str) -> tuple[str | None, str | None]:
    """(distribution, version) that installs the top-level package of ``module``, or (None, None)."""
    top = module.split(".")[0]
    names = importlib.metadata.packages_distributions().get(top) or []
    if not names:
        return None, None
    return names[0], importlib.metadata.version(names[0])


def register_import_path(path: str) -> Spec:
    """Register the method class at ``path`` (``package.module:Name``) under that name; return its spec.

    Call this only with a path a person gave (a command-line flag, a notebook): it makes the path importable
    by name. Registering imports nothing; the class is imported when the method is made.
    """
    if not is_import_path(path):
        raise PluginError(
            f"--method {path!r}: expected a registered name or an import path package.module:Name"
        )
    if path in METHODS:
        return METHODS.spec(path)
    distribution, version = _distribution_of(path.partition(":")[0])
    return METHODS.register(path, path, plugin={"distribution": distribution, "version": version})


def resolve_method(name: str) -> Spec:
    """The spec of a method named by the caller: a registered or installed name, or an import path."""
    if name not in METHODS and is_import_path(name):
        return register_import_path(name)
    return METHODS.spec(name)


def load_method_class(name: str) -> type:
    """Import the class of method ``name``; a failing import raises :class:`PluginError` naming its path."""
    spec = resolve_method(name)
    try:
        method_class = METHODS.load(name)
    except ImportError as error:
        raise PluginError(
            f"merge method {name!r}: cannot import {spec.entry_point} ({error}); install its package or put "
            "its module on PYTHONPATH"
        ) from None
    if not hasattr(method_class, "config_class"):
        raise PluginError(
            f"merge method {name!r}: {spec.entry_point} is not a merge method class (no config_class); "
            "subclass OneShotMethod or ContinualMethod"
        )
    return method_class
