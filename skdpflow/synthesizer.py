"""``DPFlowSynthesizer``: the scikit-learn facade."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state

from ._io import (
    ModelFileError,
    atomic_write,
    check_output_path,
    not_a_model,
    read_model_state,
)
from ._threads import torch_threads
from ._validation import (
    N_JOBS,
    RANDOM_STATE,
    Interval,
    InvalidDataError,
    NotFittedError,
    Options,
    as_records_frame,
    auto_or,
    check_columns,
    duplicate_names,
    validate_params,
)
from ._writers import TableWriter, rechunk, require_pyarrow, table_format
from .distributed import Communicator, rank_seed
from .domain import DataDerivedDomainWarning, Domain, as_domain, column_kind
from .encoding import (
    TableEncoder,
    TypeLayer,
    cell_log_volume,
    dequantize,
    locate_cells,
    typed_column,
)
from .enforcement import Enforcer, released_mass
from .flows.model import SharedConditionerFlow, shifted_accept
from .marginals import bin_index, histogram_spec, release_marginals
from .privacy.accounting import PrivacyBudgetError
from .privacy.copula import (
    cell_reliability,
    release_correlation,
    release_moments,
    row_bound,
    second_moments,
)
from .privacy.domain_estimation import (
    OTHER,
    OTHER_WARN_SHARE,
    SELECTION_DELTA_SHARE,
    DomainCounts,
    DomainEstimateError,
    OtherShareWarning,
    estimate_domain,
    other_share_message,
    unreliable_bounds_message,
)
from .privacy.histograms import count_noise_std, release_histograms
from .privacy.ledger import MAX_EPSILON, PrivacyLedger, Release, rdp_to_epsilon
from .privacy.randomness import PrivacyNoise, SecureNoise, SeededNoise
from .raking import CategoryWeights
from .schedule import AUTO, COUNT_SHARE, Schedule, auto_schedule, domain_share
from .streaming import DiskCells, TableSource, as_source
from .training import TrainConfig, standard_normal_logpdf, train_flow

# What the report says of the noise (see skdpflow/privacy/randomness.py).
NOISE_SOURCE = ("secret: AES-CTR keyed with 128 fresh bits of OS entropy (DP-SGD, Poisson "
                "masks) and OpenDP's exact discrete Gaussian (counts); never seeded, never "
                "stored")

__all__ = ["DPFlowSynthesizer"]

# 4: the flow's state holds its base correlation (the `base_cholesky` buffer).
# 5: and its marginal calibration (the `calibration_from` / `calibration_to` buffers).
# 7: the domain entry holds the declared rules ({"columns": ..., "constraints": [...]}).
# 8: the flow's config may list discrete heads (`discrete`), with their buffers.
FORMAT_VERSION = 9
# The entries of a model file (see `_state`).
STATE_KEYS = ("params", "domain", "data_derived", "estimated", "marginals", "marginals_info",
              "flow", "ledger", "fitted")
# Rows per sampled block: the latent rows of a block are drawn at once (the rows a seed gives
# depend on it), then decoded.
SAMPLE_CHUNK = 65_536
# The marginal calibration set after DP-SGD (SharedConditionerFlow.calibrate): knots per
# dimension, and rows drawn from the trained flow to place them (post-processing).
CALIBRATION_KNOTS = 64  # at least, and as many as the most bins of any dimension
CALIBRATION_SAMPLES = 131_072
# The same post-processing of the copula-only model (DP-SGD skipped: a small table at a small
# budget, whose released masses carry far more noise than this Monte Carlo): fewer rows, a
# small fit stays fast (kddcup99, 1,000 rows, 42 columns: 10.4 s with 131,072 rows).
COPULA_ONLY_SAMPLES = 32_768
# A dimension is calibrated to its released bins only where the release is precise: the
# expected TVD its noise alone puts on the bins, 0.5 K sigma sqrt(2 / pi) / n_hat, is at most
# this. Measured on bank_marketing and default_credit_card subsamples at epsilon 1: 32-bin
# histograms at 0.15 (3,000 rows) did worse than the flow's own marginal, at 0.07 better.
CALIBRATION_MAX_NOISE_TVD = 0.1

# Discrete dimensions with more cells than this stay in the spline flow (dequantized): a head
# costs an input and an output unit per cell.
MAX_HEAD_CELLS = 256
# At most this many heads, with at most this many cells in all (those of most cells first);
# the other discrete dimensions stay in the spline flow. The lookup table has a weight per
# pair of cells of different heads, so its size grows with the square of the cells (about
# 500,000 weights at the bound). On kddcup99 (10,000 rows, epsilon 1, 3 seeds) heads for all
# 40 discrete dimensions (249 cells) against the 16 of most cells: quality 0.934 against
# 0.869, AUROC 0.919 against 0.936 (a draw varies by 0.05 there), the same fit time.
MAX_HEADS = 64
MAX_HEAD_TOTAL_CELLS = 1024
# The heads' conditioner calls per row: consecutive heads grouped, each group reading the
# cells of the groups before it; the lookup table reads every earlier head either way. One
# group (a learned logit bias per cell: the heads read the other heads through the table
# alone) kept what one call per head gave on Adult, bank_marketing, default_credit_card and
# kddcup99 at epsilon 1, in half the fit time (docs/benchmarks.md, "Discrete heads").
HEAD_GROUPS = 1

# Rows per slice of a block given to one sampling thread: a multiple of the flow's fast-path
# row block (8192 rows), so that the flow sees the same row blocks with any number of threads.
FLOW_SLICE = 8192


def _in_threads(method: Callable) -> Callable:
    """Run ``method`` with torch's intra-op threads set by the estimator's ``n_jobs``."""

    @functools.wraps(method)
    def wrapper(self: DPFlowSynthesizer, *args: Any, **kwargs: Any) -> Any:
        validate_params(type(self).__name__, {"n_jobs": self.n_jobs}, {"n_jobs": N_JOBS})
        with torch_threads(self.n_jobs):
            return method(self, *args, **kwargs)

    return wrapper


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

    Every ``"auto"`` value below is set by :func:`skdpflow.schedule.auto_schedule` from public
    facts only: the row count released first under DP (``n_hat``), the number of encoded
    columns, epsilon and delta; ``schedule_`` holds what it chose. Explicit values
    override it.

    Parameters
    ----------
    epsilon : float, default=1.0
        Privacy budget of the whole fit. ``float('inf')`` trains without clipping or noise
        and releases exact marginals: no privacy at all.
    delta : float, default=1e-5
        Probability with which the epsilon bound may fail. Must be below ``1 / n_rows``.
    epochs : float or "auto", default="auto"
        Expected passes over the data; the number of steps is ``round(epochs / q)`` with
        ``q = batch_size / n_hat``. ``"auto"`` (:mod:`skdpflow.schedule`): six passes on
        large tables, at least 200 steps on small ones.
    batch_size : int or "auto", default="auto"
        Expected size of a Poisson batch (each row is drawn independently with probability
        ``q``). ``"auto"``: ``min(1024, n_hat / 4)``.
    learning_rate : float or "auto", default="auto"
        Adam learning rate at the start; cosine decay to a tenth of it. ``"auto"``:
        ``1e-2``, lowered in proportion when DP-SGD's projected noise is high.
    max_grad_norm : float, default=1.0
        Per-row gradient clipping bound ``C``.
    clipping : {"flat", "per_unit"}, default="flat"
        ``"flat"`` clips each row's whole gradient to ``C``. ``"per_unit"`` clips each
        output unit of each linear layer (a weight row and its bias entry) to
        ``C_u = C sqrt(n_u / N)`` (``n_u`` parameters in the unit, ``N`` in the flow), so
        ``sum C_u^2 = C^2``: same sensitivity, same noise, same epsilon.
    sparsity : float, default=0.0
        Share of output units (and their coordinates) dropped from each DP-SGD step by a
        random mask drawn from the ``random_state`` generator, never from the data; noise
        goes on kept coordinates only. The mask is public randomness, so no epsilon is
        spent on it.
    n_stages : int, default=6
        Coupling stages of the flow. They share one conditioner network, so the number
        of parameters does not grow with it.
    hidden_size : int or "auto", default="auto"
        Width of the conditioner's two hidden layers. ``"auto"``: the widest of 64, 32, 16
        and 8 whose projected DP-SGD noise per step stays small (see
        :mod:`skdpflow.schedule`).
    n_bins : int or "auto", default="auto"
        Bins of each rational-quadratic spline (``"auto"``: 8, or 4 for the smallest models).
    discrete_model : {"heads", "dequantized"}, default="heads"
        How discrete dimensions (categories, booleans, integer columns with at most 32
        values, the point masses and missing values of numerical columns) are modelled.
        ``"heads"``: one softmax head per dimension (at most 64), in a fixed order (fewest
        cells first), each reading the cells of the heads before it through a lookup table,
        starting at the DP copula's conditionals and recentred on its released masses
        after training, and the flow's continuous features conditioned on all of them
        through the shared conditioner; a category that determines another (``education``
        and ``education-num``) is then one lookup away.
        ``"dequantized"``: the spline flow models them as intervals of a continuous value,
        as it does numbers. Either way ``score_samples`` is exact (see its docstring).
    marginals_fraction : float or "auto", default="auto"
        Share of the privacy budget (after the row count and the domain estimation) for the
        histogram release that shapes the encoding. Shares are of the Rényi budget at the
        order the ledger fixes before the first release, so they add up exactly; training
        gets what is left. ``"auto"``: ``0.1 sqrt(30000 / (n_hat epsilon))`` within
        [0.1, 0.6]: small tables need a larger share for usable marginals.
    copula_fraction : float or "auto", default="auto"
        Share of the budget for one Gaussian release of the correlations between the latent
        dimensions (a DP Gaussian copula, :mod:`skdpflow.privacy.copula`), made the flow's
        starting point: the untrained flow samples ``N(0, R)`` instead of independent
        columns, so a table too small for DP-SGD to learn from still keeps its strongest
        pairwise dependencies. ``0`` disables the release. ``"auto"``:
        ``0.05 sqrt(30000 / N)`` (``N = n_hat epsilon``) up to 0.3, fading to 0 between
        ``N = 10,000`` and ``30,000``, where DP-SGD learns the dependence itself.
    domain_epsilon_fraction : float or "auto", default="auto"
        Share of the budget for estimating the domain of the columns that ``domain`` does not
        declare (noisy bucket counts for bounds, thresholded noisy value counts for
        categories; one Gaussian release, see :mod:`skdpflow.privacy.domain_estimation`).
        Not spent when everything is declared. Category discovery also reserves 10% of
        ``delta``. ``"auto"``: ``0.2 sqrt(30000 / (n_hat epsilon))`` within [0.2, 0.6] from
        the noisy row count (a small table needs a larger share to discover its categories).
    privacy : {"strict", "domain_from_data"}, default="strict"
        ``"strict"`` estimates undeclared domains under DP; ``"domain_from_data"`` reads
        them from the data, which the guarantee does NOT cover. With ``"strict"`` every
        part of the fit is covered by the guarantee: nothing is read from the data outside
        a DP release. ``"domain_from_data"`` is the opt-out: undeclared bounds, categories and
        missingness are read exactly from the data (as most synthesizers do), which the
        guarantee does not cover; a ``DataDerivedDomainWarning`` and ``privacy_report()``
        say so.
    histogram_bins : int or "auto", default="auto"
        Bins of the released histogram of a numerical column. ``"auto"``: 32, fewer where
        the histograms' noise is large against the noisy row count (at least 8; the rule:
        :func:`~skdpflow.schedule.histogram_bins`); integer columns with few enough values
        (at most 100, fewer under the same noise rule, never fewer than the bins) get one
        bin per value. ``schedule_`` says what was chosen.
    accountant : {"rdp"}, default="rdp"
        How the budget is turned into noise and back: Rényi DP at one order fixed before
        the first release (:mod:`skdpflow.privacy.ledger`), the form that stays valid when
        DP-SGD's schedule depends on the noisy row count. (PRV cannot bound that adaptive
        composition, so it is refused.)
    device : {"auto", "cpu", "cuda"}, default="auto"
        Where the flow is trained; ``"auto"`` takes CUDA when it is available.
    n_jobs : int or None, default=None
        Threads torch may use on the CPU during :meth:`fit`, :meth:`sample`,
        :meth:`sample_to` and :meth:`score_samples` (its intra-op threads, set for the call
        and restored afterwards). As in scikit-learn, ``-1`` means every usable core, ``-2``
        all but one, and so on. ``None`` takes, at the start of each call, the cores that
        other processes leave free (the usable cores minus the load of other processes,
        at least 1: :func:`skdpflow._threads.auto_threads`): torch's threads spin against
        processes that share their cores, so a busy machine gets one thread. It does not
        change the privacy guarantee, nor the rows a seed gives.
    random_state : int, RandomState instance or None, default=None
        Seeds what is not privacy noise: the flow's initial weights, dequantisation,
        sparsification masks, and ``sample``. The privacy noise (histogram and
        domain-estimation noise, Poisson batches, DP-SGD noise) never follows it: it comes
        from a secret generator keyed with fresh OS entropy at every fit, so two private
        fits with the same seed differ. With ``epsilon=inf`` (no noise)
        a seeded CPU fit is reproducible.
    verbose : bool or "loss", default=True
        ``True`` shows a progress bar with the steps and the epsilon spent so far;
        ``False`` shows nothing. ``"loss"`` also shows the training loss, which is a
        statistic of the private rows without noise: not private, for a data holder's own
        console only.

    Attributes
    ----------
    domain_ : Domain
        The domain used: declared, estimated under DP, or (opt-out) read from the data;
        ``domain_.estimated`` and ``domain_.data_derived`` name the columns of the last two.
    epsilon_ : float
        Epsilon spent, recomputed from the ledger's releases.
    delta_ : float
        Delta spent (the accountant's share plus the category-discovery term).
    ledger_ : PrivacyLedger
        Every release on the private rows, in order, with the Rényi order fixed before
        the first; it recomputes ``epsilon_`` and writes :meth:`privacy_report`.
    noise_multiplier_ : float
        DP-SGD noise standard deviation divided by ``max_grad_norm``.
    sample_rate_ : float
        Poisson sampling rate ``q``.
    steps_ : int
    accountant_ : str
    history_ : list of (noise_multiplier, sample_rate, steps)
        The ledger's releases in Opacus' history format.
    n_rows_estimate_ : float
        The row count as estimated from the noisy histograms (the exact count never
        reaches the model).
    copula_info_ : dict
        The copula release's summary (dimensions, noise std, scores, shrinkage factor,
        mean absolute released correlation); empty when ``copula_fraction=0``. The
        correlation itself is the flow's ``base_cholesky`` buffer (``L L^T``).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
    flow_ : SharedConditionerFlow
    """

    _parameter_constraints: dict = {
        "epsilon": Interval(Real, 0, MAX_EPSILON, closed="right", allow_inf=True),
        "delta": Interval(Real, 0, 1, closed="neither"),
        "epochs": auto_or(Interval(Real, 0, None, closed="neither")),
        "batch_size": auto_or(Interval(Integral, 1, None)),
        "learning_rate": auto_or(Interval(Real, 0, None, closed="neither")),
        "max_grad_norm": Interval(Real, 0, None, closed="neither"),
        "clipping": Options(frozenset({"flat", "per_unit"})),
        "sparsity": Interval(Real, 0, 1, closed="left"),
        "n_stages": Interval(Integral, 1, None),
        "hidden_size": auto_or(Interval(Integral, 1, None)),
        "n_bins": auto_or(Interval(Integral, 2, None)),
        "discrete_model": Options(frozenset({"heads", "dequantized"})),
        "marginals_fraction": auto_or(Interval(Real, 0, 1, closed="neither")),
        "copula_fraction": auto_or(Interval(Real, 0, 1, closed="left")),
        "histogram_bins": auto_or(Interval(Integral, 2, None)),
        "domain_epsilon_fraction": auto_or(Interval(Real, 0, 1, closed="neither")),
        "privacy": Options(frozenset({"strict", "domain_from_data"})),
        "accountant": Options(frozenset({"rdp"})),
        "device": Options(frozenset({"auto", "cpu", "cuda"})),
        "n_jobs": N_JOBS,
        "random_state": RANDOM_STATE,
        "verbose": Options(frozenset({True, False, "loss"})),
    }

    def __init__(
        self,
        *,
        epsilon: float = 1.0,
        delta: float = 1e-5,
        epochs: float | str = "auto",
        batch_size: int | str = "auto",
        learning_rate: float | str = "auto",
        max_grad_norm: float = 1.0,
        clipping: str = "flat",
        sparsity: float = 0.0,
        n_stages: int = 6,
        hidden_size: int | str = "auto",
        n_bins: int | str = "auto",
        discrete_model: str = "heads",
        marginals_fraction: float | str = "auto",
        copula_fraction: float | str = "auto",
        histogram_bins: int | str = "auto",
        domain_epsilon_fraction: float | str = "auto",
        privacy: str = "strict",
        accountant: str = "rdp",
        device: str = "auto",
        n_jobs: int | None = None,
        random_state: int | np.random.RandomState | None = None,
        verbose: bool | str = True,
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
        self.discrete_model = discrete_model
        self.marginals_fraction = marginals_fraction
        self.copula_fraction = copula_fraction
        self.histogram_bins = histogram_bins
        self.domain_epsilon_fraction = domain_epsilon_fraction
        self.privacy = privacy
        self.accountant = accountant
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    @_in_threads
    def fit(self, X: Any, y: Any = None, *, domain: Domain | dict | str | None = None
            ) -> DPFlowSynthesizer:
        """Learn a differentially private model of the table ``X``.

        The fit is a short sequence of stages: check the budget and fix its plan, release
        the row count, resolve the domain, release the marginals, encode, release the copula
        correlations, train, post-process (from released outputs only), close the ledger.
        Every stage that
        reads rows is a mechanism of :mod:`skdpflow.privacy` recorded in one
        :class:`~skdpflow.privacy.ledger.PrivacyLedger`; its noise comes from a
        :class:`~skdpflow.privacy.randomness.SecureNoise` keyed with fresh OS entropy, never
        from ``random_state``. The estimator is updated only when every stage succeeded.

        Parameters
        ----------
        X : pandas DataFrame (a 2-D array: numerical columns ``x0, x1, ...``), path or callable
            The private table, one row per individual. It is not modified. A table larger
            than memory: a path to a CSV file, a Parquet file or a folder of Parquet files,
            or a zero-argument callable returning a fresh iterable of DataFrame chunks (a
            list of DataFrames works too). The fit reads it once per stage (a one-shot
            iterator is refused), sums each release's exact statistic over the chunks
            with the noise added once, and keeps the encoded cells in a temporary file
            on disk, removed after the fit (docs/scale.md).
        y : ignored
        domain : Domain, dict, path to a JSON/YAML file, SDV Metadata, or None
            Public facts per column (bounds, integer-ness, categories, nullability, an
            ``other`` category), and optionally public rules between columns
            (``constraints``: enforced on every sample, never read against the rows, free
            of budget; :mod:`skdpflow.enforcement`). Columns it leaves out are estimated
            under DP with
            ``domain_epsilon_fraction`` of epsilon (or, with
            ``privacy="domain_from_data"``, read from the data, outside the guarantee).

        Returns
        -------
        self

        Raises
        ------
        DomainEstimateError
            An undeclared numerical or datetime column whose DP bound estimate is dominated
            by noise (too few rows for the budget): declare its bounds. No bound chosen by
            noise is ever used.
        InvalidDataError
            The data cannot be used (every problem listed).

        Warns
        -----
        OtherShareWarning
            Category discovery left 2% or more of a column (noisy share, from the released
            marginals) in ``<other>``; the message names the columns and gives the code to
            declare their categories. ``<other>`` itself is sampled only when its noisy count
            is significant.

        See Also
        --------
        skdpflow.distributed.fit_sharded : The same fit on the union of shards held by
            several processes (``torch.distributed``).
        """
        return self._fit(X, domain, None)

    @_in_threads
    def _fit_sharded(self, shard: Any, domain: Any, comm: Communicator) -> DPFlowSynthesizer:
        """:meth:`fit` on this rank's shard (:func:`skdpflow.distributed.fit_sharded`)."""
        return self._fit(shard, domain, comm)

    def _fit(self, X: Any, domain: Any, comm: Communicator | None) -> DPFlowSynthesizer:
        """The stages of :meth:`fit`; ``comm``: a distributed fit, ``X`` this rank's shard.

        Distributed, every release sums the ranks' exact statistics with the noise added
        once (by rank 0); everything else is the same deterministic code on every rank.
        """
        source: TableSource | None = None
        if comm is None:
            validate_params(type(self).__name__, self.get_params(),
                            self._parameter_constraints)
            source = as_source(X, domain)
            if source is None:
                data = _check_frame(X)
                declared = self._declared_domain(data, domain)
                n_rows = n_local = len(data)
            else:
                data, declared, n_rows = self._scan(source, domain)
                n_local = n_rows
        else:
            data, declared, n_rows, n_local, source = self._check_shards(X, domain, comm)
        return self._fit_stages(data, declared, n_rows, n_local, source, comm)

    def _fit_stages(self, data: pd.DataFrame, declared: Domain, n_rows: int, n_local: int,
                    source: TableSource | None, comm: Communicator | None
                    ) -> DPFlowSynthesizer:
        """The stages after the input checks. ``data``: the table, or for a ``source`` read
        in chunks its schema (no rows); ``n_local``: the rows of this rank (or of all)."""
        ledger = self._open_ledger(data, declared, n_rows)
        init_seed, train_seed = check_random_state(self.random_state).randint(0, 2**31 - 1, 2)
        if comm is not None:  # rank 0's: the same initial flow and masks on every rank
            seeds = comm.broadcast(torch.tensor([init_seed, train_seed]), 0, "the seeds")
            init_seed, train_seed = (int(v) for v in seeds)
        # The privacy noise: secret, fresh for every fit (each rank its own; rank 0 alone
        # adds noise to the releases). A non-private run needs none.
        noise = SecureNoise() if ledger.private else SeededNoise(
            int(train_seed) if comm is None else rank_seed(train_seed, comm.rank))
        fitted: dict[str, Any] = {}
        n_count = self._release_row_count(n_local, ledger, noise, comm)
        fitted["domain_"], discovery = self._resolve_domain(
            data, declared, ledger, noise, self._domain_share(n_count), comm,
            source=source, n_local=n_local)
        fitted["schedule_"] = self._schedule(n_count, fitted["domain_"], ledger)
        fitted["type_layer_"] = TypeLayer(fitted["domain_"])  # dtypes from the domain alone
        if source is None:
            typed = fitted["type_layer_"].transform(data)
            typed_chunks: Any = [typed]
        else:  # one pass over the chunks
            typed_chunks = (fitted["type_layer_"].transform(chunk)
                            for chunk in source.chunks(n_local))
        fitted["marginals_"], fitted["marginals_info_"] = self._release_marginals(
            typed_chunks, fitted["domain_"], ledger, noise, fitted["schedule_"], comm)
        _warn_other_share(fitted["domain_"], fitted["marginals_"], discovery)
        fitted["encoder_"] = TableEncoder(fitted["domain_"], fitted["marginals_"])
        n_hat = fitted["marginals_info_"]["n_rows_estimate"]
        # The copula-only model's cell reliabilities and row bound: from the encoder alone.
        reliability = self._copula_reliability(fitted["encoder_"], fitted["schedule_"],
                                               data.shape[1])
        bound = None if reliability is None else row_bound(reliability)
        cells = moments = None
        if source is None:
            lo, hi, _ = fitted["encoder_"].cells(typed)
            del typed
        else:  # the cells to a file on disk, the copula's sums over the chunks
            lo = hi = None
            cells, moments = self._encode_chunks(
                source, n_local, fitted["type_layer_"], fitted["encoder_"],
                fitted["schedule_"].copula_share > 0 and data.shape[1] >= 2,
                means=fitted["schedule_"].copula_only, bound=bound)
        try:
            correlation, fitted["copula_info_"] = self._release_copula(
                lo, hi, n_hat, data.shape[1], ledger, noise, fitted["schedule_"], comm,
                moments=moments, n_dims=fitted["encoder_"].n_dims, reliability=reliability,
                bound=bound)
            edges = _precise_release_edges(fitted["encoder_"], fitted["marginals_info_"])
            raked = _rakeable_dims(fitted["encoder_"], fitted["marginals_info_"])
            fitted.update(self._train(lo, hi, edges, raked, n_hat,
                                      correlation, ledger, noise, fitted["schedule_"],
                                      int(init_seed), int(train_seed), comm, cells=cells,
                                      heads=self._heads(fitted["encoder_"])))
        finally:  # the file of cells goes, whatever happened
            if cells is not None:
                cells.close()
        if comm is None:
            ledger.close()  # fail closed: the recomputed totals must be within the promise
        else:  # and every rank got here: none failed after the last exchange
            comm.agree(ledger.close, "closing the ledger")
        self._set_fitted(fitted, ledger, data)
        return self

    # ----------------------------------------------------------- fit stages
    def _check_shards(self, X: Any, domain: Any, comm: Communicator
                      ) -> tuple[pd.DataFrame, Domain, int, int, TableSource | None]:
        """Distributed: check every rank's shard, parameters and domain, together.

        The ranks must agree on the parameters (but ``random_state``, ``n_jobs`` and
        ``verbose``), the columns, the domain and the dtypes of undeclared columns (their
        kinds decide how they are estimated). ``privacy="domain_from_data"`` with
        undeclared columns is refused. Returns the shard (for a shard read in chunks, its
        schema), the declared domain, the global row count (exact, for the checks that read
        it; it reaches the model only through the noisy count, as on one process), this
        rank's row count and the source of a shard read in chunks (None for a DataFrame; a
        path is read in shards, rows ``i % ranks == rank``).
        """
        def local() -> tuple[pd.DataFrame, Domain, TableSource | None, np.ndarray]:
            validate_params(type(self).__name__, self.get_params(),
                            self._parameter_constraints)
            declared = _as_declared(domain)
            source = as_source(X, declared, (comm.rank, comm.world_size))
            if source is None:
                shard = _check_frame(X, min_rows=1)
                extra = [c for c in declared.columns if c not in shard.columns]
                if extra:
                    raise ValueError(
                        f"The domain declares columns that are not in the data: {extra}.")
                undeclared = [c for c in shard.columns if c not in declared.columns]
                counts = np.array([len(shard)] + [int(shard[c].notna().sum())
                                                  for c in undeclared], dtype=np.int64)
            else:
                shard, n_local, present = source.scan(
                    declared.columns, functools.partial(_check_frame, min_rows=0))
                counts = np.concatenate([[n_local], present]).astype(np.int64)
            undeclared = [c for c in shard.columns if c not in declared.columns]
            if undeclared and self.privacy == "domain_from_data":
                raise ValueError(
                    f"privacy='domain_from_data' reads the domain of undeclared columns "
                    f"from the rows, which a distributed fit does not do; undeclared: "
                    f"{undeclared}. Declare them in `domain`, or use privacy='strict' (DP "
                    "estimates).")
            return shard, declared, source, counts

        shard, declared, source, counts = comm.agree(
            local, "checking the parameters, domain and shard")
        params = {k: v for k, v in self.get_params().items()
                  if k not in ("random_state", "n_jobs", "verbose")}
        undeclared = [c for c in shard.columns if c not in declared.columns]
        comm.same_everywhere(
            repr((sorted(params.items()), list(shard.columns), declared.to_dict())),
            "the parameters, the columns and the domain")
        comm.same_everywhere(
            repr([(c, str(shard[c].dtype)) for c in undeclared]),
            f"the dtypes of the undeclared columns {undeclared}",
            "they decide how a column is estimated; give them the same dtype on every rank "
            "(a CSV read in shards infers them from each shard's rows), or declare them")
        present = comm.all_reduce_sum(counts, "the number of rows")
        empty = [c for c, k in zip(undeclared, present[1:]) if k == 0]
        if empty:  # an input error for the data holder, on every rank; nothing is released
            raise InvalidDataError([f"column {c!r} is entirely missing: declare its domain "
                                    "(with nullable=True) or drop it" for c in empty])
        n_rows = int(present[0])
        if n_rows < 2:
            raise ValueError(f"Found {n_rows} row(s) over all shards while a minimum of 2 "
                             "is required.")
        return shard, declared, n_rows, int(counts[0]), source

    def _scan(self, source: TableSource, domain: Any) -> tuple[pd.DataFrame, Domain, int]:
        """One process, a table read in chunks: :meth:`_declared_domain`'s checks over one
        pass (every chunk checked as a DataFrame would be). Returns the schema (no rows),
        the declared domain and the row count."""
        declared = _as_declared(domain)
        schema, n_rows, present = source.scan(declared.columns,
                                              functools.partial(_check_frame, min_rows=0))
        undeclared = [c for c in schema.columns if c not in declared.columns]
        empty = [c for c, k in zip(undeclared, present) if k == 0]
        if empty:  # an input error for the data holder; nothing is released
            raise InvalidDataError([f"column {c!r} is entirely missing: declare its domain "
                                    "(with nullable=True) or drop it" for c in empty])
        if undeclared and self.privacy == "domain_from_data":
            raise ValueError(
                f"privacy='domain_from_data' reads the domain of undeclared columns from the "
                f"rows, which a fit on a table read in chunks does not do; undeclared: "
                f"{undeclared}. Declare them in `domain`, or use privacy='strict' (DP "
                "estimates).")
        if n_rows < 2:
            raise ValueError(f"Found {n_rows} sample(s) in {source.name} while a minimum of 2 "
                             "is required.")
        return schema, declared, n_rows

    def _encode_chunks(self, source: TableSource, n_local: int, type_layer: TypeLayer,
                       encoder: TableEncoder, copula: bool, *, means: bool = False,
                       bound: float | None = None) -> tuple[DiskCells, np.ndarray | None]:
        """One pass: every chunk's cells appended to a file on disk (float32), and with
        ``copula`` the copula's exact statistic summed over the chunks (from the float64
        cells, as an in-memory fit computes it; of the cell means with ``means``, rows
        bounded by ``bound``). The file is removed on any failure."""
        cells = DiskCells(n_local, encoder.n_dims)
        try:
            moments = None
            for chunk in source.chunks(n_local):
                lo, hi, _ = encoder.cells(type_layer.transform(chunk))
                cells.append(lo, hi)
                if copula and encoder.n_dims >= 2:
                    part = second_moments(lo, hi, means, bound)
                    moments = part if moments is None else moments + part
            return cells, moments
        except BaseException:
            cells.close()
            raise

    def _declared_domain(self, data: pd.DataFrame, domain: Any) -> Domain:
        declared = as_domain(domain) if domain is not None else Domain()
        extra = [c for c in declared.columns if c not in data.columns]
        if extra:
            raise ValueError(f"The domain declares columns that are not in the data: {extra}.")
        empty = [c for c in data.columns if c not in declared.columns and data[c].isna().all()]
        problems = [f"column {c!r} is entirely missing: declare its domain (with "
                    "nullable=True) or drop it" for c in empty]
        if problems:  # an input error for the data holder; nothing is released
            raise InvalidDataError(problems)
        return declared

    def _estimates(self, data: pd.DataFrame, declared: Domain) -> bool:
        """Whether some column's domain is estimated under DP (public: the schema)."""
        return (math.isfinite(self.epsilon) and self.privacy == "strict"
                and any(c not in declared.columns for c in data.columns))

    def _domain_share(self, n_hat: float) -> float:
        if self.domain_epsilon_fraction != AUTO:
            return self.domain_epsilon_fraction
        return domain_share(n_hat, self.epsilon)

    def _open_ledger(self, data: pd.DataFrame, declared: Domain, n_rows: int
                     ) -> PrivacyLedger:
        """Check the budget and fix the ledger's plan from public facts only.

        Public here: epsilon, delta, the shares, the hyperparameters, and which columns
        are declared (the schema). The row count (``n_rows``, over all shards) is only
        checked against delta: the Rényi order is chosen over a public range of table
        sizes, with the schedule each size would get.
        """
        private = math.isfinite(self.epsilon)
        if private and self.delta >= 1.0 / n_rows:
            raise ValueError(
                f"The 'delta' parameter ({self.delta}) must be below 1 / n_rows: a larger delta "
                "allows releasing a whole row.")
        estimates = self._estimates(data, declared)
        explicit = [v for v in (self.marginals_fraction, self.copula_fraction) if v != AUTO]
        domain_explicit = (self.domain_epsilon_fraction
                           if estimates and self.domain_epsilon_fraction != AUTO else 0.0)
        if private and (COUNT_SHARE + domain_explicit >= 1.0 or sum(explicit) >= 1.0):
            raise PrivacyBudgetError(
                "The budget shares must leave a share of epsilon for the rest of the fit; got "
                f"row count {COUNT_SHARE} + domain_epsilon_fraction "
                f"{self.domain_epsilon_fraction}, marginals_fraction {self.marginals_fraction}, "
                f"copula_fraction {self.copula_fraction}.")
        discovers = estimates and any(column_kind(data[c]) == "categorical"
                                      for c in data.columns if c not in declared.columns)
        selection_delta = (SELECTION_DELTA_SHARE * self.delta
                           * math.exp(-min(self.epsilon, MAX_EPSILON)) if discovers else 0.0)
        ledger = PrivacyLedger(self.epsilon, self.delta, selection_delta=selection_delta)
        n_dims = len(data.columns)  # public: the schema (a guess for the encoded width)

        def reference(n: int) -> tuple[float, int, float]:
            plan = self._auto_schedule(n, n_dims)
            fixed = COUNT_SHARE + (self._domain_share(n) if estimates else 0.0)
            return min(1.0, plan.batch_size / n), plan.steps, plan.train_share * (1 - fixed)

        ledger.plan([], schedule=reference)
        return ledger

    def _auto_schedule(self, n_hat: float, n_dims: int, sigma_for: Any = None,
                       count_noise_for: Any = None) -> Schedule:
        """:func:`~skdpflow.schedule.auto_schedule` with this estimator's explicit values and
        discrete model: the one rule both the ledger's plan (no ``sigma_for``: shares, batch
        and steps only) and the fit's schedule follow."""
        overrides = {name: getattr(self, name) for name in (
            "batch_size", "epochs", "learning_rate", "hidden_size", "n_bins",
            "marginals_fraction", "copula_fraction", "histogram_bins")}
        return auto_schedule(n_hat, n_dims, self.epsilon, sigma_for, overrides,
                             size_model=sigma_for is not None,
                             heads=self.discrete_model == "heads",
                             count_noise_for=count_noise_for)

    def _release_row_count(self, n_local: int, ledger: PrivacyLedger,
                           noise: PrivacyNoise, comm: Communicator | None) -> float:
        """The row count, released first (discrete Gaussian), for the schedule."""
        z = ledger.share_noise(COUNT_SHARE)
        counts, release = release_histograms([], [1], z, noise, COUNT_SHARE, comm,
                                             counts=[np.array([n_local], dtype=np.int64)])
        release.name, release.reads = "row count (discrete Gaussian)", "the number of rows"
        ledger.record(release)
        return max(1.0, float(counts[0][0]))

    def _resolve_domain(self, data: pd.DataFrame, declared: Domain, ledger: PrivacyLedger,
                        noise: PrivacyNoise, share: float, comm: Communicator | None = None,
                        source: TableSource | None = None, n_local: int = 0
                        ) -> tuple[Domain, float | None]:
        """Declared columns as declared; the others estimated under DP (or read: opt-out).

        Also returns category discovery's threshold (None when nothing was discovered).
        ``source``: a table read in chunks (``data`` its schema), counted in one pass.

        Raises
        ------
        DomainEstimateError
            The estimate of some column's bounds is dominated by noise: rather than bounds
            chosen by noise, an error naming the columns to declare (after the estimate:
            nothing but the error, a post-processing of it, comes out of the failed fit).
        """
        undeclared = [c for c in data.columns if c not in declared.columns]
        estimated: dict = {}
        derived: list = []
        threshold = None
        if undeclared and self.privacy == "domain_from_data":
            derived = undeclared
            estimated = Domain.from_data(data, undeclared).columns
            warnings.warn(
                f"privacy='domain_from_data': the bounds, categories and missingness of "
                f"{len(undeclared)} undeclared column(s) {undeclared[:5]}"
                f"{'...' if len(undeclared) > 5 else ''} are read from the data, and the "
                "differential-privacy guarantee does not cover them.",
                DataDerivedDomainWarning, stacklevel=4)
        elif undeclared:
            z_d = ledger.share_noise(share)
            counts = None
            if source is not None:
                counts = DomainCounts(data, undeclared)
                for chunk in source.chunks(n_local):
                    counts.add(chunk)
            est = estimate_domain(data, undeclared, z_d, ledger.selection_delta, noise,
                                  comm=comm, counts=counts)
            if est.unreliable:  # fail closed: never a bound chosen by noise
                raise DomainEstimateError(unreliable_bounds_message(
                    {c: est.columns[c] for c in est.unreliable}))
            estimated = est.columns
            thresholds = [i["threshold"] for i in est.info.values() if "threshold" in i]
            threshold = thresholds[0] if thresholds else None
            if est.touches_data:
                ledger.record(est.release(share))
        domain = Domain(
            {c: declared.columns[c] if c in declared.columns else estimated[c]
             for c in data.columns},
            data_derived=tuple(derived),
            estimated=tuple(c for c in undeclared if c not in derived))
        # Public rules, already checked against these columns' declared domains when
        # declared; never checked against the rows.
        domain.constraints = list(declared.constraints)
        return domain, threshold

    def _schedule(self, n_count: float, domain: Domain, ledger: PrivacyLedger) -> Schedule:
        """Shares, batch, steps, learning rate, model size: from public facts only."""
        left = 1.0 - sum(r.budget_share for r in ledger.releases) if ledger.private else 1.0
        n_dims = sum(1 + int(col.nullable) for col in domain.columns.values())

        def sigma_for(share: float, sample_rate: float, steps: int) -> float:
            return ledger.dpsgd_noise_for(share * left, sample_rate, steps)

        def count_noise_for(share: float) -> float:  # as _release_marginals will draw it
            if not ledger.private:
                return 0.0
            return count_noise_std(ledger.share_noise(share * left), len(domain.columns))

        plan = self._auto_schedule(n_count, n_dims, sigma_for, count_noise_for)
        # The shares of what is left, as shares of the whole budget (for the report).
        return dataclasses.replace(plan, marginals_share=plan.marginals_share * left,
                                   copula_share=plan.copula_share * left,
                                   train_share=plan.train_share * left)

    def _release_marginals(self, typed_chunks: Iterable[pd.DataFrame], domain: Domain,
                           ledger: PrivacyLedger, noise: PrivacyNoise, schedule: Schedule,
                           comm: Communicator | None) -> tuple[list, dict]:
        """One noisy release of every 1-way histogram; it also estimates the row count.

        ``typed_chunks``: the typed table in one or more chunks; the exact bin counts are
        summed over them, the noise added once to the totals.
        """
        specs = _histogram_specs(domain, schedule)
        counts = [np.zeros(spec.size, dtype=np.int64) for spec in specs]
        for typed in typed_chunks:
            for spec, total in zip(specs, counts):
                col = domain[spec.name]
                values, is_null = typed_column(typed, spec.name, col)
                total += np.bincount(bin_index(spec, values, is_null, col),
                                     minlength=spec.size)
        hist_z = ledger.share_noise(schedule.marginals_share)
        marginals, info, release = release_marginals(specs, [], hist_z, noise,
                                                     schedule.marginals_share, comm,
                                                     counts=counts)
        ledger.record(release)
        return marginals, info

    @staticmethod
    def _copula_reliability(encoder: TableEncoder, schedule: Schedule, n_columns: int
                            ) -> np.ndarray | None:
        """The cells' reliabilities where the schedule skips DP-SGD (the copula is then the
        whole model, estimated the sharper way: :mod:`skdpflow.privacy.copula`, "The
        copula-only model"), from ``encoder`` alone (built from the released marginals);
        else None."""
        n_dims = encoder.n_dims
        if (schedule.copula_share <= 0 or n_columns < 2 or not schedule.copula_only
                or n_dims < 2):
            return None
        return cell_reliability(lambda z: encoder.cells(encoder.decode(z))[:2], n_dims)

    def _release_copula(self, lo: np.ndarray | None, hi: np.ndarray | None, n_hat: float,
                        n_columns: int, ledger: PrivacyLedger, noise: PrivacyNoise,
                        schedule: Schedule, comm: Communicator | None, *,
                        moments: np.ndarray | None = None, n_dims: int,
                        reliability: np.ndarray | None = None, bound: float | None = None
                        ) -> tuple[np.ndarray, dict]:
        """One Gaussian release of the latent correlations: the flow's base ``N(0, R)``.

        ``moments`` (with ``lo`` and ``hi`` None): the exact statistic, summed over chunks.
        ``reliability`` and ``bound`` (:meth:`_copula_reliability`,
        :func:`~skdpflow.privacy.copula.row_bound`): the copula-only model's estimate and
        row bound; None: midpoint scores, ``B = d``.
        """
        if schedule.copula_share <= 0 or n_columns < 2:
            return np.eye(n_dims), {}
        z_c = ledger.share_noise(schedule.copula_share)
        if lo is None:
            if n_dims < 2:
                return np.eye(n_dims), {"dims": n_dims, "pairs": 0}
            correlation, info, release = release_moments(moments, n_dims, z_c, noise, n_hat,
                                                         schedule.copula_share, comm,
                                                         reliability, bound)
        else:
            correlation, info, release = release_correlation(lo, hi, z_c, noise, n_hat,
                                                             schedule.copula_share, comm,
                                                             reliability, bound)
        if release is not None:
            ledger.record(release)
        return correlation, info

    def _train(self, lo: np.ndarray, hi: np.ndarray, edges: list[np.ndarray | None],
               raked: dict[int, np.ndarray], n_hat: float,
               correlation: np.ndarray, ledger: PrivacyLedger, noise: PrivacyNoise,
               schedule: Schedule, init_seed: int, train_seed: int,
               comm: Communicator | None, cells: DiskCells | None = None,
               heads: list | None = None) -> dict[str, Any]:
        """DP-SGD. Its sampling rate and length come from the noisy row count only.

        ``heads``: the discrete dimensions modelled by softmax heads, ``[[dim, cell
        edges], ...]`` in the heads' order (see :meth:`_heads`).

        ``cells``: the cells of a table read in chunks, on disk (``lo``, ``hi`` None).

        With no steps in the schedule (DP-SGD could not learn at this size and budget), the
        flow stays at its starting point (the copula, its continuous features' variances
        matched: :meth:`~skdpflow.flows.model.SharedConditionerFlow.match_continuous_variances`)
        and nothing is spent on training. Then, trained or not, the heads are recentred, the
        flow's marginals are calibrated to the released bins ``edges``
        (post-processing; a None entry leaves its dimension alone), and the categories and
        modes of the ``raked`` dimensions get their released masses through
        :class:`~skdpflow.raking.CategoryWeights` (post-processing too).
        """
        n_dims = len(edges)
        sample_rate = min(1.0, schedule.batch_size / n_hat)
        steps = schedule.steps
        if steps and self.epochs != AUTO:  # explicit passes over the histograms' n_hat
            steps = max(1, round(self.epochs / sample_rate))
        sigma = ledger.dpsgd_noise(sample_rate, steps) if steps else 0.0
        flow, weights = None, None
        if n_dims:
            device = _resolve_device(self.device)
            flow = SharedConditionerFlow(n_dims, n_stages=self.n_stages,
                                         hidden_size=schedule.hidden_size,
                                         n_bins=schedule.n_bins, seed=init_seed,
                                         calibration_knots=_calibration_knots(edges),
                                         discrete=heads, head_lookup=True,
                                         head_groups=min(HEAD_GROUPS, len(heads or [])))
            flow.set_base_correlation(torch.as_tensor(correlation))
            flow = flow.float().to(device)
            generator = torch.Generator().manual_seed(train_seed)
            if not steps:  # the copula is the model: its continuous marginals at variance 1
                flow.match_continuous_variances(COPULA_ONLY_SAMPLES, generator=generator)
            prior = ledger.rdp_spent() if ledger.private else 0.0
            config = TrainConfig(
                steps, sample_rate, sigma, self.max_grad_norm, schedule.learning_rate,
                ledger.private, expected_batch_size=sample_rate * n_hat,
                clipping=self.clipping, sparsity=self.sparsity,
                verbose=bool(self.verbose) and (comm is None or comm.rank == 0),
                show_loss=self.verbose == "loss",
                epsilon_after=lambda k: rdp_to_epsilon(
                    prior + Release("", "", 1.0, sigma, sample_rate, k).rdp(ledger.order),
                    ledger.order, ledger.accountant_delta) if ledger.private else math.inf)
            if steps:
                train_flow(flow, lo, hi, config, generator=generator, noise=noise,
                           device=device, comm=comm, cells=cells)
            flow = flow.cpu().eval().requires_grad_(False)
            # Without DP-SGD too: the copula-only start reads the earlier heads at their
            # cells' midpoints, so its marginals are close to the released ones, not equal.
            if flow.n_heads:
                # The heads' marginals back to their released masses (post-processing).
                flow.recenter_heads(generator=generator)
            calibrate = CALIBRATION_KNOTS and any(e is not None for e in edges)
            if calibrate or raked:
                # Post-processing of the trained flow, on one draw of its rows: the bins of
                # numerical columns get their released masses (the flow's shape inside a
                # bin kept), then categories and modes get theirs through weights.
                with torch.no_grad():
                    pool = flow.sample(CALIBRATION_SAMPLES if steps else COPULA_ONLY_SAMPLES,
                                       generator=generator)
                if calibrate:
                    pool = flow.calibrate(edges=edges, rows=pool)
                if raked:
                    weights = CategoryWeights.fit(pool.double().numpy(), list(raked),
                                                  list(raked.values()))
        if steps:
            ledger.record(Release(
                name="DP-SGD (Poisson-subsampled Gaussian)",
                reads="per-row gradients of the flow, clipped to max_grad_norm",
                l2_sensitivity=self.max_grad_norm, noise_multiplier=sigma,
                sample_rate=sample_rate, steps=steps,
                budget_share=1.0 - sum(r.budget_share for r in ledger.releases),
                details={"max_grad_norm": self.max_grad_norm, "clipping": self.clipping,
                         "sparsity": self.sparsity}))
        return {"flow_": flow, "category_weights_": weights,
                "noise_multiplier_": sigma, "sample_rate_": sample_rate,
                "steps_": steps, "n_rows_estimate_": n_hat}

    def _heads(self, encoder: TableEncoder) -> list:
        """The discrete dimensions the flow models with softmax heads, with their cell edges
        (released masses), fewest cells first (ties: in column order): those with 2 to
        ``MAX_HEAD_CELLS`` cells, at most ``MAX_HEADS`` of them with at most
        ``MAX_HEAD_TOTAL_CELLS`` cells in all, taken from those of most cells (the hardest
        for the spline flow) down, skipping a dimension that does not fit. From the encoding
        alone: the domain and the released marginals."""
        if self.discrete_model != "heads":
            return []
        dims = [(len(d.edges) - 1, i) for i, d in enumerate(encoder.dims)
                if d.discrete and 2 <= len(d.edges) - 1 <= MAX_HEAD_CELLS]
        chosen, total = [], 0
        for cells, i in sorted(dims, key=lambda c: (-c[0], c[1])):
            if len(chosen) < MAX_HEADS and total + cells <= MAX_HEAD_TOTAL_CELLS:
                chosen.append((cells, i))
                total += cells
        return [[i, encoder.dims[i].edges.tolist()] for _, i in sorted(chosen)]

    def _set_fitted(self, fitted: dict[str, Any], ledger: PrivacyLedger,
                    data: pd.DataFrame) -> None:
        """Replace the fitted state in one go (a failed refit leaves the old one intact)."""
        for key in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, key)
        for key, value in fitted.items():
            setattr(self, key, value)
        self.ledger_ = ledger
        self.n_features_in_ = data.shape[1]
        self.feature_names_in_ = np.asarray(data.columns, dtype=object)

    # ------------------------------------------------- accounting attributes
    @property
    def epsilon_(self) -> float:
        """Epsilon spent, recomputed from the ledger's releases."""
        return self.ledger_.epsilon_spent()

    @property
    def delta_(self) -> float:
        return self.ledger_.delta_spent()

    @property
    def history_(self) -> list[tuple[float, float, int]]:
        return self.ledger_.history

    @property
    def accountant_(self) -> str:
        return "rdp"

    # --------------------------------------------------------------- sample
    @_in_threads
    def sample(self, n_samples: int = 1, random_state: Any = None) -> pd.DataFrame:
        """Draw ``n_samples`` synthetic rows: the fitted columns, in dtypes from the domain.

        Every row keeps the rules declared in the domain (``domain.constraints``): the
        decoded rows are repaired one by one (:mod:`skdpflow.enforcement`; post-processing,
        no budget).

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None
            Defaults to the estimator's ``random_state``; an int gives the same rows on
            every call, whatever ``n_jobs``.

        Returns
        -------
        DataFrame

        Raises
        ------
        RuleConflictError
            The declared rules could not all be made to hold on some sampled row (rules
            that conflict in a way the check at declaration did not find); never a
            breaking row.

        See Also
        --------
        sample_to : The same rows, written to a file chunk by chunk in bounded memory.
        """
        self._check_fitted()
        _check_count(n_samples, "n_samples")
        with contextlib.closing(self._sample_blocks(n_samples, random_state)) as blocks:
            parts = list(blocks)
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]

    @_in_threads
    def sample_to(self, path: str | Path, n_samples: int, *, chunk_size: int = SAMPLE_CHUNK,
                  random_state: Any = None, progress: bool | None = None,
                  file_format: str | None = None) -> Path:
        """Draw ``n_samples`` rows into a Parquet or CSV file, chunk by chunk.

        The rows are those of ``sample(n_samples, random_state)`` (the same rows for the
        same seed), but only one chunk is held in memory at a time, so the file may be far
        larger than memory. Every chunk has the same column types, set by the domain.

        Parameters
        ----------
        path : str or Path
            ``.parquet`` or ``.pq`` writes Parquet (needs pyarrow:
            ``pip install "skdpflow[parquet]"``); ``.csv`` or ``.csv.gz`` writes CSV. The
            write is atomic: a temporary file in the same folder, moved into place once
            complete; an existing file is replaced.
        n_samples : int
        chunk_size : int, default=65536
            Rows per written chunk (a Parquet row group); memory grows with it.
        random_state : int, RandomState instance or None
            As for :meth:`sample`.
        progress : bool or None, default=None
            Show a progress bar on stderr; None follows ``verbose``.
        file_format : {"parquet", "csv"} or None, default=None
            Overrides the format the suffix says (None: from the suffix).

        Returns
        -------
        Path
            The file written.

        Raises
        ------
        MissingDependencyError
            A Parquet file was asked for and pyarrow is not installed (before any sampling).
        OutputPathError
            ``path`` is a folder, or its folder is missing or not writable.
        ValueError
            A suffix other than those above.
        """
        from tqdm.auto import tqdm

        self._check_fitted()
        _check_count(n_samples, "n_samples")
        _check_count(chunk_size, "chunk_size")
        path = check_output_path(path, option="path")
        if file_format not in (None, "parquet", "csv"):
            raise ValueError(f"file_format must be 'parquet', 'csv' or None, got "
                             f"{file_format!r}.")
        fmt = file_format or table_format(path)
        if fmt == "parquet":
            require_pyarrow()
        show = bool(self.verbose) if progress is None else bool(progress)
        columns = list(self.feature_names_in_)

        def write(tmp: Path) -> None:
            writer = TableWriter(tmp, fmt, self.domain_, columns,
                                 compress=path.name.lower().endswith(".gz"))
            bar = tqdm(total=n_samples, unit="rows", unit_scale=True, desc="sampling",
                       disable=not show, leave=False)
            try:
                with contextlib.closing(self._sample_blocks(n_samples, random_state)) as blocks:
                    for chunk in rechunk(blocks, chunk_size):
                        writer.write(chunk)
                        bar.update(len(chunk))
            finally:
                bar.close()
                writer.close()

        atomic_write(path, write)
        return path

    def _sample_blocks(self, n_samples: int, random_state: Any) -> Iterator[pd.DataFrame]:
        """The rows of ``sample(n_samples)`` in blocks of ``SAMPLE_CHUNK``.

        One seeded generator draws the latent rows of each block in turn, so the rows depend
        on the seed and ``n_samples`` only. With several threads (``n_jobs``) the flow runs on
        slices of a block in a pool of Python threads (one torch thread each: no spinning
        threads to collapse on a busy machine) while this thread decodes the previous block;
        slices are whole multiples of the flow's row blocks, so the rows are the same as
        with one thread.
        """
        rs = self.random_state if random_state is None else random_state
        seed = int(check_random_state(rs).randint(0, 2**31 - 1))
        generator = torch.Generator().manual_seed(seed)
        sizes = [min(SAMPLE_CHUNK, n_samples - start)
                 for start in range(0, n_samples, SAMPLE_CHUNK)]
        columns = list(self.feature_names_in_)
        flow = self.flow_
        threads = torch.get_num_threads()  # as n_jobs set it for this call
        # Declared rules, by a per-row repair of the decoded rows (post-processing).
        enforce = Enforcer(self.domain_, mass=released_mass(self.marginals_, self.domain_))

        def draw(size: int) -> torch.Tensor:
            weight = next(flow.conditioner.parameters())
            return torch.randn(size, flow.features, generator=generator, dtype=weight.dtype)

        def decode(z: np.ndarray) -> pd.DataFrame:
            frame = self.type_layer_.reverse_columns(self.encoder_.decode_columns(z))
            return enforce(frame[columns])

        if flow is None:
            for size in sizes:
                yield decode(np.zeros((size, 0)))
            return
        weights = self.category_weights_
        if weights is not None:
            yield from self._rejection_blocks(sizes, draw, decode, generator, weights, threads)
            return
        def finite(z: np.ndarray) -> np.ndarray:
            # A row the flow's float32 arithmetic left non-finite (rare) is drawn again,
            # from the same generator after the block's rows: no row changes otherwise.
            bad = ~np.isfinite(z).all(axis=1)
            while bad.any():
                _warn_non_finite(int(bad.sum()))
                with torch.no_grad():
                    z[bad] = flow.inverse(draw(int(bad.sum()))).double().numpy()
                bad = ~np.isfinite(z).all(axis=1)
            return z

        if threads <= 1 or len(sizes) == 0:
            for size in sizes:
                with torch.no_grad():
                    z = flow.inverse(draw(size))
                yield decode(finite(z.double().numpy()))
            return
        with torch_threads(1), ThreadPoolExecutor(threads) as pool:
            def submit(size: int) -> list:
                # Drawn in block order, on this thread: the same stream.
                return _submit_inverse(pool, flow, draw(size), threads)

            pending = submit(sizes[0])
            for i in range(len(sizes)):
                z = torch.cat([f.result() for f in pending])
                pending = submit(sizes[i + 1]) if i + 1 < len(sizes) else []
                yield decode(finite(z.double().numpy()))

    def _rejection_blocks(self, sizes: list[int], draw: Callable, decode: Callable,
                          generator: torch.Generator, weights: CategoryWeights,
                          threads: int) -> Iterator[pd.DataFrame]:
        """Blocks of ``sizes`` rows of the weighted model: rows of the flow, each kept with
        probability ``min(w, W) / W`` (exact rejection sampling).

        Candidates and their uniforms are drawn in order from the one seeded generator, in
        batches sized from the rows still wanted in all (at most ``SAMPLE_CHUNK``), and the
        flow runs on slices of whole row blocks, so the rows depend on the seed and the
        sizes only, whatever the number of threads. With several threads, the flow of the
        next batch runs in the pool while this thread decodes the block before it.
        """
        flow = self.flow_
        pool = ThreadPoolExecutor(threads) if threads > 1 else None
        acceptance = max(weights.acceptance, 1e-3)
        # Where the weights read only the heads' cells (the usual case), the rejection step
        # runs right after the heads, and the continuous stages only on the kept rows (the
        # same rows, for about 1 / acceptance less of the stages' work).
        early = flow.decides_on_heads(weights.dims)

        def submit(want: int) -> tuple:
            """Draw the candidates for ``want`` more kept rows; start their flow."""
            n = int(min(SAMPLE_CHUNK, want / acceptance * 1.1 + 64))
            base = draw(n)
            uniforms = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
            accept = None
            if early:
                def accept(start: int, x: torch.Tensor) -> torch.Tensor:
                    # In the flow's float32, the cells the decode would locate (exactly).
                    return torch.from_numpy(
                        weights.keep_values(x.numpy(), uniforms[start : start + len(x)]))
            if pool is None:
                return [_done(_inverse(flow, base, accept))], uniforms
            return _submit_inverse(pool, flow, base, threads, accept), uniforms

        def collect(pending: tuple) -> np.ndarray:
            """The kept rows of submitted candidates."""
            parts, uniforms = pending
            y = torch.cat([p.result() for p in parts])
            y = y.double().numpy()
            # A row the flow's float32 arithmetic left non-finite (rare) is rejected.
            ok = np.isfinite(y).all(axis=1)
            spoiled = not ok.all()
            if spoiled:
                _warn_non_finite(int((~ok).sum()))
            if early:  # the weights were applied in the flow
                return y[ok] if spoiled else y
            if spoiled:
                y = np.where(ok[:, None], y, 0.0)
                return y[weights.keep(y, uniforms) & ok]
            return y[weights.keep(y, uniforms)]

        try:
            with torch_threads(1) if pool is not None else contextlib.nullcontext():
                kept = np.zeros((0, flow.features))
                remaining = sum(sizes)  # rows not yet yielded
                pending = submit(remaining) if remaining else None
                for size in sizes:
                    while len(kept) < size:
                        kept = np.concatenate([kept, collect(pending)])
                        # The next batch goes to the pool as soon as this one is in, so the
                        # pool never waits for a decode (the rows still wanted, and so the
                        # batches and the rows, are the same whenever it is drawn).
                        pending = (submit(remaining - len(kept)) if remaining > len(kept)
                                   else None)
                    block, kept = kept[:size], kept[size:]
                    remaining -= size
                    yield decode(block)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    # ---------------------------------------------------------------- score
    @_in_threads
    def score_samples(self, X: Any) -> np.ndarray:
        """Log-density of each row under the model.

        Continuous columns contribute their exact density (through the flow and the
        encoding's Jacobian), given the row's discrete cells; categories, coded integers,
        modes and missing values contribute the probability of their cells: exact with
        ``discrete_model="heads"`` (the heads' probabilities), read at the cell's midpoint
        with ``"dequantized"``. With category weights, ``log min(w, W) - log Z`` is added
        (``Z`` a Monte Carlo estimate). Values outside the declared domain are clipped to it
        first.

        This scores the model **before** the repair that makes samples keep declared rules
        (:mod:`skdpflow.enforcement`): the density of the repaired distribution is not
        computed, and a row breaking a declared rule gets the model's finite score. (The
        repair moves the mass of breaking rows onto rows keeping the rules, so for a row
        keeping them in its discrete columns this is a lower bound.)
        """
        self._check_fitted()
        data = _check_frame(X, min_rows=1)
        check_columns(type(self).__name__, list(data.columns), list(self.feature_names_in_))
        typed = self.type_layer_.transform(data[list(self.feature_names_in_)])
        lo, hi, logjac = self.encoder_.cells(typed)
        z = dequantize(lo, hi, None)  # the cell's midpoint
        if self.flow_ is None:
            log_flow = np.zeros(len(z))
        else:
            # In float64 (the float32 weights convert exactly, and back): a row's score
            # then does not depend on which rows share its batch.
            try:
                with torch.no_grad():
                    log_flow = self.flow_.double().log_prob(
                        torch.as_tensor(z, dtype=torch.float64)).numpy()
            finally:
                self.flow_.float()
        weights = self.category_weights_
        if weights is not None:
            cells = [locate_cells(e, lo[:, d]) for d, e in zip(weights.dims, weights.edges)]
            log_flow = log_flow + weights.log_weights_of_cells(cells) - weights.log_norm
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

        Returns a dict: ``epsilon_spent`` is recomputed here by the ledger from the recorded
        releases (noise multiplier, sampling rate, steps) at the Rényi order it fixed before
        the first release (not copied from the target); ``delta_spent`` adds the
        category-discovery term. ``mechanisms`` lists each release with what it touched, its
        parameters, its nominal share of the budget and the epsilon it would cost alone.
        ``domain`` says, per column, whether its domain was declared public, estimated under
        DP, or read from the data (not covered). ``noise`` says where the noise came from.
        ``post_processing`` lists what was fitted to the released outputs after training
        (the marginal calibration, the category weights): no budget, no row read.
        """
        self._check_fitted()
        derived = list(self.domain_.data_derived)
        estimated = list(self.domain_.estimated)
        report = self.ledger_.report()
        report.update({
            "domain": {
                "declared_public": [c for c in self.feature_names_in_
                                    if c not in derived and c not in estimated],
                "estimated_with_dp": estimated,
                "read_from_data_not_private": derived,
            },
            "row_count": "never released exactly; estimated from the noisy histograms "
                         f"({self.n_rows_estimate_:.1f})",
            "noise": NOISE_SOURCE if report["private"] else "none (epsilon = inf)",
            "guarantee_covers_everything": report["private"] and not derived,
            "post_processing": self._post_processing(),
        })
        return report

    def _post_processing(self) -> list[str]:
        """What was read from the released outputs alone after training (no budget)."""
        out = []
        flow = self.flow_
        if flow is not None and self.steps_ == 0 and flow.heads_shift_continuous:
            out.append("DP-SGD skipped (the model is the copula over the released marginals): "
                       "the continuous features' conditional variances widened so that each "
                       "has variance 1")
        recentred = 0 if flow is None else sum(
            bool(flow.head_bias[lo:hi].any())
            for lo, hi in zip(flow.head_offsets[:-1], flow.head_offsets[1:]))
        if recentred:
            out.append(f"{recentred} of {flow.n_heads} discrete head(s) recentred to their "
                       "released masses")
        if flow is not None and flow.calibrated:
            moved = int(flow.calibration_moved().sum())
            out.append(f"marginal calibration of {moved} numerical dimension(s) to their "
                       "released histograms")
        weights = self.category_weights_
        if weights is not None:
            out.append(f"category weights on {len(weights.dims)} dimension(s) (categories, "
                       f"modes) to their released masses; sampling keeps "
                       f"{weights.acceptance:.0%} of the flow's rows")
        return out

    # ------------------------------------------------------------ save/load
    def save(self, path: str | Path) -> None:
        """Write the fitted model: parameters, public domain, released marginals, weights.

        The file holds no training row, no per-row gradient and no raw statistic: only
        the declared (or data-derived, as reported) domain, the noisy marginals and the
        flow's weights. It loads without executing code (``torch.load(weights_only=True)``).

        The write is atomic: a temporary file in the same folder, moved into place once
        complete, so a failure (or Ctrl-C) never leaves a broken file. An existing file is
        replaced, as ``torch.save`` does (the command line refuses unless ``--force``).

        Raises
        ------
        OutputPathError
            ``path`` is a folder, or its folder is missing or not writable (checked before
            anything is written).
        """
        self._check_fitted()
        path = check_output_path(path, option="path")
        state = _state(self)
        atomic_write(path, lambda tmp: _write_state(state, tmp))

    @classmethod
    def load(cls, path: str | Path) -> DPFlowSynthesizer:
        """Read a model written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            No such file.
        ModelFileError
            ``path`` is not a skdpflow model file (a folder, an empty, truncated or other
            file, a pickle of arbitrary objects, a missing entry) or has another format
            version; a ``ValueError`` naming the file.
        """
        state = read_model_state(path)
        try:
            return _from_state(cls, state)
        except ModelFileError as exc:
            raise ModelFileError(f"{path}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError, IndexError,
                RuntimeError) as exc:
            reason = f"missing entry {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            raise not_a_model(path, reason) from None

    # -------------------------------------------------------------- helpers
    def _check_fitted(self) -> None:
        if not hasattr(self, "encoder_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' first.")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Private fits draw secret noise (never seeded); CUDA kernels may reduce in any
        # order. Only a non-private CPU fit repeats exactly under a seed.
        tags.non_deterministic = math.isfinite(self.epsilon) or self.device == "cuda" or (
            self.device == "auto" and torch.cuda.is_available())
        tags.input_tags.allow_nan = True
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        return tags


def _calibration_knots(edges: list[np.ndarray | None]) -> int:
    """Knots of the marginal calibration: ``CALIBRATION_KNOTS``, or one per inner edge of
    the most binned dimension when it has more (0 when ``CALIBRATION_KNOTS`` is 0)."""
    if not CALIBRATION_KNOTS:
        return 0
    most = max((len(e) - 2 for e in edges if e is not None), default=0)
    return max(CALIBRATION_KNOTS, most)


def _release_is_precise(n_cells: int, info: dict) -> bool:
    """Whether a dim's released masses are precise enough to post-process the flow to: the
    expected TVD the noise alone puts on its ``n_cells`` cells, ``0.5 K sigma sqrt(2 / pi) /
    n_hat``, is at most ``CALIBRATION_MAX_NOISE_TVD``. Public facts only: the noise std,
    the noisy row count and the number of cells."""
    std, n_hat = float(info.get("noise_std", 0.0)), float(info["n_rows_estimate"])
    noise_tvd = 0.5 * n_cells * std * math.sqrt(2 / math.pi) / max(n_hat, 1.0)
    return noise_tvd <= CALIBRATION_MAX_NOISE_TVD


def _precise_release_edges(encoder: TableEncoder, info: dict) -> list[np.ndarray | None]:
    """Per dim, its released bins' edges where the flow is calibrated to them, else None.

    Only the value dims of numerical columns without modes (no missing values, no atoms),
    and only where the release is precise (:func:`_release_is_precise`). Categories and
    modes are left alone: ``score_samples`` reads a discrete cell (and a value dim's whole
    ``[0, 1]`` on a row in a mode) at its midpoint, and calibrated cells there would no
    longer be nearly uniform inside (the score of a 12-cell table summed to 1.16, not 1).
    """
    out: list[np.ndarray | None] = []
    for codec in encoder.codecs:
        if codec.mode_dim is not None:
            out.append(None)
        if codec.value_dim is not None:
            edges = codec.value_dim.cdf
            calibrated = codec.mode_dim is None and _release_is_precise(len(edges) - 1, info)
            out.append(edges.copy() if calibrated else None)
    return out


def _rakeable_dims(encoder: TableEncoder, info: dict) -> dict[int, np.ndarray]:
    """The discrete dims (categories, modes) whose released masses are precise enough to
    rake the flow to (:func:`_release_is_precise`), with their cells' edges."""
    return {j: dim.edges.copy() for j, dim in enumerate(encoder.dims)
            if dim.discrete and _release_is_precise(len(dim.edges) - 1, info)}


def _check_count(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def _slices(n: int, parts: int, unit: int) -> list[tuple[int, int]]:
    """At most ``parts`` consecutive ``(start, stop)`` slices of ``range(n)``, as even as
    possible in whole multiples of ``unit`` rows (the last slice takes the remainder)."""
    units = -(-n // unit)
    per = -(-units // parts)
    return [(lo, min(n, lo + per * unit)) for lo in range(0, n, per * unit)]


def _warn_non_finite(count: int) -> None:
    warnings.warn(f"{count} of the flow's sampled rows were not finite (float32 rounding) and "
                  "were drawn again", RuntimeWarning, stacklevel=4)


def _submit_inverse(pool: ThreadPoolExecutor, flow: SharedConditionerFlow, z: torch.Tensor,
                    threads: int, accept: Callable | None = None) -> list:
    """The flow's inverse of ``z`` in the pool, one future per slice of whole row blocks
    (``accept``: the flow's early rejection step, called with row numbers of ``z``)."""
    return [pool.submit(_inverse, flow, z[lo:hi],
                        None if accept is None else shifted_accept(accept, lo))
            for lo, hi in _slices(len(z), threads, FLOW_SLICE)]


def _done(value: torch.Tensor) -> Future:
    """A future already holding ``value`` (the one-thread path, as the pool's)."""
    future: Future = Future()
    future.set_result(value)
    return future


def _inverse(flow: SharedConditionerFlow, z: torch.Tensor,
             accept: Callable | None = None) -> torch.Tensor:
    with torch.no_grad():  # per thread: autograd's mode is thread-local
        return flow.inverse(z, accept)


def _warn_other_share(domain: Domain, marginals: list, threshold: float | None) -> None:
    """Warn once, naming every estimated column whose released ``<other>`` share is large.

    The shares are read from the released marginals (noisy, post-processed): no statistic
    of the rows beyond them.
    """
    shares = {}
    for name, marginal in zip(domain.columns, marginals):
        other = marginal.spec.other
        if name in domain.estimated and other is not None and domain[name].other == OTHER:
            share = float(marginal.probs[other])
            if share >= OTHER_WARN_SHARE:
                shares[name] = share
    if shares:
        warnings.warn(other_share_message(shares, threshold or 0.0), OtherShareWarning,
                      stacklevel=4)


def _as_declared(domain: Any) -> Domain:
    return as_domain(domain) if domain is not None else Domain()


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
    X = as_records_frame(X)
    if isinstance(X, pd.DataFrame):
        data = X
    elif isinstance(X, list) and X and all(isinstance(row, (list, tuple)) for row in X):
        # Rows of Python values: each column keeps its own types (np.asarray would turn a
        # row mixing numbers and strings into strings everywhere).
        widths = {len(row) for row in X}
        if len(widths) != 1:
            raise ValueError(f"Rows of X have different lengths {sorted(widths)[:5]}: pass "
                             "a rectangular table.")
        data = pd.DataFrame(X)
        data.columns = [f"x{i}" for i in range(data.shape[1])]
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
    repeated = duplicate_names(names)
    if repeated:  # checked first: with a repeated name, data[name] is not one column
        raise InvalidDataError([
            f"column name(s) {repeated} given more than once: each column needs its own name"])
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
            elif series.dropna().map(_is_infinite).any():
                problems.append(f"column {name!r}: holds infinite values")
        if kind == "numerical" and series.notna().any() and not np.isfinite(
                series.dropna().to_numpy(dtype=float)).all():
            problems.append(f"column {name!r}: holds infinite values")
    if problems:
        raise InvalidDataError(problems)
    return data


def _is_infinite(value: Any) -> bool:
    return isinstance(value, (float, np.floating)) and math.isinf(value)


def _state(est: DPFlowSynthesizer) -> dict:
    """Plain containers and tensors only: loads with ``torch.load(weights_only=True)``.

    The parameters without ``random_state``, the domain, the released marginals, the flow's
    config (without its seed) and weights, and the ledger: nothing else.
    """
    params = {k: v for k, v in est.get_params().items() if k != "random_state"}
    return {
        "format": FORMAT_VERSION,
        "params": params,
        "domain": est.domain_.to_dict(),
        "data_derived": list(est.domain_.data_derived),
        "estimated": list(est.domain_.estimated),
        "marginals": [torch.as_tensor(m.probs) for m in est.marginals_],
        "marginals_info": dict(est.marginals_info_),
        "flow": None if est.flow_ is None else {
            "config": dict(est.flow_.config, seed=0),  # the masks travel in the weights
            "state": est.flow_.state_dict()},
        "ledger": est.ledger_.state_dict(),
        "fitted": {
            "noise_multiplier_": est.noise_multiplier_,
            "sample_rate_": est.sample_rate_, "steps_": est.steps_,
            "n_rows_estimate_": est.n_rows_estimate_,
            "copula_info_": dict(est.copula_info_),
            "feature_names_in_": list(est.feature_names_in_),
            "schedule_": est.schedule_.to_dict(),
            "category_weights_": (None if est.category_weights_ is None
                                  else est.category_weights_.to_dict()),
        },
    }


def _write_state(state: dict, path: Path) -> None:
    # Through a file object: torch.save names the archive inside after a path's stem,
    # which is empty for a temporary ".name" file.
    with open(path, "wb") as handle:
        torch.save(state, handle)


def _histogram_specs(domain: Domain, schedule: Schedule) -> list:
    """The bins of every column's released histogram: the declared domain's, at the
    schedule's bin counts (as the fit released them, and as a saved model rebuilds them)."""
    return [histogram_spec(name, domain[name], schedule.histogram_bins, schedule.unit_bins)
            for name in domain.columns]


def _from_state(cls: type, state: dict) -> DPFlowSynthesizer:
    """The estimator that :func:`_state` describes.

    Raises
    ------
    ModelFileError
        Another format version.
    TypeError
        Not a dict.
    ValueError
        Entries missing (naming them).
    """
    if not isinstance(state, dict):
        raise TypeError(f"a model state is a dict, got {type(state).__name__}")
    if state.get("format") != FORMAT_VERSION:
        raise ModelFileError(f"Unsupported model file format {state.get('format')!r} (this "
                             f"version reads format {FORMAT_VERSION}); refit the model.")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"missing entries {missing}")
    from .marginals import ColumnMarginal

    est = cls(**state["params"])
    est.domain_ = Domain.from_dict(state["domain"])
    est.domain_.data_derived = tuple(state["data_derived"])
    est.domain_.estimated = tuple(state["estimated"])
    est.type_layer_ = TypeLayer(est.domain_)
    # A file written before the schedule held unit_bins gets the dataclass's default.
    schedule = Schedule(**state["fitted"]["schedule_"])
    est.marginals_ = [ColumnMarginal(s, p.numpy()) for s, p in
                      zip(_histogram_specs(est.domain_, schedule), state["marginals"])]
    est.marginals_info_ = state["marginals_info"]
    est.encoder_ = TableEncoder(est.domain_, est.marginals_)
    est.flow_ = None
    if state["flow"] is not None:
        est.flow_ = SharedConditionerFlow(**state["flow"]["config"]).float()
        est.flow_.load_state_dict(state["flow"]["state"])
        est.flow_.eval().requires_grad_(False)
    est.ledger_ = PrivacyLedger.from_state_dict(state["ledger"])
    fitted = dict(state["fitted"])
    fitted["schedule_"] = schedule
    if fitted["category_weights_"] is not None:
        fitted["category_weights_"] = CategoryWeights.from_dict(fitted["category_weights_"])
    for key, value in fitted.items():
        setattr(est, key, value)
    est.feature_names_in_ = np.asarray(fitted["feature_names_in_"], dtype=object)
    est.n_features_in_ = len(est.feature_names_in_)
    return est

