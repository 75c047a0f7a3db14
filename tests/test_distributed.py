"""Distributed fits on 2 gloo processes: the same DP-SGD, the same accounting, noise added once.

One spawn of 2 processes (``torch.multiprocessing``, ``file://`` rendezvous in tmp_path) runs
every case of :mod:`_distributed_workers` in turn and writes what it measured; the tests
below compare it with single-process references computed here. The CLI is run once under
``torch.distributed.run`` (torchrun).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import _distributed_workers as workers
import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
from conftest import MIXED_DOMAIN, make_mixed_frame
from scipy.stats import chi2

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of the 2 ranks measured, in rank order."""
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("dist")
    mp.spawn(workers.session, args=(str(folder / "init"), str(folder)), nprocs=workers.RANKS)
    results = [torch.load(folder / f"rank{r}.pt", weights_only=False)
               for r in range(workers.RANKS)]
    for result in results:
        assert "crash" not in result, result.get("crash")
    return results


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) or torch.allclose(
        a[k], b[k], rtol=0, atol=0, equal_nan=True) for k in a)


# ------------------------------------------------------------------ DP-SGD
@pytest.mark.parametrize(("case", "clipping", "sparsity"),
                         [("flat", "flat", 0.0), ("per_unit_sparse", "per_unit", 0.5)])
def test_steps_equal_single_process(ranks, case, clipping, sparsity):
    """Noise 0, the same batches split over the shards: after k steps the parameters are
    the single-process run's (clipping active; an empty local batch included)."""
    reference = workers.run_steps(clipping, sparsity)
    assert min(reference["clipped_fraction"]) > 0.5  # the clipping is doing something
    start = workers.step_model_and_rows()[0]
    moved = max(float((reference["params"][k] - p.detach()).abs().max())
                for k, p in start.named_parameters())
    assert moved > 1e-3  # the steps moved the parameters
    for result in ranks:
        for name, value in reference["params"].items():
            torch.testing.assert_close(result[case]["params"][name], value,
                                       rtol=1e-9, atol=1e-12)
    assert _same_state(ranks[0][case]["params"], ranks[1][case]["params"])


def test_noise_enters_once(ranks):
    """The aggregated update's noise has variance sigma^2 C^2 / B^2, not K times it."""
    z = ranks[0]["noise"].double().numpy()
    np.testing.assert_array_equal(z, ranks[1]["noise"].double().numpy())
    n = z.size
    # mean(z^2) ~ chi2_n / n under the claim: its 1e-6 two-sided interval.
    low, high = chi2.ppf(5e-7, n) / n, chi2.ppf(1 - 5e-7, n) / n
    variance = float(np.mean(z**2))
    assert low < variance < high, (variance, low, high)
    assert not low < workers.RANKS < high  # K times the variance would fail
    assert abs(float(np.mean(z))) < 6 / math.sqrt(n)


# ------------------------------------------------------------------ a whole fit
@pytest.mark.parametrize("case", ["fit", "fit_estimated"])
def test_fit_matches_single_process_accounting(ranks, monkeypatch, case):
    """2 ranks end with the same model; the ledger, the domain (declared, or estimated under
    DP), the released marginals and the row estimate are those of one process fitting the
    whole table with the same noise."""
    from skdpflow import synthesizer
    from skdpflow.privacy.randomness import SeededNoise

    monkeypatch.setattr(synthesizer, "SecureNoise",
                        lambda: SeededNoise(workers.FIT_NOISE_SEED))
    if case == "fit":
        est, domain = workers.fit_estimator(), MIXED_DOMAIN
    else:
        est, domain = workers.fit_estimator(workers.ESTIMATED_EPSILON), workers.partial_domain()
    single = est.fit(make_mixed_frame(workers.FIT_ROWS), domain=domain)
    assert len(single.domain_.estimated) == (0 if case == "fit" else len(workers.UNDECLARED))
    fits = [r[case] for r in ranks]
    assert _same_state(fits[0]["flow"], fits[1]["flow"])
    for fit in fits:
        assert fit["domain"] == single.domain_.to_dict()
        assert fit["estimated"] == single.domain_.estimated
        assert fit["history"] == single.history_
        assert fit["epsilon"] == pytest.approx(single.epsilon_, rel=1e-12)
        assert fit["delta"] == pytest.approx(single.delta_, rel=1e-12)
        assert fit["epsilon"] <= est.epsilon + 1e-9
        assert fit["n_rows_estimate"] == single.n_rows_estimate_
        for mine, theirs in zip(fit["marginals"], single.marginals_, strict=True):
            np.testing.assert_allclose(mine, theirs.probs, rtol=1e-12, atol=1e-15)
        assert fit["copula"]["mean_abs_correlation"] == pytest.approx(
            single.copula_info_["mean_abs_correlation"], rel=1e-9)
        sample = fit["sample"]
        assert list(sample.columns) == list(MIXED_DOMAIN) and len(sample) == 5
    pd.testing.assert_frame_equal(fits[0]["sample"], fits[1]["sample"])


@pytest.mark.parametrize("case", ["failure", "hang"])
def test_failed_rank_fails_the_others(ranks, case):
    """A rank that raises mid-fit raises its own error; the other fails with a
    DistributedError that says so, never a model: quickly when the failed rank's process
    ends ("failure"), after the group's timeout when it stays alive ("hang")."""
    failing, waiting = ranks[1][case], ranks[0][case]
    assert failing["type"] == "RuntimeError" and "on purpose" in failing["message"]
    assert waiting["type"] == "DistributedError", waiting
    assert "rank 0" in waiting["message"] and "No model was fitted" in waiting["message"]
    if case == "hang":
        assert workers.HANG_TIMEOUT_S - 1 < waiting["seconds"] < workers.HANG_TIMEOUT_S + 10
    else:
        assert waiting["seconds"] < 10


# ------------------------------------------------------------------ one process
@pytest.fixture
def one_rank(tmp_path):
    """A gloo process group of this process alone."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def test_communicator_needs_a_process_group():
    from skdpflow.distributed import Communicator, DistributedError

    with pytest.raises(DistributedError, match="init_process_group"):
        Communicator()


def test_sums_and_agreement_on_one_rank(one_rank):
    from skdpflow.distributed import Communicator, DistributedError

    comm = Communicator()
    counts = np.array([3, 2**40 + 1])
    assert comm.all_reduce_sum(counts).dtype == np.int64
    np.testing.assert_array_equal(comm.all_reduce_sum(counts), counts)
    x = torch.arange(4.0)
    assert torch.equal(comm.all_reduce_sum(x), x) and torch.equal(comm.broadcast(x), x)
    with pytest.raises(ZeroDivisionError):
        comm.agree(lambda: 1 / 0, "dividing")
    assert comm.agree(lambda: 7, "adding") == 7
    comm.same_everywhere("a", "a text")
    assert issubclass(DistributedError, RuntimeError)


def test_domain_from_data_refused(one_rank, mixed_frame, mixed_domain):
    """privacy='domain_from_data' would read undeclared domains exactly: refused, naming the
    columns, before anything is released."""
    from skdpflow.distributed import fit_sharded

    del mixed_domain["city"], mixed_domain["when"]
    est = workers.fit_estimator().set_params(privacy="domain_from_data")
    with pytest.raises(ValueError, match=r"undeclared: \['city', 'when'\]"):
        fit_sharded(est, mixed_frame, domain=mixed_domain)
    assert not hasattr(est, "ledger_")


def test_entirely_missing_is_checked_over_all_shards(one_rank, mixed_frame, mixed_domain):
    from skdpflow import InvalidDataError
    from skdpflow.distributed import fit_sharded

    del mixed_domain["score"]
    with pytest.raises(InvalidDataError, match="'score' is entirely missing"):
        fit_sharded(workers.fit_estimator(), mixed_frame.assign(score=np.nan),
                    domain=mixed_domain)


def test_one_rank_fit_and_global_delta_check(one_rank, mixed_frame, mixed_domain):
    """K = 1 through the distributed path: a model within budget; delta is checked against
    the global row count."""
    from skdpflow.distributed import fit_sharded

    est = fit_sharded(workers.fit_estimator(), mixed_frame, domain=mixed_domain)
    assert est.epsilon_ <= 1.0 + 1e-9 and len(est.sample(3)) == 3
    with pytest.raises(ValueError, match="1 / n_rows"):
        fit_sharded(workers.fit_estimator().set_params(delta=1 / len(mixed_frame)),
                    mixed_frame, domain=mixed_domain)


# ------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_cli_shards_are_disjoint_and_cover(tmp_path, suffix, mixed_domain):
    from skdpflow.cli import _read_data
    from skdpflow.domain import as_domain

    frame = make_mixed_frame(101).reset_index(names="row")
    domain = as_domain({**mixed_domain, "row": {"type": "numerical", "min": 0, "max": 100,
                                                 "integer": True}})
    path = tmp_path / f"data{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    shards = [_read_data(path, domain, (rank, 3)) for rank in range(3)]
    for rank, shard in enumerate(shards):
        assert (shard["row"] % 3 == rank).all()
    rows = pd.concat(shards)["row"].astype(int)
    assert sorted(rows) == list(range(101))
    whole = _read_data(path, domain)  # one process: every row, in order
    assert whole["row"].astype(int).tolist() == list(range(101))


def test_cli_under_torchrun(tmp_path, mixed_domain):
    """``torchrun --nproc-per-node 2 -m skdpflow fit data.parquet``: one model, from rank 0."""
    import json

    from skdpflow import DPFlowSynthesizer

    data, domain, model = tmp_path / "data.parquet", tmp_path / "d.json", tmp_path / "m.skdp"
    make_mixed_frame(300).to_parquet(data)
    domain.write_text(json.dumps(mixed_domain))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", "-m", "skdpflow", "fit", str(data), "-o", str(model), "--domain", str(domain),
         "--epochs", "1", "--quiet", "--jobs", "1", "--timeout", "60"],
        check=False, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model written to") == 1
    assert "fitted on 2 processes" in done.stdout
    est = DPFlowSynthesizer.load(model)
    assert est.epsilon_ <= 1.0 + 1e-9 and len(est.sample(4)) == 4
