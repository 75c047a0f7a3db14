"""Adult benchmark: fit on the train split, sample as many rows, evaluate on the test split.

Usage (from the repository root)::

    python benchmarks/adult.py                       # epsilon 1, 3, inf x seeds 0, 1, 2
    python benchmarks/adult.py --epsilons 1 --seeds 0 --write-docs
    python benchmarks/adult.py --domain estimated --write-docs   # no domain declared

Each (epsilon, seed) runs in its own process so that peak memory is that run's own.
Prints one row per run and the mean per epsilon; ``--write-docs`` replaces the Adult table in
``docs/benchmarks.md`` (``--domain estimated`` fits without the declared domain, so bounds
and categories are estimated under DP, and writes its own table). The metrics are
``skdpflow.evaluate``'s (the real-data row is its ceiling: train vs test). Needs ``sdmetrics``
(``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SKDPFLOW_DATA", ROOT.parent / "shared" / "data"))
TARGET = "income"


def load() -> tuple[pd.DataFrame, pd.DataFrame]:
    train_path = DATA / "adult_train.csv.gz"
    if train_path.exists():
        return pd.read_csv(train_path), pd.read_csv(DATA / "adult_test.csv.gz")
    sys.exit(f"Adult data not found under {DATA}; set SKDPFLOW_DATA to the folder holding "
             "adult_train.csv.gz and adult_test.csv.gz.")


def run_one(epsilon: float, seed: int, extra: dict, domain: str = "declared") -> dict:
    import torch

    from skdpflow import DPFlowSynthesizer, evaluate, load_demo_domain

    torch.set_num_threads(int(os.environ.get("SKDPFLOW_THREADS", "2")))
    train, test = load()
    synth = DPFlowSynthesizer(epsilon=epsilon, delta=1e-5, random_state=seed, verbose=False,
                              **extra)
    start = time.perf_counter()
    synth.fit(train, domain=load_demo_domain() if domain == "declared" else None)
    fit_s = time.perf_counter() - start
    samples, times = [], []
    for k in range(3):  # the first call's rows are evaluated; speed is the median of 3 calls
        start = time.perf_counter()
        samples.append(synth.sample(len(train), random_state=seed + k))
        times.append(time.perf_counter() - start)
    fake = samples[0]
    sample_s = float(np.median(times))
    row = {"epsilon": epsilon, "seed": seed, "domain": domain, "fit_s": fit_s,
           "sample_rows_per_s": len(fake) / sample_s,
           "epsilon_spent": synth.epsilon_, "steps": synth.steps_,
           "noise_multiplier": synth.noise_multiplier_}
    # the package's evaluation: synthetic scores, and the real-data ceiling (train vs test)
    scores = evaluate(train, fake, test=test, target=TARGET).to_frame()
    row |= {m: float(scores.loc[m, "synthetic"]) for m in METRICS}
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["real_data"] = {m: float(scores.loc[m, "real_data"]) for m in METRICS}
    return row


METRICS = ["auroc_hgb", "auroc_logreg", "tvd_1way", "tvd_2way", "quality"]


COLUMNS = ["epsilon", "domain", "seed", "auroc_hgb", "auroc_logreg", "tvd_1way", "tvd_2way", "quality",
           "fit_s", "sample_rows_per_s", "peak_rss_mb", "epsilon_spent", "steps",
           "noise_multiplier"]


def table(rows: list[dict]) -> str:
    df = pd.DataFrame(rows)
    cols = [c for c in COLUMNS if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        if v.is_integer():
            return f"{int(v):,}"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"
    return str(v)


def summary(rows: list[dict]) -> list[dict]:
    df = pd.DataFrame([r for r in rows if r.get("seed") is not None])
    out = []
    for (eps, dom), group in df.groupby(["epsilon", "domain"], sort=False):
        mean = {c: group[c].median() if c in ("fit_s", "sample_rows_per_s") else group[c].mean()
                for c in COLUMNS if c not in ("epsilon", "seed", "domain") and c in group}
        std = group["auroc_hgb"].std() if len(group) > 1 else float("nan")
        out.append({"epsilon": eps, "domain": dom, "seed": f"mean of {len(group)} (times: median)"
                    + (f" (AUROC sd {std:.3f})" if len(group) > 1 else ""), **mean})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, math.inf])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--params", type=json.loads, default={},
                        help='extra hyperparameters as JSON, e.g. \'{"epochs": 8}\'')
    parser.add_argument("--domain", choices=["declared", "estimated"], default="declared",
                        help="declare the bundled public domain, or estimate it under DP")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--single", nargs=2, type=float, metavar=("EPSILON", "SEED"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(run_one(args.single[0], int(args.single[1]), args.params,
                                 args.domain)))
        return
    rows = []
    for eps in args.epsilons:
        for seed in args.seeds:
            cmd = [sys.executable, __file__, "--single", str(eps), str(seed),
                   "--params", json.dumps(args.params), "--domain", args.domain]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            baseline = row.pop("real_data")  # the same in every run
            rows.append(row)
            print(json.dumps(row), flush=True)
    rows.append({"epsilon": "real data", **baseline})
    text = table(summary(rows) + [rows[-1]]) + "\n\nPer run:\n\n" + table(rows[:-1])
    print(text)
    if args.write_docs:
        write_docs(text, args.params, args.domain)


def write_docs(text: str, params: dict, domain: str = "declared") -> None:
    path = ROOT / "docs" / "benchmarks.md"
    marker = "adult-table" if domain == "declared" else "adult-estimated-table"
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    doc = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    head, rest = doc.split(begin)
    _, tail = rest.split(end)
    stamp = time.strftime("%Y-%m-%d")
    flag = " --domain estimated" if domain == "estimated" else ""
    body = (f"{begin}\nRun {stamp}: `python benchmarks/adult.py{flag} --write-docs"
            f"{' --params ' + repr(json.dumps(params)) if params else ''}` "
            f"({os.cpu_count()} CPU cores, torch threads "
            f"{os.environ.get('SKDPFLOW_THREADS', '2')}).\n\n{text}\n{end}")
    path.write_text(head + body + tail)


if __name__ == "__main__":
    main()
