"""Category weights: the released 1-way masses of categories and modes, with rows kept whole.

The trained flow's categories (and the modes of numerical columns: missing, atoms) come out
off their released masses, by as much as DP-SGD's noise put there. A monotone map of the
latent dimension would move mass between cells by relabelling the rows at a cell's edge,
whose other columns belong to the cell they leave. Instead the model becomes the flow
tilted by one weight per category of each raked dimension:

    q(x) = p(x) min(w(x), W) / Z,   w(x) = prod_j a_j[c_j(x)],   Z = E_p[min(w, W)]

with ``c_j(x)`` the cell (category) of ``x`` in dimension ``j``. The factors ``a_j`` come
from iterative proportional fitting (raking) on rows drawn from the flow, so that ``q``'s
1-way masses are the released ones; ``W`` caps the weights at their
:data:`CAP_QUANTILE` quantile on those rows (a few rare combinations would otherwise make
sampling slow). The raking is done under the cap: each round sets ``W`` at the quantile of
the current weights and raises the factors until the capped weights give the released
masses, so the cap costs no 1-way fit and can sit lower (more of the flow's rows kept).
Everything is read from the trained flow and the released marginals: post-processing, no
budget.

Sampling from ``q`` is exact rejection sampling: a row of the flow is kept with probability
``min(w, W) / W``. ``log q`` is ``log p + log min(w, W) - log Z``, with ``Z`` estimated on
the same rows (relative error about ``sd(w) / (W sqrt(rows))``, below 1e-3 at the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr

from .encoding import locate_cells

__all__ = ["CategoryWeights"]

# Each factor stays within [1 / MAX_FACTOR, MAX_FACTOR]: a category the flow nearly never
# draws is not chased by weights that would make sampling stall.
MAX_FACTOR = 10.0
# Weights are capped at this quantile of their values on the flow's rows, the raking done
# under the cap. On Adult (epsilon 1, one fit, raked on half of the rows, checked on the
# other half): capped after the raking at 0.99, 48% of the flow's rows were kept, with a
# worst 1-way gap of 0.009; raked under the cap at 0.9, 72% with the same gap 0.009
# (docs/benchmarks.md, "Sampling").
CAP_QUANTILE = 0.9
# Raking stops when every raked dimension is within this TVD of its released masses.
TOLERANCE = 1e-4
MAX_ITERATIONS = 200
# An iteration that takes less than this share off the worst gap ends the raking: a factor
# at its bound holds some cell off its mass (a category the flow all but dropped).
STALL = 1e-3


@dataclass
class CategoryWeights:
    """Per-category weights on some latent dimensions (see the module docstring).

    Attributes
    ----------
    dims : list of int
        The raked latent dimensions.
    edges : list of ndarray
        Their released cells' edges in ``u = Phi(z)``, 0 to 1.
    log_factors : list of ndarray
        ``log a_j``, one per cell.
    log_cap : float
        ``log W``.
    log_norm : float
        ``log Z``.
    """

    dims: list[int]
    edges: list[np.ndarray]
    log_factors: list[np.ndarray]
    log_cap: float
    log_norm: float
    # Each edge as a value of a dtype (keep_values), per dtype: derived, never saved.
    _thresholds: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def fit(cls, z: np.ndarray, dims: list[int], edges: list[np.ndarray]) -> CategoryWeights:
        """Rake the rows ``z`` (drawn from the flow) to the masses ``diff(edges[j])``."""
        codes = [_cells(z[:, d], e) for d, e in zip(dims, edges)]
        targets = [np.diff(e) for e in edges]
        log_factors = [np.zeros(len(t)) for t in targets]
        bound = np.log(MAX_FACTOR)
        # The rows' distinct combinations of cells, with their counts: the same sums.
        combos, count = np.unique(np.stack(codes, 1), axis=0, return_counts=True)
        cells = [np.ascontiguousarray(combos[:, j]) for j in range(len(codes))]
        log_w = np.zeros(len(count))  # sum_j log a_j[c_j], kept up to date factor by factor
        previous = np.inf
        for _ in range(MAX_ITERATIONS):
            log_cap = _weighted_quantile(log_w, count, CAP_QUANTILE)
            worst = 0.0
            for j, (c, t) in enumerate(zip(cells, targets)):
                w = count * np.exp(np.minimum(log_w, log_cap) - log_cap)
                share = np.bincount(c, weights=w, minlength=len(t)) / w.sum()
                worst = max(worst, 0.5 * float(np.abs(share - t).sum()))
                ok = (share > 0) & (t > 0)
                step = np.zeros(len(t))
                step[ok] = np.log(t[ok]) - np.log(share[ok])
                new = np.clip(log_factors[j] + step, -bound, bound)
                log_w += (new - log_factors[j])[c]
                log_factors[j] = new
            # Done, or stalled (a factor held at its bound keeps a cell off its mass).
            if worst < TOLERANCE or worst > previous * (1.0 - STALL):
                break
            previous = worst
        log_w = sum(f[c] for c, f in zip(codes, log_factors))  # afresh: no drift
        log_cap = float(np.quantile(log_w, CAP_QUANTILE))
        log_norm = float(np.log(np.mean(np.exp(np.minimum(log_w, log_cap)))))
        return cls(list(dims), [np.asarray(e, dtype=float) for e in edges], log_factors,
                   log_cap, log_norm)

    @property
    def acceptance(self) -> float:
        """The share of the flow's rows that rejection sampling keeps: ``Z / W``."""
        return float(np.exp(self.log_norm - self.log_cap))

    def log_weights(self, z: np.ndarray) -> np.ndarray:
        """``log min(w, W)`` of latent rows ``z`` (shape ``(n, D)``)."""
        codes = [_cells(z[:, d], e) for d, e in zip(self.dims, self.edges)]
        return self.log_weights_of_cells(codes)

    def log_weights_of_cells(self, codes: list[np.ndarray]) -> np.ndarray:
        """``log min(w, W)`` from each raked dimension's cell index."""
        total = np.zeros(len(codes[0]) if codes else 0)
        for c, f in zip(codes, self.log_factors):
            total += f[c]
        return np.minimum(total, self.log_cap)

    def keep(self, z: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Rejection step: which rows of ``z`` to keep, given one uniform per row."""
        return self._keep(self.log_weights(z), uniforms)

    def keep_values(self, z: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """:meth:`keep` of rows ``z`` in their own dtype (the flow's float32 rows), with the
        same cells as ``keep(z.astype(float64))`` exactly, without ``ndtr``: each cell edge
        is compared in ``z``'s dtype (see :func:`value_thresholds`). Where the thresholds
        cannot be placed (float64, whose neighbouring values ``ndtr`` does not order
        exactly), :meth:`keep` itself."""
        if z.dtype not in self._thresholds:
            try:
                self._thresholds[z.dtype] = [value_thresholds(e, z.dtype) for e in self.edges]
            except ValueError:  # float64: ndtr moves by rounding between neighbours
                self._thresholds[z.dtype] = None
        cuts = self._thresholds[z.dtype]
        if cuts is None:
            return self.keep(z.astype(float), uniforms)
        codes = [locate_cells(t, z[:, d]) for d, t in zip(self.dims, cuts)]
        return self._keep(self.log_weights_of_cells(codes), uniforms)

    def _keep(self, log_weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(uniforms, 1e-300)) < log_weights - self.log_cap

    def to_dict(self) -> dict:
        return {"dims": list(self.dims), "edges": [e.tolist() for e in self.edges],
                "log_factors": [f.tolist() for f in self.log_factors],
                "log_cap": self.log_cap, "log_norm": self.log_norm}

    @classmethod
    def from_dict(cls, state: dict) -> CategoryWeights:
        return cls(list(state["dims"]), [np.asarray(e, dtype=float) for e in state["edges"]],
                   [np.asarray(f, dtype=float) for f in state["log_factors"]],
                   float(state["log_cap"]), float(state["log_norm"]))


def _weighted_quantile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """The ``q`` quantile of ``values`` repeated ``counts`` times (numpy's default, linear)."""
    order = np.argsort(values, kind="stable")
    v, c = values[order], counts[order]
    ends = np.cumsum(c)  # the last row index + 1 of each value
    position = q * (ends[-1] - 1)
    below = int(np.floor(position))
    i = int(np.searchsorted(ends, below, side="right"))
    j = int(np.searchsorted(ends, below + 1, side="right")) if below + 1 < ends[-1] else i
    return float(v[i] + (position - below) * (v[j] - v[i]))


def value_thresholds(edges: np.ndarray, dtype: np.dtype, window: int = 256) -> np.ndarray:
    """For each edge ``e`` in ``u = Phi(z)``, the least value ``t`` of ``dtype`` with
    ``ndtr(t) >= e``, ``ndtr`` taken in float64 as the decode takes it (``-inf`` for an edge
    at 0).

    Then, for every value ``x`` of ``dtype``, ``x >= t`` exactly when ``ndtr(x) >= e``, and
    ``searchsorted(t, x, "right") - 1`` (clipped) is the cell the decode locates from
    ``ndtr(x)``, without ``ndtr``. Checked on the ``window`` values of the dtype on each side
    of every ``t`` (farther out ``ndtr(x)`` is farther from ``e`` than any rounding):
    ``ValueError`` if ``ndtr`` were not monotone there.
    """
    edges = np.asarray(edges, dtype=float)
    lo, hi = np.full(len(edges), -40.0), np.full(len(edges), 40.0)  # ndtr: 0 ... 1
    for _ in range(100):  # bisection in float64
        mid = 0.5 * (lo + hi)
        above = ndtr(mid) >= edges
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
    t = hi.astype(dtype)
    low, high = np.array(-np.inf, dtype=dtype), np.array(np.inf, dtype=dtype)
    inner = edges > 0.0
    for _ in range(64):  # to the least value of the dtype that is above the edge
        short = ndtr(t.astype(float)) < edges
        below = np.nextafter(t, low)
        loose = inner & ~short & (ndtr(below.astype(float)) >= edges)
        if not (short.any() or loose.any()):
            break
        t = np.where(short, np.nextafter(t, high), np.where(loose, below, t))
    else:
        raise ValueError("no value of the dtype places a cell edge")
    t[~inner] = -np.inf
    up, down = t.copy(), t.copy()
    for _ in range(window):
        down = np.nextafter(down, low)
        if (ndtr(down[inner].astype(float)) >= edges[inner]).any() or (
                ndtr(up.astype(float)) < edges).any():
            raise ValueError("ndtr is not monotone around a cell edge")
        up = np.nextafter(up, high)
    return t


def _cells(z: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Cell index of each latent value, as the encoder's decode locates it."""
    return locate_cells(edges, ndtr(z))
