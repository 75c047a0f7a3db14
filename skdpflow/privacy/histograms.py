"""One differentially private release of every column's 1-way histogram.

The bins come from the public domain only (:func:`skdpflow.marginals.histogram_spec`). Each
row falls in exactly one bin of each of the ``m`` histograms, so adding or removing one row
changes the concatenated integer count vector by at most ``sqrt(m)`` in L2 norm. Every count
gets independent discrete Gaussian noise of scale ``z sqrt(m)``, whose Rényi curve is that of
the Gaussian mechanism: the ledger records one full-batch release ``(z, 1.0, 1)``.
"""

from __future__ import annotations

import math

import numpy as np

from .ledger import Release
from .randomness import PrivacyNoise

__all__ = ["release_histograms"]


def release_histograms(
    indices: list[np.ndarray],
    sizes: list[int],
    noise_multiplier: float,
    noise: PrivacyNoise,
    budget_share: float = 0.0,
) -> tuple[list[np.ndarray], Release]:
    """Noisy counts of every histogram, and the ledger's record of the release.

    Parameters
    ----------
    indices : list of int arrays
        Per column, each row's bin (one bin per row per column).
    sizes : list of int
        Per column, the number of bins (public).
    noise_multiplier : float
        Noise scale divided by the sensitivity ``sqrt(m)``; 0 releases exact counts (only for
        a non-private run).
    noise : PrivacyNoise
        The caller's secret source.
    budget_share : float
        Nominal share of epsilon, for the report.
    """
    m = len(indices)
    sensitivity = math.sqrt(m)
    std = noise_multiplier * sensitivity
    noisy = [noise.discrete_gaussian(np.bincount(idx, minlength=size), std).astype(float)
             for idx, size in zip(indices, sizes, strict=True)]
    release = Release(
        name="1-way histograms (discrete Gaussian)",
        reads=f"bin counts of {m} columns, {int(sum(sizes))} bins",
        l2_sensitivity=sensitivity, noise_multiplier=noise_multiplier,
        budget_share=budget_share, details={"noise_std": std})
    return noisy, release
