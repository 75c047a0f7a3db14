"""The DP-SGD training loop of the flow on encoded cells."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .distributed import rank_seed
from .encoding import dequantize
from .flows.model import SharedConditionerFlow
from .privacy.dpsgd import DPSGDStep, poisson_batches, poisson_skip_batches
from .privacy.randomness import PrivacyNoise

__all__ = ["Adam", "TrainConfig", "cosine_learning_rate", "train_flow"]


@dataclass
class TrainConfig:
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    learning_rate: float
    private: bool
    # The DP step divides the noisy clipped sum by this: sample_rate times a *noisy* row
    # count, so that the exact count never matters. None means sample_rate * n_rows.
    expected_batch_size: float | None = None
    clipping: str = "flat"  # DPSGDStep's clipping; ignored when not private
    sparsity: float = 0.0  # DPSGDStep's sparsity; ignored when not private
    verbose: bool = True  # progress bar with steps and epsilon spent
    # Also show the loss: a statistic of the private rows without noise (never by default).
    show_loss: bool = False
    # Epsilon spent after k DP-SGD steps (the ledger's), for the progress bar.
    epsilon_after: Callable[[int], float] | None = None


def train_flow(
    flow: SharedConditionerFlow,
    lo: np.ndarray,
    hi: np.ndarray,
    config: TrainConfig,
    *,
    generator: torch.Generator,
    noise: PrivacyNoise,
    device: torch.device,
    comm: Any = None,
    cells: Any = None,
) -> None:
    """Train ``flow`` on cells ``[lo, hi]`` (rows x dims) in place.

    Every step draws a Poisson batch (each row independently with probability
    ``sample_rate``: the accountant assumes it), dequantizes it uniformly inside its cells,
    and takes one DP-SGD step with per-row clipping and Gaussian noise. The learning rate
    follows a cosine decay to a tenth of its start.

    ``noise`` draws what the privacy proof needs (Poisson masks, gradient noise): a
    :class:`~skdpflow.privacy.randomness.SecureNoise` in every private fit. ``generator``
    (seeded by ``random_state``) draws the rest: dequantisation and sparsification masks.

    ``comm`` (:class:`~skdpflow.distributed.Communicator`): a distributed run, where
    ``lo`` and ``hi`` are this rank's shard. Each rank draws its rows of the global Poisson
    sample from its own ``noise`` (rows join independently, so the union is the global
    sample) and the DP step sums the clipped gradients over the ranks (noise added once).
    ``config.expected_batch_size`` must then be the global ``q n_hat``. ``generator``,
    seeded alike on every rank, draws only the sparsification masks (the same on every
    rank); dequantisation draws from a generator of the rank's own, seeded from
    ``generator``'s seed and the rank. Every rank takes every step, with an empty batch
    too, so the parameters stay identical.

    ``cells`` (:class:`~skdpflow.streaming.DiskCells`, instead of ``lo`` and ``hi``): the
    cells of a table read in chunks, on disk. The batches are then drawn by row index with
    geometric skips (:func:`~skdpflow.privacy.dpsgd.poisson_skip_batches`: the same law as
    the masks, O(q n) per step) and gathered from the file.
    """
    if comm is not None and not config.expected_batch_size:
        raise ValueError("a distributed run needs the global expected_batch_size.")
    if cells is None:
        n = len(lo)
        lo_t = torch.as_tensor(lo, dtype=torch.float32, device=device)
        hi_t = torch.as_tensor(hi, dtype=torch.float32, device=device)
        batches = poisson_batches(n, config.sample_rate, config.steps, noise)

        def gather(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            idx = idx.to(device)
            return lo_t[idx], hi_t[idx]
    else:
        n = len(cells)
        batches = poisson_skip_batches(n, config.sample_rate, config.steps, noise)

        def gather(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            lo_b, hi_b = cells.rows(idx.numpy())
            return torch.from_numpy(lo_b).to(device), torch.from_numpy(hi_b).to(device)
    optimizer = Adam(list(flow.parameters()), scales=flow.learning_rate_scales())
    expected = config.expected_batch_size or config.sample_rate * n
    dp_step = None
    if config.private:
        dp_step = DPSGDStep(flow, max_grad_norm=config.max_grad_norm,
                            noise_multiplier=config.noise_multiplier,
                            expected_batch_size=expected, generator=generator, noise=noise,
                            clipping=config.clipping, sparsity=config.sparsity, comm=comm)
    elif comm is not None:  # not private: the plain sum over the ranks, no clipping
        dp_step = DPSGDStep(flow, max_grad_norm=math.inf, noise_multiplier=0.0,
                            expected_batch_size=expected, noise=noise, comm=comm)
    dequantizer = generator if comm is None else torch.Generator().manual_seed(
        rank_seed(generator.initial_seed(), comm.rank))
    bar = _progress(config)
    refresh = max(1, config.steps // 50)
    for step, idx in enumerate(batches):
        z = dequantize(*gather(idx), dequantizer)
        optimizer.zero_grad()
        if dp_step is None:
            loss = -flow(z).mean() if len(z) else None
            if loss is not None:
                loss.backward()
        else:
            with dp_step.record():
                row_losses = -flow(z)
            dp_step.step(row_losses)
            loss = row_losses.detach().mean() if len(z) else None
        optimizer.step(cosine_learning_rate(config.learning_rate, step, config.steps))
        if bar is not None:
            bar.update(1)
            if step % refresh == 0 or step == config.steps - 1:
                bar.set_postfix(_postfix(config, step + 1, loss))
        del loss
    if bar is not None:
        bar.close()
    optimizer.zero_grad()  # nothing of the last batch stays on the model


def cosine_learning_rate(start: float, step: int, steps: int) -> float:
    """Cosine decay from ``start`` at step 0 to a tenth of it at ``steps`` (as
    ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=steps, eta_min=start / 10)``)."""
    end = start / 10
    return end + (start - end) * (1 + math.cos(math.pi * step / max(steps, 1))) / 2


class Adam:
    """Adam (Kingma and Ba, 2015) as ``torch.optim.Adam`` computes it with default betas.

    A few lines of our own because building any ``torch.optim`` optimiser imports
    ``torch._dynamo`` (2 to 5 seconds on the first fit of a process), more than a whole small
    fit. ``tests/test_training.py`` checks it step for step against ``torch.optim.Adam``.

    ``scales``: a learning-rate factor per parameter (default 1 for all).
    """

    def __init__(self, params: list[torch.Tensor], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, scales: list[float] | None = None) -> None:
        self.params = params
        self.scales = [1.0] * len(params) if scales is None else list(scales)
        if len(self.scales) != len(params):
            raise ValueError("scales must have one factor per parameter")
        self.betas = betas
        self.eps = eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        self.t += 1
        b1, b2 = self.betas
        correction1 = 1 - b1**self.t
        root_correction2 = math.sqrt(1 - b2**self.t)
        for p, m, v, scale in zip(self.params, self.m, self.v, self.scales):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v.sqrt() / root_correction2).add_(self.eps)
            p.addcdiv_(m, denom, value=-lr * scale / correction1)


def _progress(config: TrainConfig):
    if not config.verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, desc="DP-SGD" if config.private else "training",
                unit="step")


def _postfix(config: TrainConfig, done: int, loss: torch.Tensor | None) -> dict:
    """Epsilon spent so far; the loss only on explicit request (it is not private)."""
    out = {}
    if config.private and config.epsilon_after is not None:
        out["eps"] = f"{config.epsilon_after(done):.3f}"
    if config.show_loss:
        out["nonprivate_loss"] = "nan" if loss is None else f"{float(loss):.3f}"
    return out


def standard_normal_logpdf(z: np.ndarray) -> np.ndarray:
    return -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
