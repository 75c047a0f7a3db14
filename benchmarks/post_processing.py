"""The released marginals in the samples: one fit, sampled with and without post-processing.

For each table, size and seed: fit skdpflow once (defaults, epsilon from ``--epsilon``), then
sample the same model three ways and score each with ``skdpflow.evaluate``:

- ``full``: as fitted (marginal calibration and category weights);
- ``calibration``: without the category weights;
- ``flow``: the flow alone (neither).

Prints one JSON line per fit and a table of the means, side by side. The tables and test
rows are the suite's (``benchmarks/suite.py``: the public domain of all rows, a fixed
subsample, 2,000 test rows)::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/post_processing.py \\
        --datasets default_credit_card bank_marketing --sizes 3000 10000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings

import pandas as pd
import torch

import suite

METRICS = ["tvd_1way", "tvd_2way", "quality", "auroc_hgb"]
VARIANTS = ["full", "calibration", "flow"]


def one(name: str, rows: int, epsilon: float, seed: int, test_rows: int) -> dict:
    from skdpflow import DPFlowSynthesizer, evaluate

    train, test, target = suite.load(name, rows, test_rows)
    domain = suite.public_domain(name)
    synth = DPFlowSynthesizer(epsilon=epsilon, delta=suite.DELTA, random_state=seed,
                              verbose=False, n_jobs=1)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        synth.fit(train, domain=domain)
    weights = synth.category_weights_
    out = {"dataset": name, "rows": rows, "epsilon": epsilon, "seed": seed,
           "fit_s": round(time.perf_counter() - start, 1), "steps": synth.steps_,
           "kept": None if weights is None else round(weights.acceptance, 3)}
    for variant in VARIANTS:
        if variant != "full":
            synth.category_weights_ = None
        if variant == "flow" and synth.flow_ is not None and synth.flow_.calibrated:
            synth.flow_.calibration_from.fill_(math.nan)
        start = time.perf_counter()
        fake = synth.sample(len(train), random_state=seed)
        out[f"sample_s_{variant}"] = round(time.perf_counter() - start, 2)
        scores = evaluate(train, fake, test=test, target=target, domain=domain).to_frame()
        for m in METRICS:
            if m in scores.index:
                out[f"{m}_{variant}"] = float(scores.loc[m, "synthetic"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+",
                        default=["default_credit_card", "bank_marketing"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[3000, 10000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--test-rows", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = []
    for name in args.datasets:
        for rows in args.sizes:
            for seed in args.seeds:
                runs.append(one(name, rows, args.epsilon, seed, args.test_rows))
                print(json.dumps(runs[-1]), flush=True)
    frame = pd.DataFrame(runs)
    print("\n| table, rows | kept by rejection | " + " | ".join(METRICS)
          + " |\n|---|---|" + "---|" * len(METRICS))
    for (name, rows), part in frame.groupby(["dataset", "rows"], sort=False):
        cells = [" / ".join(f"{part[f'{m}_{v}'].mean():.3f}" for v in VARIANTS)
                 for m in METRICS]
        print(f"| {name}, {rows:,} | {part['kept'].mean():.2f} | " + " | ".join(cells) + " |")
    print(f"\n(each cell: {' / '.join(VARIANTS)}; mean of seeds {args.seeds})")


if __name__ == "__main__":
    main()
