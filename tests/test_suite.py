"""benchmarks/suite.py and benchmarks/_mst_runner.py: grid, loading, public domain, MST's
discretisation, the side-by-side table (no fit here except the slow MST run)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite():
    return _module("suite")


@pytest.fixture(scope="module")
def runner():
    return _module("_mst_runner")


@pytest.fixture
def data(tmp_path, suite, monkeypatch):
    """A small public table in the shared data layout: 600 rows, a test split of 100."""
    rng = np.random.default_rng(0)
    n = 600
    df = pd.DataFrame({"age": rng.integers(18, 90, n), "income": rng.lognormal(8, 1, n).round(2),
                       "job": rng.choice(["a", "b", "c"], n), "code": rng.choice([1, 2], n),
                       "y": rng.choice(["no", "yes"], n)})
    df.loc[0, "age"], df.loc[1, "age"] = 17, 95  # the public extremes, in the full table
    df.to_csv(tmp_path / "toy.csv.gz", index=False)
    spec = {"toy": {"files": {"all": {"path": "toy.csv.gz", "rows": n}}, "target": "y",
                    "categorical": ["job", "code", "y"], "numerical": ["age", "income"]}}
    (tmp_path / "datasets.json").write_text(json.dumps(spec))
    monkeypatch.setattr(suite, "DATA", tmp_path)
    monkeypatch.setattr(suite.curves, "DATA", tmp_path)
    for cached in (suite.public_domain, suite.load, suite.len_full):
        cached.cache_clear()
    yield df
    for cached in (suite.public_domain, suite.load, suite.len_full):
        cached.cache_clear()


def test_grid_subsamples_only_the_three_large_tables(suite):
    pairs = suite.grid_tables(["adult", "bank_marketing"], ["1000", "full"])
    assert pairs == [("adult", "full"), ("bank_marketing", "1000"), ("bank_marketing", "full")]
    assert suite.train_rows("full", 20_000) == 20_000 and suite.train_rows("3000", 5) == 3000


def test_planned_runs_copula_once_per_table_size_seed(suite):
    args = suite.parse(["--datasets", "bank_marketing", "--sizes", "1000", "--epsilons", "0.3",
                        "1", "--seeds", "0", "1"])
    runs = suite.planned(args)
    copula = [r for r in runs if r[2] == "copula"]
    assert len(copula) == 2 and all(r[3] is None for r in copula)
    assert len([r for r in runs if r[2] == "mst"]) == 4  # 2 epsilons x 2 seeds


def test_subsample_and_public_domain_from_the_full_table(suite, data):
    train, test, target = suite.load("toy", 300, 100)
    assert (len(train), len(test), target) == (300, 100, "y")
    again, _, _ = suite.load.__wrapped__("toy", 300, 100)
    pd.testing.assert_frame_equal(train, again)  # fixed seed
    assert train["code"].map(type).eq(str).all()  # declared categorical: text
    domain = suite.public_domain("toy")
    # bounds of the FULL table, not of the subsample; declared, not marked data-derived
    assert (domain["age"].min, domain["age"].max) == (17, 95) and domain["age"].integer
    assert domain["job"].categories == ["a", "b", "c"] and domain["code"].type == "categorical"
    assert domain.data_derived == ()


def test_mst_codes_use_public_bins_and_decode_inside_them(runner):
    domain = {"x": {"type": "numerical", "min": 0.0, "max": 64.0},
              "k": {"type": "numerical", "min": 1, "max": 5, "integer": True},
              "w": {"type": "numerical", "min": 0, "max": 1000, "integer": True,
                    "nullable": True},
              "c": {"type": "categorical", "categories": ["p", "q", "r"], "nullable": True}}
    df = pd.DataFrame({"x": [0.0, 1.9, 2.0, 63.99, 64.0, 80.0],
                       "k": [1, 2, 3, 4, 5, 5], "w": [0, 31, 32, 999, None, 1000],
                       "c": ["p", "q", None, "r", "r", "p"]})
    codes, sizes = runner.encode(df, domain)
    assert sizes == [32, 5, 33, 4]  # 32 bins; one per integer 1..5; +1 for missing
    assert codes["x"].tolist() == [0, 0, 1, 31, 31, 31]  # width 2; beyond max: last bin
    assert codes["k"].tolist() == [0, 1, 2, 3, 4, 4]
    assert codes["w"].tolist()[4] == 32 and codes["c"].tolist() == [0, 1, 3, 2, 2, 0]
    rng = np.random.default_rng(0)
    many = pd.DataFrame({c: np.repeat(codes[c].to_numpy(), 200) for c in codes})
    back = runner.decode(many, domain, rng)
    bins = np.repeat(codes["x"].to_numpy(), 200)
    assert ((back["x"] >= bins * 2.0) & (back["x"] <= bins * 2.0 + 2)).all()
    assert back["x"].std() > 0  # uniform inside the bin, not its centre
    assert (back["k"].to_numpy() == np.repeat([1, 2, 3, 4, 5, 5], 200)).all()
    w = back["w"]
    assert w.isna().sum() == 200 and w.dropna().between(0, 1000).all()
    assert runner.encode(back, domain)[0]["w"].tolist() == many["w"].tolist()
    assert back["c"].isna().sum() == 200 and set(back["c"].dropna()) == {"p", "q", "r"}
    with pytest.raises(ValueError, match="outside its declared categories"):
        runner.encode(df.assign(c="z"), domain)


def _runs() -> pd.DataFrame:
    rows = []
    for method, eps, base in [("skdpflow", 1.0, 0.8), ("mst", 1.0, 0.7), ("copula", None, 0.6)]:
        for seed, shift in [(0, -0.05), (1, 0.05)]:
            rows.append({"dataset": "toy", "size": "1000", "rows": 1000, "method": method,
                         "epsilon": eps, "seed": seed, "tvd_1way": 1 - base,
                         "tvd_2way": 1.2 - base, "quality": base + shift,
                         "auroc_hgb": base, "auroc_hgb_real": 0.9})
    return pd.DataFrame(rows)


def test_table_side_by_side_with_differences(suite):
    lines = suite.table(_runs(), [1.0, 3.0], suite.METHODS).splitlines()
    assert lines[0].startswith("| dataset | rows | epsilon | seeds (sk / MST / GC) | "
                               "1-way TVD (sk / MST / GC) |")
    assert len(lines) == 3  # epsilon 3 has no private run: no row
    assert lines[2] == ("| toy | 1,000 | 1 | 2 / 2 / 2 | 0.200 / 0.300 / 0.400 | "
                        "0.400 / 0.500 / 0.600 | 0.800 / 0.700 / 0.600 | "
                        "0.800 / 0.700 / 0.600 | 0.900 | -0.100, -0.100, +0.100, +0.100 |")
    no_mst = suite.table(_runs().query("method != 'mst'"), [1.0], ["skdpflow", "copula"])
    assert no_mst.splitlines()[2].endswith("| 0.900 | – |")


def test_write_docs_replaces_between_markers(suite, tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.write_text(f"intro\n{suite.BEGIN}\nold\n{suite.END}\nafter\n")
    monkeypatch.setattr(suite, "ROOT", tmp_path)
    suite.write_docs("| new |", "python benchmarks/suite.py --write-docs", suite.parse([]))
    text = doc.read_text()
    assert "old" not in text and "| new |" in text and text.endswith("after\n")
    assert "`python benchmarks/suite.py --write-docs`" in text and "20,000" in text


@pytest.mark.slow
@pytest.mark.skipif(not Path("/work/venv-mst/bin/python").exists(),
                    reason="smartnoise MST's environment (/work/venv-mst) is not here")
def test_mst_runs_in_its_environment(suite, data):
    train, _, _ = suite.load("toy", 300, 100)
    fake = suite.fit_mst(train, suite.public_domain("toy"), 1.0, seed=0)
    assert list(fake.columns) == list(train.columns) and len(fake) == len(train)
    assert fake["age"].between(17, 95).all() and set(fake["job"]) <= {"a", "b", "c"}
    assert not math.isnan(fake["income"].mean())


def test_binning_floor_is_small_on_a_narrow_table(suite, data):
    floor = suite.binning_floor("toy", 300, 100)
    # age: integer bounds 17-95, 32 bins of ~2.4 years; income: 32 bins over a lognormal
    assert 0 < floor["tvd_1way"] < 0.5 and floor["tvd_2way"] >= floor["tvd_1way"]
