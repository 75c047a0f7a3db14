"""Tests of the shared-conditioner spline coupling flow."""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from skdpflow.flows.model import SharedConditionerFlow

pytestmark = pytest.mark.usefixtures("float64")


def _randomize(flow: SharedConditionerFlow, scale: float = 0.3, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=generator))


def _std_normal_log_prob(x: Tensor) -> Tensor:
    return (-0.5 * x.square() - 0.5 * math.log(2 * math.pi)).sum(-1)


def _small(features: int, **kwargs: object) -> SharedConditionerFlow:
    options = {"n_stages": 4, "hidden_size": 16, "n_bins": 5} | kwargs
    return SharedConditionerFlow(features, **options)


def test_log_prob_shape_and_forward() -> None:
    flow = _small(4)
    _randomize(flow)
    x = torch.randn(11, 4)
    out = flow.log_prob(x)
    assert out.shape == (11,)
    torch.testing.assert_close(flow(x), out)


def test_ownership_of_parameters_and_buffers() -> None:
    flow = _small(5)
    # Opacus needs parameters only in the conditioner and no buffers inside it.
    assert list(flow.conditioner.buffers()) == []
    assert list(flow.parameters(recurse=False)) == []
    assert all(isinstance(m, (nn.Linear, nn.GELU)) for m in flow.conditioner)
    assert flow.masks.shape == (4, 5)
    assert set(flow.masks.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("features", [2, 5, 6, 20])
def test_masks_couple_every_pair_of_features_both_ways(features: int) -> None:
    masks = SharedConditionerFlow(features, n_stages=6).masks
    for k in range(6):  # each stage conditions on half the features
        assert abs(masks[k].sum().item() - features / 2) <= 0.5
    torch.testing.assert_close(masks.sum(0), torch.full((features,), 3.0))
    for i, j in itertools.combinations(range(features), 2):
        # some stage transforms j given i, and some stage transforms i given j
        assert ((masks[:, i] == 1) & (masks[:, j] == 0)).any(), (i, j)
        assert ((masks[:, j] == 1) & (masks[:, i] == 0)).any(), (i, j)


def test_masks_repeat_codes_evenly_beyond_twenty_features() -> None:
    masks = SharedConditionerFlow(45, n_stages=6).masks
    codes = {}
    for i in range(45):
        codes.setdefault(tuple(masks[:, i].tolist()), []).append(i)
    assert len(codes) == 20 and {len(v) for v in codes.values()} == {2, 3}
    for members in codes.values():  # a column's dims (adjacent) never share a code
        assert min(b - a for a, b in itertools.pairwise(members)) >= 20


def test_every_parameter_gets_gradient() -> None:
    flow = _small(5)
    with torch.no_grad():
        flow.conditioner[-1].weight.normal_(0.0, 0.1)
        flow.conditioner[-1].bias.normal_(0.0, 0.1)
    flow.log_prob(torch.randn(32, 5)).mean().backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert (p.grad != 0).any(), name


@pytest.mark.parametrize("base", ["identity", "copula", "calibrated"])
@pytest.mark.parametrize("features", [1, 2, 3, 5])
def test_log_prob_matches_full_jacobian(features: int, base: str) -> None:
    flow = _small(features, n_stages=5, calibration_knots=16 if base == "calibrated" else 0)
    _randomize(flow)
    if base != "identity":
        flow.set_base_correlation(_correlation(features))
    if base == "calibrated":
        flow.calibrate(256, generator=torch.Generator().manual_seed(0))
        assert flow.calibrated
    # 3 points in the body; beyond the calibration's outer knots too (slope-1 tails).
    for x in torch.cat((torch.randn(3, features), torch.full((1, features), 9.0))):
        jac = torch.autograd.functional.jacobian(lambda r: flow.transform(r[None])[0][0], x)
        sign, logdet = torch.linalg.slogdet(jac)
        assert sign > 0
        z = flow.transform(x[None])[0][0]
        expected = _std_normal_log_prob(z) + logdet
        torch.testing.assert_close(flow.log_prob(x[None])[0], expected, atol=1e-9, rtol=1e-9)
        with torch.no_grad():  # the fast path too
            torch.testing.assert_close(flow.log_prob(x[None])[0], expected, atol=1e-9,
                                       rtol=1e-9)


@pytest.mark.parametrize("features", [1, 3, 6])
def test_inverse_of_transform(features: int) -> None:
    flow = _small(features)
    _randomize(flow)
    x = 2.0 * torch.randn(64, features)
    z, _ = flow.transform(x)
    assert not torch.allclose(z, x)
    x_back = flow.inverse(z)
    torch.testing.assert_close(flow.transform(x_back)[0], z, atol=1e-10, rtol=0)
    # Steep random stages amplify rounding in the inverse direction.
    torch.testing.assert_close(x_back, x, atol=1e-7, rtol=0)


def test_density_integrates_to_one_1d() -> None:
    flow = _small(1)
    # Larger weights give spikes narrower than any affordable grid.
    _randomize(flow, scale=0.2)
    grid = torch.linspace(-8.0, 8.0, 40001)
    with torch.no_grad():
        density = flow.log_prob(grid[:, None]).exp()
    assert density.max() > 0.5  # far from the N(0, 1) peak of 0.4: the flow is not trivial
    assert abs(torch.trapezoid(density, grid).item() - 1.0) < 1e-5


def test_density_integrates_to_one_2d() -> None:
    flow = _small(2)
    _randomize(flow, scale=0.15)
    axis = torch.linspace(-8.0, 8.0, 401)
    points = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        density = flow.log_prob(points).exp().view(401, 401)
    total = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis)
    assert density.max() > 0.3  # N(0, I) peaks at 0.16
    assert abs(total.item() - 1.0) < 1e-4


def test_parameter_count_independent_of_stages() -> None:
    counts = {
        sum(p.numel() for p in SharedConditionerFlow(7, n_stages=k).parameters())
        for k in (1, 3, 6, 12)
    }
    assert len(counts) == 1


def test_zero_init_is_identity() -> None:
    flow = SharedConditionerFlow(4)
    x = 4.0 * torch.randn(20, 4)
    z, ladj = flow.transform(x)
    torch.testing.assert_close(z, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(flow.log_prob(x), _std_normal_log_prob(x), atol=1e-12, rtol=0)


# Two discrete heads (features 3 and 1) with their lookup table: a case of the tests below.
TWO_HEADS = {"discrete": [[3, [0.0, 0.2, 0.5, 1.0]], [1, [0.0, 0.6, 1.0]]],
             "head_lookup": True}


@pytest.mark.parametrize("heads", [{}, TWO_HEADS], ids=["plain", "heads"])
def test_state_dict_round_trip(heads: dict) -> None:
    flow = _small(4, seed=3, **heads)
    _randomize(flow)
    x = torch.randn(16, 4)
    fresh = SharedConditionerFlow(**flow.config)
    fresh.load_state_dict(flow.state_dict())
    assert torch.equal(fresh.log_prob(x), flow.log_prob(x))
    clone = pickle.loads(pickle.dumps(flow))
    assert torch.equal(clone.log_prob(x), flow.log_prob(x))


def test_same_seed_same_model() -> None:
    state = torch.get_rng_state()
    a, b = _small(5, seed=7), _small(5, seed=7)
    # Construction must not consume the global random stream.
    assert torch.equal(torch.get_rng_state(), state)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_sample_shape_and_determinism() -> None:
    flow = _small(3)
    _randomize(flow)
    a = flow.sample(50, generator=torch.Generator().manual_seed(5))
    b = flow.sample(50, generator=torch.Generator().manual_seed(5))
    c = flow.sample(50, generator=torch.Generator().manual_seed(6))
    assert a.shape == (50, 3)
    assert not a.requires_grad
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("heads", [{}, TWO_HEADS], ids=["plain", "heads"])
def test_rows_are_independent(heads: dict) -> None:
    flow = _small(4, **heads)
    _randomize(flow)
    x = torch.randn(10, 4)
    changed = x.clone()
    changed[0] = 5.0 * torch.randn(4)
    before, after = flow.log_prob(x), flow.log_prob(changed)
    assert before[0] != after[0]
    assert torch.equal(before[1:], after[1:])


def test_float32() -> None:
    torch.set_default_dtype(torch.float32)
    flow = _small(3)
    _randomize(flow)
    x = torch.randn(8, 3)
    out = flow.log_prob(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(flow.inverse(flow.transform(x)[0]), x, atol=1e-4, rtol=0)


@pytest.mark.parametrize("features", [1, 2, 5])
def test_no_grad_fast_path_matches_module_path(
    features: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from skdpflow.flows import model

    monkeypatch.setattr(model, "_FAST_BLOCK_ROWS", 16)  # several blocks, the last one short
    flow = _small(features)
    _randomize(flow)
    x = 2.0 * torch.randn(50, features)
    x_before = x.clone()
    z, ladj = flow.transform(x)  # parameters require grad: module path
    with torch.no_grad():
        z_fast, ladj_fast = flow.transform(x)
        x_fast = flow.inverse(z)
    assert torch.equal(x, x_before)  # inputs are never modified in place
    torch.testing.assert_close(z_fast, z, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj_fast, ladj.detach(), atol=1e-10, rtol=0)
    torch.testing.assert_close(x_fast, flow.inverse(z).detach(), atol=1e-10, rtol=0)
    torch.testing.assert_close(x_fast, x, atol=1e-7, rtol=0)


# ------------------------------------------------------- the copula base N(0, R)
def _correlation(features: int, seed: int = 2) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(features, 2 * features, generator=generator)
    cov = a @ a.T / (2 * features) + 0.1 * torch.eye(features)
    scale = cov.diagonal().rsqrt()
    return cov * scale[:, None] * scale[None, :]


def test_untrained_flow_with_a_base_correlation_is_the_gaussian_copula() -> None:
    r = _correlation(4)
    flow = _small(4)
    flow.set_base_correlation(r)
    x = 2.0 * torch.randn(30, 4)
    expected = torch.distributions.MultivariateNormal(torch.zeros(4), r).log_prob(x)
    torch.testing.assert_close(flow.log_prob(x), expected, atol=1e-10, rtol=1e-10)
    sample = flow.sample(200_000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.corrcoef(sample.T), r, atol=0.01, rtol=0)


@pytest.mark.parametrize("features", [2, 5])
def test_whitened_inverse_of_transform(features: int) -> None:
    flow = _small(features)
    _randomize(flow)
    flow.set_base_correlation(_correlation(features))
    x = 2.0 * torch.randn(64, features)
    z, _ = flow.transform(x)
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-7, rtol=0)
    with torch.no_grad():
        z_fast, _ = flow.transform(x)
        torch.testing.assert_close(z_fast, z.detach(), atol=1e-12, rtol=0)
        torch.testing.assert_close(flow.inverse(z_fast), x, atol=1e-7, rtol=0)


def test_identity_base_correlation_is_exactly_the_plain_flow() -> None:
    """``R = I`` (the default) adds nothing: the same numbers as the stages alone."""
    flow = _small(5)
    _randomize(flow)
    flow.set_base_correlation(torch.eye(5))
    assert torch.equal(flow.base_cholesky, torch.eye(5))
    x = 2.0 * torch.randn(40, 5)
    z, total = x, x.new_zeros(40)
    for k in range(flow.n_stages):  # the coupling stages alone, no whitening
        z, ladj = flow._stage(z, k, inverse=False)
        total = total + ladj
    out, ladj_out = flow.transform(x)
    assert torch.equal(out, z) and torch.equal(ladj_out, total)
    with torch.no_grad():
        fast, ladj_fast = flow.transform(x)
        plain_fast, plain_ladj = flow._run_fast(x, inverse=False, need_ladj=True)
        assert torch.equal(fast, plain_fast) and torch.equal(ladj_fast, plain_ladj)
        assert torch.equal(flow.inverse(fast), flow._run_fast(fast, inverse=True,
                                                              need_ladj=False)[0])


def test_base_cholesky_is_a_saved_buffer_not_a_parameter() -> None:
    flow = _small(3)
    flow.set_base_correlation(_correlation(3))
    assert "base_cholesky" in flow.state_dict()
    assert all(p is not flow.base_cholesky for p in flow.parameters())
    assert list(flow.conditioner.buffers()) == []  # per-row clipping sees the same layers
    fresh = SharedConditionerFlow(**flow.config)
    assert torch.equal(fresh.base_cholesky, torch.eye(3))
    fresh.load_state_dict(flow.state_dict())
    x = torch.randn(8, 3)
    assert torch.equal(fresh.log_prob(x), flow.log_prob(x))
    torch.testing.assert_close(fresh.base_cholesky @ fresh.base_cholesky.T, _correlation(3))


def test_base_correlation_must_be_positive_definite_and_square() -> None:
    flow = _small(3)
    with pytest.raises(ValueError, match="shape"):
        flow.set_base_correlation(torch.eye(2))
    with pytest.raises(ValueError, match="positive definite"):
        flow.set_base_correlation(torch.ones(3, 3))


# ------------------------------------------------ the marginal calibration g
def _ks_to_standard_normal(x: Tensor) -> float:
    """Largest gap between the empirical CDF of ``x`` and Phi (one feature)."""
    x = x.sort().values.double()
    n = len(x)
    phi = torch.special.ndtr(x)
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n
    return max((upper - phi).abs().max().item(), (phi - (upper - 1 / n)).abs().max().item())


def test_calibration_makes_every_marginal_standard_normal_and_keeps_the_ranks() -> None:
    flow = _small(3, calibration_knots=256)
    _randomize(flow, scale=0.4)
    flow.set_base_correlation(_correlation(3))
    before = flow.sample(50_000, generator=torch.Generator().manual_seed(5))
    gaps = [_ks_to_standard_normal(before[:, j]) for j in range(3)]
    assert max(gaps) > 0.05  # the trained-looking flow is far from N(0, 1) marginals
    flow.calibrate(65_536, generator=torch.Generator().manual_seed(1))
    after = flow.sample(50_000, generator=torch.Generator().manual_seed(5))
    gaps = [_ks_to_standard_normal(after[:, j]) for j in range(3)]
    # Monte Carlo error of the calibration (~1/256 per knot) plus the sample's own.
    assert max(gaps) < 0.015, gaps
    # g is monotone per feature: the same draws keep their order in every column.
    assert torch.equal(before.argsort(dim=0), after.argsort(dim=0))


def test_calibration_to_bins_gives_their_masses_and_keeps_the_shape_inside() -> None:
    """With bin edges ``c``, bin ``k`` gets mass ``c_k+1 - c_k``, and inside it the rows are
    the flow's rows between its quantiles ``F^-1(c_k)`` and ``F^-1(c_k+1)``, affinely
    rescaled in ``u``."""
    from scipy.special import ndtr
    from scipy.stats import ks_2samp

    flow = _small(2, calibration_knots=16)
    _randomize(flow, scale=0.4)
    edges = [torch.tensor([0.0, 0.1, 0.5, 0.55, 1.0]), torch.tensor([0.0, 0.3, 1.0])]
    raw = ndtr(flow.sample(200_000, generator=torch.Generator().manual_seed(5)).numpy())
    flow.calibrate(200_000, generator=torch.Generator().manual_seed(1), edges=edges)
    cal = ndtr(flow.sample(200_000, generator=torch.Generator().manual_seed(6)).numpy())
    for j, c in enumerate(edges):
        c = c.numpy()
        raw_mass = np.histogram(raw[:, j], c)[0] / len(raw)
        cal_mass = np.histogram(cal[:, j], c)[0] / len(cal)
        assert np.abs(raw_mass - np.diff(c)).max() > 0.03  # the flow alone is off
        np.testing.assert_allclose(cal_mass, np.diff(c), atol=0.006)
        q = np.quantile(raw[:, j], c)  # the flow's rows that go to each bin
        for k in range(len(c) - 1):
            inside = raw[(raw[:, j] >= q[k]) & (raw[:, j] < q[k + 1]), j]
            moved = c[k] + (inside - q[k]) * (c[k + 1] - c[k]) / (q[k + 1] - q[k])
            out = cal[(cal[:, j] >= c[k]) & (cal[:, j] < c[k + 1]), j]
            assert ks_2samp(moved, out).statistic < 0.03, (j, k)


def test_a_feature_without_edges_is_left_alone() -> None:
    flow = _small(3, calibration_knots=64)
    _randomize(flow, scale=0.4)
    before = flow.sample(1_000, generator=torch.Generator().manual_seed(5))
    flow.calibrate(4_000, generator=torch.Generator().manual_seed(1),
                   edges=[None, [0.0, 0.3, 1.0], None])
    after = flow.sample(1_000, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]], atol=1e-6, rtol=0)
    assert (after[:, 1] - before[:, 1]).abs().max() > 1e-3


def test_calibrated_inverse_of_transform_and_state_round_trip() -> None:
    flow = _small(4, calibration_knots=32)
    _randomize(flow)
    flow.calibrate(2_000, generator=torch.Generator().manual_seed(0))
    x = 3.0 * torch.randn(200, 4)  # many beyond the outer knots
    z, _ = flow.transform(x)
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-7, rtol=0)
    fresh = SharedConditionerFlow(**flow.config)
    assert not fresh.calibrated
    fresh.load_state_dict(flow.state_dict())
    assert fresh.calibrated
    assert torch.equal(fresh.log_prob(x), flow.log_prob(x))


def test_calibration_of_a_near_atom_in_float32() -> None:
    """Most mass within float32 rounding of one value: the knots keep float64 through
    ``.float()`` and every sampled row stays finite and in order."""
    flow = _small(3, calibration_knots=256)
    _randomize(flow, scale=0.5)  # feature 0 piles up at -3 + 1e-4
    flow.set_base_correlation(_correlation(3))
    flow.float()
    flow.calibrate(65_536, generator=torch.Generator().manual_seed(1))
    assert flow.calibration_from.dtype == torch.float64
    flow.double().float()  # casts leave the knots alone
    assert flow.calibration_from.dtype == torch.float64
    after = flow.sample(50_000, generator=torch.Generator().manual_seed(5))
    assert after.dtype == torch.float32 and torch.isfinite(after).all()
    assert max(_ks_to_standard_normal(after[:, j]) for j in range(3)) < 0.015
    with torch.no_grad():
        assert torch.isfinite(flow.log_prob(after[:2000])).all()


def test_calibrate_returns_the_rows_it_read_through_g() -> None:
    flow = _small(2, calibration_knots=16)
    _randomize(flow, scale=0.4)
    rows = flow.sample(5_000, generator=torch.Generator().manual_seed(3))
    out = flow.calibrate(rows=rows, edges=[[0.0, 0.4, 1.0], None])
    with torch.no_grad():
        again = flow.sample(5_000, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, again.double(), atol=1e-9, rtol=0)


def test_calibration_needs_knots() -> None:
    with pytest.raises(ValueError, match="calibration_knots=0"):
        _small(2).calibrate(100)
    with pytest.raises(ValueError, match="at least calibration_knots"):
        _small(2, calibration_knots=64).calibrate(10)
    with pytest.raises(ValueError, match="calibration_knots"):
        _small(2, calibration_knots=1)
    flow = _small(2, calibration_knots=8)
    with pytest.raises(ValueError, match="one array per feature"):
        flow.calibrate(100, edges=[[0.0, 1.0]])
    with pytest.raises(ValueError, match=r"edges\[1\] must increase from 0 to 1"):
        flow.calibrate(100, edges=[[0.0, 1.0], [0.0, 0.6, 0.5, 1.0]])
