"""What each of the 2 gloo processes of tests/test_distributed.py runs, and the references.

A module of its own so that ``torch.multiprocessing.spawn`` can import it in the children
(they inherit the parent's ``sys.path``). Every case writes what it measured to
``out/rank{r}.pt``; the parent process asserts.
"""

from __future__ import annotations

import datetime
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from conftest import MIXED_DOMAIN, make_mixed_frame
from torch import nn

RANKS = 2
TIMEOUT_S = 30  # the default group's collective timeout in these tests
HANG_TIMEOUT_S = 6  # that of the group of the case where a failed rank stays alive
ROWS = 40  # rows of the DP-step cases; row i lives on rank i % RANKS
BATCH_RATE = 0.3
EXPECTED_BATCH = BATCH_RATE * ROWS
CLIP = 0.05  # small enough that most rows are clipped
LR = 0.5
FIT_ROWS = 400
FIT_NOISE_SEED = 100  # rank 0's (and the single-process reference's) seeded noise
# The case where some columns are estimated under DP (every kind: integer, float with
# missing values, category, datetime); its epsilon.
UNDECLARED = ("income", "score", "city", "when")
ESTIMATED_EPSILON = 3.0


def partial_domain() -> dict:
    return {k: v for k, v in MIXED_DOMAIN.items() if k not in UNDECLARED}


# ---------------------------------------------------------------- DP-step references
def step_batches() -> list[np.ndarray]:
    """Global batches of row indices: three Poisson draws, then one held by rank 0 alone
    (rank 1's part is empty: it must still join the all-reduce)."""
    rng = np.random.default_rng(3)
    batches = [np.flatnonzero(rng.random(ROWS) < BATCH_RATE) for _ in range(3)]
    return [*batches, np.array([0, 2, 4, 6, 8])]


def step_model_and_rows() -> tuple[nn.Module, torch.Tensor]:
    from skdpflow.flows.model import SharedConditionerFlow

    flow = SharedConditionerFlow(3, n_stages=2, hidden_size=8, n_bins=4, seed=0).double()
    x = torch.randn(ROWS, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return flow, x


def run_steps(clipping: str, sparsity: float, comm=None) -> dict:
    """k DP-SGD steps without noise (plain SGD on the DP gradient), on the whole batches
    (``comm`` None) or on this rank's part of each. Returns the parameters and the clipped
    fractions seen."""
    from skdpflow.privacy.dpsgd import DPSGDStep
    from skdpflow.privacy.randomness import SeededNoise

    flow, x = step_model_and_rows()
    step = DPSGDStep(flow, max_grad_norm=CLIP, noise_multiplier=0.0,
                     expected_batch_size=EXPECTED_BATCH,
                     generator=torch.Generator().manual_seed(7), noise=SeededNoise(0),
                     clipping=clipping, sparsity=sparsity, comm=comm)
    fractions = []
    for batch in step_batches():
        if comm is not None:
            batch = batch[batch % comm.world_size == comm.rank]
        with step.record():
            losses = -flow(x[torch.as_tensor(batch, dtype=torch.long)])
        fractions.append(step.step(losses)["clipped_fraction"])
        with torch.no_grad():
            for p in flow.parameters():
                p -= LR * p.grad
    return {"params": {k: v.detach().clone() for k, v in flow.named_parameters()},
            "clipped_fraction": fractions}


def run_noise(comm, sigma: float = 2.0, steps: int = 2) -> torch.Tensor:
    """The noise of the aggregated update, in units of ``sigma C / B``: the noisy step
    minus the same step without noise (same rows), over ``steps`` steps. Each rank's DP step
    has its own SecureNoise."""
    from skdpflow.privacy.dpsgd import DPSGDStep

    model = nn.Linear(200, 250).double()
    x = torch.randn(8, 200, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mine = x[comm.rank::comm.world_size]
    out = []
    for _ in range(steps):
        grads = []
        for noise_multiplier in (sigma, 0.0):
            step = DPSGDStep(model, max_grad_norm=1.0, noise_multiplier=noise_multiplier,
                             expected_batch_size=4.0, comm=comm)
            with step.record():
                losses = model(mine).square().sum(1)
            step.step(losses)
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        out.append((grads[0] - grads[1]) * 4.0 / sigma)
    return torch.cat(out)


# ---------------------------------------------------------------- the whole fit
def fit_estimator(epsilon: float = 1.0):
    from skdpflow import DPFlowSynthesizer

    return DPFlowSynthesizer(epsilon=epsilon, epochs=1, random_state=0, verbose=False,
                             n_jobs=1)


def seeded_secure_noise(monkeypatch_target, seed: int) -> None:
    """Replace the fit's SecureNoise by a SeededNoise (tests only: the same draws on rank 0
    as in a single-process reference)."""
    from skdpflow.privacy.randomness import SeededNoise

    monkeypatch_target.SecureNoise = lambda: SeededNoise(seed)


def fit_summary(est) -> dict:
    return {"epsilon": est.epsilon_, "delta": est.delta_, "history": est.history_,
            "domain": est.domain_.to_dict(), "estimated": est.domain_.estimated,
            "n_rows_estimate": est.n_rows_estimate_,
            "marginals": [m.probs.copy() for m in est.marginals_],
            "copula": dict(est.copula_info_),
            "flow": {k: v.clone() for k, v in est.flow_.state_dict().items()},
            "sample": est.sample(5, random_state=0)}


def failed_fit(shard, group) -> dict:
    """A fit expected to fail: the error's type and message, and how long it took."""
    from skdpflow.distributed import fit_sharded

    start = time.perf_counter()
    try:
        fit_sharded(fit_estimator(), shard, domain=MIXED_DOMAIN, group=group)
    except Exception as exc:  # noqa: BLE001 - recorded for the parent to check
        return {"type": type(exc).__name__, "message": str(exc),
                "seconds": time.perf_counter() - start}
    return {"type": None}


# ---------------------------------------------------------------- the session
def session(rank: int, init_file: str, out: str) -> None:
    """Every case in turn on one 2-rank gloo group; the failure case last (it breaks it)."""
    import torch.distributed as dist

    from skdpflow import synthesizer
    from skdpflow.distributed import Communicator, fit_sharded

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=RANKS, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    comm = Communicator()
    result: dict = {"rank": comm.rank, "world_size": comm.world_size}
    try:
        result["flat"] = run_steps("flat", 0.0, comm)
        result["per_unit_sparse"] = run_steps("per_unit", 0.5, comm)
        result["noise"] = run_noise(comm)

        seeded_secure_noise(synthesizer, FIT_NOISE_SEED + rank)
        shard = make_mixed_frame(FIT_ROWS).iloc[rank::RANKS]
        result["fit"] = fit_summary(fit_sharded(fit_estimator(), shard, domain=MIXED_DOMAIN))
        result["fit_estimated"] = fit_summary(fit_sharded(
            fit_estimator(ESTIMATED_EPSILON), shard, domain=partial_domain()))

        # A rank that raises mid-fit (at the start of DP-SGD), twice. First its process
        # stays alive (a caller caught the error): the other's exchange times out.
        if rank == 1:
            def fail(*args, **kwargs):
                raise RuntimeError("rank 1 failed on purpose")

            synthesizer.train_flow = fail
        hung = dist.new_group(backend="gloo",
                              timeout=datetime.timedelta(seconds=HANG_TIMEOUT_S))
        result["hang"] = failed_fit(shard, hung)
        comm.barrier("the end of the hang case")  # rank 1 waits here for rank 0
        # Then its process ends (the worker returns): the other notices at its next exchange.
        result["failure"] = failed_fit(shard, None)
    except Exception:  # noqa: BLE001 - any other failure goes to the parent as text
        result["crash"] = traceback.format_exc()
    torch.save(result, Path(out) / f"rank{rank}.pt")
