"""Fused Triton kernels for per-row norms and clipped sums of a linear layer used T times.

Two computations of fast DP-SGD (see :mod:`skdpflow.privacy.norms`) run as single fused
kernels on CUDA:

* :func:`linear_sq_norms_fused`: each row's squared weight-gradient norm in Gram form,
  ``sum_{t,s} (d_t . d_s)(h_t . h_s)``, and bias norm ``|sum_t d_t|^2``. One program per row
  builds the ``T x T`` Gram tiles in registers and reduces them at once: no ``(B, T, T)``
  intermediate reaches global memory. The Gram sum mixes signs, so the kernel clamps it at 0
  (rounding could take a ~0 norm below 0, and its square root to NaN).
* :func:`linear_clipped_sum_fused`: ``sum_i c_i sum_t d_{i,t} h_{i,t}^T`` ``(out, in)`` and the
  bias ``sum_i c_i sum_t d_{i,t}``: a tiled ``(B*T, out)^T x (B*T, in)`` matmul with the clip
  coefficient applied as the ``D`` tile is loaded (and split over the ``B*T`` rows so that
  small layers still fill the GPU). ``coef`` may be ``(B,)`` (flat clipping) or ``(B, out)``
  (one coefficient per row and output unit).

Triton is an optional dependency (``pip install skdpflow[gpu]``) and is imported lazily:
this module imports without it. The pure-torch functions
(:func:`~skdpflow.privacy.norms.linear_sq_norms`,
:func:`~skdpflow.privacy.norms.linear_clipped_sum`) are the fallback, chosen automatically by
:func:`select_backend` on CPU or when Triton is missing. Both paths compute the same sums in
a different order, so they agree to floating-point tolerance (float32: about 1e-6 relative;
float64: about 1e-14), not bit for bit. Accumulation is in float32 for float32/16/bfloat16
inputs (``tl.dot`` in exact IEEE mode, never TF32) and in float64 for float64 inputs.

On CPU the kernels run under Triton's interpreter when ``TRITON_INTERPRET=1`` is set before
Triton is imported: slow, for tests only.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Backend",
    "linear_clipped_sum_fused",
    "linear_sq_norms_fused",
    "select_backend",
    "triton_available",
]

Backend = Literal["triton", "torch"]


# ---------------------------------------------------------------------------- availability
@functools.cache
def _import_triton():
    """The ``triton`` module, or None when it does not import (cached)."""
    try:
        import triton
        import triton.language
    except Exception:  # noqa: BLE001 - ImportError, or a broken install raising anything
        return None
    return triton


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _as_device(device: torch.device | str | Tensor) -> torch.device:
    if isinstance(device, Tensor):
        return device.device
    return torch.device(device)


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
    if _import_triton() is None:
        return False
    return _as_device(device).type == "cuda" or _interpreting()


def select_backend(
    device: torch.device | str | Tensor, prefer: Literal["auto", "triton", "torch"] = "auto"
) -> Backend:
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
            if _import_triton() is None
            else f"device {_as_device(device)} is not CUDA and TRITON_INTERPRET is not '1'"
        )
        raise RuntimeError(f"Triton kernels requested but unavailable: {reason}.")
    raise ValueError(f"prefer must be 'auto', 'triton' or 'torch', got {prefer!r}.")


def _torch_functions():
    """The pure-torch reference functions (imported lazily: no import cycle with dpsgd)."""
    try:
        from .norms import linear_clipped_sum, linear_sq_norms
    except ImportError:  # layout before the norms module existed
        from .dpsgd import linear_clipped_sum, linear_sq_norms
    return linear_sq_norms, linear_clipped_sum


# ---------------------------------------------------------------------------- kernels
@functools.cache
def _kernels(interpret: bool) -> SimpleNamespace:
    """Define the jitted kernels (once per interpreter mode; needs triton)."""
    del interpret  # only part of the cache key: triton.jit reads TRITON_INTERPRET
    triton = _import_triton()
    if triton is None:
        raise RuntimeError("triton is not installed (pip install 'skdpflow[gpu]').")
    tl = triton.language

    @triton.jit
    def gram_sq_norm_kernel(
        h_ptr, d_ptr, w_out_ptr, b_out_ptr,
        T, IN, OUT,
        h_sb, h_st, h_si,
        d_sb, d_st, d_so,
        HAS_BIAS: tl.constexpr,
        ACC: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        h_row = h_ptr + row * h_sb
        d_row = d_ptr + row * d_sb
        offs_t = tl.arange(0, BLOCK_T)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_T, BLOCK_T), dtype=ACC)
        # sum over (t-block, s-block) pairs with s >= t; off-diagonal pairs count twice.
        for t0 in range(0, T, BLOCK_T):
            rows_t = t0 + offs_t
            for s0 in range(t0, T, BLOCK_T):
                rows_s = s0 + offs_t
                gram_h = tl.zeros((BLOCK_T, BLOCK_T), dtype=ACC)
                for k0 in range(0, IN, BLOCK_K):
                    cols = k0 + offs_k
                    a = tl.load(
                        h_row + rows_t[:, None] * h_st + cols[None, :] * h_si,
                        mask=(rows_t[:, None] < T) & (cols[None, :] < IN), other=0.0,
                    ).to(ACC)
                    b = tl.load(
                        h_row + rows_s[:, None] * h_st + cols[None, :] * h_si,
                        mask=(rows_s[:, None] < T) & (cols[None, :] < IN), other=0.0,
                    ).to(ACC)
                    gram_h += tl.sum(a[:, None, :] * b[None, :, :], axis=2)
                gram_d = tl.zeros((BLOCK_T, BLOCK_T), dtype=ACC)
                for k0 in range(0, OUT, BLOCK_K):
                    cols = k0 + offs_k
                    a = tl.load(
                        d_row + rows_t[:, None] * d_st + cols[None, :] * d_so,
                        mask=(rows_t[:, None] < T) & (cols[None, :] < OUT), other=0.0,
                    ).to(ACC)
                    b = tl.load(
                        d_row + rows_s[:, None] * d_st + cols[None, :] * d_so,
                        mask=(rows_s[:, None] < T) & (cols[None, :] < OUT), other=0.0,
                    ).to(ACC)
                    gram_d += tl.sum(a[:, None, :] * b[None, :, :], axis=2)
                weight = tl.where(s0 == t0, 1.0, 2.0)
                acc += gram_h * gram_d * weight
        # Mixed-sign terms: rounding can take a ~0 norm below 0 (sqrt -> NaN), so clamp.
        tl.store(w_out_ptr + row, tl.maximum(tl.sum(tl.sum(acc, axis=1), axis=0), 0.0))
        if HAS_BIAS:
            bias_acc = tl.zeros((BLOCK_K,), dtype=ACC)
            for k0 in range(0, OUT, BLOCK_K):
                cols = k0 + offs_k
                col_sum = tl.zeros((BLOCK_K,), dtype=ACC)
                for t0 in range(0, T, BLOCK_T):
                    rows_t = t0 + offs_t
                    d = tl.load(
                        d_row + rows_t[:, None] * d_st + cols[None, :] * d_so,
                        mask=(rows_t[:, None] < T) & (cols[None, :] < OUT), other=0.0,
                    ).to(ACC)
                    col_sum += tl.sum(d, axis=0)
                bias_acc += col_sum * col_sum
            tl.store(b_out_ptr + row, tl.sum(bias_acc, axis=0))

    @triton.jit
    def clipped_sum_kernel(
        h_ptr, d_ptr, c_ptr, w_out_ptr, b_out_ptr,
        R, C_DIV, C_MOD, IN, OUT, rows_per_split,
        h_sr, h_si,
        d_sr, d_so,
        c_sb, c_so,
        w_ss, w_so, w_si,
        b_ss, b_so,
        ACC: tl.constexpr,
        BLOCK_O: tl.constexpr,
        BLOCK_I: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        pid_o = tl.program_id(0)
        pid_i = tl.program_id(1)
        pid_k = tl.program_id(2)
        offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
        mask_o = offs_o < OUT
        mask_i = offs_i < IN
        acc = tl.zeros((BLOCK_O, BLOCK_I), dtype=ACC)
        bias_acc = tl.zeros((BLOCK_O,), dtype=ACC)
        r_start = pid_k.to(tl.int64) * rows_per_split
        r_end = tl.minimum(r_start + rows_per_split, R)
        for r0 in range(r_start, r_end, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            mask_r = offs_r < r_end
            # D tile loaded transposed, (BLOCK_O, BLOCK_R), scaled by its rows' coefficients.
            d = tl.load(
                d_ptr + offs_o[:, None] * d_so + offs_r[None, :] * d_sr,
                mask=mask_o[:, None] & mask_r[None, :], other=0.0,
            ).to(ACC)
            c = tl.load(
                c_ptr + ((offs_r // C_DIV) % C_MOD)[None, :] * c_sb + offs_o[:, None] * c_so,
                mask=mask_o[:, None] & mask_r[None, :], other=0.0,
            ).to(ACC)
            d = d * c
            h = tl.load(
                h_ptr + offs_r[:, None] * h_sr + offs_i[None, :] * h_si,
                mask=mask_r[:, None] & mask_i[None, :], other=0.0,
            ).to(ACC)
            acc = tl.dot(d, h, acc, input_precision="ieee")
            bias_acc += tl.sum(d, axis=1)
        tl.store(
            w_out_ptr + pid_k * w_ss + offs_o[:, None] * w_so + offs_i[None, :] * w_si,
            acc, mask=mask_o[:, None] & mask_i[None, :],
        )
        # Only the first column of tiles writes the bias (every one computed the same sum).
        if pid_i == 0:
            tl.store(b_out_ptr + pid_k * b_ss + offs_o * b_so, bias_acc, mask=mask_o)

    return SimpleNamespace(
        gram_sq_norm=gram_sq_norm_kernel, clipped_sum=clipped_sum_kernel, tl=tl, triton=triton
    )


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_dtype(ns: SimpleNamespace, dtype: torch.dtype):
    return ns.tl.float64 if dtype == torch.float64 else ns.tl.float32


def _device_guard(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.device(device)
    return _NullContext()


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _check_shapes(inputs: Tensor, grads: Tensor) -> None:
    if inputs.ndim != 3 or grads.ndim != 3 or inputs.shape[:2] != grads.shape[:2]:
        raise ValueError(
            f"inputs (B, T, in) and grads (B, T, out) must share B and T, got "
            f"{tuple(inputs.shape)} and {tuple(grads.shape)}."
        )
    if inputs.device != grads.device:
        raise ValueError(f"inputs on {inputs.device} but grads on {grads.device}.")


def _sq_norms_triton(inputs: Tensor, grads: Tensor, bias: bool) -> tuple[Tensor, Tensor | None]:
    batch, uses, d_in = inputs.shape
    d_out = grads.shape[2]
    dtype = torch.promote_types(inputs.dtype, grads.dtype)
    acc = _acc_dtype(dtype)
    weight_sq = torch.empty(batch, dtype=acc, device=inputs.device)
    bias_sq = torch.empty(batch, dtype=acc, device=inputs.device) if bias else weight_sq
    ns = _kernels(_interpreting())
    block_t = min(_next_pow2(uses), 16)
    # Keep the (BLOCK_T, BLOCK_T, BLOCK_K) register tile at about 4096 elements.
    block_k = max(16, min(_next_pow2(max(d_in, d_out)), 4096 // (block_t * block_t)))
    if acc == torch.float64:
        block_k = max(16, block_k // 2)
    with _device_guard(inputs.device):
        ns.gram_sq_norm[(batch,)](
            inputs, grads, weight_sq, bias_sq,
            uses, d_in, d_out,
            *inputs.stride(), *grads.stride(),
            HAS_BIAS=bias, ACC=_tl_dtype(ns, acc), BLOCK_T=block_t, BLOCK_K=block_k,
        )
    return weight_sq.to(dtype), bias_sq.to(dtype) if bias else None


def _use_major(x: Tensor) -> bool:
    """Whether ``(B, T, f)`` views ``(T, B, f)`` storage whose ``T B`` rows merge into one."""
    if x.shape[0] <= 1 or x.shape[1] <= 1:
        return False
    stride_b, stride_t, stride_f = x.stride()
    return stride_f == 1 and stride_t == x.shape[0] * stride_b


def _n_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter runs programs one after another: few programs


def _clipped_sum_triton(inputs: Tensor, grads: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
    batch, uses, d_in = inputs.shape
    d_out = grads.shape[2]
    dtype = torch.promote_types(inputs.dtype, grads.dtype)
    acc = _acc_dtype(dtype)
    rows = batch * uses
    if _use_major(inputs) and _use_major(grads):
        # Row r is (use r // B, row r % B): the book-keeping buffers' layout, read in place.
        h = inputs.transpose(0, 1).reshape(rows, d_in)
        d = grads.transpose(0, 1).reshape(rows, d_out)
        c_div, c_mod = 1, batch
    else:  # row r is (row r // T, use r % T)
        h = inputs.reshape(rows, d_in)
        d = grads.reshape(rows, d_out)
        c_div, c_mod = uses, batch
    if coef.ndim == 1 or coef.shape[1] == 1:  # one coefficient per row, for every unit
        c_strides = (coef.stride(0), 0)
    else:
        c_strides = coef.stride()
    ns = _kernels(_interpreting())
    if acc == torch.float64:
        block_o, block_i, block_r = 32, 32, 16
    else:
        block_o, block_i, block_r = 64, 64, 32
    block_o = min(block_o, max(16, _next_pow2(d_out)))
    block_i = min(block_i, max(16, _next_pow2(d_in)))
    tiles = -(-d_out // block_o) * -(-d_in // block_i)
    chunks = -(-rows // block_r)
    split = max(1, min(chunks, -(-4 * _n_sms(inputs.device) // tiles)))
    rows_per_split = -(-chunks // split) * block_r
    split = -(-rows // rows_per_split)
    weight = torch.empty((split, d_out, d_in), dtype=acc, device=inputs.device)
    bias = torch.empty((split, d_out), dtype=acc, device=inputs.device)
    grid = (-(-d_out // block_o), -(-d_in // block_i), split)
    with _device_guard(inputs.device):
        ns.clipped_sum[grid](
            h, d, coef, weight, bias,
            rows, c_div, c_mod, d_in, d_out, rows_per_split,
            *h.stride(), *d.stride(), *c_strides, *weight.stride(), *bias.stride(),
            ACC=_tl_dtype(ns, acc), BLOCK_O=block_o, BLOCK_I=block_i, BLOCK_R=block_r,
        )
    return weight.sum(0).to(dtype), bias.sum(0).to(dtype)


# ---------------------------------------------------------------------------- dispatch
def linear_sq_norms_fused(
    inputs: Tensor,
    grads: Tensor,
    bias: bool,
    backend: Literal["auto", "triton", "torch"] = "auto",
) -> tuple[Tensor, Tensor | None]:
    """Per-row squared gradient norms of a linear layer used T times per row.

    Same semantics and return types as :func:`~skdpflow.privacy.norms.linear_sq_norms`:
    ``|G_i|^2 = sum_{t,s} (d_t . d_s)(h_t . h_s)`` and bias ``|sum_t d_t|^2``. The Triton
    kernel always uses the Gram form (its ``T x T`` tiles never leave registers); the torch
    fallback picks its own strategy. Results agree to floating-point tolerance.

    Parameters
    ----------
    inputs : Tensor
        Layer inputs ``h``, shape ``(B, T, in)``.
    grads : Tensor
        Output gradients ``d``, shape ``(B, T, out)``.
    bias : bool
        Whether to return the bias norms too.
    backend : {"auto", "triton", "torch"}, default="auto"
        Passed to :func:`select_backend` as ``prefer``.

    Returns
    -------
    weight_sq : Tensor
        Shape ``(B,)``.
    bias_sq : Tensor or None
        Shape ``(B,)``, or None when ``bias`` is False.
    """
    _check_shapes(inputs, grads)
    if select_backend(inputs.device, backend) == "torch" or 0 in inputs.shape or 0 in grads.shape:
        return _torch_functions()[0](inputs, grads, bias)
    return _sq_norms_triton(inputs, grads, bias)


def linear_clipped_sum_fused(
    inputs: Tensor,
    grads: Tensor,
    coef: Tensor,
    backend: Literal["auto", "triton", "torch"] = "auto",
) -> tuple[Tensor, Tensor]:
    """Sum of per-row gradients scaled by ``coef``, without per-row gradients.

    Same semantics and return types as :func:`~skdpflow.privacy.norms.linear_clipped_sum`:
    ``sum_i c_i sum_t d_{i,t} h_{i,t}^T`` and ``sum_i c_i sum_t d_{i,t}``; with ``coef`` of
    shape ``(B, out)``, unit j of row i is scaled by ``c_{i,j}``. Results agree with the
    torch fallback to floating-point tolerance.

    Parameters
    ----------
    inputs : Tensor
        Shape ``(B, T, in)``.
    grads : Tensor
        Shape ``(B, T, out)``.
    coef : Tensor
        Clip coefficients, shape ``(B,)`` or ``(B, 1)`` (one per row) or ``(B, out)``.
    backend : {"auto", "triton", "torch"}, default="auto"
        Passed to :func:`select_backend` as ``prefer``.

    Returns
    -------
    weight_grad : Tensor
        Shape ``(out, in)``.
    bias_grad : Tensor
        Shape ``(out,)``.
    """
    _check_shapes(inputs, grads)
    batch, d_out = inputs.shape[0], grads.shape[2]
    if coef.shape not in ((batch,), (batch, 1), (batch, d_out)):
        raise ValueError(
            f"coef must have shape (B,), (B, 1) or (B, out), got {tuple(coef.shape)}."
        )
    if select_backend(inputs.device, backend) == "torch" or 0 in inputs.shape or 0 in grads.shape:
        return _torch_functions()[1](inputs, grads, coef)
    if coef.device != inputs.device:
        raise ValueError(f"coef on {coef.device} but inputs on {inputs.device}.")
    return _clipped_sum_triton(inputs, grads, coef)
