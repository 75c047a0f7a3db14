"""Poisson sampling and one DP-SGD step with fast per-row clipping (book-keeping).

The privacy unit is one row. A forward pass inside :meth:`DPSGDStep.record` keeps, for every
call of every ``nn.Linear``, the layer input ``h`` and output ``z``. One backward pass gives
the output gradients ``d = dL/dz``; from ``h`` and ``d`` alone we get each row's gradient norm
and the clipped gradient sum, without ever materialising per-row gradients.

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
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "DPSGDStep",
    "NormStrategy",
    "linear_clipped_sum",
    "linear_sq_norms",
    "poisson_batches",
]

NormStrategy = Literal["auto", "gram", "materialise"]

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


def _choose_strategy(uses: int, d_in: int, d_out: int) -> Literal["gram", "materialise"]:
    """Pick the cheaper per-row norm: Gram ``T^2 (in + out)`` vs materialised ``T in out``."""
    return "gram" if uses * (d_in + d_out) <= d_in * d_out else "materialise"


def linear_sq_norms(
    inputs: Tensor, grads: Tensor, bias: bool, strategy: NormStrategy = "auto"
) -> tuple[Tensor, Tensor | None]:
    """Per-row squared gradient norms of a linear layer used T times per row.

    ``G_i = sum_t d_{i,t} h_{i,t}^T``, so ``|G_i|^2 = sum_{t,s} (d_t . d_s)(h_t . h_s)``
    (Gram form) or ``|einsum('to,ti->oi', d_i, h_i)|^2`` (materialised); the bias gradient is
    ``sum_t d_{i,t}``.

    Parameters
    ----------
    inputs : Tensor
        Layer inputs ``h``, shape ``(B, T, in)``.
    grads : Tensor
        Output gradients ``d = dL_i/dz``, shape ``(B, T, out)``.
    bias : bool
        Whether to return the bias norms too.
    strategy : {"auto", "gram", "materialise"}, default="auto"
        ``"auto"`` picks the cheaper form per layer.

    Returns
    -------
    weight_sq : Tensor
        Shape ``(B,)``.
    bias_sq : Tensor or None
        Shape ``(B,)``, or None when ``bias`` is False.
    """
    uses, d_in, d_out = inputs.shape[1], inputs.shape[2], grads.shape[2]
    if strategy == "auto":
        strategy = _choose_strategy(uses, d_in, d_out)
    if uses == 1:
        # Goodfellow's rule |d|^2 |h|^2; both strategies reduce to it.
        weight_sq = grads.square().sum((1, 2)) * inputs.square().sum((1, 2))
    elif strategy == "gram":
        gram_d = torch.bmm(grads, grads.transpose(1, 2))
        gram_h = torch.bmm(inputs, inputs.transpose(1, 2))
        weight_sq = (gram_d * gram_h).sum((1, 2))
    elif strategy == "materialise":
        weight_sq = torch.einsum("bto,bti->boi", grads, inputs).square().sum((1, 2))
    else:
        raise ValueError(f"unknown norm strategy {strategy!r}.")
    bias_sq = grads.sum(1).square().sum(1) if bias else None
    return weight_sq, bias_sq


def linear_clipped_sum(inputs: Tensor, grads: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of per-row gradients scaled by ``coef``, without per-row gradients.

    ``sum_i c_i G_i = sum_{i,t} (c_i d_{i,t}) h_{i,t}^T``: one matmul over the ``B*T`` rows.

    Parameters
    ----------
    inputs : Tensor
        Shape ``(B, T, in)``.
    grads : Tensor
        Shape ``(B, T, out)``.
    coef : Tensor
        Clip coefficients, shape ``(B,)``.

    Returns
    -------
    weight_grad : Tensor
        Shape ``(out, in)``.
    bias_grad : Tensor
        Shape ``(out,)``.
    """
    d_in, d_out = inputs.shape[-1], grads.shape[-1]
    # c_i may multiply either factor; scaling the narrower one costs fewer multiplications.
    if d_in <= d_out:
        left, right = grads, inputs * coef[:, None, None]
    else:
        left, right = grads * coef[:, None, None], inputs
    weight_grad = left.reshape(-1, d_out).T @ right.reshape(-1, d_in)
    bias_grad = coef @ grads.sum(1)
    return weight_grad, bias_grad


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
    """One DP-SGD gradient with flat per-row clipping and Gaussian noise.

    Usage::

        step = DPSGDStep(model, max_grad_norm=1.0, noise_multiplier=sigma,
                         expected_batch_size=q * n, generator=g)
        for idx in poisson_batches(n, q, steps, g):
            optimizer.zero_grad()
            with step.record():
                losses = -model.log_prob(x[idx])      # shape (B,), one term per row
            step.step(losses)                         # sets p.grad for every parameter
            optimizer.step()

    Parameters
    ----------
    module : nn.Module
        Model whose trainable parameters all belong to ``nn.Linear`` layers (exact type). A
        layer may be called several times per forward pass (tied use).
    max_grad_norm : float
        Flat clipping bound C on each row's whole gradient; ``inf`` disables clipping (only
        allowed without noise, since the sensitivity is then unbounded).
    noise_multiplier : float
        sigma; the noise added to the clipped sum has standard deviation ``sigma * C``.
    expected_batch_size : float
        ``q * n``. The gradient is divided by this constant, not by the realised batch size:
        under Poisson sampling the realised size depends on whether a given row was drawn,
        so dividing by it would make the released gradient depend on that row beyond its
        clipped term, which the accountant's subsampled-Gaussian analysis does not cover.
    generator : torch.Generator or None, default=None
        Source of the noise, on the parameters' device; None uses torch's global generator.
    norm_strategy : {"auto", "gram", "materialise"}, default="auto"
        How per-row norms of multiply-used layers are computed; ``"auto"`` picks the cheaper
        one per layer. The others exist for tests and benchmarks.

    Attributes
    ----------
    layers_ : list of nn.Linear
        The layers whose uses are recorded.

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
        self.module = module
        self.max_grad_norm = float(max_grad_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.expected_batch_size = float(expected_batch_size)
        self.generator = generator
        self.norm_strategy = norm_strategy
        self.layers_ = _check_layers(module)
        self._uses: dict[nn.Linear, _Uses] = {}

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

    # ------------------------------------------------------------------ stepping
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
        names = {id(p): n for n, p in self.module.named_parameters()}
        return {names[id(p)]: sq for p, sq in norms.items()}

    def step(self, losses: Tensor) -> dict[str, Tensor | float | int]:
        """Backpropagate once, clip per row, add noise and set every parameter's ``.grad``.

        ``p.grad = (sum_i c_i g_i + N(0, (sigma C)^2)) / expected_batch_size`` with
        ``c_i = min(1, C / (|g_i| + 1e-6))``.

        Parameters
        ----------
        losses : Tensor
            Per-row losses, shape ``(B,)``, from a forward pass inside :meth:`record`; a
            zero-length tensor (empty Poisson batch) needs no forward pass.

        Returns
        -------
        dict
            ``"norms"``: per-row gradient norms ``(B,)`` (diagnostics only: not private),
            ``"clipped_fraction"``: share of rows with norm above C,
            ``"batch_size"``: B.
        """
        try:
            batch_size = losses.shape[0]
            if losses.ndim != 1:
                raise ValueError(f"losses must have shape (B,), got {tuple(losses.shape)}.")
            layer_data = self._backward(losses)
            sq = self._sq_norms_by_param(layer_data, batch_size, losses)
            norms = self._total_norms(sq, batch_size, losses)
            coef = self._clip_coefficients(norms)
            # Split on purpose: a distributed run would all-reduce the clipped sums here,
            # between (a) and (b), so that noise is added once to the global sum.
            summed = self._clipped_sum(layer_data, coef)
            self._noise_and_normalise(summed)
        finally:
            self.clear()
        clipped = float((norms > self.max_grad_norm).double().mean()) if batch_size else 0.0
        return {"norms": norms.detach(), "clipped_fraction": clipped, "batch_size": batch_size}

    def step_empty(self) -> dict[str, Tensor | float | int]:
        """Step for an empty Poisson batch: gradients are pure noise / expected batch size."""
        weight = self.layers_[0].weight if self.layers_ else None
        dtype = weight.dtype if weight is not None else torch.get_default_dtype()
        device = weight.device if weight is not None else None
        return self.step(torch.zeros(0, dtype=dtype, device=device))

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
            if layer in data:
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

    @staticmethod
    def _total_norms(sq: dict[nn.Parameter, Tensor], batch_size: int, like: Tensor) -> Tensor:
        total = like.new_zeros(batch_size).detach()
        for value in sq.values():
            total = total + value
        return total.sqrt()

    def _clip_coefficients(self, norms: Tensor) -> Tensor:
        if math.isinf(self.max_grad_norm):
            return torch.ones_like(norms)
        return (self.max_grad_norm / (norms + NORM_EPS)).clamp(max=1.0)

    def _clipped_sum(
        self, data: dict[nn.Linear, tuple[Tensor, Tensor]], coef: Tensor
    ) -> dict[nn.Parameter, Tensor]:
        """(a) ``sum_i c_i g_i`` per parameter; zero for layers with no recorded use."""
        summed: dict[nn.Parameter, Tensor] = {}
        for layer in self.layers_:
            if layer in data:
                weight_grad, bias_grad = linear_clipped_sum(*data[layer], coef)
            else:
                weight_grad = torch.zeros_like(layer.weight)
                bias_grad = None if layer.bias is None else torch.zeros_like(layer.bias)
            if layer.weight.requires_grad:
                summed[layer.weight] = weight_grad.to(layer.weight.dtype)
            if layer.bias is not None and layer.bias.requires_grad:
                summed[layer.bias] = bias_grad.to(layer.bias.dtype)
        return summed

    def _noise_and_normalise(self, summed: dict[nn.Parameter, Tensor]) -> None:
        """(b) add ``N(0, (sigma C)^2)`` and divide by the expected batch size into ``.grad``."""
        std = self.noise_multiplier * self.max_grad_norm
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
            p.grad = (grad / self.expected_batch_size).detach()
