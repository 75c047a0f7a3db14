"""Utility metrics for synthetic tables: marginal total-variation distances."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

__all__ = ["discretise", "marginal_tvd", "mean_tvd"]


def discretise(real: pd.DataFrame, other: pd.DataFrame, bins: int = 20
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Numerical columns with more than ``bins`` values on the real data's quantile bins;
    every other column as its string value (missing values as their own level)."""
    r_out, o_out = {}, {}
    for col in real.columns:
        r, o = real[col], other[col]
        if pd.api.types.is_numeric_dtype(r) and not pd.api.types.is_bool_dtype(r) \
                and r.nunique() > bins:
            edges = np.unique(np.nanquantile(r.astype(float), np.linspace(0, 1, bins + 1)))
            edges[0], edges[-1] = -np.inf, np.inf
            r_out[col] = _codes(pd.cut(r.astype(float), edges, labels=False))
            o_out[col] = _codes(pd.cut(pd.to_numeric(o, errors="coerce").astype(float),
                                       edges, labels=False))
        else:
            r_out[col], o_out[col] = r.astype(str), o.astype(str)
    return pd.DataFrame(r_out), pd.DataFrame(o_out)


def _codes(binned: pd.Series) -> pd.Series:
    return binned.astype(float).fillna(-1).astype(int).astype(str)


def marginal_tvd(real: pd.DataFrame, other: pd.DataFrame, order: int = 1, bins: int = 20
                 ) -> dict[tuple[str, ...], float]:
    """Total variation distance of every ``order``-way marginal (0 = equal, 1 = disjoint)."""
    r, o = discretise(real, other[list(real.columns)], bins)
    out = {}
    for cols in combinations(real.columns, order):
        key = list(cols)
        p = r.groupby(key).size() / len(r)
        q = o.groupby(key).size() / len(o)
        out[cols] = 0.5 * float(p.subtract(q, fill_value=0).abs().sum())
    return out


def mean_tvd(real: pd.DataFrame, other: pd.DataFrame, order: int = 1, bins: int = 20
             ) -> float:
    """Mean of :func:`marginal_tvd` over all column sets of that order."""
    return float(np.mean(list(marginal_tvd(real, other, order, bins).values())))
