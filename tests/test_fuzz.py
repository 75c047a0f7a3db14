"""Fuzzing fit/sample with hypothesis: any small mixed-type frame, with or without a
declared domain (consistent with the data, or not on purpose), either fails with a clear
error or gives samples with exactly the frame's columns, the domain's dtypes and values
inside the domain; the caller's frame is never modified."""

from __future__ import annotations

import copy
import math
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skdpflow
from skdpflow import DPFlowSynthesizer
from skdpflow._validation import InvalidDataError
from skdpflow.domain import public_dtype
from skdpflow.privacy.accounting import PrivacyBudgetError

FAST = dict(epochs=1, batch_size=64, n_stages=2, hidden_size=8, verbose=False,
            random_state=0)
PACKAGE = str(Path(skdpflow.__file__).parent)
KINDS = ["int", "Int64", "float", "bool", "boolean", "string", "object", "bool_text",
         "datetime", "constant", "missing", "category"]
ZONES = [None, "UTC", "Europe/Paris", "America/New_York", "+05:30"]
NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                max_size=6)


# ----------------------------------------------------------------- columns
def _column(kind: str, n: int, rng: np.random.Generator, zone: str | None,
            holes: float) -> pd.Series:
    """One column of ``kind`` with a share ``holes`` of missing cells where it can hold them."""
    hole = rng.random(n) < holes
    if kind == "int":
        return pd.Series(rng.integers(-50, 50, n))
    if kind == "Int64":
        return pd.Series(pd.array(np.where(hole, None, rng.integers(0, 1000, n)).tolist(),
                                  dtype="Int64"))
    if kind == "float":
        values = rng.normal(0, 10 ** rng.integers(0, 6), n)
        values[hole] = np.nan
        if rng.random() < 0.2:
            values[rng.integers(0, n)] = rng.choice([np.inf, -np.inf])
        return pd.Series(values)
    if kind == "bool":
        return pd.Series(rng.random(n) < 0.3)
    if kind == "boolean":
        return pd.Series(pd.array(np.where(hole, None, rng.random(n) < 0.5).tolist(),
                                  dtype="boolean"))
    if kind == "string":
        values = rng.choice(["a", "b", "ç", "日本", " "], n).astype(object)
        values[hole] = None
        return pd.Series(pd.array(values.tolist(), dtype="string"))
    if kind == "object":  # mixed types, as a spreadsheet export may give
        pool = ["x", "y", 1, 2, 2.5, True, None, "1", -0.0, np.nan]
        if rng.random() < 0.2:
            pool.append(math.inf)
        return pd.Series([pool[i] for i in rng.integers(0, len(pool), n)], dtype=object)
    if kind == "bool_text":
        pairs = [("True", "False"), ("yes", "no"), ("1", "0"), ("true", "false")]
        true, false = pairs[rng.integers(0, len(pairs))]
        values = np.where(rng.random(n) < 0.3, true, false).astype(object)
        values[hole] = None
        return pd.Series(values)
    if kind == "datetime":
        nanos = rng.integers(0, 400 * 86_400 * 10**9, n)
        values = pd.Series(pd.Timestamp("2020-01-01") + pd.to_timedelta(nanos, unit="ns"))
        values[hole] = pd.NaT
        return values.dt.tz_localize(zone) if zone else values
    if kind == "constant":
        value = [7, 1.5, "only", True][rng.integers(0, 4)]
        return pd.Series([value] * n)
    if kind == "missing":
        dtype = ["float64", "object", "Int64"][rng.integers(0, 3)]
        return pd.Series([None] * n, dtype=dtype)
    values = pd.Series(rng.choice(["lo", "mid", "hi"], n))
    return values.astype("category")


def _domain_for(series: pd.Series, kind: str, zone: str | None, wrong: bool,
                rng: np.random.Generator) -> dict:
    """A declared domain entry consistent with the column, or off on purpose (``wrong``)."""
    nullable = bool(series.isna().any()) or (kind == "missing")
    present = series.dropna()
    if kind in ("bool", "boolean", "bool_text"):
        entry = {"type": "boolean", "nullable": nullable}
    elif kind == "datetime" or (kind == "missing" and rng.random() < 0.3):
        lo = present.min() if len(present) else pd.Timestamp("2020-01-01", tz=zone)
        hi = present.max() if len(present) else pd.Timestamp("2021-01-01", tz=zone)
        entry = {"type": "datetime", "min": str(lo), "max": str(hi), "nullable": nullable}
        if zone is not None:
            entry["timezone"] = zone
    elif kind in ("int", "Int64", "float") or (kind == "constant" and len(present) and
                                               isinstance(present.iloc[0], (int, float))
                                               and not isinstance(present.iloc[0], bool)):
        finite = present.astype(float)
        finite = finite[np.isfinite(finite)]
        lo = float(finite.min()) if len(finite) else 0.0
        hi = float(finite.max()) if len(finite) else 1.0
        integer = kind in ("int", "Int64")
        if integer:
            lo, hi = int(lo), int(hi)
        entry = {"type": "numerical", "min": lo, "max": hi, "integer": integer,
                 "nullable": nullable}
    elif kind == "missing":
        entry = {"type": "numerical", "min": 0, "max": 1, "nullable": True}
    else:
        cats = {}
        for v in present.astype(object):
            try:
                cats.setdefault(skdpflow.domain.canonical(v), v)
            except TypeError:
                pass
        cats = [c if not isinstance(c, float) or math.isfinite(c) else "inf"
                for c in cats.values()] or ["a"]
        entry = {"type": "categorical", "categories": cats, "nullable": nullable}
    if wrong:
        entry = _break(entry, rng)
    return entry


def _break(entry: dict, rng: np.random.Generator) -> dict:
    """An entry that contradicts the data: narrower, not nullable, another type, huge."""
    choice = rng.integers(0, 5)
    entry = dict(entry)
    if choice == 0:
        entry["nullable"] = False
    elif choice == 1 and entry["type"] == "categorical":
        entry["categories"] = entry["categories"][:1]
        if rng.random() < 0.5:
            entry["other"] = "<rest>"
    elif choice == 1 and entry["type"] == "numerical":
        entry["max"] = 1e308 if rng.random() < 0.5 else entry["min"]
    elif choice == 2:
        entry = {"type": "numerical", "min": -5, "max": 5, "integer": bool(rng.random() < 0.5),
                 "nullable": entry.get("nullable", False)}
    elif choice == 3:
        entry = {"type": "boolean", "nullable": entry.get("nullable", False)}
    else:
        entry = {"type": "datetime", "min": "2020-03-01 12:00", "max": "2020-06-01",
                 "nullable": entry.get("nullable", False),
                 "timezone": ZONES[rng.integers(0, len(ZONES))]}
    return entry


@st.composite
def cases(draw: st.DrawFn) -> tuple[pd.DataFrame, dict | None, float]:
    n = draw(st.integers(20, 120))
    names = draw(st.lists(NAMES, min_size=1, max_size=5, unique=True))
    if draw(st.booleans()):  # a name that looks like another column's internal indicator
        names.append(names[0] + draw(st.sampled_from([".is_null", ".value", ".mode"])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    frame, domain = {}, {}
    declare = draw(st.sampled_from(["none", "all", "some"]))
    for name in names:
        kind = draw(st.sampled_from(KINDS))
        zone = draw(st.sampled_from(ZONES))
        holes = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5]))
        frame[name] = _column(kind, n, rng, zone, holes)
        if declare == "all" or (declare == "some" and draw(st.booleans())):
            wrong = draw(st.integers(0, 4)) == 0
            domain[name] = _domain_for(frame[name], kind, zone, wrong, rng)
    epsilon = draw(st.sampled_from([math.inf, math.inf, 5.0]))
    return pd.DataFrame(frame), (domain or None), epsilon


# ------------------------------------------------------------------ checks
def _check_error(exc: BaseException) -> None:
    """A clear error: skdpflow's own type, or a one-line ValueError/TypeError raised in
    skdpflow's code (not deep in pandas, RDT or torch)."""
    if isinstance(exc, (InvalidDataError, PrivacyBudgetError)):
        return
    assert isinstance(exc, (ValueError, TypeError)), repr(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    assert frames[-1].filename.startswith(PACKAGE), (
        f"{type(exc).__name__} raised outside skdpflow at {frames[-1].filename}:"
        f"{frames[-1].lineno}: {exc}")
    assert "\n" not in str(exc), str(exc)


def _check_samples(rows: pd.DataFrame, frame: pd.DataFrame, synth: DPFlowSynthesizer) -> None:
    assert list(rows.columns) == list(frame.columns)
    for name in frame.columns:
        col = synth.domain_[name]
        values = rows[name]
        assert values.dtype == public_dtype(col), (name, values.dtype, col)
        present = values.dropna()
        if not col.nullable:
            assert len(present) == len(values), name
        if col.type == "numerical":
            lo, hi = col.numeric_bounds()
            assert present.astype(float).between(lo, hi).all(), name
        elif col.type == "datetime":
            lo, hi = col.datetime_bounds()
            if col.timezone is not None:
                present = present.dt.tz_convert("UTC").dt.tz_localize(None)
            assert present.between(lo, hi).all(), name
        elif col.type == "boolean":
            assert set(present.tolist()) <= {True, False}, name
        else:
            allowed = {skdpflow.domain.canonical(c) for c in col.categories}
            assert {skdpflow.domain.canonical(v) for v in present} <= allowed, name


def _has_infinity(frame: pd.DataFrame) -> bool:
    """Whether any cell is an infinite number: the docs promise an error for it."""
    for name in frame.columns:
        for value in frame[name].dropna():
            if isinstance(value, (float, np.floating)) and math.isinf(value):
                return True
    return False


def _run(case: tuple[pd.DataFrame, dict | None, float]) -> str:
    """Check one case; returns the outcome ("ok" or the error's class name)."""
    frame, domain, epsilon = case
    before = copy.deepcopy(frame)
    synth = DPFlowSynthesizer(epsilon=epsilon, delta=1e-3, **FAST)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            synth.fit(frame, domain=copy.deepcopy(domain))
    except Exception as exc:  # noqa: BLE001 - every error must be a clear one
        _check_error(exc)
        outcome = type(exc).__name__
    else:
        assert not _has_infinity(frame), "an infinity was accepted (the docs promise an error)"
        rows = synth.sample(200)
        _check_samples(rows, frame, synth)
        outcome = "ok"
    pd.testing.assert_frame_equal(frame, before)
    assert frame.dtypes.equals(before.dtypes)
    return outcome


SETTINGS = dict(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=25, derandomize=True, **SETTINGS)
@given(cases())
def test_fit_sample_gives_domain_values_or_a_clear_error(case):
    _run(case)


@pytest.mark.slow
@settings(max_examples=500, **SETTINGS)
@given(cases())
def test_fit_sample_fuzz_long(case):
    _run(case)
