"""SDV constraints read as skdpflow rules, where they mean a public rule.

SDV 2.0's ``sdv.cag`` objects (and SDV 1.x's ``{"constraint_class": ...,
"constraint_parameters": {...}}`` dicts, for the same kinds):

- ``Inequality(low, high, strict_boundaries)`` -> :class:`~skdpflow.constraints.Inequality`
  (SDV: ``high > low`` when strict, ``high >= low`` otherwise).
- ``Range(low, middle, high, strict_boundaries)`` -> two inequalities, ``low <= middle`` and
  ``middle <= high`` (strict as declared; SDV's default is strict).
- ``OneHotEncoding(column_names)`` -> :class:`~skdpflow.constraints.FixedCombinations` of
  the one-hot patterns (exactly one column holds 1, or True, the others 0, or False).

Refused, saying why and what to declare instead: SDV's ``FixedCombinations`` (it reads the
allowed combinations from the private rows), ``FixedIncrements`` (no rule kind says "a
multiple of k"), programmable constraints (code fitted on the rows), and any other kind.
"""

from __future__ import annotations

from typing import Any

from .constraints import FixedCombinations, Inequality, Rule
from .domain import Domain

__all__ = ["sdv_rules"]

# A column without public bounds or categories cannot take a rule.
UNDECLARED = ("declare its range in the metadata (range_min/range_max or range_values) or in "
              "domain=")


def sdv_rules(constraint: Any, domain: Domain) -> list[Rule]:
    """The skdpflow rules that mean what an SDV constraint means.

    Raises
    ------
    NotImplementedError
        For a constraint whose meaning is learned from the rows, or that no rule expresses
        (the message says how to declare the equivalent skdpflow rule, when there is one).
    ValueError
        A column of the constraint has no public domain.
    """
    kind, params = _kind_and_parameters(constraint)
    if kind == "Inequality":
        rules: list[Rule] = [Inequality(params["low_column_name"], params["high_column_name"],
                                        strict=bool(params.get("strict_boundaries", False)))]
    elif kind == "Range":
        strict = bool(params.get("strict_boundaries", True))
        low, middle, high = (params[f"{k}_column_name"] for k in ("low", "middle", "high"))
        rules = [Inequality(low, middle, strict=strict), Inequality(middle, high, strict=strict)]
    elif kind == "OneHotEncoding":
        rules = [_one_hot(list(params["column_names"]), domain)]
    else:
        raise NotImplementedError(_refusal(kind, params))
    for rule in rules:
        lacking = [c for c in rule.columns if c not in domain]
        if lacking:
            raise ValueError(f"SDV's {kind} names column(s) {lacking} without a public "
                             f"domain: {UNDECLARED}.")
    return rules


def _kind_and_parameters(constraint: Any) -> tuple[str, dict]:
    if isinstance(constraint, dict):  # SDV 1.x's dict form
        return (str(constraint.get("constraint_class")),
                dict(constraint.get("constraint_parameters") or {}))
    kind = type(constraint).__name__
    read = {
        "Inequality": {"low_column_name": "_low_column_name",
                       "high_column_name": "_high_column_name",
                       "strict_boundaries": "strict_boundaries"},
        "Range": {"low_column_name": "_low_column_name",
                  "middle_column_name": "_middle_column_name",
                  "high_column_name": "_high_column_name",
                  "strict_boundaries": "strict_boundaries"},
        "OneHotEncoding": {"column_names": "_column_names"},
        "FixedIncrements": {"column_name": "column_name", "increment_value": "increment_value"},
        "FixedCombinations": {"column_names": "column_names"},
    }.get(kind, {})
    return kind, {k: getattr(constraint, attr) for k, attr in read.items()
                  if hasattr(constraint, attr)}


def _one_hot(columns: list[str], domain: Domain) -> FixedCombinations:
    """Exactly one of ``columns`` holds its "one" (True, or 1), the others their "zero"."""
    lacking = [c for c in columns if c not in domain]
    if lacking:
        raise ValueError(f"SDV's OneHotEncoding names column(s) {lacking} without a public "
                         f"domain: {UNDECLARED}.")
    ones, zeros = [], []
    for name in columns:
        boolean = domain[name].type == "boolean"
        ones.append(True if boolean else 1)
        zeros.append(False if boolean else 0)
    allowed = [tuple(ones[j] if j == i else zeros[j] for j in range(len(columns)))
               for i in range(len(columns))]
    return FixedCombinations(columns, allowed)


def _refusal(kind: str, params: dict) -> str:
    if kind == "FixedCombinations":
        columns = params.get("column_names", ["a", "b"])
        return (f"SDV's FixedCombinations reads the allowed combinations of {columns} from "
                "the private rows, which the differential-privacy guarantee would not cover. "
                "If the combinations are public, declare them: "
                f"skdpflow.FixedCombinations({columns!r}, allowed=[...]) in "
                "domain={'columns': ..., 'constraints': [...]}.")
    if kind == "FixedIncrements":
        column, step = params.get("column_name", "x"), params.get("increment_value", "k")
        hint = (f"declare {column!r} with integer: true in the domain" if step == 1 else
                f"declare {column!r} as a categorical column whose categories are the "
                f"multiples of {step}, or as an integer column of {column!r} / {step}")
        return (f"SDV's FixedIncrements has no skdpflow rule of the same meaning (a multiple "
                f"of {step}); {hint}.")
    if kind in ("ProgrammableConstraint", "SingleTableProgrammableConstraint",
                "ProgrammableConstraintHarness"):
        return ("SDV's programmable constraints run code fitted on the private rows, which "
                "the differential-privacy guarantee would not cover; declare public rules "
                "instead (skdpflow.constraints: FixedCombinations, FunctionOf, Inequality, "
                "ValueRange, Implication) in domain={'columns': ..., 'constraints': [...]}.")
    return (f"SDV's {kind} is not accepted: only Inequality, Range and OneHotEncoding mean a "
            "public rule here. Declare the equivalent skdpflow rule (skdpflow.constraints) "
            "in domain={'columns': ..., 'constraints': [...]}.")
