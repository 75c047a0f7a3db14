"""The A/B of the early rejection step (docs/benchmarks.md, "Sampling throughput and
memory"): the category weights' rejection right after the discrete heads, the continuous
stages on the kept rows only (after), against rejection after the whole flow (before,
``b9f9fe3``, unpacked with ``git archive b9f9fe3 | tar -x -C /tmp/base``).

``sample(200,000)`` five times on one loaded model, median rows/s, in a fresh process per
side and thread count, alternating before/after, for ``--passes`` passes. The model: a
default Adult fit at epsilon 1 (the category weights keep about 71% of the flow's rows).
Run from the repository root with the machine otherwise idle (other runs SIGSTOPped)::

    python benchmarks/results/sampling_early_rejection_ab.py MODEL --before /tmp/base

Any two trees can be compared with ``--before`` and ``--after`` (the heads' tables of
session 9: ``sampling_head_tables_ab.txt``).
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

# The child: sampling_buffers_ab.py (one loaded model, sample(200,000) five times, the
# median), given the tree to import and the model file.
CHILD = Path(__file__).with_name("sampling_buffers_ab.py")

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--before", default="/tmp/base")
parser.add_argument("--after", default=".")
parser.add_argument("--passes", type=int, default=3)
args = parser.parse_args()
results: dict = {}
for p in range(args.passes):
    for jobs in (1, 2):
        for side, tree in (("before", args.before), ("after", args.after)):
            out = subprocess.run([sys.executable, str(CHILD), tree, str(jobs), args.model],
                                 capture_output=True, text=True, check=True)
            rate = float(re.search(r"median (\d+) rows/s", out.stdout).group(1))
            results.setdefault((jobs, side), []).append(rate)
            print(f"pass {p + 1} n_jobs {jobs} {side:6s} {rate:,.0f} rows/s", flush=True)
print("\n| n_jobs | before (rows/s) | after (rows/s) | after / before |")
print("|---|---|---|---|")
for jobs in (1, 2):
    before = sorted(results[(jobs, "before")])[len(results[(jobs, "before")]) // 2]
    after = sorted(results[(jobs, "after")])[len(results[(jobs, "after")]) // 2]
    print(f"| {jobs} | {before:,.0f} | {after:,.0f} | {after / before:.2f} |")
