"""TSTR AUROC by column group: which columns carry (or lose) the target's signal.

Fits bank_marketing's 10,000-row subsample (the suite's rows and public domain) at epsilon 1
with both discrete models, samples as many rows, and trains a HistGradientBoosting model on
the samples with all columns, the numerical ones, the categorical ones, ``duration`` (the
strongest predictor) alone, and the categorical ones with ``duration``; each is scored on
the suite's 2,000 held-out real rows. The real train rows give the ceiling::

    OMP_NUM_THREADS=1 python benchmarks/tstr_by_columns.py --seeds 0 1
"""

from __future__ import annotations

import argparse

import pandas as pd
import suite
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="bank_marketing")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--strongest", default="duration")
    args = parser.parse_args()
    torch.set_num_threads(1)

    train, test, target = suite.load(args.dataset, args.rows, 2000)
    domain = suite.public_domain(args.dataset)
    cats = [c for c in train.columns
            if c != target and domain[c].type in ("categorical", "boolean")]
    nums = [c for c in train.columns if c != target and c not in cats]
    positive = str(test[target].value_counts().index[-1])  # the minority class

    def codes(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
        out = frame[cols].copy()
        for c in cols:
            if c in cats:
                levels = [str(v) for v in domain[c].categories]
                out[c] = pd.Categorical(out[c].astype(str), categories=levels).codes
        return out

    def tstr(frame: pd.DataFrame, cols: list[str]) -> float:
        model = HistGradientBoostingClassifier(
            random_state=0, categorical_features=[i for i, c in enumerate(cols) if c in cats]
            or None)
        model.fit(codes(frame, cols), frame[target].astype(str) == positive)
        scores = model.predict_proba(codes(test, cols))[:, 1]
        return roc_auc_score(test[target].astype(str) == positive, scores)

    groups = {"all": cats + nums, "numerical": nums, "categorical": cats,
              args.strongest: [args.strongest], f"categorical + {args.strongest}":
              cats + [args.strongest]}

    def report(name: str, frame: pd.DataFrame) -> None:
        print(f"{name:16s} " + "  ".join(f"{g} {tstr(frame, cols):.3f}"
                                         for g, cols in groups.items()), flush=True)

    report("real rows", train)
    for seed in args.seeds:
        for model in ("heads", "dequantized"):
            report(f"{model}, seed {seed}", suite.fit_skdpflow(
                train, domain, 1.0, seed, {"n_jobs": 1, "discrete_model": model}))


if __name__ == "__main__":
    main()
