"""Conditional coupling flow whose stages share one transformation network.

Every coupling stage asks the same conditioner MLP for its spline parameters, telling it
which stage it is through the coupling mask and a fixed sinusoidal stage code. The first
linear layer's weights on that code act as a learned stage embedding, so the number of
parameters does not grow with the number of stages: fewer parameters means less noise
per parameter under DP-SGD.

Before the stages, a fixed (non-trainable) linear map whitens the input, ``w = L^{-1} x``
with ``L`` the Cholesky factor of a correlation matrix ``R`` (a buffer, the identity unless
:meth:`SharedConditionerFlow.set_base_correlation` sets it). With every stage at the
identity the model is then the Gaussian copula ``N(0, R)``; training learns what ``R``
does not capture. The map holds no parameter, so DP-SGD's per-row clipping never sees it.

After training, :meth:`SharedConditionerFlow.calibrate` can add a fixed, per-feature monotone
map ``g`` on the data side (piecewise linear in ``u = Phi(y)`` between knots): ``x = g(y)``
with ``y`` the flow's output. ``g`` is read from the flow's own samples, so it is
post-processing of the trained model, and it gives each feature's bins the wanted masses
(up to Monte Carlo error). The log-density stays exact: ``log p(x) = log p_flow(g^{-1}(x)) +
sum_j log (g_j^{-1})'(x_j)``.

References
----------
Neural Spline Flows (Durkan et al., 2019), arXiv:1906.04032.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.special import ndtr, ndtri
from torch import Tensor, nn

from skdpflow.flows.splines import cumulative_sum, rational_quadratic_spline_knot_major

__all__ = ["SharedConditionerFlow"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_HALF = math.sqrt(0.5)
_LOG_2 = math.log(2.0)

# Rows per block of the no-autograd fast path (sample, and transform / inverse under no_grad).
_FAST_BLOCK_ROWS = 8192
# A head's u is kept in [_U_EPS, 1 - _U_EPS] so that Phi^-1(u) is finite (as the
# encoder's dequantisation keeps it).
_U_EPS = 1e-7
# The first discrete heads with at most this many combinations of the cells before them, and
# at most HEAD_TABLE_ENTRIES cells times combinations, read their probabilities from tables
# when sampling (SharedConditionerFlow._head_tables): on Adult's shape 10 of 13 heads (the
# tenth: 15 cells, 60,480 combinations; tables of 3.6 MB, built in 50-80 ms once per model).
HEAD_TABLE_COMBINATIONS = 65_536
HEAD_TABLE_ENTRIES = 1 << 20
# Learning-rate factor of the heads' lookup table (see learning_rate_scales).
# On Adult at epsilon 1 (seed 0), 10 and 30 gave education-num = f(education) in 84% and
# 88% of the rows (2% without the table) and female husbands 1.0% and 0.3%.
LOOKUP_LEARNING_RATE_SCALE = 20.0


def _coupling_masks(features: int, n_stages: int, seed: int) -> Tensor:
    """Coupling masks, 1 where a feature conditions the stage and is left unchanged.

    Feature ``i`` gets a code of ``n_stages`` bits with ``n_stages // 2`` ones (it conditions
    the stages of its ones and is transformed by the others), codes taken in complementary
    pairs so that each stage conditions on half the features. Two features with different
    codes of the same weight each condition the other in some stage: with ``features <=
    C(n_stages, n_stages // 2)`` (20 for 6 stages) every pair of features is coupled both
    ways. With more features the codes repeat, as evenly as they can; features sharing a
    code are never coupled directly. (Random halves leave a given pair uncoupled with
    probability ``2**-(n_stages / 2)``: a pair that is one-to-one in the data, like a
    category and its code, then cannot be learned.) The masks depend on the shape alone;
    ``seed`` is unused and kept for the signature.

    Returns
    -------
    Tensor
        Float 0/1 masks, shape ``(n_stages, features)``.
    """
    masks = torch.zeros(n_stages, features)
    del seed
    if features == 1 or n_stages < 2:
        # Nothing to condition on (one feature), or one stage that transforms everything.
        return masks
    codes = _balanced_codes(n_stages)
    for i in range(features):
        masks[:, i] = torch.tensor(codes[i % len(codes)], dtype=masks.dtype)
    return masks


def _balanced_codes(n_stages: int) -> list[tuple[int, ...]]:
    """All codes of ``n_stages`` bits with ``n_stages // 2`` ones, each followed by its
    complement when that has the same weight (even ``n_stages``)."""
    weight = n_stages // 2
    codes = [tuple(int(k in ones) for k in range(n_stages))
             for ones in itertools.combinations(range(n_stages), weight)]
    if n_stages % 2:
        return codes
    out, seen = [], set()
    for code in codes:
        if code not in seen:
            twin = tuple(1 - b for b in code)
            out += [code, twin]
            seen |= {code, twin}
    return out


def _stage_codes(n_stages: int, stage_features: int) -> Tensor:
    """Fixed sinusoidal code of each stage index.

    ``code[k] = (sin(pi f k / K), cos(pi f k / K))`` for ``f = 1 .. stage_features / 2``;
    the ``f = 1`` cosine alone already separates all ``k`` in ``[0, K)``.

    Returns
    -------
    Tensor
        Shape ``(n_stages, stage_features)``.
    """
    freqs = torch.arange(1, stage_features // 2 + 1, dtype=torch.float64)
    phase = math.pi * freqs[None, :] * torch.arange(n_stages, dtype=torch.float64)[:, None]
    phase = phase / n_stages
    return torch.cat((phase.sin(), phase.cos()), dim=-1).to(torch.get_default_dtype())


def _build_conditioner(
    in_features: int, hidden_size: int, n_hidden_layers: int, out_features: int
) -> nn.Sequential:
    """Plain MLP of ``nn.Linear`` and ``nn.GELU`` layers with a zero output layer.

    Only parameter-holding ``nn.Linear`` modules and no buffers, as per-example gradient
    code (Opacus) requires.
    """
    layers: list[nn.Module] = [nn.Linear(in_features, hidden_size), nn.GELU()]
    for _ in range(n_hidden_layers - 1):
        layers += [nn.Linear(hidden_size, hidden_size), nn.GELU()]
    with warnings.catch_warnings():  # no output at all: a table of discrete heads only
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        output = nn.Linear(hidden_size, out_features)
    # Zero output: every spline starts with all-zero parameters, i.e. the identity.
    nn.init.zeros_(output.weight)
    nn.init.zeros_(output.bias)
    layers.append(output)
    return nn.Sequential(*layers)


class SharedConditionerFlow(nn.Module):
    """Spline coupling flow with one conditioner network shared by all stages.

    Stage ``k`` keeps the features where ``masks[k] == 1`` and maps every other feature
    through a monotonic rational-quadratic spline whose parameters come from
    ``conditioner(concat(x * masks[k], masks[k], codes[k]))``. The stages act on the
    whitened input ``w = L^{-1} x`` (``L = chol(R)``, a fixed buffer, ``R = I`` by
    default) and map it to the standard normal ``N(0, I)``, so the untrained flow is
    ``N(0, R)``:

        log p(x) = log N(f(L^{-1} x); 0, I) + log |det df/dw| - sum_j log L_jj

    Parameters
    ----------
    features : int
        Number of data dimensions.
    n_stages : int, default=6
        Number of coupling stages ``K``; does not change the parameter count.
    hidden_size : int, default=64
        Width of the conditioner's hidden layers.
    n_hidden_layers : int, default=2
        Number of hidden layers of the conditioner (at least 1).
    n_bins : int, default=8
        Number of spline bins per feature.
    bound : float, default=3.0
        The splines act on ``[-bound, bound]`` and are the identity outside.
    stage_features : int, default=8
        Size of the fixed sinusoidal stage code (positive and even).
    seed : int, default=0
        Seeds the initial conditioner weights (the coupling masks depend on the shape
        alone), so equal arguments build equal models without touching the global random
        state.
    calibration_knots : int, default=0
        Knots of the marginal calibration :meth:`calibrate` sets (0: none).
    discrete : list of [int, list of float] or None, default=None
        The discrete heads, in their order: a feature's index and its cells' edges in
        ``u = Phi(x)`` (0 to 1). Those features get softmax heads (docs/design.md,
        "Discrete heads"); the others go through the coupling stages.
    head_lookup : bool, default=False
        Add the lookup table from the earlier heads' cells to each head's logits.
    head_groups : int, default=0
        The heads' conditioner calls per row, over groups of consecutive heads, each reading
        the cells of the groups before it (0: one per head).

    Attributes
    ----------
    config : dict
        The constructor arguments; ``SharedConditionerFlow(**config)`` rebuilds the model.
    conditioner : torch.nn.Sequential
        The shared MLP; it holds every parameter and no buffers.
    masks : Tensor
        Buffer of float 0/1 coupling masks, shape ``(n_stages, features)``.
    stage_codes : Tensor
        Buffer of fixed stage codes, shape ``(n_stages, stage_features)``.
    base_cholesky : Tensor
        Buffer ``L``, lower triangular with positive diagonal, shape
        ``(features, features)``: the identity until :meth:`set_base_correlation`.
    calibration_from, calibration_to : Tensor
        Buffers of the marginal calibration's knots (only when ``calibration_knots > 0``),
        shape ``(calibration_knots, features)``; NaN until :meth:`calibrate` sets them,
        and the calibration is the identity while they are NaN.

    References
    ----------
    Neural Spline Flows (Durkan et al., 2019), arXiv:1906.04032.

    Examples
    --------
    >>> flow = SharedConditionerFlow(features=3, n_stages=4)
    >>> flow.log_prob(torch.zeros(5, 3)).shape
    torch.Size([5])
    """

    def __init__(
        self,
        features: int,
        n_stages: int = 6,
        hidden_size: int = 64,
        n_hidden_layers: int = 2,
        n_bins: int = 8,
        bound: float = 3.0,
        stage_features: int = 8,
        seed: int = 0,
        calibration_knots: int = 0,
        discrete: list | None = None,
        head_lookup: bool = False,
        head_groups: int = 0,
    ) -> None:
        super().__init__()
        _check_positive(features=features, n_stages=n_stages, hidden_size=hidden_size)
        _check_positive(n_hidden_layers=n_hidden_layers, n_bins=n_bins, bound=bound)
        if stage_features <= 0 or stage_features % 2:
            raise ValueError(f"'stage_features' must be positive and even, got {stage_features}")
        self.config: dict[str, Any] = {
            "features": features,
            "n_stages": n_stages,
            "hidden_size": hidden_size,
            "n_hidden_layers": n_hidden_layers,
            "n_bins": n_bins,
            "bound": bound,
            "stage_features": stage_features,
            "seed": seed,
            "calibration_knots": calibration_knots,
        }
        self.features = features
        self.n_stages = n_stages
        self.n_bins = n_bins
        self.bound = float(bound)
        heads = _check_discrete(discrete, features)
        if heads:
            self.config["discrete"] = [[index, list(edges)] for index, edges in heads]
            if head_lookup:
                self.config["head_lookup"] = True
            if head_groups:
                self.config["head_groups"] = head_groups
        head_dims = [index for index, _ in heads]
        cont = [i for i in range(features) if i not in set(head_dims)]
        self.n_cont = len(cont)
        self.n_heads = len(heads)
        # Cells of each head, and where its units start among the one-hot inputs / logits.
        self.head_cells = [len(edges) - 1 for _, edges in heads]
        self.head_offsets = [0, *itertools.accumulate(self.head_cells)]
        n_cells = self.head_offsets[-1]
        self.register_buffer("cont_index", torch.tensor(cont, dtype=torch.long))
        self.register_buffer("head_index", torch.tensor(head_dims, dtype=torch.long))
        edges = [torch.tensor(e, dtype=torch.float64) for _, e in heads]
        self.register_buffer("head_edges", torch.cat(edges) if edges
                             else torch.zeros(0, dtype=torch.float64))
        widths = torch.cat([e.diff() for e in edges]) if edges else torch.zeros(0)
        self.register_buffer("head_log_widths", widths.clamp_min(1e-300).log().to(
            torch.get_default_dtype()))
        # The copula's conditionals (see set_base_correlation): the mean of head j's latent
        # value is onehot @ head_mean_coef[j], its sd head_scale[j]; the continuous
        # features' mean is onehot @ cont_mean_coef.T. Zero and one: independent heads.
        self.register_buffer("head_mean_coef", torch.zeros(self.n_heads, n_cells))
        self.register_buffer("head_scale", torch.ones(self.n_heads))
        # A logit shift per cell, set after training by recenter_heads (zero until then).
        self.register_buffer("head_bias", torch.zeros(n_cells))
        self.register_buffer("cont_mean_coef", torch.zeros(self.n_cont, n_cells))
        # The heads' conditioner calls: one per group of consecutive heads (one per head by
        # default), each reading the one-hot units of the heads before its group, with a
        # stage code of its own. (The lookup table reads every earlier head.)
        if head_groups < 0 or (heads and head_groups > len(heads)):
            raise ValueError(f"'head_groups' must be between 0 and the number of heads "
                             f"({len(heads)}), got {head_groups}")
        sizes = [len(g) for g in np.array_split(np.arange(self.n_heads),
                                                head_groups or self.n_heads)] if heads else []
        self.n_groups = len(sizes)
        self.head_group = [g for g, size in enumerate(sizes) for _ in range(size)]
        self.group_start = [0, *itertools.accumulate(sizes)][: self.n_groups]
        visible = torch.zeros(self.n_groups, n_cells + self.n_heads)
        for g, start in enumerate(self.group_start):
            visible[g, : self.head_offsets[start]] = 1.0
            visible[g, n_cells : n_cells + start] = 1.0
        self.register_buffer("head_visible", visible)

        self.register_buffer("masks", _coupling_masks(self.n_cont, n_stages, seed))
        self.register_buffer("stage_codes", _stage_codes(n_stages + self.n_groups,
                                                         stage_features))
        self.register_buffer("base_cholesky", torch.eye(self.n_cont))
        if calibration_knots < 0 or calibration_knots == 1:
            raise ValueError(f"'calibration_knots' must be 0 or at least 2, got "
                             f"{calibration_knots}")
        if calibration_knots:
            nan = torch.full((calibration_knots, features), math.nan, dtype=torch.float64)
            self.register_buffer("calibration_from", nan)
            self.register_buffer("calibration_to", nan.clone())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conditioner = _build_conditioner(
                2 * self.n_cont + n_cells + self.n_heads + stage_features,
                hidden_size,
                n_hidden_layers,
                self.n_cont * (3 * n_bins - 1),
            )
            # The heads' output layer: on the conditioner's last hidden layer, as the
            # splines' output layer is (a head's call computes only logits, a stage's only
            # spline parameters). Zero at the start, as that one.
            self.head_output = None
            if heads:
                self.head_output = nn.Linear(hidden_size, n_cells)
                nn.init.zeros_(self.head_output.weight)
                nn.init.zeros_(self.head_output.bias)
            # A lookup table from the cells of the heads before to a head's logits (one
            # weight per pair of cells, zero at the start): a cell that determines another
            # is one weight away, where the conditioner needs all its layers to learn it.
            # One layer per head (but the first, which has no head before it), each called
            # once per row: the cheap per-row norm rule, and only the pairs a head may read.
            self.lookup = None
            if heads and head_lookup:
                self.lookup = nn.ModuleList(
                    nn.Linear(self.head_offsets[j], self.head_cells[j], bias=False)
                    for j in range(1, self.n_heads))
                for layer in self.lookup:
                    nn.init.zeros_(layer.weight)

    def learning_rate_scales(self) -> list[float]:
        """A learning-rate factor per parameter, in :meth:`parameters` order: the lookup
        table's entries learn ``LOOKUP_LEARNING_RATE_SCALE`` times faster (each is one
        pair's logit, moved on its own; the optimiser sees only noisy gradients, so this is
        post-processing), the conditioner's at the base rate."""
        lookup = set() if self.lookup is None else {id(p) for p in self.lookup.parameters()}
        return [LOOKUP_LEARNING_RATE_SCALE if id(p) in lookup else 1.0
                for p in self.parameters()]

    @torch.no_grad()
    def set_base_correlation(self, correlation: Tensor) -> None:
        """Make ``N(0, correlation)`` the distribution of the untrained flow.

        With discrete heads, the latent values are ordered heads first (in their order),
        then the continuous features, and ``N(0, correlation)`` is followed through its
        conditionals: head ``j`` starts at the law of its latent value given the heads
        before it, each read at its cell's midpoint ``Phi^-1((lo + hi) / 2)`` (the values the
        copula's correlation was estimated on), ``N(mu_j, s_j^2)``, so its cells start at
        ``Phi((b - mu_j) / s_j) - Phi((a - mu_j) / s_j)``; the continuous features start at
        their Gaussian conditional given all heads (mean shift and conditional Cholesky
        factor). With ``correlation = I`` this is the independent start.

        Parameters
        ----------
        correlation : Tensor
            Symmetric positive definite, shape ``(features, features)``. The Cholesky factor
            of the continuous features' (conditional) block is stored in the
            ``base_cholesky`` buffer, the heads' conditionals in ``head_mean_coef``,
            ``head_scale`` and ``cont_mean_coef`` (all saved with the weights).
        """
        correlation = torch.as_tensor(correlation, dtype=torch.float64)
        shape = (self.features, self.features)
        if correlation.shape != shape:
            raise ValueError(f"correlation must have shape {shape}, got "
                             f"{tuple(correlation.shape)}")
        order = torch.cat((self.head_index.cpu(), self.cont_index.cpu()))
        cholesky, info = torch.linalg.cholesky_ex(correlation[order][:, order])
        if info != 0:
            raise ValueError("correlation must be symmetric positive definite")
        m = self.n_heads
        self.base_cholesky.copy_(cholesky[m:, m:].to(self.base_cholesky))
        if not m:
            return
        # Regression coefficients on the earlier heads: rows of L[j, :j] L[:j, :j]^-1.
        l_heads = cholesky[:m, :m]
        eye = torch.eye(m, dtype=torch.float64)
        inverse = torch.linalg.solve_triangular(l_heads, eye, upper=False)
        beta = torch.tril(l_heads, diagonal=-1) @ inverse  # (m, m), strictly lower
        gamma = cholesky[m:, :m] @ inverse  # (n_cont, m)
        midpoints = torch.cat([torch.special.ndtri(0.5 * (e[:-1] + e[1:]))
                               for e in (self._edges(j) for j in range(m))])
        head_of_cell = torch.repeat_interleave(torch.arange(m), torch.tensor(self.head_cells))
        self.head_mean_coef.copy_((beta[:, head_of_cell] * midpoints).to(self.head_mean_coef))
        self.head_scale.copy_(l_heads.diagonal().to(self.head_scale))
        self.cont_mean_coef.copy_((gamma[:, head_of_cell] * midpoints).to(
            self.cont_mean_coef))

    @torch.no_grad()
    def match_continuous_variances(self, n_samples: int = 65_536,
                                   generator: torch.Generator | None = None) -> Tensor:
        """Widen the continuous features' conditional laws so that each has variance 1 again.

        The start of :meth:`set_base_correlation` reads the heads at their cells' midpoints,
        whose variance is below a standard normal's (a coarse cell hides where its latent
        value lies), with regression coefficients and a conditional covariance from the
        latent correlation: a continuous feature's marginal variance comes out as
        ``Var(shift) + (L L^T)_cc < 1``, its values squeezed toward the middle, the more so
        the stronger its link with a head. Each row of ``base_cholesky`` is scaled so that
        ``(L L^T)_cc = 1 - Var(shift_c)`` (at least ``1e-2``), with ``Var(shift_c)`` read
        from ``n_samples`` rows of the heads drawn from the model: post-processing, exact
        maps kept. Meant for the untrained flow (the copula-only model); returns the
        factors (ones when nothing is to do).
        """
        factors = torch.ones(self.n_cont, dtype=torch.float64)
        if not self.heads_shift_continuous:
            return factors
        dtype = next(self.conditioner.parameters()).dtype
        z = torch.randn(n_samples, self.n_heads, generator=generator, dtype=dtype,
                        device=self.head_bias.device)
        _, cells = self._heads_inverse(z)
        shift = self._continuous_shift(cells, torch.float64)
        cholesky = self.base_cholesky.double()
        conditional = cholesky.square().sum(1)
        wanted = (1.0 - shift.var(0).cpu()).clamp_min(1e-2)
        factors = (wanted / conditional.cpu()).sqrt()
        self.base_cholesky.copy_((cholesky * factors[:, None].to(cholesky.device)).to(
            self.base_cholesky))
        return factors

    def _continuous_shift(self, cells: _Cells, dtype: torch.dtype) -> Tensor:
        """The continuous features' start mean given the heads' cells, ``(B, n_cont)``: a sum
        of one coefficient row per head."""
        return cells.sum_of(self.cont_mean_coef.to(dtype).T)

    @property
    def heads_shift_continuous(self) -> bool:
        """Whether the continuous features' start depends on the heads' cells (a base
        correlation links them)."""
        return bool(self.n_heads and self.n_cont and self.cont_mean_coef.any())

    def _independent_heads(self) -> bool:
        return not (bool(self.head_mean_coef.any()) or bool((self.head_scale != 1).any()))

    def _head_offset(self, cells: _Cells, j: int) -> Tensor:
        """Head ``j``'s fixed logit offset: the log-masses of its cells at the start, given the
        cells before it (``(B, cells)``), or the released masses (``(cells,)``) when the
        heads start independent."""
        lo, hi = self.head_offsets[j], self.head_offsets[j + 1]
        bias = self.head_bias[lo:hi].to(cells.dtype)
        if self._independent_heads():
            return self.head_log_widths[lo:hi].to(cells.dtype) + bias
        # In the cells' precision: float32 when sampling (erfc three times as fast; the
        # masses keep about 6 digits, as the float32 softmax that picks the cells),
        # float64 when scoring in float64. Laid out cell-major, (cells, B) in memory: the
        # heads' softmax then runs along rows of B values (returned as its (B, cells)
        # transposed view).
        work = torch.float64 if cells.dtype == torch.float64 else torch.float32
        mean = cells.sum_of(self.head_mean_coef[j].to(work))
        c = _SQRT_HALF / self.head_scale[j].to(work)
        cuts = torch.special.ndtri(self._edges(j)[1:-1]).to(work)  # the inner edges
        t = cuts[:, None] * c - (mean * c)[None, :]  # (edges - 2, B)
        log_mass = _log_cell_mass_cell_major(t)  # (cells, B)
        return log_mass.to(cells.dtype).add_(bias[:, None]).T

    def _every_head_offset(self, onehot: Tensor) -> Tensor:
        """:meth:`_head_offset` of every head at once, ``(B, n_cells)`` (or ``(n_cells,)``),
        from the one-hot cells of all heads (each head's offset reads only the heads before
        it): one pass over the cell edges instead of one per head."""
        bias = self.head_bias.to(onehot.dtype)
        if self._independent_heads():
            return self.head_log_widths.to(onehot.dtype) + bias
        m = self.n_heads
        sizes = torch.tensor(self.head_cells, device=onehot.device)
        edge_head = torch.repeat_interleave(torch.arange(m, device=onehot.device), sizes + 1)
        mean = onehot.double() @ self.head_mean_coef.double().T  # (B, m)
        t = ((torch.special.ndtri(self.head_edges) - mean[:, edge_head])
             / self.head_scale.double()[edge_head])  # (B, n_cells + m): -inf ... inf per head
        lower = (torch.arange(self.head_offsets[-1], device=onehot.device)
                 + torch.repeat_interleave(torch.arange(m, device=onehot.device), sizes))
        return _log_cell_mass(t, lower).to(onehot.dtype) + bias

    def _whiten(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``w = L^{-1} x`` per row and its log-determinant ``-sum log L_jj`` (a scalar)."""
        chol = self.base_cholesky.to(x.dtype)
        # Rows: x = L w  <=>  x_row = w_row L^T (a triangular solve from the right).
        w = torch.linalg.solve_triangular(chol.T, x, upper=True, left=False)
        return w, -chol.diagonal().log().sum()

    def _color(self, w: Tensor) -> Tensor:
        """``x = L w`` per row: the inverse of :meth:`_whiten`."""
        return w @ self.base_cholesky.to(w.dtype).T

    @property
    def calibrated(self) -> bool:
        """Whether :meth:`calibrate` has set the marginal calibration."""
        return self.config["calibration_knots"] > 0 and not bool(
            torch.isnan(self.calibration_from).any())

    @torch.no_grad()
    def calibrate(self, n_samples: int = 65_536, generator: torch.Generator | None = None,
                  edges: list[Any] | None = None, rows: Tensor | None = None) -> Tensor:
        """Set ``g`` so that each feature's bins get the wanted masses (post-processing).

        Draws ``n_samples`` rows from the flow as it is. For a feature with bin edges
        ``0 = c_0 < c_1 < ... < c_K = 1`` in ``u = Phi(y)``, ``g`` is, in ``u``, the piecewise
        linear map sending the flow's quantile ``F^-1(c_k)`` to ``c_k``: each bin
        ``[c_k, c_k+1]`` gets mass ``c_k+1 - c_k`` (up to Monte Carlo error), and inside a bin
        the flow's distribution of ``u`` is kept, affinely rescaled. ``g`` is smooth between
        edges (as smooth as ``Phi``), so the log-density keeps the flow's smoothness.

        Parameters
        ----------
        n_samples : int, default=65536
            Rows drawn to read the marginals (Monte Carlo error ``~ n_samples^-1/2``).
        generator : torch.Generator or None, default=None
        edges : list of (array-like or None), or None, default=None
            One increasing array of bin edges in ``[0, 1]`` per feature, from 0 to 1; a
            None entry leaves its feature as it is (``g`` the identity there). None: for
            every feature, ``calibration_knots - 2`` equal bins (a standard normal marginal
            at that resolution). Edges within 10 rows' mass of 0 or 1 are dropped: the rows
            cannot place them.
        rows : Tensor or None, default=None
            Rows already drawn from this flow without calibration (shape ``(n, features)``),
            used instead of drawing ``n_samples`` new ones.

        Returns
        -------
        Tensor
            The rows read, mapped through the new ``g`` (float64): rows of the calibrated
            flow, for further post-processing.
        """
        knots = self.config["calibration_knots"]
        if not knots:
            raise ValueError("this flow was built with calibration_knots=0")
        if edges is not None and len(edges) != self.features:
            raise ValueError(f"edges must have one array per feature ({self.features}), got "
                             f"{len(edges)}")
        checked = [None if edges is None or edges[j] is None else self._check_edges(edges[j], j)
                   for j in range(self.features)]
        self.calibration_from.fill_(math.nan)  # sample the uncalibrated flow
        if rows is None:
            rows = self.sample(n_samples, generator=generator)
        rows = rows.double()
        n_samples = rows.shape[0]
        if n_samples < knots:
            raise ValueError(f"n_samples ({n_samples}) must be at least calibration_knots "
                             f"({knots})")
        y = rows.sort(dim=0).values.numpy()
        all_levels = (np.arange(n_samples) + 0.5) / n_samples
        knots_from = np.empty((knots, self.features))
        knots_to = np.empty((knots, self.features))
        for j in range(self.features):
            c = checked[j]
            if edges is None:
                c = np.linspace(0.0, 1.0, knots)
            if c is None:  # left as it is: equal knots are the identity
                knots_from[:, j] = knots_to[:, j] = ndtri((np.arange(knots) + 0.5) / knots)
                continue
            inner = c[1:-1]
            inner = np.unique(inner[np.minimum(inner, 1.0 - inner) * n_samples >= 10])
            if not len(inner):
                knots_from[:, j] = knots_to[:, j] = ndtri((np.arange(knots) + 0.5) / knots)
                continue
            if len(inner) > knots:
                raise ValueError(f"edges[{j}] has {len(inner)} inner edges; the flow was built "
                                 f"with calibration_knots={knots}")
            source = np.interp(inner, all_levels, y[:, j])  # Q(c_k), in y
            # Spare knots on the first bin's line (u -> u c_1 / F(Q(c_1))): the same map.
            spare = knots - len(inner)
            scale = 0.5 ** np.arange(spare, 0, -1)
            u_from = np.concatenate([ndtr(source[0]) * scale, ndtr(source)])
            u_to = np.concatenate([inner[0] * scale, inner])
            knots_from[:, j] = np.concatenate([ndtri(u_from[:spare]), source])
            knots_to[:, j] = ndtri(u_to)
        # Strictly increasing (ties: float32 samples, near-atoms, empty bins): a ramp of at
        # most ~1e-6 relative, which the float64 buffers keep (see _apply).
        ramp = np.arange(knots, dtype=np.float64)[:, None]
        for values in (knots_from, knots_to):
            values += 1e-9 * (1.0 + np.abs(values).max(axis=0)) * ramp
        self.calibration_to.copy_(torch.from_numpy(knots_to))
        self.calibration_from.copy_(torch.from_numpy(knots_from))
        return self._calibration(rows, inverse=False)[0]

    @staticmethod
    def _check_edges(edges: Any, j: int) -> np.ndarray:
        c = np.asarray(edges, dtype=np.float64)
        if c.ndim != 1 or len(c) < 2 or np.any(np.diff(c) < 0) or c[0] != 0 or c[-1] != 1:
            raise ValueError(f"edges[{j}] must increase from 0 to 1")
        return c

    def _apply(self, fn: Any, recurse: bool = True) -> SharedConditionerFlow:
        """As :meth:`nn.Module._apply`, but the calibration knots and the heads' cell edges
        stay float64.

        ``.float()`` would otherwise round knots that float32 cannot tell apart onto each
        other; device moves still apply.
        """
        kept = {name: self._buffers[name]
                for name in ("calibration_from", "calibration_to", "head_edges")
                if name in self._buffers}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            self._buffers[name] = old.to(self._buffers[name].device)
        return self

    def _calibration(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """``g(x)`` (``inverse=False``) or ``g^{-1}(x)``, and ``log |d out / d x|`` per row.

        Piecewise linear in ``u = Phi(x)`` between the knots, through ``(0, 0)`` and
        ``(1, 1)``; the upper side is computed on ``1 - u = Phi(-x)`` so that both tails keep
        their precision. In float64 whatever the input's dtype.
        """
        moved = self.calibration_moved()
        if not bool(moved.all()):  # only the calibrated features: the others pass as they are
            idx = moved.nonzero().squeeze(1)
            if idx.numel() == 0:
                return x, x.new_zeros(x.shape[0])
            out, ladj = self._calibrate_features(
                x.index_select(1, idx), self.calibration_from.index_select(1, idx),
                self.calibration_to.index_select(1, idx), inverse)
            return x.index_copy(1, idx, out), ladj
        return self._calibrate_features(x, self.calibration_from, self.calibration_to, inverse)

    def calibration_moved(self) -> Tensor:
        """``(features,)`` booleans: the features the marginal calibration moves (``g`` not
        the identity)."""
        return (self.calibration_from != self.calibration_to).any(dim=0)

    @staticmethod
    def _calibrate_features(x: Tensor, knots_from: Tensor, knots_to: Tensor, inverse: bool
                            ) -> tuple[Tensor, Tensor]:
        """:meth:`_calibration` of the features whose knots ``(K, D)`` are given."""
        dtype = x.dtype
        x = x.double().T.contiguous()  # (D, B)
        src = knots_from.double().T.contiguous()  # (D, K), in y
        dst = knots_to.double().T.contiguous()
        if inverse:
            src, dst = dst, src
        same = (src == dst).all(dim=1, keepdim=True)  # features left as they are
        zero = src.new_zeros(src.shape[0], 1)
        # Knots in u with (0, 0) and (1, 1) added, and the same on the upper tail 1 - u.
        u_src = torch.cat((zero, _ndtr(src), zero + 1), dim=1)
        u_dst = torch.cat((zero, _ndtr(dst), zero + 1), dim=1)
        v_src = torch.cat((zero + 1, _ndtr(-src), zero), dim=1)
        v_dst = torch.cat((zero + 1, _ndtr(-dst), zero), dim=1)
        k = torch.searchsorted(src, x).clamp(max=src.shape[1])  # segment k: [knot k-1, knot k]
        k0, k1 = k, k + 1  # in the padded tables
        slope = ((u_dst.gather(1, k1) - u_dst.gather(1, k0))
                 / (u_src.gather(1, k1) - u_src.gather(1, k0)))
        lower = x <= 0
        u = _ndtr(x)
        v = _ndtr(-x)
        # Lower half from the segment's left end in u; upper half from its right end in 1 - u.
        u_out = u_dst.gather(1, k0) + slope * (u - u_src.gather(1, k0))
        v_out = v_dst.gather(1, k1) + slope * (v - v_src.gather(1, k1))
        # Each branch sees a harmless 1/2 where it is not taken (finite gradients).
        half = torch.full_like(u_out, 0.5)
        u_out = torch.where(lower & ~same, u_out, half).clamp_min(1e-300)
        v_out = torch.where(lower | same, half, v_out).clamp_min(1e-300)
        out = torch.where(lower, torch.special.ndtri(u_out), -torch.special.ndtri(v_out))
        out = torch.where(same, x, out)
        # d out / dx = phi(x) slope / phi(out)
        ladj = torch.where(same, 0.0, slope.log() + 0.5 * (out.square() - x.square()))
        return out.T.to(dtype), ladj.sum(dim=0).to(dtype)

    def _split(self, k: int) -> tuple[Tensor, Tensor]:
        """Indices, among the flow's (continuous) features, of those that condition stage
        ``k`` and of those it transforms."""
        keep = self.masks[k] != 0
        return keep.nonzero().squeeze(1), (~keep).nonzero().squeeze(1)

    def _param_rows(self, transformed: Tensor) -> Tensor:
        """Conditioner output units holding the spline parameters of ``transformed``.

        The spline units come first and are laid out feature-major, ``(n_cont, 3 n_bins -
        1)``; taking these rows of the transposed output, in this order, gives the
        knot-major layout ``(3 n_bins - 1, len(transformed) * B)`` that the spline's fast path
        takes.
        """
        n_params = 3 * self.n_bins - 1
        units = torch.arange(n_params, device=transformed.device)
        return (transformed[None, :] * n_params + units[:, None]).reshape(-1)

    def _spline(
        self, x_t: Tensor, params: Tensor, inverse: bool, need_ladj: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Splines of the transformed features ``x_t`` ``(D_t, B)`` from knot-major params."""
        n = self.n_bins
        params = params.view(3 * n - 1, -1)
        y, ladj = rational_quadratic_spline_knot_major(
            x_t.reshape(-1),
            params[:n],
            params[n : 2 * n],
            params[2 * n :],
            bound=self.bound,
            inverse=inverse,
            return_ladj=need_ladj,
        )
        y = y.view(x_t.shape)
        return y, None if ladj is None else ladj.view(x_t.shape).sum(dim=0)

    def _stage(self, x: Tensor, k: int, inverse: bool, onehot: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
        """Apply coupling stage ``k`` (or its inverse) to the continuous features ``x``;
        returns the output and ladj ``[B]``.

        The conditioner runs as plain module calls on ``concat(x * mask, onehot, mask, 1,
        code)``, once per stage (per-row gradient code records every ``nn.Linear`` call):
        every stage sees the cells of all discrete heads.
        """
        b = x.shape[0]
        if onehot is None:
            onehot = x.new_zeros(b, self.head_offsets[-1])
        mask = self.masks[k].to(x.dtype).expand(b, -1)
        code = self.stage_codes[k].to(x.dtype).expand(b, -1)
        seen = x.new_ones(b, self.n_heads)
        params = self.conditioner(torch.cat((x * mask, onehot, mask, seen, code), dim=-1))
        _, transformed = self._split(k)
        # (B, P * D) -> (P * D_t, B): the spline parameters of the transformed features only.
        params = params.T.index_select(0, self._param_rows(transformed))
        y_t, ladj = self._spline(x.T.index_select(0, transformed), params, inverse, True)
        assert ladj is not None
        return x.index_copy(1, transformed, y_t.T), ladj

    def _needs_autograd(self, x: Tensor) -> bool:
        """Whether a pass over ``x`` must be differentiable (and go through the modules)."""
        if not torch.is_grad_enabled():
            return False
        return x.requires_grad or any(p.requires_grad for p in self.conditioner.parameters())

    def _layers(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, list, nn.Linear]:
        """The conditioner's first layer (weight, bias), middle layers as ``(W, b[:, None])``
        or activation modules, and its last layer, for the no-autograd paths."""
        layers = list(self.conditioner)
        first, last = layers[0], layers[-1]
        assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
        middle = [
            (layer.weight.to(dtype), layer.bias.to(dtype)[:, None])
            if isinstance(layer, nn.Linear) else layer
            for layer in layers[1:-1]
        ]
        return first.weight.to(dtype), first.bias.to(dtype), middle, last

    def _run_fast(self, x: Tensor, inverse: bool, need_ladj: bool,
                  extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """All stages without autograd, in a transposed ``(n_cont, B)`` layout.

        The same map as the module path, up to rounding: the conditioner's layers are
        applied to column batches, the constant mask and stage-code part of the first layer
        is folded into its bias, the heads' one-hot part is ``extra`` (``(hidden, B)``, the
        same for every stage), and only the output units of the features a stage transforms
        are computed, directly in the spline's knot-major layout. Each layer's bias is one
        more column of its weights, read against a row of ones kept at the top of its input
        (``[1; h]``): a plain product, with no pass to broadcast the bias (that pass had
        taken a twentieth of the sampling time). Rows are processed in blocks of
        ``_FAST_BLOCK_ROWS`` so that intermediates stay small.
        """
        dtype = x.dtype
        d = self.n_cont
        n_params = 3 * self.n_bins - 1
        w_first, b_first, middle, last = self._layers(dtype)
        # [b W]: a layer's weights with its bias first, against inputs [1; h].
        middle = [torch.cat((layer[1], layer[0]), 1) if isinstance(layer, tuple) else layer
                  for layer in middle]
        # Spline output units are feature-major: unit (feature, parameter).
        w_last = last.weight[: d * n_params].to(dtype).view(d, n_params, -1).transpose(0, 1)
        b_last = last.bias[: d * n_params].to(dtype).view(d, n_params).T
        n_cells = self.head_offsets[-1]

        plans = []
        stages = reversed(range(self.n_stages)) if inverse else range(self.n_stages)
        for k in stages:
            cond, transformed = self._split(k)
            # W [x * m; onehot; m; 1; c] + b = W[:, cond] x[cond] + extra + (W[:, static] s + b)
            static = torch.cat((self.masks[k].to(dtype), x.new_ones(self.n_heads),
                                self.stage_codes[k].to(dtype)))
            bias = torch.addmv(b_first, w_first[:, d + n_cells:], static)
            w_in = torch.cat((bias[:, None], w_first[:, cond]), 1)
            w_out = torch.cat((b_last[:, transformed].reshape(-1, 1),
                               w_last[:, transformed].reshape(-1, w_last.shape[-1])), 1)
            plans.append((cond, transformed, w_in, w_out))

        out = torch.empty_like(x)
        total = x.new_zeros(x.shape[0])
        hidden = w_first.shape[0]
        for start in range(0, x.shape[0], _FAST_BLOCK_ROWS):
            rows = slice(start, start + _FAST_BLOCK_ROWS)
            # A copy even where x.T is already contiguous (one feature): updated in place.
            state = x[rows].T.clone(memory_format=torch.contiguous_format)  # (D, b)
            b = state.shape[1]
            # [1; x[cond]] and [1; h]: the ones rows are written once per block. The layers
            # write into buffers kept for the block (fresh blocks of a few MB each cost
            # page faults).
            inputs = x.new_ones(d + 1, b)
            hid = x.new_ones(hidden + 1, b)
            h = x.new_empty(hidden, b)
            block_extra = None if extra is None else extra[:, rows].contiguous()
            for cond, transformed, w_in, w_out in plans:
                torch.index_select(state, 0, cond, out=inputs[1 : 1 + len(cond)])
                if block_extra is None:
                    torch.mm(w_in, inputs[: 1 + len(cond)], out=h)
                else:
                    torch.addmm(block_extra, w_in, inputs[: 1 + len(cond)], out=h)
                for layer in middle:
                    if isinstance(layer, Tensor):
                        torch.mm(layer, hid, out=h)
                    else:
                        _activation(layer, h, hid[1:])
                params = torch.mm(w_out, hid)  # (P * D_t, b): knot-major
                y_t, ladj = self._spline(state.index_select(0, transformed), params, inverse,
                                         need_ladj)
                state.index_copy_(0, transformed, y_t)
                if ladj is not None:
                    total[rows] += ladj
            out[rows] = state.T
        return out, total

    def _continuous(self, x: Tensor, cells: _Cells | None, inverse: bool,
                    need_ladj: bool = True) -> tuple[Tensor, Tensor]:
        """The coupling stages on the continuous features (whitening included), given the
        heads' cells (None without heads); the output and ``log |det|`` of the forward map
        per row."""
        if self.n_cont == 0:
            return x, x.new_zeros(x.shape[0])
        if cells is None:
            cells = _Cells(x.new_zeros(x.shape[0], 0))
        shift = None  # the mean of the continuous features given the heads' cells
        if self.heads_shift_continuous:
            # In x's precision (float64 took a twelfth of the stages' time when sampling in
            # float32).
            shift = self._continuous_shift(cells, x.dtype)
        if not inverse:
            x, total = self._whiten(x if shift is None else x - shift)
            total = total.expand(x.shape[0])
        else:
            total = x.new_zeros(x.shape[0])
        if not self._needs_autograd(x):
            extra = None
            if self.n_heads:  # the first layer's columns of the cells, summed: (hidden, B)
                w_first = self.conditioner[0].weight.to(x.dtype)
                d = self.n_cont
                # Contiguous: each stage adds it to a (hidden, B) block (strided, that
                # addition took a tenth of the stages' time).
                extra = cells.first_layer(w_first[:, d : d + self.head_offsets[-1]].T,
                                          self.n_heads).T.contiguous()
            y, ladj = self._run_fast(x, inverse, need_ladj, extra)
            total = total + ladj
        else:
            y = x
            for k in (reversed(range(self.n_stages)) if inverse else range(self.n_stages)):
                y, ladj = self._stage(y, k, inverse, cells.one_hot())
                total = total + ladj
        if not inverse:
            return y, total
        y = self._color(y)
        return (y if shift is None else y + shift), total

    # ------------------------------------------------------------- discrete heads
    def _edges(self, j: int) -> Tensor:
        """Cell edges of head ``j``, in ``u = Phi(x)`` (float64)."""
        start = self.head_offsets[j] + j
        return self.head_edges[start : start + self.head_cells[j] + 1]

    def _one_hot(self, cells: Tensor, dtype: torch.dtype) -> Tensor:
        """``(B, n_cells)`` one-hot rows of the heads' cells ``(B, n_heads)``."""
        offsets = torch.tensor(self.head_offsets[:-1], device=cells.device)
        onehot = torch.zeros(cells.shape[0], self.head_offsets[-1], dtype=dtype,
                             device=cells.device)
        return onehot.scatter_(1, cells + offsets, 1.0)

    def _head_logits(self, cells: _Cells, j: int, fast: tuple | None) -> Tensor:
        """Logits of head ``j``'s cells given the cells of the heads before it.

        A fixed offset holds the start: the released masses (log cell widths), or with a
        base correlation the copula's conditional masses (:meth:`set_base_correlation`);
        with the zero-initialised output layer every head starts there. ``fast`` (no
        autograd, the conditioner's layers): the first layer as the sum of the chosen
        cells' weight columns, the table as the sum of its columns, only head ``j``'s output
        units computed; else :meth:`_every_head_logits`'s module calls (for per-row
        gradients; head ``j`` reads only the cells before it, so the later ones, unset yet
        in sampling, change nothing).
        """
        lo, hi = self.head_offsets[j], self.head_offsets[j + 1]
        if fast is None:
            return self._every_head_logits(cells.one_hot())[j]
        offset = self._head_offset(cells, j)
        n_cells = self.head_offsets[-1]
        w_first, b_first, middle, _ = fast
        d = self.n_cont
        dtype = cells.dtype
        g = self.head_group[j]
        h = cells.hidden.get(g)  # the group's last hidden layer, once per group
        if h is None:
            # The constant part (visible-heads flags and stage code), then the visible cells.
            static = torch.cat((self.head_visible[g, n_cells:].to(dtype),
                                self.stage_codes[self.n_stages + g].to(dtype)))
            bias = torch.addmv(b_first, w_first[:, 2 * d + n_cells:], static)
            if self.group_start[g] == 0:
                # The first group sees no cell: one hidden layer for all rows, (hidden, 1)
                # (a seventh of the conditioner's work when sampling Adult, done once).
                h = bias[:, None]
            else:
                h = (cells.first_layer(w_first[:, d : d + n_cells].T, self.group_start[g])
                     + bias).T  # (hidden, B)
            for layer in middle:
                h = (torch.addmm(layer[1], layer[0], h) if isinstance(layer, tuple)
                     else layer(h))
            cells.hidden[g] = h
        w = self.head_output.weight[lo:hi].to(dtype)
        b = self.head_output.bias[lo:hi].to(dtype)
        logits = torch.addmm(b[:, None], w, h)  # (cells, B) or (cells, 1): see _head_offset
        logits = _add(logits, offset.T if offset.ndim == 2 else offset[:, None])
        if self.lookup is not None and j:
            logits = _add(logits, cells.sum_of(self.lookup[j - 1].weight.to(dtype).T, upto=j).T)
        return logits.expand(-1, cells.rows).T

    def _heads_output(self, inputs: Tensor) -> Tensor:
        """The heads' logits (before offsets) of ``inputs``: the conditioner's hidden layers,
        then the heads' output layer (module calls)."""
        h = inputs
        for layer in list(self.conditioner)[:-1]:
            h = layer(h)
        return self.head_output(h)

    def _every_head_logits(self, onehot: Tensor) -> list[Tensor]:
        """:meth:`_head_logits` of every head (module path), from one call of the conditioner
        on ``(B, n_groups, in)`` inputs: row ``g`` holds what the heads of group ``g`` may
        see."""
        b = onehot.shape[0]
        n_cells = self.head_offsets[-1]
        seen = torch.cat((onehot, onehot.new_ones(b, self.n_heads)), 1)
        seen = seen[:, None, :] * self.head_visible.to(onehot.dtype)  # (B, groups, cells + m)
        zeros = onehot.new_zeros(b, self.n_groups, self.n_cont)
        codes = self.stage_codes[self.n_stages:].to(onehot.dtype).expand(b, -1, -1)
        out = self._heads_output(torch.cat((zeros, seen[..., :n_cells], zeros,
                                            seen[..., n_cells:], codes), -1))
        offsets = self._every_head_offset(onehot)
        logits = []
        for j in range(self.n_heads):
            lo, hi = self.head_offsets[j], self.head_offsets[j + 1]
            head = out[:, self.head_group[j], lo:hi] + offsets[..., lo:hi]
            if self.lookup is not None and j:
                head = head + self.lookup[j - 1](onehot[:, :lo])
            logits.append(head)
        return logits

    def _heads_forward(self, x: Tensor, need_z: bool
                       ) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        """The heads' part of the map, data ``x`` ``(B, n_heads)`` to latent.

        Head ``j`` reads the cell ``k`` holding ``u = Phi(x_j)`` and sends ``u`` to ``v = C_k
        + p_k (u - lo_k) / w_k``, with ``p`` its softmax over cells, ``C_k`` the mass of the
        cells before ``k`` and ``[lo_k, lo_k + w_k]`` the cell: ``z_j = Phi^-1(v)``. So
        ``log p`` of the dequantised value is ``log p_k - log w_k + log phi(x_j)``.

        Returns ``(z or None, log |det dz/dx|, that log-density, the cells)``.
        """
        fast = None if self._needs_autograd(x) else self._layers(x.dtype)
        u = _ndtr(x.double())
        cells = torch.stack([
            (torch.searchsorted(self._edges(j), u[:, j].contiguous(), right=True) - 1)
            .clamp(0, self.head_cells[j] - 1) for j in range(self.n_heads)], 1)
        offsets = torch.tensor(self.head_offsets[:-1], device=cells.device)
        known = (_Cells(self._one_hot(cells, x.dtype)) if fast is None
                 else _Cells(x, list((cells + offsets).unbind(1))))
        log_phi_x = -0.5 * x.square() - _LOG_SQRT_2PI
        log_density = x.new_zeros(x.shape[0])
        ladj = x.new_zeros(x.shape[0])
        z_cols = []
        # Teacher forcing: the cells are known, so with autograd all heads are one call of
        # the conditioner (and of the table) on (B, n_heads, in) inputs, a use per head.
        every = None if fast is not None else self._every_head_logits(known.onehot)
        for j in range(self.n_heads):
            k = cells[:, j : j + 1]
            logits = every[j] if fast is None else self._head_logits(known, j, fast)
            log_q = torch.log_softmax(logits, dim=-1)
            log_p = log_q.gather(1, k).squeeze(1)
            lo, hi = self.head_offsets[j], self.head_offsets[j + 1]
            log_w = self.head_log_widths[lo:hi].to(x.dtype)[k.squeeze(1)]
            term = log_p - log_w + log_phi_x[:, j]
            log_density = log_density + term
            if need_z:
                edges = self._edges(j).to(x.dtype)
                below = (log_q.exp() * (torch.arange(self.head_cells[j], device=x.device)
                                        < k)).sum(1)
                cell = k.squeeze(1)
                frac = (_ndtr(x[:, j]) - edges[cell]) / (edges[cell + 1] - edges[cell])
                z = torch.special.ndtri((below + log_p.exp() * frac).clamp(_U_EPS, 1 - _U_EPS))
                z_cols.append(z)
                ladj = ladj + term + 0.5 * z.square() + _LOG_SQRT_2PI
        z = torch.stack(z_cols, 1) if need_z else None
        return z, ladj, log_density, known

    def _heads_inverse(self, z: Tensor, prob_sums: list | None = None
                       ) -> tuple[Tensor, Tensor]:
        """Latent ``z`` ``(B, n_heads)`` to data, head after head; and the cells.

        ``v = Phi(z_j)`` picks the cell ``k`` by inverse CDF of the head's softmax; what is
        left of ``v`` in that cell, ``(v - C_k) / p_k``, is uniform and places ``u`` in the
        cell (the inverse of :meth:`_heads_forward`). ``prob_sums``: a list that gets each
        head's probabilities, summed over the rows.
        """
        fast = None if self._needs_autograd(z) else self._layers(z.dtype)
        # The cells are chosen in float64 where z is, else in float32 (sampling): the softmax
        # in float64 was a fifth of the heads' time, and float32's rounding moves a row to a
        # neighbouring cell with probability about 1e-6.
        work = torch.float64 if z.dtype == torch.float64 else torch.float32
        v = _ndtr(z.double()).to(work)
        chosen = _Cells(z.new_zeros(z.shape[0], self.head_offsets[-1]) if fast is None else z,
                        None if fast is None else [])
        # The first heads, those with few combinations of the cells before them, read their
        # probabilities from tables (see _head_tables); ``prefix`` numbers each row's
        # combination of the cells chosen so far.
        tables = [] if fast is None else self._head_tables(work)
        prefix = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        cols = []
        for j in range(self.n_heads):
            n_cells = self.head_cells[j]
            vj = v[:, j]
            if j < len(tables):
                p, cum = tables[j]  # (cells, combinations)
                if prob_sums is not None:
                    counts = torch.bincount(prefix, minlength=p.shape[1])
                    prob_sums.append(p.double() @ counts.double())
                k = (cum.index_select(1, prefix) <= vj).sum(0).clamp_(max=n_cells - 1)
                at = k * p.shape[1] + prefix
                p_k = p.view(-1).index_select(0, at)
                cum_k = cum.view(-1).index_select(0, at)
                prefix = prefix * n_cells + k
            else:
                # Cell-major (cells, B), contiguous on the fast path (see _head_offset):
                # along dim 0, the softmax runs over rows of B values (for a head of 2 to 16
                # cells, 3 to 15 times as fast as along rows of so few cells).
                p = torch.softmax(self._head_logits(chosen, j, fast).T.to(work), dim=0)
                if prob_sums is not None:
                    prob_sums.append(p.sum(1, dtype=torch.float64))
                cum = cumulative_sum(p)
                # The first cell whose cumulative mass exceeds v (searchsorted, right=True).
                k = (cum <= vj).sum(0).clamp_(max=n_cells - 1)
                p_k = p.gather(0, k[None, :])[0]
                cum_k = cum.gather(0, k[None, :])[0]
            frac = ((vj - (cum_k - p_k)) / p_k.clamp_min(torch.finfo(work).tiny)
                    ).clamp(0.0, 1.0)
            edges = self._edges(j)
            lo = edges.index_select(0, k)
            u = lo + frac * (edges.index_select(0, k + 1) - lo)
            cols.append(torch.special.ndtri(u.clamp(_U_EPS, 1 - _U_EPS)))
            chosen.add(k + self.head_offsets[j])
        return torch.stack(cols, 1).to(z.dtype), chosen

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_tables", None)  # a cache of the heads' tables (see _head_tables)
        return state

    def _head_tables(self, dtype: torch.dtype) -> list[tuple[Tensor, Tensor]]:
        """The probabilities of the first heads' cells and their cumulative sums, ``(cells,
        combinations)`` each, for every combination of the cells of the heads before them:
        one entry per head, for the first heads with at most ``HEAD_TABLE_COMBINATIONS``
        combinations and ``HEAD_TABLE_ENTRIES`` entries (heads come fewest cells first).
        No-autograd paths only.

        A head's probabilities are a function of the cells before it, so a head with few
        such combinations is computed once per combination instead of once per row (the
        same arithmetic as :meth:`_heads_inverse`'s, on a batch of combinations). Built on
        the first call (whatever its rows: the same latent rows give the same cells in any
        batch) and kept until any parameter or buffer changes (compared by value, about 0.2
        ms a call on Adult's shape).
        """
        device = self.head_bias.device
        state = list(self.state_dict(keep_vars=True).values())
        cached = getattr(self, "_tables", None)
        key = (dtype, device, HEAD_TABLE_COMBINATIONS, HEAD_TABLE_ENTRIES)
        if (cached is not None and cached[0] == key
                and len(cached[1]) == len(state)
                and all(a.shape == b.shape and torch.equal(a, b)
                        for a, b in zip(cached[1], state))):
            return cached[2]
        fast = self._layers(dtype)
        tables = []
        combinations = 1
        for j in range(self.n_heads):
            if (combinations > HEAD_TABLE_COMBINATIONS
                    or combinations * self.head_cells[j] > HEAD_TABLE_ENTRIES):
                break
            # Every combination of the cells of heads 0 .. j-1, the last head's the fastest.
            grid = torch.arange(combinations, device=device)
            units = []
            stride = combinations
            for i in range(j):
                stride //= self.head_cells[i]
                units.append(grid // stride % self.head_cells[i] + self.head_offsets[i])
            like = torch.zeros(combinations, 1, dtype=dtype, device=device)
            p = torch.softmax(self._head_logits(_Cells(like, units), j, fast).T.to(dtype),
                              dim=0).contiguous()
            tables.append((p, cumulative_sum(p)))
            combinations *= self.head_cells[j]
        self._tables = (key, [t.detach().clone() for t in state], tables)
        return tables

    @torch.no_grad()
    def recenter_heads(self, n_samples: int = 16_384, rounds: int = 2, min_gap: float = 0.02,
                       generator: torch.Generator | None = None) -> list[float]:
        """Shift each head's logits so that its marginal is its released masses again.

        DP-SGD's noise moves the heads' marginals off the released 1-way masses they start
        at (the lookup table's entries most: they learn fastest). Each round draws
        ``n_samples`` rows of the heads from the model, averages each head's probabilities
        over them (given the earlier heads' drawn cells) and adds ``log(released / model)``
        to the head's ``head_bias``, all heads at once, for the heads whose averaged
        probabilities are more than ``min_gap`` (1-way TVD) off: the estimate from 16,384
        rows is itself about 0.01 off on a head of many cells, and the category weights take
        small gaps without losing many rows (on Adult, shifting every head lost 0.016 of
        ``education-num`` = f(``education``) and 0.003 of quality). Reads the trained model
        and the released masses (the cells' widths) only: post-processing. Every map stays
        exact (the bias is part of the offset the forward and inverse maps share).

        Returns
        -------
        list of float
            The largest 1-way TVD between a head's averaged probabilities and its released
            masses, before each round.
        """
        if not self.n_heads:
            return []
        target = self.head_log_widths.double().exp()
        gaps = []
        dtype = next(self.conditioner.parameters()).dtype
        for _ in range(rounds):
            z = torch.randn(n_samples, self.n_heads, generator=generator, dtype=dtype,
                            device=self.head_bias.device)
            sums: list[Tensor] = []
            self._heads_inverse(z, prob_sums=sums)
            model = torch.cat(sums) / n_samples
            step = target.clamp_min(1e-300).log() - model.clamp_min(1e-300).log()
            head_gaps = []
            for lo, hi in zip(self.head_offsets[:-1], self.head_offsets[1:]):
                gap = 0.5 * float((model[lo:hi] - target[lo:hi]).abs().sum())
                head_gaps.append(gap)
                # A head that is close already is left alone (its estimate is that noisy).
                if gap > min_gap:
                    self.head_bias[lo:hi] += step[lo:hi].to(self.head_bias.dtype)
            gaps.append(max(head_gaps))
        return gaps

    def _join(self, x_cont: Tensor, x_heads: Tensor) -> Tensor:
        """Rows of all features from the continuous and the heads' columns."""
        out = x_cont.new_empty(x_cont.shape[0], self.features)
        out = out.index_copy(1, self.cont_index, x_cont)
        return out.index_copy(1, self.head_index, x_heads)

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map data to the latent space.

        Parameters
        ----------
        x : Tensor
            Data, shape ``(B, features)``.

        Returns
        -------
        z : Tensor
            Latent values, shape ``(B, features)``.
        ladj : Tensor
            Summed ``log |det dz/dx|`` per row, shape ``(B,)``.
        """
        ladj_calibration = x.new_zeros(x.shape[0])
        if self.calibrated:
            x, ladj_calibration = self._calibration(x, inverse=True)
        if not self.n_heads:
            z, total = self._continuous(x, None, inverse=False)
            return z, total + ladj_calibration
        z_heads, ladj_heads, _, cells = self._heads_forward(
            x.index_select(1, self.head_index), need_z=True)
        z_cont, total = self._continuous(x.index_select(1, self.cont_index), cells,
                                         inverse=False)
        return self._join(z_cont, z_heads), total + ladj_heads + ladj_calibration

    def inverse(self, z: Tensor, accept: Callable[[int, Tensor], Tensor] | None = None
                ) -> Tensor:
        """Map latent values back to data.

        Parameters
        ----------
        z : Tensor
            Latent values, shape ``(B, features)``.
        accept : callable or None, default=None
            Keep only some rows, decided from the discrete heads alone (a rejection step
            that reads only the heads' features, :meth:`decides_on_heads`): called as
            ``accept(start, x)`` on each block of rows from row ``start`` of ``z``, with
            ``x`` ``(b, features)`` holding the block's heads' features (the other columns
            0), it returns a ``(b,)`` boolean mask. The continuous stages then run on the
            kept rows only. Needs heads and no autograd.

        Returns
        -------
        Tensor
            Data, shape ``(B, features)``; with ``accept``, the kept rows in order.
        """
        if accept is not None and (not self.n_heads or self._needs_autograd(z)):
            raise ValueError("accept needs discrete heads and no autograd")
        if z.shape[0] > _FAST_BLOCK_ROWS and not self._needs_autograd(z):
            # Block by block, heads and stages together: each block's intermediates stay
            # in cache (about 1.1 times as fast on Adult's shape); rows are independent, and
            # the fast stages already run in these blocks, so the rows are the same.
            return torch.cat([
                self.inverse(z[start : start + _FAST_BLOCK_ROWS],
                             None if accept is None else shifted_accept(accept, start))
                for start in range(0, z.shape[0], _FAST_BLOCK_ROWS)])
        if not self.n_heads:
            x, _ = self._continuous(z, None, inverse=True, need_ladj=False)
        else:
            x_heads, cells = self._heads_inverse(z.index_select(1, self.head_index))
            if accept is not None:
                partial = z.new_zeros(z.shape[0], self.features)
                partial.index_copy_(1, self.head_index, x_heads)
                kept = accept(0, partial).to(z.device).nonzero().squeeze(1)
                z, x_heads = z.index_select(0, kept), x_heads.index_select(0, kept)
                cells = cells.take(kept, z)
            x_cont, _ = self._continuous(z.index_select(1, self.cont_index), cells,
                                         inverse=True, need_ladj=False)
            x = self._join(x_cont, x_heads)
        return self._calibration(x, inverse=False)[0] if self.calibrated else x

    def decides_on_heads(self, features: list[int]) -> bool:
        """Whether a rejection step reading only ``features`` can run after the heads
        (:meth:`inverse`'s ``accept``): they are all heads' features, which the marginal
        calibration leaves as the heads sample them."""
        if not self.n_heads or not features:
            return False
        heads = set(self.head_index.tolist())
        if not set(features) <= heads:
            return False
        return not (self.calibrated and bool(self.calibration_moved()[list(features)].any()))

    def log_prob(self, x: Tensor) -> Tensor:
        """Per-row log-density ``log N(z; 0, I) + log |det dz/dx|`` (whitening included).

        With discrete heads, their part is computed directly as ``log p_k - log w_k + log
        phi(x_j)`` (the same value, without the round trip through ``z``).

        Parameters
        ----------
        x : Tensor
            Data, shape ``(B, features)``.

        Returns
        -------
        Tensor
            Log-densities, shape ``(B,)``.
        """
        if not self.n_heads:
            z, ladj = self.transform(x)
            return -0.5 * z.square().sum(dim=-1) - self.features * _LOG_SQRT_2PI + ladj
        ladj_calibration = x.new_zeros(x.shape[0])
        if self.calibrated:
            x, ladj_calibration = self._calibration(x, inverse=True)
        _, _, log_heads, cells = self._heads_forward(x.index_select(1, self.head_index),
                                                     need_z=False)
        z, ladj = self._continuous(x.index_select(1, self.cont_index), cells, inverse=False)
        base = -0.5 * z.square().sum(dim=-1) - self.n_cont * _LOG_SQRT_2PI
        return base + ladj + log_heads + ladj_calibration

    def forward(self, x: Tensor) -> Tensor:
        """Per-row log-density; the same as :meth:`log_prob`."""
        return self.log_prob(x)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` rows by pushing standard normal noise through :meth:`inverse`.

        Parameters
        ----------
        n : int
            Number of rows.
        generator : torch.Generator or None, default=None
            Source of randomness; the global generator if None.

        Returns
        -------
        Tensor
            Samples, shape ``(n, features)``.
        """
        ref = self.masks
        weight = next(self.conditioner.parameters())
        z = torch.randn(
            n, self.features, generator=generator, dtype=weight.dtype, device=ref.device
        )
        return self.inverse(z)


class _Cells:
    """The heads' cells of a batch: a one-hot ``(B, n_cells)`` tensor (module paths, whose
    layers take it as input), or the chosen units, one ``(B,)`` index tensor per head so far
    (no-autograd paths: a linear map of the one-hot is a sum of gathered rows)."""

    def __init__(self, like: Tensor, units: list[Tensor] | None = None) -> None:
        self.onehot = None if units is not None else like
        self.units = units
        self.dtype = like.dtype
        self.rows = like.shape[0]
        self._first: Tensor | None = None  # running sum of the first layer's rows
        self._first_count = 0
        self._stacked: Tensor | None = None  # the units so far as (B, heads) indices
        self.hidden: dict[int, Tensor] = {}  # a head group's last hidden layer (fast paths)

    def take(self, index: Tensor, like: Tensor) -> _Cells:
        """The cells of the rows ``index`` (fast paths), as a fresh batch like ``like``."""
        assert self.units is not None, "fast paths keep the chosen units"
        return _Cells(like, [unit.index_select(0, index) for unit in self.units])

    def one_hot(self) -> Tensor:
        assert self.onehot is not None, "module paths keep the one-hot cells"
        return self.onehot

    def add(self, unit: Tensor) -> None:
        """Set the next head's cell (``unit``: its index among all cells, per row)."""
        if self.units is not None:
            self.units.append(unit)
        else:
            self.onehot = self.onehot.scatter(1, unit[:, None], 1.0)

    def sum_of(self, rows: Tensor, upto: int | None = None) -> Tensor:
        """``onehot @ rows`` (``rows``: ``(n_cells or fewer, k)``, or ``(n_cells,)``), over
        the cells of the first ``upto`` heads (all set so far by default)."""
        if self.units is None:
            return self.onehot[:, : rows.shape[0]].to(rows.dtype) @ rows
        units = self.units[:upto]
        if not units:
            return rows.new_zeros((self.rows, *rows.shape[1:]))
        # A head's offset and its lookup read the same units: stack them once.
        if self._stacked is None or self._stacked.shape[1] != len(units):
            self._stacked = torch.stack(units, 1)
        index = self._stacked
        if rows.ndim == 1:
            return rows[index].sum(1)
        # A transposed weight (not contiguous) made embedding_bag 14 times slower here.
        return torch.nn.functional.embedding_bag(index, rows.contiguous(), mode="sum")

    def first_layer(self, rows: Tensor, upto: int) -> Tensor:
        """:meth:`sum_of` the first layer's rows ``(n_cells, hidden)`` (always the same
        tensor for one batch), kept as a running sum from head to head."""
        if self.units is None:
            return self.sum_of(rows, upto)
        if self._first is None:
            self._first = rows.new_zeros(self.rows, rows.shape[1])
        if self._first_count < upto:  # the heads set since the last call, in one bag sum
            index = torch.stack(self.units[self._first_count : upto], 1)
            self._first += torch.nn.functional.embedding_bag(index, rows.contiguous(),
                                                             mode="sum")
            self._first_count = upto
        return self._first


def _log_cell_mass(t: Tensor, lower: Tensor | None = None) -> Tensor:
    """``log(Phi(hi) - Phi(lo))`` of the cells between the edges ``t`` (``(B, edges)``):
    cell ``i`` runs from edge ``lower[i]`` to the next one (by default every edge but the
    last). Where both ends are above 0 it is taken from the upper tail (there it keeps the
    digits that ``Phi(hi) - Phi(lo)`` would cancel). ``Phi`` and its upper tail are computed
    once per edge, and each is shared by the two cells it bounds: one ``erfc`` per edge, the
    tail ``q = Phi(-|t|)``, from which ``Phi(t)`` is ``q`` below 0 and ``1 - q`` above."""
    positive = t > 0
    tail = 0.5 * torch.special.erfc(t.abs() * _SQRT_HALF)  # Phi(-|t|)
    if lower is None:  # views, no copies
        lo, hi = slice(None, -1), slice(1, None)
    else:
        lo, hi = lower, lower + 1
    # Both ends above 0: Phi(-lo) - Phi(-hi). Else Phi(hi) - Phi(lo), with Phi(lo) = tail.
    below_hi = torch.where(positive[:, hi], 1.0 - tail[:, hi], tail[:, hi])
    mass = torch.where(positive[:, lo], tail[:, lo] - tail[:, hi], below_hi - tail[:, lo])
    return mass.clamp_min_(1e-300).log_()


def _log_cell_mass_cell_major(t: Tensor) -> Tensor:
    """:func:`_log_cell_mass` in the cell-major layout of the sampling paths: ``t`` ``(cells -
    1, B)`` the inner edges, increasing along dim 0, times ``sqrt(1/2)`` (the outer edges are
    -inf and inf); returns ``(cells, B)``.

    With ``e = erfc(|t|) = 2 Phi(-|t sqrt(2)|)`` and ``g = copysign(e, t)`` (0 at the outer
    edges), ``2 (Phi(hi) - Phi(lo)) = g_lo - g_hi``, plus 2 for the cell holding 0: above 0
    the difference of the upper tails (whose digits ``Phi(hi) - Phi(lo)`` would cancel),
    below it that of the lower tails, and across 0 ``2 - e_lo - e_hi``. Every pass runs over
    contiguous rows, and the outer edges cost nothing (about twice as fast as
    :func:`_log_cell_mass` on ``t.T`` in float32, as precise).
    """
    n_cells, b = t.shape[0] + 1, t.shape[1]
    g = t.new_empty(n_cells + 1, b)
    g[0], g[-1] = 0.0, 0.0
    # |t| is capped where erfc is still a normal number (float32: erfc(9) = 4e-37; float64:
    # erfc(26) = 6e-296), so no pass meets subnormal numbers (slow on CPUs; on Adult a head
    # with 3% of its tails beyond the cap took 0.23 ms for the erfc of 8,192 rows, 0.20
    # capped); a cell beyond the cap has a mass below that number either way.
    cap = 9.0 if t.dtype == torch.float32 else 26.0
    torch.special.erfc(t.abs().clamp_max_(cap), out=g[1:-1])
    torch.copysign(g[1:-1], t, out=g[1:-1])
    sign = t.new_empty(n_cells + 1, b)
    sign[0], sign[-1] = -1.0, 1.0
    torch.copysign(torch.ones((), dtype=t.dtype), t, out=sign[1:-1])
    mass = g[:-1] - g[1:]
    mass += sign[1:] - sign[:-1]  # 2 across 0, else 0 exactly
    return mass.clamp_min_(0.0).log_().sub_(_LOG_2)


def shifted_accept(accept: Callable[[int, Tensor], Tensor], offset: int
                   ) -> Callable[[int, Tensor], Tensor]:
    """:meth:`SharedConditionerFlow.inverse`'s ``accept`` for rows that start ``offset``
    rows into the caller's rows."""
    return lambda start, x: accept(offset + start, x)


def _activation(layer: nn.Module, h: Tensor, out: Tensor) -> None:
    """``out[:] = layer(h)``, written in place for GELU (the conditioner's activation)."""
    if isinstance(layer, nn.GELU):
        torch.ops.aten.gelu.out(h, approximate=layer.approximate, out=out)
    else:
        out.copy_(layer(h))


def _add(a: Tensor, b: Tensor) -> Tensor:
    """``a + b``, in place in ``a`` where ``a`` has the broadcast shape."""
    return a.add_(b) if a.shape == torch.broadcast_shapes(a.shape, b.shape) else a + b


def _ndtr(x: Tensor) -> Tensor:
    """Phi(x) from erfc: ``torch.special.ndtr`` is 0 below x = -8.3 (it is 1 + erf)."""
    return 0.5 * torch.special.erfc(x * -_SQRT_HALF)


def _check_discrete(discrete: list | None, features: int) -> list[tuple[int, list[float]]]:
    """``discrete`` as ``[(feature, edges), ...]``, checked: distinct features in range, each
    with at least two cells whose edges increase from 0 to 1."""
    heads: list[tuple[int, list[float]]] = []
    for item in discrete or []:
        index, edges = item
        index = int(index)
        values = [float(e) for e in edges]
        if not 0 <= index < features or index in {i for i, _ in heads}:
            raise ValueError(f"discrete features must be distinct and in [0, {features}), "
                             f"got {index}")
        if (len(values) < 3 or values[0] != 0.0 or values[-1] != 1.0
                or any(b <= a for a, b in zip(values, values[1:]))):
            raise ValueError(f"the cell edges of discrete feature {index} must increase "
                             "strictly from 0 to 1, with at least two cells")
        heads.append((index, values))
    return heads


def _check_positive(**values: float) -> None:
    """Raise ``ValueError`` naming the first argument that is not positive."""
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"'{name}' must be positive, got {value}")
