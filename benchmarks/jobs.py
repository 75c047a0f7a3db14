"""``n_jobs`` next to competing CPU load: fit (and sample) times for n_jobs = 1, 2 and None.

Usage (from the repository root; the cores may be shared, so run it niced)::

    nice python benchmarks/jobs.py                    # loads 0 and 2, 3 fits each
    nice python benchmarks/jobs.py --loads 0 2 --reps 3 --rows 5000 --epochs 20

A fit of ``--rows`` rows of the bundled Adult table at epsilon 1 (declared domain, explicit
``--epochs`` so that one fit is short) runs next to 0, then 2, CPU-bound processes (a numpy
loop each, single-threaded), for each ``n_jobs``; each fit is followed by sampling
``--sample-rows`` rows. The configurations alternate within each repetition, so a change in
the machine's other load falls on all of them alike. Prints the median fit seconds, sampling
rows/s, the ratios to ``n_jobs=1`` at the same load, the threads that ``n_jobs=None`` chose,
and the one-minute load average around each load level (it includes this benchmark and
whatever else runs on the machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = ("import numpy as np\n"
             "a = np.random.default_rng(0).random(100_000)\n"
             "while True:\n"
             "    a = np.sqrt(a * a + 1.0) - 0.5\n")


def competitors(k: int) -> list[subprocess.Popen]:
    """``k`` CPU-bound processes (one core each: BLAS and OpenMP held to one thread)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], env=env) for _ in range(k)]


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--jobs", nargs="+", default=["1", "2", "None"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--epochs", type=float, default=20.0)
    parser.add_argument("--sample-rows", type=int, default=100_000)
    args = parser.parse_args()

    import torch

    from skdpflow import DPFlowSynthesizer, load_demo, load_demo_domain
    from skdpflow._threads import resolve_n_jobs

    data = load_demo().sample(args.rows, random_state=0).reset_index(drop=True)
    domain = load_demo_domain()
    jobs = [None if j == "None" else int(j) for j in args.jobs]
    print(f"{os.cpu_count()} CPUs; torch {torch.__version__}; {args.rows} Adult rows, "
          f"epsilon 1, epochs {args.epochs}; load before: {os.getloadavg()[0]:.2f}", flush=True)
    DPFlowSynthesizer(epsilon=1.0, epochs=0.2, n_jobs=1, verbose=False).fit(
        data.head(500), domain=domain)  # imports and first-call costs, outside the timings
    results: dict = {}
    loads: dict = {}
    for k in args.loads:
        procs = competitors(k)
        try:
            time.sleep(2.0)
            before = os.getloadavg()[0]
            for rep in range(args.reps):
                for n_jobs in jobs:
                    chosen = resolve_n_jobs(n_jobs)
                    synth = DPFlowSynthesizer(epsilon=1.0, epochs=args.epochs, n_jobs=n_jobs,
                                              random_state=rep, verbose=False)
                    start = time.perf_counter()
                    synth.fit(data, domain=domain)
                    fit_s = time.perf_counter() - start
                    start = time.perf_counter()
                    synth.sample(args.sample_rows, random_state=rep)
                    rate = args.sample_rows / (time.perf_counter() - start)
                    results.setdefault((k, str(n_jobs)), []).append((fit_s, rate, chosen))
                    print(f"  load {k} rep {rep} n_jobs={n_jobs} (threads {chosen}): fit "
                          f"{fit_s:.1f} s, sample {rate:,.0f} rows/s, load average "
                          f"{os.getloadavg()[0]:.2f}", flush=True)
            loads[k] = (before, os.getloadavg()[0])
        finally:
            stop(procs)
        time.sleep(5.0)

    print("\n| competing processes | load average (start / end) | n_jobs | threads chosen | "
          "fit s (median) | fit vs n_jobs=1 | sample rows/s (median) | sample vs n_jobs=1 |")
    print("|---|---|---|---|---|---|---|---|")
    for k in args.loads:
        base = results[(k, "1")] if (k, "1") in results else None
        for n_jobs in jobs:
            runs = results[(k, str(n_jobs))]
            fit = statistics.median(r[0] for r in runs)
            rate = statistics.median(r[1] for r in runs)
            chosen = "/".join(str(r[2]) for r in runs)
            fit_ratio = fit / statistics.median(r[0] for r in base) if base else float("nan")
            rate_ratio = rate / statistics.median(r[1] for r in base) if base else float("nan")
            print(f"| {k} | {loads[k][0]:.1f} / {loads[k][1]:.1f} | {n_jobs} | {chosen} | "
                  f"{fit:.1f} | {fit_ratio:.2f} | {rate:,.0f} | {rate_ratio:.2f} |")


if __name__ == "__main__":
    main()
