"""Values come back as they went in (issue 10): booleans read by a documented rule,
datetimes keep their time of day and their zone, integer bounds stay inside int64 and
samples inside the declared bounds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from skdpflow import DPFlowSynthesizer, InvalidDataError
from skdpflow.domain import ColumnDomain, Domain, public_dtype
from skdpflow.encoding import TypeLayer

FAST = dict(epochs=1, batch_size=64, n_stages=2, hidden_size=8, verbose=False,
            random_state=0)
N = 300


def _fit(frame: pd.DataFrame, domain: dict | None, **params) -> DPFlowSynthesizer:
    params = {"epsilon": math.inf, **FAST, **params}
    return DPFlowSynthesizer(**params).fit(frame, domain=domain)


# ------------------------------------------------------------------- booleans
@pytest.mark.parametrize("true, false", [("True", "False"), ("yes", "no"), ("1", "0"),
                                         ("true", "false"), (" YES ", "No")])
def test_boolean_text_keeps_its_rate(true, false):
    rng = np.random.default_rng(0)
    flags = rng.random(N) < 0.3
    frame = pd.DataFrame({"b": np.where(flags, true, false).astype(object)})
    layer = TypeLayer(Domain.from_dict({"b": {"type": "boolean"}}))
    assert layer.clean(frame)["b"].tolist() == flags.tolist()


def test_boolean_text_samples_at_the_data_rate():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"b": np.where(rng.random(N) < 0.3, "yes", "no")})
    rows = _fit(frame, {"b": {"type": "boolean"}}).sample(2000)
    assert rows["b"].dtype == bool
    assert abs(rows["b"].mean() - 0.3) < 0.08


def test_boolean_reads_real_booleans_and_zero_one_numbers():
    frame = pd.DataFrame({"b": pd.Series([True, np.False_, 0, 1, 0.0, 1.0, "false", None],
                                         dtype=object)})
    layer = TypeLayer(Domain.from_dict({"b": {"type": "boolean", "nullable": True}}))
    out = layer.clean(frame)["b"]
    assert out.iloc[:7].tolist() == [True, False, False, True, False, True, False]
    assert pd.isna(out.iloc[7])


def test_boolean_nullable_dtype_and_text_in_nullable_string_dtype():
    frame = pd.DataFrame({"b": pd.array([True, None, False], dtype="boolean"),
                          "s": pd.array(["no", None, "TRUE"], dtype="string")})
    domain = {"b": {"type": "boolean", "nullable": True},
              "s": {"type": "boolean", "nullable": True}}
    out = TypeLayer(Domain.from_dict(domain)).clean(frame)
    assert out["b"].iloc[[0, 2]].tolist() == [True, False]
    assert out["s"].iloc[[0, 2]].tolist() == [False, True]
    assert out.isna().sum().tolist() == [1, 1]


@pytest.mark.parametrize("bad", ["maybe", 2, 0.5, "ja"])
def test_unreadable_booleans_are_counted_never_quoted(bad):
    frame = pd.DataFrame({"flag": pd.Series(["yes", bad, "no", bad], dtype=object)})
    with pytest.raises(InvalidDataError) as info:
        _fit(frame, {"flag": {"type": "boolean"}})
    message = str(info.value)
    assert "'flag'" in message and "2 value(s)" in message and "booleans" in message
    assert str(bad) not in message.replace("2 value(s)", "")


# ------------------------------------------------------------------ datetimes
def _times(n: int = N, seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    seconds = rng.integers(0, 30 * 86_400, n)
    micros = rng.integers(0, 1_000_000, n)
    return pd.Series(pd.Timestamp("2020-01-01") + pd.to_timedelta(seconds, unit="s")
                     + pd.to_timedelta(micros, unit="us"))


def test_datetimes_keep_their_time_of_day():
    frame = pd.DataFrame({"t": _times()})
    domain = {"t": {"type": "datetime", "min": "2019-12-01", "max": "2020-03-01"}}
    rows = _fit(frame, domain).sample(500)
    t = rows["t"]
    assert t.dtype == np.dtype("datetime64[ns]")
    assert (t != t.dt.normalize()).mean() > 0.95  # not rounded to days
    assert (t.dt.second != 0).mean() > 0.8  # nor to minutes
    assert t.between(pd.Timestamp("2019-12-01"), pd.Timestamp("2020-03-01")).all()


def test_datetime_bounds_are_exact_even_with_times():
    frame = pd.DataFrame({"t": _times()})
    domain = {"t": {"type": "datetime", "min": "2020-01-10 12:34:56.789",
                    "max": "2020-01-10 18:00:00"}}
    rows = _fit(frame, domain).sample(500)["t"]
    assert rows.between(pd.Timestamp("2020-01-10 12:34:56.789"),
                        pd.Timestamp("2020-01-10 18:00:00")).all()
    assert rows.nunique() > 100


def test_declared_timezone_comes_back_in_its_zone(tmp_path):
    frame = pd.DataFrame({"t": _times().dt.tz_localize("Europe/Paris")})
    domain = {"t": {"type": "datetime", "min": "2019-12-01", "max": "2020-03-01",
                    "timezone": "Europe/Paris", "nullable": True}}
    synth = _fit(frame, domain)
    rows = synth.sample(500)["t"]
    assert rows.dtype == pd.DatetimeTZDtype("ns", "Europe/Paris")
    assert rows.dtype == public_dtype(synth.domain_["t"])
    # Bounds without an offset are wall times in the declared zone.
    assert rows.between(pd.Timestamp("2019-12-01", tz="Europe/Paris"),
                        pd.Timestamp("2020-03-01", tz="Europe/Paris")).all()
    assert (rows.dt.hour != 0).mean() > 0.8
    synth.save(tmp_path / "m.skdpflow")
    loaded = DPFlowSynthesizer.load(tmp_path / "m.skdpflow")
    assert loaded.domain_["t"].timezone == "Europe/Paris"
    pd.testing.assert_series_equal(loaded.sample(50, random_state=3)["t"],
                                   synth.sample(50, random_state=3)["t"])


def test_timezone_conversion_on_the_way_in():
    domain = Domain.from_dict({"t": {"type": "datetime", "min": "2000-01-01",
                                     "max": "2030-01-01", "timezone": "Europe/Paris"}})
    layer = TypeLayer(domain)
    frame = pd.DataFrame({"t": pd.Series([
        pd.Timestamp("2020-06-01 12:00"),  # naive: a wall time in the declared zone
        pd.Timestamp("2020-06-01 12:00", tz="UTC"),  # aware: converted
        "2020-06-01T12:00:00+02:00",  # an offset in text: converted
    ], dtype=object)})
    out = layer.clean(frame)["t"]
    assert out.tolist() == [pd.Timestamp("2020-06-01 10:00"), pd.Timestamp("2020-06-01 12:00"),
                            pd.Timestamp("2020-06-01 10:00")]


def test_undeclared_zone_is_schema_read_from_the_dtype():
    frame = pd.DataFrame({"t": _times().dt.tz_localize("America/New_York")})
    with pytest.warns(UserWarning):
        synth = _fit(frame, None, privacy="domain_from_data")
    assert synth.domain_["t"].timezone == "America/New_York"
    assert synth.sample(20)["t"].dtype == pd.DatetimeTZDtype("ns", "America/New_York")


def test_estimated_column_keeps_its_zone():
    frame = pd.DataFrame({"t": _times(500).dt.tz_localize("UTC")})
    synth = _fit(frame, None, epsilon=5.0, delta=1e-5)
    assert synth.sample(20)["t"].dtype == pd.DatetimeTZDtype("ns", "UTC")


def test_timezone_in_the_model_file_format():
    spec = {"t": {"type": "datetime", "min": "2020-01-01 00:00:00",
                  "max": "2021-01-01 00:00:00", "timezone": "UTC", "nullable": True},
            "u": {"type": "datetime", "min": "2020-01-01", "max": "2021-01-01",
                  "nullable": False}}
    domain = Domain.from_dict(spec)
    assert domain.to_dict() == spec
    assert Domain.from_dict(domain.to_dict()).to_dict() == spec


@pytest.mark.parametrize("entry, match", [
    ({"type": "datetime", "min": "2020-01-01", "max": "2021-01-01", "timezone": "Mars/Base"},
     "Unknown time zone"),
    ({"type": "numerical", "min": 0, "max": 1, "timezone": "UTC"}, "Only a datetime"),
])
def test_bad_timezones_are_domain_errors(entry, match):
    with pytest.raises(ValueError, match=f"'when'.*{match}"):
        Domain.from_dict({"when": entry})


# ------------------------------------------------------------- column names
def test_a_column_named_like_another_columns_null_indicator():
    rng = np.random.default_rng(0)
    a = rng.normal(size=N)
    a[::5] = np.nan
    frame = pd.DataFrame({"a": a, "a.is_null": rng.normal(5, 1, N)})
    domain = {"a": {"type": "numerical", "min": -5, "max": 5, "nullable": True},
              "a.is_null": {"type": "numerical", "min": 0, "max": 10}}
    rows = _fit(frame, domain).sample(500)
    assert list(rows.columns) == ["a", "a.is_null"]
    assert 0.1 < rows["a"].isna().mean() < 0.3 and rows["a.is_null"].notna().all()
    assert rows["a.is_null"].mean() > 3


# ----------------------------------------------------------- integer bounds
@pytest.mark.parametrize("bounds", [(0, 1e308), (-1e19, 0), (0, 2**63)])
def test_integer_bounds_outside_int64_are_domain_errors(bounds):
    with pytest.raises(ValueError, match=r"'x'.*2\*\*63"):
        Domain.from_dict({"x": {"type": "numerical", "integer": True, "min": bounds[0],
                                "max": bounds[1]}})


def test_bounds_whose_spread_overflows_are_domain_errors():
    with pytest.raises(ValueError, match="'x'.*too far apart"):
        Domain.from_dict({"x": {"type": "numerical", "min": -1e308, "max": 1e308}})


def test_integer_column_without_an_integer_in_its_bounds():
    with pytest.raises(ValueError, match="'x'.*No integer"):
        Domain.from_dict({"x": {"type": "numerical", "integer": True, "min": 0.2, "max": 0.8}})


@pytest.mark.parametrize("nullable", [False, True])
def test_samples_stay_inside_bounds_at_the_int64_edge(nullable):
    rng = np.random.default_rng(0)
    lo, hi = -(2**63) + 1, 2**63 - 1
    # Point masses at both bounds: float(hi) is 2**63, which wrapped around in the cast.
    values = pd.Series(rng.choice([lo, hi, 0, 2**62], N, p=[0.35, 0.35, 0.15, 0.15]))
    domain = {"x": {"type": "numerical", "integer": True, "min": lo, "max": hi,
                    "nullable": nullable}}
    rows = _fit(pd.DataFrame({"x": values}), domain).sample(2000)["x"]
    assert rows.dtype == (pd.Int64Dtype() if nullable else np.dtype(np.int64))
    assert rows.dropna().between(lo, hi).all()
    # float64 resolution there is 2**10: the point masses land within it of the bounds.
    assert (rows >= hi - 2**11).mean() > 0.2 and (rows <= lo + 2**11).mean() > 0.2


def test_float16_column_samples_finite_float64():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(0, 1000, N).astype(np.float16)})
    for domain in ({"x": {"type": "numerical", "min": -65504, "max": 65504}}, None):
        synth = _fit(frame, domain, epsilon=5.0, delta=1e-4)
        rows = synth.sample(2000)["x"]
        assert rows.dtype == np.float64
        rows = rows.dropna()  # an undeclared float column is nullable (from its dtype)
        assert np.isfinite(rows).all()
        col = synth.domain_["x"]
        assert rows.between(*col.numeric_bounds()).all()


def test_restore_clips_to_declared_bounds_before_the_cast():
    from skdpflow.encoding import _restore_dtype

    col = ColumnDomain("numerical", min=0, max=10, integer=True)
    out = _restore_dtype(pd.Series([-3.0, 4.4, 12.7, 1e30]), col)
    assert out.tolist() == [0, 4, 10, 10] and out.dtype == np.int64
    col = ColumnDomain("numerical", min=-1.5, max=2.5)
    assert _restore_dtype(pd.Series([-np.inf, 0.0, np.inf]), col).tolist() == [-1.5, 0.0, 2.5]
