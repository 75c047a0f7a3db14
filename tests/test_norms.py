"""Edge cases of skdpflow.privacy.norms; the norms and clipped sums of the DP step against the
per-row reference are the contract of tests/test_clipping_contract.py."""

from __future__ import annotations

import _oracle as oracle
import pytest
import torch
from torch import Tensor

from skdpflow.privacy.norms import (
    choose_strategy,
    linear_clipped_sum,
    linear_sq_norms,
    linear_unit_sq_norms,
)

DTYPE = torch.float64
SHAPES = [(1, 1), (3, 7), (7, 3), (16, 16), (5, 40)]  # (in, out)


def _random(batch: int, uses: int, d_in: int, d_out: int, seed: int) -> tuple[Tensor, Tensor]:
    return oracle.random_uses(batch, uses, d_in, d_out, seed)


def _rows(h: Tensor, d: Tensor, bias: bool) -> list[tuple[Tensor, Tensor | None]]:
    """The reference per-row (weight, bias) gradients of ``sum_t d_{i,t} . layer(h_{i,t})``."""
    model = oracle.LinearUses(h.shape[1], h.shape[2], d.shape[2], bias).to(DTYPE)
    return [(r["layer.weight"], r.get("layer.bias"))
            for r in oracle.per_row_grads(model, oracle.pack(h, d))]


@pytest.mark.parametrize("uses", [1, 3, 5])
@pytest.mark.parametrize("d_in, d_out", SHAPES)
@pytest.mark.parametrize("strategy", ["auto", "gram", "materialise"])
def test_unit_norms_sum_to_the_flat_norms(uses: int, d_in: int, d_out: int, strategy: str) -> None:
    h, d = _random(6, uses, d_in, d_out, seed=uses * 100 + d_in)
    units = linear_unit_sq_norms(h, d, True, strategy)
    assert units.shape == (6, d_out)
    weight_sq, bias_sq = linear_sq_norms(h, d, True, strategy)
    torch.testing.assert_close(units.sum(1), weight_sq + bias_sq, rtol=1e-10, atol=0.0)
    assert linear_sq_norms(h, d, False, strategy)[1] is None


@pytest.mark.parametrize("uses", [1, 3, 5])
@pytest.mark.parametrize("d_in, d_out", SHAPES)
@pytest.mark.parametrize("per_unit", [False, True])
def test_clipped_sum_matches_naive_loop(uses: int, d_in: int, d_out: int, per_unit: bool) -> None:
    h, d = _random(7, uses, d_in, d_out, seed=uses + 10 * d_out)
    rows = _rows(h, d, bias=True)
    g = torch.Generator().manual_seed(3)
    shape = (7, d_out) if per_unit else (7,)
    coef = torch.rand(shape, dtype=DTYPE, generator=g)
    coef[0] = 0.0  # a fully dropped row

    weight_grad, bias_grad = linear_clipped_sum(h, d, coef)
    c = coef if per_unit else coef[:, None].expand(7, d_out)
    expected_w = sum(c[i][:, None] * w for i, (w, _) in enumerate(rows))
    expected_b = sum(c[i] * b for i, (_, b) in enumerate(rows))
    torch.testing.assert_close(weight_grad, expected_w, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(bias_grad, expected_b, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("strategy", ["gram", "materialise"])
def test_use_major_views_give_the_same_results(strategy: str) -> None:
    """(B, T, f) views of use-major storage, as the recorder hands them over."""
    h, d = _random(6, 4, 5, 9, seed=11)
    h_view = torch.cat([h, torch.ones(6, 4, 1, dtype=DTYPE)], 2).transpose(0, 1).contiguous()
    h_view = h_view[..., :5].transpose(0, 1)
    d_view = d.transpose(0, 1).contiguous().transpose(0, 1)
    assert torch.equal(h_view, h) and torch.equal(d_view, d) and not d_view.is_contiguous()
    coef = torch.rand(6, dtype=DTYPE)
    for got, ref in [
        (linear_sq_norms(h_view, d_view, True, strategy), linear_sq_norms(h, d, True, strategy)),
        (linear_clipped_sum(h_view, d_view, coef), linear_clipped_sum(h, d, coef)),
    ]:
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    workspace = torch.empty(6, 4, 9, dtype=DTYPE)
    torch.testing.assert_close(
        linear_unit_sq_norms(h_view, d_view, True, strategy, workspace=workspace),
        linear_unit_sq_norms(h, d, True, strategy), rtol=1e-12, atol=0.0,
    )


def test_cost_model_picks_cheaper_form() -> None:
    # Gram T^2 (in + out) vs materialised T in out, per row.
    assert choose_strategy(6, 46, 64) == "gram"  # the flow's first layer
    assert choose_strategy(6, 64, 437) == "gram"  # its output layer
    assert choose_strategy(40, 5, 3) == "materialise"
    assert choose_strategy(1, 1, 1) == "materialise"  # T = 1 uses Goodfellow's rule anyway
    assert choose_strategy(3, 16, 16) == "gram"
    assert choose_strategy(6, 64, 460) == "gram"
    assert choose_strategy(50, 4, 3) == "materialise"


def test_unknown_strategy_raises() -> None:
    h, d = _random(2, 3, 4, 5, seed=0)
    with pytest.raises(ValueError, match="strategy"):
        linear_unit_sq_norms(h, d, True, "magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strategy"):
        linear_sq_norms(h, d, True, "magic")  # type: ignore[arg-type]


def _cancelling_rows(batch: int = 64, width: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    """float32 rows using a layer twice with opposite-sign ``d``: gradient ~0, Gram sum not.

    ``h_2 = h_1 (1 + 1e-7 noise)``, ``d_2 = -d_1 (1 + 1e-7 noise)``: the true per-row gradient
    is ~1e-7 of its terms, so the float32 Gram sum rounds on either side of 0.
    """
    g = torch.Generator().manual_seed(seed)
    h1 = torch.randn(batch, 1, width, generator=g)
    d1 = torch.randn(batch, 1, width, generator=g)
    h2 = h1 * (1 + 1e-7 * torch.randn(batch, 1, width, generator=g))
    d2 = -d1 * (1 + 1e-7 * torch.randn(batch, 1, width, generator=g))
    return torch.cat([h1, h2], 1), torch.cat([d1, d2], 1)


def test_gram_rounding_never_gives_negative_norms() -> None:
    """Negative squared norms would make sqrt NaN and the DP step NaN (issue 9)."""
    h, d = _cancelling_rows()
    # The unclamped Gram form does round below 0 on these rows (the case being tested).
    raw = (torch.bmm(d, d.transpose(1, 2)) * torch.bmm(h, h.transpose(1, 2))).sum((1, 2))
    assert (raw < 0).any()

    rows = _rows(h.double(), d.double(), bias=True)
    expected_w = torch.stack([w.square().sum() for w, _ in rows])
    expected_units = torch.stack([w.square().sum(1) + b.square() for w, b in rows])
    # float32 error of a sum whose terms are |h|^2 |d|^2: relative to that scale.
    scale = float((h.square().sum((1, 2)) * d.square().sum((1, 2))).max())
    for strategy in ("gram", "auto"):
        weight_sq, bias_sq = linear_sq_norms(h, d, True, strategy)
        units = linear_unit_sq_norms(h, d, True, strategy)
        for sq in (weight_sq, bias_sq, units):
            assert (sq >= 0).all() and sq.sqrt().isfinite().all()
        torch.testing.assert_close(weight_sq.double(), expected_w, rtol=0, atol=1e-5 * scale)
        torch.testing.assert_close(units.double(), expected_units, rtol=0, atol=1e-5 * scale)


def test_both_branches_run_and_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = torch.einsum

    def spy(*args: object) -> Tensor:
        calls.append("materialise")
        return original(*args)

    monkeypatch.setattr(torch, "einsum", spy)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, 40, 3, dtype=DTYPE, generator=g)  # T=40 uses of a 3->2 layer
    d = torch.randn(5, 40, 2, dtype=DTYPE, generator=g)
    auto, _ = linear_sq_norms(h, d, bias=False)
    assert calls == ["materialise"]
    gram, _ = linear_sq_norms(h, d, bias=False, strategy="gram")
    assert calls == ["materialise"]
    reference = torch.stack([(d[i].T @ h[i]).square().sum() for i in range(5)])
    torch.testing.assert_close(auto, reference, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(gram, reference, rtol=1e-12, atol=0.0)
