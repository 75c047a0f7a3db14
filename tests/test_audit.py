"""Empirical privacy audits of whole mechanisms against the epsilon the package claims.

Each audit runs the real mechanism (the production :class:`SecureNoise`, the public entry
points the synthesizer calls) many times on neighbouring datasets ``D`` and ``D' = D + one
row``, reduces each output to the likelihood-ratio statistic of the extra row, and turns
threshold events on it into an epsilon lower bound with 99.99% confidence
(:mod:`dp_audit`). The real mechanism must stay below the claimed epsilon; the same audit of a
negative control with a tenth of the noise must exceed it, which shows the audit can see a
broken calibration of that size.

Measured figures are in the comments by each test (lower bounds vary from run to run).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dp_audit import clopper_pearson, epsilon_lower_bound, threshold_events
from torch import nn

from skdpflow.domain import ColumnDomain
from skdpflow.marginals import bin_index, histogram_spec, release_marginals
from skdpflow.privacy.accounting import analytic_gaussian_epsilon
from skdpflow.privacy.dpsgd import DPSGDStep, poisson_batches
from skdpflow.privacy.ledger import PrivacyLedger, Release
from skdpflow.privacy.randomness import SecureNoise

ALPHA = 1e-4  # each lower bound exceeds the true epsilon with probability <= 1e-4
GRID = np.linspace(-1.0, 5.0, 25)  # thresholds, in standard deviations of the noise under D


# --------------------------------------------------------------- the audit itself
def test_clopper_pearson_bounds_are_exact_binomial_tails():
    from scipy.stats import binom

    low, high = clopper_pearson(30, 100, 0.01)
    assert binom.sf(29, 100, low) == pytest.approx(0.01)  # P[X >= 30 | p = low]
    assert binom.cdf(30, 100, high) == pytest.approx(0.01)  # P[X <= 30 | p = high]
    assert clopper_pearson(0, 100, 0.01)[0] == 0.0
    assert clopper_pearson(100, 100, 0.01)[1] == 1.0


def test_identical_outputs_give_no_evidence():
    rng = np.random.default_rng(0)
    stat_a, stat_b = rng.standard_normal(20_000), rng.standard_normal(20_000)
    eps = epsilon_lower_bound(*threshold_events(stat_a, stat_b, GRID), delta=1e-5,
                              alpha=ALPHA)
    assert eps <= 0.0


def test_the_audit_is_valid_and_has_power_on_known_mechanisms():
    """On exactly known mechanisms the bound stays below the truth and gets close to it.

    Measured (T = 20,000 per side, alpha = 1e-4, three seeds): randomized response at
    epsilon 1 gives 0.93 to 0.94; a Gaussian mechanism with shift / std = 2 (true epsilon 10.0
    at delta 1e-5) gives 3.8 to 4.1, about what 20,000 trials can show: an event that D
    never produces still has an upper bound near 13 / T on its probability.
    """
    rng = np.random.default_rng(1)
    trials = 20_000
    # Randomized response: report the bit with probability e / (1 + e), epsilon = 1 exactly.
    keep = math.e / (1 + math.e)
    out_a = rng.random(trials) < keep  # the bit is 1 in D'
    out_b = rng.random(trials) >= keep  # and 0 in D
    eps_rr = epsilon_lower_bound(np.stack([out_a, ~out_a]), np.stack([out_b, ~out_b]),
                                 delta=0.0, alpha=ALPHA)
    assert 0.8 < eps_rr <= 1.0
    # Gaussian mechanism: the analytic epsilon is exact (Balle and Wang, 2018).
    mu, delta = 2.0, 1e-5
    stat_a, stat_b = mu + rng.standard_normal(trials), rng.standard_normal(trials)
    eps_gauss = epsilon_lower_bound(*threshold_events(stat_a, stat_b, GRID), delta,
                                    alpha=ALPHA)
    assert 3.0 < eps_gauss <= analytic_gaussian_epsilon(1 / mu, delta)


# --------------------------------------------------------- the histogram release
HIST_EPSILON, HIST_SHARE, HIST_DELTA = 2.0, 0.5, 1e-5  # the release alone claims (1, 1e-5)
HIST_COLUMNS = [
    ColumnDomain("categorical", categories=["a", "b", "c"], nullable=True),
    ColumnDomain("boolean"),
    ColumnDomain("numerical", min=0, max=3, integer=True),
    ColumnDomain("numerical", min=0.0, max=1.0),
]
HIST_ROWS = [(0, 1, 0, 0.10), (0, 0, 1, 0.50), (1, 1, 2, 0.90), (2, 0, 3, 0.0), (1, 0, 3, 1.0)]
HIST_EXTRA = (1, 1, 2, 0.37)  # D' = D + this row


def _bins(rows: list[tuple]) -> list[np.ndarray]:
    """Each row's bin in every histogram, through the synthesizer's own binning."""
    specs = [histogram_spec(f"c{j}", col) for j, col in enumerate(HIST_COLUMNS)]
    values = np.array(rows, dtype=float).T
    return [bin_index(spec, v, np.zeros(len(v), bool), col)
            for spec, v, col in zip(specs, values, HIST_COLUMNS, strict=True)]


def _histogram_statistic(indices: list[np.ndarray], z: float, trials: int) -> np.ndarray:
    """Sum of the noisy counts of the extra row's bins: the likelihood-ratio statistic."""
    specs = [histogram_spec(f"c{j}", col) for j, col in enumerate(HIST_COLUMNS)]
    extra = [int(b[0]) for b in _bins([HIST_EXTRA])]
    noise = SecureNoise()
    out = np.empty(trials)
    for t in range(trials):
        marginals = release_marginals(specs, indices, z, noise)[0]
        out[t] = sum(m.noisy_counts[k] for m, k in zip(marginals, extra, strict=True))
    return out


def _audit_histograms(under_noise: float, trials: int) -> tuple[float, float]:
    ledger = PrivacyLedger(HIST_EPSILON, HIST_DELTA)
    z = ledger.gaussian_noise(HIST_SHARE) * under_noise
    small, big = _bins(HIST_ROWS), _bins(HIST_ROWS + [HIST_EXTRA])
    stat_big = _histogram_statistic(big, z, trials)
    stat_small = _histogram_statistic(small, z, trials)
    extra = [int(b[0]) for b in _bins([HIST_EXTRA])]
    centre = sum(int((b == k).sum()) for b, k in zip(small, extra, strict=True))
    # The statistic under D: its exact counts plus m noises of std z sqrt(m), so std m z.
    thresholds = centre + GRID * len(HIST_COLUMNS) * z
    eps = epsilon_lower_bound(*threshold_events(stat_big, stat_small, thresholds),
                              ledger.accountant_delta, alpha=ALPHA)
    return eps, HIST_SHARE * HIST_EPSILON


@pytest.mark.parametrize("under_noise", [1.0, 0.1])
def test_histogram_release_audit(under_noise):
    """The release alone claims (1.0, 1e-5): z = 3.73 from the ledger's share.

    Measured (T = 600 per side): real noise -0.02 (no evidence; the best event would need
    P[D] ~ 1e-4 to be seen, far beyond 600 trials); a tenth of the noise 2.5 to 2.7. In 400
    simulations of this audit with Gaussian noise the negative control gave 2.22 at the
    lowest (mean 2.53, sd 0.14), so it fails to flag with negligible probability.
    """
    eps, claimed = _audit_histograms(under_noise, trials=600)
    if under_noise == 1.0:
        assert eps <= claimed
    else:  # the audit flags a release with a tenth of the claimed noise
        assert eps > claimed


@pytest.mark.slow
@pytest.mark.parametrize("under_noise", [1.0, 0.1])
def test_histogram_release_audit_many_trials(under_noise):
    """Measured (T = 10,000 per side, about 65 s each): real 0.21, a tenth of the noise 4.64."""
    eps, claimed = _audit_histograms(under_noise, trials=10_000)
    assert (eps <= claimed) if under_noise == 1.0 else (eps > claimed)


# ------------------------------------------------------------------------ DP-SGD
SGD_EPSILON, SGD_DELTA = 1.0, 1e-5
SGD_RATE, SGD_STEPS, CLIP = 0.5, 3, 1.0
N_BASE = 9
CANARY = torch.tensor([10.0, 0.0], dtype=torch.float64)  # gradient 10 e_1, clipped to C e_1


def _sgd_rows(with_canary: bool) -> torch.Tensor:
    """Rows whose gradients are orthogonal to the canary's (a Dirac canary), then the canary."""
    base = torch.zeros(N_BASE, 2, dtype=torch.float64)
    base[:, 1] = torch.linspace(-0.9, 0.9, N_BASE)
    return torch.cat([base, CANARY[None]]) if with_canary else base


def _sgd_statistic(x: torch.Tensor, sigma: float, trials: int) -> np.ndarray:
    """Final weight, projected on the canary's direction, of ``trials`` independent trainings.

    The model is one ``nn.Linear(2, 1)`` with loss ``w . x_i``, so row i's gradient is
    ``x_i``; plain SGD from ``w = 0`` at learning rate 1 leaves ``-w_T . e_1`` times the
    expected batch size equal to the sum over steps of the noisy clipped sums along e_1.
    """
    noise = SecureNoise()
    model = nn.Linear(2, 1, bias=False, dtype=torch.float64)
    expected = SGD_RATE * N_BASE  # public, the same for both neighbours
    step = DPSGDStep(model, CLIP, sigma, expected, noise=noise)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    out = np.empty(trials)
    for t in range(trials):
        with torch.no_grad():
            model.weight.zero_()
        for idx in poisson_batches(len(x), SGD_RATE, SGD_STEPS, noise):
            optimizer.zero_grad()
            if len(idx) == 0:
                step.step_empty()
            else:
                with step.record():
                    losses = model(x[idx]).squeeze(1)
                step.step(losses)
            optimizer.step()
        out[t] = -float(model.weight.detach()[0, 0]) * expected
    return out


def _claimed_sgd() -> tuple[float, PrivacyLedger]:
    """Sigma from the ledger for the audited run; plan's public inputs match it at 1,000 rows."""
    ledger = PrivacyLedger(SGD_EPSILON, SGD_DELTA)
    ledger.plan([], batch_size=round(SGD_RATE * 1000), epochs=SGD_RATE * SGD_STEPS)
    sigma = ledger.dpsgd_noise(SGD_RATE, SGD_STEPS)
    ledger.record(Release("DP-SGD", "clipped gradients", CLIP, sigma, SGD_RATE, SGD_STEPS))
    ledger.close()
    return sigma, ledger


def test_the_sgd_statistic_is_the_canary_count_without_noise(float64):
    """With sigma = 0 the statistic is exactly C times the steps that sampled the canary."""
    stat_small = _sgd_statistic(_sgd_rows(False), 0.0, 20)
    stat_big = _sgd_statistic(_sgd_rows(True), 0.0, 20)
    assert np.all(stat_small == 0.0)
    counts = np.round(stat_big / CLIP)
    np.testing.assert_allclose(stat_big, counts * CLIP, rtol=0, atol=1e-6)
    assert set(counts) <= set(range(SGD_STEPS + 1))


def _audit_sgd(under_noise: float, trials: int) -> tuple[float, float]:
    sigma, ledger = _claimed_sgd()
    sigma *= under_noise
    stat_big = _sgd_statistic(_sgd_rows(True), sigma, trials)
    stat_small = _sgd_statistic(_sgd_rows(False), sigma, trials)
    thresholds = GRID * sigma * CLIP * math.sqrt(SGD_STEPS)
    eps = epsilon_lower_bound(*threshold_events(stat_big, stat_small, thresholds),
                              ledger.accountant_delta, alpha=ALPHA)
    return eps, ledger.epsilon_spent()


@pytest.mark.parametrize("under_noise", [1.0, 0.1])
def test_dpsgd_audit(float64, under_noise):
    """Three Poisson steps at q = 0.5, claimed (1.0, 1e-5) with sigma = 4.44 from the ledger.

    Measured (T = 1,000 per side): real sigma -0.015 (no evidence); a tenth of it 2.2 to
    2.5. In 400 simulations of this audit (the statistic's exact law: C Binomial(3, q) plus
    Gaussian noise) the negative control gave 1.96 at the lowest (mean 2.47, sd 0.17).
    """
    eps, claimed = _audit_sgd(under_noise, trials=1_000)
    assert claimed <= SGD_EPSILON * (1 + 1e-9)
    if under_noise == 1.0:
        assert eps <= claimed
    else:  # the audit flags training with a tenth of the claimed noise
        assert eps > claimed


@pytest.mark.slow
@pytest.mark.parametrize("under_noise", [1.0, 0.1])
def test_dpsgd_audit_many_trials(float64, under_noise):
    """Measured (T = 5,000 per side, about 50 s each): real 0.06, a tenth of sigma 3.82."""
    eps, claimed = _audit_sgd(under_noise, trials=5_000)
    assert (eps <= claimed) if under_noise == 1.0 else (eps > claimed)
