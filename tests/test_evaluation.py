"""skdpflow.evaluate and `skdpflow evaluate`: scores, result object, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import skdpflow
from skdpflow import InvalidDataError, evaluate
from skdpflow.cli import main
from skdpflow.evaluation import CAUTION


@pytest.fixture
def tiny() -> tuple[pd.DataFrame, pd.DataFrame]:
    real = pd.DataFrame({"a": ["x", "x", "y", "y"], "b": ["p", "q", "p", "q"]})
    fake = pd.DataFrame({"b": ["p", "p", "q", "q"], "a": ["x", "x", "x", "y"], "extra": 1})
    return real, fake


def _labelled(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "c": rng.choice(["u", "v", None], n),
                         "y": np.where(x + 0.5 * rng.normal(size=n) > 0.3, "yes", "no")})


def test_scores_by_hand(tiny):
    real, fake = tiny
    result = evaluate(real, fake)
    frame = result.to_frame()
    assert list(frame.columns) == ["synthetic", "real_data", "floor", "better"]
    assert frame.loc["tvd_1way", "synthetic"] == 0.125  # a: 1/4, b: 0
    assert frame.loc["tvd_2way", "synthetic"] == 0.25
    assert frame.loc["tvd_1way", "better"] == "lower" and frame.loc["quality", "better"] == "higher"
    assert frame["real_data"].isna().all() and frame["floor"].isna().all()  # no test split
    assert result.columns["tvd"].to_dict() == {"a": 0.25, "b": 0.0}
    assert result.pairs.to_dict() == {"a x b": 0.25}
    assert result.association_synthetic.loc["a", "b"] == pytest.approx(math.sqrt(1 / 3))
    assert result.association_real.loc["a", "b"] == 0.0
    dist = result.distributions["a"]
    assert dist.labels == ["x", "y"] and dist.real.tolist() == [0.5, 0.5]
    assert dist.synthetic.tolist() == [0.75, 0.25] and dist.edges is None
    frame.loc["tvd_1way", "synthetic"] = 9  # a copy
    assert result.to_frame().loc["tvd_1way", "synthetic"] == 0.125


def test_repr_is_a_table_with_the_caution(tiny):
    text = repr(evaluate(*tiny))
    assert CAUTION in text and "NOT PRIVATE" in text
    assert "tvd_1way" in text and "0.125" in text and "worst columns (1-way TVD): a 0.250" in text
    assert skdpflow.evaluate is evaluate


def test_tstr_with_ceiling_and_floor():
    real, test = _labelled(300, 0), _labelled(200, 1)
    fake = real.assign(y=real["y"].map({"yes": "no", "no": "yes"}))  # learns it backwards
    result = evaluate(real, fake, test=test, target="y")
    frame = result.to_frame()
    assert {"auroc_hgb", "auroc_logreg", "accuracy_hgb", "accuracy_logreg"} <= set(frame.index)
    assert frame.loc["auroc_logreg", "real_data"] > 0.85  # the ceiling: trained on real rows
    assert frame.loc["auroc_logreg", "synthetic"] < 0.15
    assert frame.loc["auroc_hgb", "floor"] == 0.5
    majority = real["y"].mode().iloc[0]
    assert frame.loc["accuracy_hgb", "floor"] == pytest.approx((test["y"] == majority).mean())
    assert frame.loc["tvd_1way", "real_data"] > 0  # two real samples differ a little
    assert result.n_rows == {"real": 300, "synthetic": 300, "test": 200}
    assert "200 test rows, target 'y'" in repr(result)


def test_model_and_domain_are_used(tiny):
    real = pd.DataFrame({"code": np.arange(60) % 30})

    class Fitted:  # what evaluate reads of a model
        domain_ = skdpflow.Domain.from_dict({"code": {"type": "categorical",
                                                       "categories": list(range(30))}})

        def privacy_report(self) -> dict:
            return {"private": True, "mechanisms": []}

    result = evaluate(real, real, model=Fitted())
    assert result.privacy == {"private": True, "mechanisms": []}
    assert result.columns.loc["code", "kind"] == "categorical"
    assert len(result.distributions["code"].labels) == 20 + 1  # top levels + (other)
    inferred = evaluate(real, real)
    assert inferred.columns.loc["code", "kind"] == "numerical"
    assert inferred.distributions["code"].edges is not None


def test_errors_list_every_problem(tiny):
    real, fake = tiny
    with pytest.raises(InvalidDataError) as info:
        evaluate(real, fake.drop(columns=["a"]), test=real[["b"]], target="nope")
    problems = info.value.problems
    assert len(problems) == 3 and "'synthetic' lacks column(s) ['a']" in problems[0]
    assert "'test' lacks" in problems[1] and "target 'nope'" in problems[2]
    with pytest.raises(ValueError, match="'target' needs a 'test'"):
        evaluate(real, fake, target="a")
    with pytest.raises(InvalidDataError, match="'synthetic' has no rows"):
        evaluate(real, fake.iloc[:0])
    with pytest.raises(InvalidDataError, match="must be a pandas DataFrame, got list"):
        evaluate(real, [1, 2])


def test_cli_prints_the_table_and_writes_the_report(tmp_path, capsys):
    paths = {}
    for name, frame in [("real", _labelled(200, 0)), ("fake", _labelled(200, 2)),
                        ("test", _labelled(150, 1))]:
        paths[name] = tmp_path / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    out = tmp_path / "report.html"
    args = ["evaluate", str(paths["real"]), str(paths["fake"]), "--test", str(paths["test"]),
            "--target", "y", "-o", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "NOT PRIVATE" in printed and "auroc_hgb" in printed and "floor" in printed
    assert f"report written to {out}" in printed
    assert "id='tstr'" in out.read_text()
    assert main(args) == 2  # no --force: never over an existing file
    assert "already exists: pass --force" in capsys.readouterr().err


@pytest.mark.parametrize("extra, code, message", [
    (["--target", "y"], 2, "--target needs --test"),
    (["--test", "{real}", "--target", "nope"], 1, "target 'nope' is not a column"),
    (["-o", "{real}"], 2, "is an input of this command"),
    (["--domain", "{domain}"], 1, "column 'x': 1 cell(s) are not numbers"),
])
def test_cli_errors(tmp_path, capsys, extra, code, message):
    real = tmp_path / "real.csv"
    _labelled(50, 0).to_csv(real, index=False)
    bad = tmp_path / "bad.csv"
    _labelled(50, 1).astype({"x": object}).assign(x=lambda d: d["x"].where(d.index > 0, "?")) \
        .to_csv(bad, index=False)
    domain = tmp_path / "domain.json"
    domain.write_text(json.dumps({"x": {"type": "numerical", "min": -10, "max": 10}}))
    extra = [e.format(real=real, domain=domain) for e in extra]
    assert main(["evaluate", str(real), str(bad), *extra]) == code
    err = capsys.readouterr().err
    assert err.startswith("skdpflow: error: ") and message in err and err.count("\n") == 1


def test_rules_and_worst_pairs_by_hand(tiny):
    real, fake = tiny
    rule = skdpflow.FixedCombinations(["a", "b"], [("x", "p"), ("y", "q"), ("x", "q")])
    result = evaluate(real, fake, rules=[rule, skdpflow.Implication("a", "y", "b", "p")])
    # real: (x,p) (x,q) (y,p) (y,q); fake: (x,p) (x,p) (x,q) (y,q)
    assert result.consistency.to_dict("index") == {
        repr(rule): {"real": 0.75, "synthetic": 1.0},
        "Implication('a' in ['y'] -> 'b' in ['p'])": {"real": 0.75, "synthetic": 0.75}}
    frame = result.to_frame()
    row = frame.loc[f"consistency: {rule!r}"]
    assert (row["synthetic"], row["real_data"], row["better"]) == (1.0, 0.75, "higher")
    assert np.isnan(row["floor"])
    assert list(result.worst_pairs.index) == ["a x b"]  # 1 - the pair's 2-way TVD of 0.25
    assert result.worst_pairs.loc["a x b", "synthetic"] == 0.75
    assert np.isnan(result.worst_pairs.loc["a x b", "real_data"])  # no test split
    text = repr(result)
    assert "worst pairs (contingency similarity, synthetic): a x b 0.750" in text
    assert f"  0.750 / 1.000  {rule!r}" in text and "rules kept" in text
    assert "consistency:" not in text.split("worst columns")[0]  # not in the scores table
    assert evaluate(real, fake).consistency is None
    assert "rules kept" not in repr(evaluate(real, fake))


def test_worst_pairs_with_a_test_split():
    real, test = _labelled(300, 0), _labelled(200, 1)
    fake = real.assign(c=real["c"].sample(frac=1, random_state=0).to_numpy())
    result = evaluate(real, fake, test=test)
    worst = result.worst_pairs
    assert list(worst.columns) == ["synthetic", "real_data"] and len(worst) == 3
    assert worst["synthetic"].is_monotonic_increasing
    assert worst["synthetic"].to_dict() == pytest.approx(
        (1 - result.pairs).to_dict())  # 1 - the 2-way TVD of every pair
    for pair, value in worst["real_data"].items():
        a, b = pair.split(" x ")
        tvd = skdpflow.metrics.marginal_tvd(real[[a, b]], test[[a, b]], 2)[(a, b)]
        assert value == pytest.approx(1 - tvd)
    assert result.to_frame().loc["tvd_2way", "real_data"] == pytest.approx(
        1 - worst["real_data"].mean())  # three columns: the worst five are all pairs
    assert "worst pairs (contingency similarity, synthetic / real data): " in repr(result)


def test_rules_are_checked_against_the_table_and_the_domain(tiny):
    real, fake = tiny
    with pytest.raises(InvalidDataError, match=r"rule Inequality\('a' <= 'zz'\) names column"):
        evaluate(real, fake, rules=[skdpflow.Inequality("a", "zz")])
    domain = {"a": {"type": "categorical", "categories": ["x", "y"]},
              "b": {"type": "categorical", "categories": ["p", "q"]}}
    with pytest.raises(ValueError, match=r"'w' is not a declared category of column 'a'"):
        evaluate(real, fake, domain=domain, rules=[{"kind": "implication", "if_column": "a",
                                                    "if_values": ["w"], "then_column": "b",
                                                    "then_values": ["p"]}])
    with pytest.raises(ValueError, match="rule 1: Unknown rule kind"):
        evaluate(real, fake, rules=[{"kind": "nope"}])
    partial = {"a": {"type": "categorical", "categories": ["x", "y"]}}  # b undeclared
    evaluate(real, fake, domain=partial, rules=[skdpflow.Implication("a", "x", "b", "zz")])


def test_cli_rules(tmp_path, capsys):
    real, fake = tmp_path / "real.csv", tmp_path / "fake.csv"
    _labelled(100, 0).to_csv(real, index=False)
    _labelled(100, 2).to_csv(fake, index=False)
    rules = tmp_path / "rules.yaml"
    rules.write_text("- kind: implication\n  if_column: y\n  if_values: ['yes']\n"
                     "  then_column: c\n  then_values: [u]\n"
                     "- {kind: value_range, column: x, low: -1, high: 1}\n")
    assert main(["evaluate", str(real), str(fake), "--rules", str(rules)]) == 0
    out = capsys.readouterr().out
    assert "rules kept (share of rows, real / synthetic):" in out
    frame = _labelled(100, 2)
    share = 1 - ((frame["y"] == "yes") & (frame["c"] == "v")).mean()  # c missing keeps it
    assert f" / {share:.3f}  Implication('y' in ['yes'] -> 'c' in ['u'])" in out
    share = skdpflow.ValueRange("x", -1, 1).satisfied(_labelled(100, 2)).mean()
    assert f" / {share:.3f}  ValueRange(-1 <= 'x' <= 1)" in out
    rules.write_text("- {kind: value_range, column: x}\n")
    assert main(["evaluate", str(real), str(fake), "--rules", str(rules)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"skdpflow: error: rules file {rules}: rule 1: ValueRange('x') "
                          "needs 'low', 'high' or both.") and err.count("\n") == 1
    assert main(["evaluate", str(real), str(fake), "--rules", str(rules), "-o",
                 str(rules)]) == 2
    assert "is an input of this command" in capsys.readouterr().err
