"""The automatic schedule: public inputs only, explicit values win, DP-SGD only where it learns."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from skdpflow import DPFlowSynthesizer
from skdpflow.flows.model import SharedConditionerFlow
from skdpflow.privacy.ledger import PrivacyLedger
import skdpflow.schedule as schedule_module
from skdpflow.marginals import MAX_UNIT_BINS
from skdpflow.schedule import (
    BIN_NOISE_STDS,
    COUNT_SHARE,
    HISTOGRAM_BINS,
    MIN_HISTOGRAM_BINS,
    UNIT_BIN_FACTOR,
    HEADS_MIN_MARGINALS,
    MAX_NOISE_RATIO,
    MIN_MARGINALS,
    NOISE_RATIO,
    auto_schedule,
    batch_and_steps,
    flow_parameter_count,
    histogram_bins,
    releases_shares,
)


def _ledger(epsilon: float, n_dims: int) -> PrivacyLedger:
    ledger = PrivacyLedger(epsilon, 1e-5)

    def reference(n: int) -> tuple[float, int, float]:
        plan = auto_schedule(n, n_dims, epsilon, None, size_model=False)
        return min(1.0, plan.batch_size / n), plan.steps, plan.train_share * (1 - COUNT_SHARE)

    ledger.plan([], schedule=reference)
    return ledger


def _schedule(n: float, n_dims: int, epsilon: float, **overrides):
    ledger = _ledger(epsilon, n_dims)
    left = 1 - COUNT_SHARE
    return auto_schedule(n, n_dims, epsilon,
                         lambda share, q, steps: ledger.dpsgd_noise_for(share * left, q, steps),
                         overrides)


@pytest.mark.parametrize("n_dims,hidden,bins", [(1, 3, 2), (17, 8, 4), (40, 64, 8)])
def test_parameter_count_is_the_flows(n_dims, hidden, bins):
    flow = SharedConditionerFlow(n_dims, hidden_size=hidden, n_bins=bins)
    assert flow_parameter_count(n_dims, hidden, bins) == sum(p.numel()
                                                              for p in flow.parameters())


def test_release_shares_shrink_as_rows_grow_and_stay_in_range():
    marg = [releases_shares(n, 1.0, 10)[0] for n in (300, 1_000, 3_000, 30_000, 1e6)]
    assert marg == sorted(marg, reverse=True) and marg[0] == 0.6 and marg[-1] == 0.1
    assert releases_shares(1_000, 1.0, 1)[1] == 0.0  # one column: no correlation to release


def test_batch_and_steps():
    assert batch_and_steps(1_000) == (250, 200)
    assert batch_and_steps(1e6) == (1024, round(6 * 1e6 / 1024))


def test_the_model_shrinks_until_the_projected_noise_is_small():
    for n in (10_000, 45_000, 1e6):
        plan = _schedule(n, 17, 1.0)
        assert plan.train_share > 0 and plan.steps >= 200
        ratio = plan.noise_ratio
        assert ratio <= NOISE_RATIO or (plan.hidden_size, plan.n_bins) == (8, 4)
    sizes = [_schedule(n, 17, 1.0).hidden_size for n in (10_000, 45_000, 1e6)]
    assert sizes == sorted(sizes) and sizes[-1] == 64


def test_dpsgd_is_skipped_where_it_cannot_learn_and_its_share_goes_to_the_releases():
    plan = _schedule(1_000, 17, 1.0)
    assert plan.noise_ratio > MAX_NOISE_RATIO
    assert plan.steps == 0 and plan.train_share == 0
    assert plan.marginals_share + plan.copula_share == pytest.approx(1.0)


def test_explicit_values_override_the_rule():
    plan = _schedule(1_000, 17, 1.0, batch_size=100, epochs=2, hidden_size=16, n_bins=5,
                     learning_rate=0.05, marginals_fraction=0.3, histogram_bins=10)
    assert (plan.batch_size, plan.steps, plan.hidden_size, plan.n_bins) == (100, 20, 16, 5)
    assert plan.learning_rate == 0.05 and plan.marginals_share == 0.3
    assert plan.histogram_bins == 10
    assert plan.steps > 0  # explicit training settings are never skipped


def test_non_private_schedule_is_the_large_table_one():
    plan = auto_schedule(500, 10, math.inf, None)
    assert plan.hidden_size == 64 and plan.steps >= 200 and plan.train_share > 0


def test_fit_reports_its_schedule_and_spends_exactly_the_budget():
    rng = np.random.default_rng(0)
    n = 600
    a = rng.integers(0, 4, n)
    df = pd.DataFrame({"a": a.astype(str), "b": a + rng.normal(0, 0.3, n)})
    domain = {"a": {"type": "categorical", "categories": ["0", "1", "2", "3"]},
              "b": {"type": "numerical", "min": -2, "max": 6}}
    synth = DPFlowSynthesizer(epsilon=1.0, random_state=0, verbose=False).fit(df, domain=domain)
    report = synth.privacy_report()
    names = [m["name"] for m in report["mechanisms"]]
    assert names[0].startswith("row count")
    assert synth.steps_ == synth.schedule_.steps
    assert report["epsilon_spent"] == pytest.approx(1.0, rel=1e-6)  # nothing wasted
    shares = sum(m["budget_share"] for m in report["mechanisms"])
    assert shares == pytest.approx(1.0, abs=1e-9)
    torch.manual_seed(0)
    out = synth.sample(50, random_state=0)
    assert list(out.columns) == ["a", "b"]


def test_the_copula_fades_on_large_tables_only_for_the_dequantized_flow():
    """Dequantized: no copula from N = 30,000 on; with the heads it stays, shrinking as
    sqrt(30000 / N); the same below N = 10,000 either way."""
    for n in (3_000, 7_000):
        assert releases_shares(n, 1.0, 10) == releases_shares(n, 1.0, 10, heads=True)
    assert releases_shares(32_561, 1.0, 10)[1] == 0.0
    kept = [releases_shares(n, 1.0, 10, heads=True)[1] for n in (32_561, 1e6)]
    assert kept[0] == pytest.approx(0.05 * (30_000 / 32_561) ** 0.5)
    assert 0 < kept[1] < kept[0]
    # and the synthesizer's schedule follows its discrete model
    plan = auto_schedule(32_561, 10, 1.0, None, size_model=False, heads=True)
    assert plan.copula_share == pytest.approx(kept[0])
    assert auto_schedule(32_561, 10, 1.0, None, size_model=False).copula_share == 0.0


def test_the_heads_histograms_get_at_least_their_own_least_share():
    """With the heads the histograms' share stops falling at HEADS_MIN_MARGINALS (from
    N = 7,500 on), the dequantized flow's at MIN_MARGINALS; below, the same rule."""
    assert HEADS_MIN_MARGINALS > MIN_MARGINALS
    for n in (1_000, 3_000, 7_000):
        assert releases_shares(n, 1.0, 10, heads=True)[0] == releases_shares(n, 1.0, 10)[0]
    for n in (10_000, 24_000, 32_561, 1e7):
        assert releases_shares(n, 1.0, 10, heads=True)[0] == HEADS_MIN_MARGINALS
        assert releases_shares(n, 1.0, 10)[0] < HEADS_MIN_MARGINALS
    assert releases_shares(1e7, 1.0, 10)[0] == MIN_MARGINALS
    plan = auto_schedule(32_561, 10, 1.0, None, size_model=False, heads=True)
    assert plan.marginals_share == HEADS_MIN_MARGINALS
    # an explicit share still comes first
    plan = auto_schedule(32_561, 10, 1.0, None, {"marginals_fraction": 0.15},
                         size_model=False, heads=True)
    assert plan.marginals_share == 0.15


def test_histogram_bins_hold_a_few_noise_stds_each():
    """No more equal bins than hold BIN_NOISE_STDS noise stds of rows each, within
    [MIN_HISTOGRAM_BINS, HISTOGRAM_BINS]; unit bins up to UNIT_BIN_FACTOR times that (at
    most MAX_UNIT_BINS); exact counts keep the most; more rows per unit of noise never
    mean fewer bins."""
    assert histogram_bins(1_000, 0.0) == (HISTOGRAM_BINS, MAX_UNIT_BINS)
    assert histogram_bins(1e6, 20.0) == (HISTOGRAM_BINS, MAX_UNIT_BINS)
    assert histogram_bins(10.0, 20.0) == (MIN_HISTOGRAM_BINS, MIN_HISTOGRAM_BINS)
    std = 25.0
    held = 20.5  # bins of BIN_NOISE_STDS noise stds (n_hat / (BIN_NOISE_STDS std))
    assert histogram_bins(held * BIN_NOISE_STDS * std, std) == (
        20, int(UNIT_BIN_FACTOR * held))
    held = 40.0  # above HISTOGRAM_BINS: the equal bins stop there, unit bins go on
    assert histogram_bins(held * BIN_NOISE_STDS * std, std) == (
        HISTOGRAM_BINS, min(int(UNIT_BIN_FACTOR * held), MAX_UNIT_BINS))
    previous = (0, 0)
    for n in np.geomspace(10, 1e7, 200):
        bins, unit = histogram_bins(n, std)
        assert MIN_HISTOGRAM_BINS <= bins <= HISTOGRAM_BINS and bins <= unit <= MAX_UNIT_BINS
        assert bins >= previous[0] and unit >= previous[1]
        previous = (bins, unit)


def _integer_table(n: int, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    age = rng.integers(20, 70, n)  # 50 values
    df = pd.DataFrame({"age": age, "c": np.where(age + rng.normal(0, 5, n) > 45, "x", "y")})
    domain = {"age": {"type": "numerical", "min": 20, "max": 69, "integer": True},
              "c": {"type": "categorical", "categories": ["x", "y"]}}
    return df, domain


def test_the_fit_bins_its_histograms_by_the_noise_it_draws(monkeypatch):
    """The rule sees the noisy row count and exactly the noise std the histograms' release
    then draws, and the released histograms have the bins it chose: a 50-value integer
    column gets equal bins on a small table at epsilon 0.3, one bin per value without noise."""
    seen = []

    def spy(n_hat, count_std):
        seen.append((n_hat, count_std))
        return histogram_bins(n_hat, count_std)

    monkeypatch.setattr(schedule_module, "histogram_bins", spy)
    released = []
    release_row_count = DPFlowSynthesizer._release_row_count

    def count_spy(self, *args, **kwargs):
        released.append(release_row_count(self, *args, **kwargs))
        return released[-1]

    monkeypatch.setattr(DPFlowSynthesizer, "_release_row_count", count_spy)
    df, domain = _integer_table(800)
    synth = DPFlowSynthesizer(epsilon=0.3, random_state=0, verbose=False).fit(df, domain=domain)
    assert len(seen) == 1
    n_hat, count_std = seen[0]
    assert count_std == pytest.approx(synth.marginals_info_["noise_std"], rel=1e-12)
    assert n_hat == released[0]  # the row count released first
    bins, unit = histogram_bins(n_hat, count_std)
    assert (synth.schedule_.histogram_bins, synth.schedule_.unit_bins) == (bins, unit)
    assert unit < 50
    age = synth.marginals_[0].spec
    assert len(age.edges) == bins + 1  # equal bins, not one per value

    exact = DPFlowSynthesizer(epsilon=math.inf, random_state=0, verbose=False).fit(
        df, domain=domain)
    assert (exact.schedule_.histogram_bins, exact.schedule_.unit_bins) == (
        HISTOGRAM_BINS, MAX_UNIT_BINS)
    assert len(exact.marginals_[0].spec.edges) == 50 + 1  # one bin per value


def test_explicit_histogram_bins_win_and_a_loaded_model_keeps_its_bins(tmp_path):
    df, domain = _integer_table(800)
    synth = DPFlowSynthesizer(epsilon=1.0, random_state=0, verbose=False,
                              histogram_bins=12).fit(df, domain=domain)
    assert synth.schedule_.histogram_bins == 12 and synth.schedule_.unit_bins >= 12
    auto = DPFlowSynthesizer(epsilon=1.0, random_state=0, verbose=False).fit(df, domain=domain)
    for fitted in (synth, auto):
        path = tmp_path / "m.skdpflow"
        fitted.save(path)
        loaded = DPFlowSynthesizer.load(path)
        assert loaded.schedule_ == fitted.schedule_
        for a, b in zip(loaded.marginals_, fitted.marginals_):
            assert np.array_equal(a.spec.edges, b.spec.edges)
        pd.testing.assert_frame_equal(loaded.sample(300, random_state=1),
                                      fitted.sample(300, random_state=1))
    # A file written before the schedule held unit_bins was binned with MAX_UNIT_BINS.
    from skdpflow.synthesizer import _from_state, _state

    exact = DPFlowSynthesizer(epsilon=math.inf, random_state=0, verbose=False).fit(
        df, domain=domain)
    state = _state(exact)
    del state["fitted"]["schedule_"]["unit_bins"]
    old = _from_state(DPFlowSynthesizer, state)
    assert old.schedule_.unit_bins == MAX_UNIT_BINS
    assert len(old.marginals_[0].spec.edges) == 50 + 1
