"""The public domain of a table: what may be known about each column without the data.

A :class:`Domain` declares, per column, numeric or datetime bounds, whether the column is
integer, the list of categories, and whether values may be missing. Everything in it is
treated as **public**: it shapes the encoder without costing privacy budget. Columns left
out are estimated under DP by :mod:`skdpflow.privacy.domain_estimation`;
:meth:`Domain.from_data` reads a domain exactly from the data instead, which the
differential privacy guarantee does not cover (only with ``privacy="domain_from_data"``, or
to draft a domain by hand from data that is public anyway).
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import numbers
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ColumnDomain", "Domain", "DataDerivedDomainWarning", "canonical", "public_dtype",
           "timezone_name"]

KINDS = ("numerical", "categorical", "boolean", "datetime")
# Bounds with a spread above this (and a lower bound >= 0) get a log1p transform: heavy tails.
LOG_SPREAD = 1000.0
NS_PER_DAY = 86_400e9  # datetimes are handled as days since the epoch
# A fraction with many significant digits: a skeleton value that teaches no rounding.
_ODD_FRACTION = (math.sqrt(5) - 1) / 2
# Integer columns are sampled as int64: their bounds must be inside it (|x| < 2**63).
INT64_LIMIT = 2**63


class DataDerivedDomainWarning(UserWarning):
    """The domain was read from the private data: the guarantee excludes it."""


@dataclass
class ColumnDomain:
    """Public facts about one column.

    Parameters
    ----------
    type : {"numerical", "categorical", "boolean", "datetime"}
    min, max : float or str, optional
        Bounds of a numerical or datetime column (datetimes as ISO strings).
    integer : bool, default=False
        Numerical values are whole numbers.
    categories : list, optional
        Every value a categorical column may take.
    nullable : bool, default=False
        The column may hold missing values.
    transform : {"auto", "none", "log", "asinh"}, default="auto"
        Numerical only: ``"log"`` encodes ``log1p(x - min)``, ``"asinh"`` encodes
        ``asinh(x)`` (logarithmic in both directions from 0, for amounts of either sign);
        ``"auto"`` picks from the public bounds: ``"log"`` when ``min >= 0`` and
        ``max - min > 1000``, ``"asinh"`` when ``min < 0 < max`` and ``max - min > 1000``.
    other : optional
        Categorical only: the category that stands for every value outside ``categories``
        (appended to them if missing). Without it, a value outside the declared categories
        makes ``fit`` raise.
    timezone : str, optional
        Datetime only: the zone the column's values live in (``"UTC"``,
        ``"Europe/Paris"``, ``"+01:00"``); samples come back tz-aware in it. Bounds without
        an offset are wall times in this zone. ``None`` (default): naive datetimes.

    Raises
    ------
    ValueError
        For an invalid entry: unknown type, missing or crossed bounds, bounds whose spread
        is not a finite float, integer bounds outside int64, bad categories, an unknown
        time zone.
    """

    type: str
    min: Any = None
    max: Any = None
    integer: bool = False
    categories: list | None = None
    nullable: bool = False
    transform: str = "auto"
    other: Any = None
    timezone: str | None = None

    def __post_init__(self) -> None:
        if self.type not in KINDS:
            raise ValueError(f"Column type must be one of {KINDS}, got {self.type!r}.")
        if self.type in ("numerical", "datetime"):
            if self.min is None or self.max is None:
                raise ValueError(f"A {self.type} column needs both 'min' and 'max'.")
            self._check_bounds()
        if self.type == "categorical":
            if not self.categories:
                raise ValueError("A categorical column needs a non-empty 'categories' list.")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError("The 'categories' list has duplicates.")
            if any(_is_missing(c) for c in self.categories):
                raise ValueError(
                    "Declare missing values with 'nullable': true, not as a category.")
            if self.other is not None:
                if _is_missing(self.other):
                    raise ValueError("'other' must be a category, not a missing value.")
                if self.other not in self.categories:
                    self.categories = list(self.categories) + [self.other]
            _check_canonical_categories(self.categories)
        elif self.other is not None:
            raise ValueError("Only a categorical column can declare an 'other' category.")
        if self.type == "boolean":
            self.categories = [False, True]
        if self.transform not in ("auto", "none", "log", "asinh"):
            raise ValueError("transform must be 'auto', 'none', 'log' or 'asinh', got "
                             f"{self.transform!r}.")
        if self.timezone is not None and self.type != "datetime":
            raise ValueError("Only a datetime column can declare a 'timezone'.")

    def _check_bounds(self) -> None:
        if self.type == "datetime":
            _check_timezone(self.timezone)
        lo, hi = self.numeric_bounds()
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"Invalid bounds min={self.min!r}, max={self.max!r}.")
        if not math.isfinite(hi - lo):
            raise ValueError(f"The bounds min={self.min!r}, max={self.max!r} are too far apart "
                             "(max - min overflows a float).")
        if self.type == "numerical" and self.integer:
            if not all(abs(_exact(v)) < INT64_LIMIT for v in (self.min, self.max)):
                raise ValueError(f"An integer column is sampled as int64: its bounds must lie "
                                 f"within |x| < 2**63, got min={self.min!r}, max={self.max!r}.")
            lo, hi = self.integer_bounds()
            if lo > hi:
                raise ValueError(f"No integer lies between min={self.min!r} and "
                                 f"max={self.max!r}.")

    def numeric_bounds(self) -> tuple[float, float]:
        """Bounds as floats (datetimes in days since the epoch, UTC)."""
        if self.type == "datetime":
            lo, hi = self.datetime_bounds()
            return lo.value / NS_PER_DAY, hi.value / NS_PER_DAY
        return float(self.min), float(self.max)

    def integer_bounds(self) -> tuple[int, int]:
        """The smallest and largest integers within the bounds, exactly (not via float)."""
        return math.ceil(_exact(self.min)), math.floor(_exact(self.max))

    def datetime_bounds(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """Datetime bounds as exact naive UTC timestamps (the internal form of the values).

        A bound without an offset is a wall time in the column's ``timezone`` (naive when
        there is none); one with an offset is converted.
        """
        return _naive_utc(self.min, self.timezone), _naive_utc(self.max, self.timezone)

    def transform_kind(self) -> str:
        """``"none"``, ``"log"`` or ``"asinh"``: the declared one, or the public-bound rule."""
        if self.type != "numerical" or self.transform == "none":
            return "none"
        if self.transform != "auto":
            return self.transform
        lo, hi = self.numeric_bounds()
        if hi - lo <= LOG_SPREAD:
            return "none"
        return "log" if lo >= 0 else ("asinh" if hi > 0 else "none")

    def uses_log(self) -> bool:
        return self.transform_kind() == "log"

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if self.type == "boolean":
            out.pop("categories", None)
        if self.type != "numerical":
            out.pop("integer", None)
            out.pop("transform", None)
        if self.type in ("numerical", "datetime"):
            out.pop("categories", None)
        out = {k: _jsonable(v) for k, v in out.items()}
        return out


@dataclass
class Domain:
    """Public domain of a table: one :class:`ColumnDomain` per column, in column order.

    Parameters
    ----------
    columns : dict of {str: ColumnDomain}
    data_derived, estimated : tuple of str
        Set by ``fit``: the columns read from the data, or estimated under DP.
    constraints : list of Rule (or their dict forms), optional
        Public rules between the declared columns (:mod:`skdpflow.constraints`), enforced
        on every sampled row (:mod:`skdpflow.enforcement`). Declaring one asserts it is
        public, like the rest of the domain: it costs no budget and is never fitted on or
        checked against the private rows. Each is checked against the columns here
        (:meth:`~skdpflow.constraints.Rule.validate`), and rules that cannot all hold
        together are refused (:func:`~skdpflow.enforcement.check_rules`), when declared.

    Raises
    ------
    ValueError
        A bad rule (naming its position), a rule naming an undeclared column or a value
        outside its column's domain, or rules that conflict.
    """

    columns: dict[str, ColumnDomain] = field(default_factory=dict)
    data_derived: tuple[str, ...] = ()  # read from the data: not covered by the guarantee
    estimated: tuple[str, ...] = ()  # estimated by a DP mechanism (accounted)
    constraints: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.constraints:
            from .enforcement import declared_rules

            self.constraints = declared_rules(self, self.constraints)
        else:
            self.constraints = []

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Domain:
        """Build from the dict form: ``{column: {"type": ..., ...}}``, or, with rules,
        ``{"columns": {column: {...}}, "constraints": [rule, ...]}``.

        The two forms cannot be confused: a column entry's ``"type"`` is a string, where
        the ``"columns"`` mapping of the second form holds dicts only (a column may be
        called ``"columns"`` or ``"constraints"`` in either form).
        """
        if isinstance(spec, Domain):
            return spec
        if not isinstance(spec, dict):
            raise TypeError(f"A domain must be a Domain or a dict, got {type(spec).__name__}.")
        rules: Any = []
        if _is_nested(spec):
            rules = spec.get("constraints") or []
            if not isinstance(rules, list):
                raise ValueError(f"The domain's 'constraints' must be a list of rules, got "
                                 f"{type(rules).__name__}.")
            spec = spec["columns"]
        columns = {}
        for name, col in spec.items():
            if not isinstance(col, dict) or "type" not in col:
                raise ValueError(f"Domain entry for {name!r} must be a dict with a 'type' key.")
            columns[name] = _column(name, col)
        return cls(columns, constraints=rules)

    def to_dict(self) -> dict[str, Any]:
        """The dict form: ``{column: {...}}`` without rules (as before rules existed),
        ``{"columns": {column: {...}}, "constraints": [rule dict, ...]}`` with them."""
        columns = {name: col.to_dict() for name, col in self.columns.items()}
        if not self.constraints:
            return columns
        return {"columns": columns, "constraints": [r.to_dict() for r in self.constraints]}

    @classmethod
    def load(cls, path: str | Path) -> Domain:
        """Read the dict form from a JSON or YAML (``.yaml``/``.yml``) file.

        Raises
        ------
        ValueError or TypeError
            Naming the file (and the line, for a syntax error): malformed JSON/YAML, a key
            given twice, or an entry that is not a valid column domain.
        """
        from ._io import read_domain_spec

        spec = read_domain_spec(path)
        try:
            return cls.from_dict(spec)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"domain file {path}: {exc}") from None

    @classmethod
    def from_sdv_metadata(cls, metadata: Any, table_name: str | None = None) -> Domain:
        """Read the public facts an SDV ``Metadata`` declares for one table.

        ``range_min``/``range_max`` become bounds (``decimal_places == 0`` means integer),
        ``range_values`` the category list, ``range_is_nullable`` the missingness; a column
        without them is left out (to be declared otherwise, or estimated). Accepts a
        ``Metadata`` object, its ``to_dict()`` form, or a single-table (V1) dict.

        Only pass metadata whose ranges are public: SDV's ``detect_from_dataframes`` fills
        them in from the data, and nothing in the metadata marks them as detected.
        """
        spec = metadata.to_dict() if hasattr(metadata, "to_dict") else dict(metadata)
        if "tables" in spec:
            tables = spec["tables"]
            if table_name is None:
                if len(tables) != 1:
                    raise ValueError(f"The metadata has {len(tables)} tables; pass table_name.")
                table_name = next(iter(tables))
            spec = tables[table_name]
        columns = {}
        for name, col in spec.get("columns", {}).items():
            entry = _from_sdv_column(col)
            if entry is not None:
                columns[name] = _column(name, entry)
        return cls(columns)

    def save(self, path: str | Path) -> None:
        """Write the dict form, atomically (a failed write leaves no broken file).

        YAML for a ``.yaml``/``.yml`` path, JSON otherwise; :meth:`load` reads either back
        to the same domain. A domain read from the data (:meth:`draft`, :meth:`from_data`)
        starts with a comment (``#`` in YAML, ``//`` lines in JSON, which :meth:`load`
        skips) saying that it is not differentially private and that declaring it asserts
        its facts are public.
        """
        from ._io import atomic_write

        spec = self.to_dict()
        yaml_file = Path(path).suffix.lower() in (".yaml", ".yml")
        if yaml_file:
            import yaml

            body = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=99)
        else:
            body = json.dumps(spec, indent=2) + "\n"
        if self.data_derived:
            mark = "# " if yaml_file else "// "
            body = "".join(f"{mark}{line}".rstrip() + "\n"
                           for line in draft_header(self.data_derived)) + body
        atomic_write(path, lambda tmp: tmp.write_text(body, encoding="utf-8"))

    @classmethod
    def from_data(cls, data: pd.DataFrame, columns: list[str] | None = None) -> Domain:
        """Read bounds, categories and missingness from the data itself.

        This is **not** differentially private: the result depends on individual rows
        (the extreme values, every category that occurs). Use it only when those facts are
        public anyway, or to draft a domain to edit by hand.
        """
        columns = list(data.columns) if columns is None else columns
        empty = [name for name in columns if data[name].isna().all()]
        if empty:
            from ._validation import InvalidDataError

            raise InvalidDataError([
                f"column {name!r} is entirely missing: declare its domain (with "
                "nullable=True) or drop it" for name in empty])
        out = {}
        for name in columns:
            out[name] = _infer_column(data[name], name)
        return cls(out, data_derived=tuple(columns))

    @classmethod
    def draft(cls, data: pd.DataFrame, columns: list[str] | None = None, *,
              significant_digits: int | None = 1) -> Domain:
        """A domain read from the data, for the data holder to review, edit and declare.

        Like :meth:`from_data` (the kind from the dtype, integer-ness, every category that
        occurs, nullability from the missing values), with numerical bounds rounded
        outward to ``significant_digits`` of the larger magnitude (ages 17..95 become
        10..100 with one digit, a balance of -3,058..81,204 becomes -10,000..90,000) and
        datetime bounds to whole years, so that no bound copies the exact extreme of one
        row. Save it with :meth:`save` (``skdpflow domain draft data.csv -o domain.yaml``
        does both): the file starts with a comment saying what follows.

        This is **not** differentially private: every fact in the draft is read from the
        rows (a category held by one person names that person's value). Declaring it
        (``fit(domain=...)``) asserts that these facts are public, so review it first:
        widen the bounds to values known without the data (a census range, a form's
        limits), add categories that may occur, remove any that only the data could tell.

        Parameters
        ----------
        data : DataFrame
        columns : list of str, optional
            The columns to draft (default: all).
        significant_digits : int or None, default=1
            Digits kept by the outward rounding of numerical bounds; None keeps the exact
            extremes.

        Returns
        -------
        Domain
            Its ``data_derived`` names every drafted column (until it is saved and loaded
            back: a loaded file is a declaration).

        Examples
        --------
        >>> import pandas as pd
        >>> from skdpflow import Domain
        >>> df = pd.DataFrame({"age": [17, 38, 95], "job": ["admin.", "nurse", "admin."]})
        >>> age = Domain.draft(df)["age"]
        >>> age.min, age.max, age.integer
        (10, 100, True)
        >>> Domain.draft(df).save("domain.yaml")  # doctest: +SKIP
        """
        if significant_digits is not None and (
                isinstance(significant_digits, bool) or not isinstance(significant_digits,
                                                                        numbers.Integral)
                or significant_digits < 1):
            raise ValueError(f"significant_digits must be a positive int or None, got "
                             f"{significant_digits!r}.")
        exact = cls.from_data(data, columns)
        out = {name: _rounded_out(col, significant_digits)
               for name, col in exact.columns.items()}
        return cls(out, data_derived=exact.data_derived)

    def skeleton(self, dtypes: dict[str, Any] | None = None) -> pd.DataFrame:
        """A small frame of public values only: fit encoders on it, never on the rows.

        Each column holds its bounds and a value between them (with many significant
        digits, so that no rounding is learned from it; datetimes as naive UTC timestamps)
        or each of its categories, then a missing value when nullable; shorter columns
        repeat their values.

        Parameters
        ----------
        dtypes : dict of {str: dtype}, optional
            The dtype of each column, where a cast to it works (a table's own dtypes); by
            default floats for numbers, ``datetime64[ns]`` for datetimes, objects otherwise.

        Returns
        -------
        pandas.DataFrame
            One column per declared column, in order.
        """
        dtypes = dtypes or {}
        values = {name: _public_values(col, dtypes.get(name))
                  for name, col in self.columns.items()}
        size = max((len(v) for v in values.values()), default=0)
        return pd.DataFrame({
            name: _cast(pd.Series((v * size)[:size], dtype=object),
                        dtypes.get(name), self.columns[name].type)
            for name, v in values.items()})

    def __getitem__(self, name: str) -> ColumnDomain:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def __len__(self) -> int:
        return len(self.columns)


def _public_values(col: ColumnDomain, dtype: Any) -> list:
    """Bounds and a value between them, or the categories; then None when nullable."""
    if col.type in ("categorical", "boolean"):
        values = list(col.categories)
    elif col.type == "datetime":
        lo, hi = col.datetime_bounds()
        values = [lo, hi, lo + (hi - lo) / 2]
    elif col.integer:
        lo, hi = col.integer_bounds()
        values = [lo, hi, (lo + hi) // 2]
    else:
        lo, hi = col.numeric_bounds()
        values = [lo, hi, lo + (hi - lo) * _ODD_FRACTION]
    holds_null = dtype is None or not pd.api.types.is_integer_dtype(dtype)
    return values + ([None] if col.nullable and holds_null else [])


def _cast(series: pd.Series, dtype: Any, kind: str) -> pd.Series:
    if dtype is None:
        if kind == "datetime":
            return pd.to_datetime(series)
        return series.astype(float) if kind == "numerical" else series
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return series.astype(dtype)
        except (TypeError, ValueError):  # e.g. naive datetimes into a zoned dtype: keep
            return series


def canonical(value: Any) -> str:
    """The canonical string of a category value: what matches data to declared categories.

    ``"True"``/``"False"`` for a boolean; ``str(int(v))`` for an integral number (an int,
    or a float with no fractional part); ``repr(float(v))`` for any other real number; the
    string itself for a string; the ISO format for a datetime. So ``1``, ``1.0``,
    ``np.int64(1)`` and ``"1"`` are one category, whatever the column's dtype.

    Raises
    ------
    TypeError
        For any other kind of value.
    """
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    if isinstance(value, (datetime.datetime, np.datetime64)):
        return pd.Timestamp(value).isoformat()
    raise TypeError(f"a category must be a string, number, boolean or datetime, got "
                    f"{type(value).__name__}")


def public_dtype(col: ColumnDomain) -> Any:
    """The dtype of a column's samples, from its domain alone (never from the rows).

    Integer numerical: ``int64``, or pandas ``Int64`` if nullable; other numerical:
    ``float64``; boolean: ``bool``, or pandas ``boolean`` if nullable; datetime:
    ``datetime64[ns]``, or ``datetime64[ns, <timezone>]`` when the domain declares a zone;
    categorical: ``object``, holding the declared category objects.
    """
    if col.type == "numerical" and col.integer:
        return pd.Int64Dtype() if col.nullable else np.dtype(np.int64)
    if col.type == "numerical":
        return np.dtype(np.float64)
    if col.type == "boolean":
        return pd.BooleanDtype() if col.nullable else np.dtype(bool)
    if col.type == "datetime" and col.timezone is not None:
        return pd.DatetimeTZDtype("ns", col.timezone)
    if col.type == "datetime":
        return np.dtype("datetime64[ns]")
    return np.dtype(object)


def timezone_name(dtype: Any) -> str | None:
    """The zone of a datetime dtype as a name :class:`ColumnDomain` accepts (None if naive).

    The dtype is schema, hence public: an undeclared tz-aware column keeps its zone.
    """
    tz = getattr(dtype, "tz", None)
    if tz is None:
        return None
    for name in (getattr(tz, "key", None), getattr(tz, "zone", None), str(tz)):
        if isinstance(name, str):
            try:
                _check_timezone(name)
            except ValueError:
                continue
            return name
    raise ValueError(f"time zone {tz!r} has no name that pandas can read back")


def column_kind(series: pd.Series) -> str:
    """The kind of a column from its dtype alone (the schema is public)."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype):
        return "numerical"
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype):
        return "categorical"
    if dtype == object:
        return "categorical"
    raise TypeError(f"dtype {dtype} is not supported")


def _column(name: str, entry: dict[str, Any]) -> ColumnDomain:
    """One column's domain; its errors name the column."""
    try:
        return ColumnDomain(**entry)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Domain entry for {name!r}: {exc}") from None


def _check_canonical_categories(categories: list) -> None:
    """Two categories with one canonical string could not be told apart in the data."""
    try:
        keys = [canonical(c) for c in categories]
    except TypeError as exc:
        raise ValueError(f"The 'categories' list holds an unsupported value: {exc}.") from None
    clashes = sorted(k for k, n in Counter(keys).items() if n > 1)
    if clashes:
        raise ValueError(f"The 'categories' list has values with the same canonical string "
                         f"{clashes} (e.g. 1 and '1'): keep one of each.")


def _from_sdv_column(col: dict[str, Any]) -> dict[str, Any] | None:
    sdtype = col.get("sdtype")
    nullable = bool(col.get("range_is_nullable", False))
    if sdtype == "boolean":
        return {"type": "boolean", "nullable": nullable}
    if sdtype in ("categorical", "ordinal") and col.get("range_values"):
        return {"type": "categorical", "categories": list(col["range_values"]),
                "nullable": nullable}
    if sdtype in ("numerical", "datetime") and "range_min" in col and "range_max" in col:
        entry = {"type": sdtype, "min": col["range_min"], "max": col["range_max"],
                 "nullable": nullable}
        if sdtype == "numerical":
            entry["integer"] = col.get("decimal_places") == 0
        return entry
    return None


def _is_nested(spec: dict) -> bool:
    """The form with rules: only the keys "columns" and "constraints", and "columns" a
    mapping of column entries (a column *called* "columns" has a string "type")."""
    columns = spec.get("columns")
    return (isinstance(columns, dict) and set(spec) <= {"columns", "constraints"}
            and not isinstance(columns.get("type"), str))


def _is_sdv_single_table(spec: dict) -> bool:
    columns = spec.get("columns")
    return isinstance(columns, dict) and bool(columns) and all(
        isinstance(c, dict) and "sdtype" in c for c in columns.values())


def as_domain(domain: Any) -> Domain:
    """A :class:`Domain` from any accepted form: Domain, dict, file path, SDV Metadata."""
    if isinstance(domain, Domain):
        return domain
    if isinstance(domain, (str, Path)):
        return Domain.load(domain)
    if hasattr(domain, "to_dict") and not isinstance(domain, dict):
        return Domain.from_sdv_metadata(domain)
    if isinstance(domain, dict) and ("tables" in domain or "METADATA_SPEC_VERSION" in domain
                                     or _is_sdv_single_table(domain)):
        return Domain.from_sdv_metadata(domain)
    return Domain.from_dict(domain)


def _infer_column(series: pd.Series, name: str) -> ColumnDomain:
    kind = column_kind(series)
    nullable = bool(series.isna().any())
    values = series.dropna()
    if kind == "boolean" or (kind == "categorical" and _looks_boolean(values)):
        return ColumnDomain("boolean", nullable=nullable)
    if kind == "categorical":
        # One value per canonical string (the first seen): 1 and "1" are one category.
        cats = list({canonical(v): v for v in values.astype(object).iloc[::-1]}.values())
        try:
            cats = sorted(cats)
        except TypeError:
            cats = sorted(cats, key=str)
        return ColumnDomain("categorical", categories=[_jsonable(c) for c in cats],
                            nullable=nullable)
    if kind == "datetime":
        lo, hi = values.min(), values.max()
        return ColumnDomain("datetime", min=str(lo), max=str(hi), nullable=nullable,
                            timezone=timezone_name(series.dtype))
    numbers = values.to_numpy(dtype=float)
    integer = pd.api.types.is_integer_dtype(series.dtype) or bool(
        len(numbers) and np.all(numbers == np.round(numbers))
    )
    lo, hi = float(numbers.min()), float(numbers.max())
    if integer:  # exact: float(2**63 - 1) would round up out of int64
        lo, hi = (int(values.min()), int(values.max())) if pd.api.types.is_integer_dtype(
            series.dtype) else (int(lo), int(hi))
    return ColumnDomain("numerical", min=lo, max=hi, integer=integer, nullable=nullable)


def draft_header(columns: tuple[str, ...] | list[str]) -> list[str]:
    """The comment lines that open a saved domain read from the data."""
    return [
        "DRAFT domain read from the PRIVATE DATA (Domain.draft / skdpflow domain draft).",
        "It is NOT differentially private: the bounds, integer-ness, categories and",
        f"nullability of its {len(columns)} column(s) come from the rows themselves.",
        "Declaring it (fit(df, domain=...) or skdpflow fit --domain) asserts that every",
        "fact in it is PUBLIC. Review and edit it first: widen bounds to values known",
        "without the data, add categories that may occur, and remove any category or",
        "bound that only the data could tell (a rare value names the row that holds it).",
        "Optional public rules between columns (enforced on every sample, free of budget):",
        "nest the mapping below as {columns: <mapping>, constraints: [rule, ...]}; the",
        "rule kinds are in skdpflow.constraints, the format in docs/domain.md.",
        "",
    ]


def _rounded_out(col: ColumnDomain, digits: int | None) -> ColumnDomain:
    """The column with its bounds rounded outward: numbers to ``digits`` significant
    digits of the larger magnitude, datetimes to whole years."""
    if digits is None or col.type not in ("numerical", "datetime"):
        return col
    if col.type == "datetime":
        # Wall times in the column's zone (a bound without an offset is read as one).
        lo, hi = (pd.Timestamp(v).tz_localize(None) for v in (col.min, col.max))
        start = pd.Timestamp(year=lo.year, month=1, day=1)
        end = hi if hi.year >= pd.Timestamp.max.year else (
            pd.Timestamp(year=hi.year + 1, month=1, day=1)
            if hi != pd.Timestamp(year=hi.year, month=1, day=1) else hi)
        return replace(col, min=start.strftime("%Y-%m-%d"), max=end.strftime("%Y-%m-%d")
                       if end.time() == datetime.time(0) else str(end))
    magnitude = max(abs(col.min), abs(col.max))
    if magnitude == 0:
        return col
    exponent = math.floor(math.log10(magnitude)) - digits + 1
    if col.integer:
        exponent = max(exponent, 0)
    step = decimal.Decimal(1).scaleb(exponent)
    lo, hi = (_quantize(v, step, rounding) for v, rounding in
              ((col.min, decimal.ROUND_FLOOR), (col.max, decimal.ROUND_CEILING)))
    if col.integer:  # exact ints, within int64
        lo, hi = max(int(lo), -(INT64_LIMIT - 1)), min(int(hi), INT64_LIMIT - 1)
    else:
        lo, hi = float(lo), float(hi)
    return replace(col, min=lo, max=hi)


def _quantize(value: numbers.Real, step: decimal.Decimal, rounding: str) -> decimal.Decimal:
    """``value`` rounded to a multiple of ``step`` (a power of ten), exactly."""
    exact = decimal.Decimal(value if isinstance(value, numbers.Integral) else repr(float(value)))
    multiple = (exact / step).to_integral_value(rounding=rounding)
    return multiple * step


def _looks_boolean(values: pd.Series) -> bool:
    if values.dtype != object or len(values) == 0:
        return False
    return all(isinstance(v, (bool, np.bool_)) for v in values)


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _exact(value: Any) -> numbers.Real:
    """A bound as given when it is a number (ints stay exact), else read as a float."""
    return value if isinstance(value, numbers.Real) else float(value)


def _check_timezone(timezone: Any) -> None:
    if timezone is None:
        return
    if not isinstance(timezone, str):
        raise ValueError(f"'timezone' must be a zone name such as 'UTC' or 'Europe/Paris', "
                         f"got {type(timezone).__name__}.")
    try:
        pd.DatetimeTZDtype("ns", timezone)
    except Exception:  # pytz raises a KeyError subclass, others ValueError
        raise ValueError(f"Unknown time zone {timezone!r}.") from None


def _naive_utc(value: Any, timezone: str | None) -> pd.Timestamp:
    """A datetime bound as a naive UTC timestamp (naive values are wall times in the zone)."""
    stamp = pd.Timestamp(value)
    if stamp is pd.NaT:
        raise ValueError(f"Invalid datetime bound {value!r}.")
    if stamp.tz is None and timezone is not None:
        stamp = stamp.tz_localize(timezone, ambiguous=False, nonexistent="shift_forward")
    if stamp.tz is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.as_unit("ns")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, pd.Timestamp):
        return str(value)
    return value
