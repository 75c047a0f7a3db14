"""Choose the model size with GridSearchCV in a non-private run.

``DPFlowSynthesizer.score`` is the mean log-density of held-out rows, so scikit-learn's
model selection works as for any density estimator. Tuning on private data spends privacy
that ``epsilon`` does not count: do it with ``epsilon=float("inf")`` on public data (as
here, the public Adult table) or on data like the private one, then fit once with DP.

    python examples/grid_search.py [--rows 4000]

Data: UCI Adult (Becker & Kohavi, 1996, https://doi.org/10.24432/C5XW20), CC BY 4.0.
"""

from __future__ import annotations

import argparse
import math

import pandas as pd
from sklearn.model_selection import GridSearchCV

from skdpflow import DPFlowSynthesizer, load_demo, load_demo_domain

GRID = {"hidden_size": [16, 64], "n_stages": [2, 6]}


def main(rows: int = 4000, epochs: float = 6, grid: dict | None = None, cv: int = 3,
         seed: int = 0, verbose: bool = True) -> GridSearchCV:
    public = load_demo().sample(n=rows, random_state=seed).reset_index(drop=True)
    base = DPFlowSynthesizer(epsilon=math.inf, epochs=epochs, batch_size=256,
                             random_state=seed, verbose=False)
    search = GridSearchCV(base, grid or GRID, cv=cv)
    search.fit(public, domain=load_demo_domain())  # fit parameters go to every fit
    if verbose:
        table = pd.DataFrame(search.cv_results_)[["params", "mean_test_score",
                                                  "std_test_score", "mean_fit_time"]]
        print(table.sort_values("mean_test_score", ascending=False).to_string(index=False))
        print(f"best: {search.best_params_} (mean held-out log-density "
              f"{search.best_score_:.2f} per row)")
    return search


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--cv", type=int, default=3)
    args = parser.parse_args()
    main(args.rows, args.epochs, cv=args.cv)
