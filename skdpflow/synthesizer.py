"""``DPFlowSynthesizer``: the scikit-learn facade."""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state

from ._validation import (
    RANDOM_STATE,
    Interval,
    InvalidDataError,
    NotFittedError,
    Options,
    validate_params,
)
from .domain import DataDerivedDomainWarning, Domain, as_domain, column_kind
from .encoding import TableEncoder, TypeLayer, cell_log_volume, typed_column
from .flows.model import SharedConditionerFlow
from .marginals import bin_index, histogram_spec, release_marginals
from .privacy.accounting import (
    PrivacyBudgetError,
    analytic_gaussian_noise_multiplier,
    epsilon_spent,
    noise_multiplier,
)
from .privacy.domain_estimation import (
    SELECTION_DELTA_SHARE,
    DomainEstimateWarning,
    estimate_domain,
)
from .training import TrainConfig, midpoint_latent, standard_normal_logpdf, train_flow

__all__ = ["DPFlowSynthesizer"]

FORMAT_VERSION = 3
SAMPLE_CHUNK = 65_536


class DPFlowSynthesizer(DensityMixin, BaseEstimator):
    """Differentially private synthetic tables from a conditional spline flow.

    The table is encoded column by column (RDT transformers set up from a public domain,
    shaped by one differentially private release of all 1-way histograms), then a
    conditional rational-quadratic spline coupling flow, whose one transformation network
    is shared by all stages, is trained on it with DP-SGD (Poisson sampling, per-row
    gradient clipping, Gaussian noise). The whole fit is ``(epsilon, delta)``
    differentially private with respect to adding or removing one row: whatever of the
    domain (bounds, categories) is not declared public is estimated under DP with a share
    of epsilon, and even the row count reaches the model only through noisy counts.

    Parameters
    ----------
    epsilon : float, default=1.0
        Privacy budget of the whole fit. ``float('inf')`` trains without clipping or noise
        and releases exact marginals: no privacy at all.
    delta : float, default=1e-5
        Probability with which the epsilon bound may fail. Must be below ``1 / n_rows``.
    epochs : float, default=6
        Expected passes over the data; the number of steps is ``round(epochs / q)`` with
        ``q = batch_size / n_rows``.
    batch_size : int, default=1024
        Expected size of a Poisson batch (each row is drawn independently with probability
        ``q``).
    learning_rate : float, default=1e-2
        Adam learning rate at the start; cosine decay to a tenth of it.
    max_grad_norm : float, default=1.0
        Per-row gradient clipping bound ``C``.
    clipping : {"flat", "per_unit"}, default="flat"
        ``"flat"`` clips each row's whole gradient to ``C``. ``"per_unit"`` clips each
        output unit of each linear layer (a weight row and its bias entry) to
        ``C_u = C sqrt(n_u / N)`` (``n_u`` parameters in the unit, ``N`` in the flow), so
        ``sum C_u^2 = C^2``: same sensitivity, same noise, same epsilon.
    sparsity : float, default=0.0
        Share of output units (and their coordinates) dropped from each DP-SGD step by a
        random mask drawn from the seeded generator, never from the data; noise goes on
        kept coordinates only. The mask is public randomness, so no epsilon is spent on it.
    n_stages : int, default=6
        Coupling stages of the flow. They share one conditioner network, so the number
        of parameters does not grow with it.
    hidden_size : int, default=64
        Width of the conditioner's two hidden layers.
    n_bins : int, default=8
        Bins of each rational-quadratic spline.
    marginals_fraction : float, default=0.1
        Share of epsilon for the histogram release that shapes the encoding: its Gaussian
        noise is calibrated so that the release alone is ``(marginals_fraction * epsilon,
        delta)``-DP; training gets the rest, composed in the same accountant.
    domain_epsilon_fraction : float, default=0.2
        Share of epsilon for estimating the domain of the columns that ``domain`` does not
        declare (noisy bucket counts for bounds, thresholded noisy value counts for
        categories; one Gaussian release, see :mod:`skdpflow.privacy.domain_estimation`).
        Not spent when everything is declared. Category discovery also reserves 10% of
        ``delta``.
    privacy : {"strict", "domain_from_data"}, default="strict"
        ``"strict"`` makes every part of the fit covered by the guarantee: undeclared
        domains are estimated under DP, nothing is read from the data otherwise.
        ``"domain_from_data"`` is the opt-out: undeclared bounds, categories and
        missingness are read exactly from the data (as most synthesizers do), which the
        guarantee does not cover; a ``DataDerivedDomainWarning`` and ``privacy_report()``
        say so.
    histogram_bins : int, default=32
        Bins of the released histogram of a numerical column (integer columns with at most
        100 values get one bin per value).
    accountant : {"rdp", "prv"}, default="rdp"
        Opacus accountant that turns the budget into noise and back.
    device : {"auto", "cpu", "cuda"}, default="auto"
    random_state : int, RandomState instance or None, default=None
        Seeds noise, batches, initialisation and sampling; an int makes ``fit`` and
        ``sample`` reproducible on CPU. The seed fixes the privacy noise too: anyone who
        knows it and the data can remove the noise, so keep a seed used on real data
        secret (or leave None).
    verbose : bool, default=True
        Show a progress bar with the loss and the epsilon spent so far. The loss is
        computed on private rows without noise: it is for the data holder's console and
        is not stored on the model.

    Attributes
    ----------
    domain_ : Domain
        The domain used: declared, estimated under DP, or (opt-out) read from the data;
        ``domain_.estimated`` and ``domain_.data_derived`` name the columns of the last two.
    epsilon_ : float
        Epsilon spent, recomputed from ``history_`` by the accountant.
    delta_ : float
    noise_multiplier_ : float
        DP-SGD noise standard deviation divided by ``max_grad_norm``.
    sample_rate_ : float
        Poisson sampling rate ``q``.
    steps_ : int
    accountant_ : str
    history_ : list of (noise_multiplier, sample_rate, steps)
        Every RDP-accounted mechanism run on the private rows, in order.
    releases_ : list of dict
        What each entry of ``history_`` released and touched.
    selection_delta_ : float
        Probability that category discovery releases a value held by one row (added to
        the accountant's delta as ``exp(epsilon_) * selection_delta_``; 0 if no discovery).
    accountant_delta_ : float
        The delta at which the accountant composes ``history_`` (``delta`` minus the
        discovery term).
    n_rows_estimate_ : float
        The row count as estimated from the noisy histograms (the exact count never
        reaches the model).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
    flow_ : SharedConditionerFlow
    """

    _parameter_constraints: dict = {
        "epsilon": Interval(Real, 0, None, closed="neither", allow_inf=True),
        "delta": Interval(Real, 0, 1, closed="neither"),
        "epochs": Interval(Real, 0, None, closed="neither"),
        "batch_size": Interval(Integral, 1, None),
        "learning_rate": Interval(Real, 0, None, closed="neither"),
        "max_grad_norm": Interval(Real, 0, None, closed="neither"),
        "clipping": Options(frozenset({"flat", "per_unit"})),
        "sparsity": Interval(Real, 0, 1, closed="left"),
        "n_stages": Interval(Integral, 1, None),
        "hidden_size": Interval(Integral, 1, None),
        "n_bins": Interval(Integral, 2, None),
        "marginals_fraction": Interval(Real, 0, 1, closed="neither"),
        "histogram_bins": Interval(Integral, 2, None),
        "domain_epsilon_fraction": Interval(Real, 0, 1, closed="neither"),
        "privacy": Options(frozenset({"strict", "domain_from_data"})),
        "accountant": Options(frozenset({"rdp", "prv"})),
        "device": Options(frozenset({"auto", "cpu", "cuda"})),
        "random_state": RANDOM_STATE,
        "verbose": Options(frozenset({True, False, "loss"})),
    }

    def __init__(
        self,
        *,
        epsilon: float = 1.0,
        delta: float = 1e-5,
        epochs: float = 6,
        batch_size: int = 1024,
        learning_rate: float = 1e-2,
        max_grad_norm: float = 1.0,
        clipping: str = "flat",
        sparsity: float = 0.0,
        n_stages: int = 6,
        hidden_size: int = 64,
        n_bins: int = 8,
        marginals_fraction: float = 0.1,
        histogram_bins: int = 32,
        domain_epsilon_fraction: float = 0.2,
        privacy: str = "strict",
        accountant: str = "rdp",
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
        verbose: bool = True,
    ) -> None:
        self.epsilon = epsilon
        self.delta = delta
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_grad_norm = max_grad_norm
        self.clipping = clipping
        self.sparsity = sparsity
        self.n_stages = n_stages
        self.hidden_size = hidden_size
        self.n_bins = n_bins
        self.marginals_fraction = marginals_fraction
        self.histogram_bins = histogram_bins
        self.domain_epsilon_fraction = domain_epsilon_fraction
        self.privacy = privacy
        self.accountant = accountant
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None, *, domain: Domain | dict | str | None = None
            ) -> DPFlowSynthesizer:
        """Learn a differentially private model of the table ``X``.

        Parameters
        ----------
        X : pandas DataFrame (or 2-D array, read as numerical columns ``x0, x1, ...``)
            The private table, one row per individual. It is not modified.
        y : ignored
        domain : Domain, dict, path to a JSON/YAML file, SDV Metadata, or None
            Public facts per column (bounds, integer-ness, categories, nullability, an
            ``other`` category). Columns it leaves out are estimated under DP with
            ``domain_epsilon_fraction`` of epsilon (or, with
            ``privacy="domain_from_data"``, read from the data, outside the guarantee).

        Returns
        -------
        self
        """
        validate_params(type(self).__name__, self.get_params(), self._parameter_constraints)
        data = _check_frame(X)
        n = len(data)
        private = math.isfinite(self.epsilon)
        if private and self.delta >= 1.0 / n:
            raise ValueError(
                f"The 'delta' parameter ({self.delta}) must be below 1 / n_rows = {1 / n:.3g}: "
                "a larger delta allows releasing a whole row.")
        if private and self.domain_epsilon_fraction + self.marginals_fraction >= 1.0:
            raise PrivacyBudgetError(
                "domain_epsilon_fraction + marginals_fraction must leave a share of epsilon "
                f"for training; got {self.domain_epsilon_fraction} + {self.marginals_fraction}.")
        rng = check_random_state(self.random_state)
        seeds = rng.randint(0, 2**31 - 1, size=5)
        device = _resolve_device(self.device)

        # 1. The domain: declared, else estimated under DP (or read, if the user opts out).
        declared = as_domain(domain) if domain is not None else Domain()
        extra = [c for c in declared.columns if c not in data.columns]
        if extra:
            raise ValueError(f"The domain declares columns that are not in the data: {extra}.")
        undeclared = [c for c in data.columns if c not in declared.columns]
        empty = [c for c in undeclared if data[c].isna().all()]
        if empty:  # an input error for the data holder; nothing is released
            raise InvalidDataError([
                f"column {c!r} is entirely missing: declare its domain (with nullable=True) "
                "or drop it" for c in empty])
        discovers = private and self.privacy == "strict" and any(
            column_kind(data[c]) == "categorical" for c in undeclared)
        self.selection_delta_ = (SELECTION_DELTA_SHARE * self.delta * math.exp(-self.epsilon)
                                 if discovers else 0.0)
        # The discovery term enters delta as e^eps * selection_delta (module docs).
        delta_rdp = self.delta - (math.exp(self.epsilon) * self.selection_delta_
                                  if discovers else 0.0)
        history, releases = [], []
        estimated: dict = {}
        derived: list = []
        if undeclared and self.privacy == "domain_from_data":
            derived = undeclared
            estimated = Domain.from_data(data, undeclared).columns
            warnings.warn(
                f"privacy='domain_from_data': the bounds, categories and missingness of "
                f"{len(undeclared)} undeclared column(s) {undeclared[:5]}"
                f"{'...' if len(undeclared) > 5 else ''} are read from the data, and the "
                "differential-privacy guarantee does not cover them.",
                DataDerivedDomainWarning, stacklevel=2)
        elif undeclared:
            z_d = analytic_gaussian_noise_multiplier(
                self.domain_epsilon_fraction * self.epsilon, delta_rdp) if private else 0.0
            est = estimate_domain(data, undeclared, z_d, self.selection_delta_,
                                  np.random.default_rng(seeds[4]))
            estimated = est.columns
            if private and est.unreliable:
                warnings.warn(
                    f"The DP estimate of the bounds of {est.unreliable} is dominated by noise "
                    "(no bucket's noisy count cleared the threshold: too few rows for this "
                    "budget); declare their domain, or raise epsilon or "
                    "domain_epsilon_fraction.", DomainEstimateWarning, stacklevel=2)
            if est.touches_data and private:
                history.append((z_d, 1.0, 1))
                releases.append({
                    "name": "domain estimation (Gaussian mechanism, thresholded)",
                    "touches": f"bucket counts of {len(undeclared)} undeclared column(s) "
                               "(bounds) and value counts (categories)",
                    "columns": list(est.read),
                    "l2_sensitivity": est.l2_sensitivity,
                    "selection_delta": est.selection_delta,
                    "budget_share": self.domain_epsilon_fraction})
        self.domain_ = Domain(
            {c: declared.columns[c] if c in declared.columns else estimated[c]
             for c in data.columns},
            data_derived=tuple(derived),
            estimated=tuple(c for c in undeclared if c not in derived))
        self.type_layer_ = TypeLayer(self.domain_)  # dtypes from the domain, not the rows
        typed = self.type_layer_.transform(data)

        # 2. One noisy release of every 1-way histogram; it also estimates the row count.
        hist_z = analytic_gaussian_noise_multiplier(
            self.marginals_fraction * self.epsilon, delta_rdp) if private else 0.0
        self.marginals_, self.marginals_info_ = self._release(typed, hist_z, seeds[0])
        if private:
            history.append((hist_z, 1.0, 1))
            releases.append({
                "name": "1-way histograms (Gaussian mechanism)",
                "touches": f"counts of {self.marginals_info_['histograms']} columns, "
                           f"{self.marginals_info_['bins']} bins",
                "l2_sensitivity": self.marginals_info_["l2_sensitivity"],
                "budget_share": self.marginals_fraction})
        self.encoder_ = TableEncoder(self.domain_, self.marginals_)
        lo, hi, _ = self.encoder_.cells(typed)
        del typed

        # 3. DP-SGD. Its sampling rate and length come from the noisy row count only.
        n_hat = self.marginals_info_["n_rows_estimate"]
        sample_rate = min(1.0, self.batch_size / n_hat)
        steps = max(1, int(round(self.epochs / sample_rate)))
        sigma = noise_multiplier(self.epsilon, delta_rdp, sample_rate, steps, self.accountant,
                                 prior=history) if private else 0.0
        torch_gen = torch.Generator().manual_seed(int(seeds[1]))
        self.flow_ = None
        if self.encoder_.n_dims:
            self.flow_ = self._build_flow(int(seeds[2])).to(device)
            config = TrainConfig(steps, sample_rate, sigma, self.max_grad_norm,
                                 self.learning_rate, private, delta_rdp, self.accountant,
                                 list(history), self.verbose, clipping=self.clipping,
                                 sparsity=self.sparsity,
                                 expected_batch_size=sample_rate * n_hat)
            # The loss curve is a statistic of the private rows with no noise: it is shown
            # on the progress bar only and never kept on the model.
            train_flow(self.flow_, lo, hi, config, torch_gen, device)
            self.flow_ = self.flow_.cpu().eval()
            self.flow_.requires_grad_(False)
        if private:
            history.append((sigma, sample_rate, steps))
            releases.append({
                "name": "DP-SGD (Poisson-subsampled Gaussian)",
                "touches": "per-row gradients of the flow, clipped to max_grad_norm",
                "max_grad_norm": self.max_grad_norm, "clipping": self.clipping,
                "sparsity": self.sparsity,
                "budget_share": 1.0 - sum(r["budget_share"] for r in releases)})

        self.history_ = history
        self.releases_ = releases
        self.epsilon_ = epsilon_spent(history, delta_rdp, self.accountant) \
            if private else math.inf
        self.delta_ = self.delta if private else 0.0
        self.accountant_delta_ = delta_rdp if private else 0.0
        self.noise_multiplier_ = sigma
        self.marginals_noise_multiplier_ = hist_z
        self.sample_rate_ = sample_rate
        self.steps_ = steps
        self.accountant_ = self.accountant
        self.n_rows_estimate_ = n_hat
        self.n_features_in_ = data.shape[1]
        self.feature_names_in_ = np.asarray(data.columns, dtype=object)
        if private and (self.epsilon_ > self.epsilon * (1 + 1e-9)
                        or self._delta_spent(self.epsilon_) > self.delta * (1 + 1e-9)):
            raise PrivacyBudgetError(  # fail closed: never report more than was promised
                f"Spent ({self.epsilon_}, {self._delta_spent(self.epsilon_)}) exceeds the target "
                f"({self.epsilon}, {self.delta}).")
        return self

    def _delta_spent(self, epsilon: float) -> float:
        """Accountant's delta plus the category-discovery term ``e^eps * selection_delta``."""
        return self.accountant_delta_ + math.exp(epsilon) * self.selection_delta_

    def _release(self, typed: pd.DataFrame, hist_z: float, seed: int) -> tuple[list, dict]:
        specs = [histogram_spec(name, self.domain_[name], self.histogram_bins)
                 for name in self.domain_.columns]
        indices = []
        for spec in specs:
            col = self.domain_[spec.name]
            values, is_null = typed_column(typed, spec.name, col)
            indices.append(bin_index(spec, values, is_null, col))
        return release_marginals(specs, indices, hist_z, np.random.default_rng(seed))

    def _build_flow(self, seed: int) -> SharedConditionerFlow:
        torch.manual_seed(seed)  # initial weights; the flow draws its masks from `seed`
        return SharedConditionerFlow(
            self.encoder_.n_dims, n_stages=self.n_stages, hidden_size=self.hidden_size,
            n_bins=self.n_bins, seed=seed).float()

    # --------------------------------------------------------------- sample
    def sample(self, n_samples: int = 1, random_state: Any = None) -> pd.DataFrame:
        """Draw ``n_samples`` synthetic rows: the fitted columns, in dtypes from the domain.

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None
            Defaults to the estimator's ``random_state``; an int gives the same rows on
            every call.

        Returns
        -------
        DataFrame
        """
        self._check_fitted()
        if isinstance(n_samples, bool) or not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}.")
        rs = self.random_state if random_state is None else random_state
        seed = int(check_random_state(rs).randint(0, 2**31 - 1))
        generator = torch.Generator().manual_seed(seed)
        parts = []
        for start in range(0, n_samples, SAMPLE_CHUNK):
            size = min(SAMPLE_CHUNK, n_samples - start)
            if self.flow_ is None:
                z = np.zeros((size, 0))
            else:
                with torch.no_grad():
                    z = self.flow_.sample(size, generator=generator).double().numpy()
            parts.append(self.type_layer_.reverse(self.encoder_.decode(z)))
        out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        return out[list(self.feature_names_in_)]

    # ---------------------------------------------------------------- score
    def score_samples(self, X: Any) -> np.ndarray:
        """Log-density of each row under the model.

        Continuous columns contribute their exact density (through the flow and the
        encoding's Jacobian); categories, integers and missing values contribute the
        probability of their cell, with the flow density read at the cell's midpoint.
        Values outside the declared domain are clipped to it first.
        """
        self._check_fitted()
        data = _check_frame(X, min_rows=1)
        missing = [c for c in self.feature_names_in_ if c not in data.columns]
        if missing or data.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {data.shape[1]} features, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features as input (missing: "
                             f"{missing}).")
        typed = self.type_layer_.transform(data[list(self.feature_names_in_)])
        lo, hi, logjac = self.encoder_.cells(typed)
        z = midpoint_latent(lo, hi)
        if self.flow_ is None:
            log_flow = np.zeros(len(z))
        else:
            with torch.no_grad():
                log_flow = self.flow_.log_prob(torch.as_tensor(z, dtype=torch.float32)
                                               ).double().numpy()
        return log_flow - standard_normal_logpdf(z).sum(1) + cell_log_volume(lo, hi) + logjac

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-density of the rows of ``X`` (higher is better).

        Selecting hyperparameters with it (``GridSearchCV``) on private data spends
        privacy beyond ``epsilon``: tune on public or synthetic data.
        """
        return float(np.mean(self.score_samples(X)))

    # --------------------------------------------------------------- report
    def privacy_report(self) -> dict:
        """What was spent, on what, by which accountant; the totals are recomputed.

        Returns a dict: ``epsilon_spent`` is recomputed here by the accountant from the
        recorded ``(noise_multiplier, sample_rate, steps)`` of every mechanism (not copied
        from the target); ``delta_spent`` adds the category-discovery term. ``mechanisms``
        lists each release with what it touched, its parameters, its nominal share of the
        budget and the epsilon it would cost alone. ``domain`` says, per column, whether its
        domain was declared public, estimated under DP, or read from the data (not covered).
        """
        self._check_fitted()
        private = math.isfinite(self.epsilon)
        derived = list(self.domain_.data_derived)
        estimated = list(self.domain_.estimated)
        report = {
            "private": private,
            "unit": "one row (add/remove neighbouring datasets)",
            "accountant": self.accountant_,
            "target_epsilon": self.epsilon,
            "target_delta": self.delta,
            "epsilon_spent": math.inf,
            "delta_spent": self.delta_,
            "delta": self.delta_,
            "mechanisms": [],
            "domain": {
                "declared_public": [c for c in self.feature_names_in_
                                    if c not in derived and c not in estimated],
                "estimated_with_dp": estimated,
                "read_from_data_not_private": derived,
            },
            "row_count": "never released exactly; estimated from the noisy histograms "
                         f"({self.n_rows_estimate_:.1f})",
            "guarantee_covers_everything": private and not derived,
        }
        if private:
            delta_rdp = self.accountant_delta_
            report["epsilon_spent"] = epsilon_spent(self.history_, delta_rdp, self.accountant_)
            report["delta_spent"] = self._delta_spent(report["epsilon_spent"])
            report["accountant_delta"] = delta_rdp
            report["selection_delta"] = self.selection_delta_
            for entry, release in zip(self.history_, self.releases_):
                z, q, steps = entry
                mechanism = dict(release, noise_multiplier=z, sample_rate=q, steps=steps)
                mechanism["epsilon_alone"] = epsilon_spent([entry], delta_rdp,
                                                           self.accountant_)
                report["mechanisms"].append(mechanism)
        return report

    # ------------------------------------------------------------ save/load
    def save(self, path: str | Path) -> None:
        """Write the fitted model: parameters, public domain, released marginals, weights.

        The file holds no training row, no per-row gradient and no raw statistic: only
        the declared (or data-derived, as reported) domain, the noisy marginals and the
        flow's weights. It loads without executing code (``torch.load(weights_only=True)``).
        """
        self._check_fitted()
        torch.save(_state(self), str(path))

    @classmethod
    def load(cls, path: str | Path) -> DPFlowSynthesizer:
        """Read a model written by :meth:`save`."""
        return _from_state(cls, torch.load(str(path), weights_only=True))

    # -------------------------------------------------------------- helpers
    def _check_fitted(self) -> None:
        if not hasattr(self, "encoder_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' first.")

    def __sklearn_tags__(self):  # noqa: ANN204
        tags = super().__sklearn_tags__()
        # Seeded CPU fits are reproducible; CUDA kernels may reduce in any order.
        tags.non_deterministic = self.device == "cuda" or (
            self.device == "auto" and torch.cuda.is_available())
        tags.input_tags.allow_nan = True
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        return tags


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available.")
    return torch.device(device)


def _check_frame(X: Any, min_rows: int = 2) -> pd.DataFrame:
    """Validate the input table and return it (never a modified caller object)."""
    try:
        import scipy.sparse as sp

        if sp.issparse(X):
            raise TypeError("Sparse data is not supported: pass a dense DataFrame.")
    except ImportError:  # pragma: no cover
        pass
    if isinstance(X, pd.DataFrame):
        data = X
    elif isinstance(X, np.ndarray) or isinstance(X, list):
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise ValueError(f"Expected 2D array, got {arr.ndim}D array instead. Reshape your "
                             "data or pass a DataFrame.")
        if np.iscomplexobj(arr):
            raise ValueError("Complex data not supported.")
        data = pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])
    else:
        raise TypeError(f"X must be a pandas DataFrame, got {type(X).__name__}.")
    problems = []
    if data.shape[1] == 0:
        raise ValueError(f"0 feature(s) (shape={data.shape}) while a minimum of 1 is required.")
    if len(data) < min_rows:
        raise ValueError(f"Found array with {len(data)} sample(s) (shape={data.shape}) while a "
                         f"minimum of {min_rows} is required.")
    names = list(data.columns)
    if not all(isinstance(c, str) for c in names):
        raise TypeError("Column names must all be strings; got "
                        f"{[c for c in names if not isinstance(c, str)][:5]}.")
    if len(set(names)) != len(names):
        problems.append("duplicate column names")
    for name in names:
        series = data[name]
        try:
            kind = column_kind(series)
        except TypeError as exc:
            problems.append(f"column {name!r}: {exc}")
            continue
        if pd.api.types.is_complex_dtype(series.dtype):
            problems.append(f"column {name!r}: complex numbers are not supported")
        if kind == "categorical" and series.dtype == object:
            bad = series.dropna().map(lambda v: not isinstance(
                v, (str, bool, int, float, np.generic, pd.Timestamp))).any()
            if bad:
                problems.append(f"column {name!r}: holds unsupported values (lists, dicts or "
                                "other objects); use strings, numbers, booleans or datetimes")
        if kind == "numerical" and series.notna().any() and not np.isfinite(
                series.dropna().to_numpy(dtype=float)).all():
            problems.append(f"column {name!r}: holds infinite values")
    if problems:
        raise InvalidDataError(problems)
    return data


def _state(est: DPFlowSynthesizer) -> dict:
    """Plain containers and tensors only: loads with ``weights_only=True``."""
    params = {k: v for k, v in est.get_params().items() if k != "random_state"}
    rs = est.random_state if isinstance(est.random_state, (int, type(None))) else None
    return {
        "format": FORMAT_VERSION,
        "params": params | {"random_state": rs},
        "domain": est.domain_.to_dict(),
        "data_derived": list(est.domain_.data_derived),
        "estimated": list(est.domain_.estimated),
        "marginals": [torch.as_tensor(codec_probs) for codec_probs in
                      _marginal_probs(est)],
        "marginals_info": dict(est.marginals_info_),
        "flow": None if est.flow_ is None else {
            "config": dict(est.flow_.config), "state": est.flow_.state_dict()},
        "fitted": {
            "history": [list(h) for h in est.history_],
            "releases_": [dict(r) for r in est.releases_],
            "selection_delta_": est.selection_delta_,
            "accountant_delta_": est.accountant_delta_,
            "epsilon_": est.epsilon_, "delta_": est.delta_,
            "noise_multiplier_": est.noise_multiplier_,
            "marginals_noise_multiplier_": est.marginals_noise_multiplier_,
            "sample_rate_": est.sample_rate_, "steps_": est.steps_,
            "accountant_": est.accountant_, "n_rows_estimate_": est.n_rows_estimate_,
            "feature_names_in_": list(est.feature_names_in_),
        },
    }


def _marginal_probs(est: DPFlowSynthesizer) -> list[np.ndarray]:
    return [m.probs for m in est.marginals_]


def _from_state(cls: type, state: dict) -> DPFlowSynthesizer:
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"Unsupported model file format {state.get('format')!r} (this version "
                         f"reads format {FORMAT_VERSION}); refit the model.")
    from .marginals import ColumnMarginal

    est = cls(**state["params"])
    est.domain_ = Domain.from_dict(state["domain"])
    est.domain_.data_derived = tuple(state["data_derived"])
    est.domain_.estimated = tuple(state["estimated"])
    est.type_layer_ = TypeLayer(est.domain_)
    specs = [histogram_spec(n, est.domain_[n], est.histogram_bins) for n in est.domain_.columns]
    est.marginals_ = [ColumnMarginal(s, p.numpy()) for s, p in zip(specs, state["marginals"])]
    est.marginals_info_ = state["marginals_info"]
    est.encoder_ = TableEncoder(est.domain_, est.marginals_)
    est.flow_ = None
    if state["flow"] is not None:
        est.flow_ = SharedConditionerFlow(**state["flow"]["config"]).float()
        est.flow_.load_state_dict(state["flow"]["state"])
        est.flow_.eval().requires_grad_(False)
    fitted = state["fitted"]
    for key, value in fitted.items():
        setattr(est, key, value)
    est.history_ = [tuple(h) for h in fitted["history"]]
    est.feature_names_in_ = np.asarray(fitted["feature_names_in_"], dtype=object)
    est.n_features_in_ = len(est.feature_names_in_)
    return est

