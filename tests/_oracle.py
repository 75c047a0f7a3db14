"""The float64 per-row reference every fast path is checked against (Opacus's microbatch oracle).

One backward pass per row gives each row's gradient exactly; from those, by hand: per-row
squared norms (per parameter, per output unit), and clip-and-average (flat or per unit, with
an optional keep-mask). The toy models cover each way a linear layer is used: once per row
(``plain``), T times on one ``(B, T, in)`` input (``linear``: ``L_i = sum_t d_{i,t} .
layer(h_{i,t})``, so ``d`` is exactly the output gradient), tied across stages like the
flow's conditioner (``tied``), twice in one call and once more on its own (``seq``), and the
whole flow (``flow``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from skdpflow.flows.model import SharedConditionerFlow

DTYPE = torch.float64
Rows = list[dict[str, Tensor]]


# ---------------------------------------------------------------------------- models
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


class LinearUses(nn.Module):
    """One ``nn.Linear`` used T times per row, ``L_i = sum_t d_{i,t} . layer(h_{i,t})``.

    A row of the input packs ``h_i`` ``(T, in)`` and ``d_i`` ``(T, out)``
    (:func:`pack`), so ``d`` is exactly the layer's output gradient.
    """

    def __init__(self, uses: int, d_in: int, d_out: int, bias: bool = True) -> None:
        super().__init__()
        self.uses, self.d_in, self.d_out = uses, d_in, d_out
        self.layer = nn.Linear(d_in, d_out, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h, d = x.reshape(-1, self.uses, self.d_in + self.d_out).split([self.d_in, self.d_out], 2)
        return (self.layer(h) * d).sum((1, 2))


def pack(h: Tensor, d: Tensor) -> Tensor:
    """``(B, T, in)`` and ``(B, T, out)`` as the ``(B, T (in + out))`` input of LinearUses."""
    return torch.cat([h, d], 2).flatten(1)


def random_uses(batch: int, uses: int, d_in: int, d_out: int, seed: int) -> tuple[Tensor, Tensor]:
    """Random float64 ``h`` ``(B, T, in)`` and ``d`` ``(B, T, out)``."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, uses, d_in, dtype=DTYPE, generator=g)
    d = torch.randn(batch, uses, d_out, dtype=DTYPE, generator=g)
    return h, d


TOYS = {"tied": TiedToy, "plain": PlainToy, "seq": SeqToy}


def make(kind: str, batch: int, seed: int = 0) -> tuple[nn.Module, Tensor]:
    """A float64 model of ``kind`` and ``batch`` rows for it.

    ``kind`` is one of :data:`TOYS`, ``"flow"`` (a small SharedConditionerFlow, loss
    ``-log p``), or ``"linear-T-in-out"`` / ``"linear-T-in-out-nobias"`` (LinearUses).
    """
    torch.manual_seed(seed)
    if kind.startswith("linear-"):
        parts = kind.split("-")
        uses, d_in, d_out = (int(v) for v in parts[1:4])
        model = LinearUses(uses, d_in, d_out, bias=parts[-1] != "nobias").to(DTYPE)
        return model, pack(*random_uses(batch, uses, d_in, d_out, seed + 100 * uses + d_in))
    if kind == "flow":
        flow = SharedConditionerFlow(3, n_stages=3, hidden_size=8, n_bins=4, seed=seed).to(DTYPE)
        with torch.no_grad():  # away from the identity initialisation: every layer matters
            for p in flow.parameters():
                p.add_(0.3 * torch.randn_like(p))
        return _Negated(flow), torch.randn(batch, 3, dtype=DTYPE)
    model = TOYS[kind]().to(DTYPE)
    return model, 1.5 * torch.randn(batch, 4, dtype=DTYPE)


class _Negated(nn.Module):
    """``-module(x)``: the flow's loss ``-log p(x_i)``, one term per row."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return -self.module(x)


# ---------------------------------------------------------------------------- the reference
def per_row_grads(model: nn.Module, x: Tensor) -> Rows:
    """Each row's gradient, one backward pass per row: ``[{parameter name: grad}]``."""
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        model(x[i : i + 1])[0].backward()
        rows.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    model.zero_grad(set_to_none=True)
    return rows


def sq_norms(rows: Rows) -> dict[str, Tensor]:
    """Per-row squared norm of each parameter's gradient, ``{name: (B,)}``."""
    return {n: torch.stack([r[n].square().sum() for r in rows]) for n in rows[0]}


def row_norms(rows: Rows) -> Tensor:
    """Per-row norm of the whole gradient, ``(B,)``."""
    return torch.stack([torch.cat([g.flatten() for g in r.values()]).norm() for r in rows])


def unit_sq_norms(model: nn.Module, row: dict[str, Tensor]) -> dict[str, Tensor]:
    """One row's per-unit squared norms (weight row j + bias entry j): ``{module: (out,)}``."""
    out = {}
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Linear):
            weight, bias = row.get(f"{name}.weight"), row.get(f"{name}.bias")
            sq = 0.0 if weight is None else weight.square().sum(1)
            out[name] = sq + (0.0 if bias is None else bias.square())
    return out


def clip_and_average(
    model: nn.Module,
    rows: Rows,
    clip: float,
    clipping: str,
    expected_batch_size: float,
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
            for name, sq in unit_sq_norms(model, row).items():
                layer = layers[name]
                size = layer.in_features + (layer.bias is not None)
                bound = clip * math.sqrt(size / n_params)
                c = (bound / (sq.sqrt() + 1e-6)).clamp(max=1.0)
                scaled[f"{name}.weight"] = c[:, None] * row[f"{name}.weight"]
                if layer.bias is not None:
                    scaled[f"{name}.bias"] = c * row[f"{name}.bias"]
        for n in total:
            total[n] += scaled[n]
    return {n: t / expected_batch_size for n, t in total.items()}
