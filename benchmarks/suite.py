"""Public benchmark suite: skdpflow beside smartnoise MST and SDV's GaussianCopula.

Usage (from the repository root)::

    python benchmarks/suite.py                               # the whole grid, resumable
    python benchmarks/suite.py --methods mst copula          # only the reference methods
    python benchmarks/suite.py --methods skdpflow --params '{"epochs": 12}'
    python benchmarks/suite.py --write-docs                  # table into docs/benchmarks.md

Grid: every table of ``datasets.json`` (``SKDPFLOW_DATA``, default ``../shared/data``) at
its "full" size, capped at ``--max-rows`` train rows (default 20,000, so that the grid fits
on 2 CPU cores), and subsamples of 1,000 / 3,000 / 10,000 rows of bank_marketing,
default_credit_card and kddcup99_10pct; epsilon 0.3 / 1 / 3; seeds 0 / 1 / 2; delta 1e-5.
Rows come from ``curves.load`` (Adult: its official split; the others: a shuffled hold-out
of ``--test-rows`` rows, seed 0; then a fixed-seed subsample of the train rows).

Every method gets the same DECLARED public domain: ``Domain.from_data`` on the FULL public
table (all its files: the documented schema of a public dataset, bounds and categories),
declared as public rather than data-derived:

- **skdpflow**: ``DPFlowSynthesizer(epsilon, delta=1e-5, random_state=seed)`` with default
  hyperparameters (``--params`` JSON overrides them), fitted with that domain;
- **mst**: smartnoise-synth's MST at the same (epsilon, delta), on 32 equal-width bins over
  the public bounds of each numerical column (one bin per integer when an integer column
  has at most 32 values) and the declared categories, sampled bins decoded uniformly inside
  the bin (``benchmarks/_mst_runner.py``, run in its own environment, see below);
- **copula**: SDV's GaussianCopulaSynthesizer, NOT private (one run per table, size and
  seed; shown beside every epsilon).

Each run samples as many rows as it was fitted on and is scored by ``skdpflow.evaluate``
against the held-out test rows: 1-way and 2-way TVD, SDMetrics quality, TSTR AUROC
(HistGradientBoosting; macro one-vs-rest for kddcup99's many-class ``label``), and the
real-data ceiling (the real train rows scored the same way). Finished runs are appended to
``<out>/runs.jsonl`` and skipped when the script runs again, so the grid resumes and
methods can be added later without rerunning the others.

MST's environment (outside the repository; smartnoise-synth is not a skdpflow dependency,
and brings its own old Opacus)::

    python -m venv /work/venv-mst
    /work/venv-mst/bin/pip install torch==2.13.0     # FIRST: the CPU build, not CUDA's
    /work/venv-mst/bin/pip install smartnoise-synth==1.0.8

``SKDPFLOW_MST_PYTHON`` points at another interpreter; without one, MST runs are skipped
with a message. Run it gently on shared cores: ``OMP_NUM_THREADS=1 nice -n 10 python ...``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import curves

ROOT = HERE.parent
DATA = curves.DATA
MST_PYTHON = Path(os.environ.get("SKDPFLOW_MST_PYTHON", "/work/venv-mst/bin/python"))
SUBSAMPLED = ["bank_marketing", "default_credit_card", "kddcup99_10pct"]
SIZES = ["1000", "3000", "10000", "full"]
EPSILONS = [0.3, 1.0, 3.0]
METHODS = ["skdpflow", "mst", "copula"]
DELTA = 1e-5
METRICS = {"tvd_1way": "1-way TVD", "tvd_2way": "2-way TVD", "quality": "quality",
           "auroc_hgb": "AUROC"}
BEGIN, END = "<!-- suite-table:begin -->", "<!-- suite-table:end -->"


def grid_tables(datasets: list[str], sizes: list[str]) -> list[tuple[str, str]]:
    """(table, size) pairs: "full" for every table, subsamples for the three large ones."""
    return [(name, size) for name in datasets for size in sizes
            if size == "full" or name in SUBSAMPLED]


def train_rows(size: str, max_rows: int) -> int:
    return max_rows if size == "full" else int(size)


@functools.cache
def public_domain(name: str) -> object:
    """The declared domain of a public table: bounds and categories of ALL its rows."""
    from skdpflow import Domain

    spec = json.loads((DATA / "datasets.json").read_text())[name]
    full = pd.concat([curves._typed(pd.read_csv(DATA / f["path"]), spec)
                      for f in spec["files"].values()], ignore_index=True)
    # the documented schema of a public dataset: declared, so not marked data-derived
    return Domain(Domain.from_data(full).columns)


@functools.lru_cache(maxsize=4)
def load(name: str, rows: int, test_rows: int) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    return curves.load(name, rows, test_rows)


def mst_available() -> bool:
    return MST_PYTHON.exists()


def fitted_skdpflow(train: pd.DataFrame, domain: object, epsilon: float, seed: int,
                    params: dict) -> object:
    """``DPFlowSynthesizer`` fitted as the suite fits it (delta ``DELTA``, quiet, torch
    threads from ``SKDPFLOW_THREADS``, default 1); ``params`` override the defaults."""
    import torch

    from skdpflow import DPFlowSynthesizer

    torch.set_num_threads(int(os.environ.get("SKDPFLOW_THREADS", "1")))
    synth = DPFlowSynthesizer(epsilon=epsilon, delta=DELTA, random_state=seed, verbose=False,
                              **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        synth.fit(train, domain=domain)
    return synth


def fit_skdpflow(train: pd.DataFrame, domain: object, epsilon: float, seed: int,
                 params: dict) -> pd.DataFrame:
    """:func:`fitted_skdpflow`, then as many rows sampled as it was fitted on."""
    synth = fitted_skdpflow(train, domain, epsilon, seed, params)
    return synth.sample(len(train), random_state=seed)


def fit_mst(train: pd.DataFrame, domain: object, epsilon: float, seed: int) -> pd.DataFrame:
    """MST in its own environment: train rows and domain to files, samples back."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train.to_csv(tmp / "train.csv", index=False)
        (tmp / "domain.json").write_text(json.dumps(domain.to_dict()))
        # JAX compiles each marginal's shape anew: a persistent cache saves ~40% across runs
        cache = Path(tempfile.gettempdir()) / "skdpflow-mst-jax-cache"
        env = dict(os.environ, OMP_NUM_THREADS="1", XLA_FLAGS=(
            "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"),
            JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        subprocess.run([str(MST_PYTHON), str(HERE / "_mst_runner.py"), str(tmp / "train.csv"),
                        str(tmp / "domain.json"), str(tmp / "fake.csv"),
                        "--epsilon", repr(epsilon), "--delta", repr(DELTA),
                        "--rows", str(len(train)), "--seed", str(seed)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        sys.path.insert(0, str(HERE))
        import _mst_runner

        return _mst_runner.read_table(str(tmp / "fake.csv"), domain.to_dict())


def fit_copula(train: pd.DataFrame, seed: int) -> pd.DataFrame:
    """SDV's GaussianCopulaSynthesizer, default settings: NOT private."""
    from sdv.metadata import Metadata
    from sdv.single_table import GaussianCopulaSynthesizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GaussianCopulaSynthesizer(Metadata.detect_from_dataframes({"t": train}))
        model.fit({"t": train})
        model._set_random_state(seed)  # SDV fixes its own seed otherwise
        fake = model.sample(len(train))
    return fake["t"] if isinstance(fake, dict) else fake


def binning_floor(name: str, rows: int, test_rows: int) -> dict[str, float]:
    """1-way and 2-way TVD of the real train rows put through MST's discretisation and
    decoding alone (no MST, no noise): the best MST can score on this binning."""
    import _mst_runner
    import numpy as np

    from skdpflow import metrics

    train, _, _ = load(name, rows, test_rows)
    domain = public_domain(name)
    spec = domain.to_dict()
    codes, _ = _mst_runner.encode(train, spec)
    back = _mst_runner.decode(codes, spec, np.random.default_rng(0)).set_axis(train.index)
    kinds = metrics.column_kinds(train, domain)
    return {f"tvd_{k}way": metrics.mean_tvd(train, back, k, kinds=kinds) for k in (1, 2)}


def run_one(name: str, size: str, method: str, epsilon: float | None, seed: int,
            args: argparse.Namespace) -> dict:
    from skdpflow import evaluate

    train, test, target = load(name, train_rows(size, args.max_rows), args.test_rows)
    domain = public_domain(name)
    start = time.perf_counter()
    if method == "skdpflow":
        fake = fit_skdpflow(train, domain, epsilon, seed, args.params)
    elif method == "mst":
        fake = fit_mst(train, domain, epsilon, seed)
    else:
        fake = fit_copula(train, seed)
    fit_s = time.perf_counter() - start
    scores = evaluate(train, fake, test=test, target=target, domain=domain).to_frame()
    row = {"dataset": name, "size": size, "rows": len(train),
           "rows_requested": train_rows(size, args.max_rows), "method": method,
           "epsilon": epsilon, "seed": seed, "fit_s": round(fit_s, 1),
           "params": args.params if method == "skdpflow" else {}}
    for metric in METRICS:
        row[metric] = float(scores.loc[metric, "synthetic"])
        row[f"{metric}_real"] = float(scores.loc[metric, "real_data"])
    return row


def key(row: dict) -> tuple:
    eps = row["epsilon"]
    return (row["dataset"], row["rows_requested"], row["method"],
            None if eps is None else float(eps), row["seed"],
            json.dumps(row.get("params", {}), sort_keys=True))


def planned(args: argparse.Namespace) -> list[tuple]:
    """Every run of the requested grid, in the order run: by epsilon, then table."""
    out = []
    copula_done = set()
    for eps in args.epsilons:
        for name, size in grid_tables(args.datasets, args.sizes):
            for method in args.methods:
                for seed in args.seeds:
                    if method == "copula":  # not private: once per table, size and seed
                        if (name, size, seed) in copula_done:
                            continue
                        copula_done.add((name, size, seed))
                    out.append((name, size, method, None if method == "copula" else eps, seed))
    return out


def _fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3f}"


def table(runs: pd.DataFrame, epsilons: list[float], methods: list[str]) -> str:
    """Mean over seeds per table x size x epsilon: each method's metrics side by side
    (skdpflow / MST / GaussianCopula), the real-data ceiling, skdpflow minus MST."""
    short = {"skdpflow": "sk", "mst": "MST", "copula": "GC"}
    shown = [m for m in METHODS if m in methods]
    names = " / ".join(short[m] for m in shown)
    head = (["dataset", "rows", "epsilon", f"seeds ({names})"]
            + [f"{label} ({names})" for label in METRICS.values()]
            + ["AUROC real", "sk - MST (TVD1, TVD2, quality, AUROC)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if runs.empty:
        return "\n".join(lines)
    runs = runs.assign(eps=runs["epsilon"].astype(float))
    order = {n: i for i, n in enumerate(runs["dataset"].drop_duplicates())}
    tables = sorted({(d, s, r) for d, s, r in zip(runs["dataset"], runs["size"], runs["rows"])},
                    key=lambda t: (order[t[0]], SIZES.index(t[1])))
    for name, size, rows in tables:
        here = runs[(runs["dataset"] == name) & (runs["size"] == size)]
        for eps in epsilons:
            means, counts = {}, {}
            for method in shown:
                sel = here[here["method"] == method]
                if method != "copula":
                    sel = sel[sel["eps"] == eps]
                counts[method] = len(sel)
                means[method] = {m: (sel[m].mean() if len(sel) else None) for m in METRICS}
            if not any(counts[m] for m in shown if m != "copula"):
                continue
            cells = [name, f"{rows:,}" + (" (full, capped)" if size == "full" and rows
                                          < len_full(name) else " (full)" if size == "full"
                                          else ""), f"{eps:g}",
                     " / ".join(str(counts[m]) for m in shown)]
            for metric in METRICS:
                cells.append(" / ".join(_fmt(means[m][metric]) for m in shown))
            cells.append(_fmt(here["auroc_hgb_real"].mean()))
            if counts.get("skdpflow") and counts.get("mst"):
                sk, ms = means["skdpflow"], means["mst"]
                cells.append(", ".join(_signed(sk[m] - ms[m]) for m in METRICS))
            else:
                cells.append("–")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _signed(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.3f}"


@functools.cache
def len_full(name: str) -> int:
    """Train rows available for a table (before the --max-rows cap)."""
    spec = json.loads((DATA / "datasets.json").read_text())[name]
    files = spec["files"]
    if "train" in files:
        return files["train"]["rows"]
    total = files["all"]["rows"]
    return max(total - 2000, total * 2 // 3)


def write_docs(text: str, command: str, args: argparse.Namespace) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    doc = path.read_text()
    if BEGIN not in doc:
        doc += f"\n{BEGIN}\n{END}\n"
    head, rest = doc.split(BEGIN)
    _, tail = rest.split(END)
    body = (f"{BEGIN}\nRun {time.strftime('%Y-%m-%d')}: `{command}` ({os.cpu_count()} CPU "
            f"cores; full tables capped at {args.max_rows:,} train rows, "
            f"{args.test_rows:,} test rows; the seeds column counts the runs recorded)."
            f"\n\n{text}\n{END}")
    path.write_text(head + body + tail)


def read_runs(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] \
        if log.exists() else []


def select(done: list[dict], args: argparse.Namespace) -> pd.DataFrame:
    """The recorded runs that belong to the requested grid (skdpflow: these --params)."""
    wanted = {(n, train_rows(s, args.max_rows)) for n, s in grid_tables(args.datasets,
                                                                        args.sizes)}
    params = json.dumps(args.params, sort_keys=True)
    keep = [r for r in done if (r["dataset"], r["rows_requested"]) in wanted
            and r["method"] in args.methods and r["seed"] in args.seeds
            and (r["method"] == "copula" or float(r["epsilon"]) in args.epsilons)
            and (r["method"] != "skdpflow" or json.dumps(r["params"], sort_keys=True)
                 == params)]
    return pd.DataFrame(keep)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = list(json.loads((DATA / "datasets.json").read_text()))
    parser.add_argument("--datasets", nargs="+", default=names, choices=names)
    parser.add_argument("--sizes", nargs="+", default=SIZES, choices=SIZES)
    parser.add_argument("--epsilons", type=float, nargs="+", default=EPSILONS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--max-rows", type=int, default=20_000,
                        help="train rows of the 'full' tables at most (default 20,000)")
    parser.add_argument("--test-rows", type=int, default=2000, help="held-out test rows")
    parser.add_argument("--params", type=json.loads, default={},
                        help='skdpflow hyperparameters as JSON, e.g. \'{"epochs": 8}\'')
    parser.add_argument("--out", type=Path, default=HERE / "results" / "suite",
                        help="folder of the resumable runs.jsonl")
    parser.add_argument("--write-docs", action="store_true",
                        help="replace the suite table in docs/benchmarks.md")
    parser.add_argument("--binning-floor", action="store_true",
                        help="print the TVD of MST's binning alone per table and size, run "
                             "nothing else")
    parser.add_argument("--table-only", action="store_true",
                        help="print the table of recorded runs, run nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.binning_floor:
        for name, size in grid_tables(args.datasets, args.sizes):
            floor = binning_floor(name, train_rows(size, args.max_rows), args.test_rows)
            print(f"{name} {size}: MST binning alone: 1-way TVD {floor['tvd_1way']:.3f}, "
                  f"2-way TVD {floor['tvd_2way']:.3f}", flush=True)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    seen = {key(r) for r in read_runs(log)}
    params = json.dumps(args.params, sort_keys=True)
    if "mst" in args.methods and not mst_available() and not args.table_only:
        print(f"smartnoise MST skipped: no interpreter at {MST_PYTHON} (see the docstring "
              "for its environment, or set SKDPFLOW_MST_PYTHON)", file=sys.stderr)
    print(f"full tables capped at {args.max_rows:,} train rows; {args.test_rows:,} test rows",
          flush=True)
    for name, size, method, eps, seed in ([] if args.table_only else planned(args)):
        rows = train_rows(size, args.max_rows)
        run_params = params if method == "skdpflow" else "{}"
        # re-read: another process may be filling the same file (e.g. one per method)
        seen |= {key(r) for r in read_runs(log)}
        if (name, rows, method, eps, seed, run_params) in seen:
            continue
        if method == "mst" and not mst_available():
            continue
        row = run_one(name, size, method, eps, seed, args)
        with log.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    text = table(select(read_runs(log), args), args.epsilons, args.methods)
    print(text)
    if args.write_docs:
        # --table-only writes the table of recorded runs: the command that makes them
        command = [a for a in sys.argv[1:] if a != "--table-only"]
        write_docs(text, "python benchmarks/suite.py " + " ".join(command), args)


if __name__ == "__main__":
    main()
