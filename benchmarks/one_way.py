"""1-way TVD of every categorical column: default_credit_card, 80% split, public domain.

Issue 12's target: the released 1-way histograms in the samples, up to their noise (every
categorical column at 1-way TVD <= 0.01). Fits the table's first 80% of rows (after the
suite's shuffle, seed 0) with the public domain of all rows at epsilon 1, samples as many
rows, and prints per seed and as the mean the 1-way TVD of each categorical column (the
integer-coded ``PAY_*``, ``SEX``, ``EDUCATION``, ``MARRIAGE`` and the target are declared
categorical in the public domain) against the train rows, one column per ``discrete_model``::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/one_way.py --seeds 0 1 2

``--release`` also splits each fit's TVD in two: the released marginal against the train
rows (the release's noise and floor) and the samples against the release (the sampling
noise of that many rows, and what the model adds).
"""

from __future__ import annotations

import argparse
import ast
import time
import warnings

import pandas as pd
import torch

import suite


def release_split(synth: object, train: pd.DataFrame, fake: pd.DataFrame,
                  categorical: list[str]) -> pd.DataFrame:
    """Per categorical column: the released marginal's TVD from the train rows (the
    release's noise, floor included) and the samples' TVD from the release."""
    out = {}
    for marginal in synth.marginals_:
        name = marginal.spec.name
        if name not in categorical:
            continue
        cats = list(synth.domain_[name].categories)
        released = marginal.probs[: len(cats)]
        real = train[name].value_counts(normalize=True).reindex(cats, fill_value=0.0)
        sampled = fake[name].value_counts(normalize=True).reindex(cats, fill_value=0.0)
        out[name] = {"release vs train": 0.5 * abs(released - real.to_numpy()).sum(),
                     "samples vs release": 0.5 * abs(sampled.to_numpy() - released).sum()}
    return pd.DataFrame(out).T


def run(name: str, seed: int, model: str, epsilon: float, split: bool = False,
        **params: object) -> tuple[pd.Series, float]:
    from skdpflow import DPFlowSynthesizer
    from skdpflow.metrics import column_kinds, marginal_tvd

    full, _, _ = suite.load(name, 10**9, 2000)  # every row but the 2,000 test rows
    train = full.iloc[: int(0.8 * (len(full) + 2000))]
    domain = suite.public_domain(name)
    synth = DPFlowSynthesizer(epsilon=epsilon, delta=suite.DELTA, random_state=seed,
                              verbose=False, n_jobs=1, discrete_model=model, **params)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        synth.fit(train, domain=domain)
    fit_s = time.perf_counter() - start
    fake = synth.sample(len(train), random_state=seed)
    kinds = column_kinds(train, domain)
    tvd = {k[0]: v for k, v in marginal_tvd(train, fake, 1, kinds=kinds).items()}
    categorical = [c for c in train.columns if domain[c].type in ("categorical", "boolean")]
    if split:
        print(release_split(synth, train, fake, categorical).round(4).to_string(), flush=True)
    return pd.Series({c: tvd[c] for c in categorical}), fit_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="default_credit_card")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["heads", "dequantized"])
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--param", nargs="*", default=[], metavar="NAME=VALUE",
                        help="other DPFlowSynthesizer parameters (values read as Python)")
    parser.add_argument("--release", action="store_true",
                        help="also print, per fit, the release's TVD from the train rows and "
                             "the samples' TVD from the release")
    args = parser.parse_args()
    params = {k: ast.literal_eval(v) for k, v in (p.split("=", 1) for p in args.param)}
    torch.set_num_threads(1)
    means = {}
    for model in args.models:
        columns = []
        for seed in args.seeds:
            tvd, fit_s = run(args.dataset, seed, model, args.epsilon, args.release, **params)
            columns.append(tvd)
            print(f"{model}, seed {seed} (fit {fit_s:.0f} s): worst {tvd.max():.4f}, "
                  f"{int((tvd <= 0.01).sum())}/{len(tvd)} columns <= 0.01", flush=True)
        means[model] = sum(columns) / len(columns)
    table = pd.DataFrame(means)
    print(f"\n1-way TVD, mean of {len(args.seeds)} seeds, epsilon {args.epsilon:g}\n")
    print("| column | " + " | ".join(table.columns) + " |\n|---|" + "---|" * len(table.columns))
    for name, row in table.iterrows():
        print(f"| `{name}` | " + " | ".join(f"{v:.4f}" for v in row) + " |")


if __name__ == "__main__":
    main()
