"""Empirical lower bounds on epsilon from samples of a mechanism on neighbouring datasets.

A mechanism ``M`` is ``(epsilon, delta)``-DP only if, for every event ``S`` and both orders of
the neighbours ``D, D'``, ``P[M(D) in S] <= e^epsilon P[M(D') in S] + delta``. So any event
gives ``epsilon >= log((P[M(D) in S] - delta) / P[M(D') in S])``. With ``T`` trials per side,
a Clopper-Pearson lower bound on the numerator's probability and an upper bound on the
denominator's turn this into a bound that holds with confidence ``1 - alpha``: every one-sided
interval is taken at level ``alpha / (4 K)`` (Bonferroni over ``K`` events, two probabilities
each, two directions), so with probability at least ``1 - alpha`` all hold at once, and then
the maximum over events and directions is below the mechanism's true epsilon.

The events must be fixed before looking at the samples (here: thresholds on a scalar
statistic, placed from public quantities such as the noise scale), or the union bound fails.

References
----------
Jagielski, Ullman and Oprea, "Auditing differentially private machine learning: how private
is private SGD?", NeurIPS 2020, arXiv:2006.07709.
Nasr, Song, Thakurta, Papernot and Carlini, "Adversary instantiation: lower bounds for
differentially private machine learning", IEEE S&P 2021, arXiv:2101.04535.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta

__all__ = ["clopper_pearson", "epsilon_lower_bound", "threshold_events"]


def clopper_pearson(hits: int, trials: int, level: float) -> tuple[float, float]:
    """One-sided exact binomial bounds: ``P[p < low] <= level`` and ``P[p > high] <= level``."""
    low = 0.0 if hits == 0 else float(beta.ppf(level, hits, trials - hits + 1))
    high = 1.0 if hits == trials else float(beta.ppf(1.0 - level, hits + 1, trials - hits))
    return low, high


def threshold_events(stat_a: np.ndarray, stat_b: np.ndarray, thresholds: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indicators ``(2 K, T)`` of ``{s >= t}`` and of its complement ``{s < t}``, per side."""
    def hits(stat: np.ndarray) -> np.ndarray:
        above = np.asarray(stat, dtype=float)[None, :] >= np.asarray(thresholds)[:, None]
        return np.concatenate([above, ~above])

    return hits(stat_a), hits(stat_b)


def epsilon_lower_bound(hits_a: np.ndarray, hits_b: np.ndarray, delta: float,
                        alpha: float = 1e-4) -> float:
    """Largest ``log((p_low - delta) / p_high)`` over events and both directions.

    Parameters
    ----------
    hits_a, hits_b : bool arrays of shape (K, T_a) and (K, T_b)
        Whether event k occurred in each trial of ``M(D)`` and of ``M(D')``.
    delta : float
        The delta of the claim being audited.
    alpha : float, default=1e-4
        The bound exceeds the mechanism's true epsilon (at ``delta``) with probability at
        most ``alpha``, whatever the mechanism.

    Returns
    -------
    float
        The lower bound; ``-inf`` when no event gives one (too few trials).
    """
    hits_a, hits_b = np.atleast_2d(hits_a), np.atleast_2d(hits_b)
    n_events = hits_a.shape[0]
    assert hits_b.shape[0] == n_events
    level = alpha / (4 * n_events)
    best = -math.inf
    for row_a, row_b in zip(hits_a, hits_b, strict=True):
        low_a, high_a = clopper_pearson(int(row_a.sum()), row_a.size, level)
        low_b, high_b = clopper_pearson(int(row_b.sum()), row_b.size, level)
        for low, high in ((low_a, high_b), (low_b, high_a)):
            if low > delta:
                best = max(best, math.log((low - delta) / high))
    return best
