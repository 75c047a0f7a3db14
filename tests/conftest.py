"""Shared fixtures: small mixed-type frames, CPU only, fixed seeds."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One of several pytest-xdist workers sharing the cores: one intra-op thread each, or
    # torch's spinning threads slow every worker down (see skdpflow/_threads.py).
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def float64():
    """float64 as torch's default dtype for one test (exact comparisons), then restored."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make_mixed_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Every column kind: int, float with NaN, heavy tail, category with NaN, bool, datetime."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    income = np.where(rng.random(n) < 0.6, 0, np.round(rng.lognormal(9, 1, n))).astype(int)
    score = rng.normal(50, 10, n)
    score[rng.random(n) < 0.1] = np.nan
    city = rng.choice(["Paris", "Lyon", "Nice"], n, p=[0.5, 0.3, 0.2]).astype(object)
    city[rng.random(n) < 0.05] = None
    flag = rng.random(n) < 0.3
    when = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D")
    return pd.DataFrame({"age": age, "income": income, "score": score, "city": city,
                         "flag": flag, "when": when})


MIXED_DOMAIN = {
    "age": {"type": "numerical", "min": 18, "max": 90, "integer": True},
    "income": {"type": "numerical", "min": 0, "max": 1_000_000, "integer": True},
    "score": {"type": "numerical", "min": 0, "max": 100, "nullable": True},
    "city": {"type": "categorical", "categories": ["Paris", "Lyon", "Nice", "Lille"],
             "nullable": True},
    "flag": {"type": "boolean"},
    "when": {"type": "datetime", "min": "2019-01-01", "max": "2021-12-31"},
}


@pytest.fixture
def mixed_frame() -> pd.DataFrame:
    return make_mixed_frame()


@pytest.fixture
def mixed_domain() -> dict:
    return {k: dict(v) for k, v in MIXED_DOMAIN.items()}
