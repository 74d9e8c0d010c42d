"""The findings board: the merging literature's published findings beside what this board measured.

Each published finding names the entries that test it (a method, its protocol, its routing and, where the
finding is about a variant, the config values that make it). The board lists those entries with their success
and Wilson 95% interval, the paired difference to the expert bank (the success board's, over matching
episodes), their storage, and for continual entries the mean success over the seen skills after each
admission with the backward transfer. Whether a finding reproduces is a judgement on these numbers and is left
to the reader (the README states ours); the board only gathers them, so a new expert set gets the same table.

Two sections localise failures and bound what tuning could buy:

- *decomposition*: a merged policy whose VLM or whose action expert is replaced by the skill's own
  (``ta_own_head``, ``ta_own_vlm``, ``mergevla_own_head``, ``mergevla_own_vlm``);
- *oracle scale sweep*: TA / TIES / RobustMerge at each merge scale that was run, the best one marked. The
  scale is chosen on the evaluation episodes themselves (a data-free protocol has no validation data), so the
  best value is an upper bound, never a result of the method.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vlamergebench.leaderboards import forgetting, storage, success
from vlamergebench.leaderboards import tables as tb
from vlamergebench.leaderboards.board import Board

if TYPE_CHECKING:
    import pandas as pd

    from vlamergebench.eval.results import Results

TITLE = "Published findings and what this board measured"
DEFAULT = None  # a Measure's config: the method's registered defaults


@dataclass(frozen=True)
class Measure:
    """The entries that measure a finding: a method under a protocol and routing, and its config.

    ``config`` is ``DEFAULT`` (the method's registered defaults) or the values the entry's resolved config
    must hold (the rest is free).
    """

    method: str
    protocol: str = "one_shot"
    routing_mode: str = "oracle"
    config: Mapping[str, Any] | None = DEFAULT


@dataclass(frozen=True)
class Finding:
    """One published finding: what it says, where, the published numbers and the entries that test it."""

    claim: str
    source: str
    published: str
    measures: tuple[Measure, ...] = field(default_factory=tuple)


FINDINGS = (
    Finding(
        "LoRA bank = expert bank, at about half its storage",
        "derived (a bank keeps every expert; LoRA keeps factors)",
        "equal success; ~50% of the dense bank",
        (Measure("lora_bank"),),
    ),
    Finding(
        "TA / TIES / DARE collapse on VLA experts",
        "MergeVLA (arXiv 2511.18810); CARVE Table 2",
        "about 0%",
        (Measure("ta"), Measure("ties"), Measure("dare")),
    ),
    Finding(
        "MergeVLA (oracle routing) recovers most of the bank",
        "MergeVLA README (LIBERO)",
        "90.2 (TIES) / 89.7 (TA) vs bank 96.7",
        (
            Measure("mergevla_ties"),
            Measure("mergevla"),
            Measure("mergevla_ties", routing_mode="method"),
            Measure("mergevla", routing_mode="method"),
        ),
    ),
    Finding(
        "Inside MergeVLA's framework the merged task vector matters little, except TSV and EMR",
        "MergeVLA README (LIBERO), one row per task-vector merge",
        "TIES 90.2, WUDI 89.9, TA 89.7, KnOTS 88.0, TSV 81.6, EMR 65.5 (bank 96.7)",
        tuple(
            Measure(method)
            for method in (
                "mergevla_ties",
                "mergevla_wudi",
                "mergevla",
                "mergevla_knots",
                "mergevla_tsv",
                "mergevla_emr",
            )
        ),
    ),
    Finding(
        "MergeVLA without expert heads fails; deeper per-expert heads help",
        "MergeVLA ablation",
        "w/o expert head about 0%",
        (
            Measure("mergevla", config={"expert_heads": False}),
            Measure("mergevla"),
            Measure("mergevla", config={"expert_head_depth": 3}),
        ),
    ),
    Finding(
        "MergeVLA admitted continually collapses",
        "CARVE Fig. 3a",
        "95 → 65 → 45 → 32",
        (Measure("mergevla", protocol="continual"),),
    ),
    Finding(
        "Continual TA / TSV collapse with or without TALL masks; with expert heads they keep the last skills",
        "CARVE Table 2 (MergeVLA experts; OpenVLA experts in brackets)",
        "TA 0.0, TSV 0.0 (BWT -30.7) [TA-Mask 2.5, TSV-Mask 2.8]; "
        "TA-Mask + Expert Head 25.9 (BWT -85.9), TSV-Mask + Expert Head 8.1 (BWT -80.2)",
        tuple(
            Measure(method, protocol="continual")
            for method in (
                "continual_ta",
                "continual_ta_mask",
                "continual_tsv",
                "continual_tsv_mask",
                "continual_ta_mask_heads",
                "continual_tsv_mask_heads",
            )
        ),
    ),
    Finding(
        "CARVE stays within a few points of the bank with BWT about 0; its text router costs a few points",
        "CARVE (anonymous NeurIPS 2026 submission), Table 2",
        "96.3 vs bank 96.7; BWT about 0",
        (
            Measure("carve", protocol="continual"),
            Measure("carve", protocol="continual", routing_mode="method"),
            Measure("carve_vlm", protocol="continual"),
        ),
    ),
)

DECOMPOSITION = tuple(
    Measure(method)
    for method in ("ta", "ta_own_head", "ta_own_vlm", "mergevla", "mergevla_own_head", "mergevla_own_vlm")
)
# method -> (config key of its merge scale, divisor that turns the key's value into lambda)
SCALE_SWEEP = {"ta": ("scale", 1.0), "ties": ("scale", 1.0), "robustmerge_paper": ("weight", 2.0)}


def _default_config(method: str) -> dict[str, Any] | None:
    """The registered method's default config as runs store it; None for a method not registered here.

    Only registered names are built: a method name read from a results bundle is never imported.
    """
    from vlamergebench.merge_methods.registry import METHODS, make_method

    if method not in METHODS.names():
        return None
    return json.loads(json.dumps(make_method(method).config.to_dict()))


def _matches(row: pd.Series, measure: Measure, defaults: dict[str, dict[str, Any] | None]) -> bool:
    if (row["method"], row["protocol"], row["routing_mode"]) != (
        measure.method,
        measure.protocol,
        measure.routing_mode,
    ):
        return False
    config = json.loads(row["method_config_json"])
    if measure.config is DEFAULT:
        if measure.method not in defaults:
            defaults[measure.method] = _default_config(measure.method)
        return config == defaults[measure.method]
    return all(config.get(key) == value for key, value in measure.config.items())


def _continual_columns(frames: dict[str, pd.DataFrame], entry: str) -> tuple[str, float]:
    """``"95 → 65 → 45"`` (mean success over the seen skills after each admission) and the BWT."""
    matrix = frames["matrix"]
    part = matrix[matrix["entry"] == entry]
    if part.empty:
        return "", float("nan")
    curve = part.groupby("admission_step")["rate"].mean().sort_index()
    summary = frames["summary"].set_index("entry")
    bwt = float(summary.loc[entry, "bwt"]) if "bwt" in summary.columns and entry in summary.index else np.nan
    return " → ".join(f"{100 * v:.0f}" for v in curve.to_numpy()), bwt


def compute(results: Results) -> dict[str, pd.DataFrame]:
    """``findings`` (one row per finding x measured entry), ``decomposition`` and ``scale_sweep``."""
    import pandas as pd

    overall = success.compute(results)["overall"]
    configs = results.runs.drop_duplicates(["method", "method_config_hash"]).set_index(
        ["method", "method_config_hash"]
    )["method_config_json"]
    overall = overall.assign(
        method_config_json=[
            configs.loc[(m, h)] for m, h in overall[["method", "method_config_hash"]].to_numpy()
        ]
    )
    fractions = storage.compute(results)["storage"].set_index("entry")["dense_bank_fraction"]
    continual = forgetting.compute(results)
    defaults: dict[str, dict[str, Any] | None] = {}

    def measured(measure: Measure) -> list[dict[str, Any]]:
        rows = []
        for _, row in overall.iterrows():
            if not _matches(row, measure, defaults):
                continue
            curve, bwt = _continual_columns(continual, row["entry"])
            rows.append(
                {
                    "entry": row["entry"],
                    "rate": row["rate"],
                    "ci_low": row["ci_low"],
                    "ci_high": row["ci_high"],
                    "episodes": int(row["episodes"]),
                    "vs_bank": row.get("vs_bank", np.nan),
                    "vs_bank_low": row.get("vs_bank_low", np.nan),
                    "vs_bank_high": row.get("vs_bank_high", np.nan),
                    "vs_bank_p": row.get("vs_bank_p", np.nan),
                    "dense_bank_fraction": fractions.get(row["entry"], np.nan),
                    "continual_curve": curve,
                    "bwt": bwt,
                }
            )
        return rows

    findings = []
    for finding in FINDINGS:
        rows = [r for m in finding.measures for r in measured(m)]
        for row in rows or [{"entry": ""}]:  # a finding nothing measured yet keeps its line
            findings.append(
                {"claim": finding.claim, "source": finding.source, "published": finding.published, **row}
            )
    decomposition = [r for m in DECOMPOSITION for r in measured(m)]
    sweep = []
    for method, (key, divisor) in SCALE_SWEEP.items():
        runs = overall[
            (overall["method"] == method)
            & (overall["protocol"] == "one_shot")
            & (overall["routing_mode"] == "oracle")
        ]
        rows = []
        for _, row in runs.iterrows():
            config = json.loads(row["method_config_json"])
            if method not in defaults:
                defaults[method] = _default_config(method)
            base = defaults[method] or {}
            others = {k: v for k, v in config.items() if k != key}
            if others != {k: v for k, v in base.items() if k != key}:
                continue  # another knob changed too: not a point of the scale sweep
            rows.append(
                {
                    "method": method,
                    "lambda": float(config[key]) / divisor,
                    "entry": row["entry"],
                    "rate": row["rate"],
                    "ci_low": row["ci_low"],
                    "ci_high": row["ci_high"],
                    "episodes": int(row["episodes"]),
                }
            )
        if rows:
            best = max(r["rate"] for r in rows)
            sweep.extend({**r, "best": r["rate"] == best} for r in sorted(rows, key=lambda r: r["lambda"]))
    columns = ["entry", "rate", "ci_low", "ci_high", "episodes"]
    return {
        "findings": pd.DataFrame(
            findings,
            columns=[
                "claim",
                "source",
                "published",
                *columns,
                "vs_bank",
                "vs_bank_low",
                "vs_bank_high",
                "vs_bank_p",
                "dense_bank_fraction",
                "continual_curve",
                "bwt",
            ],
        ),
        "decomposition": pd.DataFrame(
            decomposition, columns=[*columns, "vs_bank", "vs_bank_low", "vs_bank_high", "vs_bank_p"]
        ),
        "scale_sweep": pd.DataFrame(sweep, columns=["method", "lambda", *columns, "best"]),
    }


def _measured(frame: pd.DataFrame) -> list[str]:
    return [
        tb.MISSING if not entry else tb.rate_with_interval(rate, low, high)
        for entry, rate, low, high in frame[["entry", "rate", "ci_low", "ci_high"]].to_numpy()
    ]


def display(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Findings with the entries that test them; the decomposition rows; the oracle scale sweep."""
    import pandas as pd

    findings = frames["findings"]
    shown = pd.DataFrame(
        {
            "published finding": findings["claim"],
            "source": findings["source"],
            "published": findings["published"],
            "entry": [e or "not on this board" for e in findings["entry"]],
            "success % [95% CI]": _measured(findings),
            "episodes": [
                tb.MISSING if not e else int(n) for e, n in findings[["entry", "episodes"]].to_numpy()
            ],
            "vs expert bank (paired, points)": success._difference(findings, "vs_bank"),
            "storage % dense bank": [tb.percent(v) for v in findings["dense_bank_fraction"]],
            "continual: mean after each admission (BWT)": [
                f"{curve} (BWT {tb.signed_points(bwt)})" if isinstance(curve, str) and curve else ""
                for curve, bwt in findings[["continual_curve", "bwt"]].to_numpy()
            ],
        }
    )
    sections = {"Published findings, and the entries that test them": shown}
    decomposition = frames["decomposition"]
    if len(decomposition):
        sections["Decomposition: the merged VLM or the merged action expert replaced by the skill's own"] = (
            pd.DataFrame(
                {
                    "entry": decomposition["entry"],
                    "success % [95% CI]": _measured(decomposition),
                    "episodes": decomposition["episodes"],
                    "vs expert bank (paired, points)": success._difference(decomposition, "vs_bank"),
                }
            )
        )
    sweep = frames["scale_sweep"]
    if len(sweep):
        sections["Oracle upper bound: the merge scale lambda chosen on the evaluation episodes"] = (
            pd.DataFrame(
                {
                    "method": sweep["method"],
                    "lambda": [f"{v:g}" for v in sweep["lambda"]],
                    "entry": sweep["entry"],
                    "success % [95% CI]": _measured(sweep),
                    "episodes": sweep["episodes"],
                    "best (oracle)": ["yes" if b else "" for b in sweep["best"]],
                }
            )
        )
    return sections


BOARD = Board(
    name="findings",
    title=TITLE,
    compute=compute,
    display=display,
    notes=[
        "Success with Wilson 95% intervals; differences to the expert bank are paired over matching "
        "episodes (bootstrap interval, randomisation-test p, from the success board). Whether a finding "
        "reproduces is a judgement on these numbers: small samples leave wide intervals.",
        "The scale sweep picks lambda on the evaluation episodes: its best row is an oracle upper bound, "
        "not a method's result.",
    ],
    page_note="Published findings beside the entries that test them; decomposition; oracle lambda sweep.",
)
