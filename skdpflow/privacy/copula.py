"""One differentially private release of the latent correlations (a Gaussian copula).

Each row's cells ``[lo, hi]`` in ``[0, 1]^d`` (from the encoder, itself post-processing of
the released 1-way marginals) give a point in latent space, the midpoint scores
``z = Phi^-1((lo + hi) / 2)``. The mechanism releases ``S = sum_rows z z^T`` with the
Gaussian mechanism, as the vector ``v = (S_ij for i < j, S_ii / sqrt(2) for all i)``.

Sensitivity
-----------
Every coordinate of ``z`` is clipped to ``[-CLIP, CLIP]``, then the row is scaled down so
that ``||z||^2 <= B = d`` (both public). Adding or removing one row changes ``S`` by exactly
that row's ``z z^T``, so ``v`` by ``v(z)``, and

    ||upper(z z^T)||^2 = sum_{i<j} z_i^2 z_j^2 = (||z||^4 - sum_i z_i^4) / 2 <= ||z||^4 / 2,
    ||v(z)||^2 = ||upper(z z^T)||^2 + sum_i z_i^4 / 2 = ||z||^4 / 2 <= B^2 / 2:

the L2 sensitivity of ``v`` is ``B / sqrt(2)``, the same as that of the upper triangle
alone (the diagonal, scaled by ``1 / sqrt(2)``, fills exactly the slack of that bound). Each
of the ``d (d + 1) / 2`` entries gets independent Gaussian noise of std
``noise_multiplier * B / sqrt(2)``, drawn from the caller's secret
:class:`~skdpflow.privacy.randomness.PrivacyNoise` (the float sampler DP-SGD uses); the
ledger records one full-batch Gaussian release ``(noise_multiplier, 1.0, 1)``.

Post-processing (no privacy cost)
---------------------------------
Only the noisy vector, the public noise std and the noisy row count ``n_hat`` (from the
histogram release) are used. Off the diagonal, ``c_ij = S_ij / n_hat`` with known noise
variance ``tau^2 = (std / n_hat)^2`` gets positive-part James-Stein-type shrinkage toward 0
over the ``m = d (d - 1) / 2`` pairs, ``lam = max(0, 1 - q_m tau^2 / sum c_ij^2)``, where
``q_m`` is the ``NOISE_QUANTILE`` quantile of a chi-square with ``m`` degrees of freedom:
the noise's energy ``sum (noise / n_hat)^2`` stays below ``q_m tau^2`` with that
probability, so pure noise gives exactly ``lam = 0`` (the independent model) in 99% of fits
whatever ``m``. For many pairs ``q_m ~ m + 2.3 sqrt(2 m)``, close to the usual ``m``; for
one pair (two columns) the usual ``m`` would keep a pure-noise correlation in a third of
fits. The
diagonal, ``s_i = sqrt(2) v_i / n_hat`` (noise std ``sqrt(2) tau``), is shrunk toward its
mean (Efron and Morris, 1973: pooled when the noise dominates the spread of the ``s_i``,
per dimension when it does not), floored at twice its noise std (and at
``VARIANCE_FLOOR``) so that noise never makes a divisor small, and turns the shrunk
covariances into correlations, ``lam c_ij / sqrt(s_i s_j)``. Dividing by the released
second moments undoes the attenuation of the clipping and row scaling (and of coarse cells,
whose midpoint scores vary less than a standard normal). Last, unit diagonal and the
nearest positive definite matrix: eigenvalues floored at ``MIN_EIGENVALUE``, then rescaled to
unit diagonal. Pure noise shrinks to about the identity (the independent model); a strong
signal is kept.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import chi2

from ..encoding import dequantize
from .ledger import Release
from .randomness import PrivacyNoise

__all__ = ["CLIP", "MIN_EIGENVALUE", "VARIANCE_FLOOR", "clipped_scores",
           "release_correlation", "release_moments", "second_moments", "shrunk_correlation"]

# Each midpoint score is clipped to [-CLIP, CLIP] (public).
CLIP = 3.0
# Smallest eigenvalue of the released correlation before rescaling (keeps it invertible).
MIN_EIGENVALUE = 1e-3
# Pure noise is shrunk to exactly 0 with this probability (see shrunk_correlation).
NOISE_QUANTILE = 0.99
# Smallest second moment a released diagonal entry is taken to have (it divides).
VARIANCE_FLOOR = 1e-2


def clipped_scores(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Midpoint scores clipped to ``[-CLIP, CLIP]``, each row scaled to ``||z||^2 <= d``.

    Parameters
    ----------
    lo, hi : ndarray, shape ``(n, d)``
        Cell bounds in ``[0, 1]``.

    Returns
    -------
    ndarray, shape ``(n, d)``
    """
    z = np.clip(dequantize(lo, hi, None), -CLIP, CLIP)
    bound = z.shape[1]
    norm2 = np.square(z).sum(axis=1)
    scale = np.sqrt(np.minimum(1.0, bound / np.maximum(norm2, 1e-300)))
    return z * scale[:, None]


def second_moments(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The released statistic before noise: ``(S_ij for i < j, S_ii / sqrt(2))``.

    ``S = sum_rows z z^T`` of the clipped scores; the pairs in the row-major order of
    ``np.triu_indices(d, 1)``, then the diagonal. Shape ``(d (d + 1) / 2,)``.
    """
    z = clipped_scores(lo, hi)
    s = z.T @ z
    return np.concatenate([s[np.triu_indices(z.shape[1], 1)], np.diag(s) / math.sqrt(2.0)])


def release_correlation(
    lo: np.ndarray,
    hi: np.ndarray,
    noise_multiplier: float,
    noise: PrivacyNoise,
    n_hat: float,
    budget_share: float = 0.0,
    comm: Any = None,
) -> tuple[np.ndarray, dict[str, Any], Release | None]:
    """Noisy latent correlation matrix, a summary, and the ledger's record of the release.

    Parameters
    ----------
    lo, hi : ndarray, shape ``(n, d)``
        Every row's cells (from :meth:`skdpflow.encoding.TableEncoder.cells`).
    noise_multiplier : float
        Noise std divided by the sensitivity ``B / sqrt(2)``; 0 releases the exact sums
        (only for a non-private run).
    noise : PrivacyNoise
        The caller's secret source.
    n_hat : float
        The noisy row count (already released); divides the sums.
    budget_share : float
        Nominal share of epsilon, for the report.
    comm : Communicator or None
        Distributed fit: ``lo`` and ``hi`` are this rank's shard; the sums are added up
        over the ranks with the noise added once, by rank 0
        (:func:`skdpflow.distributed.noisy_sum`).

    Returns
    -------
    correlation : ndarray, shape ``(d, d)``
        Positive definite with unit diagonal; the identity when ``d < 2``.
    info : dict
        ``dims``, ``pairs``, ``row_bound`` (``B``), ``clip``, ``noise_std``, ``shrinkage``
        (the James-Stein factor ``lam``), ``variance_pooling``, ``floored`` (see
        :func:`shrunk_correlation`) and ``mean_abs_correlation``: all public or
        post-processing of the release.
    release : Release or None
        None when ``d < 2``: nothing was read, nothing is charged.
    """
    d = lo.shape[1]
    if d < 2:
        return np.eye(d), {"dims": d, "pairs": 0}, None
    return release_moments(second_moments(lo, hi), d, noise_multiplier, noise, n_hat,
                           budget_share, comm)


def release_moments(
    exact: np.ndarray,
    d: int,
    noise_multiplier: float,
    noise: PrivacyNoise,
    n_hat: float,
    budget_share: float = 0.0,
    comm: Any = None,
) -> tuple[np.ndarray, dict[str, Any], Release]:
    """:func:`release_correlation` from the exact statistic :func:`second_moments` (``d >= 2``
    dims), for a table whose rows were summed chunk by chunk."""
    bound = float(d)
    sensitivity = bound / math.sqrt(2.0)
    std = noise_multiplier * sensitivity
    if comm is None:
        noisy = exact + noise.normal(exact.shape, std).numpy()
    else:
        from ..distributed import noisy_sum

        noisy = noisy_sum(exact, lambda s: s + noise.normal(s.shape, std).numpy(), comm,
                          "copula second moments")
    del exact
    correlation, post = shrunk_correlation(noisy, std, n_hat, d)
    pairs = d * (d - 1) // 2
    info = {"dims": d, "pairs": pairs, "row_bound": bound, "clip": CLIP, "noise_std": std,
            **post,
            "mean_abs_correlation": float(np.abs(correlation[np.triu_indices(d, 1)]).mean())}
    release = Release(
        name="copula correlations (Gaussian)",
        reads=f"sums of products of {d} clipped latent midpoint scores ({pairs} pairs and "
              f"{d} squares)",
        l2_sensitivity=sensitivity, noise_multiplier=noise_multiplier,
        budget_share=budget_share,
        details={"noise_std": std, "row_bound": bound, "clip": CLIP})
    return correlation, info, release


def shrunk_correlation(noisy: np.ndarray, std: float, n_hat: float, d: int
                       ) -> tuple[np.ndarray, dict[str, Any]]:
    """Correlation matrix from the noisy second moments (post-processing).

    Parameters
    ----------
    noisy : ndarray, shape ``(d (d + 1) / 2,)``
        The released vector, laid out as :func:`second_moments`.
    std : float
        Its noise std (public).
    n_hat : float
        The noisy row count.
    d : int

    Returns
    -------
    correlation : ndarray, shape ``(d, d)``
        Positive definite, unit diagonal.
    info : dict
        ``shrinkage`` (the James-Stein factor of the pairs), ``variance_pooling`` (how far
        the diagonal was pulled to its mean, 0 to 1) and ``floored`` (how many diagonal
        entries were raised to the floor).
    """
    pairs = d * (d - 1) // 2
    cov = noisy[:pairs] / n_hat
    tau = std / n_hat
    energy = float(np.square(cov).sum())
    if tau == 0:
        shrinkage = 1.0
    else:
        noise_energy = float(chi2.ppf(NOISE_QUANTILE, pairs)) * tau**2
        shrinkage = max(0.0, 1.0 - noise_energy / energy) if energy > 0 else 0.0
    var, pooling = _pooled_variances(math.sqrt(2.0) * noisy[pairs:] / n_hat,
                                     2.0 * tau**2)
    # Two noise std of the pooled estimate: a divisor that noise made small never
    # inflates a correlation.
    kept = (1.0 - pooling) ** 2
    floor = max(VARIANCE_FLOOR, 2.0 * math.sqrt(2.0) * tau * math.sqrt(kept + (1 - kept) / d))
    scale = 1.0 / np.sqrt(np.maximum(var, floor))
    upper = np.triu_indices(d, 1)
    out = np.eye(d)
    out[upper] = shrinkage * cov * scale[upper[0]] * scale[upper[1]]
    out.T[upper] = out[upper]
    values, vectors = np.linalg.eigh(out)
    out = (vectors * np.maximum(values, MIN_EIGENVALUE)) @ vectors.T
    unit = 1.0 / np.sqrt(np.diag(out))
    out = out * unit[:, None] * unit[None, :]
    np.fill_diagonal(out, 1.0)
    return (out + out.T) / 2, {"shrinkage": float(shrinkage), "variance_pooling": pooling,
                               "floored": int(np.sum(var < floor))}


def _pooled_variances(var: np.ndarray, noise_var: float) -> tuple[np.ndarray, float]:
    """Noisy second moments shrunk toward their mean (Efron and Morris, 1973).

    ``mean + (1 - p) (var - mean)`` with ``p = min(1, (d - 3) noise_var / sum (var -
    mean)^2)`` (no pooling for ``d <= 3``): about the pooled mean when the noise dominates
    their spread, each its own when it does not. Returns the values and ``p``.
    """
    mean = float(var.mean())
    spread = float(np.square(var - mean).sum())
    if noise_var == 0 or len(var) <= 3:
        pooling = 0.0
    else:
        pooling = min(1.0, (len(var) - 3) * noise_var / spread) if spread > 0 else 1.0
    return mean + (1.0 - pooling) * (var - mean), pooling
