"""The DP-SGD training loop of the flow on encoded cells."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtri

from .encoding import U_EPS
from .flows.model import SharedConditionerFlow
from .privacy.accounting import epsilon_spent
from .privacy.dpsgd import DPSGDStep, poisson_batches

__all__ = ["TrainConfig", "train_flow"]


@dataclass
class TrainConfig:
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    learning_rate: float
    private: bool
    delta: float
    accountant: str
    prior_history: list
    verbose: bool = True
    clipping: str = "flat"  # DPSGDStep's clipping; ignored when not private
    sparsity: float = 0.0  # DPSGDStep's sparsity; ignored when not private
    # The DP step divides the noisy clipped sum by this; None means sample_rate * n_rows.
    # Pass sample_rate times a *noisy* row count so that the exact count never matters.
    expected_batch_size: float | None = None


def train_flow(
    flow: SharedConditionerFlow,
    lo: np.ndarray,
    hi: np.ndarray,
    config: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
) -> None:
    """Train ``flow`` on cells ``[lo, hi]`` (rows x dims) in place.

    Every step draws a Poisson batch (each row independently with probability
    ``sample_rate``: the accountant assumes it), dequantizes it uniformly inside its cells,
    and takes one DP-SGD step with per-row clipping and Gaussian noise. The learning rate
    follows a cosine decay to a tenth of its start.
    """
    n = len(lo)
    lo_t = torch.as_tensor(lo, dtype=torch.float32, device=device)
    width_t = torch.as_tensor(hi - lo, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam(flow.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(config.steps, 1), eta_min=config.learning_rate / 10)
    expected = config.expected_batch_size or config.sample_rate * n
    dp_step = DPSGDStep(flow, max_grad_norm=config.max_grad_norm,
                        noise_multiplier=config.noise_multiplier,
                        expected_batch_size=expected, generator=generator,
                        clipping=config.clipping, sparsity=config.sparsity) \
        if config.private else None
    bar = _progress(config)
    refresh = max(1, config.steps // 50)
    for step, idx in enumerate(poisson_batches(n, config.sample_rate, config.steps, generator)):
        idx = idx.to(device)
        u = lo_t[idx] + torch.rand(len(idx), lo_t.shape[1], generator=generator,
                                   dtype=lo_t.dtype).to(device) * width_t[idx]
        z = torch.special.ndtri(u.clamp(U_EPS, 1 - U_EPS))
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
        value = float(loss.detach()) if loss is not None else float("nan")
        if bar is not None:
            bar.update(1)
            if step % refresh == 0 or step == config.steps - 1:
                bar.set_postfix(_postfix(config, step + 1, value))
    if bar is not None:
        bar.close()
    optimizer.zero_grad(set_to_none=True)  # nothing of the last batch stays on the model


def _progress(config: TrainConfig):  # noqa: ANN202 - tqdm or None
    if not config.verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, desc="DP-SGD" if config.private else "training",
                unit="step")


def _postfix(config: TrainConfig, done: int, loss: float) -> dict:
    out = {"loss": f"{loss:.3f}"}
    if config.private:
        history = list(config.prior_history) + [
            (config.noise_multiplier, config.sample_rate, done)]
        out["eps"] = f"{epsilon_spent(history, config.delta, config.accountant):.3f}"
    return out


def midpoint_latent(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Cell midpoints in latent space (used for scoring)."""
    return ndtri(np.clip((lo + hi) / 2, U_EPS, 1 - U_EPS))


def standard_normal_logpdf(z: np.ndarray) -> np.ndarray:
    return -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
