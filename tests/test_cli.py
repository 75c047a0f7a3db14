"""The command line, end to end on small files."""

from __future__ import annotations

import json

import pandas as pd

from skdpflow.cli import main


def test_fit_sample_report(tmp_path, mixed_frame, mixed_domain, capsys):
    data = tmp_path / "data.csv"
    mixed_frame.to_csv(data, index=False)
    (tmp_path / "domain.json").write_text(json.dumps(mixed_domain))
    model = tmp_path / "m.skdpflow"
    code = main(["fit", str(data), "--epsilon", "2", "--delta", "1e-4", "--epochs", "1",
                 "--batch-size", "64", "--domain", str(tmp_path / "domain.json"),
                 "-o", str(model), "--quiet"])
    assert code == 0 and model.exists()
    assert "-DP for one row" in capsys.readouterr().out
    out = tmp_path / "fake.csv"
    assert main(["sample", str(model), "-n", "123", "-o", str(out), "--seed", "1"]) == 0
    fake = pd.read_csv(out)
    assert len(fake) == 123 and list(fake.columns) == list(mixed_frame.columns)
    assert main(["report", str(model)]) == 0
    assert "declared public for every column" in capsys.readouterr().out


def test_errors_are_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"a": [1.0]}).to_csv(bad, index=False)
    assert main(["fit", str(bad), "-o", str(tmp_path / "m"), "--quiet"]) == 1
    assert "1 sample" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "missing"), "-n", "3", "-o", "x.csv"]) == 1


def test_demo_runs_on_the_bundled_table(capsys):
    assert main(["demo", "--epochs", "0.1", "-n", "2000", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "UCI Adult" in out and "1-way" in out and "-DP for one row" in out


def test_fit_without_domain_estimates_it_and_opt_out_is_loud(tmp_path, capsys):
    from conftest import make_mixed_frame

    data = tmp_path / "data.csv"
    make_mixed_frame(2_000).to_csv(data, index=False)
    common = ["fit", str(data), "--epsilon", "2", "--delta", "1e-5", "--epochs", "0.5",
              "--batch-size", "256", "--quiet"]
    assert main([*common, "-o", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "domain estimated under DP for 6 column(s)" in out and "WARNING" not in out
    assert main([*common, "-o", str(tmp_path / "b"), "--privacy", "domain_from_data"]) == 0
    assert "WARNING: domain of 6 column(s) read from the data" in capsys.readouterr().out
