"""Every fast path of the DP step against the one float64 per-row reference (tests/_oracle.py).

One contract, parametrised over backend (torch, Triton) x norm strategy (Gram, materialised)
x clipping (flat, per unit) x sparsity x model kind (one ``nn.Linear`` used T times at
several shapes, a plain MLP, a tied conditioner, a layer used twice in one call, the whole
flow): with no noise, the per-row norms equal the naive loop's at rtol 1e-8, and one step
equals clip-and-average done by hand. The per-module files keep only their edge cases.

Without a GPU the Triton backend runs under Triton's CPU interpreter, switched on here
before Triton is first imported, as in tests/test_kernels.py.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import _oracle as oracle

from skdpflow.privacy.backends import triton_available
from skdpflow.privacy.dpsgd import DPSGDStep

# One nn.Linear used T times: (T, in, out) with each of T in {1, 3, 5}, each width in both
# roles, a layer where the materialised form is cheaper (5 -> 40 at T = 5), and no bias.
KINDS = ["linear-1-1-1", "linear-3-3-7", "linear-5-7-3-nobias", "linear-3-16-16",
         "linear-5-5-40", "linear-1-16-16-nobias", "plain", "tied", "seq", "flow"]
BATCH = {"plain": 23, "tied": 23, "seq": 23, "flow": 9}
EXPECTED_BATCH_SIZE = 17.5  # q * n, deliberately not the realised batch size


def _backend(name: str) -> str:
    if name == "triton" and not triton_available("cuda" if torch.cuda.is_available() else "cpu"):
        pytest.skip("needs triton (on CUDA, or imported under TRITON_INTERPRET=1)")
    return name


def _losses(step: DPSGDStep, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with step.record():
        return model(x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sparsity", [0.0, 0.5])
@pytest.mark.parametrize("clipping", ["flat", "per_unit"])
@pytest.mark.parametrize("strategy", ["gram", "materialise"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_dp_step_matches_the_per_row_reference(backend, strategy, clipping, sparsity, kind):
    model, x = oracle.make(kind, BATCH.get(kind, 7))
    rows = oracle.per_row_grads(model, x)
    clip = 0.5 * float(oracle.row_norms(rows).median())
    step = DPSGDStep(model, clip, 0.0, EXPECTED_BATCH_SIZE, norm_strategy=strategy,
                     clipping=clipping, sparsity=sparsity, backend=_backend(backend),
                     generator=torch.Generator().manual_seed(2))

    # Per-row norms, unmasked: per parameter (flat) or per output unit.
    if clipping == "flat":
        got = step.per_sample_sq_norms(_losses(step, model, x))
        expected = oracle.sq_norms(rows)
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-8, atol=0.0)
    else:
        got = step.per_sample_unit_sq_norms(_losses(step, model, x))
        expected = [oracle.unit_sq_norms(model, r) for r in rows]
        assert got.keys() == expected[0].keys()
        for name, sq in got.items():
            torch.testing.assert_close(sq, torch.stack([e[name] for e in expected]),
                                       rtol=1e-8, atol=0.0)

    # One step with no noise: clip-and-average by hand, with the step's keep-mask.
    info = step.step(_losses(step, model, x))
    keep = step.last_mask_
    assert (keep is None) == (sparsity == 0.0)
    hand = oracle.clip_and_average(model, rows, clip, clipping, EXPECTED_BATCH_SIZE, keep)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, hand[name], rtol=1e-10, atol=1e-14)
    masked = rows if keep is None else [{n: g * keep[n] for n, g in r.items()} for r in rows]
    torch.testing.assert_close(info["norms"], oracle.row_norms(masked), rtol=1e-8, atol=0.0)
    assert info["batch_size"] == x.shape[0]
