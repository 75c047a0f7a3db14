"""The DP-SGD training loop of the flow on encoded cells."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .encoding import dequantize
from .flows.model import SharedConditionerFlow
from .privacy.dpsgd import DPSGDStep, poisson_batches
from .privacy.randomness import PrivacyNoise

__all__ = ["TrainConfig", "train_flow"]


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
) -> None:
    """Train ``flow`` on cells ``[lo, hi]`` (rows x dims) in place.

    Every step draws a Poisson batch (each row independently with probability
    ``sample_rate``: the accountant assumes it), dequantizes it uniformly inside its cells,
    and takes one DP-SGD step with per-row clipping and Gaussian noise. The learning rate
    follows a cosine decay to a tenth of its start.

    ``noise`` draws what the privacy proof needs (Poisson masks, gradient noise): a
    :class:`~skdpflow.privacy.randomness.SecureNoise` in every private fit. ``generator``
    (seeded by ``random_state``) draws the rest: dequantisation and sparsification masks.
    """
    n = len(lo)
    lo_t = torch.as_tensor(lo, dtype=torch.float32, device=device)
    hi_t = torch.as_tensor(hi, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam(flow.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(config.steps, 1), eta_min=config.learning_rate / 10)
    expected = config.expected_batch_size or config.sample_rate * n
    dp_step = DPSGDStep(flow, max_grad_norm=config.max_grad_norm,
                        noise_multiplier=config.noise_multiplier,
                        expected_batch_size=expected, generator=generator, noise=noise,
                        clipping=config.clipping, sparsity=config.sparsity) \
        if config.private else None
    bar = _progress(config)
    refresh = max(1, config.steps // 50)
    for step, idx in enumerate(poisson_batches(n, config.sample_rate, config.steps, noise)):
        idx = idx.to(device)
        z = dequantize(lo_t[idx], hi_t[idx], generator)
        optimizer.zero_grad(set_to_none=True)
        if dp_step is None:
            loss = -flow(z).mean() if len(z) else None
            if loss is not None:
                loss.backward()
        else:
            with dp_step.record():
                row_losses = -flow(z)
            dp_step.step(row_losses)
            loss = row_losses.detach().mean() if len(z) else None
        optimizer.step()
        schedule.step()
        if bar is not None:
            bar.update(1)
            if step % refresh == 0 or step == config.steps - 1:
                bar.set_postfix(_postfix(config, step + 1, loss))
        del loss
    if bar is not None:
        bar.close()
    optimizer.zero_grad(set_to_none=True)  # nothing of the last batch stays on the model


def _progress(config: TrainConfig):  # noqa: ANN202 - tqdm or None
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
