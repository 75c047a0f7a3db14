"""Privacy accounting: epsilon spent and noise calibration, delegated to Opacus.

Every release is described as an entry ``(noise_multiplier, sample_rate, steps)``, which is
the format of Opacus's ``accountant.history``. A full-data Gaussian release (for example a
noisy statistic of the domain) is the entry ``(z, 1.0, 1)``; DP-SGD with Poisson sampling
at rate ``q`` for ``T`` steps is ``(sigma, q, T)``. A history composes all its entries.

The accountants themselves (RDP, PRV) are Opacus's; this module only builds fresh ones,
fills their history and searches for a noise multiplier.

Notes
-----
PRV with ``sample_rate = 1.0``: Opacus's ``PoissonSubsampledGaussianPRV`` evaluates
``log(1 - q)``, which is ``-inf`` at ``q = 1``. Its formulas stay correct in that limit (the
privacy loss becomes that of the plain Gaussian mechanism) and only numpy's divide-by-zero
warning is emitted, so the warning is silenced here. Checked against the analytic Gaussian
mechanism (Balle & Wang, 2018): for ``z = 1, delta = 1e-5`` the exact epsilon is 4.3772 and
PRV's upper bound is 4.3874 (within its ``eps_error = 0.01``); RDP gives 4.7285.

PRV raises (``MemoryError``, ``RuntimeError``) for very small noise multipliers, where the
privacy loss distribution needs a huge discretisation domain. The calibration search treats
such points as infeasible, which is safe: the returned sigma is always one whose epsilon was
actually computed and found within the target.

RDP's conversion to (epsilon, delta) uses a finite grid of orders, so it has a floor: at
``delta = 1e-5`` no noise multiplier brings it below about 0.103. Smaller targets need
``accountant="prv"``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from opacus.accountants import create_accountant

__all__ = [
    "History",
    "PrivacyBudgetError",
    "epsilon_spent",
    "gaussian_noise_multiplier",
    "noise_multiplier",
]

History = list[tuple[float, float, int]]

ACCOUNTANTS = ("rdp", "prv")
SIGMA_MAX = 1e4
SIGMA_MIN = 1e-3
SIGMA_RTOL = 1e-3


class PrivacyBudgetError(ValueError):
    """Raised when no noise level can meet the requested privacy budget."""


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}.")


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}.")


def _normalise_history(history: Sequence[tuple[float, float, int]]) -> History:
    """Validate entries and drop those that release nothing (no steps or no rows)."""
    entries: History = []
    for entry in history:
        sigma, q, steps = entry
        if sigma < 0 or not 0.0 <= q <= 1.0 or steps < 0 or int(steps) != steps:
            raise ValueError(
                "each history entry must be (noise_multiplier >= 0, sample_rate in [0, 1], "
                f"integer steps >= 0), got {entry!r}."
            )
        if steps > 0 and q > 0:
            entries.append((float(sigma), float(q), int(steps)))
    return entries


def epsilon_spent(
    history: Sequence[tuple[float, float, int]], delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon of the composition of all releases in ``history`` at the given delta.

    Parameters
    ----------
    history : sequence of (float, float, int)
        Entries ``(noise_multiplier, sample_rate, steps)`` as in Opacus's
        ``accountant.history``; ``(z, 1.0, 1)`` is one full-data Gaussian release.
    delta : float
        Target delta, in (0, 1).
    accountant : {"rdp", "prv"}, default="rdp"
        Opacus accountant to use. PRV is tighter; both are upper bounds.

    Returns
    -------
    float
        Epsilon spent (``0.0`` for an empty history, ``inf`` if any release has no noise).

    Raises
    ------
    ValueError
        If the accountant is unknown, delta is outside (0, 1) or an entry is malformed.
    """
    _check_accountant(accountant)
    _check_delta(delta)
    entries = _normalise_history(history)
    if not entries:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in entries):
        return math.inf
    acc = create_accountant(mechanism=accountant)
    acc.history = entries
    # q = 1 makes PRV evaluate log(0); the limit is still correct (see module notes).
    with np.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # "Optimal order is the largest alpha": the bound is valid, only not the tightest.
        warnings.filterwarnings("ignore", message="Optimal order", category=UserWarning)
        return float(acc.get_epsilon(delta=delta))


def _budget_message(
    epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str, why: str
) -> str:
    return (
        f"No noise multiplier meets epsilon={epsilon}, delta={delta} with {steps} steps at "
        f"sample rate {sample_rate} ({accountant} accountant): {why}. Increase epsilon or "
        "delta, or reduce the number of steps or the sample rate (smaller batches / fewer "
        "epochs)."
    )


def _epsilon_or_inf(history: History, delta: float, accountant: str) -> float:
    """Epsilon, with accountant failures (PRV at tiny sigma) counted as infinite."""
    try:
        # Probe points at extreme sigmas trigger Opacus's "largest alpha" hint; it is noise
        # during a search, not advice about the final answer.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            eps = epsilon_spent(history, delta, accountant)
    except (MemoryError, RuntimeError, OverflowError, FloatingPointError):
        return math.inf
    return eps if math.isfinite(eps) else math.inf


def _smallest_feasible(feasible: Callable[[float], bool], start: float) -> float:
    """Smallest sigma with ``feasible(sigma)``, to relative tolerance, from the feasible side.

    Assumes ``feasible(SIGMA_MAX)`` holds. Brackets geometrically around ``start`` and then
    bisects in log space; the returned value is always one that was tested feasible, so the
    result never overshoots the budget even where epsilon(sigma) is not exactly monotone.
    """
    hi = min(max(start, SIGMA_MIN), SIGMA_MAX)
    while not feasible(hi):
        hi = min(2.0 * hi, SIGMA_MAX)
    lo = hi / 2.0
    while feasible(lo):
        hi = lo
        if hi <= SIGMA_MIN:
            return hi  # budget so loose that almost no noise is needed
        lo = hi / 2.0
    while hi / lo - 1.0 > SIGMA_RTOL:
        mid = math.sqrt(lo * hi)
        if feasible(mid):
            hi = mid
        else:
            lo = mid
    return hi


def noise_multiplier(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    prior: Sequence[tuple[float, float, int]] = (),
) -> float:
    """Smallest noise multiplier whose training run, composed with ``prior``, meets the budget.

    Finds ``sigma`` such that ``epsilon_spent(prior + [(sigma, sample_rate, steps)], delta)
    <= epsilon``, to a relative tolerance of about 1e-3 in sigma, always from the feasible
    side: the returned sigma never spends more than ``epsilon``.

    Parameters
    ----------
    epsilon : float
        Total privacy budget; ``inf`` means no privacy and returns ``0.0``.
    delta : float
        Target delta, in (0, 1).
    sample_rate : float
        Poisson sampling rate ``q = expected_batch_size / n_rows``, in (0, 1].
    steps : int
        Number of DP-SGD steps, at least 1.
    accountant : {"rdp", "prv"}, default="rdp"
        Opacus accountant to use.
    prior : sequence of (float, float, int), default=()
        Releases already made on the same rows (e.g. ``[(z, 1.0, 1)]`` for a noisy domain
        estimate), composed with the training run.

    Returns
    -------
    float
        The noise multiplier sigma (noise std divided by the clipping bound).

    Raises
    ------
    PrivacyBudgetError
        If ``prior`` alone already exceeds ``epsilon``, or if even sigma = 1e4 cannot meet it.
    ValueError
        If an argument is out of range.
    """
    _check_accountant(accountant)
    _check_delta(delta)
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon!r}.")
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate!r}.")
    if steps < 1 or int(steps) != steps:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    if math.isinf(epsilon):
        return 0.0
    prior_entries = _normalise_history(prior)
    steps = int(steps)

    prior_eps = epsilon_spent(prior_entries, delta, accountant)
    if prior_eps > epsilon:
        why = f"the prior releases alone already spend epsilon={prior_eps:.4g}"
        raise PrivacyBudgetError(
            _budget_message(epsilon, delta, sample_rate, steps, accountant, why)
        )

    def feasible(sigma: float) -> bool:
        history = prior_entries + [(sigma, sample_rate, steps)]
        return _epsilon_or_inf(history, delta, accountant) <= epsilon

    if not feasible(SIGMA_MAX):
        why = f"even noise_multiplier={SIGMA_MAX:g} spends more"
        if accountant == "rdp":
            why += " (RDP has a floor near epsilon=0.1; accountant='prv' is tighter)"
        raise PrivacyBudgetError(
            _budget_message(epsilon, delta, sample_rate, steps, accountant, why)
        )

    # RDP is cheap and upper-bounds PRV's sigma in practice: a good start keeps the
    # expensive PRV search short and away from tiny sigmas where PRV fails.
    start = 1.0
    if accountant == "prv":
        try:
            start = noise_multiplier(epsilon, delta, sample_rate, steps, "rdp", prior_entries)
        except PrivacyBudgetError:
            start = SIGMA_MAX
    return _smallest_feasible(feasible, start)


def gaussian_noise_multiplier(epsilon: float, delta: float, accountant: str = "rdp") -> float:
    """Noise multiplier of one full-data Gaussian release meeting ``(epsilon, delta)``.

    The release adds ``N(0, (z * sensitivity)^2)`` to a statistic of all rows once, i.e. the
    history ``[(z, 1.0, 1)]``.

    Parameters
    ----------
    epsilon : float
        Budget for this release alone.
    delta : float
        Target delta, in (0, 1).
    accountant : {"rdp", "prv"}, default="rdp"
        Opacus accountant to use.

    Returns
    -------
    float
        The noise multiplier z.

    Raises
    ------
    PrivacyBudgetError
        If no z up to 1e4 meets the budget.
    """
    return noise_multiplier(epsilon, delta, 1.0, 1, accountant)


def analytic_gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """Exact epsilon of one Gaussian release (Balle & Wang, 2018, Theorem 8).

    The mechanism adding ``N(0, (z * sensitivity)^2)`` is ``(epsilon, delta)``-DP iff
    ``Phi(1/(2z) - epsilon z) - e^epsilon Phi(-1/(2z) - epsilon z) <= delta``; this returns
    the smallest such epsilon (by bisection, rounded up).

    References
    ----------
    Balle & Wang, "Improving the Gaussian Mechanism for Differential Privacy: Analytical
    Calibration and Optimal Denoising", ICML 2018, arXiv:1805.06530.
    """
    _check_delta(delta)
    if noise_multiplier <= 0:
        return math.inf
    lo, hi = 0.0, 1.0
    while _analytic_delta(hi, noise_multiplier) > delta:
        hi *= 2.0
        if hi > 1e6:
            return math.inf
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _analytic_delta(mid, noise_multiplier) <= delta else (mid, hi)
    return hi


def analytic_gaussian_noise_multiplier(epsilon: float, delta: float) -> float:
    """Smallest noise multiplier whose single Gaussian release is exactly ``(epsilon, delta)``.

    Used to size a one-off release (the histograms) by its share of the budget; the
    composition with training is then done by the accountant, not by adding epsilons.
    """
    _check_delta(delta)
    if math.isinf(epsilon):
        return 0.0
    if epsilon <= 0:
        raise ValueError(f"epsilon must be positive, got {epsilon!r}.")
    lo, hi = 1e-3, 1.0
    while _analytic_delta(epsilon, hi) > delta:
        hi *= 2.0
        if hi > SIGMA_MAX:
            raise PrivacyBudgetError(f"No Gaussian noise meets epsilon={epsilon}, delta={delta}.")
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _analytic_delta(epsilon, mid) <= delta else (mid, hi)
    return hi


def _analytic_delta(epsilon: float, z: float) -> float:
    from scipy.special import log_ndtr

    a = log_ndtr(1 / (2 * z) - epsilon * z)
    b = epsilon + log_ndtr(-1 / (2 * z) - epsilon * z)
    return float(math.exp(a) - math.exp(b)) if a > b else 0.0
