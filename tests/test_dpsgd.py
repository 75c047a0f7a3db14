"""Tests for skdpflow.privacy.dpsgd against a naive one-row-at-a-time loop (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from skdpflow.privacy.dpsgd import DPSGDStep, poisson_batches
from skdpflow.privacy.norms import linear_sq_norms
from skdpflow.privacy.randomness import SecureNoise, SeededNoise

DTYPE = torch.float64


class TiedToy(nn.Module):
    """One MLP called T times per row on different inputs, like the flow's conditioner."""

    def __init__(self, stages: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 5)
        )
        masks = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]])
        self.register_buffer("masks", masks[:stages])
        self.register_buffer("codes", torch.linspace(-1, 1, 2 * stages).reshape(stages, 2))

    def forward(self, x: Tensor) -> Tensor:
        state, extra = x, x.new_zeros(x.shape[0])
        for mask, code in zip(self.masks, self.codes, strict=True):
            inp = torch.cat([state * mask, code.expand(x.shape[0], 2)], dim=1)
            out = self.net(inp)
            state = state * torch.exp(0.3 * torch.tanh(out[:, 4:5])) + torch.sin(out[:, :4])
            extra = extra + out[:, 4] ** 2
        return (state**2).sum(1) + nn.functional.softplus(extra)


class PlainToy(nn.Module):
    """A plain MLP, each layer used once; the last layer has no bias."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return torch.logsumexp(out, dim=1) + 0.5 * out[:, 0] ** 2


class SeqToy(nn.Module):
    """A layer called on a (B, 2, f) input (two uses in one call) and on a (B, f) input."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = nn.Linear(2, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        both = torch.tanh(self.pair(x.reshape(-1, 2, 2)))  # (B, 2, 5): uses 1 and 2
        again = torch.tanh(self.pair(x[:, 1:3] * both[:, 0, :2]))  # (B, 5): use 3
        out = self.head(both.sum(1) * again)
        return (out**2).sum(1) + out[:, 0]


MODELS = {"tied": TiedToy, "plain": PlainToy, "seq": SeqToy}


def _make(kind: str, batch: int, seed: int = 0) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(seed)
    model = MODELS[kind]().to(DTYPE)
    x = 1.5 * torch.randn(batch, 4, dtype=DTYPE)
    return model, x


def _naive_grads(model: nn.Module, x: Tensor) -> list[dict[str, Tensor]]:
    """Per-row gradients, one backward per row (the reference)."""
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        model(x[i : i + 1])[0].backward()
        rows.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    model.zero_grad(set_to_none=True)
    return rows


def _naive_sq_norms(rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {n: torch.stack([r[n].square().sum() for r in rows]) for n in rows[0]}


def _record_losses(step: DPSGDStep, model: nn.Module, x: Tensor) -> Tensor:
    with step.record():
        return model(x)


@pytest.mark.parametrize("kind", ["tied", "plain", "seq"])
@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("strategy", ["auto", "gram", "materialise"])
def test_norms_match_naive_loop(kind: str, batch: int, strategy: str) -> None:
    model, x = _make(kind, batch)
    expected = _naive_sq_norms(_naive_grads(model, x))
    step = DPSGDStep(model, 1.0, 0.0, batch, norm_strategy=strategy)

    got = step.per_sample_sq_norms(_record_losses(step, model, x))
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-8, atol=0.0)

    info = step.step(_record_losses(step, model, x))
    total = torch.stack(list(expected.values())).sum(0).sqrt()
    torch.testing.assert_close(info["norms"], total, rtol=1e-8, atol=0.0)
    assert info["batch_size"] == batch


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


@pytest.mark.parametrize("kind", ["tied", "plain", "seq"])
def test_noise_free_step_equals_hand_clip_and_average(kind: str) -> None:
    model, x = _make(kind, 23)
    rows = _naive_grads(model, x)
    norms = torch.stack([torch.cat([g.flatten() for g in r.values()]).norm() for r in rows])
    clip = float(norms.median())
    assert (norms > clip).any() and (norms < clip).any()
    expected_batch_size = 17.5  # q * n, deliberately not the realised batch size

    step = DPSGDStep(model, clip, 0.0, expected_batch_size)
    info = step.step(_record_losses(step, model, x))

    coef = (clip / (norms + 1e-6)).clamp(max=1.0)
    for name, p in model.named_parameters():
        by_hand = sum(c * r[name] for c, r in zip(coef, rows, strict=True)) / expected_batch_size
        torch.testing.assert_close(p.grad, by_hand, rtol=1e-10, atol=1e-14)
    assert info["clipped_fraction"] == pytest.approx(float((norms > clip).double().mean()))


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


def _unit_grads(model: nn.Module, row: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-unit squared norms of one row's gradient: module name -> ``(out,)``."""
    out = {}
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Linear):
            sq = row[f"{name}.weight"].square().sum(1)
            if layer.bias is not None:
                sq = sq + row[f"{name}.bias"].square()
            out[name] = sq
    return out


def _hand_step(
    model: nn.Module,
    rows: list[dict[str, Tensor]],
    clip: float,
    clipping: str,
    ebs: float,
    keep: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Clip-and-average by hand: mask each row, clip it (flat or per unit), sum, divide."""
    if keep is not None:
        rows = [{n: g * keep[n] for n, g in r.items()} for r in rows]
    n_params = sum(p.numel() for p in model.parameters())
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for row in rows:
        if clipping == "flat":
            norm = torch.cat([g.flatten() for g in row.values()]).norm()
            c = (clip / (norm + 1e-6)).clamp(max=1.0)
            scaled = {n: c * g for n, g in row.items()}
        else:
            scaled = {}
            for name, sq in _unit_grads(model, row).items():
                layer = layers[name]
                size = layer.in_features + (layer.bias is not None)
                bound = clip * math.sqrt(size / n_params)
                c = (bound / (sq.sqrt() + 1e-6)).clamp(max=1.0)
                scaled[f"{name}.weight"] = c[:, None] * row[f"{name}.weight"]
                if layer.bias is not None:
                    scaled[f"{name}.bias"] = c * row[f"{name}.bias"]
        for n in total:
            total[n] += scaled[n]
    return {n: t / ebs for n, t in total.items()}


@pytest.mark.parametrize("kind", ["tied", "plain"])
@pytest.mark.parametrize("batch", [1, 9])
@pytest.mark.parametrize("strategy", ["gram", "materialise"])
def test_unit_norms_match_naive_loop(kind: str, batch: int, strategy: str) -> None:
    model, x = _make(kind, batch)
    rows = _naive_grads(model, x)
    step = DPSGDStep(model, 1.0, 0.0, batch, norm_strategy=strategy)
    got = step.per_sample_unit_sq_norms(_record_losses(step, model, x))
    expected = [_unit_grads(model, r) for r in rows]
    assert got.keys() == expected[0].keys()
    for name, sq in got.items():
        torch.testing.assert_close(
            sq, torch.stack([e[name] for e in expected]), rtol=1e-8, atol=0.0
        )


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
def test_noise_free_per_unit_step_equals_hand_clip_and_average(kind: str) -> None:
    model, x = _make(kind, 23)
    rows = _naive_grads(model, x)
    clip = 0.5 * float(
        torch.stack([torch.cat([g.flatten() for g in r.values()]).norm() for r in rows]).median()
    )
    step = DPSGDStep(model, clip, 0.0, 17.5, clipping="per_unit")
    info = step.step(_record_losses(step, model, x))
    hand = _hand_step(model, rows, clip, "per_unit", 17.5)
    flat = _hand_step(model, rows, clip, "flat", 17.5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, hand[name], rtol=1e-10, atol=1e-14)
    assert not all(torch.allclose(hand[n], flat[n]) for n in hand)  # a different rule
    assert 0.0 < info["clipped_fraction"] < 1.0
    assert step.last_mask_ is None
    # Each clipped row has norm <= sqrt(sum C_u^2) = C: the sensitivity of flat clipping.
    for row in rows:
        one = _hand_step(model, [row], clip, "per_unit", 1.0)
        assert torch.cat([g.flatten() for g in one.values()]).norm() <= clip


@pytest.mark.parametrize("kind", ["tied", "plain"])
@pytest.mark.parametrize("clipping", ["flat", "per_unit"])
def test_noise_free_sparse_step_equals_hand_clip_and_average(kind: str, clipping: str) -> None:
    model, x = _make(kind, 15)
    rows = _naive_grads(model, x)
    clip = 0.5 * float(
        torch.stack([torch.cat([g.flatten() for g in r.values()]).norm() for r in rows]).median()
    )
    step = DPSGDStep(model, clip, 0.0, 11.0, generator=torch.Generator().manual_seed(2),
                     clipping=clipping, sparsity=0.5)
    step.step(_record_losses(step, model, x))
    keep = step.last_mask_
    assert keep is not None and keep.keys() == dict(model.named_parameters()).keys()
    assert any(not m.all() for m in keep.values()) and any(m.any() for m in keep.values())
    hand = _hand_step(model, rows, clip, clipping, 11.0, keep=keep)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, hand[name], rtol=1e-10, atol=1e-14)
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
        rows = _naive_grads(model, x[:batch])
        step.step(_record_losses(step, model, x[:batch]))
        hand = _hand_step(model, rows, 0.8, clipping, 10.0)
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
    rows = _naive_grads(model, x)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(r.keys() == trainable for r in rows)
    step = DPSGDStep(model, 1.0, 0.0, 11.0)
    got = step.per_sample_sq_norms(_record_losses(step, model, x))
    assert got.keys() == trainable
    for name, sq in _naive_sq_norms(rows).items():
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
