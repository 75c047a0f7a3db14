"""Declared rules: the domain's `constraints`, their checks at declaration, their enforcement
on every sampled row (a per-row repair checked against a slow row-by-row twin), the domain
and model files, and that declaring them changes nothing that `fit` stores but the rules."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import MIXED_DOMAIN, make_mixed_frame

from skdpflow import (
    Domain,
    DPFlowSynthesizer,
    FixedCombinations,
    FunctionOf,
    Implication,
    Inequality,
    RuleConflictError,
    ValueRange,
    load_demo_domain,
    load_demo_rules,
)
from skdpflow.domain import canonical, public_dtype
from skdpflow.enforcement import Enforcer, released_mass

FAST = {"epochs": 1, "batch_size": 64, "n_stages": 3, "hidden_size": 16, "verbose": False}

# The mixed frame with columns that rules link: a band of the age, an end after `when`, a
# tier that only some cities have.
EXTRA_DOMAIN = {
    "band": {"type": "categorical", "categories": ["young", "middle", "old"]},
    "end": {"type": "datetime", "min": "2019-01-01", "max": "2022-12-31"},
    "tier": {"type": "numerical", "min": 1, "max": 3, "integer": True},
    "low": {"type": "numerical", "min": 0, "max": 10},
    "high": {"type": "numerical", "min": 0, "max": 10, "integer": True},
}
RULES = [
    FunctionOf("age", "band", bins=[18, 40, 65, 90], labels=["young", "middle", "old"]),
    Inequality("when", "end", strict=True),
    ValueRange("score", 20, 80),
    Implication("flag", [True], "city", ["Paris", "Lille"]),
    FixedCombinations(["city", "tier"], [("Paris", 1), ("Paris", 2), ("Lyon", 2),
                                         ("Nice", 3), ("Lille", 3)]),
    Inequality("low", "high", strict=True),
]


def _frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Rows that break every rule often (the private rows need not keep them)."""
    rng = np.random.default_rng(seed)
    df = make_mixed_frame(n, seed)
    df["band"] = rng.choice(["young", "middle", "old"], n).astype(object)
    df["end"] = pd.Timestamp("2020-06-01") + pd.to_timedelta(rng.integers(-300, 300, n),
                                                             unit="D")
    df["tier"] = rng.integers(1, 4, n)
    df["low"] = rng.uniform(0, 10, n)
    df["high"] = rng.integers(0, 11, n)
    return df


def _domain(rules: list | None = None) -> Domain:
    return Domain.from_dict({"columns": {**MIXED_DOMAIN, **EXTRA_DOMAIN},
                             "constraints": [r.to_dict() for r in (rules or [])]})


@pytest.fixture(scope="module")
def fitted():
    synth = DPFlowSynthesizer(epsilon=1.0, delta=1e-4, random_state=0, **FAST)
    synth.fit(_frame(), domain=_domain(RULES))
    return synth


def _unrepaired(synth: DPFlowSynthesizer, n: int, seed: int) -> pd.DataFrame:
    declared, synth.domain_.constraints = synth.domain_.constraints, []
    try:
        return synth.sample(n, random_state=seed)
    finally:
        synth.domain_.constraints = declared


# ------------------------------------------------------------------ sampled rows keep rules
def test_every_sampled_row_keeps_every_declared_rule_in_the_domains_dtypes(fitted):
    fake = fitted.sample(3000, random_state=1)
    for rule in RULES:
        assert rule.satisfied(fake).all(), rule
    for name, col in fitted.domain_.columns.items():
        assert fake[name].dtype == public_dtype(col), name
    raw = _unrepaired(fitted, 3000, 1)  # the model's own rows break them: the test can fail
    assert not all(rule.satisfied(raw).all() for rule in RULES)
    assert all(rule.satisfied(raw).mean() < 1 for rule in RULES[:2])


def test_the_repair_is_post_processing_of_the_same_rows(fitted):
    fake, raw = fitted.sample(2000, random_state=3), _unrepaired(fitted, 2000, 3)
    mass = released_mass(fitted.marginals_, fitted.domain_)
    pd.testing.assert_frame_equal(Enforcer(fitted.domain_, mass=mass)(raw), fake)
    keeps = np.logical_and.reduce([r.satisfied(raw) for r in RULES])
    pd.testing.assert_frame_equal(fake[keeps], raw[keeps])  # rows keeping them: untouched


def test_sample_to_and_the_cli_keep_the_rules(fitted, tmp_path):
    from skdpflow.cli import main

    path = fitted.sample_to(tmp_path / "fake.csv", 1500, chunk_size=500, random_state=2)
    out = pd.read_csv(path, parse_dates=["when", "end"])
    for rule in RULES:
        assert rule.satisfied(out).all(), rule
    model = tmp_path / "m.skdpflow"
    fitted.save(model)
    assert main(["sample", str(model), "-n", "800", "-o", str(tmp_path / "cli.csv"),
                 "--quiet"]) == 0
    out = pd.read_csv(tmp_path / "cli.csv", parse_dates=["when", "end"])
    for rule in RULES:
        assert rule.satisfied(out).all(), rule


def test_the_cli_fit_reads_the_rules_from_the_domain_file(tmp_path):
    from skdpflow.cli import main

    rules = [FunctionOf("age", "band", bins=[18, 40, 65, 90], labels=["young", "middle", "old"])]
    _frame().to_csv(tmp_path / "data.csv", index=False)
    _domain(rules).save(tmp_path / "domain.yaml")
    model = tmp_path / "m.skdpflow"
    assert main(["fit", str(tmp_path / "data.csv"), "--domain", str(tmp_path / "domain.yaml"),
                 "-o", str(model), "--epsilon", "1", "--epochs", "1", "--n-stages", "3",
                 "--hidden-size", "16", "--quiet"]) == 0
    loaded = DPFlowSynthesizer.load(model)
    assert loaded.domain_.constraints == rules
    assert rules[0].satisfied(loaded.sample(500, random_state=0)).all()


# --------------------------------------------------------------- model and domain files
def test_the_model_file_keeps_the_rules(fitted, tmp_path):
    fitted.save(tmp_path / "m.skdpflow")
    state = torch.load(tmp_path / "m.skdpflow", weights_only=True)
    assert state["format"] == 9
    assert state["domain"]["constraints"] == [r.to_dict() for r in RULES]
    loaded = DPFlowSynthesizer.load(tmp_path / "m.skdpflow")
    assert loaded.domain_.constraints == RULES
    pd.testing.assert_frame_equal(loaded.sample(1000, random_state=4),
                                  fitted.sample(1000, random_state=4))


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_the_domain_file_round_trips_with_constraints(tmp_path, suffix):
    domain = _domain(RULES)
    domain.save(tmp_path / f"d{suffix}")
    loaded = Domain.load(tmp_path / f"d{suffix}")
    assert loaded.constraints == RULES and loaded.to_dict() == domain.to_dict()
    assert list(loaded.columns) == list(domain.columns)


def test_files_without_rules_keep_the_plain_mapping_and_names_never_clash(tmp_path):
    plain = {"constraints": {"type": "numerical", "min": 0, "max": 1},
             "columns": {"type": "categorical", "categories": ["a", "b"]}}
    domain = Domain.from_dict(plain)
    assert list(domain.columns) == ["constraints", "columns"] and domain.constraints == []
    assert domain.to_dict() == {k: Domain.from_dict(plain)[k].to_dict() for k in plain}
    (tmp_path / "old.json").write_text(json.dumps(plain))
    assert Domain.load(tmp_path / "old.json").to_dict() == domain.to_dict()
    rule = ValueRange("constraints", 0.2, 0.8)
    nested = Domain(dict(domain.columns, type=domain["columns"]), constraints=[rule])
    back = Domain.from_dict(nested.to_dict())  # a column called "type" too
    assert list(back.columns) == ["constraints", "columns", "type"]
    assert back.constraints == [rule]


def test_a_bad_constraints_entry_is_refused_with_its_position():
    columns = {k: v for k, v in MIXED_DOMAIN.items()}
    with pytest.raises(ValueError, match="must be a list"):
        Domain.from_dict({"columns": columns, "constraints": {"kind": "value_range"}})
    with pytest.raises(ValueError, match="constraint 2: .*'nowhere' is not in the domain"):
        Domain.from_dict({"columns": columns, "constraints": [
            {"kind": "value_range", "column": "age", "low": 20},
            {"kind": "value_range", "column": "nowhere", "low": 0}]})
    with pytest.raises(ValueError, match="'Berlin' is not a declared category"):
        Domain.from_dict({"columns": columns, "constraints": [
            {"kind": "implication", "if_column": "flag", "if_values": [True],
             "then_column": "city", "then_values": ["Berlin"]}]})


# ------------------------------------------------------------- conflicts, never a loop
@pytest.mark.parametrize("rules, match", [
    ([FunctionOf("city", "flag", {"Paris": True, "Lyon": False, "Nice": False,
                                  "Lille": False}),
      Implication("city", ["Paris"], "flag", [False])], "cannot all hold together"),
    ([FixedCombinations(["city", "flag"], [("Paris", True), ("Lyon", False)]),
      Implication("flag", [True], "city", ["Nice"])], "cannot all hold together"),
    ([ValueRange("age", 50, 60), ValueRange("age", 70, 80)], "cannot all hold together"),
    ([Inequality("income", "age", strict=True), ValueRange("age", 18, 18)],
     "cannot all hold together"),
    ([ValueRange("age", 20.2, 20.8)], "holds no whole number"),
])
def test_rules_that_cannot_hold_together_are_refused_when_declared(rules, match):
    with pytest.raises(ValueError, match=match):
        Domain(Domain.from_dict(MIXED_DOMAIN).columns, constraints=rules)


def test_an_inequality_no_value_of_the_domain_can_keep_is_refused():
    columns = Domain.from_dict({"a": {"type": "numerical", "min": 5, "max": 9},
                                "b": {"type": "numerical", "min": 0, "max": 5}}).columns
    Domain(columns, constraints=[Inequality("a", "b")])  # a = b = 5 keeps it
    with pytest.raises(ValueError, match="cannot hold"):
        Domain(columns, constraints=[Inequality("a", "b", strict=True)])


def test_a_conflict_found_only_in_rows_raises_and_never_loops():
    domain = Domain.from_dict(MIXED_DOMAIN)
    rules = [FunctionOf("city", "flag", {"Paris": True, "Lyon": False, "Nice": False,
                                         "Lille": False}),
             Implication("city", ["Paris"], "flag", [False])]  # not checked: Enforcer alone
    rows = pd.DataFrame({"city": ["Paris", "Lyon"], "flag": [False, False]})
    with pytest.raises(RuleConflictError, match="still break"):
        Enforcer(domain, rules)(rows)


def test_fit_never_checks_the_rules_against_the_private_rows(monkeypatch):
    """Rows that break every rule fit without a word; no rule is evaluated during fit."""
    from skdpflow.constraints import Rule

    def forbidden(self, frame):
        raise AssertionError("a rule was checked during fit")

    domain = _domain(RULES)  # checked when declared, on public probe rows only
    monkeypatch.setattr(Rule, "satisfied", forbidden)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        synth = DPFlowSynthesizer(epsilon=1.0, delta=1e-4, random_state=0, **FAST).fit(
            _frame(), domain=domain)
    assert synth.domain_.constraints == RULES


def test_declaring_rules_changes_nothing_fit_stores_but_the_rules(tmp_path):
    """File-holder view (tests/test_file_holder.py): a non-private fit repeats exactly under a
    seed; with and without the rules every entry of the file is the same but the rules."""
    states = []
    for rules in (RULES, []):
        # One thread for both: with n_jobs=None each fit takes its thread count from the
        # machine's load, and sums split over other threads round differently.
        synth = DPFlowSynthesizer(epsilon=math.inf, random_state=7, n_jobs=1, **FAST)
        synth.fit(_frame(), domain=_domain(rules))
        synth.save(tmp_path / "m.skdpflow")
        states.append(torch.load(tmp_path / "m.skdpflow", weights_only=True))
    with_rules, without = states
    assert with_rules["domain"]["constraints"] == [r.to_dict() for r in RULES]
    assert with_rules["domain"]["columns"] == without["domain"]
    for key in with_rules:
        if key != "domain":
            _same(with_rules[key], without[key], key)


def _same(a, b, path):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}/{i}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b or (pd.isna(a) and pd.isna(b)), path


# ------------------------------------------------ each repair against its slow twin
def _random_rows(domain: Domain, n: int, seed: int) -> pd.DataFrame:
    """Rows of the domain's values, in its dtypes, breaking rules often."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, col in domain.columns.items():
        if col.categories is not None:
            values = [col.categories[i] for i in rng.integers(0, len(col.categories), n)]
        elif col.type == "datetime":
            lo, hi = (t.value for t in col.datetime_bounds())
            values = list(pd.to_datetime(rng.integers(lo, hi, n)))
        elif col.integer:
            lo, hi = col.integer_bounds()
            values = list(rng.integers(lo, hi + 1, n))
        else:
            lo, hi = col.numeric_bounds()
            values = list(rng.uniform(lo, hi, n))
            values[: n // 10] = [lo] * (n // 10)  # ties with the bounds
        out[name] = pd.Series(values, dtype=object).astype(public_dtype(col))
    return pd.DataFrame(out)


def _mass(column, value):
    return {"Paris": 0.5, "Lyon": 0.3, "Nice": 0.15, "Lille": 0.05}.get(value, 0.1) \
        if column == "city" else (0.6 if value in (1, True) else 0.2)


def _slow_repair(rule, domain: Domain, row: dict) -> dict:
    """One row, one rule, written from the module docstring's words."""
    row = dict(row)
    if all(rule.satisfied(pd.DataFrame([row]))):
        return row
    if isinstance(rule, ValueRange):
        col = domain[rule.column]
        lo = max(rule.low, col.integer_bounds()[0] if col.integer else col.min)
        hi = min(rule.high, col.integer_bounds()[1] if col.integer else col.max)
        if col.integer:
            lo, hi = math.ceil(lo), math.floor(hi)
        row[rule.column] = min(max(row[rule.column], lo), hi)
    elif isinstance(rule, Implication):
        best = max(rule.then_values, key=lambda v: (_mass(rule.then_column, v),
                                                    -rule.then_values.index(v)))
        row[rule.then_column] = best
    elif isinstance(rule, FixedCombinations):
        def key(i):
            combo = rule.allowed[i]
            changes = sum(canonical(row[c]) != canonical(v) for c, v in zip(rule.columns, combo))
            weight = math.prod(_mass(c, v) for c, v in zip(rule.columns, combo))
            return (changes, -weight, i)
        best = rule.allowed[min(range(len(rule.allowed)), key=key)]
        row.update(zip(rule.columns, best))
    elif isinstance(rule, FunctionOf):
        row[rule.dependent] = {canonical(k): v for k, v in rule.mapping.items()}[
            canonical(row[rule.determinant])]
    elif isinstance(rule, Inequality):
        lo_col, hi_col = domain[rule.low], domain[rule.high]
        x, y = row[rule.low], row[rule.high]
        a, b = min(x, y), max(x, y)
        if lo_col.integer:
            a = math.floor(a)
        if hi_col.integer:
            b = math.ceil(b)
        a, b = max(a, lo_col.min), min(b, hi_col.max)
        if rule.strict and a >= b:
            step = 1 if hi_col.integer else None
            up = b + step if step else np.nextafter(b, np.inf)
            if up <= hi_col.max:
                b = up
            else:
                a = a - 1 if lo_col.integer else np.nextafter(a, -np.inf)
        row[rule.low], row[rule.high] = a, b
    return row


TWIN_DOMAIN = {
    "city": {"type": "categorical", "categories": ["Paris", "Lyon", "Nice", "Lille"]},
    "flag": {"type": "boolean"},
    "tier": {"type": "numerical", "min": 1, "max": 3, "integer": True},
    "x": {"type": "numerical", "min": 0, "max": 10},
    "k": {"type": "numerical", "min": 0, "max": 10, "integer": True},
}


@pytest.mark.parametrize("rule", [
    ValueRange("x", 2.5, 7.5), ValueRange("k", 2.5, 7.5),
    Implication("flag", [True], "city", ["Nice", "Lyon", "Lille"]),
    FixedCombinations(["city", "flag", "tier"], [("Paris", True, 1), ("Lyon", False, 2),
                                                 ("Nice", True, 3), ("Lille", False, 3)]),
    FunctionOf("city", "tier", {"Paris": 1, "Lyon": 2, "Nice": 3, "Lille": 3}),
    Inequality("x", "k"), Inequality("x", "k", strict=True), Inequality("k", "x", strict=True),
])
def test_each_repair_matches_its_slow_row_by_row_twin(rule):
    domain = Domain.from_dict(TWIN_DOMAIN)
    rows = _random_rows(domain, 300, seed=len(repr(rule)))
    fast = Enforcer(domain, [rule], mass=_mass)(rows)
    slow = pd.DataFrame([_slow_repair(rule, domain, r) for r in rows.to_dict("records")])
    assert rule.satisfied(fast).all()
    assert (~rule.satisfied(rows)).any()  # something was repaired
    for name in rows.columns:
        assert fast[name].dtype == rows[name].dtype, name
        np.testing.assert_array_equal(fast[name].astype(object).to_numpy(),
                                      slow[name].astype(public_dtype(domain[name]))
                                      .astype(object).to_numpy(), err_msg=name)


def test_interacting_rules_hold_together_on_adults_columns():
    """Adult's three rules with a fixed combination that can undo one of them (a wife who is
    a husband's spouse): every row keeps all four after the passes."""
    rules = load_demo_rules() + [FixedCombinations(
        ["relationship", "marital-status"],
        [("Husband", "Married-civ-spouse"), ("Wife", "Married-civ-spouse"),
         ("Husband", "Married-AF-spouse"), ("Wife", "Married-AF-spouse"),
         *[(r, m) for r in ("Not-in-family", "Own-child", "Unmarried", "Other-relative")
           for m in ("Never-married", "Divorced", "Separated", "Widowed",
                     "Married-spouse-absent", "Married-civ-spouse")]])]
    domain = Domain(load_demo_domain().columns, constraints=rules)
    rows = _random_rows(domain, 2000, seed=0)
    fixed = Enforcer(domain)(rows)
    for rule in rules:
        assert rule.satisfied(fixed).all(), rule
        assert (~rule.satisfied(rows)).any(), rule
    assert (fixed.dtypes == rows.dtypes).all()


def test_missing_values_are_left_alone():
    domain = Domain.from_dict({"a": {"type": "categorical", "categories": ["x", "y"],
                                     "nullable": True},
                               "b": {"type": "categorical", "categories": ["p", "q"],
                                     "nullable": True}})
    rule = FunctionOf("a", "b", {"x": "p", "y": "q"})
    rows = pd.DataFrame({"a": ["x", None, "y"], "b": [None, "q", "p"]}, dtype=object)
    fixed = Enforcer(domain, [rule])(rows)
    assert fixed["a"].tolist()[0] == "x" and fixed["b"].isna().tolist() == [True, False, False]
    assert fixed["b"].tolist()[1:] == ["q", "q"]


def test_evaluate_reports_the_declared_rules_by_default(fitted):
    from skdpflow import evaluate

    real = _frame(300, seed=5)
    result = evaluate(real, fitted.sample(300, random_state=0), model=fitted)
    assert list(result.consistency.index) == [repr(r) for r in RULES]
    assert (result.consistency["synthetic"] == 1.0).all()
    assert (result.consistency["real"] < 1.0).any()
