"""The DP copula release (skdpflow/privacy/copula.py) and its place in the fit."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from skdpflow import DPFlowSynthesizer
from skdpflow.privacy.copula import (
    CLIP,
    clipped_scores,
    release_correlation,
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
def test_one_row_moves_the_released_vector_by_at_most_the_sensitivity(d):
    """Brute force over add/remove of one row: the released vector (pairs, squares / sqrt 2)
    moves by at most B / sqrt(2), its upper triangle alone too, and a row with every score
    clipped reaches the bound exactly (it is tight)."""
    rng = np.random.default_rng(d)
    bound = d / math.sqrt(2.0)
    pairs = d * (d - 1) // 2
    lo, hi = _cells(rng, 50, d)
    base = second_moments(lo, hi)
    assert base.shape == (pairs + d,)
    worst = worst_upper = 0.0
    for _ in range(300):
        x_lo, x_hi = _cells(rng, 1, d, extreme=rng.random())
        added = second_moments(np.vstack([lo, x_lo]), np.vstack([hi, x_hi]))
        removed = second_moments(lo[1:], hi[1:])  # removing a row of D
        for diff in (added - base, base - removed):
            worst = max(worst, float(np.linalg.norm(diff)))
            worst_upper = max(worst_upper, float(np.linalg.norm(diff[:pairs])))
    assert worst <= bound * (1 + 1e-12)
    assert worst_upper <= bound * (1 + 1e-12)
    assert worst > 0.5 * bound
    # Every coordinate at an end: scores clipped to +-3, the row scaled to ||z||^2 = d.
    edge = (rng.random((1, d)) < 0.5).astype(float)
    added = second_moments(np.vstack([lo, edge]), np.vstack([hi, edge]))
    corner = added - base
    assert np.linalg.norm(corner) == pytest.approx(bound, rel=1e-9)
    assert np.linalg.norm(corner[:pairs]) == pytest.approx(math.sqrt((d * d - d) / 2),
                                                           rel=1e-9)


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


def test_fewer_than_two_dimensions_release_nothing():
    for d in (0, 1):
        lo = np.zeros((10, d))
        corr, _, release = release_correlation(lo, lo, 1.0, _Spy(), 10.0)
        assert release is None and corr.shape == (d, d)
        np.testing.assert_array_equal(corr, np.eye(d))


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
