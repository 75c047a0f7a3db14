"""The DP copula release (skdpflow/privacy/copula.py) and its place in the fit."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import ndtr as _ndtr
from scipy.special import ndtri as _ndtri
from scipy.stats import chi2, norm

from skdpflow import DPFlowSynthesizer, synthesizer
from skdpflow.privacy.copula import (
    CLIP,
    ROW_BOUND_FACTOR,
    cell_means,
    cell_reliability,
    clipped_scores,
    posterior_means,
    release_correlation,
    row_bound,
    second_moments,
    shrunk_correlation,
)
from skdpflow.privacy.randomness import SeededNoise


def _cells(rng: np.random.Generator, n: int, d: int, extreme: float = 0.3
           ) -> tuple[np.ndarray, np.ndarray]:
    """Random cells; a share of them at the ends of [0, 1] (scores clipped to +-CLIP), some
    whole-interval (score 0), some points."""
    a, b = rng.random((n, d)), rng.random((n, d))
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    ends = rng.random((n, d)) < extreme
    edge = (rng.random((n, d)) < 0.5).astype(float)
    lo[ends], hi[ends] = edge[ends], edge[ends]
    whole = rng.random((n, d)) < 0.1
    lo[whole], hi[whole] = 0.0, 1.0
    point = rng.random((n, d)) < 0.2
    hi[point] = lo[point]
    return lo, hi


class _Spy:
    """A PrivacyNoise that records every normal draw (and makes no other)."""

    def __init__(self, seed: int = 0) -> None:
        self.inner = SeededNoise(seed)
        self.draws: list[tuple[tuple, float, torch.Tensor]] = []

    def normal(self, shape, std, **kwargs):
        out = self.inner.normal(shape, std, **kwargs)
        self.draws.append((tuple(shape), std, out.clone()))
        return out

    def __getattr__(self, name):
        raise AssertionError(f"the copula release drew {name!r}")


# ----------------------------------------------------------------- sensitivity
@pytest.mark.parametrize("d", [2, 3, 10])
@pytest.mark.parametrize("row_bound_share", [None, 0.6])
def test_one_row_moves_the_released_vector_by_at_most_the_sensitivity(d, row_bound_share):
    """Brute force over add/remove of one row: the released vector (pairs, squares / sqrt 2)
    moves by at most B / sqrt(2), its upper triangle alone too, and a row with every score
    clipped reaches the bound exactly (it is tight). ``B = d``, or a smaller bound (the
    copula-only model's), cell-mean scores then."""
    rng = np.random.default_rng(d)
    b = None if row_bound_share is None else row_bound_share * d
    means = b is not None
    bound = (d if b is None else b) / math.sqrt(2.0)
    pairs = d * (d - 1) // 2
    lo, hi = _cells(rng, 50, d)
    base = second_moments(lo, hi, means, b)
    assert base.shape == (pairs + d,)
    worst = worst_upper = 0.0
    for _ in range(300):
        x_lo, x_hi = _cells(rng, 1, d, extreme=rng.random())
        added = second_moments(np.vstack([lo, x_lo]), np.vstack([hi, x_hi]), means, b)
        removed = second_moments(lo[1:], hi[1:], means, b)  # removing a row of D
        for diff in (added - base, base - removed):
            worst = max(worst, float(np.linalg.norm(diff)))
            worst_upper = max(worst_upper, float(np.linalg.norm(diff[:pairs])))
    assert worst <= bound * (1 + 1e-12)
    assert worst_upper <= bound * (1 + 1e-12)
    assert worst > 0.5 * bound
    # Every coordinate at an end: scores clipped to +-3, the row scaled to ||z||^2 = B.
    edge = (rng.random((1, d)) < 0.5).astype(float)
    added = second_moments(np.vstack([lo, edge]), np.vstack([hi, edge]), means, b)
    corner = added - base
    assert np.linalg.norm(corner) == pytest.approx(bound, rel=1e-9)
    if b is None:
        assert np.linalg.norm(corner[:pairs]) == pytest.approx(math.sqrt((d * d - d) / 2),
                                                               rel=1e-9)


def test_the_copula_only_row_bound_is_the_cell_means_expected_norm_and_sets_the_noise():
    """``B = ROW_BOUND_FACTOR * sum a_i`` (at most d): for latent normal rows the cell means'
    mean squared norm is ``sum a_i`` whatever the correlation (here 0.9 between two
    columns); the release's sensitivity and noise follow B."""
    edges = [np.array([0.0, 0.88, 1.0]), np.array([0.0, 0.3, 0.5, 1.0]),
             np.linspace(0.0, 1.0, 33)]

    def cells(z):
        u = norm.cdf(z)
        k = [np.clip(np.searchsorted(e, u[:, j], side="right") - 1, 0, len(e) - 2)
             for j, e in enumerate(edges)]
        lo = np.stack([e[kj] for e, kj in zip(edges, k)], 1)
        hi = np.stack([e[kj + 1] for e, kj in zip(edges, k)], 1)
        return lo, hi

    a = cell_reliability(cells, 3)
    assert a[0] < 0.5 < a[1] < 0.9 < a[2]  # a binary column keeps least
    assert row_bound(a) == pytest.approx(ROW_BOUND_FACTOR * a.sum())
    assert row_bound(np.ones(4)) <= 4
    rng = np.random.default_rng(3)
    latent = rng.standard_normal((40_000, 3))
    latent[:, 1] = 0.9 * latent[:, 0] + math.sqrt(1 - 0.81) * latent[:, 1]
    m = np.clip(cell_means(*cells(latent)), -CLIP, CLIP)
    assert np.square(m).sum(1).mean() == pytest.approx(a.sum(), rel=0.02)
    lo, hi = cells(latent[:500])
    spy = _Spy()
    _, info, release = release_correlation(lo, hi, 2.0, spy, 500.0, reliability=a,
                                           bound=row_bound(a))
    [(_, std, _)] = spy.draws
    assert release.l2_sensitivity == pytest.approx(row_bound(a) / math.sqrt(2))
    assert std == pytest.approx(2.0 * row_bound(a) / math.sqrt(2))
    assert info["row_bound"] == release.details["row_bound"] == pytest.approx(row_bound(a))
    z = clipped_scores(lo, hi, means=True, bound=row_bound(a))
    assert np.square(z).sum(1).max() <= row_bound(a) * (1 + 1e-12)


def test_scores_are_clipped_and_rows_bounded():
    rng = np.random.default_rng(0)
    lo, hi = _cells(rng, 500, 6, extreme=0.8)
    z = clipped_scores(lo, hi)
    assert np.abs(z).max() <= CLIP
    assert np.square(z).sum(1).max() <= 6 * (1 + 1e-12)
    # Rows inside the bound are the midpoint scores themselves.
    small = np.full((1, 6), 0.4), np.full((1, 6), 0.6)
    np.testing.assert_allclose(clipped_scores(*small), np.zeros((1, 6)), atol=1e-15)


# ------------------------------------------------------------------- the noise
def test_noise_comes_from_the_privacy_noise_with_the_declared_std():
    rng = np.random.default_rng(1)
    d, n_hat = 30, 400.0
    lo, hi = _cells(rng, 400, d)
    spy = _Spy()
    numpy_state = np.random.get_state()
    corr, info, release = release_correlation(lo, hi, 2.0, spy, n_hat, budget_share=0.2)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()  # no global RNG
    [(shape, std, drawn)] = spy.draws
    m = d * (d - 1) // 2
    assert shape == (m + d,) and std == pytest.approx(2.0 * d / math.sqrt(2))
    assert release.l2_sensitivity == pytest.approx(d / math.sqrt(2))
    assert release.noise_multiplier == 2.0 and release.sample_rate == 1.0
    assert release.steps == 1 and release.budget_share == 0.2
    assert info["noise_std"] == std and info["pairs"] == m
    assert drawn.std().item() == pytest.approx(std, rel=0.15)  # 435 draws
    # The release is the exact sums plus exactly that draw, post-processed.
    expected, _ = shrunk_correlation(second_moments(lo, hi) + drawn.numpy(), std, n_hat, d)
    np.testing.assert_array_equal(corr, expected)
    # A different draw gives a different matrix (the noise reaches the output).
    other, _, _ = release_correlation(lo, hi, 2.0, SeededNoise(5), n_hat)
    assert not np.allclose(other, corr)


def test_zero_noise_gives_the_exact_clipped_correlation():
    rng = np.random.default_rng(2)
    lo, hi = _cells(rng, 300, 4)
    corr, info, _ = release_correlation(lo, hi, 0.0, SeededNoise(0), 300.0)
    z = clipped_scores(lo, hi)
    raw = z.T @ z
    raw = raw / np.sqrt(np.outer(np.diag(raw), np.diag(raw)))  # uncentred correlation
    assert info["shrinkage"] == 1.0 and info["variance_pooling"] == 0.0
    assert np.linalg.eigvalsh(raw).min() > 1e-3  # no eigenvalue floor here
    np.testing.assert_allclose(corr, raw, rtol=1e-12)
    # The copula-only model's estimate: cell-mean scores, each pair divided by the root of
    # its dimensions' reliabilities.
    a = np.array([0.9, 0.8, 0.7, 0.95])
    scaled, info, release = release_correlation(lo, hi, 0.0, SeededNoise(0), 300.0,
                                                reliability=a)
    z = clipped_scores(lo, hi, means=True)
    raw = z.T @ z
    raw = raw / np.sqrt(np.outer(np.diag(raw), np.diag(raw)))
    assert not np.allclose(raw, corr, atol=1e-3)  # other scores than the midpoints'
    expected = np.clip(raw / np.sqrt(np.outer(a, a)), -1, 1)
    np.fill_diagonal(expected, 1.0)
    assert np.linalg.eigvalsh(expected).min() > 1e-3
    np.testing.assert_allclose(scaled, expected, rtol=1e-12)
    assert info["scores"] == "cell-mean" and "cell-mean scores" in release.reads


def test_the_cell_mean_scores_keep_the_sensitivity_bound():
    # Clipped and row-scaled like the midpoints: a row's ||z||^2 stays within d.
    rng = np.random.default_rng(11)
    lo, hi = _cells(rng, 2000, 7)
    for means in (False, True):
        z = clipped_scores(lo, hi, means=means)
        assert np.abs(z).max() <= CLIP + 1e-12
        assert np.square(z).sum(axis=1).max() <= 7 * (1 + 1e-12)
    v = second_moments(lo[:1], hi[:1], means=True)
    assert np.linalg.norm(v) <= 7 / math.sqrt(2) * (1 + 1e-12)


def test_fewer_than_two_dimensions_release_nothing():
    for d in (0, 1):
        lo = np.zeros((10, d))
        corr, _, release = release_correlation(lo, lo, 1.0, _Spy(), 10.0)
        assert release is None and corr.shape == (d, d)
        np.testing.assert_array_equal(corr, np.eye(d))


def test_cell_means_are_the_normal_means_of_the_cells():
    rng = np.random.default_rng(8)
    a, b = np.sort(rng.random((2, 50)), axis=0)
    x = rng.normal(size=2_000_000)
    u = _ndtr(x)
    for lo, hi in zip(a[:5], b[:5]):
        inside = (u >= lo) & (u <= hi)
        m = cell_means(np.array([lo]), np.array([hi]))[0]
        assert m == pytest.approx(x[inside].mean(), abs=4 * x[inside].std() / inside.sum() ** 0.5)
    # Whole-interval cells have mean 0; points their own score; the ends are finite.
    np.testing.assert_allclose(cell_means(np.array([0.0, 0.3, 0.0, 0.9]),
                                          np.array([1.0, 0.3, 0.1, 1.0])),
                               [0.0, _ndtri(0.3), -1.754983319324, 1.754983319324],
                               atol=1e-9)


def _cut(z: np.ndarray, cuts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A latent column's cells: between ``cuts`` (a coarse column), or points (None)."""
    u = _ndtr(z)
    if cuts is None:
        return u, u
    k = np.clip(np.searchsorted(cuts, u, side="right") - 1, 0, len(cuts) - 2)
    return cuts[k], cuts[k + 1]


def _coarse_release(rho: float, cuts: list, n: int = 40_000, seed: int = 9, others: int = 10):
    """The latent pair (correlation ``rho``) cut by ``cuts``, beside ``others`` independent
    numerical columns (a table's width: the rows' norm bound then binds as it does there)."""
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=n)
    z2 = rho * z1 + math.sqrt(1 - rho**2) * rng.normal(size=n)
    cuts = cuts + [None] * others

    def cells(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs = [_cut(z[:, j], c) for j, c in enumerate(cuts)]
        return np.stack([p[0] for p in pairs], 1), np.stack([p[1] for p in pairs], 1)

    lo, hi = cells(np.column_stack([z1, z2, rng.normal(size=(n, others))]))
    a = cell_reliability(cells, 2 + others)
    corr, _, _ = release_correlation(lo, hi, 0.0, SeededNoise(0), float(n), reliability=a)
    return corr[0, 1], lo, hi, a


@pytest.mark.parametrize("threshold", [0.5, 0.88])
def test_a_coarse_column_keeps_its_latent_correlation(threshold):
    # One binary column (a latent normal cut at `threshold`) and one numerical column (its
    # latent value, a point cell), latent correlation 0.6; no noise.
    rho = 0.6
    kept, lo, hi, a = _coarse_release(rho, [np.array([0.0, threshold, 1.0]), None])
    # The binary column's reliability is sum_k P_k m_k^2 of its two cells.
    c = _ndtri(threshold)
    pdf = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    assert a[0] == pytest.approx(pdf**2 / threshold + pdf**2 / (1 - threshold), rel=0.03)
    assert a[1] == pytest.approx(1.0, abs=0.05)
    # (Within 0.05: the rows' norm bound scales rows with a rare value a little more.)
    assert kept == pytest.approx(rho, abs=0.05)
    # The scores' own (Pearson) correlation is attenuated: what the release used to keep.
    z = clipped_scores(lo, hi, means=True)
    assert np.corrcoef(z.T)[0, 1] < 0.85 * rho


def test_two_binary_columns_keep_about_their_latent_correlation():
    kept, lo, hi, a = _coarse_release(0.4, [np.array([0.0, 0.3, 1.0]),
                                            np.array([0.0, 0.8, 1.0])], seed=10)
    assert a[0] < 0.7 and a[1] < 0.7
    assert kept == pytest.approx(0.4, abs=0.05)
    assert np.corrcoef(clipped_scores(lo, hi, means=True).T)[0, 1] < 0.4 - 0.08


def test_columns_of_more_than_two_cells_keep_about_their_latent_correlation():
    # Three categories, each an interval of the latent dimension: corrected as well.
    cuts = np.array([0.0, 0.2, 0.7, 1.0])
    kept, lo, hi, a = _coarse_release(0.4, [cuts, cuts], seed=10)
    assert a[0] < 0.9 and a[1] < 0.9
    assert kept == pytest.approx(0.4, abs=0.05)
    assert np.corrcoef(clipped_scores(lo, hi, means=True).T)[0, 1] < 0.4 - 0.04


# ----------------------------------------------------------- post-processing
def test_shrinkage_takes_pure_noise_to_about_zero():
    rng = np.random.default_rng(3)
    d, n_hat, std = 30, 1000.0, 500.0
    m = d * (d - 1) // 2
    noisy = rng.normal(0.0, std, m)  # no signal at all
    squares = (0.7 * n_hat + rng.normal(0.0, std, d)) / math.sqrt(2)
    corr, info = shrunk_correlation(np.concatenate([noisy, squares]), std, n_hat, d)
    tau = std / n_hat
    assert info["shrinkage"] < 0.25
    off = corr[np.triu_indices(d, 1)]
    assert np.abs(off).mean() < 0.25 * tau
    assert np.abs(off).mean() < 0.25 * np.abs(noisy / n_hat).mean()
    # The squares' spread is noise too: they are pooled to their mean.
    assert info["variance_pooling"] > 0.5


def test_shrinkage_keeps_a_strong_signal():
    rng = np.random.default_rng(4)
    d, n_hat, std = 5, 10_000.0, 100.0  # tau = 0.01
    truth = np.zeros(d * (d - 1) // 2)
    truth[0] = 0.6  # pair (0, 1)
    noisy = truth * n_hat + rng.normal(0.0, std, len(truth))
    squares = (n_hat + rng.normal(0.0, std, d)) / math.sqrt(2)
    corr, info = shrunk_correlation(np.concatenate([noisy, squares]), std, n_hat, d)
    assert info["shrinkage"] > 0.9
    assert corr[0, 1] == pytest.approx(0.6, abs=0.05)
    assert np.abs(corr[np.triu_indices(d, 1)][1:]).max() < 0.05


def _sparse_release(rng: np.random.Generator, d: int, strong: dict, n_hat: float, std: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Noisy release of unit-variance dimensions whose only dependence is ``strong``."""
    pairs = list(zip(*np.triu_indices(d, 1)))
    truth = np.array([strong.get(p, 0.0) for p in pairs])
    noisy = truth * n_hat + rng.normal(0.0, std, len(truth))
    squares = (n_hat + rng.normal(0.0, std, d)) / math.sqrt(2)
    return np.concatenate([noisy, squares]), truth


def test_sparse_strong_pairs_are_kept_where_one_factor_would_shrink_them():
    # bank_marketing's shape at 1,000 rows: 20 dimensions, 190 pairs, noise 0.1 per pair,
    # a few pairs near 1 and the rest near 0.
    d, n_hat, std = 20, 1000.0, 100.0
    tau = std / n_hat
    strong = {(0, 1): 0.9, (2, 3): 0.8, (4, 5): -0.8, (6, 7): 0.7, (8, 9): 0.6}
    upper = np.triu_indices(d, 1)
    is_strong = np.array([p in strong for p in zip(*upper)])
    errors, js_errors = [], []
    for seed in range(5):
        noisy, truth = _sparse_release(np.random.default_rng(seed), d, strong, n_hat, std)
        corr, info = shrunk_correlation(noisy, std, n_hat, d, reliability=np.ones(d))
        kept = corr[upper]
        # Every strong pair keeps most of its value, with its sign.
        assert np.all(kept[is_strong] * truth[is_strong] > 0.6 * truth[is_strong] ** 2)
        # The noise pairs are pulled to near 0: far under their noise.
        assert np.abs(kept[~is_strong]).mean() < 0.3 * tau
        # One factor for all pairs (the positive-part James-Stein rule) on the same release.
        cov = noisy[: len(truth)] / n_hat
        lam = max(0.0, 1 - chi2.ppf(0.99, len(cov)) * tau**2 / np.square(cov).sum())
        assert lam < 0.6  # it would have shrunk the strong pairs by that much
        errors.append(np.square(kept - truth).sum())
        js_errors.append(np.square(lam * cov - truth).sum())
        assert 0 < info["shrinkage"] < 1
    assert np.mean(errors) < 0.5 * np.mean(js_errors)


def test_posterior_means_stay_between_zero_and_the_extremes_and_follow_clear_values():
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.normal(0.0, 0.1, 100), [0.9, -0.7]])
    means = posterior_means(x, 0.1)
    assert means.min() >= min(x.min(), 0.0) and means.max() <= max(x.max(), 0.0)
    assert means[-2] > 0.75 and means[-1] < -0.55
    assert np.abs(means[:100]).mean() < 0.5 * np.abs(x[:100]).mean()
    # With little noise next to the spread of the values, each keeps about its own value.
    clear = rng.uniform(-1.0, 1.0, 200)
    # (The grid is spaced 0.002 here: a mean snaps to within 0.001 of it.)
    np.testing.assert_allclose(posterior_means(clear, 1e-3), clear, atol=3e-3)
    # Post-processing only: the same input, the same output.
    np.testing.assert_array_equal(posterior_means(x, 0.1), means)


def test_posterior_means_weigh_each_value_by_its_own_noise_within_the_span():
    rng = np.random.default_rng(7)
    truth = np.where(rng.random(400) < 0.2, rng.uniform(-0.9, 0.9, 400), 0.0)
    tau = np.where(rng.random(400) < 0.3, 3.0, 0.05)  # a third of the values mostly noise
    x = truth + rng.normal(0.0, 1.0, 400) * tau
    means = posterior_means(x, tau, span=(-1.0, 1.0))
    assert means.min() >= -1.0 and means.max() <= 1.0
    noisy, clear = tau > 1, tau < 1
    # The noisy values go to about the prior's mean; the clear ones keep about their own.
    assert np.abs(means[noisy]).mean() < 0.1
    assert np.square(means[noisy] - truth[noisy]).mean() < 0.1 * np.square(
        np.clip(x[noisy], -1, 1) - truth[noisy]).mean()
    assert np.square(means[clear] - truth[clear]).mean() < 0.8 * np.square(
        x[clear] - truth[clear]).mean()
    # One std for all, as a float or an array, is the same estimate.
    np.testing.assert_array_equal(posterior_means(x, 0.2), posterior_means(x, np.full(400, 0.2)))


def test_pairs_of_nearly_constant_columns_are_not_amplified_into_correlations():
    """kddcup99's failure: many flags with about 1% of rows in one value (``a ~ 0.07``),
    independent of everything. Divided by ``a_i a_j``, their pairs' leftover noise became
    strong spurious correlations; each with its own noise std it goes to about 0, while a
    strong pair between regular dimensions keeps its value."""
    d, n_hat, std = 24, 1000.0, 60.0
    a = np.where(np.arange(d) < 12, 0.07, 1.0)  # 12 rare flags, then 12 regular dimensions
    upper = np.triu_indices(d, 1)
    rare = (upper[0] < 12) & (upper[1] < 12)
    strong = (upper[0] == 12) & (upper[1] == 13)
    spurious = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        truth = np.where(strong, 0.8, 0.0)
        cov = truth * a[upper[0]] * a[upper[1]]  # the cell-mean scores' covariance
        noisy = np.concatenate([cov * n_hat + rng.normal(0.0, std, len(cov)),
                                (a * n_hat + rng.normal(0.0, std, d)) / math.sqrt(2)])
        corr, _ = shrunk_correlation(noisy, std, n_hat, d, reliability=a)
        assert corr[12, 13] == pytest.approx(0.8, abs=0.1)
        spurious.append(np.abs(corr[upper][rare]).mean())
    assert np.mean(spurious) < 0.1


def test_without_reliabilities_the_pairs_get_one_factor():
    # The flow's start (DP-SGD trains from it): the positive-part James-Stein factor.
    d, n_hat, std = 20, 1000.0, 100.0
    tau = std / n_hat
    noisy, truth = _sparse_release(np.random.default_rng(0), d, {(0, 1): 0.9, (2, 3): 0.8},
                                   n_hat, std)
    corr, info = shrunk_correlation(noisy, std, n_hat, d)
    cov = noisy[: len(truth)] / n_hat
    lam = max(0.0, 1 - chi2.ppf(0.99, len(cov)) * tau**2 / np.square(cov).sum())
    assert info["shrinkage"] == pytest.approx(lam, rel=1e-12)
    sharp, _ = shrunk_correlation(noisy, std, n_hat, d, reliability=np.ones(d))
    assert sharp[0, 1] > corr[0, 1] + 0.2  # the strong pair, kept by the fitted prior


def test_the_result_is_always_a_correlation_matrix():
    rng = np.random.default_rng(5)
    for d in (2, 4, 9):
        # Pairs far outside [-1, 1], negative squares.
        noisy = rng.normal(0.0, 3.0, d * (d + 1) // 2) * 100
        corr, _ = shrunk_correlation(noisy, 1.0, 100.0, d)
        np.testing.assert_allclose(np.diag(corr), 1.0, rtol=0, atol=1e-15)
        np.testing.assert_array_equal(corr, corr.T)
        assert np.linalg.eigvalsh(corr).min() > 0
        np.linalg.cholesky(corr)


# --------------------------------------------------------------- in the fit
FAST = {"epochs": 1, "batch_size": 256, "n_stages": 2, "hidden_size": 8, "verbose": False}
PAIR_DOMAIN = {"a": {"type": "numerical", "min": -5, "max": 5},
               "b": {"type": "numerical", "min": -5, "max": 5}}


def _pair(n: int = 3000, rho: float = 0.9, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = rho * a + math.sqrt(1 - rho**2) * rng.normal(size=n)
    return pd.DataFrame({"a": a, "b": b})


def _sample_corr(epsilon: float, copula_fraction: float) -> tuple[float, DPFlowSynthesizer]:
    # A negligible learning rate: what the samples show comes from the releases alone.
    synth = DPFlowSynthesizer(epsilon=epsilon, delta=1e-5, learning_rate=1e-12,
                              copula_fraction=copula_fraction, random_state=0, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        synth.fit(_pair(), domain=PAIR_DOMAIN)
    fake = synth.sample(4000, random_state=1)
    return float(np.corrcoef(fake["a"], fake["b"])[0, 1]), synth


def test_the_fit_reproduces_a_correlation_at_large_epsilon_and_not_at_tiny_epsilon():
    corr, synth = _sample_corr(20.0, 0.2)
    assert corr > 0.7
    report = synth.privacy_report()
    names = [m["name"].split()[0] for m in report["mechanisms"]]
    assert names == ["row", "1-way", "copula", "DP-SGD"]
    copula = report["mechanisms"][2]
    # A share of what the row count left, of the Rényi budget at the ledger's order.
    assert copula["budget_share"] == pytest.approx(0.2 * (1 - 0.02))
    assert copula["rdp_at_order"] == pytest.approx(copula["budget_share"]
                                                   * report["rdp_budget"])
    assert sum(m["budget_share"] for m in report["mechanisms"]) == pytest.approx(1.0)
    assert report["epsilon_spent"] <= 20.0
    base = synth.flow_.base_cholesky.double()
    assert (base @ base.T)[0, 1].item() > 0.7
    assert synth.copula_info_["shrinkage"] > 0.9
    tiny, tiny_synth = _sample_corr(0.005, 0.2)
    assert abs(tiny) < 0.2
    assert tiny_synth.copula_info_["shrinkage"] < 0.5
    # Without the release the same fit samples independent columns.
    off, off_synth = _sample_corr(20.0, 0.0)
    assert abs(off) < 0.1
    assert [m["name"].split()[0] for m in off_synth.privacy_report()["mechanisms"]] == [
        "row", "1-way", "DP-SGD"]
    assert off_synth.copula_info_ == {}
    assert torch.equal(off_synth.flow_.base_cholesky, torch.eye(2))


def test_a_one_column_table_plans_and_charges_no_copula():
    frame = _pair()[["a"]]
    synth = DPFlowSynthesizer(epsilon=1.0, delta=1e-5, random_state=0, **FAST).fit(
        frame, domain={"a": PAIR_DOMAIN["a"]})
    mechanisms = synth.privacy_report()["mechanisms"]
    assert [m["name"].split()[0] for m in mechanisms] == ["row", "1-way", "DP-SGD"]
    # Nothing planned for the copula: the count and the histograms leave DP-SGD the rest.
    assert sum(m["budget_share"] for m in mechanisms) == pytest.approx(1.0)
    assert synth.schedule_.copula_share == 0.0


def test_shares_that_leave_nothing_for_training_raise_before_any_release():
    synth = DPFlowSynthesizer(epsilon=1.0, delta=1e-5, marginals_fraction=0.5,
                              copula_fraction=0.5, **FAST)
    with pytest.raises(ValueError, match="must leave a share"):
        synth.fit(_pair(), domain=PAIR_DOMAIN)
    # copula_fraction=0 leaves the same shares valid.
    synth.set_params(copula_fraction=0.0).fit(_pair(), domain=PAIR_DOMAIN)


def test_the_base_correlation_survives_save_and_load(tmp_path):
    _, synth = _sample_corr(20.0, 0.2)
    synth.save(tmp_path / "m.skdpflow")
    back = DPFlowSynthesizer.load(tmp_path / "m.skdpflow")
    assert torch.equal(back.flow_.base_cholesky, synth.flow_.base_cholesky)
    assert back.copula_info_ == synth.copula_info_
    pd.testing.assert_frame_equal(back.sample(100, random_state=3),
                                  synth.sample(100, random_state=3))
    frame = _pair(50)
    np.testing.assert_array_equal(back.score_samples(frame), synth.score_samples(frame))


def test_a_file_of_the_previous_format_is_refused_cleanly(tmp_path):
    _, synth = _sample_corr(20.0, 0.2)
    synth.save(tmp_path / "m.skdpflow")
    state = torch.load(tmp_path / "m.skdpflow", weights_only=True)
    state["format"] = 3
    del state["flow"]["state"]["base_cholesky"]
    torch.save(state, tmp_path / "old.skdpflow")
    with pytest.raises(ValueError, match="Unsupported model file format 3.*refit"):
        DPFlowSynthesizer.load(tmp_path / "old.skdpflow")


def _binary_pair_fit(epsilon: float, noise_seed: int, monkeypatch) -> DPFlowSynthesizer:
    """A binary column tied to a numerical one (latent correlation 0.9), 2,000 rows, the
    privacy noise seeded (tests only)."""
    monkeypatch.setattr(synthesizer, "SecureNoise", lambda: SeededNoise(noise_seed))
    frame = _pair(2000, rho=0.9)
    frame["b"] = np.where(frame["b"] > 1.0, "yes", "no")
    domain = {"a": PAIR_DOMAIN["a"], "b": {"type": "categorical", "categories": ["no", "yes"]}}
    synth = DPFlowSynthesizer(epsilon=epsilon, random_state=0, verbose=False, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        synth.fit(frame, domain=domain)
    return synth, frame


def test_only_a_fit_that_skips_dp_sgd_releases_the_copula_only_estimate(monkeypatch):
    # At 2,000 rows and epsilon 0.3 the schedule skips DP-SGD and the copula is the model;
    # at epsilon 20 DP-SGD trains from it.
    trained, _ = _binary_pair_fit(20.0, 0, monkeypatch)
    assert trained.schedule_.steps > 0
    assert trained.copula_info_["scores"] == "midpoint"
    sharp, plain = [], []
    for noise_seed in range(4):
        copula_only, frame = _binary_pair_fit(0.3, noise_seed, monkeypatch)
        assert copula_only.schedule_.steps == 0
        assert copula_only.copula_info_["scores"] == "cell-mean"
        release = [r for r in copula_only.ledger_.releases if r.name.startswith("copula")]
        assert "cell-mean scores" in release[0].reads
        real = np.corrcoef(frame["a"], frame["b"] == "yes")[0, 1]
        fake = copula_only.sample(5000, random_state=1)
        sharp.append(np.corrcoef(fake["a"], fake["b"] == "yes")[0, 1] / real)
        # The same fit, the same noise, with the flow's start estimate (midpoint scores,
        # one shrinkage factor) as the model.
        with monkeypatch.context() as m:
            m.setattr(synthesizer, "cell_reliability", lambda *args, **kwargs: None)
            midpoint, _ = _binary_pair_fit(0.3, noise_seed, monkeypatch)
        assert midpoint.copula_info_["scores"] == "midpoint"
        fake = midpoint.sample(5000, random_state=1)
        plain.append(np.corrcoef(fake["a"], fake["b"] == "yes")[0, 1] / real)
    # The binary column keeps more of its link with the numerical one (the midpoint
    # scores' estimate kept 0.23-0.53 of it, the copula-only one 0.45-0.97, 12 fits each).
    assert np.mean(sharp) > 0.6 and np.mean(sharp) > np.mean(plain) + 0.15
