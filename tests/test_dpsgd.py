"""Edge cases of skdpflow.privacy.dpsgd; its norms and steps against the per-row reference are
the contract of tests/test_clipping_contract.py."""

from __future__ import annotations

import math

import _oracle as oracle
import pytest
import torch
from torch import Tensor, nn

from skdpflow.privacy.dpsgd import DPSGDStep, poisson_batches
from skdpflow.privacy.randomness import SecureNoise, SeededNoise

DTYPE = oracle.DTYPE
_make = oracle.make


def _record_losses(step: DPSGDStep, model: nn.Module, x: Tensor) -> Tensor:
    with step.record():
        return model(x)


def test_unclipped_step_equals_plain_gradient() -> None:
    model, x = _make("tied", 19)
    model.zero_grad()
    (model(x).sum() / 7.0).backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    step = DPSGDStep(model, math.inf, 0.0, 7.0)
    info = step.step(_record_losses(step, model, x))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], rtol=1e-10, atol=1e-14)
    assert info["clipped_fraction"] == 0.0


def _noisy_grads(model: nn.Module, x: Tensor, sigma: float, seed: int | None) -> Tensor:
    noise = SecureNoise() if seed is None else SeededNoise(seed)
    step = DPSGDStep(model, 0.7, sigma, 12.0, noise=noise)
    step.step(_record_losses(step, model, x))
    return torch.cat([p.grad.flatten() for p in model.parameters()])


class WideSquare(nn.Module):
    """Enough parameters (>10^4) to estimate the noise standard deviation to ~1%."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(100, 100), nn.Tanh(), nn.Linear(100, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1) ** 2


def test_noise_scale_and_reproducibility() -> None:
    torch.manual_seed(0)
    model = WideSquare().to(DTYPE)
    x = torch.randn(9, 100, dtype=DTYPE)
    clean = _noisy_grads(model, x, 0.0, seed=3)
    noisy = _noisy_grads(model, x, 1.3, seed=3)
    noise = noisy - clean
    assert noise.numel() > 10_000
    assert noise.std().item() == pytest.approx(1.3 * 0.7 / 12.0, rel=0.05)
    assert abs(noise.mean().item()) < 4 * 1.3 * 0.7 / 12.0 / math.sqrt(noise.numel())
    assert torch.equal(noisy, _noisy_grads(model, x, 1.3, seed=3))
    assert not torch.equal(noisy, _noisy_grads(model, x, 1.3, seed=4))


def test_default_noise_is_secret_and_never_follows_a_seed() -> None:
    """Without a noise source, DPSGDStep draws from a fresh SecureNoise: seeds change nothing."""
    torch.manual_seed(0)
    model = WideSquare().to(DTYPE)
    x = torch.randn(9, 100, dtype=DTYPE)
    clean = _noisy_grads(model, x, 0.0, seed=None)
    draws = []
    for _ in range(2):
        torch.manual_seed(0)
        draws.append(_noisy_grads(model, x, 1.3, seed=None))
    assert not torch.equal(draws[0], draws[1])
    noise = draws[0] - clean
    assert noise.std().item() == pytest.approx(1.3 * 0.7 / 12.0, rel=0.05)
    step = DPSGDStep(model, 0.7, 1.3, 12.0)
    assert isinstance(step.noise, SecureNoise)


def test_poisson_batches_statistics() -> None:
    n, q, steps = 50, 0.2, 2000
    batches = list(poisson_batches(n, q, steps, SecureNoise()))
    counts = torch.zeros(n)
    for idx in batches:
        assert idx.dtype == torch.int64
        counts[idx] += 1
    freq = counts / steps
    assert (freq - q).abs().max() < 4 * math.sqrt(q * (1 - q) / steps)
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float64)
    assert abs(sizes.mean() - q * n) < 4 * math.sqrt(n * q * (1 - q) / steps)
    again = list(poisson_batches(n, q, steps, SecureNoise()))  # secret: never the same twice
    assert not all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_empty_batches_happen_and_step_handles_them() -> None:
    batches = list(poisson_batches(10, 0.05, 50, SeededNoise(0)))
    assert any(len(b) == 0 for b in batches)

    model, x = _make("tied", 10)
    sigma, clip, ebs = 2.0, 0.5, 0.5
    step = DPSGDStep(model, clip, sigma, ebs, noise=SeededNoise(5))
    info = step.step(_record_losses(step, model, x[batches[0][:0]]))  # forward on zero rows
    assert info["batch_size"] == 0 and info["clipped_fraction"] == 0.0
    with_forward = [p.grad.clone() for p in model.parameters()]

    step = DPSGDStep(model, clip, sigma, ebs, noise=SeededNoise(5))
    step.step_empty()  # no forward at all
    for p, g in zip(model.parameters(), with_forward, strict=True):
        assert p.grad.shape == p.shape
        torch.testing.assert_close(p.grad, g, rtol=0.0, atol=0.0)
    noise = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert noise.std().item() == pytest.approx(sigma * clip / ebs, rel=0.15)

    quiet = DPSGDStep(model, clip, 0.0, ebs)
    quiet.step_empty()
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())


@pytest.mark.parametrize(
    "layer",
    [nn.Embedding(5, 3), nn.LayerNorm(3), nn.Conv1d(1, 1, 2)],
    ids=["embedding", "layernorm", "conv"],
)
def test_unsupported_trainable_layer_raises(layer: nn.Module) -> None:
    model = nn.Sequential(nn.Linear(3, 3), layer)
    with pytest.raises(
        TypeError, match=f"no fast per-row gradient rule for {type(layer).__name__}"
    ):
        DPSGDStep(model, 1.0, 1.0, 10.0)


def test_linear_subclass_and_shared_parameters_raise() -> None:
    class MaskedLinear(nn.Linear):
        pass

    with pytest.raises(TypeError, match="MaskedLinear"):
        DPSGDStep(nn.Sequential(MaskedLinear(3, 3)), 1.0, 1.0, 10.0)
    first, second = nn.Linear(3, 3), nn.Linear(3, 3)
    second.weight = first.weight
    with pytest.raises(TypeError, match="shared"):
        DPSGDStep(nn.Sequential(first, second), 1.0, 1.0, 10.0)


def test_frozen_or_parameter_free_layers_are_allowed() -> None:
    embedding = nn.Embedding(5, 3).requires_grad_(False)
    model = nn.Sequential(nn.LayerNorm(3, elementwise_affine=False), nn.Linear(3, 2))
    DPSGDStep(nn.ModuleList([model, embedding]), 1.0, 1.0, 10.0)


def test_nothing_per_row_survives_a_step() -> None:
    model, x = _make("tied", 8)
    attrs_before = {n: dict(vars(p)) for n, p in model.named_parameters()}
    step = DPSGDStep(model, 0.5, 1.0, 8.0, generator=torch.Generator().manual_seed(0))
    with step.record():
        losses = model(x)
        assert all(len(layer._forward_hooks) == 1 for layer in step.layers_)
    assert all(len(layer._forward_hooks) == 0 for layer in step.layers_)
    assert len(step._recorder.calls[step.layers_[0]].inputs) == 3  # one entry per tied use
    step.step(losses)
    assert step._recorder.calls == {}  # no graph, no recorded tensor
    assert step._recorder._scratch  # reusable scratch (last batch's h and d) until release()
    step.release()
    assert step._recorder._scratch == {}
    for name, p in model.named_parameters():
        assert vars(p) == attrs_before[name] == {}
        assert p.grad is not None and p.grad.grad_fn is None
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_step_without_record_or_with_bad_shape_raises() -> None:
    model, x = _make("plain", 4)
    step = DPSGDStep(model, 1.0, 0.0, 4.0)
    with pytest.raises(RuntimeError, match="record"):
        step.step(model(x))
    with pytest.raises(ValueError, match="shape"):
        step.step(_record_losses(step, model, x).reshape(2, 2))
    assert step._recorder.calls == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_grad_norm": 0.0},
        {"noise_multiplier": -1.0},
        {"expected_batch_size": 0.0},
        {"max_grad_norm": math.inf, "noise_multiplier": 1.0},
        {"norm_strategy": "magic"},
    ],
)
def test_invalid_arguments_raise(kwargs: dict) -> None:
    args = {"max_grad_norm": 1.0, "noise_multiplier": 1.0, "expected_batch_size": 4.0}
    with pytest.raises(ValueError):
        DPSGDStep(nn.Linear(2, 2), **{**args, **kwargs})


# ---------------------------------------------------------------- clipping variants


def test_unit_bounds_split_the_budget() -> None:
    model, _ = _make("tied", 1)
    step = DPSGDStep(model, 0.7, 1.0, 4.0, clipping="per_unit")
    layers = dict(model.named_modules())
    assert sum(b**2 * layers[n].out_features for n, b in step.unit_bounds_.items()) == (
        pytest.approx(0.7**2, rel=1e-12)
    )
    # More parameters in a unit, a larger share: C_u^2 proportional to n_u.
    assert step.unit_bounds_["net.0"] < step.unit_bounds_["net.2"]


@pytest.mark.parametrize("kind", ["tied", "plain", "seq"])
def test_per_unit_clipping_is_its_own_rule_within_the_flat_bound(kind: str) -> None:
    model, x = _make(kind, 23)
    rows = oracle.per_row_grads(model, x)
    clip = 0.5 * float(oracle.row_norms(rows).median())
    step = DPSGDStep(model, clip, 0.0, 17.5, clipping="per_unit")
    info = step.step(_record_losses(step, model, x))
    hand = oracle.clip_and_average(model, rows, clip, "per_unit", 17.5)
    flat = oracle.clip_and_average(model, rows, clip, "flat", 17.5)
    assert not all(torch.allclose(hand[n], flat[n]) for n in hand)  # a different rule
    assert 0.0 < info["clipped_fraction"] < 1.0
    assert step.last_mask_ is None
    # Each clipped row has norm <= sqrt(sum C_u^2) = C: the sensitivity of flat clipping.
    for row in rows:
        one = oracle.clip_and_average(model, [row], clip, "per_unit", 1.0)
        assert torch.cat([g.flatten() for g in one.values()]).norm() <= clip


@pytest.mark.parametrize("kind", ["tied", "plain"])
@pytest.mark.parametrize("clipping", ["flat", "per_unit"])
def test_sparse_step_drops_whole_units(kind: str, clipping: str) -> None:
    model, x = _make(kind, 15)
    step = DPSGDStep(model, 1.0, 0.0, 11.0, generator=torch.Generator().manual_seed(2),
                     clipping=clipping, sparsity=0.5)
    step.step(_record_losses(step, model, x))
    keep = step.last_mask_
    assert keep is not None and keep.keys() == dict(model.named_parameters()).keys()
    assert any(not m.all() for m in keep.values()) and any(m.any() for m in keep.values())
    for name, p in model.named_parameters():
        assert torch.count_nonzero(p.grad[~keep[name]]) == 0
        if name.endswith("weight"):  # one decision per output unit: weight row + bias entry
            assert torch.equal(keep[name], keep[name][:, :1].expand_as(keep[name]))
            bias = keep.get(name.replace("weight", "bias"))
            if bias is not None:
                assert torch.equal(keep[name][:, 0], bias)


def test_sparse_masks_ignore_the_data_and_follow_the_seed() -> None:
    def masks(seed: int, data_seed: int, steps: int = 4) -> list[dict[str, Tensor]]:
        model, x = _make("tied", 6 + data_seed, seed=data_seed)  # different rows and weights
        step = DPSGDStep(model, 1.0, 0.8, 5.0, generator=torch.Generator().manual_seed(seed),
                         sparsity=0.4)
        out = []
        for _ in range(steps):
            step.step(_record_losses(step, model, x))
            out.append(step.last_mask_)
        step.step_empty()
        return out + [step.last_mask_]

    def same(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> bool:
        return all(torch.equal(m[n], k[n]) for m, k in zip(a, b, strict=True) for n in m)

    first = masks(seed=7, data_seed=0)
    assert same(first, masks(seed=7, data_seed=1))
    assert same(first, masks(seed=7, data_seed=2))
    assert not same(first, masks(seed=8, data_seed=0))
    assert not same(first[:1], first[1:2])  # a fresh mask every step


def test_kept_fraction_matches_one_minus_sparsity() -> None:
    model = WideSquare().to(DTYPE)
    step = DPSGDStep(model, 1.0, 0.0, 4.0, generator=torch.Generator().manual_seed(0),
                     sparsity=0.3)
    kept = total = 0
    for _ in range(200):
        step.step_empty()
        units = [m for n, m in step.last_mask_.items() if n.endswith("bias")]
        kept += sum(int(m.sum()) for m in units)
        total += sum(m.numel() for m in units)
    assert total == 200 * 101
    assert abs(kept / total - 0.7) < 4 * math.sqrt(0.3 * 0.7 / total)


@pytest.mark.parametrize("clipping", ["flat", "per_unit"])
def test_dropped_coordinates_get_no_noise(clipping: str) -> None:
    torch.manual_seed(0)
    model = WideSquare().to(DTYPE)
    x = torch.randn(9, 100, dtype=DTYPE)
    step = DPSGDStep(model, 0.7, 1.3, 12.0, generator=torch.Generator().manual_seed(3),
                     clipping=clipping, sparsity=0.5)
    step.step(_record_losses(step, model, x))
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    keep = torch.cat([step.last_mask_[n].flatten() for n, _ in model.named_parameters()])
    assert torch.count_nonzero(grads[~keep]) == 0
    assert torch.count_nonzero(grads[keep]) == int(keep.sum())
    # Same sigma * C on kept coordinates as flat clipping: the accounting is unchanged.
    clean = grads.clone()
    quiet = DPSGDStep(model, 0.7, 0.0, 12.0, generator=torch.Generator().manual_seed(3),
                      clipping=clipping, sparsity=0.5)
    quiet.step(_record_losses(quiet, model, x))
    clean = torch.cat([p.grad.flatten() for p in model.parameters()])
    noise = (grads - clean)[keep]
    assert noise.numel() > 4000
    assert noise.std().item() == pytest.approx(1.3 * 0.7 / 12.0, rel=0.05)


@pytest.mark.parametrize(
    "kwargs",
    [{"clipping": "per_layer"}, {"sparsity": 1.0}, {"sparsity": -0.1}],
)
def test_invalid_clipping_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DPSGDStep(nn.Linear(2, 2), 1.0, 1.0, 4.0, **kwargs)


@pytest.mark.parametrize("clipping", ["flat", "per_unit"])
def test_scratch_reuse_across_varying_batch_sizes(clipping: str) -> None:
    """Poisson batch sizes vary: buffers are reused (a smaller batch after a larger one) and
    no value of an earlier batch leaks into a later step."""
    model, x = _make("tied", 30)
    step = DPSGDStep(model, 0.8, 0.0, 10.0, clipping=clipping)
    storage = None
    for batch in (12, 5, 12, 9, 1):
        rows = oracle.per_row_grads(model, x[:batch])
        step.step(_record_losses(step, model, x[:batch]))
        hand = oracle.clip_and_average(model, rows, 0.8, clipping, 10.0)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, hand[name], rtol=1e-10, atol=1e-14)
        buffers = {k: v.data_ptr() for k, v in step._recorder._scratch.items()}
        if storage is not None and batch < 12:
            assert buffers == storage  # no new allocation once the largest batch was seen
        storage = buffers


def test_frozen_weight_or_bias_norms_and_step() -> None:
    """Only trainable coordinates count: a frozen weight (bias alone) or a frozen bias."""
    model, x = _make("plain", 11)
    model.net[0].weight.requires_grad_(False)
    model.net[2].bias.requires_grad_(False)
    rows = oracle.per_row_grads(model, x)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(r.keys() == trainable for r in rows)
    step = DPSGDStep(model, 1.0, 0.0, 11.0)
    got = step.per_sample_sq_norms(_record_losses(step, model, x))
    assert got.keys() == trainable
    for name, sq in oracle.sq_norms(rows).items():
        torch.testing.assert_close(got[name], sq, rtol=1e-8, atol=0.0)
    norms = torch.stack([torch.cat([g.flatten() for g in r.values()]).norm() for r in rows])
    clip = float(norms.median())
    step = DPSGDStep(model, clip, 0.0, 11.0)
    step.step(_record_losses(step, model, x))
    coef = (clip / (norms + 1e-6)).clamp(max=1.0)
    for name in trainable:
        p = dict(model.named_parameters())[name]
        by_hand = sum(c * r[name] for c, r in zip(coef, rows, strict=True)) / 11.0
        torch.testing.assert_close(p.grad, by_hand, rtol=1e-10, atol=1e-14)
