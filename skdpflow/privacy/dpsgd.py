"""Poisson sampling and one DP-SGD step with fast per-row clipping (book-keeping).

The privacy unit is one row. A forward pass inside :meth:`DPSGDStep.record` keeps, for every
call of every ``nn.Linear``, the layer input ``h`` and output ``z``. One backward pass gives
the output gradients ``d = dL/dz``; from ``h`` and ``d`` alone :mod:`.norms` gives each row's
gradient norm (flat, or per output unit) and the clipped gradient sum, without ever
materialising per-row gradients.

A weight used T times per row (the shared conditioner, called once per flow stage) has the
per-row gradient ``G_i = sum_t d_{i,t} h_{i,t}^T``, whose squared norm is the Gram form
``sum_{t,s} (d_t . d_s)(h_t . h_s)``; the product ``|D|^2 |H|^2`` is wrong for T > 1.

References
----------
.. [1] Goodfellow, "Efficient per-example gradient computations", arXiv:1510.01799, 2015.
.. [2] Bu et al., "Differentially private optimization on large model at small cost"
   (book-keeping), ICML 2023.
.. [3] Li et al., "Large language models can be strong differentially private learners"
   (ghost clipping), ICLR 2022.
.. [4] McMahan et al., "A general approach to adding differential privacy to iterative
   training procedures" (per-layer clipping), arXiv:1812.06210, 2018.
.. [5] Zhu and Blaschko, "Improving differentially private SGD via randomly sparsified
   gradients", TMLR 2023, arXiv:2112.00845.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from .kernels import linear_clipped_sum_fused, linear_sq_norms_fused, select_backend
from .norms import (
    NormStrategy,
    choose_strategy,
    linear_clipped_sum,
    linear_sq_norms,
    linear_unit_sq_norms,
)

__all__ = [
    "Clipping",
    "DPSGDStep",
    "NormStrategy",
    "linear_clipped_sum",
    "linear_sq_norms",
    "linear_unit_sq_norms",
    "poisson_batches",
]

Clipping = Literal["flat", "per_unit"]

# Kept for callers of the old private name; the rule lives in norms.py.
_choose_strategy = choose_strategy

# Guards the clip coefficient C / norm against rows with a zero gradient.
NORM_EPS = 1e-6


def poisson_batches(
    n: int, sample_rate: float, steps: int, generator: torch.Generator
) -> Iterator[Tensor]:
    """Yield Poisson-sampled batches of row indices.

    Each row joins each batch independently with probability ``sample_rate``, which is the
    sampling the privacy accountant assumes; batch sizes vary and batches may be empty.

    Parameters
    ----------
    n : int
        Number of rows.
    sample_rate : float
        Inclusion probability q, in (0, 1].
    steps : int
        Number of batches to yield.
    generator : torch.Generator
        CPU generator; the same seed gives the same batches.

    Yields
    ------
    Tensor
        Sorted row indices, ``int64`` of shape ``(B,)`` with ``B ~ Binomial(n, q)``.
    """
    if n < 0 or steps < 0:
        raise ValueError(f"n and steps must be non-negative, got n={n}, steps={steps}.")
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate!r}.")
    for _ in range(steps):
        mask = torch.rand(n, generator=generator) < sample_rate
        yield mask.nonzero().squeeze(1)


def _stack_uses(tensors: list[Tensor], batch_size: int) -> Tensor:
    """Stack all uses of one layer per row: list of ``(B, *, f)`` -> ``(B, T, f)``."""
    return torch.cat([t.reshape(batch_size, -1, t.shape[-1]) for t in tensors], dim=1)


@dataclass
class _Uses:
    """Everything recorded for one linear layer during one forward pass."""

    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)


def _check_layers(module: nn.Module) -> list[nn.Linear]:
    """Trainable layers of ``module``; each must be a plain ``nn.Linear`` with own parameters."""
    layers: list[nn.Linear] = []
    owner: dict[int, str] = {}
    for name, sub in module.named_modules():
        own = [p for p in sub.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if type(sub) is not nn.Linear:
            raise TypeError(
                f"no fast per-row gradient rule for {type(sub).__name__} ({name or 'root'!r}): "
                "only nn.Linear may own trainable parameters; freeze it or rebuild it from "
                "nn.Linear layers."
            )
        for p in own:
            if id(p) in owner:
                # Norms of shared tensors across modules do not add up per module.
                raise TypeError(
                    f"parameter shared by {owner[id(p)]!r} and {name!r}: tie by calling one "
                    "nn.Linear several times instead."
                )
            owner[id(p)] = name
        layers.append(sub)
    return layers


class DPSGDStep:
    """One DP-SGD gradient with per-row clipping (flat or per unit) and Gaussian noise.

    Usage::

        step = DPSGDStep(model, max_grad_norm=1.0, noise_multiplier=sigma,
                         expected_batch_size=q * n, generator=g)
        for idx in poisson_batches(n, q, steps, g):
            optimizer.zero_grad()
            with step.record():
                losses = -model.log_prob(x[idx])      # shape (B,), one term per row
            step.step(losses)                         # sets p.grad for every parameter
            optimizer.step()

    **Clipping.** ``"flat"`` scales row i's whole gradient by ``min(1, C / |g_i|)``.
    ``"per_unit"`` clips every group of every row to its own bound ``C_u``; a group is one
    *output unit* of one ``nn.Linear``: row j of its weight plus bias entry j (all T uses
    of a tied layer share the group). The bounds are fixed by parameter count,
    ``C_u = C sqrt(n_u / N)`` (``n_u`` trainable parameters in the group, ``N`` in all), so
    ``sum_u C_u^2 = C^2``: a row's clipped gradient has norm at most
    ``sqrt(sum_u C_u^2) = C``, the L2 sensitivity of the clipped sum is C as with flat
    clipping, and the same noise ``N(0, (sigma C)^2)`` on every coordinate gives the same
    Gaussian mechanism. The accountant is unchanged and no budget is spent on the
    allocation, which reads no data.

    **Sparsification** (``sparsity=p``). Every step draws, from ``generator`` only, a
    Bernoulli keep-mask with keep probability ``1 - p`` per output unit (the coordinates of
    a unit, weight row and bias entry, are kept or dropped together, so the masked norms
    come from per-unit norms at no extra cost). Each row's gradient is masked *before*
    clipping, noise is added on kept coordinates only, and dropped coordinates get a
    gradient of exactly 0. No epsilon is spent on it: the mask is independent of the data
    (public randomness, drawn before and apart from any row), and conditional on it the
    release is a Gaussian mechanism on the kept coordinates whose clipped sum still has L2
    sensitivity at most C (flat: the masked row is clipped to C; per unit: the kept
    bounds satisfy ``sum C_u^2 <= C^2``) with the same noise ``sigma C``; the dropped
    coordinates are constants. Every conditional mechanism is thus at least as private as
    the unmasked one, so the subsampled-Gaussian accounting applies unchanged. The kept
    gradient is *not* rescaled by ``1 / (1 - p)``: rescaling is post-processing (no privacy
    effect) but scales the noise too, and Adam, which the trainer uses, is invariant to a
    constant per-coordinate scale up to its epsilon; with plain SGD raise the learning
    rate instead.

    Parameters
    ----------
    module : nn.Module
        Model whose trainable parameters all belong to ``nn.Linear`` layers (exact type). A
        layer may be called several times per forward pass (tied use).
    max_grad_norm : float
        Clipping bound C on each row's whole gradient; ``inf`` disables clipping (only
        allowed without noise, since the sensitivity is then unbounded).
    noise_multiplier : float
        sigma; the noise added to the clipped sum has standard deviation ``sigma * C``.
    expected_batch_size : float
        ``q * n``. The gradient is divided by this constant, not by the realised batch size:
        under Poisson sampling the realised size depends on whether a given row was drawn,
        so dividing by it would make the released gradient depend on that row beyond its
        clipped term, which the accountant's subsampled-Gaussian analysis does not cover.
    generator : torch.Generator or None, default=None
        Source of the noise and of the sparsification masks, on the parameters' device;
        None uses torch's global generator. The same seed gives the same masks, whatever
        the data.
    norm_strategy : {"auto", "gram", "materialise"}, default="auto"
        How per-row norms of multiply-used layers are computed; ``"auto"`` picks the cheaper
        one per layer (:func:`.norms.choose_strategy`). The others exist for tests and
        benchmarks.
    clipping : {"flat", "per_unit"}, default="flat"
        Flat per-row clipping, or per-output-unit clipping with bounds ``C_u`` (above).
    sparsity : float, default=0.0
        Fraction ``p`` in [0, 1) of output units (hence coordinates) dropped per step.
    backend : {"auto", "torch", "triton"}, default="auto"
        Flat per-row norms and clipped sums by the fused Triton kernels
        (:mod:`.kernels`) or by torch. ``"auto"`` takes Triton on CUDA when it is
        installed, torch otherwise; both give the same results to float tolerance.

    Attributes
    ----------
    layers_ : list of nn.Linear
        The layers whose uses are recorded.
    unit_bounds_ : dict of str to float
        Per-unit bound ``C_u`` of every unit of each layer, by module name.
    last_mask_ : dict of str to Tensor or None
        Keep-mask of the last step, parameter name to a bool tensor of the parameter's
        shape; None when ``sparsity`` is 0.

    Raises
    ------
    TypeError
        If a module other than ``nn.Linear`` owns a trainable parameter.
    """

    def __init__(
        self,
        module: nn.Module,
        max_grad_norm: float,
        noise_multiplier: float,
        expected_batch_size: float,
        generator: torch.Generator | None = None,
        norm_strategy: NormStrategy = "auto",
        clipping: Clipping = "flat",
        sparsity: float = 0.0,
        backend: str = "auto",
    ) -> None:
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive, got {max_grad_norm!r}.")
        if not noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier!r}.")
        if math.isinf(max_grad_norm) and noise_multiplier > 0:
            raise ValueError("noise needs a finite max_grad_norm: unclipped rows are unbounded.")
        if not expected_batch_size > 0:
            raise ValueError(f"expected_batch_size must be > 0, got {expected_batch_size!r}.")
        if norm_strategy not in ("auto", "gram", "materialise"):
            raise ValueError(f"unknown norm_strategy {norm_strategy!r}.")
        if clipping not in ("flat", "per_unit"):
            raise ValueError(f"clipping must be 'flat' or 'per_unit', got {clipping!r}.")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must lie in [0, 1), got {sparsity!r}.")
        self.module = module
        self.max_grad_norm = float(max_grad_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.expected_batch_size = float(expected_batch_size)
        self.generator = generator
        self.norm_strategy = norm_strategy
        self.clipping = clipping
        self.sparsity = float(sparsity)
        if backend not in ("auto", "torch", "triton"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}.")
        self.backend = backend
        self.layers_ = _check_layers(module)
        self._names = {layer: name for name, layer in module.named_modules()}
        self._param_names = {id(p): n for n, p in module.named_parameters()}
        self.unit_bounds_ = self._unit_bounds()
        self.last_mask_: dict[str, Tensor] | None = None
        self._uses: dict[nn.Linear, _Uses] = {}

    def _unit_bounds(self) -> dict[str, float]:
        """``C_u = C sqrt(n_u / N)``, so that ``sum_u C_u^2 = C^2`` over all units."""
        sizes = {layer: _unit_size(layer) for layer in self.layers_}
        total = sum(size * layer.out_features for layer, size in sizes.items())
        return {
            self._names[layer]: self.max_grad_norm * math.sqrt(size / total)
            for layer, size in sizes.items()
        }

    # ------------------------------------------------------------------ recording
    @contextmanager
    def record(self) -> Iterator[None]:
        """Record inputs and outputs of every trainable linear layer during a forward pass.

        All calls of a layer are kept, in order. The hooks are removed on exit; the recorded
        tensors live until the next :meth:`step` (or :meth:`clear`).
        """
        self.clear()
        handles = [layer.register_forward_hook(self._hook) for layer in self.layers_]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, layer: nn.Linear, args: tuple[Tensor, ...], output: Tensor) -> None:
        if not output.requires_grad:
            return  # a call outside autograd (e.g. under no_grad) adds no gradient
        uses = self._uses.setdefault(layer, _Uses())
        uses.inputs.append(args[0].detach())
        uses.outputs.append(output)

    def clear(self) -> None:
        """Drop everything recorded (per-row tensors must not outlive a step)."""
        self._uses = {}

    # ------------------------------------------------------------------ norms
    def per_sample_sq_norms(self, losses: Tensor) -> dict[str, Tensor]:
        """Per-row squared gradient norm of every trainable parameter, then clear.

        Parameters
        ----------
        losses : Tensor
            Per-row losses, shape ``(B,)``, from a forward pass inside :meth:`record`.

        Returns
        -------
        dict of str to Tensor
            Parameter name (as in ``module.named_parameters()``) to a ``(B,)`` tensor.
        """
        try:
            layer_data = self._backward(losses)
            norms = self._sq_norms_by_param(layer_data, losses.shape[0], losses)
        finally:
            self.clear()
        return {self._param_names[id(p)]: sq for p, sq in norms.items()}

    def per_sample_unit_sq_norms(self, losses: Tensor) -> dict[str, Tensor]:
        """Per-row, per-output-unit squared gradient norms of every layer (unmasked), then clear.

        Parameters
        ----------
        losses : Tensor
            Per-row losses, shape ``(B,)``, from a forward pass inside :meth:`record`.

        Returns
        -------
        dict of str to Tensor
            Module name to a ``(B, out_features)`` tensor: unit j holds row j of the weight
            plus bias entry j (trainable parts only).
        """
        try:
            layer_data = self._backward(losses)
            norms = self._unit_sq_norms(layer_data, losses.shape[0], losses)
        finally:
            self.clear()
        return {self._names[layer]: sq for layer, sq in norms.items()}

    # ------------------------------------------------------------------ stepping
    def step(self, losses: Tensor) -> dict[str, Tensor | float | int]:
        """Backpropagate once, clip per row, add noise and set every parameter's ``.grad``.

        Flat: ``p.grad = (sum_i c_i M g_i + M N(0, (sigma C)^2)) / expected_batch_size``
        with ``c_i = min(1, C / (|M g_i| + 1e-6))`` and ``M`` the step's keep-mask (all ones
        without sparsification). Per unit: ``c_{i,u} = min(1, C_u / (|M g_{i,u}| + 1e-6))``
        for every group u instead.

        Parameters
        ----------
        losses : Tensor
            Per-row losses, shape ``(B,)``, from a forward pass inside :meth:`record`; a
            zero-length tensor (empty Poisson batch) needs no forward pass.

        Returns
        -------
        dict
            ``"norms"``: per-row norms of the (masked) gradients ``(B,)`` (diagnostics only:
            not private), ``"clipped_fraction"``: share of rows with norm above C (per
            unit: share of (row, kept unit) pairs above their ``C_u``),
            ``"batch_size"``: B.
        """
        try:
            batch_size = losses.shape[0]
            if losses.ndim != 1:
                raise ValueError(f"losses must have shape (B,), got {tuple(losses.shape)}.")
            # Drawn first and from the generator alone: the mask never depends on the data.
            masks = self._draw_masks()
            layer_data = self._backward(losses)
            if self.clipping == "flat" and masks is None:
                sq = self._sq_norms_by_param(layer_data, batch_size, losses)
                norms = self._total_norms(list(sq.values()), batch_size, losses)
                coef: Tensor | dict[nn.Linear, Tensor] = self._clip_coefficients(norms)
                clipped = (norms > self.max_grad_norm).double()
            else:
                coef, norms, clipped = self._unit_coefficients(
                    layer_data, masks, batch_size, losses
                )
            # Split on purpose: a distributed run would all-reduce the clipped sums here,
            # between (a) and (b), so that noise is added once to the global sum.
            summed = self._clipped_sum(layer_data, coef)
            self._noise_and_normalise(summed, masks)
        finally:
            self.clear()
        fraction = float(clipped.mean()) if batch_size else 0.0
        return {"norms": norms.detach(), "clipped_fraction": fraction, "batch_size": batch_size}

    def step_empty(self) -> dict[str, Tensor | float | int]:
        """Step for an empty Poisson batch: gradients are pure noise / expected batch size."""
        weight = self.layers_[0].weight if self.layers_ else None
        dtype = weight.dtype if weight is not None else torch.get_default_dtype()
        device = weight.device if weight is not None else None
        return self.step(torch.zeros(0, dtype=dtype, device=device))

    def _draw_masks(self) -> dict[nn.Linear, Tensor] | None:
        """Per-unit Bernoulli(1 - p) keep-masks, one ``(out,)`` bool tensor per layer."""
        if self.sparsity == 0.0:
            self.last_mask_ = None
            return None
        masks: dict[nn.Linear, Tensor] = {}
        for layer in self.layers_:
            device = layer.weight.device if self.generator is None else self.generator.device
            draw = torch.rand(layer.out_features, generator=self.generator, device=device)
            masks[layer] = (draw >= self.sparsity).to(layer.weight.device)
        self.last_mask_ = {}
        for layer, keep in masks.items():
            for p in _trainable(layer):
                shape = keep if p.ndim == 1 else keep[:, None].expand_as(p)
                self.last_mask_[self._param_names[id(p)]] = shape.clone()
        return masks

    def _backward(self, losses: Tensor) -> dict[nn.Linear, tuple[Tensor, Tensor]]:
        """One backward pass; per layer the stacked ``(h, d)`` of shapes ``(B, T, *)``."""
        batch_size = losses.shape[0]
        recorded = [(layer, uses) for layer, uses in self._uses.items() if uses.outputs]
        if batch_size == 0:
            return {}
        if not recorded:
            raise RuntimeError("no recorded forward pass: compute losses inside record().")
        outputs = [out for _, uses in recorded for out in uses.outputs]
        # Gradients w.r.t. the layer outputs only: autograd then skips the weight-gradient
        # matmuls (they are rebuilt clipped below) and no unclipped gradient reaches p.grad.
        grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
        data: dict[nn.Linear, tuple[Tensor, Tensor]] = {}
        position = 0
        for layer, uses in recorded:
            count = len(uses.outputs)
            layer_grads = [
                torch.zeros_like(out) if g is None else g
                for out, g in zip(uses.outputs, grads[position : position + count], strict=True)
            ]
            position += count
            for h in uses.inputs:
                if h.shape[0] != batch_size:
                    raise ValueError(
                        f"a recorded call of {layer} has leading size {h.shape[0]}, but losses "
                        f"has {batch_size} rows; every call must see all rows of the batch."
                    )
            data[layer] = (
                _stack_uses(uses.inputs, batch_size),
                _stack_uses(layer_grads, batch_size),
            )
        return data

    def _sq_norms_by_param(
        self, data: dict[nn.Linear, tuple[Tensor, Tensor]], batch_size: int, like: Tensor
    ) -> dict[nn.Parameter, Tensor]:
        norms: dict[nn.Parameter, Tensor] = {}
        for layer in self.layers_:
            bias = layer.bias if layer.bias is not None and layer.bias.requires_grad else None
            if layer in data and self._use_triton(data[layer][0]):
                weight_sq, bias_sq = linear_sq_norms_fused(
                    *data[layer], bias is not None, backend="triton"
                )
            elif layer in data:
                weight_sq, bias_sq = linear_sq_norms(
                    *data[layer], bias is not None, self.norm_strategy
                )
            else:  # layer unused in this forward pass
                weight_sq = bias_sq = like.new_zeros(batch_size)
            if layer.weight.requires_grad:
                norms[layer.weight] = weight_sq
            if bias is not None:
                norms[bias] = bias_sq
        return norms

    def _unit_sq_norms(
        self, data: dict[nn.Linear, tuple[Tensor, Tensor]], batch_size: int, like: Tensor
    ) -> dict[nn.Linear, Tensor]:
        """``(B, out)`` squared norms of every unit's trainable coordinates, per layer."""
        norms: dict[nn.Linear, Tensor] = {}
        for layer in self.layers_:
            bias = layer.bias is not None and layer.bias.requires_grad
            if layer not in data:  # layer unused in this forward pass
                norms[layer] = like.new_zeros(batch_size, layer.out_features).detach()
            elif layer.weight.requires_grad:
                norms[layer] = linear_unit_sq_norms(*data[layer], bias, self.norm_strategy)
            else:
                norms[layer] = data[layer][1].sum(1).square()
        return norms

    def _unit_coefficients(
        self,
        data: dict[nn.Linear, tuple[Tensor, Tensor]],
        masks: dict[nn.Linear, Tensor] | None,
        batch_size: int,
        like: Tensor,
    ) -> tuple[Tensor | dict[nn.Linear, Tensor], Tensor, Tensor]:
        """Clip coefficients from per-unit norms of the masked rows; row norms; share clipped.

        Flat: one ``(B,)`` coefficient from the masked row norm. Per unit: ``(B, out)`` per
        layer. Dropped units need no coefficient of their own: the mask is per output unit,
        so zeroing them in the clipped sum (in :meth:`_noise_and_normalise`) equals summing
        the masked rows, and a flat clipped sum stays one narrow-factor matmul.
        """
        unit_sq = self._unit_sq_norms(data, batch_size, like)
        if masks is not None:
            unit_sq = {layer: sq * masks[layer] for layer, sq in unit_sq.items()}
        norms = self._total_norms([sq.sum(1) for sq in unit_sq.values()], batch_size, like)
        if self.clipping == "flat":
            return self._clip_coefficients(norms), norms, (norms > self.max_grad_norm).double()
        coef: dict[nn.Linear, Tensor] = {}
        over, kept = 0, 0
        for layer, sq in unit_sq.items():
            bound = self.unit_bounds_[self._names[layer]]
            unit_norms = sq.sqrt()
            if math.isinf(bound):
                coef[layer] = torch.ones_like(unit_norms)
            else:
                coef[layer] = (bound / (unit_norms + NORM_EPS)).clamp(max=1.0)
            over = over + (unit_norms > bound).sum()  # a dropped unit has norm 0
            kept = kept + (sq.shape[1] if masks is None else masks[layer].sum()) * batch_size
        return coef, norms, torch.as_tensor(over / kept if float(kept) > 0 else 0.0)

    def _use_triton(self, like: Tensor) -> bool:
        """Fused Triton kernels on CUDA (``backend="auto"``), torch everywhere else."""
        return select_backend(like.device, self.backend) == "triton"

    @staticmethod
    def _total_norms(values: list[Tensor], batch_size: int, like: Tensor) -> Tensor:
        total = like.new_zeros(batch_size).detach()
        for value in values:
            total = total + value
        return total.sqrt()

    def _clip_coefficients(self, norms: Tensor) -> Tensor:
        if math.isinf(self.max_grad_norm):
            return torch.ones_like(norms)
        return (self.max_grad_norm / (norms + NORM_EPS)).clamp(max=1.0)

    def _clipped_sum(
        self,
        data: dict[nn.Linear, tuple[Tensor, Tensor]],
        coef: Tensor | dict[nn.Linear, Tensor],
    ) -> dict[nn.Parameter, Tensor]:
        """(a) ``sum_i c_i g_i`` per parameter; zero for layers with no recorded use."""
        summed: dict[nn.Parameter, Tensor] = {}
        for layer in self.layers_:
            if layer in data:
                layer_coef = coef[layer] if isinstance(coef, dict) else coef
                if self._use_triton(data[layer][0]):
                    weight_grad, bias_grad = linear_clipped_sum_fused(
                        *data[layer], layer_coef, backend="triton")
                else:
                    weight_grad, bias_grad = linear_clipped_sum(*data[layer], layer_coef)
            else:
                weight_grad = torch.zeros_like(layer.weight)
                bias_grad = None if layer.bias is None else torch.zeros_like(layer.bias)
            if layer.weight.requires_grad:
                summed[layer.weight] = weight_grad.to(layer.weight.dtype)
            if layer.bias is not None and layer.bias.requires_grad:
                summed[layer.bias] = bias_grad.to(layer.bias.dtype)
        return summed

    def _noise_and_normalise(
        self, summed: dict[nn.Parameter, Tensor], masks: dict[nn.Linear, Tensor] | None
    ) -> None:
        """(b) add ``N(0, (sigma C)^2)``, zero dropped units, divide by the expected batch size.

        Zeroing after the sum is the masking of every row (the mask is per output unit) and
        leaves noise on kept coordinates only.
        """
        std = self.noise_multiplier * self.max_grad_norm
        keep = {} if masks is None else self._param_masks(masks)
        for p, grad in summed.items():
            if std > 0:
                noise = torch.normal(
                    0.0,
                    std,
                    size=tuple(p.shape),
                    generator=self.generator,
                    dtype=p.dtype,
                    device=p.device,
                )
                grad = grad + noise
            if p in keep:
                grad = torch.where(keep[p], grad, torch.zeros_like(grad))
            p.grad = (grad / self.expected_batch_size).detach()

    @staticmethod
    def _param_masks(masks: dict[nn.Linear, Tensor]) -> dict[nn.Parameter, Tensor]:
        out: dict[nn.Parameter, Tensor] = {}
        for layer, keep in masks.items():
            for p in _trainable(layer):
                out[p] = keep if p.ndim == 1 else keep[:, None]
        return out


def _trainable(layer: nn.Linear) -> list[nn.Parameter]:
    return [p for p in (layer.weight, layer.bias) if p is not None and p.requires_grad]


def _unit_size(layer: nn.Linear) -> int:
    """Trainable parameters in one output unit: a weight row and a bias entry."""
    weight = layer.in_features if layer.weight.requires_grad else 0
    bias = 1 if layer.bias is not None and layer.bias.requires_grad else 0
    return weight + bias
