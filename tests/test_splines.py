"""Tests of the monotonic rational-quadratic spline functions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from skdpflow.flows.splines import rational_quadratic_spline

BINS = [2, 5, 8]
SHAPES = [(7,), (3, 4), (2, 3, 5)]
BOUNDS = [1.0, 3.0]


pytestmark = pytest.mark.usefixtures("float64")


def _params(shape: tuple[int, ...], n_bins: int, scale: float = 1.5) -> tuple[Tensor, ...]:
    widths = scale * torch.randn(*shape, n_bins)
    heights = scale * torch.randn(*shape, n_bins)
    derivatives = scale * torch.randn(*shape, n_bins - 1)
    return widths, heights, derivatives


def _inside(shape: tuple[int, ...], bound: float) -> Tensor:
    return (2.0 * torch.rand(shape) - 1.0) * bound * 0.999


grid = pytest.mark.parametrize(
    "n_bins, shape, bound",
    [(k, s, b) for k in BINS for s in SHAPES for b in BOUNDS],
)


@grid
def test_inverse_of_forward(n_bins: int, shape: tuple[int, ...], bound: float) -> None:
    params = _params(shape, n_bins)
    x = _inside(shape, bound)
    y, ladj = rational_quadratic_spline(x, *params, bound=bound)
    x_back, ladj_inv = rational_quadratic_spline(y, *params, bound=bound, inverse=True)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj + ladj_inv, torch.zeros_like(ladj), atol=1e-9, rtol=0)


@grid
@pytest.mark.parametrize("inverse", [False, True])
def test_ladj_matches_autograd(
    n_bins: int, shape: tuple[int, ...], bound: float, inverse: bool
) -> None:
    params = _params(shape, n_bins)
    x = _inside(shape, bound).requires_grad_(True)
    y, ladj = rational_quadratic_spline(x, *params, bound=bound, inverse=inverse)
    # The map is elementwise, so the gradient of the sum is the Jacobian diagonal.
    (dy_dx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(ladj, dy_dx.log(), atol=1e-8, rtol=1e-8)


@grid
def test_zero_params_identity(n_bins: int, shape: tuple[int, ...], bound: float) -> None:
    zeros = (torch.zeros(*shape, n_bins), torch.zeros(*shape, n_bins))
    derivatives = torch.zeros(*shape, n_bins - 1)
    x = 1.5 * bound * torch.randn(shape)
    for inverse in (False, True):
        y, ladj = rational_quadratic_spline(x, *zeros, derivatives, bound=bound, inverse=inverse)
        torch.testing.assert_close(y, x, atol=1e-14, rtol=0)
        torch.testing.assert_close(ladj, torch.zeros_like(ladj), atol=1e-14, rtol=0)


@grid
def test_outside_bound_passes_through(n_bins: int, shape: tuple[int, ...], bound: float) -> None:
    params = _params(shape, n_bins)
    sign = torch.where(torch.rand(shape) < 0.5, -1.0, 1.0)
    x = sign * (bound + 0.01 + 5.0 * torch.rand(shape))
    for inverse in (False, True):
        y, ladj = rational_quadratic_spline(x, *params, bound=bound, inverse=inverse)
        assert torch.equal(y, x)
        assert torch.equal(ladj, torch.zeros_like(ladj))


@grid
def test_range_and_monotonic(n_bins: int, shape: tuple[int, ...], bound: float) -> None:
    params = _params(shape, n_bins)
    # Sweep one sorted grid through every element's own spline.
    x = torch.linspace(-bound, bound, 401).view(-1, *([1] * len(shape))).expand(-1, *shape)
    expanded = tuple(p.expand(401, *p.shape) for p in params)
    for inverse in (False, True):
        y, _ = rational_quadratic_spline(x, *expanded, bound=bound, inverse=inverse)
        # Up to rounding: y0 + h can exceed the end knot by an ulp.
        assert y.abs().max() <= bound * (1.0 + 1e-12)
        assert (y.diff(dim=0) > 0).all()
        torch.testing.assert_close(y[0], x[0], atol=1e-12, rtol=0)
        torch.testing.assert_close(y[-1], x[-1], atol=1e-12, rtol=0)


@grid
def test_param_gradients_finite(n_bins: int, shape: tuple[int, ...], bound: float) -> None:
    params = tuple(p.requires_grad_(True) for p in _params(shape, n_bins))
    # Mix inside and outside points: the discarded where() branch must not leak NaN.
    x = 1.5 * bound * torch.randn(shape)
    for inverse in (False, True):
        y, ladj = rational_quadratic_spline(x, *params, bound=bound, inverse=inverse)
        grads = torch.autograd.grad((y + ladj).sum(), params)
        assert all(torch.isfinite(g).all() for g in grads)
        assert any((g != 0).any() for g in grads)


def test_float32_round_trip() -> None:
    params = tuple(p.float() for p in _params((64, 5), 8))
    x = _inside((64, 5), 3.0).float()
    y, ladj = rational_quadratic_spline(x, *params)
    x_back, ladj_inv = rational_quadratic_spline(y, *params, inverse=True)
    assert y.dtype == ladj.dtype == torch.float32
    y_again, _ = rational_quadratic_spline(x_back, *params)
    torch.testing.assert_close(y_again, y, atol=1e-5, rtol=0)
    # Flat bins (slope ~1e-5) amplify float32 rounding of y: scale the x error by the slope.
    assert ((x_back - x).abs() * ladj.exp()).max() < 1e-5


def test_vmappable() -> None:
    params = _params((6,), 5)
    x = _inside((6,), 3.0)
    spline = torch.func.vmap(lambda xi, w, h, d: rational_quadratic_spline(xi, w, h, d))
    y, ladj = spline(x, *params)
    y_ref, ladj_ref = rational_quadratic_spline(x, *params)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(ladj, ladj_ref)


def _zuko_raw(values: Tensor, limit: float) -> Tensor:
    """Invert zuko's soft clamp ``v / (1 + |v| / limit)``."""
    assert (values.abs() < limit).all()
    return values / (1.0 - values.abs() / limit)


@pytest.mark.parametrize("n_bins", BINS)
@pytest.mark.parametrize("bound", BOUNDS)
def test_matches_zuko(n_bins: int, bound: float) -> None:
    """Same function as zuko's spline once its parametrisation is mapped onto ours."""
    transforms = pytest.importorskip("zuko.transforms")
    shape = (50,)
    widths, heights, derivatives = _params(shape, n_bins, scale=1.0)
    k = n_bins
    w = 1e-3 + (1 - 1e-3 * k) * torch.softmax(widths, -1)
    h = 1e-3 + (1 - 1e-3 * k) * torch.softmax(heights, -1)
    d = 1e-3 + torch.nn.functional.softplus(derivatives + math.log(math.expm1(1 - 1e-3)))
    # zuko: softmax(raw / (1 + |2 raw / log(slope)|)) and exp(raw / (1 + |raw / log(slope)|)).
    slope = 1e-6
    limit = -math.log(slope)
    log_w = w.log() - w.log().amax(-1, keepdim=True) / 2 - w.log().amin(-1, keepdim=True) / 2
    log_h = h.log() - h.log().amax(-1, keepdim=True) / 2 - h.log().amin(-1, keepdim=True) / 2
    zuko = transforms.MonotonicRQSTransform(
        _zuko_raw(log_w, limit / 2),
        _zuko_raw(log_h, limit / 2),
        _zuko_raw(d.log(), limit),
        bound=bound,
        slope=slope,
    )
    x = 1.3 * bound * (2.0 * torch.rand(shape) - 1.0)
    y_ref, ladj_ref = zuko.call_and_ladj(x)
    y, ladj = rational_quadratic_spline(x, widths, heights, derivatives, bound=bound)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj, ladj_ref, atol=1e-9, rtol=0)
    x_back, _ = rational_quadratic_spline(y_ref, widths, heights, derivatives, bound=bound,
                                          inverse=True)
    torch.testing.assert_close(x_back, zuko.inv(y_ref), atol=1e-10, rtol=0)


@pytest.mark.parametrize("n_bins", [1, 2, 8])
@pytest.mark.parametrize("inverse", [False, True])
def test_knot_major_matches_public(n_bins: int, inverse: bool) -> None:
    from skdpflow.flows.splines import rational_quadratic_spline_knot_major

    params = _params((40,), n_bins)
    x = 4.0 * torch.randn(40)
    y, ladj = rational_quadratic_spline(x, *params, inverse=inverse)
    knot_major = tuple(p.T.contiguous() for p in params)
    y_km, ladj_km = rational_quadratic_spline_knot_major(x, *knot_major, inverse=inverse)
    assert torch.equal(y_km, y)
    assert ladj_km is not None and torch.equal(ladj_km, ladj)
    y_only, none = rational_quadratic_spline_knot_major(
        x, *knot_major, inverse=inverse, return_ladj=False
    )
    assert none is None and torch.equal(y_only, y)
    if n_bins == 1:  # one bin with unit end slopes is the identity
        torch.testing.assert_close(y, x, atol=1e-14, rtol=0)
