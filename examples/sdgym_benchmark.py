"""skdpflow in the SDGym harness, fully offline, beside SDGym's own baselines.

Needs SDGym's environment (SDGym 0.15.1 does not import with SDV 2.0; see
docs/sdgym.md):

    python -m venv /work/venvs/sdgym && . /work/venvs/sdgym/bin/activate
    pip install torch==2.13.0 && pip install sdv==1.38.5 rdt==1.22.0 sdgym==0.15.1
    pip install -e .
    python examples/sdgym_benchmark.py --write-docs

It copies a few thousand rows of two public tables from ``../shared/data`` (or
``$SKDPFLOW_DATA``) into SDGym's local layout (``single_table/<name>/`` with a metadata JSON
and a zipped CSV), then runs ``sdgym.benchmark_single_table`` on them with skdpflow at two
epsilons, GaussianCopula, CTGAN (fewer epochs than SDGym's 300 so that it finishes) and
Uniform. Adult's domain is declared public (census bounds, documented categories); Bank
Marketing's is not, so skdpflow estimates it under DP with part of epsilon.

Data: UCI Adult (Becker & Kohavi, 1996, https://doi.org/10.24432/C5XW20) and UCI Bank
Marketing (Moro, Rita & Cortez, 2014, https://doi.org/10.24432/C5K306), both CC BY 4.0.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SKDPFLOW_DATA", ROOT.parent / "shared" / "data"))
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- sdgym-table:begin -->", "<!-- sdgym-table:end -->"
TABLES = {"adult": "adult_train.csv.gz", "bank": "bank_marketing.csv.gz"}
JSON_KEYS = {"adult": "adult", "bank": "bank_marketing"}
COLUMNS = ["Dataset", "Synthesizer", "Train_Time", "Sample_Time", "Quality_Score",
           "Diagnostic_Score", "Privacy_Score", "Adjusted_Quality_Score", "Error"]


def build_datasets(out: Path, rows: int, names: list[str], seed: int = 0) -> Path:
    """Write ``out/single_table/<name>/{metadata.json,data.zip}``; return ``out``."""
    facts = json.loads((DATA / "datasets.json").read_text())
    for name in names:
        frame = pd.read_csv(DATA / TABLES[name])
        frame = frame.sample(n=min(rows, len(frame)), random_state=seed).reset_index(drop=True)
        info = facts[JSON_KEYS[name]]
        columns = {c: {"sdtype": "categorical" if c in info["categorical"] else "numerical"}
                   for c in frame.columns}
        folder = out / "single_table" / name
        folder.mkdir(parents=True, exist_ok=True)
        metadata = {"METADATA_SPEC_VERSION": "V1", "relationships": [],
                    "tables": {name: {"columns": columns}}}
        (folder / "metadata.json").write_text(json.dumps(metadata, indent=1))
        with zipfile.ZipFile(folder / "data.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{name}.csv", frame.to_csv(index=False))
    return out


@contextlib.contextmanager
def _working_directory(path: Path):
    # SDGym 0.15.1 resolves local datasets against the working directory (else it tries S3).
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def run(out: Path, rows: int = 3000, epsilons: tuple[float, ...] = (1.0, 10.0),
        ctgan_epochs: int = 30, names: tuple[str, ...] = ("adult", "bank"),
        skdpflow_params: dict | None = None) -> pd.DataFrame:
    """Run the benchmark; return SDGym's results table (one row per synthesizer and table)."""
    import sdgym

    from skdpflow import load_demo_domain
    from skdpflow.sdv import sdgym_synthesizer

    out = build_datasets(Path(out).resolve(), rows, list(names))
    # PRV: calibrating the noise with RDP is slow under SDGym's tracemalloc (pure Python).
    params = dict(delta=1e-5, batch_size=256, epochs=16, random_state=0,
                  verbose=False)
    params.update(skdpflow_params or {})
    custom = [sdgym_synthesizer(f"skdpflow_eps{eps:g}", domains={"adult": load_demo_domain()},
                                epsilon=eps, **params) for eps in epsilons]
    if ctgan_epochs:
        custom.append(sdgym.create_synthesizer_variant(
            f"CTGAN_{ctgan_epochs}ep", "CTGANSynthesizer", {"epochs": ctgan_epochs}))
    with _working_directory(out / "single_table"):
        results = sdgym.benchmark_single_table(
            synthesizers=["GaussianCopulaSynthesizer", "UniformSynthesizer"],
            custom_synthesizers=custom, sdv_datasets=None,
            additional_datasets_folder=str(out), show_progress=False)
    return results


def to_markdown(results: pd.DataFrame) -> str:
    table = results.copy()
    for col in COLUMNS:
        if col not in table.columns:
            table[col] = None
    table = table[COLUMNS].sort_values(["Dataset", "Synthesizer"])
    for col in ("Train_Time", "Sample_Time"):
        table[col] = pd.to_timedelta(table[col]).dt.total_seconds() \
            if not pd.api.types.is_numeric_dtype(table[col]) else table[col]
    if table["Error"].isna().all():
        table = table.drop(columns="Error")
    lines = ["| " + " | ".join(table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    for _, row in table.iterrows():
        cells = [f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))
                 for v in row]
        lines.append("| " + " | ".join(cells).replace("nan", "") + " |")
    return "\n".join(lines)


def write_docs(results: pd.DataFrame, args: argparse.Namespace, seconds: float) -> None:
    import rdt
    import sdgym
    import sdv

    header = (f"Run {datetime.date.today()}: `python examples/sdgym_benchmark.py --rows "
              f"{args.rows} --ctgan-epochs {args.ctgan_epochs} --write-docs` "
              f"({os.cpu_count()} CPU cores, sdgym {sdgym.__version__}, sdv {sdv.__version__}, "
              f"rdt {rdt.__version__}; {seconds / 60:.1f} min in all).")
    text = DOCS.read_text()
    block = f"{BEGIN}\n{header}\n\n{to_markdown(results)}\n{END}"
    if BEGIN in text:
        start, stop = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + block + text[stop:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000, help="rows per table")
    parser.add_argument("--ctgan-epochs", type=int, default=30)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--out", default=str(ROOT / ".bench" / "sdgym"))
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = run(Path(args.out), args.rows, tuple(args.epsilons), args.ctgan_epochs)
    seconds = time.perf_counter() - start
    pd.set_option("display.width", 200)
    print(results[[c for c in COLUMNS if c in results.columns]].to_string())
    print(f"{seconds:.0f} s")
    if args.write_docs:
        write_docs(results, args, seconds)


if __name__ == "__main__":
    sys.exit(main())
