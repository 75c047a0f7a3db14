"""Tests for skdpflow.privacy.accounting against Opacus's own accountants."""

from __future__ import annotations

import math
import warnings

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from scipy.optimize import brentq
from scipy.stats import norm

from skdpflow.privacy.accounting import (
    PrivacyBudgetError,
    epsilon_spent,
    gaussian_noise_multiplier,
    noise_multiplier,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

ACCOUNTANT_CLASSES = {"rdp": RDPAccountant, "prv": PRVAccountant}


def _opacus_epsilon(accountant: str, steps: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon from an Opacus accountant driven by ``.step`` as DPOptimizer drives it."""
    acc = ACCOUNTANT_CLASSES[accountant]()
    for sigma, q, count in steps:
        for _ in range(count):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return float(acc.get_epsilon(delta=delta))


def _exact_gaussian_epsilon(z: float, delta: float) -> float:
    """Exact epsilon of one Gaussian release with noise multiplier z (Balle & Wang, 2018)."""
    mu = 1.0 / z

    def excess(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(excess, 0.0, 200.0)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize(
    "history",
    [
        [(1.1, 0.01, 300)],
        [(0.8, 0.05, 40)],
        [(2.0, 1.0, 1), (1.1, 0.01, 300)],
    ],
)
def test_epsilon_matches_opacus_stepping(
    accountant: str, history: list[tuple[float, float, int]]
) -> None:
    ours = epsilon_spent(history, 1e-5, accountant)
    theirs = _opacus_epsilon(accountant, history, 1e-5)
    assert ours == pytest.approx(theirs, rel=1e-9)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("z", [0.5, 1.0, 5.0])
def test_full_batch_gaussian_is_sound(accountant: str, z: float) -> None:
    # q = 1 is a plain Gaussian mechanism: both accountants must upper-bound the exact
    # epsilon, and PRV must be tight (its eps_error is 0.01).
    eps = epsilon_spent([(z, 1.0, 1)], 1e-5, accountant)
    exact = _exact_gaussian_epsilon(z, 1e-5)
    assert eps >= exact - 1e-9
    assert eps <= exact * (1.1 if accountant == "rdp" else 1.0) + 0.02


def test_prv_full_batch_emits_no_warnings() -> None:
    # q = 1 makes Opacus's PRV take log(0); the result is right, the warning is silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        epsilon_spent([(1.0, 1.0, 1)], 1e-5, "prv")


def test_empty_and_noiseless_histories() -> None:
    assert epsilon_spent([], 1e-5) == 0.0
    assert epsilon_spent([(1.0, 0.01, 0)], 1e-5) == 0.0
    assert epsilon_spent([(0.0, 0.01, 10)], 1e-5) == math.inf


@pytest.mark.parametrize(
    ("accountant", "epsilon", "delta", "q", "steps", "prior"),
    [
        ("rdp", 1.0, 1e-5, 0.01, 1000, ()),
        ("rdp", 0.3, 1e-6, 0.004, 2500, ()),
        ("rdp", 8.0, 1e-5, 0.1, 100, ()),
        ("rdp", 3.0, 1e-5, 0.02, 500, [(5.0, 1.0, 1)]),
        ("prv", 1.0, 1e-5, 0.01, 1000, ()),
        ("prv", 3.0, 1e-5, 0.02, 500, [(5.0, 1.0, 1)]),
    ],
)
def test_calibrated_sigma_meets_and_nearly_spends_budget(
    accountant: str,
    epsilon: float,
    delta: float,
    q: float,
    steps: int,
    prior: list[tuple[float, float, int]],
) -> None:
    sigma = noise_multiplier(epsilon, delta, q, steps, accountant, prior=prior)
    spent = epsilon_spent(list(prior) + [(sigma, q, steps)], delta, accountant)
    assert spent <= epsilon
    assert spent >= 0.98 * epsilon
    # Slightly less noise must break the budget: sigma is (nearly) the smallest.
    more = epsilon_spent(list(prior) + [(sigma * 0.99, q, steps)], delta, accountant)
    assert more > epsilon


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_sigma_agrees_with_opacus_get_noise_multiplier(accountant: str) -> None:
    epsilon, delta, q, steps = 2.0, 1e-5, 0.02, 400
    ours = noise_multiplier(epsilon, delta, q, steps, accountant)
    theirs = get_noise_multiplier(
        target_epsilon=epsilon,
        target_delta=delta,
        sample_rate=q,
        steps=steps,
        accountant=accountant,
        epsilon_tolerance=0.01,
    )
    # Opacus stops once epsilon is within 0.01 below the target, so its sigma is feasible
    # and at most a little larger than the smallest feasible one.
    assert ours <= theirs * (1 + 1e-3)
    assert ours == pytest.approx(theirs, rel=0.02)


def test_gaussian_noise_multiplier_is_one_full_batch_release() -> None:
    z = gaussian_noise_multiplier(1.0, 1e-5)
    assert epsilon_spent([(z, 1.0, 1)], 1e-5) <= 1.0
    assert z == pytest.approx(noise_multiplier(1.0, 1e-5, 1.0, 1), rel=1e-12)
    z_prv = gaussian_noise_multiplier(1.0, 1e-5, "prv")
    assert z_prv < z  # PRV is tighter than RDP
    assert _exact_gaussian_epsilon(z_prv, 1e-5) <= 1.0


def test_infinite_epsilon_needs_no_noise() -> None:
    assert noise_multiplier(math.inf, 1e-5, 0.01, 100) == 0.0


def test_unreachable_budget_raises() -> None:
    with pytest.raises(PrivacyBudgetError, match="epsilon=0.01.*steps"):
        noise_multiplier(0.01, 1e-5, 0.5, 10_000)


def test_prior_exceeding_budget_raises() -> None:
    with pytest.raises(PrivacyBudgetError, match="prior releases alone"):
        noise_multiplier(1.0, 1e-5, 0.01, 100, prior=[(0.5, 1.0, 1)])


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_composition_is_monotone(accountant: str) -> None:
    training = [(1.2, 0.01, 500)]
    alone = epsilon_spent(training, 1e-5, accountant)
    with_prior = epsilon_spent([(3.0, 1.0, 1)] + training, 1e-5, accountant)
    assert with_prior > alone


def test_prior_release_needs_more_training_noise() -> None:
    # Same total budget, part of it already spent: training must be noisier.
    with_prior = noise_multiplier(2.0, 1e-5, 0.01, 500, prior=[(3.0, 1.0, 1)])
    assert with_prior > noise_multiplier(2.0, 1e-5, 0.01, 500)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"accountant": "gdp"},
        {"delta": 0.0},
        {"delta": 1.0},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"steps": 0},
        {"epsilon": 0.0},
    ],
)
def test_invalid_arguments_raise_value_error(kwargs: dict) -> None:
    args = {"epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 100, **kwargs}
    with pytest.raises(ValueError):
        noise_multiplier(**args)


def test_epsilon_spent_rejects_unknown_accountant() -> None:
    with pytest.raises(ValueError, match="accountant"):
        epsilon_spent([(1.0, 0.01, 10)], 1e-5, "gdp")
