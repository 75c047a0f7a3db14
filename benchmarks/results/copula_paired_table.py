"""Paired differences of the copula-only variants (copula_paired_variant.py's runs in
copula_paired_runs/): for each variant and table, the runs whose seed the baseline also
ran, the baseline's mean and the variant's mean difference ± its standard error (the same
seeded noise on both sides, so the difference's error is far below either mean's).

    python benchmarks/results/copula_paired_table.py
"""
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent / "copula_paired_runs"
METRICS = ["tvd_1way", "tvd_2way", "quality", "auroc_hgb"]
# (variant file, baseline files, what it is)
VARIANTS = [
    ("eig0.1", ["eig0.001", "base"], "eigenvalue floor 0.1 (instead of 1e-3)"),
    ("s50", ["eig0.001", "base"], "copula 0.5 of the releases' budget (instead of 1/3)"),
    ("s50e", ["eig0.001", "base"], "both"),
    ("k07", ["eig0.001", "base"], "row bound 0.7 sum a_i (instead of sum a_i)"),
    ("k05", ["eig0.001", "base"], "row bound 0.5 sum a_i"),
    ("r03k07", ["r03base"], "row bound 0.7 sum a_i, 1,000 rows, epsilon 0.3"),
    ("r3kk07", ["r3kbase"], "row bound 0.7 sum a_i, 3,000 rows, epsilon 0.3"),
    ("s40", ["eig0.001", "base"], "copula 0.4 of the releases' budget (session 9)"),
    ("r03s40", ["r03base"], "copula 0.4 of the releases' budget, epsilon 0.3 (session 9)"),
    ("r3ks40", ["r3kbase"], "copula 0.4 of the releases' budget, 3,000 rows, epsilon 0.3"),
]


def load(name: str) -> dict:
    path = HERE / f"{name}.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["dataset"], r["rows_requested"], r["epsilon"], r["seed"]): r for r in rows}


print("| variant | table | runs | " + " | ".join(
    f"{m} (base, diff ± se)" for m in METRICS) + " |")
print("|---|---|---|" + "---|" * len(METRICS))
for name, bases, what in VARIANTS:
    runs = load(name)
    base = {k: v for b in bases for k, v in load(b).items()}
    cells = sorted({k[:3] for k in runs})
    for cell in cells:
        keys = sorted(k for k in runs if k[:3] == cell and k in base)
        if len(keys) < 5:
            continue
        parts = []
        for m in METRICS:
            a = np.array([base[k][m] for k in keys])
            d = np.array([runs[k][m] for k in keys]) - a
            parts.append(f"{a.mean():.4f}, {d.mean():+.4f} ± {d.std(ddof=1) / len(d) ** 0.5:.4f}")
        label = f"{cell[0]} {cell[1]:,} rows, eps {cell[2]:g}"
        print(f"| {what} | {label} | {len(keys)} | " + " | ".join(parts) + " |")
