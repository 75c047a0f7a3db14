"""The flow's discrete heads: softmax heads over cells, fed by the shared conditioner.

Each fast path has its slow twin here: log-densities against autograd Jacobians and a sum
over cells, the no-autograd paths against the module path. Per-row gradient norms and the
clipped step against a one-row-at-a-time loop in float64 are tests/test_training.py's, with
heads among their cases.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from skdpflow.flows.model import SharedConditionerFlow
from skdpflow.privacy.dpsgd import DPSGDStep

pytestmark = pytest.mark.usefixtures("float64")

# Five features: 3 and 1 and 0 are heads (in that order), 2 and 4 are continuous.
HEADS = [[3, [0.0, 0.2, 0.5, 1.0]], [1, [0.0, 0.6, 1.0]], [0, [0.0, 0.1, 0.3, 0.45, 1.0]]]


def _flow(lookup: bool = False, features: int = 5, heads: list = HEADS,
          **kwargs: object) -> SharedConditionerFlow:
    options = {"n_stages": 4, "hidden_size": 16, "n_bins": 5} | kwargs
    flow = SharedConditionerFlow(features, discrete=heads, head_lookup=lookup, **options)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    return flow


def _std_normal_log_prob(x: Tensor) -> Tensor:
    return (-0.5 * x.square() - 0.5 * math.log(2 * math.pi)).sum(-1)


def _cell_of(u: float, edges: list[float]) -> int:
    return int(np.clip(np.searchsorted(edges, u, side="right") - 1, 0, len(edges) - 2))


# Without and with the lookup table, and with the heads' conditioner calls in 2 groups and in
# one (the default: no head's call sees a cell, so its hidden layer is the same for all rows).
VARIANTS = pytest.mark.parametrize("lookup, groups",
                                   [(False, 0), (True, 0), (True, 2), (True, 1)],
                                   ids=["heads", "lookup", "groups", "one_group"])


@VARIANTS
@pytest.mark.parametrize("base", ["identity", "copula", "calibrated"])
def test_log_prob_matches_full_jacobian(lookup: bool, groups: int, base: str) -> None:
    flow = _flow(lookup, calibration_knots=16 if base == "calibrated" else 0,
                 head_groups=groups)
    if base != "identity":
        a = torch.randn(5, 5, generator=torch.Generator().manual_seed(2))
        cov = a @ a.T + 5 * torch.eye(5)
        flow.set_base_correlation(cov / cov.diagonal().sqrt().outer(cov.diagonal().sqrt()))
    if base == "calibrated":
        flow.calibrate(256, generator=torch.Generator().manual_seed(0))
        assert flow.calibrated
    for x in torch.randn(4, 5, generator=torch.Generator().manual_seed(3)):
        jac = torch.autograd.functional.jacobian(lambda r: flow.transform(r[None])[0][0], x)
        sign, logdet = torch.linalg.slogdet(jac)
        assert sign > 0
        z = flow.transform(x[None])[0][0]
        expected = _std_normal_log_prob(z) + logdet
        torch.testing.assert_close(flow.log_prob(x[None])[0], expected, atol=1e-9, rtol=1e-9)
        with torch.no_grad():
            torch.testing.assert_close(flow.log_prob(x[None])[0], expected, atol=1e-9,
                                       rtol=1e-9)


@VARIANTS
def test_cell_probabilities_sum_to_one_and_the_flow_integrates_to_one_given_them(
        lookup: bool, groups: int) -> None:
    """The heads' part, ``log p(x) - sum_j log phi(x_j) + log w_cell`` at fixed continuous
    values, is a pmf over the 3 x 2 x 4 cells (it sums to one), and the continuous feature's
    density given the cells integrates to one (on a grid)."""
    flow = _flow(lookup, features=4, heads=[[3, HEADS[0][1]], [1, HEADS[1][1]],
                                            [0, HEADS[2][1]]], head_groups=groups)
    grid = torch.linspace(-12.0, 12.0, 150001)  # trapezoid error ~1e-3 at 60,001 points
    total = 0.0
    with torch.no_grad():
        for cells in itertools.product(*(range(len(e) - 1) for _, e in flow.config["discrete"])):
            x = torch.empty(1, 4)
            x[0, 2] = 0.3
            log_w = 0.0
            for (index, edges), k in zip(flow.config["discrete"], cells):
                x[0, index] = float(torch.special.ndtri(torch.tensor(0.5 * (edges[k]
                                                                            + edges[k + 1]))))
                log_w += math.log(edges[k + 1] - edges[k])
            log_phi = float(_std_normal_log_prob(x[:, [3, 1, 0]])[0])
            _, _, log_heads, _ = flow._heads_forward(x[:, [3, 1, 0]], need_z=False)
            p_cells = math.exp(float(log_heads[0]) - log_phi + log_w)
            total += p_cells
            rows = x.repeat(len(grid), 1)
            rows[:, 2] = grid
            density = (flow.log_prob(rows) - log_phi + log_w).exp() / p_cells
            assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=2e-3)
    assert total == pytest.approx(1.0, abs=1e-12)


@VARIANTS
def test_inverse_of_transform_and_fast_paths_match_module_paths(lookup: bool,
                                                                 groups: int) -> None:
    flow = _flow(lookup, head_groups=groups)
    x = 1.5 * torch.randn(40, 5, generator=torch.Generator().manual_seed(4))
    z, ladj = flow.transform(x)  # parameters require grad: module path
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-9, rtol=0)
    with torch.no_grad():
        z_fast, ladj_fast = flow.transform(x)
        x_fast = flow.inverse(z)
        log_fast = flow.log_prob(x)
    torch.testing.assert_close(z_fast, z.detach(), atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj_fast, ladj.detach(), atol=1e-10, rtol=0)
    torch.testing.assert_close(x_fast, x, atol=1e-9, rtol=0)
    torch.testing.assert_close(log_fast, flow.log_prob(x).detach(), atol=1e-10, rtol=0)


@VARIANTS
def test_float32_sampling_picks_the_float64_cells(lookup: bool, groups: int) -> None:
    """Sampling runs the heads in float32 (cell-major softmax, cumulative sums by a
    triangular product) and the inverse in blocks of rows: against the same flow in float64
    on the same latent rows, more than one block of them, the cells agree on all but a
    rounding's share of rows and the continuous features to float32 precision."""
    from skdpflow.flows import model as flow_module

    flow = _flow(lookup, head_groups=groups, calibration_knots=16)
    a = torch.randn(5, 5, generator=torch.Generator().manual_seed(2))
    cov = a @ a.T + 5 * torch.eye(5)
    flow.set_base_correlation(cov / cov.diagonal().sqrt().outer(cov.diagonal().sqrt()))
    flow.calibrate(n_samples=4096, generator=torch.Generator().manual_seed(3))
    flow.requires_grad_(False)
    z = torch.randn(flow_module._FAST_BLOCK_ROWS + 3000, 5,
                    generator=torch.Generator().manual_seed(5))
    x64 = flow.inverse(z)
    x32 = flow.float().inverse(z.float()).double()
    for index, edges in HEADS:
        cells = [torch.tensor(np.searchsorted(edges, torch.special.ndtr(x[:, index]).numpy(),
                                              side="right") - 1) for x in (x64, x32)]
        assert float((cells[0] != cells[1]).double().mean()) < 1e-3
    same = (torch.special.ndtr(x64[:, [3, 1, 0]]) - torch.special.ndtr(x32[:, [3, 1, 0]])
            ).abs().max(1).values < 1e-4
    assert float(same.double().mean()) > 0.999
    torch.testing.assert_close(x32[same][:, [2, 4]], x64[same][:, [2, 4]], atol=1e-4, rtol=0)
    # One block at a time gives the same rows as the whole batch.
    block = flow_module._FAST_BLOCK_ROWS
    assert torch.equal(flow.inverse(z.float()[block:]), x32[block:].float())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_accept_runs_the_stages_on_the_kept_rows_only_and_keeps_the_same_rows(dtype) -> None:
    """inverse(z, accept), the rejection step after the heads, against the slow twin: the
    whole inverse, then the rows accept would keep, decided on those rows' heads. Over more
    than one block (accept gets each block's first row number), calibrated, with a base
    correlation."""
    from skdpflow.flows import model as flow_module

    flow = _flow(True, head_groups=1, calibration_knots=16)
    a = torch.randn(5, 5, generator=torch.Generator().manual_seed(2))
    cov = a @ a.T + 5 * torch.eye(5)
    flow.set_base_correlation(cov / cov.diagonal().sqrt().outer(cov.diagonal().sqrt()))
    bins = np.linspace(0.0, 1.0, 9)  # the continuous features only, as a fit calibrates
    flow.calibrate(n_samples=4096, generator=torch.Generator().manual_seed(3),
                   edges=[None, None, bins, None, bins])
    flow = flow.to(dtype).requires_grad_(False)
    n = 2 * flow_module._FAST_BLOCK_ROWS + 1000
    z = torch.randn(n, 5, generator=torch.Generator().manual_seed(6), dtype=dtype)
    uniforms = torch.rand(n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    seen = []

    def accept(start: int, x: Tensor) -> Tensor:
        seen.append((start, len(x)))
        assert torch.equal(x[:, [2, 4]], torch.zeros_like(x[:, [2, 4]]))  # heads only
        # Keep a row with a probability set by its first head's cell (as the weights do).
        u0 = torch.special.ndtr(x[:, 3].double())
        return uniforms[start : start + len(x)] < torch.where(u0 < 0.2, 0.3, 0.8)

    full = flow.inverse(z)
    kept = uniforms < torch.where(torch.special.ndtr(full[:, 3].double()) < 0.2, 0.3, 0.8)
    out = flow.inverse(z, accept)
    block = flow_module._FAST_BLOCK_ROWS
    assert seen == [(0, block), (block, block), (2 * block, 1000)]
    assert 0.3 * n < len(out) < 0.9 * n and len(out) == int(kept.sum())
    torch.testing.assert_close(out[:, [3, 1, 0]], full[kept][:, [3, 1, 0]], atol=0, rtol=0)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out, full[kept], atol=tol, rtol=0)
    # Decided on the heads only: not where a raked feature is continuous or calibrated.
    assert flow.decides_on_heads([3, 1]) and not flow.decides_on_heads([3, 2])
    assert not flow.decides_on_heads([])
    with torch.no_grad():
        flow.calibration_to[:, 3] = flow.calibration_to[:, 3] * 0.9
    assert not flow.decides_on_heads([3, 1])
    with pytest.raises(ValueError, match="heads"):
        SharedConditionerFlow(3, n_stages=2).inverse(torch.zeros(4, 3), accept)


def test_untrained_heads_sample_their_released_masses_and_continuous_is_the_copula() -> None:
    flow = SharedConditionerFlow(5, discrete=HEADS)  # zero output layer: the start
    n = 200_000
    x = flow.sample(n, generator=torch.Generator().manual_seed(0))
    u = torch.special.ndtr(x)
    for index, edges in HEADS:
        cells = np.array([_cell_of(v, edges) for v in u[:20_000, index].tolist()])
        masses = np.bincount(cells, minlength=len(edges) - 1) / len(cells)
        np.testing.assert_allclose(masses, np.diff(edges), atol=0.015)
        # Uniform inside its cell: the dequantised law the encoder trains on.
        assert abs(float(u[:, index].mean()) - 0.5) < 0.005
    torch.testing.assert_close(x[:, [2, 4]].std(0), torch.ones(2), atol=0.01, rtol=0)


def test_untrained_heads_with_a_base_correlation_follow_the_copula() -> None:
    """Two 2-cell heads and a continuous feature, pairwise correlation 0.8 in latent space:
    the second head agrees with the first about as the copula says (1 - arccos(0.8) / pi =
    0.80 for median cells; the heads read the first at its cell's midpoint: 0.82), and the
    continuous feature's mean given the first head's upper cell is 0.8 Phi^-1(0.75) = 0.54."""
    half = [0.0, 0.5, 1.0]
    flow = SharedConditionerFlow(3, discrete=[[0, half], [1, half]])
    corr = torch.full((3, 3), 0.8).fill_diagonal_(1.0)
    flow.set_base_correlation(corr)
    x = flow.sample(100_000, generator=torch.Generator().manual_seed(0))
    upper = x[:, :2] > 0
    agree = float((upper[:, 0] == upper[:, 1]).double().mean())
    assert 0.78 < agree < 0.84
    assert float(x[upper[:, 0], 2].mean()) == pytest.approx(0.8 * 0.6745, abs=0.05)
    flow.set_base_correlation(torch.eye(3))  # back to the independent start, exactly
    fresh = SharedConditionerFlow(3, discrete=[[0, half], [1, half]])
    xs = torch.randn(20, 3)
    assert torch.equal(flow.log_prob(xs), fresh.log_prob(xs))


def test_matched_variances_give_the_continuous_features_unit_variance() -> None:
    """A binary head with 12% in its upper cell, latent correlation 0.8 with a continuous
    feature: read at its cells' midpoints, the head explains less than the correlation
    says, and the continuous feature's variance falls below 1 (0.64 sum_k P_k mid_k^2 +
    0.36 = 0.59). Matched, it is 1 again, its mean given the head unchanged, and the log-
    density still the change of variables of the inverse map."""
    cells = [0.0, 0.88, 1.0]
    flow = SharedConditionerFlow(2, discrete=[[0, cells]])
    flow.set_base_correlation(torch.tensor([[1.0, 0.8], [0.8, 1.0]]))
    g = torch.Generator().manual_seed(0)
    before = flow.sample(200_000, generator=g)
    mids = torch.special.ndtri(torch.tensor([0.44, 0.94], dtype=torch.float64))
    expected = 0.64 * float(0.88 * mids[0] ** 2 + 0.12 * mids[1] ** 2) + 0.36
    assert float(before[:, 1].var()) == pytest.approx(expected, abs=0.01)
    factors = flow.match_continuous_variances(generator=g)
    assert factors.shape == (1,) and float(factors[0]) > 1.1
    after = flow.sample(200_000, generator=g)
    assert float(after[:, 1].var()) == pytest.approx(1.0, abs=0.015)
    upper = after[:, 0] > float(torch.special.ndtri(torch.tensor(0.88)))
    upper_before = before[:, 0] > float(torch.special.ndtri(torch.tensor(0.88)))
    assert float(after[upper, 1].mean()) == pytest.approx(
        float(before[upper_before, 1].mean()), abs=0.02)
    x = after[:50]
    z, ladj = flow.transform(x)
    torch.testing.assert_close(flow.log_prob(x), _std_normal_log_prob(z) + ladj)
    torch.testing.assert_close(flow.inverse(z), x)
    # Nothing to do without a link between the heads and the continuous features.
    flow.set_base_correlation(torch.eye(2))
    assert torch.equal(flow.match_continuous_variances(generator=g), torch.ones(1))


def test_a_head_learns_a_deterministic_lookup() -> None:
    """Without noise, the heads represent a function of one discrete column of another:
    trained on y = x (4 cells each), the second head puts > 99% on the matching cell."""
    edges = [0.0, 0.4, 0.7, 0.9, 1.0]
    flow = SharedConditionerFlow(2, n_stages=2, hidden_size=16, discrete=[[0, edges],
                                                                           [1, edges]])
    opt = torch.optim.Adam(flow.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        k = torch.multinomial(torch.tensor(np.diff(edges)), 256, replacement=True, generator=g)
        lo = torch.tensor(edges)[k]
        hi = torch.tensor(edges)[k + 1]
        u = lo[:, None] + torch.rand(256, 2, generator=g) * (hi - lo)[:, None]
        loss = -flow.log_prob(torch.special.ndtri(u)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x = flow.sample(5000, generator=g)
    u = torch.special.ndtr(x).numpy()
    same = np.mean([_cell_of(a, edges) == _cell_of(b, edges) for a, b in u])
    assert same > 0.99


def test_head_edges_stay_float64() -> None:
    """The cells' edges are kept exact through ``.float()`` (the state round trip and row
    independence are tests/test_flows.py's, with heads among their cases)."""
    assert _flow(True).float().head_edges.dtype == torch.float64


def test_all_discrete_and_bad_heads() -> None:
    flow = _flow(features=3, heads=HEADS[1:2] + [[0, HEADS[0][1]], [2, HEADS[2][1]]])
    assert flow.n_cont == 0
    x = flow.sample(100, generator=torch.Generator().manual_seed(0))
    z, ladj = flow.transform(x)
    torch.testing.assert_close(flow.log_prob(x), _std_normal_log_prob(z) + ladj)
    # A DP step with no continuous feature: the splines' output layer is never called.
    step = DPSGDStep(flow, max_grad_norm=1.0, noise_multiplier=1.0, expected_batch_size=100,
                     generator=torch.Generator().manual_seed(0))
    with step.record():
        losses = -flow(x)
    step.step(losses)
    assert flow.head_output.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="distinct"):
        SharedConditionerFlow(3, discrete=[[1, [0, 0.5, 1]], [1, [0, 0.5, 1]]])
    with pytest.raises(ValueError, match="distinct"):
        SharedConditionerFlow(3, discrete=[[3, [0, 0.5, 1]]])
    with pytest.raises(ValueError, match="increase strictly"):
        SharedConditionerFlow(3, discrete=[[0, [0, 0.5, 0.5, 1]]])
    with pytest.raises(ValueError, match="at least two cells"):
        SharedConditionerFlow(3, discrete=[[0, [0, 1]]])


def test_grouped_heads_read_only_the_cells_before_their_group() -> None:
    """With 2 groups of the 3 heads ([0, 1], [2]) and no lookup table, head 1's logits do
    not depend on head 0's cell (same group), head 2's do; the same from the module path
    and the fast path."""
    flow = _flow(False, head_groups=2)
    assert flow.head_group == [0, 0, 1] and flow.group_start == [0, 2]
    x = torch.zeros(3, 5)
    x[:, 3] = torch.special.ndtri(torch.tensor([0.1, 0.3, 0.8]))  # head 0's three cells
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            _, _, log_heads, cells = flow._heads_forward(x[:, [3, 1, 0]], need_z=False)
            fast = None if grad else flow._layers(x.dtype)
            one, two = (flow._head_logits(cells, j, fast) for j in (1, 2))
        assert torch.allclose(one, one[:1].expand_as(one), atol=1e-12)
        assert (two - two[:1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="head_groups"):
        _flow(False, head_groups=4)


def test_recentering_gives_the_heads_their_released_masses_and_keeps_the_flow_exact() -> None:
    """A flow away from its start (random weights, copula base): recenter_heads brings each
    head's marginal, counted on a fresh draw of rows, to its released masses (the cells'
    widths); the log-density still matches the autograd Jacobian, on both paths."""
    flow = _flow(True)
    a = torch.randn(5, 5, generator=torch.Generator().manual_seed(2))
    cov = a @ a.T + 5 * torch.eye(5)
    flow.set_base_correlation(cov / cov.diagonal().sqrt().outer(cov.diagonal().sqrt()))

    def worst_gap() -> float:
        with torch.no_grad():
            x = flow.sample(200_000, generator=torch.Generator().manual_seed(9))
        gaps = []
        for index, edges in flow.config["discrete"]:
            cells = np.clip(np.searchsorted(edges, torch.special.ndtr(x[:, index]).numpy(),
                                            side="right") - 1, 0, len(edges) - 2)
            share = np.bincount(cells, minlength=len(edges) - 1) / len(x)
            gaps.append(0.5 * np.abs(share - np.diff(edges)).sum())
        return max(gaps)

    before = worst_gap()
    trace = flow.recenter_heads(generator=torch.Generator().manual_seed(0))
    after = worst_gap()
    assert before > 0.05 and after < 0.01, (before, after)
    assert trace[0] > 0.05 and trace[-1] < trace[0] / 3  # the gap before each round
    assert bool(flow.head_bias.any())
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(3))
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda r: flow.transform(r[None])[0][0], row)
        expected = _std_normal_log_prob(flow.transform(row[None])[0][0]) + torch.linalg.slogdet(
            jac)[1]
        torch.testing.assert_close(flow.log_prob(row[None])[0], expected, atol=1e-9, rtol=1e-9)
        with torch.no_grad():
            torch.testing.assert_close(flow.log_prob(row[None])[0], expected, atol=1e-9,
                                       rtol=1e-9)


def _log_mass_reference(lo: float, hi: float) -> float:
    """``log(Phi(hi) - Phi(lo))`` with 50 digits (mpmath)."""
    import mpmath

    mpmath.mp.dps = 50
    mass = mpmath.ncdf(hi) - mpmath.ncdf(lo)
    return float(mpmath.log(mass)) if mass > 0 else -math.inf


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cell_major_log_masses_match_fifty_digits(dtype) -> None:
    """The sampling paths' cell masses (one erfc per inner edge, the cell across 0 told by
    the edges' signs) against mpmath, for cells in both tails (where ``Phi(hi) - Phi(lo)``
    in floats cancels), across 0, with an edge at 0 exactly, and far out; the layout of the
    module paths (_log_cell_mass) against the same reference."""
    from skdpflow.flows.model import _SQRT_HALF, _log_cell_mass, _log_cell_mass_cell_major

    columns = [[-30.0, -9.0, -8.5, -2.0, 0.0, 0.5, 7.0, 7.5, 12.0],
               [-1.0, -0.5, -0.25, 0.0, 1e-3, 0.3, 2.0, 6.0, 40.0],
               [-40.0, -12.0, -6.0, -5.9, -3.0, -1e-3, 1e-3, 3.0, 9.0]]
    inner = torch.tensor(columns, dtype=torch.float64).T  # (edges - 2, B): increasing
    expected = torch.tensor([[_log_mass_reference(lo, hi)
                              for lo, hi in zip([-math.inf, *col], [*col, math.inf])]
                             for col in columns], dtype=torch.float64).T  # (cells, B)
    got = _log_cell_mass_cell_major((inner * _SQRT_HALF).to(dtype)).double()
    edges = torch.cat((torch.full((1, 3), -math.inf, dtype=torch.float64), inner,
                       torch.full((1, 3), math.inf, dtype=torch.float64)))
    module = _log_cell_mass(edges.to(dtype).T).T.double()
    # Where the reference fits the dtype (masses above its smallest normal number).
    fits = expected > math.log(torch.finfo(dtype).tiny) + 1.0
    assert bool(fits.any()) and bool((~fits).any())
    rel = 1e-12 if dtype == torch.float64 else 2e-5
    for value in (got, module):
        assert torch.isfinite(value[fits]).all()
        err = (value[fits] - expected[fits]).abs()
        assert float(err.max()) < rel * 100, float(err.max())  # log: absolute = relative
        # Below them: at most tiny ** 0.85 (1e-262 in float64, 7e-33 in float32), never
        # more (the sampling path caps the tails where erfc is still a normal number, the
        # module path's floor is 1e-300).
        assert bool((value[~fits] < 0.85 * math.log(torch.finfo(dtype).tiny)).all())


@pytest.mark.parametrize("limit", [3, 1 << 20], ids=["two_tables", "all_tables"])
@pytest.mark.parametrize("groups", [0, 1])
def test_head_tables_give_the_cells_and_values_of_the_heads_computed_row_by_row(
        limit: int, groups: int, monkeypatch) -> None:
    """The first heads read their probabilities from per-combination tables when sampling:
    against the slow twin (no tables, every head's softmax computed for each row), the same
    cells and values, and the same probability sums (recenter_heads); the tables follow the
    parameters when they change, and are not pickled."""
    import copy
    import pickle

    from skdpflow.flows import model as flow_module

    flow = _flow(True, head_groups=groups)
    a = torch.randn(5, 5, generator=torch.Generator().manual_seed(2))
    cov = a @ a.T + 5 * torch.eye(5)
    flow.set_base_correlation(cov / cov.diagonal().sqrt().outer(cov.diagonal().sqrt()))
    flow.requires_grad_(False)
    z = torch.randn(5000, 3, generator=torch.Generator().manual_seed(8))

    def heads(of: SharedConditionerFlow, tables: bool) -> tuple[Tensor, Tensor, list]:
        monkeypatch.setattr(flow_module, "HEAD_TABLE_COMBINATIONS", limit if tables else 0)
        sums: list = []
        x, cells = of._heads_inverse(z, prob_sums=sums)
        return x, torch.stack(cells.units, 1), sums

    monkeypatch.setattr(flow_module, "HEAD_TABLE_COMBINATIONS", limit)
    assert len(flow._head_tables(torch.float64)) == (2 if limit == 3 else 3)
    before = None
    for _ in range(2):  # the flow as built, then with a head's bias moved (the same cache)
        x_slow, cells_slow, sums_slow = heads(copy.deepcopy(flow), tables=False)
        x_fast, cells_fast, sums_fast = heads(flow, tables=True)
        assert torch.equal(cells_fast, cells_slow)
        torch.testing.assert_close(x_fast, x_slow, atol=1e-12, rtol=0)
        for fast, slow in zip(sums_fast, sums_slow):
            torch.testing.assert_close(fast, slow, atol=1e-9, rtol=0)
        if before is not None:  # the second head moved with its bias
            assert bool((x_fast[:, 1] != before[:, 1]).any())
        before = x_fast
        with torch.no_grad():
            flow.head_bias[3:5] += torch.tensor([1.5, -1.5])  # the second head's cells
    assert "_tables" in flow.__dict__
    assert "_tables" not in copy.deepcopy(flow).__dict__
    assert "_tables" not in pickle.loads(pickle.dumps(flow)).__dict__
