"""Success, routing and continual-learning metrics (docs/leaderboards.md).

Rates are fractions in [0, 1]. Intervals are Wilson score intervals at 95% (z = 1.96), which stay inside [0,
1] and keep their coverage at rates near 0 or 1, where LIBERO's own normal-approximation interval collapses to
a point. A mean of task rates (a suite's rate, the overall rate) gets a Wilson interval at the effective
number of episodes ``n_eff = 1 / sum_i(w_i**2 / n_i)`` for weights ``w_i``: the variance of the weighted mean
of independent binomial rates at a common rate p is ``p(1-p) / n_eff``. With equal episodes per task this is
the Wilson interval of the pooled episodes.

Frames: the functions ending in ``_table`` take the episode rows of ``ResultsStore.episodes_frame`` (already
selected by the caller) and group by :data:`ENTRY_COLUMNS`, the identity of one leaderboard entry; episodes of
several runs of one entry (seeds) are pooled. An episode that ended in a simulator error counts as a failure.

Continual metrics use ``R`` with ``R[t-1, i]`` = success on skill i after t admissions (NaN above the
diagonal, where skill i is not yet admitted); see :func:`backward_transfer` and :func:`forgetting`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

Z95 = 1.959963984540054
ENTRY_COLUMNS = ("method", "method_config_hash", "expert_set_id", "protocol", "routing_mode", "router")
NO_ROUTE = "(none)"  # the confusion-matrix column of episodes that failed before routing


def wilson_interval(successes: float, episodes: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``successes`` out of ``episodes`` (may be an effective, non-integer count)."""
    if episodes <= 0:
        raise ValueError(f"wilson_interval: episodes must be positive, got {episodes}")
    if not 0 <= successes <= episodes:
        raise ValueError(f"wilson_interval: successes must be in [0, {episodes}], got {successes}")
    p = successes / episodes
    denominator = 1 + z * z / episodes
    centre = (p + z * z / (2 * episodes)) / denominator
    half = z * math.sqrt(p * (1 - p) / episodes + z * z / (4 * episodes * episodes)) / denominator
    # The bounds contain p exactly; rounding could put the lower bound a hair above p = 0 (the upper below 1).
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


@dataclass(frozen=True)
class RateEstimate:
    """A success rate with its 95% interval; ``effective_episodes`` equals ``episodes`` for a plain rate."""

    rate: float
    low: float
    high: float
    episodes: int
    effective_episodes: float


def rate_of(successes: int, episodes: int) -> RateEstimate:
    """A plain rate with its Wilson interval."""
    low, high = wilson_interval(successes, episodes)
    return RateEstimate(successes / episodes, low, high, int(episodes), float(episodes))


def mean_of_rates(
    rates: Sequence[float], episodes: Sequence[int], weights: Sequence[float] | None = None
) -> RateEstimate:
    """Weighted mean of independent rates (equal weights by default), Wilson interval at ``n_eff``."""
    rates_arr, n = np.asarray(rates, float), np.asarray(episodes, float)
    if rates_arr.size == 0 or rates_arr.shape != n.shape or np.any(n <= 0):
        raise ValueError(
            f"mean_of_rates: need equal-length rates and positive episodes, got {rates}, {episodes}"
        )
    w = np.full(n.shape, 1 / n.size) if weights is None else np.asarray(weights, float)
    if w.shape != n.shape or not math.isclose(w.sum(), 1.0, rel_tol=1e-9):
        raise ValueError(f"mean_of_rates: weights must match the rates and sum to 1, got {weights}")
    mean = float(w @ rates_arr)
    n_eff = float(1 / np.sum(w * w / n))
    low, high = wilson_interval(mean * n_eff, n_eff)
    return RateEstimate(mean, low, high, int(n.sum()), n_eff)


def task_table(episodes: pd.DataFrame) -> pd.DataFrame:
    """Per entry, suite and task: episodes, successes, errors, rate and Wilson interval."""
    grouped = episodes.groupby([*ENTRY_COLUMNS, "suite", "task"], dropna=False, sort=True)
    table = grouped.agg(episodes=("success", "size"), successes=("success", "sum"), errors=("error", "count"))
    table = table.reset_index()
    estimates = [rate_of(int(s), int(n)) for s, n in zip(table["successes"], table["episodes"], strict=True)]
    return _with_estimates(table, estimates)


def suite_table(tasks: pd.DataFrame) -> pd.DataFrame:
    """Per entry and suite: the unweighted mean of the suite's task rates (from :func:`task_table`)."""
    rows = []
    for key, group in tasks.groupby([*ENTRY_COLUMNS, "suite"], dropna=False, sort=True):
        estimate = mean_of_rates(group["rate"].tolist(), group["episodes"].tolist())
        rows.append((*key, len(group), estimate))
    return _rows_frame(rows, [*ENTRY_COLUMNS, "suite", "tasks"])


def overall_table(tasks: pd.DataFrame) -> pd.DataFrame:
    """Per entry: the unweighted mean over suites of each suite's unweighted mean over tasks."""
    rows = []
    for key, group in tasks.groupby(list(ENTRY_COLUMNS), dropna=False, sort=True):
        tasks_per_suite = group.groupby("suite")["task"].transform("size")
        suites = group["suite"].nunique()
        weights = (1.0 / (suites * tasks_per_suite)).tolist()
        estimate = mean_of_rates(group["rate"].tolist(), group["episodes"].tolist(), weights)
        rows.append((*key, suites, len(group), estimate))
    return _rows_frame(rows, [*ENTRY_COLUMNS, "suites", "tasks"])


def routing_table(episodes: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Routing accuracy (routed skill == true skill) per entry (and ``by`` columns), for routed entries only.

    Episodes whose environment failed before the routing call count as misrouted (they appear in the
    confusion matrix under :data:`NO_ROUTE`).
    """
    routed = episodes[episodes["routing_mode"] != "oracle"]
    rows = []
    for key, group in routed.groupby([*ENTRY_COLUMNS, *by], dropna=False, sort=True):
        correct = int((group["routed_skill"] == group["skill"]).sum())
        rows.append((*key, correct, rate_of(correct, len(group))))
    return _rows_frame(rows, [*ENTRY_COLUMNS, *by, "correct"])


def confusion_matrix(episodes: pd.DataFrame, skills: Sequence[str]) -> pd.DataFrame:
    """Counts of true skill (rows, in ``skills`` order) x routed skill (columns, plus :data:`NO_ROUTE`)."""
    import pandas as pd

    routed = episodes["routed_skill"].fillna(NO_ROUTE)
    unknown = sorted(set(routed) - set(skills) - {NO_ROUTE})
    columns = [*skills, *unknown, NO_ROUTE]
    matrix = pd.crosstab(episodes["skill"], routed).reindex(index=list(skills), columns=columns, fill_value=0)
    matrix.index.name, matrix.columns.name = "true skill", "routed skill"
    return matrix.fillna(0).astype(int)


def perturbation_table(episodes: pd.DataFrame) -> pd.DataFrame:
    """Success on perturbed episodes per entry, one row per aggregate, labelled in column ``aggregate``.

    The labels: ``pooled`` (all perturbed episodes),
    ``axis`` (pooled within an axis), ``axis_level`` (pooled within an axis and level) and ``mean_of_axes``
    (the unweighted mean of the axis rates, interval at ``n_eff``). ``axis`` and ``level`` are ``""`` where
    they do not apply.
    """
    perturbed = episodes[episodes["perturbation_axis"].notna()]
    rows = []
    for key, group in perturbed.groupby(list(ENTRY_COLUMNS), dropna=False, sort=True):
        rows.append((*key, "pooled", "", "", rate_of(int(group["success"].sum()), len(group))))
        axis_rates, axis_episodes = [], []
        for axis, by_axis in group.groupby("perturbation_axis", sort=True):
            estimate = rate_of(int(by_axis["success"].sum()), len(by_axis))
            axis_rates.append(estimate.rate)
            axis_episodes.append(len(by_axis))
            rows.append((*key, "axis", axis, "", estimate))
            for level, by_level in by_axis.groupby("perturbation_level", dropna=False, sort=True):
                rows.append(
                    (*key, "axis_level", axis, level, rate_of(int(by_level["success"].sum()), len(by_level)))
                )
        rows.append((*key, "mean_of_axes", "", "", mean_of_rates(axis_rates, axis_episodes)))
    return _rows_frame(rows, [*ENTRY_COLUMNS, "aggregate", "axis", "level"])


def success_matrix(episodes: pd.DataFrame, skills: Sequence[str]) -> np.ndarray:
    """``R`` (T, T) of one entry's continual episodes; a skill's rate is the unweighted mean of its tasks."""
    matrix = np.full((len(skills), len(skills)), np.nan)
    index = {skill: i for i, skill in enumerate(skills)}
    unknown = set(episodes["skill"]) - set(index)
    if unknown:
        raise ValueError(
            f"success_matrix: episodes of skills {sorted(unknown)} not in the skill list {skills}"
        )
    per_task = episodes.groupby(["admission_step", "skill", "task"])["success"].mean()
    for (step, skill), rates in per_task.groupby(level=["admission_step", "skill"]):
        if not 1 <= step <= len(skills) or index[skill] >= step:
            raise ValueError(f"success_matrix: skill {skill!r} evaluated at step {step} before its admission")
        matrix[step - 1, index[skill]] = float(rates.mean())
    return matrix


def _check_lower_triangle(matrix: np.ndarray) -> None:
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"R must be square (T, T), got shape {matrix.shape}")
    missing = [(t + 1, i) for t in range(len(matrix)) for i in range(t + 1) if np.isnan(matrix[t, i])]
    if missing:
        raise ValueError(f"R is incomplete: no success for (admission step, skill index) {missing[:5]}")


def backward_transfer(matrix: np.ndarray) -> float:
    """BWT = mean over i < T of (R[T, i] - R[i, i]) (GEM; CARVE's definition); NaN when T = 1."""
    _check_lower_triangle(matrix)
    size = len(matrix)
    if size < 2:
        return math.nan
    return float(np.mean([matrix[-1, i] - matrix[i, i] for i in range(size - 1)]))


def forgetting(matrix: np.ndarray) -> np.ndarray:
    """Per skill i < T: max over i <= t < T of R[t, i] - R[T, i] (Chaudhry et al.), shape (T - 1,).

    As the docs define it, the final step is not inside the max, so a skill that ends better than at every
    earlier step has negative forgetting (research notes 8.2 claim it is >= 0; that holds only with t = T).
    """
    _check_lower_triangle(matrix)
    return np.array([np.max(matrix[i:-1, i]) - matrix[-1, i] for i in range(len(matrix) - 1)])


def mean_success_curve(matrix: np.ndarray) -> np.ndarray:
    """Mean success over the skills seen so far, after each admission: shape (T,)."""
    _check_lower_triangle(matrix)
    return np.array([np.mean(matrix[t, : t + 1]) for t in range(len(matrix))])


def area_under_curve(matrix: np.ndarray) -> float:
    """Trapezoid area under :func:`mean_success_curve` over steps 1..T, divided by T - 1 (so in [0, 1])."""
    curve = mean_success_curve(matrix)
    if len(curve) == 1:
        return float(curve[0])
    return float(np.sum((curve[1:] + curve[:-1]) / 2) / (len(curve) - 1))


def _with_estimates(table: pd.DataFrame, estimates: Sequence[RateEstimate]) -> pd.DataFrame:
    table = table.copy()
    table["rate"] = [e.rate for e in estimates]
    table["ci_low"] = [e.low for e in estimates]
    table["ci_high"] = [e.high for e in estimates]
    return table


def _rows_frame(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame([row[:-1] for row in rows], columns=columns)
    estimates = [row[-1] for row in rows]
    frame["episodes"] = [e.episodes for e in estimates]
    frame["effective_episodes"] = [e.effective_episodes for e in estimates]
    return _with_estimates(frame, estimates)
