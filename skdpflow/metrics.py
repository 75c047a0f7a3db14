"""Utility metrics for synthetic tables: marginal distances, contingency similarity,
association, SDMetrics quality, train-synthetic-test-real (TSTR) scores, and the consistency
of declared rules.

Every function compares rows with rows: none is private. Column kinds (``"numerical"``,
``"categorical"``, ``"boolean"``, ``"datetime"``) come from a domain when one is given,
otherwise from the real table's dtypes (:func:`column_kinds`).
"""

from __future__ import annotations

import warnings
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from .domain import as_domain, canonical, column_kind

__all__ = [
    "MISSING",
    "association_matrix",
    "column_kinds",
    "consistency",
    "contingency_similarity",
    "cramers_v",
    "discretise",
    "labels",
    "marginal_tvd",
    "mean_tvd",
    "quality_score",
    "tstr_floor",
    "tstr_scores",
]

# The level a missing value takes in a discretised column.
MISSING = "(missing)"
# A numerical target with more distinct values than this is scored as a regression.
MAX_CLASSES = 20
# HistGradientBoosting's native categorical support takes at most this many levels.
MAX_HGB_CATEGORIES = 255
# L2 penalty on HistGradientBoosting's leaf values for targets of more than two classes.
# Without it the multinomial fit diverges when classes of a handful of rows sit on exact
# feature values (KDD Cup 99: training accuracy 0.51, real-data AUROC 0.49); 1.0 brings
# that table to 0.999. Binary targets keep the default (no penalty).
MULTICLASS_L2 = 1.0


def column_kinds(real: pd.DataFrame, domain: Any = None) -> dict[str, str]:
    """Each column's kind: its declared type when ``domain`` declares it, else its dtype's."""
    declared = as_domain(domain).columns if domain is not None else {}
    kinds = {}
    for col in real.columns:
        if col in declared:
            kinds[col] = declared[col].type
        else:
            try:
                kinds[col] = column_kind(real[col])
            except TypeError:
                kinds[col] = "categorical"
    return kinds


def labels(series: pd.Series) -> pd.Series:
    """Category labels: canonical strings (``1``, ``1.0`` and ``"1"`` are one level), missing
    values as :data:`MISSING` (``None`` and NaN are one level)."""
    def one(value: Any) -> str:
        try:
            missing = bool(pd.isna(value))
        except (TypeError, ValueError):
            missing = False
        if missing:
            return MISSING
        try:
            return canonical(value)
        except TypeError:
            return str(value)

    # each distinct value named once; as text first, since factorize holds True == 1
    keys = series.astype(str) if series.dtype == object else series
    codes, _ = pd.factorize(keys.where(series.notna()), use_na_sentinel=True)
    present, first = np.unique(codes, return_index=True)
    values = series.to_numpy()[first[present >= 0]]
    names = np.array([one(v) for v in values] + [MISSING], dtype=object)
    return pd.Series(names[codes], index=series.index, name=series.name, dtype=object)


def _as_number(series: pd.Series, kind: str) -> pd.Series:
    """Numbers (datetimes as days since the epoch), unreadable cells as NaN."""
    if kind == "datetime":
        stamps = pd.to_datetime(series, errors="coerce")
        days = (stamps - pd.Timestamp(0)) / pd.Timedelta(days=1)
        return days.astype(float)
    return pd.to_numeric(series, errors="coerce").astype(float)


def discretise(real: pd.DataFrame, other: pd.DataFrame, bins: int = 20,
               kinds: dict[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables as text levels, on bins learned from ``real``.

    Numerical and datetime columns with more than ``bins`` distinct values fall on the real
    data's quantile bins (missing values as their own level); every other column becomes its
    :func:`labels`.
    """
    kinds = kinds or column_kinds(real)
    r_out, o_out = {}, {}
    for col in real.columns:
        r, o, kind = real[col], other[col], kinds[col]
        if kind in ("numerical", "datetime") and r.nunique() > bins:
            r_num, o_num = _as_number(r, kind), _as_number(o, kind)
            edges = np.unique(np.nanquantile(r_num, np.linspace(0, 1, bins + 1)))
            edges[0], edges[-1] = -np.inf, np.inf
            r_out[col] = _codes(pd.cut(r_num, edges, labels=False))
            o_out[col] = _codes(pd.cut(o_num, edges, labels=False))
        else:
            r_out[col], o_out[col] = labels(r), labels(o)
    return pd.DataFrame(r_out), pd.DataFrame(o_out)


def _codes(binned: pd.Series) -> pd.Series:
    return binned.astype(float).fillna(-1).astype(int).astype(str)


def marginal_tvd(real: pd.DataFrame, other: pd.DataFrame, order: int = 1, bins: int = 20,
                 kinds: dict[str, str] | None = None) -> dict[tuple[str, ...], float]:
    """Total variation distance of every ``order``-way marginal (0 = equal, 1 = disjoint).

    TVD(p, q) = 1/2 sum_x |p(x) - q(x)| over the cells of :func:`discretise`.
    """
    r, o = discretise(real, other[list(real.columns)], bins, kinds)
    out = {}
    for cols in combinations(real.columns, order):
        key = list(cols)
        p = r.groupby(key).size() / len(r)
        q = o.groupby(key).size() / len(o)
        out[cols] = 0.5 * float(p.subtract(q, fill_value=0).abs().sum())
    return out


def mean_tvd(real: pd.DataFrame, other: pd.DataFrame, order: int = 1, bins: int = 20,
             kinds: dict[str, str] | None = None) -> float:
    """Mean of :func:`marginal_tvd` over all column sets of that order (NaN if none)."""
    values = list(marginal_tvd(real, other, order, bins, kinds).values())
    return float(np.mean(values)) if values else float("nan")


def contingency_similarity(real: pd.DataFrame, other: pd.DataFrame, bins: int = 20,
                           kinds: dict[str, str] | None = None) -> pd.Series:
    """SDMetrics-style contingency similarity of every column pair, worst first.

    1 - TVD of the pair's 2-way distribution (SDMetrics' ``ContingencySimilarity``), on the
    cells of :func:`discretise` (numerical and datetime columns on ``bins`` quantile bins of
    ``real``, missing values a level of their own): 1 = identical, 0 = disjoint. Indexed
    ``"a x b"`` in column order.
    """
    pairs = marginal_tvd(real, other, 2, bins, kinds)
    return _pair_series({k: 1.0 - v for k, v in pairs.items()}).sort_values(kind="stable")


def _pair_series(values: dict[tuple[str, ...], float]) -> pd.Series:
    return pd.Series({f"{a} x {b}": v for (a, b), v in values.items()}, dtype=float)


def consistency(frame: pd.DataFrame, rules: Any) -> pd.Series:
    """The share of rows of ``frame`` that keep each rule (:mod:`skdpflow.constraints`).

    Parameters
    ----------
    frame : DataFrame
    rules : Rule, dict, list of them, or path of a JSON/YAML list
        Rows with a missing value in a rule's columns keep it.

    Returns
    -------
    Series
        Shares in [0, 1] (NaN for a table without rows), indexed by each rule's ``repr``
        (a repr shared by two rules gets `` #2``, `` #3``... on the later ones).

    Raises
    ------
    ValueError
        A bad rule, or a rule naming a column the table lacks.

    Examples
    --------
    >>> from skdpflow import Implication
    >>> frame = pd.DataFrame({"relationship": ["Husband", "Husband", "Wife", "Wife"],
    ...                       "sex": ["Male", "Female", "Female", None]})
    >>> consistency(frame, [Implication("relationship", ["Husband"], "sex", ["Male"])])
    Implication('relationship' in ['Husband'] -> 'sex' in ['Male'])    0.75
    Name: consistency, dtype: float64
    """
    from .constraints import as_rules

    out: dict[str, float] = {}
    for rule in as_rules(rules):
        keep = rule.satisfied(frame)
        name, k = repr(rule), 1
        while name in out:
            k += 1
            name = f"{rule!r} #{k}"
        out[name] = float(keep.mean()) if len(keep) else float("nan")
    return pd.Series(out, dtype=float, name="consistency")


def cramers_v(a: pd.Series, b: pd.Series) -> float:
    """Cramér's V of two discrete columns, in [0, 1] (0 = independent in the sample).

    V = sqrt(chi2 / (n (min(r, c) - 1))) for an r x c contingency table (Cramér, 1946),
    without bias correction; 0 when either column holds one level.
    """
    table = pd.crosstab(a, b).to_numpy(dtype=float)
    n = table.sum()
    k = min(table.shape) - 1
    if k < 1 or n == 0:
        return 0.0
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return float(np.sqrt(min(chi2 / (n * k), 1.0)))


def association_matrix(discrete: pd.DataFrame) -> pd.DataFrame:
    """Cramér's V of every pair of columns of a discretised table (1 on the diagonal)."""
    cols = list(discrete.columns)
    out = pd.DataFrame(np.eye(len(cols)), index=cols, columns=cols)
    for a, b in combinations(cols, 2):
        out.loc[a, b] = out.loc[b, a] = cramers_v(discrete[a], discrete[b])
    return out


def quality_score(real: pd.DataFrame, other: pd.DataFrame,
                  kinds: dict[str, str] | None = None) -> float:
    """SDMetrics ``QualityReport`` score (column shapes and pair trends), in [0, 1].

    Raises
    ------
    ImportError
        If SDMetrics is not installed (``pip install skdpflow[bench]``).
    """
    with warnings.catch_warnings():  # its deprecation notice; the numbers are the benchmark's
        warnings.simplefilter("ignore", FutureWarning)
        from sdmetrics.reports.single_table import QualityReport

    kinds = kinds or column_kinds(real)
    sdtypes = {"numerical": "numerical", "datetime": "datetime"}
    metadata = {"columns": {c: {"sdtype": sdtypes.get(kinds[c], "categorical")}
                            for c in real.columns}}
    report = QualityReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report.generate(real, other[list(real.columns)], metadata, verbose=False)
        return float(report.get_score())  # NaN for one column: no pair trends


def is_classification(real: pd.DataFrame, target: str, kinds: dict[str, str]) -> bool:
    """A categorical or boolean target, or a numerical one with few distinct values."""
    return kinds[target] != "numerical" or real[target].nunique() <= MAX_CLASSES


def tstr_scores(train: pd.DataFrame, test: pd.DataFrame, target: str,
                kinds: dict[str, str] | None = None) -> dict[str, float]:
    """Train on ``train`` (synthetic or real rows), score on the real ``test`` rows.

    Two models: a ``HistGradientBoosting`` model with native categorical support and a
    linear model on one-hot categories and standardised numbers. A classification target
    gives ``auroc_*`` and ``accuracy_*``; a numerical target with more than
    :data:`MAX_CLASSES` values gives ``r2_*``. AUROC of a binary target takes the greater
    label as the positive class; beyond two classes it is the one-vs-rest macro average
    (each class the test rows hold against the rest, unweighted), and the boosting model
    gets an L2 penalty (:data:`MULTICLASS_L2`) so that rare classes do not make it diverge.
    """
    kinds = kinds or column_kinds(test)
    features = [c for c in test.columns if c != target]
    x_train, x_test = _features(train, test, features, kinds)
    if is_classification(test, target, kinds):
        return _classify(x_train, labels(train[target]), x_test, labels(test[target]))
    return _regress(x_train, _as_number(train[target], kinds[target]),
                    x_test, _as_number(test[target], kinds[target]))


def tstr_floor(real: pd.DataFrame, test: pd.DataFrame, target: str,
               kinds: dict[str, str] | None = None) -> dict[str, float]:
    """What a constant prediction scores: the majority class of ``real`` (AUROC 0.5), or its
    mean for a regression target."""
    kinds = kinds or column_kinds(test)
    if is_classification(test, target, kinds):
        y_test = labels(test[target])
        acc = float((y_test == labels(real[target]).mode().iloc[0]).mean())
        auc = 0.5 if y_test.nunique() > 1 else float("nan")
        return {"auroc_hgb": auc, "auroc_logreg": auc, "accuracy_hgb": acc,
                "accuracy_logreg": acc}
    y = _as_number(test[target], kinds[target]).dropna()
    mean = float(_as_number(real[target], kinds[target]).mean())
    r2 = 1 - float(((y - mean) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    return {"r2_hgb": r2, "r2_linear": r2}


def _features(train: pd.DataFrame, test: pd.DataFrame, features: list[str],
              kinds: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Numbers as floats, categories as pandas ``Categorical`` on the levels of both tables
    (the most frequent ones if there are too many for HistGradientBoosting)."""
    x_train, x_test = {}, {}
    for c in features:
        if kinds[c] in ("numerical", "datetime"):
            x_train[c], x_test[c] = _as_number(train[c], kinds[c]), _as_number(test[c], kinds[c])
            continue
        a, b = labels(train[c]), labels(test[c])
        levels = sorted(set(a) | set(b))
        if len(levels) > MAX_HGB_CATEGORIES:
            levels = sorted(pd.concat([a, b]).value_counts().index[:MAX_HGB_CATEGORIES])
        x_train[c] = pd.Categorical(a, categories=levels)
        x_test[c] = pd.Categorical(b, categories=levels)
    return (pd.DataFrame(x_train, index=train.index)[features],
            pd.DataFrame(x_test, index=test.index)[features])


def _linear_preprocessing(x: pd.DataFrame) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    cats = [c for c in x.columns if isinstance(x[c].dtype, pd.CategoricalDtype)]
    nums = [c for c in x.columns if c not in cats]
    return ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), nums),
        ("cat", OneHotEncoder(handle_unknown="ignore"), cats)])


def _as_text(x: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as plain text for the one-hot encoder (levels outside the kept
    set are missing in ``x``, and one-hot ignores them)."""
    return x.astype({c: object for c in x.columns if isinstance(x[c].dtype, pd.CategoricalDtype)})


def _classify(x_train: pd.DataFrame, y_train: pd.Series, x_test: pd.DataFrame,
              y_test: pd.Series) -> dict[str, float]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if y_train.nunique() < 2:  # a constant prediction: ranks nothing
        acc = float((y_test == y_train.iloc[0]).mean()) if len(y_train) else float("nan")
        return {"auroc_hgb": 0.5, "auroc_logreg": 0.5, "accuracy_hgb": acc,
                "accuracy_logreg": acc}
    l2 = MULTICLASS_L2 if y_train.nunique() > 2 else 0.0
    # Above 10,000 rows HGB stops early on a stratified validation split, which a class of
    # one training row breaks (a rare label of a large synthetic sample): no early stop then.
    early = "auto" if y_train.value_counts().min() >= 2 else False
    hgb = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0,
                                         l2_regularization=l2, early_stopping=early)
    logreg = make_pipeline(_linear_preprocessing(x_train), LogisticRegression(max_iter=2000))
    out = {}
    for name, model, xa, xb in [("hgb", hgb, x_train, x_test),
                                ("logreg", logreg, _as_text(x_train), _as_text(x_test))]:
        model.fit(xa, y_train)
        proba = model.predict_proba(xb)
        out[f"auroc_{name}"] = _auroc(y_test, proba, list(model.classes_))
        out[f"accuracy_{name}"] = float((model.predict(xb) == y_test.to_numpy()).mean())
    return {k: out[k] for k in ("auroc_hgb", "auroc_logreg", "accuracy_hgb",
                                "accuracy_logreg")}


def _auroc(y_test: pd.Series, proba: np.ndarray, classes: list) -> float:
    """AUROC of class probabilities on the test labels.

    Binary: the greater label is the positive class. More classes: the one-vs-rest macro
    average, mean over the classes the test rows hold of the AUROC of that class's
    probability against all other rows (a class the model never saw scores 0.5). Computed
    class by class on the raw probabilities: nothing is renormalised, so ties stay ties.
    """
    from sklearn.metrics import roc_auc_score

    held = sorted(y_test.unique())
    if len(held) < 2:
        return float("nan")
    truth = y_test.to_numpy()

    def one(c: Any) -> float:
        score = proba[:, classes.index(c)] if c in classes else np.zeros(len(proba))
        return float(roc_auc_score(truth == c, score))

    if len(held) == 2:
        return one(held[1])
    return float(np.mean([one(c) for c in held]))


def _regress(x_train: pd.DataFrame, y_train: pd.Series, x_test: pd.DataFrame,
             y_test: pd.Series) -> dict[str, float]:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline

    keep, kept = y_train.notna().to_numpy(), y_test.notna().to_numpy()
    hgb = HistGradientBoostingRegressor(categorical_features="from_dtype", random_state=0)
    linear = make_pipeline(_linear_preprocessing(x_train), Ridge())
    out = {}
    for name, model, xa, xb in [("hgb", hgb, x_train, x_test),
                                ("linear", linear, _as_text(x_train), _as_text(x_test))]:
        model.fit(xa[keep], y_train[keep])
        out[f"r2_{name}"] = float(r2_score(y_test[kept], model.predict(xb[kept])))
    return out
