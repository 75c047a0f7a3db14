"""Distributed fit on K gloo processes of this machine: the cost of the exchanges.

Prints (1) the time of one all-reduce of a DP-SGD step's buffer (every parameter of the
Adult-sized flow, float64) and (2) the wall time of an Adult fit at epsilon 1 on K ranks
(rows i % K == rank, one torch thread each) next to the same fit on one process.

    OMP_NUM_THREADS=1 python benchmarks/distributed.py --ranks 2

On a machine whose cores are shared the fit times say little about speed-ups; the
all-reduce time is the overhead a step pays.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, ranks: int, init: str, reps: int, queue) -> None:
    from skdpflow import DPFlowSynthesizer, load_demo, load_demo_domain
    from skdpflow.distributed import Communicator, fit_sharded
    from skdpflow.flows.model import SharedConditionerFlow

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=ranks,
                            timeout=datetime.timedelta(seconds=600))
    comm = Communicator()
    n_params = sum(p.numel() for p in SharedConditionerFlow(20, hidden_size=64).parameters())
    buffer = torch.randn(n_params, dtype=torch.float64)
    comm.barrier()
    start = time.perf_counter()
    for _ in range(reps):
        comm.all_reduce_sum(buffer)
    per_call = (time.perf_counter() - start) / reps
    data = load_demo()
    comm.barrier()
    start = time.perf_counter()
    synth = DPFlowSynthesizer(epsilon=1.0, random_state=0, verbose=False, n_jobs=1)
    fit_sharded(synth, data.iloc[rank::ranks], domain=load_demo_domain())
    fit_s = time.perf_counter() - start
    if rank == 0:
        queue.put({"params": n_params, "all_reduce_ms": 1e3 * per_call, "fit_s": fit_s,
                   "steps": synth.steps_, "epsilon": synth.epsilon_})
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()
    from skdpflow import DPFlowSynthesizer, load_demo, load_demo_domain

    torch.set_num_threads(1)
    start = time.perf_counter()
    single = DPFlowSynthesizer(epsilon=1.0, random_state=0, verbose=False, n_jobs=1).fit(
        load_demo(), domain=load_demo_domain())
    print(f"1 process: fit {time.perf_counter() - start:.1f} s, {single.steps_} steps")
    queue = mp.get_context("spawn").SimpleQueue()
    init = f"file://{tempfile.mkdtemp()}/init"
    mp.spawn(_worker, args=(args.ranks, init, args.reps, queue), nprocs=args.ranks)
    out = queue.get()
    print(f"{args.ranks} processes: all-reduce of {out['params']} float64 values "
          f"{out['all_reduce_ms']:.2f} ms; fit {out['fit_s']:.1f} s, {out['steps']} steps, "
          f"epsilon {out['epsilon']:.3f}")


if __name__ == "__main__":
    main()
