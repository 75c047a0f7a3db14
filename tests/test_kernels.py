"""Fused Triton kernels against the pure-torch norm and clipped-sum functions.

Without a GPU the kernels run under Triton's CPU interpreter, which must be switched on
(``TRITON_INTERPRET=1``) before Triton is first imported: this module does so at import time
when no CUDA device is present. Shapes are small because the interpreter is slow. With a
GPU the same checks run on CUDA tensors through the compiled kernels. Without Triton only
the dispatch tests run.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from skdpflow.privacy import backends, kernels
from skdpflow.privacy.backends import (
    linear_clipped_sum_fused,
    linear_sq_norms_fused,
    select_backend,
    triton_available,
)
from skdpflow.privacy.norms import linear_clipped_sum, linear_sq_norms, use_major

HAS_TRITON = kernels.import_triton() is not None
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()

# (B, T, in, out): the three B, the three T and the three widths {4, 17, 64} each appear in
# both roles, with T = 20 added to cover several T-blocks (off-diagonal Gram tiles).
SHAPES = [
    (1, 1, 4, 4),
    (1, 6, 64, 17),
    (5, 1, 17, 64),
    (5, 3, 4, 17),
    (5, 6, 17, 4),
    (33, 1, 64, 4),
    (33, 3, 17, 17),
    (33, 6, 4, 64),
    (5, 3, 64, 64),
    (3, 20, 5, 9),
]
DTYPES = [torch.float32, torch.float64]
RTOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def _interpreter_works() -> bool:
    """Whether kernels run under the interpreter (not if triton was imported before us)."""
    if not (HAS_TRITON and INTERPRETING):
        return False
    try:
        x = torch.randn(2, 2, 3, dtype=torch.float64)
        linear_sq_norms_fused(x, x, True, backend="triton")
    except Exception:  # noqa: BLE001 - e.g. triton imported earlier, without the flag
        return False
    return True


INTERPRETER_OK = _interpreter_works()

needs_interpreter = pytest.mark.skipif(
    not INTERPRETER_OK,
    reason="needs triton imported under TRITON_INTERPRET=1 (pip install triton)",
)
needs_cuda = pytest.mark.skipif(
    not (HAS_CUDA and HAS_TRITON and not INTERPRETING), reason="needs CUDA and triton"
)


def _inputs(shape, dtype, device, generator):
    batch, uses, d_in, d_out = shape
    h = torch.randn(batch, uses, d_in, generator=generator, dtype=dtype).to(device)
    d = torch.randn(batch, uses, d_out, generator=generator, dtype=dtype).to(device)
    coef = torch.rand(batch, generator=generator, dtype=dtype).to(device)
    return h, d, coef


def _close(actual, expected, dtype):
    """Relative to the largest entry: sums of mixed-sign terms have no per-entry scale."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = expected.abs().max().clamp_min(1e-30)
    err = float(((actual - expected).abs().max() / scale).cpu())
    assert err <= RTOL[dtype], f"relative error {err:.3g}"


def _check_all(shape, dtype, device, seed):
    generator = torch.Generator().manual_seed(seed)
    h, d, coef = _inputs(shape, dtype, device, generator)
    for bias in (True, False):
        weight_sq, bias_sq = linear_sq_norms_fused(h, d, bias, backend="triton")
        for strategy in ("gram", "materialise"):
            ref_w, ref_b = linear_sq_norms(h.double(), d.double(), bias, strategy)
            _close(weight_sq, ref_w.to(dtype), dtype)
            if bias:
                _close(bias_sq, ref_b.to(dtype), dtype)
            else:
                assert bias_sq is None
    weight_grad, bias_grad = linear_clipped_sum_fused(h, d, coef, backend="triton")
    ref_w, ref_b = linear_clipped_sum(h.double(), d.double(), coef.double())
    _close(weight_grad, ref_w.to(dtype), dtype)
    _close(bias_grad, ref_b.to(dtype), dtype)


# ---------------------------------------------------------------------------- interpreter
@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernels_match_torch_interpreter(shape, dtype):
    _check_all(shape, dtype, "cpu", seed=hash(shape) % 2**31)


@needs_interpreter
def test_per_unit_coefficients_interpreter():
    """coef of shape (B, out): unit j of row i scaled by c_ij, if the torch path has it."""
    generator = torch.Generator().manual_seed(1)
    h, d, _ = _inputs((5, 3, 17, 9), torch.float64, "cpu", generator)
    coef = torch.rand(5, 9, generator=generator, dtype=torch.float64)
    weight_grad, bias_grad = linear_clipped_sum_fused(h, d, coef, backend="triton")
    expected_w = torch.einsum("bj,btj,bti->ji", coef, d, h)
    expected_b = torch.einsum("bj,btj->j", coef, d)
    _close(weight_grad, expected_w, torch.float64)
    _close(bias_grad, expected_b, torch.float64)
    # (B, 1) broadcasts one coefficient per row over the units, as (B,) does.
    got = linear_clipped_sum_fused(h, d, coef[:, :1], backend="triton")
    ref = linear_clipped_sum(h, d, coef[:, 0].contiguous())
    _close(got[0], ref[0], torch.float64)
    _close(got[1], ref[1], torch.float64)


@needs_interpreter
def test_non_contiguous_inputs_interpreter():
    generator = torch.Generator().manual_seed(2)
    h = torch.randn(6, 4, 2 * 11, generator=generator, dtype=torch.float64)[:, :, ::2]
    d = torch.randn(4, 6, 7, generator=generator, dtype=torch.float64).transpose(0, 1)
    coef = torch.rand(12, generator=generator, dtype=torch.float64)[::2]
    assert not (h.is_contiguous() or d.is_contiguous() or coef.is_contiguous())
    weight_sq, bias_sq = linear_sq_norms_fused(h, d, True, backend="triton")
    ref_w, ref_b = linear_sq_norms(h.contiguous(), d.contiguous(), True)
    _close(weight_sq, ref_w, torch.float64)
    _close(bias_sq, ref_b, torch.float64)
    weight_grad, bias_grad = linear_clipped_sum_fused(h, d, coef, backend="triton")
    ref_w, ref_b = linear_clipped_sum(h.contiguous(), d.contiguous(), coef.contiguous())
    _close(weight_grad, ref_w, torch.float64)
    _close(bias_grad, ref_b, torch.float64)


@needs_interpreter
@pytest.mark.parametrize("per_unit", [False, True])
def test_use_major_views_interpreter(per_unit):
    """Views of the recorder's (T, B, in + 1) / (T, B, out) buffers are read in place."""
    generator = torch.Generator().manual_seed(5)
    batch, uses, d_in, d_out = 5, 3, 6, 9
    h_store = torch.randn(uses, batch, d_in + 1, generator=generator, dtype=torch.float64)
    d_store = torch.randn(uses, batch, d_out, generator=generator, dtype=torch.float64)
    h, d = h_store[..., :d_in].transpose(0, 1), d_store.transpose(0, 1)
    assert use_major(h) and use_major(d)
    coef = torch.rand((batch, d_out) if per_unit else (batch,), generator=generator,
                      dtype=torch.float64)
    weight_grad, bias_grad = linear_clipped_sum_fused(h, d, coef, backend="triton")
    ref_w, ref_b = linear_clipped_sum(h.contiguous(), d.contiguous(), coef)
    _close(weight_grad, ref_w, torch.float64)
    _close(bias_grad, ref_b, torch.float64)
    weight_sq, bias_sq = linear_sq_norms_fused(h, d, True, backend="triton")
    ref_w, ref_b = linear_sq_norms(h.contiguous(), d.contiguous(), True)
    _close(weight_sq, ref_w, torch.float64)
    _close(bias_sq, ref_b, torch.float64)


@needs_interpreter
def test_zero_rows_and_zero_coefficients_interpreter():
    """Rows with zero gradient give zero norms; zero coefficients drop rows from the sum."""
    generator = torch.Generator().manual_seed(3)
    h, d, coef = _inputs((4, 3, 5, 6), torch.float32, "cpu", generator)
    d[1] = 0.0
    coef[2] = 0.0
    weight_sq, bias_sq = linear_sq_norms_fused(h, d, True, backend="triton")
    assert weight_sq[1] == 0 and bias_sq[1] == 0
    weight_grad, _ = linear_clipped_sum_fused(h, d, coef, backend="triton")
    keep = torch.tensor([0, 1, 3])
    ref, _ = linear_clipped_sum(h[keep], d[keep], coef[keep])
    _close(weight_grad, ref, torch.float32)


@needs_interpreter
def test_gram_rounding_never_gives_negative_norms_interpreter():
    """Rows whose gradient cancels to ~0: the float32 Gram sum is clamped at 0, not NaN-bound."""
    generator = torch.Generator().manual_seed(0)
    h1 = torch.randn(64, 1, 8, generator=generator)
    d1 = torch.randn(64, 1, 8, generator=generator)
    h = torch.cat([h1, h1 * (1 + 1e-7 * torch.randn(64, 1, 8, generator=generator))], 1)
    d = torch.cat([d1, -d1 * (1 + 1e-7 * torch.randn(64, 1, 8, generator=generator))], 1)
    weight_sq, bias_sq = linear_sq_norms_fused(h, d, True, backend="triton")
    assert (weight_sq >= 0).all() and weight_sq.sqrt().isfinite().all()
    assert (bias_sq >= 0).all()
    ref_w, _ = linear_sq_norms(h.double(), d.double(), True, "materialise")
    scale = float((h.square().sum((1, 2)) * d.square().sum((1, 2))).max())
    assert float((weight_sq.double() - ref_w).abs().max()) <= 1e-5 * scale


# ---------------------------------------------------------------------------- CUDA
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape", SHAPES + [(1024, 6, 46, 64), (4096, 6, 64, 437)], ids=lambda s: "x".join(map(str, s))
)
def test_kernels_match_torch_cuda(shape, dtype):
    _check_all(shape, dtype, "cuda", seed=hash(shape) % 2**31)


@needs_cuda
def test_auto_backend_is_triton_on_cuda():
    assert select_backend(torch.device("cuda")) == "triton"


# ---------------------------------------------------------------------------- dispatch
def test_torch_backend_is_the_reference_function():
    generator = torch.Generator().manual_seed(4)
    h, d, coef = _inputs((7, 3, 5, 6), torch.float64, "cpu", generator)
    got = linear_sq_norms_fused(h, d, True, backend="torch")
    ref = linear_sq_norms(h, d, True)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    got = linear_clipped_sum_fused(h, d, coef, backend="torch")
    ref = linear_clipped_sum(h, d, coef)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    # auto on CPU is torch, even where the interpreter is on.
    got = linear_sq_norms_fused(h, d, False)
    assert torch.equal(got[0], linear_sq_norms(h, d, False)[0]) and got[1] is None


def test_empty_batch_falls_back():
    h, d = torch.zeros(0, 3, 4), torch.zeros(0, 3, 5)
    weight_sq, bias_sq = linear_sq_norms_fused(h, d, True, backend="auto")
    assert weight_sq.shape == (0,) and bias_sq.shape == (0,)
    weight_grad, bias_grad = linear_clipped_sum_fused(h, d, torch.zeros(0))
    assert weight_grad.shape == (5, 4) and not weight_grad.any() and bias_grad.shape == (5,)


def test_shape_errors():
    with pytest.raises(ValueError, match="share B and T"):
        linear_sq_norms_fused(torch.zeros(2, 3, 4), torch.zeros(2, 2, 4), True)
    with pytest.raises(ValueError, match="coef"):
        linear_clipped_sum_fused(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), torch.zeros(3))


def test_select_backend_without_triton(monkeypatch):
    monkeypatch.setattr(kernels, "import_triton", lambda: None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for device in ("cpu", "cuda", torch.device("cuda", 0), torch.zeros(1)):
        assert not triton_available(device)
        assert select_backend(device) == "torch"
        assert select_backend(device, "torch") == "torch"
        with pytest.raises(RuntimeError, match="not installed"):
            select_backend(device, "triton")


def test_select_backend_with_triton(monkeypatch):
    monkeypatch.setattr(kernels, "import_triton", lambda: object())
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert triton_available("cuda") and not triton_available("cpu")
    assert select_backend("cuda") == "triton"
    assert select_backend("cuda", "torch") == "torch"
    assert select_backend("cpu") == "torch"
    with pytest.raises(RuntimeError, match="not CUDA"):
        select_backend("cpu", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_available("cpu") and triton_available(torch.zeros(1))
    assert select_backend("cpu") == "torch"  # auto never picks the slow interpreter
    assert select_backend("cpu", "triton") == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_available("cpu")


def test_select_backend_rejects_unknown():
    with pytest.raises(ValueError, match="prefer"):
        select_backend("cpu", "cuda")


def test_module_imports_without_triton(monkeypatch):
    """A fresh copy of the module loads, and the backends fall back, where ``import triton`` fails."""
    import importlib.util

    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise
    spec = importlib.util.spec_from_file_location("skdpflow.privacy._kernels_copy",
                                                  kernels.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert copy.import_triton() is None
    monkeypatch.setattr(backends, "kernels", copy)
    assert not triton_available("cuda") and select_backend("cuda") == "torch"


@needs_interpreter
def test_dp_step_with_triton_backend_matches_torch_on_the_flow(monkeypatch):
    from skdpflow.flows.model import SharedConditionerFlow
    from skdpflow.privacy import kernels as kernels_module
    from skdpflow.privacy.dpsgd import DPSGDStep

    calls = []
    for name in ("sq_norms", "clipped_sum"):
        original = getattr(kernels_module, name)
        monkeypatch.setattr(kernels_module, name, lambda *a, _f=original, _n=name: (
            calls.append(_n), _f(*a))[1])

    flow = SharedConditionerFlow(3, n_stages=3, hidden_size=8, n_bins=4, seed=0)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(6, 3)
    grads = {}
    for backend in ("torch", "triton"):
        step = DPSGDStep(flow, max_grad_norm=1.0, noise_multiplier=0.0,
                         expected_batch_size=6.0, backend=backend)
        flow.zero_grad()
        with step.record():
            losses = -flow(x)
        stats = step.step(losses)
        grads[backend] = ([p.grad.clone() for p in flow.parameters()], stats["norms"])
    for a, b in zip(grads["torch"][0], grads["triton"][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads["torch"][1], grads["triton"][1], rtol=1e-5, atol=1e-6)
    assert {"sq_norms", "clipped_sum"} <= set(calls)  # the kernels ran
