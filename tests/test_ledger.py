"""The privacy ledger: plan before release, adaptive accounting that holds for every noisy count."""

from __future__ import annotations

import math

import pytest
from opacus.accountants.analysis.rdp import compute_rdp

from skdpflow.privacy.accounting import PrivacyBudgetError, noise_multiplier
from skdpflow.privacy.ledger import MAX_EPSILON, PrivacyLedger, Release, rdp_to_epsilon

BATCH, EPOCHS = 1024, 6


def _planned(epsilon: float = 1.0, delta: float = 1e-5, share: float = 0.1) -> PrivacyLedger:
    ledger = PrivacyLedger(epsilon, delta)
    z = ledger.gaussian_noise(share)
    ledger.plan([z], batch_size=BATCH, epochs=EPOCHS)
    ledger.record(Release("histograms", "bin counts", 1.0, z, budget_share=share))
    return ledger


def _schedule(n_hat: float) -> tuple[float, int]:
    q = min(1.0, BATCH / n_hat)
    return q, max(1, int(round(EPOCHS / q)))


def test_the_order_is_fixed_before_the_first_release():
    ledger = PrivacyLedger(1.0, 1e-5)
    with pytest.raises(RuntimeError, match="plan"):
        ledger.record(Release("x", "y", 1.0, 5.0))
    ledger.plan([5.0], batch_size=BATCH, epochs=EPOCHS)
    ledger.record(Release("x", "y", 1.0, 5.0))
    with pytest.raises(RuntimeError, match="before the first release"):
        ledger.plan([5.0], batch_size=BATCH, epochs=EPOCHS)


@pytest.mark.parametrize("epsilon", [0.3, 1.0, 3.0])
def test_the_bound_holds_whatever_the_noisy_count(epsilon):
    """DP-SGD is calibrated after the noisy count; at the order fixed before it, every
    possible schedule stays within the same budget, so adaptive composition holds."""
    budgets = set()
    for n_hat in (3.0, 800.0, 1_000.0, 32_561.0, 250_000.0, 4e6, 3e7):
        ledger = _planned(epsilon)
        q, steps = _schedule(n_hat)
        sigma = ledger.dpsgd_noise(q, steps)
        ledger.record(Release("DP-SGD", "gradients", 1.0, sigma, q, steps))
        budgets.add(ledger.rdp_budget())
        assert ledger.rdp_spent() <= ledger.rdp_budget() * (1 + 1e-9)
        assert ledger.epsilon_spent() <= epsilon * (1 + 1e-9)
        assert ledger.epsilon_spent() > 0.97 * epsilon  # the budget is used
        ledger.close()
    assert len(budgets) == 1  # one budget, fixed before n_hat was known


def test_epsilon_matches_an_independent_rdp_computation():
    ledger = _planned(2.0)
    q, steps = _schedule(32_561)
    sigma = ledger.dpsgd_noise(q, steps)
    ledger.record(Release("DP-SGD", "gradients", 1.0, sigma, q, steps))
    a = ledger.order
    rdp = sum(compute_rdp(q=qq, noise_multiplier=z, steps=t, orders=[a])[0]
              for z, qq, t in ledger.history)
    eps = rdp - (math.log(1e-5) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
    assert ledger.epsilon_spent() == pytest.approx(eps, rel=1e-9)
    assert rdp_to_epsilon(rdp, a, 1e-5) == pytest.approx(eps, rel=1e-12)


@pytest.mark.parametrize("epsilon", [1.0, 3.0])
def test_the_price_of_adaptivity_is_small(epsilon):
    """Against a non-adaptive accountant that knew the row count (not a valid bound here),
    the filter's noise is at most ~14% larger over 1,000 to 10 million rows."""
    for n in (1_000, 32_561, 1_000_000, 10_000_000):
        ledger = _planned(epsilon)
        q, steps = _schedule(n)
        sigma = ledger.dpsgd_noise(q, steps)
        oracle = noise_multiplier(epsilon, 1e-5, q, steps, "rdp",
                                  prior=[(ledger.history[0][0], 1.0, 1)])
        assert sigma / oracle < 1.15, (n, sigma, oracle)


def test_small_epsilon_has_no_order_grid_floor():
    ledger = _planned(0.1)
    q, steps = _schedule(32_561)
    ledger.record(Release("DP-SGD", "gradients", 1.0, ledger.dpsgd_noise(q, steps), q, steps))
    assert 0.09 < ledger.epsilon_spent() <= 0.1


def test_a_release_that_overdraws_is_refused():
    ledger = _planned(1.0)
    with pytest.raises(PrivacyBudgetError, match="exceed"):
        ledger.record(Release("too much", "counts", 1.0, 0.5))
    assert len(ledger.releases) == 1


def test_epsilon_range_and_large_epsilon_formulas_stay_finite():
    with pytest.raises(ValueError, match="epsilon must lie"):
        PrivacyLedger(MAX_EPSILON * 2, 1e-5)
    with pytest.raises(ValueError, match="epsilon must lie"):
        PrivacyLedger(0.0, 1e-5)
    ledger = PrivacyLedger(MAX_EPSILON, 1e-5, selection_delta=1e-6 * math.exp(-MAX_EPSILON))
    assert math.isfinite(ledger.accountant_delta) and ledger.accountant_delta > 0
    ledger.plan([ledger.gaussian_noise(0.1)], batch_size=BATCH, epochs=EPOCHS)
    assert math.isfinite(ledger.delta_spent())


def test_state_dict_round_trip_recomputes_the_same_totals():
    ledger = _planned(1.0)
    q, steps = _schedule(5_000)
    ledger.record(Release("DP-SGD", "gradients", 1.0, ledger.dpsgd_noise(q, steps), q, steps,
                          details={"clipping": "flat"}))
    again = PrivacyLedger.from_state_dict(ledger.state_dict())
    assert again.report() == ledger.report()
    assert again.epsilon_spent() == ledger.epsilon_spent()


def test_non_private_ledger_records_nothing():
    ledger = PrivacyLedger(math.inf, 1e-5)
    ledger.plan([0.0], batch_size=BATCH, epochs=EPOCHS)
    ledger.record(Release("x", "y", 1.0, 0.0))
    assert ledger.releases == [] and ledger.epsilon_spent() == math.inf
    assert ledger.dpsgd_noise(0.1, 10) == 0.0 and ledger.gaussian_noise(0.1) == 0.0


def test_the_report_says_what_each_release_costs_alone_and_in_the_composition():
    ledger = _planned(1.0, share=0.1)
    q, steps = _schedule(32_561)
    ledger.record(Release("DP-SGD", "gradients", 1.0, ledger.dpsgd_noise(q, steps), q, steps))
    histograms, sgd = ledger.report()["mechanisms"]
    assert histograms["epsilon_alone"] == pytest.approx(0.1, rel=1e-6)  # exact, its share
    assert histograms["rdp_at_order"] + sgd["rdp_at_order"] == pytest.approx(
        ledger.rdp_spent(), rel=1e-12)
    assert sgd["epsilon_alone"] < 1.0
