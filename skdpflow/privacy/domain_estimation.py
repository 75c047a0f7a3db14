"""Differentially private estimation of the parts of a domain that were not declared.

A column whose domain is not declared gets one from a single Gaussian release over all such
columns (one row touches one bucket or one key per column, so the L2 sensitivity of the
concatenated counts is ``sqrt(m)``; the accountant records the release as ``(z, 1.0, 1)``):

* **Numerical and datetime columns: bounds from a noisy histogram over a fixed public grid.**
  Numbers fall in logarithmic buckets ``[2^(k/4), 2^((k+1)/4))`` of either sign (a zero
  bucket in between, overflow into the outermost buckets); datetimes in calendar months from
  1900 to 2100 (overflow before and after). The grid does not depend on the data, so this is
  the Gaussian mechanism on a fixed histogram. The bounds are the outer edges of the lowest
  and highest buckets whose noisy count reaches ``tau_b = std * Phi^-1(1 - a / n_tests)``;
  sums over runs of 2, 4, 8 and 16 adjacent buckets are tested too, with ``std sqrt(W)`` in
  place of ``std`` (post-processing), so that mass spread thinly is still found; see
  ``_noisy_bounds`` for how a run sets a bound without widening it.
  Noise alone extends a bound with probability at most ``a = BOUNDS_FALSE_ALARM`` per
  column; rows beyond the bounds are clipped later, so an outlier never sets a bound.
* **Categorical columns: categories by thresholded noisy counts** (the "Gaussian sparse
  histogram" / partition selection of Korolova et al. 2009 and Wilkins et al. 2024). Only
  values that occur have a count; each gets discrete Gaussian noise, and a value is released
  iff its noisy count reaches ``tau_c = 2 + std * Phi^-1(1 - delta_s / m_c)``. The discrete
  Gaussian's tail obeys ``P[X >= k] <= Phi_c((k - 1) / std)`` for integers ``k >= 1`` (bound the
  sum by an integral shifted by one, and its normaliser by ``sqrt(2 pi) std`` from below), so
  a value held by a single row is released with probability at most ``delta_s / m_c``; over
  the ``m_c`` categorical columns, at most ``delta_s``. Values below the threshold map to the
  public category :data:`OTHER`, which every estimated categorical column has. Values are
  counted by their canonical string (:func:`~skdpflow.domain.canonical`) and released as
  strings, so the type of a released category never depends on a row. How much of a column
  ends up in :data:`OTHER` is read later from the released marginals only (post-processing):
  ``<other>`` is sampled only when its noisy count there is significant
  (:mod:`skdpflow.marginals`), and a large noisy share is warned (:class:`OtherShareWarning`).
* **A bound estimate dominated by noise is refused.** When no bucket or run clears its
  threshold, the synthesizer raises :class:`DomainEstimateError` naming the columns (their
  kinds are schema) rather than use a bound chosen by noise; the error is a function of the
  release alone.

All counts are integers and get exact discrete Gaussian noise from the caller's
:class:`~skdpflow.privacy.randomness.PrivacyNoise` (its Rényi curve is the Gaussian one).

Privacy. Let ``D = D' + x``. Write ``M_r(D)`` for the release restricted to the keys present
in ``D'`` (it ignores the at most ``m_c`` keys only ``x`` holds). ``M_r(D)`` and ``M(D')`` are
the Gaussian mechanism on the same fixed key set with sensitivity ``sqrt(m)``: any
composition of RDP mechanisms built on it is ``(eps, delta_rdp)``-indistinguishable from the
same composition on ``M(D')``. ``M(D)`` equals ``M_r(D)`` unless a key of ``x`` crosses the
threshold, which has probability at most ``delta_s``; so for every event ``S``::

    P[A(D) in S]  <= e^eps P[A(D') in S] + delta_rdp + delta_s
    P[A(D') in S] <= e^eps P[A(D) in S]  + delta_rdp + e^eps delta_s

and the whole fit is ``(eps, delta_rdp + e^eps delta_s)``-DP. The synthesizer sets
``delta_s = SELECTION_DELTA_SHARE * delta * e^-eps_target`` and gives the accountant the
remaining ``delta_rdp``.

Nullability comes from the dtype alone (a float, object, datetime or pandas nullable column
may hold missing values; a numpy integer or bool column may not), and integer-ness likewise.
Booleans need no estimation. Nothing else of the data is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtri

from ..distributed import noisy_sum
from ..domain import (
    INT64_LIMIT,
    NS_PER_DAY,
    ColumnDomain,
    canonical,
    column_kind,
    timezone_name,
)
from .ledger import Release
from .randomness import PrivacyNoise

__all__ = [
    "BOUNDS_FALSE_ALARM",
    "DomainEstimateError",
    "DomainEstimateWarning",
    "OTHER",
    "OTHER_WARN_SHARE",
    "OtherShareWarning",
    "SELECTION_DELTA_SHARE",
    "DomainCounts",
    "DomainEstimate",
    "bounds_threshold",
    "category_threshold",
    "datetime_grid",
    "estimate_domain",
    "numeric_grid",
]

# The category that every estimated categorical column has for values below the threshold.
OTHER = "<other>"
# Chance, per column, that noise alone widens an estimated bound.
BOUNDS_FALSE_ALARM = 1e-3
# A released (noisy) share of ``<other>`` from which ``fit`` warns: the limit of 5%
# in the samples, with room for the flow's drift and the sampling error.
OTHER_WARN_SHARE = 0.02
# Share of delta reserved for the chance that category discovery releases one row's value.
SELECTION_DELTA_SHARE = 0.1
# Logarithmic grid: quarter octaves from 2^-16 to 2^64 on each side of a zero bucket.
_LOG_STEPS = np.arange(-64, 257) / 4.0
# Runs of adjacent buckets whose summed noisy counts are tested too; see _noisy_bounds.
GROUP_SIZES = (1, 2, 4, 8, 16)
_FIRST_MONTH, _LAST_MONTH = pd.Timestamp("1900-01-01"), pd.Timestamp("2100-01-01")


def numeric_grid() -> np.ndarray:
    """Bucket edges for numbers: ``-2^64 ... -2^-16, 2^-16 ... 2^64`` (zero bucket between)."""
    mags = np.exp2(_LOG_STEPS)
    return np.concatenate([-mags[::-1], mags])


def datetime_grid() -> np.ndarray:
    """Bucket edges for datetimes, in days since the epoch: months of 1900-2100, overflow."""
    months = pd.date_range(_FIRST_MONTH, _LAST_MONTH, freq="MS")
    inner = months.to_numpy(dtype="datetime64[ns]").astype(np.int64) / NS_PER_DAY
    lo = pd.Timestamp.min.ceil("D").value / NS_PER_DAY
    hi = pd.Timestamp.max.floor("D").value / NS_PER_DAY
    return np.concatenate([[lo], inner, [hi]])


def bounds_threshold(std: float, n_tests: int, false_alarm: float = BOUNDS_FALSE_ALARM
                     ) -> float:
    """Noisy count a bucket (or group) needs to count as occupied, ``n_tests`` tested."""
    if std == 0:
        return 0.5
    return float(std * -ndtri(false_alarm / n_tests))


def category_threshold(std: float, selection_delta: float, n_columns: int) -> float:
    """Noisy count a value needs to be released: a single row crosses w.p. delta_s / m_c."""
    if std == 0:
        return 0.5
    return float(2.0 + std * -ndtri(selection_delta / max(n_columns, 1)))


class DomainEstimateWarning(UserWarning):
    """A DP domain estimate falls short of the data: declare the domain or spend more.

    The base class of :class:`OtherShareWarning` (filter it to silence every such warning).
    """


class OtherShareWarning(DomainEstimateWarning):
    """Category discovery left a large noisy share of a column in ``<other>``.

    ``fit`` warns once, naming every estimated categorical column whose released (noisy)
    share of ``<other>`` is at least ``OTHER_WARN_SHARE`` (2%), with the share and the code
    to declare the categories (``Domain.draft(df[columns])``, reviewed). The shares come
    from the released marginals: post-processing, no statistic of the rows beyond them.
    """


class DomainEstimateError(ValueError):
    """The DP estimate of some bounds is dominated by noise: declare those columns.

    Raised by ``fit`` instead of falling back to a bound chosen by noise (no bucket's noisy
    count cleared its threshold: too few rows for the budget). The message names the
    columns and their kinds (schema) with the code to declare them, and quotes no value.
    """


def unreliable_bounds_message(columns: dict[str, ColumnDomain]) -> str:
    """Why ``fit`` refuses noise-chosen bounds, with the code to declare them.

    Names the columns and their kinds (schema, public); quotes no value of the data.
    """
    entries = []
    for name, col in columns.items():
        extra = ", 'integer': True" if col.type == "numerical" and col.integer else ""
        entries.append(f"{name!r}: {{'type': {col.type!r}, 'min': ..., 'max': ...{extra}}}")
    names = list(columns)
    return (f"The DP estimate of the bounds of {names} is dominated by noise (no bucket's "
            "noisy count cleared the threshold: too few rows for this budget), and bounds "
            "chosen by noise are refused. Declare them with values known without the data: "
            f"fit(df, domain={{{', '.join(entries)}}}) (or draft a file with "
            f"Domain.draft(df[{names}]).save('domain.yaml'), review it: it is read from the "
            "data, NOT private); or raise epsilon or domain_epsilon_fraction.")


def other_share_message(shares: dict[str, float], threshold: float) -> str:
    """The ``OtherShareWarning`` text: columns, noisy shares, the code to declare them.

    ``shares`` are released (noisy, post-processed) probabilities; ``threshold`` the noisy
    count a value needed to be released (public: it follows from the budget alone).
    """
    names = list(shares)
    listed = ", ".join(f"{name!r} {share:.0%}" for name, share in shares.items())
    example = names[0]
    return (f"Category discovery left a large share of rows in {OTHER!r} (noisy share in the "
            f"released marginals: {listed}): values held by fewer than about "
            f"{threshold:.0f} rows (noisy) are not released at this budget, and samples hold "
            f"the literal {OTHER!r} in their place. Declare these columns' categories (public "
            "facts are free): draft them with "
            f"Domain.draft(df[{names}]).save('domain.yaml'), review and edit the file (it is "
            "read from the data, NOT private), then fit(df, domain='domain.yaml'); or by hand, "
            f"one entry per column: domain={{{example!r}: {{'type': 'categorical', "
            "'categories': [...], 'other': 'other'}}; or raise epsilon or "
            "domain_epsilon_fraction.")


@dataclass
class DomainEstimate:
    """The estimated columns and the parameters of the one mechanism that produced them."""

    columns: dict[str, ColumnDomain]
    read: list[str]  # the columns whose rows the mechanism read (all but booleans)
    noise_multiplier: float  # noise std / l2_sensitivity
    l2_sensitivity: float  # sqrt(number of columns whose rows were read)
    selection_delta: float  # chance that one row's category is released (0 if none)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def touches_data(self) -> bool:
        return bool(self.read)

    def release(self, budget_share: float) -> Release:
        """The ledger's record of this mechanism."""
        return Release(
            name="domain estimation (discrete Gaussian, thresholded)",
            reads=f"bucket counts (bounds) and value counts (categories) of {len(self.read)} "
                  "undeclared column(s)",
            l2_sensitivity=self.l2_sensitivity, noise_multiplier=self.noise_multiplier,
            budget_share=budget_share, columns=list(self.read),
            details={"selection_delta": self.selection_delta})

    @property
    def unreliable(self) -> list[str]:
        """Columns where no bucket cleared the threshold (bounds are a noisy guess)."""
        return [c for c, i in self.info.items() if i.get("reliable") is False]


class DomainCounts:
    """The exact counts the estimate reads, accumulated chunk by chunk (:meth:`add`).

    Per read column: the bucket counts over the public grid (numerical, datetime) or the
    count of each canonical value (categorical). Kinds, integer-ness, nullability and time
    zones come from the dtypes of ``schema`` (rows are not read for them). Counting a table
    in chunks gives the counts of the whole table, so the estimate is the same.
    """

    def __init__(self, schema: pd.DataFrame, columns: list[str]) -> None:
        self.columns = list(columns)
        self.kinds = {name: column_kind(schema[name]) for name in columns}
        self.dtypes = {name: schema[name].dtype for name in columns}
        self.buckets: dict[str, np.ndarray] = {}
        self.values: dict[str, pd.Series] = {}
        for name, kind in self.kinds.items():
            if kind in ("numerical", "datetime"):
                grid = datetime_grid() if kind == "datetime" else numeric_grid()
                self.buckets[name] = np.zeros(len(grid) - 1, dtype=np.int64)
            elif kind == "categorical":
                self.values[name] = pd.Series(dtype=np.int64)

    def add(self, data: pd.DataFrame) -> None:
        """Count the rows of ``data`` (a chunk, with the schema's columns)."""
        for name, counts in self.buckets.items():
            grid = datetime_grid() if self.kinds[name] == "datetime" else numeric_grid()
            idx = np.clip(np.searchsorted(grid, _as_float(data[name]), side="right") - 1, 0,
                          len(counts) - 1)
            counts += np.bincount(idx, minlength=len(counts))
        for name, counts in self.values.items():
            found = data[name].dropna().astype(object).map(canonical).value_counts(sort=False)
            self.values[name] = (found if counts.empty else counts.add(found, fill_value=0)
                                 ).astype(np.int64)


def estimate_domain(
    data: pd.DataFrame,
    columns: list[str],
    noise_multiplier: float,
    selection_delta: float,
    noise: PrivacyNoise,
    false_alarm: float = BOUNDS_FALSE_ALARM,
    comm: Any = None,
    counts: DomainCounts | None = None,
) -> DomainEstimate:
    """Estimate the domain of ``columns`` of ``data`` with one Gaussian mechanism.

    Sensitivity: adding or removing one row changes, in each of the ``m`` read columns,
    exactly one bucket count (numerical, datetime; a missing value touches no bucket, which
    only lowers the change) or one value count (categorical) by 1. The concatenated count
    vector changes by at most ``sqrt(m)`` in L2 norm; the noise has standard deviation
    ``noise_multiplier * sqrt(m)`` on every coordinate. Category discovery adds the
    ``selection_delta`` term explained in the module docstring.

    Parameters
    ----------
    data : DataFrame holding the private rows (or, with ``counts``, their schema: the
        columns and dtypes).
    columns : the columns to estimate (their dtypes decide their kind).
    noise_multiplier : float
        Noise standard deviation divided by the sensitivity; 0 reads exact counts (only for
        a non-private run).
    selection_delta : float
        Total chance, over all categorical columns, that a value held by one row is
        released.
    noise : PrivacyNoise
        The caller's secret source (discrete Gaussian noise on every count).
    false_alarm : float
        Chance per column that noise alone widens a bound.
    comm : Communicator or None
        A distributed fit (:mod:`skdpflow.distributed`): ``data`` is this rank's shard,
        with the same dtypes on every rank. Each column's counts are summed over the ranks
        with the noise added once, by rank 0; a categorical column's counted values are
        first gathered from every rank (their union is the key set a single process would
        count: the values that occur).
    counts : DomainCounts or None
        The exact counts, already accumulated (a table read in chunks); None: counted here
        from ``data``.
    """
    if counts is None:
        counts = DomainCounts(data, columns)
        counts.add(data)
    kinds = counts.kinds
    read = [name for name in columns if kinds[name] != "boolean"]
    n_categorical = sum(kinds[name] == "categorical" for name in read)
    sensitivity = math.sqrt(len(read))
    std = noise_multiplier * sensitivity
    out, info = {}, {}
    for name in columns:
        dtype, kind = counts.dtypes[name], kinds[name]
        nullable = _dtype_nullable(dtype)
        if kind == "boolean":
            out[name] = ColumnDomain("boolean", nullable=nullable)
            info[name] = {"mechanism": "none (boolean dtype)"}
        elif kind == "categorical":
            tau = category_threshold(std, selection_delta, n_categorical)
            keys = _released_keys(counts.values[name], std, tau, noise, comm)
            out[name] = ColumnDomain("categorical", categories=keys + [OTHER],
                                     nullable=True, other=OTHER)
            info[name] = {"mechanism": "thresholded noisy value counts",
                          "threshold": tau, "released": len(keys)}
        else:
            grid = datetime_grid() if kind == "datetime" else numeric_grid()
            lo, hi, clear = _noisy_bounds(counts.buckets[name], grid, std, false_alarm, noise,
                                          zero_bucket=kind != "datetime", comm=comm)
            if kind == "datetime":  # the dtype's zone is schema: public
                zone = timezone_name(dtype)
                out[name] = ColumnDomain("datetime", min=_iso(lo, zone), max=_iso(hi, zone),
                                         nullable=True, timezone=zone)
            else:
                integer = pd.api.types.is_integer_dtype(dtype)
                if integer:  # rounded outward, within int64 (the grid reaches 2^64)
                    lo, hi = (min(max(v, -(INT64_LIMIT - 1)), INT64_LIMIT - 1)
                              for v in (math.floor(lo), math.ceil(hi)))
                out[name] = ColumnDomain("numerical", min=lo, max=hi, integer=integer,
                                         nullable=nullable)
            info[name] = {"mechanism": "noisy histogram over a public grid",
                          "buckets": len(grid) - 1, "group_sizes": list(GROUP_SIZES),
                          "reliable": clear}
    return DomainEstimate(out, read, noise_multiplier if read else 0.0, sensitivity,
                          selection_delta if n_categorical else 0.0, info)


def _dtype_nullable(dtype: Any) -> bool:
    if isinstance(dtype, np.dtype):
        return dtype.kind not in "biu"
    return True  # pandas extension dtypes (Int64, boolean, string, category) hold NA


def _as_float(series: pd.Series) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        if getattr(series.dt, "tz", None) is not None:
            series = series.dt.tz_convert(None)
        series = series.dropna()
        return series.to_numpy(dtype="datetime64[ns]").astype(np.int64) / NS_PER_DAY
    return pd.to_numeric(series, errors="coerce").dropna().to_numpy(dtype=float)


def _noisy_bounds(exact: np.ndarray, grid: np.ndarray, std: float, false_alarm: float,
                  noise: PrivacyNoise, zero_bucket: bool, comm: Any = None
                  ) -> tuple[float, float, bool]:
    """Bounds from the noisy bucket counts (``exact``: the counts before noise), and whether
    any count cleared its threshold.

    For each window size ``W`` in :data:`GROUP_SIZES`, the noisy counts are summed over
    every run of ``W`` adjacent buckets (post-processing: free; the sum's noise is
    ``std sqrt(W)``, so thinly spread mass still stands out). A window that clears its
    threshold says that about ``tau_W`` rows lie inside it: the lower bound is the *last*
    bucket of the lowest such window, the upper bound the *first* bucket of the highest, so
    at most about ``tau_W`` rows fall outside on each side (a DP quantile at rank
    ``tau_W``) and no bound is pushed out by a window's width. The false-alarm chance is
    split over every window tested. When nothing clears (too few rows for the noise), the
    bucket with the largest noisy count is returned with ``clear=False``: a guess dominated
    by noise, which the synthesizer refuses (:class:`DomainEstimateError`).
    """
    n_buckets = len(grid) - 1
    counts = noisy_sum(exact.astype(np.int64), lambda c: noise.discrete_gaussian(c, std),
                       comm, "bucket counts").astype(float)
    sizes = GROUP_SIZES if std > 0 else (1,)
    n_tests = sum(n_buckets - w + 1 for w in sizes)
    cumsum = np.concatenate([[0.0], np.cumsum(counts)])
    first, last = n_buckets, -1
    for w in sizes:
        sums = cumsum[w:] - cumsum[:-w]  # sums[i] = counts[i:i + w].sum()
        hits = np.flatnonzero(sums >= bounds_threshold(std * math.sqrt(w), n_tests,
                                                       false_alarm))
        if len(hits):
            lo_w, hi_w = int(hits[0]) + w - 1, int(hits[-1])
            if lo_w > hi_w:  # one window only: the mass is somewhere inside it
                lo_w, hi_w = hi_w, lo_w
            first, last = min(first, lo_w), max(last, hi_w)
    clear = last >= 0
    if not clear:
        if std == 0:  # nothing to read (every value missing)
            return (0.0, 0.0, False) if zero_bucket else (grid[n_buckets // 2],) * 2 + (False,)
        first = last = int(np.argmax(counts))
    lo, hi = float(grid[first]), float(grid[last + 1])
    if zero_bucket:  # the bucket around zero stands for 0 itself
        zero = n_buckets // 2
        lo = 0.0 if first == zero else lo
        hi = 0.0 if last == zero else hi
    return lo, hi, clear


def _released_keys(counts: pd.Series, std: float, tau: float,
                   noise: PrivacyNoise, comm: Any = None) -> list[str]:
    """The canonical strings whose noisy count reaches ``tau`` (``counts``: each canonical
    string's exact count, :class:`DomainCounts`).

    Values are counted by :func:`~skdpflow.domain.canonical` string and the strings are
    released, so ``1``, ``1.0``, ``True`` and ``"1"`` never depend on which one a row holds
    (Python's ``1 == 1.0 == True`` would otherwise let the first row pick the type).
    """
    keys = sorted(counts.index)
    if comm is not None:  # the values that occur on some rank, in the same order on all
        keys = sorted(set().union(*comm.all_gather_object(keys, "a column's values")))
        if not keys:
            return []
        counts = counts.reindex(keys, fill_value=0)
    noisy = noisy_sum(
        counts.loc[keys].to_numpy(dtype=np.int64) if keys else np.zeros(0, np.int64),
        lambda c: noise.discrete_gaussian(c, std), comm, "value counts")
    return [k for k, c in zip(keys, noisy) if c >= tau and k != OTHER]


def _iso(days: float, zone: str | None = None) -> str:
    """A bound in days since the epoch (UTC) as text; with a zone, as an explicit UTC time."""
    stamp = pd.Timestamp(int(round(days * NS_PER_DAY)))
    return str(stamp.tz_localize("UTC") if zone is not None else stamp)
