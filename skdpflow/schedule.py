"""The training schedule: budget shares, batch, steps, learning rate and model size.

Every hyperparameter a user leaves at ``"auto"`` is set here from public facts only: the
noisy row count ``n_hat`` (released first, at :data:`COUNT_SHARE` of the budget), the
number of encoded dimensions, epsilon and delta. Explicit values override the rule.

Why these rules (see docs/design.md, "The schedule", for the measurements):

* **Budget shares follow the rows per unit of noise.** With ``N = n_hat * epsilon``, the
  noisy 1-way histograms and the noisy correlation matrix (the Gaussian copula the flow
  starts from) need a fixed *absolute* noise level to be useful, so their share of the
  budget shrinks as ``N`` grows: ``marginals = 0.1 sqrt(30000 / N)`` within [0.1, 0.6]
  (within [0.2, 0.6] with the discrete heads, whose samples reproduce the released masses
  of the categories: the release's noise is what their 1-way TVD keeps),
  ``copula = 0.05 sqrt(30000 / N)`` up to 0.3. With the dequantized flow the copula fades
  to 0 between ``N = 10,000`` and ``30,000`` (where DP-SGD learns the dependence itself);
  the discrete heads keep it on every table, as the start of their conditionals (a
  function of one column by another starts close to its cells). DP-SGD gets the rest.
* **DP-SGD only where it can learn.** The noise DP-SGD adds to one step's mean gradient has
  norm about ``sigma * C * sqrt(p) / B`` (``p`` parameters, expected batch ``B``, clipping
  norm ``C``), against a clipped gradient of norm at most ``C``. Adult (32,561 rows, epsilon
  1) trains well at a ratio ``sigma sqrt(p) / B`` of about 0.45; far above it, Adam's steps
  are a random walk that only blurs the released marginals and copula. So the model size is
  the largest one whose ratio stays within :data:`NOISE_RATIO`; when even the smallest model
  is far above it (:data:`MAX_NOISE_RATIO`), DP-SGD is skipped, its share goes to the
  releases, and the model is the DP Gaussian copula over the DP marginals (estimated
  the sharper way of :mod:`skdpflow.privacy.copula`, "The copula-only model").
* **Histogram bins follow the noise.** Each count of the 1-way histograms gets noise of the
  same std whatever the bins, so a numerical column gets no more equal bins than hold two
  noise stds of rows each (8 to 32), and an integer column one bin per value only up to
  twice that many values (at most 100): :func:`histogram_bins`.
* **Batch and steps.** Large expected batches and a few hundred steps (De et al., 2022;
  Ponomareva et al., 2023, "How to DP-fy ML", Sec. 5.4): in the high-noise regime the noise of
  the mean gradient, ``sigma / B``, falls as the batch grows while the subsampled Gaussian's
  ``sigma`` grows about linearly with ``q``; below 200 steps the optimiser has too few
  steps to converge. So ``B = min(1024, n_hat / 4)`` and ``steps = max(200, 6 n_hat / B)``
  (six epochs on large tables).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from .marginals import MAX_UNIT_BINS
from .privacy.accounting import PrivacyBudgetError

__all__ = ["AUTO", "COUNT_SHARE", "Schedule", "auto_schedule", "domain_share",
           "flow_parameter_count", "histogram_bins", "releases_shares"]

AUTO = "auto"
# Share of the Rényi budget spent on the row count, released before anything else.
COUNT_SHARE = 0.02
# Target and ceiling of sigma * sqrt(p) / B (noise norm over clipped-gradient norm per step).
NOISE_RATIO = 0.5
MAX_NOISE_RATIO = 3.0
# The smallest DP-SGD share worth keeping; below it the share goes to the releases.
MIN_TRAIN_SHARE = 0.1
# Model sizes tried, largest first: (hidden_size, n_bins).
MODEL_SIZES = ((64, 8), (32, 8), (16, 8), (16, 4), (8, 4))
MAX_BATCH = 1024
MIN_STEPS = 200
# The released histograms' bins (:func:`histogram_bins`): at most HISTOGRAM_BINS equal bins
# for a number (one per value for an integer column with at most MAX_UNIT_BINS values), and
# no more bins than hold BIN_NOISE_STDS standard deviations of the counts' noise each, on
# average, down to MIN_HISTOGRAM_BINS.
HISTOGRAM_BINS = 32
MIN_HISTOGRAM_BINS = 8
BIN_NOISE_STDS = 2.0
# Unit bins are kept up to this many times the equal bins' limit: an integer column's values
# often hold point masses (Adult's hours-per-week: 47% of the rows at 40) that equal bins
# would spread over their bin, and the projection onto the simplex zeroes the unit bins of
# little mass, so their noise costs less than their number says.
UNIT_BIN_FACTOR = 2.0
LARGE_TABLE_EPOCHS = 6.0
BASE_LEARNING_RATE = 1e-2
# The rows-times-epsilon at which the shares reach their large-table values.
REFERENCE_N = 30_000.0
# The least share of the 1-way histograms: the dequantized flow's, and the discrete heads'.
# With the heads the samples reproduce the released masses of the categories, so the
# release's noise is their 1-way TVD: at 0.2 (0.11 by 0.1 sqrt(30000 / N)) the categorical
# columns of default_credit_card (24,000 rows, epsilon 1, 3 seeds) went from 0.010-0.015
# to 0.006-0.009, at a cost of 0.005-0.010 in Adult's AUROC (docs/benchmarks.md, "The
# categories' floor and the histograms' share").
MIN_MARGINALS = 0.1
HEADS_MIN_MARGINALS = 0.2


@dataclass(frozen=True)
class Schedule:
    """What the fit does after the row count: shares of the budget left, and training."""

    marginals_share: float
    copula_share: float
    train_share: float
    batch_size: int
    steps: int
    learning_rate: float
    hidden_size: int
    n_bins: int
    histogram_bins: int
    noise_ratio: float | None = None  # sigma sqrt(p) / B projected for the chosen model
    # Integer columns with at most this many values get one histogram bin per value (model
    # files written before it was in the schedule used MAX_UNIT_BINS).
    unit_bins: int = MAX_UNIT_BINS

    @property
    def copula_only(self) -> bool:
        """DP-SGD skipped: the model is the DP copula over the DP marginals."""
        return self.steps == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def flow_parameter_count(n_dims: int, hidden_size: int, n_bins: int,
                         stage_features: int = 8) -> int:
    """Parameters of :class:`~skdpflow.flows.model.SharedConditionerFlow` (two hidden layers)."""
    d, h = n_dims, hidden_size
    return (2 * d + stage_features + 1) * h + (h + 1) * h + (h + 1) * d * (3 * n_bins - 1)


def histogram_bins(n_hat: float, count_std: float) -> tuple[int, int]:
    """Bins of a numerical column's released histogram, and the most values an integer column
    may have to get one bin per value, from the noisy row count and the noise std of each
    released count (both public).

    A histogram's noise does not shrink with its bins: each of ``k`` bins gets noise of std
    ``count_std`` while holding ``n_hat / k`` rows on average, so the released marginal's
    error grows about as ``k count_std / n_hat`` and its bins' coarseness falls as ``1 / k``.
    The rule keeps the bins at ``n_hat / (BIN_NOISE_STDS count_std)`` at most, within
    ``[MIN_HISTOGRAM_BINS, HISTOGRAM_BINS]`` for equal bins; unit bins up to
    :data:`UNIT_BIN_FACTOR` times that (at most ``MAX_UNIT_BINS``). Exact counts
    (``count_std`` 0) keep the most.
    """
    if count_std <= 0:
        return HISTOGRAM_BINS, MAX_UNIT_BINS
    held = n_hat / (BIN_NOISE_STDS * count_std)
    bins = int(min(max(held, MIN_HISTOGRAM_BINS), HISTOGRAM_BINS))
    return bins, int(min(max(UNIT_BIN_FACTOR * held, bins), MAX_UNIT_BINS))


def _noise_scale(n_hat: float, epsilon: float) -> float:
    """``sqrt(30000 / N)`` with ``N = n_hat * epsilon``: how much a release share must grow."""
    return math.sqrt(REFERENCE_N / max(n_hat * epsilon, 1.0))


def releases_shares(n_hat: float, epsilon: float, n_dims: int, *, heads: bool = False
                    ) -> tuple[float, float]:
    """Shares of the budget left for the 1-way histograms and the copula.

    ``heads=True`` (the discrete heads' schedule) keeps the copula on large tables (its share
    still shrinks as ``sqrt(30000 / N)``): the heads start from its conditionals, and on
    Adult it took ``education-num`` = f(``education``) from 87% to 93% of the samples. And
    the histograms get at least :data:`HEADS_MIN_MARGINALS`: the heads' samples reproduce
    the released masses of the categories, so the release's noise is what their 1-way
    TVD keeps."""
    if not math.isfinite(epsilon):
        return 0.1, (0.05 if n_dims >= 2 else 0.0)
    scale = _noise_scale(n_hat, epsilon)
    least = HEADS_MIN_MARGINALS if heads else MIN_MARGINALS
    marginals = min(max(0.1 * scale, least), 0.6)
    # The copula is the model where DP-SGD cannot learn; where it can (N >= 30,000), the
    # flow learns the dependence itself and a correlated start cost Adult AUROC (0.845 with
    # it, 0.853 without, 3 seeds), so its share fades out between N = 10,000 and 30,000.
    fade = min(max((REFERENCE_N - n_hat * epsilon) / (REFERENCE_N - 10_000.0), 0.0), 1.0)
    if heads:
        fade = 1.0
    copula = min(0.05 * scale, 0.3) * fade if n_dims >= 2 else 0.0
    return marginals, copula


def domain_share(n_hat: float, epsilon: float) -> float:
    """Share of the budget for estimating undeclared domains: ``0.2 sqrt(30000 / N)`` within
    [0.2, 0.6]. Category discovery releases a value only when its noisy count clears a
    threshold of several noise standard deviations, so on small tables it needs a larger
    share to find the common values (bank_marketing, 3,000 rows, epsilon 1, no domain:
    quality 0.684 at 0.2, 0.787 at 0.5)."""
    if not math.isfinite(epsilon):
        return 0.2
    scale = _noise_scale(n_hat, epsilon)
    return min(max(0.2 * scale, 0.2), 0.6)


def batch_and_steps(n_hat: float) -> tuple[int, int]:
    """Expected batch size and number of steps for ``n_hat`` rows."""
    batch = int(min(MAX_BATCH, max(1.0, n_hat / 4)))
    steps = max(MIN_STEPS, int(round(LARGE_TABLE_EPOCHS * n_hat / batch)))
    return batch, steps


def auto_schedule(n_hat: float, n_dims: int, epsilon: float, sigma_for: Any,
                  overrides: dict[str, Any] | None = None, *, size_model: bool = True,
                  heads: bool = False, count_noise_for: Any = None) -> Schedule:
    """The schedule for a table of about ``n_hat`` rows and ``n_dims`` encoded dimensions.

    Parameters
    ----------
    n_hat : float
        The noisy row count (already released).
    n_dims : int
        Encoded dimensions (public: they follow from the domain).
    epsilon : float
        The target (``inf``: no privacy; the large-table schedule, no skipping).
    sigma_for : callable ``(train_share, sample_rate, steps) -> sigma``
        DP-SGD's noise multiplier for that share of the budget left (the ledger's).
    overrides : dict
        Explicit user values (``batch_size``, ``epochs``, ``learning_rate``,
        ``hidden_size``, ``n_bins``, ``marginals_fraction``, ``copula_fraction``,
        ``histogram_bins``); ``"auto"`` entries are ignored.
    size_model : bool, default=True
        False skips the model-size choice (and ``sigma_for``): the plan's shares, batch and
        steps only, as the ledger needs them before anything is released.
    heads : bool, default=False
        The discrete heads' shares (:func:`releases_shares`): the copula kept on large
        tables, the histograms at least :data:`HEADS_MIN_MARGINALS`.
    count_noise_for : callable ``(marginals_share) -> std`` or None
        The noise std of each count of the 1-way histograms released with that share of the
        budget left (the ledger's); the histograms' bins follow it (:func:`histogram_bins`).
        None: :data:`HISTOGRAM_BINS` and :data:`MAX_UNIT_BINS`.
    """
    given = {k: v for k, v in (overrides or {}).items() if v != AUTO}
    marginals, copula = releases_shares(n_hat, epsilon, n_dims, heads=heads)
    marginals = given.get("marginals_fraction", marginals)
    copula = given.get("copula_fraction", copula) if n_dims >= 2 else 0.0
    batch, steps = batch_and_steps(n_hat)
    batch = int(given.get("batch_size", batch))
    rate = min(1.0, batch / max(n_hat, 1.0))
    if "epochs" in given:
        steps = max(1, int(round(given["epochs"] / rate)))
    train = 1.0 - marginals - copula
    if train < MIN_TRAIN_SHARE and "copula_fraction" not in given:
        copula = max(0.0, 1.0 - marginals - MIN_TRAIN_SHARE)  # explicit shares come first
        train = 1.0 - marginals - copula
    if train <= 0:
        raise PrivacyBudgetError(
            f"marginals_fraction ({marginals}) and copula_fraction ({copula}) leave no share of "
            "the budget for training.")
    sizes = [(given.get("hidden_size", h), given.get("n_bins", k)) for h, k in MODEL_SIZES]
    sizes = list(dict.fromkeys(sizes))
    if not math.isfinite(epsilon) or n_dims == 0 or not size_model:
        hidden, bins = sizes[0]
        return _with_bins(Schedule(marginals, copula, train, batch, steps,
                                   given.get("learning_rate", BASE_LEARNING_RATE), hidden,
                                   bins, HISTOGRAM_BINS), n_hat, given, count_noise_for)
    sigma = sigma_for(train, rate, steps) if train > 0 else math.inf
    expected = rate * n_hat
    ratios = [sigma * math.sqrt(flow_parameter_count(n_dims, h, k)) / expected
              for h, k in sizes]
    pick = next((i for i, r in enumerate(ratios) if r <= NOISE_RATIO), len(sizes) - 1)
    hidden, bins = sizes[pick]
    ratio = ratios[pick]
    explicit_training = any(k in given for k in ("batch_size", "epochs", "hidden_size",
                                                 "n_bins", "learning_rate"))
    if ratio > MAX_NOISE_RATIO and not explicit_training and train > 0:
        # DP-SGD cannot learn here: the releases get its share (scaled up together).
        total = marginals + copula
        marginals, copula = marginals / total, copula / total
        return _with_bins(Schedule(marginals, copula, 0.0, batch, 0, 0.0, hidden, bins,
                                   HISTOGRAM_BINS, ratio), n_hat, given, count_noise_for)
    learning_rate = given.get("learning_rate",
                              BASE_LEARNING_RATE * min(1.0, NOISE_RATIO / ratio))
    return _with_bins(Schedule(marginals, copula, train, batch, steps, learning_rate, hidden,
                               bins, HISTOGRAM_BINS, ratio), n_hat, given, count_noise_for)


def _with_bins(plan: Schedule, n_hat: float, given: dict[str, Any],
               count_noise_for: Any) -> Schedule:
    """``plan`` with the histograms' bins for its final marginals share (an explicit
    ``histogram_bins`` kept; integer columns with at most that many values always get
    one bin per value)."""
    bins, unit = HISTOGRAM_BINS, MAX_UNIT_BINS
    if count_noise_for is not None and plan.marginals_share > 0:
        bins, unit = histogram_bins(n_hat, count_noise_for(plan.marginals_share))
    if "histogram_bins" in given:
        bins = int(given["histogram_bins"])
        unit = max(unit, bins)
    return replace(plan, histogram_bins=bins, unit_bins=unit)
