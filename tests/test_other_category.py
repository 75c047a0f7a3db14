"""The ``other`` category: sampled only when the noisy release supports it, and a warning
when category discovery leaves a large noisy share of a column in ``<other>``."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from skdpflow import DPFlowSynthesizer, OtherShareWarning
from skdpflow.domain import ColumnDomain
from skdpflow.marginals import (
    DISCRETE_FLOOR_MASS,
    FLOOR_MASS,
    OTHER_MIN_STDS,
    _post_process,
    histogram_spec,
    project_simplex,
    release_marginals,
)
from skdpflow.privacy.domain_estimation import OTHER, OTHER_WARN_SHARE
from skdpflow.privacy.randomness import SeededNoise

FAST = {"epochs": 1, "batch_size": 256, "n_stages": 2, "hidden_size": 8, "verbose": False}


def _reference(counts, n, std, other):
    """The rule written out bin by bin: projected, other dropped if not significant, floor."""
    probs = list(project_simplex(np.asarray(counts, float) / n))
    keep = [True] * len(probs)
    if counts[other] <= OTHER_MIN_STDS * std and sum(probs) - probs[other] > 0:
        keep[other] = False
    mass = sum(p for p, k in zip(probs, keep) if k)
    return np.array([(1 - FLOOR_MASS) * p / mass + FLOOR_MASS / sum(keep) if k else 0.0
                     for p, k in zip(probs, keep)])


@pytest.mark.parametrize("counts, other_kept", [
    ([500, 300, 40, 7], False),     # 40 <= 2 * 25: noise-level other, no mass
    ([500, 300, 60, 7], True),      # 60 > 50: the release supports it
    ([500, 300, -30, 7], False),
    ([0, 0, 80, 0], True),          # nothing else has mass: other keeps it
])
def test_other_mass_follows_its_noisy_count(counts, other_kept):
    counts = np.array(counts, dtype=float)
    probs = _post_process(counts, counts.sum(), std=25.0, other=2)
    np.testing.assert_allclose(probs, _reference(counts, counts.sum(), 25.0, 2), atol=1e-12)
    assert probs.sum() == pytest.approx(1.0)
    assert (probs[2] > 0) == other_kept
    assert np.all(probs[[0, 1, 3]] > 0)  # every other bin keeps its floor


def test_no_other_bin_means_the_plain_floor():
    counts = np.array([500.0, 3.0, -10.0])
    probs = _post_process(counts, 493.0, std=25.0, other=None)
    expected = (1 - FLOOR_MASS) * project_simplex(counts / 493.0) + FLOOR_MASS / 3
    np.testing.assert_allclose(probs, expected)


def test_release_marks_the_other_bin_of_declared_and_estimated_columns():
    col = ColumnDomain("categorical", categories=["a", "b"], other=OTHER, nullable=True)
    spec = histogram_spec("c", col)
    assert spec.other == 2 and spec.size == 4  # a, b, <other>, missing
    idx = np.r_[np.zeros(600), np.ones(400)].astype(np.int64)  # nobody in <other>
    marginals, info, _ = release_marginals([spec], [idx], 0.0, SeededNoise(0))
    assert marginals[0].probs[2] == 0.0  # exact zero count, no noise: no mass
    marginals, info, _ = release_marginals([spec], [idx], 20.0, SeededNoise(1))
    std = info["noise_std"]
    kept = marginals[0].noisy_counts[2] > OTHER_MIN_STDS * std
    assert (marginals[0].probs[2] > 0) == kept


def _frame(n: int = 4_000, rare_share: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """``city``: three frequent values; ``job``: two frequent values and, for
    ``rare_share`` of the rows, one of many values held by a handful of rows each."""
    rng = np.random.default_rng(seed)
    city = rng.choice(["Paris", "Lyon", "Nice"], n, p=[0.5, 0.3, 0.2]).astype(object)
    job = rng.choice(["admin", "nurse"], n).astype(object)
    rare = rng.random(n) < rare_share
    job[rare] = [f"rare-{k}" for k in rng.integers(0, n // 5, rare.sum())]
    return pd.DataFrame({"city": city, "job": job, "x": rng.normal(0, 1, n)})


def test_samples_hold_no_other_where_the_release_does_not_support_it():
    synth = DPFlowSynthesizer(epsilon=4.0, delta=1e-5, random_state=0, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OtherShareWarning)
        synth.fit(_frame())
    assert synth.domain_["city"].categories == ["Lyon", "Nice", "Paris", OTHER]
    fake = synth.sample(50_000, random_state=0)
    # Before: the floor alone gave <other> 0.01 / 5 of the mass, about 100 of these rows.
    assert (fake["city"] == OTHER).sum() <= 2
    row = pd.DataFrame({"city": ["Atlantis"], "job": ["admin"], "x": [0.0]})
    assert np.isfinite(synth.score_samples(row)).all()  # <other> still has a cell


def test_a_large_noisy_other_share_warns_naming_the_columns():
    frame = _frame(rare_share=0.3)
    synth = DPFlowSynthesizer(epsilon=4.0, delta=1e-5, random_state=0, **FAST)
    with pytest.warns(OtherShareWarning) as record:
        synth.fit(frame)
    assert len(record) == 1
    message = str(record[0].message)
    names = list(synth.domain_.columns)
    probs = synth.marginals_[names.index("job")].probs
    share = probs[synth.domain_["job"].categories.index(OTHER)]
    assert share >= OTHER_WARN_SHARE
    assert f"'job' {share:.0%}" in message and "'city'" not in message
    assert "Domain.draft(df[['job']]).save('domain.yaml')" in message
    assert "rare-" not in message  # no value of the rows
    fake = synth.sample(20_000, random_state=0)
    assert (fake["job"] == OTHER).mean() > 0.05  # the flood it warned about


@pytest.mark.parametrize("seed", [0, 1])
def test_every_column_over_five_percent_other_in_samples_was_named(seed):
    frame = _frame(n=3_000, rare_share=0.1, seed=seed)
    synth = DPFlowSynthesizer(epsilon=1.0, delta=1e-5, random_state=seed, **FAST)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        synth.fit(frame)
    named = " ".join(str(w.message) for w in record if w.category is OtherShareWarning)
    fake = synth.sample(3_000, random_state=seed)
    for column in ("city", "job"):
        if (fake[column] == OTHER).mean() > 0.05:
            assert f"{column!r}" in named


def test_the_code_in_the_messages_runs(tmp_path, monkeypatch):
    """The warning's and the error's code snippets are Python that does what they say."""
    import ast
    import re

    from skdpflow import Domain
    from skdpflow.domain import ColumnDomain
    from skdpflow.privacy.domain_estimation import (
        other_share_message,
        unreliable_bounds_message,
    )

    warning = other_share_message({"job": 0.31, "month": 0.2}, 367.0)
    error = unreliable_bounds_message({
        "age": ColumnDomain("numerical", min=0, max=1, integer=True),
        "when": ColumnDomain("datetime", min="2000-01-01", max="2001-01-01")})
    drafts = [re.search(r"(Domain\.draft\(.*?\)\.save\('domain\.yaml'\))", text).group(1)
              for text in (warning, error)]
    df = _frame().assign(month=["may"] * 4_000, age=7,
                         when=pd.Timestamp("2020-01-01"))
    monkeypatch.chdir(tmp_path)
    for code in drafts:
        eval(code, {"Domain": Domain, "df": df})  # our own message
        assert Domain.load("domain.yaml").data_derived == ()
    by_hand = re.search(r"(domain=\{.*?\}\})", warning).group(1)
    ast.parse(by_hand)
    declared = re.search(r"fit\(df, (domain=\{.*\}\})\)", error).group(1)
    ast.parse(declared)
    assert "'age': {'type': 'numerical', 'min': ..., 'max': ..., 'integer': True}" in declared


def test_the_floor_is_a_thousandth_of_a_categorical_marginal_and_a_hundredth_of_a_numerical():
    """The floor sets how much mass a value no row holds gets in the samples: for a
    categorical column (whose samples reproduce the released masses) 0.1%, spread over its
    categories; for a numerical column's bins 1%."""
    cat = histogram_spec("c", ColumnDomain("categorical", categories=list("abcdefghij")))
    num = histogram_spec("x", ColumnDomain("numerical", min=0.0, max=10.0))
    rows = np.r_[np.zeros(700), np.ones(300)].astype(np.int64)  # 2 of 10 categories held
    marginals, _, _ = release_marginals([cat, num], [rows, rows + num.size - 3], 0.0,
                                        SeededNoise(0))
    probs = marginals[0].probs
    np.testing.assert_allclose(probs[2:], DISCRETE_FLOOR_MASS / 10)
    np.testing.assert_allclose(probs[:2], (1 - DISCRETE_FLOOR_MASS) * np.array([0.7, 0.3])
                               + DISCRETE_FLOOR_MASS / 10)
    empty = np.delete(marginals[1].probs, [num.size - 3, num.size - 2])
    np.testing.assert_allclose(empty, FLOOR_MASS / num.size)
    assert DISCRETE_FLOOR_MASS < FLOOR_MASS
