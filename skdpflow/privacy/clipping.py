"""Clip coefficients, per-unit bounds and sparsification masks of DP-SGD (no data read here).

A *unit* is one output unit of one ``nn.Linear``: row j of its weight plus bias entry j (all
T uses of a tied layer share the unit).

**Per-unit clipping** [1]_ clips every unit of every row to its own bound ``C_u``, fixed by
parameter count: ``C_u = C sqrt(n_u / N)`` (``n_u`` trainable parameters in the unit, ``N``
in all), so ``sum_u C_u^2 = C^2``. A row's clipped gradient then has norm at most
``sqrt(sum_u C_u^2) = C``, the L2 sensitivity of the clipped sum is C as with flat clipping,
and the same noise ``N(0, (sigma C)^2)`` on every coordinate gives the same Gaussian
mechanism: the accountant is unchanged, and no budget is spent on the allocation, which
reads no data.

**Stochastic sparsification** [2]_ (``sparsity=p``) draws every step, from the generator
only, a Bernoulli keep-mask with keep probability ``1 - p`` per unit (a unit's weight row
and bias entry are kept or dropped together: zeroing the layer's output gradient ``d_j``
masks both, for every row, before its norm is taken). Each row is masked *before*
clipping, noise is added on kept coordinates only, and dropped coordinates get exactly 0.
No epsilon is spent on it: the mask is independent of the data (public randomness, drawn
before and apart from any row), and conditional on it the release is a Gaussian mechanism
on the kept coordinates whose clipped sum still has L2 sensitivity at most C (flat: the
masked row is clipped to C; per unit: the kept bounds satisfy ``sum C_u^2 <= C^2``) with
the same noise ``sigma C``; the dropped coordinates are constants. Every conditional
mechanism is thus at least as private as the unmasked one, so the subsampled-Gaussian
accounting applies unchanged. Rescaling the kept gradient by ``1 / (1 - p)`` would be
post-processing; it is not done (it scales the noise too, and Adam is invariant to it).

References
----------
.. [1] McMahan et al., "A general approach to adding differential privacy to iterative
   training procedures" (per-layer clipping), arXiv:1812.06210, 2018.
.. [2] Zhu and Blaschko, "Improving differentially private SGD via randomly sparsified
   gradients", TMLR 2023, arXiv:2112.00845.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "NORM_EPS",
    "Clipping",
    "clip_coefficients",
    "draw_unit_masks",
    "parameter_masks",
    "trainable",
    "unit_bounds",
    "unit_size",
]

Clipping = Literal["flat", "per_unit"]

# Guards the clip coefficient C / norm against rows with a zero gradient.
NORM_EPS = 1e-6


def trainable(layer: nn.Linear) -> list[nn.Parameter]:
    """The layer's parameters that require a gradient: weight, then bias."""
    return [p for p in (layer.weight, layer.bias) if p is not None and p.requires_grad]


def unit_size(layer: nn.Linear) -> int:
    """Trainable parameters in one output unit: a weight row and a bias entry."""
    weight = layer.in_features if layer.weight.requires_grad else 0
    bias = 1 if layer.bias is not None and layer.bias.requires_grad else 0
    return weight + bias


def unit_bounds(layers: list[nn.Linear], max_grad_norm: float) -> list[float]:
    """Per-unit bound of each layer, ``C_u = C sqrt(n_u / N)``, so ``sum_u C_u^2 = C^2``.

    Parameters
    ----------
    layers : list of nn.Linear
        Every trainable layer of the model (the allocation must cover all of them).
    max_grad_norm : float
        The row bound C.

    Returns
    -------
    list of float
        One bound per layer, shared by its ``out_features`` units.
    """
    sizes = [unit_size(layer) for layer in layers]
    total = sum(size * layer.out_features for size, layer in zip(sizes, layers, strict=True))
    return [max_grad_norm * math.sqrt(size / total) for size in sizes]


def clip_coefficients(norms: Tensor, bound: float) -> Tensor:
    """``min(1, bound / (norm + NORM_EPS))``, elementwise; all ones for an infinite bound."""
    if math.isinf(bound):
        return torch.ones_like(norms)
    return (bound / (norms + NORM_EPS)).clamp(max=1.0)


def draw_unit_masks(
    layers: list[nn.Linear], sparsity: float, generator: torch.Generator | None
) -> list[Tensor]:
    """Bernoulli(1 - p) keep-masks, one ``(out_features,)`` bool tensor per layer.

    Drawn from ``generator`` alone, in layer order, so the masks are public randomness: the
    same seed gives the same masks whatever the data.
    """
    masks = []
    for layer in layers:
        device = layer.weight.device if generator is None else generator.device
        draw = torch.rand(layer.out_features, generator=generator, device=device)
        masks.append((draw >= sparsity).to(layer.weight.device))
    return masks


def parameter_masks(layer: nn.Linear, keep: Tensor) -> dict[nn.Parameter, Tensor]:
    """A unit keep-mask ``(out,)`` broadcast to each trainable parameter of ``layer``."""
    return {p: keep if p.ndim == 1 else keep[:, None] for p in trainable(layer)}
