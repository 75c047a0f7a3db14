"""Book-keeping of ``nn.Linear`` calls: each call's input at forward, its output gradient after.

:class:`LinearRecorder` hooks the given layers during a forward pass, then one backward pass
(:meth:`LinearRecorder.backward`) gives, per layer, the inputs ``h`` and output gradients
``d = dL_i/dz`` of all its T uses per row: everything per-row norms and clipped sums need
(:mod:`.norms`).

Both are kept *use-major*, ``(T, B, width)``, in scratch buffers that live as long as the
recorder and are reused from step to step: a fresh ~40 MB stack per step paid its page
faults every step (about 25 ms for 43 MB on a loaded 2-core machine), and each use's
gradient goes into a contiguous ``(B, width)`` slice, so that the transposed gradient the
flow's output layer receives (its spline takes knot-major parameters) is copied by torch's
blocked 2-D transpose rather than interleaved element by element. That copy is still the
largest cost the DP step adds (about 30 ms of a 200 ms step at batch 4096, 2 cores). The
row-major ``(B, T, width)`` tensors that :mod:`.norms` takes are free permuted views of
these buffers, and ``bmm`` reads them in place.

A layer with a trainable bias gets one more input column of ones (``h[..., in] == 1``), so
that a single matmul over all ``T B`` uses yields weight and bias gradient together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["LayerRecord", "LinearRecorder", "linear_layers"]

# Spare capacity when a scratch buffer grows: Poisson batch sizes vary from step to step.
_HEADROOM = 1.125


@dataclass
class LayerRecord:
    """One layer's book-keeping for one batch, in use-major scratch buffers.

    Attributes
    ----------
    h : Tensor
        Inputs, ``(T, B, in + bias)``; when the layer has a trainable bias, column ``in``
        holds ones. Scratch: may be scaled in place by the clipped sum.
    d : Tensor
        Output gradients, ``(T, B, out)``. Scratch: may be masked or scaled in place.
    in_features : int
        Width of the layer's input (without the column of ones).
    bias : bool
        Whether ``h`` carries the column of ones (the layer's bias is trainable).
    """

    h: Tensor
    d: Tensor
    in_features: int
    bias: bool

    @property
    def inputs(self) -> Tensor:
        """Row-major view ``(B, T, in)`` of the inputs (no copy)."""
        return self.h[..., : self.in_features].transpose(0, 1)

    @property
    def grads(self) -> Tensor:
        """Row-major view ``(B, T, out)`` of the output gradients (no copy)."""
        return self.d.transpose(0, 1)


@dataclass
class _Calls:
    """Every call of one linear layer during one forward pass, in order."""

    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)


class LinearRecorder:
    """Record all calls of some ``nn.Linear`` layers, then their output gradients.

    Parameters
    ----------
    layers : list of nn.Linear
        The layers to hook; a layer may be called any number of times per forward pass,
        on inputs of shape ``(B, *, in)`` (each of the ``*`` positions counts as a use).

    Attributes
    ----------
    calls : dict
        Layer to the inputs and outputs of its calls in the current forward pass (cleared
        by :meth:`backward` and :meth:`clear`).
    """

    def __init__(self, layers: list[nn.Linear]) -> None:
        self.layers = list(layers)
        self.calls: dict[nn.Linear, _Calls] = {}
        self._scratch: dict[tuple[int, str], Tensor] = {}

    @contextmanager
    def record(self) -> Iterator[None]:
        """Hook the layers for the duration of a forward pass (hooks removed on exit)."""
        self.clear()
        handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, layer: nn.Linear, args: tuple[Tensor, ...], output: Tensor) -> None:
        if not output.requires_grad:
            return  # a call outside autograd (e.g. under no_grad) adds no gradient
        calls = self.calls.setdefault(layer, _Calls())
        calls.inputs.append(args[0].detach())
        calls.outputs.append(output)

    def clear(self) -> None:
        """Drop the recorded calls (and with them the autograd graph they hold)."""
        self.calls = {}

    def release(self) -> None:
        """Drop the scratch buffers too (they hold the last batch's ``h`` and ``d``)."""
        self.clear()
        self._scratch = {}

    def backward(self, losses: Tensor) -> dict[nn.Linear, LayerRecord]:
        """One backward pass of ``losses.sum()`` to the recorded outputs; then clear the calls.

        Gradients are taken with respect to the layer outputs only, so autograd skips the
        weight-gradient matmuls (they are rebuilt, clipped, from ``h`` and ``d``) and nothing
        reaches ``p.grad``.

        Parameters
        ----------
        losses : Tensor
            Per-row losses ``(B,)`` from a forward pass inside :meth:`record`.

        Returns
        -------
        dict of nn.Linear to LayerRecord
            Layers called at least once; views into scratch buffers, valid until the next
            call of :meth:`backward`.
        """
        batch = losses.shape[0]
        recorded = [(layer, calls) for layer, calls in self.calls.items() if calls.outputs]
        try:
            if batch == 0:
                return {}
            if not recorded:
                raise RuntimeError("no recorded forward pass: compute losses inside record().")
            for layer, calls in recorded:
                _check_rows(layer, calls.inputs, batch)
            outputs = [out for _, calls in recorded for out in calls.outputs]
            grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
            records, position = {}, 0
            for layer, calls in recorded:
                count = len(calls.outputs)
                records[layer] = self._store(layer, calls, grads[position : position + count])
                position += count
            return records
        finally:
            self.clear()

    def _store(
        self, layer: nn.Linear, calls: _Calls, grads: tuple[Tensor | None, ...]
    ) -> LayerRecord:
        """Copy one layer's inputs and output gradients into its use-major scratch buffers."""
        batch, d_in, d_out = calls.inputs[0].shape[0], layer.in_features, layer.out_features
        bias = layer.bias is not None and layer.bias.requires_grad
        uses = [h.numel() // (batch * d_in) for h in calls.inputs]
        total = sum(uses)
        h = self.scratch(layer, "h", (total, batch, d_in + bias), calls.inputs[0])
        d = self.scratch(layer, "d", (total, batch, d_out), calls.outputs[0])
        t = 0
        for count, inp, grad in zip(uses, calls.inputs, grads, strict=True):
            _copy_uses(h[t : t + count, :, :d_in], inp, count)
            if grad is None:  # this call's output did not reach the loss
                d[t : t + count].zero_()
            else:
                _copy_uses(d[t : t + count], grad, count)
            t += count
        if bias:
            h[..., d_in].fill_(1.0)
        return LayerRecord(h=h, d=d, in_features=d_in, bias=bias)

    def scratch(self, layer: nn.Linear, kind: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A contiguous tensor of ``shape`` on storage reused from call to call.

        One storage per ``(layer, kind)``, grown with some headroom when too small, so that
        varying Poisson batch sizes rarely reallocate. Contents are left as they were.
        """
        key = (id(layer), kind)
        numel = math.prod(shape)
        flat = self._scratch.get(key)
        if flat is None or flat.numel() < numel or flat.dtype != like.dtype or (
            flat.device != like.device
        ):
            flat = torch.empty(int(numel * _HEADROOM) + 1, dtype=like.dtype, device=like.device)
            self._scratch[key] = flat
        return flat[:numel].view(shape)


def linear_layers(module: nn.Module) -> list[nn.Linear]:
    """The trainable layers of ``module``, each checked to be a plain ``nn.Linear``.

    Raises
    ------
    TypeError
        If any other module owns a trainable parameter (no fast per-row rule for it), or if
        two modules share a parameter (tie by calling one ``nn.Linear`` several times).
    """
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


def _check_rows(layer: nn.Linear, inputs: list[Tensor], batch: int) -> None:
    for h in inputs:
        if h.ndim < 2 or h.shape[0] != batch:
            raise ValueError(
                f"a recorded call of {layer} has input shape {tuple(h.shape)}, but losses has "
                f"{batch} rows; every call must see all rows of the batch as (B, *, in)."
            )


def _copy_uses(target: Tensor, source: Tensor, uses: int) -> None:
    """``target`` ``(S, B, f)`` <- ``source`` ``(B, *, f)`` with S positions in ``*``."""
    if uses == 1:
        # 2-D copy: a transposed source takes torch's blocked transpose path.
        target[0].copy_(source.reshape(source.shape[0], source.shape[-1]))
    else:
        target.copy_(source.reshape(source.shape[0], uses, source.shape[-1]).transpose(0, 1))
