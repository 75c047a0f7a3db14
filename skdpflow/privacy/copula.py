"""One differentially private release of the latent correlations (a Gaussian copula).

Each row's cells ``[lo, hi]`` in ``[0, 1]^d`` (from the encoder, itself post-processing of
the released 1-way marginals) give a point in latent space, the midpoint scores
``z = Phi^-1((lo + hi) / 2)``. The mechanism releases ``S = sum_rows z z^T`` with the
Gaussian mechanism, as the vector ``v = (S_ij for i < j, S_ii / sqrt(2) for all i)``.

Sensitivity
-----------
Every coordinate of ``z`` is clipped to ``[-CLIP, CLIP]``, then the row is scaled down so
that ``||z||^2 <= B`` (both public; ``B = d``, or less for the copula-only model, below). Adding or removing one row changes ``S`` by exactly
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

The copula-only model (``reliability`` given)
---------------------------------------------
Where the schedule skips DP-SGD (a small table at a small budget: the model is this copula
over the released marginals, nothing trains after it), the release is estimated more
sharply, with the same sensitivity and noise:

* **Cell means as scores.** Each dimension's score is ``E[Z | Phi(Z) in [lo, hi]]`` of a
  standard normal ``Z`` (:func:`cell_means`; ``Phi^-1`` of the value for a point cell)
  instead of the cell's midpoint score. Both are functions of the row's cells, clipped and
  row-scaled alike: the bound ``B / sqrt(2)`` holds as above.
* **A row bound at the scores' expected norm.** A cell mean keeps ``a_i = E[m_i^2] <= 1``
  of a latent normal's variance (below), so a row's expected ``||z||^2`` is ``sum_i a_i``,
  whatever the correlations, well under ``d`` when many columns are coarse (12.5 against 20
  on bank_marketing's 1,000 rows). ``B = ROW_BOUND_FACTOR * sum_i a_i`` (:func:`row_bound`,
  from the encoder alone, so public) instead of ``d``: the noise shrinks by the same
  factor, and the rows above it (a third on bank_marketing) are scaled down, which the
  division by the released second moments partly undoes. At 1,000 rows and epsilon 1 (40
  seeds each) it took the quality from 0.848 to 0.855 on bank_marketing and 0.817 to 0.819
  on default_credit_card, and default_credit_card's 2-way TVD from 0.333 to 0.331
  (docs/benchmarks.md, "The copula-only row bound").
* **Coarse cells corrected.** For a latent normal pair with correlation ``rho`` the cell
  means ``m_i``, ``m_j`` have ``E[m_i m_j] = rho a_i a_j`` with ``a_i = E[m_i^2]``, to first
  order in ``rho`` (the tetrachoric series), exactly so when one side is a point: their
  correlation is ``rho sqrt(a_i a_j)``. Each pair is divided by ``sqrt(a_i a_j)``
  (:func:`cell_reliability`, from the encoder alone). Without it a binary column with 12%
  of its rows in one value (``a ~ 0.37``) keeps about 0.61 of its latent correlation with a
  numerical one.
* **Each pair shrunk by its own evidence.** After the same test of "no signal at all"
  (``sum c_ij^2`` below ``q_m tau^2``: every pair 0), each pair is turned into a
  correlation ``y_ij = c_ij f_ij`` (``f_ij`` the pair's factor: the scores' variances and
  the reliabilities), whose noise std is its own, ``tau f_ij``, and replaced by its
  posterior mean under the prior on ``[-1, 1]`` that best explains all ``m`` noisy pairs
  together: the nonparametric maximum-likelihood prior of Kiefer and Wolfowitz (1956) on a
  grid, fitted by EM with each pair's own std (empirical Bayes, Jiang and Zhang 2009). A
  pair of nearly constant columns (``a_i`` and ``a_j`` small, ``f_ij`` large) is mostly
  noise and goes to the prior's mean; shrunk in covariance units and then multiplied by
  ``f_ij``, its leftover noise had become a strong spurious correlation (kddcup99, with
  many near-constant flags: quality 0.786 against 0.801, 30 seeds).
  Dependence between columns is sparse, a few pairs near 1 among many near 0; one
  James-Stein factor shrinks the strong pairs as much as the noise (0.18-0.27 on
  bank_marketing's 1,000 rows), the fitted prior pulls noise to 0 and keeps the strong
  pairs. Under :data:`PRIOR_MIN_PAIRS` pairs the prior is not estimable and the pairs get
  the positive-part James-Stein factor.

Where DP-SGD trains from the copula, the flow keeps the midpoint scores and one factor: the
sharper start made DP-SGD's fits at 3,000 rows unstable (docs/benchmarks.md, "A sharper
copula, tried and reverted"), and DP-SGD learns the dependence itself there.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import ndtri
from scipy.stats import chi2, norm

from ..encoding import dequantize
from .ledger import Release
from .randomness import PrivacyNoise

__all__ = ["CLIP", "MIN_EIGENVALUE", "ROW_BOUND_FACTOR", "VARIANCE_FLOOR", "cell_means",
           "cell_reliability", "clipped_scores", "posterior_means", "release_correlation",
           "release_moments", "row_bound", "second_moments", "shrunk_correlation"]

# Each score is clipped to [-CLIP, CLIP] (public).
CLIP = 3.0
# Smallest eigenvalue of the released correlation before rescaling (keeps it invertible).
MIN_EIGENVALUE = 1e-3
# Pure noise is shrunk to exactly 0 with this probability (see shrunk_correlation).
NOISE_QUANTILE = 0.99
# The empirical-Bayes prior of the pairs: atoms on a grid over where the means can lie (at
# least PRIOR_GRID, spaced at most half the smallest noise std, at most PRIOR_GRID_MAX), EM
# steps.
PRIOR_GRID = 201
PRIOR_GRID_MAX = 1001
PRIOR_EM_STEPS = 500
# Fewer pairs than this say too little about their prior: one James-Stein factor instead.
PRIOR_MIN_PAIRS = 21
# A cell narrower than this is a point: its score is Phi^-1 of its midpoint.
POINT_WIDTH = 1e-9
# Latent rows of the Monte Carlo behind cell_reliability.
RELIABILITY_ROWS = 20_000
# Smallest second moment a released diagonal entry is taken to have (it divides).
VARIANCE_FLOOR = 1e-2
# The copula-only model's row bound, in units of the cell means' expected squared norm.
ROW_BOUND_FACTOR = 1.0


def cell_means(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``E[Z | Phi(Z) in [lo, hi]]`` for a standard normal ``Z``: ``(phi(a) - phi(b)) / (hi -
    lo)`` with ``a = Phi^-1(lo)``, ``b = Phi^-1(hi)``; ``Phi^-1(lo)`` for a point cell (narrower
    than ``POINT_WIDTH``)."""
    width = hi - lo
    point = width < POINT_WIDTH
    a = ndtri(np.clip(lo, 0.0, 1.0))
    b = ndtri(np.clip(hi, 0.0, 1.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (norm.pdf(a) - norm.pdf(b)) / np.where(point, 1.0, width)
    return np.where(point, dequantize(lo, hi, None), mean)


def clipped_scores(lo: np.ndarray, hi: np.ndarray, means: bool = False,
                   bound: float | None = None) -> np.ndarray:
    """Midpoint scores (with ``means``: cell means, :func:`cell_means`) clipped to
    ``[-CLIP, CLIP]``, each row scaled to ``||z||^2 <= bound``.

    Parameters
    ----------
    lo, hi : ndarray, shape ``(n, d)``
        Cell bounds in ``[0, 1]``.
    bound : float or None, default=None
        The row bound ``B`` (public); None: ``d``.

    Returns
    -------
    ndarray, shape ``(n, d)``
    """
    z = np.clip(cell_means(lo, hi) if means else dequantize(lo, hi, None), -CLIP, CLIP)
    bound = z.shape[1] if bound is None else bound
    norm2 = np.square(z).sum(axis=1)
    scale = np.sqrt(np.minimum(1.0, bound / np.maximum(norm2, 1e-300)))
    return z * scale[:, None]


def cell_reliability(cells: Any, d: int, rows: int = RELIABILITY_ROWS) -> np.ndarray:
    """Each dimension's ``a_i = E[m_i^2]``: how much of a latent standard normal its clipped
    cell mean keeps (1 for a point, ``sum_k P_k m_k^2`` for cells of masses ``P_k``).

    A Monte Carlo over ``rows`` independent standard normal latent rows, sent to data and
    back to their cells by ``cells`` (``z -> (lo, hi)``: the encoder's decode then cells,
    built from the released marginals), from a fixed public seed: it reads no data.

    Every dimension is corrected, a nominal column's categories too (each is an interval of
    its latent dimension, so the first-order correction holds for their order there). It
    was chosen with the pairs then shrunk in covariance units (1,000 rows, epsilon 1, 30
    seeds), against correcting only the dimensions with at most two coarse cells:
    bank_marketing 1-way TVD 0.089 / 0.098, 2-way 0.193 / 0.205, AUROC 0.603 / 0.564;
    default_credit_card 2-way 0.337 / 0.336, AUROC 0.587 / 0.596; kddcup99 (16 seeds)
    quality 0.788 / 0.796, AUROC 0.655 / 0.668. With each pair shrunk in correlation units
    (the default since), see docs/benchmarks.md, "A sharper copula, tried and reverted".
    """
    z = np.random.default_rng(0).standard_normal((rows, d))
    lo, hi = cells(z)
    m = np.clip(cell_means(lo, hi), -CLIP, CLIP)
    return np.maximum(np.square(m).mean(axis=0), VARIANCE_FLOOR)


def row_bound(reliability: np.ndarray) -> float:
    """The copula-only model's row bound ``B = ROW_BOUND_FACTOR * sum_i a_i``: the cell
    means' expected squared norm (whatever the correlations), at most ``d``. Public: the
    reliabilities come from the encoder alone (:func:`cell_reliability`)."""
    return float(min(ROW_BOUND_FACTOR * float(np.sum(reliability)), len(reliability)))


def second_moments(lo: np.ndarray, hi: np.ndarray, means: bool = False,
                   bound: float | None = None) -> np.ndarray:
    """The released statistic before noise: ``(S_ij for i < j, S_ii / sqrt(2))``.

    ``S = sum_rows z z^T`` of the clipped scores (:func:`clipped_scores`, row bound
    ``bound``, ``d`` by default); the pairs in the row-major order of
    ``np.triu_indices(d, 1)``, then the diagonal. Shape ``(d (d + 1) / 2,)``.
    """
    z = clipped_scores(lo, hi, means, bound)
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
    reliability: np.ndarray | None = None,
    bound: float | None = None,
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
    reliability : ndarray, shape ``(d,)``, or None
        Given (:func:`cell_reliability` of the encoder, public): the copula-only model's
        estimate (cell-mean scores, coarse cells corrected, each pair shrunk by its own
        evidence; see the module docstring). None: midpoint scores and one factor.
    bound : float or None, default=None
        The row bound ``B`` (public: :func:`row_bound` for the copula-only model); None:
        ``d``.

    Returns
    -------
    correlation : ndarray, shape ``(d, d)``
        Positive definite with unit diagonal; the identity when ``d < 2``.
    info : dict
        ``dims``, ``pairs``, ``row_bound`` (``B``), ``clip``, ``noise_std``, ``scores``,
        ``shrinkage`` (how much of the pairs was kept), ``variance_pooling``, ``floored`` (see
        :func:`shrunk_correlation`) and ``mean_abs_correlation``: all public or
        post-processing of the release.
    release : Release or None
        None when ``d < 2``: nothing was read, nothing is charged.
    """
    d = lo.shape[1]
    if d < 2:
        return np.eye(d), {"dims": d, "pairs": 0}, None
    exact = second_moments(lo, hi, means=reliability is not None, bound=bound)
    return release_moments(exact, d, noise_multiplier, noise, n_hat, budget_share, comm,
                           reliability, bound)


def release_moments(
    exact: np.ndarray,
    d: int,
    noise_multiplier: float,
    noise: PrivacyNoise,
    n_hat: float,
    budget_share: float = 0.0,
    comm: Any = None,
    reliability: np.ndarray | None = None,
    bound: float | None = None,
) -> tuple[np.ndarray, dict[str, Any], Release]:
    """:func:`release_correlation` from the exact statistic :func:`second_moments` (``d >= 2``
    dims, row bound ``bound``, ``d`` by default), for a table whose rows were summed chunk
    by chunk; with ``reliability``, the statistic of the cell means
    (``second_moments(..., means=True)``)."""
    bound = float(d) if bound is None else float(bound)
    sensitivity = bound / math.sqrt(2.0)
    std = noise_multiplier * sensitivity
    if comm is None:
        noisy = exact + noise.normal(exact.shape, std).numpy()
    else:
        from ..distributed import noisy_sum

        noisy = noisy_sum(exact, lambda s: s + noise.normal(s.shape, std).numpy(), comm,
                          "copula second moments")
    del exact
    correlation, post = shrunk_correlation(noisy, std, n_hat, d, reliability)
    pairs = d * (d - 1) // 2
    scores = "midpoint" if reliability is None else "cell-mean"
    info = {"dims": d, "pairs": pairs, "row_bound": bound, "clip": CLIP, "noise_std": std,
            "scores": scores,
            **post,
            "mean_abs_correlation": float(np.abs(correlation[np.triu_indices(d, 1)]).mean())}
    release = Release(
        name="copula correlations (Gaussian)",
        reads=f"sums of products of {d} clipped latent {scores} scores ({pairs} pairs and "
              f"{d} squares)",
        l2_sensitivity=sensitivity, noise_multiplier=noise_multiplier,
        budget_share=budget_share,
        details={"noise_std": std, "row_bound": bound, "clip": CLIP})
    return correlation, info, release


def shrunk_correlation(noisy: np.ndarray, std: float, n_hat: float, d: int,
                       reliability: np.ndarray | None = None
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
    reliability : ndarray, shape ``(d,)``, or None
        Given: the copula-only model's estimate, each pair divided by ``sqrt(a_i a_j)``
        (:func:`cell_reliability`) and replaced by its posterior mean in correlation units,
        with its own noise std (:func:`posterior_means`).
        None: the scores' correlations, all pairs shrunk by one positive-part James-Stein
        factor.

    Returns
    -------
    correlation : ndarray, shape ``(d, d)``
        Positive definite, unit diagonal.
    info : dict
        ``shrinkage`` (the least-squares factor from the noisy to the shrunk pairs: 1 when
        nothing is shrunk, 0 when every pair is set to 0), ``variance_pooling`` (how far
        the diagonal was pulled to its mean, 0 to 1) and ``floored`` (how many diagonal
        entries were raised to the floor).
    """
    pairs = d * (d - 1) // 2
    cov = noisy[:pairs] / n_hat
    tau = std / n_hat
    var, pooling = _pooled_variances(math.sqrt(2.0) * noisy[pairs:] / n_hat,
                                     2.0 * tau**2)
    # Two noise std of the pooled estimate: a divisor that noise made small never
    # inflates a correlation.
    kept = (1.0 - pooling) ** 2
    floor = max(VARIANCE_FLOOR, 2.0 * math.sqrt(2.0) * tau * math.sqrt(kept + (1 - kept) / d))
    scale = 1.0 / np.sqrt(np.maximum(var, floor))
    if reliability is not None:  # the scores' correlation to the latent one
        scale = scale / np.sqrt(reliability)
    upper = np.triu_indices(d, 1)
    factor = scale[upper[0]] * scale[upper[1]]  # a pair's covariance to its correlation
    energy = float(np.square(cov).sum())
    noise_energy = float(chi2.ppf(NOISE_QUANTILE, pairs)) * tau**2
    if tau == 0:
        rho = cov * factor
    elif energy <= noise_energy:
        rho = np.zeros_like(cov)
    elif reliability is not None and pairs >= PRIOR_MIN_PAIRS:
        # In correlation units, each pair with its own noise std, under one prior on a
        # correlation's range (see the module docstring; docs/benchmarks.md, "A sharper
        # copula, tried and reverted", for the variants measured).
        rho = posterior_means(cov * factor, tau * factor, span=(-1.0, 1.0))
    else:
        rho = (1.0 - noise_energy / energy) * cov * factor
    if tau == 0:
        shrinkage = 1.0
    else:
        shrinkage = float((rho / factor) @ cov / energy) if energy > 0 else 0.0
    out = np.eye(d)
    # (The reliability's division can push a pair past 1.)
    out[upper] = rho if reliability is None else np.clip(rho, -1.0, 1.0)
    out.T[upper] = out[upper]
    values, vectors = np.linalg.eigh(out)
    out = (vectors * np.maximum(values, MIN_EIGENVALUE)) @ vectors.T
    unit = 1.0 / np.sqrt(np.diag(out))
    out = out * unit[:, None] * unit[None, :]
    np.fill_diagonal(out, 1.0)
    return (out + out.T) / 2, {"shrinkage": float(shrinkage), "variance_pooling": pooling,
                               "floored": int(np.sum(var < floor))}


def posterior_means(x: np.ndarray, tau: float | np.ndarray,
                    span: tuple[float, float] | None = None) -> np.ndarray:
    """Posterior means of normal means ``x_k ~ N(theta_k, tau_k^2)`` under the fitted prior.

    The prior is the nonparametric maximum-likelihood estimate (Kiefer and Wolfowitz,
    1956): atoms on an even grid spanning ``span`` (by default ``[min(x, 0), max(x, 0)]``),
    spaced at most ``min(tau) / 2`` (:data:`PRIOR_GRID` to :data:`PRIOR_GRID_MAX` points),
    weights fitted by :data:`PRIOR_EM_STEPS` EM steps from uniform (Jiang and Zhang, 2009),
    each value with its own std. Each posterior mean lies in the grid's span. Deterministic
    post-processing of ``x`` and the public ``tau``.

    Parameters
    ----------
    x : ndarray, shape ``(m,)``
    tau : float or ndarray of shape ``(m,)``
        The noise std, one for all or one per value (positive).
    span : (float, float) or None, default=None
        Where the means can lie (the prior's support).
    """
    tau = np.broadcast_to(np.asarray(tau, dtype=float), x.shape)
    if span is None:
        low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    else:
        low, high = span
    points = int(min(max(PRIOR_GRID, math.ceil((high - low) / (float(tau.min()) / 2.0)) + 1),
                     PRIOR_GRID_MAX))
    grid = np.linspace(low, high, points)
    log_lik = -0.5 * np.square((x[:, None] - grid[None, :]) / tau[:, None])
    lik = np.exp(log_lik - log_lik.max(axis=1, keepdims=True))
    weights = np.full(points, 1.0 / points)
    for _ in range(PRIOR_EM_STEPS):
        post = lik * weights
        post /= post.sum(axis=1, keepdims=True)
        weights = post.mean(axis=0)
    post = lik * weights
    post /= post.sum(axis=1, keepdims=True)
    return post @ grid


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
