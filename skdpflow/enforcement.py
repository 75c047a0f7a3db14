"""Declared rules enforced by construction: a deterministic repair of the decoded rows.

The rules of a domain (``Domain.constraints``, :mod:`skdpflow.constraints`) are public facts,
like the domain. :class:`Enforcer` applies them to rows the model has already produced: each
rule that a row breaks is repaired by a fixed map of that row alone, in declaration order,
for at most ``len(rules) + 1`` passes, never by rejection (which could loop):

- :class:`~skdpflow.constraints.FunctionOf`: the dependent := f(determinant). A numerical
  determinant holding a value the mapping lacks first moves to the nearest key (the smaller
  one on a tie).
- :class:`~skdpflow.constraints.ValueRange`: clipped into the range (and the column's
  bounds; to whole numbers inside it for an integer column).
- :class:`~skdpflow.constraints.Inequality`: the two values swapped, each then snapped into
  its own column (down to a whole number for the low column, up for the high one, clipped
  to its bounds). For a strict inequality a tie is broken by moving the high value up one
  step (1 for an integer column, the next float, 1 ns for datetimes) when its bounds allow,
  else the low value down one step.
- :class:`~skdpflow.constraints.Implication`: the then-column set to the value of
  ``then_values`` with the largest released 1-way mass (declared order on a tie).
- :class:`~skdpflow.constraints.FixedCombinations`: the combination replaced by the allowed
  one that changes the fewest columns; ties go to the largest product of released 1-way
  masses, then to declared order.

Missing values are left alone (a rule holds where one of its columns is missing), and every
value written is one of the domain's, in the column's public dtype.

Privacy: the repair reads the model's rows, the public rules and domain, and the released
1-way masses (``marginals_``, a DP release). It is post-processing of DP outputs and costs
no budget; no row of the private table is read, before, during or after ``fit``.

When rules are declared, :func:`check_rules` refuses rules that cannot all hold together
without looking at any data: an inequality or range that no value of the domain can keep,
and any probe row (built from the domain and the rules' own values only: every combination
of the values involved, up to ``MAX_PROBE_ROWS`` per group of linked columns) that the
repair cannot bring to keep every rule. A conflict found only in a sampled row raises
:class:`RuleConflictError`: a breaking row is never returned.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from .constraints import (
    FixedCombinations,
    FunctionOf,
    Implication,
    Inequality,
    Rule,
    ValueRange,
    as_rules,
)
from .domain import ColumnDomain, Domain, canonical, public_dtype

__all__ = ["Enforcer", "RuleConflictError", "check_rules", "declared_rules", "released_mass"]

# Probe rows per group of columns linked by rules (every combination when there are fewer).
MAX_PROBE_ROWS = 50_000
# Rows of a breaking sample quoted by RuleConflictError.
QUOTED_ROWS = 3

Mass = Callable[[str, Any], float]


class RuleConflictError(ValueError):
    """The declared rules could not all be made to hold on some row."""


def declared_rules(domain: Domain, rules: Any) -> list[Rule]:
    """The rules of ``domain``, validated against it and checked together.

    Raises
    ------
    ValueError
        Naming the rule's position in the list: a bad rule, a column the domain does not
        declare, a value outside its column's domain; or rules that conflict.
    """
    rules = as_rules(rules)
    for i, rule in enumerate(rules, 1):
        try:
            rule.validate(domain)
        except ValueError as exc:
            raise ValueError(f"constraint {i}: {exc}") from None
    check_rules(domain, rules)
    return rules


def check_rules(domain: Domain, rules: list[Rule]) -> None:
    """Refuse rules that cannot all hold together (no data read: the domain and rules only).

    Raises
    ------
    ValueError
        An inequality whose low column's smallest value is not below (strict) or at most
        the high column's largest, a range holding no whole number of an integer column, or
        a probe row the repair cannot bring to keep every rule (naming the rules).
    """
    for rule in rules:
        if isinstance(rule, Inequality):
            lo, hi = _Axis(domain[rule.low]).lo, _Axis(domain[rule.high]).hi
            if lo > hi or (rule.strict and lo >= hi):
                raise ValueError(f"{rule!r} cannot hold: the smallest value of {rule.low!r} "
                                 f"is not {'below' if rule.strict else 'at most'} the largest "
                                 f"value of {rule.high!r} in the domain.")
        if isinstance(rule, ValueRange):
            lo, hi = _range(rule, _Axis(domain[rule.column]))
            if lo > hi:
                raise ValueError(f"{rule!r} holds no whole number within the bounds of the "
                                 f"integer column {rule.column!r}.")
    for group in _linked_groups(rules):
        probe = _probe(domain, rules, group)
        try:
            Enforcer(domain, [r for r in rules if set(r.columns) <= group])(probe)
        except RuleConflictError as exc:
            raise ValueError(f"The declared rules cannot all hold together: {exc}") from None


class Enforcer:
    """Repair rows so that they keep every rule (see the module docstring).

    Parameters
    ----------
    domain : Domain
        Holds every column the rules name; written values take its dtypes.
    rules : list of Rule, optional
        Default: ``domain.constraints``.
    mass : callable (column, value) -> float, optional
        The released 1-way mass of a value (ties in Implication and FixedCombinations);
        without it, declared order decides.
    """

    def __init__(self, domain: Domain, rules: list[Rule] | None = None,
                 mass: Mass | None = None) -> None:
        self.domain = domain
        self.rules = list(domain.constraints if rules is None else rules)
        self.mass = mass
        self.max_passes = len(self.rules) + 1
        self._chosen: dict[int, Any] = {}

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``frame`` whose rows keep every rule (``frame`` itself if no rule).

        Raises
        ------
        RuleConflictError
            Some rows still break a rule after the passes (quoting a few of those rows:
            they are the model's samples, not private rows).
        """
        if not self.rules or len(frame) == 0:
            return frame
        frame = frame.copy()
        for _ in range(self.max_passes):
            changed = False
            for rule in self.rules:
                bad = ~rule.satisfied(frame)
                if bad.any():
                    REPAIRS[type(rule)](self, rule, frame, bad)
                    changed = True
            if not changed:
                return frame
        broken = [(r, ~r.satisfied(frame)) for r in self.rules]
        broken = [(r, b) for r, b in broken if b.any()]
        if not broken:
            return frame
        columns = list(dict.fromkeys(c for r, _ in broken for c in r.columns))
        rows = frame.loc[broken[0][1], columns].head(QUOTED_ROWS).to_dict("records")
        raise RuleConflictError(
            f"after {self.max_passes} passes of repair, {int(broken[0][1].sum())} row(s) still "
            f"break {', '.join(repr(r) for r, _ in broken)}, e.g. {rows}. Each repair undoes "
            "another: declare rules that can all hold together (or reorder them so that "
            "later rules do not change the columns earlier ones set).")

    # -------------------------------------------------------------- repairs
    def _function_of(self, rule: FunctionOf, frame: pd.DataFrame, bad: np.ndarray) -> None:
        det_col, dep_col = self.domain[rule.determinant], self.domain[rule.dependent]
        if rule.mapping is not None:
            det = frame[rule.determinant]
            if det_col.type == "numerical":
                keys = np.array(sorted(float(k) for k in rule.mapping), dtype=float)
                values = pd.to_numeric(det, errors="coerce").to_numpy(dtype=float,
                                                                      na_value=np.nan)
                lacking = bad & ~np.isin(values, keys) & ~np.isnan(values)
                if lacking.any():
                    nearest = _nearest(keys, values[lacking])
                    _assign(frame, rule.determinant, lacking,
                            [_cell(det_col, v) for v in nearest])
                    det = frame[rule.determinant]
            by_key = {canonical(k): v for k, v in rule.mapping.items()}
            keys_of = _labels(det[bad])
            new = [_cell(dep_col, by_key[k]) for k in keys_of]
        else:
            values = _Axis(det_col).read(frame[rule.determinant])[0][bad]
            edges = np.asarray(rule.bins, dtype=float)
            index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0,
                            len(edges) - 2)
            new = [_cell(dep_col, rule.labels[i]) for i in index]
        _assign(frame, rule.dependent, bad, new)

    def _value_range(self, rule: ValueRange, frame: pd.DataFrame, bad: np.ndarray) -> None:
        axis = _Axis(self.domain[rule.column])
        values = axis.read(frame[rule.column])[0][bad]
        lo, hi = _range(rule, axis)
        _assign(frame, rule.column, bad, axis.cells(np.clip(values, lo, hi)))

    def _inequality(self, rule: Inequality, frame: pd.DataFrame, bad: np.ndarray) -> None:
        low, high = _Axis(self.domain[rule.low]), _Axis(self.domain[rule.high])
        x = low.read(frame[rule.low])[0][bad]
        y = high.read(frame[rule.high])[0][bad]
        a = np.maximum(low.down(np.minimum(x, y)), low.lo)  # the low column's new value
        b = np.minimum(high.up(np.maximum(x, y)), high.hi)  # the high column's
        if rule.strict:
            tie = a >= b
            raise_high = tie & (high.step_up(b) <= high.hi)
            b = np.where(raise_high, high.step_up(b), b)
            a = np.where(tie & ~raise_high, low.step_down(a), a)
        _assign(frame, rule.low, bad, low.cells(a))
        _assign(frame, rule.high, bad, high.cells(b))

    def _implication(self, rule: Implication, frame: pd.DataFrame, bad: np.ndarray) -> None:
        key = id(rule)
        if key not in self._chosen:
            scores = [self._mass(rule.then_column, v) for v in rule.then_values]
            self._chosen[key] = rule.then_values[int(np.argmax(scores))]  # first on a tie
        value = _cell(self.domain[rule.then_column], self._chosen[key])
        _assign(frame, rule.then_column, bad, [value] * int(bad.sum()))

    def _fixed_combinations(self, rule: FixedCombinations, frame: pd.DataFrame,
                            bad: np.ndarray) -> None:
        allowed = [tuple(canonical(v) for v in combo) for combo in rule.allowed]
        weight = [math.prod(self._mass(c, v) for c, v in zip(rule.columns, combo))
                  for combo in rule.allowed]
        rows = list(zip(*(_labels(frame.loc[bad, c]) for c in rule.columns)))
        choice: dict[tuple, int] = {}
        for row in set(rows):
            changes = [sum(a != b for a, b in zip(row, combo)) for combo in allowed]
            # fewest changes, then largest released mass, then declared order
            choice[row] = min(range(len(allowed)),
                              key=lambda i: (changes[i], -weight[i], i))
        picked = [rule.allowed[choice[row]] for row in rows]
        for j, column in enumerate(rule.columns):
            col = self.domain[column]
            _assign(frame, column, bad, [_cell(col, combo[j]) for combo in picked])

    def _mass(self, column: str, value: Any) -> float:
        return 0.0 if self.mass is None else float(self.mass(column, value))


REPAIRS: dict[type, Callable] = {
    FunctionOf: Enforcer._function_of,
    ValueRange: Enforcer._value_range,
    Inequality: Enforcer._inequality,
    Implication: Enforcer._implication,
    FixedCombinations: Enforcer._fixed_combinations,
}


class _Axis:
    """A numerical or datetime column as a number line: floats, or int64 ns for datetimes
    (UTC, as the rules compare them), with its smallest and largest values."""

    def __init__(self, col: ColumnDomain) -> None:
        self.col = col
        self.times = col.type == "datetime"
        self.integer = col.type == "numerical" and col.integer
        if self.times:
            lo, hi = col.datetime_bounds()
            self.lo, self.hi = lo.value, hi.value
        elif self.integer:
            self.lo, self.hi = (float(v) for v in col.integer_bounds())
        else:
            self.lo, self.hi = col.numeric_bounds()

    def read(self, series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        from .constraints import _numbers, _times

        if self.times:
            values, missing, _ = _times(series)
            return values.view(np.int64), missing
        values, missing, _ = _numbers(series)
        return values, missing

    def down(self, v: np.ndarray) -> np.ndarray:
        return np.floor(v) if self.integer else v

    def up(self, v: np.ndarray) -> np.ndarray:
        return np.ceil(v) if self.integer else v

    def step_up(self, v: np.ndarray) -> np.ndarray:
        if self.times or self.integer:
            return v + 1
        return np.nextafter(v, np.inf)

    def step_down(self, v: np.ndarray) -> np.ndarray:
        if self.times or self.integer:
            return v - 1
        return np.nextafter(v, -np.inf)

    def cells(self, v: np.ndarray) -> list:
        if self.times:
            stamps = pd.to_datetime(np.asarray(v, dtype=np.int64), utc=True)
            stamps = (stamps.tz_convert(self.col.timezone) if self.col.timezone
                      else stamps.tz_localize(None))
            return list(stamps)
        if self.integer:
            return [int(x) for x in v]
        return [float(x) for x in v]


def _range(rule: ValueRange, axis: _Axis) -> tuple[float, float]:
    """The range of ``rule`` within the column's bounds (whole numbers for an integer one)."""
    lo, hi = axis.lo, axis.hi
    scale = _ns if rule.times else float
    if rule.low is not None:
        lo = max(lo, scale(rule.low))
    if rule.high is not None:
        hi = min(hi, scale(rule.high))
    if axis.integer:
        lo, hi = math.ceil(lo), math.floor(hi)
    return lo, hi


def _ns(value: Any) -> int:
    """A datetime as int64 ns since the epoch, UTC (naive values taken as UTC, as the
    rules compare them)."""
    from .constraints import _utc

    return int(_utc(value).as_unit("ns").value)


def _nearest(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The key nearest each value (the smaller on a tie); ``keys`` sorted."""
    right = np.clip(np.searchsorted(keys, values), 0, len(keys) - 1)
    left = np.clip(right - 1, 0, len(keys) - 1)
    take_left = np.abs(values - keys[left]) <= np.abs(keys[right] - values)
    return np.where(take_left, keys[left], keys[right])


def _labels(series: pd.Series) -> list[str]:
    from .metrics import labels

    return list(labels(series))


def _cell(col: ColumnDomain, value: Any) -> Any:
    """A declared value as the column holds it (the declared category object, in the
    column's public dtype)."""
    if col.categories is not None:
        by_key = {canonical(c): c for c in col.categories}
        return by_key[canonical(value)]
    if col.type == "datetime":
        stamp = pd.Timestamp(value)
        if col.timezone is not None:
            stamp = (stamp.tz_localize(col.timezone) if stamp.tzinfo is None
                     else stamp.tz_convert(col.timezone))
        return stamp
    return int(value) if col.integer else float(value)


def _assign(frame: pd.DataFrame, column: str, rows: np.ndarray, values: Any) -> None:
    """Write ``values`` into the masked ``rows`` of ``column``, keeping its dtype."""
    series = frame[column]
    cells = series.to_numpy(dtype=object, copy=True)
    holder = np.empty(int(rows.sum()), dtype=object)
    holder[:] = list(values)
    cells[rows] = holder
    frame[column] = pd.Series(cells, index=series.index, dtype=series.dtype,
                              name=series.name)


# --- declaration checks ---------------------------------------------------------------------

def _linked_groups(rules: list[Rule]) -> list[set[str]]:
    """Sets of columns linked through rules (connected components)."""
    groups: list[set[str]] = []
    for rule in rules:
        cols = set(rule.columns)
        touching = [g for g in groups if g & cols]
        for g in touching:
            groups.remove(g)
            cols |= g
        groups.append(cols)
    return groups


def _probe(domain: Domain, rules: list[Rule], group: set[str]) -> pd.DataFrame:
    """Rows of public values only: every combination of each column's probe values (or a
    fixed, seeded subset of ``MAX_PROBE_ROWS`` of them), in the domain's dtypes."""
    columns = [c for c in domain.columns if c in group]
    values = {c: _probe_values(domain[c], c, rules) for c in columns}
    total = math.prod(len(v) for v in values.values())
    if total <= MAX_PROBE_ROWS:
        rows = list(itertools.product(*(values[c] for c in columns)))
        cols = list(zip(*rows))
    else:  # public, fixed: no privacy noise involved
        rng = np.random.default_rng(0)
        cols = [[values[c][i] for i in rng.integers(0, len(values[c]), MAX_PROBE_ROWS)]
                for c in columns]
    return pd.DataFrame({c: pd.Series(list(v), dtype=object).astype(public_dtype(domain[c]))
                         for c, v in zip(columns, cols)})


def _probe_values(col: ColumnDomain, name: str, rules: list[Rule]) -> list:
    """A column's categories; or its bounds, its midpoint and every value the rules name
    for it (each with its neighbours one step away), within its bounds."""
    if col.categories is not None:
        return [_cell(col, c) for c in col.categories]
    axis = _Axis(col)
    middle = axis.lo + (axis.hi - axis.lo) // 2 if axis.times else (axis.lo + axis.hi) / 2
    points = {axis.lo, axis.hi, middle}
    for rule in rules:
        points.update(_named_points(rule, name, axis))
    if axis.integer:
        points = {float(math.floor(p)) for p in points}
    near = set()
    for p in points:  # python ints for datetimes (ns): exact steps
        near.update((p, axis.step_up(p), axis.step_down(p)))
    inside = sorted(p for p in near if axis.lo <= p <= axis.hi)
    return axis.cells(np.asarray(inside, dtype=np.int64 if axis.times else float))


def _named_points(rule: Rule, name: str, axis: _Axis) -> list:
    """Values a rule names for column ``name``, on the column's number line."""
    def line(value: Any) -> Any:
        return _ns(value) if axis.times else float(value)

    out: list[Any] = []
    if isinstance(rule, ValueRange) and rule.column == name:
        out += [b for b in (rule.low, rule.high) if b is not None]
    elif isinstance(rule, FunctionOf):
        if rule.determinant == name:
            out += list(rule.mapping) if rule.mapping is not None else [
                e for e in rule.bins if math.isfinite(e)]
        if rule.dependent == name:
            out += list(rule.mapping.values()) if rule.mapping is not None else rule.labels
    elif isinstance(rule, Implication):
        out += rule.if_values if rule.if_column == name else []
        out += rule.then_values if rule.then_column == name else []
    elif isinstance(rule, FixedCombinations) and name in rule.columns:
        j = rule.columns.index(name)
        out += [combo[j] for combo in rule.allowed]
    points = []
    for value in out:
        try:
            points.append(line(value))
        except (TypeError, ValueError):
            continue
    return points


def released_mass(marginals: list, domain: Domain) -> Mass:
    """The released 1-way mass of a value (its category's, or its bin's for a number), read
    from a fit's ``marginals_`` (a DP release): ``mass(column, value)``; 0 for a column
    without a marginal."""
    from .domain import NS_PER_DAY
    from .marginals import bin_index

    by_name = {m.spec.name: m for m in marginals}

    def mass(column: str, value: Any) -> float:
        marginal, col = by_name.get(column), domain[column]
        if marginal is None:
            return 0.0
        if marginal.spec.kind == "discrete":
            keys = [canonical(c) for c in col.categories]
            return float(marginal.probs[keys.index(canonical(value))])
        x = _ns(value) / NS_PER_DAY if col.type == "datetime" else float(value)
        index = bin_index(marginal.spec, np.array([x]), np.array([False]), col)[0]
        return float(marginal.probs[index])

    return mass
