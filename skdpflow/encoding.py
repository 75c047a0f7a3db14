"""Encode a mixed-type table into cells of the unit cube, and decode back.

Two layers:

1. **Types (RDT).** An RDT ``HyperTransformer`` turns categories and booleans into integer
   codes (``OrderedLabelEncoder`` with the declared order), datetimes into timestamps
   (``UnixTimestampEncoder``) and numbers into floats (``FloatFormatter``), with a
   ``<column>.is_null`` indicator for nullable columns. It is fitted on a *public skeleton*
   frame built from the :class:`~skdpflow.domain.Domain` only, so no statistic of the
   private rows is stored in it (RDT would otherwise keep means, null rates, category
   frequencies, min/max and a seed hashed from the first values). RDT sees the columns
   under positional keys (``c0, c1, ...``) and the typed frame is keyed by
   ``(column, "value")`` and ``(column, "is_null")``, so no column name (``"a.is_null"``
   beside ``"a"``) can clash with another column's indicator.
2. **Shape (DP marginals).** Each encoded dimension maps a value to a cell ``[lo, hi]`` of
   ``[0, 1]`` from the noisy 1-way marginals (:mod:`skdpflow.marginals`): a category (or a
   point mass, or "missing") to an interval whose width is its noisy frequency; a number
   through its public-bound transform and its noisy CDF. Training draws ``u`` uniformly in
   the cell (dequantization) and feeds ``z = Phi^-1(u)`` to the flow, so the untrained
   identity flow already reproduces the released marginals.
"""

from __future__ import annotations

import copy
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import rdt
import torch
from rdt.transformers import FloatFormatter, OrderedLabelEncoder, UnixTimestampEncoder
from scipy.special import ndtr, ndtri

from .domain import INT64_LIMIT, NS_PER_DAY, ColumnDomain, Domain, canonical, public_dtype
from .marginals import (
    ATOM_THRESHOLD,
    ColumnMarginal,
    HistogramSpec,
    bin_index,
    histogram_spec,
)
from .transforms import column_transform

__all__ = ["TableEncoder", "TypeLayer"]

U_EPS = 1e-7  # keeps Phi^-1(u) finite
MIN_CONT_MASS = 1e-6  # keeps the numerical CDF strictly increasing
# What a declared boolean column reads, besides real booleans and the numbers 0 and 1:
# this text, after stripping spaces, in any case (the CLI reads CSV cells the same way).
BOOLEAN_TEXT = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
# The largest float64 below 2**63: a float at or above it overflows an int64 cast.
INT64_FLOAT_MAX = float(INT64_LIMIT - 1024)
# Integer columns with at most this many values: every value a code of one discrete dim.
MAX_CODED_INTEGERS = 32


class TypeLayer:
    """RDT set-up from a public domain: raw frame <-> numeric codes, and back.

    Both directions read the domain only: data values match categories by their
    :func:`~skdpflow.domain.canonical` string, whatever the frame's dtypes, and
    :meth:`reverse` gives each column the dtype of :func:`~skdpflow.domain.public_dtype`.
    """

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.hyper = rdt.HyperTransformer()
        self.keys = {name: f"c{i}" for i, name in enumerate(domain.columns)}
        sdtypes, transformers = {}, {}
        for name, col in domain.columns.items():
            key = self.keys[name]
            sdtypes[key], transformers[key] = _rdt_transformer(col)
        self.hyper.set_config({"sdtypes": sdtypes, "transformers": transformers})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.hyper.fit(domain.skeleton().rename(columns=self.keys))
        # Code -> category of each categorical or boolean column, as its RDT encoder maps it.
        self._categories = {}
        for name, col in domain.columns.items():
            if col.type in ("categorical", "boolean"):
                mapping = self.hyper.field_transformers[self.keys[name]].values_to_categories
                table = np.empty(len(mapping), dtype=object)
                table[:] = [mapping[k] for k in range(len(mapping))]
                self._categories[name] = table

    def clean(self, data: pd.DataFrame) -> pd.DataFrame:
        """Clip to declared bounds and check categories; never widens the domain."""
        out = {}
        problems = []
        for name, col in self.domain.columns.items():
            series = data[name]
            isna = series.isna().to_numpy()
            if isna.any() and not col.nullable:
                problems.append(f"column {name!r} has missing values but its domain says "
                                "nullable=False")
            if col.type == "numerical":
                lo, hi = col.numeric_bounds()
                values = pd.to_numeric(series, errors="coerce").astype(float)
                problems += _unreadable(name, values, isna, "numbers")
                values = values.clip(lo, hi)
                if col.integer:
                    values = values.round()
                out[name] = values
            elif col.type == "datetime":
                values = _parse_datetimes(series, col.timezone)
                problems += _unreadable(name, values, isna, "datetimes")
                lo, hi = col.datetime_bounds()
                out[name] = values.clip(lo, hi)
            elif col.type == "boolean":
                values = _parse_booleans(series)
                problems += _unreadable(name, values, isna,
                                        "booleans (true/false, yes/no or 1/0)")
                out[name] = values.where(~isna, np.nan)
            else:
                values = _match_categories(series, col)
                unknown = values.isna() & ~isna
                if unknown.any():
                    if col.other is not None:
                        values = values.where(~unknown, col.other)
                    else:
                        problems.append(f"column {name!r} has values outside its declared "
                                        "categories; add them to the domain, or declare an "
                                        "'other' category for them")
                out[name] = values.where(~isna, np.nan)
        if problems:
            from ._validation import InvalidDataError

            raise InvalidDataError(problems)
        return pd.DataFrame(out, index=data.index)

    def transform(self, data: pd.DataFrame) -> pd.DataFrame:
        """The typed frame: columns ``(name, "value")`` and, if nullable, ``(name, "is_null")``."""
        # A throw-away copy reads the private rows: RDT advances internal random states
        # while transforming, and the kept transformers must hold public state only.
        hyper = copy.deepcopy(self.hyper)
        clean = self.clean(data)
        clean.columns = [self.keys[name] for name in clean.columns]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            codes = hyper.transform(clean)
        out = {}
        for name, key in self.keys.items():
            out[(name, "value")] = codes[key].to_numpy()
            if f"{key}.is_null" in codes:
                out[(name, "is_null")] = codes[f"{key}.is_null"].to_numpy()
        return pd.DataFrame(out, index=codes.index)

    def reverse_columns(self, columns: dict[str, tuple[np.ndarray, np.ndarray | None]]
                        ) -> pd.DataFrame:
        """The raw frame from :meth:`TableEncoder.decode_columns`, without RDT.

        The same values and dtypes as ``reverse(encoder.decode(z))`` (a test compares them
        on every column kind), at a fraction of the cost: codes index the RDT encoder's own
        code-to-category table, numbers get their missing values, and each column goes
        through the same :func:`_restore_dtype`.
        """
        out = {}
        for name, col in self.domain.columns.items():
            values, is_null = columns[name]
            if col.type in ("categorical", "boolean"):
                table = self._categories[name]
                codes = np.clip(values, 0, len(table) - 1)
                raw = pd.Series(table[codes], dtype=object)
            else:
                if col.type == "datetime":  # as reverse() reads the typed frame: days, then ns
                    values = values / NS_PER_DAY * NS_PER_DAY
                if is_null is not None and is_null.any():
                    values = np.where(is_null, np.nan, values)
                raw = pd.Series(values, dtype=float)
            out[name] = _restore_dtype(raw, col)
        return pd.DataFrame(out)

    def reverse(self, codes: pd.DataFrame) -> pd.DataFrame:
        # Column by column: the HyperTransformer's whole-frame reverse copies the frame once
        # per column, which dominated sampling time.
        out = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, col in self.domain.columns.items():
                if col.type == "datetime":
                    # Not RDT's reverse: it rounds through a strftime format guessed from
                    # the skeleton's midnight-only bounds, which drops the time of day.
                    values, is_null = typed_column(codes, name, col)
                    raw = pd.Series(np.where(is_null, np.nan, values * NS_PER_DAY))
                else:
                    key = self.keys[name]
                    transformer = self.hyper.field_transformers[key]
                    own = pd.DataFrame({
                        out_key: codes[(name, "is_null" if out_key.endswith(".is_null")
                                        else "value")].to_numpy()
                        for out_key in transformer.get_output_columns()})
                    raw = transformer.reverse_transform(own)[key]
                out[name] = _restore_dtype(raw, col)
        return pd.DataFrame(out)


def _rdt_transformer(col: ColumnDomain) -> tuple[str, object]:
    generation = "from_column" if col.nullable else None
    if col.type in ("categorical", "boolean"):
        order = list(col.categories) + ([np.nan] if col.nullable else [])
        return "categorical", OrderedLabelEncoder(order=order)
    lo, hi = col.numeric_bounds()
    if col.type == "datetime":
        fill = (lo + hi) / 2 * NS_PER_DAY
        return "datetime", UnixTimestampEncoder(
            missing_value_replacement=fill, missing_value_generation=generation)
    return "numerical", FloatFormatter(
        missing_value_replacement=(lo + hi) / 2, missing_value_generation=generation)


def _unreadable(name: str, values: pd.Series, isna: np.ndarray, kind: str) -> list[str]:
    """A problem naming the column and counting its unreadable cells, never quoting them."""
    bad = int((values.isna().to_numpy() & ~isna).sum())
    return [f"column {name!r} has {bad} value(s) that are not {kind}"] if bad else []


def _match_categories(series: pd.Series, col: ColumnDomain) -> pd.Series:
    """Each value as the declared category with its canonical string (missing: NaN)."""
    lookup = {canonical(c): c for c in col.categories}
    keys = series.astype(object).map(canonical, na_action="ignore")
    return keys.map(lookup).astype(object)


def _parse_booleans(series: pd.Series) -> pd.Series:
    """Booleans by the documented rule, as ``True``/``False`` objects (unreadable: NaN).

    A real boolean; the number 0 or 1 (any numeric type); the text true/false, yes/no or
    1/0 in any case, spaces stripped. Never ``bool(value)``, which reads ``"False"`` and
    ``"no"`` as True.
    """
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype(object)
    return series.astype(object).map(_read_boolean, na_action="ignore").astype(object)


def _read_boolean(value: object) -> bool | None:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str):
        return BOOLEAN_TEXT.get(value.strip().lower())
    if isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    return None


def _parse_datetimes(series: pd.Series, timezone: str | None) -> pd.Series:
    """Datetimes as naive UTC (the internal form), unreadable cells as NaT.

    Values with a zone or an offset are converted; values without one are wall times in
    the column's ``timezone`` (taken as they are when it has none). DST-ambiguous wall
    times read as standard time, non-existent ones shift forward.
    """
    values = series
    if not pd.api.types.is_datetime64_any_dtype(series.dtype):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                values = pd.to_datetime(series, errors="coerce", format="mixed")
            except (ValueError, TypeError):  # naive and aware values mixed
                values = None
        if values is None or not pd.api.types.is_datetime64_any_dtype(values.dtype):
            # Several zones or offsets, or naive and aware values: one value at a time.
            stamps = series.astype(object).map(lambda v: _naive_utc(v, timezone))
            return pd.to_datetime(stamps).astype("datetime64[ns]")
    if values.dt.tz is None and timezone is not None:
        values = values.dt.tz_localize(timezone, ambiguous=np.zeros(len(values), dtype=bool),
                                       nonexistent="shift_forward")
    if values.dt.tz is not None:
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return values.astype("datetime64[ns]")


def _naive_utc(value: object, timezone: str | None) -> pd.Timestamp:
    """One value as a naive UTC timestamp (NaT when missing or unreadable)."""
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT
    if stamp is pd.NaT:
        return pd.NaT
    if stamp.tz is None and timezone is not None:
        stamp = stamp.tz_localize(timezone, ambiguous=False, nonexistent="shift_forward")
    if stamp.tz is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp


def _restore_dtype(series: pd.Series, col: ColumnDomain) -> pd.Series:
    """Decoded values (datetimes: naive UTC nanoseconds) in the dtype the domain gives the
    column, clipped to its declared bounds before the cast, so none can overflow it."""
    dtype = public_dtype(col)
    if col.type == "numerical" and col.integer:
        lo, hi = col.integer_bounds()
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
        values = np.clip(np.round(values), max(lo, -INT64_FLOAT_MAX), min(hi, INT64_FLOAT_MAX))
        out = pd.Series(values).astype(dtype)
        return out.clip(lo, hi)  # exact: float(hi) may round above an int64 bound
    if col.type == "numerical":
        lo, hi = col.numeric_bounds()
        return pd.to_numeric(series, errors="coerce").astype(float).clip(lo, hi).astype(dtype)
    if col.type == "datetime":
        lo, hi = (b.value for b in col.datetime_bounds())
        ns = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
        missing = np.isnan(ns)
        ns = np.clip(np.round(np.where(missing, 0.0, ns)), lo, min(hi, INT64_FLOAT_MAX))
        stamps = np.clip(ns.astype(np.int64), lo, hi).astype("datetime64[ns]")
        stamps[missing] = np.datetime64("NaT")
        values = pd.Series(stamps)
        if col.timezone is not None:
            values = values.dt.tz_localize("UTC").dt.tz_convert(col.timezone)
        return values.astype(dtype)
    return series.astype(dtype)


@dataclass
class _Dim:
    """One encoded dimension: a discrete code set, or a numerical CDF."""

    name: str
    edges: np.ndarray  # discrete: cumulative probabilities (len k+1); numerical: t-space edges
    cdf: np.ndarray | None = None  # numerical only: CDF at the t-space edges
    # discrete only: the code held by each cell, left to right (None: code k in cell k)
    order: np.ndarray | None = None

    @property
    def discrete(self) -> bool:
        return self.cdf is None

    def code_masses(self) -> np.ndarray:
        """Discrete only: each code's released mass (its cell's width), by code."""
        widths = np.diff(self.edges)
        return widths if self.order is None else widths[np.argsort(self.order)]


@dataclass
class _Codec:
    """How one column becomes dimensions: an optional mode dim and an optional value dim."""

    name: str
    col: ColumnDomain
    modes: list = field(default_factory=list)  # "value", atom values, "null"
    mode_dim: _Dim | None = None
    value_dim: _Dim | None = None
    integer: bool = False


class TableEncoder:
    """Maps the typed frame (RDT output) to cells in ``[0, 1]^D`` and back.

    Parameters
    ----------
    domain : Domain
    marginals : list of ColumnMarginal
        The released 1-way marginals, one per column, in domain order.
    """

    def __init__(self, domain: Domain, marginals: list[ColumnMarginal]) -> None:
        self.domain = domain
        self.codecs = [_make_codec(name, domain[name], m)
                       for name, m in zip(domain.columns, marginals)]
        self.dims: list[_Dim] = []
        for codec in self.codecs:
            self.dims += [d for d in (codec.mode_dim, codec.value_dim) if d is not None]

    @property
    def n_dims(self) -> int:
        return len(self.dims)

    def cells(self, typed: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cells ``[lo, hi]`` per row and dim, and log du/dx summed over point-valued dims."""
        n = len(typed)
        lows, highs, logjac = [], [], np.zeros(n)
        for codec in self.codecs:
            values, is_null = typed_column(typed, codec.name, codec.col)
            if codec.col.type in ("categorical", "boolean"):
                codes = np.asarray(values, dtype=np.int64)
                lo, hi = _interval(codec.mode_dim, codes)
                if codec.mode_dim is not None:
                    lows.append(lo)
                    highs.append(hi)
                continue
            mode = np.zeros(n, dtype=np.int64)
            for k, m in enumerate(codec.modes):
                if m == "null":
                    mode[is_null] = k
                elif m != "value":
                    mode[(values == m) & ~is_null] = k
            if codec.mode_dim is not None:
                lo, hi = _interval(codec.mode_dim, mode)
                lows.append(lo)
                highs.append(hi)
            if codec.value_dim is not None:
                is_value = np.array([m == "value" for m in codec.modes])[mode]
                lo, hi, lj = _numeric_cell(codec, values, is_value)
                lows.append(lo)
                highs.append(hi)
                logjac += lj
        if not lows:
            return np.zeros((n, 0)), np.zeros((n, 0)), logjac
        return np.stack(lows, 1), np.stack(highs, 1), logjac

    def decode(self, z: np.ndarray) -> pd.DataFrame:
        """Latent-space rows (``z = Phi^-1(u)``) to the typed frame that RDT reverses.

        The reference path (:meth:`TypeLayer.reverse` reads it); :meth:`decode_columns` with
        :meth:`TypeLayer.reverse_columns` give the same rows faster, without the frame.
        """
        out = {}
        for name, (values, is_null) in self.decode_columns(z).items():
            out[(name, "value")] = values
            if is_null is not None:
                out[(name, "is_null")] = is_null.astype(float)
        return pd.DataFrame(out)

    def decode_columns(self, z: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """Latent-space rows to ``{column: (values, is_null)}`` in the typed frame's units.

        ``values`` are category codes (int64) or numbers (floats; datetimes in nanoseconds);
        ``is_null`` is a boolean mask for the numerical and datetime columns that are
        nullable, else None.
        """
        z = np.asarray(z, dtype=float)
        n = len(z)
        # One contiguous row per dimension: searchsorted and interp then read no strided
        # column (Phi is elementwise, so the values are those of ndtr(z)[:, j]).
        u = ndtr(np.ascontiguousarray(z.T)) if z.size else np.zeros((z.shape[1], n))
        out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        j = 0
        for codec in self.codecs:
            name = codec.name
            if codec.col.type in ("categorical", "boolean"):
                if codec.mode_dim is not None:
                    codes = _codes(codec.mode_dim, u[j])
                    j += 1
                else:
                    codes = np.zeros(n, dtype=np.int64)
                out[name] = (codes, None)
                continue
            mode = np.zeros(n, dtype=np.int64)
            if codec.mode_dim is not None:
                mode = _codes(codec.mode_dim, u[j])
                j += 1
            lo, hi = codec.col.numeric_bounds()
            values = np.full(n, (lo + hi) / 2)
            if codec.value_dim is not None:
                d = codec.value_dim
                t = np.interp(u[j], d.cdf, d.edges)
                values = np.clip(column_transform(codec.col).inverse(t), lo, hi)
                if codec.integer:
                    values = np.clip(np.round(values), np.ceil(lo), np.floor(hi))
                j += 1
            is_null = np.zeros(n, dtype=bool)
            for k, m in enumerate(codec.modes):
                if m == "null":
                    is_null = mode == k
                elif m != "value":
                    values[mode == k] = m
            if codec.col.type == "datetime":
                values = values * NS_PER_DAY
            out[name] = (values, is_null if codec.col.nullable else None)
        return out


def typed_column(typed: pd.DataFrame, name: str, col: ColumnDomain
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One column of the typed frame as floats (datetimes in days) and its missing mask."""
    values = typed[(name, "value")].to_numpy(dtype=float)
    if col.type == "datetime":
        values = values / NS_PER_DAY
    null_col = (name, "is_null")
    is_null = (typed[null_col].to_numpy() > 0.5) if null_col in typed.columns else \
        np.zeros(len(values), dtype=bool)
    return values, is_null


def _make_codec(name: str, col: ColumnDomain, marginal: ColumnMarginal) -> _Codec:
    spec, probs = marginal.spec, marginal.probs
    if spec.kind == "discrete":
        dim = _discrete_dim(name, probs) if len(probs) > 1 else None
        return _Codec(name, col, mode_dim=dim)
    n_atoms = len(spec.atoms)
    p_null = probs[-1] if spec.nullable else 0.0
    p_atoms = probs[:n_atoms]
    p_bins = probs[n_atoms:len(probs) - int(spec.nullable)].copy()
    modes, mode_probs = ["value"], [0.0]
    atoms = []
    if len(spec.edges) == 0:  # constant column: its one value is a mode of its own
        modes, mode_probs = [float(spec.atoms[0])], [float(p_atoms[0])]
    else:
        unit = n_atoms == 0 and spec.integer
        candidates = (_unit_values(spec, col) if unit else spec.atoms)
        cand_probs = p_bins if unit else p_atoms
        coded = unit and len(candidates) <= MAX_CODED_INTEGERS
        if coded:  # every value its own code: no value dim
            modes, mode_probs = [], []
        for a, p in zip(candidates, cand_probs):
            if coded or p >= ATOM_THRESHOLD:
                atoms.append((float(a), float(p)))
            elif not unit:  # merge an unselected candidate back into its bin
                t = column_transform(col).forward(np.array([a]))[0]
                k = int(np.clip(np.searchsorted(spec.edges, t, side="right") - 1, 0,
                                len(p_bins) - 1))
                p_bins[k] += p
        if unit:
            for a, _ in atoms:
                p_bins[int(round(a - col.numeric_bounds()[0]))] = 0.0
        if not coded:
            mode_probs[0] = float(p_bins.sum())
        for a, p in atoms:
            modes.append(a)
            mode_probs.append(p)
    if spec.nullable:
        modes.append("null")
        mode_probs.append(float(p_null))
    codec = _Codec(name, col, modes=modes, integer=spec.integer)
    if len(modes) > 1:
        codec.mode_dim = _discrete_dim(f"{name}.mode", np.array(mode_probs))
    if len(spec.edges) and "value" in modes:
        mass = np.maximum(p_bins, 0.0)
        mass = mass / mass.sum() if mass.sum() > 0 else np.full(len(mass), 1 / len(mass))
        mass = mass + MIN_CONT_MASS
        cdf = np.concatenate([[0.0], np.cumsum(mass)])
        codec.value_dim = _Dim(f"{name}.value", spec.edges.astype(float), cdf / cdf[-1])
    return codec


def _unit_values(spec: HistogramSpec, col: ColumnDomain) -> np.ndarray:
    lo, _ = col.numeric_bounds()
    return lo + np.arange(len(spec.edges) - 1)




def _discrete_dim(name: str, probs: np.ndarray) -> _Dim:
    """A discrete dimension: its cells laid out from the most to the least frequent code,
    each as wide as its released mass (why: docs/design.md, "Shape")."""
    probs = np.maximum(np.asarray(probs, dtype=float), 1e-9)
    order = np.argsort(-probs, kind="stable")
    probs = probs[order]
    edges = np.concatenate([[0.0], np.cumsum(probs / probs.sum())])
    edges[-1] = 1.0
    return _Dim(name, edges, order=order)


def _interval(dim: _Dim | None, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if dim is None:
        return np.zeros(len(codes)), np.ones(len(codes))
    cells = codes if dim.order is None else np.argsort(dim.order)[codes]
    return dim.edges[cells], dim.edges[cells + 1]


def _codes(dim: _Dim, u: np.ndarray) -> np.ndarray:
    """The code of the cell holding each ``u``."""
    cells = locate_cells(dim.edges, u)
    return cells if dim.order is None else dim.order[cells]


def locate_cells(edges: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index of the cell ``[edges[k], edges[k + 1])`` holding each ``u`` (clipped to the
    cells): how a discrete dim's latent value is decoded."""
    return np.clip(np.searchsorted(edges, u, side="right") - 1, 0, len(edges) - 2)


def _numeric_cell(codec: _Codec, values: np.ndarray, is_value: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d, transform = codec.value_dim, column_transform(codec.col)
    n = len(values)
    lo, hi, logjac = np.zeros(n), np.ones(n), np.zeros(n)
    x = values[is_value]
    if codec.integer:
        lo[is_value] = _cdf(d, transform.forward(x - 0.5))
        hi[is_value] = _cdf(d, transform.forward(x + 0.5))
    else:
        t = transform.forward(x)
        u = _cdf(d, t)
        lo[is_value] = hi[is_value] = u
        k = np.clip(np.searchsorted(d.edges, t, side="right") - 1, 0, len(d.edges) - 2)
        density = (d.cdf[k + 1] - d.cdf[k]) / (d.edges[k + 1] - d.edges[k])
        logjac[is_value] = np.log(density) + transform.log_derivative(x)
    return lo, hi, logjac


def _cdf(d: _Dim, t: np.ndarray) -> np.ndarray:
    return np.interp(t, d.edges, d.cdf)


def dequantize(lo: Any, hi: Any, rng: Any) -> Any:
    """``z = Phi^-1(lo + w (hi - lo))``: a point of each cell, in latent space.

    ``w`` is uniform in [0, 1) (dequantisation), drawn from ``rng``, or 1/2 (the cell's
    midpoint, for scoring) when ``rng`` is None. ``u`` is kept in ``[U_EPS, 1 - U_EPS]`` so
    that ``z`` is finite.

    Parameters
    ----------
    lo, hi : ndarray or Tensor
        Cell bounds in ``[0, 1]``, shape ``(n, dims)``.
    rng : numpy Generator (arrays), torch.Generator (tensors: drawn on the generator's
        device, then moved) or None
    """
    if isinstance(lo, torch.Tensor):
        # Drawn where the seeded generator lives (CPU), then moved: the same draws anywhere.
        w = 0.5 if rng is None else torch.rand(lo.shape, generator=rng,
                                               dtype=lo.dtype).to(lo.device)
        return torch.special.ndtri((lo + w * (hi - lo)).clamp(U_EPS, 1 - U_EPS))
    w = 0.5 if rng is None else rng.random(lo.shape)
    return ndtri(np.clip(lo + w * (hi - lo), U_EPS, 1 - U_EPS))


def cell_log_volume(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Sum over cells of log(hi - lo), with point cells contributing 0."""
    width = hi - lo
    return np.where(width > 0, np.log(np.maximum(width, 1e-300)), 0.0).sum(1)


__all__ += ["dequantize", "cell_log_volume", "histogram_spec", "bin_index", "typed_column",
            "locate_cells"]
