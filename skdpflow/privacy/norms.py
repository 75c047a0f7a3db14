"""Per-row gradient norms and clipped gradient sums of a linear layer used T times per row.

Everything here is computed from the layer's recorded inputs ``H`` ``(B, T, in)`` and output
gradients ``D = dL_i/dz`` ``(B, T, out)`` alone: per-row gradients are never materialised
unless that is the cheaper way to get a norm. Row i's weight gradient is
``G_i = sum_t d_{i,t} h_{i,t}^T`` and its bias gradient ``sum_t d_{i,t}``.

Cost model (multiplications per row, for a weight used T times): the Gram form needs the two
``T x T`` Gram matrices, ``T^2 (in + out)``; materialising ``G_i`` needs ``T in out``. Both
hold for the flat norm ``|G_i|^2`` and for the per-output-unit norms ``|G_i[j]|^2``, so one
rule, :func:`choose_strategy`, picks the form per layer. For T = 1 both reduce to
Goodfellow's ``|d|^2 |h|^2`` (per unit ``d_j^2 |h|^2``), which costs ``in + out``.

References
----------
.. [1] Goodfellow, "Efficient per-example gradient computations", arXiv:1510.01799, 2015.
.. [2] Li et al., "Large language models can be strong differentially private learners"
   (ghost clipping, the Gram form for sequences), ICLR 2022.
.. [3] Bu et al., "Differentially private optimization on large model at small cost"
   (book-keeping: the clipped sum from ``H`` and ``D``), ICML 2023.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "NormStrategy",
    "choose_strategy",
    "linear_clipped_sum",
    "linear_clipped_sum_",
    "linear_sq_norms",
    "linear_unit_sq_norms",
    "use_major",
]

NormStrategy = Literal["auto", "gram", "materialise"]


def choose_strategy(uses: int, d_in: int, d_out: int) -> Literal["gram", "materialise"]:
    """Pick the cheaper per-row norm: Gram ``T^2 (in + out)`` vs materialised ``T in out``."""
    return "gram" if uses * (d_in + d_out) <= d_in * d_out else "materialise"


def _resolve(strategy: NormStrategy, inputs: Tensor, grads: Tensor) -> str:
    if strategy == "auto":
        return choose_strategy(inputs.shape[1], inputs.shape[2], grads.shape[2])
    if strategy not in ("gram", "materialise"):
        raise ValueError(f"unknown norm strategy {strategy!r}.")
    return strategy


def linear_sq_norms(
    inputs: Tensor, grads: Tensor, bias: bool, strategy: NormStrategy = "auto"
) -> tuple[Tensor, Tensor | None]:
    """Per-row squared gradient norms of a linear layer used T times per row.

    ``|G_i|^2 = sum_{t,s} (d_t . d_s)(h_t . h_s)`` (Gram form) or
    ``|einsum('to,ti->oi', d_i, h_i)|^2`` (materialised); the bias gradient is
    ``sum_t d_{i,t}``. The product ``|D_i|^2 |H_i|^2`` would be wrong for T > 1. The Gram
    form sums terms of both signs, so a norm that is ~0 can round below 0: it is clamped at
    0, so that the norm's square root is never NaN.

    Parameters
    ----------
    inputs : Tensor
        Layer inputs ``h``, shape ``(B, T, in)``.
    grads : Tensor
        Output gradients ``d = dL_i/dz``, shape ``(B, T, out)``.
    bias : bool
        Whether to return the bias norms too.
    strategy : {"auto", "gram", "materialise"}, default="auto"
        ``"auto"`` picks the cheaper form per layer (:func:`choose_strategy`).

    Returns
    -------
    weight_sq : Tensor
        Shape ``(B,)``.
    bias_sq : Tensor or None
        Shape ``(B,)``, or None when ``bias`` is False.
    """
    strategy = _resolve(strategy, inputs, grads)
    if inputs.shape[1] == 1:
        # Goodfellow's rule |d|^2 |h|^2; both strategies reduce to it.
        weight_sq = grads.square().sum((1, 2)) * inputs.square().sum((1, 2))
    elif strategy == "gram":
        gram_d = torch.bmm(grads, grads.transpose(1, 2))
        gram_h = torch.bmm(inputs, inputs.transpose(1, 2))
        # A sum of mixed-sign terms: rounding can take a ~0 norm below 0, and sqrt to NaN.
        weight_sq = (gram_d * gram_h).sum((1, 2)).clamp_min_(0.0)
        # |sum_t d_t|^2 = sum_{t,s} d_t . d_s: free from the Gram matrix, no pass over D.
        return weight_sq, gram_d.sum((1, 2)).clamp_min_(0.0) if bias else None
    else:
        weight_sq = torch.einsum("bto,bti->boi", grads, inputs).square().sum((1, 2))
    bias_sq = grads.sum(1).square().sum(1) if bias else None
    return weight_sq, bias_sq


def linear_unit_sq_norms(
    inputs: Tensor,
    grads: Tensor,
    bias: bool,
    strategy: NormStrategy = "auto",
    *,
    workspace: Tensor | None = None,
) -> Tensor:
    """Per-row, per-output-unit squared gradient norms of a linear layer used T times per row.

    Unit j's group is row j of the weight plus bias entry j:
    ``|G_i[j]|^2 + b_{i,j}^2 = sum_{t,s} d_{t,j} d_{s,j} (h_t . h_s) + (sum_t d_{t,j})^2``,
    i.e. ``einsum('btj,bsj,bts->bj', D, D, H H^T)`` in Gram form (one ``(T x T) @ (T x out)``
    product per row), or the row norms of the materialised ``G_i``. Summed over j it gives
    :func:`linear_sq_norms`' weight plus bias norms. Clamped at 0, as there, against the
    Gram form's rounding.

    Parameters
    ----------
    inputs : Tensor
        Layer inputs ``h``, shape ``(B, T, in)``.
    grads : Tensor
        Output gradients ``d``, shape ``(B, T, out)``.
    bias : bool
        Whether the bias entry belongs to each unit's group.
    strategy : {"auto", "gram", "materialise"}, default="auto"
        As in :func:`linear_sq_norms`; the cost model is the same.
    workspace : Tensor or None, default=None
        Contiguous ``(B, T, out)`` scratch for the Gram form's intermediate (reused across
        calls, it saves allocating and faulting in a tensor the size of ``grads``).

    Returns
    -------
    Tensor
        Shape ``(B, out)``.
    """
    strategy = _resolve(strategy, inputs, grads)
    # The bias entry is a weight on a constant input 1: (sum_t d_tj)^2 = sum_{t,s} d_tj d_sj.
    if inputs.shape[1] == 1:
        return grads[:, 0].square() * (inputs.square().sum((1, 2)) + float(bias))[:, None]
    if strategy == "gram":
        gram_h = torch.bmm(inputs, inputs.transpose(1, 2))
        if bias:
            gram_h += 1.0
        weighted = torch.bmm(gram_h, grads, out=workspace)  # sum_s (h_t . h_s + 1) d_s
        # Mixed-sign terms again: clamp what rounding takes below 0 (sqrt would give NaN).
        return weighted.mul_(grads).sum(1).clamp_min_(0.0)
    unit_sq = torch.einsum("bto,bti->boi", grads, inputs).square().sum(2)
    return unit_sq + grads.sum(1).square() if bias else unit_sq


def linear_clipped_sum(inputs: Tensor, grads: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of per-row gradients scaled by ``coef``, without per-row gradients.

    Flat: ``sum_i c_i G_i = sum_{i,t} (c_i d_{i,t}) h_{i,t}^T``. Per unit: row j of
    ``sum_i c_{i,j} G_i[j]`` scales ``d_{i,t,j}`` by ``c_{i,j}``. Either way one matmul over
    the ``B*T`` rows.

    Parameters
    ----------
    inputs : Tensor
        Shape ``(B, T, in)``.
    grads : Tensor
        Shape ``(B, T, out)``.
    coef : Tensor
        Clip coefficients, shape ``(B,)`` (one per row) or ``(B, out)`` (one per row and
        output unit; the bias entry of unit j gets ``c_{i,j}`` too).

    Returns
    -------
    weight_grad : Tensor
        Shape ``(out, in)``.
    bias_grad : Tensor
        Shape ``(out,)``.
    """
    d_in, d_out = inputs.shape[-1], grads.shape[-1]
    if coef.ndim == 2:
        left, right = grads * coef[:, None, :], inputs
        bias_grad = (coef * grads.sum(1)).sum(0)
    else:
        # c_i may multiply either factor; scaling the narrower one costs fewer multiplications.
        if d_in <= d_out:
            left, right = grads, inputs * coef[:, None, None]
        else:
            left, right = grads * coef[:, None, None], inputs
        bias_grad = coef @ grads.sum(1)
    if use_major(left) and use_major(right):
        # Use-major views (as :mod:`.recording` hands them over): reshape would copy them.
        left, right = left.transpose(0, 1), right.transpose(0, 1)
    weight_grad = _outer_sum(left.reshape(-1, d_out), right.reshape(-1, d_in))
    return weight_grad, bias_grad


def linear_clipped_sum_(
    inputs: Tensor, grads: Tensor, coef: Tensor, bias: bool
) -> tuple[Tensor, Tensor | None]:
    """:func:`linear_clipped_sum` on use-major scratch buffers, scaling one of them in place.

    The book-keeping variant (:mod:`.recording` keeps this layout): no temporary the size of
    ``D``, and weight and bias gradients from one matmul, the bias as the weight on a column
    of ones, ``[G_W | g_b] = sum_{t,i} (c_i d_{i,t}) [h_{i,t}, 1]^T``.

    Parameters
    ----------
    inputs : Tensor
        Shape ``(T, B, in + bias)``; when ``bias``, its last column must hold ones. Scaled in
        place by flat coefficients when ``in + bias <= out``.
    grads : Tensor
        Shape ``(T, B, out)``. Scaled in place otherwise (always for ``(B, out)``
        coefficients).
    coef : Tensor
        Shape ``(B,)`` or ``(B, out)``, as in :func:`linear_clipped_sum`.
    bias : bool
        Whether ``inputs`` carries the column of ones.

    Returns
    -------
    weight_grad : Tensor
        Shape ``(out, in)`` (a view into the joint result).
    bias_grad : Tensor or None
        Shape ``(out,)``, or None when ``bias`` is False.
    """
    width, d_out = inputs.shape[-1], grads.shape[-1]
    if coef.ndim == 2:
        grads.mul_(coef)
    elif width <= d_out:  # scale the narrower factor: fewer multiplications
        inputs.mul_(coef[:, None])
    else:
        grads.mul_(coef[:, None])
    joint = _outer_sum(grads.reshape(-1, d_out), inputs.reshape(-1, width))
    return (joint[:, :-1], joint[:, -1]) if bias else (joint, None)


def _outer_sum(left: Tensor, right: Tensor) -> Tensor:
    """``left^T @ right`` for ``(N, a)`` and ``(N, b)`` factors, ``(a, b)``.

    Computed with the narrower factor transposed on the left (measured with MKL on CPU: a
    ``(437, N) @ (N, 65)`` product is about 2x slower than ``((65, N) @ (N, 437))^T``); the
    result may be a transposed view.
    """
    if left.shape[1] > right.shape[1]:
        return (right.T @ left).T
    return left.T @ right


def use_major(x: Tensor) -> bool:
    """Whether ``(B, T, f)`` views ``(T, B, f)`` storage whose ``T B`` rows merge into one.

    Then ``x.transpose(0, 1).reshape(T * B, f)`` is a view: the layout :mod:`.recording`
    hands over (a column slice of its scratch included), read in place by the torch matmul
    and the Triton kernel alike.
    """
    if x.shape[0] <= 1 or x.shape[1] <= 1:
        return False
    stride_b, stride_t, stride_f = x.stride()
    return stride_f == 1 and stride_t == x.shape[0] * stride_b
