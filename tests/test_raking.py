"""Category weights (skdpflow.raking): raking to released masses, rejection sampling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtr

from skdpflow.raking import CAP_QUANTILE, CategoryWeights, _weighted_quantile


def _pool(n: int, seed: int) -> np.ndarray:
    """Three correlated latent columns, the first two off N(0, 1) (a flow that missed its
    marginals); columns 0 and 1 are read as categories."""
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, 0.6, 0.5], [0.6, 1.0, 0.3], [0.5, 0.3, 1.0]])
    z = rng.multivariate_normal(np.zeros(3), cov, size=n)
    return z * np.array([1.3, 0.8, 1.0]) + np.array([0.3, -0.2, 0.0])


# The released masses: the cells' widths in u.
TARGETS = [np.array([0.3, 0.3, 0.4]), np.array([0.55, 0.45])]


@pytest.fixture(scope="module")
def raked():
    edges = [np.concatenate([[0.0], np.cumsum(t)]) for t in TARGETS]
    edges[0][-1] = edges[1][-1] = 1.0
    pool = _pool(200_000, 0)
    return CategoryWeights.fit(pool, [0, 1], edges), edges


def test_raking_reaches_the_released_masses_on_the_flows_rows(raked):
    weights, edges = raked
    pool = _pool(200_000, 0)
    w = np.exp(weights.log_weights(pool))
    for d, (e, t) in enumerate(zip(edges, TARGETS)):
        cells = np.clip(np.searchsorted(e, ndtr(pool[:, d]), side="right") - 1, 0, len(t) - 1)
        share = np.bincount(cells, weights=w, minlength=len(t)) / w.sum()
        # Raked under the cap: the capped weights give the released masses.
        np.testing.assert_allclose(share, t, atol=1e-3)
        raw = np.bincount(cells, minlength=len(t)) / len(pool)
        assert np.abs(raw - t).max() > 0.04  # the pool alone is off


def test_rejection_sampling_draws_the_weighted_model_with_rows_kept_whole(raked):
    weights, edges = raked
    fresh = _pool(400_000, 1)
    rng = np.random.default_rng(2)
    kept = fresh[weights.keep(fresh, rng.random(len(fresh)))]
    assert 0.2 < len(kept) / len(fresh) == pytest.approx(weights.acceptance, rel=0.02)
    for d, (e, t) in enumerate(zip(edges, TARGETS)):
        cells = np.clip(np.searchsorted(e, ndtr(kept[:, d]), side="right") - 1, 0, len(t) - 1)
        np.testing.assert_allclose(np.bincount(cells, minlength=len(t)) / len(kept), t,
                                   atol=0.01)
    # Rows are kept whole: given its categories, a kept row's other column is distributed
    # as in the flow (weights depend on the categories only).
    cells = lambda z: (np.searchsorted(edges[0], ndtr(z[:, 0]), side="right") * 10  # noqa
                       + np.searchsorted(edges[1], ndtr(z[:, 1]), side="right"))
    for combo in np.unique(cells(kept)):
        a = fresh[cells(fresh) == combo, 2]
        b = kept[cells(kept) == combo, 2]
        if len(b) > 2000:
            assert abs(a.mean() - b.mean()) < 0.05


def test_the_normaliser_is_the_mean_capped_weight(raked):
    weights, _ = raked
    fresh = _pool(400_000, 3)
    assert np.mean(np.exp(weights.log_weights(fresh))) == pytest.approx(
        np.exp(weights.log_norm), rel=0.01)


def test_log_weights_match_a_row_by_row_loop(raked):
    weights, _ = raked
    z = _pool(300, 4)
    slow = []
    for row in z:
        total = 0.0
        for d, e, f in zip(weights.dims, weights.edges, weights.log_factors):
            u = ndtr(row[d])
            k = max(i for i in range(len(e) - 1) if e[i] <= u) if u < 1 else len(e) - 2
            total += f[k]
        slow.append(min(total, weights.log_cap))
    np.testing.assert_allclose(weights.log_weights(z), slow, rtol=0, atol=1e-12)


def test_dict_round_trip(raked):
    weights, _ = raked
    again = CategoryWeights.from_dict(weights.to_dict())
    z = _pool(100, 5)
    np.testing.assert_array_equal(again.log_weights(z), weights.log_weights(z))
    assert again.log_norm == weights.log_norm and again.log_cap == weights.log_cap


def test_the_cap_is_the_quantile_of_the_weights_and_costs_no_fit(raked):
    weights, _ = raked
    pool = _pool(200_000, 0)
    raw = np.asarray(sum(f[c] for c, f in zip(
        [np.clip(np.searchsorted(e, ndtr(pool[:, d]), side="right") - 1, 0, len(e) - 2)
         for d, e in zip(weights.dims, weights.edges)], weights.log_factors)))
    assert weights.log_cap == pytest.approx(np.quantile(raw, CAP_QUANTILE), abs=1e-12)
    # (Few combinations of cells: many rows sit at the cap itself.)
    assert np.mean(raw > weights.log_cap) <= 1 - CAP_QUANTILE <= np.mean(raw >= weights.log_cap)
    assert weights.acceptance > 0.5


def test_weighted_quantile_is_the_quantile_of_the_repeated_values():
    rng = np.random.default_rng(0)
    for _ in range(100):
        values = rng.normal(size=int(rng.integers(1, 30)))
        counts = rng.integers(1, 5, size=len(values))
        q = float(rng.random())
        assert _weighted_quantile(values, counts, q) == pytest.approx(
            np.quantile(np.repeat(values, counts), q), abs=1e-12)


EDGES_HARD = np.array([0.0, 1e-12, 1e-7, 0.25, 0.5, 0.8961627728277362, 0.9093658586913849,
                       1.0 - 1e-7, 1.0 - 1e-12, 1.0])


def test_float32_thresholds_place_values_in_the_cells_the_decode_locates() -> None:
    """The early rejection compares the flow's float32 values with each edge's least float32
    value above it, instead of ndtr(value) with the edge: the slow twin is the decode's own
    location (ndtr in float64, then searchsorted), on random values, on every threshold and
    its neighbours, on tiny cells at both ends, and on non-finite values."""
    from skdpflow.raking import _cells, value_thresholds

    f32 = np.dtype(np.float32)
    t = value_thresholds(EDGES_HARD, f32)
    assert t.dtype == f32 and t[0] == -np.inf and np.all(np.diff(t[1:]) > 0)
    rng = np.random.default_rng(0)
    finite = t[np.isfinite(t)]
    x = np.concatenate([
        (rng.standard_normal(300_000) * 3).astype(f32),
        finite, np.nextafter(finite, np.float32(-np.inf)), np.nextafter(finite, np.float32(np.inf)),
        np.array([np.nan, np.inf, -np.inf, 40.0, -40.0, 0.0, -0.0], dtype=f32)])
    expected = _cells(x.astype(float), EDGES_HARD)
    got = np.clip(np.searchsorted(t, x, side="right") - 1, 0, len(EDGES_HARD) - 2)
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(expected)) == len(EDGES_HARD) - 1  # every cell is reached


def test_keep_values_keeps_the_rows_keep_keeps_in_either_dtype(raked) -> None:
    """keep_values on float32 rows (thresholds) and on float64 rows (where ndtr does not
    order neighbouring values exactly, it falls back to keep) against keep on the same
    values in float64; the thresholds are not part of the saved state."""
    weights, _ = raked
    rng = np.random.default_rng(3)
    z = _pool(50_000, 7).astype(np.float32)
    uniforms = rng.random(len(z))
    expected = weights.keep(z.astype(float), uniforms)
    assert 0.2 < expected.mean() < 0.95
    np.testing.assert_array_equal(weights.keep_values(z, uniforms), expected)
    np.testing.assert_array_equal(weights.keep_values(z.astype(float), uniforms), expected)
    assert np.dtype(np.float32) in weights._thresholds
    assert "_thresholds" not in weights.to_dict()
