"""Bad input: a clear error before the budget is spent, and no file is ever lost (issue 10)."""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from skdpflow import DPFlowSynthesizer, InvalidDataError, ModelFileError, OutputPathError
from skdpflow.cli import main
from skdpflow.domain import as_domain
from skdpflow.privacy.ledger import MAX_EPSILON

FAST = {"epsilon": math.inf, "epochs": 1, "batch_size": 64, "n_stages": 2, "hidden_size": 8,
        "verbose": False, "device": "cpu"}
CLI_FAST = ["--epsilon", "inf", "--epochs", "0.5", "--batch-size", "64", "--quiet"]
DOMAIN = {"a": {"type": "numerical", "min": -5, "max": 5},
          "b": {"type": "categorical", "categories": ["x", "y"]}}


def _frame(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.choice(["x", "y"], n)})


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A small CSV and its domain file, in a fresh folder."""
    data, domain = tmp_path / "data.csv", tmp_path / "domain.json"
    _frame().to_csv(data, index=False)
    domain.write_text(json.dumps(DOMAIN))
    return {"data": data, "domain": domain, "dir": tmp_path}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m.skdpflow"
    DPFlowSynthesizer(**FAST).fit(_frame(), domain=DOMAIN).save(path)
    return path


def _fit_args(files: dict[str, Path], output: Path | str, *extra: str) -> list[str]:
    return ["fit", str(files["data"]), "--domain", str(files["domain"]), "-o", str(output),
            *CLI_FAST, *extra]


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skdpflow: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def _no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".skdpflow-")]


def _must_not_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("the private computation ran before the output path was checked")


# ------------------------------------------------------- 1. files are never destroyed
def test_fit_never_writes_over_its_input(files, capsys):
    before = files["data"].read_bytes()
    assert main(_fit_args(files, files["data"])) == 2
    assert "never writes over its input" in _one_error_line(capsys)
    assert files["data"].read_bytes() == before
    assert main(_fit_args(files, files["domain"], "--force")) == 2
    assert json.loads(files["domain"].read_text()) == DOMAIN


def test_sample_never_writes_over_its_model(model_file, capsys):
    before = model_file.read_bytes()
    assert main(["sample", str(model_file), "-n", "5", "-o", str(model_file), "--force"]) == 2
    assert "never writes over its input" in _one_error_line(capsys)
    assert model_file.read_bytes() == before


def test_an_existing_output_is_replaced_only_with_force(files, model_file, capsys):
    target = files["dir"] / "out.skdpflow"
    target.write_bytes(b"precious")
    assert main(_fit_args(files, target)) == 2
    assert "already exists: pass --force" in _one_error_line(capsys)
    assert target.read_bytes() == b"precious"
    assert main(_fit_args(files, target, "--force")) == 0
    DPFlowSynthesizer.load(target)
    csv = files["dir"] / "fake.csv"
    csv.write_text("precious")
    assert main(["sample", str(model_file), "-n", "5", "-o", str(csv)]) == 2
    assert csv.read_text() == "precious"
    assert main(["sample", str(model_file), "-n", "5", "-o", str(csv), "--force"]) == 0
    assert len(pd.read_csv(csv)) == 5


def test_a_failed_save_leaves_the_previous_model_file_intact(model_file, tmp_path,
                                                              monkeypatch):
    target = tmp_path / "m.skdpflow"
    target.write_bytes(model_file.read_bytes())
    model = DPFlowSynthesizer.load(target)

    def disk_full(obj: object, f: object) -> None:
        f.write(b"half a model")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        model.save(target)
    assert target.read_bytes() == model_file.read_bytes()
    assert _no_temporary_files(tmp_path)


def test_a_failed_csv_write_leaves_the_previous_file_intact(model_file, tmp_path,
                                                            monkeypatch, capsys):
    csv = tmp_path / "fake.csv"
    csv.write_text("precious")

    def disk_full(self: pd.DataFrame, path: object, **kwargs: object) -> None:
        if hasattr(path, "write"):  # sample writes its chunks into one open file
            path.write("a,b\n1,")
        else:
            Path(path).write_text("a,b\n1,")
        raise OSError("No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    assert main(["sample", str(model_file), "-n", "5", "-o", str(csv), "--force"]) == 1
    assert "No space left" in _one_error_line(capsys)
    assert csv.read_text() == "precious"
    assert _no_temporary_files(tmp_path)


# --------------------------------------- 2. output paths checked before any private work
def test_fit_checks_the_output_folder_before_fitting(files, monkeypatch, capsys):
    monkeypatch.setattr(DPFlowSynthesizer, "fit", _must_not_run)
    assert main(_fit_args(files, files["dir"] / "missing" / "dir" / "m.skdpflow")) == 2
    line = _one_error_line(capsys)
    assert "missing" in line and "does not exist" in line
    assert main(_fit_args(files, files["dir"])) == 2
    assert "is a folder" in _one_error_line(capsys)


def test_sample_checks_the_output_folder_before_sampling(model_file, tmp_path, monkeypatch,
                                                         capsys):
    monkeypatch.setattr(DPFlowSynthesizer, "sample", _must_not_run)
    monkeypatch.setattr(DPFlowSynthesizer, "sample_to", _must_not_run)
    assert main(["sample", str(model_file), "-n", "5",
                 "-o", str(tmp_path / "missing" / "dir" / "x.csv")]) == 2
    line = _one_error_line(capsys)
    assert "missing" in line and "does not exist" in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_folder_is_refused_before_fitting(files, monkeypatch, capsys):
    locked = files["dir"] / "locked"
    locked.mkdir(mode=0o500)
    monkeypatch.setattr(DPFlowSynthesizer, "fit", _must_not_run)
    assert main(_fit_args(files, locked / "m.skdpflow")) == 2
    assert "not writable" in _one_error_line(capsys)


def test_save_refuses_a_folder_or_a_missing_folder(model_file, tmp_path):
    model = DPFlowSynthesizer.load(model_file)
    with pytest.raises(OutputPathError, match="is a folder"):
        model.save(tmp_path)
    with pytest.raises(OutputPathError, match="does not exist"):
        model.save(tmp_path / "nowhere" / "m.skdpflow")


# ------------------------------------------------- 3. one line, in the package's words
def test_duplicate_column_names_are_named():
    frame = pd.DataFrame([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], columns=["a", "a"])
    with pytest.raises(InvalidDataError, match=r"\['a'\] given more than once"):
        DPFlowSynthesizer(**FAST).fit(frame)


def test_duplicate_csv_headers_are_refused_not_renamed(tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text("a,a\n1,2\n3,4\n5,6\n")
    assert main(["fit", str(data), "-o", str(tmp_path / "m"), *CLI_FAST]) == 1
    assert "['a'] given more than once" in _one_error_line(capsys)


@pytest.mark.parametrize("declared", [
    {"x": {"type": "numerical", "min": -5, "max": 5, "nullable": True}},
    {"x": {"type": "datetime", "min": "2020-01-01", "max": "2021-01-01", "nullable": True}},
    {},  # undeclared: its missingness is known only after the DP estimate
])
def test_a_column_named_like_an_internal_indicator_is_its_own_column(declared):
    """The encoding keys its columns by (column, part), so "x.is_null" cannot be mistaken for
    the missing-value indicator of "x"."""
    rng = np.random.default_rng(0)
    x = pd.Series(rng.normal(size=200))
    if declared.get("x", {}).get("type") == "datetime":
        x = pd.Timestamp("2020-06-01") + pd.to_timedelta(rng.integers(0, 100, 200), unit="D")
        x = pd.Series(x)
    frame = pd.DataFrame({"x": x, "x.is_null": rng.normal(3, 0.5, size=200)})
    frame.loc[:5, "x"] = None
    domain = dict(declared, **{"x.is_null": {"type": "numerical", "min": -5, "max": 5}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the undeclared case's small-table DP estimate
        fake = DPFlowSynthesizer(**FAST).fit(frame, domain=domain).sample(200, random_state=0)
    assert list(fake.columns) == ["x", "x.is_null"]
    assert fake["x.is_null"].notna().all() and fake["x.is_null"].mean() > 1


def test_the_indicator_name_is_free_when_the_column_gets_no_indicator():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.choice(["p", "q"], 200).astype(object),
                          "x.is_null": rng.normal(size=200)})
    frame.loc[:5, "x"] = None
    domain = {"x": {"type": "categorical", "categories": ["p", "q"], "nullable": True},
              "x.is_null": {"type": "numerical", "min": -5, "max": 5}}
    fake = DPFlowSynthesizer(**FAST).fit(frame, domain=domain).sample(20, random_state=0)
    assert list(fake.columns) == ["x", "x.is_null"]
    assert fake["x.is_null"].between(-5, 5).all()


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("bad.json", '{"a": {"type": "numerical",\n "min": 0 "max": 1}}', "line 2, column 11"),
    ("dup.json", '{"a": {"type": "numerical", "min": 0, "max": 1, "max": 2}}',
     "the key 'max' is given twice"),
    ("bad.yaml", "a:\n  type: numerical\n  min: [0\n", "not valid YAML"),
    ("dup.yaml", "a: {type: numerical, min: 0, max: 1}\na: {type: numerical}\n",
     "line 2: the key 'a' is given twice"),
    ("entry.json", '{"a": {"type": "numerical", "min": 5, "max": 1}}',
     "Domain entry for 'a': Invalid bounds"),
])
def test_domain_file_errors_name_the_file(files, name, text, expected, capsys):
    path = files["dir"] / name
    path.write_text(text)
    with pytest.raises(ValueError, match=expected) as err:
        as_domain(path)
    assert str(path) in str(err.value)
    args = _fit_args(files, files["dir"] / "m.skdpflow")
    args[args.index("--domain") + 1] = str(path)
    assert main(args) == 1
    line = _one_error_line(capsys)
    assert str(path) in line and expected in line


def _truncated(good: bytes) -> bytes:
    return good[: len(good) // 2]


@pytest.mark.parametrize(("kind", "make"), [
    ("empty", lambda p, good: p.write_bytes(b"")),
    ("truncated", lambda p, good: p.write_bytes(_truncated(good))),
    ("csv", lambda p, good: p.write_text("a,b\n1,2\n")),
    ("folder", lambda p, good: p.mkdir()),
    ("pickle", lambda p, good: p.write_bytes(pickle.dumps({"format": 3, "x": Path("/")}))),
    ("arbitrary object", lambda p, good: torch.save({"x": ModelFileError("x")}, str(p))),
])
def test_a_file_that_is_not_a_model_is_named(model_file, tmp_path, kind, make, capsys):
    path = tmp_path / "m.skdpflow"
    make(path, model_file.read_bytes())
    with pytest.raises(ModelFileError, match="is not a skdpflow model file") as err:
        DPFlowSynthesizer.load(path)
    assert str(path) in str(err.value) and "weights_only" not in str(err.value)
    assert main(["report", str(path)]) == 1
    line = _one_error_line(capsys)
    assert "is not a skdpflow model file" in line and "weights_only" not in line


def test_a_model_file_missing_an_entry_is_named(model_file, tmp_path):
    state = torch.load(str(model_file), weights_only=True)
    del state["ledger"]
    path = tmp_path / "m.skdpflow"
    torch.save(state, str(path))
    with pytest.raises(ModelFileError, match=r"not a skdpflow model file .*'ledger'"):
        DPFlowSynthesizer.load(path)


def test_a_list_of_records_is_read_as_pandas_reads_it():
    records = [{"a": float(i % 7), "b": "xy"[i % 2]} for i in range(100)]
    model = DPFlowSynthesizer(**FAST).fit(records)
    assert list(model.feature_names_in_) == ["a", "b"]
    assert model.score_samples(records[:3]).shape == (3,)


def test_rows_of_mixed_python_values_keep_each_column_type():
    rows = [[i % 5, "a" if i % 2 else "b", float(i)] for i in range(60)]
    synth = DPFlowSynthesizer(**FAST).fit(rows)
    kinds = [synth.domain_[c].type for c in synth.feature_names_in_]
    assert kinds == ["numerical", "categorical", "numerical"]  # not all strings
    with pytest.raises(ValueError, match="different lengths"):
        DPFlowSynthesizer(**FAST).fit([[1, 2], [3]] * 10)


def test_an_infinity_inside_a_text_column_is_an_error_not_other():
    frame = pd.DataFrame({"c": ["a", "b", math.inf] * 20})
    with pytest.raises(InvalidDataError, match="'c': holds infinite values"):
        DPFlowSynthesizer(**FAST).fit(frame)


def test_score_samples_names_extra_and_missing_columns(model_file):
    model = DPFlowSynthesizer.load(model_file)
    rows = _frame(3)
    with pytest.raises(ValueError, match=r"extra: \['c'\]"):
        model.score_samples(rows.assign(c=1.0))
    with pytest.raises(ValueError, match=r"missing: \['b'\]; extra: \['c'\]"):
        model.score_samples(rows.drop(columns="b").assign(c=1.0))


def test_the_sdv_adapter_refuses_an_empty_table_at_fit():
    pytest.importorskip("sdv")
    from sdv.metadata import Metadata

    from skdpflow.sdv import SDV_MAJOR, DPFlowSDVSynthesizer

    metadata = Metadata()
    metadata.add_table("t")
    metadata.add_column("a", table_name="t", sdtype="numerical")
    metadata.add_column("b", table_name="t", sdtype="categorical")
    synth = DPFlowSDVSynthesizer(metadata, domain=DOMAIN, **FAST)
    empty = _frame().iloc[:0]
    with pytest.raises(ValueError, match="'t' is empty"):
        synth.fit({"t": empty} if SDV_MAJOR >= 2 else empty)


def test_debug_shows_the_traceback_and_unexpected_errors_stay_one_line(
        tmp_path, model_file, monkeypatch, capsys):
    with pytest.raises(ModelFileError):
        main(["--debug", "report", str(tmp_path)])
    with pytest.raises(ModelFileError):
        main(["report", str(tmp_path), "--debug"])

    def bug(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something broke\nover two lines")

    monkeypatch.setattr(DPFlowSynthesizer, "privacy_report", bug)
    assert main(["report", str(model_file)]) == 1
    line = _one_error_line(capsys)
    assert "unexpected RuntimeError" in line and "--debug" in line


# ------------------------------------------------------------------ 4. Ctrl-C
@pytest.mark.parametrize("where", ["fit", "save"])
def test_ctrl_c_during_fit_exits_130_and_writes_nothing(files, monkeypatch, capsys, where):
    def interrupt(*args: object, **kwargs: object) -> None:
        if where == "save":
            args[1].write(b"half a model")
        raise KeyboardInterrupt

    if where == "fit":
        monkeypatch.setattr(DPFlowSynthesizer, "fit", interrupt)
    else:
        monkeypatch.setattr(torch, "save", interrupt)
    output = files["dir"] / "m.skdpflow"
    assert main(_fit_args(files, output)) == 130
    assert capsys.readouterr().err.strip() == "skdpflow: interrupted"
    assert not output.exists() and _no_temporary_files(files["dir"])


# ------------------------------------------------ 5. a failed refit keeps the old model
def test_a_failed_refit_leaves_the_fitted_model_intact(monkeypatch):
    model = DPFlowSynthesizer(**FAST).fit(_frame(), domain=DOMAIN)
    flow, ledger, before = model.flow_, model.ledger_, model.sample(10, random_state=1)
    with pytest.raises(ValueError, match="not in the data"):
        model.fit(_frame(), domain={**DOMAIN, "zz": DOMAIN["a"]})
    with pytest.raises(InvalidDataError, match="more than once"):
        model.fit(pd.DataFrame([[1.0, 2.0]] * 5, columns=["a", "a"]))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("training failed")

    monkeypatch.setattr("skdpflow.synthesizer.train_flow", broken)
    with pytest.raises(RuntimeError, match="training failed"):
        model.fit(_frame().rename(columns={"a": "c"}))
    assert model.flow_ is flow and model.ledger_ is ledger
    assert list(model.feature_names_in_) == ["a", "b"]
    pd.testing.assert_frame_equal(model.sample(10, random_state=1), before)


# --------------------------------------------------------- 6. epsilon out of range
def test_epsilon_above_the_maximum_is_refused_before_anything(files, monkeypatch, capsys):
    with pytest.raises(ValueError, match="'epsilon'"):  # before X is even looked at
        DPFlowSynthesizer(epsilon=MAX_EPSILON * 2).fit("not a table")
    monkeypatch.setattr(DPFlowSynthesizer, "fit", _must_not_run)
    args = ["fit", str(files["dir"] / "no-such.csv"), "-o", str(files["dir"] / "m"),
            "--epsilon", str(MAX_EPSILON * 2), "--quiet"]
    assert main(args) == 2
    assert "'epsilon'" in _one_error_line(capsys)
