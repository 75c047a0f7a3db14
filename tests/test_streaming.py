"""Tables read in chunks: the same releases as in memory, cells on disk, Poisson batches by
geometric skips, and clear errors for bad sources."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import MIXED_DOMAIN, make_mixed_frame
from scipy.stats import binom, chi2

from skdpflow import DPFlowSynthesizer, synthesizer
from skdpflow import streaming as streaming_module
from skdpflow._validation import InvalidDataError
from skdpflow.privacy.dpsgd import poisson_batches, poisson_skip_batches
from skdpflow.privacy.randomness import SecureNoise, SeededNoise
from skdpflow.streaming import DiskCells, _read_data

ROWS = 1200
CHUNK = 250  # rows per chunk: several chunks, the last one short
NOISE_SEED = 11
UNDECLARED = ("income", "score", "city", "when")


def _estimator(epsilon: float = 1.0, **kwargs) -> DPFlowSynthesizer:
    return DPFlowSynthesizer(epsilon=epsilon, epochs=1, random_state=0, verbose=False,
                             n_jobs=1, **kwargs)


@pytest.fixture
def seeded(monkeypatch):
    """The fit's privacy noise seeded (tests only), the same for both fits compared."""
    monkeypatch.setattr(synthesizer, "SecureNoise", lambda: SeededNoise(NOISE_SEED))
    monkeypatch.setattr(streaming_module, "CHUNK_ROWS", CHUNK)


def _chunks(frame: pd.DataFrame):
    return lambda: (frame.iloc[i:i + CHUNK] for i in range(0, len(frame), CHUNK))


def _assert_same_releases(streamed: DPFlowSynthesizer, whole: DPFlowSynthesizer) -> None:
    assert streamed.history_ == whole.history_
    assert [r.name for r in streamed.ledger_.releases] == \
        [r.name for r in whole.ledger_.releases]
    assert streamed.epsilon_ == pytest.approx(whole.epsilon_, rel=1e-12)
    assert streamed.domain_.to_dict() == whole.domain_.to_dict()
    assert streamed.domain_.estimated == whole.domain_.estimated
    assert streamed.schedule_ == whole.schedule_
    assert streamed.n_rows_estimate_ == whole.n_rows_estimate_
    for mine, theirs in zip(streamed.marginals_, whole.marginals_, strict=True):
        np.testing.assert_array_equal(mine.noisy_counts, theirs.noisy_counts)
        np.testing.assert_array_equal(mine.probs, theirs.probs)
    # The copula's sums are added in another order: equal to rounding.
    for key in ("shrinkage", "variance_pooling", "mean_abs_correlation"):
        assert streamed.copula_info_[key] == pytest.approx(whole.copula_info_[key],
                                                           rel=1e-9, abs=1e-12)
    fake = streamed.sample(50, random_state=0)
    assert list(fake.columns) == list(whole.feature_names_in_) and len(fake) == 50


@pytest.mark.parametrize("kind", ["parquet", "csv", "callable"])
def test_streamed_fit_has_the_in_memory_releases(seeded, tmp_path, kind):
    frame = make_mixed_frame(ROWS)
    if kind == "parquet":
        source = tmp_path / "data.parquet"
        frame.to_parquet(source, row_group_size=CHUNK)
        whole = frame
    elif kind == "csv":
        source = tmp_path / "data.csv"
        frame.to_csv(source, index=False)
        whole = _read_data(source, synthesizer.as_domain(MIXED_DOMAIN))  # the same parsing
    else:
        source, whole = _chunks(frame), frame
    reference = _estimator().fit(whole, domain=MIXED_DOMAIN)
    streamed = _estimator().fit(source, domain=MIXED_DOMAIN)
    assert streamed.copula_info_  # the copula was released (a small table)
    _assert_same_releases(streamed, reference)


def test_a_streamed_copula_only_fit_has_the_in_memory_releases(seeded, tmp_path):
    """Where the schedule skips DP-SGD the copula is released from the cells' means: summed
    over the chunks as in memory."""
    frame = make_mixed_frame(ROWS)
    source = tmp_path / "data.parquet"
    frame.to_parquet(source, row_group_size=CHUNK)

    def estimator() -> DPFlowSynthesizer:
        return DPFlowSynthesizer(epsilon=0.2, random_state=0, verbose=False, n_jobs=1)

    reference = estimator().fit(frame, domain=MIXED_DOMAIN)
    streamed = estimator().fit(source, domain=MIXED_DOMAIN)
    assert reference.schedule_.steps == 0
    assert streamed.copula_info_["scores"] == reference.copula_info_["scores"] == "cell-mean"
    # The row bound of the cell means' norm, on both paths.
    assert streamed.copula_info_["row_bound"] == reference.copula_info_["row_bound"]
    assert reference.copula_info_["row_bound"] < reference.copula_info_["dims"]
    _assert_same_releases(streamed, reference)


@pytest.mark.parametrize("kind", ["parquet", "callable"])
def test_streamed_domain_estimate_is_the_in_memory_one(seeded, tmp_path, kind):
    """Undeclared columns (integer, float with NaN, category with NaN, datetime) are
    estimated under DP from counts accumulated over the chunks."""
    frame = make_mixed_frame(ROWS)
    domain = {k: v for k, v in MIXED_DOMAIN.items() if k not in UNDECLARED}
    source: object = _chunks(frame)
    if kind == "parquet":
        source = tmp_path / "data.parquet"
        frame.to_parquet(source, row_group_size=CHUNK)
    reference = _estimator(3.0).fit(frame, domain=domain)
    streamed = _estimator(3.0).fit(source, domain=domain)
    assert set(streamed.domain_.estimated) == set(UNDECLARED)
    _assert_same_releases(streamed, reference)


def test_integers_with_missing_values_in_some_chunks(seeded):
    """An undeclared integer column whose chunks read as int or float (a missing value in
    some) is the float column a whole read gives."""
    frame = make_mixed_frame(ROWS)
    frame["income"] = frame["income"].astype(float)
    frame.loc[3, "income"] = np.nan  # the first chunk only
    pieces = [frame.iloc[i:i + CHUNK].copy() for i in range(0, len(frame), CHUNK)]
    for piece in pieces[1:]:
        piece["income"] = piece["income"].astype(np.int64)
    domain = {k: v for k, v in MIXED_DOMAIN.items() if k != "income"}
    reference = _estimator(3.0).fit(frame, domain=domain)
    streamed = _estimator(3.0).fit(lambda: pieces, domain=domain)
    _assert_same_releases(streamed, reference)
    assert streamed.domain_["income"].integer is False


# ------------------------------------------------------------------ cells on disk
def test_cells_file_is_removed_after_a_fit_and_a_failed_fit(monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    seen = []
    real_train = synthesizer.train_flow

    def spying(flow, lo, hi, config, *, cells, **kwargs):
        seen.append((Path(cells.folder), cells.array.shape, cells.array.dtype))
        assert (Path(cells.folder) / "cells.npy").exists()
        return real_train(flow, lo, hi, config, cells=cells, **kwargs)

    monkeypatch.setattr(synthesizer, "train_flow", spying)
    frame = make_mixed_frame(400)
    est = _estimator().fit(_chunks(frame), domain=MIXED_DOMAIN)
    folder, shape, dtype = seen[0]
    assert folder.parent == tmp_path and dtype == np.float32
    assert shape == (400, 2, est.encoder_.n_dims)
    assert not list(tmp_path.glob("skdpflow-cells-*"))

    def failing(*args, **kwargs):
        raise RuntimeError("training failed on purpose")

    monkeypatch.setattr(synthesizer, "train_flow", failing)
    with pytest.raises(RuntimeError, match="on purpose"):
        _estimator().fit(_chunks(frame), domain=MIXED_DOMAIN)
    assert not list(tmp_path.glob("skdpflow-cells-*"))
    # A source that fails while the cells are written: removed too.
    calls = []

    def breaks_late():
        calls.append(1)
        if len(calls) == 3:  # scan, histograms, then the encoding pass
            raise OSError("disk gone on purpose")
        return _chunks(frame)()

    with pytest.raises(OSError, match="on purpose"):
        _estimator().fit(breaks_late, domain=MIXED_DOMAIN)
    assert len(calls) == 3 and not list(tmp_path.glob("skdpflow-cells-*"))


def test_disk_cells_round_trip_with_pages_released(tmp_path, monkeypatch):
    monkeypatch.setattr(streaming_module, "RESIDENT_PAGES", 3)  # release very often
    rng = np.random.default_rng(0)
    lo = rng.random((1000, 7))
    hi = lo + rng.random((1000, 7)) * (1 - lo)
    with DiskCells(1000, 7, directory=str(tmp_path)) as cells:
        for start in range(0, 1000, 128):
            cells.append(lo[start:start + 128], hi[start:start + 128])
        idx = np.sort(rng.choice(1000, 300, replace=False))
        got_lo, got_hi = cells.rows(idx)
        np.testing.assert_array_equal(got_lo, lo[idx].astype(np.float32))
        np.testing.assert_array_equal(got_hi, hi[idx].astype(np.float32))
        with pytest.raises(ValueError, match="same rows"):
            cells.append(lo[:1], hi[:1])
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ Poisson by skips
def _pvalues(batches: list[torch.Tensor], n: int, q: float) -> dict[str, float]:
    """Chi-square p-values of Bernoulli(q) per row: batch sizes against Binomial(n, q), each
    row's inclusion count against Binomial(steps, q), adjacent pairs against q^2."""
    steps = len(batches)
    sizes = np.array([len(b) for b in batches])
    # Batch sizes, in bins of expected count >= 5 (the tails pooled).
    support = np.arange(n + 1)
    expected = steps * binom.pmf(support, n, q)
    keep = expected >= 5
    lo_cut, hi_cut = support[keep][0], support[keep][-1]
    observed = np.bincount(np.clip(sizes, lo_cut, hi_cut) - lo_cut,
                           minlength=hi_cut - lo_cut + 1)
    pooled = expected[lo_cut:hi_cut + 1].copy()
    pooled[0] += expected[:lo_cut].sum()
    pooled[-1] += expected[hi_cut + 1:].sum()
    stat = float(((observed - pooled) ** 2 / pooled).sum())
    out = {"sizes": float(chi2.sf(stat, len(pooled) - 1))}
    masks = np.zeros((steps, n), dtype=bool)
    for k, b in enumerate(batches):
        masks[k, b.numpy()] = True
    rows = masks.sum(0)
    stat = float(((rows - steps * q) ** 2 / (steps * q * (1 - q))).sum())
    out["rows"] = float(chi2.sf(stat, n))
    pairs = (masks[:, 1:] & masks[:, :-1]).sum(0)
    p2 = q * q
    stat = float(((pairs - steps * p2) ** 2 / (steps * p2 * (1 - p2))).sum())
    out["pairs"] = float(chi2.sf(stat, n - 1))  # dependent pairs: a rough, conservative use
    return out


N_ROWS, RATE, STEPS = 30, 0.2, 4000


def test_geometric_skips_match_bernoulli_masks():
    """The skip sampler passes the tests the mask sampler passes (both against the exact
    Bernoulli(q) law), and a sampler off by one row fails them (the test can fail)."""
    skips = list(poisson_skip_batches(N_ROWS, RATE, STEPS, SeededNoise(1)))
    masks = list(poisson_batches(N_ROWS, RATE, STEPS, SeededNoise(2)))
    for batches in (skips, masks):
        assert all(torch.equal(b, b.sort().values) and b.dtype == torch.int64
                   for b in batches)
        assert all(len(b) == len(b.unique()) for b in batches)
        p = _pvalues(batches, N_ROWS, RATE)
        assert min(p.values()) > 1e-4, p
    # Gaps one too long (rows G_1, G_1 + G_2, ... instead of G_1 - 1, ...): row 0 never
    # drawn and every row a little rarer.
    shifted = [b + 1 for b in skips]
    shifted = [b[b < N_ROWS] for b in shifted]
    assert _pvalues(shifted, N_ROWS, RATE)["rows"] < 1e-6
    # Each row drawn at most once per batch, at the right rate, but rows drawn in pairs:
    # a correlation the per-row counts cannot see.
    paired = [torch.from_numpy(np.flatnonzero(np.repeat(
        np.random.default_rng(k).random(N_ROWS // 2) < RATE, 2))) for k in range(STEPS)]
    p = _pvalues(paired, N_ROWS, RATE)
    assert p["rows"] > 1e-4 and min(p["sizes"], p["pairs"]) < 1e-6


def test_geometric_skips_edge_cases():
    assert [len(b) for b in poisson_skip_batches(0, 0.5, 3, SeededNoise(0))] == [0, 0, 0]
    full = list(poisson_skip_batches(17, 1.0, 2, SeededNoise(0)))
    assert all(torch.equal(b, torch.arange(17)) for b in full)
    # A large table at a small rate: about q n rows, drawn from the secret source.
    big = list(poisson_skip_batches(5_000_000, 2e-4, 3, SecureNoise()))
    assert all(abs(len(b) - 1000) < 6 * math.sqrt(1000) for b in big)
    assert all(int(b.max()) < 5_000_000 for b in big)
    with pytest.raises(ValueError, match="sample_rate"):
        next(poisson_skip_batches(10, 0.0, 1, SeededNoise(0)))


# ------------------------------------------------------------------ bad sources
def test_bad_sources_give_clear_errors(tmp_path):
    frame = make_mixed_frame(60)
    est = _estimator()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        est.fit(tmp_path / "missing.parquet", domain=MIXED_DOMAIN)
    with pytest.raises(TypeError, match="one-shot iterator"):
        est.fit(_chunks(frame)(), domain=MIXED_DOMAIN)
    with pytest.raises(ValueError, match="holds no rows"):
        est.fit(list, domain=MIXED_DOMAIN)
    with pytest.raises(ValueError, match="holds no rows"):
        est.fit(lambda: [frame.iloc[:0]], domain=MIXED_DOMAIN)
    renamed = frame.iloc[30:].rename(columns={"age": "AGE"})
    with pytest.raises(InvalidDataError, match="same columns in the same order"):
        est.fit(lambda: [frame.iloc[:30], renamed], domain=MIXED_DOMAIN)
    with pytest.raises(TypeError, match="not a pandas DataFrame"):
        est.fit(lambda: [frame.iloc[:30], frame.iloc[30:].to_numpy()], domain=MIXED_DOMAIN)
    texts = frame.iloc[30:].assign(income=frame["income"].iloc[30:].astype(str))
    with pytest.raises(InvalidDataError, match="'income' has different dtypes"):
        est.fit(lambda: [frame.iloc[:30], texts],
                domain={k: v for k, v in MIXED_DOMAIN.items() if k != "income"})
    with pytest.raises(ValueError, match="domain_from_data"):
        _estimator(privacy="domain_from_data").fit(
            _chunks(frame), domain={k: v for k, v in MIXED_DOMAIN.items() if k != "age"})
    with pytest.raises(ValueError, match="not in the data"):
        est.fit(lambda: [frame.drop(columns="age")], domain=MIXED_DOMAIN)
    growing = []

    def changes():  # one more row at every pass
        growing.append(1)
        return [frame.iloc[:30 + len(growing)]]

    with pytest.raises(InvalidDataError, match="different number of rows"):
        est.fit(changes, domain=MIXED_DOMAIN)
    bad_csv = tmp_path / "bad.csv"
    frame.assign(age=frame["age"].astype(object).where(frame.index != 40, "old")).to_csv(
        bad_csv, index=False)
    with pytest.raises(InvalidDataError, match=r"rows 1 to 60: column 'age': 1 cell"):
        est.fit(bad_csv, domain=MIXED_DOMAIN)
    not_parquet = tmp_path / "data.parquet"
    not_parquet.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a readable Parquet"):
        est.fit(not_parquet, domain=MIXED_DOMAIN)
    assert not hasattr(est, "flow_")  # nothing was fitted


def test_parquet_dataset_folder_and_cli(seeded, tmp_path, capsys):
    """A folder of Parquet files is one table (its files in order); the CLI reads it in
    chunks."""
    from skdpflow.cli import main

    frame = make_mixed_frame(ROWS)
    folder = tmp_path / "table"
    folder.mkdir()
    for k, start in enumerate(range(0, ROWS, 500)):
        frame.iloc[start:start + 500].to_parquet(folder / f"part-{k:03d}.parquet")
    reference = _estimator().fit(frame, domain=MIXED_DOMAIN)
    _assert_same_releases(_estimator().fit(folder, domain=MIXED_DOMAIN), reference)
    domain_file = tmp_path / "domain.json"
    synthesizer.as_domain(MIXED_DOMAIN).save(domain_file)
    model = tmp_path / "model.skdpflow"
    assert main(["fit", str(folder), "--domain", str(domain_file), "--epochs", "1",
                 "--quiet", "-o", str(model)]) == 0
    assert DPFlowSynthesizer.load(model).history_ == reference.history_


def test_sharded_fit_from_a_path(seeded, tmp_path):
    """``fit_sharded`` on a path, in a group of one process: the rows ``i % 1 == 0`` read in
    chunks, the releases of the in-memory fit."""
    import torch.distributed as dist

    from skdpflow.distributed import fit_sharded

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    frame = make_mixed_frame(ROWS)
    path = tmp_path / "data.parquet"
    frame.to_parquet(path, row_group_size=CHUNK)
    reference = _estimator().fit(frame, domain=MIXED_DOMAIN)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    try:
        streamed = fit_sharded(_estimator(), path, domain=MIXED_DOMAIN)
    finally:
        dist.destroy_process_group()
    _assert_same_releases(streamed, reference)
