"""One differentially private release of every column's 1-way histogram.

The bins come from the public domain only (:func:`skdpflow.marginals.histogram_spec`). Each
row falls in exactly one bin of each of the ``m`` histograms, so adding or removing one row
changes the concatenated integer count vector by at most ``sqrt(m)`` in L2 norm. Every count
gets independent discrete Gaussian noise of scale ``z sqrt(m)``, whose Rényi curve is that of
the Gaussian mechanism: the ledger records one full-batch release ``(z, 1.0, 1)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .ledger import Release
from .randomness import PrivacyNoise

if TYPE_CHECKING:
    from ..distributed import Communicator

__all__ = ["count_noise_std", "release_histograms"]


def count_noise_std(noise_multiplier: float, n_histograms: int) -> float:
    """The noise std of each count when ``n_histograms`` histograms are released together
    at ``noise_multiplier`` (their L2 sensitivity is ``sqrt(n_histograms)``)."""
    return noise_multiplier * math.sqrt(n_histograms)


def release_histograms(
    indices: list[np.ndarray],
    sizes: list[int],
    noise_multiplier: float,
    noise: PrivacyNoise,
    budget_share: float = 0.0,
    comm: Communicator | None = None,
    counts: list[np.ndarray] | None = None,
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
    comm : Communicator or None
        Distributed fit: ``indices`` are this rank's shard; the counts are summed over the
        ranks with the noise added once, by rank 0 (:func:`skdpflow.distributed.noisy_sum`).
    counts : list of int arrays or None
        The exact counts, already accumulated (a table read in chunks; ``indices`` is then
        ignored); None: counted here from ``indices``.
    """
    if counts is None:
        counts = [np.bincount(idx, minlength=size) for idx, size in zip(indices, sizes,
                                                                        strict=True)]
    m = len(counts)
    sensitivity = math.sqrt(m)
    std = count_noise_std(noise_multiplier, m)
    if comm is None:
        noisy = [noise.discrete_gaussian(c, std).astype(float) for c in counts]
    else:
        from ..distributed import noisy_sum

        # The same draws as on one process (histogram by histogram), one all-reduce.
        cuts = np.cumsum(sizes)[:-1]
        flat = noisy_sum(np.concatenate(counts).astype(np.int64), lambda c: np.concatenate(
            [noise.discrete_gaussian(part, std) for part in np.split(c, cuts)]), comm,
            "bin counts")
        noisy = [part.astype(float) for part in np.split(flat, cuts)]
    release = Release(
        name="1-way histograms (discrete Gaussian)",
        reads=f"bin counts of {m} columns, {int(sum(sizes))} bins",
        l2_sensitivity=sensitivity, noise_multiplier=noise_multiplier,
        budget_share=budget_share, details={"noise_std": std})
    return noisy, release
