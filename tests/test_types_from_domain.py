"""Types from the domain only: sample dtypes, category matching and released categories
never depend on the rows or on the dtypes the rows gave the frame."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from skdpflow import DPFlowSynthesizer, InvalidDataError
from skdpflow.cli import _parser, _synthesizer, main
from skdpflow.domain import Domain, canonical, public_dtype
from skdpflow.privacy.domain_estimation import OTHER
from skdpflow.synthesizer import _from_state

FAST = dict(epochs=1, batch_size=256, n_stages=2, hidden_size=8, verbose=False)
NEIGHBOUR_DOMAIN = {
    "age": {"type": "numerical", "integer": True, "min": 0, "max": 100, "nullable": True},
    "code": {"type": "categorical", "categories": ["1", "2", "x"], "other": "other"},
}
# Fitted numbers that are (post-processed) noisy releases: they may differ between
# neighbours. Everything else in the model file must not.
# category_weights_: read from the trained flow and the released marginals (post-processing).
NOISY_FITTED = {"n_rows_estimate_", "sample_rate_", "steps_", "copula_info_",
                "category_weights_"}
# The copula summary's entries that are public (the rest post-processes its release).
PUBLIC_COPULA_INFO = {"dims", "pairs", "row_bound", "clip", "noise_std"}


def _neighbours() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    small = pd.DataFrame({"age": rng.integers(0, 101, 1000), "code": rng.integers(1, 3, 1000)})
    big = pd.concat([small, pd.DataFrame({"age": [np.nan], "code": ["x"]})],
                    ignore_index=True)
    # The extra row flips the frame's dtypes: int64 -> float64 and int64 -> object.
    assert small.dtypes.tolist() == [np.int64, np.int64]
    assert big.dtypes.tolist() == [np.float64, object]
    return small, big


# ------------------------------------------------------------------ neighbours
def test_one_row_changes_no_dtype_and_nothing_saved_but_the_noisy_releases(tmp_path):
    fits = [DPFlowSynthesizer(epsilon=math.inf, random_state=0, **FAST).fit(
        frame, domain=NEIGHBOUR_DOMAIN) for frame in _neighbours()]
    samples = [synth.sample(300, random_state=1) for synth in fits]
    assert samples[0].dtypes.to_dict() == samples[1].dtypes.to_dict() == {
        "age": pd.Int64Dtype(), "code": np.dtype(object)}
    assert set(samples[0]["code"]) <= {"1", "2", "x", "other"}  # the declared objects
    states = []
    for k, synth in enumerate(fits):
        synth.save(tmp_path / f"{k}.skdpflow")
        states.append(torch.load(tmp_path / f"{k}.skdpflow", weights_only=True))
    small, big = states
    assert small.keys() == big.keys() and "dtypes" not in small
    for key in small.keys() - {"marginals", "flow", "marginals_info", "fitted"}:
        assert small[key] == big[key], key
    assert [m.shape for m in small["marginals"]] == [m.shape for m in big["marginals"]]
    # The heads' cell edges are the released masses (the encoding's, post-processing of
    # the noisy marginals); which dimensions are heads, in what order, with how many cells,
    # follows from the domain alone.
    configs = [dict(state["flow"]["config"]) for state in states]
    heads = [config.pop("discrete") for config in configs]
    assert configs[0] == configs[1]
    assert [(i, len(e)) for i, e in heads[0]] == [(i, len(e)) for i, e in heads[1]]
    for synth, config_heads in zip(fits, heads):
        assert [list(synth.encoder_.dims[i].edges) for i, _ in config_heads] == [
            e for _, e in config_heads]
    assert {k: v.shape for k, v in small["flow"]["state"].items()} == {
        k: v.shape for k, v in big["flow"]["state"].items()}
    info = small["marginals_info"].keys() - {"n_rows_estimate"}
    assert {k: small["marginals_info"][k] for k in info} == {
        k: big["marginals_info"][k] for k in info}
    exact = small["fitted"].keys() - NOISY_FITTED
    assert {k: small["fitted"][k] for k in exact} == {k: big["fitted"][k] for k in exact}
    copulas = small["fitted"]["copula_info_"], big["fitted"]["copula_info_"]
    assert copulas[0].keys() == copulas[1].keys() >= PUBLIC_COPULA_INFO
    assert {k: copulas[0][k] for k in PUBLIC_COPULA_INFO} == {
        k: copulas[1][k] for k in PUBLIC_COPULA_INFO}


def test_released_categories_are_strings_whatever_type_the_first_row_holds():
    base = pd.Series([1.0] * 600 + ["a"] * 600, dtype=object)
    prepended = pd.concat([pd.Series([1], dtype=object), base], ignore_index=True)
    released = []
    for column in (base, prepended):
        synth = DPFlowSynthesizer(epsilon=5.0, delta=1e-5, random_state=0, **FAST)
        synth.fit(pd.DataFrame({"c": column}))
        released.append(synth.domain_["c"].categories)
        assert set(map(type, synth.sample(200, random_state=0)["c"].dropna())) == {str}
    assert released[0] == released[1] == ["1", "a", OTHER]


# ------------------------------------------------------------------ the dtype rule
KINDS = {
    "int": {"type": "numerical", "integer": True, "min": 0, "max": 9},
    "int_null": {"type": "numerical", "integer": True, "min": 0, "max": 9, "nullable": True},
    "real": {"type": "numerical", "min": 0, "max": 9},
    "real_null": {"type": "numerical", "min": 0, "max": 9, "nullable": True},
    "flag": {"type": "boolean"},
    "flag_null": {"type": "boolean", "nullable": True},
    "when": {"type": "datetime", "min": "2020-01-01", "max": "2020-12-31"},
    "when_null": {"type": "datetime", "min": "2020-01-01", "max": "2020-12-31",
                  "nullable": True},
    "cat": {"type": "categorical", "categories": [1, 2, "b"]},
    "cat_null": {"type": "categorical", "categories": ["x", 2.5], "nullable": True},
}
RULE = {"int": np.dtype(np.int64), "int_null": pd.Int64Dtype(),
        "real": np.dtype(np.float64), "real_null": np.dtype(np.float64),
        "flag": np.dtype(bool), "flag_null": pd.BooleanDtype(),
        "when": np.dtype("datetime64[ns]"), "when_null": np.dtype("datetime64[ns]"),
        "cat": np.dtype(object), "cat_null": np.dtype(object)}


def _frame_in_other_dtypes(n: int = 400) -> pd.DataFrame:
    """Values of every declared kind, stored in dtypes the rule would not give them."""
    rng = np.random.default_rng(0)
    some_null = rng.random(n) < 0.2
    when = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 300, n), "D")
    return pd.DataFrame({
        "int": rng.integers(0, 10, n).astype(float),
        "int_null": rng.integers(0, 10, n),  # may be missing, holds no missing value
        "real": rng.integers(0, 10, n),
        "real_null": np.where(some_null, np.nan, rng.uniform(0, 9, n)),
        "flag": rng.integers(0, 2, n),
        "flag_null": pd.Series(rng.random(n) < 0.5, dtype=object).where(~some_null),
        "when": when.astype(str),
        "when_null": pd.Series(when).where(~some_null),
        "cat": rng.choice(["1", "2", "b"], n),
        "cat_null": pd.Series(rng.choice(["x", "2.5"], n), dtype=object).where(~some_null),
    })


def test_sample_dtypes_follow_the_rule_for_each_kind_nullable_or_not(tmp_path):
    assert {name: public_dtype(col) for name, col in Domain.from_dict(KINDS).columns.items()
            } == RULE
    synth = DPFlowSynthesizer(epsilon=math.inf, random_state=0, **FAST)
    synth.fit(_frame_in_other_dtypes(), domain=KINDS)
    synth.save(tmp_path / "m.skdpflow")
    for model in (synth, DPFlowSynthesizer.load(tmp_path / "m.skdpflow")):
        fake = model.sample(400, random_state=0)
        assert fake.dtypes.to_dict() == RULE
        assert {type(v) for v in fake["cat"]} == {int, str}  # the declared objects 1, 2, "b"
        assert set(fake["cat_null"].dropna()) <= {"x", 2.5}
        assert fake["when_null"].isna().any()
        # int_null holds no missing value: its head learns that (the released floor of 1%
        # keeps a few), so more rows show that missing values come out as <NA>.
        assert model.sample(20_000, random_state=0)["int_null"].isna().any()


def test_canonical_strings():
    assert [canonical(v) for v in (True, np.bool_(False), 1, np.int64(1), 1.0, "1")] == [
        "True", "False", "1", "1", "1", "1"]
    assert canonical(2.5) == canonical(np.float64(2.5)) == "2.5"
    assert canonical(pd.Timestamp("2020-01-02")) == "2020-01-02T00:00:00"
    with pytest.raises(TypeError, match="category"):
        canonical([1])


def test_categories_with_one_canonical_string_are_a_domain_error():
    for clash in ([1, "1"], ["2.5", 2.5], [True, "True"]):
        with pytest.raises(ValueError, match="'k'.*canonical string"):
            Domain.from_dict({"k": {"type": "categorical", "categories": clash}})


def test_text_in_a_numerical_column_is_counted_never_quoted():
    frame = pd.DataFrame({"n": ["1", "SECRET-7", "3"] * 20})
    domain = {"n": {"type": "numerical", "min": 0, "max": 5, "nullable": True}}
    with pytest.raises(InvalidDataError, match="'n' has 20 value") as err:
        DPFlowSynthesizer(epsilon=math.inf, **FAST).fit(frame, domain=domain)
    assert "SECRET" not in str(err.value)


@pytest.mark.parametrize("version", [2, 3])
def test_model_files_of_the_previous_format_are_refused(version):
    # Format 3 had no base correlation in the flow's state.
    with pytest.raises(ValueError, match=f"Unsupported model file format {version}.*refit"):
        _from_state(DPFlowSynthesizer, {"format": version})


# ------------------------------------------------------------------ command line
CLI_DOMAIN = {
    "age": {"type": "numerical", "integer": True, "min": 0, "max": 100, "nullable": True},
    "when": {"type": "datetime", "min": "2019-01-01", "max": "2021-12-31"},
}


def _csv(tmp_path, frame: pd.DataFrame) -> tuple[str, str]:
    import json

    frame.to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "domain.json").write_text(json.dumps(CLI_DOMAIN))
    return str(tmp_path / "data.csv"), str(tmp_path / "domain.json")


def test_cli_reads_declared_columns_by_their_type(tmp_path, capsys):
    rng = np.random.default_rng(0)
    age = pd.Series(rng.integers(0, 100, 500)).where(rng.random(500) > 0.3)  # blanks
    when = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 500, 500), "D")
    data, domain = _csv(tmp_path, pd.DataFrame({"age": age, "when": when}))
    model, out = tmp_path / "m.skdpflow", tmp_path / "fake.csv"
    assert main(["fit", data, "--domain", domain, "-o", str(model), "--epsilon", "inf",
                 "--epochs", "1", "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err  # every column declared
    fake = DPFlowSynthesizer.load(model).sample(300, random_state=0)
    assert fake["age"].dtype == pd.Int64Dtype() and fake["age"].isna().any()
    assert fake["when"].dtype == np.dtype("datetime64[ns]")
    assert main(["sample", str(model), "-n", "300", "-o", str(out)]) == 0
    text = pd.read_csv(out, dtype=str)["age"].dropna()
    assert len(text) and text.str.fullmatch(r"\d+").all()  # integers, no fractions


def test_cli_bad_numeric_text_names_the_column_not_the_value(tmp_path, capsys):
    frame = pd.DataFrame({"age": ["5", "SECRET-41", "", "7"] * 10,
                          "when": ["2020-03-01"] * 40})
    data, domain = _csv(tmp_path, frame)
    code = main(["fit", data, "--domain", domain, "-o", str(tmp_path / "m"),
                 "--epsilon", "inf", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "'age': 10 cell(s) are not numbers" in err
    assert "SECRET" not in err


def test_cli_warns_about_undeclared_columns_and_maps_output_flags(tmp_path, capsys):
    frame = pd.DataFrame({"age": [5, 6] * 30, "when": ["2020-03-01"] * 60,
                          "extra": [1.5, 2.5] * 30})
    data, domain = _csv(tmp_path, frame)
    assert main(["fit", data, "--domain", domain, "-o", str(tmp_path / "m"),
                 "--epsilon", "inf", "--epochs", "1", "--quiet"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "'extra'" in warning[0] and "inferred" in warning[0]
    parse = _parser().parse_args
    args = parse(["fit", data, "-o", "m"])
    assert args.seed is None and _synthesizer(args).verbose is True
    assert _synthesizer(parse(["fit", data, "-o", "m", "--quiet"])).verbose is False
    assert _synthesizer(parse(["fit", data, "-o", "m", "--show-nonprivate-loss"])
                        ).verbose == "loss"
    with pytest.raises(SystemExit):
        parse(["fit", data, "-o", "m", "--quiet", "--show-nonprivate-loss"])
