"""The five worst column pairs of a suite table, with the discrete heads and the dequantized flow.

Fits the suite's rows of a table (``--rows``, default the ``full`` size capped at 20,000;
its public domain) at epsilon 1 with each ``discrete_model``, samples as many rows, and
prints per model the five pairs of lowest contingency similarity (1 - 2-way TVD, numbers
on 20 quantile bins of the real train rows; ``evaluate(...).worst_pairs``) as the mean over
the seeds, with the real-data ceiling (train rows against the 2,000 test rows)::

    OMP_NUM_THREADS=1 python benchmarks/worst_pairs.py bank_marketing --seeds 0 1 2

The five are taken from the union of each fit's five worst, ranked by their mean.
"""

from __future__ import annotations

import argparse

import pandas as pd
import suite
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["heads", "dequantized"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    from skdpflow.metrics import column_kinds, contingency_similarity

    train, test, _ = suite.load(args.dataset, args.rows, 2000)
    domain = suite.public_domain(args.dataset)
    kinds = column_kinds(train, domain)
    ceiling = contingency_similarity(train, test, kinds=kinds)
    for model in args.models:
        runs = []
        for seed in args.seeds:
            fake = suite.fit_skdpflow(train, domain, 1.0, seed,
                                      {"n_jobs": 1, "discrete_model": model})
            runs.append(contingency_similarity(train, fake, kinds=kinds))
        table = pd.concat(runs, axis=1)
        worst = set().union(*(run.nsmallest(5).index for run in runs))
        mean = table.loc[sorted(worst)].mean(axis=1).sort_values().head(5)
        print(f"\n{args.dataset}, {len(train)} rows, {model}, epsilon 1, "
              f"{len(args.seeds)} seeds: the five worst pairs\n")
        print("| pair | synthetic, mean (per seed) | real data |\n|---|---|---|")
        for pair, value in mean.items():
            per_seed = " / ".join(f"{v:.3f}" for v in table.loc[pair])
            print(f"| `{pair}` | {value:.3f} ({per_seed}) | {ceiling[pair]:.3f} |")
        print(f"\nworst pair overall, mean: {table.min(axis=0).mean():.3f}", flush=True)


if __name__ == "__main__":
    main()
