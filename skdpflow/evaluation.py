"""How close synthetic rows are to the real ones: :func:`evaluate` and its result.

**Not private.** Every number here compares the real rows with the synthetic ones (and with
a real test split), so the result, its table and its HTML report are statistics of the
private data without noise. Share them only with those allowed to see the real data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import metrics
from ._validation import InvalidDataError
from .domain import as_domain

__all__ = ["CAUTION", "ColumnDistribution", "EvaluationResult", "evaluate"]

CAUTION = ("NOT PRIVATE: this evaluation compares the real rows with the synthetic ones; it is "
           "a statistic of the private data without noise. Share it only with those allowed "
           "to see the real data.")
# Bins of the per-column histograms, and levels shown before the rest are pooled.
HIST_BINS, TOP_LEVELS = 30, 20
# Bins for the association heatmaps (Cramér's V on discretised columns).
ASSOCIATION_BINS = 10
# Which way each score improves.
BETTER = {"tvd_1way": "lower", "tvd_2way": "lower", "quality": "higher"}
# Column pairs listed by their contingency similarity, worst first.
WORST_PAIRS = 5
# The scores table names a rule's consistency row with this prefix and the rule's repr.
CONSISTENCY = "consistency: "


@dataclass(frozen=True)
class ColumnDistribution:
    """One column's real and synthetic distributions, ready to plot.

    ``real`` and ``synthetic`` are shares of all rows per bin or level (missing values
    apart: ``real_missing`` and ``synthetic_missing``). Numerical and datetime columns have
    ``edges`` (``len(labels) + 1``; days since 1970 for datetimes); other columns' levels are
    the real data's most frequent ones, the rest pooled as ``(other)``.
    """

    kind: str
    labels: list[str]
    real: np.ndarray
    synthetic: np.ndarray
    real_missing: float
    synthetic_missing: float
    tvd: float
    edges: np.ndarray | None = None


@dataclass
class EvaluationResult:
    """What :func:`evaluate` measured (not private: see :data:`CAUTION`).

    Attributes
    ----------
    scores : DataFrame
        One row per metric; columns ``synthetic``, ``real_data`` (the same metric for real
        rows: the real train rows against the test split, the ceiling), ``floor`` (a
        constant prediction: the majority class, AUROC 0.5) and ``better`` (``"lower"`` or
        ``"higher"``).
    columns : DataFrame
        Per column: ``kind``, ``tvd`` (1-way), ``real_missing``, ``synthetic_missing``.
    pairs : Series
        2-way TVD of every column pair, worst first.
    worst_pairs : DataFrame
        The five column pairs of lowest contingency similarity (1 - their 2-way TVD, as
        SDMetrics' ``ContingencySimilarity``), worst first, indexed ``"a x b"``: column
        ``synthetic`` (real vs synthetic rows) and ``real_data`` (the real rows vs the test
        split, the ceiling; NaN without ``test``).
    consistency : DataFrame or None
        With ``rules``: per rule (indexed by its ``repr``), the share of ``real`` rows
        (column ``real``) and of synthetic rows (``synthetic``) that keep it. The same
        figures are the scores table's ``consistency: <rule>`` rows (``real_data`` being
        the real rows' share).
    distributions : dict of str to ColumnDistribution
    association_real, association_synthetic : DataFrame
        Cramér's V of every column pair, on columns discretised to 10 bins.
    privacy : dict or None
        The model's ``privacy_report()`` when a model was given.
    n_rows : dict
        Row counts of ``real``, ``synthetic`` and ``test``.
    target : str or None
    notes : list of str
        What could not be computed, and why.
    """

    scores: pd.DataFrame
    columns: pd.DataFrame
    pairs: pd.Series
    distributions: dict[str, ColumnDistribution]
    association_real: pd.DataFrame
    association_synthetic: pd.DataFrame
    worst_pairs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["synthetic", "real_data"], dtype=float))
    consistency: pd.DataFrame | None = None
    privacy: dict | None = None
    n_rows: dict[str, int | None] = field(default_factory=dict)
    target: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """The scores table (a copy): one row per metric, then one per rule."""
        return self.scores.copy()

    def __repr__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        """The scores as a text table, with the caution, the worst columns and the worst
        column pairs."""
        n = self.n_rows
        head = (f"EvaluationResult: {n['real']:,} real rows, {n['synthetic']:,} synthetic rows"
                + (f", {n['test']:,} test rows" if n.get("test") else "")
                + (f", target {self.target!r}" if self.target else ""))
        plain = [not str(i).startswith(CONSISTENCY) for i in self.scores.index]
        table = self.scores.loc[plain].to_string(na_rep="", float_format=lambda v: f"{v:.3f}")
        worst = self.columns["tvd"].sort_values(ascending=False).head(3)
        lines = [head, CAUTION, "", table, "",
                 "worst columns (1-way TVD): "
                 + ", ".join(f"{k} {v:.3f}" for k, v in worst.items())]
        if len(self.worst_pairs):
            ceiling = self.worst_pairs["real_data"].notna().any()
            lines.append("worst pairs (contingency similarity, synthetic"
                         + (" / real data" if ceiling else "") + "): " + ", ".join(
                             f"{k} {row.synthetic:.3f}"
                             + (f" / {row.real_data:.3f}" if ceiling else "")
                             for k, row in zip(self.worst_pairs.index,
                                               self.worst_pairs.itertuples())))
        if self.consistency is not None:
            lines.append("rules kept (share of rows, real / synthetic):")
            lines += [f"  {row.real:.3f} / {row.synthetic:.3f}  {name}"
                      for name, row in zip(self.consistency.index,
                                           self.consistency.itertuples())]
        return "\n".join(lines + [f"note: {note}" for note in self.notes])

    def to_html(self) -> str:
        """A self-contained HTML report (needs matplotlib: ``pip install skdpflow[report]``)."""
        from .report import render_html

        return render_html(self)

    def save_html(self, path: str | Path) -> None:
        """Write :meth:`to_html` to ``path``, atomically."""
        from ._io import atomic_write, check_output_path

        path = check_output_path(path, option="path")
        text = self.to_html()
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def evaluate(real: pd.DataFrame, synthetic: pd.DataFrame, *, test: pd.DataFrame | None = None,
             target: str | None = None, domain: Any = None, model: Any = None,
             rules: Any = None) -> EvaluationResult:
    """Compare synthetic rows with the real ones: marginals, association, TSTR.

    Not private: the result compares real and synthetic rows (see :data:`CAUTION`).

    Parameters
    ----------
    real : DataFrame
        The real rows the synthesizer was fitted on.
    synthetic : DataFrame
        Synthetic rows, with (at least) the columns of ``real``.
    test : DataFrame, default=None
        Real rows held out from the fit. With it, ``real_data`` scores compare ``real``
        with ``test`` (the sampling noise between two real samples: the ceiling).
    target : str, default=None
        A column to predict, train-synthetic-test-real (needs ``test``): AUROC and
        accuracy of a HistGradientBoosting and a logistic-regression classifier, or R² for a
        numerical target with more than 20 values; with the real-data ceiling and the
        constant-prediction floor.
    domain : Domain, dict, path or SDV metadata, default=None
        Column types (``categorical`` columns holding numbers are then compared as
        categories). Default: the model's domain, else the dtypes of ``real``.
    model : DPFlowSynthesizer or path, default=None
        A fitted model (or its file): its ``privacy_report()`` joins the result.
    rules : list of Rule (or their dicts), or path, default=None
        Public rules between columns (:mod:`skdpflow.constraints`): the share of real and
        of synthetic rows keeping each joins the scores. Rules whose columns the domain
        declares are checked against it (:meth:`~skdpflow.constraints.Rule.validate`).
        Default: the rules the domain declares (``domain.constraints``, or the model's).

    Returns
    -------
    EvaluationResult

    Raises
    ------
    InvalidDataError
        Listing every problem: a table that is empty or not a DataFrame, columns missing
        from ``synthetic`` or ``test``, a ``target`` that is not a column, a rule naming a
        column that is not one.
    ValueError
        ``target`` given without ``test``; a bad rule, or one the domain contradicts.

    Notes
    -----
    Numerical columns are compared on 20 quantile bins of ``real``; the 2-way TVD, the
    contingency similarity and the association cover every pair of columns, so their cost
    grows with the square of the number of columns (subsample very large tables first).

    Examples
    --------
    >>> result = evaluate(train, fake, test=test, target="income")  # doctest: +SKIP
    >>> result.to_frame()  # doctest: +SKIP
    >>> result.save_html("report.html")  # doctest: +SKIP
    """
    if target is not None and test is None:
        raise ValueError("'target' needs a 'test' split of real rows to score on; pass "
                         "test= as well.")
    from .constraints import as_rules

    if isinstance(model, (str, Path)):
        from .synthesizer import DPFlowSynthesizer

        model = DPFlowSynthesizer.load(model)
    if rules is None:  # the declared rules, if any
        declared_domain = domain if domain is not None else getattr(model, "domain_", None)
        if declared_domain is not None:
            rules = list(as_domain(declared_domain).constraints)
    rules = as_rules(rules)
    _check_tables(real, synthetic, test, target, rules)
    privacy = model.privacy_report() if model is not None else None
    if domain is None and model is not None:
        domain = model.domain_
    kinds = metrics.column_kinds(real, domain)
    if domain is not None:
        declared = as_domain(domain)
        for rule in rules:
            if all(c in declared for c in rule.columns):
                rule.validate(declared)
    cols = list(real.columns)
    synthetic = synthetic[cols]
    test = test[cols] if test is not None else None

    pair_tvd = {"synthetic": metrics.marginal_tvd(real, synthetic, 2, kinds=kinds),
                "real_data": metrics.marginal_tvd(real, test, 2, kinds=kinds)
                if test is not None else None}
    scores, notes = _scores(real, synthetic, test, target, kinds, pair_tvd)
    consistency = None
    if rules:
        consistency = pd.DataFrame({"real": metrics.consistency(real, rules),
                                    "synthetic": metrics.consistency(synthetic, rules)})
        consistency.index.name = "rule"
        rows = pd.DataFrame({"synthetic": consistency["synthetic"],
                             "real_data": consistency["real"], "floor": np.nan,
                             "better": "higher"})
        rows.index = [CONSISTENCY + name for name in consistency.index]
        scores = pd.concat([scores, rows.rename_axis(scores.index.name)])
    tvd = {k[0]: v for k, v in metrics.marginal_tvd(real, synthetic, 1, kinds=kinds).items()}
    disc_real, disc_syn = metrics.discretise(real, synthetic, ASSOCIATION_BINS, kinds)
    return EvaluationResult(
        scores=scores,
        columns=pd.DataFrame({
            "kind": pd.Series(kinds), "tvd": pd.Series(tvd),
            "real_missing": real.isna().mean(), "synthetic_missing": synthetic.isna().mean(),
        }).loc[cols],
        pairs=metrics._pair_series(pair_tvd["synthetic"]).sort_values(ascending=False),
        worst_pairs=_worst_pairs(pair_tvd),
        consistency=consistency,
        distributions={c: distribution(real[c], synthetic[c], kinds[c], tvd[c]) for c in cols},
        association_real=metrics.association_matrix(disc_real),
        association_synthetic=metrics.association_matrix(disc_syn),
        privacy=privacy,
        n_rows={"real": len(real), "synthetic": len(synthetic),
                "test": len(test) if test is not None else None},
        target=target, notes=notes)


def _check_tables(real: Any, synthetic: Any, test: Any, target: str | None,
                  rules: list | None = None) -> None:
    problems = []
    for name, frame in [("real", real), ("synthetic", synthetic), ("test", test)]:
        if name == "test" and frame is None:
            continue
        if not isinstance(frame, pd.DataFrame):
            problems.append(f"'{name}' must be a pandas DataFrame, got {type(frame).__name__}")
        elif len(frame) == 0:
            problems.append(f"'{name}' has no rows")
    if problems:
        raise InvalidDataError(problems)
    for name, frame in [("synthetic", synthetic), ("test", test)]:
        if frame is not None:
            missing = [c for c in real.columns if c not in frame.columns]
            if missing:
                problems.append(f"'{name}' lacks column(s) {missing} of the real table")
    if target is not None and target not in real.columns:
        problems.append(f"target {target!r} is not a column of the real table")
    for rule in rules or []:
        lacking = [c for c in rule.columns if c not in real.columns]
        if lacking:
            problems.append(f"rule {rule!r} names column(s) {lacking} that the real table "
                            "lacks")
    if problems:
        raise InvalidDataError(problems)


def _scores(real: pd.DataFrame, synthetic: pd.DataFrame, test: pd.DataFrame | None,
            target: str | None, kinds: dict[str, str], pair_tvd: dict
            ) -> tuple[pd.DataFrame, list[str]]:
    """The scores table: marginals, quality, then TSTR (synthetic, real ceiling, floor).

    ``pair_tvd``: the 2-way TVD of every pair, of the synthetic rows and of the test split
    (None without one), computed once for the mean and the worst pairs.
    """
    rows, notes = {}, []
    rows["tvd_1way"] = {"synthetic": metrics.mean_tvd(real, synthetic, 1, kinds=kinds),
                        "real_data": metrics.mean_tvd(real, test, 1, kinds=kinds)
                        if test is not None else np.nan}
    rows["tvd_2way"] = {name: float(np.mean(list(values.values())))
                        if values else np.nan for name, values in pair_tvd.items()}
    try:
        rows["quality"] = {"synthetic": metrics.quality_score(real, synthetic, kinds),
                           "real_data": metrics.quality_score(real, test, kinds)
                           if test is not None else np.nan}
    except ImportError:
        notes.append("SDMetrics is not installed: no quality score (pip install sdmetrics)")
    if target is not None:
        syn = metrics.tstr_scores(synthetic, test, target, kinds)
        ceiling = metrics.tstr_scores(real, test, target, kinds)
        floor = metrics.tstr_floor(real, test, target, kinds)
        for name in syn:
            rows[name] = {"synthetic": syn[name], "real_data": ceiling[name],
                          "floor": floor[name]}
    frame = pd.DataFrame.from_dict(rows, orient="index",
                                   columns=["synthetic", "real_data", "floor"]).astype(float)
    frame["better"] = [BETTER.get(name, "higher") for name in frame.index]
    frame.index.name = "metric"
    return frame, notes


def _worst_pairs(pair_tvd: dict) -> pd.DataFrame:
    """The :data:`WORST_PAIRS` pairs of lowest contingency similarity (1 - 2-way TVD)."""
    similarity = {name: metrics._pair_series({k: 1.0 - v for k, v in values.items()})
                  for name, values in pair_tvd.items() if values is not None}
    frame = pd.DataFrame(similarity).reindex(columns=["synthetic", "real_data"]).astype(float)
    frame.index.name = "pair"
    return frame.sort_values("synthetic", kind="stable").head(WORST_PAIRS)


def distribution(real: pd.Series, synthetic: pd.Series, kind: str, tvd: float = np.nan
                 ) -> ColumnDistribution:
    """Shares of all rows per histogram bin (numbers, datetimes) or per level (categories,
    the :data:`TOP_LEVELS` most frequent in ``real``, the rest pooled), missing apart."""
    missing = (float(real.isna().mean()), float(synthetic.isna().mean()))
    if kind in ("numerical", "datetime"):
        r = metrics._as_number(real, kind).dropna()
        s = metrics._as_number(synthetic, kind).dropna()
        both = pd.concat([r, s])
        low, high = (np.nanquantile(both, [0.005, 0.995]) if len(both) else (0.0, 1.0))
        if not high > low:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, HIST_BINS + 1)
        # values beyond the 0.5% tails fall in the edge bins, so the shares add up
        r_counts = np.histogram(np.clip(r, low, high), edges)[0] / max(len(real), 1)
        s_counts = np.histogram(np.clip(s, low, high), edges)[0] / max(len(synthetic), 1)
        names = [f"{a:.4g}" for a in edges[:-1]]
        return ColumnDistribution(kind, names, r_counts, s_counts, *missing, tvd, edges)
    r, s = metrics.labels(real), metrics.labels(synthetic)
    counts = r[r != metrics.MISSING].value_counts()
    top = list(counts.index[:TOP_LEVELS])
    levels = top + (["(other)"] if len(counts) > TOP_LEVELS or (~s.isin(top + [
        metrics.MISSING])).any() else [])

    def shares(x: pd.Series) -> np.ndarray:
        pooled = x.where(x.isin(top) | (x == metrics.MISSING), "(other)")
        return pooled.value_counts().reindex(levels, fill_value=0).to_numpy() / max(len(x), 1)

    return ColumnDistribution(kind, [str(v) for v in levels], shares(r), shares(s), *missing,
                              tvd)
