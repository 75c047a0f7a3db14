"""Fitting on several processes (``torch.distributed``): each rank holds a disjoint shard.

The privacy unit stays one row: every row lives in exactly one shard, every release is one
mechanism on the union of the shards, and its noise enters the global sum exactly once.
Each rank computes its exact local statistic (row count, bin counts, copula second
moments, clipped gradient sum), rank 0 alone adds the secret noise (its own
:class:`~skdpflow.privacy.randomness.SecureNoise`) to its part, and one all-reduce sum gives
every rank the same noisy release. Everything after a release is deterministic
post-processing, so every rank ends with the same released values, schedule, ledger and
model. The ranks are inside the data holder's trust boundary: the traffic between them
carries exact partial sums of the private rows.

The entry point is explicit (:func:`fit_sharded`), never guessed from the environment: a
program run by ``torchrun`` with the whole table on every rank would count each row K times.
``torchrun --nproc-per-node K -m skdpflow fit data.parquet ...`` does the sharding itself
(rows ``i % K == rank``). See docs/scale.md.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["Communicator", "DistributedError", "fit_sharded", "init_from_environment"]

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A distributed fit could not go on: a rank failed, stopped, timed out or disagrees."""


class Communicator:
    """Sums and broadcasts over an initialised ``torch.distributed`` process group.

    Tensors travel on the backend's device (CUDA for NCCL, the CPU for gloo) and come back
    where they were; numpy arrays go through float64 (int64 for integer arrays), exact for
    counts below 2^53. A failed or timed-out collective (the group's ``timeout``) raises
    :class:`DistributedError` naming what was being exchanged.

    Parameters
    ----------
    group : ProcessGroup or None, default=None
        None: the default group (``torch.distributed.init_process_group`` already called).
    """

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise DistributedError(
                "torch.distributed is not initialised: call torch.distributed."
                "init_process_group first (torchrun sets the environment for it).")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        backend = str(dist.get_backend(group)).lower()
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if backend == "nccl" else torch.device("cpu"))

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, world_size={self.world_size})"

    # ------------------------------------------------------------------ collectives
    def all_reduce_sum(self, value: T, what: str = "a sum") -> T:
        """The sum of ``value`` over all ranks (a tensor or a numpy array), on every rank."""
        if isinstance(value, np.ndarray):
            dtype = torch.int64 if np.issubdtype(value.dtype, np.integer) else torch.float64
            tensor = torch.as_tensor(np.ascontiguousarray(value), dtype=dtype)
            out = self._all_reduce(tensor, what).numpy()
            return out.astype(value.dtype) if dtype == torch.float64 else out
        return self._all_reduce(value, what)

    def broadcast(self, value: torch.Tensor, src: int = 0, what: str = "a broadcast"
                  ) -> torch.Tensor:
        """Rank ``src``'s ``value`` on every rank (same shape and dtype everywhere)."""
        import torch.distributed as dist

        moved = value.detach().to(self.device, copy=True).contiguous()
        self._call(lambda: dist.broadcast(moved, src=src, group=self.group), what)
        return moved.to(value.device)

    def agree(self, work: Callable[[], T], what: str) -> T:
        """Run ``work`` on every rank; if it raised on some rank, raise on all of them.

        The rank that failed raises its own error; the others a :class:`DistributedError`
        naming the failed ranks (their messages stay on their consoles).
        """
        error: Exception | None = None
        result = None
        try:
            result = work()
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = exc
        flags = torch.zeros(self.world_size, dtype=torch.float64)
        flags[self.rank] = float(error is not None)
        failed = [int(r) for r in
                  self._all_reduce(flags, f"the outcome of {what}").nonzero().flatten()]
        if error is not None:
            raise error
        if failed:
            raise DistributedError(f"rank(s) {failed} failed while {what}: see their error.")
        return result  # type: ignore[return-value]

    def same_everywhere(self, text: str, what: str,
                        hint: str = "every rank must run the same estimator with the same "
                                    "domain and columns") -> None:
        """Raise on every rank unless ``text`` is the same on all of them."""
        digest = torch.tensor(list(hashlib.sha256(text.encode()).digest()), dtype=torch.int64)
        reference = self.broadcast(digest, 0, what)
        differs = torch.tensor([float(not torch.equal(reference, digest))],
                               dtype=torch.float64)
        if float(self._all_reduce(differs, what)[0]) > 0:
            raise DistributedError(f"the ranks do not agree on {what}: {hint}.")

    def all_gather_object(self, value: Any, what: str) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        self._call(lambda: dist.all_gather_object(out, value, group=self.group), what)
        return out

    def barrier(self, what: str = "a barrier") -> None:
        self._all_reduce(torch.zeros(1), what)

    # ------------------------------------------------------------------ plumbing
    def _all_reduce(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        import torch.distributed as dist

        # A copy: never reduce into the caller's tensor.
        moved = tensor.detach().to(self.device, copy=True).contiguous()
        self._call(lambda: dist.all_reduce(moved, op=dist.ReduceOp.SUM, group=self.group),
                   what)
        return moved.to(tensor.device)

    def _call(self, collective: Callable[[], Any], what: str) -> None:
        try:
            collective()
        except (RuntimeError, ValueError) as exc:  # gloo / NCCL errors, timeouts
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistributedError(
                f"the distributed fit failed on rank {self.rank} while exchanging {what}: "
                f"another rank stopped, failed or did not answer within the process "
                f"group's timeout ({first[:200]}). No model was fitted.") from exc


def noisy_sum(local: T, add_noise: Callable[[T], T], comm: Communicator | None,
              what: str) -> T:
    """A release of a sum over the shards with the noise added exactly once.

    Without ``comm``: ``add_noise(local)``, exactly as on one process. With it: rank 0 adds
    the noise to its exact part, the others send theirs as it is, and one all-reduce gives
    every rank the same noisy global sum.
    """
    if comm is None:
        return add_noise(local)
    part = add_noise(local) if comm.rank == 0 else local
    return comm.all_reduce_sum(part, what)


def rank_seed(seed: int, rank: int) -> int:
    """A seed of its own for ``rank``, derived from a shared ``seed`` (public randomness)."""
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


def fit_sharded(estimator: Any, shard: Any, *, domain: Any, group: Any = None) -> Any:
    """Fit ``estimator`` on the union of the shards held by the ranks of a process group.

    Every rank calls it, with its own disjoint shard of the rows (each row in exactly one
    shard), the same estimator parameters and the same declared ``domain``. Undeclared
    columns are estimated under DP as on one process (their dtypes must be the same on
    every rank); ``privacy="domain_from_data"`` is refused. Each release is computed from
    exact local statistics summed across the ranks, with the noise added once (by rank 0);
    the accounting is that of one process fitting the whole table. Every rank ends with
    the same fitted estimator (save it from rank 0).

    Parameters
    ----------
    estimator : DPFlowSynthesizer
    shard : pandas DataFrame, callable or path
        This rank's rows (at least one): a DataFrame, or a zero-argument callable
        returning a fresh iterable of this rank's DataFrame chunks; or a path to a CSV or
        Parquet file (or folder) that every rank passes, of which each reads the rows
        ``i % world_size == rank``, in chunks (docs/scale.md).
    domain : Domain, dict or path
        The public domain, identical on every rank (columns it leaves out are estimated
        under DP).
    group : ProcessGroup or None, default=None
        The ranks that hold the shards; None: the default group.

    Returns
    -------
    estimator

    Raises
    ------
    DistributedError
        Another rank failed, stopped or did not answer within the process group's
        ``timeout``; or the ranks disagree on the parameters, domain, columns or the
        dtypes of undeclared columns. No model is fitted.
    ValueError
        ``privacy="domain_from_data"`` with undeclared columns (named), on every rank.
    """
    return estimator._fit_sharded(shard, domain, Communicator(group))


def init_from_environment(timeout: float, device: str = "auto") -> None:
    """Join the process group that ``torchrun`` describes in the environment.

    NCCL when the fit will run on CUDA (``device`` "cuda", or "auto" with CUDA available;
    each rank on GPU ``LOCAL_RANK``), gloo otherwise. ``timeout`` (seconds) bounds every
    exchange: a rank that stopped makes the others fail after it at the latest.
    """
    import datetime

    import torch.distributed as dist

    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo",
                            timeout=datetime.timedelta(seconds=timeout))
