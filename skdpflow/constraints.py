"""Rules between columns that the data holder declares: public facts of the schema.

A rule is a fact known without the data, like the domain (:mod:`skdpflow.domain`): "only
these combinations of ``race`` and ``sex`` occur", "``education-num`` is a function of
``education``", "a start date comes before its end date", "an age lies in [17, 90]",
"``relationship = Husband`` implies ``sex = Male``". Declaring one asserts it is public; no
rule is ever fitted on, estimated from or checked against the private rows by the
synthesizer, and it costs no privacy budget.

This module describes rules and **checks** them: :meth:`Rule.satisfied` says which rows of a
table keep a rule, :meth:`Rule.validate` checks a rule against a :class:`~skdpflow.Domain`,
and :func:`skdpflow.metrics.consistency` gives the share of rows keeping each rule (what
:func:`skdpflow.evaluate` reports for real and synthetic rows). Enforcing rules while
fitting and sampling is later work.

Conventions shared by every rule:

- **Missing values.** A row in which any column the rule names is missing keeps the rule: a
  rule says nothing about a missing value (the domain's ``nullable`` says whether one may
  occur).
- **Matching values.** Categories are matched by their canonical string
  (:func:`skdpflow.domain.canonical`): ``1``, ``1.0``, ``np.int64(1)`` and ``"1"`` are one
  value, as in the domain.
- **Comparing values.** :class:`Inequality` and :class:`ValueRange` compare numbers as
  floats and datetimes as timestamps in UTC (naive values taken as UTC); :class:`FunctionOf`
  with ``bins`` compares numbers. A cell that cannot be read as the rule's kind of value
  (text in a numerical column) breaks the rule. :class:`Inequality` compares datetimes when
  either column holds them, numbers when both do, and text columns as numbers or as ISO
  datetimes, whichever reads more of their cells.
- **Dict form.** :meth:`Rule.to_dict` gives plain lists, dicts, strings and numbers with a
  ``"kind"`` key; :meth:`Rule.from_dict` (and :func:`as_rules`, :func:`load_rules` for a
  YAML/JSON list) read it back to an equal rule.
"""

from __future__ import annotations

import datetime
import itertools
import math
import numbers
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from .domain import ColumnDomain, as_domain, canonical

__all__ = ["FixedCombinations", "FunctionOf", "Implication", "Inequality", "Rule", "ValueRange",
           "as_rules", "load_rules"]

# Items of a long list shown by a rule's repr before "...".
REPR_ITEMS = 4


class Rule:
    """A public rule between columns (base class; see the module docstring).

    Subclasses: :class:`FixedCombinations`, :class:`FunctionOf`, :class:`Inequality`,
    :class:`ValueRange`, :class:`Implication`.
    """

    kind: ClassVar[str] = ""
    # keys of the dict form besides "kind": required, then optional
    required: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[tuple[str, ...]] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the rule names, in declaration order."""
        raise NotImplementedError

    def satisfied(self, frame: pd.DataFrame) -> np.ndarray:
        """Which rows of ``frame`` keep the rule.

        Parameters
        ----------
        frame : DataFrame
            Holds (at least) the rule's :attr:`columns`.

        Returns
        -------
        ndarray of bool, shape (len(frame),)
            True where the row keeps the rule (always where one of the rule's columns is
            missing).

        Raises
        ------
        ValueError
            If ``frame`` is not a DataFrame or lacks a column of the rule (naming both).
        """
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"{self!r}: expected a pandas DataFrame, got "
                             f"{type(frame).__name__}.")
        lacking = [c for c in self.columns if c not in frame.columns]
        if lacking:
            raise ValueError(f"{self!r}: the table lacks column(s) {lacking}.")
        return np.asarray(self._satisfied(frame), dtype=bool)

    def validate(self, domain: Any) -> None:
        """Check the rule against a public domain.

        Every column the rule names must be declared, with a type the rule can use, and
        every value the rule names must lie in that column's declared categories or bounds.

        Parameters
        ----------
        domain : Domain, dict or path

        Raises
        ------
        ValueError
            Naming the rule and the column.
        """
        domain = as_domain(domain)
        for column in self.columns:
            if column not in domain:
                raise ValueError(f"{self!r}: column {column!r} is not in the domain.")
        self._validate(domain)

    def to_dict(self) -> dict[str, Any]:
        """The dict form (plain JSON/YAML data) with its ``"kind"``."""
        return {"kind": self.kind, **self._fields()}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Rule:
        """A rule from its dict form.

        Called on :class:`Rule`, any kind; on a subclass, only that kind.

        Raises
        ------
        ValueError
            For an unknown kind, a key missing or unknown, or a bad declaration.
        """
        if isinstance(spec, Rule) and isinstance(spec, cls):
            return spec
        if isinstance(spec, Rule):
            spec = spec.to_dict()  # another kind: refused below, naming it
        if not isinstance(spec, dict):
            raise ValueError(f"A rule must be a dict with a 'kind' key, got "
                             f"{type(spec).__name__}.")
        kinds = {k.kind: k for k in KINDS}
        kind = spec.get("kind")
        if kind not in kinds:
            raise ValueError(f"Unknown rule kind {kind!r}; the kinds are {sorted(kinds)}.")
        klass = kinds[kind]
        if cls is not Rule and klass is not cls:
            raise ValueError(f"{cls.__name__}.from_dict got a rule of kind {kind!r}.")
        fields = {k: v for k, v in spec.items() if k != "kind"}
        unknown = [k for k in fields if k not in klass.required + klass.optional]
        lacking = [k for k in klass.required if k not in fields]
        if unknown or lacking:
            raise ValueError(
                f"A {kind!r} rule takes the keys {list(klass.required + klass.optional)}"
                + (f"; unknown: {unknown}" if unknown else "")
                + (f"; missing: {lacking}" if lacking else "") + ".")
        return klass(**fields)

    def _fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def _satisfied(self, frame: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def _validate(self, domain: Any) -> None:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.to_dict() == self.to_dict()

    __hash__ = None  # mutable containers inside: compare, do not hash

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"

    def _describe(self) -> str:
        raise NotImplementedError


class FixedCombinations(Rule):
    """Only the listed combinations of values of these columns may occur.

    Parameters
    ----------
    columns : list of str
        Two or more distinct columns.
    allowed : list of tuples
        The combinations that may occur, one value per column, in the order of
        ``columns``. A row keeps the rule when its values (matched as canonical strings)
        form one of them, or when one of them is missing.

    Raises
    ------
    ValueError
        Fewer than two columns or a column given twice, an empty ``allowed``, a
        combination of the wrong length or given twice, a value that is missing or not a
        string, number, boolean or datetime.

    Examples
    --------
    >>> rule = FixedCombinations(["relationship", "sex"],
    ...                          [("Husband", "Male"), ("Wife", "Female")])
    >>> rule.satisfied(pd.DataFrame({"relationship": ["Husband", "Wife"],
    ...                              "sex": ["Male", "Male"]}))
    array([ True, False])
    """

    kind = "fixed_combinations"
    required = ("columns", "allowed")

    def __init__(self, columns: list[str], allowed: list[tuple]) -> None:
        self._columns = _column_names(columns, "columns", self)
        if len(self._columns) < 2:
            raise ValueError(f"FixedCombinations needs at least two columns, got "
                             f"{list(self._columns)} (declare one column's values in the "
                             "domain's categories).")
        if isinstance(allowed, (str, bytes, dict)) or not _is_list(allowed) or not allowed:
            raise ValueError("FixedCombinations needs a non-empty list 'allowed' of "
                             f"combinations of {list(self._columns)}, got {allowed!r}.")
        combos, seen = [], set()
        for combo in allowed:
            if not _is_list(combo) or len(combo) != len(self._columns):
                raise ValueError(f"FixedCombinations: each allowed combination needs "
                                 f"{len(self._columns)} values (one per column of "
                                 f"{list(self._columns)}), got {combo!r}.")
            values = tuple(_value(v, "an allowed value") for v in combo)
            key = tuple(canonical(v) for v in values)
            if key in seen:
                raise ValueError(f"FixedCombinations: the combination {combo!r} is given "
                                 "twice.")
            seen.add(key)
            combos.append(values)
        self.allowed = combos
        self._keys = seen

    @property
    def columns(self) -> tuple[str, ...]:
        return self._columns

    def _fields(self) -> dict[str, Any]:
        return {"columns": list(self._columns), "allowed": [list(c) for c in self.allowed]}

    def _satisfied(self, frame: pd.DataFrame) -> np.ndarray:
        keys, missing = zip(*(_keys(frame[c]) for c in self._columns))
        found = np.fromiter((combo in self._keys for combo in zip(*keys)), dtype=bool,
                            count=len(frame))
        return found | np.logical_or.reduce(missing)

    def _validate(self, domain: Any) -> None:
        for combo in self.allowed:
            for column, value in zip(self._columns, combo):
                _check_value(self, domain[column], column, value)

    def _describe(self) -> str:
        names = "(" + ", ".join(map(repr, self._columns)) + ")"
        items = [("(" + ", ".join(map(repr, c)) + ")") for c in self.allowed]
        return f"{names} in {_listing(items, '[', ']')}"


class FunctionOf(Rule):
    """A column that is a declared function of another.

    Either a ``mapping`` from each value of ``determinant`` to the value of ``dependent``
    (categories, or the values of a discrete numerical column), or numeric ``bins`` of
    ``determinant`` with one label each (an age band from an age).

    Parameters
    ----------
    determinant : str
        The column the value follows from.
    dependent : str
        The column whose value is declared.
    mapping : dict, optional
        ``{determinant value: dependent value}``; a list of ``[key, value]`` pairs is read
        the same way. A row whose determinant value the mapping lacks breaks the rule.
    bins : list of float, optional
        Increasing bin edges ``e0 < e1 < ... < ek`` (``-inf`` / ``inf`` allowed): a value
        ``x`` with ``e_i <= x < e_(i+1)`` takes ``labels[i]``; the last bin also holds
        ``ek``. A value outside ``[e0, ek]`` breaks the rule.
    labels : list, optional
        The dependent value of each bin (``len(bins) - 1`` of them; repeats allowed).

    Raises
    ------
    ValueError
        ``determinant`` and ``dependent`` the same column; both or neither of ``mapping``
        and ``bins``; ``labels`` without ``bins`` or of the wrong length; an empty mapping,
        a key that is not hashable or not a string, number, boolean or datetime, a key
        given twice (``1`` and ``"1"`` are one key); edges that are not increasing finite-or-
        infinite numbers.

    Examples
    --------
    >>> rule = FunctionOf("age", "age band", bins=[0, 18, 65, 120],
    ...                   labels=["minor", "adult", "senior"])
    >>> rule.satisfied(pd.DataFrame({"age": [17, 18, 70], "age band": ["minor"] * 3}))
    array([ True, False, False])
    """

    kind = "function_of"
    required = ("determinant", "dependent")
    optional = ("mapping", "bins", "labels")

    def __init__(self, determinant: str, dependent: str, mapping: Any = None, *,
                 bins: list[float] | None = None, labels: list | None = None) -> None:
        self.determinant, self.dependent = _column_names(
            [determinant, dependent], "determinant and dependent", self)
        if (mapping is None) == (bins is None):
            raise ValueError(f"FunctionOf({determinant!r} -> {dependent!r}) needs exactly one "
                             "of 'mapping' (for a categorical determinant) and 'bins' with "
                             "'labels' (for a numerical one).")
        self.mapping = self.bins = self.labels = None
        if mapping is not None:
            if labels is not None:
                raise ValueError("FunctionOf: 'labels' go with 'bins', not with 'mapping'.")
            self.mapping = _mapping(mapping)
            self._map = {canonical(k): canonical(v) for k, v in self.mapping.items()}
        else:
            self.bins = _edges(bins)
            if not _is_list(labels) or len(labels) != len(self.bins) - 1:
                raise ValueError(f"FunctionOf: {len(self.bins) - 1} bins need "
                                 f"{len(self.bins) - 1} 'labels', got {labels!r}.")
            self.labels = [_value(v, "a label") for v in labels]

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.determinant, self.dependent)

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"determinant": self.determinant, "dependent": self.dependent}
        if self.mapping is not None:
            plain = all(isinstance(k, str) for k in self.mapping)
            # JSON keys are strings: other keys travel as [key, value] pairs
            out["mapping"] = dict(self.mapping) if plain else [[k, v] for k, v in
                                                               self.mapping.items()]
        else:
            out["bins"], out["labels"] = list(self.bins), list(self.labels)
        return out

    def _satisfied(self, frame: pd.DataFrame) -> np.ndarray:
        dep, dep_missing = _keys(frame[self.dependent])
        if self.mapping is not None:
            det, det_missing = _keys(frame[self.determinant])
            expected = np.array([self._map.get(k) for k in det], dtype=object)
        else:
            values, det_missing, unreadable = _numbers(frame[self.determinant])
            edges = np.asarray(self.bins, dtype=float)
            index = np.searchsorted(edges, values, side="right") - 1
            index[values == edges[-1]] = len(edges) - 2  # the last bin is closed
            inside = (index >= 0) & (index < len(edges) - 1) & ~unreadable
            names = np.array([canonical(v) for v in self.labels] + [None], dtype=object)
            expected = names[np.where(inside, index, len(names) - 1)]
        return (expected == dep) | det_missing | dep_missing

    def _validate(self, domain: Any) -> None:
        det, dep = domain[self.determinant], domain[self.dependent]
        if self.mapping is not None:
            if det.type == "datetime":
                raise ValueError(f"{self!r}: a mapping needs a categorical, boolean or "
                                 f"numerical determinant; {self.determinant!r} is datetime.")
            for key, value in self.mapping.items():
                _check_value(self, det, self.determinant, key)
                _check_value(self, dep, self.dependent, value)
            if det.categories is not None:
                lacking = [c for c in det.categories if canonical(c) not in self._map]
                if lacking:
                    raise ValueError(f"{self!r}: the mapping lacks the declared value(s) "
                                     f"{lacking} of column {self.determinant!r} (rows holding "
                                     "them would always break the rule).")
            return
        if det.type != "numerical":
            raise ValueError(f"{self!r}: 'bins' need a numerical determinant; column "
                             f"{self.determinant!r} is {det.type}.")
        lo, hi = det.numeric_bounds()
        if not (self.bins[0] <= lo and hi <= self.bins[-1]):
            raise ValueError(f"{self!r}: the bins [{self.bins[0]}, {self.bins[-1]}] do not "
                             f"cover the declared bounds [{det.min}, {det.max}] of column "
                             f"{self.determinant!r}.")
        for label in self.labels:
            _check_value(self, dep, self.dependent, label)

    def _describe(self) -> str:
        head = f"{self.dependent!r} = f({self.determinant!r}): "
        if self.mapping is not None:
            items = [f"{k!r}: {v!r}" for k, v in self.mapping.items()]
            return head + _listing(items, "{", "}")
        edges = [_number_text(e) for e in self.bins]
        items = [f"[{a}, {b}{']' if i == len(self.labels) - 1 else ')'}: {label!r}"
                 for i, (a, b, label) in enumerate(zip(edges, edges[1:], self.labels))]
        return head + _listing(items, "", "")


class Inequality(Rule):
    """One numerical or datetime column is at most (or below) another.

    Parameters
    ----------
    low, high : str
        Two different columns; a row keeps the rule when ``low <= high`` (``low < high``
        with ``strict``).
    strict : bool, default=False

    Raises
    ------
    ValueError
        ``low`` and ``high`` the same column, ``strict`` not a bool.

    Examples
    --------
    >>> Inequality("start", "end").satisfied(pd.DataFrame({"start": [1, 3], "end": [2, 2]}))
    array([ True, False])
    """

    kind = "inequality"
    required = ("low", "high")
    optional = ("strict",)

    def __init__(self, low: str, high: str, strict: bool = False) -> None:
        self.low, self.high = _column_names([low, high], "low and high", self)
        if not isinstance(strict, (bool, np.bool_)):
            raise ValueError(f"Inequality: 'strict' must be true or false, got {strict!r}.")
        self.strict = bool(strict)

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.low, self.high)

    def _fields(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "strict": self.strict}

    def _satisfied(self, frame: pd.DataFrame) -> np.ndarray:
        a, b = frame[self.low], frame[self.high]
        read = _times if _compares_as_times(a, b) else _numbers
        (x, x_missing, x_bad), (y, y_missing, y_bad) = read(a), read(b)
        with np.errstate(invalid="ignore"):
            holds = x < y if self.strict else x <= y
        return (holds & ~x_bad & ~y_bad) | x_missing | y_missing

    def _validate(self, domain: Any) -> None:
        kinds = {c: domain[c].type for c in self.columns}
        for column, kind in kinds.items():
            if kind not in ("numerical", "datetime"):
                raise ValueError(f"{self!r}: column {column!r} is {kind}; an inequality "
                                 "needs numerical or datetime columns.")
        if len(set(kinds.values())) > 1:
            raise ValueError(f"{self!r}: column {self.low!r} is {kinds[self.low]} and column "
                             f"{self.high!r} is {kinds[self.high]}; compare like with like.")

    def _describe(self) -> str:
        return f"{self.low!r} {'<' if self.strict else '<='} {self.high!r}"


class ValueRange(Rule):
    """A numerical or datetime column stays within ``[low, high]``.

    Parameters
    ----------
    column : str
    low, high : float or datetime (ISO string), optional
        Inclusive bounds, at least one of them; both numbers or both datetimes.

    Raises
    ------
    ValueError
        Neither bound, a bound that is neither a finite number nor a datetime, a number and
        a datetime together, ``low > high``.

    Examples
    --------
    >>> ValueRange("age", 0, 120).satisfied(pd.DataFrame({"age": [-1, 30, None]}))
    array([False,  True,  True])
    """

    kind = "value_range"
    required = ("column",)
    optional = ("low", "high")

    def __init__(self, column: str, low: Any = None, high: Any = None) -> None:
        (self.column,) = _column_names([column], "column", self)
        if low is None and high is None:
            raise ValueError(f"ValueRange({column!r}) needs 'low', 'high' or both.")
        bounds = [b for b in (low, high) if b is not None]
        kinds = {_bound_kind(b) for b in bounds}
        if len(kinds) > 1:
            raise ValueError(f"ValueRange({column!r}): 'low' and 'high' must both be numbers "
                             f"or both datetimes, got {low!r} and {high!r}.")
        self.times = kinds == {"datetime"}
        self.low, self.high = (_plain_bound(b) for b in (low, high))
        if low is not None and high is not None and self._at(low) > self._at(high):
            raise ValueError(f"ValueRange({column!r}): low {low!r} is above high {high!r}.")

    def _at(self, bound: Any) -> Any:
        return _utc(bound) if self.times else float(bound)

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"column": self.column}
        out |= {k: v for k, v in (("low", self.low), ("high", self.high)) if v is not None}
        return out

    def _satisfied(self, frame: pd.DataFrame) -> np.ndarray:
        values, missing, bad = (_times if self.times else _numbers)(frame[self.column])
        holds = ~bad
        with np.errstate(invalid="ignore"):
            if self.low is not None:
                holds &= values >= self._scale(self.low)
            if self.high is not None:
                holds &= values <= self._scale(self.high)
        return holds | missing

    def _scale(self, bound: Any) -> Any:
        return _utc(bound).to_datetime64() if self.times else float(bound)

    def _validate(self, domain: Any) -> None:
        col = domain[self.column]
        wanted = "datetime" if self.times else "numerical"
        if col.type != wanted:
            raise ValueError(f"{self!r}: column {self.column!r} is {col.type}; these bounds "
                             f"need a {wanted} column.")
        lo, hi = (_utc(b) for b in col.datetime_bounds()) if self.times else \
            col.numeric_bounds()
        if (self.low is not None and self._at(self.low) > hi) or (
                self.high is not None and self._at(self.high) < lo):
            raise ValueError(f"{self!r}: the range lies outside the declared bounds "
                             f"[{col.min}, {col.max}] of column {self.column!r}.")

    def _describe(self) -> str:
        low = "" if self.low is None else f"{_number_text(self.low)} <= "
        high = "" if self.high is None else f" <= {_number_text(self.high)}"
        return f"{low}{self.column!r}{high}"


class Implication(Rule):
    """When one column holds one of some values, another holds one of some values.

    Parameters
    ----------
    if_column : str
    if_values : list
        Values of ``if_column`` (a single value is read as a list of one).
    then_column : str
        Another column.
    then_values : list
        Values ``then_column`` must hold in rows where ``if_column`` holds one of
        ``if_values``; other rows keep the rule whatever they hold.

    Raises
    ------
    ValueError
        The same column twice; an empty list or a value given twice; a value that is missing
        or not a string, number, boolean or datetime.

    Examples
    --------
    >>> rule = Implication("relationship", ["Husband"], "sex", ["Male"])
    >>> rule.satisfied(pd.DataFrame({"relationship": ["Husband", "Husband", "Wife"],
    ...                              "sex": ["Male", "Female", "Female"]}))
    array([ True, False,  True])
    """

    kind = "implication"
    required = ("if_column", "if_values", "then_column", "then_values")

    def __init__(self, if_column: str, if_values: Any, then_column: str,
                 then_values: Any) -> None:
        self.if_column, self.then_column = _column_names(
            [if_column, then_column], "if_column and then_column", self)
        self.if_values = _values(if_values, "if_values")
        self.then_values = _values(then_values, "then_values")

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.if_column, self.then_column)

    def _fields(self) -> dict[str, Any]:
        return {"if_column": self.if_column, "if_values": list(self.if_values),
                "then_column": self.then_column, "then_values": list(self.then_values)}

    def _satisfied(self, frame: pd.DataFrame) -> np.ndarray:
        a, a_missing = _keys(frame[self.if_column])
        b, b_missing = _keys(frame[self.then_column])
        when = np.isin(a, [canonical(v) for v in self.if_values])
        then = np.isin(b, [canonical(v) for v in self.then_values])
        return ~when | then | a_missing | b_missing

    def _validate(self, domain: Any) -> None:
        for column, values in ((self.if_column, self.if_values),
                               (self.then_column, self.then_values)):
            for value in values:
                _check_value(self, domain[column], column, value)

    def _describe(self) -> str:
        return (f"{self.if_column!r} in {_listing(list(map(repr, self.if_values)), '[', ']')}"
                f" -> {self.then_column!r} in "
                f"{_listing(list(map(repr, self.then_values)), '[', ']')}")


KINDS: tuple[type[Rule], ...] = (FixedCombinations, FunctionOf, Inequality, ValueRange,
                                 Implication)


def as_rules(rules: Any) -> list[Rule]:
    """A list of rules from a rule, its dict form, a list of either, or a file path.

    Raises
    ------
    ValueError
        For a bad rule, naming its position in the list.
    """
    if rules is None:
        return []
    if isinstance(rules, (str, Path)):
        return load_rules(rules)
    if isinstance(rules, (Rule, dict)):
        rules = [rules]
    if not _is_list(rules):
        raise ValueError(f"rules must be a list of rules (or of their dict forms), got "
                         f"{type(rules).__name__}.")
    out = []
    for i, rule in enumerate(rules, 1):
        try:
            out.append(Rule.from_dict(rule))
        except ValueError as exc:
            raise ValueError(f"rule {i}: {exc}") from None
    return out


def load_rules(path: str | Path) -> list[Rule]:
    """Read a JSON or YAML (``.yaml``/``.yml``) file holding a list of rule dicts.

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        No such file, or a folder.
    ValueError
        Naming the file: malformed JSON/YAML, not a list, or a bad rule (and its position).
    """
    from ._io import read_domain_spec

    spec = read_domain_spec(path, what="rules file")
    if not isinstance(spec, list):
        raise ValueError(f"rules file {path}: expected a list of rules, got "
                         f"{type(spec).__name__}.")
    try:
        return as_rules(spec)
    except ValueError as exc:
        raise ValueError(f"rules file {path}: {exc}") from None


# --- declarations ---------------------------------------------------------------------------

def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _column_names(names: list, what: str, rule: Any) -> tuple[str, ...]:
    kind = type(rule).__name__
    if isinstance(names, str) or not _is_list(names):
        raise ValueError(f"{kind}: {what} must be a list of column names, got {names!r}.")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{kind}: column names must be non-empty strings, got {name!r}.")
    if len(set(names)) < len(names):
        raise ValueError(f"{kind}: {what} name the same column twice ({list(names)}).")
    return tuple(names)


def _value(value: Any, what: str) -> Any:
    """A declared value as plain data (str, bool, int, float, ISO datetime string)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (datetime.datetime, datetime.date)) and not isinstance(
            value, pd.Timestamp):
        value = pd.Timestamp(value)
    if isinstance(value, pd.Timestamp):
        if pd.isna(value):
            value = None
        else:
            return value.isoformat()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"{what} is a missing value: rules never apply to missing values "
                         "(declare them with the domain's 'nullable').")
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}.")
        return float(value)
    raise ValueError(f"{what} must be a string, number, boolean or datetime, got "
                     f"{type(value).__name__} {value!r}.")


def _values(values: Any, what: str) -> list:
    if not _is_list(values):
        values = [values]
    if not values:
        raise ValueError(f"Implication: {what} is empty.")
    out = [_value(v, f"a value of {what}") for v in values]
    keys = [canonical(v) for v in out]
    if len(set(keys)) < len(keys):
        raise ValueError(f"Implication: {what} holds a value twice ({list(values)}).")
    return out


def _mapping(mapping: Any) -> dict:
    pairs = list(mapping.items()) if isinstance(mapping, dict) else mapping
    if not _is_list(pairs) or not pairs:
        raise ValueError(f"FunctionOf: 'mapping' must be a non-empty dict (or list of [key, "
                         f"value] pairs), got {mapping!r}.")
    out, seen = {}, set()
    for pair in pairs:
        if not _is_list(pair) or len(pair) != 2:
            raise ValueError(f"FunctionOf: each mapping entry needs a key and a value, got "
                             f"{pair!r}.")
        key, value = pair
        try:
            hash(key)
        except TypeError:
            raise ValueError(f"FunctionOf: mapping keys must be hashable values, got "
                             f"{type(key).__name__} {key!r}.") from None
        key = _value(key, "a mapping key")
        if canonical(key) in seen:
            raise ValueError(f"FunctionOf: the mapping key {key!r} is given twice (keys are "
                             "matched as canonical strings: 1 and '1' are one key).")
        seen.add(canonical(key))
        out[key] = _value(value, "a mapping value")
    return out


def _edges(bins: Any) -> list[float]:
    if not _is_list(bins) or len(bins) < 2:
        raise ValueError(f"FunctionOf: 'bins' must list at least two edges, got {bins!r}.")
    edges = []
    for e in bins:
        if isinstance(e, (bool, np.bool_)) or not isinstance(e, numbers.Real) or math.isnan(e):
            raise ValueError(f"FunctionOf: bin edges must be numbers, got {e!r}.")
        edges.append(int(e) if isinstance(e, numbers.Integral) else float(e))
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError(f"FunctionOf: bin edges must increase strictly, got {list(bins)}.")
    return edges


def _bound_kind(bound: Any) -> str:
    if isinstance(bound, (bool, np.bool_)):
        raise ValueError(f"ValueRange: a bound must be a number or a datetime, got {bound!r}.")
    if isinstance(bound, numbers.Real):
        if not math.isfinite(bound):
            raise ValueError(f"ValueRange: a bound must be finite, got {bound!r} (leave it "
                             "out for a one-sided range).")
        return "number"
    try:
        _utc(bound)
    except (ValueError, TypeError):
        raise ValueError(f"ValueRange: a bound must be a number or a datetime (ISO string), "
                         f"got {bound!r}.") from None
    return "datetime"


def _plain_bound(bound: Any) -> Any:
    if bound is None:
        return None
    if isinstance(bound, numbers.Real):
        return _value(bound, "a bound")
    return bound if isinstance(bound, str) else pd.Timestamp(bound).isoformat()


def _utc(value: Any) -> pd.Timestamp:
    """A datetime as a naive UTC timestamp (naive values taken as UTC)."""
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        raise ValueError(f"not a datetime: {value!r}")
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp


# --- domain checks --------------------------------------------------------------------------

def _check_value(rule: Rule, col: ColumnDomain, column: str, value: Any) -> None:
    """A declared value must be one the column's domain allows."""
    if col.categories is not None:
        if canonical(value) not in {canonical(c) for c in col.categories}:
            raise ValueError(f"{rule!r}: {value!r} is not a declared category of column "
                             f"{column!r}.")
        return
    if col.type == "datetime":
        try:
            stamp = _utc(value)
        except (ValueError, TypeError):
            raise ValueError(f"{rule!r}: {value!r} is not a datetime, as column {column!r} "
                             "is.") from None
        lo, hi = (_utc(b) for b in col.datetime_bounds())
        inside = lo <= stamp <= hi
    else:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{rule!r}: {value!r} is not a number, as column {column!r} is.")
        lo, hi = col.numeric_bounds()
        inside = lo <= value <= hi
        if col.integer and float(value) != int(value):
            raise ValueError(f"{rule!r}: {value!r} is not an integer, as column {column!r} is.")
    if not inside:
        raise ValueError(f"{rule!r}: {value!r} lies outside the declared bounds "
                         f"[{col.min}, {col.max}] of column {column!r}.")


# --- reading the rows -----------------------------------------------------------------------

def _keys(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Canonical strings of the cells (objects) and where they are missing."""
    from .metrics import labels

    return labels(series).to_numpy(dtype=object), series.isna().to_numpy()


def _numbers(series: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells as floats, where they are missing, where they are unreadable."""
    missing = series.isna().to_numpy()
    if pd.api.types.is_bool_dtype(series.dtype):
        values = series.astype(float)
    else:
        values = pd.to_numeric(series, errors="coerce")
    values = values.to_numpy(dtype=float, na_value=np.nan)
    return values, missing, np.isnan(values) & ~missing


def _times(series: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells as naive UTC ``datetime64[ns]``, where they are missing, where unreadable."""
    missing = series.isna().to_numpy()
    if _is_datetime(series):
        stamps = pd.to_datetime(series, utc=True)
    else:
        stamps = pd.to_datetime(series.astype(object).where(~missing), errors="coerce",
                                utc=True, format="ISO8601")
    values = stamps.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    return values, missing, np.isnat(values) & ~missing


def _is_datetime(series: pd.Series) -> bool:
    return pd.api.types.is_datetime64_any_dtype(series.dtype)


def _compares_as_times(a: pd.Series, b: pd.Series) -> bool:
    """Datetimes when either column holds them, numbers when both do; text columns by
    whichever reading leaves fewer cells unreadable (numbers on a tie)."""
    if _is_datetime(a) or _is_datetime(b):
        return True
    if all(pd.api.types.is_numeric_dtype(s.dtype) for s in (a, b)):
        return False
    return sum(_times(s)[2].sum() for s in (a, b)) < sum(_numbers(s)[2].sum() for s in (a, b))


# --- printing -------------------------------------------------------------------------------

def _listing(items: list[str], open_: str, close: str) -> str:
    if len(items) > REPR_ITEMS + 1:
        items = items[:REPR_ITEMS] + [f"... {len(items)} in all"]
    return open_ + ", ".join(items) + close


def _number_text(value: Any) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(
        value, float) else str(value)
