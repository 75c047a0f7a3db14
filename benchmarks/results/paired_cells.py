"""Paired differences of two runs of the suite with seeded research noise, cell by cell.

Usage::

    python benchmarks/results/paired_cells.py BASE/runs.jsonl VARIANT/runs.jsonl [...]

For each (dataset, rows, epsilon) both outputs hold, over the seeds both ran: the base's
mean and the variant's mean difference with its standard error, for 1-way and 2-way TVD,
SDMetrics quality and TSTR AUROC (``copula_paired_variant.py`` makes the runs).
"""
import collections
import json
import math
import statistics as st
import sys
from pathlib import Path

METRICS = ("tvd_1way", "tvd_2way", "quality", "auroc_hgb")


def load(path):
    out = collections.defaultdict(dict)
    for row in map(json.loads, open(path)):
        out[(row["dataset"], row["rows"], row["epsilon"])][row["seed"]] = row
    return out


def main(base_path, *variant_paths):
    base = load(base_path)
    print("variant | dataset | rows | epsilon | seeds | " + " | ".join(
        f"{m} base, diff ± se" for m in METRICS))
    for path in variant_paths:
        variant = load(path)
        name = Path(path).parent.name if Path(path).name == "runs.jsonl" else Path(path).stem
        for cell in sorted(set(base) & set(variant)):
            seeds = sorted(set(base[cell]) & set(variant[cell]))
            if len(seeds) < 3:
                continue
            parts = []
            for m in METRICS:
                d = [variant[cell][s][m] - base[cell][s][m] for s in seeds]
                b = st.mean(base[cell][s][m] for s in seeds)
                parts.append(f"{b:.3f} {st.mean(d):+.4f} ± {st.stdev(d) / math.sqrt(len(d)):.4f}")
            print(f"{name} | {cell[0]} | {cell[1]:,} | {cell[2]:g} | {len(seeds)} | "
                  + " | ".join(parts))


if __name__ == "__main__":
    main(*sys.argv[1:])
