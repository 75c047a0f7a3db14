"""One suite table, both discrete models side by side: fit time, sampling time, scores.

For a table of ``datasets.json`` at a subsample size (the suite's rows and public domain,
``benchmarks/suite.py``), fits ``DPFlowSynthesizer(discrete_model=...)`` for each model at
epsilon 1 (one torch thread), samples as many rows and scores them with
``skdpflow.evaluate``; one line per fit::

    OMP_NUM_THREADS=1 python benchmarks/discrete_models.py kddcup99_10pct 10000 --seeds 0 1

A ``rows`` of 0 takes every row but the 2,000 test rows (kddcup99_10pct: 492,021). Then
``--delta`` should be below one over the rows, and ``--eval-rows`` scores a random subset of
the train and synthetic rows (SDMetrics' pair trends grow with rows times pairs); the
line also gives the process's peak resident memory (``ru_maxrss``)::

    OMP_NUM_THREADS=1 python benchmarks/discrete_models.py kddcup99_10pct 0 --models heads \
        --delta 2e-7 --eval-rows 50000

The private noise is fresh at every fit, so two fits of one seed differ.
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import torch

import suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("rows", type=int)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--models", nargs="+", default=["heads", "dequantized"])
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=suite.DELTA)
    parser.add_argument("--eval-rows", type=int, default=0,
                        help="score this many random train and synthetic rows (0: all)")
    args = parser.parse_args()
    from skdpflow import DPFlowSynthesizer, evaluate

    torch.set_num_threads(1)
    train, test, target = suite.load(args.dataset, args.rows or 10**9, 2000)
    domain = suite.public_domain(args.dataset)
    for seed in args.seeds:
        for model in args.models:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                synth = DPFlowSynthesizer(epsilon=args.epsilon, delta=args.delta,
                                          random_state=seed,
                                          verbose=False, n_jobs=1, discrete_model=model)
                synth.fit(train, domain=domain)
                fit_s = time.perf_counter() - start
                start = time.perf_counter()
                fake = synth.sample(len(train), random_state=seed)
                sample_s = time.perf_counter() - start
                peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"{args.dataset} {len(train)} rows, seed {seed} {model}: fit "
                      f"{fit_s:.0f} s ({synth.steps_} DP-SGD steps), sample {sample_s:.1f} s, "
                      f"peak RSS so far {peak_mib:.0f} MiB; scoring...", flush=True)
                real = train
                if 0 < args.eval_rows < len(train):
                    real = train.sample(args.eval_rows, random_state=seed)
                    fake = fake.sample(args.eval_rows, random_state=seed)
                scores = evaluate(real, fake, test=test, target=target,
                                  domain=domain).to_frame()["synthetic"]
            flow = synth.flow_
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{args.dataset} {len(train)} rows, seed {seed} {model}: heads "
                  f"{0 if flow is None else flow.n_heads}, fit {fit_s:.0f} s, sample "
                  f"{sample_s:.1f} s, " + ", ".join(
                      f"{m} {scores[m]:.3f}" for m in ("tvd_1way", "tvd_2way", "quality",
                                                       "auroc_hgb") if m in scores)
                  + f", peak RSS {peak_mib:.0f} MiB, steps {synth.steps_}", flush=True)


if __name__ == "__main__":
    main()
