"""Train on synthetic, test on real: a scikit-learn Pipeline fitted on skdpflow's rows.

The data holder fits a DP synthesizer on the private Adult training split (public domain
declared), releases synthetic rows, and an analyst trains an ordinary scikit-learn model
(ColumnTransformer + LogisticRegression) on those rows only; it is scored on the real
held-out test split. The same model trained on the real rows is the ceiling.

    python examples/tstr_pipeline.py [--epsilon 1] [--rows 32561]

Data: UCI Adult (Becker & Kohavi, 1996, https://doi.org/10.24432/C5XW20), CC BY 4.0; the
test split is read from ``../shared/data`` (or ``$SKDPFLOW_DATA``), else held out from the
bundled table.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from skdpflow import DPFlowSynthesizer, load_demo, load_demo_domain

TARGET = "income"
DATA = Path(os.environ.get("SKDPFLOW_DATA", Path(__file__).resolve().parents[2] / "shared"
                           / "data"))


def load_split(rows: int | None = None, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(private train, real test): the standard UCI split when available."""
    train = load_demo()
    if (DATA / "adult_test.csv.gz").exists():
        test = pd.read_csv(DATA / "adult_test.csv.gz")
    else:
        test = train.sample(frac=0.3, random_state=seed)
        train = train.drop(index=test.index)
    if rows is not None and rows < len(train):
        train = train.sample(n=rows, random_state=seed)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def downstream_model(frame: pd.DataFrame) -> object:
    """The analyst's model: impute, scale and one-hot inside one Pipeline."""
    features = frame.drop(columns=TARGET)
    numeric = features.select_dtypes("number").columns.tolist()
    categorical = [c for c in features.columns if c not in numeric]
    columns = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"),
                              OneHotEncoder(handle_unknown="ignore")), categorical),
    ])
    return make_pipeline(columns, LogisticRegression(max_iter=1000))


def auroc(train: pd.DataFrame, test: pd.DataFrame) -> float:
    """Train the downstream model on ``train``, return its AUROC on ``test``."""
    model = downstream_model(train).fit(train.drop(columns=TARGET), train[TARGET] == ">50K")
    return roc_auc_score(test[TARGET] == ">50K",
                         model.predict_proba(test.drop(columns=TARGET))[:, 1])


def main(epsilon: float = 1.0, rows: int | None = None, epochs: float = 6,
         seed: int = 0, verbose: bool = True) -> dict:
    real_train, real_test = load_split(rows, seed)
    synth = DPFlowSynthesizer(epsilon=epsilon, delta=1e-5, epochs=epochs, random_state=seed,
                              verbose=verbose)
    synth.fit(real_train, domain=load_demo_domain())
    fake = synth.sample(len(real_train), random_state=seed + 1)
    result = {"epsilon_spent": synth.privacy_report()["epsilon_spent"],
              "auroc_train_synthetic": auroc(fake, real_test),
              "auroc_train_real": auroc(real_train, real_test)}
    if verbose:
        print(f"epsilon spent {result['epsilon_spent']:.3f}; AUROC on real test rows: "
              f"trained on synthetic {result['auroc_train_synthetic']:.3f}, "
              f"on real {result['auroc_train_real']:.3f}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--rows", type=int, default=None, help="subsample the train split")
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epsilon, args.rows, args.epochs, args.seed)
