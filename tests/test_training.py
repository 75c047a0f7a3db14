"""DP-SGD on the real flow: fast per-row norms and one clipped step against a naive loop."""

from __future__ import annotations

import pytest
import torch

from skdpflow.flows.model import SharedConditionerFlow
from skdpflow.privacy.dpsgd import DPSGDStep
from skdpflow.training import Adam


# Discrete heads on features 3, 1 and 0 of a 5-feature flow (tests/test_heads.py).
HEADS = [[3, [0.0, 0.2, 0.5, 1.0]], [1, [0.0, 0.6, 1.0]], [0, [0.0, 0.1, 0.3, 0.45, 1.0]]]


def _flow(features: int, stages: int, heads: str | None = None) -> SharedConditionerFlow:
    """A float64 flow away from its start; ``heads``: None, "heads", "lookup" (heads with
    their lookup table, on ``HEADS``) or "groups" (and their conditioner calls in 2
    groups)."""
    flow = SharedConditionerFlow(features, n_stages=stages, hidden_size=12, n_bins=5,
                                 seed=1, discrete=HEADS if heads else None,
                                 head_lookup=heads in ("lookup", "groups"),
                                 head_groups=2 if heads == "groups" else 0).double()
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


@pytest.mark.parametrize("features, stages, batch, heads", [
    (3, 3, 5, None), (6, 4, 17, None), (2, 6, 9, None), (5, 4, 9, "heads"),
    (5, 4, 9, "lookup"), (5, 4, 9, "groups")])
@pytest.mark.parametrize("strategy", ["auto", "gram", "materialise"])
def test_flow_per_row_norms_equal_a_naive_loop(features, stages, batch, heads, strategy):
    flow = _flow(features, stages, heads)
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


@pytest.mark.parametrize("features, heads", [(4, None), (5, "heads"), (5, "lookup"),
                                             (5, "groups")])
def test_flow_dp_step_without_noise_equals_hand_clip_and_average(features, heads):
    flow = _flow(features, 3, heads)
    x = 1.5 * torch.randn(11, features, dtype=torch.float64)
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


def _units(row: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-output-unit squared norms of one row: weight row j plus bias entry j."""
    layers = {n.rsplit(".", 1)[0] for n in row}
    return {m: row[f"{m}.weight"].square().sum(1) + row[f"{m}.bias"].square() for m in layers}


@pytest.mark.parametrize("features, stages, batch", [(3, 3, 5), (6, 4, 17), (2, 6, 9)])
@pytest.mark.parametrize("strategy", ["auto", "gram", "materialise"])
def test_flow_per_unit_norms_equal_a_naive_loop(features, stages, batch, strategy):
    flow = _flow(features, stages)
    x = 1.5 * torch.randn(batch, features, dtype=torch.float64)
    naive = [_units(row) for row in _naive_grads(flow, x)]
    step = DPSGDStep(flow, max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=batch,
                     norm_strategy=strategy)
    with step.record():
        losses = -flow(x)
    fast = step.per_sample_unit_sq_norms(losses)
    assert fast.keys() == naive[0].keys()
    for name, sq in fast.items():
        expected = torch.stack([row[name] for row in naive])
        torch.testing.assert_close(sq, expected, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("clipping, sparsity", [("per_unit", 0.0), ("flat", 0.5),
                                                ("per_unit", 0.5)])
def test_flow_dp_step_variants_without_noise_equal_hand_clip_and_average(clipping, sparsity):
    flow = _flow(4, 3)
    x = 1.5 * torch.randn(11, 4, dtype=torch.float64)
    naive = _naive_grads(flow, x)
    step = DPSGDStep(flow, max_grad_norm=0.5, noise_multiplier=0.0, expected_batch_size=13.7,
                     generator=torch.Generator().manual_seed(0), clipping=clipping,
                     sparsity=sparsity)
    with step.record():
        losses = -flow(x)
    step.step(losses)
    keep = step.last_mask_ or {n: torch.ones_like(p, dtype=torch.bool)
                               for n, p in flow.named_parameters()}
    n_params = sum(p.numel() for p in flow.parameters())
    hand = {n: torch.zeros_like(p) for n, p in flow.named_parameters()}
    for row in naive:
        row = {n: g * keep[n] for n, g in row.items()}
        if clipping == "flat":
            norm = torch.sqrt(sum((g ** 2).sum() for g in row.values()))
            coef = {n: torch.clamp(0.5 / (norm + 1e-6), max=1.0) for n in row}
        else:
            coef = {}
            for module, sq in _units(row).items():
                size = row[f"{module}.weight"].shape[1] + 1
                c = torch.clamp(0.5 * (size / n_params) ** 0.5 / (sq.sqrt() + 1e-6), max=1.0)
                coef[f"{module}.weight"], coef[f"{module}.bias"] = c[:, None], c
        for n in hand:
            hand[n] += coef[n] * row[n] / 13.7
    for name, p in flow.named_parameters():
        torch.testing.assert_close(p.grad, hand[name], rtol=1e-10, atol=1e-13)
        assert torch.count_nonzero(p.grad[~keep[name]]) == 0


def test_adam_and_cosine_match_torch_optim_step_for_step() -> None:
    """The optimiser of our own (no torch._dynamo import) against torch.optim's, float64."""
    from skdpflow.training import Adam, cosine_learning_rate

    gen = torch.Generator().manual_seed(0)
    ours = [torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen,
                                                                               dtype=torch.float64)]
    theirs = [p.clone() for p in ours]
    steps, lr = 25, 0.05
    reference = torch.optim.Adam(theirs, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=steps,
                                                          eta_min=lr / 10)
    adam = Adam(ours)
    for k in range(steps):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ours]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        assert cosine_learning_rate(lr, k, steps) == pytest.approx(
            reference.param_groups[0]["lr"], rel=1e-12)
        adam.step(cosine_learning_rate(lr, k, steps))
        reference.step()
        schedule.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    assert not torch.equal(ours[0], theirs[0] * 0)  # it moved


def test_a_fit_does_not_import_torch_dynamo() -> None:
    """The first fit of a process pays no multi-second torch._dynamo import."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, pandas as pd\n"
            "from skdpflow import DPFlowSynthesizer\n"
            "df = pd.DataFrame({'a': np.arange(300) % 7, 'b': np.arange(300) / 3.0})\n"
            "DPFlowSynthesizer(epsilon=5, verbose=False, random_state=0,\n"
            "                  domain_epsilon_fraction=0.2).fit(\n"
            "    df, domain={'a': {'type': 'numerical', 'min': 0, 'max': 6,\n"
            "                      'integer': True}, 'b': {'type': 'numerical', 'min': 0,\n"
            "                      'max': 100}})\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_adam_scales_multiply_each_parameters_step():
    """A learning-rate factor per parameter: the step of a scaled parameter is the factor
    times the unscaled one (Adam's step is linear in the learning rate)."""
    torch.manual_seed(0)
    params = [torch.randn(3, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    plain = [p.clone() for p in params]
    scaled = [p.clone() for p in params]
    a, b = Adam(plain), Adam(scaled, scales=[1.0, 7.0])
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(plain, scaled, grads):
            p.grad, q.grad = g.clone(), g.clone()
        a.step(0.01)
        b.step(0.01)
    torch.testing.assert_close(scaled[0], plain[0])
    torch.testing.assert_close(scaled[1] - params[1], 7.0 * (plain[1] - params[1]))
    with pytest.raises(ValueError, match="one factor per parameter"):
        Adam(params, scales=[1.0])
