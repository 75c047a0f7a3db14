"""One differentially private release of every column's 1-way histogram.

The bins come from the public :class:`~skdpflow.domain.Domain` only. Each row falls in
exactly one bin of each of the ``m`` histograms, so adding or removing one row changes the
concatenated count vector by at most ``sqrt(m)`` in L2 norm. One discrete Gaussian mechanism
of scale ``z * sqrt(m)`` (:mod:`skdpflow.privacy.histograms`) releases all of them at once; the
ledger records it as one full-batch Gaussian step ``(z, 1.0, 1)``.

The noisy counts are post-processed (no privacy cost): the row count is estimated from
them (the exact count is never used), each histogram is divided by it and projected onto the
probability simplex, then mixed with a uniform floor so that every declared value keeps a
non-zero probability and every encoding map stays invertible: ``FLOOR_MASS`` of a numerical
column's marginal, ``DISCRETE_FLOOR_MASS`` of a categorical one's (its samples reproduce the
released masses, floor included, so a larger floor would put that much mass on values the
rows may not hold).

The one exception is a categorical column's ``other`` category (``<other>`` for an estimated
column: the values discovery did not release). It stands for no value of its own, so it is
sampled only when the release supports it: when its noisy count is below
``OTHER_MIN_STDS`` noise standard deviations it gets no mass and no floor (its share goes to
the other bins). The encoder still gives it a cell of width ``1e-9``
(``skdpflow.encoding``), so rows holding it encode, decode and score
(finite log-density), and samples practically never hold it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .domain import ColumnDomain
from .privacy.histograms import release_histograms
from .privacy.ledger import Release
from .privacy.randomness import PrivacyNoise
from .transforms import column_transform

__all__ = ["HistogramSpec", "ColumnMarginal", "histogram_spec", "release_marginals"]

# Share of each released marginal spread uniformly over its bins (keeps rare values alive):
# of a numerical column's bins, and of a categorical column's categories. At 0.01 the floor
# alone put 0.003-0.005 of 1-way TVD on an 11-value column of default_credit_card (24,000
# rows, epsilon 1) whose rows hold 5 of the values; 0.001 left the suite's quality, 2-way
# TVD and AUROC as they were (docs/benchmarks.md, "The categories' floor and the
# histograms' share").
FLOOR_MASS = 0.01
DISCRETE_FLOOR_MASS = 0.001
# A value holding at least this share of rows becomes a point mass with its own indicator.
ATOM_THRESHOLD = 0.2
# Integer columns with at most this many values get one bin per value.
MAX_UNIT_BINS = 100
# The ``other`` category keeps mass only when its noisy count reaches this many noise stds.
OTHER_MIN_STDS = 2.0


@dataclass
class HistogramSpec:
    """Public binning of one column: categories, or atoms plus bins in t-space."""

    name: str
    kind: str  # "discrete" or "numerical"
    n_categories: int = 0  # discrete: declared categories (null bin comes after them)
    nullable: bool = False
    atoms: np.ndarray | None = None  # numerical: candidate point masses (x values)
    edges: np.ndarray | None = None  # numerical: continuous bin edges in t-space
    integer: bool = False
    other: int | None = None  # discrete: the bin of the ``other`` category, if any

    @property
    def size(self) -> int:
        if self.kind == "discrete":
            return self.n_categories + int(self.nullable)
        return len(self.atoms) + max(len(self.edges) - 1, 0) + int(self.nullable)


def histogram_spec(name: str, col: ColumnDomain, n_bins: int = 32,
                   unit_bins: int = MAX_UNIT_BINS) -> HistogramSpec:
    """Bins for one column, from its public domain only: ``n_bins`` equal bins for a number
    (in its public transform), one bin per value for an integer column with at most
    ``unit_bins`` values."""
    if col.type in ("categorical", "boolean"):
        other = col.categories.index(col.other) if col.other is not None else None
        return HistogramSpec(name, "discrete", len(col.categories), col.nullable, other=other)
    lo, hi = col.numeric_bounds()
    integer = col.type == "numerical" and col.integer
    if hi == lo:
        return HistogramSpec(name, "numerical", nullable=col.nullable, atoms=np.array([lo]),
                             edges=np.array([]), integer=integer)
    if integer and hi - lo + 1 <= unit_bins:
        values = np.arange(lo, hi + 1)
        edges = column_transform(col).forward(np.append(values - 0.5, hi + 0.5))
        return HistogramSpec(name, "numerical", nullable=col.nullable, atoms=np.array([]),
                             edges=edges, integer=True)
    pad = 0.5 if integer else 0.0
    t_lo, t_hi = column_transform(col).forward(np.array([lo - pad, hi + pad]))
    edges = np.linspace(t_lo, t_hi, n_bins + 1)
    atoms = [lo, hi] + ([0.0] if lo < 0 < hi else [])
    if col.type == "datetime":
        atoms = []
    return HistogramSpec(name, "numerical", nullable=col.nullable,
                         atoms=np.array(sorted(set(atoms)), dtype=float), edges=edges,
                         integer=integer)


def bin_index(spec: HistogramSpec, values: np.ndarray, is_null: np.ndarray, col: ColumnDomain
              ) -> np.ndarray:
    """The bin of each row (values already clipped to the domain)."""
    n = len(values)
    if spec.kind == "discrete":
        idx = np.asarray(values, dtype=np.int64).copy()
        idx[is_null] = spec.n_categories
        return idx
    n_atoms = len(spec.atoms)
    idx = np.empty(n, dtype=np.int64)
    if len(spec.edges):
        t = column_transform(col).forward(values)
        inner = np.clip(np.searchsorted(spec.edges, t, side="right") - 1, 0,
                        len(spec.edges) - 2)
        idx[:] = n_atoms + inner
    else:
        idx[:] = 0
    for k, a in enumerate(spec.atoms):
        idx[values == a] = k
    if spec.nullable:
        idx[is_null] = spec.size - 1
    return idx


@dataclass
class ColumnMarginal:
    """Released (noisy, post-processed) 1-way marginal of one column."""

    spec: HistogramSpec
    probs: np.ndarray  # over the spec's bins, sums to 1
    noisy_counts: np.ndarray | None = None  # the mechanism's output, before post-processing


def release_marginals(
    specs: list[HistogramSpec],
    indices: list[np.ndarray],
    noise_multiplier: float,
    noise: PrivacyNoise,
    budget_share: float = 0.0,
    comm: Any = None,
    counts: list[np.ndarray] | None = None,
) -> tuple[list[ColumnMarginal], dict, Release]:
    """Release all histograms (:func:`~skdpflow.privacy.histograms.release_histograms`) and
    post-process them into marginals.

    Returns the marginals, a summary (histograms, bins, sensitivity, noise std, the noisy
    row count) and the ledger's record of the release. ``comm``: a distributed fit
    (:class:`~skdpflow.distributed.Communicator`), the counts summed over the shards.
    ``counts``: the exact bin counts, already accumulated over chunks (``indices`` is then
    ignored).
    """
    noisy, release = release_histograms(indices, [spec.size for spec in specs],
                                        noise_multiplier, noise, budget_share, comm, counts)
    n_hat = estimate_row_count(noisy)
    std = float(release.details["noise_std"])
    out = [ColumnMarginal(spec, _post_process(counts, n_hat, std, spec.other,
                                              DISCRETE_FLOOR_MASS if spec.kind == "discrete"
                                              else FLOOR_MASS), counts)
           for spec, counts in zip(specs, noisy)]
    info = {"histograms": len(specs), "bins": int(sum(s.size for s in specs)),
            "l2_sensitivity": release.l2_sensitivity, "noise_std": release.details["noise_std"],
            "n_rows_estimate": n_hat}
    return out, info, release


def estimate_row_count(noisy_counts: list[np.ndarray]) -> float:
    """The row count from noisy histograms (post-processing: no privacy cost).

    Every histogram sums to the row count plus noise whose variance grows with its number
    of bins, so the sums are averaged with weights ``1 / bins`` (the inverse-variance
    weights). Never below 1. With exact counts this is the exact row count.
    """
    if not noisy_counts:
        return 1.0
    sums = np.array([c.sum() for c in noisy_counts])
    weights = np.array([1.0 / len(c) for c in noisy_counts])
    return float(max(1.0, np.sum(weights * sums) / np.sum(weights)))


def _post_process(counts: np.ndarray, n: float, std: float = 0.0, other: int | None = None,
                  floor_mass: float = FLOOR_MASS) -> np.ndarray:
    """Noisy counts to probabilities: projected onto the simplex, mixed with the floor
    (``floor_mass`` of the marginal, uniform over the bins).

    An ``other`` bin whose noisy count is at most ``OTHER_MIN_STDS * std`` gets neither mass
    nor floor, unless no other bin has any mass.
    """
    probs = project_simplex(counts / n)
    floor = np.full(len(probs), 1.0 / len(probs))
    if other is not None and len(probs) > 1 and counts[other] <= OTHER_MIN_STDS * std:
        rest = probs.sum() - probs[other]
        if rest > 0:
            probs[other] = 0.0
            probs = probs / rest
            floor[other] = 0.0
            floor = floor / floor.sum()
    return (1.0 - floor_mass) * probs + floor_mass * floor


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (Duchi et al., 2008)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, len(v) + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1.0), 0.0)
