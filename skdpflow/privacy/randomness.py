"""Secret randomness for every draw that the privacy proof relies on.

The attacker of the threat model holds the model file, every sample and every log line,
knows the code and every row but one, and can guess any seed a person would type. A noise
stream that follows ``random_state`` (or a 31-bit seed, or numpy's global state) is then no
noise at all: the attacker refits both neighbouring tables with the guessed seed and sees
which one reproduces the file. So the draws the proof needs (histogram and domain-estimation
noise, Poisson batch masks, DP-SGD and copula noise) come from :class:`SecureNoise`, which reads the
operating system's cryptographically secure generator (``os.urandom``: the kernel's CSPRNG,
re-seeded from hardware entropy) at every draw. Nothing is seeded, stored or printed, and two
fits never share a noise stream.

Samplers
--------
* **Integer counts** (histograms, bucket and value counts) get exact **discrete Gaussian**
  noise (Canonne, Kamath and Steinke, 2020) from OpenDP, whose samplers use exact integer
  arithmetic on OS randomness. No floating-point rounding touches the noise, so the attacks
  on floating-point samplers (Mironov, 2012; Jin et al., 2022) do not apply. With integer
  sensitivity, independent discrete Gaussians of scale ``s`` per coordinate satisfy the same
  Rényi-DP curve as continuous Gaussians, ``alpha * Delta_2^2 / (2 s^2)`` (the normalising
  constant is shift-invariant over the integers and the remaining theta-function ratio is at
  most 1), so the accountant records them exactly like the Gaussian mechanism.
* **DP-SGD noise** (and the copula release's, a few thousand values) is real-valued and drawn at every step for every parameter, which OpenDP's
  float sampler is far too slow for (8.5 s per 100,000 values here). It comes from numpy's
  ziggurat normal sampler driven by a cryptographically secure bit generator: AES-128 in
  counter mode (randomgen's ``AESCounter``, AES-NI where the CPU has it) keyed with 128 fresh
  bits from ``os.urandom`` when the fit starts, used for that fit only and never stored. As in
  Opacus' ``secure_mode`` (following Holohan and Braghin, 2021), each value is the sum of four
  such normals divided by two, in float64: the sum fills the gaps in the set of representable
  outputs that the attacks on a single floating-point draw exploit. It is then added to the
  clipped gradient sum and rounded to the parameter's dtype. On CUDA the noise is drawn on
  the CPU and copied to the device.
* **Poisson masks**: row ``i`` joins a batch iff a 53-bit uniform is below the sampling rate.
* **Poisson batches by skips** (streamed fits): the gaps between the rows of a batch are
  independent Geometric(rate) draws (numpy's sampler on the same secret bit generator), which
  is the law of the gaps between the successes of independent Bernoulli(rate) trials.

:class:`SeededNoise` has the same interface with a seeded, *insecure* generator, for tests and
research only: its discrete Gaussian rounds through floating point. No estimator uses it.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = ["PrivacyNoise", "SecureNoise", "SeededNoise"]


class PrivacyNoise(Protocol):
    """The draws a privacy mechanism may make; a mechanism takes one from its caller."""

    def uniform(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """``n`` float64 uniforms in the open interval (0, 1)."""

    def normal(self, shape: tuple[int, ...], std: float, *,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float64
               ) -> Tensor:
        """Gaussian noise ``N(0, std^2)`` of the given shape."""

    def poisson_mask(self, n: int, rate: float) -> Tensor:
        """``n`` independent Bernoulli(rate) draws (bool, CPU)."""

    def geometric(self, n: int, rate: float) -> np.ndarray:
        """``n`` independent Geometric(rate) draws on ``{1, 2, ...}`` (int64)."""

    def discrete_gaussian(self, counts: np.ndarray, std: float) -> np.ndarray:
        """Integer ``counts`` plus independent discrete Gaussian noise of scale ``std``."""


class _GeneratorNoise:
    """Uniform, Gaussian and Bernoulli draws from a numpy bit generator."""

    def __init__(self, bit_generator: np.random.BitGenerator) -> None:
        self._rng = np.random.Generator(bit_generator)

    def uniform(self, n: int, device: torch.device | str | None = None) -> Tensor:
        # random() keeps 53 bits of a 64-bit word: multiples of 2^-53 in [0, 1).
        return torch.from_numpy(self._rng.random(n)).to(device or "cpu")

    def normal(self, shape: tuple[int, ...], std: float, *,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float64
               ) -> Tensor:
        n = math.prod(shape)
        if std == 0 or n == 0:
            return torch.zeros(shape, dtype=dtype, device=device)
        summed = self._rng.standard_normal((4, n)).sum(0)
        summed *= std / 2.0  # four N(0, 1) summed have variance 4
        return torch.from_numpy(summed).view(shape).to(device=device or "cpu", dtype=dtype)

    def poisson_mask(self, n: int, rate: float) -> Tensor:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must lie in [0, 1], got {rate!r}.")
        return torch.from_numpy(self._rng.random(n) < rate)

    def geometric(self, n: int, rate: float) -> np.ndarray:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"rate must lie in (0, 1], got {rate!r}.")
        if rate == 1.0:
            return np.ones(n, dtype=np.int64)
        return self._rng.geometric(rate, size=n).astype(np.int64, copy=False)


class SecureNoise(_GeneratorNoise):
    """Draws from AES-CTR keyed with fresh OS entropy; nothing to seed, store or reproduce.

    Each instance draws its own 128-bit key from ``os.urandom``; it cannot be pickled, so
    the key never reaches a file.

    Examples
    --------
    >>> noise = SecureNoise()
    >>> noise.normal((3,), std=1.0).shape
    torch.Size([3])
    """

    secure = True

    def __init__(self) -> None:
        from randomgen import AESCounter

        key = int.from_bytes(os.urandom(16), "little")
        counter = int.from_bytes(os.urandom(16), "little")
        super().__init__(AESCounter(key=key, counter=counter))

    def discrete_gaussian(self, counts: np.ndarray, std: float) -> np.ndarray:
        counts = np.asarray(counts, dtype=np.int64)
        if std == 0 or counts.size == 0:
            return counts.copy()
        measurement = _opendp_gaussian(float(std))
        return np.asarray(measurement(counts.ravel().tolist()), dtype=np.int64
                          ).reshape(counts.shape)

    def __reduce__(self):  # noqa: ANN204
        raise TypeError("SecureNoise holds a secret key and cannot be pickled or stored.")

    def __repr__(self) -> str:
        return "SecureNoise()"


class SeededNoise(_GeneratorNoise):
    """A seeded, predictable stand-in for :class:`SecureNoise`: tests and research only.

    Anyone who knows the seed can remove the noise. Its discrete Gaussian is the rejection
    sampler of Canonne, Kamath and Steinke run in floating point, not an exact one.
    """

    secure = False

    def __init__(self, seed: int) -> None:
        super().__init__(np.random.PCG64(seed))

    def discrete_gaussian(self, counts: np.ndarray, std: float) -> np.ndarray:
        counts = np.asarray(counts, dtype=np.int64)
        if std == 0 or counts.size == 0:
            return counts.copy()
        t = math.floor(std) + 1  # discrete Laplace proposal of scale t
        out = np.empty(counts.size, dtype=np.int64)
        filled = 0
        while filled < counts.size:
            m = 2 * (counts.size - filled) + 16
            magnitude = self._rng.geometric(1.0 - math.exp(-1.0 / t), size=m) - 1
            negative = self._rng.random(m) < 0.5
            y = np.where(negative, -magnitude, magnitude)
            keep = ~(negative & (magnitude == 0))  # count zero once, not twice
            keep &= self._rng.random(m) < np.exp(
                -((np.abs(y) - std**2 / t) ** 2) / (2 * std**2))
            y = y[keep][: counts.size - filled]
            out[filled:filled + len(y)] = y
            filled += len(y)
        return counts + out.reshape(counts.shape)

    def __repr__(self) -> str:
        return "SeededNoise(<insecure>)"


@lru_cache(maxsize=64)
def _opendp_gaussian(std: float):  # noqa: ANN202 - an OpenDP Measurement
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = (dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64"))
    return space >> dp.m.then_gaussian(scale=std)
