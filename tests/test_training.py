"""DP-SGD on the real flow: fast per-row norms and one clipped step against a naive loop."""

from __future__ import annotations

import pytest
import torch

from skdpflow.flows.model import SharedConditionerFlow
from skdpflow.privacy.dpsgd import DPSGDStep


def _flow(features: int, stages: int) -> SharedConditionerFlow:
    flow = SharedConditionerFlow(features, n_stages=stages, hidden_size=12, n_bins=5,
                                 seed=1).double()
    with torch.no_grad():  # move away from the identity so every layer has a gradient
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow


def _naive_grads(flow: SharedConditionerFlow, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(len(x)):
        flow.zero_grad()
        (-flow(x[i : i + 1])).sum().backward()
        out.append({n: p.grad.clone() for n, p in flow.named_parameters()})
    flow.zero_grad()
    return out


@pytest.mark.parametrize("features, stages, batch", [(3, 3, 5), (6, 4, 17), (2, 6, 9)])
@pytest.mark.parametrize("strategy", ["auto", "gram", "materialise"])
def test_flow_per_row_norms_equal_a_naive_loop(features, stages, batch, strategy):
    flow = _flow(features, stages)
    x = 1.5 * torch.randn(batch, features, dtype=torch.float64)
    naive = _naive_grads(flow, x)
    step = DPSGDStep(flow, max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=batch,
                     norm_strategy=strategy)
    with step.record():
        losses = -flow(x)
    fast = step.per_sample_sq_norms(losses)
    for name, sq in fast.items():
        expected = torch.stack([(g[name] ** 2).sum() for g in naive])
        torch.testing.assert_close(sq, expected, rtol=1e-8, atol=1e-14)


def test_flow_dp_step_without_noise_equals_hand_clip_and_average():
    flow = _flow(4, 3)
    x = 1.5 * torch.randn(11, 4, dtype=torch.float64)
    naive = _naive_grads(flow, x)
    norms = torch.stack([torch.sqrt(sum((g ** 2).sum() for g in row.values())) for row in naive])
    clip = float(norms.median())
    expected_batch = 13.7
    step = DPSGDStep(flow, max_grad_norm=clip, noise_multiplier=0.0,
                     expected_batch_size=expected_batch)
    with step.record():
        losses = -flow(x)
    step.step(losses)
    for name, p in flow.named_parameters():
        coef = torch.clamp(clip / (norms + 1e-6), max=1.0)
        hand = sum(c * row[name] for c, row in zip(coef, naive)) / expected_batch
        torch.testing.assert_close(p.grad, hand, rtol=1e-10, atol=1e-13)
