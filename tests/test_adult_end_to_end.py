"""End to end on the bundled Adult table: the product's main job, checked for utility."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from skdpflow import DPFlowSynthesizer, load_demo, load_demo_domain
from skdpflow.metrics import mean_tvd


def _auroc(train, test) -> float:
    def frame(df):
        out = df.drop(columns="income").copy()
        for c in out.columns[out.dtypes == object]:
            out[c] = out[c].astype("category").cat.set_categories(
                sorted(test[c].dropna().unique()))
        return out

    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    model.fit(frame(train), train["income"] == ">50K")
    return roc_auc_score(test["income"] == ">50K", model.predict_proba(frame(test))[:, 1])


@pytest.fixture(scope="module")
def adult_fit():
    data = load_demo()
    rng = np.random.default_rng(0)
    holdout = rng.random(len(data)) < 0.3
    train, test = data[~holdout].reset_index(drop=True), data[holdout].reset_index(drop=True)
    # Default schedule: the privacy noise is secret (not seeded), so the thresholds below must
    # hold for every draw. On this split (70% of the bundled rows) 12 fits on 2026-12-02 gave
    # AUROC 0.796-0.863 (mean 0.838, two draws each), and one CI fit 0.775: the spread is the
    # fit's (the flow alone, without the category weights, gave the same figures). Real rows
    # give about 0.93 and a constant guess 0.5, so 0.72 still asks for the signal.
    synth = DPFlowSynthesizer(epsilon=1.0, delta=1e-5, random_state=0, verbose=False)
    synth.fit(train, domain=load_demo_domain())
    return synth, train, test


def test_adult_at_epsilon_one_keeps_marginals_and_signal(adult_fit):
    synth, train, test = adult_fit
    fake = synth.sample(len(train))
    assert synth.epsilon_ <= 1.0
    assert mean_tvd(train, fake, 1) < 0.05
    assert mean_tvd(train, fake, 2) < 0.12
    assert _auroc(fake, test) > 0.72  # real rows give about 0.93; a constant guess 0.5


def test_adult_scores_real_rows_above_shuffled_rows(adult_fit):
    synth, _, test = adult_fit
    rng = np.random.default_rng(1)  # an independent permutation per column breaks dependencies
    shuffled = test.apply(lambda col: col.to_numpy()[rng.permutation(len(col))])
    assert synth.score(test) > synth.score(shuffled) + 1.0  # the dependencies were learned
