"""``Domain.draft`` and ``skdpflow domain draft``: a domain read from the data, to review.

The draft is not private; what is checked here is that it holds the data (bounds outside
every value, every category, nullability), that its bounds are rounded outward to nice
values, that the saved file says what it is, and that it loads back to the same domain.
"""

from __future__ import annotations

import decimal
import math

import numpy as np
import pandas as pd
import pytest
from conftest import make_mixed_frame
from hypothesis import given, settings
from hypothesis import strategies as st

from skdpflow import Domain, DPFlowSynthesizer
from skdpflow.cli import main

FAST = {"epochs": 1, "batch_size": 256, "n_stages": 2, "hidden_size": 8, "verbose": False}


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "age": [17, 38, 95, 41],
        "balance": [-3_058.5, 0.0, 81_204.2, 12.0],
        "rate": [0.013, 0.29, 0.0, 0.1],
        "job": ["admin.", "nurse", "admin.", None],
        "yes_no": ["yes", "no", "1", "no"],
        "flag": [True, False, True, True],
        "when": pd.to_datetime(["2008-05-05 00:00", "2009-01-01 00:00", "2010-03-04 10:00",
                                "2009-02-02 00:00"]),
    })


def test_bounds_are_rounded_outward_to_one_significant_digit():
    domain = Domain.draft(_frame())
    assert (domain["age"].min, domain["age"].max) == (10, 100)
    assert isinstance(domain["age"].min, int) and domain["age"].integer
    assert (domain["balance"].min, domain["balance"].max) == (-10_000.0, 90_000.0)
    assert (domain["rate"].min, domain["rate"].max) == (0.0, 0.3)
    assert (domain["when"].min, domain["when"].max) == ("2008-01-01", "2011-01-01")
    assert domain["job"].categories == ["admin.", "nurse"] and domain["job"].nullable
    assert domain["yes_no"].categories == ["1", "no", "yes"]
    assert domain["flag"].type == "boolean"
    assert domain.data_derived == tuple(_frame().columns)


def test_more_digits_and_exact_bounds():
    frame = _frame()
    two = Domain.draft(frame, significant_digits=2)
    assert (two["age"].min, two["age"].max) == (17, 95)  # already on the grid of 1
    assert (two["balance"].min, two["balance"].max) == (-4_000.0, 82_000.0)
    exact = Domain.draft(frame, significant_digits=None)
    assert exact.to_dict() == Domain.from_data(frame).to_dict()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="significant_digits"):
            Domain.draft(frame, significant_digits=bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e12, 1e12, allow_nan=False), min_size=1, max_size=20),
       st.integers(1, 3), st.booleans())
def test_drafted_bounds_hold_every_value_on_a_decimal_grid(values, digits, integer):
    series = pd.Series(np.round(values).astype(np.int64) if integer else values)
    col = Domain.draft(pd.DataFrame({"x": series}), significant_digits=digits)["x"]
    assert col.min <= series.min() and col.max >= series.max()
    magnitude = max(abs(series.min()), abs(series.max()))
    if magnitude == 0:
        assert col.min == col.max == 0
        return
    exponent = math.floor(math.log10(magnitude)) - digits + 1
    step = decimal.Decimal(1).scaleb(max(exponent, 0) if col.integer else exponent)
    for bound in (col.min, col.max):
        assert decimal.Decimal(repr(bound) if isinstance(bound, float) else bound) % step == 0
    # Outward by less than one step on each side (a float's repr may add one ulp of step).
    assert col.max - series.max() <= float(step) * 1.000001
    assert series.min() - col.min <= float(step) * 1.000001


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_saved_draft_says_what_it_is_and_loads_back_the_same(tmp_path, suffix):
    frame = _frame()
    frame["zoned"] = frame["when"].dt.tz_localize("Europe/Paris")
    drafted = Domain.draft(frame)
    path = tmp_path / f"domain{suffix}"
    drafted.save(path)
    text = path.read_text()
    mark = "//" if suffix == ".json" else "#"
    head = text.splitlines()[0]
    assert head.startswith(mark) and "PRIVATE DATA" in head
    assert "NOT differentially private" in text and "PUBLIC" in text
    loaded = Domain.load(path)
    assert loaded.to_dict() == drafted.to_dict()
    assert loaded.data_derived == ()  # a loaded file is a declaration
    assert loaded["zoned"].timezone == "Europe/Paris"


def test_a_declared_domain_saves_without_the_header(tmp_path, mixed_domain):
    path = tmp_path / "d.json"
    Domain.from_dict(mixed_domain).save(path)
    assert path.read_text().startswith("{")
    assert Domain.load(path).to_dict() == Domain.from_dict(mixed_domain).to_dict()


def test_json_header_keeps_line_numbers_of_errors(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('// a comment\n// another\n{"a": {"type": "numerical", "min": 1, "max": }}')
    with pytest.raises(ValueError, match="line 3, column"):
        Domain.load(path)


def test_a_reviewed_draft_fits_and_samples_within_it(tmp_path):
    frame = make_mixed_frame(300)
    path = tmp_path / "domain.yaml"
    Domain.draft(frame).save(path)
    synth = DPFlowSynthesizer(epsilon=1.0, delta=1e-3, random_state=0, **FAST)
    synth.fit(frame, domain=path)
    assert synth.privacy_report()["domain"]["declared_public"] == list(frame.columns)
    fake = synth.sample(500, random_state=0)
    assert fake["age"].between(10, 80).all()  # ages 18..79 drafted as 10..80
    assert set(fake["city"].dropna()) <= {"Lyon", "Nice", "Paris"}


# ------------------------------------------------------------------ command line
def test_cli_draft_writes_a_file_that_loads_back(tmp_path, capsys):
    data = tmp_path / "data.csv"
    frame = make_mixed_frame(200)
    frame.to_csv(data, index=False)
    out = tmp_path / "domain.yaml"
    assert main(["domain", "draft", str(data), "-o", str(out)]) == 0
    assert "NOT private" in capsys.readouterr().out
    assert out.read_text().startswith("# DRAFT domain read from the PRIVATE DATA")
    # The CSV's kinds as pandas infers them, and its ISO date text as datetimes.
    assert Domain.load(out).to_dict() == Domain.draft(frame).to_dict()
    assert Domain.load(out)["when"].type == "datetime"
    exact = tmp_path / "exact.json"
    assert main(["domain", "draft", str(data), "-o", str(exact),
                 "--significant-digits", "0"]) == 0
    assert Domain.load(exact).to_dict() == Domain.from_data(frame).to_dict()


def test_cli_draft_reads_only_iso_date_text_as_datetimes(tmp_path):
    data = tmp_path / "data.csv"
    pd.DataFrame({"day": ["2020-01-05", "2021-06-30T12:00:00", None],
                  "code": ["2020-01-05", "A-17", "B"],
                  "bad": ["2020-13-45", "2020-01-01", "2020-01-02"]}).to_csv(data, index=False)
    out = tmp_path / "d.json"
    assert main(["domain", "draft", str(data), "-o", str(out)]) == 0
    domain = Domain.load(out)
    assert domain["day"].type == "datetime" and domain["day"].nullable
    assert (domain["day"].min, domain["day"].max) == ("2020-01-01", "2022-01-01")
    assert domain["code"].type == domain["bad"].type == "categorical"


def test_cli_draft_refuses_overwrites_and_bad_input(tmp_path, capsys):
    data = tmp_path / "data.csv"
    make_mixed_frame(50).to_csv(data, index=False)
    out = tmp_path / "domain.json"
    out.write_text("keep")
    assert main(["domain", "draft", str(data), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "keep"
    assert main(["domain", "draft", str(data), "-o", str(data)]) == 2
    assert "never writes over its input" in capsys.readouterr().err
    assert main(["domain", "draft", str(data), "-o", str(out), "--force"]) == 0
    assert Domain.load(out)["city"].categories == ["Lyon", "Nice", "Paris"]
    assert main(["domain", "draft", str(tmp_path / "no.csv"), "-o", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("skdpflow: error:") and len(err.strip().splitlines()) == 1
    assert main(["domain", "draft", str(data), "-o", str(tmp_path / "y.json"),
                 "--significant-digits", "-1"]) == 2
