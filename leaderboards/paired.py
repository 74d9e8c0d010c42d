"""Paired comparisons between entries over matching episodes, ranks with ties, and a tolerant Pareto test.

Entries under the same reference settings are rolled out on the same tasks, init states and episode seeds, so
two entries' episodes pair up by ``(suite, task, init_state_id, seed)``. A paired comparison is stronger than
comparing two unpaired intervals: only the pairs where the entries disagree carry information.

- The difference is the overall rate's difference over the matched pairs, weighted as the overall rate is
  (each suite equally, each task equally within its suite, each pair equally within its task).
- Its p-value is scipy's paired randomisation test (``scipy.stats.permutation_test`` with
  ``permutation_type="samples"``: the two outcomes of a pair swap), two-sided: exact while the disagreeing
  pairs have at most 9999 swap patterns (13 pairs; with equal weights it is then the exact McNemar test),
  else from 9999 random swaps (so no p-value is below 2/10000).
- Its 95% interval is scipy's percentile bootstrap over the matched pairs (``scipy.stats.bootstrap`` with
  ``paired=True``); with no disagreeing pair it is ``[0, 0]`` and the p-value is 1.
- Many pairs are tested at once, so p-values are adjusted with Benjamini-Hochberg
  (``scipy.stats.false_discovery_control``) before any decision at level :data:`ALPHA`.

Ranks with ties: an entry's rank is 1 + the number of entries significantly better than it, so entries that
no other entry separates share a rank (the "clusters" of shared-task rankings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

ALPHA = 0.05
PAIR_KEY = ("suite", "task", "init_state_id", "seed")
STORAGE_TOLERANCE = 0.01  # storages within 1% of each other are equal (JSON sidecars differ by bytes)
_RESAMPLES = 9999


@dataclass(frozen=True)
class PairedDifference:
    """Entry A minus entry B over matched episodes (rates as fractions).

    Attributes:
        difference: Weighted mean of A's success minus B's over the matched pairs.
        low: Lower bound of the 95% bootstrap interval.
        high: Upper bound.
        p_value: Two-sided exact paired randomisation test (unadjusted).
        pairs: Matched pairs.
        a_only: Pairs A succeeded and B failed.
        b_only: Pairs B succeeded and A failed.
    """

    difference: float
    low: float
    high: float
    p_value: float
    pairs: int
    a_only: int
    b_only: int


def outcomes_by_pair(episodes: pd.DataFrame) -> pd.DataFrame:
    """Success (0/1) indexed by :data:`PAIR_KEY`, one column per entry label (NaN where not evaluated).

    ``episodes`` carries an ``entry`` column; pooled runs of one entry with the same seed cannot occur (a
    run id hashes its seed), so a pair key names at most one episode per entry.
    """
    return episodes.pivot_table(index=list(PAIR_KEY), columns="entry", values="success", aggfunc="mean")


def pair_weights(index: pd.MultiIndex) -> np.ndarray:
    """Weights of matched pairs so that their weighted mean is the overall rate's definition (sum to 1)."""
    suites = index.get_level_values("suite").to_numpy()
    tasks = index.get_level_values("task").to_numpy()
    weights = np.empty(len(index))
    unique_suites = np.unique(suites)
    for suite in unique_suites:
        in_suite = suites == suite
        suite_tasks = np.unique(tasks[in_suite])
        for task in suite_tasks:
            here = in_suite & (tasks == task)
            weights[here] = 1.0 / (len(unique_suites) * len(suite_tasks) * here.sum())
    return weights


def paired_difference(
    a: np.ndarray, b: np.ndarray, weights: np.ndarray, interval: bool = True
) -> PairedDifference:
    """A minus B (0/1 outcomes of matched pairs, weights summing to 1): difference, interval, p-value.

    With ``interval=False`` the bounds are NaN (the test alone is much cheaper than the bootstrap).
    """
    from scipy import stats

    a, b, weights = (np.asarray(x, float) for x in (a, b, weights))
    differs = a != b
    difference = float(np.sum(weights * (a - b)))
    counts = {"pairs": len(a), "a_only": int(np.sum(a > b)), "b_only": int(np.sum(b > a))}
    if not differs.any():
        return PairedDifference(difference, 0.0, 0.0, 1.0, **counts)
    w = weights[differs]  # pairs that agree add nothing to the statistic under any swap

    def weighted_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.sum(w * (x - y), axis=axis)

    if differs.sum() == 1:
        # exact: the one disagreeing pair's two swaps give +d and -d, equally extreme (scipy needs two)
        p_value = 1.0
    else:
        p_value = float(_permutation_p(a[differs], b[differs], weighted_difference))
    if not interval or len(a) < 2:  # a single pair has no resampling distribution
        return PairedDifference(difference, np.nan, np.nan, p_value, **counts)

    def weighted_mean(d: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.sum(v * d, axis=axis) / np.sum(v, axis=axis)

    bounds = stats.bootstrap(
        (a - b, weights),
        weighted_mean,
        paired=True,
        vectorized=True,
        method="percentile",
        n_resamples=_RESAMPLES,
        random_state=0,
    ).confidence_interval
    return PairedDifference(difference, float(bounds.low), float(bounds.high), p_value, **counts)


def _permutation_p(a: np.ndarray, b: np.ndarray, statistic: Callable[..., np.ndarray]) -> float:
    """The paired randomisation test of scipy (outcomes of a pair swap), two-sided; at least two pairs."""
    from scipy import stats

    return stats.permutation_test(
        (a, b),
        statistic,
        permutation_type="samples",
        vectorized=True,
        n_resamples=_RESAMPLES,
        alternative="two-sided",
        random_state=0,
    ).pvalue


def compare(outcomes: pd.DataFrame, a: str, b: str, interval: bool = True) -> PairedDifference | None:
    """:func:`paired_difference` of entries ``a`` and ``b`` over the pairs both evaluated; None if none."""
    both = outcomes[[a, b]].dropna()
    if both.empty:
        return None
    weights = pair_weights(both.index)
    return paired_difference(both[a].to_numpy(), both[b].to_numpy(), weights, interval)


def significance_matrix(outcomes: pd.DataFrame, entries: Sequence[str]) -> dict[tuple[str, str], bool]:
    """``(a, b) -> True`` where a is significantly better than b (BH-adjusted paired test at ALPHA)."""
    from scipy import stats

    tests = []
    for i, a in enumerate(entries):
        for b in entries[i + 1 :]:
            result = compare(outcomes, a, b, interval=False)
            if result is not None:
                tests.append((a, b, result))
    better: dict[tuple[str, str], bool] = {}
    if not tests:
        return better
    adjusted = stats.false_discovery_control([t[2].p_value for t in tests], method="bh")
    for (a, b, result), p in zip(tests, adjusted, strict=True):
        significant = bool(p < ALPHA)
        better[(a, b)] = significant and result.difference > 0
        better[(b, a)] = significant and result.difference < 0
    return better


def ranks_with_ties(entries: Sequence[str], better: dict[tuple[str, str], bool]) -> dict[str, int]:
    """Rank = 1 + the number of entries significantly better; indistinguishable entries share a rank."""
    return {e: 1 + sum(better.get((other, e), False) for other in entries if other != e) for e in entries}


def pareto_front(
    storage: Sequence[float], success: Sequence[float], better: Sequence[Sequence[bool]]
) -> list[bool]:
    """True for entries no other entry dominates, with a storage tolerance and a success test.

    ``better[i][j]``: entry i's success is significantly higher than j's. Entry i dominates j when i's storage
    is at most j's within :data:`STORAGE_TOLERANCE`, i's success is at least j's, and i is better in one of
    them beyond noise: more than the tolerance smaller, or significantly more successful.
    """
    n = len(storage)
    scale = 1 + STORAGE_TOLERANCE

    def dominates(i: int, j: int) -> bool:
        no_larger = storage[i] <= storage[j] * scale
        no_worse = success[i] >= success[j]
        strictly = storage[i] * scale < storage[j] or better[i][j]
        return no_larger and no_worse and strictly

    return [not any(dominates(i, j) for i in range(n) if i != j) for j in range(n)]
