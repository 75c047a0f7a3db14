"""Monotone transforms of a numerical column, before its histogram and its encoding cells.

Each is a small object with ``forward`` (``x -> t``), ``inverse`` (``t -> x``) and
``log_derivative`` (``log dt/dx`` at ``x``), as zuko's transforms carry their value and
log-Jacobian together. Which one a column gets depends on its public domain alone
(:meth:`~skdpflow.domain.ColumnDomain.transform_kind`), so the choice leaks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .domain import ColumnDomain

__all__ = ["AsinhTransform", "ColumnTransform", "IdentityTransform", "ShiftedLogTransform",
           "column_transform"]

# Keeps log(x - lo + 1) finite for a value just below the bound (float rounding).
MIN_LOG_ARGUMENT = 1e-12


class ColumnTransform:
    """``t = f(x)``, monotone increasing; the identity unless a subclass says otherwise."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=float)

    def inverse(self, t: np.ndarray) -> np.ndarray:
        return np.asarray(t, dtype=float)

    def log_derivative(self, x: np.ndarray) -> np.ndarray:
        """``log f'(x)``, same shape as ``x``."""
        return np.zeros_like(np.asarray(x, dtype=float))


class IdentityTransform(ColumnTransform):
    """``t = x``."""


@dataclass(frozen=True)
class ShiftedLogTransform(ColumnTransform):
    """``t = log(x - lo + 1)`` (log1p from the public lower bound), for heavy tails."""

    lo: float

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.log(self._shifted(x))

    def inverse(self, t: np.ndarray) -> np.ndarray:
        return np.exp(t) + self.lo - 1.0

    def log_derivative(self, x: np.ndarray) -> np.ndarray:
        return -np.log(self._shifted(x))

    def _shifted(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x - self.lo + 1.0, MIN_LOG_ARGUMENT)


class AsinhTransform(ColumnTransform):
    """``t = asinh(x)``: logarithmic in ``|x|`` on both sides of 0, linear near it."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.arcsinh(np.asarray(x, dtype=float))

    def inverse(self, t: np.ndarray) -> np.ndarray:
        return np.sinh(np.asarray(t, dtype=float))

    def log_derivative(self, x: np.ndarray) -> np.ndarray:
        return -0.5 * np.log1p(np.asarray(x, dtype=float) ** 2)


def column_transform(col: ColumnDomain) -> ColumnTransform:
    """The transform of a column, from its public domain only."""
    kind = col.transform_kind()
    if kind == "log":
        return ShiftedLogTransform(col.numeric_bounds()[0])
    if kind == "asinh":
        return AsinhTransform()
    return IdentityTransform()
