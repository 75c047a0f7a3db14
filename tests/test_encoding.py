"""Encoding: RDT on a public skeleton, DP-marginal-shaped cells, exact round trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtri

from skdpflow.domain import Domain
from skdpflow.encoding import (
    TableEncoder,
    TypeLayer,
    dequantize,
    locate_cells,
    typed_column,
)
from skdpflow.marginals import bin_index, histogram_spec, project_simplex, release_marginals
from skdpflow.privacy.randomness import SeededNoise


def _encoder(frame: pd.DataFrame, domain: dict, noise: float = 0.0, seed: int = 0):
    dom = Domain.from_dict(domain)
    layer = TypeLayer(dom)
    typed = layer.transform(frame)
    specs = [histogram_spec(n, dom[n]) for n in dom.columns]
    indices = []
    for spec in specs:
        values, is_null = typed_column(typed, spec.name, dom[spec.name])
        indices.append(bin_index(spec, values, is_null, dom[spec.name]))
    marginals, _, _ = release_marginals(specs, indices, noise, SeededNoise(seed))
    return layer, TableEncoder(dom, marginals), typed, marginals


@pytest.mark.parametrize("random_cells", [False, True])
def test_round_trip_keeps_values_dtypes_and_categories(mixed_frame, mixed_domain, random_cells):
    layer, enc, typed, _ = _encoder(mixed_frame, mixed_domain)
    lo, hi, _ = enc.cells(typed)
    assert np.all(lo <= hi) and lo.min() >= 0 and hi.max() <= 1
    rng = np.random.default_rng(1) if random_cells else None
    back = layer.reverse(enc.decode(dequantize(lo, hi, rng)))
    assert list(back.columns) == list(mixed_frame.columns)
    for col in mixed_frame.columns:
        assert back[col].dtype == mixed_frame[col].dtype, col
    exact = ["age", "income", "city", "flag", "when"]
    expected = mixed_frame[exact].copy()
    expected["city"] = expected["city"].where(expected["city"].notna(), np.nan)
    pd.testing.assert_frame_equal(back[exact], expected)
    np.testing.assert_allclose(back["score"], mixed_frame["score"], rtol=1e-6)
    assert back["score"].isna().equals(mixed_frame["score"].isna())


def test_skeleton_holds_only_declared_values(mixed_frame, mixed_domain):
    layer, *_ = _encoder(mixed_frame, mixed_domain)
    skeleton = layer.domain.skeleton()  # what the type layer fits RDT on
    assert set(skeleton["city"].dropna()) == {"Paris", "Lyon", "Nice", "Lille"}
    assert skeleton["age"].min() == 18 and skeleton["age"].max() == 90
    private_values = set(mixed_frame["score"].dropna().round(6))
    assert not private_values & set(skeleton["score"].dropna().round(6))


def test_values_outside_the_domain_are_clipped_never_widen(mixed_frame, mixed_domain):
    frame = mixed_frame.copy()
    frame.loc[0, "age"] = 500
    frame.loc[1, "score"] = -40.0
    layer, enc, typed, _ = _encoder(frame, mixed_domain)
    assert typed[("age", "value")].max() == 90 and typed[("score", "value")].min() == 0
    back = layer.reverse(enc.decode(dequantize(*enc.cells(typed)[:2], None)))
    assert back.loc[0, "age"] == 90 and back.loc[1, "score"] == pytest.approx(0.0, abs=1e-3)


def test_unknown_category_or_undeclared_missing_value_raises(mixed_frame, mixed_domain):
    frame = mixed_frame.copy()
    frame.loc[0, "city"] = "Atlantis"
    with pytest.raises(ValueError, match="outside its declared categories"):
        _encoder(frame, mixed_domain)
    frame = mixed_frame.copy()
    frame["age"] = frame["age"].astype(float)
    frame.loc[0, "age"] = np.nan
    with pytest.raises(ValueError, match="nullable=False"):
        _encoder(frame, mixed_domain)


def test_point_masses_get_a_mode_dimension(mixed_frame, mixed_domain):
    _, enc, _, _ = _encoder(mixed_frame, mixed_domain)
    names = [d.name for d in enc.dims]
    assert "income.mode" in names  # 60% zeros
    assert "score.mode" in names  # missing values
    assert "age.mode" not in names  # no value holds 20%
    income = next(c for c in enc.codecs if c.name == "income")
    assert 0.0 in income.modes


def test_identity_decoding_reproduces_the_released_marginals(mixed_frame, mixed_domain):
    _, enc, _, marginals = _encoder(mixed_frame, mixed_domain, noise=5.0)
    city = next(c for c in enc.codecs if c.name == "city")
    rng = np.random.default_rng(0)
    u = rng.random((200_000, enc.n_dims))
    from scipy.special import ndtri

    decoded = enc.decode(ndtri(u))
    freq = np.bincount(decoded[("city", "value")].astype(int), minlength=5) / len(decoded)
    np.testing.assert_allclose(freq, city.mode_dim.code_masses(), atol=4e-3)


def test_simplex_projection():
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.normal(size=7)
        p = project_simplex(v)
        assert p.min() >= 0 and p.sum() == pytest.approx(1.0)
        # Optimality: p is the closest simplex point among random candidates.
        for _ in range(50):
            q = rng.dirichlet(np.ones(7))
            assert np.sum((v - p) ** 2) <= np.sum((v - q) ** 2) + 1e-12


def test_constant_and_single_category_columns_round_trip():
    frame = pd.DataFrame({"c": [5] * 50, "k": ["only"] * 50, "x": np.arange(50)})
    dom = {"c": {"type": "numerical", "min": 5, "max": 5, "integer": True},
           "k": {"type": "categorical", "categories": ["only"]},
           "x": {"type": "numerical", "min": 0, "max": 60, "integer": True}}
    layer, enc, typed, _ = _encoder(frame, dom)
    assert enc.n_dims == 1
    back = layer.reverse(enc.decode(dequantize(*enc.cells(typed)[:2], None)))
    pd.testing.assert_frame_equal(back, frame)


def test_domain_dict_round_trip(mixed_domain):
    dom = Domain.from_dict(mixed_domain)
    assert Domain.from_dict(dom.to_dict()).to_dict() == dom.to_dict()
    with pytest.raises(ValueError, match="'min' and 'max'"):
        Domain.from_dict({"a": {"type": "numerical"}})
    with pytest.raises(ValueError, match="categories"):
        Domain.from_dict({"a": {"type": "categorical", "categories": []}})


def _one_to_one_frame(n: int = 3000) -> tuple[pd.DataFrame, dict]:
    """A category and its integer code (as Adult's education / education-num)."""
    rng = np.random.default_rng(1)
    names = ["HS", "College", "Bachelors", "Masters", "Doctorate", "Preschool"]
    codes = {"Preschool": 1, "HS": 9, "College": 10, "Bachelors": 13, "Masters": 14,
             "Doctorate": 16}
    level = rng.choice(names, size=n, p=[0.4, 0.25, 0.2, 0.1, 0.03, 0.02])
    frame = pd.DataFrame({"level": level, "years": [codes[v] for v in level]})
    domain = {"level": {"type": "categorical", "categories": sorted(names)},
              "years": {"type": "numerical", "min": 1, "max": 16, "integer": True}}
    return frame, domain


def test_small_integer_columns_are_one_discrete_dimension():
    frame, domain = _one_to_one_frame()
    _, enc, typed, _ = _encoder(frame, domain)
    years = next(c for c in enc.codecs if c.name == "years")
    assert years.value_dim is None and years.modes == [float(v) for v in range(1, 17)]
    assert [d.name for d in enc.dims] == ["level", "years.mode"]
    lo, hi, _ = enc.cells(typed)
    decoded = enc.decode(ndtri((lo + hi) / 2))  # each cell's midpoint: the row's own value
    np.testing.assert_array_equal(decoded[("years", "value")], frame["years"])


def test_discrete_cells_run_from_the_most_to_the_least_frequent():
    frame, domain = _one_to_one_frame()
    _, enc, typed, _ = _encoder(frame, domain)
    for dim in enc.dims:
        widths = np.diff(dim.edges)
        assert np.all(np.diff(widths) <= 1e-12), dim.name
    # A category and its code have the same marginal, so every row sits in the k-th cell
    # of both dimensions (same k): the dependency is the identity, up to the cells' widths
    # (the 1% floor spreads over 6 categories on one side, 16 values on the other).
    lo, hi, _ = enc.cells(typed)
    cell = [locate_cells(dim.edges, (lo[:, j] + hi[:, j]) / 2) for j, dim in enumerate(enc.dims)]
    np.testing.assert_array_equal(cell[0], cell[1])
    assert len(np.unique(cell[0])) == 6
