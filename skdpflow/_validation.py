"""Hyperparameter constraints and data checks, in one place (scikit-learn's way)."""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from sklearn.exceptions import NotFittedError

__all__ = [
    "N_JOBS",
    "Interval",
    "InvalidDataError",
    "NotFittedError",
    "Options",
    "as_records_frame",
    "check_columns",
    "check_parameter_names",
    "duplicate_names",
    "generate_invalid_values",
    "parameter_summaries",
    "validate_params",
]


class InvalidDataError(ValueError):
    """The training frame cannot be used; the message lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:  # one problem, one line
            super().__init__(f"The data cannot be used: {self.problems[0]}.")
            return
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"The data cannot be used:\n{lines}")


@dataclass(frozen=True)
class Interval:
    """A numeric range constraint: ``kind`` is ``Real`` or ``Integral``."""

    kind: type
    left: float | None
    right: float | None
    closed: str = "both"  # "left", "right", "both", "neither"
    allow_inf: bool = False

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.kind):
            return False
        if isinstance(value, Real) and math.isnan(value):
            return False
        if math.isinf(value) and value > 0 and self.allow_inf:
            return True
        left_ok = self.left is None or (
            value >= self.left if self.closed in ("left", "both") else value > self.left
        )
        right_ok = self.right is None or (
            value <= self.right if self.closed in ("right", "both") else value < self.right
        )
        return left_ok and right_ok

    def __str__(self) -> str:
        kind = "an int" if self.kind is Integral else "a float"
        lo = "-inf" if self.left is None else self.left
        hi = "inf" if self.right is None else self.right
        lb = "[" if self.closed in ("left", "both") and self.left is not None else "("
        rb = "]" if self.closed in ("right", "both") and self.right is not None else ")"
        extra = " or inf" if self.allow_inf else ""
        return f"{kind} in the range {lb}{lo}, {hi}{rb}{extra}"


@dataclass(frozen=True)
class Options:
    """A constraint to a fixed set of values."""

    values: frozenset

    def __contains__(self, value: Any) -> bool:
        try:
            return value in self.values
        except TypeError:
            return False

    def __str__(self) -> str:
        return "a value among " + "{" + ", ".join(sorted(repr(v) for v in self.values)) + "}"


class _NoneOr:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __contains__(self, value: Any) -> bool:
        return value is None or value in self.inner

    def __str__(self) -> str:
        return f"{self.inner} or None"


class _IntOrGenerator:
    """``random_state``: None, an int, or a numpy ``RandomState`` / ``Generator``."""

    def __contains__(self, value: Any) -> bool:
        import numpy as np

        if value is None or isinstance(value, (np.random.RandomState, np.random.Generator)):
            return True
        return isinstance(value, Integral) and not isinstance(value, bool) and value >= 0

    def __str__(self) -> str:
        return "an int >= 0, a numpy RandomState or Generator, or None"


def none_or(inner: Any) -> _NoneOr:
    return _NoneOr(inner)


class _AutoOr:
    """``"auto"`` (set by :mod:`skdpflow.schedule` from public facts) or a value of ``inner``."""

    def __init__(self, inner: Interval) -> None:
        self.inner = inner

    @property
    def kind(self) -> type:
        return self.inner.kind

    def __contains__(self, value: Any) -> bool:
        return (isinstance(value, str) and value == "auto") or value in self.inner

    def __str__(self) -> str:
        return f"'auto' or {self.inner}"


def auto_or(inner: Interval) -> _AutoOr:
    return _AutoOr(inner)


RANDOM_STATE = _IntOrGenerator()


class _NJobs:
    """``n_jobs`` (scikit-learn's meaning): None, or an int other than 0."""

    kind = Integral

    def __contains__(self, value: Any) -> bool:
        if value is None:
            return True
        return isinstance(value, Integral) and not isinstance(value, bool) and value != 0

    def __str__(self) -> str:
        return "an int other than 0 (-1: every usable core) or None"


N_JOBS = _NJobs()


def validate_params(owner: str, params: dict[str, Any], constraints: dict[str, Any]) -> None:
    """Raise a scikit-learn-style error for the first parameter outside its constraint."""
    for name, constraint in constraints.items():
        value = params[name]
        if value not in constraint:
            kind = TypeError if _is_type_error(value, constraint) else ValueError
            raise kind(
                f"The {name!r} parameter of {owner} must be {constraint}. Got {value!r} instead."
            )


def check_parameter_names(owner: str, names: Any, valid: Any) -> None:
    """Refuse names outside ``valid`` with scikit-learn's ``set_params`` message."""
    for name in names:
        if name not in valid:
            raise ValueError(f"Invalid parameter {name!r} for estimator {owner}. Valid "
                             f"parameters are: {sorted(valid)!r}.")


def generate_invalid_values(constraint: Any) -> list:
    """Values outside ``constraint``: past each bound, of the wrong type, None.

    scikit-learn's ``generate_invalid_param_val`` in spirit: the tests run every frontend
    (Python, SDV, command line) on these, so a new row of a constraint table is tested
    without writing its bad values by hand.
    """
    if isinstance(constraint, Interval):
        values: list = ["half", None]
        if constraint.kind is Integral:
            values.append(2.5)
        for bound, closed, step in ((constraint.left, ("left", "both"), -1),
                                    (constraint.right, ("right", "both"), 1)):
            if bound is not None:  # just past a closed bound; on and past an open one
                values += [bound + step] if constraint.closed in closed else [bound, bound + step]
        return values
    if isinstance(constraint, _AutoOr):
        return [v for v in generate_invalid_values(constraint.inner) if v != "half"] + ["Auto"]
    if isinstance(constraint, Options):
        return ["not-an-option", None, 2]
    if isinstance(constraint, _IntOrGenerator):
        return ["seed", -1, 2.5]
    if isinstance(constraint, _NJobs):
        return ["two", 0, 2.5, True]
    raise TypeError(f"no invalid values known for {constraint!r}")


def parameter_summaries(cls: type) -> dict[str, str]:
    """``{name: first sentence}`` of each entry of the numpydoc ``Parameters`` section."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    section = re.search(r"^Parameters\n-+\n(.*?)(?:^\S[^\n]*\n-+\n|\Z)", doc,
                        re.DOTALL | re.MULTILINE)
    summaries: dict[str, str] = {}
    name = None
    for line in (section.group(1) if section else "").splitlines():
        entry = re.match(r"^(\w+) :", line)
        if entry:
            name = entry.group(1)
            summaries[name] = ""
        elif name and line.strip():
            summaries[name] = f"{summaries[name]} {line.strip()}".strip()
    return {k: _first_sentence(re.sub(r":\w+:`~?([^`]+)`", r"\1", v.replace("``", "")))
            for k, v in summaries.items()}


def _first_sentence(text: str) -> str:
    end = re.search(r"\.(\s|$)", text)
    return text[:end.start() + 1] if end else text


def _is_type_error(value: Any, constraint: Any) -> bool:
    if isinstance(constraint, Interval):
        return isinstance(value, bool) or not isinstance(value, constraint.kind)
    if isinstance(constraint, Options):
        return not isinstance(value, str)
    if isinstance(constraint, _NJobs):
        return not isinstance(value, Integral) or isinstance(value, bool)
    return False


def as_records_frame(X: Any) -> Any:
    """A list of dicts as a DataFrame (one dict per row, as pandas reads it); else ``X``."""
    if isinstance(X, list) and X and all(isinstance(row, dict) for row in X):
        import pandas as pd

        return pd.DataFrame(X)
    return X


def duplicate_names(names: list) -> list:
    """The column names given more than once, each once, in order of first repeat."""
    seen: set = set()
    repeated: list = []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated


def check_columns(owner: str, names: list, expected: list) -> None:
    """Raise a ``ValueError`` naming the missing and the extra columns, if any."""
    missing = [c for c in expected if c not in names]
    extra = [c for c in names if c not in expected]
    if missing or extra:
        found = "; ".join(f"{what}: {cols}" for what, cols in
                          (("missing", missing), ("extra", extra)) if cols)
        raise ValueError(f"X has {len(names)} features, but {owner} is expecting "
                         f"{len(expected)} features as input ({found}).")
