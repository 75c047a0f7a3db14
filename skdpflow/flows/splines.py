"""Monotonic rational-quadratic splines as pure functions.

Each function maps a value and unconstrained spline parameters to the transformed
value and the log-absolute-determinant of the Jacobian (ladj), so nothing is
computed twice. Inside ``[-bound, bound]`` the map is a monotonic rational-quadratic
spline with unit slope at both ends; outside it is the identity with ``ladj = 0``.

References
----------
Neural Spline Flows (Durkan et al., 2019), arXiv:1906.04032.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MIN_BIN_HEIGHT",
    "MIN_BIN_WIDTH",
    "MIN_DERIVATIVE",
    "rational_quadratic_spline",
]

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3

# Shift so that a raw derivative of 0 maps to a slope of exactly 1: then all-zero
# parameters give the identity and a zero-initialised network starts as the identity.
_DERIVATIVE_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


def _knots(
    widths: Tensor, heights: Tensor, derivatives: Tensor, bound: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Constrain raw parameters into knot positions and knot slopes.

    ``w = w_min + (1 - w_min K) softmax(widths)``, likewise for heights, and
    ``d = d_min + softplus(derivatives + c)`` with unit slopes at both boundary knots.

    Parameters
    ----------
    widths, heights : Tensor
        Unnormalized bin widths and heights, shape ``(*, K)``.
    derivatives : Tensor
        Unnormalized interior knot slopes, shape ``(*, K - 1)``.
    bound : float
        Half-width of the spline's (co)domain.

    Returns
    -------
    xs, ys, ds : Tensor
        Knot abscissae, ordinates and slopes, each of shape ``(*, K + 1)``.
    """
    n_bins = widths.shape[-1]
    widths, heights = torch.broadcast_tensors(widths, heights)
    # One fused softmax for widths and heights: this runs K times per training step.
    probs = F.softmax(torch.stack((widths, heights)), dim=-1)
    w = MIN_BIN_WIDTH + (1.0 - MIN_BIN_WIDTH * n_bins) * probs[0]
    h = MIN_BIN_HEIGHT + (1.0 - MIN_BIN_HEIGHT * n_bins) * probs[1]

    # Pin the end knots to exactly -bound and bound so the spline meets the identity tails.
    lead = w.shape[:-1]
    lo = torch.full((*lead, 1), -bound, dtype=w.dtype, device=w.device)
    hi = torch.full((*lead, 1), bound, dtype=w.dtype, device=w.device)
    xs = torch.cat((lo, -bound + 2.0 * bound * torch.cumsum(w[..., :-1], dim=-1), hi), dim=-1)
    ys = torch.cat((lo, -bound + 2.0 * bound * torch.cumsum(h[..., :-1], dim=-1), hi), dim=-1)

    ones = torch.ones((*derivatives.shape[:-1], 1), dtype=derivatives.dtype, device=w.device)
    inner = MIN_DERIVATIVE + F.softplus(derivatives + _DERIVATIVE_SHIFT)
    ds = torch.cat((ones, inner, ones), dim=-1)
    return xs, ys, ds


def _gather_bin(
    knots: Tensor, xs: Tensor, ys: Tensor, ds: Tensor, value: Tensor
) -> tuple[Tensor, ...]:
    """Find the bin holding ``value`` among ``knots`` and gather its end points.

    Parameters
    ----------
    knots : Tensor
        Sorted knots to search (``xs`` or ``ys``), shape ``(*, K + 1)``.
    xs, ys, ds : Tensor
        Knot abscissae, ordinates and slopes, shape ``(*, K + 1)``.
    value : Tensor
        Query points already clamped into ``[-bound, bound]``, shape ``(*,)``.

    Returns
    -------
    x0, x1, y0, y1, d0, d1 : Tensor
        Bin end points and end slopes, each of shape ``(*,)``.
    """
    # A sum of comparisons against the interior knots is vmappable and, with few bins,
    # as cheap as searchsorted; it also clamps the bin index into [0, K - 1].
    k = (value[..., None] >= knots[..., 1:-1]).sum(dim=-1, keepdim=True)
    index = torch.cat((k, k + 1), dim=-1)
    table = torch.stack((xs, ys, ds), dim=-2)  # (*, 3, K + 1)
    index = index.unsqueeze(-2).expand(*table.shape[:-1], 2)
    ends = torch.gather(table, -1, index)  # (*, 3, 2)
    x0, x1 = ends[..., 0, 0], ends[..., 0, 1]
    y0, y1 = ends[..., 1, 0], ends[..., 1, 1]
    d0, d1 = ends[..., 2, 0], ends[..., 2, 1]
    return x0, x1, y0, y1, d0, d1


def _forward_ladj(z: Tensor, s: Tensor, d0: Tensor, d1: Tensor) -> Tensor:
    """Log-derivative of the forward spline at relative bin position ``z``.

    ``dy/dx = s^2 (d1 z^2 + 2 s z (1 - z) + d0 (1 - z)^2) / (s + (d0 + d1 - 2 s) z (1 - z))^2``
    (Durkan et al., 2019, eq. 5), all shapes ``(*,)``.
    """
    zz = z * (1.0 - z)
    numerator = s.square() * (d1 * z.square() + 2.0 * s * zz + d0 * (1.0 - z).square())
    denominator = s + (d0 + d1 - 2.0 * s) * zz
    return torch.log(numerator / denominator.square())


def rational_quadratic_spline(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    bound: float = 3.0,
    inverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Apply a monotonic rational-quadratic spline elementwise, or its inverse.

    The spline maps ``[-bound, bound]`` onto itself with unit slope at both ends and
    is the identity outside, so the whole map is a continuously differentiable
    bijection of the real line.

    Parameters
    ----------
    x : Tensor
        Inputs, shape ``(*,)``; data for the forward map, outputs for the inverse.
    widths : Tensor
        Unnormalized bin widths, shape ``(*, K)``.
    heights : Tensor
        Unnormalized bin heights, shape ``(*, K)``.
    derivatives : Tensor
        Unnormalized slopes at the ``K - 1`` interior knots, shape ``(*, K - 1)``.
        Zero maps to a slope of exactly 1, so all-zero parameters give the identity.
    bound : float, default=3.0
        Half-width of the spline's domain and codomain.
    inverse : bool, default=False
        If True, apply the inverse spline (closed form via the quadratic formula).

    Returns
    -------
    y : Tensor
        Transformed values, shape ``(*,)``.
    ladj : Tensor
        ``log |dy/dx|`` of the map that was applied, shape ``(*,)``; 0 outside the bound.
        For ``inverse=True`` it is the negated forward ladj at the returned point.

    References
    ----------
    Neural Spline Flows (Durkan et al., 2019), arXiv:1906.04032.
    """
    xs, ys, ds = _knots(widths, heights, derivatives, bound)
    shape = torch.broadcast_shapes(x.shape, xs.shape[:-1])
    x = x.expand(shape)
    xs, ys, ds = (t.expand(*shape, t.shape[-1]) for t in (xs, ys, ds))

    # The end knots are fixed points with unit slope, so the identity is exact there.
    inside = (x > -bound) & (x < bound)
    # Clamp so the discarded branch of torch.where stays finite and its gradient is not NaN.
    xc = x.clamp(-bound, bound)

    x0, x1, y0, y1, d0, d1 = _gather_bin(ys if inverse else xs, xs, ys, ds, xc)
    w = x1 - x0
    h = y1 - y0
    s = h / w

    if inverse:
        dy = xc - y0
        slack = d0 + d1 - 2.0 * s
        a = h * (s - d0) + dy * slack
        b = h * d0 - dy * slack
        c = -s * dy
        # b^2 - 4ac >= 0 in exact arithmetic; guard against rounding before the sqrt.
        disc = (b.square() - 4.0 * a * c).clamp_min(0.0)
        # Citardauq form 2c / (-b - sqrt(disc)) avoids cancellation (nflows, zuko).
        z = (2.0 * c) / (-b - disc.sqrt())
        y = x0 + z * w
        ladj = -_forward_ladj(z, s, d0, d1)
    else:
        z = (xc - x0) / w
        zz = z * (1.0 - z)
        y = y0 + h * (s * z.square() + d0 * zz) / (s + (d0 + d1 - 2.0 * s) * zz)
        ladj = _forward_ladj(z, s, d0, d1)

    y = torch.where(inside, y, x)
    ladj = torch.where(inside, ladj, torch.zeros_like(ladj))
    return y, ladj
