"""Fused Triton kernels for per-row norms and clipped sums of a linear layer used T times.

Two computations of fast DP-SGD (see :mod:`skdpflow.privacy.norms`) run as single fused
kernels on CUDA:

* :func:`sq_norms`: each row's squared weight-gradient norm in Gram form,
  ``sum_{t,s} (d_t . d_s)(h_t . h_s)``, and bias norm ``|sum_t d_t|^2``. One program per row
  builds the ``T x T`` Gram tiles in registers and reduces them at once: no ``(B, T, T)``
  intermediate reaches global memory. The Gram sum mixes signs, so the kernel clamps it at 0
  (rounding could take a ~0 norm below 0, and its square root to NaN).
* :func:`clipped_sum`: ``sum_i c_i sum_t d_{i,t} h_{i,t}^T`` ``(out, in)`` and the bias
  ``sum_i c_i sum_t d_{i,t}``: a tiled ``(B*T, out)^T x (B*T, in)`` matmul with the clip
  coefficient applied as the ``D`` tile is loaded (and split over the ``B*T`` rows so that
  small layers still fill the GPU). ``coef`` may be ``(B,)`` (flat clipping) or ``(B, out)``
  (one coefficient per row and output unit).

Triton is an optional dependency (``pip install skdpflow[gpu]``) and is imported lazily:
this module imports without it. Which backend runs, and the checks on the arguments, are
:mod:`.backends`' business; the functions here assume non-empty, well-shaped inputs on a
device Triton can run on. Accumulation is in float32 for float32/16/bfloat16 inputs
(``tl.dot`` in exact IEEE mode, never TF32) and in float64 for float64 inputs.

On CPU the kernels run under Triton's interpreter when ``TRITON_INTERPRET=1`` is set before
Triton is imported: slow, for tests only.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch
from torch import Tensor

from .norms import use_major

__all__ = ["clipped_sum", "import_triton", "interpreting", "sq_norms"]


# ---------------------------------------------------------------------------- availability
@functools.cache
def import_triton():
    """The ``triton`` module, or None when it does not import (cached)."""
    try:
        import triton
        import triton.language
    except Exception:  # noqa: BLE001 - ImportError, or a broken install raising anything
        return None
    return triton


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1`` (Triton's CPU interpreter) is set."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# ---------------------------------------------------------------------------- kernels
@functools.cache
def _kernels(interpret: bool) -> SimpleNamespace:
    """Define the jitted kernels (once per interpreter mode; needs triton)."""
    del interpret  # only part of the cache key: triton.jit reads TRITON_INTERPRET
    triton = import_triton()
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


def sq_norms(inputs: Tensor, grads: Tensor, bias: bool) -> tuple[Tensor, Tensor | None]:
    """Per-row squared norms ``(B,)`` of weight and bias gradients (Gram form, one program per row)."""
    batch, uses, d_in = inputs.shape
    d_out = grads.shape[2]
    dtype = torch.promote_types(inputs.dtype, grads.dtype)
    acc = _acc_dtype(dtype)
    weight_sq = torch.empty(batch, dtype=acc, device=inputs.device)
    bias_sq = torch.empty(batch, dtype=acc, device=inputs.device) if bias else weight_sq
    ns = _kernels(interpreting())
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


def _n_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter runs programs one after another: few programs


def clipped_sum(inputs: Tensor, grads: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
    """``sum_i c_i G_i`` ``(out, in)`` and the bias sum ``(out,)``: one tiled matmul over ``B*T`` rows."""
    batch, uses, d_in = inputs.shape
    d_out = grads.shape[2]
    dtype = torch.promote_types(inputs.dtype, grads.dtype)
    acc = _acc_dtype(dtype)
    rows = batch * uses
    if use_major(inputs) and use_major(grads):
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
    ns = _kernels(interpreting())
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
