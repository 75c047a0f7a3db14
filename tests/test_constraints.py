"""Public rules between columns (skdpflow.constraints): each rule's `satisfied` against a
row-by-row twin, the dict form, every bad declaration, checks against a domain, and the
consistency metric on the Adult demo rows."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import skdpflow
from skdpflow import (
    FixedCombinations,
    FunctionOf,
    Implication,
    Inequality,
    Rule,
    ValueRange,
    constraints,
    load_demo,
    load_demo_domain,
    load_demo_rules,
    metrics,
)
from skdpflow.constraints import as_rules, load_rules
from skdpflow.domain import canonical

# --- the row-by-row twins: one plain Python loop per rule -----------------------------------


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT


def _twin(rule: Rule, frame: pd.DataFrame) -> list[bool]:
    out = []
    for _, row in frame.iterrows():
        cells = [row[c] for c in rule.columns]
        if any(_missing(v) for v in cells):
            out.append(True)
            continue
        out.append(_keeps(rule, dict(zip(rule.columns, cells))))
    return out


def _keeps(rule: Rule, row: dict) -> bool:
    if isinstance(rule, FixedCombinations):
        combo = tuple(canonical(row[c]) for c in rule.columns)
        return any(combo == tuple(canonical(v) for v in allowed) for allowed in rule.allowed)
    if isinstance(rule, FunctionOf) and rule.mapping is not None:
        for key, value in rule.mapping.items():
            if canonical(key) == canonical(row[rule.determinant]):
                return canonical(value) == canonical(row[rule.dependent])
        return False
    if isinstance(rule, FunctionOf):
        x, edges = float(row[rule.determinant]), rule.bins
        for i, label in enumerate(rule.labels):
            last = i == len(rule.labels) - 1
            if edges[i] <= x < edges[i + 1] or (last and x == edges[i + 1]):
                return canonical(label) == canonical(row[rule.dependent])
        return False
    if isinstance(rule, Inequality):
        a, b = row[rule.low], row[rule.high]
        return a < b if rule.strict else a <= b
    if isinstance(rule, ValueRange):
        x = row[rule.column]
        return (rule.low is None or x >= rule.low) and (rule.high is None or x <= rule.high)
    if isinstance(rule, Implication):
        when = canonical(row[rule.if_column]) in {canonical(v) for v in rule.if_values}
        return not when or canonical(row[rule.then_column]) in {canonical(v)
                                                                 for v in rule.then_values}
    raise AssertionError(rule)


# Category-like cells of mixed types: 1, 1.0 and "1" are one value, True is another.
CELLS = st.sampled_from(["a", "b", "c", "1", 1, 1.0, 2, True, False, None, float("nan")])
VALUES = st.sampled_from(["a", "b", "c", 1, 2, True])
NUMBERS = st.one_of(st.none(), st.just(float("nan")),
                    st.integers(-5, 5), st.floats(-6, 6, allow_nan=False))


def _frame(columns: list[str], cells: st.SearchStrategy) -> st.SearchStrategy:
    rows = st.lists(st.tuples(*[cells] * len(columns)), min_size=0, max_size=25)
    return rows.map(lambda r: pd.DataFrame(r, columns=columns, dtype=object))


@settings(max_examples=60, deadline=None)
@given(frame=_frame(["x", "y", "z"], CELLS),
       allowed=st.lists(st.tuples(VALUES, VALUES), min_size=1, max_size=6,
                        unique_by=lambda t: tuple(map(canonical, t))))
def test_fixed_combinations_matches_its_twin(frame, allowed):
    rule = FixedCombinations(["x", "z"], allowed)
    assert rule.satisfied(frame).tolist() == _twin(rule, frame)


@settings(max_examples=60, deadline=None)
@given(frame=_frame(["det", "dep"], CELLS),
       mapping=st.dictionaries(VALUES, VALUES, min_size=1, max_size=5).filter(
           lambda m: len({canonical(k) for k in m}) == len(m)))
def test_function_of_mapping_matches_its_twin(frame, mapping):
    rule = FunctionOf("det", "dep", mapping)
    assert rule.satisfied(frame).tolist() == _twin(rule, frame)


@settings(max_examples=60, deadline=None)
@given(data=st.data(),
       edges=st.lists(st.integers(-6, 6), min_size=2, max_size=5, unique=True).map(sorted),
       infinite=st.booleans())
def test_function_of_bins_matches_its_twin(data, edges, infinite):
    if infinite:
        edges = [-math.inf, *edges[1:-1], math.inf] if len(edges) > 2 else [-math.inf,
                                                                             math.inf]
    labels = data.draw(st.lists(VALUES, min_size=len(edges) - 1, max_size=len(edges) - 1))
    # values on the edges and dependents among the labels are where the rule is decided
    rows = data.draw(st.lists(st.tuples(st.one_of(NUMBERS, st.sampled_from(edges)),
                                        st.one_of(CELLS, st.sampled_from(labels))),
                              max_size=25))
    frame = pd.DataFrame(rows, columns=["age", "band"], dtype=object)
    rule = FunctionOf("age", "band", bins=edges, labels=labels)
    assert rule.satisfied(frame).tolist() == _twin(rule, frame)


def test_bins_on_their_edges():
    rule = FunctionOf("age", "band", bins=[0, 18, 65, 120], labels=["minor", "adult", "senior"])
    frame = pd.DataFrame({"age": [0, 17.9, 18, 64, 65, 120, 120.5, -1, 18, None],
                          "band": ["minor", "minor", "adult", "adult", "senior", "senior",
                                   "senior", "minor", "minor", "adult"]})
    assert rule.satisfied(frame).tolist() == [True, True, True, True, True, True, False, False,
                                              False, True]  # the last bin holds 120


@settings(max_examples=60, deadline=None)
@given(frame=_frame(["lo", "hi"], NUMBERS), strict=st.booleans(), numeric=st.booleans())
def test_inequality_matches_its_twin(frame, strict, numeric):
    if numeric:  # a float column, as read from a CSV file
        frame = frame.astype(float)
    rule = Inequality("lo", "hi", strict=strict)
    assert rule.satisfied(frame).tolist() == _twin(rule, frame)


@settings(max_examples=60, deadline=None)
@given(frame=_frame(["v"], NUMBERS), low=st.one_of(st.none(), st.integers(-6, 0)),
       high=st.one_of(st.none(), st.floats(0, 6)))
def test_value_range_matches_its_twin(frame, low, high):
    if low is None and high is None:
        low = 0
    rule = ValueRange("v", low, high)
    assert rule.satisfied(frame).tolist() == _twin(rule, frame)


@settings(max_examples=60, deadline=None)
@given(frame=_frame(["p", "q"], CELLS),
       if_values=st.lists(VALUES, min_size=1, max_size=3, unique_by=canonical),
       then_values=st.lists(VALUES, min_size=1, max_size=3, unique_by=canonical))
def test_implication_matches_its_twin(frame, if_values, then_values):
    rule = Implication("p", if_values, "q", then_values)
    assert rule.satisfied(frame).tolist() == _twin(rule, frame)


def test_datetimes_and_unreadable_cells():
    stamps = pd.to_datetime(["2020-01-01", "2020-06-01", None, "2021-03-01"])
    frame = pd.DataFrame({"start": stamps, "end": stamps[::-1],
                          "text": ["2020-01-02", "2020-06-01", "soon", "2021-02-01"]})
    assert Inequality("start", "end").satisfied(frame).tolist() == [True, True, True, False]
    # text read as ISO datetimes; an unreadable cell breaks the rule, a missing one keeps it
    assert Inequality("start", "text").satisfied(frame).tolist() == [True, True, True, False]
    assert Inequality("start", "text", strict=True).satisfied(frame).tolist() == [
        True, False, True, False]
    rule = ValueRange("start", "2020-03-01", "2021-12-31T00:00:00+00:00")
    assert rule.satisfied(frame).tolist() == [False, True, True, True]
    aware = frame.assign(start=frame["start"].dt.tz_localize("Europe/Paris"))
    assert ValueRange("start", high="2019-12-31T23:30:00").satisfied(aware).tolist() == [
        True, False, True, False]  # midnight in Paris is 23:00 UTC
    numbers = pd.DataFrame({"x": ["1", "x", "3"], "y": [2, 2, 2]})
    assert Inequality("x", "y").satisfied(numbers).tolist() == [True, False, False]
    assert ValueRange("x", 0, 5).satisfied(numbers).tolist() == [True, False, True]


# --- the dict form --------------------------------------------------------------------------

RULES = [
    FixedCombinations(["race", "sex"], [("White", "Male"), ("Black", "Female")]),
    FunctionOf("education", "education-num", {"Bachelors": 13, "Masters": 14}),
    FunctionOf("education-num", "education", {13: "Bachelors", 14.0: "Masters"}),
    FunctionOf("age", "band", bins=[-math.inf, 18, 65.5, math.inf], labels=["a", "b", "c"]),
    Inequality("capital-loss", "capital-gain", strict=True),
    ValueRange("age", 17, 90),
    ValueRange("when", low="2020-01-01"),
    Implication("relationship", "Husband", "sex", ["Male"]),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: type(r).__name__)
def test_dict_form_round_trips_through_json_and_yaml(rule):
    spec = rule.to_dict()
    assert spec["kind"] == rule.kind
    for text, read in [(json.dumps(spec), json.loads), (yaml.safe_dump(spec), yaml.safe_load)]:
        back = Rule.from_dict(read(text))
        assert back == rule and repr(back) == repr(rule) and type(back) is type(rule)
        assert back.to_dict() == spec
    assert type(rule).from_dict(spec) == rule


def test_keys_that_are_not_strings_travel_as_pairs():
    rule = RULES[2]
    assert rule.to_dict()["mapping"] == [[13, "Bachelors"], [14.0, "Masters"]]
    assert Rule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
    assert FunctionOf("a", "b", [["x", 1], ["y", 2]]) == FunctionOf("a", "b", {"x": 1, "y": 2})
    assert FunctionOf("a", "b", {np.int64(1): np.float64(2.5)}).to_dict()["mapping"] == [[1, 2.5]]


def test_rule_files_and_lists(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump([r.to_dict() for r in RULES]))
    assert load_rules(path) == RULES
    json_path = tmp_path / "rules.json"
    json_path.write_text(json.dumps([r.to_dict() for r in RULES]))
    assert as_rules(json_path) == RULES and as_rules(str(json_path)) == RULES
    assert as_rules(RULES[0]) == [RULES[0]] and as_rules(RULES[0].to_dict()) == [RULES[0]]
    assert as_rules(None) == []
    path.write_text("kind: inequality\nlow: a\nhigh: b\n")
    with pytest.raises(ValueError, match=r"rules file .*rules.yaml: expected a list of rules"):
        load_rules(path)
    path.write_text("- {kind: inequality, low: a, high: b}\n- {kind: nope}\n")
    with pytest.raises(ValueError, match=r"rules.yaml: rule 2: Unknown rule kind 'nope'"):
        load_rules(path)
    path.write_text("- {kind: inequality, low: a\n")
    with pytest.raises(ValueError, match=r"rules file .*rules.yaml, line \d+.*not valid YAML"):
        load_rules(path)
    with pytest.raises(FileNotFoundError, match="rules file .* does not exist"):
        load_rules(tmp_path / "none.yaml")


def test_reprs_are_readable():
    assert repr(RULES[0]) == ("FixedCombinations(('race', 'sex') in [('White', 'Male'), "
                              "('Black', 'Female')])")
    assert repr(RULES[3]) == ("FunctionOf('band' = f('age'): [-inf, 18): 'a', [18, 65.5): 'b', "
                              "[65.5, inf]: 'c')")
    assert repr(RULES[4]) == "Inequality('capital-loss' < 'capital-gain')"
    assert repr(RULES[5]) == "ValueRange(17 <= 'age' <= 90)"
    assert repr(RULES[6]) == "ValueRange('2020-01-01' <= 'when')"
    assert repr(RULES[7]) == "Implication('relationship' in ['Husband'] -> 'sex' in ['Male'])"
    long = repr(load_demo_rules()[0])
    assert long.startswith("FunctionOf('education-num' = f('education'): {'Preschool': 1, ")
    assert long.endswith("... 16 in all})")
    assert RULES[0].columns == ("race", "sex") and RULES[3].columns == ("age", "band")


def test_the_doc_examples_run():
    for module in (constraints, metrics):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted > 0


# --- bad declarations -----------------------------------------------------------------------

BAD = [
    (lambda: Rule.from_dict({"kind": "sum_of"}), r"Unknown rule kind 'sum_of'; the kinds are"),
    (lambda: Rule.from_dict({"columns": ["a"]}), r"Unknown rule kind None"),
    (lambda: Rule.from_dict(["inequality"]), r"must be a dict with a 'kind' key, got list"),
    (lambda: Rule.from_dict({"kind": "inequality", "low": "a"}), r"missing: \['high'\]"),
    (lambda: Rule.from_dict({"kind": "inequality", "low": "a", "high": "b", "lo": 1}),
     r"unknown: \['lo'\]"),
    (lambda: Inequality.from_dict({"kind": "value_range", "column": "a", "low": 0}),
     r"Inequality.from_dict got a rule of kind 'value_range'"),
    (lambda: Inequality.from_dict(ValueRange("a", 0)), r"got a rule of kind 'value_range'"),
    (lambda: FixedCombinations(["a", "b"], []), r"non-empty list 'allowed'"),
    (lambda: FixedCombinations(["a", "b"], "ab"), r"non-empty list 'allowed'"),
    (lambda: FixedCombinations(["a"], [("x",)]), r"at least two columns"),
    (lambda: FixedCombinations("ab", [("x", "y")]), r"must be a list of column names"),
    (lambda: FixedCombinations(["a", "a"], [("x", "y")]), r"the same column twice"),
    (lambda: FixedCombinations(["a", "b"], [("x",)]), r"needs 2 values"),
    (lambda: FixedCombinations(["a", "b"], [("x", 1), ("x", "1")]), r"given twice"),
    (lambda: FixedCombinations(["a", "b"], [("x", None)]), r"is a missing value"),
    (lambda: FixedCombinations(["a", "b"], [("x", [1])]), r"must be a string, number"),
    (lambda: FixedCombinations(["a", 3], [("x", "y")]), r"non-empty strings, got 3"),
    (lambda: Inequality("a", "a"), r"low and high name the same column twice"),
    (lambda: Inequality("a", "b", strict="yes"), r"'strict' must be true or false"),
    (lambda: FunctionOf("a", "a", {"x": 1}), r"the same column twice"),
    (lambda: FunctionOf("a", "b"), r"exactly one of 'mapping'"),
    (lambda: FunctionOf("a", "b", {"x": 1}, bins=[0, 1], labels=["l"]),
     r"exactly one of 'mapping'"),
    (lambda: FunctionOf("a", "b", {}), r"non-empty dict"),
    (lambda: FunctionOf("a", "b", {"x": 1}, labels=["l"]), r"'labels' go with 'bins'"),
    (lambda: FunctionOf("a", "b", [[["x"], 1]]), r"mapping keys must be hashable.*list"),
    (lambda: FunctionOf("a", "b", {("x", "y"): 1}), r"a mapping key must be a string"),
    (lambda: FunctionOf("a", "b", {1: "x", "1": "y"}), r"key '1' is given twice"),
    (lambda: FunctionOf("a", "b", [["x", 1, 2]]), r"needs a key and a value"),
    (lambda: FunctionOf("a", "b", {"x": float("nan")}), r"a mapping value is a missing value"),
    (lambda: FunctionOf("a", "b", bins=[0], labels=[]), r"at least two edges"),
    (lambda: FunctionOf("a", "b", bins=[0, 2, 1], labels=["x", "y"]), r"increase strictly"),
    (lambda: FunctionOf("a", "b", bins=[0, float("nan")], labels=["x"]), r"must be numbers"),
    (lambda: FunctionOf("a", "b", bins=[0, "1"], labels=["x"]), r"must be numbers"),
    (lambda: FunctionOf("a", "b", bins=[0, 1, 2], labels=["x"]), r"2 bins need 2 'labels'"),
    (lambda: ValueRange("a"), r"needs 'low', 'high' or both"),
    (lambda: ValueRange("a", 5, 1), r"low 5 is above high 1"),
    (lambda: ValueRange("a", 0, "2020-01-01"), r"both be numbers or both datetimes"),
    (lambda: ValueRange("a", 0, math.inf), r"must be finite"),
    (lambda: ValueRange("a", True), r"must be a number or a datetime, got True"),
    (lambda: ValueRange("a", "soon"), r"must be a number or a datetime \(ISO string\)"),
    (lambda: Implication("a", ["x"], "a", ["y"]), r"the same column twice"),
    (lambda: Implication("a", [], "b", ["y"]), r"if_values is empty"),
    (lambda: Implication("a", ["x", "x"], "b", ["y"]), r"holds a value twice"),
    (lambda: Implication("a", ["x"], "b", [None]), r"is a missing value"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[m for _, m in BAD])
def test_bad_declarations_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --- against a domain -----------------------------------------------------------------------

def test_validate_against_the_demo_domain():
    domain = load_demo_domain()
    for rule in load_demo_rules() + [
            Inequality("capital-loss", "capital-gain"), ValueRange("age", 18, 65),
            FixedCombinations(["race", "sex"], [("White", "Male")]),
            FunctionOf("age", "income", bins=[17, 40, 90], labels=["<=50K", ">50K"]),
            FunctionOf("education-num", "education", {i: "HS-grad" for i in range(1, 17)})]:
        rule.validate(domain)
        rule.validate(domain.to_dict())


WRONG = [
    (Inequality("age", "salary"), r"column 'salary' is not in the domain"),
    (Inequality("age", "sex"), r"column 'sex' is categorical; an inequality needs numerical"),
    (ValueRange("sex", 0, 1), r"column 'sex' is categorical; these bounds need a numerical"),
    (ValueRange("age", 100, 120), r"outside the declared bounds \[17, 90\] of column 'age'"),
    (ValueRange("age", "2020-01-01"), r"column 'age' is numerical; these bounds need a datetime"),
    (FixedCombinations(["race", "sex"], [("White", "Man")]),
     r"'Man' is not a declared category of column 'sex'"),
    (FixedCombinations(["age", "sex"], [(16, "Male")]),
     r"16 lies outside the declared bounds \[17, 90\] of column 'age'"),
    (FixedCombinations(["age", "sex"], [(20.5, "Male")]),
     r"20.5 is not an integer, as column 'age' is"),
    (FixedCombinations(["age", "sex"], [("old", "Male")]),
     r"'old' is not a number, as column 'age' is"),
    (FunctionOf("education", "education-num", {"Bachelors": 13}),
     r"the mapping lacks the declared value\(s\) \['10th'.*of column 'education'"),
    (FunctionOf("age", "sex", bins=[18, 90], labels=["Male"]),
     r"bins \[18, 90\] do not cover the declared bounds \[17, 90\] of column 'age'"),
    (FunctionOf("sex", "age", bins=[0, 1], labels=[20]), r"'bins' need a numerical"),
    (FunctionOf("age", "sex", bins=[0, 100], labels=["M"]),
     r"'M' is not a declared category of column 'sex'"),
    (Implication("relationship", ["Husband"], "sex", ["male"]),
     r"'male' is not a declared category of column 'sex'"),
]


@pytest.mark.parametrize("rule, message", WRONG, ids=[m for _, m in WRONG])
def test_validate_names_the_rule_and_the_column(rule, message):
    with pytest.raises(ValueError, match=message) as info:
        rule.validate(load_demo_domain())
    assert str(info.value).startswith(repr(rule))


def test_validate_mixed_kinds_and_datetimes():
    domain = {"t": {"type": "datetime", "min": "2020-01-01", "max": "2020-12-31"},
              "x": {"type": "numerical", "min": 0, "max": 1}}
    with pytest.raises(ValueError, match=r"'t' is datetime and column 'x' is numerical"):
        Inequality("t", "x").validate(domain)
    ValueRange("t", "2020-03-01").validate(domain)
    with pytest.raises(ValueError, match="outside the declared bounds"):
        ValueRange("t", high="2019-06-01").validate(domain)
    with pytest.raises(ValueError, match="a mapping needs a categorical, boolean or numerical"):
        FunctionOf("t", "x", {"2020-01-01": 1}).validate(domain)


# --- consistency ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adult() -> pd.DataFrame:
    return load_demo()


def test_real_adult_rows_keep_the_demo_rules_and_a_shuffled_copy_does_not(adult):
    rules = load_demo_rules()
    shares = metrics.consistency(adult, rules)
    assert list(shares.index) == [repr(r) for r in rules]
    assert shares.iloc[0] == 1.0 and shares.iloc[2] == 1.0
    husbands = adult["relationship"] == "Husband"
    female = (husbands & (adult["sex"] == "Female")).sum()
    assert shares.iloc[1] == pytest.approx(1 - female / len(adult)) and 0 < female < 5
    rng = np.random.default_rng(0)
    shuffled = adult.assign(**{c: rng.permutation(adult[c].to_numpy())
                               for c in ("education-num", "sex", "marital-status")})
    broken = metrics.consistency(shuffled, rules)
    assert broken.iloc[0] < 0.3  # the one-to-one map survives only by chance
    # a shuffled sex column breaks the rule in about (share of women) of the husbands' rows
    expected = 1 - husbands.mean() * (adult["sex"] == "Female").mean()
    assert broken.iloc[1] == pytest.approx(expected, abs=0.01)
    assert broken.iloc[2] < 0.9


def test_consistency_counts_missing_as_kept_and_names_duplicates():
    frame = pd.DataFrame({"a": [1, 5, None, 3], "b": [2, 4, 0, None]})
    rule = Inequality("a", "b")
    shares = metrics.consistency(frame, [rule, rule.to_dict(), ValueRange("a", 0, 2)])
    assert shares.tolist() == [0.75, 0.75, 0.5]
    assert list(shares.index) == [repr(rule), f"{rule!r} #2", "ValueRange(0 <= 'a' <= 2)"]
    assert math.isnan(metrics.consistency(frame.iloc[:0], [rule]).iloc[0])
    with pytest.raises(ValueError, match=r"Inequality\('a' <= 'c'\): the table lacks column"):
        metrics.consistency(frame, [Inequality("a", "c")])
    with pytest.raises(ValueError, match="expected a pandas DataFrame"):
        rule.satisfied([[1, 2]])
    assert metrics.consistency(frame, []).empty


def test_contingency_similarity_is_sdmetrics(adult):
    from sdmetrics.column_pairs import ContingencySimilarity

    real = adult.iloc[:3000]
    rng = np.random.default_rng(1)
    fake = adult.iloc[3000:6000].reset_index(drop=True)
    fake["education-num"] = rng.permutation(fake["education-num"].to_numpy())
    cols = ["education", "education-num", "sex", "relationship"]
    kinds = {c: "categorical" for c in cols}
    ours = metrics.contingency_similarity(real[cols], fake[cols], kinds=kinds)
    assert ours.is_monotonic_increasing and len(ours) == 6
    assert ours.index[0] == "education x education-num"
    for pair, value in ours.items():
        a, b = pair.split(" x ")
        theirs = ContingencySimilarity.compute(real[[a, b]].astype(str),
                                               fake[[a, b]].astype(str))
        assert value == pytest.approx(theirs, abs=1e-12)
    tvd = metrics.marginal_tvd(real[cols], fake[cols], 2, kinds=kinds)
    assert ours["sex x relationship"] == pytest.approx(1 - tvd[("sex", "relationship")])


def test_exported():
    for name in ("FixedCombinations", "FunctionOf", "Implication", "Inequality", "Rule",
                 "ValueRange", "load_demo_rules"):
        assert name in skdpflow.__all__ and hasattr(skdpflow, name)
