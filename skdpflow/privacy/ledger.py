"""The privacy ledger: one object owns the budget of a fit, from plan to report.

Every mechanism that reads rows (domain estimation, the histogram release, DP-SGD) lives in
:mod:`skdpflow.privacy`, takes its noise scale from the ledger and its generator from the
caller, and hands back a :class:`Release`: what it read, its L2 sensitivity, its noise
multiplier, sampling rate and steps, and its nominal share of the budget. The ledger keeps
them in order, calibrates the next mechanism knowing what was spent, recomputes epsilon and
delta from them, writes the report and its own ``state_dict``.

Adaptive composition (why one Rényi order)
------------------------------------------
DP-SGD's sampling rate and number of steps are chosen from the row count *estimated from
the noisy histograms*: a mechanism chosen after, and depending on, an earlier release. The
usual accountant composes fixed mechanisms; with an adaptive choice its curve need not bound
the fit. Rényi DP composes adaptively when each mechanism's divergence at an order ``alpha``
is bounded by a number fixed before the first release (Mironov, 2017, Prop. 1; the Rényi
filter of Feldman and Zrnic, 2021). So the ledger fixes one order ``alpha*`` and the budget
``B = epsilon - c(alpha*, delta)`` at that order *before anything is released*, from public
inputs only (epsilon, delta, the budget shares, the batch size and epochs), and every later
calibration keeps the realised sum of Rényi divergences at ``alpha*`` within ``B``, whatever
the noisy count turned out to be. ``c`` is the conversion of Balle et al. (2020, Thm. 21)
that Opacus uses::

    epsilon = rdp(alpha) - (log(delta) + log(alpha)) / (alpha - 1) + log((alpha - 1) / alpha)

The fit is then ``(alpha*, B)``-RDP, hence ``(epsilon, delta_rdp)``-DP. ``alpha*`` is chosen to
lose the least noise against the best order over a public range of table sizes (1,000 to 10
million rows, see :func:`filter_order`): at most a few percent more DP-SGD noise than a
non-adaptive accountant would pick for a table whose size it knew.

Category discovery adds ``e^eps * delta_s`` to delta (see
:mod:`skdpflow.privacy.domain_estimation`); the ledger holds ``delta_s`` and the accountant's
share ``delta_rdp = delta - e^eps * delta_s``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from opacus.accountants.analysis.rdp import compute_rdp

from .accounting import (
    PrivacyBudgetError,
    analytic_gaussian_epsilon,
    analytic_gaussian_noise_multiplier,
)

__all__ = ["MAX_EPSILON", "PrivacyLedger", "Release", "filter_order", "rdp_to_epsilon"]

# Largest finite epsilon accepted: every formula (e^eps in delta, the conversion) stays finite.
MAX_EPSILON = 500.0
# Table sizes over which the Rényi order is chosen (public; see filter_order).
REFERENCE_ROWS = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
SIGMA_BOUNDS = (1e-2, 1e5)
# Rényi orders the ledger may fix: fine steps below 10, then about 4% apart up to 2048.
CANDIDATE_ORDERS = np.unique(np.concatenate([
    np.round(np.arange(1.1, 10.0, 0.1), 1),
    np.round(np.geomspace(10, 2048, 140)).astype(float)]))


@dataclass
class Release:
    """What one mechanism read and how much noise it added."""

    name: str
    reads: str  # in words: which counts or gradients of the rows
    l2_sensitivity: float
    noise_multiplier: float  # noise std / l2_sensitivity
    sample_rate: float = 1.0
    steps: int = 1
    budget_share: float = 0.0
    columns: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def rdp(self, order: float) -> float:
        """Rényi divergence of this release at ``order`` (Opacus' subsampled Gaussian)."""
        if self.steps == 0 or self.sample_rate == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        return float(compute_rdp(q=self.sample_rate, noise_multiplier=self.noise_multiplier,
                                 steps=self.steps, orders=[order])[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rdp_to_epsilon(rdp: float, order: float, delta: float) -> float:
    """Epsilon at ``delta`` of an ``(order, rdp)``-RDP mechanism (Balle et al., 2020)."""
    return float(rdp - (math.log(delta) + math.log(order)) / (order - 1)
                 + math.log((order - 1) / order))


def _rdp_budget(epsilon: float, order: float, delta: float) -> float:
    """The Rényi divergence at ``order`` that converts to exactly ``epsilon``."""
    return epsilon - rdp_to_epsilon(0.0, order, delta)


def _sgd_sigma(budget: float, order: float, sample_rate: float, steps: int) -> float:
    """Smallest noise multiplier whose ``steps`` subsampled steps stay within ``budget``."""
    def over(sigma: float) -> bool:
        return compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=steps,
                           orders=[order])[0] > budget

    lo, hi = SIGMA_BOUNDS
    if budget <= 0 or over(hi):
        return math.inf
    if not over(lo):
        return lo
    while hi / lo > 1 + 1e-4:  # bisection in log space; hi stays feasible
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if over(mid) else (lo, mid)
    return hi


@lru_cache(maxsize=256)
def filter_order(epsilon: float, delta: float, fixed_rdp_per_order: float, batch_size: int,
                 epochs: float, plans: tuple[tuple[float, int, float], ...] | None = None
                 ) -> float:
    """The Rényi order fixed before the first release, from public inputs only.

    Parameters
    ----------
    epsilon, delta : the target, ``delta`` being the accountant's share.
    fixed_rdp_per_order : float
        ``sum 1 / (2 z^2)`` over the one-shot Gaussian releases planned before DP-SGD (their
        divergence at order ``a`` is ``a`` times this).
    batch_size, epochs : DP-SGD's expected batch size and passes.
    plans : tuple of ``(sample_rate, steps, share)``, one per reference size, or None
        A schedule that follows the table (:mod:`skdpflow.schedule`): at each reference size,
        DP-SGD's sampling rate, steps and share of the Rényi budget (what is left after the
        fixed releases). Overrides ``batch_size`` and ``epochs``.

    For each reference table size ``n`` in :data:`REFERENCE_ROWS` (``q = batch_size / n``,
    ``round(epochs / q)`` steps) and each candidate order near the optimum of a linear
    (Gaussian) curve, the noise DP-SGD would need is computed; the order returned minimises
    the worst ratio, over the sizes, of that noise to the least noise any candidate order
    needs at that size.
    """
    orders = CANDIDATE_ORDERS
    budgets = np.array([_rdp_budget(epsilon, a, delta) - a * fixed_rdp_per_order
                        for a in orders])
    feasible = budgets > 0
    if not feasible.any():
        raise PrivacyBudgetError(
            f"epsilon={epsilon} at delta={delta:g} leaves no Rényi budget at any order"
            + (" once the one-off releases are paid: lower their budget shares."
               if fixed_rdp_per_order > 0 else ": raise epsilon or delta."))
    # The best order for a linear (Gaussian) curve; the subsampled Gaussian's is at or below.
    best_linear = float(orders[np.argmax(np.where(feasible, budgets / orders, -np.inf))])
    candidates = [float(a) for a, ok in zip(orders, feasible)
                  if ok and best_linear / 4 <= a <= best_linear * 1.25]
    ratios = np.ones((len(candidates), len(REFERENCE_ROWS)))
    for j, n in enumerate(REFERENCE_ROWS):
        if plans is None:
            q = min(1.0, batch_size / n)
            steps, share = max(1, int(round(epochs / q))), 1.0
        else:
            q, steps, share = plans[j]
        if share <= 0 or steps <= 0:
            continue
        sigmas = np.array([_sgd_sigma(
            share * (_rdp_budget(epsilon, a, delta) - a * fixed_rdp_per_order), a, q, steps)
            for a in candidates])
        if not np.isfinite(sigmas).any():
            continue
        ratios[:, j] = sigmas / sigmas[np.isfinite(sigmas)].min()
    return candidates[int(np.argmin(ratios.max(axis=1)))]


class PrivacyLedger:
    """The budget of one fit: plan, calibrate, record, recompute, report.

    Parameters
    ----------
    epsilon, delta : float
        The promise for the whole fit. ``epsilon = inf`` records nothing (no privacy).
    selection_delta : float, default=0.0
        Chance that category discovery releases one row's value; enters delta as
        ``e^epsilon * selection_delta``.

    Examples
    --------
    >>> ledger = PrivacyLedger(1.0, 1e-5)
    >>> z = ledger.gaussian_noise(0.1)         # a one-off release at 10% of the budget
    >>> ledger.plan([z], batch_size=256, epochs=5)
    >>> ledger.record(Release("counts", "one count per row", 1.0, z, budget_share=0.1))
    >>> sigma = ledger.dpsgd_noise(sample_rate=0.01, steps=500)
    """

    def __init__(self, epsilon: float, delta: float, *, selection_delta: float = 0.0) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must lie in (0, 1), got {delta!r}.")
        if not epsilon > 0 or (math.isfinite(epsilon) and epsilon > MAX_EPSILON):
            raise ValueError(
                f"epsilon must lie in (0, {MAX_EPSILON:g}] or be inf (no privacy), got "
                f"{epsilon!r}: beyond that, e^epsilon overflows the formulas and the promise "
                "is void anyway.")
        self.epsilon = float(epsilon)
        self.delta = float(delta)
        self.selection_delta = float(selection_delta) if self.private else 0.0
        self.accountant_delta = (self.delta - math.exp(self.epsilon) * self.selection_delta
                                 if self.private else 0.0)
        if self.private and self.accountant_delta <= 0:
            raise PrivacyBudgetError("selection_delta leaves no delta for the accountant.")
        self.order: float | None = None
        self._planned_rdp = 0.0
        self.releases: list[Release] = []

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    # ------------------------------------------------------------ calibration
    def gaussian_noise(self, share: float) -> float:
        """Noise multiplier of a one-off Gaussian release that alone is ``(share eps, delta)``."""
        if not self.private:
            return 0.0
        return analytic_gaussian_noise_multiplier(share * self.epsilon, self.accountant_delta)

    def plan(self, one_off: list[float], *, batch_size: int = 1024, epochs: float = 6.0,
             schedule: Any = None) -> None:
        """Fix the Rényi order before the first release (public inputs only).

        ``one_off`` are the noise multipliers of one-shot releases calibrated before the plan
        (:meth:`gaussian_noise`); ``schedule``, a callable ``n -> (sample_rate, steps, share)``,
        says what DP-SGD would do on ``n`` rows with ``share`` of the Rényi budget left after
        them (see :func:`filter_order`); without it, ``batch_size`` and ``epochs`` do.
        """
        if not self.private:
            return
        if self.releases:
            raise RuntimeError("The Rényi order must be fixed before the first release.")
        fixed = sum(1.0 / (2 * z**2) for z in one_off)
        plans = None if schedule is None else tuple(
            tuple(schedule(n)) for n in REFERENCE_ROWS)
        self.order = filter_order(self.epsilon, self.accountant_delta, fixed,
                                  int(batch_size), float(epochs), plans)
        self._planned_rdp = fixed * self.order

    def share_noise(self, share: float) -> float:
        """Noise multiplier of a one-shot Gaussian release costing ``share`` of the Rényi
        budget at the fixed order (after the releases planned with :meth:`plan`).

        A Gaussian release of multiplier ``z`` has divergence ``alpha / (2 z^2)`` at order
        ``alpha``, so ``z = sqrt(alpha / (2 share B))``: shares add up exactly.
        """
        if not self.private:
            return 0.0
        if self.order is None:
            raise RuntimeError("plan() must fix the Rényi order first.")
        if not 0 < share <= 1:
            raise ValueError(f"share must lie in (0, 1], got {share!r}.")
        budget = self.rdp_budget() - self._planned_rdp
        return math.sqrt(self.order / (2 * share * budget))

    def dpsgd_noise_for(self, share: float, sample_rate: float, steps: int) -> float:
        """What :meth:`dpsgd_noise` would give DP-SGD with ``share`` of the planned budget
        (used by the schedule to size the model before any of it is spent)."""
        if not self.private:
            return 0.0
        budget = share * (self.rdp_budget() - self._planned_rdp)
        return _sgd_sigma(budget, self.order, sample_rate, steps)

    def record(self, release: Release) -> None:
        """Add a release; refuses one that would overdraw the budget at the fixed order."""
        if not self.private:
            return
        if self.order is None:
            raise RuntimeError("plan() must fix the Rényi order before the first release.")
        self.releases.append(release)
        if self.rdp_spent() > self.rdp_budget() * (1 + 1e-9):
            self.releases.pop()
            raise PrivacyBudgetError(
                f"Release {release.name!r} would exceed the budget epsilon={self.epsilon}.")

    def dpsgd_noise(self, sample_rate: float, steps: int) -> float:
        """Least noise multiplier for DP-SGD within what is left at the fixed order."""
        if not self.private:
            return 0.0
        left = self.rdp_budget() - self.rdp_spent()
        sigma = _sgd_sigma(left, self.order, sample_rate, steps)
        if not math.isfinite(sigma):
            raise PrivacyBudgetError(
                f"No noise multiplier up to {SIGMA_BOUNDS[1]:g} fits {steps} DP-SGD steps at "
                f"sampling rate {sample_rate:.3g} in what is left of epsilon={self.epsilon}: "
                "fewer epochs, a smaller batch_size or a larger epsilon.")
        return sigma

    # -------------------------------------------------------------- totals
    def rdp_budget(self) -> float:
        return _rdp_budget(self.epsilon, self.order, self.accountant_delta)

    def rdp_spent(self) -> float:
        """Sum of the releases' Rényi divergences at the fixed order (recomputed)."""
        return float(sum(r.rdp(self.order) for r in self.releases))

    def epsilon_spent(self) -> float:
        """Epsilon of everything recorded, recomputed from the releases."""
        if not self.private:
            return math.inf
        if not self.releases:
            return 0.0
        return rdp_to_epsilon(self.rdp_spent(), self.order, self.accountant_delta)

    def delta_spent(self, epsilon: float | None = None) -> float:
        """The accountant's delta plus the discovery term ``e^eps * selection_delta``."""
        if not self.private:
            return 0.0
        epsilon = self.epsilon_spent() if epsilon is None else epsilon
        return self.accountant_delta + math.exp(min(epsilon, MAX_EPSILON)) * self.selection_delta

    def close(self) -> None:
        """Fail closed: refuse a fit whose recomputed totals exceed the promise."""
        if not self.private:
            return
        eps = self.epsilon_spent()
        if eps > self.epsilon * (1 + 1e-9) or self.delta_spent(eps) > self.delta * (1 + 1e-9):
            raise PrivacyBudgetError(
                f"Spent ({eps}, {self.delta_spent(eps)}) exceeds the target "
                f"({self.epsilon}, {self.delta}).")

    # -------------------------------------------------------------- report
    def report(self) -> dict[str, Any]:
        """Totals and one entry per release, each with the epsilon it would cost alone."""
        out: dict[str, Any] = {
            "private": self.private,
            "unit": "one row (add/remove neighbouring datasets)",
            "accountant": "rdp",
            "target_epsilon": self.epsilon,
            "target_delta": self.delta,
            "epsilon_spent": self.epsilon_spent(),
            "delta_spent": self.delta_spent(),
            "delta": self.delta if self.private else 0.0,
            "mechanisms": [],
        }
        if not self.private:
            return out
        out.update(accountant_delta=self.accountant_delta,
                   selection_delta=self.selection_delta, rdp_order=self.order,
                   rdp_budget=self.rdp_budget(), rdp_spent=self.rdp_spent())
        for release in self.releases:
            entry = release.to_dict()
            entry["touches"] = entry.pop("reads")
            entry.update(entry.pop("details"))
            entry["rdp_at_order"] = release.rdp(self.order)
            entry["epsilon_alone"] = self._epsilon_alone(release)
            out["mechanisms"].append(entry)
        return out

    def _epsilon_alone(self, release: Release) -> float:
        """What ``release`` would cost on its own: exact for a one-shot Gaussian release (Balle
        and Wang, 2018), else its divergence at the fixed order, converted."""
        if release.sample_rate == 1.0 and release.steps == 1 and release.noise_multiplier > 0:
            return analytic_gaussian_epsilon(release.noise_multiplier, self.accountant_delta)
        return rdp_to_epsilon(release.rdp(self.order), self.order, self.accountant_delta)

    def state_dict(self) -> dict[str, Any]:
        """Plain containers only (loads with ``torch.load(weights_only=True)``)."""
        return {"epsilon": self.epsilon, "delta": self.delta,
                "selection_delta": self.selection_delta, "order": self.order,
                "releases": [r.to_dict() for r in self.releases]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrivacyLedger:
        ledger = cls(state["epsilon"], state["delta"],
                     selection_delta=state["selection_delta"])
        ledger.order = state["order"]
        ledger.releases = [Release(**r) for r in state["releases"]]
        return ledger

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """``(noise_multiplier, sample_rate, steps)`` of each release, Opacus' format."""
        return [(r.noise_multiplier, r.sample_rate, r.steps) for r in self.releases]
