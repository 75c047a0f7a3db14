"""The DP step's per-layer operations, by backend: torch (:mod:`.norms`) or Triton (:mod:`.kernels`).

Each backend is one row of :data:`BACKENDS`: per-row squared norms of a layer's weight and bias
gradients, and the clipped gradient sum, both from the layer's book-keeping record
(:class:`~.recording.LayerRecord`). :class:`~.dpsgd.DPSGDStep` looks its row up once, when it
is built (:func:`backend_for`), not per layer per step. Both rows compute the same sums in a
different order: they agree to floating-point tolerance (float32: about 1e-6 relative;
float64: about 1e-14), not bit for bit.

:func:`linear_sq_norms_fused` and :func:`linear_clipped_sum_fused` are the same choice for one
call on plain ``(B, T, width)`` tensors (tests, benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from . import kernels
from .norms import NormStrategy, linear_clipped_sum, linear_clipped_sum_, linear_sq_norms
from .recording import LayerRecord

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendName",
    "backend_for",
    "linear_clipped_sum_fused",
    "linear_sq_norms_fused",
    "select_backend",
    "triton_available",
]

BackendName = Literal["triton", "torch"]
Preference = Literal["auto", "triton", "torch"]


# ---------------------------------------------------------------------------- availability
def _as_device(device: torch.device | str | Tensor) -> torch.device:
    return device.device if isinstance(device, Tensor) else torch.device(device)


def triton_available(device: torch.device | str | Tensor) -> bool:
    """Whether the Triton kernels can run on ``device``.

    True only when ``triton`` imports and either ``device`` is a CUDA device or the
    environment variable ``TRITON_INTERPRET`` is ``"1"`` (Triton's CPU interpreter, which
    must be set before Triton is first imported).

    Parameters
    ----------
    device : torch.device, str or Tensor
        The device (or a tensor on it) the computation would run on.
    """
    if kernels.import_triton() is None:
        return False
    return _as_device(device).type == "cuda" or kernels.interpreting()


def select_backend(device: torch.device | str | Tensor, prefer: Preference = "auto"
                   ) -> BackendName:
    """Choose the implementation of the norm and clipped-sum computations.

    Parameters
    ----------
    device : torch.device, str or Tensor
        Where the computation runs.
    prefer : {"auto", "triton", "torch"}, default="auto"
        ``"auto"``: ``"triton"`` on CUDA when Triton is available, ``"torch"`` otherwise
        (including CPU under the interpreter, which is far slower than torch).
        ``"triton"``: the kernels, which must be available (:func:`triton_available`).
        ``"torch"``: always the pure-torch path.

    Returns
    -------
    {"triton", "torch"}

    Raises
    ------
    RuntimeError
        If ``prefer="triton"`` but the kernels cannot run on ``device``.
    ValueError
        If ``prefer`` is not one of the above.
    """
    if prefer == "torch":
        return "torch"
    if prefer == "auto":
        is_cuda = _as_device(device).type == "cuda"
        return "triton" if is_cuda and triton_available(device) else "torch"
    if prefer == "triton":
        if triton_available(device):
            return "triton"
        reason = (
            "triton is not installed (pip install 'skdpflow[gpu]')"
            if kernels.import_triton() is None
            else f"device {_as_device(device)} is not CUDA and TRITON_INTERPRET is not '1'"
        )
        raise RuntimeError(f"Triton kernels requested but unavailable: {reason}.")
    raise ValueError(f"prefer must be 'auto', 'triton' or 'torch', got {prefer!r}.")


# ---------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Backend:
    """One backend's operations on a layer's record.

    Attributes
    ----------
    name : {"torch", "triton"}
    sq_norms : callable
        ``(record, strategy) -> (weight_sq, bias_sq)``, each ``(B,)`` (bias_sq None without
        a trainable bias), as :func:`~.norms.linear_sq_norms`.
    clipped_sum : callable
        ``(record, coef) -> (weight_grad, bias_grad)``, ``(out, in)`` and ``(out,)`` (None
        without a trainable bias), as :func:`~.norms.linear_clipped_sum`; it may scale the
        record's scratch buffers in place.
    """

    name: BackendName
    sq_norms: Callable[[LayerRecord, NormStrategy], tuple[Tensor, Tensor | None]]
    clipped_sum: Callable[[LayerRecord, Tensor], tuple[Tensor, Tensor | None]]


def _torch_sq_norms(record: LayerRecord, strategy: NormStrategy) -> tuple[Tensor, Tensor | None]:
    return linear_sq_norms(record.inputs, record.grads, record.bias, strategy)


def _torch_clipped_sum(record: LayerRecord, coef: Tensor) -> tuple[Tensor, Tensor | None]:
    # The scratch buffers are not needed after this: scaled in place.
    return linear_clipped_sum_(record.h, record.d, coef, record.bias)


def _triton_sq_norms(record: LayerRecord, strategy: NormStrategy) -> tuple[Tensor, Tensor | None]:
    del strategy  # the kernel always takes the Gram form: its T x T tiles stay in registers
    return linear_sq_norms_fused(record.inputs, record.grads, record.bias, backend="triton")


def _triton_clipped_sum(record: LayerRecord, coef: Tensor) -> tuple[Tensor, Tensor | None]:
    weight_grad, bias_grad = linear_clipped_sum_fused(record.inputs, record.grads, coef,
                                                      backend="triton")
    return weight_grad, bias_grad if record.bias else None


BACKENDS: dict[BackendName, Backend] = {
    "torch": Backend("torch", _torch_sq_norms, _torch_clipped_sum),
    "triton": Backend("triton", _triton_sq_norms, _triton_clipped_sum),
}


def backend_for(device: torch.device | str | Tensor, prefer: Preference = "auto") -> Backend:
    """The row of :data:`BACKENDS` that :func:`select_backend` picks for ``device``."""
    return BACKENDS[select_backend(device, prefer)]


# ---------------------------------------------------------------------------- one call
def _check_shapes(inputs: Tensor, grads: Tensor) -> None:
    if inputs.ndim != 3 or grads.ndim != 3 or inputs.shape[:2] != grads.shape[:2]:
        raise ValueError(
            f"inputs (B, T, in) and grads (B, T, out) must share B and T, got "
            f"{tuple(inputs.shape)} and {tuple(grads.shape)}."
        )
    if inputs.device != grads.device:
        raise ValueError(f"inputs on {inputs.device} but grads on {grads.device}.")


def _on_torch(inputs: Tensor, grads: Tensor, prefer: Preference) -> bool:
    empty = 0 in inputs.shape or 0 in grads.shape  # nothing for a kernel to launch on
    return select_backend(inputs.device, prefer) == "torch" or empty


def linear_sq_norms_fused(
    inputs: Tensor, grads: Tensor, bias: bool, backend: Preference = "auto"
) -> tuple[Tensor, Tensor | None]:
    """:func:`~skdpflow.privacy.norms.linear_sq_norms` by the backend ``backend`` picks.

    Same arguments (but ``backend`` for ``strategy``), semantics and return types:
    ``|G_i|^2 = sum_{t,s} (d_t . d_s)(h_t . h_s)`` and bias ``|sum_t d_t|^2``, each ``(B,)``.
    The Triton kernel always uses the Gram form; torch picks its own strategy.
    ``backend`` is passed to :func:`select_backend` as ``prefer``.
    """
    _check_shapes(inputs, grads)
    if _on_torch(inputs, grads, backend):
        return linear_sq_norms(inputs, grads, bias)
    return kernels.sq_norms(inputs, grads, bias)


def linear_clipped_sum_fused(
    inputs: Tensor, grads: Tensor, coef: Tensor, backend: Preference = "auto"
) -> tuple[Tensor, Tensor]:
    """:func:`~skdpflow.privacy.norms.linear_clipped_sum` by the backend ``backend`` picks.

    Same arguments, semantics and return types: ``sum_i c_i sum_t d_{i,t} h_{i,t}^T``
    ``(out, in)`` and ``sum_i c_i sum_t d_{i,t}`` ``(out,)``; ``coef`` may also be ``(B, 1)``.
    ``backend`` is passed to :func:`select_backend` as ``prefer``.
    """
    _check_shapes(inputs, grads)
    batch, d_out = inputs.shape[0], grads.shape[2]
    if coef.shape not in ((batch,), (batch, 1), (batch, d_out)):
        raise ValueError(
            f"coef must have shape (B,), (B, 1) or (B, out), got {tuple(coef.shape)}."
        )
    if _on_torch(inputs, grads, backend):
        return linear_clipped_sum(inputs, grads, coef)
    if coef.device != inputs.device:
        raise ValueError(f"coef on {coef.device} but inputs on {inputs.device}.")
    return kernels.clipped_sum(inputs, grads, coef)
