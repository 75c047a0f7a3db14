"""Utility against epsilon: every table of the shared data folder, several seeds.

Usage (from the repository root)::

    python benchmarks/curves.py                      # full grid: long on 2 CPU cores
    python benchmarks/curves.py --write-docs         # PNGs in docs/img, table in benchmarks.md
    python benchmarks/curves.py --datasets adult --epsilons 1 inf --seeds 0 \\
        --rows 1000 --test-rows 500 --params '{"epochs": 1}' --out /tmp/curves   # smoke run

For each table of ``datasets.json`` (``SKDPFLOW_DATA``, default ``../shared/data``), the
real rows are split once (Adult: its official split; the others: a shuffled hold-out,
seed 0) and subsampled to ``--rows`` train and ``--test-rows`` test rows. For each epsilon
and seed, one fit on the train rows, as many synthetic rows, scored by
``skdpflow.evaluate`` against the test rows: AUROC (HistGradientBoosting, trained on the
synthetic rows), 2-way TVD and SDMetrics quality. Adult is fitted with its public domain;
the other tables without one (bounds and categories estimated under DP), their
categorical columns (integer codes included) read as text.

With ``--mst``, and where smartnoise MST's environment exists (``/work/venv-mst``, or
``SKDPFLOW_MST_PYTHON``; set up as ``benchmarks/suite.py`` says), MST runs at every finite
epsilon and seed on the same rows, through ``benchmarks/_mst_runner.py`` with the DECLARED
public domain of the full table (32 bins over the public bounds, declared categories): a
second line on the plots, dashed-dotted. Note that the skdpflow line of the tables other
than Adult estimates its domain under DP, MST's does not.

A fit refused for bounds the noise would choose (``DomainEstimateError``: an estimated
domain at a small epsilon) is recorded as refused, with no scores; the table says so.

Each finished run is appended to ``<out>/runs.jsonl`` and skipped when the script is rerun,
so an interrupted grid resumes. The plots show the mean over seeds with a min-max band,
and the real-data ceiling (the real train rows scored the same way) as a dashed line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SKDPFLOW_DATA", ROOT.parent / "shared" / "data"))
EPSILONS = [0.1, 0.3, 1.0, 3.0, 10.0, math.inf]
METRICS = {"auroc_hgb": "AUROC (TSTR, HGB)", "tvd_2way": "2-way TVD (lower is better)",
           "quality": "SDMetrics quality"}
BEGIN, END = "<!-- curves-table:begin -->", "<!-- curves-table:end -->"
# The epsilon recorded for the non-private GaussianCopula reference runs.
COPULA = -1.0


def load(name: str, rows: int, test_rows: int) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Train and test rows of one table, subsampled with a fixed seed, and its target."""
    spec = json.loads((DATA / "datasets.json").read_text())[name]
    files = spec["files"]
    def read(key: str) -> pd.DataFrame:
        return _typed(pd.read_csv(DATA / files[key]["path"]), spec)

    def sub(df: pd.DataFrame, n: int) -> pd.DataFrame:
        return df.sample(min(n, len(df)), random_state=0).reset_index(drop=True)

    if "train" in files:
        train, test = read("train"), read("test")
    else:
        everything = read("all").sample(frac=1, random_state=0).reset_index(drop=True)
        cut = max(len(everything) - test_rows, len(everything) * 2 // 3)
        train, test = everything.iloc[:cut], everything.iloc[cut:]
    return sub(train, rows), sub(test, test_rows), spec["target"]


def _typed(df: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """Categorical columns as text (integer codes too), as datasets.json declares them."""
    cats = [c for c in spec["categorical"] if c in df.columns]
    return df.astype({c: object for c in cats}).assign(
        **{c: df[c].where(df[c].isna(), df[c].astype(str)) for c in cats})


def run_one(name: str, epsilon: float, seed: int, args: argparse.Namespace) -> dict:
    import torch

    from skdpflow import DPFlowSynthesizer, evaluate, load_demo_domain
    from skdpflow.privacy.domain_estimation import DomainEstimateError

    torch.set_num_threads(int(os.environ.get("SKDPFLOW_THREADS", "2")))
    train, test, target = load(name, args.rows, args.test_rows)
    domain = load_demo_domain() if name == "adult" else None
    synth = DPFlowSynthesizer(epsilon=epsilon, delta=1e-5, random_state=seed, verbose=False,
                              **args.params)
    start = time.perf_counter()
    row = {"dataset": name, "epsilon": epsilon, "seed": seed, "rows": len(train),
           "rows_requested": args.rows, "domain": "declared" if domain else "estimated"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # estimated domains warn about small tables
            synth.fit(train, domain=domain)
    except DomainEstimateError:
        # Fail closed: bounds the noise would choose are refused. No rows, no scores.
        return {**row, "fit_s": round(time.perf_counter() - start, 1), "refused": True,
                **{m: math.nan for m in METRICS}, **{f"{m}_real": math.nan for m in METRICS}}
    row["fit_s"] = round(time.perf_counter() - start, 1)
    fake = synth.sample(len(train), random_state=seed)
    scores = evaluate(train, fake, test=test, target=target, domain=domain).to_frame()
    for metric in METRICS:
        row[metric] = float(scores.loc[metric, "synthetic"])
        row[f"{metric}_real"] = float(scores.loc[metric, "real_data"])
    return row


def run_copula(name: str, seed: int, args: argparse.Namespace) -> dict:
    """SDV's GaussianCopulaSynthesizer on the same rows: a NON-private reference line."""
    import numpy as np
    from sdv.metadata import Metadata
    from sdv.single_table import GaussianCopulaSynthesizer

    from skdpflow import evaluate, load_demo_domain

    train, test, target = load(name, args.rows, args.test_rows)
    domain = load_demo_domain() if name == "adult" else None
    np.random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GaussianCopulaSynthesizer(Metadata.detect_from_dataframes({"t": train}))
        start = time.perf_counter()
        model.fit({"t": train})
        fit_s = time.perf_counter() - start
        fake = model.sample(len(train))
    fake = fake["t"] if isinstance(fake, dict) else fake
    scores = evaluate(train, fake, test=test, target=target, domain=domain).to_frame()
    row = {"dataset": name, "epsilon": COPULA, "seed": seed, "rows": len(train),
           "rows_requested": args.rows, "fit_s": round(fit_s, 1), "domain": "read from data"}
    for metric in METRICS:
        row[metric] = float(scores.loc[metric, "synthetic"])
        row[f"{metric}_real"] = float(scores.loc[metric, "real_data"])
    return row


def run_mst(name: str, epsilon: float, seed: int, args: argparse.Namespace) -> dict:
    """smartnoise MST on the same rows, with the declared public domain (see suite.py)."""
    from suite import fit_mst, public_domain

    from skdpflow import evaluate

    train, test, target = load(name, args.rows, args.test_rows)
    domain = public_domain(name)
    start = time.perf_counter()
    fake = fit_mst(train, domain, epsilon, seed)
    fit_s = time.perf_counter() - start
    scores = evaluate(train, fake, test=test, target=target, domain=domain).to_frame()
    row = {"dataset": name, "epsilon": epsilon, "seed": seed, "rows": len(train),
           "rows_requested": args.rows, "fit_s": round(fit_s, 1), "domain": "declared",
           "method": "mst"}
    for metric in METRICS:
        row[metric] = float(scores.loc[metric, "synthetic"])
        row[f"{metric}_real"] = float(scores.loc[metric, "real_data"])
    return row


def _method(runs: pd.DataFrame) -> pd.Series:
    """Each run's method: rows recorded before MST joined have no ``method`` field."""
    if "method" not in runs:
        return pd.Series("skdpflow", index=runs.index)
    return runs["method"].fillna("skdpflow")


def plot(runs: pd.DataFrame, out: Path) -> list[Path]:
    """One PNG per table: each metric against epsilon, mean and min-max band over seeds."""
    from matplotlib.figure import Figure

    paths = []
    copula = runs[runs["epsilon"] == COPULA]
    mst = runs[_method(runs) == "mst"]
    runs = runs[(runs["epsilon"] != COPULA) & (_method(runs) != "mst")]
    eps_values = sorted(runs["epsilon"].unique())
    finite = [e for e in eps_values if math.isfinite(e)]
    # inf sits one decade right of the largest finite epsilon, labelled "inf"
    x_of = {e: (e if math.isfinite(e) else (max(finite) if finite else 1) * 10)
            for e in eps_values}
    for name, group in runs.groupby("dataset", sort=False):
        fig = Figure(figsize=(12, 3.4), layout="constrained")
        for ax, (metric, title) in zip(fig.subplots(1, len(METRICS)), METRICS.items()):
            stats = group.groupby("epsilon")[metric].agg(["mean", "min", "max"])
            x = [x_of[e] for e in stats.index]
            ax.plot(x, stats["mean"], marker="o", color="#4c72b0", label="synthetic")
            ax.fill_between(x, stats["min"], stats["max"], color="#4c72b0", alpha=0.25)
            theirs = mst[mst["dataset"] == name].groupby("epsilon")[metric].agg(
                ["mean", "min", "max"])
            if len(theirs):
                xm = [x_of.get(e, e) for e in theirs.index]
                ax.plot(xm, theirs["mean"], marker="s", ls="-.", color="#55a868",
                        label="smartnoise MST (declared domain)")
                ax.fill_between(xm, theirs["min"], theirs["max"], color="#55a868", alpha=0.2)
            ax.axhline(group[f"{metric}_real"].mean(), ls="--", color="0.3", label="real data")
            reference = copula[copula["dataset"] == name][metric]
            if len(reference):
                ax.axhline(reference.mean(), ls=":", color="#dd8452",
                           label="GaussianCopula (not private)")
            ax.set_xscale("log")
            ax.set_xticks(x, ["inf" if not math.isfinite(e) else f"{e:g}" for e in stats.index])
            ax.set_xlabel("epsilon")
            ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        fig.suptitle(f"{name}: {group['rows'].iloc[0]:,} train rows, "
                     f"{group['seed'].nunique()} seed(s), domain {group['domain'].iloc[0]}")
        path = out / f"curves_{name}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def table(runs: pd.DataFrame) -> str:
    """Mean (sd) over seeds per table and epsilon, and the real-data row."""
    lines = ["| dataset | epsilon | seeds | " + " | ".join(METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    runs = runs.assign(method=_method(runs))
    for (name, method, eps), group in runs.groupby(["dataset", "method", "epsilon"],
                                                   sort=False):
        refused = int(group["refused"].fillna(False).sum()) if "refused" in group else 0
        fitted = group.dropna(subset=list(METRICS))
        cells = [f"{fitted[m].mean():.3f}" + (f" ({fitted[m].std():.3f})" if len(fitted) > 1
                                               else "") for m in METRICS]
        if not len(fitted):
            cells = ["refused: declare the domain"] + [""] * (len(METRICS) - 1)
        label = ("GaussianCopula (not private)" if eps == COPULA
                 else "inf" if math.isinf(eps) else f"{eps:g}")
        if method == "mst":
            label = f"smartnoise MST {label}"
        seeds = f"{len(fitted)}" + (f" ({refused} refused)" if refused else "")
        lines.append(f"| {name} | {label} | {seeds} | "
                     + " | ".join(cells) + " |")
    for name, group in runs.groupby("dataset", sort=False):
        real = [f"{group[f'{m}_real'].mean():.3f}" for m in METRICS]
        lines.append(f"| {name} | real data | | " + " | ".join(real) + " |")
    return "\n".join(lines)


def write_docs(text: str, images: list[Path], command: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    doc = path.read_text()
    if BEGIN not in doc:
        doc += f"\n{BEGIN}\n{END}\n"
    head, rest = doc.split(BEGIN)
    _, tail = rest.split(END)
    pictures = "\n".join(f"![{p.stem}](img/{p.name})" for p in images)
    body = (f"{BEGIN}\nRun {time.strftime('%Y-%m-%d')}: `{command}` ({os.cpu_count()} CPU "
            f"cores).\n\n{text}\n\n{pictures}\n{END}")
    path.write_text(head + body + tail)


def _mst_available() -> bool:
    from suite import mst_available

    if not mst_available():
        print("smartnoise MST skipped: its environment is not here (see benchmarks/suite.py)",
              file=sys.stderr)
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = list(json.loads((DATA / "datasets.json").read_text()))
    parser.add_argument("--datasets", nargs="+", default=names, choices=names)
    parser.add_argument("--epsilons", type=float, nargs="+", default=EPSILONS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=5000, help="train rows per table")
    parser.add_argument("--test-rows", type=int, default=2000, help="test rows per table")
    parser.add_argument("--params", type=json.loads, default={},
                        help='extra hyperparameters as JSON, e.g. \'{"epochs": 8}\'')
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img",
                        help="folder for runs.jsonl and the PNGs")
    parser.add_argument("--copula", action="store_true",
                        help="add SDV's GaussianCopula (non-private) reference runs")
    parser.add_argument("--mst", action="store_true",
                        help="add smartnoise MST runs (finite epsilons), where its "
                             "environment exists")
    parser.add_argument("--skip-skdpflow", action="store_true",
                        help="run only the reference methods asked for (--copula, --mst), "
                             "e.g. MST in a second process beside the skdpflow grid")
    parser.add_argument("--write-docs", action="store_true",
                        help="replace the curves table in docs/benchmarks.md")
    parser.add_argument("--table-only", action="store_true",
                        help="plots and table of the recorded runs, run nothing")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    seen = {(r["dataset"], float(r["epsilon"]), r["seed"], r["rows_requested"],
             r.get("method", "skdpflow")) for r in done}
    grid = list(args.epsilons) + ([COPULA] if args.copula else [])
    mst = args.mst and not args.table_only and _mst_available()
    jobs = [] if args.table_only else [
        (name, eps, seed, "skdpflow") for name in args.datasets for eps in grid
        for seed in args.seeds if eps == COPULA or not args.skip_skdpflow]
    jobs += [(name, eps, seed, "mst") for name in args.datasets for eps in args.epsilons
             for seed in args.seeds if mst and math.isfinite(eps)]
    for name, eps, seed, method in jobs:
        if (name, eps, seed, args.rows, method) in seen:
            continue
        row = (run_mst(name, eps, seed, args) if method == "mst"
               else run_copula(name, seed, args) if eps == COPULA
               else run_one(name, eps, seed, args))
        done.append(row)
        with log.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    runs = pd.DataFrame([r for r in done if r["dataset"] in args.datasets
                         and float(r["epsilon"]) in grid and r["seed"] in args.seeds
                         and r["rows_requested"] == args.rows
                         and (r.get("method") != "mst" or args.mst)])
    images = plot(runs, args.out)
    text = table(runs)
    print(text)
    if args.write_docs:
        write_docs(text, images, "python benchmarks/curves.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
