"""Poisson sampling and one DP-SGD step with fast per-row clipping (book-keeping).

The privacy unit is one row. A forward pass inside :meth:`DPSGDStep.record` keeps, for every
call of every ``nn.Linear``, the layer input ``h`` and output ``z``; one backward pass gives
the output gradients ``d = dL/dz`` (:mod:`.recording`). From ``h`` and ``d`` alone
:mod:`.norms` gives each row's gradient norm (flat, or per output unit) and the clipped
gradient sum, without ever materialising per-row gradients. Clip coefficients, per-unit
bounds and sparsification masks live in :mod:`.clipping`.

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
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .backends import backend_for
from .clipping import (
    Clipping,
    clip_coefficients,
    draw_unit_masks,
    parameter_masks,
    unit_bounds,
)
from .norms import NormStrategy, linear_unit_sq_norms
from .randomness import PrivacyNoise, SecureNoise
from .recording import LayerRecord, LinearRecorder, linear_layers

__all__ = ["DPSGDStep", "poisson_batches", "poisson_skip_batches"]

Records = dict[nn.Linear, LayerRecord]


def poisson_batches(
    n: int, sample_rate: float, steps: int, noise: PrivacyNoise
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
    noise : PrivacyNoise
        Source of the masks: :class:`~skdpflow.privacy.randomness.SecureNoise` in every fit
        (amplification by sampling needs the batches secret).

    Yields
    ------
    Tensor
        Sorted row indices, ``int64`` of shape ``(B,)`` with ``B ~ Binomial(n, q)``.
    """
    _check_batches(n, sample_rate, steps)
    for _ in range(steps):
        yield noise.poisson_mask(n, sample_rate).nonzero().squeeze(1)


def _check_batches(n: int, sample_rate: float, steps: int) -> None:
    if n < 0 or steps < 0:
        raise ValueError(f"n and steps must be non-negative, got n={n}, steps={steps}.")
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate!r}.")


def poisson_skip_batches(
    n: int, sample_rate: float, steps: int, noise: PrivacyNoise
) -> Iterator[Tensor]:
    """Poisson-sampled batches as :func:`poisson_batches` gives them, in O(q n) per batch.

    In a sequence of independent Bernoulli(q) trials, the first success is at trial ``G_1``
    and each next one ``G_k`` trials later, with ``G_1, G_2, ...`` independent
    Geometric(q) on ``{1, 2, ...}``. So the rows ``G_1 - 1, G_1 + G_2 - 1, ...`` below ``n``
    have exactly the law of the rows a Bernoulli(q) mask selects: each row joins
    independently with probability q, as the accountant assumes. The gaps come from the
    secret ``noise`` (:meth:`~skdpflow.privacy.randomness.PrivacyNoise.geometric`), about
    ``q n`` draws per batch instead of ``n`` uniforms (``tests/test_dpsgd.py`` compares the
    batch sizes and per-row frequencies with the masks').

    Yields
    ------
    Tensor
        Sorted row indices, ``int64`` of shape ``(B,)`` with ``B ~ Binomial(n, q)``.
    """
    _check_batches(n, sample_rate, steps)
    mean = sample_rate * n
    block = int(mean + 4.0 * math.sqrt(mean) + 16)  # gaps drawn at once: rarely too few
    for _ in range(steps):
        parts, last = [], -1
        while True:
            rows = last + np.cumsum(noise.geometric(block, sample_rate))
            inside = rows[rows < n]
            parts.append(inside)
            if len(inside) < len(rows):  # passed the end: the batch is complete
                break
            last = int(rows[-1])
        yield torch.from_numpy(np.concatenate(parts))


class DPSGDStep:
    """One DP-SGD gradient with per-row clipping (flat or per unit) and Gaussian noise.

    Usage::

        noise = SecureNoise()                         # secret: OS-keyed, never stored
        step = DPSGDStep(model, max_grad_norm=1.0, noise_multiplier=sigma,
                         expected_batch_size=q * n, noise=noise)
        for idx in poisson_batches(n, q, steps, noise):
            optimizer.zero_grad()
            with step.record():
                losses = -model.log_prob(x[idx])      # shape (B,), one term per row
            step.step(losses)                         # sets p.grad for every parameter
            optimizer.step()

    **Clipping.** ``"flat"`` scales row i's whole gradient by ``min(1, C / |g_i|)``;
    ``"per_unit"`` clips each output unit of each layer (weight row j with bias entry j,
    over all T tied uses) to ``C_u = C sqrt(n_u / N)``, so that ``sum_u C_u^2 = C^2``.
    **Sparsification** (``sparsity=p``) drops each output unit with probability ``p`` per
    step, by a mask drawn from ``generator`` alone, before clipping; noise goes on kept
    coordinates only and dropped ones get exactly 0. Neither changes the accounting: why
    is in :mod:`.clipping`. The kept gradient is not rescaled by ``1 / (1 - p)`` (Adam is
    invariant to a constant per-coordinate scale; with plain SGD raise the learning rate).

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
        Source of the sparsification masks (public randomness), on the parameters' device;
        None uses torch's global generator. The same seed gives the same masks, whatever
        the data. It never draws the privacy noise.
    norm_strategy : {"auto", "gram", "materialise"}, default="auto"
        How per-row norms of multiply-used layers are computed; ``"auto"`` picks the cheaper
        one per layer (:func:`.norms.choose_strategy`). The others exist for tests and
        benchmarks.
    clipping : {"flat", "per_unit"}, default="flat"
        Flat per-row clipping, or per-output-unit clipping with bounds ``C_u`` (above).
    sparsity : float, default=0.0
        Fraction ``p`` in [0, 1) of output units (hence coordinates) dropped per step.
    noise : PrivacyNoise or None, default=None
        Source of the Gaussian noise; None draws a fresh
        :class:`~skdpflow.privacy.randomness.SecureNoise` (secret, never reproducible).
        Tests may pass a :class:`~skdpflow.privacy.randomness.SeededNoise`.
    backend : {"auto", "torch", "triton"}, default="auto"
        Flat per-row norms and clipped sums by the fused Triton kernels
        (:mod:`.kernels`) or by torch, chosen once, here, for the parameters' device
        (:func:`.backends.select_backend`). ``"auto"`` takes Triton on CUDA when it is
        installed, torch otherwise; both give the same results to float tolerance.
    comm : Communicator or None, default=None
        Distributed DP-SGD (:mod:`skdpflow.distributed`): this rank's batch is its part of
        the global Poisson batch; the clipped sums of all ranks are summed by one
        all-reduce of every gradient in one float64 buffer, into which rank 0 alone has
        added the noise, so the noise enters the global sum once. ``expected_batch_size``
        is then the global one, ``generator`` must be seeded alike on every rank (same
        sparsification masks), and every rank must call :meth:`step` at every step, an
        empty batch included.

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
    RuntimeError
        If ``backend="triton"`` but the kernels cannot run on the parameters' device.
    """

    def __init__(
        self,
        module: nn.Module,
        max_grad_norm: float,
        noise_multiplier: float,
        expected_batch_size: float,
        generator: torch.Generator | None = None,
        norm_strategy: NormStrategy = "auto",
        noise: PrivacyNoise | None = None,
        clipping: Clipping = "flat",
        sparsity: float = 0.0,
        backend: str = "auto",
        comm: Any = None,
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
        if backend not in ("auto", "torch", "triton"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}.")
        self.module = module
        self.max_grad_norm = float(max_grad_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.expected_batch_size = float(expected_batch_size)
        self.generator = generator
        self.noise = SecureNoise() if noise is None else noise
        self.norm_strategy = norm_strategy
        self.clipping = clipping
        self.sparsity = float(sparsity)
        self.backend = backend
        self.comm = comm
        self.layers_ = linear_layers(module)
        self._names = {layer: name for name, layer in module.named_modules()}
        self._param_names = {id(p): n for n, p in module.named_parameters()}
        self._bounds = unit_bounds(self.layers_, self.max_grad_norm)
        self.unit_bounds_ = {
            self._names[layer]: bound
            for layer, bound in zip(self.layers_, self._bounds, strict=True)
        }
        self.last_mask_: dict[str, Tensor] | None = None
        device = self.layers_[0].weight.device if self.layers_ else torch.device("cpu")
        self._backend = backend_for(device, backend)
        self._recorder = LinearRecorder(self.layers_)

    # ------------------------------------------------------------------ recording
    def record(self) -> AbstractContextManager[None]:
        """Record inputs and outputs of every trainable linear layer during a forward pass.

        All calls of a layer are kept, in order. The hooks are removed on exit; the recorded
        tensors live until the next :meth:`step` (or :meth:`clear`).
        """
        return self._recorder.record()

    def clear(self) -> None:
        """Drop the recorded calls and the autograd graph they hold."""
        self._recorder.clear()

    def release(self) -> None:
        """Also free the scratch buffers, which keep the last batch's ``h`` and ``d``.

        They are reused by the next step (allocating them afresh costs about as much as
        filling them); they are never exposed, and are freed with this object anyway.
        """
        self._recorder.release()

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
        records = self._recorder.backward(losses)
        norms: dict[str, Tensor] = {}
        for layer in self.layers_:
            weight_sq, bias_sq = self._layer_sq_norms(layer, records.get(layer), losses)
            for p, sq in zip((layer.weight, layer.bias), (weight_sq, bias_sq), strict=True):
                if p is not None and p.requires_grad:
                    norms[self._param_names[id(p)]] = sq
        return norms

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
        records = self._recorder.backward(losses)
        return {
            self._names[layer]: self._unit_sq_norms(layer, records.get(layer), losses)
            for layer in self.layers_
        }

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
            if losses.ndim != 1:
                raise ValueError(f"losses must have shape (B,), got {tuple(losses.shape)}.")
            # Drawn first and from the generator alone: the mask never depends on the data.
            masks = self._draw_masks()
            records = self._recorder.backward(losses)
        finally:
            self.clear()
        if masks is not None:
            # One decision per output unit: zeroing d_j masks weight row j and bias entry j
            # of every row's gradient, before its norm is taken.
            for layer, keep in zip(self.layers_, masks, strict=True):
                if layer in records:
                    records[layer].d.mul_(keep.to(records[layer].d.dtype))
        if self.clipping == "flat":
            coef, norms, fraction = self._flat_coefficients(records, losses)
        else:
            coef, norms, fraction = self._unit_coefficients(records, masks, losses)
        # Split on purpose: a distributed run (comm) all-reduces the clipped sums between
        # (a) and (b), with the noise added once to the global sum.
        summed = self._clipped_sums(records, coef)
        self._noise_and_normalise(summed, masks)
        return {"norms": norms.detach(), "clipped_fraction": fraction,
                "batch_size": losses.shape[0]}

    def step_empty(self) -> dict[str, Tensor | float | int]:
        """Step for an empty Poisson batch: gradients are pure noise / expected batch size."""
        weight = self.layers_[0].weight if self.layers_ else None
        dtype = weight.dtype if weight is not None else torch.get_default_dtype()
        device = weight.device if weight is not None else None
        return self.step(torch.zeros(0, dtype=dtype, device=device))

    def _draw_masks(self) -> list[Tensor] | None:
        """Per-unit keep-masks, one ``(out,)`` bool tensor per layer; None without sparsity."""
        if self.sparsity == 0.0:
            self.last_mask_ = None
            return None
        masks = draw_unit_masks(self.layers_, self.sparsity, self.generator)
        self.last_mask_ = {
            self._param_names[id(p)]: keep.expand_as(p).clone()
            for layer, unit_keep in zip(self.layers_, masks, strict=True)
            for p, keep in parameter_masks(layer, unit_keep).items()
        }
        return masks

    # ------------------------------------------------------------------ per layer
    def _layer_sq_norms(
        self, layer: nn.Linear, record: LayerRecord | None, like: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Per-row squared norms ``(B,)`` of the layer's weight and (trainable) bias."""
        if record is None:  # layer unused in this forward pass
            zeros = like.new_zeros(like.shape[0]).detach()
            return zeros, zeros if layer.bias is not None and layer.bias.requires_grad else None
        return self._backend.sq_norms(record, self.norm_strategy)

    def _unit_sq_norms(
        self, layer: nn.Linear, record: LayerRecord | None, like: Tensor
    ) -> Tensor:
        """``(B, out)`` squared norms of every unit's trainable coordinates."""
        if record is None:  # layer unused in this forward pass
            return like.new_zeros(like.shape[0], layer.out_features).detach()
        if not layer.weight.requires_grad:  # the bias entry alone
            return record.grads.sum(1).square()
        shape = (record.d.shape[1], record.d.shape[0], record.d.shape[2])
        workspace = self._recorder.scratch(layer, "unit", shape, record.d)
        return linear_unit_sq_norms(record.inputs, record.grads, record.bias,
                                    self.norm_strategy, workspace=workspace)

    def _flat_coefficients(self, records: Records, like: Tensor) -> tuple[Tensor, Tensor, float]:
        """One ``(B,)`` coefficient ``min(1, C / |g_i|)`` from the (masked) row norms."""
        total = like.new_zeros(like.shape[0]).detach()
        for layer in self.layers_:
            record = records.get(layer)
            if record is None:
                continue
            weight_sq, bias_sq = self._layer_sq_norms(layer, record, like)
            if layer.weight.requires_grad:
                total = total + weight_sq
            if bias_sq is not None:
                total = total + bias_sq
        norms = total.sqrt()
        fraction = float((norms > self.max_grad_norm).double().mean()) if len(norms) else 0.0
        return clip_coefficients(norms, self.max_grad_norm), norms, fraction

    def _unit_coefficients(
        self, records: Records, masks: list[Tensor] | None, like: Tensor
    ) -> tuple[dict[nn.Linear, Tensor], Tensor, float]:
        """``(B, out)`` coefficients ``min(1, C_u / |g_{i,u}|)`` per layer; row norms; share.

        Dropped units were zeroed in ``d``, so their norm is 0: they count neither as
        clipped nor as kept.
        """
        batch = like.shape[0]
        total = like.new_zeros(batch).detach()
        coef: dict[nn.Linear, Tensor] = {}
        over, kept = 0, 0
        for i, (layer, bound) in enumerate(zip(self.layers_, self._bounds, strict=True)):
            sq = self._unit_sq_norms(layer, records.get(layer), like)
            total = total + sq.sum(1)
            unit_norms = sq.sqrt()
            coef[layer] = clip_coefficients(unit_norms, bound)
            over = over + int((unit_norms > bound).sum())
            kept = kept + batch * (layer.out_features if masks is None else int(masks[i].sum()))
        return coef, total.sqrt(), over / kept if kept > 0 else 0.0

    def _clipped_sums(
        self, records: Records, coef: Tensor | dict[nn.Linear, Tensor]
    ) -> dict[nn.Parameter, Tensor]:
        """(a) ``sum_i c_i g_i`` per parameter; zero for layers with no recorded use."""
        summed: dict[nn.Parameter, Tensor] = {}
        for layer in self.layers_:
            record = records.get(layer)
            layer_coef = coef[layer] if isinstance(coef, dict) else coef
            if record is None:
                weight_grad = torch.zeros_like(layer.weight)
                bias_grad = None if layer.bias is None else torch.zeros_like(layer.bias)
            else:
                weight_grad, bias_grad = self._backend.clipped_sum(record, layer_coef)
            for p, grad in zip((layer.weight, layer.bias), (weight_grad, bias_grad), strict=True):
                if p is not None and p.requires_grad:
                    summed[p] = grad.to(p.dtype)
        return summed

    def _noise_and_normalise(
        self, summed: dict[nn.Parameter, Tensor], masks: list[Tensor] | None
    ) -> None:
        """(b) add ``N(0, (sigma C)^2)``, zero dropped units, divide by the expected batch size.

        Zeroing after the sum is the masking of every row (the mask is per output unit) and
        leaves noise on kept coordinates only.
        """
        std = self.noise_multiplier * self.max_grad_norm
        keep: dict[nn.Parameter, Tensor] = {}
        if masks is not None:
            for layer, unit_keep in zip(self.layers_, masks, strict=True):
                keep.update(parameter_masks(layer, unit_keep))
        if self.comm is not None:
            summed = self._all_reduce_noisy(summed, std)
        for p, grad in summed.items():
            if std > 0 and self.comm is None:
                # float64 noise from the secret source, added, then rounded to the dtype.
                noise = self.noise.normal(tuple(p.shape), std, device=p.device)
                grad = noise.add_(grad).to(p.dtype)
            if p in keep:
                grad = torch.where(keep[p], grad, torch.zeros_like(grad))
            p.grad = (grad / self.expected_batch_size).detach().contiguous()

    def _all_reduce_noisy(self, summed: dict[nn.Parameter, Tensor], std: float
                          ) -> dict[nn.Parameter, Tensor]:
        """(a') the global clipped sums plus the noise, added once (by rank 0).

        One float64 buffer holds every parameter's sum; rank 0 adds ``N(0, (sigma C)^2)``
        (float64, from its secret source) to its own before the all-reduce; the global
        sum is then rounded to each parameter's dtype, as on one process.
        """
        flat = torch.cat([g.reshape(-1).to(torch.float64) for g in summed.values()])
        if std > 0 and self.comm.rank == 0:
            flat.add_(self.noise.normal((flat.numel(),), std, device=flat.device))
        flat = self.comm.all_reduce_sum(flat, "the clipped gradient sums")
        out, start = {}, 0
        for p, grad in summed.items():
            out[p] = flat[start:start + grad.numel()].view(grad.shape).to(p.dtype)
            start += grad.numel()
        return out
